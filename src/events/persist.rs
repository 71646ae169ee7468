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

use super::{Event, Handler, Outcome};
use crate::config::IdStrategy;
use crate::storage::{EventDocument, SaveOutcome, SharedStorage};
use crate::telemetry::{EventLabels, Metrics};

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
