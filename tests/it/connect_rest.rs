//! Issue 9 item 6: the Connect REST calls of a background task under load and faults, against the
//! fake platform's REST fault knobs (tests/it/support/fake_platform.rs, "rest knobs"): one REST slot
//! per task across its count and object GET, retries that cover the body, `Retry-After` within the
//! task's budget, and every task answered — never `success` without the object.

use crate::support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn output(result: &Value) -> &Value {
    &result["data"]["output"]
}

fn stored_ids(stored: &[Value]) -> HashSet<String> {
    stored
        .iter()
        .map(|d| d["id"].as_str().unwrap_or("").to_string())
        .collect()
}

/// A burst of 10× CONNECT_REST_CONCURRENCY tasks with a latency on every REST call: a task that
/// got a slot for its count keeps it for its GET, so the first object GET comes after at most
/// `concurrency` counts (today: after every task's count), and when the first result is sent
/// fewer than 2× concurrency counts were made.
#[tokio::test]
async fn a_burst_finishes_started_tasks_before_spending_new_counts() {
    const C: usize = 4;
    const N: usize = 10 * C;
    let h = Harness::start(&[("CONNECT_REST_CONCURRENCY", "4")], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    h.platform.set_rest_latency(Duration::from_millis(150));
    for i in 0..N {
        h.platform
            .add_object(purchase_object(&format!("PR-BURST-{i:03}"), "pending"));
    }
    for i in 0..N {
        bg.send(&background_task(
            &format!("TQ-BURST-{i:03}"),
            &format!("PR-BURST-{i:03}"),
        ));
    }
    let first = bg.recv_json().await;
    let counts_at_first_result = h.platform.rest_call_count(RestCall::Count);
    assert_eq!(output(&first)["result"], "success", "{first}");
    assert!(
        counts_at_first_result <= 2 * C,
        "{counts_at_first_result} count calls were made before the first result (concurrency {C})"
    );
    let calls = h.platform.rest_call_log();
    let first_get = calls
        .iter()
        .position(|c| c.0 == RestCall::Get)
        .expect("a GET before the first result");
    assert!(
        first_get <= C,
        "{first_get} count calls came before the first object GET (concurrency {C})"
    );
    let mut rest = bg.results(N - 1).await;
    let first_id = first["data"]["options"]["task_id"].as_str().unwrap();
    assert!(!rest.contains_key(first_id), "{first_id} answered twice");
    rest.insert(first_id.to_string(), first.clone());
    assert_eq!(rest.len(), N);
    assert!(rest.values().all(|r| output(r)["result"] == "success"));
    assert_eq!(h.stored().await.len(), N);
    h.shutdown().await;
}

/// A body cut off mid-read is a network error, retried like one: the task then succeeds. Both
/// shapes: `Content-Length` longer than what came before the close, and a close-delimited body
/// whose JSON ends early.
#[tokio::test]
async fn a_truncated_object_body_is_retried_and_the_task_succeeds() {
    let h = Harness::start(&[], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    for (id, fault) in [
        ("PR-TRUNC-1", ScriptedFault::Truncated),
        ("PR-TRUNC-2", ScriptedFault::CutJson),
    ] {
        h.platform.add_object(purchase_object(id, "pending"));
        h.platform.script_rest(RestCall::Get, id, &[fault]);
    }
    bg.send(&background_task("TQ-TRUNC-1", "PR-TRUNC-1"));
    bg.send(&background_task("TQ-TRUNC-2", "PR-TRUNC-2"));
    let results = bg.results(2).await;
    for (id, r) in &results {
        assert_eq!(output(r)["result"], "success", "{id}: {}", output(r));
    }
    let calls = h.platform.rest_call_log();
    for id in ["PR-TRUNC-1", "PR-TRUNC-2"] {
        let gets = calls
            .iter()
            .filter(|c| c.0 == RestCall::Get && c.1 == id)
            .count();
        assert_eq!(gets, 2, "{id}: the cut-off GET is retried once");
    }
    let ids = stored_ids(&h.stored().await);
    assert!(ids.contains("PR-TRUNC-1") && ids.contains("PR-TRUNC-2"));
    h.shutdown().await;
}

/// A 429 with `Retry-After: 1` is waited out (≥ 1 s between the two GETs) and the task succeeds;
/// a `Retry-After` beyond the task's budget (BACKGROUND_TASK_MAX_EXECUTION_TIME) is not waited
/// for: the task answers `retry` after that one GET.
#[tokio::test]
async fn retry_after_is_honoured_within_the_task_budget() {
    let h = Harness::start(&[("BACKGROUND_TASK_MAX_EXECUTION_TIME", "30")], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    h.platform
        .add_object(purchase_object("PR-429-SHORT", "pending"));
    h.platform
        .add_object(purchase_object("PR-429-LONG", "pending"));
    h.platform.script_rest(
        RestCall::Get,
        "PR-429-SHORT",
        &[ScriptedFault::TooMany("1".into())],
    );
    h.platform.script_rest(
        RestCall::Get,
        "PR-429-LONG",
        &[ScriptedFault::TooMany("3600".into())],
    );
    bg.send(&background_task("TQ-429-LONG", "PR-429-LONG"));
    let long = bg.recv_json().await;
    assert_eq!(output(&long)["result"], "retry", "{long}");
    let m = output(&long)["message"].as_str().unwrap();
    assert!(m.contains("429") && m.contains("Retry-After"), "{m}");

    bg.send(&background_task("TQ-429-SHORT", "PR-429-SHORT"));
    let short = bg.recv_json().await;
    assert_eq!(output(&short)["result"], "success", "{short}");
    let calls = h.platform.rest_call_log();
    let gets = |id: &str| -> Vec<std::time::Instant> {
        calls
            .iter()
            .filter(|c| c.0 == RestCall::Get && c.1 == id)
            .map(|c| c.2)
            .collect()
    };
    let short_gets = gets("PR-429-SHORT");
    assert_eq!(short_gets.len(), 2, "the 429 is retried once");
    assert!(
        short_gets[1] - short_gets[0] >= Duration::from_secs(1),
        "Retry-After: 1 was not waited out: {:?}",
        short_gets[1] - short_gets[0]
    );
    assert_eq!(
        gets("PR-429-LONG").len(),
        1,
        "a wait beyond the budget is not taken"
    );
    let ids = stored_ids(&h.stored().await);
    assert!(ids.contains("PR-429-SHORT") && !ids.contains("PR-429-LONG"));
    h.shutdown().await;
}

/// Faults on the count and on the object GET — 500, 404, slow, invalid JSON, a body always cut
/// off — next to healthy tasks: every task is answered exactly once, `success` only with the object
/// stored, and the slow ones do not hold up the healthy ones.
#[tokio::test]
async fn rest_faults_answer_every_task_and_never_success_without_the_object() {
    let h = Harness::start(&[], None).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    let always = |f: ScriptedFault| vec![f; 4];
    let cases: Vec<(&str, RestCall, Vec<ScriptedFault>, &str)> = vec![
        (
            "PR-F-C500",
            RestCall::Count,
            always(ScriptedFault::Status(500)),
            "retry",
        ),
        (
            "PR-F-C404",
            RestCall::Count,
            vec![ScriptedFault::Status(404)],
            "retry",
        ),
        (
            "PR-F-CBAD",
            RestCall::Count,
            vec![ScriptedFault::InvalidJson],
            "success",
        ),
        (
            "PR-F-G500",
            RestCall::Get,
            always(ScriptedFault::Status(500)),
            "retry",
        ),
        (
            "PR-F-G404",
            RestCall::Get,
            vec![ScriptedFault::Status(404)],
            "retry",
        ),
        (
            "PR-F-GBAD",
            RestCall::Get,
            vec![ScriptedFault::InvalidJson],
            "retry",
        ),
        (
            "PR-F-GCUT",
            RestCall::Get,
            always(ScriptedFault::Truncated),
            "retry",
        ),
        (
            "PR-F-SLOW",
            RestCall::Get,
            vec![ScriptedFault::Slow(Duration::from_secs(3))],
            "success",
        ),
    ];
    for (id, call, faults, _) in &cases {
        h.platform.add_object(purchase_object(id, "pending"));
        h.platform.script_rest(*call, id, faults);
    }
    for i in 0..20 {
        h.platform
            .add_object(purchase_object(&format!("PR-F-OK-{i:02}"), "pending"));
    }
    bg.send(&background_task("TQ-PR-F-SLOW", "PR-F-SLOW"));
    for (id, ..) in &cases[..cases.len() - 1] {
        bg.send(&background_task(&format!("TQ-{id}"), id));
    }
    for i in 0..20 {
        bg.send(&background_task(
            &format!("TQ-PR-F-OK-{i:02}"),
            &format!("PR-F-OK-{i:02}"),
        ));
    }
    let mut order = Vec::new();
    let mut results = std::collections::HashMap::new();
    while results.len() < cases.len() + 20 {
        let v = bg.recv_json().await;
        let id = v["data"]["options"]["task_id"]
            .as_str()
            .unwrap()
            .to_string();
        order.push(id.clone());
        assert!(
            results.insert(id.clone(), v).is_none(),
            "{id} answered twice"
        );
    }
    for (id, _, _, expected) in &cases {
        let r = &results[&format!("TQ-{id}")];
        assert_eq!(output(r)["result"], *expected, "{id}: {}", output(r));
    }
    for i in 0..20 {
        let r = &results[&format!("TQ-PR-F-OK-{i:02}")];
        assert_eq!(output(r)["result"], "success", "{}", output(r));
    }
    let slow_at = order.iter().position(|id| id == "TQ-PR-F-SLOW").unwrap();
    let healthy_done = order
        .iter()
        .take(slow_at)
        .filter(|id| id.starts_with("TQ-PR-F-OK-"))
        .count();
    assert_eq!(
        healthy_done, 20,
        "a slow GET held up healthy tasks: {order:?}"
    );
    // success ⇔ stored.
    let ids = stored_ids(&h.stored().await);
    for (task_id, r) in &results {
        let object = task_id.trim_start_matches("TQ-");
        assert_eq!(
            output(r)["result"] == "success",
            ids.contains(object),
            "{task_id}: {}",
            output(r)
        );
    }
    h.shutdown().await;
}

/// SIGTERM-like stop in the middle of a burst: every task is answered (`success` or `retry`),
/// and the tasks answered `retry` did not spend a count call first —
/// only the sessions on the wire at the stop (at most `concurrency`) made a count without its GET.
#[tokio::test]
async fn a_stop_mid_burst_spends_no_count_on_tasks_that_never_get_their_object() {
    const C: usize = 4;
    const N: usize = 10 * C;
    let h = Harness::start(
        &[("CONNECT_REST_CONCURRENCY", "4"), ("SHUTDOWN_GRACE", "1")],
        None,
    )
    .await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    h.platform.set_rest_latency(Duration::from_millis(150));
    for i in 0..N {
        h.platform
            .add_object(purchase_object(&format!("PR-STOP-{i:03}"), "pending"));
        bg.send(&background_task(
            &format!("TQ-STOP-{i:03}"),
            &format!("PR-STOP-{i:03}"),
        ));
    }
    let mut results = std::collections::HashMap::new();
    let first = bg.recv_json().await;
    results.insert(
        first["data"]["options"]["task_id"]
            .as_str()
            .unwrap()
            .to_string(),
        first,
    );
    h.stop.cancel();
    while results.len() < N {
        match bg.recv().await {
            Frame::Json(v) if v["message_type"] == "task" => {
                let id = v["data"]["options"]["task_id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                assert!(
                    results.insert(id.clone(), v).is_none(),
                    "{id} answered twice"
                );
            }
            Frame::Json(_) | Frame::Text(_) | Frame::Pong => {}
            Frame::Close(_) | Frame::Gone => break,
        }
    }
    assert_eq!(results.len(), N, "every task is answered before the close");
    let successes = results
        .values()
        .filter(|r| output(r)["result"] == "success")
        .count();
    assert!(results
        .values()
        .all(|r| output(r)["result"] == "success" || output(r)["result"] == "retry"));
    assert!(successes < N, "the stop came mid-burst");
    let counts = h.platform.rest_call_count(RestCall::Count);
    let gets = h.platform.rest_call_count(RestCall::Get);
    assert!(
        counts - gets <= C,
        "{counts} counts but {gets} GETs: counts were spent on tasks that never got their object"
    );
    h.shutdown().await;
}
