//! Test support: the fake Connect platform, the Data API server, MongoDB provisioning, the one
//! log capture of the process, and a harness running the real daemon against the fake platform.

pub mod data_api_server;
pub mod fake_platform;
pub mod mongo;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use connect_extension_mongodb::connect::Tuning;
use connect_extension_mongodb::storage::{ListQuery, SharedStorage};
use connect_extension_mongodb::Settings;
use connect_extension_mongodb::{App, AppError, AppOptions, RegistryHook};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use fake_platform::*;

pub const API_KEY: &str = "ApiKey SU-000-000-001:platform-key-SECRET-1";
pub const ENVIRONMENT_ID: &str = "ENV-TEST-01";
pub const INSTANCE_ID: &str = "INST-TEST-1";

/// A process-wide log buffer, kept in chunks: appending never moves what was captured, so no test
/// thread ever reallocates the whole buffer (fuzz_protocol counts every allocation of its thread
/// against its heap bound, and this buffer holds every module's lines).
pub struct LogBuffer(Mutex<Vec<Vec<u8>>>);

const LOG_CHUNK: usize = 256 * 1024;

impl LogBuffer {
    const fn new() -> LogBuffer {
        LogBuffer(Mutex::new(Vec::new()))
    }

    fn append(&self, buf: &[u8]) {
        let mut chunks = self.0.lock().unwrap();
        match chunks.last_mut() {
            Some(last) if last.capacity() - last.len() >= buf.len() => last.extend_from_slice(buf),
            _ => {
                let mut chunk = Vec::with_capacity(LOG_CHUNK.max(buf.len()));
                chunk.extend_from_slice(buf);
                chunks.push(chunk);
            }
        }
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        let chunks = self.0.lock().unwrap();
        chunks.iter().map(|c| String::from_utf8_lossy(c)).collect()
    }
}

/// A writer appending to one [`LogBuffer`].
#[derive(Clone, Copy)]
struct Capture(&'static LogBuffer);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of the process the daemon's own log layer writes (text format,
/// `connect_extension_mongodb=debug,info`), since [`capture_logs`].
static LOGS: LogBuffer = LogBuffer::new();

/// Every `tracing` event of the process at any level, in the plain `fmt` format (records of the
/// `log` crate excluded), since [`capture_logs`].
static TRACE_LOGS: LogBuffer = LogBuffer::new();

/// Installs the one global subscriber of the test process (once; later calls are no-ops): the
/// daemon's text log layer into [`log_text`] and a plain `fmt` layer at TRACE into
/// [`trace_log_text`]. The lines of every test of every module land in the same buffers: a test
/// picks its own by something only it logs (an id, a marker, its server's address).
pub fn capture_logs() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let daemon = connect_extension_mongodb::telemetry::log_layer(
            connect_extension_mongodb::telemetry::LogFormat::Text,
            || Capture(&LOGS),
            false,
            tracing_subscriber::EnvFilter::new("connect_extension_mongodb=debug,info"),
        );
        let trace = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(|| Capture(&TRACE_LOGS))
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.fields().field("log.target").is_none()
            }));
        tracing_subscriber::registry()
            .with(daemon)
            .with(trace)
            .try_init()
            .expect("the only subscriber of the test process");
    });
}

/// The daemon's log lines of the whole test process (see [`capture_logs`]).
pub fn log_text() -> String {
    LOGS.text()
}

/// Every `tracing` event of the whole test process at TRACE (see [`capture_logs`]).
pub fn trace_log_text() -> String {
    TRACE_LOGS.text()
}

/// Fast internal timings for tests.
pub fn fast_tuning() -> Tuning {
    Tuning {
        reconnect_pause: Duration::from_millis(50),
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(500),
        rest_retry_delay: Duration::from_millis(20),
        storage_rebuild_timeout: Duration::from_secs(2),
        rest_max_body_bytes: 256 * 1024,
        // The waiting queue is CONNECT_MAX_IN_FLIGHT tasks exactly, so small overflows are testable.
        waiting_tasks_floor: 0,
        ..Tuning::default()
    }
}

/// The daemon's environment for a fake platform.
pub fn env_for(platform: &FakePlatform, data_dir: &std::path::Path) -> HashMap<String, String> {
    [
        ("API_KEY", API_KEY.to_string()),
        ("ENVIRONMENT_ID", ENVIRONMENT_ID.to_string()),
        ("INSTANCE_ID", INSTANCE_ID.to_string()),
        ("SERVER_ADDRESS", platform.server_address()),
        ("API_ADDRESS", platform.api_address()),
        ("LOCAL_DATA_DIR", data_dir.display().to_string()),
        ("HTTP_LISTEN", "127.0.0.1:0".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

pub struct Harness {
    pub platform: Arc<FakePlatform>,
    pub dir: tempfile::TempDir,
    pub storage: Arc<SharedStorage>,
    pub http: SocketAddr,
    pub stop: CancellationToken,
    pub run: tokio::task::JoinHandle<Result<(), AppError>>,
}

impl Harness {
    pub async fn start(extra: &[(&str, &str)], hook: Option<RegistryHook>) -> Harness {
        capture_logs();
        let platform = FakePlatform::start().await;
        Self::start_with(platform, extra, hook).await
    }

    pub async fn start_with(
        platform: Arc<FakePlatform>,
        extra: &[(&str, &str)],
        hook: Option<RegistryHook>,
    ) -> Harness {
        Self::start_options(
            platform,
            extra,
            AppOptions {
                registry_hook: hook,
                connect_tuning: fast_tuning(),
                extension: None,
            },
        )
        .await
    }

    /// The daemon running an SDK extension against `platform`.
    pub async fn start_extension(
        platform: Arc<FakePlatform>,
        extension: connect_extension_mongodb::sdk::Extension,
        extra: &[(&str, &str)],
    ) -> Harness {
        Self::start_options(
            platform,
            extra,
            AppOptions {
                registry_hook: None,
                connect_tuning: fast_tuning(),
                extension: Some(extension.into_install()),
            },
        )
        .await
    }

    pub async fn start_options(
        platform: Arc<FakePlatform>,
        extra: &[(&str, &str)],
        options: AppOptions,
    ) -> Harness {
        capture_logs();
        let dir = tempfile::tempdir().unwrap();
        let mut env = env_for(&platform, &dir.path().join("data"));
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let empty = dir.path().join("empty.toml");
        std::fs::write(&empty, "").unwrap();
        let settings = Settings::load_with(Some(&empty), move |k| env.get(k).cloned()).unwrap();
        let app = App::build_with(settings, options).await.unwrap();
        let storage = app.storage();
        let http = app.http_addr();
        let stop = CancellationToken::new();
        let run = tokio::spawn(app.run(stop.clone()));
        Harness {
            platform,
            dir,
            storage,
            http,
            stop,
            run,
        }
    }

    /// Waits until the storage in use is no longer `before` (a live reconfiguration swapped it);
    /// false after 5 s.
    pub async fn storage_swapped_from(
        &self,
        before: &Arc<dyn connect_extension_mongodb::storage::Storage>,
    ) -> bool {
        for _ in 0..500 {
            if !Arc::ptr_eq(before, &self.storage.current()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Stored documents (all, up to 1000).
    pub async fn stored(&self) -> Vec<serde_json::Value> {
        self.storage
            .current()
            .list(&ListQuery {
                limit: Some(1000),
                ..Default::default()
            })
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.http))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.run).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon with the HTTP channel only

/// The daemon with the HTTP channel only, on port 0, its embedded SQLite store in `data_dir`.
pub struct TestApp {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<()>,
    pub storage: Arc<SharedStorage>,
    pub client: reqwest::Client,
    pub token: Option<String>,
}

/// The settings of a [`TestApp`]: HTTP on port 0, SQLite in `data_dir`, a 5 s grace, plus `extra`.
pub fn http_settings(data_dir: &Path, extra: &[(&str, &str)]) -> Result<Settings, String> {
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
    pub async fn spawn(data_dir: &Path, extra: &[(&str, &str)]) -> TestApp {
        let settings = http_settings(data_dir, extra).expect("settings");
        let token = Some(settings.http.token.expose().to_string()).filter(|t| !t.is_empty());
        let app = App::build(settings).await.expect("app builds");
        let port = app.http_addr().port();
        let storage = app.storage();
        let shutdown = CancellationToken::new();
        let t = shutdown.clone();
        let handle = tokio::spawn(async move { app.run(t).await.expect("app runs") });
        TestApp {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            shutdown,
            handle,
            storage,
            client: reqwest::Client::new(),
            token,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub async fn post(&self, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
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

    pub async fn post_json(&self, v: &Value) -> (StatusCode, Value) {
        self.post(v.to_string()).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self
            .auth(self.client.get(self.url(path)))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// GET `path` with the token (if any) and `Host: host`.
    pub async fn get_as(&self, host: &str, path: &str) -> reqwest::Response {
        self.auth(self.client.get(self.url(path)))
            .header("host", host)
            .send()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap();
    }
}

/// A free loopback port (bound and released; the daemon binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real daemon binary as a child process, configured by environment variables only
/// (`env_for` the fake platform, plus `extra`), its stdout and stderr in a log file.
pub struct Daemon {
    pub child: tokio::process::Child,
    pub pid: u32,
    /// `http://127.0.0.1:{port}`
    pub http: String,
    pub log: std::path::PathBuf,
}

impl Daemon {
    /// Spawns the binary with `data_dir` as LOCAL_DATA_DIR; the log goes to `{work_dir}/{name}.log`.
    pub fn spawn(
        platform: &FakePlatform,
        work_dir: &std::path::Path,
        data_dir: &std::path::Path,
        name: &str,
        extra: &[(&str, &str)],
    ) -> Daemon {
        let port = free_port();
        let log = work_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_connect-extension-mongodb"));
        cmd.env_clear()
            .envs(env_for(platform, data_dir))
            .env("HTTP_LISTEN", format!("127.0.0.1:{port}"))
            .env("STORAGE_BACKENDS", "local")
            .env("RUST_LOG", "info")
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .current_dir(work_dir)
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd.spawn().unwrap();
        let pid = child.id().unwrap();
        Daemon {
            child,
            pid,
            http: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`, `libc::SIGKILL`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with the pid of our own child; no memory is involved.
        let rc = unsafe { libc::kill(self.pid as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid);
    }

    /// Waits for the exit (None after `limit`).
    pub async fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .map(|r| r.unwrap())
    }

    /// Peak resident set size (`VmHWM`) in KiB, while the process lives.
    pub fn vm_hwm_kib(&self) -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Everything the daemon printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` bytes of the log (for assertion messages).
    pub fn log_tail(&self, n: usize) -> String {
        let s = self.log_text();
        let mut start = s.len().saturating_sub(n);
        while !s.is_char_boundary(start) {
            start += 1;
        }
        s[start..].to_string()
    }

    /// GET `path` on the daemon's HTTP listener, retried for up to 10 s until it answers.
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let mut last = String::new();
        for _ in 0..100 {
            match reqwest::get(format!("{}{path}", self.http)).await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    return (
                        status,
                        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
                    );
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the daemon's HTTP listener never answered {path}: {last}");
    }

    /// Every stored document (up to 1000), read back through `GET /events`.
    pub async fn documents(&self) -> Vec<serde_json::Value> {
        let (status, body) = self.get("/events?limit=1000").await;
        assert_eq!(status, 200, "{body}");
        body["documents"].as_array().unwrap().clone()
    }
}

/// Every document (up to 1000) in the SQLite store in `data_dir` (the daemon must have exited).
pub async fn stored_in(data_dir: &std::path::Path) -> Vec<serde_json::Value> {
    use connect_extension_mongodb::storage::Storage;
    let store = connect_extension_mongodb::storage::local::LocalStorage::open(data_dir).unwrap();
    store
        .list(&ListQuery {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Object ids of `docs` (their `id` field) with how often each occurs.
pub fn object_id_counts(docs: &[serde_json::Value]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for d in docs {
        *counts
            .entry(d["id"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    counts
}
