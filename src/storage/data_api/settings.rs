//! The `data_api` backend's settings (`[storage.data_api]`, documented in `default.toml` beside
//! this file).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::env::{secret, var, EnvVar};
use crate::config::error::{setting_error, setting_error_in, Bound, ConfigError};
use crate::config::secret::{redact_url, serialize_url, Secret};
use crate::storage::backend::{Common, Section};

/// The variables that set `[storage.data_api]`.
pub const ENV: &[EnvVar] = &[
    var("DATA_API_ENDPOINT", "storage.data_api.endpoint"),
    secret("DATA_API_KEY", "storage.data_api.api_key"),
    secret("DATA_API_BEARER_TOKEN", "storage.data_api.bearer_token"),
    var("DATA_API_EMAIL", "storage.data_api.email"),
    secret("DATA_API_PASSWORD", "storage.data_api.password"),
    var("CLUSTER", "storage.data_api.cluster"),
    var("HTTP_COLLECTION", "storage.data_api.collection"),
    var("DATA_API_EJSON", "storage.data_api.ejson"),
    var("DATA_API_TIMEOUT_MS", "storage.data_api.request_timeout_ms"),
    var("DATA_API_DEADLINE_MS", "storage.data_api.deadline_ms"),
];

/// The variables the platform may set ("Apply Changes"): all of them. (The extension variable
/// `API_KEY` also sets the key: see `connect::live`.)
pub const PLATFORM_VARIABLES: &[&str] = &[
    "DATA_API_ENDPOINT",
    "HTTP_COLLECTION",
    "CLUSTER",
    "DATA_API_KEY",
    "DATA_API_BEARER_TOKEN",
    "DATA_API_EMAIL",
    "DATA_API_PASSWORD",
    "DATA_API_EJSON",
    "DATA_API_TIMEOUT_MS",
    "DATA_API_DEADLINE_MS",
];

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

impl Section for Settings {
    fn is_configured(&self) -> bool {
        !self.endpoint.is_empty()
    }

    fn check(&self, common: &Common<'_>, selected: bool) -> Result<(), ConfigError> {
        if !selected {
            return Ok(());
        }
        let ep = &self.endpoint;
        if !(ep.starts_with("http://") || ep.starts_with("https://")) {
            return Err(setting_error_in(
                ENV,
                "storage.data_api.endpoint",
                format!(
                    "`{}` must be an http:// or https:// URL (…/endpoint/data/v1)",
                    redact_url(ep)
                ),
            ));
        }
        if common.database.is_empty() {
            return Err(setting_error("storage.database", "must not be empty"));
        }
        Ok(())
    }

    fn bounds(&self) -> Vec<Bound> {
        vec![
            Bound::new(
                "storage.data_api.request_timeout_ms",
                self.request_timeout_ms,
                1,
                600_000,
                "milliseconds",
            ),
            Bound::new(
                "storage.data_api.deadline_ms",
                self.deadline_ms,
                1,
                3_600_000,
                "milliseconds",
            ),
        ]
    }

    fn secrets(&self) -> Vec<String> {
        [&self.api_key, &self.bearer_token, &self.password]
            .iter()
            .map(|s| s.expose().to_string())
            .collect()
    }
}

/// What the Data API backend is built from: its own settings and the database (shared with the
/// driver backend, `storage.database`).
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    pub settings: &'a Settings,
    pub database: &'a str,
}

impl<'a> From<&'a crate::storage::settings::Settings> for Params<'a> {
    fn from(s: &'a crate::storage::settings::Settings) -> Self {
        Params {
            settings: s
                .section::<Settings>()
                .expect("every registered backend's section is loaded"),
            database: &s.database,
        }
    }
}
