//! One events channel (`runner_type=background` or `interactive`): connect, handshake, read tasks,
//! send results, keep alive, reconnect forever, drain on shutdown.
//!
//! ```text
//!   reader loop ──task──▶ tokio::spawn(tasks::run) ──result──▶ Outbox (bounded, survives reconnects)
//!      ▲  permit (max_in_flight) acquired before each read                │
//!      └──────────────────── websocket ◀── writer task (oldest first) ◀───┘
//! ```
//! * Every task runs in its own tokio task; reading pauses while `max_in_flight` tasks run
//!   (back-pressure), never because of a fetch.
//! * Results go out the moment they exist. A result that cannot be sent stays at the head of the
//!   outbox and is sent first after the reconnect. The outbox holds at most `result_buffer`
//!   results and `result_buffer_bytes` bytes (a single larger result passes alone); when full,
//!   finished tasks wait (and hold their in-flight slot), so nothing is dropped.
//! * A frame that is not JSON, not version 2, of unknown type, or invalid is logged (a scrubbed
//!   200-byte excerpt, control characters escaped) and skipped; the next frame is read at once.

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
    /// Waits for room (back-pressure), then queues.
    async fn push(&self, mut frame: OutFrame) {
        let permit = self
            .space
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        frame._space = Some(permit);
        // A result larger than the whole budget takes all of it (it passes alone), never more.
        let need = frame
            .text
            .len()
            .clamp(1, self.bytes_cap)
            .min(u32::MAX as usize) as u32;
        let bytes = self
            .bytes
            .clone()
            .acquire_many_owned(need)
            .await
            .expect("never closed");
        frame._bytes = Some(bytes);
        self.push_now(frame);
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
                        End::Dropped(reason) => {
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
                    Incoming::Task(_) => "a task",
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
        let (sink, stream) = ws.split();
        let dead = CancellationToken::new();
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(writer_loop(
            sink,
            self.outbox.clone(),
            ctl_rx,
            dead.clone(),
            self.shared.metrics.clone(),
        ));
        let end = self.read_loop(stream, stop, &dead, &ctl_tx).await;
        match &end {
            End::Dropped(_) => {
                dead.cancel();
                let _ = writer.await;
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
        writer: tokio::task::JoinHandle<()>,
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
        mut stream: SplitStream<Ws>,
        stop: &CancellationToken,
        dead: &CancellationToken,
        ctl_tx: &mpsc::UnboundedSender<Message>,
    ) -> End {
        let mut permit: Option<OwnedSemaphorePermit> = None;
        let mut ping = tokio::time::interval_at(
            Instant::now() + self.opts.ping_interval,
            self.opts.ping_interval,
        );
        let mut awaiting_pong = false;
        // Reading paused since the last ping (all slots busy): a missing pong proves nothing then.
        let mut paused = false;
        loop {
            if permit.is_none() {
                match self.slots.clone().try_acquire_owned() {
                    Ok(p) => permit = Some(p),
                    Err(_) => paused = true,
                }
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => return End::LocalStop,
                _ = dead.cancelled() => return End::Dropped("sending failed".into()),
                _ = ping.tick() => {
                    if awaiting_pong && !paused {
                        return End::Dropped(format!(
                            "no pong within {} s (CONNECT_PING_INTERVAL)",
                            self.opts.ping_interval.as_secs()
                        ));
                    }
                    let _ = ctl_tx.send(Message::Ping(Vec::new().into()));
                    awaiting_pong = true;
                    paused = false;
                }
                p = self.slots.clone().acquire_owned(), if permit.is_none() => {
                    permit = p.ok();
                }
                msg = stream.next(), if permit.is_some() => {
                    let text = match msg {
                        None => return End::Dropped("connection closed".into()),
                        Some(Err(e)) => return End::Dropped(e.to_string()),
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
                                    return End::Dropped(match c {
                                        Some(c) => format!("the platform closed the connection ({} {})", u16::from(c.code), c.reason),
                                        None => "the platform closed the connection".into(),
                                    })
                                }
                                _ => continue,
                            }
                        }
                    };
                    match protocol::parse_frame(&text) {
                        Ok(Incoming::Task(task)) => {
                            let p = permit.take().expect("guarded by the select condition");
                            self.spawn_task(*task, p);
                        }
                        Ok(Incoming::SetupResponse(r)) => {
                            // Merge now (arrival order); a storage rebuild runs beside the
                            // reader, never in its way.
                            let merged = self.shared.live.merge(&r);
                            let me = self.clone();
                            tokio::spawn(async move { me.shared.live.activate(me.name(), merged).await });
                        }
                        Ok(Incoming::Shutdown) => {
                            tracing::info!(channel = self.name(), in_flight = self.in_flight(), "the platform asked to shut down; draining in-flight tasks");
                            return End::PlatformShutdown;
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
        }
    }

    fn spawn_task(self: &Arc<Self>, task: Task, permit: OwnedSemaphorePermit) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let task = Arc::new(task);
        let metrics = &self.shared.metrics;
        metrics
            .tasks_received
            .get_or_create(&TaskLabels {
                event_type: crate::telemetry::event_type_label_of(&task.input.event_type),
                category: tasks::category_label(&task),
            })
            .inc();
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
) {
    loop {
        tokio::select! {
            biased;
            _ = dead.cancelled() => return,
            m = ctl.recv() => {
                let Some(m) = m else { return };
                let closing = matches!(m, Message::Close(_));
                let sent = tokio::select! {
                    r = sink.send(m) => r.is_ok(),
                    _ = dead.cancelled() => false,
                };
                if !sent {
                    dead.cancel();
                    return;
                }
                if closing {
                    return;
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
                    return;
                }
            }
        }
    }
}
