//! Test support: the fake Connect platform and a harness running the real daemon against it.
#![allow(dead_code)]

pub mod fake_platform;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use connect_extension_mongodb::config::Settings;
use connect_extension_mongodb::connect::Tuning;
use connect_extension_mongodb::storage::{ListQuery, SharedStorage};
use connect_extension_mongodb::{App, AppError, AppOptions, RegistryHook};
use tokio_util::sync::CancellationToken;

pub use fake_platform::*;

pub const API_KEY: &str = "ApiKey SU-000-000-001:platform-key-SECRET-1";
pub const ENVIRONMENT_ID: &str = "ENV-TEST-01";
pub const INSTANCE_ID: &str = "INST-TEST-1";

/// Every log line of the test process (tracing → this buffer).
pub fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| Mutex::new(Vec::new()))
}

struct Capture;
impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        logs().lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("connect_extension_mongodb=debug,info")
            .with_ansi(false)
            .with_writer(|| Capture)
            .try_init();
    });
}

pub fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).to_string()
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
        capture_logs();
        let dir = tempfile::tempdir().unwrap();
        let mut env = env_for(&platform, &dir.path().join("data"));
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let empty = dir.path().join("empty.toml");
        std::fs::write(&empty, "").unwrap();
        let settings = Settings::load_with(Some(&empty), move |k| env.get(k).cloned()).unwrap();
        let app = App::build_with(
            settings,
            AppOptions {
                registry_hook: hook,
                connect_tuning: fast_tuning(),
            },
        )
        .await
        .unwrap();
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
