//! `driver`: MongoDB through the official `mongodb` crate. (Implemented by the driver-backend issue.)

use async_trait::async_trait;
use serde_json::Value;

use super::{EventDocument, ListQuery, SaveOutcome, Storage, StorageError};
use crate::config::Settings;

const BACKEND: &str = "driver";

pub struct DriverStorage {}

impl DriverStorage {
    pub async fn connect(_settings: &Settings) -> Result<Self, StorageError> {
        Err(StorageError::Config {
            backend: BACKEND,
            message: "the driver backend is not available in this build yet".into(),
        })
    }
}

#[async_trait]
impl Storage for DriverStorage {
    fn name(&self) -> &'static str {
        BACKEND
    }
    async fn save(&self, _doc: &EventDocument) -> Result<SaveOutcome, StorageError> {
        unreachable!("DriverStorage cannot be constructed yet")
    }
    async fn ping(&self) -> Result<(), StorageError> {
        unreachable!("DriverStorage cannot be constructed yet")
    }
    async fn get(&self, _id: &str) -> Result<Option<Value>, StorageError> {
        unreachable!("DriverStorage cannot be constructed yet")
    }
    async fn list(&self, _query: &ListQuery) -> Result<Vec<Value>, StorageError> {
        unreachable!("DriverStorage cannot be constructed yet")
    }
}
