//! `none`: a backend that keeps nothing. Every save is answered `Inserted` at once and the document
//! is dropped; reads find nothing.
//!
//! **Benchmarking only** (`STORAGE_BACKENDS=none`): it measures the daemon itself — the Connect
//! channel, the REST fetches, the registry and the document build — with "a handler that does
//! nothing", the set-up the Python runner's figures were taken with (BENCHMARKS.md). An event
//! answered `success` by this backend is **not stored anywhere**, so the daemon warns loudly at
//! start-up, and `STORAGE_BACKENDS=auto` never selects it.

use async_trait::async_trait;
use serde_json::Value;

use crate::storage::backend::{self, Backend};
use crate::storage::error::StorageError;
use crate::storage::store::{EventDocument, ListQuery, SaveOutcome, Storage};

/// This backend in the registry (`storage/mod.rs`): no settings, selected only by name.
pub const DESCRIPTOR: Backend = Backend {
    name: "none",
    defaults: "",
    env: &[],
    platform_variables: &[],
    uses_database: false,
    auto: false,
    parse: backend::no_settings,
    open: |_section, _common| {
        Box::pin(std::future::ready(Ok(
            std::sync::Arc::new(Discard::new()) as std::sync::Arc<dyn Storage>
        )))
    },
};

pub struct Discard;

impl Discard {
    pub fn new() -> Self {
        tracing::warn!(
            "storage backend `none`: events are answered as stored but are DISCARDED (benchmarking only)"
        );
        Discard
    }
}

impl Default for Discard {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Storage for Discard {
    fn name(&self) -> &'static str {
        "none"
    }

    async fn save(&self, _doc: &EventDocument) -> Result<SaveOutcome, StorageError> {
        Ok(SaveOutcome::Inserted)
    }

    async fn save_many(&self, docs: &[EventDocument]) -> Vec<Result<SaveOutcome, StorageError>> {
        docs.iter().map(|_| Ok(SaveOutcome::Inserted)).collect()
    }

    async fn ping(&self) -> Result<(), StorageError> {
        Ok(())
    }

    async fn get(&self, _id: &str) -> Result<Option<Value>, StorageError> {
        Ok(None)
    }

    async fn list(&self, _query: &ListQuery) -> Result<Vec<Value>, StorageError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    #[tokio::test]
    async fn keeps_nothing_and_is_selected_only_by_name() {
        let store = Discard::new();
        let doc = crate::storage::conformance::sample_doc("PR-N", "pending", "u");
        assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Inserted);
        assert_eq!(store.get(&doc.id).await.unwrap(), None);
        assert!(store.list(&ListQuery::default()).await.unwrap().is_empty());

        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let s = Settings::load_with(None, env(&[("STORAGE_BACKENDS", "none")])).unwrap();
        assert_eq!(s.storage.backend_list().unwrap(), ["none"]);
        let s = Settings::load_with(None, env(&[])).unwrap();
        assert!(!s
            .storage
            .backend_list()
            .unwrap()
            .iter()
            .any(|b| *b == "none"));
        let built = crate::storage::connect(
            &Settings::load_with(None, env(&[("STORAGE_BACKENDS", "none")])).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(built.name(), "none");
    }
}
