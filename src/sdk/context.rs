//! What a handler gets besides its event: [`Context`] with the Connect REST [`Client`], the live
//! extension [`Variables`] and the [`Store`].

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;

use crate::config::secret::Secret;
use crate::connect::live::LiveConfig;
use crate::connect::protocol::VariableDecl;
use crate::connect::rest::{Method, Rest, RestError};
use crate::events::{Event, Handler, Outcome};
use crate::storage::{ListQuery, SharedStorage, StorageError};

/// What every handler of one extension shares (built by [`super::Extension`]).
pub(crate) struct Runtime {
    pub(crate) rest: OnceLock<Arc<Rest>>,
    pub(crate) live: OnceLock<Arc<LiveConfig>>,
    pub(crate) api_key: Secret,
    pub(crate) budget: Duration,
    pub(crate) storage: Arc<SharedStorage>,
    pub(crate) persist: Arc<dyn Handler>,
    pub(crate) declared: Vec<VariableDecl>,
}

/// A handler's view of the extension: the Connect API, the variables, the storage, the task.
///
/// Cheap to clone. Built per event by the SDK; handlers never build one.
#[derive(Clone)]
pub struct Context {
    pub(crate) rt: Arc<Runtime>,
    pub(crate) key: Option<Secret>,
    pub(crate) task_id: Option<String>,
}

impl Context {
    /// The Connect REST client: the installation `api_key` of the task when it carries one,
    /// else `API_KEY` (as the runner's `installation_client` / `client`).
    pub fn client(&self) -> Client {
        Client {
            rest: self.rt.rest.get().cloned(),
            key: self.key.clone().unwrap_or_else(|| self.rt.api_key.clone()),
            budget: self.rt.budget,
        }
    }

    /// The extension variables now: the declared initial values, overridden by what the platform
    /// sent (the latest `setup_response`, i.e. after "Apply Changes").
    pub fn variables(&self) -> Variables {
        let mut values: BTreeMap<String, String> = self
            .rt
            .declared
            .iter()
            .map(|d| (d.name.clone(), d.initial_value.clone()))
            .collect();
        if let Some(live) = self.rt.live.get() {
            for v in live.snapshot().variables {
                if let Some(value) = v.value {
                    values.insert(v.name, value);
                }
            }
        }
        Variables(values)
    }

    /// One variable's current value (see [`Context::variables`]).
    pub fn variable(&self, name: &str) -> Option<String> {
        self.variables().0.remove(name)
    }

    /// The event store: what this daemon has stored, to read back (and save more).
    pub fn storage(&self) -> Store {
        Store {
            rt: self.rt.clone(),
        }
    }

    /// The Connect task id of the event (None for events posted over HTTP).
    pub fn task_id(&self) -> Option<&str> {
        self.task_id.as_deref()
    }
}

/// The extension variables at one moment (name → value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variables(pub BTreeMap<String, String>);

impl Variables {
    /// The value of `name`, if declared or sent by the platform.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// The Connect REST API (`…/public/v1/`), with the channel's client: same TLS, proxy,
/// concurrency slots, retries (5xx, 429, network errors: 3 times, 1 s apart), body limits and
/// time budget (BACKGROUND_TASK_MAX_EXECUTION_TIME per call) as the daemon's own calls.
#[derive(Clone)]
pub struct Client {
    rest: Option<Arc<Rest>>,
    key: Secret,
    budget: Duration,
}

impl Client {
    /// `GET {path}` as JSON. `path` is relative to `/public/v1/` (a leading `/public/v1/` or `/`
    /// is accepted), e.g. `requests/PR-1`.
    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.request(Method::GET, path, None).await
    }

    /// `POST {path}` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.request(Method::POST, path, Some(body)).await
    }

    /// `PUT {path}` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.request(Method::PUT, path, Some(body)).await
    }

    /// `DELETE {path}`.
    pub async fn delete(&self, path: &str) -> Result<Value, ApiError> {
        self.request(Method::DELETE, path, None).await
    }

    /// Any method; the answer as JSON (`null` when empty).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let Some(rest) = &self.rest else {
            return Err(ApiError::Unavailable);
        };
        let path = path.trim_start_matches('/');
        let path = path.strip_prefix("public/v1/").unwrap_or(path);
        let session = rest.session(self.budget).await.map_err(ApiError::Rest)?;
        session
            .send_json(method, path, self.key.expose(), body)
            .await
            .map_err(ApiError::Rest)
    }
}

/// A failed Connect API call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The Connect channel is off (no API_KEY / ENVIRONMENT_ID): there is no API to call.
    #[error("the Connect API is not available (the Connect channel is off)")]
    Unavailable,
    /// The call failed after the client's retries (see [`Client`]).
    #[error(transparent)]
    Rest(RestError),
}

impl ApiError {
    /// The HTTP status the API answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Rest(RestError::Status { status, .. }) => Some(*status),
            _ => None,
        }
    }

    /// The API's own message: the `errors` of a Connect error body
    /// (`{"error_code": …, "errors": [..]}`) joined, else the body excerpt, else the error.
    pub fn api_message(&self) -> String {
        if let ApiError::Rest(RestError::Status { body, .. }) = self {
            if let Ok(v) = serde_json::from_str::<Value>(body) {
                if let Some(errors) = v.get("errors").and_then(Value::as_array) {
                    let texts: Vec<&str> = errors.iter().filter_map(Value::as_str).collect();
                    if !texts.is_empty() {
                        return texts.join("; ");
                    }
                }
            }
            if !body.is_empty() {
                return body.clone();
            }
        }
        self.to_string()
    }

    /// The usual answer to a failed call: a 4xx about the request (400, 404, 409, 422, …) is
    /// `fail` with the API's message (redelivering will not help); credentials, permissions, a
    /// proxy, a timeout or throttling (401, 403, 407, 408, 429), a 5xx and network errors are
    /// `retry` — they are about the installation or the network, and a wrong `fail` loses the
    /// event.
    pub fn outcome(&self) -> Outcome {
        match self.status() {
            Some(401 | 403 | 407 | 408 | 429) => Outcome::retry(self.to_string()),
            Some(s) if (400..500).contains(&s) => Outcome::fail(self.api_message()),
            _ => Outcome::retry(self.to_string()),
        }
    }
}

/// The event store, as the daemon is configured (the primary backend for reads).
#[derive(Clone)]
pub struct Store {
    rt: Arc<Runtime>,
}

impl Store {
    /// The stored document with this id (`_id`), with `_connect` metadata.
    pub async fn get(&self, id: &str) -> Result<Option<Value>, StorageError> {
        self.rt.storage.current().get(id).await
    }

    /// Stored documents matching `query` (event type, status, object id, asset id), newest first.
    pub async fn list(&self, query: &ListQuery) -> Result<Vec<Value>, StorageError> {
        self.rt.storage.current().list(query).await
    }

    /// Stores `event` as the persist handler does (same id strategy, same outcomes: `success`
    /// when stored or already there, `reschedule` / `fail` otherwise).
    pub async fn save(&self, event: &Event) -> Outcome {
        self.rt.persist.handle(event).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> ApiError {
        ApiError::Rest(RestError::Status {
            method: "POST",
            path: "requests/PR-1/approve".into(),
            status,
            body: r#"{"error_code": "REQ_001", "errors": ["bad template"]}"#.into(),
        })
    }

    #[test]
    fn only_a_4xx_about_the_request_is_a_fail() {
        for s in [400, 404, 409, 422] {
            assert_eq!(
                status(s).outcome(),
                Outcome::fail("bad template"),
                "HTTP {s}"
            );
        }
        for s in [401, 403, 407, 408, 429, 500, 502, 503] {
            assert_eq!(status(s).outcome().result_name(), "retry", "HTTP {s}");
        }
        assert_eq!(ApiError::Unavailable.outcome().result_name(), "retry");
    }
}
