//! connect-extension-mongodb: a stateful CloudBlue Connect extension daemon.
//!
//! ```text
//! Connect ──websocket (EaaS)──▶ connect/ ──▶ events/ (registry) ──▶ storage/ (trait)
//! HTTP POST ─▶ http/ ──────────────┘                                ├─ local (SQLite, default)
//!                                                                   ├─ data_api (Atlas Data API)
//!                                                                   └─ driver (mongodb crate)
//! ```
//! `main.rs` is wiring only: [`App::build`] binds and connects, [`App::run`] serves until the
//! shutdown token is cancelled, then drains.

pub mod config;
pub mod connect;
pub mod events;
pub mod http;
pub mod shutdown;
pub mod storage;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Settings};
use crate::events::Registry;
use crate::http::AppState;
use crate::storage::{SharedStorage, StorageError};
use crate::telemetry::Metrics;

/// Start-up and run-time failures of the daemon.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("cannot listen on {addr} (HTTP_LISTEN): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// A built daemon: listeners bound, storage connected, not yet serving.
pub struct App {
    settings: Arc<Settings>,
    listener: TcpListener,
    state: AppState,
}

impl App {
    pub async fn build(settings: Settings) -> Result<App, AppError> {
        settings.validate()?;
        let metrics = Metrics::shared();
        let storage = storage::connect(&settings).await?;
        tracing::info!(backend = storage.name(), "storage connected");
        let storage = Arc::new(SharedStorage::new(storage));
        let registry = events::default_registry(&settings, storage.clone(), metrics.clone())?;
        let addr = settings.http.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Bind { addr, source })?;
        let state = AppState {
            registry: Arc::new(registry),
            storage,
            metrics,
            token: settings.http.token.clone(),
            max_body_bytes: settings.http.max_body_bytes,
            probes: Vec::new(),
        };
        Ok(App {
            settings: Arc::new(settings),
            listener,
            state,
        })
    }

    /// The bound HTTP address (port 0 in the settings becomes the real port here).
    pub fn http_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.state.registry.clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    pub fn storage(&self) -> Arc<SharedStorage> {
        self.state.storage.clone()
    }

    /// Serves until `shutdown` is cancelled; then stops intake, lets in-flight events finish
    /// (bounded by `shutdown.grace`), flushes storage and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let addr = self.http_addr();
        let grace = Duration::from_secs(self.settings.shutdown.grace);
        let router = http::router(self.state.clone());
        let server = tokio::spawn(
            axum::serve(self.listener, router)
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .into_future(),
        );
        tracing::info!(%addr, "listening");
        shutdown.cancelled().await;
        let drained = shutdown::within_grace(grace, async {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "HTTP server error"),
                Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
            }
        })
        .await;
        if !drained {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "grace period over: abandoning unfinished HTTP requests (their events were not answered success, so callers retry)"
            );
        }
        self.state.storage.current().close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

use std::future::IntoFuture;
