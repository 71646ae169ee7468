//! The `data_api` backend's settings (`[storage.data_api]`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::secret::{redact_url, serialize_url, Secret};

#[derive(Clone, Deserialize, Serialize, PartialEq)]
pub struct Settings {
    /// May carry credentials (userinfo, a key in the query): shown only through [`redact_url`].
    #[serde(serialize_with = "serialize_url")]
    pub endpoint: String,
    pub api_key: Secret,
    pub bearer_token: Secret,
    pub email: String,
    pub password: Secret,
    pub cluster: String,
    pub collection: String,
    pub ejson: bool,
    pub request_timeout_ms: u64,
    pub deadline_ms: u64,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataApiSettings")
            .field("endpoint", &redact_url(&self.endpoint))
            .field("api_key", &self.api_key)
            .field("bearer_token", &self.bearer_token)
            .field("email", &self.email)
            .field("password", &self.password)
            .field("cluster", &self.cluster)
            .field("collection", &self.collection)
            .field("ejson", &self.ejson)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("deadline_ms", &self.deadline_ms)
            .finish()
    }
}

impl Settings {
    pub fn is_configured(&self) -> bool {
        !self.endpoint.is_empty()
    }
}

/// What the Data API backend is built from: its own settings and the database (shared with the
/// driver backend, `storage.database`).
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    pub settings: &'a Settings,
    pub database: &'a str,
}
