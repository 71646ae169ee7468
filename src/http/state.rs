//! What every handler shares: the state ([`AppState`]), the readiness probes of other parts
//! ([`ReadinessProbe`]) and the JSON error answer ([`ApiError`]).

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::config::secret::Secret;
use crate::events::Registry;
use crate::storage::{SharedStorage, StorageError};
use crate::telemetry::Metrics;

/// Readiness of the parts beyond storage (the Connect channels), reported by their owners.
pub trait ReadinessProbe: Send + Sync + 'static {
    /// `None` when ready, else why not.
    fn not_ready_reason(&self) -> Option<String>;
}

/// Everything the HTTP handlers need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub storage: Arc<SharedStorage>,
    pub metrics: Arc<Metrics>,
    pub token: Secret,
    pub max_body_bytes: usize,
    pub probes: Vec<Arc<dyn ReadinessProbe>>,
}

/// A JSON error body: `{"error": "...", "code": "..."}`.
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.message, "code": self.code})),
        )
            .into_response()
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        let status = if e.is_retriable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError::new(status, "storage_error", e.to_string())
    }
}
