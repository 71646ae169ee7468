//! HTTP: liveness, readiness, metrics, and the HTTP task channel (`POST /events`, read-back).
//!
//! | route | auth | what |
//! |---|---|---|
//! | `GET /health` | no | liveness, no I/O |
//! | `GET /ready` | no | storage ping (+ the Connect channels when enabled) |
//! | `GET /metrics` | no | Prometheus / OpenMetrics text |
//! | `POST /events` | Host, token | a Connect object, an envelope `{event_type, object}`, or an array of either; `Content-Type: application/json` only (415) |
//! | `GET /events/{id}` | Host, token | one stored document |
//! | `GET /events?event_type=&status=&object_id=&limit=` | Host, token | stored documents, newest first |
//!
//! "Host": the `Host` must be a loopback name or in `HTTP_ALLOWED_HOSTS` (421 otherwise; see
//! [`guard`]). "token": `Authorization: Bearer <HTTP_TOKEN>` when a token is set (401).
//! Before any of that, [`serve`] bounds every connection in time and number (408 / closed).
//! Error messages quote outside input only escaped ([`crate::sanitize`]).

mod guard;
mod ingest;
mod serve;
pub mod settings;
mod state;

pub use guard::HostPolicy;
pub use serve::{serve, ServeLimits};

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::sanitize::escaped_excerpt;
use crate::storage::ListQuery;
use settings::Settings as HttpSettings;
pub use state::{ApiError, AppState, ReadinessProbe};

/// The routes, with the `Host` check and the token on `/events…` (outermost first: Host, token),
/// and the body deadline of `http`.
pub fn router(state: AppState, http: &HttpSettings) -> Router {
    let limits = ServeLimits::from_settings(http);
    let hosts = Arc::new(HostPolicy::from_settings(http));
    let protected = Router::new()
        .route("/events", get(list_events).post(ingest::post_events))
        .route("/events/{id}", get(get_event))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(axum::Extension(ingest::BodyTimeout(limits.body_timeout)))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .route_layer(middleware::from_fn_with_state(hosts, guard::require_host));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(protected)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(state)
}

/// Compares in time independent of where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if state.token.is_empty() {
        return next.run(request).await;
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(t) if constant_time_eq(t.trim().as_bytes(), state.token.expose().as_bytes()) => {
            next.run(request).await
        }
        Some(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "invalid token").into_response()
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer <HTTP_TOKEN>` header",
        )
        .into_response(),
    }
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(state): State<AppState>) -> Response {
    let storage = state.storage.current();
    let mut problems = Vec::new();
    // A probe of what a save needs (a write), bounded in time; the result feeds the storage health
    // state (an ERROR log once per change). The reason is secret-free.
    if let Err(e) = state.storage.ping().await {
        problems.push(e.to_string());
    }
    problems.extend(state.probes.iter().filter_map(|p| p.not_ready_reason()));
    if problems.is_empty() {
        Json(json!({"status": "ready", "storage": storage.name()})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "storage": storage.name(), "problems": problems})),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn get_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.storage.current().get(&id).await? {
        Some(doc) => Ok(Json(doc)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no stored event with id `{}`", escaped_excerpt(&id, 300)),
        )),
    }
}

async fn list_events(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query
        .map_err(|e| ApiError::bad_request("bad_query", escaped_excerpt(&e.body_text(), 500)))?;
    let docs = state.storage.current().list(&query).await?;
    Ok(Json(json!({"count": docs.len(), "documents": docs})))
}
