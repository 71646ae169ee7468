//! The HTTP listener's settings (`[http]`) and their syntax check; the numeric ranges are in
//! `settings::Settings::bounds`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::error::{setting_error, Bound, ConfigError};
use crate::config::secret::Secret;
use crate::sanitize::escaped_excerpt;

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    pub listen: SocketAddr,
    pub token: Secret,
    pub max_body_bytes: usize,
    /// Comma-separated `Host` names accepted on /events besides loopback names (`http::guard`).
    pub allowed_hosts: String,
    pub header_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub max_connections: usize,
}

impl Settings {
    /// The range of each numeric `[http]` setting (checked with all the others at load).
    pub fn bounds(&self) -> Vec<Bound> {
        vec![
            Bound::new(
                "http.max_body_bytes",
                self.max_body_bytes as u64,
                1,
                256 * 1024 * 1024,
                "bytes",
            ),
            Bound::new(
                "http.header_timeout_ms",
                self.header_timeout_ms,
                100,
                3_600_000,
                "milliseconds",
            ),
            Bound::new(
                "http.body_timeout_ms",
                self.body_timeout_ms,
                100,
                3_600_000,
                "milliseconds",
            ),
            Bound::new(
                "http.max_connections",
                self.max_connections as u64,
                1,
                65_536,
                "connections",
            ),
        ]
    }
}

/// Syntax checks of the HTTP listener's own settings (called by `settings::Settings::validate`;
/// the numeric ranges are in `settings::Settings::bounds`, which must agree with `serve`'s
/// `TIMEOUT_MS_RANGE` and `MAX_CONNECTIONS_RANGE`).
pub fn check_settings(http: &Settings) -> Result<(), ConfigError> {
    parse_allow_list(&http.allowed_hosts).map_err(|e| setting_error("http.allowed_hosts", e))?;
    Ok(())
}

/// One `HTTP_ALLOWED_HOSTS` entry: a lower-case host name or address, and a port when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Allowed {
    pub(crate) host: String,
    pub(crate) port: Option<u16>,
}

/// `host[:port]`, `[v6]:port` → (lower-case host without brackets, port).
pub(crate) fn split_authority(value: &str) -> Option<(String, Option<u16>)> {
    let value = value.trim();
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (inside, port)
    } else {
        match value.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (value, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok()?),
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    valid.then_some((host, port))
}

/// Parses `HTTP_ALLOWED_HOSTS` (comma-separated); `Ok(None)` for `*`.
pub(crate) fn parse_allow_list(list: &str) -> Result<Option<Vec<Allowed>>, String> {
    let mut out = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if entry == "*" {
            return Ok(None);
        }
        let (host, port) = split_authority(entry).ok_or_else(|| {
            format!(
                "`{}` is not a host name, address or name:port (e.g. events.example.com, 10.0.0.5:8080, [fd00::1])",
                escaped_excerpt(entry, 100)
            )
        })?;
        out.push(Allowed { host, port });
    }
    Ok(Some(out))
}
