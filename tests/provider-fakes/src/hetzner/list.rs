//! List endpoints' query (`name`, `label_selector`, `status`, `sort`, `page`, `per_page`, `id`)
//! and `meta.pagination`. Repeated keys (`id=1&id=2`, `status=a&status=b`) are kept, which serde's
//! query extractors would not do.

use serde_json::{Value, json};

use super::error::ApiError;
use super::labels::{Labels, Selector};

pub(crate) const DEFAULT_PER_PAGE: u64 = 25;
pub(crate) const MAX_PER_PAGE: u64 = 50;

pub(crate) struct ListQuery {
    pub name: Option<String>,
    pub selector: Option<Selector>,
    pub status: Vec<String>,
    /// Sort keys, first the primary one: (field, descending).
    pub sort: Vec<(String, bool)>,
    pub page: u64,
    pub per_page: u64,
    pub ids: Vec<u64>,
}

fn number(field: &str, value: &str) -> Result<u64, ApiError> {
    value
        .parse::<u64>()
        .map_err(|_| ApiError::invalid_field(field, format!("'{value}' is not a number")))
}

impl ListQuery {
    /// Sort fields of the resource lists.
    pub(crate) const RESOURCE_SORTS: &'static [&'static str] = &["id", "name", "created"];

    pub(crate) fn parse(raw: Option<&str>, sortable: &[&str]) -> Result<ListQuery, ApiError> {
        let mut q = ListQuery {
            name: None,
            selector: None,
            status: Vec::new(),
            sort: Vec::new(),
            page: 1,
            per_page: DEFAULT_PER_PAGE,
            ids: Vec::new(),
        };
        for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "name" => q.name = Some(value.into_owned()),
                "label_selector" => {
                    let selector = Selector::parse(&value)
                        .map_err(|m| ApiError::invalid_field("label_selector", m))?;
                    q.selector = Some(selector);
                }
                "status" => q.status.push(value.into_owned()),
                "sort" => {
                    let (field, desc) = match value.split_once(':') {
                        Some((f, "asc")) => (f, false),
                        Some((f, "desc")) => (f, true),
                        None => (value.as_ref(), false),
                        Some(_) => {
                            return Err(ApiError::invalid_field("sort", "unknown direction"));
                        }
                    };
                    if !sortable.contains(&field) {
                        return Err(ApiError::invalid_field(
                            "sort",
                            format!("cannot sort by '{field}'"),
                        ));
                    }
                    q.sort.push((field.to_owned(), desc));
                }
                "page" => {
                    q.page = number("page", &value)?;
                    if q.page == 0 {
                        return Err(ApiError::invalid_field("page", "page starts at 1"));
                    }
                }
                "per_page" => {
                    q.per_page = number("per_page", &value)?;
                    if q.per_page == 0 {
                        return Err(ApiError::invalid_field(
                            "per_page",
                            "per_page must be at least 1",
                        ));
                    }
                    q.per_page = q.per_page.min(MAX_PER_PAGE);
                }
                "id" => q.ids.push(number("id", &value)?),
                _ => {}
            }
        }
        Ok(q)
    }

    /// Whether a resource passes the `name` and `label_selector` filters.
    pub(crate) fn keeps(&self, name: &str, labels: &Labels) -> bool {
        self.name.as_deref().is_none_or(|n| n == name)
            && self.selector.as_ref().is_none_or(|s| s.matches(labels))
    }

    /// Sorts `(id, name, item)` rows (ids grow with creation time) and cuts out the page.
    pub(crate) fn page<T>(&self, mut rows: Vec<(u64, String, T)>) -> (Vec<T>, Value) {
        rows.sort_by_key(|r| r.0);
        // Stable sorts from the last key to the first leave the first key primary.
        for (field, desc) in self.sort.iter().rev() {
            if field == "name" {
                rows.sort_by(|a, b| a.1.cmp(&b.1));
            } else {
                rows.sort_by_key(|r| r.0);
            }
            if *desc {
                rows.reverse();
            }
        }
        let total = rows.len() as u64;
        let last_page = total.div_ceil(self.per_page).max(1);
        let skip =
            usize::try_from((self.page - 1).saturating_mul(self.per_page)).unwrap_or(usize::MAX);
        let take = usize::try_from(self.per_page).unwrap_or(usize::MAX);
        let items = rows
            .into_iter()
            .skip(skip)
            .take(take)
            .map(|r| r.2)
            .collect();
        let meta = json!({
            "pagination": {
                "page": self.page,
                "per_page": self.per_page,
                "previous_page": (self.page > 1).then(|| (self.page - 1).min(last_page)),
                "next_page": (self.page < last_page).then_some(self.page + 1),
                "last_page": last_page,
                "total_entries": total,
            }
        });
        (items, meta)
    }
}
