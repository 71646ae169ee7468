//! Storage: one object-safe trait, several backends chosen by configuration.
//!
//! | backend    | file          | idempotent save | bulk            | durability                        |
//! |------------|---------------|-----------------|-----------------|-----------------------------------|
//! | `local`    | `local.rs`    | yes (`_id` PK)  | one transaction | SQLite WAL, `synchronous=FULL`    |
//! | `driver`   | `driver.rs`   | yes (E11000)    | `insert_many`   | write concern (default majority)  |
//! | `data_api` | `data_api.rs` | yes (dup. key)  | `insertMany`    | whatever the gateway's cluster has |
//! | `none`     | `discard.rs`  | —               | —               | none: keeps nothing (benchmarks only) |
//!
//! **Document shape.** The Connect object exactly as received or fetched (the tutorial stores the
//! request as-is), plus `_id` and one reserved key, `_connect`, holding our metadata (event type,
//! status, object id, task id, source, received time). The object's own keys are never touched.
//!
//! **Idempotency.** `_id` is deterministic (see [`IdStrategy`]), so a redelivered event finds its
//! document already there; backends report that as [`SaveOutcome::Duplicate`], which callers count
//! as success.
//!
//! **Errors.** [`StorageError::is_retriable`] is the one place that decides whether an event is
//! answered `reschedule` (transient: try again later, nothing lost) or `fail` (permanent). Only
//! [`StorageError::Rejected`] — about this document — is permanent.
//!
//! **Health.** [`SharedStorage`] keeps one health state fed by every save result and every
//! readiness ping ([`SharedStorage::ping`]): the change healthy → failing is logged at ERROR once,
//! with the (secret-free) reason; failing → healthy at INFO once; while it stays failing, each
//! event logs at WARN at most. `/ready` answers 503 with the reason while the ping fails.

pub mod bson_json;
pub mod conformance;
pub mod data_api;
pub mod discard;
pub mod driver;
pub mod fanout;
pub mod local;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::config::{BackendKind, IdStrategy, Settings};
use crate::events::Event;

/// The reserved top-level key holding our metadata.
pub const META_KEY: &str = "_connect";

/// A document ready to store: `_id`, the object's fields, and `_connect`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDocument {
    pub id: String,
    pub event_type: String,
    pub status: String,
    pub object_id: String,
    pub received_at: OffsetDateTime,
    /// The full document as stored, `_id` and `_connect` included.
    pub body: Map<String, Value>,
}

impl EventDocument {
    /// Builds the stored form of `event` (copying the object). A non-object payload is kept
    /// under `object`.
    pub fn from_event(event: &Event, strategy: IdStrategy) -> EventDocument {
        let id = document_id(event, strategy);
        Self::build(event, event.object.clone(), id)
    }

    /// As [`EventDocument::from_event`], moving the object instead of copying it (the hot path:
    /// a fetched purchase request is a few KB of JSON).
    pub fn from_owned_event(mut event: Event, strategy: IdStrategy) -> EventDocument {
        let id = document_id(&event, strategy);
        let object = std::mem::take(&mut event.object);
        Self::build(&event, object, id)
    }

    fn build(event: &Event, object: Value, id: String) -> EventDocument {
        let received_at = event.received_at;
        let mut meta = json!({
            "event_type": event.event_type.as_str(),
            "status": event.status_str(),
            "object_id": event.object_id,
            "task_id": event.task_id,
            "source": event.source.as_str(),
            "received_at": format_timestamp(received_at),
        });
        let mut body = Map::new();
        body.insert("_id".into(), Value::String(id.clone()));
        match object {
            Value::Object(obj) => {
                for (k, v) in obj {
                    if k == "_id" || k == META_KEY {
                        // Keep an object's own `_id` / `_connect` (unlikely, but lossless)
                        // inside our metadata.
                        meta[format!("original{k}")] = v;
                    } else {
                        body.insert(k, v);
                    }
                }
            }
            other => {
                body.insert("object".into(), other);
            }
        }
        body.insert(META_KEY.into(), meta);
        EventDocument {
            id,
            event_type: event.event_type.as_str().to_string(),
            status: event.status_str().to_string(),
            object_id: event.object_id.clone(),
            received_at,
            body,
        }
    }

    /// The object as received, without `_id` and `_connect` (restoring any original keys).
    pub fn object_of(doc: &Value) -> Value {
        let mut obj = doc.as_object().cloned().unwrap_or_default();
        obj.remove("_id");
        let meta = obj.remove(META_KEY);
        if let Some(meta) = meta {
            for k in ["_id", META_KEY] {
                if let Some(v) = meta.get(format!("original{k}")) {
                    obj.insert(k.to_string(), v.clone());
                }
            }
        }
        Value::Object(obj)
    }
}

/// RFC 3339 in UTC with a fixed nine-digit fraction (`2026-11-28T17:21:48.123456789Z`), so that
/// comparing the strings orders by time — backends that sort on `_connect.received_at` rely on it.
pub fn format_timestamp(t: OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(FORMAT)
        .unwrap_or_default()
}

/// The document id for `event` under `strategy` (see `config/default.toml`, `id_strategy`).
///
/// `state`: `{object_id}:{status}:{updated}`; without `updated`, the `task` form; `task`:
/// `{object_id}:{task_id}`; without a task id (an HTTP POST), the content form
/// [`content_id`] — never a random id, so a retried POST is stored once. Only an explicitly
/// configured `generated` is random.
pub fn document_id(event: &Event, strategy: IdStrategy) -> String {
    match strategy {
        IdStrategy::State => match event.object.get("updated").and_then(Value::as_str) {
            Some(updated) => format!("{}:{}:{}", event.object_id, event.status_str(), updated),
            None => document_id(event, IdStrategy::Task),
        },
        IdStrategy::Task => match &event.task_id {
            Some(task) => format!("{}:{}", event.object_id, task),
            None => content_id(event),
        },
        IdStrategy::Generated => uuid::Uuid::new_v4().to_string(),
    }
}

/// A deterministic id from the event's content: `{object_id}:{status}:sha256:{32 hex digits}`,
/// the SHA-256 of the event type, the status and the canonical object (keys sorted at every
/// level, compact JSON) — the same object, whatever its key order, gets the same id.
pub fn content_id(event: &Event) -> String {
    use sha2::{Digest, Sha256};
    let mut canonical = String::new();
    write_canonical(&event.object, &mut canonical);
    let mut hasher = Sha256::new();
    for part in [event.event_type.as_str(), event.status_str()] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.update(canonical.as_bytes());
    let digest = hasher.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}:{}:sha256:{hex}", event.object_id, event.status_str())
}

/// Compact JSON with object keys sorted recursively.
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// What a save came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveOutcome {
    /// Newly committed.
    Inserted,
    /// A document with this `_id` was already there (a redelivery): counts as success.
    Duplicate,
}

/// Read-back filter. Results are newest first (by received time).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct ListQuery {
    pub event_type: Option<String>,
    pub status: Option<String>,
    pub object_id: Option<String>,
    pub limit: Option<usize>,
}

impl ListQuery {
    pub const DEFAULT_LIMIT: usize = 100;
    pub const MAX_LIMIT: usize = 1000;
    pub fn effective_limit(&self) -> usize {
        self.limit
            .unwrap_or(Self::DEFAULT_LIMIT)
            .clamp(1, Self::MAX_LIMIT)
    }
}

/// Storage errors, classified once by [`StorageError::is_retriable`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The backend could not be reached or did not answer (network, server selection, 5xx, 429).
    #[error("{backend} storage unavailable: {message}")]
    Unavailable {
        backend: &'static str,
        message: String,
    },
    /// The operation did not finish in time; it may or may not have been committed.
    #[error("{backend} storage timed out: {message}")]
    Timeout {
        backend: &'static str,
        message: String,
    },
    /// The backend refused the document or the request for good (invalid document, auth).
    #[error("{backend} storage rejected the request: {message}")]
    Rejected {
        backend: &'static str,
        message: String,
    },
    /// The backend's settings are wrong (bad URI, missing collection…).
    #[error("{backend} storage misconfigured: {message}")]
    Config {
        backend: &'static str,
        message: String,
    },
    /// A bug or corrupted state on our side.
    #[error("{backend} storage internal error: {message}")]
    Internal {
        backend: &'static str,
        message: String,
    },
}

impl StorageError {
    /// Whether trying again later can succeed. Retriable errors become `reschedule`, the others `fail`.
    ///
    /// Only [`StorageError::Rejected`] — an error about *this document* — is permanent. Everything
    /// about the store, the network or the credentials (`Config` included: a wrong key or a missing
    /// endpoint is fixed by the operator, and the redelivery then succeeds) and anything unexplained
    /// (`Internal`) is retriable: the deterministic `_id` makes a redelivery safe, a wrong `fail`
    /// loses the event.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, Self::Rejected { .. })
    }

    /// Whether this is an error about the document itself (the event is answered `fail`).
    pub fn is_permanent(&self) -> bool {
        !self.is_retriable()
    }

    /// The same error with its message rewritten (e.g. to scrub a secret), kind kept.
    pub fn map_message(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            Self::Unavailable { backend, message } => Self::Unavailable {
                backend,
                message: f(message),
            },
            Self::Timeout { backend, message } => Self::Timeout {
                backend,
                message: f(message),
            },
            Self::Rejected { backend, message } => Self::Rejected {
                backend,
                message: f(message),
            },
            Self::Config { backend, message } => Self::Config {
                backend,
                message: f(message),
            },
            Self::Internal { backend, message } => Self::Internal {
                backend,
                message: f(message),
            },
        }
    }
}

/// The storage trait. Object-safe: held as `Arc<dyn Storage>`.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Short backend name for logs and metrics ("local", "driver", "data_api", "fanout").
    fn name(&self) -> &'static str;

    /// Persists one document. Idempotent on `doc.id`: a second save of the same id is `Duplicate`.
    async fn save(&self, doc: &EventDocument) -> Result<SaveOutcome, StorageError>;

    /// Persists many documents; one result per document, in order. Default: one `save` at a time.
    async fn save_many(&self, docs: &[EventDocument]) -> Vec<Result<SaveOutcome, StorageError>> {
        let mut out = Vec::with_capacity(docs.len());
        for d in docs {
            out.push(self.save(d).await);
        }
        out
    }

    /// A cheap round trip (readiness, start-up check).
    async fn ping(&self) -> Result<(), StorageError>;

    /// The stored document with this `_id`.
    async fn get(&self, id: &str) -> Result<Option<Value>, StorageError>;

    /// Stored documents matching `query`, newest first.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Value>, StorageError>;

    /// Flushes buffered work and releases resources (shutdown). Default: nothing to do.
    async fn close(&self) {}
}

/// A change of the storage's health (see [`Health::record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthChange {
    /// Nothing changed.
    Same,
    /// Healthy → failing, with the reason (logged at ERROR, once).
    Failing(String),
    /// Failing → healthy (logged at INFO, once).
    Recovered,
}

/// Whether the store works, fed by every save and ping result; logs each state change once.
#[derive(Debug, Default)]
pub struct Health {
    /// `Some(reason)` while failing.
    failing: Mutex<Option<String>>,
}

impl Health {
    /// Records one result. A store fault (a retriable error) makes it failing; a success makes it
    /// healthy; an error about a document ([`StorageError::Rejected`]) says nothing about the
    /// store and changes nothing. Logs the change healthy → failing at ERROR and failing →
    /// healthy at INFO, each once; a fault while already failing only updates the reason.
    pub fn record<T>(&self, backend: &str, result: &Result<T, StorageError>) -> HealthChange {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(_) => match failing.take() {
                Some(reason) => {
                    tracing::info!(backend, previous_error = %reason, "storage recovered");
                    HealthChange::Recovered
                }
                None => HealthChange::Same,
            },
            Err(e) if e.is_retriable() => {
                let reason = e.to_string();
                let change = if failing.is_none() {
                    tracing::error!(backend, error = %reason, "storage failing: events are answered reschedule/503 until it recovers");
                    HealthChange::Failing(reason.clone())
                } else {
                    tracing::debug!(backend, error = %reason, "storage still failing");
                    HealthChange::Same
                };
                *failing = Some(reason);
                change
            }
            Err(_) => HealthChange::Same,
        }
    }

    /// Why the store is failing, if it is.
    pub fn failing_reason(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The storage in use, swappable at run time (live configuration from Connect): an event takes the
/// current `Arc` once and finishes on it, even if a new backend is swapped in meanwhile.
pub struct SharedStorage {
    current: RwLock<Arc<dyn Storage>>,
    health: Health,
}

impl SharedStorage {
    /// Longest [`SharedStorage::ping`] waits for the backend.
    pub const PING_TIMEOUT: Duration = Duration::from_secs(5);

    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self {
            current: RwLock::new(storage),
            health: Health::default(),
        }
    }
    pub fn current(&self) -> Arc<dyn Storage> {
        self.current.read().expect("storage lock").clone()
    }
    /// Installs `storage`; returns the previous one (which in-flight saves may still be using).
    pub fn replace(&self, storage: Arc<dyn Storage>) -> Arc<dyn Storage> {
        std::mem::replace(&mut *self.current.write().expect("storage lock"), storage)
    }

    /// The health state (fed by [`SharedStorage::record_save`] and [`SharedStorage::ping`]).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Records a save result of `backend` in the health state.
    pub fn record_save(&self, backend: &str, result: &Result<SaveOutcome, StorageError>) {
        self.health.record(backend, result);
    }

    /// Pings the current backend (bounded by [`SharedStorage::PING_TIMEOUT`]) and records the
    /// result; the error is the reason, secret-free.
    pub async fn ping(&self) -> Result<(), StorageError> {
        let storage = self.current();
        let result = match tokio::time::timeout(Self::PING_TIMEOUT, storage.ping()).await {
            Ok(r) => r,
            Err(_) => Err(StorageError::Timeout {
                backend: storage.name(),
                message: format!(
                    "ping got no answer within {} ms",
                    Self::PING_TIMEOUT.as_millis()
                ),
            }),
        };
        self.health.record(storage.name(), &result);
        result
    }
}

/// Builds one backend from settings.
pub async fn connect_backend(
    kind: BackendKind,
    settings: &Settings,
) -> Result<Arc<dyn Storage>, StorageError> {
    Ok(match kind {
        BackendKind::Local => Arc::new(local::LocalStorage::open(&settings.storage.local.path)?),
        BackendKind::Driver => Arc::new(driver::DriverStorage::connect(settings).await?),
        BackendKind::DataApi => Arc::new(data_api::DataApiStorage::connect(settings).await?),
        BackendKind::Discard => Arc::new(discard::Discard::new()),
    })
}

/// Builds the configured storage: one backend, or a fan-out over several (every event must be
/// committed by all of them), with reads served by the primary.
pub async fn connect(settings: &Settings) -> Result<Arc<dyn Storage>, StorageError> {
    let config_err = |e: crate::config::ConfigError| StorageError::Config {
        backend: "storage",
        message: e.to_string(),
    };
    let kinds = settings.storage.backend_list().map_err(config_err)?;
    let primary = settings.storage.primary_backend().map_err(config_err)?;
    let mut backends = Vec::with_capacity(kinds.len());
    for kind in &kinds {
        backends.push(connect_backend(*kind, settings).await?);
    }
    if backends.len() == 1 {
        return Ok(backends.pop().expect("one backend"));
    }
    let primary_index = kinds.iter().position(|k| *k == primary).unwrap_or(0);
    Ok(Arc::new(fanout::FanOut::new(backends, primary_index)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventType, Source};

    fn event(task: Option<&str>, updated: Option<&str>) -> Event {
        let mut obj = json!({"id": "PR-1", "type": "purchase", "status": "pending"});
        if let Some(u) = updated {
            obj["updated"] = json!(u);
        }
        let mut e = Event::new(
            EventType::AssetPurchaseRequestProcessing,
            "PR-1",
            obj,
            Source::Websocket,
        );
        if let Some(t) = task {
            e = e.with_task_id(t);
        }
        e
    }

    #[test]
    fn timestamps_sort_as_strings() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let a = format_timestamp(t);
        let b = format_timestamp(t + time::Duration::nanoseconds(1_500_000));
        let c = format_timestamp(t + time::Duration::seconds(1));
        assert_eq!(a, "2023-11-14T22:13:20.000000000Z");
        assert!(a < b && b < c, "{a} {b} {c}");
    }

    #[test]
    fn id_strategies() {
        let e = event(Some("TQ-1"), Some("2026-11-28T17:21:48+00:00"));
        assert_eq!(
            document_id(&e, IdStrategy::State),
            "PR-1:pending:2026-11-28T17:21:48+00:00"
        );
        assert_eq!(document_id(&e, IdStrategy::Task), "PR-1:TQ-1");
        let g1 = document_id(&e, IdStrategy::Generated);
        let g2 = document_id(&e, IdStrategy::Generated);
        assert_ne!(g1, g2);
        assert_eq!(g1.len(), 36);
        // fall-backs: no `updated` → task id; no task id either → the content hash, never random
        assert_eq!(
            document_id(&event(Some("TQ-9"), None), IdStrategy::State),
            "PR-1:TQ-9"
        );
        for strategy in [IdStrategy::State, IdStrategy::Task] {
            let a = document_id(&event(None, None), strategy);
            let b = document_id(&event(None, None), strategy);
            assert_eq!(a, b, "{strategy:?}");
            assert!(a.starts_with("PR-1:pending:sha256:"), "{a}");
            assert_eq!(a.len(), "PR-1:pending:sha256:".len() + 32, "{a}");
        }
        // deterministic: the same event twice gives the same id
        let again = event(Some("TQ-2"), Some("2026-11-28T17:21:48+00:00"));
        assert_eq!(
            document_id(&e, IdStrategy::State),
            document_id(&again, IdStrategy::State)
        );
    }

    #[test]
    fn content_ids_ignore_key_order_and_see_every_value() {
        let mk = |object: Value| {
            Event::new(
                EventType::AssetPurchaseRequestProcessing,
                "PR-1",
                object,
                Source::Http,
            )
        };
        let a = mk(
            json!({"id": "PR-1", "status": "pending", "asset": {"a": 1, "b": [1, {"x": 1, "y": 2}]}}),
        );
        let b = mk(
            json!({"asset": {"b": [1, {"y": 2, "x": 1}], "a": 1}, "status": "pending", "id": "PR-1"}),
        );
        let c = mk(
            json!({"id": "PR-1", "status": "pending", "asset": {"a": 2, "b": [1, {"x": 1, "y": 2}]}}),
        );
        assert_eq!(content_id(&a), content_id(&b));
        assert_ne!(content_id(&a), content_id(&c));
        // Another event type with the same object is another document.
        let mut d = a.clone();
        d.event_type = EventType::AssetChangeRequestProcessing;
        assert_ne!(content_id(&a), content_id(&d));
        let mut out = String::new();
        write_canonical(&json!({"b": 1, "a": {"d": "\n", "c": null}}), &mut out);
        assert_eq!(out, r#"{"a":{"c":null,"d":"\n"},"b":1}"#);
    }

    /// Captures the log of `f` (all levels).
    fn captured_log(f: impl FnOnce()) -> String {
        use std::io::Write;
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn health_logs_each_state_change_once() {
        let down = || -> Result<(), StorageError> {
            Err(StorageError::Unavailable {
                backend: "local",
                message: "attempt to write a readonly database".into(),
            })
        };
        let rejected = || -> Result<(), StorageError> {
            Err(StorageError::Rejected {
                backend: "local",
                message: "too big".into(),
            })
        };
        let health = Health::default();
        let mut changes = Vec::new();
        let log = captured_log(|| {
            changes.push(health.record("local", &Ok(())));
            changes.push(health.record("local", &rejected()));
            for _ in 0..5 {
                changes.push(health.record("local", &down()));
            }
            changes.push(health.record("local", &rejected()));
            assert!(health
                .failing_reason()
                .unwrap()
                .contains("readonly database"));
            for _ in 0..3 {
                changes.push(health.record("local", &Ok(())));
            }
            changes.push(health.record("local", &down()));
        });
        use HealthChange::*;
        let failing =
            || Failing("local storage unavailable: attempt to write a readonly database".into());
        assert_eq!(
            changes,
            vec![
                Same,
                Same,
                failing(),
                Same,
                Same,
                Same,
                Same,
                Same,
                Recovered,
                Same,
                Same,
                failing()
            ]
        );
        let errors: Vec<_> = log.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 2, "one ERROR per change to failing:\n{log}");
        assert!(errors[0].contains("readonly database"), "{log}");
        let infos: Vec<_> = log.lines().filter(|l| l.contains(" INFO ")).collect();
        assert_eq!(infos.len(), 1, "one INFO per recovery:\n{log}");
        assert!(infos[0].contains("storage recovered"), "{log}");
        assert!(
            !log.lines().any(
                |l| l.contains("WARN") || l.contains("ERROR") && !l.contains("storage failing")
            ),
            "{log}"
        );
    }

    #[test]
    fn document_keeps_the_object_untouched() {
        let e = event(Some("TQ-1"), Some("u1"));
        let doc = EventDocument::from_event(&e, IdStrategy::State);
        assert_eq!(doc.body["_id"], json!("PR-1:pending:u1"));
        assert_eq!(doc.body[META_KEY]["task_id"], json!("TQ-1"));
        assert_eq!(doc.body[META_KEY]["source"], json!("websocket"));
        assert_eq!(
            EventDocument::object_of(&Value::Object(doc.body.clone())),
            e.object
        );
    }

    #[test]
    fn owned_and_borrowed_builds_agree() {
        let e = event(Some("TQ-1"), Some("u1"));
        let a = EventDocument::from_event(&e, IdStrategy::State);
        let b = EventDocument::from_owned_event(e, IdStrategy::State);
        assert_eq!(a, b);
    }

    #[test]
    fn clashing_keys_are_kept_losslessly() {
        let mut e = event(None, Some("u"));
        e.object["_id"] = json!({"$oid": "x"});
        e.object[META_KEY] = json!(1);
        let doc = EventDocument::from_event(&e, IdStrategy::State);
        assert_eq!(EventDocument::object_of(&Value::Object(doc.body)), e.object);
    }

    #[test]
    fn retriable_classification() {
        let b = "x";
        let m = String::new;
        assert!(StorageError::Unavailable {
            backend: b,
            message: m()
        }
        .is_retriable());
        assert!(StorageError::Timeout {
            backend: b,
            message: m()
        }
        .is_retriable());
        assert!(!StorageError::Rejected {
            backend: b,
            message: m()
        }
        .is_retriable());
        assert!(StorageError::Config {
            backend: b,
            message: m()
        }
        .is_retriable());
        assert!(StorageError::Internal {
            backend: b,
            message: m()
        }
        .is_retriable());
    }
}
