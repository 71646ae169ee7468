//! Storage faults and idempotency seen through the HTTP channel: the real app on port 0, the real
//! embedded SQLite store in a temp dir, real HTTP requests.

use std::sync::Arc;

use connect_extension_mongodb::storage::local::LocalStorage;
use connect_extension_mongodb::storage::Storage;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::TestApp;

const PURCHASE: &str = include_str!("../fixtures/purchase_request.json");

fn purchase() -> Value {
    serde_json::from_str(PURCHASE).unwrap()
}

/// Item 7: an object without `updated` (and, over HTTP, without a task id) used to get a random
/// `_id`, so a retried POST stored it twice.
#[tokio::test]
async fn an_object_without_updated_posted_twice_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(dir.path(), &[]).await;
    let mut pr = purchase();
    pr.as_object_mut().unwrap().remove("updated");
    pr["id"] = json!("PR-NO-UPDATED-1");

    let (s1, b1) = app.post_json(&pr).await;
    assert_eq!(s1, StatusCode::CREATED, "{b1}");
    // The same object again, its keys in another order: the same document.
    let reordered: serde_json::Map<String, Value> = pr
        .as_object()
        .unwrap()
        .iter()
        .rev()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let (s2, b2) = app.post_json(&Value::Object(reordered)).await;
    assert_eq!(s2, StatusCode::OK, "a retried POST is a duplicate: {b2}");
    assert_eq!(b2["duplicate"], true, "{b2}");
    assert_eq!(b1["document_id"], b2["document_id"]);
    let (_, list) = app.get("/events?object_id=PR-NO-UPDATED-1").await;
    assert_eq!(list["count"], 1, "{list}");

    // A different object (another status) is another document.
    pr["status"] = json!("approved");
    let (s3, b3) = app.post_json(&pr).await;
    assert_eq!(s3, StatusCode::CREATED, "{b3}");
    assert_ne!(b3["document_id"], b1["document_id"]);
    app.stop().await;
}

/// Item 3: a store that cannot be written (SQLite `READONLY`) is a fault of the store: the POST is
/// answered 503 (redeliver), never 422, and `/ready` answers 503 with the reason — its probe is a
/// write, not a read.
///
/// The fault: the writer connection reopened by SQLite itself as read-only
/// (`SQLITE_OPEN_READONLY`), what a read-only remount gives; the tests may run as root, where
/// `chmod` does not stop writes.
#[tokio::test]
async fn a_read_only_local_store_answers_503_and_ready_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(dir.path(), &[]).await;
    let (status, body) = app.get("/ready").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.post_json(&purchase()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let read_only: Arc<dyn Storage> =
        Arc::new(LocalStorage::open_with_read_only_writer(dir.path()).unwrap());
    let old = app.storage.replace(read_only);
    old.close().await;

    let mut pr = purchase();
    pr["id"] = json!("PR-READ-ONLY-1");
    let (status, body) = app.post_json(&pr).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a read-only store must make the caller retry: {body}"
    );
    let (status, body) = app.get("/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let problems = body["problems"].to_string().to_lowercase();
    assert!(
        problems.contains("readonly") || problems.contains("read-only"),
        "the reason must be given: {body}"
    );
    // Reads still work.
    let (status, list) = app.get("/events").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["count"], 1);

    // Writable again: ready again.
    let writable: Arc<dyn Storage> = Arc::new(LocalStorage::open(dir.path()).unwrap());
    app.storage.replace(writable).close().await;
    let (status, body) = app.get("/ready").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.post_json(&pr).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.stop().await;
}
