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
//! deadline; then the error is [`ErrorKind::Unavailable`](crate::storage::ErrorKind::Unavailable) / [`ErrorKind::Timeout`](crate::storage::ErrorKind::Timeout) (retriable:
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
use std::time::Duration;

use async_trait::async_trait;
use bson::Bson;
use serde_json::{json, Map, Value};

use crate::storage::error::StorageError;
use crate::storage::store::{EventDocument, ListQuery, SaveOutcome, Storage};

mod call;
mod errors;
mod insert;
pub mod settings;

use crate::storage::backend::{self, Backend};

pub use call::RetryPolicy;
pub use errors::{shown_endpoint, ApiError, ApiErrorKind, DuplicateOn};

use call::Auth;
use insert::{document_of, documents_of};
use settings::Params;

const BACKEND: &str = "data_api";

/// This backend in the registry (`storage/mod.rs`).
pub const DESCRIPTOR: Backend = Backend {
    name: BACKEND,
    defaults: include_str!("default.toml"),
    env: settings::ENV,
    platform_variables: settings::PLATFORM_VARIABLES,
    uses_database: true,
    auto: true,
    parse: backend::parse::<settings::Settings>,
    open: |section, common| {
        let settings = backend::section::<settings::Settings>(section).clone();
        let database = common.database.to_string();
        Box::pin(async move {
            let store = DataApiStorage::connect(Params {
                settings: &settings,
                database: &database,
            })
            .await?;
            Ok(std::sync::Arc::new(store) as std::sync::Arc<dyn Storage>)
        })
    },
};
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

/// A plain JSON value as BSON (field names kept), for the EJSON mode.
pub fn json_to_bson(v: &Value) -> Bson {
    crate::storage::bson_json::json_to_bson(v, crate::storage::bson_json::keep_key)
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
    StorageError::config(BACKEND, message)
}

/// The credentials to send: the key, else a bearer token, else e-mail and password, else none.
fn auth_of(s: &settings::Settings) -> Result<Auth, StorageError> {
    Ok(if !s.api_key.is_empty() {
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
    })
}

/// The backend's HTTP client: redirects never followed (a configuration error, see
/// `ApiErrorKind::Redirect`), bounded connect, kept-alive pooled connections.
fn http_client(request_timeout: Duration) -> Result<reqwest::Client, StorageError> {
    reqwest::Client::builder()
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
        .map_err(|e| config_error(format!("HTTP client: {e}")))
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
        let auth = auth_of(s)?;
        if s.request_timeout_ms == 0 || s.deadline_ms == 0 {
            return Err(config_error(
                "DATA_API_TIMEOUT_MS and DATA_API_DEADLINE_MS must be positive",
            ));
        }
        let request_timeout = Duration::from_millis(s.request_timeout_ms);
        let http = http_client(request_timeout)?;
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
                        Err(StorageError::internal(
                            BACKEND,
                            "insertMany left a document without an outcome",
                        ))
                    })
                } else {
                    match &out[f] {
                        Some(Ok(_)) => Ok(SaveOutcome::Duplicate),
                        Some(Err(e)) => Err(e.clone()),
                        None => Err(StorageError::internal(
                            BACKEND,
                            "insertMany left a document without an outcome",
                        )),
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
            ("asset.id", &query.asset_id),
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
mod tests;
