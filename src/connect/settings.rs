//! The Connect channel's settings (`[connect]`).

use serde::{Deserialize, Serialize};

use crate::config::error::{setting_error, split_list, Bound, ConfigError};
use crate::config::secret::Secret;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    pub api_key: Secret,
    pub environment_id: String,
    pub instance_id: String,
    pub server_address: String,
    pub api_address: String,
    pub insecure: bool,
    pub background_task_max_execution_time: u64,
    pub interactive_task_max_execution_time: u64,
    pub setup_timeout: u64,
    pub max_in_flight: usize,
    pub rest_concurrency: usize,
    pub max_frame_bytes: usize,
    pub ping_interval: u64,
    pub result_buffer: usize,
    pub result_buffer_bytes: usize,
    pub persist_interactive: bool,
    pub runner_version: String,
    pub audience: String,
    pub readme_url: String,
    pub changelog_url: String,
}

impl Settings {
    /// The range of each numeric `[connect]` setting (checked with all the others at load).
    pub fn bounds(&self) -> Vec<Bound> {
        const MIB: u64 = 1024 * 1024;
        let n = |v: usize| v as u64;
        let b = Bound::new;
        vec![
            b(
                "connect.background_task_max_execution_time",
                self.background_task_max_execution_time,
                1,
                86_400,
                "seconds",
            ),
            b(
                "connect.interactive_task_max_execution_time",
                self.interactive_task_max_execution_time,
                1,
                86_400,
                "seconds",
            ),
            b(
                "connect.setup_timeout",
                self.setup_timeout,
                1,
                3_600,
                "seconds",
            ),
            b(
                "connect.max_in_flight",
                n(self.max_in_flight),
                1,
                100_000,
                "tasks",
            ),
            b(
                "connect.rest_concurrency",
                n(self.rest_concurrency),
                1,
                4_096,
                "requests",
            ),
            b(
                "connect.max_frame_bytes",
                n(self.max_frame_bytes),
                2 * MIB,
                256 * MIB,
                "bytes",
            )
            .why("at least 2 MiB, the platform's assumption"),
            b(
                "connect.ping_interval",
                self.ping_interval,
                1,
                3_600,
                "seconds",
            ),
            b(
                "connect.result_buffer",
                n(self.result_buffer),
                1,
                10_000_000,
                "results",
            ),
            b(
                "connect.result_buffer_bytes",
                n(self.result_buffer_bytes),
                1024,
                16 * 1024 * MIB,
                "bytes",
            ),
        ]
    }

    /// The websocket channel runs only when both the platform key and the environment are known.
    pub fn enabled(&self) -> bool {
        !self.api_key.is_empty() && !self.environment_id.is_empty()
    }
    pub fn audience_list(&self) -> Vec<String> {
        split_list(&self.audience)
    }

    /// Syntax checks of the channel's own settings (called by `settings::Settings::validate`).
    pub fn check(&self) -> Result<(), ConfigError> {
        for a in self.audience_list() {
            if !["vendor", "distributor", "reseller"].contains(&a.as_str()) {
                return Err(setting_error(
                    "connect.audience",
                    format!("`{a}` is not accepted; accepted: vendor, distributor, reseller"),
                ));
            }
        }
        Ok(())
    }
}
