//! The HTTP listener's accept loop: hostile clients are bounded in time and number before any
//! request reaches the router (and so before authentication).
//!
//! | bound | setting | what happens |
//! |---|---|---|
//! | request head (request line + headers) | `HTTP_HEADER_TIMEOUT_MS` | the connection is closed without an answer; this also ends idle keep-alive connections and connections that never send a byte |
//! | request body | `HTTP_BODY_TIMEOUT_MS` | `POST /events` answers 408 and closes the connection (see `ingest.rs`); nothing is handled |
//! | open connections | `HTTP_MAX_CONNECTIONS` | no further connection is accepted until one closes: new ones wait in the kernel's backlog, the open ones keep working |
//!
//! HTTP/1.1 only: with HTTP/2 (cleartext, prior knowledge) a connection could be held in the
//! protocol detection or in a stream's headers, where no header timeout applies; the HTTP task
//! channel is for local tools and webhooks, which speak HTTP/1.1.
//!
//! Graceful shutdown: when `shutdown` resolves, the listener closes, idle connections are closed
//! and requests in progress finish (the caller bounds that wait by the shutdown grace).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::settings::Settings as HttpSettings;

/// Bounds of the accept loop and of request bodies, from [`HttpSettings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

/// Accepted range of the timeouts, in milliseconds.
pub const TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=3_600_000;
/// Accepted range of `HTTP_MAX_CONNECTIONS`.
pub const MAX_CONNECTIONS_RANGE: std::ops::RangeInclusive<usize> = 1..=65_536;

impl ServeLimits {
    /// The limits of `http` (clamped to the accepted ranges; `Settings::validate` rejects values
    /// outside them at start-up).
    pub fn from_settings(http: &HttpSettings) -> Self {
        let ms = |v: u64| {
            Duration::from_millis(v.clamp(*TIMEOUT_MS_RANGE.start(), *TIMEOUT_MS_RANGE.end()))
        };
        ServeLimits {
            header_timeout: ms(http.header_timeout_ms),
            body_timeout: ms(http.body_timeout_ms),
            max_connections: http
                .max_connections
                .clamp(*MAX_CONNECTIONS_RANGE.start(), *MAX_CONNECTIONS_RANGE.end()),
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves, then closes the
/// listener and waits for the open connections to finish (idle ones are closed at once).
pub async fn serve<F>(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        // A free slot first: above the cap, new connections wait in the backlog, not in memory.
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "HTTP accept failed; retrying in 1 s");
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        tracing::trace!(%peer, "HTTP connection accepted");
        let _ = stream.set_nodelay(true);
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::trace!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Errors about one connection (the peer went away before it was accepted), not the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
