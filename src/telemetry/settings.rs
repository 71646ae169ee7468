//! The telemetry settings (`[telemetry]`): the log format and the platform log shipping.

use crate::config::error::Bound;
use serde::{Deserialize, Serialize};

use crate::config::secret::serialize_url;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    pub log_format: LogFormat,
    /// Ship logs to the platform's log service when a `setup_response` carries a key.
    pub log_ship: bool,
    /// The log service's listener (base URL; the key goes into its query).
    #[serde(serialize_with = "serialize_url")]
    pub log_ship_url: String,
    pub log_ship_queue: usize,
    pub log_ship_flush_ms: u64,
    pub log_ship_timeout_ms: u64,
}

impl Settings {
    /// The range of each numeric `[telemetry]` setting (checked with all the others at load).
    pub fn bounds(&self) -> Vec<Bound> {
        vec![
            Bound::new(
                "telemetry.log_ship_queue",
                self.log_ship_queue as u64,
                1,
                1_000_000,
                "records",
            ),
            Bound::new(
                "telemetry.log_ship_flush_ms",
                self.log_ship_flush_ms,
                10,
                600_000,
                "milliseconds",
            ),
            Bound::new(
                "telemetry.log_ship_timeout_ms",
                self.log_ship_timeout_ms,
                100,
                600_000,
                "milliseconds",
            ),
        ]
    }
}
