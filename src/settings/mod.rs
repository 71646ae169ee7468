//! The whole configuration: `config/default.toml` (embedded) < each backend's `default.toml` <
//! optional file < environment variables (< the extension variables of "Apply Changes").
//!
//! Each module owns its section (`http::Settings`, `storage::Settings` with each backend's own in
//! its folder, `events::settings`, `connect::settings`, `telemetry::settings`,
//! `shutdown::Settings`) and its syntax checks; this module composes them into
//! [`Settings`] and layers and loads them; the leaves every section uses (the variables, the
//! error, the secrets) are in `crate::config`. This module sits above every module it composes,
//! so no import runs back up; the Connect channel reaches it only through the
//! [`crate::connect::Configuration`] trait this module implements.
//!
//! Environment variables are mapped explicitly, one by one ([`crate::config::ENV_VARS`]), rather than through a
//! prefix convention, because the names are fixed by the tutorial (DATA_API_ENDPOINT, DB, …) and by
//! the Python runner (API_KEY, ENVIRONMENT_ID, …). The table is also the single place that says which
//! settings are secrets.
//!
//! Validation happens once, at start-up ([`Settings::validate`], also run by `check-config` and on
//! every storage rebuild from extension variables); every error names the variable, the key and
//! the accepted values, so a typo in a container's environment fails fast and clearly. Every
//! numeric setting has a range ([`Settings::bounds`]): no value can overflow a timer, a semaphore
//! or an allocation later.
//!
//! Secrets are `Secret`s, URLs that may carry credentials are shown only through
//! `crate::config::redact_url`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::env::{EnvVar, ENV_VARS};
use crate::config::error::{setting_error, setting_error_in, Bound, ConfigError};
use crate::config::DEFAULTS;
use crate::connect::settings::Settings as ConnectSettings;
use crate::events::settings::Settings as EventsSettings;
use crate::http::settings::Settings as HttpSettings;
use crate::shutdown::Settings as ShutdownSettings;
use crate::storage::settings::Settings as StorageSettings;
use crate::storage::BACKENDS;
use crate::telemetry::settings::Settings as TelemetrySettings;

/// The whole configuration: each section is owned by its module, which also checks its syntax;
/// this module layers and loads it, and holds the one table of numeric ranges ([`Settings::bounds`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    pub http: HttpSettings,
    pub storage: StorageSettings,
    pub events: EventsSettings,
    pub connect: ConnectSettings,
    pub telemetry: TelemetrySettings,
    pub shutdown: ShutdownSettings,
    /// The layers this was loaded from (defaults < file < environment), kept so that "Apply
    /// Changes" is one more layer over the same ([`Settings::with_overrides`]).
    #[serde(skip)]
    layers: Layers,
}

/// The layered configuration a [`Settings`] was loaded from (never shown: it holds secrets).
#[derive(Clone, Default)]
struct Layers(Option<std::sync::Arc<config::Config>>);

impl std::fmt::Debug for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Layers")
    }
}

/// Every environment variable the daemon reads: [`ENV_VARS`] and each backend's own
/// (`storage::BACKENDS`).
pub fn env_vars() -> impl Iterator<Item = &'static EnvVar> {
    ENV_VARS
        .iter()
        .chain(BACKENDS.iter().flat_map(|b| b.env.iter()))
}

/// The variable that overrides `key`, if any.
pub fn env_name_for(key: &str) -> Option<&'static str> {
    env_vars().find(|v| v.key == key).map(|v| v.name)
}

/// The whole documented configuration: `config/default.toml` then each backend's section (its
/// folder's `default.toml`), as the loader layers them.
pub fn reference_toml() -> String {
    let mut text = DEFAULTS.to_string();
    for b in BACKENDS.iter().filter(|b| !b.defaults.is_empty()) {
        text.push('\n');
        text.push_str(b.defaults);
    }
    text
}

impl AsRef<StorageSettings> for Settings {
    fn as_ref(&self) -> &StorageSettings {
        &self.storage
    }
}

impl<'a> From<&'a Settings> for crate::storage::driver::settings::Params<'a> {
    fn from(s: &'a Settings) -> Self {
        (&s.storage).into()
    }
}

impl<'a> From<&'a Settings> for crate::storage::data_api::settings::Params<'a> {
    fn from(s: &'a Settings) -> Self {
        (&s.storage).into()
    }
}

impl Settings {
    /// Loads the configuration from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with(file, |name| std::env::var(name).ok())
    }

    /// Loads with an injected environment (tests must not mutate the process environment).
    pub fn load_with(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        Self::build(Some(file), env)
    }

    /// The embedded defaults overridden by `vars` (environment-variable names and values) only —
    /// no configuration file, no process environment. For tests, benchmarks and tools.
    pub fn from_vars<K: AsRef<str>, V: AsRef<str>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Settings, ConfigError> {
        let map: BTreeMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
            .collect();
        Self::build(None, |name| map.get(name).cloned())
    }

    /// `file`: `None` = no file layer; `Some(None)` = `config/local.toml` when present;
    /// `Some(Some(path))` = that file, which must exist.
    fn build(
        file: Option<Option<&Path>>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        use config::{Config, File, FileFormat};
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        for b in BACKENDS.iter().filter(|b| !b.defaults.is_empty()) {
            builder = builder.add_source(File::from_str(b.defaults, FileFormat::Toml));
        }
        match file {
            None => {}
            Some(Some(path)) => {
                if !path.exists() {
                    return Err(ConfigError(format!(
                        "--config {}: no such file",
                        path.display()
                    )));
                }
                builder = builder.add_source(File::from(path).format(FileFormat::Toml));
            }
            Some(None) => {
                builder = builder.add_source(
                    File::with_name("config/local.toml")
                        .format(FileFormat::Toml)
                        .required(false),
                );
            }
        }
        for v in env_vars() {
            if let Some(value) = env(v.name).filter(|s| !s.is_empty()) {
                builder = builder
                    .set_override(v.key, value)
                    .map_err(|e| setting_error(v.key, e))?;
            }
        }
        let settings = Self::from_layers(builder)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Deserializes the layered configuration: every section, then every backend's.
    fn from_layers(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
    ) -> Result<Settings, ConfigError> {
        let built = builder.build().map_err(map_config_error)?;
        let mut settings: Settings = built.clone().try_deserialize().map_err(map_config_error)?;
        settings
            .storage
            .load_sections(BACKENDS, &built)
            .map_err(map_config_error)?;
        settings.layers = Layers(Some(std::sync::Arc::new(built)));
        Ok(settings)
    }

    /// These settings with one more layer on top: `overrides` (config key, value), as the
    /// extension variables of "Apply Changes" give them. Not validated (the caller decides what an
    /// invalid result means); an unreadable value is an error naming the variable.
    pub fn with_overrides(&self, overrides: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let Layers(Some(layers)) = &self.layers else {
            return Err(ConfigError(
                "these settings were not loaded by the configuration loader".into(),
            ));
        };
        let mut builder = config::Config::builder().add_source(layers.as_ref().clone());
        for (key, value) in overrides {
            builder = builder
                .set_override(*key, *value)
                .map_err(|e| setting_error(key, e))?;
        }
        Self::from_layers(builder)
    }

    /// Cross-field checks the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.http.listen.ip().is_loopback() && self.http.token.is_empty() {
            return Err(setting_error(
                "http.listen",
                format!(
                    "{} is not a loopback address, so HTTP_TOKEN must be set (POST /events would be open to the network)",
                    self.http.listen
                ),
            ));
        }
        self.check_bounds()?;
        crate::http::settings::check_settings(&self.http)?;
        self.storage.check()?;
        self.events.persist_rules()?;
        self.connect.check()?;
        Ok(())
    }

    /// Every numeric setting within its range (one table: [`Settings::bounds`]).
    fn check_bounds(&self) -> Result<(), ConfigError> {
        for b in self.bounds() {
            if b.value < b.min || b.value > b.max {
                return Err(setting_error_in(
                    &env_vars().copied().collect::<Vec<_>>(),
                    b.key,
                    format!(
                        "{} is out of range; accepted: a whole number between {} and {} ({}){}",
                        b.value,
                        b.min,
                        b.max,
                        b.unit,
                        if b.why.is_empty() {
                            String::new()
                        } else {
                            format!("; {}", b.why)
                        }
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The accepted range of every numeric setting: wide enough for any sane deployment, narrow
    /// enough that no value overflows a timer, a semaphore or an allocation. Each section lists
    /// its own (`bounds()` beside its settings); they are checked together here.
    pub fn bounds(&self) -> Vec<Bound> {
        let mut all = self.http.bounds();
        all.extend(self.storage.bounds());
        all.extend(self.connect.bounds());
        all.extend(self.telemetry.bounds());
        all.extend(self.shutdown.bounds());
        all
    }

    /// The effective configuration as TOML-like JSON, secrets redacted (for `check-config`).
    pub fn redacted_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("settings serialize")
    }

    /// Env names mapped to their (redacted) effective value; handy for docs and tests.
    pub fn env_view(&self) -> BTreeMap<&'static str, String> {
        let json = self.redacted_json();
        env_vars()
            .map(|v| {
                let mut cur = &json;
                for part in v.key.split('.') {
                    cur = &cur[part];
                }
                let shown = match cur {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (v.name, shown)
            })
            .collect()
    }
}

/// Rewrites the `config` crate's messages so they name the environment variable too.
fn map_config_error(e: config::ConfigError) -> ConfigError {
    let msg = e.to_string();
    // The crate reports `… for key \`a.b\`` (or "a.b"); find which of our keys it is.
    let mut best: Option<&EnvVar> = None;
    for v in env_vars() {
        if msg.contains(v.key) && best.is_none_or(|b| v.key.len() > b.key.len()) {
            best = Some(v);
        }
    }
    match best {
        Some(v) => {
            let hint = accepted_values(v.key)
                .map(|a| format!("; accepted: {a}"))
                .unwrap_or_default();
            ConfigError(format!("{} (config key `{}`): {msg}{hint}", v.name, v.key))
        }
        None => ConfigError(msg),
    }
}

/// What a key accepts, for error messages the deserializer alone would leave vague.
fn accepted_values(key: &str) -> Option<&'static str> {
    let defaults = toml::Value::Table(reference_toml().parse::<toml::Table>().ok()?);
    let mut cur = &defaults;
    for part in key.split('.') {
        cur = cur.get(part)?;
    }
    Some(match key {
        "storage.id_strategy" => "state, task, generated",
        "telemetry.log_format" => "text, json",
        "http.listen" => "an address with a port, e.g. 127.0.0.1:8080 or 0.0.0.0:8080",
        _ => match cur {
            toml::Value::Boolean(_) => "true, false",
            toml::Value::Integer(_) => "a whole number ≥ 0",
            _ => return None,
        },
    })
}

#[cfg(test)]
mod tests;

/// The channel's view of the whole configuration ([`crate::connect::Configuration`]).
impl crate::connect::Configuration for Settings {
    fn connect(&self) -> &ConnectSettings {
        &self.connect
    }
    fn storage(&self) -> &StorageSettings {
        &self.storage
    }
    fn telemetry(&self) -> &TelemetrySettings {
        &self.telemetry
    }
    fn shutdown(&self) -> &ShutdownSettings {
        &self.shutdown
    }
    fn with_overrides(
        &self,
        overrides: &[(&str, &str)],
    ) -> Result<std::sync::Arc<dyn crate::connect::Configuration>, ConfigError> {
        Ok(std::sync::Arc::new(Settings::with_overrides(
            self, overrides,
        )?))
    }
    fn validate(&self) -> Result<(), ConfigError> {
        Settings::validate(self)
    }
}
