//! The Connect EaaS channel against an in-process fake platform (tests/it/support/fake_platform.rs)
//! that speaks the protocol as connect-protocol.md records it. The daemon is the real `App`
//! (or the real binary, for the signal and log tests) with the embedded SQLite backend.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use connect_extension_mongodb::events::{Event, EventType, Handler, Outcome, Status};
use serde_json::{json, Value};
use support::*;

/// The MongoDB-compatible test server (MONGODB_URI, as the other storage tests use).
fn mongodb_uri() -> String {
    std::env::var("MONGODB_URI").expect("MONGODB_URI: the MongoDB-compatible test server")
}

fn uuid_like() -> String {
    format!(
        "{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Polls `cond` for up to 20 s.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..2000 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

const STATUSES: &str = "pending,approved,failed,inquiring,scheduled,revoking,revoked";

fn output(result: &Value) -> &Value {
    &result["data"]["output"]
}

#[tokio::test]
async fn handshake_sends_the_exact_setup_request_on_both_channels() {
    let h = Harness::start(
        &[
            ("DB", "tutorial_db"),
            ("DB_PASSWORD", "db-pass-SECRET-2"),
            ("DB_HOST", "cluster0.example"),
            ("DB_USER", "alice"),
            ("STORAGE_BACKENDS", "local"),
        ],
        None,
    )
    .await;
    let (bg, ia) = h.platform.both_channels().await;
    for (conn, kind) in [(&bg, "background"), (&ia, "interactive")] {
        assert_eq!(
            conn.target,
            format!("/public/v1/devops/ws/{ENVIRONMENT_ID}/{INSTANCE_ID}?running_tasks=0&running_scheduled_tasks=0&runner_type={kind}")
        );
        assert_eq!(
            conn.headers.get("authorization").map(String::as_str),
            Some(API_KEY)
        );
        let expected = json!({
            "version": 2,
            "message_type": "setup_request",
            "data": {
                "event_subscriptions": {"asset_purchase_request_processing": STATUSES.split(',').collect::<Vec<_>>()},
                "ui_modules": null,
                "icon": null,
                "variables": [
                    {"name": "DATA_API_ENDPOINT", "initial_value": ""},
                    {"name": "API_KEY", "initial_value": "", "secure": true},
                    {"name": "DB", "initial_value": "tutorial_db"},
                    {"name": "HTTP_COLLECTION", "initial_value": "purchase_requests"},
                    {"name": "CLUSTER", "initial_value": "Cluster0"},
                    {"name": "DB_HOST", "initial_value": "cluster0.example"},
                    {"name": "DB_USER", "initial_value": "alice"},
                    {"name": "DB_PASSWORD", "initial_value": "", "secure": true},
                    {"name": "DRIVER_COLLECTION", "initial_value": "purchase_requests"}
                ],
                "schedulables": [],
                "anvil_callables": null,
                "transformations": null,
                "audience": ["vendor"],
                "repository": {
                    "readme_url": "https://github.com/cloudblue/connect-extension-mongodb/blob/main/README.md",
                    "changelog_url": "https://github.com/cloudblue/connect-extension-mongodb/blob/main/README.md#changelog"
                },
                "runner_version": "43.1",
                "proxied_connect_api": null,
                "model_type": "setup_request"
            }
        });
        assert_eq!(conn.setup_request, expected);
        // Same key order as the runner's model (serde_json keeps insertion order here).
        let keys: Vec<&String> = conn.setup_request["data"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        let want: Vec<&String> = expected["data"].as_object().unwrap().keys().collect();
        assert_eq!(keys, want);
        assert!(conn.setup_request_raw.starts_with(
            r#"{"version": 2, "message_type": "setup_request", "data": {"event_subscriptions": "#
        ));
    }
    assert_eq!(bg.setup_request, ia.setup_request);
    // /ready turns green once both channels are set up.
    let mut ready = (0, String::new());
    for _ in 0..200 {
        ready = h.get("/ready").await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert!(log_text().contains("Extension configuration has been updated."));
    h.shutdown().await;
}

#[tokio::test]
async fn ready_is_red_until_the_channels_are_set_up() {
    // A platform that never answers: the port is closed.
    let platform = FakePlatform::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = env_for(&platform, dir.path());
    env.insert("SERVER_ADDRESS".into(), "ws://127.0.0.1:1".into());
    let empty = dir.path().join("e.toml");
    std::fs::write(&empty, "").unwrap();
    let settings =
        connect_extension_mongodb::Settings::load_with(Some(&empty), move |k| env.get(k).cloned())
            .unwrap();
    let app = connect_extension_mongodb::App::build_with(
        settings,
        connect_extension_mongodb::AppOptions {
            registry_hook: None,
            connect_tuning: fast_tuning(),
            extension: None,
        },
    )
    .await
    .unwrap();
    let addr = app.http_addr();
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(app.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = reqwest::get(format!("http://{addr}/ready")).await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("Connect background channel") && body.contains("Connect interactive channel"),
        "{body}"
    );
    stop.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn two_hundred_purchase_requests_are_answered_and_stored() {
    let h = Harness::start(&[], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    for i in 0..200 {
        let id = format!("PR-0000-0000-{i:04}-001");
        h.platform.add_object(purchase_object(&id, "pending"));
    }
    for i in 0..200 {
        bg.send(&background_task(
            &format!("TQ-{i:04}"),
            &format!("PR-0000-0000-{i:04}-001"),
        ));
    }
    let results = bg.results(200).await;
    for (id, r) in &results {
        assert_eq!(r["version"], 2);
        assert_eq!(output(r)["result"], "success", "{id}: {r}");
        assert_eq!(output(r)["countdown"], 0);
        assert!(output(r)["runtime"].as_f64().unwrap() >= 0.0);
        assert_eq!(r["data"]["model_type"], "task");
        // options and input echoed.
        assert_eq!(r["data"]["options"]["correlation_id"], format!("corr-{id}"));
        assert_eq!(
            r["data"]["options"]["reply_to"],
            "eaas.results.ENV-0000-0000-01"
        );
        assert_eq!(r["data"]["input"]["data"], Value::Null);
    }
    let stored = h.stored().await;
    assert_eq!(stored.len(), 200);
    let doc = stored
        .iter()
        .find(|d| d["id"] == "PR-0000-0000-0007-001")
        .unwrap();
    assert_eq!(doc["_connect"]["task_id"], "TQ-0007");
    assert_eq!(doc["asset"]["items"][0]["quantity"], "5");
    // REST: raw filter, platform key, the runner's User-Agent shape.
    let log = h.platform.rest_log();
    let count = log
        .iter()
        .find(|r| r.target.contains("PR-0000-0000-0007-001") && r.target.contains("limit=0"))
        .unwrap();
    assert_eq!(
        count.target,
        format!("/public/v1/requests?and(eq(id,PR-0000-0000-0007-001),eq(type,purchase),in(status,({STATUSES})))&limit=0&offset=0")
    );
    assert_eq!(count.authorization, API_KEY);
    assert!(
        count.user_agent.starts_with("connect-extension-mongodb/"),
        "{}",
        count.user_agent
    );
    assert!(
        count
            .user_agent
            .ends_with(&format!(" {ENVIRONMENT_ID}/{INSTANCE_ID}")),
        "{}",
        count.user_agent
    );
    assert!(log
        .iter()
        .any(|r| r.target == "/public/v1/requests/PR-0000-0000-0007-001"));
    let (_, metrics) = h.get("/metrics").await;
    assert!(metrics.contains(r#"connect_ext_results_sent_total{event_type="asset_purchase_request_processing",category="background",result="success"} 200"#), "{metrics}");
    assert!(metrics.contains(r#"connect_ext_tasks_received_total{event_type="asset_purchase_request_processing",category="background"} 200"#));
    h.shutdown().await;
}

#[tokio::test]
async fn count_gate_zero_answers_skip_with_the_runner_message() {
    let h = Harness::start(&[], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    h.platform
        .add_object(purchase_object("PR-1-DRAFT", "draft"));
    bg.send(&background_task("TQ-skip-1", "PR-1-DRAFT"));
    bg.send(&background_task("TQ-skip-2", "PR-NOT-THERE"));
    let results = bg.results(2).await;
    for r in results.values() {
        assert_eq!(output(r)["result"], "skip");
        assert_eq!(
            output(r)["message"],
            format!("The request status does not match the supported statuses: {STATUSES}.")
        );
    }
    assert_eq!(
        h.platform.object_gets(),
        0,
        "the object is not fetched after a 0 count"
    );
    assert!(h.stored().await.is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn installation_api_key_is_used_for_the_fetch_and_echoed() {
    let h = Harness::start(&[], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    h.platform.add_object(purchase_object("PR-INST", "pending"));
    let mut t = background_task("TQ-inst", "PR-INST");
    t["data"]["options"]["api_key"] = json!("ApiKey SU-INST:installation-SECRET-3");
    bg.send(&t);
    let r = bg.recv_json().await;
    assert_eq!(output(&r)["result"], "success");
    assert_eq!(
        r["data"]["options"]["api_key"],
        "ApiKey SU-INST:installation-SECRET-3"
    );
    let log = h.platform.rest_log();
    assert!(log
        .iter()
        .filter(|r| r.target.contains("PR-INST"))
        .all(|r| r.authorization == "ApiKey SU-INST:installation-SECRET-3"));
    h.shutdown().await;
    assert!(!log_text().contains("installation-SECRET-3"));
}

#[tokio::test]
async fn rest_404_and_500_answer_retry() {
    let h = Harness::start(&[], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    h.platform.add_object(purchase_object("PR-404", "pending"));
    h.platform.add_object(purchase_object("PR-500", "pending"));
    h.platform
        .state
        .get_status
        .lock()
        .unwrap()
        .insert("PR-404".into(), 404);
    h.platform
        .state
        .get_status
        .lock()
        .unwrap()
        .insert("PR-500".into(), 500);
    bg.send(&background_task("TQ-404", "PR-404"));
    bg.send(&background_task("TQ-500", "PR-500"));
    let results = bg.results(2).await;
    let r404 = output(&results["TQ-404"]);
    assert_eq!(r404["result"], "retry");
    let m = r404["message"].as_str().unwrap();
    assert!(m.contains("PR-404") && m.contains("404"), "{m}");
    assert!(!m.contains("Traceback"));
    let r500 = output(&results["TQ-500"]);
    assert_eq!(r500["result"], "retry");
    assert!(r500["message"].as_str().unwrap().contains("500"));
    let log = h.platform.rest_log();
    let gets = |id: &str| {
        log.iter()
            .filter(|r| r.target == format!("/public/v1/requests/{id}"))
            .count()
    };
    assert_eq!(gets("PR-404"), 1, "4xx is not retried");
    assert_eq!(
        gets("PR-500"),
        4,
        "5xx is retried 3 times, as the runner does"
    );
    assert!(h.stored().await.is_empty());
    h.shutdown().await;
}

struct Slow;
#[async_trait]
impl Handler for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    async fn handle(&self, _e: &Event) -> Outcome {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Outcome::done()
    }
}

#[tokio::test]
async fn handler_timeout_answers_retry() {
    let hook: connect_extension_mongodb::RegistryHook = Box::new(|r, _, _| {
        r.register(
            EventType::AssetPurchaseRequestProcessing,
            vec![Status::Pending],
            Arc::new(Slow),
        );
    });
    let h = Harness::start(&[("BACKGROUND_TASK_MAX_EXECUTION_TIME", "1")], Some(hook)).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    h.platform.add_object(purchase_object("PR-SLOW", "pending"));
    bg.send(&background_task("TQ-slow", "PR-SLOW"));
    let r = bg.recv_json().await;
    assert_eq!(output(&r)["result"], "retry");
    assert!(output(&r)["message"]
        .as_str()
        .unwrap()
        .contains("BACKGROUND_TASK_MAX_EXECUTION_TIME (1 s)"));
    h.shutdown().await;
}

/// Answers `reschedule` with the countdown written in the object's `note`, unclamped.
struct Rescheduler;
#[async_trait]
impl Handler for Rescheduler {
    fn name(&self) -> &str {
        "rescheduler"
    }
    async fn handle(&self, e: &Event) -> Outcome {
        let countdown = e.object["note"].as_str().unwrap().parse().unwrap();
        Outcome::Reschedule {
            countdown,
            message: "later".into(),
        }
    }
}

#[tokio::test]
async fn reschedule_countdown_is_clamped_to_30() {
    let hook: connect_extension_mongodb::RegistryHook = Box::new(|r, _, _| {
        r.register(
            EventType::AssetPurchaseRequestProcessing,
            vec![Status::Pending],
            Arc::new(Rescheduler),
        );
    });
    let h = Harness::start(&[], Some(hook)).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    for (id, note) in [("PR-R5", "5"), ("PR-R0", "0"), ("PR-R600", "600")] {
        let mut o = purchase_object(id, "pending");
        o["note"] = json!(note);
        h.platform.add_object(o);
        bg.send(&background_task(&format!("TQ-{id}"), id));
    }
    let results = bg.results(3).await;
    for (task, want) in [("TQ-PR-R5", 30), ("TQ-PR-R0", 30), ("TQ-PR-R600", 600)] {
        let o = output(&results[task]);
        assert_eq!(o["result"], "reschedule");
        assert_eq!(o["countdown"], want, "{task}");
        assert_eq!(o["message"], "later");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn config_update_rebuilds_the_storage_and_later_events_land_in_the_new_one() {
    let h = Harness::start(&[], None).await;
    let (mut bg, ia) = h.platform.both_channels().await;
    for i in 0..10 {
        h.platform
            .add_object(purchase_object(&format!("PR-CFG-{i}"), "pending"));
    }
    for i in 0..5 {
        bg.send(&background_task(
            &format!("TQ-CFG-{i}"),
            &format!("PR-CFG-{i}"),
        ));
    }
    bg.results(5).await;
    let before = h.storage.current();
    // "Apply Changes": a new setup_response on both channels, with the storage moved to MongoDB
    // (`auto` picks the driver once MONGODB_URI is set).
    let db = format!("connect_cfg_{}", std::process::id());
    let mut data = setup_response_data();
    data["variables"] = json!([
        {"name": "MONGODB_URI", "value": mongodb_uri(), "secure": true},
        {"name": "DB", "value": db, "secure": false},
        {"name": "DRIVER_COLLECTION", "value": format!("c{}", uuid_like()), "secure": false},
        {"name": "API_KEY", "value": "data-api-key-SECRET-4", "secure": true}
    ]);
    bg.send(&setup_response_frame(&data));
    ia.send(&setup_response_frame(&data));
    assert!(
        h.storage_swapped_from(&before).await,
        "storage was not rebuilt"
    );
    drop(before);
    for i in 5..10 {
        bg.send(&background_task(
            &format!("TQ-CFG-{i}"),
            &format!("PR-CFG-{i}"),
        ));
    }
    let results = bg.results(5).await;
    assert!(results.values().all(|r| output(r)["result"] == "success"));
    // The new store has the later five only; the old one the first five.
    let new_ids: Vec<String> = h
        .stored()
        .await
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(new_ids.len(), 5, "{new_ids:?}");
    assert!(new_ids.iter().all(
        |id| ["PR-CFG-5", "PR-CFG-6", "PR-CFG-7", "PR-CFG-8", "PR-CFG-9"].contains(&id.as_str())
    ));
    let old =
        connect_extension_mongodb::storage::local::LocalStorage::open(&h.dir.path().join("data"))
            .unwrap();
    use connect_extension_mongodb::storage::Storage;
    let old_docs = old.list(&Default::default()).await.unwrap();
    assert_eq!(old_docs.len(), 5);
    let logs = log_text();
    assert!(
        logs.matches("Extension configuration has been updated.")
            .count()
            >= 4
    );
    assert!(!logs.contains("data-api-key-SECRET-4"));
    h.shutdown().await;
}

#[tokio::test]
async fn dropped_socket_reconnects_and_every_task_is_answered_once() {
    let h = Harness::start(&[], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    for i in 0..100 {
        h.platform
            .add_object(purchase_object(&format!("PR-DROP-{i:03}"), "pending"));
    }
    // First half answered on the first connection.
    for i in 0..50 {
        bg.send(&background_task(
            &format!("TQ-DROP-{i:03}"),
            &format!("PR-DROP-{i:03}"),
        ));
    }
    let mut answered = bg.results(50).await;
    // Second half: every object fetch is held, so all 50 are in flight when the socket drops.
    for i in 50..100 {
        h.platform.hold(&format!("PR-DROP-{i:03}"));
    }
    for i in 50..100 {
        bg.send(&background_task(
            &format!("TQ-DROP-{i:03}"),
            &format!("PR-DROP-{i:03}"),
        ));
    }
    h.platform.wait_object_gets(100).await;
    bg.drop_socket();
    // The runner reconnects with a full handshake and reports its running tasks.
    let mut bg2 = h.platform.next_conn().await;
    assert_eq!(bg2.runner_type(), "background");
    assert_eq!(bg2.query_param("running_tasks").as_deref(), Some("50"));
    assert_eq!(bg2.setup_request["message_type"], "setup_request");
    h.platform.release();
    let later = bg2.results(50).await;
    for (id, r) in later {
        assert_eq!(output(&r)["result"], "success");
        assert!(
            answered.insert(id.clone(), r).is_none(),
            "{id} answered twice"
        );
    }
    assert_eq!(answered.len(), 100);
    // Nothing more arrives (no duplicate answers).
    assert!(bg2.recv_within(Duration::from_millis(300)).await.is_none());
    // A platform redelivery of an answered task does not make a second document.
    bg2.send(&background_task("TQ-DROP-REDELIVERED", "PR-DROP-007"));
    let r = bg2.recv_json().await;
    assert_eq!(output(&r)["result"], "success");
    assert_eq!(h.stored().await.len(), 100);
    let (_, metrics) = h.get("/metrics").await;
    assert!(
        metrics.contains(r#"connect_ext_reconnects_total{channel="background"} 1"#),
        "{metrics}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn missing_pong_reconnects() {
    let h = Harness::start(&[("CONNECT_PING_INTERVAL", "1")], None).await;
    let (bg, _ia) = h.platform.both_channels().await;
    bg.freeze();
    let bg2 = h.platform.next_conn().await;
    assert_eq!(bg2.runner_type(), "background");
    assert!(log_text().contains("no pong within 1 s"));
    h.shutdown().await;
}

#[tokio::test]
async fn malformed_v1_and_unknown_frames_are_skipped_without_stalling() {
    let h = Harness::start(&[], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    h.platform
        .add_object(purchase_object("PR-AFTER-JUNK", "pending"));
    bg.send_text("this is not json {\"api_key\": \"junk-SECRET-5\"");
    bg.send(&json!({"message_type": "task", "data": {"task_id": "TQ-v1", "task_category": "background", "object_id": "PR-X"}}));
    bg.send(&json!({"version": 2, "message_type": "bogus_type_zz", "data": null}));
    bg.send(&json!({"version": 3, "message_type": "task", "data": null}));
    let mut no_model = background_task("TQ-no-model", "PR-X");
    no_model["data"]
        .as_object_mut()
        .unwrap()
        .remove("model_type");
    bg.send(&no_model);
    let started = std::time::Instant::now();
    bg.send(&background_task("TQ-after-junk", "PR-AFTER-JUNK"));
    // A task that cannot be read but names its id is answered `fail` (issue 9 item 2).
    let results = bg.results(2).await;
    assert_eq!(output(&results["TQ-no-model"])["result"], "fail");
    let r = &results["TQ-after-junk"];
    assert_eq!(output(r)["result"], "success");
    // The runner would sleep 5 s per bad frame (25 s here); we answer right away.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stalled: {:?}",
        started.elapsed()
    );
    let logs = log_text();
    assert!(logs.contains("unknown message_type `bogus_type_zz`"));
    assert!(logs.contains("protocol version 1 (missing) is not supported"));
    assert!(logs.contains("`model_type` is missing"));
    assert!(logs.contains("not JSON"));
    assert!(!logs.contains("junk-SECRET-5"));
    h.shutdown().await;
}

#[tokio::test]
async fn platform_shutdown_drains_in_flight_tasks_then_closes_1000() {
    let h = Harness::start(&[], None).await;
    let (mut bg, mut ia) = h.platform.both_channels().await;
    h.platform.add_object(purchase_object("PR-SD", "pending"));
    h.platform.hold("PR-SD");
    bg.send(&background_task("TQ-SD", "PR-SD"));
    h.platform.wait_object_gets(1).await;
    let shutdown = json!({"version": 2, "message_type": "shutdown", "data": null});
    bg.send(&shutdown);
    ia.send(&shutdown);
    assert!(matches!(ia.recv().await, Frame::Close(Some(1000))));
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.platform.release();
    let r = bg.recv_json().await;
    assert_eq!(r["data"]["options"]["task_id"], "TQ-SD");
    assert_eq!(output(&r)["result"], "success");
    assert!(matches!(bg.recv().await, Frame::Close(Some(1000))));
    // The daemon stops by itself (exit 0 for the binary) once both channels were shut down.
    let res = tokio::time::timeout(Duration::from_secs(10), h.run)
        .await
        .expect("daemon did not stop");
    res.unwrap().unwrap();
    assert_eq!(
        h.storage
            .current()
            .list(&Default::default())
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn interactive_validation_round_trip_and_explicit_failures() {
    let h = Harness::start(&[("CONNECT_PERSIST_INTERACTIVE", "true")], None).await;
    let (_bg, mut ia) = h.platform.both_channels().await;
    let subs = &ia.setup_request["data"]["event_subscriptions"];
    assert_eq!(subs["asset_purchase_request_validation"], json!([]));
    assert_eq!(subs["asset_change_request_validation"], json!([]));
    let mut draft = purchase_object("PR-DRAFT-1", "draft");
    draft["asset"]["params"][0]["value_error"] = json!("");
    ia.send(&interactive_task(
        "TQ-V1",
        "asset_purchase_request_validation",
        "PR-DRAFT-1",
        draft.clone(),
    ));
    ia.send(&interactive_task(
        "TQ-V-EMPTY",
        "asset_purchase_request_validation",
        "PR-DRAFT-2",
        json!({}),
    ));
    ia.send(&interactive_task(
        "TQ-PA",
        "product_action_execution",
        "PRA-1",
        json!({"jwt_payload": {"action_id": "sso"}, "method": "GET"}),
    ));
    ia.send(&interactive_task(
        "TQ-TCV",
        "tier_config_setup_request_validation",
        "TCR-1",
        json!({"id": "TCR-1", "status": "draft"}),
    ));
    let results = ia.results(4).await;
    let v = output(&results["TQ-V1"]);
    assert_eq!(v["result"], "success");
    assert_eq!(
        v["data"],
        json!({"http_status": 200, "headers": null, "body": draft})
    );
    let empty = output(&results["TQ-V-EMPTY"]);
    assert_eq!(empty["result"], "fail");
    assert!(empty["message"]
        .as_str()
        .unwrap()
        .contains("input.data is empty"));
    let pa = output(&results["TQ-PA"]);
    assert_eq!(pa["result"], "fail");
    assert_eq!(pa["data"]["http_status"], 400);
    assert!(pa["message"]
        .as_str()
        .unwrap()
        .contains("no handler is registered for `product_action_execution`"));
    // Unsubscribed validation type: the default answer (draft unchanged), no subscription needed.
    let tcv = output(&results["TQ-TCV"]);
    assert_eq!(tcv["result"], "success");
    assert_eq!(tcv["data"]["body"]["id"], "TCR-1");
    // persist_interactive: the validated draft is stored.
    let stored = h.stored().await;
    assert!(
        stored.iter().any(|d| d["id"] == "PR-DRAFT-1"
            && d["_connect"]["event_type"] == "asset_purchase_request_validation"),
        "{stored:?}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn unknown_task_category_and_scheduled_tasks_fail_explicitly() {
    let h = Harness::start(&[], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    let mut t = background_task("TQ-TFN", "TFR-1");
    t["data"]["options"]["task_category"] = json!("transformation");
    bg.send(&t);
    let mut s = background_task("TQ-SCHED", "EFS-1");
    s["data"]["options"]["task_category"] = json!("scheduled");
    s["data"]["input"]["event_type"] = json!("scheduled_execution");
    bg.send(&s);
    let results = bg.results(2).await;
    assert_eq!(output(&results["TQ-TFN"])["result"], "fail");
    assert!(output(&results["TQ-TFN"])["message"]
        .as_str()
        .unwrap()
        .contains("transformation"));
    assert_eq!(output(&results["TQ-SCHED"])["result"], "fail");
    assert!(output(&results["TQ-SCHED"])["message"]
        .as_str()
        .unwrap()
        .contains("EFS-1"));
    h.shutdown().await;
}

/// SIGTERM on the real binary: `shutdown` is sent on both channels first, the in-flight task that
/// finishes within the grace period is answered normally, the one that does not is answered
/// `retry`, the sockets close with 1000 and the process exits 0. Its stderr never shows a secret.
#[tokio::test]
async fn sigterm_sends_shutdown_drains_and_answers_retry_at_the_deadline() {
    let platform = FakePlatform::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut data = setup_response_data();
    data["variables"] =
        json!([{"name": "DB_PASSWORD", "value": "portal-pass-SECRET-6", "secure": true}]);
    *platform.state.setup_response.lock().unwrap() = data;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_connect-extension-mongodb"));
    cmd.env_clear()
        .envs(env_for(&platform, &dir.path().join("data")))
        .env("SHUTDOWN_GRACE", "3")
        .env("DATA_API_KEY", "data-key-SECRET-7")
        .env("RUST_LOG", "debug")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap();
    let (mut bg, mut ia) = platform.both_channels().await;
    platform.add_object(purchase_object("PR-FAST", "pending"));
    platform.add_object(purchase_object("PR-STUCK", "pending"));
    platform
        .state
        .get_delay
        .lock()
        .unwrap()
        .insert("PR-FAST".into(), Duration::from_millis(800));
    platform.hold("PR-STUCK");
    bg.send(&background_task("TQ-FAST", "PR-FAST"));
    let mut stuck = background_task("TQ-STUCK", "PR-STUCK");
    stuck["data"]["options"]["api_key"] = json!("ApiKey SU-I:inst-SECRET-8");
    bg.send(&stuck);
    bg.send_text(r#"{"version": 2, "message_type": "setup_response", "data": {"variables": [{"name": "X", "value": "junk-SECRET-9"}]}"#);
    platform.wait_object_gets(2).await;
    let pid = child.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for conn in [&mut bg, &mut ia] {
        let first = conn.recv_json().await;
        assert_eq!(
            first,
            json!({"version": 2, "message_type": "shutdown", "data": null})
        );
    }
    let results = bg.results(2).await;
    assert_eq!(output(&results["TQ-FAST"])["result"], "success");
    let stuck = output(&results["TQ-STUCK"]);
    assert_eq!(stuck["result"], "retry");
    assert!(stuck["message"].as_str().unwrap().contains("shutting down"));
    assert!(matches!(bg.recv().await, Frame::Close(Some(1000))));
    assert!(matches!(ia.recv().await, Frame::Close(Some(1000))));
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("daemon did not exit")
        .unwrap();
    assert!(out.status.success(), "exit status {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Extension configuration has been updated."),
        "{stderr}"
    );
    assert!(stderr.contains("frame skipped"), "{stderr}");
    for secret in [
        "platform-key-SECRET-1",
        "portal-pass-SECRET-6",
        "data-key-SECRET-7",
        "inst-SECRET-8",
        "junk-SECRET-9",
    ] {
        assert!(
            !stderr.contains(secret),
            "{secret} leaked into the logs:\n{stderr}"
        );
    }
    platform.release();
}

#[tokio::test]
async fn in_process_logs_never_show_the_platform_key() {
    let h = Harness::start(&[], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    h.platform.add_object(purchase_object("PR-LOG", "pending"));
    bg.send(&background_task("TQ-LOG", "PR-LOG"));
    bg.recv_json().await;
    h.shutdown().await;
    let logs = log_text();
    assert!(logs.contains("Connect channel set up"));
    assert!(!logs.contains("platform-key-SECRET-1"));
}

/// Issue 13 item 5: the platform cannot switch storage off (nor move it, nor change the id
/// strategy): those variables are refused with a WARN naming them, and events are still stored.
#[tokio::test]
async fn extension_variables_cannot_switch_storage_off() {
    let platform = FakePlatform::start().await;
    let mut data = setup_response_data();
    data["variables"] = json!([
        {"name": "STORAGE_BACKENDS", "value": "none", "secure": false},
        {"name": "STORAGE_PRIMARY", "value": "none", "secure": false},
        {"name": "LOCAL_DATA_DIR", "value": "/tmp/elsewhere-zz", "secure": false},
        {"name": "ID_STRATEGY", "value": "generated", "secure": false}
    ]);
    *platform.state.setup_response.lock().unwrap() = data;
    let h = Harness::start_with(platform, &[], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    h.platform
        .add_object(purchase_object("PR-NOT-DISCARDED", "pending"));
    bg.send(&background_task("TQ-ND", "PR-NOT-DISCARDED"));
    let r = bg.recv_json().await;
    assert_eq!(output(&r)["result"], "success", "{r}");
    let stored = h.stored().await;
    assert!(
        stored.iter().any(|d| d["id"] == "PR-NOT-DISCARDED"),
        "the event was not stored: {stored:?}"
    );
    assert_eq!(h.storage.current().name(), "local");
    // Redelivered: still one document (the id strategy was not switched to `generated`).
    bg.send(&background_task("TQ-ND-2", "PR-NOT-DISCARDED"));
    bg.recv_json().await;
    assert_eq!(h.stored().await.len(), 1);
    let logs = log_text();
    for var in [
        "STORAGE_BACKENDS",
        "STORAGE_PRIMARY",
        "LOCAL_DATA_DIR",
        "ID_STRATEGY",
    ] {
        assert!(
            logs.lines().any(|l| l.contains("WARN")
                && l.contains("extension variable refused")
                && l.contains(var)),
            "no WARN naming {var}"
        );
    }
    assert!(!logs.contains("elsewhere-zz"));
    h.shutdown().await;
}

/// Issue 13 item 10: local secrets never reach the platform — not in `setup_request` (secure
/// variables are declared with a placeholder), not in any other frame.
#[tokio::test]
async fn no_frame_to_the_platform_carries_a_local_secret() {
    let h = Harness::start(
        &[
            ("STORAGE_BACKENDS", "local"),
            ("DB_HOST", "cluster0.example"),
            ("DB_USER", "alice"),
            ("DB_PASSWORD", "db-pass-SECRET-21"),
            ("DATA_API_KEY", "data-key-SECRET-22"),
            ("DATA_API_PASSWORD", "data-pass-SECRET-23"),
            ("DATA_API_BEARER_TOKEN", "bearer-SECRET-24"),
            ("MONGODB_URI", "mongodb://u:uri-SECRET-25@db.example/"),
            ("HTTP_TOKEN", "http-token-SECRET-26"),
        ],
        None,
    )
    .await;
    let (mut bg, ia) = h.platform.both_channels().await;
    for conn in [&bg, &ia] {
        let vars = conn.setup_request["data"]["variables"].as_array().unwrap();
        for v in vars.iter().filter(|v| v["secure"] == true) {
            assert_eq!(v["initial_value"], "", "{v}");
        }
        assert!(vars
            .iter()
            .any(|v| v["name"] == "DB_USER" && v["initial_value"] == "alice"));
    }
    h.platform
        .add_object(purchase_object("PR-NOLEAK", "pending"));
    bg.send(&background_task("TQ-NOLEAK", "PR-NOLEAK"));
    assert_eq!(output(&bg.recv_json().await)["result"], "success");
    let platform = h.platform.clone();
    h.shutdown().await;
    let frames = platform.received();
    assert!(frames.len() >= 3, "{frames:?}");
    for f in &frames {
        assert!(
            !f.contains("SECRET"),
            "a local secret reached the platform: {f}"
        );
    }
}

/// Issue 13 item 12: an excerpt of a bad frame cannot forge a log line or reach the terminal raw.
#[tokio::test]
async fn bad_frame_excerpts_have_no_raw_control_characters() {
    let h = Harness::start(&[], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    bg.send_text("not json CTRL-MARK\nFORGED-LOG-LINE level=ERROR \u{1b}[31mred\u{1b}[0m nul\0end");
    h.platform.add_object(purchase_object("PR-CTRL", "pending"));
    bg.send(&background_task("TQ-CTRL", "PR-CTRL"));
    bg.recv_json().await;
    let logs = log_text();
    let line = logs
        .lines()
        .find(|l| l.contains("CTRL-MARK"))
        .expect("the bad frame is logged");
    assert!(line.contains("frame skipped"), "{line}");
    assert!(
        line.contains("FORGED-LOG-LINE"),
        "the excerpt continues on the same line: {line}"
    );
    assert!(!logs.lines().any(|l| l.starts_with("FORGED-LOG-LINE")));
    assert!(!logs.contains('\u{1b}') && !logs.contains('\0'));
    h.shutdown().await;
}

/// Issue 13 item 15: a setting of a backend that is not selected triggers no rebuild.
#[tokio::test]
async fn a_setting_of_an_unselected_backend_does_not_rebuild_the_storage() {
    let h = Harness::start(&[], None).await;
    let (bg, ia) = h.platform.both_channels().await;
    let updated = || {
        log_text()
            .matches("Extension configuration has been updated.")
            .count()
    };
    assert!(eventually(|| updated() >= 2).await);
    let before = h.storage.current();
    let seen = updated();
    let mut data = setup_response_data();
    data["variables"] = json!([
        {"name": "HTTP_COLLECTION", "value": "another_http_collection", "secure": false},
        {"name": "CLUSTER", "value": "Cluster9", "secure": false},
        {"name": "DRIVER_COLLECTION", "value": "another_driver_collection", "secure": false}
    ]);
    bg.send(&setup_response_frame(&data));
    ia.send(&setup_response_frame(&data));
    assert!(eventually(|| updated() >= seen + 2).await);
    assert!(
        Arc::ptr_eq(&before, &h.storage.current()),
        "the local storage was rebuilt for settings of unselected backends"
    );
    h.shutdown().await;
}

/// Issue 13 item 15: a storage rebuild that hangs (a MongoDB that accepts and never answers) is
/// bounded; the channel serves events on the current storage meanwhile.
#[tokio::test]
async fn a_hanging_storage_rebuild_is_bounded() {
    // Accepts TCP connections (kernel backlog) and never answers.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = black_hole.local_addr().unwrap();
    let platform = FakePlatform::start().await;
    let mut data = setup_response_data();
    data["variables"] = json!([
        {"name": "MONGODB_URI", "value": format!("mongodb://{addr}/?connectTimeoutMS=600000"), "secure": true},
        {"name": "DRIVER_SERVER_SELECTION_TIMEOUT_MS", "value": "600000", "secure": false}
    ]);
    *platform.state.setup_response.lock().unwrap() = data;
    let h = Harness::start_with(platform, &[], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    h.platform.add_object(purchase_object("PR-HANG", "pending"));
    bg.send(&background_task("TQ-HANG", "PR-HANG"));
    let r = bg.recv_json().await;
    assert_eq!(output(&r)["result"], "success", "{r}");
    assert!(h.stored().await.iter().any(|d| d["id"] == "PR-HANG"));
    // Both channels set up; the same failing configuration is not tried again for the second
    // channel (each attempt would hold its set-up for the whole timeout).
    let mut ready = 0;
    for _ in 0..500 {
        ready = h.get("/ready").await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready, 200);
    assert_eq!(
        log_text()
            .matches("timed out; keeping the current storage")
            .count(),
        1
    );
    drop(black_hole);
    h.shutdown().await;
}

fn results_pending(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(r#"connect_ext_results_pending{channel="background"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Issue 13 item 15: while the platform is unreachable, results wait in a buffer bounded by bytes
/// (CONNECT_RESULT_BUFFER_BYTES) as well as by count; none is lost: all are sent after the reconnect.
#[tokio::test]
async fn the_result_buffer_is_bounded_by_bytes() {
    let h = Harness::start(&[("CONNECT_RESULT_BUFFER_BYTES", "4096")], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    for i in 0..20 {
        let id = format!("PR-BUF-{i:02}");
        h.platform.add_object(purchase_object(&id, "pending"));
        h.platform.hold(&id);
        bg.send(&background_task(&format!("TQ-BUF-{i:02}"), &id));
    }
    h.platform.wait_object_gets(20).await;
    h.platform.refuse_connections(true);
    bg.drop_socket();
    let _ = bg.recv().await; // gone
    h.platform.release();
    // Wait until the pending count stops moving.
    let mut last = -1.0;
    let mut stable = 0;
    while stable < 30 {
        let (_, m) = h.get("/metrics").await;
        let now = results_pending(&m).unwrap_or(0.0);
        if now == last && now > 0.0 {
            stable += 1;
        } else {
            stable = 0;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let frame_len = background_task("TQ-BUF-00", "PR-BUF-00").to_string().len();
    let bound = (4096 / frame_len + 1) as f64;
    assert!(
        last <= bound,
        "{last} results buffered (bound {bound}, ~{frame_len} bytes each)"
    );
    h.platform.refuse_connections(false);
    let mut bg2 = h.platform.next_conn().await;
    while bg2.runner_type() != "background" {
        bg2 = h.platform.next_conn().await;
    }
    let results = bg2.results(20).await;
    assert!(results.values().all(|r| output(r)["result"] == "success"));
    h.shutdown().await;
}

/// Issue 13 item 15: an over-long REST answer is never read whole: a retriable error (`retry`).
#[tokio::test]
async fn an_over_long_rest_answer_is_a_retriable_error() {
    let h = Harness::start(&[], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    let mut big = purchase_object("PR-BIG", "pending");
    big["note"] = json!("x".repeat(400 * 1024)); // the tests' bound is 256 KiB
    h.platform.add_object(big);
    bg.send(&background_task("TQ-BIG", "PR-BIG"));
    let r = bg.recv_json().await;
    assert_eq!(output(&r)["result"], "retry", "{}", output(&r));
    let m = output(&r)["message"].as_str().unwrap();
    assert!(m.contains("longer than"), "{m}");
    assert!(h.stored().await.is_empty());
    h.shutdown().await;
}

/// A store whose `close` never returns (a hung database at shutdown).
struct HangingClose(Arc<dyn connect_extension_mongodb::storage::Storage>);

#[async_trait]
impl connect_extension_mongodb::storage::Storage for HangingClose {
    fn name(&self) -> &'static str {
        "hanging_close"
    }
    async fn save(
        &self,
        doc: &connect_extension_mongodb::storage::EventDocument,
    ) -> Result<
        connect_extension_mongodb::storage::SaveOutcome,
        connect_extension_mongodb::storage::StorageError,
    > {
        self.0.save(doc).await
    }
    async fn ping(&self) -> Result<(), connect_extension_mongodb::storage::StorageError> {
        self.0.ping().await
    }
    async fn get(
        &self,
        id: &str,
    ) -> Result<Option<Value>, connect_extension_mongodb::storage::StorageError> {
        self.0.get(id).await
    }
    async fn list(
        &self,
        q: &connect_extension_mongodb::storage::ListQuery,
    ) -> Result<Vec<Value>, connect_extension_mongodb::storage::StorageError> {
        self.0.list(q).await
    }
    async fn close(&self) {
        std::future::pending::<()>().await
    }
}

/// Issue 13 item 15: closing the storage at shutdown is bounded by the grace period.
#[tokio::test]
async fn storage_close_at_shutdown_is_bounded_by_the_grace() {
    let h = Harness::start(&[("SHUTDOWN_GRACE", "1")], None).await;
    let (_bg, _ia) = h.platform.both_channels().await;
    let current = h.storage.current();
    h.storage.replace(Arc::new(HangingClose(current)));
    h.stop.cancel();
    let res = tokio::time::timeout(Duration::from_secs(20), h.run)
        .await
        .expect("the daemon waited forever for storage close");
    res.unwrap().unwrap();
    assert!(log_text().contains("storage did not close within the grace period"));
}

/// Issue 13 item 14: a setting that used to panic both channels (and exit 0) is refused at start
/// with a non-zero exit, naming the variable.
#[tokio::test]
async fn an_out_of_range_ping_interval_fails_the_daemon() {
    let platform = FakePlatform::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_connect-extension-mongodb"));
    cmd.env_clear()
        .envs(env_for(&platform, &dir.path().join("data")))
        .env("CONNECT_PING_INTERVAL", u64::MAX.to_string())
        .env("SHUTDOWN_GRACE", "1")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("daemon did not exit")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit 0 after a panic:\n{stderr}");
    assert!(stderr.contains("CONNECT_PING_INTERVAL"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Issue 13 item 12: an event type from a frame never becomes a raw metric label (a forged
/// `"} 1\n…` would add a metric line), nor a raw log line.
#[tokio::test]
async fn a_forged_event_type_in_a_frame_never_forges_a_metric_or_a_log_line() {
    let h = Harness::start(&[], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    let forged = "x\"} 1\nforged_metric_total 42\n# EOF\n\u{1b}[31m";
    let mut t = background_task("TQ-forged", "PR-FORGED\nforged log line");
    t["data"]["input"]["event_type"] = json!(forged);
    bg.send(&t);
    let results = bg.results(1).await;
    assert_eq!(results.len(), 1, "the task is answered");
    let (_, metrics) = h.get("/metrics").await;
    assert!(!metrics.contains("forged_metric_total"), "{metrics}");
    assert!(!metrics.contains('\u{1b}'), "{metrics}");
    assert!(
        metrics.contains(
            r#"connect_ext_tasks_received_total{event_type="other",category="background"} 1"#
        ),
        "{metrics}"
    );
    let logs = log_text();
    assert!(
        !logs.lines().any(|l| l.starts_with("forged log line")),
        "a frame forged a log line: {logs}"
    );
    assert!(!logs.contains('\u{1b}'), "raw escape in the logs");
    h.shutdown().await;
}
