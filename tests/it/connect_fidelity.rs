//! Fidelity of the websocket channel to the Python runner (issue 9 items 1–4 and 7), against the
//! in-process fake platform (tests/it/support/fake_platform.rs): `shutdown` of any version, lenient
//! task `output` and explicit answers to tasks that cannot be read, reading (and answering pings)
//! while saturated, the upgrade's `User-Agent`, closing 1009/1007 and reconnecting, and garbage
//! between real tasks.

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

fn output(result: &Value) -> &Value {
    &result["data"]["output"]
}

fn objects(h: &Harness, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let id = format!("PR-{prefix}-{i:03}");
            h.platform.add_object(purchase_object(&id, "pending"));
            id
        })
        .collect()
}

/// Waits until the daemon stopped by itself (both channels were shut down by the platform).
async fn stops_by_itself(h: Harness) {
    let res = tokio::time::timeout(Duration::from_secs(20), h.run)
        .await
        .expect("the daemon did not stop after the platform's shutdown");
    res.unwrap().unwrap();
}

/// Item 1: the runner defaults a missing `version` to 1 and still turns a v1 `shutdown` into a
/// shutdown; any other version is honoured as well.
#[tokio::test]
async fn shutdown_without_version_or_of_version_1_is_honoured() {
    let h = Harness::start(&[], None).await;
    let (mut bg, mut ia) = h.platform.both_channels().await;
    bg.send(&json!({"message_type": "shutdown"}));
    ia.send(&json!({"version": 1, "message_type": "shutdown", "data": null}));
    assert!(matches!(bg.recv().await, Frame::Close(Some(1000))));
    assert!(matches!(ia.recv().await, Frame::Close(Some(1000))));
    stops_by_itself(h).await;
}

#[tokio::test]
async fn shutdown_of_an_unknown_version_is_honoured() {
    let h = Harness::start(&[], None).await;
    let (mut bg, mut ia) = h.platform.both_channels().await;
    bg.send(&json!({"version": 3, "message_type": "shutdown", "data": null}));
    ia.send(&json!({"version": "2", "message_type": "shutdown", "data": {"x": 1}}));
    assert!(matches!(bg.recv().await, Frame::Close(Some(1000))));
    assert!(matches!(ia.recv().await, Frame::Close(Some(1000))));
    stops_by_itself(h).await;
}

/// Item 2: `output` as eaas-core reads it (countdown defaulted, runtime null → 0.0, loose types);
/// the answer replaces it.
#[tokio::test]
async fn a_task_with_a_lenient_output_is_processed() {
    let h = Harness::start(&[], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    let ids = objects(&h, "LENIENT", 4);
    let outputs = [
        json!({"result": "retry", "data": null, "runtime": null, "message": "earlier try"}),
        json!({"result": "success", "data": null, "countdown": 0, "runtime": null, "message": null}),
        json!({"result": "reschedule", "countdown": "30", "runtime": 2}),
        json!({"result": 5, "countdown": 1.0, "runtime": "0.5", "data": {"a": 1}}),
    ];
    for (i, (id, out)) in ids.iter().zip(outputs).enumerate() {
        let mut t = background_task(&format!("TQ-LENIENT-{i}"), id);
        t["data"]["output"] = out;
        bg.send(&t);
    }
    let results = bg.results(4).await;
    for (id, r) in &results {
        assert_eq!(output(r)["result"], "success", "{id}: {r}");
        assert!(output(r)["countdown"].is_u64(), "{r}");
        assert!(output(r)["runtime"].is_number(), "{r}");
    }
    assert_eq!(h.stored().await.len(), 4);
    h.shutdown().await;
}

/// Item 2: a task that cannot be read but names its task id is answered `fail` with the reason,
/// never left unanswered; one without a task id is skipped and logged.
#[tokio::test]
async fn an_unreadable_task_with_an_id_is_answered_fail() {
    let h = Harness::start(&[], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    h.platform
        .add_object(purchase_object("PR-UNREAD-OK", "pending"));
    let mut no_object = background_task("TQ-UNREAD-1", "PR-X");
    no_object["data"]["input"]
        .as_object_mut()
        .unwrap()
        .remove("object_id");
    bg.send(&no_object);
    let mut no_model = background_task("TQ-UNREAD-2", "PR-X");
    no_model["data"]
        .as_object_mut()
        .unwrap()
        .remove("model_type");
    bg.send(&no_model);
    let mut bad_input = background_task("TQ-UNREAD-3", "PR-X");
    bad_input["data"]["input"] = json!("not an object");
    bg.send(&bad_input);
    let mut no_id = background_task("TQ-UNREAD-4", "PR-X");
    no_id["data"]["options"]
        .as_object_mut()
        .unwrap()
        .remove("task_id");
    bg.send(&no_id);
    bg.send(&background_task("TQ-UNREAD-OK", "PR-UNREAD-OK"));
    let results = bg.results(4).await;
    for id in ["TQ-UNREAD-1", "TQ-UNREAD-2", "TQ-UNREAD-3"] {
        let r = &results[id];
        assert_eq!(r["version"], 2);
        assert_eq!(r["data"]["model_type"], "task");
        assert_eq!(output(r)["result"], "fail", "{r}");
        let msg = output(r)["message"].as_str().unwrap();
        assert!(msg.contains("could not be read"), "{msg}");
        assert_eq!(r["data"]["options"]["correlation_id"], format!("corr-{id}"));
    }
    assert_eq!(output(&results["TQ-UNREAD-OK"])["result"], "success");
    assert!(bg.recv_within(Duration::from_millis(300)).await.is_none());
    assert!(log_text().contains("frame skipped"));
    h.shutdown().await;
}

/// Item 3: with every slot busy the reader keeps reading: server pings are answered, waiting
/// tasks are started as slots free, and a `shutdown` is honoured at once.
#[tokio::test]
async fn a_saturated_channel_answers_pings_and_honours_shutdown() {
    let h = Harness::start(&[("CONNECT_MAX_IN_FLIGHT", "2")], None).await;
    let (mut bg, mut ia) = h.platform.both_channels().await;
    let ids = objects(&h, "SAT", 4);
    for id in &ids {
        h.platform.hold(id);
    }
    for (i, id) in ids.iter().enumerate() {
        bg.send(&background_task(&format!("TQ-SAT-{i}"), id));
    }
    h.platform.wait_object_gets(2).await;
    let mut pongs = 0;
    for _ in 0..3 {
        bg.ping(b"fake-platform");
        match bg.recv_within(Duration::from_secs(5)).await {
            Some(Frame::Pong) => pongs += 1,
            other => panic!("expected a pong while saturated, got {other:?}"),
        }
    }
    assert_eq!(pongs, 3);
    // Shutdown while saturated: the two waiting tasks never started and are answered `retry`
    // at once; the two running ones finish after the release; then close 1000.
    bg.send(&json!({"version": 2, "message_type": "shutdown", "data": null}));
    ia.send(&json!({"version": 2, "message_type": "shutdown", "data": null}));
    let waiting = bg.results(2).await;
    for (id, r) in &waiting {
        assert_eq!(output(r)["result"], "retry", "{id}: {r}");
    }
    assert_eq!(h.platform.object_gets(), 2, "a waiting task was started");
    h.platform.release();
    let done = bg.results(2).await;
    for (id, r) in &done {
        assert!(!waiting.contains_key(id));
        assert_eq!(output(r)["result"], "success", "{id}: {r}");
    }
    assert!(matches!(bg.recv().await, Frame::Close(Some(1000))));
    assert!(matches!(ia.recv().await, Frame::Close(Some(1000))));
    stops_by_itself(h).await;
}

/// Item 3: waiting tasks start as slots free; when the waiting queue is full too, a new task is
/// answered `retry` at once instead of the reader stopping (pings keep being answered).
#[tokio::test]
async fn overflow_beyond_the_waiting_queue_is_answered_retry_and_pings_go_on() {
    let h = Harness::start(&[("CONNECT_MAX_IN_FLIGHT", "1")], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    let ids = objects(&h, "OVER", 4);
    for id in &ids {
        h.platform.hold(id);
    }
    for (i, id) in ids.iter().enumerate() {
        bg.send(&background_task(&format!("TQ-OVER-{i}"), id));
    }
    // One runs, one waits (queue of CONNECT_MAX_IN_FLIGHT), two are answered `retry`.
    let busy = bg.results(2).await;
    for id in ["TQ-OVER-2", "TQ-OVER-3"] {
        let out = output(&busy[id]);
        assert_eq!(out["result"], "retry", "{out}");
        assert!(out["message"].as_str().unwrap().contains("busy"), "{out}");
    }
    bg.ping(b"fake-platform");
    let mut pongs = 0;
    while pongs == 0 {
        match bg.recv_within(Duration::from_secs(5)).await {
            Some(Frame::Pong) => pongs += 1,
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    h.platform.release();
    let done = bg.results(2).await;
    for id in ["TQ-OVER-0", "TQ-OVER-1"] {
        assert_eq!(output(&done[id])["result"], "success");
    }
    assert_eq!(h.stored().await.len(), 2);
    h.shutdown().await;
}

/// Item 4: the upgrade request names this daemon and its version, in the runner's style.
#[tokio::test]
async fn the_upgrade_carries_a_user_agent() {
    let h = Harness::start(&[], None).await;
    let (bg, ia) = h.platform.both_channels().await;
    for conn in [&bg, &ia] {
        let ua = conn.headers.get("user-agent").cloned().unwrap_or_default();
        assert!(
            ua.starts_with(&format!(
                "connect-extension-mongodb/{} ",
                env!("CARGO_PKG_VERSION")
            )),
            "{ua:?}"
        );
        assert!(
            ua.ends_with(&format!("{ENVIRONMENT_ID}/{INSTANCE_ID}")),
            "{ua}"
        );
        assert_eq!(conn.headers.get("authorization").unwrap(), API_KEY);
    }
    h.shutdown().await;
}

/// Item 7: a frame above CONNECT_MAX_FRAME_BYTES is answered with close 1009 (message too big),
/// a text frame that is not UTF-8 with 1007, then the runner reconnects and serves tasks.
#[tokio::test]
async fn an_oversize_frame_closes_1009_and_the_runner_reconnects() {
    let h = Harness::start(&[("CONNECT_MAX_FRAME_BYTES", "2097152")], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    h.platform
        .add_object(purchase_object("PR-BIG-1", "pending"));
    h.platform
        .add_object(purchase_object("PR-BIG-2", "pending"));
    let big = format!(
        "{{\"version\": 2, \"message_type\": \"task\", \"data\": \"{}\"}}",
        "x".repeat(2 * 1024 * 1024 + 10)
    );
    bg.send_text(&big);
    match bg.recv().await {
        Frame::Close(Some(1009)) => {}
        other => panic!("expected close 1009, got {other:?}"),
    }
    let mut bg2 = h.platform.next_conn().await;
    assert_eq!(bg2.runner_type(), "background");
    bg2.send(&background_task("TQ-BIG-1", "PR-BIG-1"));
    assert_eq!(output(&bg2.recv_json().await)["result"], "success");

    bg2.send_invalid_utf8_text(b"{\"version\": 2, \xff\xfe}".to_vec());
    match bg2.recv().await {
        Frame::Close(Some(1007)) => {}
        other => panic!("expected close 1007, got {other:?}"),
    }
    let mut bg3 = h.platform.next_conn().await;
    bg3.send(&background_task("TQ-BIG-2", "PR-BIG-2"));
    assert_eq!(output(&bg3.recv_json().await)["result"], "success");
    let (_, metrics) = h.get("/metrics").await;
    assert!(
        metrics.contains(r#"connect_ext_reconnects_total{channel="background"} 2"#),
        "{metrics}"
    );
    h.shutdown().await;
}

/// Sends one garbage frame.
type Sender = Box<dyn Fn(&Conn)>;

/// Garbage between real tasks: every real task gets exactly one result, garbage that names a task
/// id gets one `fail`, and nothing else is sent.
#[tokio::test]
async fn garbage_between_real_tasks_never_stalls_healthy_ones() {
    let h = Harness::start(&[], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    let ids = objects(&h, "GARB", 12);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_obj = format!(
        "{{\"version\": 2, \"message_type\": \"task\", \"data\": {}1{}}}",
        "{\"a\": ".repeat(5_000),
        "}".repeat(5_000)
    );
    let mut wrong_types = background_task("TQ-GARB-WRONG", "PR-X");
    wrong_types["data"]["input"]["object_id"] = json!({"$gt": ""});
    let mut wrong_category = background_task("TQ-GARB-CAT", "PR-X");
    wrong_category["data"]["options"]["task_category"] = json!(["background"]);
    let garbage: Vec<Sender> = vec![
        Box::new(|c| c.send_text("not json at all")),
        Box::new(|c| c.send_text("")),
        Box::new(|c| c.send_binary(&[0xff, 0x00, 0xfe, 0x80])),
        Box::new(|c| c.send_binary(br#"{"version": 2, "message_type": "bogus", "data": null}"#)),
        Box::new(|c| c.send_text("[1, 2, 3]")),
        Box::new(|c| c.send_text("42")),
        Box::new(|c| c.send(&json!({"version": 2, "message_type": "no_such_type", "data": {}}))),
        Box::new(|c| c.send(&json!({"version": 2, "message_type": 7, "data": null}))),
        Box::new(|c| {
            let mut t = background_task("TQ-GARB-V1", "PR-X");
            t.as_object_mut().unwrap().remove("version");
            c.send(&t)
        }),
        Box::new(|c| {
            let mut t = background_task("TQ-GARB-V3", "PR-X");
            t["version"] = json!(3);
            c.send(&t)
        }),
        Box::new(move |c| c.send(&wrong_types)),
        Box::new(move |c| c.send(&wrong_category)),
        Box::new(|c| c.send(&json!({"version": 2, "message_type": "task", "data": "a string"}))),
        Box::new(|c| c.send(&json!({"version": 2, "message_type": "task", "data": null}))),
        Box::new(move |c| c.send_text(&deep)),
        Box::new(move |c| c.send_text(&deep_obj)),
        Box::new(|c| {
            c.send(&json!({"version": 2, "message_type": "setup_response", "data": {"model_type": "setup_response", "variables": "nope"}}))
        }),
        Box::new(|c| {
            c.send_text("{\"version\": 2, \"message_type\": \"task\", \"data\": {\"options\": ")
        }),
        Box::new(|c| c.send_binary("{\"é\": \"\u{0}\u{1b}[31m\"}".as_bytes())),
    ];
    let mut real = 0;
    for (i, g) in garbage.iter().enumerate() {
        if i % 2 == 0 && real < ids.len() {
            bg.send(&background_task(&format!("TQ-GARB-{real:03}"), &ids[real]));
            real += 1;
        }
        g(&bg);
    }
    while real < ids.len() {
        bg.send(&background_task(&format!("TQ-GARB-{real:03}"), &ids[real]));
        real += 1;
    }
    // 12 real tasks, plus one `fail` for each garbage task that names its id.
    let results: HashMap<String, Value> = bg.results(14).await;
    for i in 0..ids.len() {
        let r = &results[&format!("TQ-GARB-{i:03}")];
        assert_eq!(output(r)["result"], "success", "{r}");
    }
    for id in ["TQ-GARB-WRONG", "TQ-GARB-CAT"] {
        assert_eq!(output(&results[id])["result"], "fail", "{}", results[id]);
    }
    assert!(bg.recv_within(Duration::from_millis(500)).await.is_none());
    assert_eq!(h.stored().await.len(), ids.len());
    // Still the same connection: garbage costs no reconnect.
    let (_, metrics) = h.get("/metrics").await;
    let reconnects = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"connect_ext_reconnects_total{channel="background"} "#))
        .map_or(0.0, |v| v.trim().parse::<f64>().unwrap());
    assert_eq!(reconnects, 0.0, "{metrics}");
    h.shutdown().await;
}

/// Item 3: a local stop (SIGTERM) while saturated: the waiting task never started and is answered
/// `retry` at once; the running one is answered `retry` at the grace deadline; close 1000.
#[tokio::test]
async fn a_local_stop_while_saturated_answers_the_waiting_tasks_retry() {
    let h = Harness::start(
        &[("CONNECT_MAX_IN_FLIGHT", "1"), ("SHUTDOWN_GRACE", "3")],
        None,
    )
    .await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    let ids = objects(&h, "STOP", 2);
    for id in &ids {
        h.platform.hold(id);
    }
    for (i, id) in ids.iter().enumerate() {
        bg.send(&background_task(&format!("TQ-STOP-{i}"), id));
    }
    h.platform.wait_object_gets(1).await;
    h.stop.cancel();
    let mut results = HashMap::new();
    let mut shutdown_sent = false;
    loop {
        match bg.recv().await {
            Frame::Json(v) if v["message_type"] == "shutdown" => shutdown_sent = true,
            Frame::Json(v) => {
                let id = v["data"]["options"]["task_id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                assert!(results.insert(id, v).is_none(), "answered twice");
            }
            Frame::Close(Some(1000)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(shutdown_sent);
    let waiting = output(&results["TQ-STOP-1"]);
    assert_eq!(waiting["result"], "retry");
    assert!(
        waiting["message"]
            .as_str()
            .unwrap()
            .contains("never started"),
        "{waiting}"
    );
    assert_eq!(output(&results["TQ-STOP-0"])["result"], "retry");
    assert_eq!(h.platform.object_gets(), 1, "the waiting task was started");
    let _ = tokio::time::timeout(Duration::from_secs(20), h.run).await;
}
