//! Extension variables → storage settings: which variables are declared to the platform, which
//! storage key each sets, which are refused (see the module doc of `live`).

use crate::config::secret::Secret;
use crate::config::{Settings, ENV_VARS};
use crate::connect::protocol::VariableDecl;
use std::path::PathBuf;

/// The initial value declared for a secure variable: never the local secret (the platform would
/// store it and show it to every portal user). Empty, so that it never overrides the local value
/// when the platform sends it back unchanged.
pub const SECURE_PLACEHOLDER: &str = "";

/// The extension variables declared in `setup_request` (issue 3 / the tutorial), in order, with
/// their initial values taken from the local configuration — secure ones get
/// [`SECURE_PLACEHOLDER`].
pub fn declared_variables(settings: &Settings) -> Vec<VariableDecl> {
    let s = &settings.storage;
    let decl = |name: &str, value: &str, secure: bool| VariableDecl {
        name: name.to_string(),
        initial_value: if secure {
            SECURE_PLACEHOLDER.to_string()
        } else {
            value.to_string()
        },
        secure,
    };
    vec![
        decl("DATA_API_ENDPOINT", &s.data_api.endpoint, false),
        decl("API_KEY", "", true),
        decl("DB", &s.database, false),
        decl("HTTP_COLLECTION", &s.data_api.collection, false),
        decl("CLUSTER", &s.data_api.cluster, false),
        decl("DB_HOST", &s.driver.host, false),
        decl("DB_USER", &s.driver.user, false),
        decl("DB_PASSWORD", "", true),
        decl("DRIVER_COLLECTION", &s.driver.collection, false),
    ]
}

/// The extension variables that may change a storage setting (besides `API_KEY`, the Data API
/// key): the tutorial's and their documented extensions. Everything else named like a storage
/// environment variable is refused ([`refused_variable`]).
pub const EXTENSION_VARIABLES: &[&str] = &[
    "DATA_API_ENDPOINT",
    "DB",
    "HTTP_COLLECTION",
    "CLUSTER",
    "DB_HOST",
    "DB_USER",
    "DB_PASSWORD",
    "DRIVER_COLLECTION",
    "MONGODB_URI",
    "DATA_API_KEY",
    "DATA_API_BEARER_TOKEN",
    "DATA_API_EMAIL",
    "DATA_API_PASSWORD",
    "DATA_API_EJSON",
    "DATA_API_TIMEOUT_MS",
    "DATA_API_DEADLINE_MS",
    "DRIVER_WRITE_CONCERN",
    "DRIVER_SERVER_SELECTION_TIMEOUT_MS",
    "DRIVER_OPERATION_TIMEOUT_MS",
    "DRIVER_BATCH_MAX",
    "DRIVER_BATCH_WAIT_MS",
];

/// The settings key an extension variable overrides, if it may.
pub fn storage_key_for_variable(name: &str) -> Option<&'static str> {
    if name == "API_KEY" {
        return Some("storage.data_api.api_key");
    }
    if !EXTENSION_VARIABLES.contains(&name) {
        return None;
    }
    ENV_VARS
        .iter()
        .find(|v| v.name == name && v.key.starts_with("storage."))
        .map(|v| v.key)
}

/// A storage variable the platform may not set (`STORAGE_BACKENDS`, `LOCAL_DATA_DIR`, …).
pub fn refused_variable(name: &str) -> bool {
    storage_key_for_variable(name).is_none()
        && ENV_VARS
            .iter()
            .any(|v| v.name == name && v.key.starts_with("storage."))
}

pub(super) fn parse_num<T: std::str::FromStr>(value: &str) -> Result<T, String> {
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
