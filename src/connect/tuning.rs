//! Internal timings and limits of the channel.

use std::time::Duration;

/// Internal timings, fixed in production (the runner's values) and shortened by tests.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Wait for the pong to the first ping (runner: 5 s).
    pub handshake_ping_timeout: Duration,
    /// Pause after an established connection drops (runner: 5 s).
    pub reconnect_pause: Duration,
    /// Full-jitter exponential backoff: wait uniform(0, min(base·2^k, cap)).
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// TCP + TLS + upgrade (runner: 10 s).
    pub open_timeout: Duration,
    /// Sending the last results and the close frame at shutdown.
    pub flush_timeout: Duration,
    /// REST 5xx / network retries and the wait between them (runner: 3, 1 s).
    pub rest_retries: u32,
    pub rest_retry_delay: Duration,
    /// Longest wait for a storage rebuild after "Apply Changes" (then the current storage stays).
    pub storage_rebuild_timeout: Duration,
    /// Largest Connect REST response body read; a longer one is a retriable network error.
    pub rest_max_body_bytes: usize,
    /// HTTP(S)_PROXY / ALL_PROXY / NO_PROXY as these variables would answer (tests);
    /// `None`: the process environment.
    pub proxy_env: Option<std::collections::HashMap<String, String>>,
    /// Bytes of task frames held waiting for a slot (beside at most CONNECT_MAX_IN_FLIGHT tasks);
    /// a task beyond is answered `retry` at once. One task is always admitted.
    pub waiting_task_bytes: usize,
    /// Tasks that may wait for a slot: at least this many, however small CONNECT_MAX_IN_FLIGHT
    /// is (default 10,000; the byte bound, `waiting_task_bytes`, is what limits memory). A burst
    /// the platform pushes at once waits rather than being answered `retry` (the runner's
    /// websockets queue keeps 128 frames, then stops reading — and answering pings).
    pub waiting_tasks_floor: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            handshake_ping_timeout: Duration::from_secs(5),
            reconnect_pause: Duration::from_secs(5),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            open_timeout: Duration::from_secs(10),
            flush_timeout: Duration::from_secs(2),
            rest_retries: 3,
            rest_retry_delay: Duration::from_secs(1),
            storage_rebuild_timeout: Duration::from_secs(60),
            rest_max_body_bytes: 16 * 1024 * 1024,
            proxy_env: None,
            waiting_task_bytes: 32 * 1024 * 1024,
            waiting_tasks_floor: 10_000,
        }
    }
}
