//! Live configuration from the platform (`setup_response`, §4.3–§4.4, "Apply Changes").
//!
//! Merge rules are the runner's: the first response is stored whole; later ones replace a field
//! only when the new value is truthy (so nothing can be cleared and an empty `variables` list keeps
//! the old one). Event definitions are per channel and kept by the channel (first response only).
//!
//! **Extension variables → storage settings.** Only the storage *connection* settings may come
//! from the platform ([`extension_variables`]): the tutorial's nine (`DATA_API_ENDPOINT`, `API_KEY`,
//! `DB`, `HTTP_COLLECTION`, `CLUSTER`, `DB_HOST`, `DB_USER`, `DB_PASSWORD`, `DRIVER_COLLECTION`)
//! and their documented extensions (`MONGODB_URI`, the other `DATA_API_*` credentials and
//! timeouts, the `DRIVER_*` tuning). The extension variable `API_KEY` is the **Data API key** (as
//! in the tutorial), never the Connect key. What decides *whether and where* events are kept —
//! `STORAGE_BACKENDS`, `STORAGE_PRIMARY`, `LOCAL_DATA_DIR`, `ID_STRATEGY` (the idempotency key),
//! `RESCHEDULE_COUNTDOWN` — is refused with a WARN naming the variable (never its value), so the
//! platform can never switch storage off or to the discard backend. Empty values do not override.
//!
//! **Platform logging.** When the merged configuration carries a `logging_api_key` (and
//! `CONNECT_LOG_SHIP` is not `false`), [`LiveConfig::activate`] starts or retargets the log shipper
//! ([`crate::telemetry::ship`]) with the key, the runner's metadata fields and the `log_level` /
//! `runner_log_level` levels (default `INFO`; an unknown level name is refused with a WARN and the
//! previous one kept). The key is remembered by the scrubber before anything is shipped.
//!
//! When a setting of a *selected* backend changes, the backends are rebuilt (bounded by
//! [`super::Tuning::storage_rebuild_timeout`]) and swapped in ([`SharedStorage::replace`]); saves
//! already running finish on the old backend, which is closed once the last of them lets go of it.
//! A setting of a backend that is not selected (e.g. `HTTP_COLLECTION` when only the driver is)
//! triggers no rebuild.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::configuration::Configuration;
use super::protocol::{LoggingMeta, SetupResponse, Variable};
use crate::redact::Scrubber;
use crate::storage::settings::Fingerprint;
use crate::storage::SharedStorage;
use crate::telemetry::ship;
use tracing_subscriber::filter::LevelFilter;

mod variables;

pub use variables::{
    declared_variables, extension_variables, refused_variable, storage_key_for_variable,
    COMMON_PLATFORM_VARIABLES, SECURE_PLACEHOLDER,
};

/// What the built storage depends on ([`crate::storage::settings::Fingerprint`]): compared to
/// tell whether a rebuild is needed (a setting of an unselected backend never is).
type StorageFingerprint = Fingerprint;

/// How long a storage configuration that could not be built is not tried again (each attempt
/// holds a channel's set-up for up to the rebuild timeout).
const FAILED_REBUILD_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The installed storage and the last configuration that could not be built.
struct Applied {
    installed: StorageFingerprint,
    failed: Option<(StorageFingerprint, tokio::time::Instant)>,
}

/// The merged platform configuration (shared by both channels of this process).
#[derive(Debug, Clone, Default)]
pub struct Merged {
    pub received: bool,
    pub variables: Vec<Variable>,
    pub environment_type: Option<String>,
    pub logging_api_key: Option<String>,
    pub log_level: Option<String>,
    pub runner_log_level: Option<String>,
    pub meta: LoggingMeta,
}

impl Merged {
    /// Applies one `setup_response` with the runner's rules (§4.4).
    pub fn merge(&mut self, r: &SetupResponse) {
        let logging = r.logging.clone().unwrap_or_default();
        let meta = logging.meta.clone().unwrap_or_default();
        if !self.received {
            self.received = true;
            self.variables = r.variables.clone().unwrap_or_default();
            self.environment_type = r.environment_type.clone();
            self.logging_api_key = logging.logging_api_key;
            self.log_level = logging.log_level;
            self.runner_log_level = logging.runner_log_level;
            self.meta = meta;
            return;
        }
        fn truthy_str(new: &Option<String>, old: &mut Option<String>) {
            if new.as_deref().is_some_and(|s| !s.is_empty()) {
                *old = new.clone();
            }
        }
        if let Some(vars) = r.variables.as_ref().filter(|v| !v.is_empty()) {
            self.variables = vars.clone();
        }
        truthy_str(&r.environment_type, &mut self.environment_type);
        truthy_str(&logging.logging_api_key, &mut self.logging_api_key);
        truthy_str(&logging.log_level, &mut self.log_level);
        truthy_str(&logging.runner_log_level, &mut self.runner_log_level);
        truthy_str(&meta.service_id, &mut self.meta.service_id);
        truthy_str(&meta.hub_id, &mut self.meta.hub_id);
        truthy_str(&meta.account_id, &mut self.meta.account_id);
        truthy_str(&meta.account_name, &mut self.meta.account_name);
        truthy_str(&meta.repository_tag, &mut self.meta.repository_tag);
        if meta.products.as_ref().is_some_and(|p| !p.is_empty()) {
            self.meta.products = meta.products.clone();
        }
    }

    pub fn variable(&self, name: &str) -> Option<&str> {
        self.variables
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.value.as_deref())
    }
}

/// The process-wide live configuration and the storage it drives.
pub struct LiveConfig {
    base: Arc<dyn Configuration>,
    merged: Mutex<Merged>,
    storage: Arc<SharedStorage>,
    scrubber: Arc<Scrubber>,
    /// The storage fingerprint currently installed; the async lock serializes rebuilds.
    applied: tokio::sync::Mutex<Applied>,
    /// Refused variables already warned about (name and a hash of the value): one WARN per
    /// distinct refused setting, not one per channel and reconnect.
    refused_warned: Mutex<std::collections::HashSet<(String, u64)>>,
    /// Longest wait for a rebuild (connect + start-up check of the new backends).
    rebuild_timeout: Duration,
    /// The instance id the channels use (`INSTANCE_ID` or the derived one), for the log meta.
    instance_id: std::sync::OnceLock<String>,
    /// The platform log levels in force (extension, daemon), kept when a response omits one.
    log_levels: Mutex<(LevelFilter, LevelFilter)>,
}

impl LiveConfig {
    pub fn new(
        base: Arc<dyn Configuration>,
        storage: Arc<SharedStorage>,
        scrubber: Arc<Scrubber>,
        rebuild_timeout: Duration,
    ) -> Self {
        let applied = tokio::sync::Mutex::new(Applied {
            installed: base.storage().fingerprint(),
            failed: None,
        });
        Self {
            base,
            merged: Mutex::new(Merged::default()),
            storage,
            scrubber,
            applied,
            refused_warned: Mutex::new(Default::default()),
            rebuild_timeout,
            instance_id: std::sync::OnceLock::new(),
            log_levels: Mutex::new((LevelFilter::INFO, LevelFilter::INFO)),
        }
    }

    /// The instance id the channels connect with (shipped as the `instance_id` log field).
    /// Set once, by the service that derived it; later calls are ignored.
    pub fn set_instance_id(&self, instance_id: &str) {
        let _ = self.instance_id.set(instance_id.to_string());
    }

    pub fn snapshot(&self) -> Merged {
        self.merged.lock().expect("live config lock").clone()
    }

    pub fn service_id(&self) -> Option<String> {
        self.merged
            .lock()
            .expect("live config lock")
            .meta
            .service_id
            .clone()
    }

    /// The local settings with the platform's extension variables applied: one more layer of the
    /// configuration loader, holding the variables the platform may set. A variable whose value
    /// cannot be read is ignored with a WARN (never quoting a secret's value); the others apply.
    pub fn effective_settings(&self, merged: &Merged) -> Arc<dyn Configuration> {
        let mut layer: Vec<(&'static str, &str, bool)> = Vec::new();
        for var in &merged.variables {
            let Some(value) = var.value.as_deref().filter(|v| !v.is_empty()) else {
                continue;
            };
            let Some(key) = storage_key_for_variable(&var.name) else {
                if refused_variable(&var.name) && self.first_refusal(&var.name, value) {
                    tracing::warn!(
                        variable = %var.name,
                        "extension variable refused: only the storage connection settings may come from the platform (docs/connect.md); the local setting is kept"
                    );
                }
                continue;
            };
            layer.push((key, value, var.secure));
        }
        fn pairs<'a>(layer: &[(&'static str, &'a str, bool)]) -> Vec<(&'static str, &'a str)> {
            layer.iter().map(|(k, v, _)| (*k, *v)).collect()
        }
        if let Ok(s) = self.base.with_overrides(&pairs(&layer)) {
            return s;
        }
        // Some value cannot be read: keep the others, one variable at a time.
        let mut accepted: Vec<(&'static str, &str, bool)> = Vec::new();
        for entry in layer {
            accepted.push(entry);
            if let Err(e) = self.base.with_overrides(&pairs(&accepted)) {
                let (key, _, secure) = accepted.pop().expect("just pushed");
                let name = merged
                    .variables
                    .iter()
                    .find(|v| storage_key_for_variable(&v.name) == Some(key))
                    .map_or(key, |v| v.name.as_str());
                // The error quotes the value: never for a secret.
                if secure || variables::is_secret(key) {
                    tracing::warn!(variable = %name, "extension variable ignored: invalid value");
                } else {
                    tracing::warn!(variable = %name, error = %crate::sanitize::escape_control(&e.to_string()), "extension variable ignored");
                }
            }
        }
        self.base
            .with_overrides(&pairs(&accepted))
            .unwrap_or_else(|_| self.base.clone())
    }

    /// True the first time this refused variable is seen with this value.
    fn first_refusal(&self, name: &str, value: &str) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        value.hash(&mut h);
        self.refused_warned
            .lock()
            .expect("refused lock")
            .insert((name.to_string(), h.finish()))
    }

    /// Merges a `setup_response` and applies it: storage rebuilt when its settings changed.
    pub async fn apply(&self, channel: &str, response: &SetupResponse) {
        let merged = self.merge(response);
        self.activate(channel, merged).await;
    }

    /// The synchronous half of [`LiveConfig::apply`]: merge (in arrival order) and remember the
    /// new secrets for log scrubbing.
    pub fn merge(&self, response: &SetupResponse) -> Merged {
        let merged = {
            let mut m = self.merged.lock().expect("live config lock");
            m.merge(response);
            m.clone()
        };
        for v in merged.variables.iter().filter(|v| v.secure) {
            if let Some(value) = &v.value {
                self.scrubber.add(value);
            }
        }
        if let Some(k) = &merged.logging_api_key {
            self.scrubber.add(k);
        }
        merged
    }

    /// The asynchronous half: rebuild storage if needed, start or retarget platform logging,
    /// then log the update.
    pub async fn activate(&self, channel: &str, merged: Merged) {
        self.apply_storage().await;
        self.apply_logging(&merged);
        tracing::info!(
            channel,
            environment_type = merged.environment_type.as_deref().unwrap_or(""),
            service_id = merged.meta.service_id.as_deref().unwrap_or(""),
            "Extension configuration has been updated."
        );
    }

    /// Platform logging from the merged configuration (module docs).
    fn apply_logging(&self, merged: &Merged) {
        let t = self.base.telemetry();
        let Some(token) = merged
            .logging_api_key
            .as_deref()
            .filter(|k| !k.is_empty() && t.log_ship)
        else {
            return;
        };
        let (extension_level, runner_level) = {
            let mut guard = self.log_levels.lock().expect("log levels lock");
            let levels = &mut *guard;
            for (name, value, slot) in [
                ("log_level", &merged.log_level, &mut levels.0),
                ("runner_log_level", &merged.runner_log_level, &mut levels.1),
            ] {
                let Some(value) = value.as_deref().filter(|v| !v.is_empty()) else {
                    continue;
                };
                match ship::parse_level(value) {
                    Some(level) => *slot = level,
                    None => tracing::warn!(
                        setting = name,
                        value = %crate::sanitize::escaped_excerpt(value, 40),
                        "unknown platform log level (accepted: DEBUG, INFO, WARNING, ERROR, CRITICAL); the previous one is kept"
                    ),
                }
            }
            *levels
        };
        let c = self.base.connect();
        let instance_id = self
            .instance_id
            .get()
            .cloned()
            .unwrap_or_else(|| c.instance_id.clone());
        let text = |v: &Option<String>| v.clone().map_or(serde_json::Value::Null, Into::into);
        let mut meta = serde_json::Map::new();
        meta.insert("api_address".into(), c.api_address.clone().into());
        meta.insert("service_id".into(), text(&merged.meta.service_id));
        meta.insert("environment_id".into(), c.environment_id.clone().into());
        meta.insert("environment_type".into(), text(&merged.environment_type));
        meta.insert("instance_id".into(), instance_id.into());
        meta.insert("account_id".into(), text(&merged.meta.account_id));
        meta.insert("account_name".into(), text(&merged.meta.account_name));
        meta.insert("repository_tag".into(), text(&merged.meta.repository_tag));
        self.scrubber.add(token);
        ship::configure(ship::Destination {
            options: ship::ShipOptions {
                url: t.log_ship_url.clone(),
                queue: t.log_ship_queue,
                flush: Duration::from_millis(t.log_ship_flush_ms),
                timeout: Duration::from_millis(t.log_ship_timeout_ms),
            },
            token: token.to_string(),
            meta,
            extension_level,
            runner_level,
            scrubber: self.scrubber.clone(),
        });
    }

    async fn apply_storage(&self) {
        let mut applied = self.applied.lock().await;
        // Read the merged state under the rebuild lock, so concurrent updates apply in order.
        let settings = self.effective_settings(&self.snapshot());
        let wanted = settings.storage().fingerprint();
        if applied.installed == wanted {
            applied.failed = None;
            return;
        }
        if let Some((failed, at)) = &applied.failed {
            if *failed == wanted && at.elapsed() < FAILED_REBUILD_RETRY_AFTER {
                tracing::debug!("the storage the extension variables describe failed to build recently; keeping the current storage");
                return;
            }
        }
        if let Err(e) = settings.validate() {
            tracing::error!(error = %e, "extension variables give an invalid storage configuration; keeping the current storage");
            return;
        }
        let base_discards = self
            .base
            .storage()
            .fingerprint()
            .backends
            .iter()
            .any(|k| *k == "none");
        if wanted.backends.iter().any(|k| *k == "none") && !base_discards {
            tracing::warn!("extension variables would select the discard backend (`none`): refused; keeping the current storage");
            return;
        }
        let built = tokio::time::timeout(
            self.rebuild_timeout,
            crate::storage::connect(settings.storage()),
        )
        .await;
        match built {
            Ok(Ok(new)) => {
                let name = new.name();
                let old = self.storage.replace(new);
                applied.installed = wanted;
                applied.failed = None;
                tracing::info!(
                    backend = name,
                    previous = old.name(),
                    "storage rebuilt from extension variables; in-flight saves finish on the previous backend"
                );
                tokio::spawn(close_when_released(old));
            }
            Ok(Err(e)) => {
                applied.failed = Some((wanted, tokio::time::Instant::now()));
                tracing::error!(error = %e, "cannot build the storage the extension variables describe; keeping the current storage (tried again on the next configuration change, or after 5 minutes)")
            }
            Err(_) => {
                applied.failed = Some((wanted, tokio::time::Instant::now()));
                tracing::error!(
                    timeout_secs = self.rebuild_timeout.as_secs_f64(),
                    "building the storage the extension variables describe timed out; keeping the current storage (tried again on the next configuration change, or after 5 minutes)"
                )
            }
        }
    }
}

/// Closes a replaced backend once no event holds it any more (bounded wait, then closes anyway).
async fn close_when_released(old: Arc<dyn crate::storage::Storage>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while Arc::strong_count(&old) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if tokio::time::timeout(Duration::from_secs(60), old.close())
        .await
        .is_err()
    {
        tracing::warn!(
            backend = old.name(),
            "previous storage did not close within 60 s; dropped"
        );
        return;
    }
    tracing::debug!(backend = old.name(), "previous storage closed");
}

#[cfg(test)]
mod tests;
