//! An in-process stand-in for the CloudBlue Connect platform, speaking the EaaS protocol as
//! `connect-protocol.md` records it: a websocket server (plain `ws://` on port 0) that expects the
//! initial ping, reads `setup_request`, answers `setup_response`, then hands the connection to the
//! test; and the REST endpoints a background task uses (`…?{filter}&limit=0&offset=0` with
//! `Content-Range`, and `GET requests/{id}`) on plain `http://`.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::handshake::server::{
    Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::Message;

pub const PURCHASE_REQUEST: &str = include_str!("../fixtures/purchase_request.json");
pub const SETUP_RESPONSE: &str = include_str!("../fixtures/setup_response.json");
pub const TASK: &str = include_str!("../fixtures/task_background_purchase.json");

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
}

pub struct FakePlatform {
    pub ws_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub state: Arc<PlatformState>,
    conns: tokio::sync::Mutex<mpsc::UnboundedReceiver<Conn>>,
    release_rx: watch::Receiver<bool>,
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
    /// Collects `n` task results (keyed by task id), panicking on a duplicate.
    pub async fn results(&mut self, n: usize) -> HashMap<String, Value> {
        let mut out = HashMap::new();
        while out.len() < n {
            let v = self.recv_json().await;
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
            release_rx,
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
    let _ = conn_tx.send(Conn {
        target,
        headers,
        setup_request,
        setup_request_raw: setup_raw,
        setup_at,
        tx: cmd_tx,
        rx: frame_rx,
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
                Some(Cmd::Raw(m)) => {
                    if ws.send(m).await.is_err() {
                        let _ = frame_tx.send(Frame::Gone);
                        return Ok(());
                    }
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
                Some(Ok(Message::Close(c))) => {
                    let _ = frame_tx.send(Frame::Close(c.map(|c| u16::from(c.code))));
                    let _ = ws.close(None).await;
                    return Ok(());
                }
                Some(Ok(Message::Pong(_))) => {
                    let _ = frame_tx.send(Frame::Pong);
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
    if path == "/public/v1/requests" && query.ends_with("&limit=0&offset=0") {
        let (id, statuses) = parse_filter(&query);
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
    reply(404, json!({"error_code": "NOT_FOUND", "path": path}))
}

// ---- chan knobs ----
// Raw websocket messages from the platform (binary, pings, text frames that are not UTF-8) and
// the answers to pings (`Frame::Pong`), for tests/connect_fidelity.rs.

impl Conn {
    /// Sends any websocket message as is.
    pub fn send_message(&self, m: Message) {
        let _ = self.tx.send(Cmd::Raw(m));
    }
    /// A server ping; the runner's pong arrives as `Frame::Pong`.
    pub fn ping(&self) {
        self.send_message(Message::Ping(b"fake-platform".to_vec().into()));
    }
    pub fn send_binary(&self, bytes: Vec<u8>) {
        self.send_message(Message::Binary(bytes.into()));
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
    /// Collects `n` task results (keyed by task id; panics on a duplicate), skipping pongs.
    pub async fn results_skipping_pongs(&mut self, n: usize) -> HashMap<String, Value> {
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
