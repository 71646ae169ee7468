//! The Connect EaaS websocket task channel: a drop-in replacement for the Python
//! `connect-extension-runner`'s two events workers (connect-protocol.md; docs/connect.md).
//!
//! | file | what |
//! |---|---|
//! | `protocol.rs` | wire types (serde only) and the Python `json.dumps` layout |
//! | `client/` | one channel: the connection loop, keepalive, reconnect (`mod.rs`); `handshake.rs` (upgrade, setup); `reader.rs` (frames, admission); `outbox.rs` (results, writer); `inflight.rs` (slots, waiting queue, drain) |
//! | `tasks.rs` | one task: status gate + fetch + registry, or interactive, or scheduled |
//! | `rest.rs` | the Connect REST calls (count, object) |
//! | `live.rs` | `setup_response` merging and storage rebuilds from extension variables |
//! | `proxy.rs` | HTTP(S)_PROXY / ALL_PROXY / NO_PROXY (HTTP CONNECT, SOCKS5) for the websocket and REST |
//! | `settings.rs` | the `[connect]` settings |
//! | `identity.rs` | the instance id, the websocket and REST endpoints, the `User-Agent` |
//!
//! Scrubbing frames before they are logged is [`crate::redact`] (the log shipper uses it too);
//! the trust roots are [`crate::tls`].
//!
//! [`ConnectService::build`] prepares both channels (`background`, `interactive`);
//! [`ConnectService::run`] runs them until the platform shuts both down or the stop token fires.

pub mod client;
pub mod configuration;
mod error;
mod identity;
pub mod live;
pub mod protocol;
pub mod proxy;
pub mod rest;
pub mod settings;
pub mod tasks;
mod tuning;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::events::persist::PersistHandler;
use crate::events::validation::EchoValidation;
use crate::events::{EventType, Handler, Registry};
use crate::http::ReadinessProbe;
use crate::storage::SharedStorage;
use crate::telemetry::Metrics;
use client::{Channel, ChannelOptions, ChannelStatus, RunnerType, Shared};
pub use configuration::Configuration;
pub use error::ConnectError;
use identity::user_agent;
pub use identity::{default_instance_id, endpoints};
use protocol::{Repository, SetupRequest};
pub use tuning::Tuning;

/// What an SDK extension ([`crate::sdk`]) adds to the channel: its declarations for
/// `setup_request` and a callback that receives the REST client and the live configuration once
/// the service is built. The default daemon passes `ExtensionSetup::default()` (nothing).
#[derive(Default)]
pub struct ExtensionSetup {
    /// Declared after the storage variables (a name already declared is not repeated).
    pub variables: Vec<protocol::VariableDecl>,
    /// `setup_request.schedulables`: `{"method", "name", "description"}` objects.
    pub schedulables: Vec<serde_json::Value>,
    /// Called once by [`ConnectService::build`].
    #[allow(clippy::type_complexity)]
    pub on_build: Option<Box<dyn FnOnce(Arc<rest::Rest>, Arc<live::LiveConfig>) + Send>>,
}

/// The validation event types `CONNECT_PERSIST_INTERACTIVE=true` subscribes to.
pub const PERSISTED_VALIDATION_TYPES: [EventType; 2] = [
    EventType::AssetPurchaseRequestValidation,
    EventType::AssetChangeRequestValidation,
];

/// Registers the interactive defaults before the registry is frozen.
///
/// Validation tasks that no handler claims are always answered with the draft unchanged (see
/// [`ConnectService::build`]); that needs no subscription. With `connect.persist_interactive`,
/// the asset purchase/change validation types are subscribed (statuses `[]`) and their drafts are
/// stored before the echo — unless `events.persist` already registered a handler for them.
pub fn register_interactive_defaults(
    registry: &mut Registry,
    settings: &dyn Configuration,
    storage: Arc<SharedStorage>,
    metrics: Arc<Metrics>,
) {
    if !settings.connect().persist_interactive {
        return;
    }
    let persist: Arc<dyn Handler> = Arc::new(PersistHandler::new(
        storage,
        settings.storage().id_strategy,
        settings.storage().reschedule_countdown,
        metrics,
    ));
    let echo: Arc<dyn Handler> = Arc::new(EchoValidation::new(Some(persist)));
    for t in PERSISTED_VALIDATION_TYPES {
        if registry.get(&t).is_none() {
            registry.register(t, Vec::new(), echo.clone());
        }
    }
}

/// System trust roots, plus SSL_CERT_FILE / SSL_CERT_DIR when set ([`crate::tls`]).
pub fn tls_config() -> Result<Arc<rustls::ClientConfig>, ConnectError> {
    crate::tls::client_config().map_err(|e| ConnectError::Setup(format!("TLS: {e}")))
}

/// CONNECT_INSTANCE_ID, else the container id ([`default_instance_id`]).
fn instance_id_of(c: &settings::Settings) -> String {
    if c.instance_id.trim().is_empty() {
        default_instance_id()
    } else {
        c.instance_id.trim().to_string()
    }
}

/// HTTP(S)_PROXY / ALL_PROXY / NO_PROXY from the tuning's table (tests), else the process
/// environment.
fn proxy_of(tuning: &Tuning) -> Result<Option<proxy::Proxy>, ConnectError> {
    match &tuning.proxy_env {
        Some(vars) => proxy::Proxy::from_env(|k| vars.get(k).cloned()),
        None => proxy::Proxy::from_env(|k| std::env::var(k).ok()),
    }
    .map_err(ConnectError::Setup)
}

/// The Connect REST client: the channel's TLS roots, proxy and `User-Agent`.
fn http_client(
    c: &settings::Settings,
    tls: &rustls::ClientConfig,
    proxy: Option<&proxy::Proxy>,
    agent: &str,
) -> Result<reqwest::Client, ConnectError> {
    let mut http = reqwest::Client::builder().no_proxy();
    if let Some(p) = proxy {
        http = http.proxy(p.for_reqwest());
    }
    http.use_preconfigured_tls(tls.clone())
        .user_agent(agent.to_string())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(c.rest_concurrency)
        .build()
        .map_err(|e| ConnectError::Setup(format!("HTTP client: {e}")))
}

/// The Connect REST calls at `rest_base` (`…/public/v1/`), retried as the tuning says.
fn rest_client(
    c: &settings::Settings,
    http: reqwest::Client,
    rest_base: &str,
    tuning: &Tuning,
    metrics: Arc<Metrics>,
) -> rest::Rest {
    rest::Rest::new(
        http,
        rest_base.to_string(),
        tuning.rest_retries,
        tuning.rest_retry_delay,
        metrics,
        c.rest_concurrency,
        tuning.rest_max_body_bytes,
    )
}

/// One INFO line with where the channel connects (credentials in the URLs redacted).
fn log_configured(ws_base: &str, rest_base: &str, instance_id: &str, proxy: Option<&proxy::Proxy>) {
    tracing::info!(
        websocket = %crate::config::secret::redact_url(ws_base),
        rest = %crate::config::secret::redact_url(rest_base),
        instance_id = %instance_id,
        proxy = ?proxy,
        "Connect channel configured"
    );
}

/// The scrubber of logged frames, knowing every configured secret.
fn secret_scrubber(settings: &dyn Configuration) -> Arc<crate::redact::Scrubber> {
    let scrubber = Arc::new(crate::redact::Scrubber::new());
    scrubber.add(settings.connect().api_key.expose());
    for s in settings.storage().secrets() {
        scrubber.add(&s);
    }
    scrubber
}

/// Answers validation tasks no handler claims: the draft unchanged, stored first with
/// `connect.persist_interactive`.
fn fallback_validation(
    settings: &dyn Configuration,
    storage: Arc<SharedStorage>,
    metrics: Arc<Metrics>,
) -> Arc<dyn Handler> {
    Arc::new(EchoValidation::new(
        settings.connect().persist_interactive.then(|| {
            Arc::new(PersistHandler::new(
                storage,
                settings.storage().id_strategy,
                settings.storage().reschedule_countdown,
                metrics,
            )) as Arc<dyn Handler>
        }),
    ))
}

/// The `setup_request` each channel sends after the upgrade.
fn setup_request(
    settings: &dyn Configuration,
    registry: &Registry,
    extension: &ExtensionSetup,
) -> SetupRequest {
    let c = &settings.connect();
    let mut variables = live::declared_variables(settings.storage());
    for v in &extension.variables {
        if !variables.iter().any(|d| d.name == v.name) {
            variables.push(v.clone());
        }
    }
    SetupRequest {
        event_subscriptions: registry.event_subscriptions(),
        ui_modules: None,
        icon: None,
        variables,
        schedulables: extension.schedulables.clone(),
        anvil_callables: None,
        transformations: None,
        audience: c.audience_list(),
        repository: Repository {
            readme_url: c.readme_url.clone(),
            changelog_url: c.changelog_url.clone(),
        },
        runner_version: c.runner_version.clone(),
        proxied_connect_api: None,
        model_type: "setup_request",
    }
}

/// Both events channels, ready to run.
pub struct ConnectService {
    channels: Vec<Arc<Channel>>,
    instance_id: String,
}

struct ConnectProbe {
    statuses: Vec<Arc<ChannelStatus>>,
}

impl ReadinessProbe for ConnectProbe {
    fn not_ready_reason(&self) -> Option<String> {
        let problems: Vec<String> = self
            .statuses
            .iter()
            .filter(|s| !s.is_ready())
            .map(|s| {
                format!(
                    "Connect {} channel: {}",
                    s.runner_type.as_str(),
                    s.problem()
                )
            })
            .collect();
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

impl ConnectService {
    pub fn build(
        configuration: Arc<dyn Configuration>,
        registry: Arc<Registry>,
        storage: Arc<SharedStorage>,
        metrics: Arc<Metrics>,
        tuning: Tuning,
        extension: ExtensionSetup,
    ) -> Result<ConnectService, ConnectError> {
        let settings = &*configuration;
        let c = settings.connect();
        let instance_id = instance_id_of(c);
        let (ws_base, rest_base) = endpoints(c, &instance_id)?;
        let tls = tls_config()?;
        let proxy = proxy_of(&tuning)?;
        let agent = user_agent(&c.environment_id, &instance_id);
        let http = http_client(c, &tls, proxy.as_ref(), &agent)?;

        let scrubber = secret_scrubber(settings);
        let live = Arc::new(live::LiveConfig::new(
            configuration.clone(),
            storage.clone(),
            scrubber.clone(),
            tuning.storage_rebuild_timeout,
        ));
        live.set_instance_id(&instance_id);
        let fallback = fallback_validation(settings, storage, metrics.clone());
        let setup_request = setup_request(settings, &registry, &extension);
        let rest = Arc::new(rest_client(c, http, &rest_base, &tuning, metrics.clone()));
        if let Some(on_build) = extension.on_build {
            on_build(rest.clone(), live.clone());
        }
        let shared = Arc::new(Shared {
            tasks: tasks::TaskContext {
                registry,
                rest,
                api_key: c.api_key.clone(),
                fallback_validation: fallback,
                background_timeout: Duration::from_secs(c.background_task_max_execution_time),
                interactive_timeout: Duration::from_secs(c.interactive_task_max_execution_time),
                environment_id: c.environment_id.clone(),
            },
            live,
            metrics,
            scrubber,
            setup_request,
        });
        let grace = Duration::from_secs(settings.shutdown().grace);
        let local_drain = grace.saturating_sub(tuning.flush_timeout.min(grace / 4));
        let channels = [RunnerType::Background, RunnerType::Interactive]
            .into_iter()
            .map(|runner_type| {
                Channel::new(
                    ChannelOptions {
                        runner_type,
                        ws_base: ws_base.clone(),
                        api_key: c.api_key.clone(),
                        user_agent: agent.clone(),
                        max_frame_bytes: c.max_frame_bytes,
                        max_in_flight: c.max_in_flight,
                        result_buffer: c.result_buffer,
                        result_buffer_bytes: c.result_buffer_bytes,
                        setup_timeout: Duration::from_secs(c.setup_timeout),
                        ping_interval: Duration::from_secs(c.ping_interval.max(1)),
                        platform_drain: Duration::from_secs(
                            c.background_task_max_execution_time + 90,
                        ),
                        local_drain,
                        tls: Some(tls.clone()),
                        proxy: proxy.clone(),
                        tuning: tuning.clone(),
                    },
                    shared.clone(),
                )
            })
            .collect();
        log_configured(&ws_base, &rest_base, &instance_id, proxy.as_ref());
        Ok(ConnectService {
            channels,
            instance_id,
        })
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// `/ready` is green only when both channels are set up.
    pub fn probe(&self) -> Arc<dyn ReadinessProbe> {
        Arc::new(ConnectProbe {
            statuses: self.channels.iter().map(|c| c.status.clone()).collect(),
        })
    }

    /// Runs both channels. Returns `Ok(true)` when the platform shut both down (the daemon then
    /// exits 0, like the runner's master once every worker has exited), `Ok(false)` after `stop`,
    /// and an error when a channel panicked: the other channel is then stopped (it drains as on
    /// SIGTERM), both report not ready, and the daemon exits non-zero so it is restarted.
    pub async fn run(self, stop: CancellationToken) -> Result<bool, ConnectError> {
        let all = stop.child_token();
        let channels: Vec<(Arc<ChannelStatus>, tokio::task::JoinHandle<bool>)> = self
            .channels
            .into_iter()
            .map(|c| (c.status.clone(), tokio::spawn(c.clone().run(all.clone()))))
            .collect();
        supervise(channels, all).await
    }
}

/// Waits for every channel task; the first that panics (or is cancelled) stops the others and
/// makes the result an error. A channel's status turns not ready with the reason.
pub(crate) async fn supervise(
    channels: Vec<(Arc<ChannelStatus>, tokio::task::JoinHandle<bool>)>,
    stop_all: CancellationToken,
) -> Result<bool, ConnectError> {
    let mut pending: futures_util::stream::FuturesUnordered<_> = channels
        .into_iter()
        .map(|(status, handle)| async move { (status, handle.await) })
        .collect();
    let mut all_platform = true;
    let mut failure: Option<String> = None;
    use futures_util::StreamExt;
    while let Some((status, joined)) = pending.next().await {
        match joined {
            Ok(platform) => all_platform &= platform,
            Err(e) => {
                let what = if e.is_panic() {
                    "panicked"
                } else {
                    "was cancelled"
                };
                let reason = format!("the {} channel task {what}", status.runner_type.as_str());
                status.set_failed(&reason);
                tracing::error!(
                    channel = status.runner_type.as_str(),
                    "{reason}: stopping the Connect channels"
                );
                failure.get_or_insert(reason);
                stop_all.cancel();
            }
        }
    }
    match failure {
        Some(reason) => Err(ConnectError::Failed(reason)),
        None => Ok(all_platform),
    }
}

#[cfg(test)]
mod tests;
