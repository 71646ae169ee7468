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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::live::LiveConfig;
use super::protocol::{self, Envelope, Incoming, SetupRequest, SetupResponse, Task, TaskOutput};
use super::redact::Scrubber;
use super::tasks::{self, Definitions, TaskContext};
use super::Tuning;
use crate::config::Secret;
use crate::sanitize::escape_control;
use crate::telemetry::{ChannelLabels, Metrics, ResultLabels, TaskLabels};

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
    pub proxy: Option<super::proxy::Proxy>,
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

/// A result waiting to be sent.
struct OutFrame {
    /// Shared bytes: re-queueing after a failed send copies nothing.
    text: tungstenite::Utf8Bytes,
    labels: Option<ResultLabels>,
    _space: Option<OwnedSemaphorePermit>,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// Results not yet on the wire, oldest first. Shared by all connections of a channel.
struct Outbox {
    queue: Mutex<VecDeque<OutFrame>>,
    notify: Notify,
    space: Arc<Semaphore>,
    /// One permit per byte queued, `result_buffer_bytes` in all.
    bytes: Arc<Semaphore>,
    bytes_cap: usize,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Outbox {
    fn len(&self) -> usize {
        self.queue.lock().expect("outbox lock").len()
    }
    /// Permits for one frame of `len` bytes. A result larger than the whole budget takes all of
    /// it (it passes alone), never more.
    fn bytes_needed(&self, len: usize) -> u32 {
        len.clamp(1, self.bytes_cap).min(u32::MAX as usize) as u32
    }
    /// Waits for room for a frame of `len` bytes (cancel-safe).
    async fn reserve(&self, len: usize) -> (OwnedSemaphorePermit, OwnedSemaphorePermit) {
        let space = self
            .space
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let bytes = self
            .bytes
            .clone()
            .acquire_many_owned(self.bytes_needed(len))
            .await
            .expect("never closed");
        (space, bytes)
    }
    fn try_reserve(&self, len: usize) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let space = self.space.clone().try_acquire_owned().ok()?;
        let bytes = self
            .bytes
            .clone()
            .try_acquire_many_owned(self.bytes_needed(len))
            .ok()?;
        Some((space, bytes))
    }
    fn push_reserved(
        &self,
        mut frame: OutFrame,
        (space, bytes): (OwnedSemaphorePermit, OwnedSemaphorePermit),
    ) {
        frame._space = Some(space);
        frame._bytes = Some(bytes);
        self.push_now(frame);
    }
    /// Waits for room (back-pressure), then queues.
    async fn push(&self, frame: OutFrame) {
        let permits = self.reserve(frame.text.len()).await;
        self.push_reserved(frame, permits);
    }
    /// Queues without waiting (shutdown answers).
    fn push_now(&self, frame: OutFrame) {
        let mut q = self.queue.lock().expect("outbox lock");
        q.push_back(frame);
        self.gauge.set(q.len() as i64);
        drop(q);
        self.notify.notify_one();
    }
    fn push_front(&self, frame: OutFrame) {
        let mut q = self.queue.lock().expect("outbox lock");
        q.push_front(frame);
        self.gauge.set(q.len() as i64);
        drop(q);
        self.notify.notify_one();
    }
    async fn pop(&self) -> OutFrame {
        loop {
            {
                let mut q = self.queue.lock().expect("outbox lock");
                if let Some(f) = q.pop_front() {
                    self.gauge.set(q.len() as i64);
                    return f;
                }
            }
            self.notify.notified().await;
        }
    }
}

struct InFlight {
    task: Arc<Task>,
    abort: Option<AbortHandle>,
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
    idle: Notify,
    /// Tasks done but whose result is not queued yet.
    finishing: AtomicUsize,
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
                space: Arc::new(Semaphore::new(opts.result_buffer.max(1))),
                bytes: Arc::new(Semaphore::new(bytes_cap)),
                bytes_cap,
                gauge,
            }),
            slots: Arc::new(Semaphore::new(opts.max_in_flight.max(1))),
            inflight: Mutex::new(HashMap::new()),
            idle: Notify::new(),
            finishing: AtomicUsize::new(0),
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
                    let cap = self
                        .opts
                        .tuning
                        .backoff_base
                        .saturating_mul(1u32 << attempt.min(20))
                        .min(self.opts.tuning.backoff_cap);
                    let wait = cap.mul_f64(rand::thread_rng().gen_range(0.0..=1.0));
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

    /// Opens the websocket and performs the handshake (§4.1).
    async fn connect_and_setup(&self, url: &str) -> Result<(Ws, SetupResponse), String> {
        let mut request = url
            .into_client_request()
            .map_err(|e| format!("invalid websocket URL: {e}"))?;
        request.headers_mut().insert(
            "User-Agent",
            self.opts
                .user_agent
                .parse()
                .map_err(|_| "the User-Agent is not a valid header value".to_string())?,
        );
        request.headers_mut().insert(
            "Authorization",
            self.opts
                .api_key
                .expose()
                .parse()
                .map_err(|_| "API_KEY is not a valid header value".to_string())?,
        );
        let uri = request.uri().clone();
        let host = uri
            .host()
            .unwrap_or("")
            .trim_matches(['[', ']'])
            .to_string();
        let secure = uri.scheme_str() == Some("wss");
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.opts.max_frame_bytes))
            .max_frame_size(Some(self.opts.max_frame_bytes));
        let connector = match (&self.opts.tls, secure) {
            (Some(tls), true) => Some(tokio_tungstenite::Connector::Rustls(tls.clone())),
            _ => Some(tokio_tungstenite::Connector::Plain),
        };
        let open = async {
            let tcp = match &self.opts.proxy {
                Some(p) => p.open(&host, port, secure).await?,
                None => TcpStream::connect((host.as_str(), port))
                    .await
                    .map_err(|e| format!("TCP connect to {host}:{port}: {e}"))?,
            };
            let _ = tcp.set_nodelay(true);
            tokio_tungstenite::client_async_tls_with_config(request, tcp, Some(config), connector)
                .await
                .map_err(|e| match e {
                    tungstenite::Error::Http(resp) => format!(
                        "the platform answered the upgrade with HTTP {}{}",
                        resp.status(),
                        if resp.status().as_u16() == 502 {
                            " (maintenance)"
                        } else {
                            ""
                        }
                    ),
                    other => format!("websocket handshake: {other}"),
                })
        };
        let (mut ws, _) = tokio::time::timeout(self.opts.tuning.open_timeout, open)
            .await
            .map_err(|_| "opening handshake timed out".to_string())??;

        // Initial ping; the pong must come within the handshake ping timeout (the runner: 5 s).
        ws.send(Message::Ping(Vec::new().into()))
            .await
            .map_err(|e| format!("sending the initial ping: {e}"))?;
        let pong = async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Pong(_))) => return Ok(()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(format!("waiting for pong: {e}")),
                    None => return Err("connection closed before the pong".to_string()),
                }
            }
        };
        tokio::time::timeout(self.opts.tuning.handshake_ping_timeout, pong)
            .await
            .map_err(|_| "no pong to the initial ping".to_string())??;

        let frame = protocol::to_wire(&Envelope::new("setup_request", &self.shared.setup_request));
        ws.send(Message::Text(frame.into()))
            .await
            .map_err(|e| format!("sending setup_request: {e}"))?;
        let answer = async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                    Some(Ok(Message::Binary(b))) => {
                        return String::from_utf8(b.to_vec())
                            .map_err(|_| "binary non-UTF-8 answer to setup_request".to_string())
                    }
                    Some(Ok(Message::Close(c))) => {
                        return Err(format!(
                            "the platform closed the connection during setup: {c:?}"
                        ))
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(format!("waiting for setup_response: {e}")),
                    None => return Err("connection closed during setup".to_string()),
                }
            }
        };
        let text = tokio::time::timeout(self.opts.setup_timeout, answer)
            .await
            .map_err(|_| {
                format!(
                    "no setup_response within {} s (CONNECT_SETUP_TIMEOUT)",
                    self.opts.setup_timeout.as_secs()
                )
            })??;
        match protocol::parse_frame(&text) {
            Ok(Incoming::SetupResponse(r)) => Ok((ws, *r)),
            Ok(other) => Err(format!(
                "expected setup_response as the first answer, got {}",
                match other {
                    Incoming::Task(_) | Incoming::UnreadableTask(_) => "a task",
                    Incoming::Shutdown => "shutdown",
                    Incoming::SetupResponse(_) => unreachable!(),
                }
            )),
            Err(e) => Err(format!(
                "invalid setup_response ({e}): {}",
                self.shared.scrubber.excerpt(&text)
            )),
        }
    }

    async fn apply_setup(&self, setup: &SetupResponse) {
        {
            let mut defs = self.definitions.write().expect("definitions lock");
            if defs.is_none() {
                let map: Definitions = setup
                    .event_definitions
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|d| (d.event_type.clone(), d))
                    .collect();
                *defs = Some(Arc::new(map));
            }
        }
        self.shared.live.apply(self.name(), setup).await;
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
        let flush = async {
            while self.outbox.len() > 0 && !dead.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
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

    fn in_flight(&self) -> usize {
        self.inflight.lock().expect("inflight lock").len()
    }

    /// Waits for in-flight tasks up to `limit`; tasks still running then are answered `retry`.
    async fn drain(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 && self.finishing.load(Ordering::SeqCst) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let left: Vec<InFlight> = self
            .inflight
            .lock()
            .expect("inflight lock")
            .drain()
            .map(|(_, f)| f)
            .collect();
        if left.is_empty() {
            return;
        }
        tracing::warn!(
            channel = self.name(),
            tasks = left.len(),
            grace_secs = limit.as_secs_f64(),
            "shutdown deadline reached: answering unfinished tasks `retry` so the platform redelivers them"
        );
        for f in left {
            if let Some(a) = &f.abort {
                a.abort();
            }
            self.in_flight_gauge.dec();
            let out = tasks::retry(format!(
                "the extension is shutting down and task {} did not finish within {:.0} s; please redeliver",
                f.task.options.task_id,
                limit.as_secs_f64()
            ));
            self.outbox.push_now(self.result_frame(&f.task, out));
        }
    }

    /// After a local stop while disconnected: let in-flight tasks finish (their results cannot
    /// be sent; the platform redelivers, and stored documents deduplicate).
    async fn drain_disconnected(&self) {
        if self.in_flight() > 0 {
            self.drain(self.opts.local_drain).await;
        }
    }

    fn result_frame(&self, task: &Task, output: TaskOutput) -> OutFrame {
        let labels = ResultLabels {
            event_type: crate::telemetry::event_type_label_of(&task.input.event_type),
            category: tasks::category_label(task),
            result: output.result.clone(),
        };
        let mut t = task.clone();
        t.output = Some(output);
        OutFrame {
            text: protocol::to_wire(&Envelope::new("task", &t)).into(),
            labels: Some(labels),
            _space: None,
            _bytes: None,
        }
    }

    async fn read_loop(
        self: &Arc<Self>,
        stream: &mut SplitStream<Ws>,
        stop: &CancellationToken,
        dead: &CancellationToken,
        ctl_tx: &mpsc::UnboundedSender<Message>,
    ) -> End {
        let mut ping = tokio::time::interval_at(
            Instant::now() + self.opts.ping_interval,
            self.opts.ping_interval,
        );
        let mut awaiting_pong = false;
        // Reading paused since the last ping (no room for an answer): a missing pong proves
        // nothing then.
        let mut paused = false;
        // Tasks read while every slot is busy, oldest first; bounded by count and bytes.
        let mut waiting = Waiting::new(
            self.opts
                .max_in_flight
                .max(self.opts.tuning.waiting_tasks_floor)
                .max(1),
            self.opts.tuning.waiting_task_bytes,
        );
        // An answer given at once (busy `retry`, unreadable task `fail`) waiting for room in the
        // outbox. Only then does reading pause: the outbox is full only when the platform does
        // not take our frames, so it would not get our pongs either.
        let mut blocked: Option<OutFrame> = None;
        // Busy answers are being given (logged once per episode).
        let mut overflowing = false;
        let end = loop {
            while !waiting.is_empty() {
                let Ok(p) = self.slots.clone().try_acquire_owned() else {
                    break;
                };
                let task = waiting.pop().expect("not empty");
                self.spawn_task(*task, p);
            }
            if blocked.is_some() {
                paused = true;
            }
            let blocked_len = blocked.as_ref().map_or(0, |f| f.text.len());
            tokio::select! {
                biased;
                _ = stop.cancelled() => break End::LocalStop,
                _ = dead.cancelled() => break End::Dropped("sending failed".into()),
                _ = ping.tick() => {
                    if awaiting_pong && !paused {
                        break End::Dropped(format!(
                            "no pong within {} s (CONNECT_PING_INTERVAL)",
                            self.opts.ping_interval.as_secs()
                        ));
                    }
                    let _ = ctl_tx.send(Message::Ping(Vec::new().into()));
                    awaiting_pong = true;
                    paused = false;
                }
                p = self.slots.clone().acquire_owned(), if !waiting.is_empty() => {
                    if let (Ok(p), Some(task)) = (p, waiting.pop()) {
                        self.spawn_task(*task, p);
                    }
                }
                permits = self.outbox.reserve(blocked_len), if blocked.is_some() => {
                    let frame = blocked.take().expect("guarded by the select condition");
                    self.outbox.push_reserved(frame, permits);
                }
                msg = stream.next(), if blocked.is_none() => {
                    let text = match msg {
                        None => break End::Dropped("connection closed".into()),
                        Some(Err(tungstenite::Error::Capacity(e))) => {
                            tracing::warn!(channel = self.name(), error = %e, limit = self.opts.max_frame_bytes, "frame above CONNECT_MAX_FRAME_BYTES: closing with 1009 (message too big) and reconnecting");
                            let _ = ctl_tx.send(Message::Close(Some(CloseFrame {
                                code: CloseCode::Size,
                                reason: "message too big".into(),
                            })));
                            break End::Closed(format!("a frame above CONNECT_MAX_FRAME_BYTES ({e}); closed with 1009"));
                        }
                        Some(Err(tungstenite::Error::Utf8)) => {
                            tracing::warn!(channel = self.name(), "text frame that is not UTF-8: closing with 1007 (invalid data) and reconnecting");
                            let _ = ctl_tx.send(Message::Close(Some(CloseFrame {
                                code: CloseCode::Invalid,
                                reason: "invalid UTF-8".into(),
                            })));
                            break End::Closed("a text frame that is not UTF-8; closed with 1007".into());
                        }
                        Some(Err(e)) => break End::Dropped(e.to_string()),
                        Some(Ok(m)) => {
                            awaiting_pong = false;
                            match m {
                                Message::Text(t) => t,
                                Message::Binary(b) => match tungstenite::Utf8Bytes::try_from(b.clone()) {
                                    Ok(s) => s,
                                    Err(_) => {
                                        tracing::warn!(channel = self.name(), bytes = b.len(), "binary frame that is not UTF-8 skipped");
                                        continue;
                                    }
                                },
                                Message::Close(c) => {
                                    break End::Dropped(match c {
                                        Some(c) => format!("the platform closed the connection ({} {})", u16::from(c.code), escape_control(&c.reason)),
                                        None => "the platform closed the connection".into(),
                                    })
                                }
                                _ => continue,
                            }
                        }
                    };
                    match protocol::parse_frame(&text) {
                        Ok(Incoming::Task(task)) => {
                            self.count_received(&task.input.event_type, &tasks::category_label(&task));
                            if waiting.is_empty() {
                                if let Ok(p) = self.slots.clone().try_acquire_owned() {
                                    self.spawn_task(*task, p);
                                    continue;
                                }
                            }
                            let pushed = waiting.push(task, text.len());
                            if pushed.is_ok() {
                                overflowing = false;
                            }
                            if let Err(task) = pushed {
                                let out = tasks::retry(format!(
                                    "the extension is busy: {} tasks running and {} waiting (CONNECT_MAX_IN_FLIGHT); please redeliver task {}",
                                    self.in_flight(),
                                    waiting.len(),
                                    task.options.task_id
                                ));
                                // Once per episode at WARN (a burst must not flood the log).
                                if !overflowing {
                                    overflowing = true;
                                    tracing::warn!(
                                        channel = self.name(),
                                        in_flight = self.in_flight(),
                                        waiting = waiting.len(),
                                        "every slot busy and the waiting queue full: new tasks are answered `retry` until there is room"
                                    );
                                }
                                tracing::debug!(
                                    channel = self.name(),
                                    task_id = %escape_control(&task.options.task_id),
                                    "task answered `retry`: busy"
                                );
                                let frame = self.result_frame(&task, out);
                                blocked = self.answer_now(frame);
                            }
                        }
                        Ok(Incoming::UnreadableTask(u)) => {
                            let category = match u.task_category.as_str() {
                                c @ ("background" | "interactive" | "scheduled") => c.to_string(),
                                _ => "other".into(),
                            };
                            self.count_received(&u.event_type, &category);
                            let reason = self.shared.scrubber.scrub(&u.reason);
                            tracing::warn!(
                                channel = self.name(),
                                task_id = %escape_control(&u.task_id),
                                error = %escape_control(&reason),
                                frame = %self.shared.scrubber.excerpt(&text),
                                "task frame skipped: it cannot be read; answered `fail`"
                            );
                            let out = TaskOutput {
                                result: "fail".into(),
                                data: None,
                                countdown: 0,
                                runtime: 0.0,
                                message: Some(format!("the task frame could not be read: {reason}")),
                            };
                            let labels = ResultLabels {
                                event_type: crate::telemetry::event_type_label_of(&u.event_type),
                                category,
                                result: out.result.clone(),
                            };
                            let frame = OutFrame {
                                text: u.answer(&out).into(),
                                labels: Some(labels),
                                _space: None,
                                _bytes: None,
                            };
                            blocked = self.answer_now(frame);
                        }
                        Ok(Incoming::SetupResponse(r)) => {
                            // Merge now (arrival order); a storage rebuild runs beside the
                            // reader, never in its way.
                            let merged = self.shared.live.merge(&r);
                            let me = self.clone();
                            tokio::spawn(async move { me.shared.live.activate(me.name(), merged).await });
                        }
                        Ok(Incoming::Shutdown) => {
                            tracing::info!(channel = self.name(), in_flight = self.in_flight(), waiting = waiting.len(), "the platform asked to shut down; draining in-flight tasks");
                            break End::PlatformShutdown;
                        }
                        Err(e) => {
                            tracing::warn!(
                                channel = self.name(),
                                error = %e,
                                frame = %self.shared.scrubber.excerpt(&text),
                                "frame skipped"
                            );
                        }
                    }
                }
            }
        };
        // An answer already decided is kept (the outbox survives reconnects).
        if let Some(frame) = blocked {
            self.outbox.push_now(frame);
        }
        if !waiting.is_empty() {
            match end {
                // Never started: answered `retry` at once so the platform can hand them on.
                End::PlatformShutdown | End::LocalStop => {
                    tracing::info!(
                        channel = self.name(),
                        tasks = waiting.len(),
                        "shutting down: tasks that never started are answered `retry`"
                    );
                    while let Some(task) = waiting.pop() {
                        let out = tasks::retry(format!(
                            "the extension is shutting down and task {} never started; please redeliver",
                            task.options.task_id
                        ));
                        self.outbox.push_now(self.result_frame(&task, out));
                    }
                }
                // Never started and unanswered: the platform redelivers them after the reconnect.
                End::Dropped(_) | End::Closed(_) => {
                    tracing::warn!(
                        channel = self.name(),
                        tasks = waiting.len(),
                        "connection lost: tasks that never started are left to the platform's redelivery"
                    );
                }
            }
        }
        end
    }

    /// Queues an answer given without running a task, if the outbox has room; else hands it back
    /// (reading then pauses until there is room).
    fn answer_now(&self, frame: OutFrame) -> Option<OutFrame> {
        match self.outbox.try_reserve(frame.text.len()) {
            Some(permits) => {
                self.outbox.push_reserved(frame, permits);
                None
            }
            None => Some(frame),
        }
    }

    fn count_received(&self, event_type: &str, category: &str) {
        self.shared
            .metrics
            .tasks_received
            .get_or_create(&TaskLabels {
                event_type: crate::telemetry::event_type_label_of(event_type),
                category: category.to_string(),
            })
            .inc();
    }

    fn spawn_task(self: &Arc<Self>, task: Task, permit: OwnedSemaphorePermit) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let task = Arc::new(task);
        self.in_flight_gauge.inc();
        tracing::debug!(
            channel = self.name(),
            task_id = %escape_control(&task.options.task_id),
            event_type = %escape_control(&task.input.event_type),
            object_id = %escape_control(&task.input.object_id),
            "task received"
        );
        self.inflight.lock().expect("inflight lock").insert(
            id,
            InFlight {
                task: task.clone(),
                abort: None,
            },
        );
        let defs = self
            .definitions
            .read()
            .expect("definitions lock")
            .clone()
            .unwrap_or_default();
        let me = self.clone();
        let handle = tokio::spawn(async move {
            let service_id = me.shared.live.service_id();
            let out = tasks::run(&me.shared.tasks, &defs, service_id.as_deref(), &task).await;
            let entry = {
                let mut map = me.inflight.lock().expect("inflight lock");
                let e = map.remove(&id);
                if e.is_some() {
                    me.finishing.fetch_add(1, Ordering::SeqCst);
                }
                e
            };
            if entry.is_some() {
                me.in_flight_gauge.dec();
                if out.result != "success" && out.result != "skip" {
                    tracing::info!(
                        channel = me.name(),
                        task_id = %escape_control(&task.options.task_id),
                        result = %out.result,
                        message = %escape_control(out.message.as_deref().unwrap_or("")),
                        "task answered"
                    );
                }
                me.outbox.push(me.result_frame(&task, out)).await;
                me.finishing.fetch_sub(1, Ordering::SeqCst);
            }
            me.idle.notify_waiters();
            drop(permit);
        });
        if let Some(f) = self.inflight.lock().expect("inflight lock").get_mut(&id) {
            f.abort = Some(handle.abort_handle());
        }
    }
}

async fn writer_loop(
    mut sink: SplitSink<Ws, Message>,
    outbox: Arc<Outbox>,
    mut ctl: mpsc::UnboundedReceiver<Message>,
    dead: CancellationToken,
    metrics: Arc<Metrics>,
) -> Option<SplitSink<Ws, Message>> {
    loop {
        tokio::select! {
            biased;
            _ = dead.cancelled() => return None,
            m = ctl.recv() => {
                let m = m?;
                let closing = matches!(m, Message::Close(_));
                let sent = tokio::select! {
                    r = sink.send(m) => r.is_ok(),
                    _ = dead.cancelled() => false,
                };
                if !sent {
                    dead.cancel();
                    return None;
                }
                if closing {
                    return Some(sink);
                }
            }
            frame = outbox.pop() => {
                let sent = tokio::select! {
                    r = sink.send(Message::Text(frame.text.clone())) => r.is_ok(),
                    _ = dead.cancelled() => false,
                };
                if sent {
                    if let Some(l) = &frame.labels {
                        metrics.results_sent.get_or_create(l).inc();
                    }
                } else {
                    outbox.push_front(frame);
                    dead.cancel();
                    return None;
                }
            }
        }
    }
}

/// Tasks read while every slot is busy, oldest first: at most `cap` tasks and `cap_bytes` bytes
/// of frames (one task is always admitted).
struct Waiting {
    queue: VecDeque<(Box<Task>, usize)>,
    bytes: usize,
    cap: usize,
    cap_bytes: usize,
}

impl Waiting {
    fn new(cap: usize, cap_bytes: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            bytes: 0,
            cap,
            cap_bytes,
        }
    }
    fn len(&self) -> usize {
        self.queue.len()
    }
    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
    /// Queues `task` (its frame was `bytes` long), or hands it back when full.
    fn push(&mut self, task: Box<Task>, bytes: usize) -> Result<(), Box<Task>> {
        let fits = self.queue.len() < self.cap
            && (self.queue.is_empty() || self.bytes.saturating_add(bytes) <= self.cap_bytes);
        if !fits {
            return Err(task);
        }
        self.bytes = self.bytes.saturating_add(bytes);
        self.queue.push_back((task, bytes));
        Ok(())
    }
    fn pop(&mut self) -> Option<Box<Task>> {
        let (task, bytes) = self.queue.pop_front()?;
        self.bytes -= bytes;
        Some(task)
    }
}

/// Reads and discards until the peer closes (callers bound it in time).
async fn discard_until_eof(io: &mut MaybeTlsStream<TcpStream>) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = io.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}
