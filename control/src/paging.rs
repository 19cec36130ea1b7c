//! Cursor paging as every list endpoint does it: read one row more than the page holds; if it
//! came, there is a next page, whose cursor is the last row kept.

/// The first `limit` of `rows` (read with `limit + 1`) and the cursor of the next page, if any.
pub fn one_page<T>(
    mut rows: Vec<T>,
    limit: i64,
    cursor_of: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let keep = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > keep;
    rows.truncate(keep);
    let next = if more {
        rows.last().map(cursor_of)
    } else {
        None
    };
    (rows, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_next_cursor_only_when_a_row_is_left_over() {
        let cursor = |n: &i32| n.to_string();
        assert_eq!(
            one_page(vec![1, 2, 3], 2, cursor),
            (vec![1, 2], Some("2".to_owned()))
        );
        assert_eq!(one_page(vec![1, 2], 2, cursor), (vec![1, 2], None));
        assert_eq!(one_page(Vec::new(), 2, cursor), (Vec::new(), None));
    }
}
