//! The HTTP task channel end to end: the real app on port 0, the real embedded SQLite store in a
//! temp dir, real HTTP requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use connect_extension_mongodb::config::Settings;
use connect_extension_mongodb::storage::EventDocument;
use connect_extension_mongodb::App;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const PURCHASE: &str = include_str!("fixtures/purchase_request.json");

fn fixture() -> Value {
    serde_json::from_str(PURCHASE).unwrap()
}

struct TestApp {
    addr: SocketAddr,
    shutdown: CancellationToken,
    handle: JoinHandle<()>,
    app_storage: std::sync::Arc<connect_extension_mongodb::storage::SharedStorage>,
    client: reqwest::Client,
    token: Option<String>,
}

fn settings(data_dir: &Path, extra: &[(&str, &str)]) -> Result<Settings, String> {
    let mut env: HashMap<String, String> = HashMap::from([
        ("HTTP_LISTEN".into(), "127.0.0.1:0".into()),
        ("LOCAL_DATA_DIR".into(), data_dir.display().to_string()),
        ("SHUTDOWN_GRACE".into(), "5".into()),
    ]);
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    Settings::from_vars(env).map_err(|e| e.to_string())
}

impl TestApp {
    async fn spawn(data_dir: &Path, extra: &[(&str, &str)]) -> TestApp {
        let settings = settings(data_dir, extra).expect("settings");
        let token = Some(settings.http.token.expose().to_string()).filter(|t| !t.is_empty());
        let app = App::build(settings).await.expect("app builds");
        let port = app.http_addr().port();
        let app_storage = app.storage();
        let shutdown = CancellationToken::new();
        let t = shutdown.clone();
        let handle = tokio::spawn(async move { app.run(t).await.expect("app runs") });
        TestApp {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            shutdown,
            handle,
            app_storage,
            client: reqwest::Client::new(),
            token,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn post(&self, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let resp = self
            .auth(self.client.post(self.url("/events")))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post_json(&self, v: &Value) -> (StatusCode, Value) {
        self.post(v.to_string()).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self
            .auth(self.client.get(self.url(path)))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap();
    }
}

#[tokio::test]
async fn posted_purchase_request_reads_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(dir.path(), &[]).await;

    let (status, body) = app.post(PURCHASE).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["result"], "success");
    assert_eq!(body["event_type"], "asset_purchase_request_processing");
    assert_eq!(body["object_id"], "PR-0000-0000-0042-001");
    let id = body["document_id"].as_str().unwrap().to_string();
    assert_eq!(
        id,
        "PR-0000-0000-0042-001:pending:2026-11-28T17:21:48+00:00"
    );

    let (status, doc) = app.get(&format!("/events/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["_id"], json!(id));
    assert_eq!(
        doc["_connect"]["event_type"],
        "asset_purchase_request_processing"
    );
    assert_eq!(doc["_connect"]["source"], "http");
    assert_eq!(EventDocument::object_of(&doc), fixture());

    let (status, list) = app.get("/events?object_id=PR-0000-0000-0042-001").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["count"], 1);
    assert_eq!(list["documents"][0], doc);

    let (status, _) = app.get("/events/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn posting_twice_stores_one_document() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(dir.path(), &[]).await;
    let (s1, b1) = app.post(PURCHASE).await;
    let (s2, b2) = app.post(PURCHASE).await;
    assert_eq!(s1, StatusCode::CREATED);
    assert_eq!(
        s2,
        StatusCode::OK,
        "a redelivery is not a new document: {b2}"
    );
    assert_eq!(b2["duplicate"], true);
    assert_eq!(b1["document_id"], b2["document_id"]);
    let (_, list) = app
        .get("/events?event_type=asset_purchase_request_processing")
        .await;
    assert_eq!(list["count"], 1);
    app.stop().await;
}

#[tokio::test]
async fn data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(dir.path(), &[]).await;
    let (_, body) = app.post(PURCHASE).await;
    let id = body["document_id"].as_str().unwrap().to_string();
    app.stop().await;

    let app = TestApp::spawn(dir.path(), &[]).await;
    let (status, doc) = app.get(&format!("/events/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(EventDocument::object_of(&doc), fixture());
    let (status, _) = app.post(PURCHASE).await;
    assert_eq!(status, StatusCode::OK, "still a duplicate after restart");
    app.stop().await;
}

#[tokio::test]
async fn unhandled_status_is_skipped_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(dir.path(), &[]).await;
    let mut pr = fixture();
    pr["status"] = json!("draft");
    let (status, body) = app.post_json(&pr).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], "skip");
    assert!(
        body["message"].as_str().unwrap().contains("draft"),
        "{body}"
    );
    let (_, list) = app.get("/events").await;
    assert_eq!(list["count"], 0);

    // an event type with no handler: skipped, saying why
    let env = json!({"event_type": "asset_change_request_processing", "object": fixture()});
    let (status, body) = app.post_json(&env).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"], "skip");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("no handler is registered"));
    let (_, list) = app.get("/events").await;
    assert_eq!(list["count"], 0);
    app.stop().await;
}

#[tokio::test]
async fn envelopes_and_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(dir.path(), &[]).await;
    let mut second = fixture();
    second["id"] = json!("PR-0000-0000-0043-001");
    let mut approved = fixture();
    approved["status"] = json!("approved");
    let body = json!([
        {"event_type": "asset_purchase_request_processing", "object": fixture(), "task_id": "TQ-1"},
        second,
        approved,
    ]);
    let (status, out) = app.post_json(&body).await;
    assert_eq!(status, StatusCode::CREATED, "{out}");
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r["result"] == "success"), "{out}");
    let (_, list) = app.get("/events?object_id=PR-0000-0000-0042-001").await;
    assert_eq!(list["count"], 2, "pending and approved are two states");
    assert_eq!(list["documents"][0]["status"], "approved", "newest first");
    assert_eq!(list["documents"][1]["_connect"]["task_id"], "TQ-1");
    let (_, list) = app.get("/events?status=pending&limit=1").await;
    assert_eq!(list["count"], 1);
    app.stop().await;
}

#[tokio::test]
async fn bad_input_gets_precise_errors_and_the_app_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(dir.path(), &[("HTTP_MAX_BODY_BYTES", "10000")]).await;

    let (status, body) = app.post("{\"id\": \"PR-1\", ").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "malformed_json");
    assert!(body["error"].as_str().unwrap().contains("EOF"), "{body}");

    let mut no_id = fixture();
    no_id.as_object_mut().unwrap().remove("id");
    let (status, body) = app.post_json(&no_id).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "missing_id", "{body}");

    let mut bad_type = fixture();
    bad_type["type"] = json!("teleport");
    let (status, body) = app.post_json(&bad_type).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "unknown_event_type", "{body}");
    assert!(body["error"].as_str().unwrap().contains("teleport"));

    let (status, body) = app
        .post_json(&json!({"event_type": "made_up_event", "object": {"id": "X-1"}}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "unknown_event_type");

    // one bad item in an array: nothing is processed, the index is named
    let (status, body) = app.post_json(&json!([fixture(), 42])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().starts_with("item 1:"),
        "{body}"
    );

    let big = format!("[{}]", [PURCHASE; 3].join(","));
    assert!(big.len() > 10000);
    let (status, body) = app.post(big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["code"], "payload_too_large");

    let (_, list) = app.get("/events").await;
    assert_eq!(list["count"], 0, "nothing from the bad requests was stored");
    let (status, _) = app.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.post(PURCHASE).await;
    assert_eq!(status, StatusCode::CREATED);
    app.stop().await;
}

#[tokio::test]
async fn token_is_required_on_a_non_loopback_bind() {
    let dir = tempfile::tempdir().unwrap();
    let err = settings(dir.path(), &[("HTTP_LISTEN", "0.0.0.0:0")]).unwrap_err();
    assert!(err.contains("HTTP_TOKEN"), "{err}");

    let app = TestApp::spawn(
        dir.path(),
        &[("HTTP_LISTEN", "0.0.0.0:0"), ("HTTP_TOKEN", "s3cret-token")],
    )
    .await;
    let client = reqwest::Client::new();
    let resp = client
        .post(app.url("/events"))
        .body(PURCHASE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("Bearer"));
    let resp = client
        .post(app.url("/events"))
        .bearer_auth("wrong")
        .body(PURCHASE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = client.get(app.url("/events")).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "read-back is protected too"
    );
    // health and metrics stay open for probes and scrapers
    assert_eq!(
        client
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let (status, _) = app.post(PURCHASE).await;
    assert_eq!(status, StatusCode::CREATED);
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(dir.path(), &[]).await;
    app.post(PURCHASE).await;
    app.post(PURCHASE).await;
    let mut draft = fixture();
    draft["status"] = json!("draft");
    app.post_json(&draft).await;
    let m = app.metrics().await;
    let has = |line: &str| m.lines().any(|l| l == line);
    assert!(
        has(
            r#"connect_ext_events_received_total{event_type="asset_purchase_request_processing",status="pending",source="http"} 2"#
        ),
        "{m}"
    );
    assert!(
        has(
            r#"connect_ext_events_handled_total{event_type="asset_purchase_request_processing",status="pending",source="http",result="success"} 2"#
        ),
        "{m}"
    );
    assert!(
        has(
            r#"connect_ext_events_handled_total{event_type="asset_purchase_request_processing",status="draft",source="http",result="skip"} 1"#
        ),
        "{m}"
    );
    assert!(
        has(
            r#"connect_ext_events_stored_total{event_type="asset_purchase_request_processing",status="pending",source="http",outcome="inserted"} 1"#
        ),
        "{m}"
    );
    assert!(
        has(
            r#"connect_ext_events_stored_total{event_type="asset_purchase_request_processing",status="pending",source="http",outcome="duplicate"} 1"#
        ),
        "{m}"
    );
    assert!(
        has(
            r#"connect_ext_storage_operation_seconds_count{backend="local",operation="save",outcome="ok"} 2"#
        ),
        "{m}"
    );
    app.stop().await;
}

#[tokio::test]
async fn storage_outage_asks_for_redelivery_and_stores_nothing_wrongly() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(dir.path(), &[]).await;
    let (status, _) = app.get("/ready").await;
    assert_eq!(status, StatusCode::OK);
    // Simulate the store going away (the writer is shut): the event must not be answered success.
    app.app_storage.current().close().await;
    let resp = app
        .client
        .post(app.url("/events"))
        .body(PURCHASE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "30");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["result"], "reschedule");
    assert_eq!(body["countdown"], 30);
    let (status, ready) = app.get("/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    app.stop().await;

    // After "recovery" (a restart on the same data), the redelivered event is stored once.
    let app = TestApp::spawn(dir.path(), &[]).await;
    let (status, _) = app.post(PURCHASE).await;
    assert_eq!(status, StatusCode::CREATED);
    app.stop().await;
}

#[tokio::test]
async fn configured_persistence_rules_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path(),
        &[(
            "PERSIST_EVENTS",
            "asset_purchase_request_processing:approved;asset_change_request_processing:pending",
        )],
    )
    .await;
    let (_, body) = app.post(PURCHASE).await;
    assert_eq!(body["result"], "skip", "pending is no longer persisted");
    let mut change = fixture();
    change["type"] = json!("change");
    let (status, body) = app.post_json(&change).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["event_type"], "asset_change_request_processing");
    app.stop().await;
}
