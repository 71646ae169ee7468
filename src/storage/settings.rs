//! The storage settings (`[storage]`): which backends, the id strategy, the database, and each
//! backend's own section (in the backend's folder).

use serde::{Deserialize, Serialize};

use super::data_api::settings::{Params as DataApiParams, Settings as DataApiSettings};
use super::driver::settings::{Params as DriverParams, Settings as DriverSettings};
use super::local::settings::Settings as LocalSettings;
use crate::config::error::{setting_error, split_list, ConfigError};
use crate::config::secret::redact_url;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdStrategy {
    State,
    Task,
    Generated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    Local,
    Driver,
    DataApi,
    /// `none`: answers every save as stored and keeps nothing — benchmarking only, never `auto`.
    Discard,
}

impl BackendKind {
    pub const ALL: [BackendKind; 4] = [Self::Local, Self::Driver, Self::DataApi, Self::Discard];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Driver => "driver",
            Self::DataApi => "data_api",
            Self::Discard => "none",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    /// Raw value of `storage.backends` ("auto" or a list); see [`Settings::backend_list`].
    pub backends: String,
    pub primary: String,
    pub id_strategy: IdStrategy,
    pub database: String,
    pub reschedule_countdown: u64,
    pub local: LocalSettings,
    pub driver: DriverSettings,
    pub data_api: DataApiSettings,
}

impl Settings {
    /// The backends every event is written to, resolved from `storage.backends`.
    pub fn backend_list(&self) -> Result<Vec<BackendKind>, ConfigError> {
        let raw = self.backends.trim();
        if raw.is_empty() || raw == "auto" {
            let mut list = Vec::new();
            if self.driver.is_configured() {
                list.push(BackendKind::Driver);
            }
            if self.data_api.is_configured() {
                list.push(BackendKind::DataApi);
            }
            if list.is_empty() {
                list.push(BackendKind::Local);
            }
            return Ok(list);
        }
        let mut list = Vec::new();
        for name in split_list(raw) {
            let kind = BackendKind::parse(&name).ok_or_else(|| {
                setting_error(
                    "storage.backends",
                    format!("unknown backend `{name}`; accepted: auto, or a comma-separated list of local, driver, data_api (or none, for benchmarks)"),
                )
            })?;
            if !list.contains(&kind) {
                list.push(kind);
            }
        }
        Ok(list)
    }

    /// The backend answering read-back.
    pub fn primary_backend(&self) -> Result<BackendKind, ConfigError> {
        let list = self.backend_list()?;
        if self.primary.trim().is_empty() {
            return Ok(list[0]);
        }
        let kind = BackendKind::parse(self.primary.trim()).ok_or_else(|| {
            setting_error(
                "storage.primary",
                format!(
                    "unknown backend `{}`; accepted: local, driver, data_api, none",
                    self.primary
                ),
            )
        })?;
        if !list.contains(&kind) {
            return Err(setting_error(
                "storage.primary",
                format!(
                    "`{}` is not among the configured backends ({})",
                    kind.as_str(),
                    list.iter()
                        .map(|b| b.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(kind)
    }
}

impl Settings {
    /// Cross-field checks of the storage settings (called by `config::Settings::validate`).
    pub fn check(&self) -> Result<(), ConfigError> {
        let backends = self.backend_list()?;
        self.primary_backend()?;
        if backends.contains(&BackendKind::Driver) && !self.driver.is_configured() {
            return Err(setting_error(
                "storage.driver.uri",
                "the driver backend is selected but neither MONGODB_URI nor DB_HOST is set",
            ));
        }
        if backends.contains(&BackendKind::Driver) && self.driver.uri.is_empty() {
            for (key, empty) in [
                ("storage.driver.user", self.driver.user.is_empty()),
                ("storage.driver.password", self.driver.password.is_empty()),
            ] {
                if empty {
                    return Err(setting_error(
                        key,
                        "required with DB_HOST (the URI is mongodb+srv://DB_USER:DB_PASSWORD@DB_HOST/); or set MONGODB_URI",
                    ));
                }
            }
        }
        let remote =
            backends.contains(&BackendKind::Driver) || backends.contains(&BackendKind::DataApi);
        if remote && self.database.is_empty() {
            return Err(setting_error("storage.database", "must not be empty"));
        }
        if backends.contains(&BackendKind::DataApi) {
            let ep = &self.data_api.endpoint;
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return Err(setting_error(
                    "storage.data_api.endpoint",
                    format!(
                        "`{}` must be an http:// or https:// URL (…/endpoint/data/v1)",
                        redact_url(ep)
                    ),
                ));
            }
        }
        let wc = self.driver.write_concern.as_str();
        if wc != "majority" && wc.parse::<u32>().is_err() {
            return Err(setting_error(
                "storage.driver.write_concern",
                format!(
                    "`{wc}` is not accepted; accepted: majority, or a number of nodes (e.g. 1)"
                ),
            ));
        }
        Ok(())
    }
}

impl AsRef<Settings> for Settings {
    fn as_ref(&self) -> &Settings {
        self
    }
}

impl<'a> From<&'a Settings> for DriverParams<'a> {
    fn from(s: &'a Settings) -> Self {
        DriverParams {
            settings: &s.driver,
            database: &s.database,
        }
    }
}

impl<'a> From<&'a Settings> for DataApiParams<'a> {
    fn from(s: &'a Settings) -> Self {
        DataApiParams {
            settings: &s.data_api,
            database: &s.database,
        }
    }
}
