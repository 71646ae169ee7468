use super::call::RetryPolicy;
use super::errors::{
    duplicate_on, parse_retry_after, shown_endpoint, shown_location, ApiError, ApiErrorKind,
    DuplicateOn,
};
use super::insert::{check_inserted, duplicate_position};
use super::*;
use crate::storage::ErrorKind;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::StatusCode;
use std::time::SystemTime;

#[test]
fn backoff_is_bounded() {
    let p = RetryPolicy {
        base: Duration::from_millis(100),
        cap: Duration::from_millis(500),
        max_attempts: 5,
    };
    // One wait between each two of the `max_attempts` requests.
    let waits: Vec<Duration> = p.policy().backoff().collect();
    assert_eq!(waits.len(), 4);
    assert!(waits[0] <= Duration::from_millis(100));
    // However many attempts: never above the cap.
    let unlimited = crate::retry::Policy {
        max_retries: None,
        ..p.policy()
    };
    for wait in unlimited.backoff().take(39) {
        assert!(wait <= Duration::from_millis(500));
    }
}

#[test]
fn retry_after_seconds_and_date() {
    let mut h = HeaderMap::new();
    h.insert("retry-after", HeaderValue::from_static("3"));
    assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(3)));
    let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
    h.insert("retry-after", HeaderValue::from_str(&later).unwrap());
    let d = parse_retry_after(&h).unwrap();
    assert!(
        d > Duration::from_secs(100) && d <= Duration::from_secs(120),
        "{d:?}"
    );
    h.insert("retry-after", HeaderValue::from_static("soon"));
    assert_eq!(parse_retry_after(&h), None);
}

#[test]
fn duplicate_key_answers() {
    let h = HeaderMap::new();
    let text = b"Failed to insert document: FunctionError: (DuplicateKey) E11000 duplicate key error collection: db.c index: _id_ dup key: { _id: \"PR-2:pending:u\" }";
    let e = ApiError::from_answer("insertMany", StatusCode::BAD_REQUEST, &h, text);
    assert_eq!(e.duplicate, Some(DuplicateOn::Id));
    assert!(!e.is_retriable());
    assert_eq!(
        duplicate_position(&e.body, &["PR-1:pending:u", "PR-2:pending:u", "PR-3"]),
        Some(1)
    );
    assert_eq!(duplicate_position(&e.body, &["PR-2:pending"]), None);
    // The same on a 500 (a widely used gateway) or a 502: a duplicate, never retried.
    for status in [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::BAD_GATEWAY] {
        let e = ApiError::from_answer("insertOne", status, &h, text);
        assert_eq!(e.duplicate, Some(DuplicateOn::Id), "{status}");
        assert!(!e.is_retriable());
    }
    // JSON: `code: 11000` with `keyPattern`, or `error_code` alone (index not named).
    let e = ApiError::from_answer(
        "insertOne",
        StatusCode::INTERNAL_SERVER_ERROR,
        &h,
        br#"{"code": 11000, "errmsg": "duplicate", "keyPattern": {"_id": 1}}"#,
    );
    assert_eq!(e.duplicate, Some(DuplicateOn::Id));
    let e = ApiError::from_answer(
        "insertOne",
        StatusCode::CONFLICT,
        &h,
        br#"{"error": "duplicate", "error_code": "DuplicateKey"}"#,
    );
    assert_eq!(e.duplicate, Some(DuplicateOn::Unknown));
    // Another unique index: named.
    let e = ApiError::from_answer(
        "insertOne",
        StatusCode::BAD_REQUEST,
        &h,
        b"E11000 duplicate key error collection: db.c index: id_1 dup key: { id: \"PR-1\" }",
    );
    assert_eq!(e.duplicate, Some(DuplicateOn::Index("id_1".into())));
    assert_eq!(
        duplicate_on("E11000 dup key: { id: 1 }", None),
        DuplicateOn::Index("id".into())
    );
    // A 2xx never is one; nor a 400 about something else.
    let ok = ApiError::from_answer("insertOne", StatusCode::OK, &h, text);
    assert_eq!(ok.duplicate, None);
    let other = ApiError::from_answer(
        "insertOne",
        StatusCode::BAD_REQUEST,
        &h,
        b"Failed to insert document: FunctionError: mongodb insert: argument must be an object",
    );
    assert!(!other.is_duplicate_key());
    assert!(other.into_storage_error().kind() == ErrorKind::RejectedDocument);
}

#[test]
fn only_a_400_about_the_document_is_permanent() {
    let h = HeaderMap::new();
    let kind = |status: u16, body: &str| {
        ApiError::from_answer(
            "insertOne",
            StatusCode::from_u16(status).unwrap(),
            &h,
            body.as_bytes(),
        )
        .into_storage_error()
    };
    for body in [
        "Failed to insert document: FunctionError: (DocumentValidationFailure) Document failed validation",
        "Failed to insert document: FunctionError: (BSONObjectTooLarge) object to insert too large",
        "Failed to insert document: FunctionError: (DollarPrefixedFieldName) $x is not valid for storage",
    ] {
        assert!(kind(400, body).kind() == ErrorKind::RejectedDocument, "{body}");
    }
    assert!(kind(413, "").kind() == ErrorKind::RejectedDocument);
    for (status, body) in [
        (
            400,
            r#"{"error":"no authentication methods were specified","error_code":"InvalidParameter"}"#,
        ),
        (
            400,
            r#"{"error":"The data source 'X' is disabled or does not exist"}"#,
        ),
        (
            400,
            "Only application/ejson and application/json content types accepted.",
        ),
        (
            400,
            "Failed to insert document: FunctionError: (NotWritablePrimary) not primary",
        ),
        (400, ""),
        (
            401,
            r#"{"error":"invalid session","error_code":"InvalidSession"}"#,
        ),
        (403, "<html>Forbidden</html>"),
        (404, ""),
        (307, ""),
        (301, ""),
    ] {
        let e = kind(status, body);
        assert!(e.kind() == ErrorKind::Config, "{status} {body}: {e}");
        assert!(e.is_retriable());
    }
    for status in [405, 409, 429, 500, 503] {
        assert!(kind(status, "x").is_retriable(), "{status}");
    }
}

#[test]
fn endpoints_and_locations_are_shown_without_secrets() {
    let url = url::Url::parse(
        "https://user:pw-s3cr3t@gw.example:8443/app/a/endpoint/data/v1?secret=q-s3cr3t#f",
    )
    .unwrap();
    let shown = shown_endpoint(&url);
    assert!(!shown.contains("s3cr3t"), "{shown}");
    assert!(
        shown.starts_with("https://") && shown.contains("gw.example:8443/app/a/endpoint/data/v1"),
        "{shown}"
    );
    for location in [
        "http://u:pw-s3cr3t@elsewhere/x?secret=q-s3cr3t",
        "//u:pw-s3cr3t@elsewhere/x?secret=q-s3cr3t",
        "/x?secret=q-s3cr3t",
    ] {
        let shown = shown_location(location);
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("/x"), "{shown}");
    }
    let mut h = HeaderMap::new();
    h.insert(
        reqwest::header::LOCATION,
        HeaderValue::from_static("http://u:pw-s3cr3t@elsewhere/x?secret=q-s3cr3t"),
    );
    let e = ApiError::from_answer(
        "insertOne",
        StatusCode::TEMPORARY_REDIRECT,
        &h,
        b"<a href='http://u:pw-s3cr3t@elsewhere/x?secret=q-s3cr3t'>moved</a>",
    );
    let msg = e.into_storage_error().to_string();
    assert!(
        msg.contains("HTTP 307 redirect to http://u:***@elsewhere/x"),
        "{msg}"
    );
    assert!(msg.contains("DATA_API_ENDPOINT"), "{msg}");
    assert!(!msg.contains("s3cr3t"), "{msg}");
}

#[test]
fn insert_answers_must_name_what_was_sent() {
    let ok = |action: &str, v: Value, ids: &[&str]| check_inserted(action, &v, ids).is_ok();
    assert!(ok("insertOne", json!({"insertedId": "a"}), &["a"]));
    assert!(ok("insertOne", json!({"n": 1}), &["a"]));
    assert!(!ok("insertOne", json!({"insertedId": "b"}), &["a"]));
    assert!(!ok("insertOne", json!({}), &["a"]));
    assert!(!ok("insertOne", json!({"n": 0}), &["a"]));
    assert!(!ok("insertOne", json!("<html>"), &["a"]));
    assert!(ok(
        "insertMany",
        json!({"insertedIds": ["a", "b"]}),
        &["a", "b"]
    ));
    assert!(ok("insertMany", json!({"n": 2}), &["a", "b"]));
    assert!(!ok(
        "insertMany",
        json!({"insertedIds": ["a"]}),
        &["a", "b"]
    ));
    assert!(!ok(
        "insertMany",
        json!({"insertedIds": ["b", "a"]}),
        &["a", "b"]
    ));
    assert!(!ok("insertMany", json!({"insertedId": "a"}), &["a", "b"]));
}

#[test]
fn json_error_bodies_are_kept() {
    let h = HeaderMap::new();
    let body = br#"{"error":"invalid session: error finding user for endpoint","error_code":"InvalidSession","link":"https://example/logs?co_id=1"}"#;
    let e = ApiError::from_answer("insertOne", StatusCode::UNAUTHORIZED, &h, body);
    assert_eq!(e.kind, ApiErrorKind::Unauthorized);
    let msg = e.into_storage_error_with("DATA_API_KEY").to_string();
    assert!(msg.contains("check DATA_API_KEY"), "{msg}");
    assert!(
        msg.contains("invalid session: error finding user for endpoint"),
        "{msg}"
    );
    assert!(
        msg.contains("InvalidSession") && msg.contains("co_id=1"),
        "{msg}"
    );
}

#[test]
fn ejson_mapping_keeps_types() {
    let v = json!({"small": 5, "big": i64::MAX, "f": 1.5, "s": "x", "n": null, "a": [true]});
    let b = json_to_bson(&v);
    let d = b.as_document().unwrap();
    assert_eq!(d.get("small"), Some(&Bson::Int32(5)));
    assert_eq!(d.get("big"), Some(&Bson::Int64(i64::MAX)));
    assert_eq!(d.get("f"), Some(&Bson::Double(1.5)));
    let canonical = b.clone().into_canonical_extjson();
    assert_eq!(
        canonical["big"],
        json!({"$numberLong": i64::MAX.to_string()})
    );
    assert_eq!(decode_value(canonical), v);
}
