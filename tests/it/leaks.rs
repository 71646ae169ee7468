//! Secrets never reach the logs, at any log level: the real daemon binary at `RUST_LOG=trace`
//! (and with every traffic-printing dependency asked for `trace` by name), with a secret planted in
//! every place one can be — the Connect `API_KEY` (websocket upgrade, REST), the MongoDB password
//! (in `MONGODB_URI`, and `DB_PASSWORD`), the Data API key (request headers, `setup_request`),
//! `HTTP_TOKEN` (a request's `Authorization`), secure extension variables (`setup_response`), and
//! the installation `api_key` (task frames, the REST fetch, the echoed result) — driven through
//! the fake platform, the driver backend on a private authenticated SecantusDB and the in-tree
//! Data API server. Neither stderr nor stdout may contain any of them, and the run must show that
//! trace logging really was on.

use crate::support;

use crate::support::data_api_server;
use crate::support::mongo;

use std::net::TcpListener as StdListener;
use std::time::Duration;

use data_api_server::{DataApiServer, ServerConfig};
use mongo::PrivateServer;
use serde_json::{json, Value};
use support::*;

const DB_USER: &str = "leakuser";
const MONGO_PASSWORD: &str = "mongo-pass-SECRET-2";
const DB_PASSWORD: &str = "db-pass-SECRET-3";
const DATA_API_KEY: &str = "data-key-SECRET-4";
const HTTP_TOKEN: &str = "http-token-SECRET-5";
const EXT_DATA_API_KEY: &str = "ext-data-key-SECRET-6";
const EXT_SECURE_VAR: &str = "ext-var-SECRET-7";
const EXT_DB_PASSWORD: &str = "ext-db-pass-SECRET-8";
const INSTALLATION_KEY: &str = "ApiKey SU-INST-1:inst-SECRET-9";

/// Every planted secret (the distinctive part that must never be printed).
const SECRETS: [&str; 9] = [
    "platform-key-SECRET-1",
    MONGO_PASSWORD,
    DB_PASSWORD,
    DATA_API_KEY,
    HTTP_TOKEN,
    EXT_DATA_API_KEY,
    EXT_SECURE_VAR,
    EXT_DB_PASSWORD,
    "inst-SECRET-9",
];

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the daemon with `rust_log` (and `log_format`) through a Connect session, a few tasks and
/// authenticated HTTP requests; returns its stdout and stderr.
async fn run_daemon(server: &PrivateServer, rust_log: &str, log_format: &str) -> String {
    let port = server
        .uri
        .rsplit_once("127.0.0.1:")
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap()
        .to_string();
    let uri = format!(
        "mongodb://{DB_USER}:{MONGO_PASSWORD}@127.0.0.1:{port}/?authSource=admin&retryWrites=false"
    );
    let data_api = DataApiServer::start(
        &uri,
        ServerConfig {
            api_keys: vec![DATA_API_KEY.into(), EXT_DATA_API_KEY.into()],
            ..ServerConfig::default()
        },
    )
    .await;
    let platform = FakePlatform::start().await;
    let mut data = setup_response_data();
    data["variables"] = json!([
        {"name": "API_KEY", "value": EXT_DATA_API_KEY, "secure": true},
        {"name": "WEBHOOK_SECRET", "value": EXT_SECURE_VAR, "secure": true},
        {"name": "DB_PASSWORD", "value": EXT_DB_PASSWORD, "secure": true},
    ]);
    *platform.state.setup_response.lock().unwrap() = data;

    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let log_path = dir.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_connect-extension-mongodb"));
    cmd.env_clear()
        .envs(env_for(&platform, &dir.path().join("data")))
        .env("HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
        .env("HTTP_TOKEN", HTTP_TOKEN)
        .env("STORAGE_BACKENDS", "driver,data_api")
        .env("MONGODB_URI", &uri)
        .env("DB", mongo::unique_db("leaks"))
        .env("DB_USER", DB_USER)
        .env("DB_PASSWORD", DB_PASSWORD)
        .env("DATA_API_ENDPOINT", &data_api.base_url)
        .env("DATA_API_KEY", DATA_API_KEY)
        .env("SHUTDOWN_GRACE", "5")
        .env("RUST_LOG", rust_log)
        .env("LOG_FORMAT", log_format)
        .current_dir(dir.path())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();

    let (mut bg, _ia) = platform.both_channels().await;
    for i in 0..3 {
        let id = format!("PR-LEAK-{i}");
        platform.add_object(purchase_object(&id, "pending"));
        let mut task = background_task(&format!("TQ-LEAK-{i}"), &id);
        task["data"]["options"]["api_key"] = json!(INSTALLATION_KEY);
        bg.send(&task);
    }
    let results = bg.results(3).await;
    for (id, r) in &results {
        assert_eq!(
            r["data"]["output"]["result"], "success",
            "{id} was not stored through both backends: {r}"
        );
    }
    assert!(
        platform
            .rest_log()
            .iter()
            .any(|r| r.authorization == INSTALLATION_KEY),
        "the installation key was used for the fetch"
    );
    assert!(
        data_api
            .requests_for("insertOne")
            .iter()
            .chain(data_api.requests_for("insertMany").iter())
            .count()
            > 0,
        "the Data API backend was written to"
    );

    // The HTTP channel, authenticated with the token.
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{http_port}");
    let mut pr = purchase_object("PR-LEAK-HTTP", "pending");
    pr["updated"] = json!("2026-11-30T10:00:00+00:00");
    let resp = http
        .post(format!("{base}/events"))
        .bearer_auth(HTTP_TOKEN)
        .header("content-type", "application/json")
        .body(pr.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    let resp = http
        .get(format!("{base}/events?object_id=PR-LEAK-HTTP"))
        .bearer_auth(HTTP_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let pid = child.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("daemon did not exit")
        .unwrap();
    let out = std::fs::read_to_string(&log_path).unwrap();
    assert!(exit.success(), "exit status {exit:?}:\n{}", tail(&out));
    out
}

fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(20_000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn assert_no_secret(out: &str, what: &str) {
    let leaks: Vec<String> = out
        .lines()
        .filter_map(|line| {
            let found: Vec<&str> = SECRETS.into_iter().filter(|s| line.contains(s)).collect();
            let mut end = line.len().min(400);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            (!found.is_empty()).then(|| format!("{found:?} in: {}", &line[..end]))
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "{what}: {} log lines (of {} bytes of logs) show a secret:\n{}",
        leaks.len(),
        out.len(),
        leaks.join("\n")
    );
}

/// A log line of our own crate at TRACE level (text or JSON format).
fn has_own_trace_line(out: &str) -> bool {
    out.lines().any(|l| {
        (l.contains(" TRACE ") || l.contains(r#""level":"TRACE""#))
            && l.contains("connect_extension_mongodb")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_logs_at_rust_log_trace() {
    let Some(server) = PrivateServer::start(Some((DB_USER, MONGO_PASSWORD))).await else {
        return;
    };
    let out = run_daemon(&server, "trace", "text").await;
    assert_no_secret(&out, "RUST_LOG=trace");
    assert!(
        has_own_trace_line(&out),
        "trace logging was not on:\n{}",
        tail(&out)
    );
    assert!(out.contains("Connect channel set up"), "{}", tail(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_logs_when_traffic_crates_are_asked_for_trace_by_name() {
    let Some(server) = PrivateServer::start(Some((DB_USER, MONGO_PASSWORD))).await else {
        return;
    };
    let rust_log = "connect_extension_mongodb=trace,tungstenite=trace,tokio_tungstenite=trace,\
        tungstenite::protocol=trace,mongodb=trace,mongodb::command=trace,mongodb::connection=trace,\
        hyper=trace,hyper_util=trace,reqwest=trace,h2=trace,rustls=trace,info";
    let out = run_daemon(&server, rust_log, "json").await;
    assert_no_secret(&out, rust_log);
    assert!(
        has_own_trace_line(&out),
        "trace logging was not on:\n{}",
        tail(&out)
    );
}
