//! The built-in persist handler: stores the event through the storage trait.
//!
//! An event is answered `success` only after its document is committed (or was already there: a
//! redelivery). A transient storage error becomes `reschedule` so Connect redelivers it later;
//! a permanent one (the backend refused the document) becomes `fail` with the reason. Every result
//! feeds the storage health state ([`SharedStorage::record_save`]), which logs a change of state at
//! ERROR/INFO once.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde_json::Value;

use super::registry::{Handler, Outcome};
use super::types::Event;
use crate::storage::{EventDocument, IdStrategy, Provenance, SaveOutcome, SharedStorage};
use crate::telemetry::{EventLabels, Metrics};

impl EventDocument {
    /// Builds the stored form of `event` (copying the object), under its id by `strategy`.
    pub fn from_event(event: &Event, strategy: IdStrategy) -> EventDocument {
        let id = document_id(event, strategy);
        EventDocument::new(id, provenance(event), event.object.clone())
    }

    /// As [`EventDocument::from_event`], moving the object instead of copying it (the hot path:
    /// a fetched purchase request is a few KB of JSON).
    pub fn from_owned_event(mut event: Event, strategy: IdStrategy) -> EventDocument {
        let id = document_id(&event, strategy);
        let object = std::mem::take(&mut event.object);
        EventDocument::new(id, provenance(&event), object)
    }
}

/// What `_connect` records about `event`.
fn provenance(event: &Event) -> Provenance<'_> {
    Provenance {
        event_type: event.event_type.as_str(),
        status: event.status_str(),
        object_id: &event.object_id,
        task_id: event.task_id.as_deref(),
        source: event.source.as_str(),
        received_at: event.received_at,
    }
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

pub struct PersistHandler {
    storage: Arc<SharedStorage>,
    id_strategy: IdStrategy,
    reschedule_countdown: u64,
    metrics: Arc<Metrics>,
}

impl PersistHandler {
    pub fn new(
        storage: Arc<SharedStorage>,
        id_strategy: IdStrategy,
        reschedule_countdown: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            storage,
            id_strategy,
            reschedule_countdown,
            metrics,
        }
    }
}

#[async_trait]
impl Handler for PersistHandler {
    fn name(&self) -> &str {
        "persist"
    }

    async fn handle(&self, event: &Event) -> Outcome {
        let labels = EventLabels::of(event);
        self.save(EventDocument::from_event(event, self.id_strategy), labels)
            .await
    }

    async fn handle_owned(&self, event: Event) -> Outcome {
        let labels = EventLabels::of(&event);
        self.save(
            EventDocument::from_owned_event(event, self.id_strategy),
            labels,
        )
        .await
    }
}

impl PersistHandler {
    async fn save(&self, doc: EventDocument, labels: EventLabels) -> Outcome {
        // Take the current backend once: a live reconfiguration swaps it for later events only.
        let storage = self.storage.current();
        let started = Instant::now();
        let result = storage.save(&doc).await;
        self.storage.record_save(storage.name(), &result);
        self.metrics
            .observe_storage(storage.name(), "save", result.is_ok(), started.elapsed());
        match result {
            Ok(saved) => {
                let duplicate = saved == SaveOutcome::Duplicate;
                self.metrics.count_stored(&labels, duplicate);
                Outcome::Done {
                    document_id: Some(doc.id),
                    duplicate,
                    data: None,
                }
            }
            Err(e) if e.is_retriable() => Outcome::reschedule(
                self.reschedule_countdown,
                format!("not stored, will be redelivered: {e}"),
            ),
            Err(e) => Outcome::fail(format!("not stored: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventType, Source};
    use crate::storage::META_KEY;
    use serde_json::json;

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
}
