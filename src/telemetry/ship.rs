//! Platform logging: the daemon's logs shipped to the platform's log service (Logz.io), as the
//! Python runner's `ExtensionLogHandler` (connect-eaas-core `logging.py`, a `LogzioHandler`) does
//! once `setup_response.logging` carries a `logging_api_key`, so that the portal shows them.
//!
//! | part | what |
//! |---|---|
//! | [`layer`] | a tracing layer, installed once by [`super::init`]: formats nothing, copies the event into a queue bounded in records and [`QUEUE_MAX_BYTES`] (`try_send`; when full the record is dropped and counted) |
//! | [`configure`] | called by `connect::live` on every merged `setup_response` with a key: sets the destination, meta fields and levels, starts the sender task once |
//! | [`shutdown`] | at exit: the queued records are sent (bounded wait), then the sender stops |
//! | the sender task | batches (at most [`BATCH_MAX_LINES`] lines, [`BATCH_MAX_BYTES`] bytes, or the flush interval after the first line), scrubs, POSTs newline-delimited JSON to `{url}/?token={key}&type=python`; a bounded timeout per request, [`RETRIES`] retries with backoff, then the batch is dropped and counted |
//!
//! **Never blocks.** A task that logs only ever does a `try_send` on a bounded channel; a slow,
//! hanging or absent listener fills the queue and further records are dropped, counted in
//! `connect_ext_log_records_dropped_total` (`connect_ext_log_records_shipped_total` counts the
//! delivered ones).
//!
//! **Never ships a secret.** Every string (message and fields) goes through the channel's
//! [`Scrubber`] (the configured keys and passwords, the secure variables and the logging key from
//! the platform, and the value of any secret-looking JSON key) and a mask for `ApiKey …` tokens
//! (installation keys in tasks) before it is serialized, and the serialized line once more after;
//! a field named like a secret (`api_key`, `token`, `password`, …) is shipped as `***`. The key is
//! only in the request's query string and is never logged: the listener URL appears in messages
//! through [`crate::config::secret::redact_url`] only.
//!
//! **Levels.** As in the runner, `log_level` governs the extension's own logs
//! ([`EXTENSION_TARGETS`]: the event handlers and storage, the runner's `eaas.eventsapp` logger)
//! and `runner_log_level` the daemon's (everything else of this crate, the runner's
//! `connect.eaas`); both default to `INFO` (the runner's `configure_logger`). Only this crate's
//! records are shipped (never the dependencies', nor this module's own); the levels are applied
//! live through a `tracing_subscriber::reload` handle. They govern what is *shipped*; the local
//! stderr log stays as `RUST_LOG` says (the runner's `setLevel` also changes its console output —
//! a documented difference: a portal setting neither silences nor floods the operator's log).
//!
//! Each line carries the runner's fields (`@timestamp`, `log_level`, `logger`, `message`,
//! `line_number`, `path_name`, `type`), the event's own fields, and the runner's metadata
//! (`api_address`, `service_id`, `environment_id`, `environment_type`, `instance_id`,
//! `account_id`, `account_name`, `repository_tag`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tracing::Level;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::Layer;
use tracing_subscriber::{reload, Registry};

use crate::redact::Scrubber;
use record::ShipLayer;
use send::sender;

/// The Logz.io listener the runner's handler posts to (`LogzioSender`'s default).
pub const DEFAULT_URL: &str = "https://listener.logz.io:8071";
/// The log type the runner's handler sends (`LogzioHandler`'s default `logzio_type`).
pub const LOG_TYPE: &str = "python";
/// This crate's log targets (everything shipped is below it).
pub const CRATE_TARGET: &str = "connect_extension_mongodb";
/// This module: its own records (delivery failures) are never shipped.
pub const SELF_TARGET: &str = "connect_extension_mongodb::telemetry::ship";
/// The extension's own logs (the runner's `eaas.eventsapp`): governed by `log_level`.
pub const EXTENSION_TARGETS: &[&str] = &[
    "connect_extension_mongodb::events",
    "connect_extension_mongodb::storage",
];
/// Most lines per POST.
pub const BATCH_MAX_LINES: usize = 500;
/// Most bytes per POST (the runner's sender: 1 MB).
pub const BATCH_MAX_BYTES: usize = 1024 * 1024;
/// Retries of a failed POST (network error, timeout, 5xx, 429); 400/401/403 are not retried.
pub const RETRIES: u32 = 3;
/// Longest string kept from an event (before scrubbing) and shipped (after).
const COLLECT_MAX_BYTES: usize = 16 * 1024;
/// Most bytes of strings kept from one event (further fields are left out).
const RECORD_MAX_BYTES: usize = 64 * 1024;
/// Most bytes of records waiting in the queue (besides `CONNECT_LOG_SHIP_QUEUE` records); more are
/// dropped and counted, so a burst of large records cannot grow memory without bound.
pub const QUEUE_MAX_BYTES: usize = 32 * 1024 * 1024;
const SHIP_MAX_BYTES: usize = 8 * 1024;
/// Most fields kept from one event.
const MAX_FIELDS: usize = 32;
/// Field names whose values are never shipped.
const SECRET_FIELDS: &[&str] = &[
    "api_key",
    "logging_api_key",
    "password",
    "token",
    "secret",
    "authorization",
];

/// How the shipper runs (from `telemetry.log_ship_*`).
#[derive(Debug, Clone)]
pub struct ShipOptions {
    /// Listener base URL (`{url}/?token=…&type=…` is posted to).
    pub url: String,
    /// Records queued at most; more are dropped (counted).
    pub queue: usize,
    /// Longest wait for more lines after the first of a batch.
    pub flush: Duration,
    /// Timeout of one POST.
    pub timeout: Duration,
}

/// One platform logging configuration (a merged `setup_response` with a key).
#[derive(Clone)]
pub struct Destination {
    pub options: ShipOptions,
    pub token: String,
    /// The runner's `metadata` fields, added to every line.
    pub meta: Map<String, Value>,
    /// `log_level` (extension) and `runner_log_level` (daemon).
    pub extension_level: LevelFilter,
    pub runner_level: LevelFilter,
    pub scrubber: Arc<Scrubber>,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("url", &crate::config::secret::redact_url(&self.options.url))
            .field("token", &"***")
            .field("extension_level", &self.extension_level)
            .field("runner_level", &self.runner_level)
            .finish()
    }
}

impl Destination {
    /// The bulk endpoint with the key and type in the query (never logged: see [`Self::shown`]).
    fn endpoint(&self) -> String {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        format!(
            "{}/?token={}&type={}",
            self.options.url.trim_end_matches('/'),
            enc(&self.token),
            enc(LOG_TYPE)
        )
    }

    /// The endpoint as messages may show it.
    fn shown(&self) -> String {
        crate::config::secret::redact_url(&self.endpoint())
    }
}

/// One event, copied out of the caller's thread; formatted by the sender task.
struct Record {
    at: time::OffsetDateTime,
    level: Level,
    target: &'static str,
    file: Option<&'static str>,
    line: Option<u32>,
    message: String,
    fields: Vec<(&'static str, Value)>,
    /// Bytes of its strings (counted against [`QUEUE_MAX_BYTES`] while queued).
    size: usize,
}

struct Global {
    tx: RwLock<Option<mpsc::Sender<Record>>>,
    destination: Mutex<Option<Arc<Destination>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    reload: OnceLock<Box<dyn Fn(Targets) + Send + Sync>>,
    queued_bytes: AtomicUsize,
    dropped: Counter,
    shipped: Counter,
}

fn global() -> &'static Global {
    static G: OnceLock<Global> = OnceLock::new();
    G.get_or_init(|| Global {
        tx: RwLock::new(None),
        destination: Mutex::new(None),
        task: Mutex::new(None),
        reload: OnceLock::new(),
        queued_bytes: AtomicUsize::new(0),
        dropped: Counter::default(),
        shipped: Counter::default(),
    })
}

/// Records dropped (queue full, sender gone, or delivery failed after the retries).
pub fn dropped_counter() -> Counter {
    global().dropped.clone()
}

/// Records delivered to the log service.
pub fn shipped_counter() -> Counter {
    global().shipped.clone()
}

/// The layer [`super::init`] installs: off (ships nothing) until [`configure`] sets the levels.
pub fn layer() -> Box<dyn Layer<Registry> + Send + Sync + 'static> {
    let (filter, handle) = reload::Layer::new(Targets::new());
    let _ = global().reload.set(Box::new(move |targets| {
        let _ = handle.reload(targets);
    }));
    ShipLayer.with_filter(filter).boxed()
}

/// What is shipped: this crate's records, the extension's at `extension`, the rest at `runner`,
/// this module's never.
pub fn targets(extension: LevelFilter, runner: LevelFilter) -> Targets {
    EXTENSION_TARGETS
        .iter()
        .fold(
            Targets::new().with_target(CRATE_TARGET, runner),
            |t, target| t.with_target(*target, extension),
        )
        .with_target(SELF_TARGET, LevelFilter::OFF)
}

/// A Python logging level name (`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`; any case;
/// `WARN`/`FATAL` too) as a filter; `NOTSET` is the default `INFO` (the parent logger's).
pub fn parse_level(name: &str) -> Option<LevelFilter> {
    Some(match name.trim().to_ascii_uppercase().as_str() {
        "DEBUG" => LevelFilter::DEBUG,
        "INFO" | "NOTSET" => LevelFilter::INFO,
        "WARNING" | "WARN" => LevelFilter::WARN,
        "ERROR" | "CRITICAL" | "FATAL" => LevelFilter::ERROR,
        _ => return None,
    })
}

/// Starts shipping to `destination` (or retargets: key, URL, meta and levels take effect for the
/// next batch). Must run inside a tokio runtime (the sender task is spawned on first use).
pub fn configure(destination: Destination) {
    // One configuration at a time, levels reload included: both channels configure on their
    // setup and log right after; the second must not log before the first one's reload is in
    // force (it sees the levels unchanged, skips the reload, and its lines would be filtered by
    // the levels of before).
    static CONFIGURING: Mutex<()> = Mutex::new(());
    let _one = CONFIGURING.lock().unwrap_or_else(|e| e.into_inner());
    let g = global();
    let changed_levels = {
        let mut current = g.destination.lock().expect("ship lock");
        let changed = current.as_ref().is_none_or(|c| {
            (c.extension_level, c.runner_level)
                != (destination.extension_level, destination.runner_level)
        });
        *current = Some(Arc::new(destination.clone()));
        changed
    };
    {
        let mut task = g.task.lock().expect("ship lock");
        if task.as_ref().is_none_or(|t| t.is_finished()) {
            let (tx, rx) = mpsc::channel(destination.options.queue.max(1));
            g.queued_bytes.store(0, Ordering::Relaxed);
            *g.tx.write().expect("ship lock") = Some(tx);
            *task = Some(tokio::spawn(sender(rx, destination.options.flush)));
            tracing::info!(
                url = %destination.shown(),
                "platform logging on: logs are shipped to the platform's log service"
            );
        }
    }
    if changed_levels {
        if let Some(reload) = g.reload.get() {
            reload(targets(
                destination.extension_level,
                destination.runner_level,
            ));
        }
        tracing::info!(
            log_level = %destination.extension_level,
            runner_log_level = %destination.runner_level,
            "platform log levels applied to the shipped logs"
        );
    }
}

/// At exit: stops taking records, sends what is queued (waiting at most `limit`), stops the sender
/// — as the runner's sender drains its queue once more when the main thread ends. A no-op when
/// shipping never started.
pub async fn shutdown(limit: Duration) {
    let g = global();
    let task = g.task.lock().expect("ship lock").take();
    *g.tx.write().expect("ship lock") = None;
    if let Some(task) = task {
        if tokio::time::timeout(limit, task).await.is_err() {
            tracing::warn!(
                limit_secs = limit.as_secs_f64(),
                "platform logging: the last records could not be sent in time; dropped"
            );
        }
    }
}

mod line;
mod record;
mod send;

#[cfg(test)]
mod tests;
