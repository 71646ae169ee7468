//! An in-process stand-in for the CloudBlue Connect platform, speaking the EaaS protocol as
//! `connect-protocol.md` records it: a websocket server (plain `ws://` on port 0) that expects the
//! initial ping, reads `setup_request`, answers `setup_response`, then hands the connection to the
//! test; and the REST endpoints a background task uses (`…?{filter}&limit=0&offset=0` with
//! `Content-Range`, and `GET requests/{id}`) on plain `http://`.
//!
//! It can misbehave, as a real platform or network may (tests/it/connect_faults.rs drives each mode):
//!
//! | fault | how |
//! |---|---|
//! | TCP dropped without a close frame (FIN, RST, or half a frame then RST) | [`Conn::drop_socket`], [`Conn::reset_socket`], [`Conn::drop_mid_frame`] |
//! | redelivery of every task without a result after a reconnect | [`Ledger`], [`Ledger::settle`] |
//! | garbage frames: binary, text that is not UTF-8, anything raw | [`Conn::send_binary`], [`Conn::send_raw_text`] |
//! | server pings (pongs counted per connection) | [`Conn::ping`], [`Conn::pongs`] |
//! | REST faults per object and step: 5xx/4xx, 429 + `Retry-After`, slow, truncated body, invalid JSON | [`FakePlatform::rest_faults`] |
//!
//! REST calls other than GET (an extension approving or failing a request) are recorded
//! ([`FakePlatform::api_calls`]: method, path, JSON body, authorization) and answered `200 {}`
//! unless scripted ([`FakePlatform::answer_api`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::Message;

pub const PURCHASE_REQUEST: &str = include_str!("../../fixtures/purchase_request.json");
pub const SETUP_RESPONSE: &str = include_str!("../../fixtures/setup_response.json");
pub const TASK: &str = include_str!("../../fixtures/task_background_purchase.json");

/// A purchase request (the fixture) with another id.
pub fn purchase_object(id: &str, status: &str) -> Value {
    let mut o: Value = serde_json::from_str(PURCHASE_REQUEST).unwrap();
    o["id"] = json!(id);
    o["status"] = json!(status);
    o
}

/// A background task frame (the fixture) for `object_id`.
pub fn background_task(task_id: &str, object_id: &str) -> Value {
    let mut t: Value = serde_json::from_str(TASK).unwrap();
    t["data"]["options"]["task_id"] = json!(task_id);
    t["data"]["options"]["correlation_id"] = json!(format!("corr-{task_id}"));
    t["data"]["input"]["object_id"] = json!(object_id);
    t
}

/// An interactive task frame.
pub fn interactive_task(task_id: &str, event_type: &str, object_id: &str, data: Value) -> Value {
    json!({"version": 2, "message_type": "task", "data": {
        "options": {"task_id": task_id, "task_category": "interactive",
                    "correlation_id": format!("corr-{task_id}"), "reply_to": "eaas.results.ENV-TEST-01",
                    "api_key": null, "installation_id": null, "connect_correlation_id": null},
        "input": {"event_type": event_type, "object_id": object_id, "data": data},
        "output": null, "model_type": "task"}})
}

/// The fixture's setup_response data.
pub fn setup_response_data() -> Value {
    let v: Value = serde_json::from_str(SETUP_RESPONSE).unwrap();
    v["data"].clone()
}

pub fn setup_response_frame(data: &Value) -> Value {
    json!({"version": 2, "message_type": "setup_response", "data": data})
}

/// One REST call other than GET, as the fake saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiCall {
    pub method: String,
    /// Path and raw query, exactly as sent.
    pub path: String,
    /// The JSON body (`null` when empty or not JSON).
    pub body: Value,
    pub authorization: String,
}

/// Scripted answers (status, JSON body) to one method and path, consumed one per call.
pub type ApiAnswers = VecDeque<(u16, Value)>;

/// One REST request as the fake saw it.
#[derive(Debug, Clone)]
pub struct RestRequest {
    /// Path and raw query, exactly as sent.
    pub target: String,
    pub authorization: String,
    pub user_agent: String,
}

#[derive(Default)]
pub struct PlatformState {
    /// Data of the `setup_response` answered to every `setup_request`.
    pub setup_response: Mutex<Value>,
    /// Objects by id, as `GET requests/{id}` returns them.
    pub objects: Mutex<HashMap<String, Value>>,
    /// Forced HTTP status for the object GET of an id.
    pub get_status: Mutex<HashMap<String, u16>>,
    /// Ids whose object GET waits until [`FakePlatform::release`].
    pub held: Mutex<HashSet<String>>,
    /// Extra delay of the object GET of an id.
    pub get_delay: Mutex<HashMap<String, Duration>>,
    pub rest_log: Mutex<Vec<RestRequest>>,
    pub object_gets: AtomicUsize,
    /// Every text frame the runner sent, raw, on any connection (setup_request included).
    pub received: Mutex<Vec<String>>,
    /// While set, new websocket connections are dropped before the handshake (platform down).
    pub refuse_connections: std::sync::atomic::AtomicBool,
    released: Mutex<Option<watch::Sender<bool>>>,
    /// Planned REST faults by (step, object id): see [`FakePlatform::rest_faults`].
    pub rest_faults: Mutex<HashMap<(RestStep, String), FaultPlan>>,
    /// REST calls by (step, object id), faulty ones included.
    pub rest_calls: Mutex<HashMap<(RestStep, String), usize>>,
    /// Every REST call other than GET, in arrival order.
    pub api_calls: Mutex<Vec<ApiCall>>,
    /// Other GET resources by path (e.g. a schedule): see [`FakePlatform::add_resource`].
    pub resources: Mutex<HashMap<String, Value>>,
    /// Scripted answers by (method, path): consumed one per call; then `200 {}`.
    pub api_answers: Mutex<HashMap<(String, String), ApiAnswers>>,
}

/// Which Connect REST call of a background task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestStep {
    /// `GET requests?and(eq(id,X),…)&limit=0&offset=0` (the status gate).
    Count,
    /// `GET requests/X`.
    Get,
}

/// One misbehaviour of a REST answer.
#[derive(Debug, Clone)]
pub enum RestFault {
    /// This HTTP status with a JSON error body.
    Status(u16),
    /// 429 with `Retry-After: {secs}`.
    TooManyRequests { retry_after_secs: u64 },
    /// The normal answer, after this delay.
    Slow(Duration),
    /// A 200 whose body is cut off: `Content-Length` announces the whole body, half of it is
    /// sent, then the connection is dropped.
    Truncated,
    /// A complete 200 whose body is not JSON (for the count: no readable `Content-Range` either).
    InvalidJson,
    /// No answer until [`FakePlatform::release`], then the normal answer.
    Held,
}

/// Faults for one (step, object): `first` are used one per call, then `then` on every later call
/// (`None`: normal answers).
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    pub first: VecDeque<RestFault>,
    pub then: Option<RestFault>,
}

pub struct FakePlatform {
    pub ws_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub state: Arc<PlatformState>,
    conns: tokio::sync::Mutex<mpsc::UnboundedReceiver<Conn>>,
    /// Keeps the release channel open for as long as the platform lives.
    _release_rx: watch::Receiver<bool>,
}

/// What the runner sent, or how the connection ended.
#[derive(Debug, Clone)]
pub enum Frame {
    Json(Value),
    Text(String),
    Close(Option<u16>),
    Gone,
    /// A pong (only after the test pinged; see the chan knobs at the end).
    Pong,
}

enum Cmd {
    Send(String),
    /// Drop the TCP connection without a close frame.
    Drop,
    /// Stop reading (so pings get no pong) but keep the socket open.
    Freeze,
    /// A binary message.
    SendBinary(Vec<u8>),
    /// A text frame with these bytes, valid UTF-8 or not.
    SendRawText(Vec<u8>),
    /// A ping with this payload.
    Ping(Vec<u8>),
    /// Reset the TCP connection (RST, no close frame).
    Reset,
    /// Write the first half of a text frame with this payload, then reset the connection.
    DropMidFrame(String),
    /// Any websocket message, as is (chan knobs at the end).
    Raw(Message),
}

/// One set-up connection, handed to the test after the handshake.
pub struct Conn {
    /// Request path and query of the upgrade.
    pub target: String,
    pub headers: HashMap<String, String>,
    /// The `setup_request` frame, parsed.
    pub setup_request: Value,
    /// The raw `setup_request` text.
    pub setup_request_raw: String,
    /// When the `setup_request` arrived (benchmarks: start-up time).
    pub setup_at: std::time::Instant,
    tx: mpsc::UnboundedSender<Cmd>,
    rx: mpsc::UnboundedReceiver<Frame>,
    /// Pongs received on this connection.
    pongs: Arc<AtomicUsize>,
}

impl Conn {
    pub fn runner_type(&self) -> &str {
        self.target.rsplit("runner_type=").next().unwrap_or("")
    }
    pub fn query_param(&self, name: &str) -> Option<String> {
        let q = self.target.split_once('?')?.1;
        q.split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(String::from))
    }
    pub fn send(&self, frame: &Value) {
        let _ = self.tx.send(Cmd::Send(frame.to_string()));
    }
    pub fn send_text(&self, text: &str) {
        let _ = self.tx.send(Cmd::Send(text.to_string()));
    }
    pub fn drop_socket(&self) {
        let _ = self.tx.send(Cmd::Drop);
    }
    pub fn freeze(&self) {
        let _ = self.tx.send(Cmd::Freeze);
    }
    /// Sends a binary message.
    pub fn send_binary(&self, bytes: &[u8]) {
        let _ = self.tx.send(Cmd::SendBinary(bytes.to_vec()));
    }
    /// Sends a text frame whose payload is these bytes, even when they are not UTF-8.
    pub fn send_raw_text(&self, bytes: &[u8]) {
        let _ = self.tx.send(Cmd::SendRawText(bytes.to_vec()));
    }
    /// Sends a ping; the pong is counted in [`Conn::pongs`].
    pub fn ping(&self, payload: &[u8]) {
        let _ = self.tx.send(Cmd::Ping(payload.to_vec()));
    }
    /// Pongs received on this connection so far.
    pub fn pongs(&self) -> usize {
        self.pongs.load(Ordering::SeqCst)
    }
    /// Resets the TCP connection (RST): no close frame, no FIN.
    pub fn reset_socket(&self) {
        let _ = self.tx.send(Cmd::Reset);
    }
    /// Writes the first half of a text frame carrying `frame`, then resets the connection.
    pub fn drop_mid_frame(&self, frame: &Value) {
        let _ = self.tx.send(Cmd::DropMidFrame(frame.to_string()));
    }
    /// The next frame within `limit`: `Some(Frame::Gone)` when the connection ended, `None` when
    /// nothing came in time.
    pub async fn next_frame(&mut self, limit: Duration) -> Option<Frame> {
        match tokio::time::timeout(limit, self.rx.recv()).await {
            Ok(Some(f)) => Some(f),
            Ok(None) => Some(Frame::Gone),
            Err(_) => None,
        }
    }
    /// The next frame from the runner (Gone after 20 s of silence or when the socket ended).
    pub async fn recv(&mut self) -> Frame {
        match tokio::time::timeout(Duration::from_secs(20), self.rx.recv()).await {
            Ok(Some(f)) => f,
            _ => Frame::Gone,
        }
    }
    /// The next frame within `limit`, if any.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<Frame> {
        tokio::time::timeout(limit, self.rx.recv())
            .await
            .ok()
            .flatten()
    }
    /// The next JSON frame (panics on anything else).
    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Frame::Json(v) => v,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }
    /// Collects `n` task results (keyed by task id), panicking on a duplicate; pongs (answers to
    /// the test's pings) are skipped.
    pub async fn results(&mut self, n: usize) -> HashMap<String, Value> {
        let mut out = HashMap::new();
        let mut pongs = 0;
        while out.len() < n {
            let v = match self.recv_counting_pongs(&mut pongs).await {
                Frame::Json(v) => v,
                other => panic!(
                    "expected a task result, got {other:?} ({} of {n} so far)",
                    out.len()
                ),
            };
            assert_eq!(v["message_type"], "task", "{v}");
            let id = v["data"]["options"]["task_id"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(
                out.insert(id.clone(), v).is_none(),
                "task {id} answered twice"
            );
        }
        out
    }
}

impl FakePlatform {
    pub async fn start() -> Arc<FakePlatform> {
        let state = Arc::new(PlatformState::default());
        *state.setup_response.lock().unwrap() = setup_response_data();
        let (release_tx, release_rx) = watch::channel(false);
        *state.released.lock().unwrap() = Some(release_tx);

        let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws_addr = ws.local_addr().unwrap();
        let (conn_tx, conn_rx) = mpsc::unbounded_channel();
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = ws.accept().await {
                let st = st.clone();
                let conn_tx = conn_tx.clone();
                tokio::spawn(async move {
                    let _ = serve_ws(tcp, st, conn_tx).await;
                });
            }
        });

        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(rest)
            .with_state((state.clone(), release_rx.clone()));
        tokio::spawn(async move {
            axum::serve(http, app).await.unwrap();
        });
        Arc::new(FakePlatform {
            ws_addr,
            http_addr,
            state,
            conns: tokio::sync::Mutex::new(conn_rx),
            _release_rx: release_rx,
        })
    }

    pub fn server_address(&self) -> String {
        format!("ws://{}", self.ws_addr)
    }
    pub fn api_address(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The next set-up connection (panics after 20 s).
    pub async fn next_conn(&self) -> Conn {
        tokio::time::timeout(Duration::from_secs(20), self.conns.lock().await.recv())
            .await
            .expect("no connection from the runner within 20 s")
            .expect("listener gone")
    }

    /// The next two connections, as (background, interactive).
    pub async fn both_channels(&self) -> (Conn, Conn) {
        let a = self.next_conn().await;
        let b = self.next_conn().await;
        if a.runner_type() == "background" {
            (a, b)
        } else {
            (b, a)
        }
    }

    pub fn add_object(&self, object: Value) {
        let id = object["id"].as_str().unwrap().to_string();
        self.state.objects.lock().unwrap().insert(id, object);
    }
    pub fn hold(&self, id: &str) {
        self.state.held.lock().unwrap().insert(id.to_string());
    }
    pub fn release(&self) {
        self.state.held.lock().unwrap().clear();
        if let Some(tx) = self.state.released.lock().unwrap().as_ref() {
            let _ = tx.send(true);
        }
    }
    /// Every text frame received so far, raw.
    pub fn received(&self) -> Vec<String> {
        self.state.received.lock().unwrap().clone()
    }
    /// Platform down (true: new connections dropped before the handshake) or back up.
    pub fn refuse_connections(&self, refuse: bool) {
        self.state
            .refuse_connections
            .store(refuse, Ordering::SeqCst);
    }
    pub fn object_gets(&self) -> usize {
        self.state.object_gets.load(Ordering::SeqCst)
    }
    pub fn rest_log(&self) -> Vec<RestRequest> {
        self.state.rest_log.lock().unwrap().clone()
    }
    /// Serves `value` for `GET {path}` (e.g. `/public/v1/devops/services/…/schedules/…`).
    pub fn add_resource(&self, path: &str, value: Value) {
        self.state
            .resources
            .lock()
            .unwrap()
            .insert(path.to_string(), value);
    }
    /// Every REST call other than GET so far, in arrival order.
    pub fn api_calls(&self) -> Vec<ApiCall> {
        self.state.api_calls.lock().unwrap().clone()
    }
    /// Answers the next calls of `method path` (e.g. `POST`, `/public/v1/requests/PR-1/approve`)
    /// with these statuses and JSON bodies, one per call; later calls get `200 {}`.
    pub fn answer_api(&self, method: &str, path: &str, answers: &[(u16, Value)]) {
        self.state
            .api_answers
            .lock()
            .unwrap()
            .entry((method.to_string(), path.to_string()))
            .or_default()
            .extend(answers.iter().cloned());
    }
    /// Waits (≤ 20 s) until `n` object GETs arrived.
    pub async fn wait_object_gets(&self, n: usize) {
        for _ in 0..2000 {
            if self.object_gets() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("only {} of {n} object GETs arrived", self.object_gets());
    }
    /// Plans REST faults for `step` of object `id`: `first` one per call, then `then` on every
    /// later call (`None`: normal answers again). Replaces an earlier plan.
    pub fn rest_faults(
        &self,
        step: RestStep,
        id: &str,
        first: impl IntoIterator<Item = RestFault>,
        then: Option<RestFault>,
    ) {
        self.state.rest_faults.lock().unwrap().insert(
            (step, id.to_string()),
            FaultPlan {
                first: first.into_iter().collect(),
                then,
            },
        );
    }
    /// REST calls of `step` for object `id` so far (faulty ones included).
    pub fn rest_calls(&self, step: RestStep, id: &str) -> usize {
        self.state
            .rest_calls
            .lock()
            .unwrap()
            .get(&(step, id.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

/// The platform's book of background tasks: what was delivered how often, and every result that
/// came back. Like the platform, it redelivers every task it has no result for
/// ([`Ledger::redeliver`]) after the runner reconnects.
#[derive(Default)]
pub struct Ledger {
    /// Task frames by task id, in the order first sent.
    frames: HashMap<String, Value>,
    order: Vec<String>,
    deliveries: HashMap<String, usize>,
    results: HashMap<String, Vec<Value>>,
    /// Results for task ids never sent.
    pub strays: Vec<Value>,
    /// Connections of the other channel that came up while settling (kept open).
    pub spare: Vec<Conn>,
    /// Reconnects seen by [`Ledger::settle`], with the time from the end of the old connection
    /// to the `setup_request` of the new one.
    pub reconnects: Vec<Duration>,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }
    /// Sends `task` on `conn` and books the delivery.
    pub fn send(&mut self, conn: &Conn, task: Value) {
        let id = task["data"]["options"]["task_id"]
            .as_str()
            .expect("task_id")
            .to_string();
        conn.send(&task);
        if !self.frames.contains_key(&id) {
            self.order.push(id.clone());
            self.frames.insert(id.clone(), task);
        }
        *self.deliveries.entry(id).or_default() += 1;
    }
    /// Sends the first half of `task`'s frame on `conn`, then resets the connection
    /// ([`Conn::drop_mid_frame`]); booked as a delivery (the platform thinks it sent it).
    pub fn send_cut(&mut self, conn: &Conn, task: Value) {
        let id = task["data"]["options"]["task_id"]
            .as_str()
            .expect("task_id")
            .to_string();
        conn.drop_mid_frame(&task);
        if !self.frames.contains_key(&id) {
            self.order.push(id.clone());
            self.frames.insert(id.clone(), task);
        }
        *self.deliveries.entry(id).or_default() += 1;
    }
    /// Books a frame from the runner; true when it was a task result.
    pub fn record(&mut self, frame: &Value) -> bool {
        if frame["message_type"] != "task" {
            return false;
        }
        let Some(id) = frame["data"]["options"]["task_id"].as_str() else {
            self.strays.push(frame.clone());
            return true;
        };
        if self.frames.contains_key(id) {
            self.results
                .entry(id.to_string())
                .or_default()
                .push(frame.clone());
        } else {
            self.strays.push(frame.clone());
        }
        true
    }
    /// Task ids without any result yet, in the order first sent.
    pub fn open(&self) -> Vec<String> {
        self.order
            .iter()
            .filter(|id| !self.results.contains_key(*id))
            .cloned()
            .collect()
    }
    /// Redelivers every task without a result on `conn`; returns how many.
    pub fn redeliver(&mut self, conn: &Conn) -> usize {
        let open = self.open();
        for id in &open {
            let frame = self.frames[id].clone();
            self.send(conn, frame);
        }
        open.len()
    }
    pub fn sent(&self) -> usize {
        self.order.len()
    }
    pub fn deliveries(&self, id: &str) -> usize {
        self.deliveries.get(id).copied().unwrap_or(0)
    }
    pub fn results(&self, id: &str) -> &[Value] {
        self.results.get(id).map(Vec::as_slice).unwrap_or(&[])
    }
    /// The final result of each answered task: `output.result` of its first answer.
    pub fn finals(&self) -> HashMap<String, String> {
        self.results
            .iter()
            .map(|(id, r)| {
                (
                    id.clone(),
                    r[0]["data"]["output"]["result"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect()
    }
    /// Every task answered; no task answered more often than it was delivered; every answer of a
    /// task says the same (`output.result`); no answer for a task never sent.
    pub fn assert_consistent(&self) {
        assert!(
            self.strays.is_empty(),
            "answers for unknown tasks: {:?}",
            self.strays
        );
        let open = self.open();
        assert!(
            open.is_empty(),
            "{} tasks never answered: {:?}",
            open.len(),
            open
        );
        for id in &self.order {
            let results = self.results(id);
            assert!(
                results.len() <= self.deliveries(id),
                "{id}: {} answers for {} deliveries",
                results.len(),
                self.deliveries(id)
            );
            let first = &results[0]["data"]["output"]["result"];
            for r in results {
                assert_eq!(
                    &r["data"]["output"]["result"], first,
                    "{id}: answers differ"
                );
            }
        }
    }
    /// Plays the platform until every task has a result or `limit` passed: books every frame
    /// from the runner; when the connection ends (drop, close), waits for the runner's next
    /// `runner_type` connection (within `reconnect_limit`), records how long that took, and
    /// redelivers every task without a result on it. Returns false on the `limit`.
    pub async fn settle(
        &mut self,
        platform: &FakePlatform,
        conn: &mut Conn,
        reconnect_limit: Duration,
        limit: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.open().is_empty() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            match conn.next_frame(left).await {
                None => return false,
                Some(Frame::Json(v)) => {
                    self.record(&v);
                }
                Some(Frame::Text(_)) | Some(Frame::Pong) => {}
                Some(Frame::Close(_)) | Some(Frame::Gone) => {
                    self.reconnect(platform, conn, reconnect_limit).await;
                }
            }
        }
        true
    }
    /// Waits for the runner's next connection of `conn`'s runner type, replaces `conn` with it
    /// and redelivers every task without a result.
    pub async fn reconnect(
        &mut self,
        platform: &FakePlatform,
        conn: &mut Conn,
        reconnect_limit: Duration,
    ) {
        let ended = std::time::Instant::now();
        let kind = conn.runner_type().to_string();
        let next = loop {
            let c = tokio::time::timeout(reconnect_limit, platform.next_conn())
                .await
                .unwrap_or_else(|_| panic!("no reconnect within {reconnect_limit:?}"));
            if c.runner_type() == kind {
                break c;
            }
            self.spare.push(c);
        };
        self.reconnects
            .push(next.setup_at.saturating_duration_since(ended));
        *conn = next;
        self.redeliver(conn);
    }
    /// Books whatever arrives on `conn` during `quiet` (late duplicates).
    pub async fn drain_for(&mut self, conn: &mut Conn, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match conn.next_frame(left).await {
                Some(Frame::Json(v)) => {
                    self.record(&v);
                }
                Some(Frame::Text(_)) => {}
                _ => return,
            }
        }
    }
}

async fn serve_ws(
    tcp: TcpStream,
    st: Arc<PlatformState>,
    conn_tx: mpsc::UnboundedSender<Conn>,
) -> Result<(), String> {
    if st.refuse_connections.load(Ordering::SeqCst) {
        return Err("refusing connections".into());
    }
    let seen: Arc<Mutex<(String, HashMap<String, String>)>> = Arc::default();
    let seen2 = seen.clone();
    #[allow(clippy::result_large_err)]
    let callback = move |req: &WsRequest, resp: WsResponse| {
        let headers = req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        *seen2.lock().unwrap() = (req.uri().to_string(), headers);
        Ok(resp)
    };
    let mut ws = tokio_tungstenite::accept_hdr_async(tcp, callback)
        .await
        .map_err(|e| e.to_string())?;
    // §4.1: the runner pings first (the pong is automatic), then sends setup_request.
    let mut pinged = false;
    let setup_raw = loop {
        match ws.next().await {
            Some(Ok(Message::Ping(_))) => pinged = true,
            Some(Ok(Message::Text(t))) => break t.to_string(),
            Some(Ok(_)) => continue,
            _ => return Err("closed before setup_request".into()),
        }
    };
    let setup_at = std::time::Instant::now();
    st.received.lock().unwrap().push(setup_raw.clone());
    assert!(pinged, "the runner must ping before setup_request");
    let setup_request: Value = serde_json::from_str(&setup_raw).map_err(|e| e.to_string())?;
    assert_eq!(setup_request["message_type"], "setup_request");
    let data = st.setup_response.lock().unwrap().clone();
    ws.send(Message::Text(
        setup_response_frame(&data).to_string().into(),
    ))
    .await
    .map_err(|e| e.to_string())?;
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
    let (frame_tx, frame_rx) = mpsc::unbounded_channel();
    let (target, headers) = seen.lock().unwrap().clone();
    let pongs = Arc::new(AtomicUsize::new(0));
    let _ = conn_tx.send(Conn {
        target,
        headers,
        setup_request,
        setup_request_raw: setup_raw,
        setup_at,
        tx: cmd_tx,
        rx: frame_rx,
        pongs: pongs.clone(),
    });
    let mut frozen = false;
    loop {
        tokio::select! {
            cmd = cmd_rx.recv() => match cmd {
                Some(Cmd::Send(t)) => {
                    if ws.send(Message::Text(t.into())).await.is_err() {
                        let _ = frame_tx.send(Frame::Gone);
                        return Ok(());
                    }
                }
                Some(Cmd::Drop) | None => return Ok(()),
                Some(Cmd::Freeze) => frozen = true,
                Some(Cmd::SendBinary(b)) => {
                    if ws.send(Message::Binary(b.into())).await.is_err() {
                        let _ = frame_tx.send(Frame::Gone);
                        return Ok(());
                    }
                }
                Some(Cmd::Raw(m)) => {
                    if ws.send(m).await.is_err() {
                        let _ = frame_tx.send(Frame::Gone);
                        return Ok(());
                    }
                }
                Some(Cmd::SendRawText(b)) => {
                    let frame = WsFrame::message(b, OpCode::Data(Data::Text), true);
                    if ws.send(Message::Frame(frame)).await.is_err() {
                        let _ = frame_tx.send(Frame::Gone);
                        return Ok(());
                    }
                }
                Some(Cmd::Ping(p)) => {
                    if ws.send(Message::Ping(p.into())).await.is_err() {
                        let _ = frame_tx.send(Frame::Gone);
                        return Ok(());
                    }
                }
                Some(Cmd::Reset) => {
                    let _ = ws.get_ref().set_zero_linger();
                    return Ok(());
                }
                Some(Cmd::DropMidFrame(text)) => {
                    let _ = ws.flush().await;
                    let mut raw = Vec::new();
                    let frame = WsFrame::message(text.into_bytes(), OpCode::Data(Data::Text), true);
                    let _ = frame.format(&mut raw);
                    let tcp = ws.get_mut();
                    let _ = tcp.write_all(&raw[..raw.len() / 2]).await;
                    let _ = tcp.flush().await;
                    let _ = tcp.set_zero_linger();
                    return Ok(());
                }
            },
            msg = ws.next(), if !frozen => match msg {
                Some(Ok(Message::Text(t))) => {
                    st.received.lock().unwrap().push(t.to_string());
                    let f = match serde_json::from_str(&t) {
                        Ok(v) => Frame::Json(v),
                        Err(_) => Frame::Text(t.to_string()),
                    };
                    let _ = frame_tx.send(f);
                }
                Some(Ok(Message::Pong(_))) => {
                    pongs.fetch_add(1, Ordering::SeqCst);
                    let _ = frame_tx.send(Frame::Pong);
                }
                Some(Ok(Message::Close(c))) => {
                    let _ = frame_tx.send(Frame::Close(c.map(|c| u16::from(c.code))));
                    let _ = ws.close(None).await;
                    return Ok(());
                }
                Some(Ok(_)) => {}
                _ => {
                    let _ = frame_tx.send(Frame::Gone);
                    return Ok(());
                }
            }
        }
    }
}

/// `eq(id,X)` → X; `in(status,(a,b))` → [a, b].
fn parse_filter(query: &str) -> (String, Vec<String>) {
    let id = query
        .split("eq(id,")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or("")
        .to_string();
    let statuses = query
        .split("in(status,(")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .map(|s| s.split(',').map(String::from).collect())
        .unwrap_or_default();
    (id, statuses)
}

async fn rest(
    State((st, mut released)): State<(Arc<PlatformState>, watch::Receiver<bool>)>,
    headers: HeaderMap,
    req: Request,
) -> Response {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    if req.method() != axum::http::Method::GET {
        let method = req.method().to_string();
        let bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        st.api_calls.lock().unwrap().push(ApiCall {
            method: method.clone(),
            path: target.clone(),
            body,
            authorization: h("authorization"),
        });
        let answer = st
            .api_answers
            .lock()
            .unwrap()
            .get_mut(&(method, target))
            .and_then(VecDeque::pop_front)
            .unwrap_or((200, json!({})));
        return Response::builder()
            .status(StatusCode::from_u16(answer.0).unwrap())
            .header("content-type", "application/json")
            .body(Body::from(answer.1.to_string()))
            .unwrap();
    }
    st.rest_log.lock().unwrap().push(RestRequest {
        target: target.clone(),
        authorization: h("authorization"),
        user_agent: h("user-agent"),
    });
    let reply = |status: u16, body: Value| {
        Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if let Some(r) = rest_fault(&st, &path, &query).await {
        return r;
    }
    if path == "/public/v1/requests" && query.ends_with("&limit=0&offset=0") {
        let (id, statuses) = parse_filter(&query);
        match next_fault(&st, RestStep::Count, &id) {
            Some(RestFault::Slow(d)) => tokio::time::sleep(d).await,
            Some(RestFault::Held) => {
                let _ = released.wait_for(|r| *r).await;
            }
            Some(RestFault::InvalidJson) => {
                return Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .header("content-range", "items */garbage")
                    .body(Body::from("<html>not json"))
                    .unwrap()
            }
            Some(RestFault::Truncated) => {
                return truncated(
                    Response::builder().header("content-range", "items 0-0/1"),
                    b"[{\"id\": \"cut\"}]".to_vec(),
                )
            }
            Some(fault) => return fault_reply(&fault),
            None => {}
        }
        let matching = st
            .objects
            .lock()
            .unwrap()
            .get(&id)
            .and_then(|o| o["status"].as_str().map(String::from))
            .is_some_and(|s| statuses.contains(&s));
        let total = usize::from(matching);
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header(
                "content-range",
                format!("items 0-{}/{total}", total.saturating_sub(1)),
            )
            .body(Body::from("[]"))
            .unwrap();
    }
    if let Some(id) = path.strip_prefix("/public/v1/requests/") {
        st.object_gets.fetch_add(1, Ordering::SeqCst);
        match next_fault(&st, RestStep::Get, id) {
            Some(RestFault::Slow(d)) => tokio::time::sleep(d).await,
            Some(RestFault::Held) => {
                let _ = released.wait_for(|r| *r).await;
            }
            Some(RestFault::InvalidJson) => {
                return Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Body::from(format!("{{\"id\": \"{id}\", \"status\": ")))
                    .unwrap()
            }
            Some(RestFault::Truncated) => {
                let body = st
                    .objects
                    .lock()
                    .unwrap()
                    .get(id)
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "{\"error_code\": \"NOT_FOUND\"}".into());
                return truncated(Response::builder(), body.into_bytes());
            }
            Some(fault) => return fault_reply(&fault),
            None => {}
        }
        let forced = st.get_status.lock().unwrap().get(id).copied();
        if let Some(code) = forced {
            return reply(
                code,
                json!({"error_code": "X", "errors": ["forced by the test"]}),
            );
        }
        let held = st.held.lock().unwrap().contains(id);
        if held {
            let _ = released.wait_for(|r| *r).await;
        }
        let delay = st.get_delay.lock().unwrap().get(id).copied();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let obj = st.objects.lock().unwrap().get(id).cloned();
        return match obj {
            Some(o) => reply(200, o),
            None => reply(404, json!({"error_code": "NOT_FOUND"})),
        };
    }
    let resource = st.resources.lock().unwrap().get(&path).cloned();
    match resource {
        Some(v) => reply(200, v),
        None => reply(404, json!({"error_code": "NOT_FOUND", "path": path})),
    }
}

/// Counts the call and takes the next planned fault of (step, id), if any.
fn next_fault(st: &PlatformState, step: RestStep, id: &str) -> Option<RestFault> {
    let key = (step, id.to_string());
    *st.rest_calls
        .lock()
        .unwrap()
        .entry(key.clone())
        .or_default() += 1;
    let mut plans = st.rest_faults.lock().unwrap();
    let plan = plans.get_mut(&key)?;
    plan.first.pop_front().or_else(|| plan.then.clone())
}

/// The answer of a status fault.
fn fault_reply(fault: &RestFault) -> Response {
    let (status, retry_after) = match fault {
        RestFault::Status(code) => (*code, None),
        RestFault::TooManyRequests { retry_after_secs } => (429, Some(*retry_after_secs)),
        other => unreachable!("{other:?} is not a status fault"),
    };
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json");
    if let Some(secs) = retry_after {
        b = b.header("retry-after", secs.to_string());
    }
    b.body(Body::from(
        json!({"error_code": format!("HTTP_{status}"), "errors": ["fault planned by the test"]})
            .to_string(),
    ))
    .unwrap()
}

/// A 200 announcing `body.len()` bytes that sends half of them, then drops the connection.
fn truncated(builder: axum::http::response::Builder, body: Vec<u8>) -> Response {
    let full = body.len();
    let half = axum::body::Bytes::from(body[..full / 2].to_vec());
    let chunks: Vec<Result<axum::body::Bytes, std::io::Error>> = vec![
        Ok(half),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "truncated by the test",
        )),
    ];
    builder
        .status(200)
        .header("content-type", "application/json")
        .header("content-length", full.to_string())
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap()
}

// ---- rest knobs ----
// REST faults (issue 9 items 6 and the fake's REST fault modes): a latency on every REST call and
// scripted faults for the count and the object GET of an object id, consumed one per call. Kept in
// a side table keyed by the platform's state so the code above stays as it was; the one hook is
// the `rest_fault` call at the top of `rest`.

/// One scripted answer to a REST call.
#[derive(Debug, Clone)]
pub enum ScriptedFault {
    /// This HTTP status with a JSON error body.
    Status(u16),
    /// 429 with this `Retry-After` value.
    TooMany(String),
    /// Answer normally after this delay.
    Slow(Duration),
    /// `Content-Length` of the full object, half of it sent, then the connection cut.
    Truncated,
    /// 200 with a body that is not JSON.
    InvalidJson,
    /// 200 with the first half of the object as a complete HTTP body (what a close-delimited
    /// answer cut off mid-read looks like).
    CutJson,
}

/// Which REST call of an object id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestCall {
    Count,
    Get,
}

/// The REST fault table of one fake platform.
#[derive(Default)]
pub struct RestFaults {
    /// Added before every REST answer.
    pub latency: Mutex<Duration>,
    /// Faults still to answer, per call and object id, first first.
    pub script: Mutex<HashMap<(RestCall, String), std::collections::VecDeque<ScriptedFault>>>,
    /// Every count / object GET as it arrived: (call, object id, when).
    pub calls: Mutex<Vec<(RestCall, String, std::time::Instant)>>,
}

fn rest_fault_table() -> &'static Mutex<HashMap<usize, Arc<RestFaults>>> {
    static TABLE: std::sync::OnceLock<Mutex<HashMap<usize, Arc<RestFaults>>>> =
        std::sync::OnceLock::new();
    TABLE.get_or_init(Default::default)
}

/// A platform's entry goes with it: a later platform allocated at the same address (tests share
/// one process) starts with a clean table.
impl Drop for PlatformState {
    fn drop(&mut self) {
        if let Ok(mut table) = rest_fault_table().lock() {
            table.remove(&(self as *const PlatformState as usize));
        }
    }
}

fn rest_faults_of(st: &Arc<PlatformState>) -> Arc<RestFaults> {
    rest_fault_table()
        .lock()
        .unwrap()
        .entry(Arc::as_ptr(st) as usize)
        .or_default()
        .clone()
}

impl FakePlatform {
    /// This platform's REST fault knobs.
    pub fn rest_script(&self) -> Arc<RestFaults> {
        rest_faults_of(&self.state)
    }
    /// Adds a latency to every REST call.
    pub fn set_rest_latency(&self, latency: Duration) {
        *self.rest_script().latency.lock().unwrap() = latency;
    }
    /// Scripts the next answers to `call` for `object_id` (then it answers normally).
    pub fn script_rest(&self, call: RestCall, object_id: &str, faults: &[ScriptedFault]) {
        self.rest_script()
            .script
            .lock()
            .unwrap()
            .entry((call, object_id.to_string()))
            .or_default()
            .extend(faults.iter().cloned());
    }
    /// The count / object GET calls so far, in arrival order.
    pub fn rest_call_log(&self) -> Vec<(RestCall, String, std::time::Instant)> {
        self.rest_script().calls.lock().unwrap().clone()
    }
    /// How many calls of `call` arrived so far.
    pub fn rest_call_count(&self, call: RestCall) -> usize {
        self.rest_call_log().iter().filter(|c| c.0 == call).count()
    }
}

/// The hook: records the call, applies the latency, and answers a scripted fault if one is due
/// (`None`: answer normally).
async fn rest_fault(st: &Arc<PlatformState>, path: &str, query: &str) -> Option<Response> {
    let faults = rest_faults_of(st);
    let call = if path == "/public/v1/requests" && query.ends_with("&limit=0&offset=0") {
        (RestCall::Count, parse_filter(query).0)
    } else if let Some(id) = path.strip_prefix("/public/v1/requests/") {
        (RestCall::Get, id.to_string())
    } else {
        return None;
    };
    faults
        .calls
        .lock()
        .unwrap()
        .push((call.0, call.1.clone(), std::time::Instant::now()));
    let latency = *faults.latency.lock().unwrap();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fault = faults
        .script
        .lock()
        .unwrap()
        .get_mut(&call)
        .and_then(|q| q.pop_front())?;
    let json_reply = |status: u16, extra: Option<(&str, String)>| {
        let mut b = Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .header("content-type", "application/json");
        if let Some((k, v)) = extra {
            b = b.header(k, v);
        }
        b.body(Body::from(
            json!({"error_code": "X", "errors": ["forced by the test"]}).to_string(),
        ))
        .unwrap()
    };
    match fault {
        ScriptedFault::Status(code) => Some(json_reply(code, None)),
        ScriptedFault::TooMany(after) => Some(json_reply(429, Some(("retry-after", after)))),
        ScriptedFault::Slow(d) => {
            tokio::time::sleep(d).await;
            None
        }
        ScriptedFault::InvalidJson => Some(
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("content-range", "items 0-0/1")
                .body(Body::from("<html>not json</html>"))
                .unwrap(),
        ),
        ScriptedFault::CutJson | ScriptedFault::Truncated => {
            let full = st
                .objects
                .lock()
                .unwrap()
                .get(&call.1)
                .cloned()
                .unwrap_or_else(|| json!({"id": call.1}))
                .to_string()
                .into_bytes();
            let half = full[..full.len() / 2].to_vec();
            if matches!(fault, ScriptedFault::CutJson) {
                return Some(
                    Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .header("content-range", "items 0-0/1")
                        .body(Body::from(half))
                        .unwrap(),
                );
            }
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                vec![Ok(half), Err(std::io::Error::other("cut off by the test"))];
            Some(
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .header("content-range", "items 0-0/1")
                    .header("content-length", full.len())
                    .body(Body::from_stream(futures_util::stream::iter(chunks)))
                    .unwrap(),
            )
        }
    }
}

// ---- chan knobs ----
// Raw websocket messages from the platform (binary, pings, text frames that are not UTF-8) and
// the answers to pings (`Frame::Pong`), for tests/it/connect_fidelity.rs.

impl Conn {
    /// Sends any websocket message as is.
    pub fn send_message(&self, m: Message) {
        let _ = self.tx.send(Cmd::Raw(m));
    }
    /// A *text* frame whose payload is not valid UTF-8 (bypasses the sender's check).
    pub fn send_invalid_utf8_text(&self, bytes: Vec<u8>) {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
        self.send_message(Message::Frame(WsFrame::message(
            bytes,
            OpCode::Data(Data::Text),
            true,
        )));
    }
    /// The next frame that is not a pong, counting the pongs skipped into `pongs`.
    pub async fn recv_counting_pongs(&mut self, pongs: &mut usize) -> Frame {
        loop {
            match self.recv().await {
                Frame::Pong => *pongs += 1,
                other => return other,
            }
        }
    }
}
