//! The Connect REST calls a background task needs (§5.2): the status-gate count and the object GET.
//!
//! Like the runner: `Authorization` is the installation key when the task carries one, else
//! API_KEY; 5xx answers and network errors are retried 3 times, 1 s apart — but the wait is an
//! async sleep in this task only, never blocking other tasks. 4xx answers fail at once, except 429.
//!
//! | Case | Behaviour |
//! |---|---|
//! | concurrency | A task's calls run in one [`RestSession`]: it waits (FIFO) for one of `concurrency` slots (CONNECT_REST_CONCURRENCY) and holds it across the count, the GET and their retries, so under a burst started tasks finish first instead of every task spending its count before any GET. At most `concurrency` calls are on the wire (HTTP/1.1: that many connections). |
//! | budget | Slot wait, calls, retries and waits of a session end within the task's budget (BACKGROUND_TASK_MAX_EXECUTION_TIME); past it the call fails (`retry`). |
//! | 5xx, network error | Retried `retries` times, `retry_delay` apart (or after `Retry-After`). |
//! | body cut off mid-read | A network error, retried: `Content-Length` not reached, or (for JSON) a 2xx body whose JSON ends early. |
//! | 429 | Retried after its `Retry-After` (seconds or HTTP date) while that fits the remaining budget; otherwise the call fails at once (`retry`). |
//! | other 4xx, invalid JSON | Fail at once (the task answers `retry`). |
//! | long body | Every body read is bounded (`Tuning::rest_max_body_bytes`, 16 MiB): a longer answer is a retriable network error, never an unbounded buffer. |
//!
//! Error bodies are read up to 4 KiB and quoted as a 300-byte excerpt with control characters
//! escaped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::retry::{retry_after, GiveUp, Policy};
use crate::sanitize::error_chain;
use crate::telemetry::{FetchLabels, Metrics};

/// A REST failure, described without credentials.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("{method} {path} answered HTTP {status}: {body}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        body: String,
    },
    #[error("{method} {path} failed: {message}")]
    Network {
        method: &'static str,
        path: String,
        message: String,
    },
    #[error("{method} {path}: {message}")]
    Invalid {
        method: &'static str,
        path: String,
        message: String,
    },
    /// The task's time budget ran out (or a `Retry-After` would overrun it).
    #[error("{message}")]
    Budget { message: String },
}

pub struct Rest {
    client: reqwest::Client,
    /// `http(s)://host[:port]/public/v1/`
    base: String,
    /// `retries` waits of `retry_delay` (a `Retry-After` takes a wait's place).
    retry: Policy,
    metrics: Arc<Metrics>,
    slots: tokio::sync::Semaphore,
    max_body_bytes: usize,
}

/// How much of an error answer is read (for its excerpt).
const ERROR_BODY_BYTES: usize = 4096;

/// Why a bounded body read stopped.
enum BodyError {
    TooLong,
    Network(String),
}

/// Reads at most `limit` bytes of `resp`'s body (a `Content-Length` above it is refused unread).
async fn read_bounded(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLong);
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(BodyError::TooLong);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(BodyError::Network(error_chain(&e.without_url(), true))),
        }
    }
}

impl Rest {
    pub fn new(
        client: reqwest::Client,
        base: String,
        retries: u32,
        retry_delay: Duration,
        metrics: Arc<Metrics>,
        concurrency: usize,
        max_body_bytes: usize,
    ) -> Self {
        Self {
            client,
            base,
            retry: Policy::constant(retry_delay).with_max_retries(retries as usize),
            metrics,
            slots: tokio::sync::Semaphore::new(concurrency.max(1)),
            max_body_bytes: max_body_bytes.max(1),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// One task's REST budget: waits (in arrival order) for a slot, which the session then holds
    /// across all its calls and retries, so a started task finishes before a queued one starts.
    /// Everything — the wait for the slot included — must end within `budget` from now.
    pub async fn session(&self, budget: Duration) -> Result<RestSession<'_>, RestError> {
        let deadline = tokio::time::Instant::now() + budget;
        match tokio::time::timeout_at(deadline, self.slots.acquire()).await {
            Ok(slot) => Ok(RestSession {
                rest: self,
                _slot: slot.expect("never closed"),
                deadline,
                budget,
            }),
            Err(_) => Err(RestError::Budget {
                message: format!(
                    "no Connect REST slot (CONNECT_REST_CONCURRENCY) came free within the task's time budget ({} s)",
                    budget.as_secs()
                ),
            }),
        }
    }

    fn observe(&self, step: &str, outcome: &str, started: Instant) {
        self.metrics
            .fetch_latency
            .get_or_create(&FetchLabels {
                step: step.to_string(),
                outcome: outcome.to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// One task's REST calls under one concurrency slot and one deadline (see [`Rest::session`]).
pub struct RestSession<'a> {
    rest: &'a Rest,
    _slot: tokio::sync::SemaphorePermit<'a>,
    deadline: tokio::time::Instant,
    budget: Duration,
}

/// A network failure of the call to `path`.
fn network_error(method: &'static str, path: &str, message: String) -> RestError {
    RestError::Network {
        method,
        path: path.to_string(),
        message,
    }
}

/// A non-2xx answer: retriable when 5xx or 429, with the wait its `Retry-After` asks for.
async fn error_answer(resp: reqwest::Response, method: &'static str, path: &str) -> Attempt {
    let code = resp.status().as_u16();
    let wait = retry_after(resp.headers());
    let body = match read_bounded(resp, ERROR_BODY_BYTES).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => String::new(),
    };
    Attempt::Failed {
        outcome: format!("http_{code}"),
        retriable: code >= 500 || code == 429,
        wait,
        err: RestError::Status {
            method,
            path: path.to_string(),
            status: code,
            body: crate::sanitize::escaped_excerpt(&body, 300),
        },
    }
}

/// One attempt's outcome.
enum Attempt {
    Ok(reqwest::header::HeaderMap, Vec<u8>, Option<Value>),
    Failed {
        outcome: String,
        retriable: bool,
        wait: Option<Duration>,
        err: RestError,
    },
}

impl RestSession<'_> {
    /// GET with the runner's retry policy, within the session's deadline: 5xx, 429 and network
    /// errors (a body cut off mid-read included) are retried `retries` times, `retry_delay` apart
    /// or after the `Retry-After` the answer asks for — unless that wait does not fit the
    /// remaining budget, which ends the call at once. With `json`, a 2xx body whose JSON ends early
    /// is a cut-off body (retried); other invalid JSON is not retried.
    async fn get(
        &self,
        step: &str,
        path: &str,
        key: &str,
        json: bool,
    ) -> Result<(reqwest::header::HeaderMap, Vec<u8>, Option<Value>), RestError> {
        self.call(step, Method::GET, path, key, None, json).await
    }

    /// Any method, with an optional JSON body, under the same retry policy as [`Self::get`].
    async fn call(
        &self,
        step: &str,
        method: Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
        json: bool,
    ) -> Result<(reqwest::header::HeaderMap, Vec<u8>, Option<Value>), RestError> {
        let rest = self.rest;
        let url = format!("{}{}", rest.base, path);
        let method_name = method_name(&method);
        let network = |message: String| network_error(method_name, path, message);
        let mut waits = None;
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let once = self.attempt(&method, &url, path, key, body, json);
            let result = match tokio::time::timeout_at(self.deadline, once).await {
                Ok(r) => r,
                Err(_) => {
                    rest.observe(step, "timeout", started);
                    return Err(network(format!(
                        "no complete answer within the task's time budget ({} s)",
                        self.budget.as_secs()
                    )));
                }
            };
            let (outcome, retriable, wait, err) = match result {
                Attempt::Ok(headers, body, value) => {
                    rest.observe(step, "ok", started);
                    return Ok((headers, body, value));
                }
                Attempt::Failed {
                    outcome,
                    retriable,
                    wait,
                    err,
                } => (outcome, retriable, wait, err),
            };
            rest.observe(step, &outcome, started);
            if !retriable {
                return Err(err);
            }
            let remaining = self
                .deadline
                .saturating_duration_since(tokio::time::Instant::now());
            let pause = match waits
                .get_or_insert_with(|| rest.retry.backoff())
                .next_wait(wait, Some(remaining))
            {
                Ok(pause) => pause,
                Err(GiveUp::Exhausted) => return Err(err),
                Err(GiveUp::Deadline { .. }) => {
                    return Err(RestError::Budget {
                        message: match wait {
                            Some(w) => format!(
                                "{err}; Retry-After asks for {} s, beyond the task's time budget ({} s): not waited for",
                                w.as_secs(),
                                self.budget.as_secs()
                            ),
                            None => format!("{err}; no time left in the task's budget to retry"),
                        },
                    })
                }
            };
            attempt += 1;
            tracing::debug!(error = %err, attempt, wait_ms = pause.as_millis() as u64, "Connect REST call failed; retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// One call: its answer read and classified (success, retriable or not).
    async fn attempt(
        &self,
        method: &Method,
        url: &str,
        path: &str,
        key: &str,
        body: Option<&Value>,
        json: bool,
    ) -> Attempt {
        let method_name = method_name(method);
        let mut request = self
            .rest
            .client
            .request(method.clone(), url)
            .header(reqwest::header::AUTHORIZATION, key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let resp = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Failed {
                    outcome: "error".into(),
                    retriable: true,
                    wait: None,
                    err: network_error(method_name, path, error_chain(&e.without_url(), true)),
                }
            }
        };
        if resp.status().is_success() {
            return self.success_answer(resp, method_name, path, json).await;
        }
        error_answer(resp, method_name, path).await
    }

    /// A 2xx answer: its body (bounded; cut off mid-read is retriable) and, with `json`, its
    /// JSON (ending early is a cut-off body; other invalid JSON is not retried).
    async fn success_answer(
        &self,
        resp: reqwest::Response,
        method: &'static str,
        path: &str,
        json: bool,
    ) -> Attempt {
        let rest = self.rest;
        let headers = resp.headers().clone();
        let body = match read_bounded(resp, rest.max_body_bytes).await {
            Ok(b) => b,
            Err(e) => {
                let message = match e {
                    BodyError::TooLong => {
                        format!("the answer is longer than {} bytes", rest.max_body_bytes)
                    }
                    BodyError::Network(m) => format!("the answer was cut off mid-read: {m}"),
                };
                return Attempt::Failed {
                    outcome: "error".into(),
                    retriable: true,
                    wait: None,
                    err: network_error(method, path, message),
                };
            }
        };
        if !json {
            return Attempt::Ok(headers, body, None);
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => Attempt::Ok(headers, body, Some(v)),
            Err(e) if e.is_eof() => Attempt::Failed {
                outcome: "error".into(),
                retriable: true,
                wait: None,
                err: network_error(
                    method,
                    path,
                    format!(
                        "the answer was cut off mid-read ({} bytes, JSON incomplete: {e})",
                        body.len()
                    ),
                ),
            },
            Err(e) => Attempt::Failed {
                outcome: "invalid".into(),
                retriable: false,
                wait: None,
                err: RestError::Invalid {
                    method,
                    path: path.to_string(),
                    message: format!("the answer is not JSON: {e}"),
                },
            },
        }
    }

    /// `GET {collection}?{filter}&limit=0&offset=0`, total from `Content-Range: items a-b/total`.
    /// The filter is sent raw (no percent-encoding of `(`, `)` or `,`), as the runner does.
    pub async fn count(&self, collection: &str, filter: &str, key: &str) -> Result<u64, RestError> {
        let path = format!("{collection}?{filter}&limit=0&offset=0");
        let (headers, _body, _) = self.get("count", &path, key, false).await?;
        let header = headers
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let invalid = |message: String| RestError::Invalid {
            method: "GET",
            path: path.clone(),
            message,
        };
        let header =
            header.ok_or_else(|| invalid("no Content-Range header in the answer".into()))?;
        header
            .rsplit('/')
            .next()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                invalid(format!(
                    "cannot read the total from Content-Range `{}`",
                    crate::sanitize::escaped_excerpt(&header, 100)
                ))
            })
    }

    /// `GET {path}` as JSON.
    pub async fn get_json(&self, path: &str, key: &str) -> Result<Value, RestError> {
        let (_headers, _body, value) = self.get("get", path, key, true).await?;
        Ok(value.unwrap_or(Value::Null))
    }

    /// `{method} {path}` with an optional JSON body; the answer as JSON (`null` when empty).
    /// Retried as [`Self::get_json`] is (5xx, 429, network errors), 4xx fails at once.
    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
    ) -> Result<Value, RestError> {
        let step = match method {
            Method::GET => "get",
            _ => "call",
        };
        let name = method_name(&method);
        let (_headers, bytes, _) = self.call(step, method, path, key, body, false).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| RestError::Invalid {
            method: name,
            path: path.to_string(),
            message: format!("the answer is not JSON: {e}"),
        })
    }
}

pub use reqwest::Method;

/// The static name of a method for error messages.
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "request",
    }
}

/// Python `string.Template.safe_substitute` for the two names the platform uses:
/// `${_object_id_}` / `$_object_id_` and `${_statuses_}` / `$_statuses_`; `$$` is a literal `$`.
pub fn substitute(template: &str, object_id: &str, statuses: &str) -> String {
    let mut out = String::with_capacity(template.len() + object_id.len() + statuses.len());
    let mut rest = template;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
            continue;
        }
        let (name, consumed) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => (&inner[..end], end + 2),
                None => ("", 0),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        match name {
            "_object_id_" => out.push_str(object_id),
            "_statuses_" => out.push_str(statuses),
            _ => {
                // Unknown placeholders are left as they are (safe_substitute).
                out.push('$');
                rest = after;
                continue;
            }
        }
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_substitution() {
        let t = "and(eq(id,${_object_id_}),eq(type,purchase),in(status,${_statuses_}))";
        assert_eq!(
            substitute(t, "PR-1", "(pending,approved)"),
            "and(eq(id,PR-1),eq(type,purchase),in(status,(pending,approved)))"
        );
        assert_eq!(substitute("eq(id,$_object_id_)", "X", ""), "eq(id,X)");
        assert_eq!(substitute("a$$b ${other} $", "X", ""), "a$b ${other} $");
    }
}
