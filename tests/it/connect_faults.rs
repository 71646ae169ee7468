//! The Connect channel under faults: the **real daemon binary** (a child process configured by
//! environment variables only, the embedded SQLite store unless said otherwise) against the fake
//! platform of tests/it/support/fake_platform.rs misbehaving on purpose — TCP connections dropped
//! without a close frame and tasks redelivered, garbage frames, REST faults, duplicate
//! deliveries, SIGTERM and `kill -9` mid-stream, "Apply Changes" mid-stream, and saturation.
//!
//! Stored documents are read back through `GET /events` (or, after the daemon exited, from the
//! SQLite file). Timeouts here are hang guards, never speed assertions; the one documented bound
//! checked is the reconnect after a drop (docs/connect.md: a 5 s pause, then full-jitter backoff).
//!
//! "Every task ends with exactly one final result": the platform closes a task with the first
//! result it gets; a task redelivered after a drop may be answered once per delivery (the
//! result of the first delivery is kept and sent after the reconnect), so a task may receive
//! at most as many results as it had deliveries, all of them saying the same.

use crate::support;

use crate::support::mongo;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// docs/connect.md: "5 s pause after a drop" (the runner's value).
const RECONNECT_PAUSE: Duration = Duration::from_secs(5);
/// Hang-guard slack on top of documented waits (the machine is shared and slow).
const SLACK: Duration = Duration::from_secs(10);
/// Hang guard for a whole exchange.
const LIMIT: Duration = Duration::from_secs(60);

fn output(result: &Value) -> &Value {
    &result["data"]["output"]
}

fn task_id(result: &Value) -> &str {
    result["data"]["options"]["task_id"].as_str().unwrap_or("")
}

/// A fake platform, a temporary directory and the daemon started against them, both channels up.
struct Rig {
    platform: Arc<FakePlatform>,
    dir: tempfile::TempDir,
    daemon: Daemon,
    bg: Conn,
    ia: Conn,
}

impl Rig {
    async fn start(extra: &[(&str, &str)]) -> Rig {
        let platform = FakePlatform::start().await;
        Self::start_with(platform, extra).await
    }

    async fn start_with(platform: Arc<FakePlatform>, extra: &[(&str, &str)]) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Daemon::spawn(
            &platform,
            dir.path(),
            &dir.path().join("data"),
            "daemon",
            extra,
        );
        let (bg, ia) = platform.both_channels().await;
        Rig {
            platform,
            dir,
            daemon,
            bg,
            ia,
        }
    }

    fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// SIGTERM; asserts exit 0 within the grace (plus slack).
    async fn sigterm_exit_0(&mut self, grace: Duration) {
        assert!(
            self.daemon.child.try_wait().unwrap().is_none(),
            "the daemon is no longer running:\n{}",
            self.daemon.log_tail(4000)
        );
        self.daemon.signal(libc::SIGTERM);
        let status = self
            .daemon
            .wait(grace + SLACK)
            .await
            .unwrap_or_else(|| panic!("no exit within the grace {grace:?} + {SLACK:?}"));
        assert!(
            status.success(),
            "exit {status:?}:\n{}",
            self.daemon.log_tail(4000)
        );
    }
}

/// Books frames from `conn` until at least `answered` tasks of the ledger have a result.
async fn pump_until_answered(ledger: &mut Ledger, conn: &mut Conn, answered: usize) {
    let deadline = Instant::now() + LIMIT;
    while ledger.sent() - ledger.open().len() < answered {
        let left = deadline.saturating_duration_since(Instant::now());
        match conn.next_frame(left).await {
            Some(Frame::Json(v)) => {
                ledger.record(&v);
            }
            Some(Frame::Text(_)) => {}
            other => panic!(
                "connection ended or silent ({other:?}) with {} of {answered} answered",
                ledger.sent() - ledger.open().len()
            ),
        }
    }
}

/// Asserts one stored document per object of `expected`, and nothing else.
fn assert_stored_once(docs: &[Value], expected: &HashSet<String>) {
    let counts = object_id_counts(docs);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let stored: HashSet<String> = counts.keys().cloned().collect();
    let missing: Vec<_> = expected.difference(&stored).collect();
    assert!(missing.is_empty(), "not stored: {missing:?}");
    let extra: Vec<_> = stored.difference(expected).collect();
    assert!(extra.is_empty(), "stored but not expected: {extra:?}");
}

// ---------------------------------------------------------------------------------------------
// TCP drops and redelivery

/// The TCP connection is dropped without a close frame three times mid-stream — a FIN, a RST,
/// and a RST half-way through a task frame — while results are flowing; after each reconnect the
/// platform redelivers every task it has no result for. Every task is answered `success`, never
/// more often than delivered; each object is stored exactly once; each reconnect comes within
/// the documented pause (plus slack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_drops_mid_stream_with_redelivery_answer_every_task_and_store_each_once() {
    let mut rig = Rig::start(&[("SHUTDOWN_GRACE", "5")]).await;
    let n = 200;
    let mut objects = HashSet::new();
    for i in 0..n {
        let id = format!("PR-DROP-{i:04}");
        rig.platform.add_object(purchase_object(&id, "pending"));
        // Results trickle in over a few hundred milliseconds, so drops land mid-stream.
        rig.platform
            .state
            .get_delay
            .lock()
            .unwrap()
            .insert(id.clone(), Duration::from_millis((i % 7) as u64 * 40));
        objects.insert(id);
    }
    let task = |i: usize| background_task(&format!("TQ-DROP-{i:04}"), &format!("PR-DROP-{i:04}"));
    let mut ledger = Ledger::new();
    let batch = 50;
    for round in 0..3 {
        for i in round * batch..(round + 1) * batch {
            ledger.send(&rig.bg, task(i));
        }
        pump_until_answered(&mut ledger, &mut rig.bg, round * batch + 20).await;
        match round {
            0 => rig.bg.drop_socket(),
            1 => rig.bg.reset_socket(),
            _ => {
                // The first task of the last batch is cut off half-way through its frame.
                ledger.send_cut(&rig.bg, task(3 * batch));
            }
        }
        // Whatever the runner still sent on the old connection is booked, then it reconnects.
        ledger.drain_for(&mut rig.bg, Duration::from_secs(30)).await;
        ledger
            .reconnect(&rig.platform, &mut rig.bg, RECONNECT_PAUSE + SLACK)
            .await;
    }
    for i in 3 * batch + 1..n {
        ledger.send(&rig.bg, task(i));
    }
    assert!(
        ledger
            .settle(&rig.platform, &mut rig.bg, RECONNECT_PAUSE + SLACK, LIMIT)
            .await,
        "open: {:?}",
        ledger.open()
    );
    // Late answers of earlier deliveries, if any, are booked too.
    ledger.drain_for(&mut rig.bg, Duration::from_secs(1)).await;
    ledger.assert_consistent();
    assert_eq!(ledger.sent(), n);
    for (id, result) in ledger.finals() {
        assert_eq!(result, "success", "{id}: {:?}", ledger.results(&id));
    }
    assert!(
        ledger.deliveries(&format!("TQ-DROP-{:04}", 3 * batch)) >= 2,
        "the task cut off mid-frame was redelivered"
    );
    assert_eq!(ledger.reconnects.len(), 3, "{:?}", ledger.reconnects);
    for (i, took) in ledger.reconnects.iter().enumerate() {
        assert!(
            *took <= RECONNECT_PAUSE + SLACK,
            "reconnect {i} took {took:?} (documented pause {RECONNECT_PAUSE:?})"
        );
    }
    assert_stored_once(&rig.daemon.documents().await, &objects);
    let (_, metrics) = rig.daemon.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains(r#"connect_ext_reconnects_total{channel="background"} 3"#),
        "{metrics}"
    );
    rig.sigterm_exit_0(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------------
// Garbage frames

/// Frames no platform should send, none of which may crash the daemon or stall the tasks
/// around them. Task-shaped garbage names `TQ-JUNK-…` tasks for objects the platform does not
/// have, so an answer to one (allowed, e.g. once parsing is lenient) can never be `success`.
fn junk_frames() -> Vec<(&'static str, Junk)> {
    let junk_task = |n: &str| background_task(&format!("TQ-JUNK-{n}"), &format!("PR-JUNK-{n}"));
    let mut wrong_types = Vec::new();
    for (n, path, value) in [
        ("tid-number", &["options", "task_id"][..], json!(12345)),
        ("options-string", &["options"][..], json!("options")),
        (
            "object-id-object",
            &["input", "object_id"][..],
            json!({"id": 1}),
        ),
        (
            "category-number",
            &["options", "task_category"][..],
            json!(7),
        ),
        ("input-array", &["input"][..], json!([1, 2])),
        ("output-string", &["output"][..], json!("done")),
        ("data-number", &[][..], json!(42)),
    ] {
        let mut t = junk_task(n);
        let mut slot = &mut t["data"];
        for p in path {
            slot = &mut slot[*p];
        }
        *slot = value;
        wrong_types.push(t);
    }
    let version = |n: &str, v: Option<Value>| {
        let mut t = junk_task(n);
        match v {
            Some(v) => t["version"] = v,
            None => {
                t.as_object_mut().unwrap().remove("version");
            }
        }
        t
    };
    let versions = [
        version("v-missing", None),
        version("v1", Some(json!(1))),
        version("v3", Some(json!(3))),
        version("v-string", Some(json!("2"))),
        version("v-float", Some(json!(2.5))),
        version("v-negative", Some(json!(-1))),
        version("v-null", Some(Value::Null)),
    ];
    let deep = 100_000;
    let mut out: Vec<(&'static str, Junk)> = vec![
        ("not JSON", Junk::Text("this is {not json".into())),
        ("empty text", Junk::Text(String::new())),
        ("JSON scalar", Junk::Text("42".into())),
        ("JSON string", Junk::Text("\"task\"".into())),
        ("array", Junk::Json(json!([1, 2, 3]))),
        (
            "array of a task",
            Junk::Json(json!([junk_task("in-array")])),
        ),
        (
            "binary, not UTF-8",
            Junk::Binary(vec![0, 0xff, 0xfe, 0x80, 1, 2]),
        ),
        (
            "binary JSON array",
            Junk::Binary(b"[{\"version\": 2}]".to_vec()),
        ),
        ("empty binary", Junk::Binary(Vec::new())),
        (
            "unknown message_type",
            Junk::Json(json!({"version": 2, "message_type": "bogus_zz", "data": {}})),
        ),
        (
            "message_type number",
            Junk::Json(json!({"version": 2, "message_type": 5, "data": null})),
        ),
        (
            "envelope without type",
            Junk::Json(json!({"version": 2, "data": null})),
        ),
        (
            "invalid setup_response",
            Junk::Json(json!({"version": 2, "message_type": "setup_response",
                "data": {"model_type": "setup_response", "variables": "not a list", "event_definitions": 7}})),
        ),
        (
            "deep nesting (array)",
            Junk::Text(format!("{}{}", "[".repeat(deep), "]".repeat(deep))),
        ),
        (
            "deep nesting (in a task)",
            Junk::Text(format!(
                r#"{{"version": 2, "message_type": "task", "data": {{"model_type": "task", "options": {}{}}}}}"#,
                "{\"a\": ".repeat(deep / 10),
                "}".repeat(deep / 10)
            )),
        ),
    ];
    for t in versions {
        out.push(("version", Junk::Json(t)));
    }
    for t in wrong_types {
        out.push(("wrong field type", Junk::Json(t)));
    }
    out
}

enum Junk {
    Text(String),
    Json(Value),
    Binary(Vec<u8>),
}

fn send_junk(conn: &Conn, junk: &Junk) {
    match junk {
        Junk::Text(t) => conn.send_text(t),
        Junk::Json(v) => conn.send(v),
        Junk::Binary(b) => conn.send_binary(b),
    }
}

/// Garbage between real tasks — non-JSON, binary, arrays, unknown `message_type`, wrong or
/// missing `version`, wrong field types, deep nesting, big frames just under the limit, text
/// that is not UTF-8, a frame above the limit: the daemon never crashes, every healthy task is
/// answered `success` and stored once (the two last kinds may cost a reconnect, then the
/// platform redelivers), no junk task is answered `success`, and the peak RSS stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_between_real_tasks_never_crashes_or_stalls_and_memory_stays_bounded() {
    const MAX_FRAME: usize = 2 * 1024 * 1024;
    let mut rig = Rig::start(&[
        ("CONNECT_MAX_FRAME_BYTES", &MAX_FRAME.to_string()),
        ("SHUTDOWN_GRACE", "5"),
    ])
    .await;
    let mut objects = HashSet::new();
    let mut next = 0usize;
    let mut good = |platform: &FakePlatform, objects: &mut HashSet<String>| {
        let id = format!("PR-GOOD-{next:04}");
        platform.add_object(purchase_object(&id, "pending"));
        objects.insert(id.clone());
        next += 1;
        background_task(&format!("TQ-GOOD-{:04}", next - 1), &id)
    };
    let mut ledger = Ledger::new();
    let hwm_before = rig.daemon.vm_hwm_kib().unwrap();

    // Phase A: every kind of junk that fits in a frame, each between two healthy tasks.
    for (_, junk) in junk_frames() {
        ledger.send(&rig.bg, good(&rig.platform, &mut objects));
        send_junk(&rig.bg, &junk);
    }
    // Big frames just under the limit: ~100 MiB of junk in all, which must not accumulate.
    let big_text = "x".repeat(MAX_FRAME - 64 * 1024);
    let big_json = json!({"version": 2, "message_type": "task", "data": {"model_type": "task", "padding": big_text.clone()}});
    for i in 0..50 {
        if i % 2 == 0 {
            rig.bg.send_text(&big_text);
        } else {
            rig.bg.send(&big_json);
        }
        if i % 10 == 0 {
            ledger.send(&rig.bg, good(&rig.platform, &mut objects));
        }
    }
    ledger.send(&rig.bg, good(&rig.platform, &mut objects));
    assert!(
        ledger
            .settle(&rig.platform, &mut rig.bg, RECONNECT_PAUSE + SLACK, LIMIT)
            .await,
        "healthy tasks stalled behind junk: open {:?}\n{}",
        ledger.open(),
        rig.daemon.log_tail(4000)
    );
    let reconnects_in_a = ledger.reconnects.len();

    // Phase B: a text frame that is not UTF-8; phase C: a frame above the limit. Each may cost
    // a reconnect (then the platform redelivers); nothing more.
    rig.bg
        .send_raw_text(b"{\"version\": 2, \"message_type\": \"task\xff\xfe\"}");
    for _ in 0..5 {
        ledger.send(&rig.bg, good(&rig.platform, &mut objects));
    }
    assert!(
        ledger
            .settle(&rig.platform, &mut rig.bg, RECONNECT_PAUSE + SLACK, LIMIT)
            .await
    );
    rig.bg.send_text(&"y".repeat(MAX_FRAME + 512 * 1024));
    for _ in 0..5 {
        ledger.send(&rig.bg, good(&rig.platform, &mut objects));
    }
    assert!(
        ledger
            .settle(&rig.platform, &mut rig.bg, RECONNECT_PAUSE + SLACK, LIMIT)
            .await
    );
    ledger.drain_for(&mut rig.bg, Duration::from_secs(1)).await;

    // Answers to junk tasks are allowed (a lenient parser may answer one; a task id the junk
    // made a number may come back as a string), never `success`: their objects do not exist.
    let strays = std::mem::take(&mut ledger.strays);
    for s in &strays {
        assert_ne!(output(s)["result"], "success", "junk answered success: {s}");
    }
    ledger.assert_consistent();
    for (id, result) in ledger.finals() {
        assert_eq!(result, "success", "{id}: {:?}", ledger.results(&id));
    }
    // No stall beyond a reconnect: junk within the limit costs none (at most one, were it
    // ever to close), the frame that is not UTF-8 and the one above the limit one each at most.
    assert!(reconnects_in_a <= 1, "{:?}", ledger.reconnects);
    assert!(
        ledger.reconnects.len() <= reconnects_in_a + 2,
        "{:?}",
        ledger.reconnects
    );
    for took in &ledger.reconnects {
        assert!(*took <= RECONNECT_PAUSE + SLACK, "reconnect took {took:?}");
    }
    let hwm = rig.daemon.vm_hwm_kib().unwrap();
    eprintln!(
        "garbage: VmHWM {} KiB before, {hwm} KiB after; reconnects {:?} ({reconnects_in_a} in phase A); {} junk answers",
        hwm_before,
        ledger.reconnects,
        strays.len()
    );
    // ~110 MiB of junk went through; the daemon may hold a few frames at once, never all.
    assert!(
        hwm < 96 * 1024 + hwm_before,
        "peak RSS grew from {hwm_before} KiB to {hwm} KiB"
    );
    assert_stored_once(&rig.daemon.documents().await, &objects);
    rig.sigterm_exit_0(Duration::from_secs(5)).await;
}

/// A frame above CONNECT_MAX_FRAME_BYTES is answered with close 1009 (message too big), as the
/// runner does, and the channel reconnects and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_is_closed_with_1009_then_the_channel_reconnects() {
    const MAX_FRAME: usize = 2 * 1024 * 1024;
    let mut rig = Rig::start(&[("CONNECT_MAX_FRAME_BYTES", &MAX_FRAME.to_string())]).await;
    rig.platform
        .add_object(purchase_object("PR-AFTER-BIG", "pending"));
    rig.bg.send_text(&"z".repeat(MAX_FRAME + 1024));
    let end = rig.bg.next_frame(SLACK).await;
    assert!(
        matches!(end, Some(Frame::Close(Some(1009)))),
        "expected close 1009, got {end:?}"
    );
    let mut ledger = Ledger::new();
    ledger
        .reconnect(&rig.platform, &mut rig.bg, RECONNECT_PAUSE + SLACK)
        .await;
    ledger.send(&rig.bg, background_task("TQ-AFTER-BIG", "PR-AFTER-BIG"));
    assert!(
        ledger
            .settle(&rig.platform, &mut rig.bg, RECONNECT_PAUSE + SLACK, LIMIT)
            .await
    );
    assert_eq!(ledger.finals()["TQ-AFTER-BIG"], "success");
    rig.sigterm_exit_0(Duration::from_secs(30)).await;
}

/// Task frames the runner parses leniently (eaas-core: `countdown` defaults, `runtime: null` is
/// 0.0) are handled; a task that still cannot be parsed but carries a `task_id` gets an
/// explicit answer, never silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_with_odd_field_types_are_parsed_leniently_or_answered() {
    let mut rig = Rig::start(&[]).await;
    rig.platform
        .add_object(purchase_object("PR-LENIENT", "pending"));
    let mut lenient = background_task("TQ-LENIENT", "PR-LENIENT");
    lenient["data"]["output"] =
        json!({"result": "success", "data": null, "runtime": null, "message": null});
    rig.bg.send(&lenient);
    let mut broken = background_task("TQ-BROKEN", "PR-BROKEN");
    broken["data"]["input"]["object_id"] = json!({"not": "a string"});
    rig.bg.send(&broken);
    let mut got = std::collections::HashMap::new();
    while got.len() < 2 {
        match rig.bg.next_frame(SLACK).await {
            Some(Frame::Json(v)) => {
                got.insert(task_id(&v).to_string(), v);
            }
            other => panic!("only {:?} answered; then {other:?}", got.keys()),
        }
    }
    assert_eq!(output(&got["TQ-LENIENT"])["result"], "success");
    assert_ne!(output(&got["TQ-BROKEN"])["result"], "success");
    let docs = rig.daemon.documents().await;
    assert_eq!(object_id_counts(&docs).get("PR-LENIENT"), Some(&1));
    rig.sigterm_exit_0(Duration::from_secs(30)).await;
}

// ---------------------------------------------------------------------------------------------
// REST faults

/// (object, step, first faults, then, accepted results)
type RestCase = (
    &'static str,
    RestStep,
    Vec<RestFault>,
    Option<RestFault>,
    &'static [&'static str],
);

/// REST faults on the count and the object GET — 5xx (passing and lasting), 404, slow, truncated
/// and invalid answers, a lasting 429: every task is answered exactly once; a task is `success`
/// only when its object is stored; a task whose object could not be fetched is answered `retry`
/// (or `fail`), never `success` or `skip`, and nothing is stored for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_faults_answer_every_task_and_never_success_without_the_object() {
    use RestFault::*;
    use RestStep::*;
    // The task's time budget bounds how long a lasting fault may be retried.
    let mut rig = Rig::start(&[("BACKGROUND_TASK_MAX_EXECUTION_TIME", "20")]).await;
    // (object, step, first faults, then, expected result)
    let cases: Vec<RestCase> = vec![
        (
            "G500-PASSING",
            Get,
            vec![Status(500), Status(503)],
            None,
            &["success"],
        ),
        ("C502-PASSING", Count, vec![Status(502)], None, &["success"]),
        (
            "G-SLOW",
            Get,
            vec![Slow(Duration::from_secs(2))],
            None,
            &["success"],
        ),
        (
            "C-SLOW",
            Count,
            vec![Slow(Duration::from_secs(2))],
            None,
            &["success"],
        ),
        ("G500-LASTING", Get, vec![], Some(Status(500)), &["retry"]),
        ("C503-LASTING", Count, vec![], Some(Status(503)), &["retry"]),
        ("G404", Get, vec![], Some(Status(404)), &["retry", "fail"]),
        ("C404", Count, vec![], Some(Status(404)), &["retry", "fail"]),
        (
            "G-INVALID",
            Get,
            vec![],
            Some(InvalidJson),
            &["retry", "fail"],
        ),
        (
            "C-INVALID",
            Count,
            vec![],
            Some(InvalidJson),
            &["retry", "fail"],
        ),
        ("G-TRUNCATED", Get, vec![], Some(Truncated), &["retry"]),
        ("C-TRUNCATED", Count, vec![], Some(Truncated), &["retry"]),
        (
            "G429-LASTING",
            Get,
            vec![],
            Some(TooManyRequests {
                retry_after_secs: 1,
            }),
            &["retry"],
        ),
    ];
    let mut ledger = Ledger::new();
    let mut expect_stored = HashSet::new();
    for (name, step, first, then, _) in &cases {
        let id = format!("PR-REST-{name}");
        rig.platform.add_object(purchase_object(&id, "pending"));
        rig.platform
            .rest_faults(*step, &id, first.clone(), then.clone());
    }
    for (name, ..) in &cases {
        ledger.send(
            &rig.bg,
            background_task(&format!("TQ-REST-{name}"), &format!("PR-REST-{name}")),
        );
    }
    for i in 0..50 {
        let id = format!("PR-REST-OK-{i:03}");
        rig.platform.add_object(purchase_object(&id, "pending"));
        expect_stored.insert(id.clone());
        ledger.send(&rig.bg, background_task(&format!("TQ-REST-OK-{i:03}"), &id));
    }
    assert!(
        ledger
            .settle(&rig.platform, &mut rig.bg, RECONNECT_PAUSE + SLACK, LIMIT)
            .await,
        "unanswered: {:?}",
        ledger.open()
    );
    ledger
        .drain_for(&mut rig.bg, Duration::from_millis(500))
        .await;
    ledger.assert_consistent();
    assert!(ledger.reconnects.is_empty(), "{:?}", ledger.reconnects);
    let finals = ledger.finals();
    let mut wrong = Vec::new();
    for (name, _, _, _, expected) in &cases {
        let tid = format!("TQ-REST-{name}");
        assert_eq!(
            ledger.results(&tid).len(),
            1,
            "{tid} answered more than once"
        );
        if !expected.contains(&finals[&tid].as_str()) {
            wrong.push(format!(
                "{name}: {} (expected {expected:?}): {}",
                finals[&tid],
                output(&ledger.results(&tid)[0])["message"]
            ));
        }
        if finals[&tid] == "success" {
            expect_stored.insert(format!("PR-REST-{name}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    for i in 0..50 {
        assert_eq!(finals[&format!("TQ-REST-OK-{i:03}")], "success");
    }
    assert_stored_once(&rig.daemon.documents().await, &expect_stored);
    rig.sigterm_exit_0(Duration::from_secs(30)).await;
}

/// A 429 with `Retry-After` that fits in the task's time budget is waited out and retried, on
/// the count and on the GET: the task ends `success`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_429_with_retry_after_is_honoured() {
    let mut rig = Rig::start(&[]).await;
    let fault = RestFault::TooManyRequests {
        retry_after_secs: 1,
    };
    for (id, step) in [
        ("PR-429-GET", RestStep::Get),
        ("PR-429-COUNT", RestStep::Count),
    ] {
        rig.platform.add_object(purchase_object(id, "pending"));
        rig.platform.rest_faults(step, id, [fault.clone()], None);
    }
    let mut ledger = Ledger::new();
    ledger.send(&rig.bg, background_task("TQ-429-GET", "PR-429-GET"));
    ledger.send(&rig.bg, background_task("TQ-429-COUNT", "PR-429-COUNT"));
    assert!(
        ledger
            .settle(&rig.platform, &mut rig.bg, RECONNECT_PAUSE + SLACK, LIMIT)
            .await
    );
    ledger.assert_consistent();
    for (id, result) in ledger.finals() {
        assert_eq!(result, "success", "{id}: {:?}", ledger.results(&id));
    }
    assert_eq!(rig.platform.rest_calls(RestStep::Get, "PR-429-GET"), 2);
    assert_eq!(rig.platform.rest_calls(RestStep::Count, "PR-429-COUNT"), 2);
    let expected: HashSet<String> = ["PR-429-GET", "PR-429-COUNT"].map(String::from).into();
    assert_stored_once(&rig.daemon.documents().await, &expected);
    rig.sigterm_exit_0(Duration::from_secs(30)).await;
}

/// A body cut off mid-read (the announced `Content-Length` never arrives) is a network error,
/// retried like one: one truncated answer on the count or the GET, then a whole one → `success`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_rest_body_is_retried_like_a_network_error() {
    let mut rig = Rig::start(&[]).await;
    for (id, step) in [
        ("PR-CUT-GET", RestStep::Get),
        ("PR-CUT-COUNT", RestStep::Count),
    ] {
        rig.platform.add_object(purchase_object(id, "pending"));
        rig.platform
            .rest_faults(step, id, [RestFault::Truncated], None);
    }
    let mut ledger = Ledger::new();
    ledger.send(&rig.bg, background_task("TQ-CUT-GET", "PR-CUT-GET"));
    ledger.send(&rig.bg, background_task("TQ-CUT-COUNT", "PR-CUT-COUNT"));
    assert!(
        ledger
            .settle(&rig.platform, &mut rig.bg, RECONNECT_PAUSE + SLACK, LIMIT)
            .await
    );
    ledger.assert_consistent();
    for (id, result) in ledger.finals() {
        assert_eq!(result, "success", "{id}: {:?}", ledger.results(&id));
    }
    assert_eq!(rig.platform.rest_calls(RestStep::Get, "PR-CUT-GET"), 2);
    assert_eq!(rig.platform.rest_calls(RestStep::Count, "PR-CUT-COUNT"), 2);
    let expected: HashSet<String> = ["PR-CUT-GET", "PR-CUT-COUNT"].map(String::from).into();
    assert_stored_once(&rig.daemon.documents().await, &expected);
    rig.sigterm_exit_0(Duration::from_secs(30)).await;
}

/// Slow REST calls never hold up other tasks: with 10 count calls and 10 object GETs that do
/// not answer until released, 100 later tasks are all answered (and stored) first; once released,
/// the slow ones end `success` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_rest_calls_never_hold_up_other_tasks() {
    let mut rig = Rig::start(&[]).await;
    let mut ledger = Ledger::new();
    let mut objects = HashSet::new();
    let mut slow = Vec::new();
    for i in 0..20 {
        let id = format!("PR-SLOW-{i:02}");
        rig.platform.add_object(purchase_object(&id, "pending"));
        let step = if i % 2 == 0 {
            RestStep::Count
        } else {
            RestStep::Get
        };
        rig.platform.rest_faults(step, &id, [RestFault::Held], None);
        objects.insert(id.clone());
        slow.push(format!("TQ-SLOW-{i:02}"));
        ledger.send(&rig.bg, background_task(&format!("TQ-SLOW-{i:02}"), &id));
    }
    for i in 0..100 {
        let id = format!("PR-FAST-{i:03}");
        rig.platform.add_object(purchase_object(&id, "pending"));
        objects.insert(id.clone());
        ledger.send(&rig.bg, background_task(&format!("TQ-FAST-{i:03}"), &id));
    }
    pump_until_answered(&mut ledger, &mut rig.bg, 100).await;
    let open: HashSet<String> = ledger.open().into_iter().collect();
    assert_eq!(
        open,
        slow.iter().cloned().collect::<HashSet<_>>(),
        "the 100 fast tasks are answered while the 20 slow ones wait"
    );
    rig.platform.release();
    assert!(
        ledger
            .settle(&rig.platform, &mut rig.bg, RECONNECT_PAUSE + SLACK, LIMIT)
            .await
    );
    ledger.assert_consistent();
    for (id, result) in ledger.finals() {
        assert_eq!(result, "success", "{id}: {:?}", ledger.results(&id));
    }
    assert_stored_once(&rig.daemon.documents().await, &objects);
    rig.sigterm_exit_0(Duration::from_secs(30)).await;
}

// ---------------------------------------------------------------------------------------------
// Duplicate deliveries

/// The same task delivered twice — after the first answer, and while the first delivery is
/// still in flight — and the same object under a second task id (in turn and at once): every
/// delivery is answered exactly once, `success`, and each object is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_deliveries_make_one_document_and_every_delivery_is_answered() {
    let mut rig = Rig::start(&[]).await;
    let mut ledger = Ledger::new();
    let objects: HashSet<String> = [
        "PR-DUP-SEQ",
        "PR-DUP-INFLIGHT",
        "PR-DUP-TWOIDS",
        "PR-DUP-TWOIDS-AT-ONCE",
    ]
    .map(String::from)
    .into();
    for id in &objects {
        rig.platform.add_object(purchase_object(id, "pending"));
    }
    // Sequential redelivery of an answered task; then a second task id for the same object.
    ledger.send(&rig.bg, background_task("TQ-DUP-SEQ", "PR-DUP-SEQ"));
    ledger.send(&rig.bg, background_task("TQ-DUP-TWOIDS-A", "PR-DUP-TWOIDS"));
    pump_until_answered(&mut ledger, &mut rig.bg, 2).await;
    ledger.send(&rig.bg, background_task("TQ-DUP-SEQ", "PR-DUP-SEQ"));
    ledger.send(&rig.bg, background_task("TQ-DUP-TWOIDS-B", "PR-DUP-TWOIDS"));
    // The same task, and the same object under two ids, both in flight at once.
    rig.platform.hold("PR-DUP-INFLIGHT");
    rig.platform.hold("PR-DUP-TWOIDS-AT-ONCE");
    ledger.send(
        &rig.bg,
        background_task("TQ-DUP-INFLIGHT", "PR-DUP-INFLIGHT"),
    );
    ledger.send(
        &rig.bg,
        background_task("TQ-DUP-INFLIGHT", "PR-DUP-INFLIGHT"),
    );
    ledger.send(
        &rig.bg,
        background_task("TQ-DUP-ATONCE-A", "PR-DUP-TWOIDS-AT-ONCE"),
    );
    ledger.send(
        &rig.bg,
        background_task("TQ-DUP-ATONCE-B", "PR-DUP-TWOIDS-AT-ONCE"),
    );
    for _ in 0..2000 {
        if rig.platform.rest_calls(RestStep::Get, "PR-DUP-INFLIGHT") >= 2
            && rig
                .platform
                .rest_calls(RestStep::Get, "PR-DUP-TWOIDS-AT-ONCE")
                >= 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rig.platform.rest_calls(RestStep::Get, "PR-DUP-INFLIGHT"), 2);
    rig.platform.release();
    let ids = [
        "TQ-DUP-SEQ",
        "TQ-DUP-INFLIGHT",
        "TQ-DUP-TWOIDS-A",
        "TQ-DUP-TWOIDS-B",
        "TQ-DUP-ATONCE-A",
        "TQ-DUP-ATONCE-B",
    ];
    let deliveries: usize = ids.iter().map(|id| ledger.deliveries(id)).sum();
    assert_eq!(deliveries, 8);
    let answers = |l: &Ledger| ids.iter().map(|id| l.results(id).len()).sum::<usize>();
    let deadline = Instant::now() + LIMIT;
    while answers(&ledger) < deliveries {
        match rig
            .bg
            .next_frame(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Some(Frame::Json(v)) => {
                ledger.record(&v);
            }
            other => panic!(
                "{} of {deliveries} answers, then {other:?}",
                answers(&ledger)
            ),
        }
    }
    ledger
        .drain_for(&mut rig.bg, Duration::from_millis(500))
        .await;
    ledger.assert_consistent();
    for id in ids {
        assert_eq!(
            ledger.results(id).len(),
            ledger.deliveries(id),
            "{id}: every delivery is answered once"
        );
        for r in ledger.results(id) {
            assert_eq!(output(r)["result"], "success", "{r}");
        }
    }
    assert_stored_once(&rig.daemon.documents().await, &objects);
    rig.sigterm_exit_0(Duration::from_secs(30)).await;
}

// ---------------------------------------------------------------------------------------------
// SIGTERM and kill -9

/// SIGTERM with 300 slow tasks in flight (each object GET takes 1.5 s, 64 at a time): the daemon
/// sends `shutdown` on both channels, answers every task — `success` when it finished within the
/// grace, else `retry` — closes with 1000 and exits 0 within the grace (plus slack). Every
/// `success` is stored; nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_hundreds_of_slow_tasks_in_flight_exits_0_within_the_grace() {
    let grace = Duration::from_secs(4);
    let mut rig = Rig::start(&[("SHUTDOWN_GRACE", "4")]).await;
    let n = 300;
    let mut ledger = Ledger::new();
    for i in 0..n {
        let id = format!("PR-TERM-{i:03}");
        rig.platform.add_object(purchase_object(&id, "pending"));
        rig.platform
            .state
            .get_delay
            .lock()
            .unwrap()
            .insert(id.clone(), Duration::from_millis(1500));
        ledger.send(&rig.bg, background_task(&format!("TQ-TERM-{i:03}"), &id));
    }
    pump_until_answered(&mut ledger, &mut rig.bg, 10).await;
    let answered_before = ledger.sent() - ledger.open().len();
    let started = Instant::now();
    rig.daemon.signal(libc::SIGTERM);
    let shutdown = json!({"version": 2, "message_type": "shutdown", "data": null});
    let mut saw_shutdown = false;
    let end = loop {
        match rig.bg.next_frame(grace + SLACK).await {
            Some(Frame::Json(v)) if v == shutdown => saw_shutdown = true,
            Some(Frame::Json(v)) => {
                ledger.record(&v);
            }
            other => break other,
        }
    };
    assert!(saw_shutdown, "no shutdown frame on the background channel");
    assert!(matches!(end, Some(Frame::Close(Some(1000)))), "{end:?}");
    assert_eq!(rig.ia.recv_json().await, shutdown);
    assert!(matches!(rig.ia.recv().await, Frame::Close(Some(1000))));
    let status = rig
        .daemon
        .wait(grace + SLACK)
        .await
        .expect("no exit within the grace");
    let took = started.elapsed();
    assert!(
        status.success(),
        "{status:?}:\n{}",
        rig.daemon.log_tail(4000)
    );
    eprintln!(
        "sigterm: {answered_before} answered before, exit after {took:?}; finals: {} success of {n}",
        ledger.finals().values().filter(|r| *r == "success").count()
    );
    ledger.assert_consistent();
    let mut succeeded = HashSet::new();
    for (id, result) in ledger.finals() {
        assert_eq!(ledger.results(&id).len(), 1, "{id}");
        match result.as_str() {
            "success" => {
                succeeded.insert(id.replace("TQ-", "PR-"));
            }
            "retry" => {}
            other => panic!("{id}: {other}"),
        }
    }
    let docs = stored_in(&rig.data_dir()).await;
    let counts = object_id_counts(&docs);
    for id in &succeeded {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "{id} answered success but not stored once"
        );
    }
    for (id, c) in &counts {
        assert!(
            id.starts_with("PR-TERM-") && *c == 1,
            "{id} stored {c} times"
        );
    }
}

/// `kill -9` mid-stream, then a restart in the same data directory; the platform redelivers
/// every task it has no result for. Every task ends `success`, every object is stored exactly
/// once (those answered before the kill included), and the restarted daemon exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_with_redelivery_stores_everything_once() {
    let platform = FakePlatform::start().await;
    let mut rig = Rig::start_with(platform.clone(), &[("SHUTDOWN_GRACE", "5")]).await;
    let n = 200;
    let mut objects = HashSet::new();
    let mut ledger = Ledger::new();
    for i in 0..n {
        let id = format!("PR-KILL-{i:03}");
        platform.add_object(purchase_object(&id, "pending"));
        platform
            .state
            .get_delay
            .lock()
            .unwrap()
            .insert(id.clone(), Duration::from_millis((i % 5) as u64 * 60));
        objects.insert(id.clone());
        ledger.send(&rig.bg, background_task(&format!("TQ-KILL-{i:03}"), &id));
    }
    pump_until_answered(&mut ledger, &mut rig.bg, 60).await;
    rig.daemon.signal(libc::SIGKILL);
    let status = rig.daemon.wait(SLACK).await.expect("no exit after SIGKILL");
    assert!(!status.success());
    let answered_before: Vec<String> = ledger
        .finals()
        .into_iter()
        .filter(|(_, r)| r == "success")
        .map(|(id, _)| id)
        .collect();
    // Whatever the dead daemon managed to send is booked.
    ledger.drain_for(&mut rig.bg, Duration::from_secs(2)).await;

    let data = rig.data_dir();
    let mut second = Daemon::spawn(
        &platform,
        rig.dir.path(),
        &data,
        "restarted",
        &[("SHUTDOWN_GRACE", "5")],
    );
    let (mut bg, _ia) = platform.both_channels().await;
    let redelivered = ledger.redeliver(&bg);
    assert!(redelivered > 0, "the kill came after every answer");
    assert!(
        ledger
            .settle(&platform, &mut bg, RECONNECT_PAUSE + SLACK, LIMIT)
            .await,
        "open: {:?}",
        ledger.open()
    );
    ledger.drain_for(&mut bg, Duration::from_millis(500)).await;
    ledger.assert_consistent();
    for (id, result) in ledger.finals() {
        assert_eq!(result, "success", "{id}: {:?}", ledger.results(&id));
    }
    let docs = second.documents().await;
    assert_stored_once(&docs, &objects);
    let stored = object_id_counts(&docs);
    for id in &answered_before {
        assert!(stored.contains_key(&id.replace("TQ-", "PR-")), "{id}");
    }
    second.signal(libc::SIGTERM);
    let status = second
        .wait(Duration::from_secs(5) + SLACK)
        .await
        .expect("no exit");
    assert!(status.success(), "{status:?}:\n{}", second.log_tail(4000));
}

// ---------------------------------------------------------------------------------------------
// Apply Changes mid-stream

/// "Apply Changes" mid-stream: new `setup_response` frames arrive while tasks are in flight —
/// one that changes a driver setting (the storage is rebuilt and swapped under running saves),
/// the same one again (nothing to do), and one with another change — and nothing is lost: every
/// task is answered `success` and every object is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_changes_mid_stream_loses_nothing() {
    let Some(uri) = mongo::mongo_uri() else {
        return;
    };
    let db = mongo::Db::open(&uri, "faults_apply").await;
    let mut rig = Rig::start(&[
        ("STORAGE_BACKENDS", "driver"),
        ("MONGODB_URI", &uri),
        ("DB", &db.name),
        ("SHUTDOWN_GRACE", "5"),
    ])
    .await;
    let n = 200;
    let mut objects = HashSet::new();
    for i in 0..n {
        let id = format!("PR-APPLY-{i:03}");
        rig.platform.add_object(purchase_object(&id, "pending"));
        rig.platform
            .state
            .get_delay
            .lock()
            .unwrap()
            .insert(id.clone(), Duration::from_millis((i % 4) as u64 * 50));
        objects.insert(id);
    }
    let base = setup_response_data();
    let with = |vars: Value| {
        let mut d = base.clone();
        d["variables"] = vars;
        setup_response_frame(&d)
    };
    let changes = [
        with(json!([{"name": "DRIVER_BATCH_MAX", "value": "16", "secure": false}])),
        with(json!([{"name": "DRIVER_BATCH_MAX", "value": "16", "secure": false}])),
        with(json!([
            {"name": "DRIVER_BATCH_MAX", "value": "8", "secure": false},
            {"name": "DRIVER_WRITE_CONCERN", "value": "1", "secure": false},
            {"name": "GREETING", "value": "changed", "secure": false}
        ])),
    ];
    let mut ledger = Ledger::new();
    let batch = n / 4;
    for round in 0..4 {
        for i in round * batch..(round + 1) * batch {
            ledger.send(
                &rig.bg,
                background_task(&format!("TQ-APPLY-{i:03}"), &format!("PR-APPLY-{i:03}")),
            );
            if let (Some(change), true) = (changes.get(round), i == round * batch + batch / 2) {
                rig.bg.send(change);
            }
        }
        pump_until_answered(&mut ledger, &mut rig.bg, round * batch + batch / 3).await;
    }
    assert!(
        ledger
            .settle(&rig.platform, &mut rig.bg, RECONNECT_PAUSE + SLACK, LIMIT)
            .await,
        "open: {:?}",
        ledger.open()
    );
    ledger
        .drain_for(&mut rig.bg, Duration::from_millis(500))
        .await;
    ledger.assert_consistent();
    assert!(ledger.reconnects.is_empty(), "{:?}", ledger.reconnects);
    for (id, result) in ledger.finals() {
        assert_eq!(result, "success", "{id}: {:?}", ledger.results(&id));
    }
    assert_stored_once(&rig.daemon.documents().await, &objects);
    let log = rig.daemon.log_text();
    assert!(
        log.contains("storage rebuilt from extension variables"),
        "the storage was never rebuilt:\n{}",
        rig.daemon.log_tail(4000)
    );
    rig.sigterm_exit_0(Duration::from_secs(5)).await;
    // Read back once more, straight from the server.
    assert_eq!(db.count(mongodb::bson::doc! {}).await, n as u64);
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------------
// Saturation

/// More slow tasks than CONNECT_MAX_IN_FLIGHT while the platform pings: the channel keeps
/// answering pings (pongs keep coming) and stays connected; once the slow calls end, every task
/// is answered `success` and stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_channel_keeps_answering_pings() {
    let mut rig = Rig::start(&[
        ("CONNECT_MAX_IN_FLIGHT", "4"),
        ("CONNECT_PING_INTERVAL", "1"),
    ])
    .await;
    let mut ledger = Ledger::new();
    let mut objects = HashSet::new();
    for i in 0..12 {
        let id = format!("PR-SAT-{i:02}");
        rig.platform.add_object(purchase_object(&id, "pending"));
        rig.platform.hold(&id);
        objects.insert(id.clone());
        ledger.send(&rig.bg, background_task(&format!("TQ-SAT-{i:02}"), &id));
    }
    rig.platform.wait_object_gets(4).await;
    let pings = 10;
    for i in 0..pings {
        rig.bg.ping(format!("p{i}").as_bytes());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Pongs of the last pings may still be on their way.
    for _ in 0..200 {
        if rig.bg.pongs() >= pings {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        rig.bg.pongs() >= pings,
        "{} pongs to {pings} pings while saturated",
        rig.bg.pongs()
    );
    rig.platform.release();
    assert!(
        ledger
            .settle(&rig.platform, &mut rig.bg, RECONNECT_PAUSE + SLACK, LIMIT)
            .await
    );
    assert!(ledger.reconnects.is_empty(), "{:?}", ledger.reconnects);
    ledger.assert_consistent();
    for (id, result) in ledger.finals() {
        assert_eq!(result, "success", "{id}");
    }
    assert_stored_once(&rig.daemon.documents().await, &objects);
    rig.sigterm_exit_0(Duration::from_secs(30)).await;
}

/// A burst far above CONNECT_MAX_IN_FLIGHT (the platform pushes what is pending at once): the
/// tasks wait for a slot and are all processed — none is turned away with `retry` while the
/// waiting queue is within its memory bound. (Found by the throughput bench: 5,000 tasks at once
/// with the default 512 slots were answered ~3,400 `retry`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_far_above_the_slots_waits_and_is_processed_without_retry() {
    let mut rig = Rig::start(&[("CONNECT_MAX_IN_FLIGHT", "16")]).await;
    let mut ledger = Ledger::new();
    let mut objects = HashSet::new();
    for i in 0..1000 {
        let id = format!("PR-BURST-{i:04}");
        rig.platform.add_object(purchase_object(&id, "pending"));
        objects.insert(id.clone());
        ledger.send(&rig.bg, background_task(&format!("TQ-BURST-{i:04}"), &id));
    }
    assert!(
        ledger
            .settle(&rig.platform, &mut rig.bg, RECONNECT_PAUSE + SLACK, LIMIT)
            .await
    );
    ledger.assert_consistent();
    let finals = ledger.finals();
    let retried = finals.values().filter(|r| *r != "success").count();
    assert_eq!(retried, 0, "{retried} of 1000 tasks not processed");
    assert_stored_once(&rig.daemon.documents().await, &objects);
    rig.sigterm_exit_0(Duration::from_secs(30)).await;
}
