//! The HTTP task channel end to end: the real app on port 0, the real embedded SQLite store in a
//! temp dir, real HTTP requests.

use connect_extension_mongodb::storage::EventDocument;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{http_settings as settings, TestApp};

const PURCHASE: &str = include_str!("../fixtures/purchase_request.json");

fn fixture() -> Value {
    serde_json::from_str(PURCHASE).unwrap()
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
        .header("content-type", "application/json")
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
        .header("content-type", "application/json")
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
    app.storage.current().close().await;
    let resp = app
        .client
        .post(app.url("/events"))
        .header("content-type", "application/json")
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

// ---------------------------------------------------------------------------------------------
// Hostile clients: slow requests, foreign pages, injection into metrics and logs
// ---------------------------------------------------------------------------------------------

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{capture_logs, log_text};

/// Reads until the peer closes; `None` when it is still open after `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|_| out)
}

/// One HTTP/1.1 response (status, body) read from a kept-alive connection; `None` when nothing
/// complete arrived within `limit`.
async fn read_response(stream: &mut TcpStream, limit: Duration) -> Option<(u16, String)> {
    tokio::time::timeout(limit, async {
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&data[..end]).to_string();
                let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if data.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&data[end + 4..end + 4 + len]).to_string();
                    return Some((status, body));
                }
            }
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            data.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .ok()
    .flatten()
}

async fn get_health(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
}

/// Generous bound for "the daemon closed it": far above the configured timeouts, so a slow
/// machine cannot fail the test, and the test still fails when the connection is never closed.
const CLOSED_WITHIN: Duration = Duration::from_secs(15);

#[tokio::test]
async fn a_half_sent_header_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(dir.path(), &[("HTTP_HEADER_TIMEOUT_MS", "300")]).await;
    let mut half = TcpStream::connect(app.addr).await.unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0")
        .await
        .unwrap();
    let silent = TcpStream::connect(app.addr).await.unwrap();
    let out = read_until_closed(&mut half, CLOSED_WITHIN)
        .await
        .expect("a half-sent request head must not hold the connection");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    let mut silent = silent;
    assert!(
        read_until_closed(&mut silent, CLOSED_WITHIN)
            .await
            .is_some(),
        "a connection that never sends anything must be closed too"
    );
    let (status, _) = app.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_and_closed_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(dir.path(), &[("HTTP_BODY_TIMEOUT_MS", "300")]).await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    let partial = &PURCHASE[..PURCHASE.len() / 2];
    conn.write_all(
        format!(
            "POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{partial}",
            PURCHASE.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let out = read_until_closed(&mut conn, CLOSED_WITHIN)
        .await
        .expect("a stalled body must not hold the connection");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("HTTP_BODY_TIMEOUT_MS"), "{text}");
    let (_, list) = app.get("/events").await;
    assert_eq!(list["count"], 0);
    let (status, _) = app.post(PURCHASE).await;
    assert_eq!(status, StatusCode::CREATED, "the app keeps serving");
    app.stop().await;
}

#[tokio::test]
async fn connections_above_the_cap_wait_while_the_others_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path(),
        &[
            ("HTTP_MAX_CONNECTIONS", "2"),
            ("HTTP_HEADER_TIMEOUT_MS", "120000"),
        ],
    )
    .await;
    let limit = Duration::from_secs(15);
    let mut first = TcpStream::connect(app.addr).await.unwrap();
    get_health(&mut first).await;
    assert_eq!(read_response(&mut first, limit).await.unwrap().0, 200);
    let mut second = TcpStream::connect(app.addr).await.unwrap();
    get_health(&mut second).await;
    assert_eq!(read_response(&mut second, limit).await.unwrap().0, 200);

    // Both kept alive and idle: a third connection waits for a free slot.
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    get_health(&mut third).await;
    assert!(
        read_response(&mut third, Duration::from_secs(1))
            .await
            .is_none(),
        "a connection above HTTP_MAX_CONNECTIONS was served"
    );
    // The connections within the cap keep working.
    get_health(&mut first).await;
    assert_eq!(read_response(&mut first, limit).await.unwrap().0, 200);
    // A slot frees up: the waiting connection is served.
    drop(second);
    assert_eq!(
        read_response(&mut third, limit)
            .await
            .expect("served once a slot is free")
            .0,
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn a_post_that_is_not_json_is_refused_415_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(dir.path(), &[]).await;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonp"),
        None,
    ] {
        let mut req = app.client.post(app.url("/events")).body(PURCHASE);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "unsupported_media_type", "{body}");
    }
    let (_, list) = app.get("/events").await;
    assert_eq!(list["count"], 0, "nothing from a non-JSON POST was stored");
    let resp = app
        .client
        .post(app.url("/events"))
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(PURCHASE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    app.stop().await;
}

#[tokio::test]
async fn a_foreign_host_is_refused_and_nothing_is_read_or_stored() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(dir.path(), &[]).await;
    let (status, _) = app.post(PURCHASE).await;
    assert_eq!(status, StatusCode::CREATED);
    let port = app.addr.port();
    // DNS rebinding: the page's own name in Host, the loopback address behind it.
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_string(),
        format!("127.0.0.1.evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
    ] {
        let resp = app.get_as(&host, "/events").await;
        assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST, "{host}");
        let text = resp.text().await.unwrap();
        assert!(!text.contains("PR-0000-0000-0042-001"), "{host}: {text}");
        let resp = app
            .get_as(
                &host,
                "/events/PR-0000-0000-0042-001:pending:2026-11-28T17:21:48+00:00",
            )
            .await;
        assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST, "{host}");
        let mut other = fixture();
        other["id"] = json!("PR-FORGED-1");
        let resp = app
            .client
            .post(app.url("/events"))
            .header("host", &host)
            .header("content-type", "application/json")
            .body(other.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST, "{host}");
    }
    let (_, list) = app.get("/events").await;
    assert_eq!(list["count"], 1, "the forged POSTs stored nothing");
    // Loopback names, with or without a port, are the listener's own.
    for host in [
        format!("localhost:{port}"),
        "LOCALHOST".to_string(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "[::1]".to_string(),
    ] {
        let resp = app.get_as(&host, "/events").await;
        assert_eq!(resp.status(), StatusCode::OK, "{host}");
    }
    // Probes and scrapers reach a pod by its IP: health, readiness and metrics take any Host.
    for path in ["/health", "/ready", "/metrics"] {
        let resp = app.get_as("10.1.2.3:8080", path).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    // No CORS: a preflight is refused and nothing grants a foreign origin access.
    let resp = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/events"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(!resp.status().is_success(), "{}", resp.status());
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    let resp = app
        .client
        .get(app.url("/events"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    app.stop().await;
}

#[tokio::test]
async fn allowed_hosts_admit_the_listed_names_only() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path(),
        &[("HTTP_ALLOWED_HOSTS", "events.internal, Hook.Example:9000")],
    )
    .await;
    for (host, status) in [
        ("events.internal:8080", 200),
        ("events.internal", 200),
        ("hook.example:9000", 200),
        ("hook.example:9001", 421),
        ("hook.example", 421),
        ("evil.example", 421),
        ("localhost:1", 200),
    ] {
        assert_eq!(app.get_as(host, "/events").await.status(), status, "{host}");
    }
    app.stop().await;

    // With a token (the token is what a foreign page cannot have), any Host is accepted unless
    // an allow-list is configured.
    let app = TestApp::spawn(dir.path(), &[("HTTP_TOKEN", "t0ken")]).await;
    let resp = app.get_as("cem.namespace.svc:8080", "/events").await;
    assert_eq!(resp.status(), StatusCode::OK);
    app.stop().await;
    let app = TestApp::spawn(
        dir.path(),
        &[("HTTP_TOKEN", "t0ken"), ("HTTP_ALLOWED_HOSTS", "cem.svc")],
    )
    .await;
    let resp = app.get_as("cem.namespace.svc:8080", "/events").await;
    assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST);
    app.stop().await;
}

#[tokio::test]
async fn a_forged_status_never_becomes_a_metric_line() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(dir.path(), &[]).await;
    let forged = "draft\"} 1\nconnect_ext_forged_total{x=\"y\"} 42\n# EOF\n";
    let mut pr = fixture();
    pr["status"] = json!(forged);
    pr["id"] = json!("PR-FORGE-1");
    let (status, body) = app
        .post_json(&json!({"event_type": "asset_purchase_request_processing", "object": pr}))
        .await;
    assert!(status.is_client_error() || status.is_success(), "{body}");
    let mut pr2 = fixture();
    pr2["status"] = json!("made-up-status");
    let (status, body) = app.post_json(&pr2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], "skip", "{body}");
    let m = app.metrics().await;
    assert!(
        !m.lines().any(|l| l.starts_with("connect_ext_forged")),
        "a forged metric line:\n{m}"
    );
    assert!(!m.contains("made-up-status"), "{m}");
    assert!(
        m.lines().any(|l| l
            == r#"connect_ext_events_received_total{event_type="asset_purchase_request_processing",status="other",source="http"} 1"#),
        "{m}"
    );
    // Every sample line is well formed: name{labels} value.
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("connect_ext_"), "{line}\n{m}");
    }
    app.stop().await;
}

#[tokio::test]
async fn control_characters_in_bad_input_are_escaped_in_errors_and_logs() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(dir.path(), &[]).await;
    let hostile = "PR-CTRL-7\n2026-12-01T00:00:00Z  INFO forged: all good\u{1b}[2J\u{0}";
    let mut pr = fixture();
    pr["id"] = json!(hostile);
    pr["status"] = json!("draft");
    let (status, body) = app.post_json(&pr).await;
    let error = body["error"].as_str().unwrap_or("").to_string();
    assert!(
        !error.contains('\n') && !error.contains('\u{1b}') && !error.contains('\0'),
        "{error:?}"
    );
    let (_, body2) = app
        .post_json(
            &json!({"event_type": "made_up\nforged-type\u{1b}[31m", "object": {"id": "X-1"}}),
        )
        .await;
    let error2 = body2["error"].as_str().unwrap().to_string();
    assert!(
        error2.contains("made_up\\nforged-type\\u{1b}[31m"),
        "{error2:?}"
    );
    app.stop().await;

    let logs = log_text();
    assert!(
        logs.contains("PR-CTRL-7\\n"),
        "the hostile id was logged (escaped): status {status}, {body}\n{logs}"
    );
    assert!(
        !logs.contains('\u{1b}') && !logs.contains('\0'),
        "raw control characters in the log:\n{logs}"
    );
    assert!(
        !logs.lines().any(|l| l.starts_with("2026-12-01T00:00:00Z")),
        "a forged log line:\n{logs}"
    );
}

#[test]
fn slow_client_settings_are_range_checked_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("HTTP_HEADER_TIMEOUT_MS", "0"),
        ("HTTP_HEADER_TIMEOUT_MS", "18446744073709551615"),
        ("HTTP_BODY_TIMEOUT_MS", "99"),
        ("HTTP_MAX_CONNECTIONS", "0"),
        ("HTTP_MAX_CONNECTIONS", "18446744073709551615"),
        ("HTTP_ALLOWED_HOSTS", "evil example"),
        ("HTTP_ALLOWED_HOSTS", "host:port"),
    ] {
        let err = settings(dir.path(), &[(var, value)]).unwrap_err();
        assert!(err.contains(var), "{var}={value}: {err}");
    }
    let ok = settings(
        dir.path(),
        &[
            ("HTTP_HEADER_TIMEOUT_MS", "100"),
            ("HTTP_BODY_TIMEOUT_MS", "3600000"),
            ("HTTP_MAX_CONNECTIONS", "1"),
            (
                "HTTP_ALLOWED_HOSTS",
                "a.example, b.example:8080, [fd00::1], *",
            ),
        ],
    );
    assert!(ok.is_ok(), "{ok:?}");
}
