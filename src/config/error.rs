//! The configuration error: it always names the setting (variable and key) and what is accepted.

use std::fmt;

use super::env::env_name_for;

/// A configuration error: always names the setting (variable and key) and what is accepted.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

pub fn setting_error(key: &str, message: impl fmt::Display) -> ConfigError {
    match env_name_for(key) {
        Some(env) => ConfigError(format!("{env} (config key `{key}`): {message}")),
        None => ConfigError(format!("config key `{key}`: {message}")),
    }
}

/// The items of a comma-separated list, trimmed, empty ones dropped.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

/// `a, b, c`.
pub fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
