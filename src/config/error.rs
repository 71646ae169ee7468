//! The configuration error: it always names the setting (variable and key) and what is accepted.

use std::fmt;

use super::env::{EnvVar, ENV_VARS};

/// A configuration error: always names the setting (variable and key) and what is accepted.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// An error about `key`, naming the core variable that sets it (see [`setting_error_in`]).
pub fn setting_error(key: &str, message: impl fmt::Display) -> ConfigError {
    setting_error_in(ENV_VARS, key, message)
}

/// An error about `key`, naming the variable of `vars` that sets it (a backend passes its own).
pub fn setting_error_in(vars: &[EnvVar], key: &str, message: impl fmt::Display) -> ConfigError {
    match vars.iter().find(|v| v.key == key).map(|v| v.name) {
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

/// The accepted range of one numeric setting (every section lists its own; the loader checks
/// them all at once).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub key: &'static str,
    pub value: u64,
    pub min: u64,
    pub max: u64,
    pub unit: &'static str,
    pub why: &'static str,
}

impl Bound {
    pub fn new(key: &'static str, value: u64, min: u64, max: u64, unit: &'static str) -> Self {
        Self {
            key,
            value,
            min,
            max,
            unit,
            why: "",
        }
    }
    pub fn why(mut self, why: &'static str) -> Self {
        self.why = why;
        self
    }
}
