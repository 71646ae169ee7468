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
//!
//! # Writing an extension
//!
//! The [`sdk`] module is the Rust counterpart of `connect-eaas-core`: declare handlers, variables
//! and schedulables on an [`sdk::Extension`] and run it; the daemon (Connect channel, HTTP
//! intake, storage) is the same. Here a handler runs after each pending purchase request is
//! stored, reads back what was stored for the same asset and calls the Connect API
//! (`examples/approve_purchase.rs` is the complete version; `docs/extensions.md` maps every
//! Python concept):
//!
//! ```no_run
//! use connect_extension_mongodb::sdk::{
//!     Context, Event, EventType, Extension, ListQuery, Outcome, Status,
//! };
//! use serde_json::json;
//!
//! async fn on_pending(event: Event, ctx: Context) -> Outcome {
//!     let asset = event.object["asset"]["id"].as_str().unwrap_or_default().to_string();
//!     let seen = match ctx
//!         .storage()
//!         .list(&ListQuery { asset_id: Some(asset), ..Default::default() })
//!         .await
//!     {
//!         Ok(docs) => docs.len(),
//!         Err(e) => return Outcome::retry(format!("store unavailable: {e}")),
//!     };
//!     tracing::info!(seen, "requests stored for this asset");
//!     let template = ctx.variable("TEMPLATE_ID").unwrap_or_default();
//!     let path = format!("requests/{}/approve", event.object_id);
//!     match ctx.client().post(&path, &json!({"template_id": template})).await {
//!         Ok(_) => Outcome::done(),
//!         Err(e) => e.outcome(), // 4xx → fail with the API's message, else retry
//!     }
//! }
//!
//! fn main() {
//!     Extension::new()
//!         .variable("TEMPLATE_ID", "", false)
//!         .event(EventType::AssetPurchaseRequestProcessing, &[Status::Pending], on_pending)
//!         .after_store()
//!         .run();
//! }
//! ```

pub mod config;
pub mod connect;
pub mod events;
pub(crate) mod http;
pub mod redact;
pub(crate) mod retry;
pub(crate) mod sanitize;
pub mod sdk;
pub mod settings;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
pub(crate) mod tls;

pub use settings::Settings;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;
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
    #[error(transparent)]
    Connect(#[from] connect::ConnectError),
}

/// A hook that adds or replaces handlers before the registry is frozen (extensions, tests).
pub type RegistryHook = Box<dyn FnOnce(&mut Registry, &Arc<SharedStorage>, &Arc<Metrics>) + Send>;

/// Build-time options beyond [`Settings`]: custom handlers, internal Connect timings.
#[derive(Default)]
pub struct AppOptions {
    pub registry_hook: Option<RegistryHook>,
    pub connect_tuning: connect::Tuning,
    /// An extension to install (the SDK's `Extension::into_install`): its handlers, variables
    /// and schedulables. Installed before `registry_hook` runs.
    pub extension: Option<ExtensionInstall>,
}

/// Installs an extension: registers its handlers before the registry is frozen and returns what
/// the Connect channel must add (declared variables, schedulables, the REST client hand-over).
pub type ExtensionInstall = Box<
    dyn FnOnce(
            &mut Registry,
            &Settings,
            &Arc<SharedStorage>,
            &Arc<Metrics>,
        ) -> connect::ExtensionSetup
        + Send,
>;

/// A built daemon: listeners bound, storage connected, not yet serving.
pub struct App {
    settings: Arc<Settings>,
    listener: TcpListener,
    state: AppState,
    connect: Option<connect::ConnectService>,
}

impl App {
    pub async fn build(settings: Settings) -> Result<App, AppError> {
        Self::build_with(settings, AppOptions::default()).await
    }

    pub async fn build_with(settings: Settings, options: AppOptions) -> Result<App, AppError> {
        settings.validate()?;
        let metrics = Metrics::shared();
        let storage = storage::connect(&settings).await?;
        tracing::info!(backend = storage.name(), "storage connected");
        let storage = Arc::new(SharedStorage::new(storage));
        let mut registry = events::default_registry(
            &settings.events,
            &settings.storage,
            storage.clone(),
            metrics.clone(),
        )?;
        let extension = match options.extension {
            Some(install) => install(&mut registry, &settings, &storage, &metrics),
            None => connect::ExtensionSetup::default(),
        };
        if let Some(hook) = options.registry_hook {
            hook(&mut registry, &storage, &metrics);
        }
        let mut probes: Vec<Arc<dyn http::ReadinessProbe>> = Vec::new();
        let mut connect_service = None;
        let registry = if settings.connect.enabled() {
            connect::register_interactive_defaults(
                &mut registry,
                &settings,
                storage.clone(),
                metrics.clone(),
            );
            let registry = Arc::new(registry);
            let service = connect::ConnectService::build(
                Arc::new(settings.clone()),
                registry.clone(),
                storage.clone(),
                metrics.clone(),
                options.connect_tuning,
                extension,
            )?;
            probes.push(service.probe());
            connect_service = Some(service);
            registry
        } else {
            tracing::info!("Connect channel off (API_KEY/ENVIRONMENT_ID not set): HTTP only");
            Arc::new(registry)
        };
        let addr = settings.http.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Bind { addr, source })?;
        let state = AppState {
            registry,
            storage,
            metrics,
            token: settings.http.token.clone(),
            max_body_bytes: settings.http.max_body_bytes,
            probes,
        };
        Ok(App {
            settings: Arc::new(settings),
            listener,
            state,
            connect: connect_service,
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

    /// The Connect instance id in use (None when the channel is off).
    pub fn connect_instance_id(&self) -> Option<&str> {
        self.connect.as_ref().map(|c| c.instance_id())
    }

    /// Serves until `shutdown` is cancelled (or the platform shuts down both Connect channels);
    /// then stops intake, lets in-flight events finish (bounded by `shutdown.grace`; Connect tasks
    /// still running then are answered `retry`), flushes storage (bounded by `shutdown.grace` too)
    /// and returns. A failed Connect channel (a panicked task) is an error, never a clean stop:
    /// the daemon drains the same way and returns `Err`, so the binary exits non-zero.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AppError> {
        let addr = self.http_addr();
        let grace = Duration::from_secs(self.settings.shutdown.grace);
        let router = http::router(self.state.clone(), &self.settings.http);
        let server = tokio::spawn(http::serve(
            self.listener,
            router,
            http::ServeLimits::from_settings(&self.settings.http),
            shutdown.clone().cancelled_owned(),
        ));
        tracing::info!(%addr, "listening");
        let mut connect = self.connect.map(|c| tokio::spawn(c.run(shutdown.clone())));
        // A Connect failure (a panicked channel or service task) ends the daemon with an error,
        // after the usual drain, so that it is restarted; never a clean stop.
        let mut failure: Option<AppError> = None;
        let mut on_end = |ended| {
            if let Some(e) = connect_ended(ended) {
                failure = Some(e);
            }
        };
        if let Some(handle) = connect.as_mut() {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                ended = handle => {
                    connect = None;
                    on_end(ended);
                    shutdown.cancel();
                }
            }
        } else {
            shutdown.cancelled().await;
        }
        if let Some(handle) = connect {
            // The channels send `shutdown`, drain within the grace period and close.
            match tokio::time::timeout(grace + Duration::from_secs(3), handle).await {
                Ok(ended) => on_end(ended),
                Err(_) => {
                    tracing::warn!("Connect channels did not close within the grace period")
                }
            }
        }
        close_down(server, &self.state.storage, grace).await;
        match failure {
            Some(e) => {
                tracing::error!(error = %e, "stopped after a failure");
                Err(e)
            }
            None => {
                tracing::info!("stopped");
                Ok(())
            }
        }
    }
}

/// What the end of the Connect service means: `None` for a stop (the platform's shutdown of both
/// channels is logged), the error for a failure (a panicked or cancelled task).
fn connect_ended(
    ended: Result<Result<bool, connect::ConnectError>, tokio::task::JoinError>,
) -> Option<AppError> {
    match ended {
        Ok(Ok(true)) => {
            tracing::info!("the platform shut down both Connect channels: stopping");
            None
        }
        Ok(Ok(false)) => None,
        Ok(Err(e)) => Some(AppError::Connect(e)),
        Err(e) => Some(AppError::Connect(connect::ConnectError::Failed(format!(
            "the Connect service task {}",
            if e.is_panic() {
                "panicked"
            } else {
                "was cancelled"
            }
        )))),
    }
}

/// After intake stopped: lets HTTP requests finish and flushes the storage, each bounded by
/// `grace` (unanswered events were not answered success, so they are redelivered).
async fn close_down(
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    storage: &SharedStorage,
    grace: Duration,
) {
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
    // Closing flushes buffered writes; a hung store must not hold the exit forever.
    let storage = storage.current();
    if tokio::time::timeout(grace.max(Duration::from_secs(1)), storage.close())
        .await
        .is_err()
    {
        tracing::warn!(
            backend = storage.name(),
            grace_secs = grace.as_secs(),
            "storage did not close within the grace period; exiting anyway (unanswered events are redelivered)"
        );
    }
}
