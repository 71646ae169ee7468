//! Logs (tracing: human-readable or JSON, levels from RUST_LOG) and Prometheus metrics
//! (prometheus-client: typed families, encoded by the crate, never hand-formatted).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;
use crate::events::{Event, Outcome};

/// Installs the global subscriber (once per process; later calls are no-ops).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event_type: String,
    pub status: String,
    pub source: String,
}

impl EventLabels {
    pub fn of(event: &Event) -> Self {
        EventLabels {
            event_type: event.event_type.to_string(),
            status: event.status_str().to_string(),
            source: event.source.as_str().to_string(),
        }
    }
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

    pub fn count_event(&self, labels: &EventLabels, outcome: &Outcome) {
        let l = labels.clone();
        self.events_received.get_or_create(&l).inc();
        self.events_outcome
            .get_or_create(&OutcomeLabels {
                event_type: l.event_type,
                status: l.status,
                source: l.source,
                result: outcome.result_name().to_string(),
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
