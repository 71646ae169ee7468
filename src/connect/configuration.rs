//! What the channel needs of the whole configuration, as a trait the composition root
//! (`crate::settings::Settings`) implements: the channel's own section, the sections it reads
//! (storage, telemetry, shutdown), and "Apply Changes" — one more layer of the same loader
//! ([`Configuration::with_overrides`]). The channel never names the composition root, so no
//! import runs from here back up to it.

use std::sync::Arc;

use super::settings::Settings;
use crate::config::error::ConfigError;
use crate::shutdown::Settings as ShutdownSettings;
use crate::storage::settings::Settings as StorageSettings;
use crate::telemetry::settings::Settings as TelemetrySettings;

/// The whole configuration as the channel sees it.
pub trait Configuration: Send + Sync + 'static {
    /// `[connect]`.
    fn connect(&self) -> &Settings;
    /// `[storage]` (with every backend's section).
    fn storage(&self) -> &StorageSettings;
    /// `[telemetry]` (platform log shipping).
    fn telemetry(&self) -> &TelemetrySettings;
    /// `[shutdown]` (the drain's grace).
    fn shutdown(&self) -> &ShutdownSettings;
    /// These settings with one more layer on top: `overrides` (config key, value) — the
    /// extension variables of "Apply Changes". Not validated; an unreadable value is an error.
    fn with_overrides(
        &self,
        overrides: &[(&str, &str)],
    ) -> Result<Arc<dyn Configuration>, ConfigError>;
    /// Every check of a configuration at start-up.
    fn validate(&self) -> Result<(), ConfigError>;
}
