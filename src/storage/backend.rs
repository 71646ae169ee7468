//! What the rest of the daemon knows about one backend: a [`Backend`] descriptor, which each
//! backend folder defines once (`pub const DESCRIPTOR`) and the `backends!` list in `storage/mod.rs`
//! names. The configuration loader, `check-config`, "Apply Changes" and `storage::connect` only
//! ever go through these descriptors, so adding a backend is its folder plus one line in that list.
//!
//! A backend's folder holds its settings struct (implementing [`Section`]), its `default.toml`
//! (its `[storage.<name>]` section, documented like `config/default.toml`, with `# env:` comments)
//! and the environment variables that set it ([`Backend::env`]).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::StorageError;
use super::store::Storage;
use crate::config::env::EnvVar;
use crate::config::error::{Bound, ConfigError};

/// One storage backend, as the loader and `storage::connect` see it.
pub struct Backend {
    /// Its name in `STORAGE_BACKENDS` / `STORAGE_PRIMARY`, and its section `[storage.<name>]`.
    pub name: &'static str,
    /// Its `[storage.<name>]` section with the documented defaults (`include_str!("default.toml")`;
    /// empty for a backend without settings).
    pub defaults: &'static str,
    /// The environment variables that set its section.
    pub env: &'static [EnvVar],
    /// Those of [`Backend::env`] that an extension variable may set ("Apply Changes"): connection
    /// settings only, never what decides whether events are kept.
    pub platform_variables: &'static [&'static str],
    /// Whether it uses the common `storage.database` (a change of it then rebuilds it).
    pub uses_database: bool,
    /// Whether `STORAGE_BACKENDS=auto` picks it when its section [is configured](Section::is_configured).
    pub auto: bool,
    /// Reads its section from the layered configuration (`key` = `storage.<name>`).
    pub parse: fn(&config::Config, &str) -> Parsed,
    /// Builds it from its parsed section.
    pub open: fn(&dyn BackendSettings, &Common) -> BoxFuture<'static, Opened>,
}

/// What [`Backend::parse`] gives.
pub type Parsed = Result<Box<dyn BackendSettings>, config::ConfigError>;

/// What [`Backend::open`] gives.
pub type Opened = Result<Arc<dyn Storage>, StorageError>;

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Backend {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// How the document `_id` is derived (`storage.id_strategy`; see `config/default.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdStrategy {
    State,
    Task,
    Generated,
}

/// The storage settings every backend may use (`[storage]`): the database shared by the MongoDB
/// backends (the tutorial's `DB`) and the id strategy.
#[derive(Debug, Clone, Copy)]
pub struct Common<'a> {
    pub database: &'a str,
    pub id_strategy: IdStrategy,
}

/// A backend's own settings (`[storage.<name>]`): implemented by each backend's settings struct;
/// the loader reaches it through [`BackendSettings`].
pub trait Section:
    fmt::Debug + Clone + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// Whether enough is set for `STORAGE_BACKENDS=auto` to pick this backend.
    fn is_configured(&self) -> bool {
        false
    }
    /// Checks the types cannot express, naming the key and the accepted values; `selected`: whether
    /// the backend is in use (a backend that is not may lack its connection settings).
    fn check(&self, _common: &Common<'_>, _selected: bool) -> Result<(), ConfigError> {
        Ok(())
    }
    /// The range of each numeric setting (checked with every other range at load).
    fn bounds(&self) -> Vec<Bound> {
        Vec::new()
    }
    /// The secret values it holds (for the log scrubber).
    fn secrets(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The object-safe face of a [`Section`] (so the storage settings can hold any backend's).
pub trait BackendSettings: fmt::Debug + Send + Sync {
    fn is_configured(&self) -> bool;
    fn check(&self, common: &Common<'_>, selected: bool) -> Result<(), ConfigError>;
    fn bounds(&self) -> Vec<Bound>;
    fn secrets(&self) -> Vec<String>;
    /// The section as JSON, secrets redacted (`check-config`).
    fn redacted(&self) -> serde_json::Value;
    fn same_as(&self, other: &dyn BackendSettings) -> bool;
    fn clone_box(&self) -> Box<dyn BackendSettings>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Section> BackendSettings for T {
    fn is_configured(&self) -> bool {
        Section::is_configured(self)
    }
    fn check(&self, common: &Common<'_>, selected: bool) -> Result<(), ConfigError> {
        Section::check(self, common, selected)
    }
    fn bounds(&self) -> Vec<Bound> {
        Section::bounds(self)
    }
    fn secrets(&self) -> Vec<String> {
        Section::secrets(self)
    }
    fn redacted(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
    fn same_as(&self, other: &dyn BackendSettings) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
    fn clone_box(&self) -> Box<dyn BackendSettings> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Clone for Box<dyn BackendSettings> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

impl PartialEq for Box<dyn BackendSettings> {
    fn eq(&self, other: &Self) -> bool {
        self.same_as(other.as_ref())
    }
}

/// [`Backend::parse`] for a backend whose section is `T`.
pub fn parse<T: Section>(config: &config::Config, key: &str) -> Parsed {
    Ok(Box::new(config.get::<T>(key)?))
}

/// [`Backend::parse`] for a backend without settings.
pub fn no_settings(_config: &config::Config, _key: &str) -> Parsed {
    Ok(Box::new(NoSettings))
}

/// The section of a backend without settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
pub struct NoSettings;

impl Section for NoSettings {}

/// The section `T` of a backend, from the type-erased one [`Backend::open`] receives.
pub fn section<T: Section>(settings: &dyn BackendSettings) -> &T {
    settings
        .as_any()
        .downcast_ref::<T>()
        .expect("a backend's open receives its own section")
}
