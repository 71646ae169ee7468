//! Connecting: the websocket upgrade (through a proxy when configured) and the
//! `setup_request` / `setup_response` handshake.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::MaybeTlsStream;

use super::{Channel, Ws};
use crate::connect::protocol::{self, Envelope, Incoming, SetupResponse};
use crate::connect::tasks::Definitions;

/// Why a connection was not set up, by phase; the message says what failed (secret-free).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Building the upgrade request (URL, headers).
    #[error("{0}")]
    Request(String),
    /// Reaching the platform: TCP, proxy, TLS, the websocket upgrade.
    #[error("{0}")]
    Upgrade(String),
    /// The initial ping got no pong.
    #[error("{0}")]
    Ping(String),
    /// `setup_request` / `setup_response`.
    #[error("{0}")]
    Setup(String),
}

impl Channel {
    /// Opens the websocket and performs the handshake (§4.1).
    pub(super) async fn connect_and_setup(
        &self,
        url: &str,
    ) -> Result<(Ws, SetupResponse), HandshakeError> {
        let mut ws = self.open(url).await?;
        self.first_pong(&mut ws).await?;
        let setup = self.exchange_setup(&mut ws).await?;
        Ok((ws, setup))
    }

    /// The upgrade request (`User-Agent`, `Authorization`), the TCP connection (through the
    /// proxy, if any) and the websocket upgrade, bounded by the open timeout.
    async fn open(&self, url: &str) -> Result<Ws, HandshakeError> {
        let mut request = url
            .into_client_request()
            .map_err(|e| HandshakeError::Request(format!("invalid websocket URL: {e}")))?;
        request.headers_mut().insert(
            "User-Agent",
            self.opts.user_agent.parse().map_err(|_| {
                HandshakeError::Request("the User-Agent is not a valid header value".into())
            })?,
        );
        request.headers_mut().insert(
            "Authorization",
            self.opts.api_key.expose().parse().map_err(|_| {
                HandshakeError::Request("API_KEY is not a valid header value".into())
            })?,
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
        let (ws, _) = tokio::time::timeout(self.opts.tuning.open_timeout, open)
            .await
            .map_err(|_| "opening handshake timed out".to_string())
            .and_then(|r| r)
            .map_err(HandshakeError::Upgrade)?;
        Ok(ws)
    }

    /// Initial ping; the pong must come within the handshake ping timeout (the runner: 5 s).
    async fn first_pong(&self, ws: &mut Ws) -> Result<(), HandshakeError> {
        ws.send(Message::Ping(Vec::new().into()))
            .await
            .map_err(|e| HandshakeError::Ping(format!("sending the initial ping: {e}")))?;
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
            .map_err(|_| "no pong to the initial ping".to_string())
            .and_then(|r| r)
            .map_err(HandshakeError::Ping)
    }

    /// Sends the `setup_request` and reads the first answer, which must be a `setup_response`
    /// (within CONNECT_SETUP_TIMEOUT).
    async fn exchange_setup(&self, ws: &mut Ws) -> Result<SetupResponse, HandshakeError> {
        let frame = protocol::to_wire(&Envelope::new("setup_request", &self.shared.setup_request));
        ws.send(Message::Text(frame.into()))
            .await
            .map_err(|e| HandshakeError::Setup(format!("sending setup_request: {e}")))?;
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
            })
            .and_then(|r| r)
            .map_err(HandshakeError::Setup)?;
        match protocol::parse_frame(&text) {
            Ok(Incoming::SetupResponse(r)) => Ok(*r),
            Ok(other) => Err(HandshakeError::Setup(format!(
                "expected setup_response as the first answer, got {}",
                match other {
                    Incoming::Task(_) | Incoming::UnreadableTask(_) => "a task",
                    Incoming::Shutdown => "shutdown",
                    Incoming::SetupResponse(_) => unreachable!(),
                }
            ))),
            Err(e) => Err(HandshakeError::Setup(format!(
                "invalid setup_response ({e}): {}",
                self.shared.scrubber.excerpt(&text)
            ))),
        }
    }

    pub(super) async fn apply_setup(&self, setup: &SetupResponse) {
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
}

/// Reads and discards until the peer closes (callers bound it in time).
pub(super) async fn discard_until_eof(io: &mut MaybeTlsStream<TcpStream>) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = io.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}
