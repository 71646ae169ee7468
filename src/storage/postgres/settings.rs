//! The `postgres` backend's settings (`[storage.postgres]`, documented in `default.toml` beside
//! this file).

use serde::{Deserialize, Serialize};

use crate::config::env::{secret, var, EnvVar};
use crate::config::error::{setting_error_in, Bound, ConfigError};
use crate::config::secret::Secret;
use crate::storage::backend::{Common, Section};

/// The variables that set `[storage.postgres]`.
pub const ENV: &[EnvVar] = &[
    secret("POSTGRES_URL", "storage.postgres.url"),
    var("POSTGRES_TABLE", "storage.postgres.table"),
    var("POSTGRES_POOL_SIZE", "storage.postgres.pool_size"),
    var(
        "POSTGRES_CONNECT_TIMEOUT_MS",
        "storage.postgres.connect_timeout_ms",
    ),
    var(
        "POSTGRES_OPERATION_TIMEOUT_MS",
        "storage.postgres.operation_timeout_ms",
    ),
    var("POSTGRES_BATCH_MAX", "storage.postgres.batch_max"),
    var("POSTGRES_BATCH_WAIT_MS", "storage.postgres.batch_wait_ms"),
];

/// The variables the platform may set ("Apply Changes"): connection and tuning (the pool size
/// is the container's business: environment only). The URL itself is checked when the backend is
/// built (a bad one is a `Config` error naming POSTGRES_URL, the URL redacted).
pub const PLATFORM_VARIABLES: &[&str] = &[
    "POSTGRES_URL",
    "POSTGRES_TABLE",
    "POSTGRES_CONNECT_TIMEOUT_MS",
    "POSTGRES_OPERATION_TIMEOUT_MS",
    "POSTGRES_BATCH_MAX",
    "POSTGRES_BATCH_WAIT_MS",
];

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Settings {
    pub url: Secret,
    pub table: String,
    pub pool_size: usize,
    pub connect_timeout_ms: u64,
    pub operation_timeout_ms: u64,
    pub batch_max: usize,
    pub batch_wait_ms: u64,
}

/// Whether `name` is a table name this backend accepts: a plain, unquoted PostgreSQL identifier
/// (`[A-Za-z_][A-Za-z0-9_]*`, at most 48 bytes so that the index names derived from it fit in 63).
pub fn valid_table(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 48
}

impl Section for Settings {
    fn is_configured(&self) -> bool {
        !self.url.is_empty()
    }

    fn check(&self, _common: &Common<'_>, selected: bool) -> Result<(), ConfigError> {
        if !valid_table(&self.table) {
            return Err(setting_error_in(
                ENV,
                "storage.postgres.table",
                format!(
                    "`{}` is not accepted; accepted: a plain identifier (letters, digits, `_`; not starting with a digit; at most 48 characters)",
                    self.table
                ),
            ));
        }
        if selected && !self.is_configured() {
            return Err(setting_error_in(
                ENV,
                "storage.postgres.url",
                "the postgres backend is selected but POSTGRES_URL is not set",
            ));
        }
        Ok(())
    }

    fn bounds(&self) -> Vec<Bound> {
        vec![
            Bound::new(
                "storage.postgres.pool_size",
                self.pool_size as u64,
                1,
                1000,
                "connections",
            ),
            Bound::new(
                "storage.postgres.connect_timeout_ms",
                self.connect_timeout_ms,
                1,
                600_000,
                "milliseconds",
            ),
            Bound::new(
                "storage.postgres.operation_timeout_ms",
                self.operation_timeout_ms,
                1,
                3_600_000,
                "milliseconds",
            ),
            Bound::new(
                "storage.postgres.batch_max",
                self.batch_max as u64,
                1,
                10_000,
                "documents",
            ),
            Bound::new(
                "storage.postgres.batch_wait_ms",
                self.batch_wait_ms,
                0,
                10_000,
                "milliseconds",
            ),
        ]
    }

    fn secrets(&self) -> Vec<String> {
        let mut out = vec![self.url.expose().to_string()];
        if let Ok(parsed) = super::url::parse(self.url.expose()) {
            out.extend(parsed.secrets);
        }
        out
    }
}
