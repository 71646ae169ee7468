//! What every backend stores and answers: the document ([`EventDocument`]), the outcome of a
//! save ([`SaveOutcome`]), the read-back filter ([`ListQuery`]) and the [`Storage`] trait itself.

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::error::StorageError;

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

/// What `_connect` records about the event a document comes from.
#[derive(Debug, Clone, Copy)]
pub struct Provenance<'a> {
    pub event_type: &'a str,
    pub status: &'a str,
    pub object_id: &'a str,
    pub task_id: Option<&'a str>,
    pub source: &'a str,
    pub received_at: OffsetDateTime,
}

impl EventDocument {
    /// The stored form of `object` under `id`: the object's own keys, `_id`, and `_connect`
    /// holding `meta`. A non-object payload is kept under `object`. (Built from an event, with
    /// its id, by `events::persist`.)
    pub fn new(id: String, meta: Provenance<'_>, object: Value) -> EventDocument {
        let received_at = meta.received_at;
        let provenance = meta;
        let mut meta = json!({
            "event_type": provenance.event_type,
            "status": provenance.status,
            "object_id": provenance.object_id,
            "task_id": provenance.task_id,
            "source": provenance.source,
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
            event_type: provenance.event_type.to_string(),
            status: provenance.status.to_string(),
            object_id: provenance.object_id.to_string(),
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
    /// The stored object's `asset.id` (a request's asset). Backends match the top-level `asset`
    /// object's `id` field of the stored document exactly; a document without one never matches.
    pub asset_id: Option<String>,
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
