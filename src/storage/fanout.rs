//! Fan-out: every event is written to several backends (the tutorial's v0.2.0 writes through both
//! the Data API and the driver). An event is committed only when **every** backend committed it; a
//! partial failure returns the error, the event is answered `reschedule`, and the redelivery is
//! written to all backends again — safe, because `_id`s are deterministic and a backend that already
//! has the document reports `Duplicate`. Reads are served by the primary backend.
//!
//! **A retriable error on any backend makes the event retriable**, even when another backend
//! refused the document for good: one backend's outage (or its credentials) must not turn the
//! event into a `fail` that Connect never redelivers. Only when every failing backend refused the
//! document is the event answered `fail`.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::join_all;
use serde_json::Value;

use crate::storage::error::StorageError;
use crate::storage::store::{EventDocument, ListQuery, SaveOutcome, Storage};

pub struct FanOut {
    backends: Vec<Arc<dyn Storage>>,
    primary: usize,
}

impl FanOut {
    pub fn new(backends: Vec<Arc<dyn Storage>>, primary: usize) -> Self {
        assert!(primary < backends.len(), "primary backend out of range");
        Self { backends, primary }
    }

    pub fn backends(&self) -> &[Arc<dyn Storage>] {
        &self.backends
    }

    fn primary(&self) -> &dyn Storage {
        self.backends[self.primary].as_ref()
    }
}

/// Combines one document's results from every backend: all must succeed; `Inserted` when any
/// backend inserted; on failure a retriable error wins over a permanent one (the event must be
/// redelivered rather than lost).
fn combine(results: Vec<Result<SaveOutcome, StorageError>>) -> Result<SaveOutcome, StorageError> {
    let mut outcome = SaveOutcome::Duplicate;
    let mut retriable: Option<StorageError> = None;
    let mut permanent: Option<StorageError> = None;
    for r in results {
        match r {
            Ok(SaveOutcome::Inserted) => outcome = SaveOutcome::Inserted,
            Ok(SaveOutcome::Duplicate) => {}
            Err(e) if e.is_retriable() => retriable = retriable.or(Some(e)),
            Err(e) => permanent = permanent.or(Some(e)),
        }
    }
    match (retriable, permanent) {
        (Some(e), _) | (None, Some(e)) => Err(e),
        (None, None) => Ok(outcome),
    }
}

#[async_trait]
impl Storage for FanOut {
    fn name(&self) -> &'static str {
        "fanout"
    }

    async fn save(&self, doc: &EventDocument) -> Result<SaveOutcome, StorageError> {
        combine(join_all(self.backends.iter().map(|b| b.save(doc))).await)
    }

    async fn save_many(&self, docs: &[EventDocument]) -> Vec<Result<SaveOutcome, StorageError>> {
        let per_backend = join_all(self.backends.iter().map(|b| b.save_many(docs))).await;
        let mut per_backend: Vec<_> = per_backend.into_iter().map(Vec::into_iter).collect();
        (0..docs.len())
            .map(|_| {
                combine(
                    per_backend
                        .iter_mut()
                        .map(|it| {
                            it.next().unwrap_or_else(|| {
                                Err(StorageError::internal(
                                    "fanout",
                                    "a backend returned fewer results than documents",
                                ))
                            })
                        })
                        .collect(),
                )
            })
            .collect()
    }

    async fn ping(&self) -> Result<(), StorageError> {
        for r in join_all(self.backends.iter().map(|b| b.ping())).await {
            r?;
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Value>, StorageError> {
        self.primary().get(id).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Value>, StorageError> {
        self.primary().list(query).await
    }

    async fn close(&self) {
        join_all(self.backends.iter().map(|b| b.close())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> StorageError {
        StorageError::unavailable("t", "down")
    }
    fn rejected() -> StorageError {
        StorageError::rejected("t", "bad")
    }

    #[test]
    fn combine_requires_every_backend() {
        use SaveOutcome::*;
        assert_eq!(
            combine(vec![Ok(Inserted), Ok(Duplicate)]).unwrap(),
            Inserted
        );
        assert_eq!(
            combine(vec![Ok(Duplicate), Ok(Duplicate)]).unwrap(),
            Duplicate
        );
        assert!(combine(vec![Ok(Inserted), Err(unavailable())])
            .unwrap_err()
            .is_retriable());
        // A retriable error on any backend makes the event retriable, in any order.
        assert!(combine(vec![Err(unavailable()), Err(rejected())])
            .unwrap_err()
            .is_retriable());
        assert!(combine(vec![Err(rejected()), Err(unavailable())])
            .unwrap_err()
            .is_retriable());
        assert!(
            combine(vec![Err(rejected()), Ok(Inserted), Err(unavailable())])
                .unwrap_err()
                .is_retriable()
        );
        // Only when every failure is permanent is the event permanent.
        assert!(!combine(vec![Ok(Inserted), Err(rejected())])
            .unwrap_err()
            .is_retriable());
        assert!(!combine(vec![Err(rejected()), Err(rejected())])
            .unwrap_err()
            .is_retriable());
    }
}
