//! What keeps a web page out of the HTTP task channel.
//!
//! A browser lets any page send a "simple" cross-origin request (`text/plain` POST) to
//! `127.0.0.1:8080`, and with DNS rebinding (the page's own name resolving to 127.0.0.1) even
//! read the answer. So, on `/events…`:
//!
//! * **Host**: the request's `Host` (and the authority of an absolute-form target) must be a
//!   loopback name — `localhost`, a `127.0.0.0/8` address, `[::1]` (and `0.0.0.0`/`[::]`, what
//!   clients of a wildcard bind use), any port — or one listed in
//!   `HTTP_ALLOWED_HOSTS` (`name` for any port, `name:port` for that port, `*` for any host);
//!   else 421 Misdirected Request. A rebinding page always sends its own name. Without
//!   `HTTP_TOKEN` this is always checked; with a token (which no foreign page has) only when
//!   `HTTP_ALLOWED_HOSTS` is set, so that callers reaching a container by its service name keep
//!   working.
//! * **Content-Type**: `POST /events` takes `application/json` (parameters such as `charset`
//!   allowed) and answers anything else 415 — a page can send JSON cross-origin only after a
//!   CORS preflight, and there is no CORS: no `Access-Control-*` header is ever sent and
//!   `OPTIONS` is not a route (405).
//!
//! `/health`, `/ready` and `/metrics` take any `Host`: orchestrators probe and scrape a pod by its
//! IP address (`Host: 10.1.2.3:8080`), and they expose no stored data.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::settings::{parse_allow_list, split_authority, Allowed, Settings as HttpSettings};
use super::state::ApiError;
use crate::sanitize::escaped_excerpt;

/// Which `Host` values `/events…` accepts.
#[derive(Debug, Clone, Default)]
pub struct HostPolicy {
    /// Off: any Host (a token guards the listener and no allow-list is set, or `*`).
    enforce: bool,
    allowed: Vec<Allowed>,
}

/// A name only the machine itself answers to: `localhost`, a loopback address, or the
/// unspecified address (`0.0.0.0`, `[::]`, which clients use to reach a wildcard bind). A DNS
/// rebinding page sends its own name instead.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

impl HostPolicy {
    /// Parses `HTTP_ALLOWED_HOSTS` (comma-separated); `Ok(None)` for `*` (the syntax is the
    /// setting's own: [`parse_allow_list`]).
    pub(crate) fn parse_allow_list(list: &str) -> Result<Option<Vec<Allowed>>, String> {
        parse_allow_list(list)
    }

    pub fn from_settings(http: &HttpSettings) -> Self {
        match Self::parse_allow_list(&http.allowed_hosts) {
            Ok(None) => HostPolicy::default(),
            Ok(Some(allowed)) => HostPolicy {
                enforce: http.token.is_empty() || !allowed.is_empty(),
                allowed,
            },
            // Rejected at start-up by `check_settings`; fail closed all the same.
            Err(_) => HostPolicy {
                enforce: true,
                allowed: Vec::new(),
            },
        }
    }

    /// Whether a `Host` (or request-target authority) value is this listener's.
    pub fn admits(&self, value: &str) -> bool {
        if !self.enforce {
            return true;
        }
        let Some((host, port)) = split_authority(value) else {
            return false;
        };
        is_loopback(&host)
            || self
                .allowed
                .iter()
                .any(|a| a.host == host && (a.port.is_none() || a.port == port))
    }
}

/// Middleware on `/events…`: 421 unless every authority the request names is admitted.
pub async fn require_host(
    State(policy): State<std::sync::Arc<HostPolicy>>,
    request: Request,
    next: Next,
) -> Response {
    if !policy.enforce {
        return next.run(request).await;
    }
    let header = request.headers().get(header::HOST);
    let authority = request.uri().authority().map(|a| a.as_str().to_string());
    let header = header.map(|h| String::from_utf8_lossy(h.as_bytes()).to_string());
    let named: Vec<&String> = header.iter().chain(authority.iter()).collect();
    if let Some(bad) = named.iter().find(|v| !policy.admits(v)) {
        let shown = escaped_excerpt(bad, 200);
        tracing::debug!(host = %shown, "HTTP request for a foreign Host refused (421)");
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected_request",
            format!("Host `{shown}` is not this listener's: use a loopback name (localhost, 127.0.0.1, [::1]) or add it to HTTP_ALLOWED_HOSTS"),
        )
        .into_response();
    }
    if named.is_empty() {
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected_request",
            "the request names no Host",
        )
        .into_response();
    }
    next.run(request).await
}

/// `Content-Type: application/json`, with or without parameters (`; charset=utf-8`).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .is_some_and(|mime| mime.eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::secret::Secret;

    fn policy(list: &str, token: &str) -> HostPolicy {
        let mut http = crate::settings::Settings::from_vars([("HTTP_LISTEN", "127.0.0.1:0")])
            .unwrap()
            .http;
        http.allowed_hosts = list.into();
        http.token = Secret::new(token);
        HostPolicy::from_settings(&http)
    }

    #[test]
    fn loopback_names_and_the_allow_list() {
        let p = policy("", "");
        for ok in [
            "localhost",
            "LocalHost:8080",
            "localhost.:1",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
            "0.0.0.0:8080",
            "[::]:8080",
        ] {
            assert!(p.admits(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.evil.example:80",
            "10.0.0.1:8080",
            "[::2]:80",
            "localhost:99999",
            "localhost:x",
            "",
            "[::1",
            "a b",
        ] {
            assert!(!p.admits(bad), "{bad}");
        }
        let p = policy("events.internal, Hook.Example:9000, [fd00::1]", "");
        assert!(p.admits("events.internal:1"));
        assert!(p.admits("hook.example:9000"));
        assert!(!p.admits("hook.example:9001"));
        assert!(!p.admits("hook.example"));
        assert!(p.admits("[fd00::1]:80"));
        assert!(p.admits("localhost"));
        assert!(!p.admits("evil.example"));
        assert!(policy("*", "").admits("anything.example"));
        assert!(policy("", "t").admits("svc.namespace:8080"));
        assert!(!policy("svc", "t").admits("other:8080"));
        assert!(HostPolicy::parse_allow_list("a b").is_err());
        assert!(HostPolicy::parse_allow_list("x:port").is_err());
    }

    #[test]
    fn json_content_types() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=UTF-8"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonp"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
