//! Configuration leaves: the variables ([`env`](mod@env)), the error that names them
//! ([`error`]: [`ConfigError`], the numeric ranges [`Bound`]) and the secret types ([`secret`]),
//! plus the embedded defaults ([`DEFAULTS`]). Every module's `settings` file imports only these,
//! so this folder imports nothing of the crate: the composition of the sections and the layered
//! loading (`config/default.toml` < each backend's `default.toml` < file < environment < "Apply
//! Changes") is `crate::settings`, above every module.
//!
//! Environment variables are mapped explicitly, one by one ([`ENV_VARS`] here for the core
//! sections, each backend's own beside it), rather than through a prefix convention, because the
//! names are fixed by the tutorial (DATA_API_ENDPOINT, DB, …) and by the Python runner (API_KEY,
//! ENVIRONMENT_ID, …). The tables are also the single place that says which settings are secrets.
//!
//! Secrets are [`Secret`]s; URLs that may carry credentials are shown only through [`redact_url`]
//! ([`SecretUrl`]): the password of the userinfo and every query value not on
//! [`URL_QUERY_ALLOW_LIST`] become `***`.

pub mod env;
pub mod error;
pub mod secret;

pub use env::{EnvVar, ENV_VARS};
pub use error::Bound;
pub use error::ConfigError;
pub use secret::{redact_uri, redact_url, Secret, SecretUrl, URL_QUERY_ALLOW_LIST};

/// The documented defaults, embedded so the binary runs with no file around it.
pub const DEFAULTS: &str = include_str!("../../config/default.toml");
