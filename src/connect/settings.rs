//! The Connect channel's settings (`[connect]`).

use serde::{Deserialize, Serialize};

use crate::config::error::{setting_error, split_list, ConfigError};
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
    /// The websocket channel runs only when both the platform key and the environment are known.
    pub fn enabled(&self) -> bool {
        !self.api_key.is_empty() && !self.environment_id.is_empty()
    }
    pub fn audience_list(&self) -> Vec<String> {
        split_list(&self.audience)
    }

    /// Syntax checks of the channel's own settings (called by `config::Settings::validate`).
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
