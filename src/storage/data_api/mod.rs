//! `data_api`: the (Atlas) Data API v1 over HTTP, as the tutorial's v0.1.0 used it.
//!
//! The hosted Atlas Data API was switched off on 2025-09-30; the same contract is served by
//! self-hosted compatible gateways. See `docs/data-api.md` for configuration and
//! `../shared/docs/atlas-data-api.md` for the contract this client follows.
//!
//! **Requests.** `POST {endpoint}/action/<action>` with the tutorial's headers
//! (`Content-Type: application/json`, `Access-Control-Request-Headers: *`, `api-key: …`) and the
//! body `{collection, database, dataSource, …}`. With `ejson = true` the body is canonical Extended
//! JSON (`application/ejson`) written by the `bson` crate. One `reqwest` client (keep-alive pool)
//! serves every request.
//!
//! **Answers.** The body is parsed as JSON whatever its `Content-Type` says (the service labelled
//! JSON `text/plain`), and decoded as Extended JSON (canonical or relaxed) into relaxed JSON
//! values. A 2xx is not proof of a write: an insert counts only when the answer carries what the
//! contract says, `insertedId` equal to the `_id` sent (`insertOne`), `insertedIds` equal to the
//! `_id`s sent in order (`insertMany`), or FerretDB's `{"n": <count sent>}`. `findOne` must answer
//! `{"document": …}` and `find` `{"documents": […]}`. Anything else (an HTML page, `{}`, other ids)
//! is [`ApiErrorKind::Decode`], retriable: the deterministic `_id` makes the redelivery safe.
//! Error bodies, JSON (`{error, error_code, link}`) or plain text (database-level errors), are
//! kept in the error (cut to 2 KiB).
//!
//! **Retries.** Connect errors, timeouts, resets, 429 and 5xx are retried with full-jitter
//! exponential backoff, honouring `Retry-After`, within a per-request timeout and an overall
//! deadline; then the error is [`StorageError::Unavailable`] / [`StorageError::Timeout`] (retriable:
//! the event is answered `reschedule`). 4xx answers, duplicates (whatever their status),
//! redirects and unexpected 2xx answers are not retried at once.
//!
//! **Idempotency.** `_id` is deterministic, so an insert retried after an unclear failure (timeout,
//! connection dropped after the write committed) that answers "duplicate key" has landed:
//! [`SaveOutcome::Duplicate`], a success. `insertMany` is ordered (it stops at the first error);
//! see [`DataApiStorage::save_many`] for how every document still gets its own outcome.
//!
//! **Bounded reads.** Every body is read in chunks up to a bound and no further: 1 MiB for insert
//! answers, 16 MiB for `find`/`findOne`, 64 KiB of an error answer (an excerpt is enough). A 2xx
//! answer over its bound is [`ApiErrorKind::TooLong`] (retriable), never an unbounded allocation.
//!
//! **Redirects are never followed** (`redirect::Policy::none()`): following one sent the document
//! and the `api-key` to another host (307), or turned the POST into a body-less GET (301). A 3xx
//! is a configuration error, logged at ERROR naming `DATA_API_ENDPOINT` with the `Location`
//! shown without userinfo and query ([`shown_endpoint`]); the event is rescheduled.
//!
//! **Classification** (decided once, in [`ApiError::into_storage_error_with`]):
//!
//! | answer | error | event |
//! |---|---|---|
//! | duplicate key on `_id` (E11000 / `DuplicateKey` / code 11000, text or JSON, **any** 4xx/5xx) | — ([`SaveOutcome::Duplicate`]) | `success`, never retried |
//! | duplicate key on another unique index (`index: <name>`), `_id` not stored | `Rejected` naming the index | `fail` |
//! | duplicate key naming no index | `_id` looked up: stored → `Duplicate`, else `Rejected` | |
//! | 400/422 about the document (validation, too large, refused field name, not an object), 413 | `Rejected` | `fail` |
//! | any other 400/422 (unknown data source, missing credentials, content type, unexplained) | `Config` | `reschedule` |
//! | 401/403 (names the credential setting in use), 404 (names `DATA_API_ENDPOINT`), 3xx | `Config` | `reschedule` |
//! | 429, 5xx, connect error, reset | `Unavailable` (after retries) | `reschedule` |
//! | timeout | `Timeout` | `reschedule` |
//! | unexpected or over-long 2xx | `Unavailable` | `reschedule` |
//!
//! A 400 is `Rejected` only when its text says it is about the document (see
//! [`ApiError::is_about_document`]); when unsure it is retriable, since a wrong `fail` loses the
//! event and a wrong `reschedule` only delays it. Configuration problems (`Config`) are logged at
//! ERROR once per change of state, and the recovery at INFO; `ping` (used by `/ready`) fails on
//! them, so `/ready` answers 503 with the reason.
//!
//! Credentials are sent as sensitive headers and never appear in logs or error messages. The
//! endpoint is shown only through [`shown_endpoint`] (no userinfo, no query: a `secret` lives
//! there); transport errors are reported without their URL.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bson::Bson;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use serde_json::{json, Map, Value};

use super::{EventDocument, ListQuery, SaveOutcome, Storage, StorageError};
use crate::config::secret::Secret;

pub mod settings;

use crate::sanitize::escaped_excerpt;
use settings::Params;

const BACKEND: &str = "data_api";
/// Most documents sent in one `insertMany` request.
const INSERT_MANY_CHUNK: usize = 500;
/// Error bodies kept in messages are cut to this many bytes.
const MAX_ERROR_BODY: usize = 2048;
/// Most bytes read of an error (non-2xx) answer; the rest is not read.
const MAX_ERROR_READ: usize = 64 * 1024;
/// Most bytes of an `insertOne`/`insertMany` answer (ids only; 500 ids fit many times over).
const MAX_INSERT_ANSWER: usize = 1024 * 1024;
/// Most bytes of a `find`/`findOne` answer (at most `ListQuery::MAX_LIMIT` documents).
const MAX_READ_ANSWER: usize = 16 * 1024 * 1024;
/// The `_id` looked up by `ping` (a cheap `findOne` that matches nothing).
const PING_ID: &str = "__connect_extension_ping__";

/// Backoff between retries: full jitter over `base · 2^(attempt-1)`, capped, at most `max_attempts`
/// requests, all within the overall deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
            max_attempts: 8,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1` (`attempt` ≥ 1): uniform in `[0, min(cap, base·2^(attempt-1))]`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let ceiling = exp.min(self.cap);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
    }
}

/// How requests authenticate (first configured wins, in this order).
#[derive(Clone)]
enum Auth {
    /// `api-key: <key>` (the tutorial's header; gateways accept it and `apiKey`).
    ApiKey(Secret),
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `email` + `password` headers.
    EmailPassword { email: String, password: Secret },
    /// No credentials (gateways in "open"/system mode).
    None,
}

impl Auth {
    fn kind(&self) -> &'static str {
        match self {
            Auth::ApiKey(_) => "api-key",
            Auth::Bearer(_) => "bearer",
            Auth::EmailPassword { .. } => "email/password",
            Auth::None => "none",
        }
    }
}

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
}

impl ApiError {
    fn transport(action: &str, kind: ApiErrorKind, message: String) -> Self {
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
        }
    }

    fn from_answer(action: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Self {
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

    fn describe(&self) -> String {
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
    fn is_problem(&self) -> bool {
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
    /// refused. Only an answer about the document is [`StorageError::Rejected`] (`fail`);
    /// redirects, refused credentials, unknown endpoints and refused requests are
    /// [`StorageError::Config`]; the rest `Unavailable`/`Timeout`. All but `Rejected` are
    /// retriable: the event is rescheduled and nothing is lost.
    pub fn into_storage_error_with(self, credentials: &str) -> StorageError {
        let message = self.describe();
        let config = |message: String| StorageError::Config {
            backend: BACKEND,
            message,
        };
        match self.kind {
            ApiErrorKind::Timeout => StorageError::Timeout {
                backend: BACKEND,
                message,
            },
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
                StorageError::Rejected {
                    backend: BACKEND,
                    message,
                }
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
            | ApiErrorKind::Other => StorageError::Unavailable {
                backend: BACKEND,
                message,
            },
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
const DOCUMENT_PROBLEMS: &[&str] = &[
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
fn duplicate_on(text: &str, key_pattern: Option<&[String]>) -> DuplicateOn {
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
fn shown_location(location: &str) -> String {
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

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// `Retry-After`: delay-seconds or an HTTP date.
fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A plain JSON value as BSON (field names kept), for the EJSON mode.
pub fn json_to_bson(v: &Value) -> Bson {
    super::bson_json::json_to_bson(v, super::bson_json::keep_key)
}

/// An answer value (canonical or relaxed Extended JSON, or plain JSON) as relaxed JSON: numbers
/// are numbers again (Int64 exactly), ObjectIds `{"$oid"}`, dates `{"$date": "<ISO-8601>"}`.
pub fn decode_value(v: Value) -> Value {
    match Bson::try_from(v.clone()) {
        Ok(b) => b.into_relaxed_extjson(),
        Err(_) => v,
    }
}

type ApiResult<T> = Result<T, Box<ApiError>>;

/// The Data API storage backend.
pub struct DataApiStorage {
    http: reqwest::Client,
    /// `DATA_API_ENDPOINT` (may carry a `secret` query or userinfo: never shown as is).
    base: url::Url,
    auth: Auth,
    data_source: String,
    database: String,
    collection: String,
    ejson: bool,
    request_timeout: Duration,
    deadline: Duration,
    retry: RetryPolicy,
    /// The configuration problem last reported at ERROR (so it is logged once per state change).
    problem: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for DataApiStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataApiStorage")
            .field("base", &shown_endpoint(&self.base))
            .field("auth", &self.auth.kind())
            .field("data_source", &self.data_source)
            .field("database", &self.database)
            .field("collection", &self.collection)
            .field("ejson", &self.ejson)
            .finish_non_exhaustive()
    }
}

fn config_error(message: impl Into<String>) -> StorageError {
    StorageError::Config {
        backend: BACKEND,
        message: message.into(),
    }
}

/// What a 2xx insert answer must carry: the `_id`s sent, in order (`insertedId` / `insertedIds`),
/// or FerretDB's `{"n": <count sent>}`. Anything else proves nothing.
fn check_inserted(action: &str, answer: &Value, ids: &[&str]) -> ApiResult<()> {
    let unexpected = |why: &str| {
        decode_error(
            action,
            &format!(
                "{why}; the answer was {}",
                truncate(&answer.to_string(), MAX_ERROR_BODY)
            ),
        )
    };
    let Value::Object(o) = answer else {
        return Err(unexpected("the answer is not a JSON object"));
    };
    let same = |v: &Value, id: &str| decode_value(v.clone()).as_str() == Some(id);
    if action == "insertOne" {
        if let Some(v) = o.get("insertedId").filter(|v| !v.is_null()) {
            return if ids.len() == 1 && same(v, ids[0]) {
                Ok(())
            } else {
                Err(unexpected("`insertedId` is not the `_id` sent"))
            };
        }
    } else if let Some(v) = o.get("insertedIds") {
        let Some(list) = v.as_array() else {
            return Err(unexpected("`insertedIds` is not an array"));
        };
        return if list.len() == ids.len() && list.iter().zip(ids).all(|(v, id)| same(v, id)) {
            Ok(())
        } else {
            Err(unexpected("`insertedIds` are not the `_id`s sent"))
        };
    }
    match o.get("n").and_then(Value::as_u64) {
        Some(n) if n == ids.len() as u64 => Ok(()),
        Some(_) => Err(unexpected("`n` is not the number of documents sent")),
        None if action == "insertOne" => Err(unexpected("no `insertedId` in the answer")),
        None => Err(unexpected("no `insertedIds` in the answer")),
    }
}

/// Reads at most `cap` bytes of `response`'s body, in chunks; `true` when there was more (the
/// rest is not read: the connection is dropped).
async fn read_bounded(
    mut response: reqwest::Response,
    cap: usize,
) -> reqwest::Result<(Vec<u8>, bool)> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > cap {
            let room = cap - body.len();
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// The bound on a 2xx answer to `action`.
fn answer_cap(action: &str) -> usize {
    if action.starts_with("insert") {
        MAX_INSERT_ANSWER
    } else {
        MAX_READ_ANSWER
    }
}

impl DataApiStorage {
    /// Builds the backend from `settings.storage.data_api` (and `storage.database`). Makes no
    /// request: a gateway that is down at start-up makes events reschedule, not the daemon fail.
    pub async fn connect<'a>(params: impl Into<Params<'a>>) -> Result<Self, StorageError> {
        let Params {
            settings: s,
            database,
        } = params.into();
        let endpoint = s.endpoint.trim().trim_end_matches('/');
        // The value itself is not repeated: it may hold credentials.
        let base = url::Url::parse(endpoint)
            .map_err(|e| config_error(format!("DATA_API_ENDPOINT is not a valid URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(config_error(format!(
                "DATA_API_ENDPOINT `{}`: must be an http(s) URL",
                shown_endpoint(&base)
            )));
        }
        for (name, value) in [
            ("DB (storage.database)", database),
            ("CLUSTER (storage.data_api.cluster)", s.cluster.as_str()),
            (
                "HTTP_COLLECTION (storage.data_api.collection)",
                s.collection.as_str(),
            ),
        ] {
            if value.trim().is_empty() {
                return Err(config_error(format!("{name} must not be empty")));
            }
        }
        let auth = if !s.api_key.is_empty() {
            Auth::ApiKey(s.api_key.clone())
        } else if !s.bearer_token.is_empty() {
            Auth::Bearer(s.bearer_token.clone())
        } else if !s.email.is_empty() || !s.password.is_empty() {
            if s.email.is_empty() || s.password.is_empty() {
                return Err(config_error(
                    "DATA_API_EMAIL and DATA_API_PASSWORD must be set together",
                ));
            }
            Auth::EmailPassword {
                email: s.email.clone(),
                password: s.password.clone(),
            }
        } else {
            Auth::None
        };
        if s.request_timeout_ms == 0 || s.deadline_ms == 0 {
            return Err(config_error(
                "DATA_API_TIMEOUT_MS and DATA_API_DEADLINE_MS must be positive",
            ));
        }
        let request_timeout = Duration::from_millis(s.request_timeout_ms);
        let http = reqwest::Client::builder()
            // A redirect is a configuration error, never followed: see `ApiErrorKind::Redirect`.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(request_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!(
                env!("CARGO_PKG_NAME"),
                "/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| config_error(format!("HTTP client: {e}")))?;
        tracing::info!(
            endpoint = %shown_endpoint(&base),
            auth = auth.kind(),
            data_source = %s.cluster,
            database = %database,
            collection = %s.collection,
            ejson = s.ejson,
            "Data API backend configured"
        );
        Ok(Self {
            http,
            base,
            auth,
            data_source: s.cluster.clone(),
            database: database.to_string(),
            collection: s.collection.clone(),
            ejson: s.ejson,
            request_timeout,
            deadline: Duration::from_millis(s.deadline_ms.max(s.request_timeout_ms)),
            retry: RetryPolicy::default(),
            problem: std::sync::Mutex::new(None),
        })
    }

    /// Replaces the backoff policy (tests use short waits).
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The settings holding the credentials in use (named in "credentials refused" errors).
    fn credential_settings(&self) -> &'static str {
        match self.auth {
            Auth::ApiKey(_) => "DATA_API_KEY",
            Auth::Bearer(_) => "DATA_API_BEARER_TOKEN",
            Auth::EmailPassword { .. } => "DATA_API_EMAIL / DATA_API_PASSWORD",
            Auth::None => "the credentials (none are set: DATA_API_KEY)",
        }
    }

    fn storage_error(&self, e: ApiError) -> StorageError {
        e.into_storage_error_with(self.credential_settings())
    }

    /// Logs a configuration problem at ERROR when it differs from the last one reported, and
    /// the recovery at INFO (`None`: the gateway answered as the contract says).
    fn report(&self, problem: Option<&ApiError>) {
        let key = problem.map(|e| format!("{:?} {:?}", e.kind, e.status));
        let mut last = self.problem.lock().unwrap_or_else(|p| p.into_inner());
        if *last == key {
            return;
        }
        match problem {
            Some(e) => tracing::error!(
                endpoint = %shown_endpoint(&self.base),
                error = %self.storage_error(e.clone()),
                "Data API: the gateway's answers cannot be used (check DATA_API_ENDPOINT and the \
                 credentials); events are rescheduled until it is fixed"
            ),
            None => tracing::info!(
                endpoint = %shown_endpoint(&self.base),
                "Data API: the gateway answers normally again"
            ),
        }
        *last = key;
    }

    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        let (content_type, accept) = if self.ejson {
            ("application/ejson", "application/ejson")
        } else {
            ("application/json", "application/json")
        };
        h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(ACCEPT, HeaderValue::from_static(accept));
        h.insert(
            HeaderName::from_static("access-control-request-headers"),
            HeaderValue::from_static("*"),
        );
        let sensitive = |v: &str| {
            HeaderValue::from_str(v).map(|mut v| {
                v.set_sensitive(true);
                v
            })
        };
        match &self.auth {
            Auth::ApiKey(key) => {
                if let Ok(v) = sensitive(key.expose()) {
                    h.insert(HeaderName::from_static("api-key"), v);
                }
            }
            Auth::Bearer(token) => {
                if let Ok(v) = sensitive(&format!("Bearer {}", token.expose())) {
                    h.insert(AUTHORIZATION, v);
                }
            }
            Auth::EmailPassword { email, password } => {
                if let (Ok(e), Ok(p)) = (sensitive(email), sensitive(password.expose())) {
                    h.insert(HeaderName::from_static("email"), e);
                    h.insert(HeaderName::from_static("password"), p);
                }
            }
            Auth::None => {}
        }
        h
    }

    /// `{collection, database, dataSource}` + the action's fields, serialised for the wire.
    fn body(&self, fields: Vec<(&str, Value)>) -> Vec<u8> {
        let mut m = Map::new();
        m.insert("collection".into(), json!(self.collection));
        m.insert("database".into(), json!(self.database));
        m.insert("dataSource".into(), json!(self.data_source));
        for (k, v) in fields {
            m.insert(k.to_string(), v);
        }
        if self.ejson {
            let doc = super::bson_json::json_to_document(&m, super::bson_json::keep_key);
            serde_json::to_vec(&Bson::Document(doc).into_canonical_extjson())
        } else {
            serde_json::to_vec(&Value::Object(m))
        }
        .expect("JSON values always serialise")
    }

    /// `{endpoint}/action/<action>`, the endpoint's query (a `secret`) kept.
    fn action_url(&self, action: &str) -> url::Url {
        let mut url = self.base.clone();
        let path = format!("{}/action/{action}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url
    }

    async fn send_once(&self, action: &str, body: &[u8], timeout: Duration) -> ApiResult<Value> {
        let result = self
            .http
            .post(self.action_url(action))
            .headers(self.headers())
            .timeout(timeout)
            .body(body.to_vec())
            .send()
            .await;
        let response = result.map_err(|e| reqwest_error(action, e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let cap = if status.is_success() {
            answer_cap(action)
        } else {
            MAX_ERROR_READ
        };
        let (bytes, cut) = read_bounded(response, cap)
            .await
            .map_err(|e| reqwest_error(action, e))?;
        if !status.is_success() {
            // An error body is only an excerpt: what was read is enough.
            return Err(Box::new(ApiError::from_answer(
                action, status, &headers, &bytes,
            )));
        }
        if cut {
            let mut err = ApiError::transport(
                action,
                ApiErrorKind::TooLong,
                format!("the answer is longer than {cap} bytes; not read further"),
            );
            err.status = Some(status.as_u16());
            return Err(Box::new(err));
        }
        // Whatever the Content-Type says (text/plain happened): it is JSON or EJSON.
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => Ok(v),
            Err(e) => {
                let mut err = ApiError::from_answer(action, status, &headers, &bytes);
                err.kind = ApiErrorKind::Decode;
                err.duplicate = None;
                err.body = format!("answer is not JSON ({e}): {}", err.body);
                Err(Box::new(err))
            }
        }
    }

    /// Reports the outcome of a call whose answer has been checked against the contract: a
    /// problem at ERROR (once per change), the recovery at INFO.
    fn checked<T>(&self, result: ApiResult<T>) -> ApiResult<T> {
        match &result {
            Ok(_) => self.report(None),
            Err(e) if e.is_problem() => self.report(Some(e)),
            Err(_) => {}
        }
        result
    }

    /// One action, retried on transient failures within `deadline`.
    async fn call(
        &self,
        action: &str,
        fields: Vec<(&str, Value)>,
        deadline: Duration,
    ) -> ApiResult<Value> {
        let body = self.body(fields);
        let started = Instant::now();
        let mut attempt = 0u32;
        let mut previous: Option<Box<ApiError>> = None;
        loop {
            attempt += 1;
            let remaining = deadline.saturating_sub(started.elapsed());
            let timeout = self.request_timeout.min(remaining);
            let mut err = match self.send_once(action, &body, timeout).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            // A last attempt cut short by the deadline says less than the failure before it
            // (a 500 or 429 is more useful in the message than "timed out").
            if err.kind == ApiErrorKind::Timeout && timeout < self.request_timeout {
                if let Some(prev) = previous.take() {
                    err = prev;
                }
            }
            err.attempts = attempt;
            if !err.is_retriable() {
                return Err(err);
            }
            let wait = err
                .retry_after
                .unwrap_or_else(|| self.retry.backoff(attempt));
            let remaining = deadline.saturating_sub(started.elapsed());
            if attempt >= self.retry.max_attempts || wait >= remaining {
                tracing::warn!(
                    action,
                    attempts = attempt,
                    error = %err.describe(),
                    "Data API request failed; giving up for now"
                );
                return Err(err);
            }
            tracing::debug!(
                action,
                attempt,
                wait_ms = wait.as_millis() as u64,
                error = %err.describe(),
                "Data API request failed; retrying"
            );
            previous = Some(err);
            tokio::time::sleep(wait).await;
        }
    }

    async fn insert_one(&self, doc: &EventDocument) -> Result<SaveOutcome, StorageError> {
        let document = Value::Object(doc.body.clone());
        let result = self.checked(
            self.call("insertOne", vec![("document", document)], self.deadline)
                .await
                // A 2xx counts only with the proof the contract gives (the `_id` sent, or `n: 1`).
                .and_then(|answer| check_inserted("insertOne", &answer, &[doc.id.as_str()])),
        );
        let err = match result {
            Ok(()) => return Ok(SaveOutcome::Inserted),
            Err(e) => e,
        };
        match err.duplicate.clone() {
            Some(DuplicateOn::Id) => {
                tracing::debug!(id = %doc.id, "Data API: already stored (duplicate key)");
                Ok(SaveOutcome::Duplicate)
            }
            // Another index named, or none: stored under this `_id` (some servers name another
            // unique index when the document is there already), else refused with the reason.
            Some(on) => match self.existing_ids(&[doc.id.as_str()]).await {
                Ok(found) if found.contains(&doc.id) => Ok(SaveOutcome::Duplicate),
                Ok(_) => Err(other_index(&on, &err)),
                Err(e) => Err(self.storage_error(*e)),
            },
            None => Err(self.storage_error(*err)),
        }
    }

    /// The ids among `ids` that are stored.
    async fn existing_ids(&self, ids: &[&str]) -> ApiResult<Vec<String>> {
        let answer = self
            .call(
                "find",
                vec![
                    ("filter", json!({"_id": {"$in": ids}})),
                    ("projection", json!({"_id": 1})),
                    ("limit", json!(ids.len())),
                ],
                self.deadline,
            )
            .await;
        let docs = self.checked(answer.and_then(|a| documents_of(a, "find")))?;
        Ok(docs
            .iter()
            .filter_map(|d| d.get("_id").and_then(Value::as_str).map(str::to_string))
            .collect())
    }

    /// Inserts `docs[idx]` with ordered `insertMany` requests, filling `out[i]` for each.
    async fn insert_many_indices(
        &self,
        docs: &[EventDocument],
        idx: Vec<usize>,
        out: &mut [Option<Result<SaveOutcome, StorageError>>],
    ) {
        let mut pending: std::collections::VecDeque<usize> = idx.into();
        while !pending.is_empty() {
            if pending.len() == 1 {
                let i = pending.pop_front().expect("one");
                out[i] = Some(self.insert_one(&docs[i]).await);
                return;
            }
            let n = pending.len().min(INSERT_MANY_CHUNK);
            let chunk: Vec<usize> = pending.drain(..n).collect();
            let ids: Vec<&str> = chunk.iter().map(|&i| docs[i].id.as_str()).collect();
            let documents: Vec<Value> = chunk
                .iter()
                .map(|&i| Value::Object(docs[i].body.clone()))
                .collect();
            let result = self.checked(
                self.call(
                    "insertMany",
                    vec![("documents", Value::Array(documents))],
                    self.deadline,
                )
                .await
                .and_then(|answer| check_inserted("insertMany", &answer, &ids)),
            );
            let err = match result {
                Ok(()) => {
                    for &i in &chunk {
                        out[i] = Some(Ok(SaveOutcome::Inserted));
                    }
                    continue;
                }
                Err(e) => e,
            };
            if let Some(on) = err.duplicate.clone() {
                // Ordered insert: everything before the duplicate landed, nothing after it was
                // tried. Only an `_id` duplicate says where it stopped.
                let position = match on {
                    DuplicateOn::Id => err
                        .error
                        .as_deref()
                        .and_then(|m| duplicate_position(m, &ids))
                        .or_else(|| duplicate_position(&err.body, &ids)),
                    _ => None,
                };
                let unknown: Vec<usize> = match position {
                    Some(p) => {
                        for &i in &chunk[..p] {
                            out[i] = Some(Ok(SaveOutcome::Inserted));
                        }
                        out[chunk[p]] = Some(Ok(SaveOutcome::Duplicate));
                        chunk[p + 1..].to_vec()
                    }
                    // The message does not say which: whatever exists now is stored (documents
                    // this request stored before the failure are among them).
                    None => chunk.clone(),
                };
                if unknown.is_empty() {
                    continue;
                }
                let unknown_ids: Vec<&str> = unknown.iter().map(|&i| docs[i].id.as_str()).collect();
                match self.existing_ids(&unknown_ids).await {
                    Ok(existing) => {
                        let mut retry = Vec::new();
                        for &i in &unknown {
                            if existing.iter().any(|e| *e == docs[i].id) {
                                out[i] = Some(Ok(SaveOutcome::Duplicate));
                            } else {
                                retry.push(i);
                            }
                        }
                        if position.is_some() {
                            // Not stored yet: insert them before the rest of the batch.
                            for i in retry.into_iter().rev() {
                                pending.push_front(i);
                            }
                        } else {
                            // No position to make progress with: one insertOne each (a document
                            // clashing on another unique index then fails alone).
                            for i in retry {
                                out[i] = Some(self.insert_one(&docs[i]).await);
                            }
                        }
                    }
                    Err(e) => {
                        let e = self.storage_error(*e);
                        for &i in unknown.iter().chain(pending.iter()) {
                            out[i] = Some(Err(e.clone()));
                        }
                        return;
                    }
                }
            } else if matches!(
                err.kind,
                ApiErrorKind::BadRequest | ApiErrorKind::PayloadTooLarge
            ) {
                // One bad document must not sink the others: one insertOne each, own outcomes
                // (a refusal that is not about a document then stays retriable for each).
                for &i in &chunk {
                    out[i] = Some(self.insert_one(&docs[i]).await);
                }
            } else {
                // Unreachable, refused, misconfigured or an answer that proves nothing: the rest
                // would fare no better.
                let e = self.storage_error(*err);
                for &i in chunk.iter().chain(pending.iter()) {
                    out[i] = Some(Err(e.clone()));
                }
                return;
            }
        }
    }
}

/// A duplicate on a unique index other than `_id`: the document is refused, with the reason.
fn other_index(on: &DuplicateOn, err: &ApiError) -> StorageError {
    let index = match on {
        DuplicateOn::Index(name) => format!("unique index `{name}`"),
        _ => "a unique index other than `_id`".to_string(),
    };
    StorageError::Rejected {
        backend: BACKEND,
        message: format!(
            "duplicate key on {index}, not `_id` (another document holds the same value): {}",
            err.describe()
        ),
    }
}
/// The position in `ids` of the key named by a duplicate-key message
/// (`… dup key: { _id: "PR-1:pending:u" }`).
fn duplicate_position(message: &str, ids: &[&str]) -> Option<usize> {
    let tail = &message[message.find("dup key")?..];
    ids.iter().position(|id| {
        serde_json::to_string(id)
            .map(|quoted| tail.contains(&quoted))
            .unwrap_or(false)
    })
}

fn documents_of(answer: Value, action: &str) -> ApiResult<Vec<Value>> {
    match answer {
        Value::Object(mut o) => match o.remove("documents") {
            Some(Value::Array(docs)) => Ok(docs.into_iter().map(decode_value).collect()),
            Some(Value::Null) => Ok(Vec::new()),
            _ => Err(decode_error(action, "no `documents` array in the answer")),
        },
        _ => Err(decode_error(action, "the answer is not a JSON object")),
    }
}

/// The `document` of a `findOne` answer (`null`: not found); no `document` key is not an answer.
fn document_of(answer: Value) -> ApiResult<Option<Value>> {
    match answer {
        Value::Object(mut o) => match o.remove("document") {
            Some(Value::Null) => Ok(None),
            Some(doc @ Value::Object(_)) => Ok(Some(decode_value(doc))),
            Some(_) => Err(decode_error("findOne", "`document` is not an object")),
            None => Err(decode_error("findOne", "no `document` in the answer")),
        },
        _ => Err(decode_error("findOne", "the answer is not a JSON object")),
    }
}

fn decode_error(action: &str, message: &str) -> Box<ApiError> {
    Box::new(ApiError::transport(
        action,
        ApiErrorKind::Decode,
        message.to_string(),
    ))
}

fn reqwest_error(action: &str, e: reqwest::Error) -> Box<ApiError> {
    let kind = if e.is_timeout() {
        ApiErrorKind::Timeout
    } else {
        ApiErrorKind::Transport
    };
    // Without the URL (it could carry a `secret` query parameter); with the causes.
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    Box::new(ApiError::transport(action, kind, message))
}

#[async_trait]
impl Storage for DataApiStorage {
    fn name(&self) -> &'static str {
        BACKEND
    }

    async fn save(&self, doc: &EventDocument) -> Result<SaveOutcome, StorageError> {
        self.insert_one(doc).await
    }

    /// `insertMany` in chunks. A repeated id inside `docs` is a `Duplicate` of its first copy. A
    /// chunk counts as `Inserted` only when the answer names every `_id` sent (or `n` equals the
    /// count). When an (ordered) `insertMany` stops at an `_id` duplicate (any status), the
    /// documents before it are `Inserted`, that one `Duplicate`, and the rest are looked up with
    /// `find` (stored → `Duplicate`) and inserted again. A duplicate on another unique index does
    /// not say where the batch stopped: every document is looked up (stored → `Duplicate`, which
    /// then includes the ones this request stored) and the rest inserted one by one, so the
    /// clashing one fails alone. A 400/413/422 that is not a duplicate falls back to one
    /// `insertOne` per document, so one bad document fails alone. Any other failure (redirect,
    /// auth, unreachable, an answer that proves nothing) is that error for every document left.
    async fn save_many(&self, docs: &[EventDocument]) -> Vec<Result<SaveOutcome, StorageError>> {
        let mut out: Vec<Option<Result<SaveOutcome, StorageError>>> = vec![None; docs.len()];
        let mut first: HashMap<&str, usize> = HashMap::new();
        let mut unique = Vec::new();
        for (i, d) in docs.iter().enumerate() {
            if !first.contains_key(d.id.as_str()) {
                first.insert(d.id.as_str(), i);
                unique.push(i);
            }
        }
        self.insert_many_indices(docs, unique, &mut out).await;
        (0..docs.len())
            .map(|i| {
                let f = first[docs[i].id.as_str()];
                if f == i {
                    out[i].clone().unwrap_or_else(|| {
                        Err(StorageError::Internal {
                            backend: BACKEND,
                            message: "insertMany left a document without an outcome".into(),
                        })
                    })
                } else {
                    match &out[f] {
                        Some(Ok(_)) => Ok(SaveOutcome::Duplicate),
                        Some(Err(e)) => Err(e.clone()),
                        None => Err(StorageError::Internal {
                            backend: BACKEND,
                            message: "insertMany left a document without an outcome".into(),
                        }),
                    }
                }
            })
            .collect()
    }

    /// A `findOne` that must answer `{"document": …}`: fails on redirects, refused
    /// credentials, unknown endpoints and pages that are not the Data API (`/ready` turns 503).
    async fn ping(&self) -> Result<(), StorageError> {
        let answer = self
            .call(
                "findOne",
                vec![
                    ("filter", json!({"_id": PING_ID})),
                    ("projection", json!({"_id": 1})),
                ],
                self.request_timeout,
            )
            .await;
        self.checked(answer.and_then(document_of))
            .map(|_| ())
            .map_err(|e| self.storage_error(*e))
    }

    async fn get(&self, id: &str) -> Result<Option<Value>, StorageError> {
        let answer = self
            .call(
                "findOne",
                vec![("filter", json!({"_id": id}))],
                self.deadline,
            )
            .await;
        self.checked(answer.and_then(document_of))
            .map_err(|e| self.storage_error(*e))
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Value>, StorageError> {
        let mut filter = Map::new();
        for (key, value) in [
            ("_connect.event_type", &query.event_type),
            ("_connect.status", &query.status),
            ("_connect.object_id", &query.object_id),
        ] {
            if let Some(v) = value {
                filter.insert(key.into(), json!(v));
            }
        }
        let answer = self
            .call(
                "find",
                vec![
                    ("filter", Value::Object(filter)),
                    ("sort", json!({"_connect.received_at": -1, "_id": -1})),
                    ("limit", json!(query.effective_limit())),
                ],
                self.deadline,
            )
            .await;
        self.checked(answer.and_then(|a| documents_of(a, "find")))
            .map_err(|e| self.storage_error(*e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(500),
            max_attempts: 5,
        };
        for attempt in 1..40 {
            assert!(p.backoff(attempt) <= Duration::from_millis(500));
        }
        assert!(p.backoff(1) <= Duration::from_millis(100));
    }

    #[test]
    fn retry_after_seconds_and_date() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        h.insert("retry-after", HeaderValue::from_str(&later).unwrap());
        let d = parse_retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&h), None);
    }

    #[test]
    fn duplicate_key_answers() {
        let h = HeaderMap::new();
        let text = b"Failed to insert document: FunctionError: (DuplicateKey) E11000 duplicate key error collection: db.c index: _id_ dup key: { _id: \"PR-2:pending:u\" }";
        let e = ApiError::from_answer("insertMany", StatusCode::BAD_REQUEST, &h, text);
        assert_eq!(e.duplicate, Some(DuplicateOn::Id));
        assert!(!e.is_retriable());
        assert_eq!(
            duplicate_position(&e.body, &["PR-1:pending:u", "PR-2:pending:u", "PR-3"]),
            Some(1)
        );
        assert_eq!(duplicate_position(&e.body, &["PR-2:pending"]), None);
        // The same on a 500 (a widely used gateway) or a 502: a duplicate, never retried.
        for status in [StatusCode::INTERNAL_SERVER_ERROR, StatusCode::BAD_GATEWAY] {
            let e = ApiError::from_answer("insertOne", status, &h, text);
            assert_eq!(e.duplicate, Some(DuplicateOn::Id), "{status}");
            assert!(!e.is_retriable());
        }
        // JSON: `code: 11000` with `keyPattern`, or `error_code` alone (index not named).
        let e = ApiError::from_answer(
            "insertOne",
            StatusCode::INTERNAL_SERVER_ERROR,
            &h,
            br#"{"code": 11000, "errmsg": "duplicate", "keyPattern": {"_id": 1}}"#,
        );
        assert_eq!(e.duplicate, Some(DuplicateOn::Id));
        let e = ApiError::from_answer(
            "insertOne",
            StatusCode::CONFLICT,
            &h,
            br#"{"error": "duplicate", "error_code": "DuplicateKey"}"#,
        );
        assert_eq!(e.duplicate, Some(DuplicateOn::Unknown));
        // Another unique index: named.
        let e = ApiError::from_answer(
            "insertOne",
            StatusCode::BAD_REQUEST,
            &h,
            b"E11000 duplicate key error collection: db.c index: id_1 dup key: { id: \"PR-1\" }",
        );
        assert_eq!(e.duplicate, Some(DuplicateOn::Index("id_1".into())));
        assert_eq!(
            duplicate_on("E11000 dup key: { id: 1 }", None),
            DuplicateOn::Index("id".into())
        );
        // A 2xx never is one; nor a 400 about something else.
        let ok = ApiError::from_answer("insertOne", StatusCode::OK, &h, text);
        assert_eq!(ok.duplicate, None);
        let other = ApiError::from_answer(
            "insertOne",
            StatusCode::BAD_REQUEST,
            &h,
            b"Failed to insert document: FunctionError: mongodb insert: argument must be an object",
        );
        assert!(!other.is_duplicate_key());
        assert!(matches!(
            other.into_storage_error(),
            StorageError::Rejected { .. }
        ));
    }

    #[test]
    fn only_a_400_about_the_document_is_permanent() {
        let h = HeaderMap::new();
        let kind = |status: u16, body: &str| {
            ApiError::from_answer(
                "insertOne",
                StatusCode::from_u16(status).unwrap(),
                &h,
                body.as_bytes(),
            )
            .into_storage_error()
        };
        for body in [
            "Failed to insert document: FunctionError: (DocumentValidationFailure) Document failed validation",
            "Failed to insert document: FunctionError: (BSONObjectTooLarge) object to insert too large",
            "Failed to insert document: FunctionError: (DollarPrefixedFieldName) $x is not valid for storage",
        ] {
            assert!(matches!(kind(400, body), StorageError::Rejected { .. }), "{body}");
        }
        assert!(matches!(kind(413, ""), StorageError::Rejected { .. }));
        for (status, body) in [
            (
                400,
                r#"{"error":"no authentication methods were specified","error_code":"InvalidParameter"}"#,
            ),
            (
                400,
                r#"{"error":"The data source 'X' is disabled or does not exist"}"#,
            ),
            (
                400,
                "Only application/ejson and application/json content types accepted.",
            ),
            (
                400,
                "Failed to insert document: FunctionError: (NotWritablePrimary) not primary",
            ),
            (400, ""),
            (
                401,
                r#"{"error":"invalid session","error_code":"InvalidSession"}"#,
            ),
            (403, "<html>Forbidden</html>"),
            (404, ""),
            (307, ""),
            (301, ""),
        ] {
            let e = kind(status, body);
            assert!(
                matches!(e, StorageError::Config { .. }),
                "{status} {body}: {e}"
            );
            assert!(e.is_retriable());
        }
        for status in [405, 409, 429, 500, 503] {
            assert!(kind(status, "x").is_retriable(), "{status}");
        }
    }

    #[test]
    fn endpoints_and_locations_are_shown_without_secrets() {
        let url = url::Url::parse(
            "https://user:pw-s3cr3t@gw.example:8443/app/a/endpoint/data/v1?secret=q-s3cr3t#f",
        )
        .unwrap();
        let shown = shown_endpoint(&url);
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(
            shown.starts_with("https://")
                && shown.contains("gw.example:8443/app/a/endpoint/data/v1"),
            "{shown}"
        );
        for location in [
            "http://u:pw-s3cr3t@elsewhere/x?secret=q-s3cr3t",
            "//u:pw-s3cr3t@elsewhere/x?secret=q-s3cr3t",
            "/x?secret=q-s3cr3t",
        ] {
            let shown = shown_location(location);
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(shown.contains("/x"), "{shown}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::LOCATION,
            HeaderValue::from_static("http://u:pw-s3cr3t@elsewhere/x?secret=q-s3cr3t"),
        );
        let e = ApiError::from_answer(
            "insertOne",
            StatusCode::TEMPORARY_REDIRECT,
            &h,
            b"<a href='http://u:pw-s3cr3t@elsewhere/x?secret=q-s3cr3t'>moved</a>",
        );
        let msg = e.into_storage_error().to_string();
        assert!(
            msg.contains("HTTP 307 redirect to http://u:***@elsewhere/x"),
            "{msg}"
        );
        assert!(msg.contains("DATA_API_ENDPOINT"), "{msg}");
        assert!(!msg.contains("s3cr3t"), "{msg}");
    }

    #[test]
    fn insert_answers_must_name_what_was_sent() {
        let ok = |action: &str, v: Value, ids: &[&str]| check_inserted(action, &v, ids).is_ok();
        assert!(ok("insertOne", json!({"insertedId": "a"}), &["a"]));
        assert!(ok("insertOne", json!({"n": 1}), &["a"]));
        assert!(!ok("insertOne", json!({"insertedId": "b"}), &["a"]));
        assert!(!ok("insertOne", json!({}), &["a"]));
        assert!(!ok("insertOne", json!({"n": 0}), &["a"]));
        assert!(!ok("insertOne", json!("<html>"), &["a"]));
        assert!(ok(
            "insertMany",
            json!({"insertedIds": ["a", "b"]}),
            &["a", "b"]
        ));
        assert!(ok("insertMany", json!({"n": 2}), &["a", "b"]));
        assert!(!ok(
            "insertMany",
            json!({"insertedIds": ["a"]}),
            &["a", "b"]
        ));
        assert!(!ok(
            "insertMany",
            json!({"insertedIds": ["b", "a"]}),
            &["a", "b"]
        ));
        assert!(!ok("insertMany", json!({"insertedId": "a"}), &["a", "b"]));
    }

    #[test]
    fn json_error_bodies_are_kept() {
        let h = HeaderMap::new();
        let body = br#"{"error":"invalid session: error finding user for endpoint","error_code":"InvalidSession","link":"https://example/logs?co_id=1"}"#;
        let e = ApiError::from_answer("insertOne", StatusCode::UNAUTHORIZED, &h, body);
        assert_eq!(e.kind, ApiErrorKind::Unauthorized);
        let msg = e.into_storage_error_with("DATA_API_KEY").to_string();
        assert!(msg.contains("check DATA_API_KEY"), "{msg}");
        assert!(
            msg.contains("invalid session: error finding user for endpoint"),
            "{msg}"
        );
        assert!(
            msg.contains("InvalidSession") && msg.contains("co_id=1"),
            "{msg}"
        );
    }

    #[test]
    fn ejson_mapping_keeps_types() {
        let v = json!({"small": 5, "big": i64::MAX, "f": 1.5, "s": "x", "n": null, "a": [true]});
        let b = json_to_bson(&v);
        let d = b.as_document().unwrap();
        assert_eq!(d.get("small"), Some(&Bson::Int32(5)));
        assert_eq!(d.get("big"), Some(&Bson::Int64(i64::MAX)));
        assert_eq!(d.get("f"), Some(&Bson::Double(1.5)));
        let canonical = b.clone().into_canonical_extjson();
        assert_eq!(
            canonical["big"],
            json!({"$numberLong": i64::MAX.to_string()})
        );
        assert_eq!(decode_value(canonical), v);
    }
}
