//! Extension variables → storage settings: which variables are declared to the platform, which
//! storage key each sets, which are refused (see the module doc of `live`).

use crate::config::env::{EnvVar, ENV_VARS};
use crate::connect::protocol::VariableDecl;
use crate::storage::data_api::settings::Settings as DataApiSettings;
use crate::storage::driver::settings::Settings as DriverSettings;
use crate::storage::settings::Settings as StorageSettings;
use crate::storage::BACKENDS;

/// The initial value declared for a secure variable: never the local secret (the platform would
/// store it and show it to every portal user). Empty, so that it never overrides the local value
/// when the platform sends it back unchanged.
pub const SECURE_PLACEHOLDER: &str = "";

/// The extension variables declared in `setup_request` (issue 3 / the tutorial), in order, with
/// their initial values taken from the local configuration — secure ones get
/// [`SECURE_PLACEHOLDER`].
pub fn declared_variables(s: &StorageSettings) -> Vec<VariableDecl> {
    let data_api = s.section::<DataApiSettings>();
    let driver = s.section::<DriverSettings>();
    let text = |v: Option<&String>| v.map(String::as_str).unwrap_or("").to_string();
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
        decl(
            "DATA_API_ENDPOINT",
            &text(data_api.map(|d| &d.endpoint)),
            false,
        ),
        decl("API_KEY", "", true),
        decl("DB", &s.database, false),
        decl(
            "HTTP_COLLECTION",
            &text(data_api.map(|d| &d.collection)),
            false,
        ),
        decl("CLUSTER", &text(data_api.map(|d| &d.cluster)), false),
        decl("DB_HOST", &text(driver.map(|d| &d.host)), false),
        decl("DB_USER", &text(driver.map(|d| &d.user)), false),
        decl("DB_PASSWORD", "", true),
        decl(
            "DRIVER_COLLECTION",
            &text(driver.map(|d| &d.collection)),
            false,
        ),
    ]
}

/// The common storage variables the platform may set (each backend lists its own:
/// `Backend::platform_variables`).
pub const COMMON_PLATFORM_VARIABLES: &[&str] = &["DB"];

/// The extension variables that may change a storage setting (besides `API_KEY`, the Data API
/// key): the common ones and every backend's connection settings. Everything else named like a
/// storage environment variable is refused ([`refused_variable`]).
pub fn extension_variables() -> impl Iterator<Item = &'static str> {
    COMMON_PLATFORM_VARIABLES.iter().copied().chain(
        BACKENDS
            .iter()
            .flat_map(|b| b.platform_variables.iter().copied()),
    )
}

/// The settings key an extension variable overrides, if it may.
pub fn storage_key_for_variable(name: &str) -> Option<&'static str> {
    if name == "API_KEY" {
        // The tutorial's extension variable `API_KEY` is the Data API key, never the Connect key.
        return Some("storage.data_api.api_key");
    }
    if !extension_variables().any(|v| v == name) {
        return None;
    }
    storage_vars()
        .find(|v| v.name == name && v.key.starts_with("storage."))
        .map(|v| v.key)
}

/// A storage variable the platform may not set (`STORAGE_BACKENDS`, `LOCAL_DATA_DIR`, …).
pub fn refused_variable(name: &str) -> bool {
    storage_key_for_variable(name).is_none()
        && storage_vars().any(|v| v.name == name && v.key.starts_with("storage."))
}

/// The variables that set a `storage.*` key: the common ones and every backend's.
fn storage_vars() -> impl Iterator<Item = &'static EnvVar> {
    ENV_VARS
        .iter()
        .chain(BACKENDS.iter().flat_map(|b| b.env.iter()))
        .filter(|v| v.key.starts_with("storage."))
}

/// Whether `key` holds a secret (its value is never quoted in a log line).
pub(super) fn is_secret(key: &str) -> bool {
    storage_vars().any(|v| v.key == key && v.secret)
}
