//! The Connect REST calls a background task needs (§5.2): the status-gate count and the object GET.
//!
//! Like the runner: `Authorization` is the installation key when the task carries one, else
//! API_KEY; 5xx answers and network errors are retried 3 times, 1 s apart — but the wait is an
//! async sleep in this task only, never blocking other tasks. 4xx answers fail at once.
//!
//! At most `concurrency` calls (CONNECT_REST_CONCURRENCY) are on the wire at once, body read
//! included; other tasks queue for a slot. Over plain HTTP/1.1 every concurrent call is its own
//! TCP connection, so without the bound a burst of 512 tasks opened 512 connections and held 512
//! response bodies at once — more CPU and memory for no more throughput (BENCHMARKS.md).
//!
//! Every body read is bounded (`Tuning::rest_max_body_bytes`, 16 MiB): a longer answer is a
//! retriable network error (`retry`), never an unbounded buffer. Error bodies are read up to 4 KiB
//! and quoted as a 300-byte excerpt with control characters escaped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::telemetry::{FetchLabels, Metrics};

/// A REST failure, described without credentials.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("GET {path} answered HTTP {status}: {body}")]
    Status {
        path: String,
        status: u16,
        body: String,
    },
    #[error("GET {path} failed: {message}")]
    Network { path: String, message: String },
    #[error("GET {path}: {message}")]
    Invalid { path: String, message: String },
}

pub struct Rest {
    client: reqwest::Client,
    /// `http(s)://host[:port]/public/v1/`
    base: String,
    retries: u32,
    retry_delay: Duration,
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
            Err(e) => return Err(BodyError::Network(error_chain(&e.without_url()))),
        }
    }
}

/// The error chain of `e`, one cause after another (reqwest hides the interesting part in sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
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
            retries,
            retry_delay,
            metrics,
            slots: tokio::sync::Semaphore::new(concurrency.max(1)),
            max_body_bytes: max_body_bytes.max(1),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// GET with the runner's retry policy; returns the successful response's headers and body
    /// (read within the bound, under the concurrency slot). No slot is held while waiting to retry.
    async fn get(
        &self,
        step: &str,
        path: &str,
        key: &str,
    ) -> Result<(reqwest::header::HeaderMap, Vec<u8>), RestError> {
        let url = format!("{}{}", self.base, path);
        let mut attempt = 0;
        loop {
            let slot = self.slots.acquire().await.expect("never closed");
            let started = Instant::now();
            let result = self
                .client
                .get(&url)
                .header(reqwest::header::AUTHORIZATION, key)
                .send()
                .await;
            let network = |message: String| RestError::Network {
                path: path.to_string(),
                message,
            };
            let (outcome, retriable, err) = match result {
                Ok(resp) if resp.status().is_success() => {
                    let headers = resp.headers().clone();
                    match read_bounded(resp, self.max_body_bytes).await {
                        Ok(body) => {
                            self.observe(step, "ok", started);
                            return Ok((headers, body));
                        }
                        Err(BodyError::TooLong) => (
                            "error".to_string(),
                            true,
                            network(format!(
                                "the answer is longer than {} bytes",
                                self.max_body_bytes
                            )),
                        ),
                        Err(BodyError::Network(m)) => ("error".to_string(), true, network(m)),
                    }
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body = match read_bounded(resp, ERROR_BODY_BYTES).await {
                        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                        Err(_) => String::new(),
                    };
                    (
                        format!("http_{status}"),
                        status >= 500,
                        RestError::Status {
                            path: path.to_string(),
                            status,
                            body: crate::sanitize::escaped_excerpt(&body, 300),
                        },
                    )
                }
                Err(e) => (
                    "error".to_string(),
                    true,
                    network(error_chain(&e.without_url())),
                ),
            };
            self.observe(step, &outcome, started);
            drop(slot);
            if !retriable || attempt >= self.retries {
                return Err(err);
            }
            attempt += 1;
            tracing::debug!(error = %err, attempt, "Connect REST call failed; retrying");
            tokio::time::sleep(self.retry_delay).await;
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

    /// `GET {collection}?{filter}&limit=0&offset=0`, total from `Content-Range: items a-b/total`.
    /// The filter is sent raw (no percent-encoding of `(`, `)` or `,`), as the runner does.
    pub async fn count(&self, collection: &str, filter: &str, key: &str) -> Result<u64, RestError> {
        let path = format!("{collection}?{filter}&limit=0&offset=0");
        let (headers, _body) = self.get("count", &path, key).await?;
        let header = headers
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let invalid = |message: String| RestError::Invalid {
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
                    "cannot read the total from Content-Range `{header}`"
                ))
            })
    }

    /// `GET {path}` as JSON.
    pub async fn get_json(&self, path: &str, key: &str) -> Result<Value, RestError> {
        let (_headers, body) = self.get("get", path, key).await?;
        serde_json::from_slice::<Value>(&body).map_err(|e| RestError::Invalid {
            path: path.to_string(),
            message: format!("the answer is not JSON: {e}"),
        })
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
