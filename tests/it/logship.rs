//! Platform logging (issue 9 item 5): the real binary against the fake platform
//! (tests/it/support/fake_platform.rs) and an in-process listener that speaks the Logz.io bulk
//! endpoint (`POST /?token=…&type=…`, newline-delimited JSON), as the Python runner's
//! `ExtensionLogHandler` posts to it.

use crate::support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use support::*;
use tokio::io::AsyncReadExt;

const LOG_TOKEN: &str = "logz-token-SECRET-L";

/// One bulk POST as the listener saw it.
#[derive(Debug, Clone)]
struct Post {
    query: HashMap<String, String>,
    content_type: String,
    body: String,
}

#[derive(Default)]
struct ListenerState {
    posts: Mutex<Vec<Post>>,
    /// While set, requests are read and never answered.
    hang: AtomicBool,
}

struct LogListener {
    addr: SocketAddr,
    state: Arc<ListenerState>,
}

async fn bulk(
    State(st): State<Arc<ListenerState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    if st.hang.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    st.posts.lock().unwrap().push(Post {
        query,
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        body,
    });
    StatusCode::OK
}

impl LogListener {
    async fn start() -> LogListener {
        let state = Arc::new(ListenerState::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/", axum::routing::post(bulk))
            .with_state(state.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        LogListener { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn posts(&self) -> Vec<Post> {
        self.state.posts.lock().unwrap().clone()
    }

    /// Every line received so far, parsed (panics on a line that is not a JSON object).
    fn lines(&self) -> Vec<Value> {
        self.posts()
            .iter()
            .flat_map(|p| p.body.split('\n').map(String::from).collect::<Vec<_>>())
            .filter(|l| !l.is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
                assert!(v.is_object(), "{l}");
                v
            })
            .collect()
    }

    /// Waits (≤ 20 s) until `count` lines match `pred`; returns them all.
    async fn wait_for(&self, count: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        for _ in 0..400 {
            let lines = self.lines();
            if lines.iter().filter(|l| pred(l)).count() >= count {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no {count} matching line(s) within 20 s; got:\n{}",
            self.lines()
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

fn message_is(msg: &'static str) -> impl Fn(&Value) -> bool {
    move |l: &Value| l["message"] == msg
}

/// The real binary, its stderr drained into a buffer (so a full pipe never blocks it).
struct Daemon {
    child: tokio::process::Child,
    http: String,
    stderr: Arc<Mutex<Vec<u8>>>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    async fn start(platform: &FakePlatform, extra: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let http = format!("127.0.0.1:{port}");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_connect-extension-mongodb"));
        cmd.env_clear()
            .envs(env_for(platform, &dir.path().join("data")))
            .env("HTTP_LISTEN", &http)
            .env("SHUTDOWN_GRACE", "2")
            .env("RUST_LOG", "debug")
            .env("CONNECT_LOG_SHIP_FLUSH_MS", "50")
            .envs(extra.iter().copied())
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Daemon {
            child,
            http: format!("http://{http}"),
            stderr,
            _dir: dir,
        }
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).to_string()
    }

    async fn metrics(&self) -> String {
        for _ in 0..100 {
            if let Ok(r) = reqwest::get(format!("{}/metrics", self.http)).await {
                return r.text().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no /metrics");
    }

    async fn stop(mut self) -> String {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().unwrap().to_string()])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
        self.stderr()
    }
}

/// The fixture's setup_response with a logging key, levels and a secure variable.
fn setup_with_logging(log_level: &str, runner_log_level: &str) -> Value {
    let mut data = setup_response_data();
    data["logging"]["logging_api_key"] = json!(LOG_TOKEN);
    data["logging"]["log_level"] = json!(log_level);
    data["logging"]["runner_log_level"] = json!(runner_log_level);
    data["variables"] = json!([
        {"name": "DB_PASSWORD", "value": "portal-pass-SECRET-6", "secure": true},
        {"name": "SECRET_TOKEN", "value": "var-SECRET-10", "secure": true},
        {"name": "GREETING", "value": "hello", "secure": false}
    ]);
    data
}

fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Lines arrive in the runner's format with its meta fields, on the bulk endpoint with the key
/// and type in the query; nothing shipped (nor stderr) holds a secret: not the Connect API_KEY,
/// an installation key from a task, a secure variable, a local secret, a secret in a junk frame,
/// nor the logging key itself (it is only in the query).
#[tokio::test]
async fn logs_reach_the_log_service_with_the_runners_meta_and_never_a_secret() {
    let listener = LogListener::start().await;
    let platform = FakePlatform::start().await;
    *platform.state.setup_response.lock().unwrap() = setup_with_logging("DEBUG", "DEBUG");
    let daemon = Daemon::start(
        &platform,
        &[
            ("CONNECT_LOG_SHIP_URL", &listener.url()),
            ("DATA_API_KEY", "data-key-SECRET-7"),
        ],
    )
    .await;
    let (mut bg, _ia) = platform.both_channels().await;
    platform.add_object(purchase_object("PR-SHIP-1", "pending"));
    let mut task = background_task("TQ-SHIP-1", "PR-SHIP-1");
    task["data"]["options"]["api_key"] = json!("ApiKey SU-I:inst-SECRET-8");
    bg.send(&task);
    bg.send_text(r#"{"version": 2, "message_type": "setup_response", "data": {"variables": [{"name": "X", "value": "junk-SECRET-9"}]}"#);
    let results = bg.results(1).await;
    assert_eq!(results["TQ-SHIP-1"]["data"]["output"]["result"], "success");

    listener
        .wait_for(1, |l| {
            l["message"] == "event handled" && l["object_id"] == "PR-SHIP-1"
        })
        .await;
    listener
        .wait_for(1, |l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("frame skipped"))
        })
        .await;
    listener
        .wait_for(1, message_is("Extension configuration has been updated."))
        .await;
    let lines = listener.lines();
    for line in &lines {
        for (k, v) in [
            ("environment_id", json!(ENVIRONMENT_ID)),
            ("instance_id", json!(INSTANCE_ID)),
            ("service_id", json!("SRVC-0000-0000")),
            ("account_id", json!("VA-392-495")),
            ("account_name", json!("Fake Vendor")),
            ("environment_type", json!("development")),
            ("api_address", json!(platform.api_address())),
            ("type", json!("python")),
        ] {
            assert_eq!(line[k], v, "{k} in {line}");
        }
        assert!(line.get("repository_tag").is_some(), "{line}");
        for k in ["@timestamp", "log_level", "logger", "message"] {
            assert!(line[k].is_string(), "{k} in {line}");
        }
        assert!(
            line["logger"]
                .as_str()
                .unwrap()
                .starts_with("connect_extension_mongodb"),
            "only this crate's records are shipped: {line}"
        );
    }
    let handled = lines
        .iter()
        .find(|l| l["message"] == "event handled")
        .unwrap();
    assert_eq!(handled["log_level"], "DEBUG");
    assert_eq!(
        handled["logger"],
        "connect_extension_mongodb::events::registry"
    );
    for post in listener.posts() {
        assert_eq!(post.query.get("token").map(String::as_str), Some(LOG_TOKEN));
        assert_eq!(post.query.get("type").map(String::as_str), Some("python"));
        assert_eq!(post.content_type, "text/plain");
    }
    let stderr = daemon.stop().await;
    let shipped: String = listener
        .posts()
        .iter()
        .map(|p| p.body.clone())
        .collect::<Vec<_>>()
        .join("\n");
    for secret in [
        "platform-key-SECRET-1",
        "portal-pass-SECRET-6",
        "data-key-SECRET-7",
        "inst-SECRET-8",
        "junk-SECRET-9",
        "var-SECRET-10",
        LOG_TOKEN,
    ] {
        assert!(
            !shipped.contains(secret),
            "{secret} was shipped:\n{shipped}"
        );
        assert!(
            !stderr.contains(secret),
            "{secret} leaked into stderr:\n{stderr}"
        );
    }
    assert!(stderr.contains("platform logging on"), "{stderr}");
    // What was logged while stopping still reached the log service.
    assert!(
        listener.lines().iter().any(|l| l["message"] == "stopped"),
        "the last records were not shipped at exit"
    );
}

/// A log service that accepts requests and never answers: every task is still answered (no
/// task ever waits for the shipper), and the records that could not be shipped are counted.
#[tokio::test]
async fn a_hanging_log_service_never_delays_a_task_and_drops_are_counted() {
    let listener = LogListener::start().await;
    listener.state.hang.store(true, Ordering::SeqCst);
    let platform = FakePlatform::start().await;
    *platform.state.setup_response.lock().unwrap() = setup_with_logging("DEBUG", "DEBUG");
    let daemon = Daemon::start(
        &platform,
        &[
            ("CONNECT_LOG_SHIP_URL", &listener.url()),
            ("CONNECT_LOG_SHIP_QUEUE", "8"),
            ("CONNECT_LOG_SHIP_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    let (mut bg, _ia) = platform.both_channels().await;
    const N: usize = 150;
    for i in 0..N {
        platform.add_object(purchase_object(&format!("PR-H-{i}"), "pending"));
        bg.send(&background_task(&format!("TQ-H-{i}"), &format!("PR-H-{i}")));
    }
    let results = bg.results(N).await;
    assert_eq!(results.len(), N);
    assert!(results
        .values()
        .all(|r| r["data"]["output"]["result"] == "success"));
    let mut dropped = 0.0;
    for _ in 0..200 {
        dropped = counter(
            &daemon.metrics().await,
            "connect_ext_log_records_dropped_total",
        );
        if dropped > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped > 0.0, "no dropped record counted");
    assert!(listener.posts().is_empty());
    let stderr = daemon.stop().await;
    assert!(!stderr.contains(LOG_TOKEN), "{stderr}");
}

/// A later `setup_response` ("Apply Changes") with another `log_level` is applied live: the
/// extension's DEBUG records are shipped only after it.
#[tokio::test]
async fn a_changed_log_level_in_a_later_setup_response_is_applied() {
    let listener = LogListener::start().await;
    let platform = FakePlatform::start().await;
    *platform.state.setup_response.lock().unwrap() = setup_with_logging("INFO", "INFO");
    let daemon = Daemon::start(&platform, &[("CONNECT_LOG_SHIP_URL", &listener.url())]).await;
    let (mut bg, _ia) = platform.both_channels().await;
    platform.add_object(purchase_object("PR-LVL-1", "pending"));
    bg.send(&background_task("TQ-LVL-1", "PR-LVL-1"));
    bg.results(1).await;
    listener
        .wait_for(2, message_is("Extension configuration has been updated."))
        .await;
    bg.send(&setup_response_frame(&json!({
        "logging": {"log_level": "DEBUG", "runner_log_level": "WARNING"},
        "model_type": "setup_response"
    })));
    // The INFO line of the update is no longer shipped (runner level WARNING): wait for the
    // records before it to be flushed, then check nothing DEBUG of the first task was shipped.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = listener.lines();
    assert!(
        !before.iter().any(|l| l["message"] == "event handled"),
        "a DEBUG record was shipped at log_level INFO: {before:?}"
    );
    assert_eq!(
        before
            .iter()
            .filter(|l| l["message"] == "Extension configuration has been updated.")
            .count(),
        2,
        "runner_log_level WARNING still shipped an INFO record"
    );
    platform.add_object(purchase_object("PR-LVL-2", "pending"));
    bg.send(&background_task("TQ-LVL-2", "PR-LVL-2"));
    bg.results(1).await;
    let lines = listener
        .wait_for(1, |l| {
            l["message"] == "event handled" && l["object_id"] == "PR-LVL-2"
        })
        .await;
    let handled: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "event handled")
        .collect();
    assert!(
        handled.iter().all(|l| l["object_id"] == "PR-LVL-2"),
        "a DEBUG record from before the change was shipped: {handled:?}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["message"] == "Extension configuration has been updated.")
            .count(),
        2,
        "an INFO record was shipped at runner_log_level WARNING"
    );
    let after = &lines[before.len()..];
    assert!(
        !after.iter().any(|l| {
            (l["log_level"] == "INFO" || l["log_level"] == "DEBUG")
                && !l["logger"]
                    .as_str()
                    .unwrap()
                    .starts_with("connect_extension_mongodb::events")
        }),
        "daemon records below WARNING shipped after the change: {after:?}"
    );
    let stderr = daemon.stop().await;
    assert!(!stderr.contains(LOG_TOKEN), "{stderr}");
}

/// `CONNECT_LOG_SHIP=false`: nothing is shipped, whatever the platform sends.
#[tokio::test]
async fn log_shipping_can_be_switched_off() {
    let listener = LogListener::start().await;
    let platform = FakePlatform::start().await;
    *platform.state.setup_response.lock().unwrap() = setup_with_logging("DEBUG", "DEBUG");
    let daemon = Daemon::start(
        &platform,
        &[
            ("CONNECT_LOG_SHIP_URL", &listener.url()),
            ("CONNECT_LOG_SHIP", "false"),
        ],
    )
    .await;
    let (mut bg, _ia) = platform.both_channels().await;
    platform.add_object(purchase_object("PR-OFF-1", "pending"));
    bg.send(&background_task("TQ-OFF-1", "PR-OFF-1"));
    bg.results(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stderr = daemon.stop().await;
    assert!(listener.posts().is_empty(), "{:?}", listener.posts());
    assert!(!stderr.contains("platform logging on"), "{stderr}");
}
