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
//! **Answers.** Any 2xx is success (inserts answer 201, the rest 200). The body is parsed as JSON
//! whatever its `Content-Type` says (the service labelled JSON `text/plain`), and decoded as
//! Extended JSON (canonical or relaxed) into relaxed JSON values. Error bodies, JSON
//! (`{error, error_code, link}`) or plain text (database-level errors), are kept in the error.
//!
//! **Retries.** Connect errors, timeouts, resets, 429 and 5xx are retried with full-jitter
//! exponential backoff, honouring `Retry-After`, within a per-request timeout and an overall
//! deadline; then the error is [`StorageError::Unavailable`] / [`StorageError::Timeout`] (retriable:
//! the event is answered `reschedule`). 4xx answers are not retried.
//!
//! **Idempotency.** `_id` is deterministic, so an insert retried after an unclear failure (timeout,
//! connection dropped after the write committed) that answers "duplicate key" has landed:
//! [`SaveOutcome::Duplicate`], a success. `insertMany` is ordered (it stops at the first error);
//! see [`DataApiStorage::save_many`] for how every document still gets its own outcome.
//!
//! Credentials are sent as sensitive headers and never appear in logs or error messages.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bson::Bson;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use serde_json::{json, Map, Value};

use super::{EventDocument, ListQuery, SaveOutcome, Storage, StorageError};
use crate::config::{Secret, Settings};

const BACKEND: &str = "data_api";
/// Most documents sent in one `insertMany` request.
const INSERT_MANY_CHUNK: usize = 500;
/// Error bodies kept in messages are cut to this many bytes.
const MAX_ERROR_BODY: usize = 2048;
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
    /// 400: bad request, database-level failure (plain text), duplicate key.
    BadRequest,
    /// 401 / 403: credentials refused.
    Unauthorized,
    /// 404: app, region, version or action not found (misconfigured endpoint).
    NotFound,
    /// 429: throttled.
    TooManyRequests,
    /// 5xx.
    Server,
    /// Connect error, reset, connection dropped before a complete answer.
    Transport,
    /// The request (or the overall deadline) timed out.
    Timeout,
    /// A 2xx answer whose body is not what the action returns.
    Decode,
    /// Any other status.
    Other,
}

/// A failed Data API call, with the server's answer kept.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ApiErrorKind,
    pub action: String,
    pub status: Option<u16>,
    /// `error` of a JSON error body.
    pub error: Option<String>,
    /// `error_code` of a JSON error body.
    pub error_code: Option<String>,
    /// `link` of a JSON error body.
    pub link: Option<String>,
    /// The raw body (cut to a few KiB), or the transport error.
    pub body: String,
    /// `Retry-After`, when the server sent one.
    pub retry_after: Option<Duration>,
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
            attempts: 0,
        }
    }

    fn from_answer(action: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Self {
        let kind = match status.as_u16() {
            400 => ApiErrorKind::BadRequest,
            401 | 403 => ApiErrorKind::Unauthorized,
            404 => ApiErrorKind::NotFound,
            408 => ApiErrorKind::Timeout,
            429 => ApiErrorKind::TooManyRequests,
            500..=599 => ApiErrorKind::Server,
            _ => ApiErrorKind::Other,
        };
        let text = String::from_utf8_lossy(body);
        let (mut error, mut error_code, mut link) = (None, None, None);
        if let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) {
            let field = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
            error = field("error");
            error_code = field("error_code");
            link = field("link");
        }
        Self {
            kind,
            action: action.to_string(),
            status: Some(status.as_u16()),
            error,
            error_code,
            link,
            body: truncate(text.trim(), MAX_ERROR_BODY),
            retry_after: parse_retry_after(headers),
            attempts: 0,
        }
    }

    /// Whether trying the same request again can succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self.kind,
            ApiErrorKind::TooManyRequests
                | ApiErrorKind::Server
                | ApiErrorKind::Transport
                | ApiErrorKind::Timeout
        )
    }

    /// A duplicate-key answer: 400 with a plain-text
    /// `Failed to insert document: FunctionError: (DuplicateKey) E11000 duplicate key error …`
    /// (or a JSON body saying the same; 409 from gateways that map it so).
    pub fn is_duplicate_key(&self) -> bool {
        matches!(self.status, Some(400) | Some(409))
            && (self.body.contains("E11000")
                || self.body.contains("DuplicateKey")
                || self.error_code.as_deref() == Some("DuplicateKey"))
    }

    fn describe(&self) -> String {
        let mut s = self.action.clone();
        if let Some(status) = self.status {
            s.push_str(&format!(": HTTP {status}"));
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

    /// The storage error this comes to: retriable kinds → `Unavailable`/`Timeout` (reschedule),
    /// 404 → `Config`, the rest → `Rejected` (fail).
    pub fn into_storage_error(self) -> StorageError {
        let message = self.describe();
        match self.kind {
            ApiErrorKind::Timeout => StorageError::Timeout {
                backend: BACKEND,
                message,
            },
            ApiErrorKind::TooManyRequests | ApiErrorKind::Server | ApiErrorKind::Transport => {
                StorageError::Unavailable {
                    backend: BACKEND,
                    message,
                }
            }
            ApiErrorKind::NotFound => StorageError::Config {
                backend: BACKEND,
                message: format!("{message} (check DATA_API_ENDPOINT: app id, region, version)"),
            },
            ApiErrorKind::BadRequest
            | ApiErrorKind::Unauthorized
            | ApiErrorKind::Decode
            | ApiErrorKind::Other => StorageError::Rejected {
                backend: BACKEND,
                message,
            },
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
    base: String,
    auth: Auth,
    data_source: String,
    database: String,
    collection: String,
    ejson: bool,
    request_timeout: Duration,
    deadline: Duration,
    retry: RetryPolicy,
}

impl std::fmt::Debug for DataApiStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataApiStorage")
            .field("base", &self.base)
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

impl DataApiStorage {
    /// Builds the backend from `settings.storage.data_api` (and `storage.database`). Makes no
    /// request: a gateway that is down at start-up makes events reschedule, not the daemon fail.
    pub async fn connect(settings: &Settings) -> Result<Self, StorageError> {
        let s = &settings.storage.data_api;
        let endpoint = s.endpoint.trim().trim_end_matches('/');
        let url = url::Url::parse(endpoint)
            .map_err(|e| config_error(format!("DATA_API_ENDPOINT `{endpoint}`: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(config_error(format!(
                "DATA_API_ENDPOINT `{endpoint}`: must be an http(s) URL"
            )));
        }
        for (name, value) in [
            ("DB (storage.database)", &settings.storage.database),
            ("CLUSTER (storage.data_api.cluster)", &s.cluster),
            (
                "HTTP_COLLECTION (storage.data_api.collection)",
                &s.collection,
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
            endpoint,
            auth = auth.kind(),
            data_source = %s.cluster,
            database = %settings.storage.database,
            collection = %s.collection,
            ejson = s.ejson,
            "Data API backend configured"
        );
        Ok(Self {
            http,
            base: endpoint.to_string(),
            auth,
            data_source: s.cluster.clone(),
            database: settings.storage.database.clone(),
            collection: s.collection.clone(),
            ejson: s.ejson,
            request_timeout,
            deadline: Duration::from_millis(s.deadline_ms.max(s.request_timeout_ms)),
            retry: RetryPolicy::default(),
        })
    }

    /// Replaces the backoff policy (tests use short waits).
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
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

    async fn send_once(&self, action: &str, body: &[u8], timeout: Duration) -> ApiResult<Value> {
        let url = format!("{}/action/{action}", self.base);
        let result = self
            .http
            .post(&url)
            .headers(self.headers())
            .timeout(timeout)
            .body(body.to_vec())
            .send()
            .await;
        let response = result.map_err(|e| reqwest_error(action, e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| reqwest_error(action, e))?;
        if !status.is_success() {
            return Err(Box::new(ApiError::from_answer(
                action, status, &headers, &bytes,
            )));
        }
        // Whatever the Content-Type says (text/plain happened): it is JSON or EJSON.
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => Ok(v),
            Err(e) => {
                let mut err = ApiError::from_answer(action, status, &headers, &bytes);
                err.kind = ApiErrorKind::Decode;
                err.body = format!("answer is not JSON ({e}): {}", err.body);
                Err(Box::new(err))
            }
        }
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
        match self
            .call("insertOne", vec![("document", document)], self.deadline)
            .await
        {
            // 200 or 201; the insertedId is ours (deterministic), nothing more to read.
            Ok(_) => Ok(SaveOutcome::Inserted),
            Err(e) if e.is_duplicate_key() => {
                tracing::debug!(id = %doc.id, "Data API: already stored (duplicate key)");
                Ok(SaveOutcome::Duplicate)
            }
            // A 2xx with a garbled body still means the gateway committed the insert.
            Err(e) if e.kind == ApiErrorKind::Decode => {
                tracing::warn!(id = %doc.id, error = %e.describe(), "Data API insertOne: unreadable 2xx answer, counted as stored");
                Ok(SaveOutcome::Inserted)
            }
            Err(e) => Err(e.into_storage_error()),
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
            .await?;
        let docs = documents_of(answer, "find")?;
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
            let documents: Vec<Value> = chunk
                .iter()
                .map(|&i| Value::Object(docs[i].body.clone()))
                .collect();
            let result = self
                .call(
                    "insertMany",
                    vec![("documents", Value::Array(documents))],
                    self.deadline,
                )
                .await;
            let err = match result {
                Ok(_) => {
                    for &i in &chunk {
                        out[i] = Some(Ok(SaveOutcome::Inserted));
                    }
                    continue;
                }
                Err(e) if e.kind == ApiErrorKind::Decode => {
                    for &i in &chunk {
                        out[i] = Some(Ok(SaveOutcome::Inserted));
                    }
                    continue;
                }
                Err(e) => e,
            };
            if err.is_duplicate_key() {
                // Ordered insert: everything before the duplicate landed, nothing after it was tried.
                let ids: Vec<&str> = chunk.iter().map(|&i| docs[i].id.as_str()).collect();
                let position = duplicate_position(&err.body, &ids);
                let unknown: Vec<usize> = match position {
                    Some(p) => {
                        for &i in &chunk[..p] {
                            out[i] = Some(Ok(SaveOutcome::Inserted));
                        }
                        out[chunk[p]] = Some(Ok(SaveOutcome::Duplicate));
                        chunk[p + 1..].to_vec()
                    }
                    // The message does not say which: whatever exists now counts as a duplicate
                    // (documents this request stored before the failure are among them).
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
                            // No position to make progress with: one insertOne each.
                            for i in retry {
                                out[i] = Some(self.insert_one(&docs[i]).await);
                            }
                        }
                    }
                    Err(e) => {
                        let e = e.into_storage_error();
                        for &i in unknown.iter().chain(pending.iter()) {
                            out[i] = Some(Err(e.clone()));
                        }
                        return;
                    }
                }
            } else if err.kind == ApiErrorKind::BadRequest {
                // One bad document must not sink the others: one insertOne each, own outcomes.
                for &i in &chunk {
                    out[i] = Some(self.insert_one(&docs[i]).await);
                }
            } else {
                // Unreachable, refused or misconfigured: the rest would fare no better.
                let e = err.into_storage_error();
                for &i in chunk.iter().chain(pending.iter()) {
                    out[i] = Some(Err(e.clone()));
                }
                return;
            }
        }
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

    /// `insertMany` in chunks. A repeated id inside `docs` is a `Duplicate` of its first copy. When
    /// an (ordered) `insertMany` stops at a duplicate, the documents before it are `Inserted`, that
    /// one `Duplicate`, and the rest are looked up with `find` (stored → `Duplicate`) and inserted
    /// again. A 400 that is not a duplicate falls back to one `insertOne` per document, so one bad
    /// document fails alone.
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

    async fn ping(&self) -> Result<(), StorageError> {
        self.call(
            "findOne",
            vec![
                ("filter", json!({"_id": PING_ID})),
                ("projection", json!({"_id": 1})),
            ],
            self.request_timeout,
        )
        .await
        .map(|_| ())
        .map_err(|e| e.into_storage_error())
    }

    async fn get(&self, id: &str) -> Result<Option<Value>, StorageError> {
        let answer = self
            .call(
                "findOne",
                vec![("filter", json!({"_id": id}))],
                self.deadline,
            )
            .await
            .map_err(|e| e.into_storage_error())?;
        match answer {
            Value::Object(mut o) => match o.remove("document") {
                Some(Value::Null) | None => Ok(None),
                Some(doc) => Ok(Some(decode_value(doc))),
            },
            _ => {
                Err(decode_error("findOne", "the answer is not a JSON object").into_storage_error())
            }
        }
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
            .await
            .map_err(|e| e.into_storage_error())?;
        documents_of(answer, "find").map_err(|e| e.into_storage_error())
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
        assert!(e.is_duplicate_key());
        assert!(!e.is_retriable());
        assert_eq!(
            duplicate_position(&e.body, &["PR-1:pending:u", "PR-2:pending:u", "PR-3"]),
            Some(1)
        );
        assert_eq!(duplicate_position(&e.body, &["PR-2:pending"]), None);
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
    fn json_error_bodies_are_kept() {
        let h = HeaderMap::new();
        let body = br#"{"error":"invalid session: error finding user for endpoint","error_code":"InvalidSession","link":"https://example/logs?co_id=1"}"#;
        let e = ApiError::from_answer("insertOne", StatusCode::UNAUTHORIZED, &h, body);
        assert_eq!(e.kind, ApiErrorKind::Unauthorized);
        let msg = e.into_storage_error().to_string();
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
