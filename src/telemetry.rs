//! Logs (tracing: human-readable or JSON, levels from RUST_LOG) and Prometheus metrics
//! (prometheus-client: typed families, encoded by the crate, never hand-formatted).
//!
//! Secrets never reach a log line, whatever `RUST_LOG` asks for: the dependencies that print raw
//! traffic at `debug`/`trace` — the websocket upgrade request with the Connect `API_KEY`, whole
//! `setup_request`/`setup_response`/task frames with passwords, keys and the installation
//! `api_key`, HTTP requests with their headers, MongoDB commands — are capped at
//! [`TRAFFIC_CAP`] ([`TRAFFIC_TARGETS`]). The cap is a second, fixed filter on the log layer: a
//! record is written only when both `RUST_LOG` and the cap let it through, so no directive (not
//! even one more specific than the cap's, such as `tungstenite::protocol=trace`) can lift it.
//!
//! Platform logging ([`ship`]): a second layer ships this crate's records to the platform's log
//! service once a `setup_response` carries a `logging_api_key`, at the platform's levels, without
//! ever blocking the logging task; the stderr layer above is unaffected.
//!
//! Metric labels come only from known values (`event_type_label`, `status_label`, with the events): a value
//! from outside (an HTTP body, a frame) never becomes a label, so it can neither forge an
//! exposition line nor grow the number of series.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing::Subscriber;
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::fmt::{self, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub mod settings;
pub mod ship;

pub use settings::{LogFormat, Settings};

/// Log targets (and everything below them) that print requests, frames or commands whole at
/// `debug`/`trace`; they are never logged above [`TRAFFIC_CAP`].
pub const TRAFFIC_TARGETS: &[&str] = &[
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "hyper_util",
    "hyper_rustls",
    "h2",
    "reqwest",
    "rustls",
    "tokio_rustls",
    "mongodb",
    "tower_http",
];

/// The most verbose level [`TRAFFIC_TARGETS`] may log at: nothing there prints a payload.
pub const TRAFFIC_CAP: LevelFilter = LevelFilter::INFO;

/// The fixed cap: everything as `RUST_LOG` says, except [`TRAFFIC_TARGETS`] at most [`TRAFFIC_CAP`].
fn traffic_cap() -> Targets {
    TRAFFIC_TARGETS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |t, name| t.with_target(*name, TRAFFIC_CAP),
    )
}

/// The log layer: `format` to `writer`, filtered by `env_filter` (RUST_LOG) AND the traffic cap.
pub fn log_layer<S, W>(
    format: LogFormat,
    writer: W,
    ansi: bool,
    env_filter: EnvFilter,
) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = env_filter.and(traffic_cap());
    match format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(writer)
            .with_ansi(ansi)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .with_filter(filter)
            .boxed(),
    }
}

/// Installs the global subscriber (once per process; later calls are no-ops): the stderr log
/// layer and the platform log shipper ([`ship::layer`], shipping nothing until configured).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let verbose = filter
        .max_level_hint()
        .is_some_and(|level| level > TRAFFIC_CAP);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layers = vec![
        log_layer(format, std::io::stderr, ansi, filter),
        ship::layer(),
    ];
    let installed = tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_ok();
    if installed && verbose {
        tracing::debug!(
            capped = TRAFFIC_TARGETS.join(","),
            cap = %TRAFFIC_CAP,
            "RUST_LOG is above info: the dependencies that print raw traffic stay at most at the cap (their requests and frames carry secrets)"
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event_type: String,
    pub status: String,
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub event_type: String,
    pub status: String,
    pub source: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoredLabels {
    pub event_type: String,
    pub status: String,
    pub source: String,
    /// `inserted` or `duplicate`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageOpLabels {
    pub backend: String,
    pub operation: String,
    /// `ok` or `error`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub event_type: String,
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub event_type: String,
    pub category: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    /// `count` (the status gate) or `get` (the object).
    pub step: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    /// `background` or `interactive`.
    pub channel: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 16,
    ))
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    pub events_received: Family<EventLabels, Counter>,
    pub events_outcome: Family<OutcomeLabels, Counter>,
    pub events_stored: Family<StoredLabels, Counter>,
    pub storage_latency: Family<StorageOpLabels, Histogram, fn() -> Histogram>,
    pub tasks_received: Family<TaskLabels, Counter>,
    pub results_sent: Family<ResultLabels, Counter>,
    pub fetch_latency: Family<FetchLabels, Histogram, fn() -> Histogram>,
    pub reconnects: Family<ChannelLabels, Counter>,
    pub tasks_in_flight: Family<ChannelLabels, Gauge>,
    pub results_pending: Family<ChannelLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("connect_ext");
        let m = Metrics {
            events_received: Family::default(),
            events_outcome: Family::default(),
            events_stored: Family::default(),
            storage_latency: Family::new_with_constructor(latency_histogram),
            tasks_received: Family::default(),
            results_sent: Family::default(),
            fetch_latency: Family::new_with_constructor(latency_histogram),
            reconnects: Family::default(),
            tasks_in_flight: Family::default(),
            results_pending: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events_received",
            "Events received, by event type, status and source",
            m.events_received.clone(),
        );
        registry.register(
            "events_handled",
            "Events handled, by result (success, skip, fail, retry, reschedule)",
            m.events_outcome.clone(),
        );
        registry.register(
            "events_stored",
            "Events committed to storage (inserted, or duplicate of a stored one)",
            m.events_stored.clone(),
        );
        registry.register(
            "storage_operation_seconds",
            "Storage operation latency",
            m.storage_latency.clone(),
        );
        registry.register(
            "tasks_received",
            "Connect tasks received on the websocket",
            m.tasks_received.clone(),
        );
        registry.register(
            "results_sent",
            "Task results sent to Connect",
            m.results_sent.clone(),
        );
        registry.register(
            "fetch_seconds",
            "Connect REST fetch latency (status gate and object)",
            m.fetch_latency.clone(),
        );
        registry.register("reconnects", "Websocket reconnects", m.reconnects.clone());
        registry.register(
            "tasks_in_flight",
            "Connect tasks being handled",
            m.tasks_in_flight.clone(),
        );
        registry.register(
            "results_pending",
            "Task results waiting to be sent (e.g. while disconnected)",
            m.results_pending.clone(),
        );
        // Process-wide (the shipper is one per process), shown by every registry.
        registry.register(
            "log_records_dropped",
            "Log records not shipped to the platform's log service (queue full or delivery failed)",
            ship::dropped_counter(),
        );
        registry.register(
            "log_records_shipped",
            "Log records delivered to the platform's log service",
            ship::shipped_counter(),
        );
        Metrics { registry, ..m }
    }

    pub fn shared() -> Arc<Self> {
        Arc::new(Self::new())
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String cannot fail");
        out
    }

    /// Counts an event received and its result (`Outcome::result_name`).
    pub fn count_event(&self, labels: &EventLabels, result: &str) {
        let l = labels.clone();
        self.events_received.get_or_create(&l).inc();
        self.events_outcome
            .get_or_create(&OutcomeLabels {
                event_type: l.event_type,
                status: l.status,
                source: l.source,
                result: result.to_string(),
            })
            .inc();
    }

    pub fn count_stored(&self, labels: &EventLabels, duplicate: bool) {
        let l = labels.clone();
        self.events_stored
            .get_or_create(&StoredLabels {
                event_type: l.event_type,
                status: l.status,
                source: l.source,
                outcome: if duplicate { "duplicate" } else { "inserted" }.to_string(),
            })
            .inc();
    }

    pub fn observe_storage(&self, backend: &str, operation: &str, ok: bool, elapsed: Duration) {
        self.storage_latency
            .get_or_create(&StorageOpLabels {
                backend: backend.to_string(),
                operation: operation.to_string(),
                outcome: if ok { "ok" } else { "error" }.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What the log layer writes for a few records, with `rust_log` as RUST_LOG.
    fn logged(rust_log: &str, format: LogFormat) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(log_layer(
            format,
            move || writer.clone(),
            false,
            EnvFilter::try_new(rust_log).unwrap(),
        ));
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "tungstenite::protocol", "frame SECRET-A");
            tracing::debug!(target: "tungstenite::handshake::client", "request SECRET-B");
            tracing::trace!(target: "tokio_tungstenite", "SECRET-C");
            tracing::debug!(target: "mongodb::command", "command SECRET-D");
            tracing::trace!(target: "mongodb::connection", "SECRET-E");
            tracing::trace!(target: "hyper_util::client::legacy::pool", "SECRET-F");
            tracing::trace!(target: "h2::codec::framed_read", "SECRET-G");
            tracing::debug!(target: "reqwest::connect", "SECRET-H");
            tracing::trace!(target: "rustls::client::hs", "SECRET-I");
            tracing::info!(target: "tungstenite::protocol", "capped target still logs info");
            tracing::trace!(target: "connect_extension_mongodb::http", "own trace line");
        });
        let out = buffer.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn traffic_targets_are_capped_whatever_rust_log_says() {
        for rust_log in [
            "trace",
            "tungstenite=trace,connect_extension_mongodb=trace",
            "tungstenite::protocol=trace,tungstenite::handshake=trace,trace",
            "mongodb::command=trace,mongodb::connection=trace,h2=trace,hyper_util=trace,reqwest=trace,rustls=trace,tokio_tungstenite=trace,trace",
            "debug,tungstenite::protocol=trace,connect_extension_mongodb=trace",
        ] {
            for format in [LogFormat::Text, LogFormat::Json] {
                let out = logged(rust_log, format);
                assert!(!out.contains("SECRET"), "RUST_LOG={rust_log}:\n{out}");
                assert!(out.contains("own trace line"), "RUST_LOG={rust_log}:\n{out}");
                assert!(
                    out.contains("capped target still logs info"),
                    "RUST_LOG={rust_log}:\n{out}"
                );
            }
        }
        // RUST_LOG still restricts: the cap only ever removes records.
        let out = logged("warn", LogFormat::Text);
        assert!(
            !out.contains("own trace line") && !out.contains("capped target"),
            "{out}"
        );
    }
}
