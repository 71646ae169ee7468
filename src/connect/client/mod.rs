//! One events channel (`runner_type=background` or `interactive`): connect, handshake, read tasks,
//! send results, keep alive, reconnect forever, drain on shutdown.
//!
//! ```text
//!   reader loop (always reading) ──task──▶ slot free? ──▶ tokio::spawn(tasks::run) ──result──┐
//!      ▲                                       │ no                                          │
//!      │                      waiting queue (≤ 10,000 tasks, ≤ 32 MiB of frames)              │
//!      │                                       │ full: answered `retry` at once ─────────────┤
//!      └──────────────────── websocket ◀── writer task (control first, then oldest) ◀ Outbox ┘
//! ```
//! * Every task runs in its own tokio task, at most `max_in_flight` at a time. The reader never
//!   waits for a slot: so server pings are answered (tungstenite answers them only while the
//!   stream is polled) and `shutdown` / `setup_response` are read while saturated. Tasks read
//!   while every slot is busy wait in a bounded queue and start in arrival order as slots free;
//!   a task beyond it is answered `retry` at once ("the extension is busy"), so the platform
//!   redelivers it. Reading pauses only when such an immediate answer finds the outbox full —
//!   that happens only when the platform does not take our frames, so it would not get pongs
//!   either; the missing pong then does not count against the connection.
//! * On `shutdown` (platform or local) the waiting tasks never started and are answered `retry`
//!   at once; on a lost connection they are left to the platform's redelivery.
//! * Results go out the moment they exist. A result that cannot be sent stays at the head of the
//!   outbox and is sent first after the reconnect. The outbox holds at most `result_buffer`
//!   results and `result_buffer_bytes` bytes (a single larger result passes alone); when full,
//!   finished tasks wait (and hold their in-flight slot), so nothing is dropped.
//! * A frame that is not JSON, not version 2, of unknown type, or invalid is logged (a scrubbed
//!   200-byte excerpt, control characters escaped) and skipped; the next frame is read at once.
//!   `shutdown` is honoured whatever its version; a v2 task that cannot be read but names its
//!   task id is answered `fail` (see `protocol`).
//! * A frame above `max_frame_bytes` is answered with close 1009 (message too big), a text frame
//!   that is not UTF-8 with 1007, as the runner's websockets library does; the close frame is
//!   flushed and the rest of the input read until the platform closes (bounded by the flush
//!   timeout), then the channel reconnects after the usual pause.
//! * The upgrade carries `Authorization` and a `User-Agent` naming this daemon and its version.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::secret::Secret;
use crate::connect::live::LiveConfig;
use crate::connect::protocol::{self, SetupRequest};
use crate::connect::tasks::{Definitions, TaskContext};
use crate::connect::tuning::Tuning;
use crate::redact::Scrubber;
use crate::telemetry::{ChannelLabels, Metrics};
mod handshake;
mod inflight;
mod outbox;
mod reader;

use handshake::discard_until_eof;
use inflight::InFlight;
use outbox::{writer_loop, Outbox};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Which of the two events channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerType {
    Background,
    Interactive,
}

impl RunnerType {
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerType::Background => "background",
            RunnerType::Interactive => "interactive",
        }
    }
}

/// Fixed parameters of one channel.
pub struct ChannelOptions {
    pub runner_type: RunnerType,
    /// `ws[s]://{SERVER_ADDRESS}/public/v1/devops/ws/{ENVIRONMENT_ID}/{INSTANCE_ID}`
    pub ws_base: String,
    pub api_key: Secret,
    /// `User-Agent` of the websocket upgrade (the one the REST client sends).
    pub user_agent: String,
    pub max_frame_bytes: usize,
    pub max_in_flight: usize,
    pub result_buffer: usize,
    /// The same bound in bytes (CONNECT_RESULT_BUFFER_BYTES).
    pub result_buffer_bytes: usize,
    pub setup_timeout: Duration,
    pub ping_interval: Duration,
    /// Bound on draining after the platform's `shutdown` (BACKGROUND_TASK_MAX_EXECUTION_TIME + 90 s).
    pub platform_drain: Duration,
    /// Bound on draining after SIGTERM (`shutdown.grace`, minus a margin to flush and close).
    pub local_drain: Duration,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub proxy: Option<crate::connect::proxy::Proxy>,
    pub tuning: Tuning,
}

/// How a connection ended.
#[derive(Debug)]
enum End {
    PlatformShutdown,
    LocalStop,
    Dropped(String),
    /// We closed the connection (1009 message too big, 1007 not UTF-8); reconnect after flushing
    /// the close frame.
    Closed(String),
}

/// What the readiness probe and the service see of a channel.
pub struct ChannelStatus {
    pub runner_type: RunnerType,
    ready: AtomicBool,
    problem: Mutex<String>,
}

impl ChannelStatus {
    pub fn new(runner_type: RunnerType) -> Self {
        Self {
            runner_type,
            ready: AtomicBool::new(false),
            problem: Mutex::new("not connected yet".into()),
        }
    }
    /// The channel task ended abnormally (panic): not ready, with the reason, for good.
    pub fn set_failed(&self, reason: &str) {
        self.set(false, reason);
    }
    #[cfg(test)]
    pub(crate) fn set_ready_for_test(&self) {
        self.set(true, "");
    }
    fn set(&self, ready: bool, problem: &str) {
        self.ready.store(ready, Ordering::SeqCst);
        *self.problem.lock().expect("status lock") = problem.to_string();
    }
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
    pub fn problem(&self) -> String {
        self.problem.lock().expect("status lock").clone()
    }
}

/// Shared parts of both channels.
pub struct Shared {
    pub tasks: TaskContext,
    pub live: Arc<LiveConfig>,
    pub metrics: Arc<Metrics>,
    pub scrubber: Arc<Scrubber>,
    pub setup_request: SetupRequest,
}

pub struct Channel {
    opts: ChannelOptions,
    shared: Arc<Shared>,
    pub status: Arc<ChannelStatus>,
    outbox: Arc<Outbox>,
    slots: Arc<Semaphore>,
    inflight: Mutex<HashMap<u64, InFlight>>,
    /// Every spawned task until its result is queued (or it is aborted): what a drain waits for.
    tasks: TaskTracker,
    next_id: AtomicU64,
    /// This channel's event definitions: from its first `setup_response` only (§4.4).
    definitions: RwLock<Option<Arc<Definitions>>>,
    labels: ChannelLabels,
    /// This channel's `tasks_in_flight` gauge, looked up once.
    in_flight_gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Channel {
    pub fn new(opts: ChannelOptions, shared: Arc<Shared>) -> Arc<Self> {
        let bytes_cap = opts
            .result_buffer_bytes
            .clamp(1, Semaphore::MAX_PERMITS)
            .min(u32::MAX as usize);
        let labels = ChannelLabels {
            channel: opts.runner_type.as_str().to_string(),
        };
        let gauge = shared
            .metrics
            .results_pending
            .get_or_create(&labels)
            .clone();
        let in_flight_gauge = shared
            .metrics
            .tasks_in_flight
            .get_or_create(&labels)
            .clone();
        Arc::new(Channel {
            in_flight_gauge,
            status: Arc::new(ChannelStatus::new(opts.runner_type)),
            outbox: Arc::new(Outbox {
                queue: Mutex::new(VecDeque::new()),
                notify: Notify::new(),
                emptied: Notify::new(),
                space: Arc::new(Semaphore::new(opts.result_buffer.max(1))),
                bytes: Arc::new(Semaphore::new(bytes_cap)),
                bytes_cap,
                gauge,
            }),
            slots: Arc::new(Semaphore::new(opts.max_in_flight.max(1))),
            inflight: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            next_id: AtomicU64::new(0),
            definitions: RwLock::new(None),
            labels,
            opts,
            shared,
        })
    }

    fn name(&self) -> &'static str {
        self.opts.runner_type.as_str()
    }

    fn url(&self) -> String {
        let (mut bg, mut sched) = (0, 0);
        for f in self.inflight.lock().expect("inflight lock").values() {
            match f.task.options.task_category.as_str() {
                "background" => bg += 1,
                "scheduled" => sched += 1,
                _ => {}
            }
        }
        format!(
            "{}?running_tasks={bg}&running_scheduled_tasks={sched}&runner_type={}",
            self.opts.ws_base,
            self.name()
        )
    }

    /// Runs until the platform shuts the channel down or `stop` is cancelled (then drains).
    /// Returns true when the platform asked for the shutdown.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) -> bool {
        // Full jitter over `backoff_base · 2^k`, capped at `backoff_cap`, for ever; k counts the
        // failures since the last set-up connection.
        let policy = crate::retry::Policy::exponential(
            self.opts.tuning.backoff_base,
            self.opts.tuning.backoff_cap,
        )
        .with_full_jitter();
        let mut waits = policy.backoff();
        let mut attempt: u32 = 0;
        loop {
            if stop.is_cancelled() {
                self.drain_disconnected().await;
                return false;
            }
            let url = self.url();
            let connected = tokio::select! {
                r = self.connect_and_setup(&url) => r,
                _ = stop.cancelled() => continue,
            };
            match connected {
                Ok((ws, setup)) => {
                    attempt = 0;
                    waits = policy.backoff();
                    self.apply_setup(&setup).await;
                    self.status.set(true, "");
                    tracing::info!(channel = self.name(), "Connect channel set up");
                    let end = self.serve(ws, &stop).await;
                    match end {
                        End::PlatformShutdown => {
                            self.status.set(false, "shut down by the platform");
                            tracing::info!(
                                channel = self.name(),
                                "channel closed after the platform's shutdown"
                            );
                            return true;
                        }
                        End::LocalStop => {
                            self.status.set(false, "stopped");
                            return false;
                        }
                        End::Dropped(reason) | End::Closed(reason) => {
                            self.status.set(false, &format!("disconnected: {reason}"));
                            self.shared
                                .metrics
                                .reconnects
                                .get_or_create(&self.labels)
                                .inc();
                            tracing::warn!(
                                channel = self.name(),
                                %reason,
                                pause_ms = self.opts.tuning.reconnect_pause.as_millis() as u64,
                                pending_results = self.outbox.len(),
                                "connection lost; reconnecting"
                            );
                            tokio::select! {
                                _ = tokio::time::sleep(self.opts.tuning.reconnect_pause) => {}
                                _ = stop.cancelled() => {}
                            }
                        }
                    }
                }
                Err(e) => {
                    let wait = waits.next().unwrap_or(self.opts.tuning.backoff_cap);
                    attempt = attempt.saturating_add(1);
                    self.status.set(false, &format!("cannot connect: {e}"));
                    tracing::warn!(
                        channel = self.name(),
                        error = %e,
                        attempt,
                        retry_in_ms = wait.as_millis() as u64,
                        "cannot set up the Connect channel; retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => {}
                    }
                }
            }
        }
    }

    /// Serves one set-up connection until it ends; then drains as the end requires.
    async fn serve(self: &Arc<Self>, ws: Ws, stop: &CancellationToken) -> End {
        let (sink, mut stream) = ws.split();
        let dead = CancellationToken::new();
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(writer_loop(
            sink,
            self.outbox.clone(),
            ctl_rx,
            dead.clone(),
            self.shared.metrics.clone(),
        ));
        let end = self.read_loop(&mut stream, stop, &dead, &ctl_tx).await;
        match &end {
            End::Dropped(_) => {
                dead.cancel();
                let _ = writer.await;
            }
            End::Closed(reason) => {
                // The close frame is queued first on the control channel: let it go out, then
                // read (and discard) what the platform still sends until it closes too, bounded
                // by the flush timeout. Dropping a socket with unread data resets it, and the
                // platform would never see the close code.
                drop(ctl_tx);
                let mut writer = writer;
                let limit = self.opts.tuning.flush_timeout;
                match tokio::time::timeout(limit, &mut writer).await {
                    Ok(Ok(Some(sink))) => {
                        if let Ok(mut ws) = stream.reunite(sink) {
                            let _ =
                                tokio::time::timeout(limit, discard_until_eof(ws.get_mut())).await;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        dead.cancel();
                        let _ = writer.await;
                    }
                }
                dead.cancel();
                return End::Dropped(reason.clone());
            }
            End::PlatformShutdown => {
                self.drain(self.opts.platform_drain).await;
                self.finish_connection(ctl_tx, writer, dead).await;
            }
            End::LocalStop => {
                let _ = ctl_tx.send(Message::Text(protocol::shutdown_frame().into()));
                tracing::info!(
                    channel = self.name(),
                    in_flight = self.in_flight(),
                    "sent shutdown to the platform; draining in-flight tasks"
                );
                self.drain(self.opts.local_drain).await;
                self.finish_connection(ctl_tx, writer, dead).await;
            }
        }
        end
    }

    /// Waits (bounded) for the outbox to empty, then closes with 1000.
    async fn finish_connection(
        &self,
        ctl_tx: mpsc::UnboundedSender<Message>,
        writer: tokio::task::JoinHandle<Option<SplitSink<Ws, Message>>>,
        dead: CancellationToken,
    ) {
        let flush = self.outbox.emptied(&dead);
        let _ = tokio::time::timeout(self.opts.tuning.flush_timeout, flush).await;
        let _ = ctl_tx.send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        })));
        drop(ctl_tx);
        if tokio::time::timeout(self.opts.tuning.flush_timeout, writer)
            .await
            .is_err()
        {
            dead.cancel();
        }
        let left = self.outbox.len();
        if left > 0 {
            tracing::warn!(
                channel = self.name(),
                results = left,
                "results not sent before closing; the platform will redeliver those tasks"
            );
        }
    }
}
