//! Shutdown: one `CancellationToken` per app, cancelled on SIGINT/SIGTERM (or by a test).
//!
//! The token stops *intake* (HTTP listener, websocket reading). In-flight events are not
//! cancelled: they finish, bounded by the grace period (`shutdown.grace`).

use crate::config::error::Bound;
use std::future::Future;
use std::time::Duration;

pub use tokio_util::sync::CancellationToken;

/// The shutdown settings (`[shutdown]`).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Settings {
    /// Seconds.
    pub grace: u64,
}

impl Settings {
    /// The range of `shutdown.grace` (checked with all the others at load).
    pub fn bounds(&self) -> Vec<Bound> {
        vec![Bound::new(
            "shutdown.grace",
            self.grace,
            0,
            3_600,
            "seconds",
        )]
    }
}

/// A token cancelled when the process receives SIGINT or SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received: stopping intake, finishing in-flight events");
        t.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs `fut` for at most `grace`; returns whether it finished in time.
pub async fn within_grace(grace: Duration, fut: impl Future<Output = ()>) -> bool {
    tokio::time::timeout(grace, fut).await.is_ok()
}
