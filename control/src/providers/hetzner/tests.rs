//! Hetzner's error envelope, codes, ids and queries, read the way the client reads them.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::*;

fn error(status: u16, body: &str) -> ProviderError {
    classify(
        StatusCode::from_u16(status).unwrap(),
        &HeaderMap::new(),
        body.as_bytes(),
    )
}

#[test]
fn the_envelope_gives_the_kind_the_code_and_a_message_for_the_dashboard() {
    let taken = error(
        409,
        r#"{"error":{"code":"uniqueness_error","message":"server name is already used","details":{}}}"#,
    );
    assert_eq!(taken.kind, ErrorKind::Conflict);
    assert_eq!(taken.code.as_deref(), Some("uniqueness_error"));
    assert_eq!(taken.message, "hetzner: server name is already used");

    let invalid = error(
        422,
        r#"{"error":{"code":"invalid_input","message":"invalid input in field 'server_type'",
            "details":{"fields":[{"name":"server_type","messages":["server type cx99 not found"]}]}}}"#,
    );
    assert_eq!(invalid.kind, ErrorKind::Permanent);
    assert!(
        invalid
            .to_string()
            .contains("server_type: server type cx99 not found"),
        "{invalid}"
    );

    for (status, code, kind) in [
        (429, "rate_limit_exceeded", ErrorKind::RateLimited),
        (423, "locked", ErrorKind::Transient),
        (409, "conflict", ErrorKind::Transient),
        (503, "unavailable", ErrorKind::Transient),
        (403, "resource_limit_exceeded", ErrorKind::Permanent),
        (404, "not_found", ErrorKind::NotFound),
        (422, "resource_in_use", ErrorKind::Transient),
        (418, "something_new", ErrorKind::Permanent),
        (502, "something_new", ErrorKind::Transient),
    ] {
        let body = format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#);
        let e = error(status, &body);
        assert_eq!(
            (e.kind, e.code.as_deref()),
            (kind, Some(code)),
            "{status} {code}"
        );
    }
    // A proxy's HTML page: the status decides.
    assert_eq!(
        error(502, "<html>bad gateway</html>").kind,
        ErrorKind::Transient
    );
}

#[test]
fn ids_are_hetzner_integers_and_nothing_else_reaches_a_path() {
    assert_eq!(numeric("42", "server").unwrap(), 42);
    for bad in ["", "0", "-1", "42/actions", "../servers", "4 2", "agt_1"] {
        assert_eq!(
            numeric(bad, "server").unwrap_err().kind,
            ErrorKind::NotFound,
            "{bad}"
        );
    }
}

#[test]
fn lookups_select_every_label_exactly_a_page_at_a_time() {
    let labels = Labels::from([
        ("control/id".to_owned(), "agt_01ABC".to_owned()),
        ("control/kind".to_owned(), "agent".to_owned()),
    ]);
    assert_eq!(
        list_query(&labels, None).unwrap(),
        "label_selector=control%2Fid%3D%3Dagt_01ABC%2Ccontrol%2Fkind%3D%3Dagent&page=1&per_page=50"
    );
    assert!(
        list_query(&labels, Some("3"))
            .unwrap()
            .ends_with("&page=3&per_page=50")
    );
    assert!(list_query(&labels, Some("x")).is_err());
}
