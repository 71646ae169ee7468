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
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::{reload, Registry};

use crate::redact::Scrubber;

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

struct ShipLayer;

impl<S: Subscriber> Layer<S> for ShipLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let g = global();
        let Ok(guard) = g.tx.read() else { return };
        let Some(tx) = guard.as_ref() else { return };
        let meta = event.metadata();
        let mut visitor = Collect::default();
        event.record(&mut visitor);
        let size = visitor.bytes;
        if g.queued_bytes.fetch_add(size, Ordering::Relaxed) + size > QUEUE_MAX_BYTES {
            g.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            g.dropped.inc();
            return;
        }
        let record = Record {
            at: time::OffsetDateTime::now_utc(),
            level: *meta.level(),
            target: meta.target(),
            file: meta.file(),
            line: meta.line(),
            message: visitor.message,
            fields: visitor.fields,
            size,
        };
        if tx.try_send(record).is_err() {
            g.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            g.dropped.inc();
        }
    }
}

#[derive(Default)]
struct Collect {
    message: String,
    fields: Vec<(&'static str, Value)>,
    bytes: usize,
}

fn cut(s: String, max: usize) -> String {
    if s.len() > max {
        format!("{}…", prefix(&s, max))
    } else {
        s
    }
}

impl Collect {
    fn push(&mut self, field: &Field, value: Value) {
        let len = value.as_str().map_or(8, str::len);
        if self.fields.len() < MAX_FIELDS && self.bytes + len <= RECORD_MAX_BYTES {
            self.bytes += len;
            self.fields.push((field.name(), value));
        }
    }

    fn string(&mut self, field: &Field, s: String) {
        if field.name() == "message" {
            self.bytes += s.len();
            self.message = s;
        } else {
            self.push(field, Value::String(s));
        }
    }
}

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        let s = if value.len() > COLLECT_MAX_BYTES {
            format!("{}…", prefix(value, COLLECT_MAX_BYTES))
        } else {
            value.to_string()
        };
        self.string(field, s);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let s = cut(format!("{value:?}"), COLLECT_MAX_BYTES);
        self.string(field, s);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::from(value));
    }
}

/// The longest prefix of `s` of at most `max` bytes (on a character boundary).
fn prefix(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Masks the token after every `ApiKey ` (Connect API keys, installation keys in tasks).
fn mask_api_keys(s: &str) -> String {
    const MARK: &str = "apikey ";
    let lower = s.to_ascii_lowercase();
    if !lower.contains(MARK) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = 0;
    let mut from = 0;
    while let Some(pos) = lower[from..].find(MARK) {
        let start = from + pos + MARK.len();
        let end = s[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '}' | ']'))
            .map_or(s.len(), |e| start + e);
        out.push_str(&s[rest..start]);
        out.push_str("***");
        rest = end;
        from = end.max(start);
        if from >= s.len() {
            break;
        }
    }
    out.push_str(&s[rest..]);
    out
}

/// A string as it may be shipped: secrets masked, then cut.
fn clean(s: &str, scrubber: &Scrubber) -> String {
    cut(mask_api_keys(&scrubber.scrub(s)), SHIP_MAX_BYTES)
}

fn python_level(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        _ => "DEBUG",
    }
}

/// One NDJSON line: the runner's fields, the event's, the meta fields; scrubbed.
fn format_line(r: Record, d: &Destination) -> String {
    global().queued_bytes.fetch_sub(r.size, Ordering::Relaxed);
    let mut line = Map::new();
    let ts =
        r.at.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
    line.insert("@timestamp".into(), Value::String(ts));
    line.insert(
        "log_level".into(),
        Value::String(python_level(&r.level).into()),
    );
    line.insert("logger".into(), Value::String(r.target.to_string()));
    line.insert(
        "message".into(),
        Value::String(clean(&r.message, &d.scrubber)),
    );
    if let Some(line_number) = r.line {
        line.insert("line_number".into(), Value::from(line_number));
    }
    if let Some(file) = r.file {
        line.insert("path_name".into(), Value::String(file.to_string()));
    }
    line.insert("type".into(), Value::String(LOG_TYPE.into()));
    for (name, value) in r.fields {
        let value = if SECRET_FIELDS.iter().any(|s| name.eq_ignore_ascii_case(s)) {
            Value::String("***".into())
        } else {
            match value {
                Value::String(s) => Value::String(clean(&s, &d.scrubber)),
                other => other,
            }
        };
        if !line.contains_key(name) {
            line.insert(name.to_string(), value);
        }
    }
    for (k, v) in &d.meta {
        line.insert(k.clone(), v.clone());
    }
    let text = serde_json::to_string(&Value::Object(line)).unwrap_or_default();
    // Once more on the serialized line (a secret split across fields, escaping).
    mask_api_keys(&d.scrubber.scrub(&text))
}

fn current_destination() -> Option<Arc<Destination>> {
    global().destination.lock().expect("ship lock").clone()
}

/// The sender task: batches and posts until every sender is gone.
async fn sender(mut rx: mpsc::Receiver<Record>, flush: Duration) {
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    // The channel's trust roots (system bundle plus SSL_CERT_FILE / SSL_CERT_DIR).
    if let Ok(tls) = crate::tls::client_config() {
        builder = builder.use_preconfigured_tls((*tls).clone());
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "platform logging off: cannot build its HTTP client");
            *global().tx.write().expect("ship lock") = None;
            return;
        }
    };
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let Some(dest) = current_destination() else {
            global()
                .queued_bytes
                .fetch_sub(first.size, Ordering::Relaxed);
            continue;
        };
        let deadline = tokio::time::Instant::now() + flush;
        let mut lines = vec![format_line(first, &dest)];
        let mut bytes = lines[0].len();
        let mut closed = false;
        while lines.len() < BATCH_MAX_LINES && bytes < BATCH_MAX_BYTES {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => {
                    let l = format_line(r, &dest);
                    bytes += l.len() + 1;
                    lines.push(l);
                }
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let n = lines.len() as u64;
        match post(&client, &dest, lines.join("\n")).await {
            Ok(()) => {
                global().shipped.inc_by(n);
                if failing {
                    failing = false;
                    tracing::info!(url = %dest.shown(), "platform logging delivers again");
                }
            }
            Err(reason) => {
                global().dropped.inc_by(n);
                if !failing {
                    failing = true;
                    tracing::warn!(
                        url = %dest.shown(),
                        reason = %crate::sanitize::escape_control(&dest.scrubber.scrub(&reason)),
                        dropped = n,
                        "platform logging: a batch could not be delivered and was dropped (counted in connect_ext_log_records_dropped_total; logged once until delivery works again)"
                    );
                }
            }
        }
        if closed {
            return;
        }
    }
}

/// One batch, with bounded retries. The error never contains the endpoint (it holds the key).
async fn post(client: &reqwest::Client, d: &Destination, body: String) -> Result<(), String> {
    let url = d.endpoint();
    let mut delay = Duration::from_millis(250);
    let mut last = String::new();
    for attempt in 0..=RETRIES {
        if attempt > 0 {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        let sent = client
            .post(&url)
            .header("content-type", "text/plain")
            .body(body.clone())
            .timeout(d.options.timeout)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let status = resp.status().as_u16();
                last = format!("HTTP {status}");
                if matches!(status, 400 | 401 | 403 | 413) {
                    return Err(format!("{last} (not retried)"));
                }
            }
            Err(e) => {
                // Without the URL: reqwest's Display names it, and the URL carries the key.
                let e = e.without_url();
                last = if e.is_timeout() {
                    "timed out".to_string()
                } else if e.is_connect() {
                    "cannot connect".to_string()
                } else {
                    e.to_string()
                };
            }
        }
    }
    Err(format!("{last} after {} attempts", RETRIES + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    fn dest(scrubber: Arc<Scrubber>) -> Destination {
        let mut meta = Map::new();
        meta.insert("service_id".into(), Value::from("SRVC-1"));
        Destination {
            options: ShipOptions {
                url: "http://127.0.0.1:9/".into(),
                queue: 8,
                flush: Duration::from_millis(10),
                timeout: Duration::from_millis(100),
            },
            token: "logz-TOKEN-SECRET".into(),
            meta,
            extension_level: LevelFilter::INFO,
            runner_level: LevelFilter::INFO,
            scrubber,
        }
    }

    #[test]
    fn lines_carry_the_runner_fields_and_no_secret() {
        let s = Arc::new(Scrubber::new());
        s.add("pw-KNOWN-SECRET");
        let d = dest(s);
        let r = Record {
            at: time::OffsetDateTime::now_utc(),
            level: Level::WARN,
            target: "connect_extension_mongodb::events::persist",
            file: Some("src/events/persist.rs"),
            line: Some(7),
            message: "saw pw-KNOWN-SECRET and Authorization: ApiKey SU-1:inst-SECRET in {\"api_key\": \"k-SECRET\"}".into(),
            fields: vec![
                ("token", Value::from("t-SECRET")),
                ("task_id", Value::from("TQ-1")),
                ("n", Value::from(3)),
                ("excerpt", Value::from("a\"pw-KNOWN-SECRET\"b")),
            ],
            size: 0,
        };
        let line = format_line(r, &d);
        assert!(!line.contains("SECRET"), "{line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["log_level"], "WARNING");
        assert_eq!(v["logger"], "connect_extension_mongodb::events::persist");
        assert_eq!(v["type"], "python");
        assert_eq!(v["task_id"], "TQ-1");
        assert_eq!(v["n"], 3);
        assert_eq!(v["token"], "***");
        assert_eq!(v["service_id"], "SRVC-1");
        assert_eq!(v["line_number"], 7);
        assert!(v["@timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn a_record_is_bounded_in_size() {
        let subscriber = tracing_subscriber::registry().with(Probe::default());
        let probe = subscriber.downcast_ref::<Probe>().unwrap().0.clone();
        tracing::subscriber::with_default(subscriber, || {
            let big = "x".repeat(1024 * 1024);
            tracing::info!(a = %big, b = %big, c = %big, d = %big, e = %big, "{big}");
        });
        let (bytes, fields) = *probe.lock().unwrap();
        assert!(bytes <= RECORD_MAX_BYTES + 4 * COLLECT_MAX_BYTES, "{bytes}");
        assert!(fields < 5, "{fields}");
    }

    /// Records what [`Collect`] kept of each event: (bytes, fields).
    #[derive(Default)]
    struct Probe(Arc<Mutex<(usize, usize)>>);
    impl<S: Subscriber> Layer<S> for Probe {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            let mut c = Collect::default();
            event.record(&mut c);
            *self.0.lock().unwrap() = (c.bytes, c.fields.len());
        }
    }

    #[test]
    fn the_endpoint_is_shown_without_its_key() {
        let d = dest(Arc::new(Scrubber::new()));
        assert_eq!(
            d.endpoint(),
            "http://127.0.0.1:9/?token=logz%2DTOKEN%2DSECRET&type=python"
        );
        assert!(!d.shown().contains("SECRET"), "{}", d.shown());
        assert!(!format!("{d:?}").contains("SECRET"));
    }

    #[test]
    fn python_level_names_map_to_filters() {
        assert_eq!(parse_level("DEBUG"), Some(LevelFilter::DEBUG));
        assert_eq!(parse_level("warning"), Some(LevelFilter::WARN));
        assert_eq!(parse_level("CRITICAL"), Some(LevelFilter::ERROR));
        assert_eq!(parse_level("NOTSET"), Some(LevelFilter::INFO));
        assert_eq!(parse_level("LOUD"), None);
        assert_eq!(mask_api_keys("x ApiKey SU-1:abc, y"), "x ApiKey ***, y");
        assert_eq!(mask_api_keys("apikey"), "apikey");
        let long = "é".repeat(10_000);
        assert!(clean(&long, &Scrubber::new()).len() <= SHIP_MAX_BYTES + '…'.len_utf8());
    }
}
