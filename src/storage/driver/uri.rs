//! The connection string: `MONGODB_URI`, or the tutorial's `mongodb+srv://` form with
//! percent-encoded credentials; secrets scrubbed from messages; the write concern.

use mongodb::options::WriteConcern;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::settings::Settings as DriverSettings;
use super::errors::BACKEND;
use crate::config::secret::redact_uri;
use crate::storage::error::StorageError;

/// What Python's `urllib.parse.quote(s, safe='')` leaves alone: letters, digits, `-._~`.
pub(super) const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a user name or password for a connection string, like Python's
/// `urllib.parse.quote(s, safe='')` (UTF-8, upper-case hex).
pub fn encode_credential(s: &str) -> String {
    utf8_percent_encode(s, USERINFO).to_string()
}

/// The tutorial's connection string: `mongodb+srv://{user}:{password}@{host}/`.
pub fn srv_uri(host: &str, user: &str, password: &str) -> String {
    format!(
        "mongodb+srv://{}:{}@{}/",
        encode_credential(user),
        encode_credential(password),
        host
    )
}

/// The connection string to use, where it came from, and the strings never to show.
pub(super) struct Target {
    pub(super) uri: String,
    /// The setting(s) named in errors.
    pub(super) setting: &'static str,
    pub(super) secrets: Vec<String>,
}

impl Target {
    pub(super) fn from_settings(s: &DriverSettings) -> Result<Target, StorageError> {
        if !s.uri.is_empty() {
            let uri = s.uri.expose().to_string();
            let mut secrets = Vec::new();
            if let Some(pw) = uri_password(&uri) {
                secrets.push(pw.to_string());
                if let Ok(decoded) = percent_decode_str(pw).decode_utf8() {
                    secrets.push(decoded.into_owned());
                }
            }
            return Ok(Target {
                uri,
                setting: "MONGODB_URI (config key `storage.driver.uri`)",
                secrets,
            });
        }
        if s.host.is_empty() {
            return Err(StorageError::config(
                BACKEND,
                "neither MONGODB_URI (storage.driver.uri) nor DB_HOST (storage.driver.host) is set",
            ));
        }
        let pw = s.password.expose();
        Ok(Target {
            uri: srv_uri(&s.host, &s.user, pw),
            setting: "DB_HOST/DB_USER/DB_PASSWORD (config keys `storage.driver.host`, `.user`, `.password`)",
            secrets: vec![pw.to_string(), encode_credential(pw)],
        })
    }

    /// The URI as logs may show it.
    pub(super) fn shown(&self) -> String {
        redact_uri(&self.uri).unwrap_or_else(|| self.uri.clone())
    }
}

/// The (still encoded) password of `scheme://user:password@host…`, if any.
pub(super) fn uri_password(uri: &str) -> Option<&str> {
    let rest = uri.split_once("://")?.1;
    let userinfo = &rest[..rest.rfind('@')?];
    let pw = userinfo.split_once(':')?.1;
    (!pw.is_empty()).then_some(pw)
}

/// Replaces every secret in `message` with `***`.
pub(super) fn scrub(message: String, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(message, |m, s| m.replace(s.as_str(), "***"))
}

pub(super) fn scrub_error(e: StorageError, secrets: &[String]) -> StorageError {
    if secrets.is_empty() {
        return e;
    }
    // The source is not scrubbed: kept only when no secret shows in its text.
    let leaks = e
        .source_text()
        .is_some_and(|t| secrets.iter().any(|s| t.contains(s.as_str())));
    let e = if leaks { e.without_source() } else { e };
    e.map_message(|m| scrub(m, secrets))
}

/// `DRIVER_WRITE_CONCERN`: `majority` or a number of nodes ≥ 1.
pub fn parse_write_concern(s: &str) -> Result<WriteConcern, StorageError> {
    let err = |why: &str| {
        StorageError::config(BACKEND, format!(
            "DRIVER_WRITE_CONCERN (config key `storage.driver.write_concern`): `{s}` {why}; accepted: majority, or a number of nodes ≥ 1"
        ))
    };
    match s.trim() {
        "majority" => Ok(WriteConcern::majority()),
        n => match n.parse::<u32>() {
            Ok(0) => Err(err(
                "(unacknowledged) cannot confirm that an event was stored",
            )),
            Ok(n) => Ok(WriteConcern::nodes(n)),
            Err(_) => Err(err("is not accepted")),
        },
    }
}
