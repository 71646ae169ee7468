//! `data_api`: the Atlas Data API over HTTP. (Implemented by the Data API issue.)

use async_trait::async_trait;
use serde_json::Value;

use super::{EventDocument, ListQuery, SaveOutcome, Storage, StorageError};
use crate::config::Settings;

const BACKEND: &str = "data_api";

pub struct DataApiStorage {}

impl DataApiStorage {
    pub async fn connect(_settings: &Settings) -> Result<Self, StorageError> {
        Err(StorageError::Config {
            backend: BACKEND,
            message: "the Data API backend is not available in this build yet".into(),
        })
    }
}

#[async_trait]
impl Storage for DataApiStorage {
    fn name(&self) -> &'static str {
        BACKEND
    }
    async fn save(&self, _doc: &EventDocument) -> Result<SaveOutcome, StorageError> {
        unreachable!("DataApiStorage cannot be constructed yet")
    }
    async fn ping(&self) -> Result<(), StorageError> {
        unreachable!("DataApiStorage cannot be constructed yet")
    }
    async fn get(&self, _id: &str) -> Result<Option<Value>, StorageError> {
        unreachable!("DataApiStorage cannot be constructed yet")
    }
    async fn list(&self, _query: &ListQuery) -> Result<Vec<Value>, StorageError> {
        unreachable!("DataApiStorage cannot be constructed yet")
    }
}
