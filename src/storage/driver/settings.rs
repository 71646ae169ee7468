//! The `driver` backend's settings (`[storage.driver]`, documented in `default.toml` beside this
//! file).

use serde::{Deserialize, Serialize};

use crate::config::env::{secret, var, EnvVar};
use crate::config::error::{setting_error_in, Bound, ConfigError};
use crate::config::secret::Secret;
use crate::storage::backend::{Common, Section};

/// The variables that set `[storage.driver]`.
pub const ENV: &[EnvVar] = &[
    secret("MONGODB_URI", "storage.driver.uri"),
    var("DB_HOST", "storage.driver.host"),
    var("DB_USER", "storage.driver.user"),
    secret("DB_PASSWORD", "storage.driver.password"),
    var("DRIVER_COLLECTION", "storage.driver.collection"),
    var("DRIVER_WRITE_CONCERN", "storage.driver.write_concern"),
    var(
        "DRIVER_SERVER_SELECTION_TIMEOUT_MS",
        "storage.driver.server_selection_timeout_ms",
    ),
    var("DRIVER_BATCH_MAX", "storage.driver.batch_max"),
    var("DRIVER_BATCH_WAIT_MS", "storage.driver.batch_wait_ms"),
    var(
        "DRIVER_OPERATION_TIMEOUT_MS",
        "storage.driver.operation_timeout_ms",
    ),
];

/// The variables the platform may set ("Apply Changes"): all of them (connection and tuning).
pub const PLATFORM_VARIABLES: &[&str] = &[
    "DB_HOST",
    "DB_USER",
    "DB_PASSWORD",
    "DRIVER_COLLECTION",
    "MONGODB_URI",
    "DRIVER_WRITE_CONCERN",
    "DRIVER_SERVER_SELECTION_TIMEOUT_MS",
    "DRIVER_OPERATION_TIMEOUT_MS",
    "DRIVER_BATCH_MAX",
    "DRIVER_BATCH_WAIT_MS",
];

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

impl Section for Settings {
    fn is_configured(&self) -> bool {
        !self.uri.is_empty() || !self.host.is_empty()
    }

    fn check(&self, common: &Common<'_>, selected: bool) -> Result<(), ConfigError> {
        let err = |key, message: &str| setting_error_in(ENV, key, message);
        let wc = self.write_concern.as_str();
        if wc != "majority" && wc.parse::<u32>().is_err() {
            return Err(setting_error_in(
                ENV,
                "storage.driver.write_concern",
                format!(
                    "`{wc}` is not accepted; accepted: majority, or a number of nodes (e.g. 1)"
                ),
            ));
        }
        if !selected {
            return Ok(());
        }
        if !self.is_configured() {
            return Err(err(
                "storage.driver.uri",
                "the driver backend is selected but neither MONGODB_URI nor DB_HOST is set",
            ));
        }
        if self.uri.is_empty() {
            for (key, empty) in [
                ("storage.driver.user", self.user.is_empty()),
                ("storage.driver.password", self.password.is_empty()),
            ] {
                if empty {
                    return Err(err(
                        key,
                        "required with DB_HOST (the URI is mongodb+srv://DB_USER:DB_PASSWORD@DB_HOST/); or set MONGODB_URI",
                    ));
                }
            }
        }
        if common.database.is_empty() {
            return Err(crate::config::error::setting_error(
                "storage.database",
                "must not be empty",
            ));
        }
        Ok(())
    }

    fn bounds(&self) -> Vec<Bound> {
        vec![
            Bound::new(
                "storage.driver.server_selection_timeout_ms",
                self.server_selection_timeout_ms,
                1,
                600_000,
                "milliseconds",
            ),
            Bound::new(
                "storage.driver.batch_max",
                self.batch_max as u64,
                1,
                100_000,
                "documents",
            ),
            Bound::new(
                "storage.driver.batch_wait_ms",
                self.batch_wait_ms,
                0,
                10_000,
                "milliseconds",
            ),
            Bound::new(
                "storage.driver.operation_timeout_ms",
                self.operation_timeout_ms,
                1,
                3_600_000,
                "milliseconds",
            ),
        ]
    }

    fn secrets(&self) -> Vec<String> {
        vec![
            self.uri.expose().to_string(),
            self.password.expose().to_string(),
        ]
    }
}

/// What the driver backend is built from: its own settings and the database (shared with the
/// Data API backend, `storage.database`).
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
