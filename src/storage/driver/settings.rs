//! The `driver` backend's settings (`[storage.driver]`).

use serde::{Deserialize, Serialize};

use crate::config::secret::Secret;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Settings {
    pub uri: Secret,
    pub host: String,
    pub user: String,
    pub password: Secret,
    pub collection: String,
    pub write_concern: String,
    pub server_selection_timeout_ms: u64,
    pub batch_max: usize,
    pub batch_wait_ms: u64,
    pub operation_timeout_ms: u64,
}

impl Settings {
    pub fn is_configured(&self) -> bool {
        !self.uri.is_empty() || !self.host.is_empty()
    }
}

/// What the driver backend is built from: its own settings and the database (shared with the
/// Data API backend, `storage.database`).
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    pub settings: &'a Settings,
    pub database: &'a str,
}
