//! The HTTP call: authentication, headers, one request with bounded answers, and the retry
//! loop (backoff with jitter, `Retry-After` honoured, all within the deadline).

use super::errors::{reqwest_error, ApiError, ApiErrorKind};
use super::{ApiResult, DataApiStorage, MAX_ERROR_READ, MAX_INSERT_ANSWER, MAX_READ_ANSWER};
use crate::config::secret::Secret;
use crate::retry::{self, Backoff};
use bson::Bson;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

/// The Data API's retries: full jitter over `base · 2^(attempt-1)`, capped, at most `max_attempts`
/// requests, all within the overall deadline (see [`crate::retry`]).
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
    /// The waits between the requests of one call: before attempt `n + 1` (`n` ≥ 1), uniform in
    /// `[0, min(cap, base·2^(n-1))]`; `max_attempts - 1` of them.
    pub fn policy(&self) -> retry::Policy {
        retry::Policy::exponential(self.base, self.cap)
            .with_max_retries(self.max_attempts.saturating_sub(1) as usize)
            .with_full_jitter()
    }
}

/// How requests authenticate (first configured wins, in this order).
#[derive(Clone)]
pub(super) enum Auth {
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
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Auth::ApiKey(_) => "api-key",
            Auth::Bearer(_) => "bearer",
            Auth::EmailPassword { .. } => "email/password",
            Auth::None => "none",
        }
    }
}

/// Reads at most `cap` bytes of `response`'s body, in chunks; `true` when there was more (the
/// rest is not read: the connection is dropped).
pub(super) async fn read_bounded(
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
pub(super) fn answer_cap(action: &str) -> usize {
    if action.starts_with("insert") {
        MAX_INSERT_ANSWER
    } else {
        MAX_READ_ANSWER
    }
}

impl DataApiStorage {
    pub(super) fn headers(&self) -> HeaderMap {
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
    pub(super) fn body(&self, fields: Vec<(&str, Value)>) -> Vec<u8> {
        let mut m = Map::new();
        m.insert("collection".into(), json!(self.collection));
        m.insert("database".into(), json!(self.database));
        m.insert("dataSource".into(), json!(self.data_source));
        for (k, v) in fields {
            m.insert(k.to_string(), v);
        }
        if self.ejson {
            let doc = crate::storage::bson_json::json_to_document(
                &m,
                crate::storage::bson_json::keep_key,
            );
            serde_json::to_vec(&Bson::Document(doc).into_canonical_extjson())
        } else {
            serde_json::to_vec(&Value::Object(m))
        }
        .expect("JSON values always serialise")
    }

    /// `{endpoint}/action/<action>`, the endpoint's query (a `secret`) kept.
    pub(super) fn action_url(&self, action: &str) -> url::Url {
        let mut url = self.base.clone();
        let path = format!("{}/action/{action}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url
    }

    pub(super) async fn send_once(
        &self,
        action: &str,
        body: &[u8],
        timeout: Duration,
    ) -> ApiResult<Value> {
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
    pub(super) fn checked<T>(&self, result: ApiResult<T>) -> ApiResult<T> {
        match &result {
            Ok(_) => self.report(None),
            Err(e) if e.is_problem() => self.report(Some(e)),
            Err(_) => {}
        }
        result
    }

    /// One action, retried on transient failures within `deadline`.
    pub(super) async fn call(
        &self,
        action: &str,
        fields: Vec<(&str, Value)>,
        deadline: Duration,
    ) -> ApiResult<Value> {
        let body = self.body(fields);
        let started = Instant::now();
        let mut attempt = 0u32;
        let mut waits: Option<Backoff> = None;
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
            let remaining = deadline.saturating_sub(started.elapsed());
            // Built at the first failure only: a call that succeeds at once builds nothing.
            let next = waits
                .get_or_insert_with(|| self.retry.policy().backoff())
                .next_wait(err.retry_after, Some(remaining));
            let Ok(wait) = next else {
                tracing::warn!(
                    action,
                    attempts = attempt,
                    error = %err.describe(),
                    "Data API request failed; giving up for now"
                );
                return Err(err);
            };
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
}
