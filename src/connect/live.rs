//! Live configuration from the platform (`setup_response`, §4.3–§4.4, "Apply Changes").
//!
//! Merge rules are the runner's: the first response is stored whole; later ones replace a field
//! only when the new value is truthy (so nothing can be cleared and an empty `variables` list keeps
//! the old one). Event definitions are per channel and kept by the channel (first response only).
//!
//! **Extension variables → storage settings.** A platform variable named like one of the storage
//! environment variables (`DATA_API_ENDPOINT`, `DB`, `HTTP_COLLECTION`, `CLUSTER`, `DB_HOST`,
//! `DB_USER`, `DB_PASSWORD`, `DRIVER_COLLECTION`, and any other `storage.*` variable of
//! [`crate::config::ENV_VARS`] such as `LOCAL_DATA_DIR` or `STORAGE_BACKENDS`) overrides the local
//! setting; the extension variable `API_KEY` is the **Data API key** (as in the tutorial), never the
//! Connect key. Empty values do not override. When the effective storage settings change, the
//! backends are rebuilt and swapped in ([`SharedStorage::replace`]); saves already running finish
//! on the old backend, which is closed once the last of them lets go of it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::protocol::{LoggingMeta, SetupResponse, Variable, VariableDecl};
use super::redact::Scrubber;
use crate::config::{DataApiSettings, DriverSettings, Secret, Settings, ENV_VARS};
use crate::storage::SharedStorage;

/// The extension variables declared in `setup_request` (issue 3 / the tutorial), in order, with
/// their initial values taken from the local configuration.
pub fn declared_variables(settings: &Settings) -> Vec<VariableDecl> {
    let s = &settings.storage;
    let decl = |name: &str, value: &str, secure: bool| VariableDecl {
        name: name.to_string(),
        initial_value: value.to_string(),
        secure,
    };
    vec![
        decl("DATA_API_ENDPOINT", &s.data_api.endpoint, false),
        decl("API_KEY", s.data_api.api_key.expose(), true),
        decl("DB", &s.database, false),
        decl("HTTP_COLLECTION", &s.data_api.collection, false),
        decl("CLUSTER", &s.data_api.cluster, false),
        decl("DB_HOST", &s.driver.host, false),
        decl("DB_USER", &s.driver.user, false),
        decl("DB_PASSWORD", s.driver.password.expose(), true),
        decl("DRIVER_COLLECTION", &s.driver.collection, false),
    ]
}

/// The settings key an extension variable overrides, if any.
pub fn storage_key_for_variable(name: &str) -> Option<&'static str> {
    if name == "API_KEY" {
        return Some("storage.data_api.api_key");
    }
    ENV_VARS
        .iter()
        .find(|v| v.name == name && v.key.starts_with("storage."))
        .map(|v| v.key)
}

fn parse_num<T: std::str::FromStr>(value: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("`{value}` is not a whole number"))
}

/// Sets one `storage.*` key from a string, as an environment variable would.
pub fn set_storage_key(settings: &mut Settings, key: &str, value: &str) -> Result<(), String> {
    let s = &mut settings.storage;
    let v = value.to_string();
    match key {
        "storage.backends" => s.backends = v,
        "storage.primary" => s.primary = v,
        "storage.id_strategy" => {
            s.id_strategy = serde_json::from_value(serde_json::Value::String(v))
                .map_err(|_| format!("`{value}`: accepted: state, task, generated"))?
        }
        "storage.database" => s.database = v,
        "storage.reschedule_countdown" => s.reschedule_countdown = parse_num(value)?,
        "storage.local.path" => s.local.path = PathBuf::from(v),
        "storage.driver.uri" => s.driver.uri = Secret::new(v),
        "storage.driver.host" => s.driver.host = v,
        "storage.driver.user" => s.driver.user = v,
        "storage.driver.password" => s.driver.password = Secret::new(v),
        "storage.driver.collection" => s.driver.collection = v,
        "storage.driver.write_concern" => s.driver.write_concern = v,
        "storage.driver.server_selection_timeout_ms" => {
            s.driver.server_selection_timeout_ms = parse_num(value)?
        }
        "storage.driver.batch_max" => s.driver.batch_max = parse_num(value)?,
        "storage.driver.batch_wait_ms" => s.driver.batch_wait_ms = parse_num(value)?,
        "storage.driver.operation_timeout_ms" => s.driver.operation_timeout_ms = parse_num(value)?,
        "storage.data_api.endpoint" => s.data_api.endpoint = v,
        "storage.data_api.api_key" => s.data_api.api_key = Secret::new(v),
        "storage.data_api.bearer_token" => s.data_api.bearer_token = Secret::new(v),
        "storage.data_api.email" => s.data_api.email = v,
        "storage.data_api.password" => s.data_api.password = Secret::new(v),
        "storage.data_api.cluster" => s.data_api.cluster = v,
        "storage.data_api.collection" => s.data_api.collection = v,
        "storage.data_api.ejson" => {
            s.data_api.ejson = matches!(value.trim(), "true" | "1" | "yes" | "True")
        }
        "storage.data_api.request_timeout_ms" => s.data_api.request_timeout_ms = parse_num(value)?,
        "storage.data_api.deadline_ms" => s.data_api.deadline_ms = parse_num(value)?,
        other => {
            return Err(format!(
                "`{other}` cannot be set from an extension variable"
            ))
        }
    }
    Ok(())
}

/// What decides which backends are built: compared to tell whether a rebuild is needed.
#[derive(Debug, Clone, PartialEq)]
struct StorageFingerprint {
    backends: String,
    primary: String,
    database: String,
    local_path: PathBuf,
    driver: DriverSettings,
    data_api: DataApiSettings,
}

impl StorageFingerprint {
    fn of(s: &Settings) -> Self {
        Self {
            backends: s.storage.backends.clone(),
            primary: s.storage.primary.clone(),
            database: s.storage.database.clone(),
            local_path: s.storage.local.path.clone(),
            driver: s.storage.driver.clone(),
            data_api: s.storage.data_api.clone(),
        }
    }
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
    base: Settings,
    merged: Mutex<Merged>,
    storage: Arc<SharedStorage>,
    scrubber: Arc<Scrubber>,
    /// The storage fingerprint currently installed; the async lock serializes rebuilds.
    applied: tokio::sync::Mutex<StorageFingerprint>,
}

impl LiveConfig {
    pub fn new(base: Settings, storage: Arc<SharedStorage>, scrubber: Arc<Scrubber>) -> Self {
        let applied = tokio::sync::Mutex::new(StorageFingerprint::of(&base));
        Self {
            base,
            merged: Mutex::new(Merged::default()),
            storage,
            scrubber,
            applied,
        }
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

    /// The local settings with the platform's extension variables applied.
    pub fn effective_settings(&self, merged: &Merged) -> Settings {
        let mut s = self.base.clone();
        for var in &merged.variables {
            let Some(value) = var.value.as_deref().filter(|v| !v.is_empty()) else {
                continue;
            };
            let Some(key) = storage_key_for_variable(&var.name) else {
                continue;
            };
            if let Err(e) = set_storage_key(&mut s, key, value) {
                tracing::warn!(variable = %var.name, error = %e, "extension variable ignored");
            }
        }
        s
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

    /// The asynchronous half: rebuild storage if needed, then log the update.
    pub async fn activate(&self, channel: &str, merged: Merged) {
        self.apply_storage().await;
        tracing::info!(
            channel,
            environment_type = merged.environment_type.as_deref().unwrap_or(""),
            service_id = merged.meta.service_id.as_deref().unwrap_or(""),
            "Extension configuration has been updated."
        );
    }

    async fn apply_storage(&self) {
        let mut applied = self.applied.lock().await;
        // Read the merged state under the rebuild lock, so concurrent updates apply in order.
        let settings = self.effective_settings(&self.snapshot());
        let wanted = StorageFingerprint::of(&settings);
        if *applied == wanted {
            return;
        }
        if let Err(e) = settings.validate() {
            tracing::error!(error = %e, "extension variables give an invalid storage configuration; keeping the current storage");
            return;
        }
        match crate::storage::connect(&settings).await {
            Ok(new) => {
                let name = new.name();
                let old = self.storage.replace(new);
                *applied = wanted;
                tracing::info!(
                    backend = name,
                    previous = old.name(),
                    "storage rebuilt from extension variables; in-flight saves finish on the previous backend"
                );
                tokio::spawn(close_when_released(old));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot build the storage the extension variables describe; keeping the current storage (will try again on the next configuration update)")
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
    old.close().await;
    tracing::debug!(backend = old.name(), "previous storage closed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::protocol::{Logging, Variable};

    fn var(name: &str, value: &str) -> Variable {
        Variable {
            name: name.into(),
            value: Some(value.into()),
            secure: false,
        }
    }

    fn resp(vars: Vec<Variable>, service: Option<&str>) -> SetupResponse {
        SetupResponse {
            variables: Some(vars),
            logging: Some(Logging {
                meta: Some(LoggingMeta {
                    service_id: service.map(String::from),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn merge_follows_runner_rules() {
        let mut m = Merged::default();
        m.merge(&resp(vec![var("A", "1"), var("B", "2")], Some("SRVC-1")));
        assert_eq!(m.variable("A"), Some("1"));
        // empty list keeps the old one; null service id keeps the old one
        m.merge(&resp(vec![], None));
        assert_eq!(m.variable("B"), Some("2"));
        assert_eq!(m.meta.service_id.as_deref(), Some("SRVC-1"));
        // non-empty list replaces wholesale
        m.merge(&resp(vec![var("A", "3")], Some("SRVC-2")));
        assert_eq!(m.variable("A"), Some("3"));
        assert_eq!(m.variable("B"), None);
        assert_eq!(m.meta.service_id.as_deref(), Some("SRVC-2"));
    }

    #[test]
    fn variables_map_to_storage_keys() {
        assert_eq!(
            storage_key_for_variable("API_KEY"),
            Some("storage.data_api.api_key")
        );
        assert_eq!(storage_key_for_variable("DB"), Some("storage.database"));
        assert_eq!(
            storage_key_for_variable("HTTP_COLLECTION"),
            Some("storage.data_api.collection")
        );
        assert_eq!(
            storage_key_for_variable("LOCAL_DATA_DIR"),
            Some("storage.local.path")
        );
        assert_eq!(storage_key_for_variable("ENVIRONMENT_ID"), None);
        assert_eq!(storage_key_for_variable("GREETING"), None);
        // every storage.* env var can be set
        let mut s = Settings::load_with(None, |_| None).unwrap();
        for v in ENV_VARS.iter().filter(|v| v.key.starts_with("storage.")) {
            let value = if v.key.ends_with("_ms")
                || v.key.ends_with("batch_max")
                || v.key.ends_with("countdown")
            {
                "40"
            } else if v.key.ends_with("id_strategy") {
                "task"
            } else {
                "x"
            };
            set_storage_key(&mut s, v.key, value).unwrap_or_else(|e| panic!("{}: {e}", v.key));
        }
    }
}
