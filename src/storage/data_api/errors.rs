//! What a Data API call can come to ([`ApiError`], [`ApiErrorKind`]), its classification into a
//! storage error, duplicate keys, and `Retry-After`.

use super::{BACKEND, MAX_ERROR_BODY};
pub(super) use crate::retry::retry_after as parse_retry_after;
use crate::sanitize::{error_chain, escaped_excerpt};
use crate::storage::error::StorageError;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

/// Why a Data API call did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// 400 / 422: a database-level failure (plain text) or a refused request; see
    /// [`ApiError::is_about_document`].
    BadRequest,
    /// 413: the request (the document or batch) is too large.
    PayloadTooLarge,
    /// 401 / 403: credentials refused.
    Unauthorized,
    /// 404: app, region, version or action not found (misconfigured endpoint).
    NotFound,
    /// 3xx: the endpoint redirects. Never followed (it would send the document and the
    /// credentials elsewhere, or turn the POST into a body-less GET).
    Redirect,
    /// 429: throttled.
    TooManyRequests,
    /// 5xx.
    Server,
    /// Connect error, reset, connection dropped before a complete answer.
    Transport,
    /// The request (or the overall deadline) timed out.
    Timeout,
    /// A 2xx answer whose body is not what the action returns (HTML, no `insertedId`, …).
    Decode,
    /// An answer longer than the bound for its action; reading stopped there.
    TooLong,
    /// Any other status.
    Other,
}

/// Which unique index a duplicate-key answer is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DuplicateOn {
    /// `_id` (`index: _id_`, `dup key: { _id: … }`, `keyPattern: {_id: 1}`): already stored.
    Id,
    /// Another unique index (its name or key pattern): the document is refused.
    Index(String),
    /// The answer does not say; the caller looks the `_id` up.
    Unknown,
}

/// A failed Data API call, with the server's answer kept.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ApiErrorKind,
    pub action: String,
    pub status: Option<u16>,
    /// `error` (or `errmsg` / `message`) of a JSON error body.
    pub error: Option<String>,
    /// `error_code` of a JSON error body.
    pub error_code: Option<String>,
    /// `link` of a JSON error body.
    pub link: Option<String>,
    /// The raw body (cut to a few KiB), or the transport error.
    pub body: String,
    /// `Retry-After`, when the server sent one.
    pub retry_after: Option<Duration>,
    /// For a redirect: where to, without userinfo and query ([`shown_endpoint`]).
    pub location: Option<String>,
    /// A duplicate-key answer (any 4xx/5xx status), and on which index.
    pub duplicate: Option<DuplicateOn>,
    /// Requests made for this call.
    pub attempts: u32,
    /// The transport error, without its URL: the [`StorageError`]'s source.
    pub(super) source: Option<std::sync::Arc<reqwest::Error>>,
}

impl ApiError {
    pub(super) fn transport(action: &str, kind: ApiErrorKind, message: String) -> Self {
        Self {
            kind,
            action: action.to_string(),
            status: None,
            error: None,
            error_code: None,
            link: None,
            body: message,
            retry_after: None,
            location: None,
            duplicate: None,
            attempts: 0,
            source: None,
        }
    }

    pub(super) fn from_answer(
        action: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Self {
        let kind = match status.as_u16() {
            300..=399 => ApiErrorKind::Redirect,
            400 | 422 => ApiErrorKind::BadRequest,
            413 => ApiErrorKind::PayloadTooLarge,
            401 | 403 => ApiErrorKind::Unauthorized,
            404 => ApiErrorKind::NotFound,
            408 => ApiErrorKind::Timeout,
            429 => ApiErrorKind::TooManyRequests,
            500..=599 => ApiErrorKind::Server,
            _ => ApiErrorKind::Other,
        };
        if kind == ApiErrorKind::Redirect {
            // The body of a redirect often repeats the Location (with its secrets): not kept.
            let location = headers
                .get(reqwest::header::LOCATION)
                .map(|v| shown_location(&String::from_utf8_lossy(v.as_bytes())));
            return Self {
                status: Some(status.as_u16()),
                location: Some(location.unwrap_or_else(|| "(no Location header)".into())),
                ..Self::transport(action, kind, String::new())
            };
        }
        let text = String::from_utf8_lossy(body);
        let (mut error, mut error_code, mut link) = (None, None, None);
        let mut json_code = None;
        let mut key_pattern = None;
        if let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) {
            // Outside input: control characters escaped before it reaches a message or a log.
            let field = |k: &str| {
                obj.get(k)
                    .and_then(Value::as_str)
                    .map(|v| escaped_excerpt(v, MAX_ERROR_BODY))
            };
            error = field("error")
                .or_else(|| field("errmsg"))
                .or_else(|| field("message"));
            error_code = field("error_code").or_else(|| field("codeName"));
            link = field("link");
            json_code = obj.get("code").and_then(|c| {
                c.as_i64()
                    .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
            });
            key_pattern = obj
                .get("keyPattern")
                .and_then(Value::as_object)
                .map(|k| k.keys().cloned().collect::<Vec<_>>());
        }
        let duplicate = (status.as_u16() >= 400
            && (text.contains("E11000")
                || text.contains("DuplicateKey")
                || text.contains("duplicate key error")
                || json_code == Some(11000)
                || error_code.as_deref() == Some("DuplicateKey")))
        .then(|| duplicate_on(&text, key_pattern.as_deref()));
        Self {
            kind,
            action: action.to_string(),
            status: Some(status.as_u16()),
            error,
            error_code,
            link,
            body: escaped_excerpt(text.trim(), MAX_ERROR_BODY),
            retry_after: parse_retry_after(headers),
            location: None,
            duplicate,
            attempts: 0,
            source: None,
        }
    }

    /// Whether sending the same request again at once can succeed. Never for a duplicate key
    /// (whatever its status), a redirect, an auth or endpoint error, nor an unexpected answer.
    pub fn is_retriable(&self) -> bool {
        self.duplicate.is_none()
            && matches!(
                self.kind,
                ApiErrorKind::TooManyRequests
                    | ApiErrorKind::Server
                    | ApiErrorKind::Transport
                    | ApiErrorKind::Timeout
            )
    }

    /// A duplicate-key answer, on any 4xx/5xx status: the Data API's 400 plain text
    /// `Failed to insert document: FunctionError: (DuplicateKey) E11000 duplicate key error …`,
    /// a gateway's HTTP 500 with the same text, or JSON (`error_code: DuplicateKey`, `code: 11000`).
    pub fn is_duplicate_key(&self) -> bool {
        self.duplicate.is_some()
    }

    /// Whether a 400/413/422 is about the document itself (too large, schema validation, a field
    /// name the store refuses, not an object). Anything else a gateway refuses (unknown data
    /// source, missing credentials, wrong content type, an unexplained 400) is about the
    /// configuration or the gateway: retriable, because when unsure a wrong `fail` loses the event.
    pub fn is_about_document(&self) -> bool {
        if self.kind == ApiErrorKind::PayloadTooLarge {
            return true;
        }
        if self.kind != ApiErrorKind::BadRequest {
            return false;
        }
        let text = format!(
            "{} {}",
            self.body,
            self.error.as_deref().unwrap_or_default()
        )
        .to_ascii_lowercase();
        DOCUMENT_PROBLEMS.iter().any(|m| text.contains(m))
    }

    pub(super) fn describe(&self) -> String {
        let mut s = self.action.clone();
        if let Some(status) = self.status {
            s.push_str(&format!(": HTTP {status}"));
        }
        if let Some(location) = &self.location {
            s.push_str(&format!(" redirect to {location}"));
        }
        match (&self.error, &self.error_code) {
            (Some(e), Some(c)) => s.push_str(&format!(": {e} ({c})")),
            (Some(e), None) => s.push_str(&format!(": {e}")),
            _ if !self.body.is_empty() => s.push_str(&format!(": {}", self.body)),
            _ => {}
        }
        if let Some(link) = &self.link {
            s.push_str(&format!(" [{link}]"));
        }
        if self.attempts > 1 {
            s.push_str(&format!(" (after {} attempts)", self.attempts));
        }
        s
    }

    /// A problem the operator must fix (configuration, or a gateway whose answers cannot be
    /// used); events are rescheduled meanwhile. Logged at ERROR once per change of state.
    pub(super) fn is_problem(&self) -> bool {
        matches!(
            self.kind,
            ApiErrorKind::Redirect
                | ApiErrorKind::Unauthorized
                | ApiErrorKind::NotFound
                | ApiErrorKind::Decode
                | ApiErrorKind::TooLong
        ) || (self.kind == ApiErrorKind::BadRequest
            && self.duplicate.is_none()
            && !self.is_about_document())
    }

    /// The storage error this comes to, naming `credentials` (the settings in use) when they were
    /// refused. Only an answer about the document is [`ErrorKind::RejectedDocument`](crate::storage::ErrorKind::RejectedDocument) (`fail`);
    /// redirects, refused credentials, unknown endpoints and refused requests are
    /// [`ErrorKind::Config`](crate::storage::ErrorKind::Config); the rest `Unavailable`/`Timeout`. All but `Rejected` are
    /// retriable: the event is rescheduled and nothing is lost.
    pub fn into_storage_error_with(self, credentials: &str) -> StorageError {
        let source = self.source.clone();
        let err = self.storage_error_without_source(credentials);
        match source {
            Some(source) => err.with_source(source),
            None => err,
        }
    }

    fn storage_error_without_source(self, credentials: &str) -> StorageError {
        let message = self.describe();
        let config = |message: String| StorageError::config(BACKEND, message);
        match self.kind {
            ApiErrorKind::Timeout => StorageError::timeout(BACKEND, message),
            ApiErrorKind::Redirect => config(format!(
                "{message}: redirects are not followed (they would send the document and the \
                 credentials elsewhere); set DATA_API_ENDPOINT to the URL that answers"
            )),
            ApiErrorKind::Unauthorized => config(format!(
                "{message} (credentials refused: check {credentials} and the gateway's rules)"
            )),
            ApiErrorKind::NotFound => config(format!(
                "{message} (check DATA_API_ENDPOINT: app id, region, version)"
            )),
            ApiErrorKind::BadRequest | ApiErrorKind::PayloadTooLarge
                if self.is_about_document() =>
            {
                StorageError::rejected(BACKEND, message)
            }
            ApiErrorKind::BadRequest | ApiErrorKind::PayloadTooLarge => config(format!(
                "{message} (the gateway refused the request, not the document: check \
                 DATA_API_ENDPOINT, CLUSTER, DB, HTTP_COLLECTION and {credentials})"
            )),
            ApiErrorKind::TooManyRequests
            | ApiErrorKind::Server
            | ApiErrorKind::Transport
            | ApiErrorKind::Decode
            | ApiErrorKind::TooLong
            | ApiErrorKind::Other => StorageError::unavailable(BACKEND, message),
        }
    }

    /// [`ApiError::into_storage_error_with`] naming every credential setting.
    pub fn into_storage_error(self) -> StorageError {
        self.into_storage_error_with(
            "DATA_API_KEY / DATA_API_BEARER_TOKEN / DATA_API_EMAIL + DATA_API_PASSWORD",
        )
    }
}

/// Lower-case markers of a 400 that is about the document itself.
pub(super) const DOCUMENT_PROBLEMS: &[&str] = &[
    "documentvalidationfailure",
    "document failed validation",
    "too large",
    "toolarge",
    "argument must be an object",
    "invalid document",
    "invaliddocument",
    "dollarprefixedfieldname",
    "is not valid for storage",
    "field names",
    "invalid key",
    "invalidbson",
    "keytoolong",
    "key too long",
];

/// Which index a duplicate-key message names: `index: <name>` (`_id_` is the `_id` index),
/// else `dup key: { _id: …`, else a JSON `keyPattern`.
pub(super) fn duplicate_on(text: &str, key_pattern: Option<&[String]>) -> DuplicateOn {
    if let Some(at) = text.find("index: ") {
        let name: String = text[at + "index: ".len()..]
            .chars()
            .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | ',' | '}'))
            .collect();
        if name == "_id_" {
            return DuplicateOn::Id;
        }
        if !name.is_empty() {
            return DuplicateOn::Index(name);
        }
    }
    if let Some(at) = text.find("dup key: {") {
        let rest = text[at + "dup key: {".len()..].trim_start();
        if rest.starts_with("_id:") || rest.starts_with("\"_id\":") {
            return DuplicateOn::Id;
        }
        let key: String = rest
            .chars()
            .take_while(|c| !matches!(c, ':' | ' '))
            .collect();
        if !key.is_empty() {
            return DuplicateOn::Index(key);
        }
    }
    match key_pattern {
        Some([only]) if only == "_id" => DuplicateOn::Id,
        Some(keys) if !keys.is_empty() => DuplicateOn::Index(keys.join(", ")),
        _ => DuplicateOn::Unknown,
    }
}

/// An endpoint URL as it may be shown (logs, errors, `Debug`, `/ready` reasons): the one URL
/// redaction of the crate, [`crate::config::secret::redact_url`] (no password, query values only when
/// allow-listed, no fragment).
pub fn shown_endpoint(url: &url::Url) -> String {
    crate::config::secret::redact_url(url.as_str())
}

/// A redirect's `Location` as it may be shown (relative ones as they are, minus any query).
pub(super) fn shown_location(location: &str) -> String {
    match url::Url::parse(location) {
        Ok(u) => shown_endpoint(&u),
        Err(_) => {
            let mut path = location.split(['?', '#']).next().unwrap_or_default();
            // `//user:password@host/…`: drop the userinfo.
            if let Some(at) = path.rfind('@') {
                path = &path[at + 1..];
            }
            escaped_excerpt(path, 200)
        }
    }
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

pub(super) fn decode_error(action: &str, message: &str) -> Box<ApiError> {
    Box::new(ApiError::transport(
        action,
        ApiErrorKind::Decode,
        message.to_string(),
    ))
}

pub(super) fn reqwest_error(action: &str, e: reqwest::Error) -> Box<ApiError> {
    let kind = if e.is_timeout() {
        ApiErrorKind::Timeout
    } else {
        ApiErrorKind::Transport
    };
    // Without the URL (it could carry a `secret` query parameter); with the causes.
    let e = e.without_url();
    let message = error_chain(&e, false);
    let mut err = ApiError::transport(action, kind, message);
    err.source = Some(std::sync::Arc::new(e));
    Box::new(err)
}
