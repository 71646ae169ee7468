//! The storage settings (`[storage]`): which backends, the id strategy, the database, and each
//! backend's own section — parsed by that backend ([`super::backend::Backend::parse`]) and held
//! here type-erased, in the order of the `backends!` list.

use std::fmt;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};

pub use super::backend::IdStrategy;
use super::backend::{Backend, BackendSettings, Common};
use crate::config::error::{join, setting_error, split_list, Bound, ConfigError};

/// One backend, by its descriptor (compared by name).
#[derive(Clone, Copy, PartialEq)]
pub struct BackendKind(pub &'static Backend);

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        self.0.name
    }
}

impl fmt::Debug for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name)
    }
}

impl PartialEq<&str> for BackendKind {
    fn eq(&self, other: &&str) -> bool {
        self.0.name == *other
    }
}

#[derive(Clone, Deserialize)]
pub struct Settings {
    /// Raw value of `storage.backends` ("auto" or a list), resolved at load into
    /// [`Settings::backend_list`].
    pub backends: String,
    pub primary: String,
    pub id_strategy: IdStrategy,
    pub database: String,
    pub reschedule_countdown: u64,
    /// Every registered backend's section, in registry order (filled by [`Settings::load_sections`]).
    #[serde(skip)]
    sections: Vec<(BackendKind, Box<dyn BackendSettings>)>,
    /// `backends` resolved (filled by [`Settings::load_sections`]).
    #[serde(skip)]
    selected: Vec<BackendKind>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("StorageSettings");
        d.field("backends", &self.backends)
            .field("primary", &self.primary)
            .field("id_strategy", &self.id_strategy)
            .field("database", &self.database)
            .field("reschedule_countdown", &self.reschedule_countdown);
        for (kind, section) in &self.sections {
            d.field(kind.as_str(), section);
        }
        d.finish()
    }
}

/// `check-config`'s view: the common keys, then each backend's section (secrets redacted).
impl Serialize for Settings {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("backends", &self.backends)?;
        map.serialize_entry("primary", &self.primary)?;
        map.serialize_entry("id_strategy", &self.id_strategy)?;
        map.serialize_entry("database", &self.database)?;
        map.serialize_entry("reschedule_countdown", &self.reschedule_countdown)?;
        for (kind, section) in &self.sections {
            if kind.0.defaults.is_empty() {
                continue;
            }
            map.serialize_entry(kind.as_str(), &section.redacted())?;
        }
        map.end()
    }
}

impl Settings {
    /// Parses every registered backend's section from the layered configuration and resolves
    /// `backends` / `primary` (called once by the loader).
    pub fn load_sections(
        &mut self,
        registry: &[&'static Backend],
        config: &config::Config,
    ) -> Result<(), config::ConfigError> {
        self.sections = registry
            .iter()
            .map(|b| {
                Ok((
                    BackendKind(b),
                    (b.parse)(config, &format!("storage.{}", b.name))?,
                ))
            })
            .collect::<Result<_, config::ConfigError>>()?;
        self.selected = self.resolve_backends().unwrap_or_default();
        Ok(())
    }

    /// What every backend may use.
    pub fn common(&self) -> Common<'_> {
        Common {
            database: &self.database,
            id_strategy: self.id_strategy,
        }
    }

    /// The section of backend `T` (`None` when `T` is not a registered backend's section).
    pub fn section<T: 'static>(&self) -> Option<&T> {
        self.sections
            .iter()
            .find_map(|(_, s)| s.as_any().downcast_ref::<T>())
    }

    /// The section of backend `T`, to change it (tests, tools).
    pub fn section_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.sections
            .iter_mut()
            .find_map(|(_, s)| s.as_any_mut().downcast_mut::<T>())
    }

    /// The section of the backend named `name`.
    pub fn section_of(&self, name: &str) -> Option<&dyn BackendSettings> {
        self.sections
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, s)| s.as_ref())
    }

    /// The backends every event is written to (resolved at load).
    pub fn backend_list(&self) -> Result<Vec<BackendKind>, ConfigError> {
        if self.selected.is_empty() {
            return self.resolve_backends();
        }
        Ok(self.selected.clone())
    }

    fn registered(&self) -> impl Iterator<Item = BackendKind> + '_ {
        self.sections.iter().map(|(k, _)| *k)
    }

    fn by_name(&self, name: &str) -> Option<BackendKind> {
        self.registered().find(|k| k.as_str() == name)
    }

    /// The registered names; without `none` (the benchmark-only discard) unless `with_none`.
    fn names(&self, with_none: bool) -> String {
        join(
            &self
                .registered()
                .filter(|k| with_none || *k != "none")
                .map(|k| k.as_str())
                .collect::<Vec<_>>(),
        )
    }

    fn resolve_backends(&self) -> Result<Vec<BackendKind>, ConfigError> {
        let raw = self.backends.trim();
        if raw.is_empty() || raw == "auto" {
            let mut list: Vec<BackendKind> = self
                .sections
                .iter()
                .filter(|(k, s)| k.0.auto && s.is_configured())
                .map(|(k, _)| *k)
                .collect();
            if list.is_empty() {
                list.extend(self.by_name("local"));
            }
            return Ok(list);
        }
        let mut list = Vec::new();
        for name in split_list(raw) {
            let kind = self.by_name(&name).ok_or_else(|| {
                setting_error(
                    "storage.backends",
                    format!(
                        "unknown backend `{name}`; accepted: auto, or a comma-separated list of {} (or none, for benchmarks)",
                        self.names(false)
                    ),
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
        let Some(first) = list.first().copied() else {
            return Err(setting_error("storage.backends", "no backend selected"));
        };
        if self.primary.trim().is_empty() {
            return Ok(first);
        }
        let kind = self.by_name(self.primary.trim()).ok_or_else(|| {
            setting_error(
                "storage.primary",
                format!(
                    "unknown backend `{}`; accepted: {}",
                    self.primary,
                    self.names(true)
                ),
            )
        })?;
        if !list.contains(&kind) {
            return Err(setting_error(
                "storage.primary",
                format!(
                    "`{}` is not among the configured backends ({})",
                    kind.as_str(),
                    join(&list.iter().map(|b| b.as_str()).collect::<Vec<_>>())
                ),
            ));
        }
        Ok(kind)
    }

    /// Checks of the storage settings (called by `settings::Settings::validate`): the backend list,
    /// the primary, and each backend's own checks.
    pub fn check(&self) -> Result<(), ConfigError> {
        let backends = self.resolve_backends()?;
        self.primary_backend()?;
        let common = self.common();
        for (kind, section) in &self.sections {
            section.check(&common, backends.contains(kind))?;
        }
        Ok(())
    }

    /// The range of `storage.reschedule_countdown` and of every backend's numbers.
    pub fn bounds(&self) -> Vec<Bound> {
        let common = vec![Bound::new(
            "storage.reschedule_countdown",
            self.reschedule_countdown,
            30,
            86_400,
            "seconds",
        )
        .why("30 is the platform's minimum")];
        common
            .into_iter()
            .chain(self.sections.iter().flat_map(|(_, s)| s.bounds()))
            .collect()
    }

    /// Every secret value the backends' sections hold (for the log scrubber).
    pub fn secrets(&self) -> Vec<String> {
        self.sections
            .iter()
            .flat_map(|(_, s)| s.secrets())
            .collect()
    }

    /// What the built storage depends on: the selected backends, the primary, the common settings
    /// when a selected backend uses them, and the sections of the selected backends only —
    /// compared to tell whether "Apply Changes" needs a rebuild.
    pub fn fingerprint(&self) -> Fingerprint {
        let backends = self.backend_list().unwrap_or_default();
        Fingerprint {
            primary: self.primary_backend().ok(),
            database: backends
                .iter()
                .any(|k| k.0.uses_database)
                .then(|| self.database.clone()),
            id_strategy: self.id_strategy,
            sections: self
                .sections
                .iter()
                .filter(|(k, _)| backends.contains(k))
                .map(|(k, s)| (*k, s.clone()))
                .collect(),
            backends,
        }
    }
}

/// See [`Settings::fingerprint`].
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    pub backends: Vec<BackendKind>,
    primary: Option<BackendKind>,
    database: Option<String>,
    id_strategy: IdStrategy,
    sections: Vec<(BackendKind, Box<dyn BackendSettings>)>,
}

impl AsRef<Settings> for Settings {
    fn as_ref(&self) -> &Settings {
        self
    }
}
