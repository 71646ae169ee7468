//! `POST /events`: the HTTP task channel (local development, webhooks).
//!
//! Accepts a Connect object (its event type derived from `id`/`type`, e.g. a `PR-…` of type
//! `purchase` → `asset_purchase_request_processing`), an envelope `{"event_type": …, "object": {…}}`
//! (optionally with `task_id`), or a JSON array of either. The whole body is validated before
//! anything is handled, so a 400 means nothing was processed. Each event then runs through the same
//! registry and storage path as a websocket task.
//!
//! Status: 503 (+ `Retry-After`) when any event must be redelivered (storage outage: nothing lost,
//! post it again), else 422 when any failed for good, else 201 when any document was created, else
//! 200 (duplicates, skips).
//!
//! Refused before anything is handled: a `Content-Type` other than `application/json` (415), a
//! body not received within `HTTP_BODY_TIMEOUT_MS` (408, connection closed), a body over
//! `HTTP_MAX_BODY_BYTES` (413), and bad JSON or a bad item (400) — including an `id`, `status`,
//! `updated` or `task_id` holding control characters, which would otherwise reach log lines and
//! document ids. Every refusal is logged at INFO; outside input in the message (and so in the log
//! line) is escaped ([`crate::sanitize`]).

use std::borrow::Cow;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::future::join_all;
use serde_json::{json, Map, Value};

use super::guard;
use super::state::{ApiError, AppState};
use crate::events::{Event, EventType, Outcome, Source};
use crate::sanitize::{escape_control, escaped_excerpt};

/// The longest wait for a whole request body (`HTTP_BODY_TIMEOUT_MS`).
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

/// Most bytes of outside input quoted in an error message.
const EXCERPT: usize = 200;

fn has_control(s: &str) -> bool {
    matches!(escape_control(s), Cow::Owned(_))
}

/// 400 when a field the daemon derives ids, labels or log lines from holds control characters.
fn check_printable(whr: &str, object: &Value, task_id: Option<&str>) -> Result<(), ApiError> {
    let field = |name: &str| object.get(name).and_then(Value::as_str);
    for (name, value) in [
        ("id", field("id")),
        ("status", field("status")),
        ("updated", field("updated")),
        ("task_id", task_id),
    ] {
        if let Some(v) = value.filter(|v| has_control(v)) {
            return Err(ApiError::bad_request(
                "invalid_event",
                format!(
                    "{whr}`{name}` contains control characters: `{}`",
                    escaped_excerpt(v, EXCERPT)
                ),
            ));
        }
    }
    Ok(())
}

/// Parses one item of the body into an event.
pub fn parse_item(item: Value, at: Option<usize>) -> Result<Event, ApiError> {
    let whr = at.map(|i| format!("item {i}: ")).unwrap_or_default();
    let Value::Object(mut map) = item else {
        return Err(ApiError::bad_request(
            "invalid_event",
            format!(
                "{whr}expected a JSON object (a Connect object or {{\"event_type\", \"object\"}})"
            ),
        ));
    };
    let (event_type, object, task_id) =
        if map.contains_key("event_type") && map.contains_key("object") {
            parse_envelope(&whr, map)?
        } else {
            let object = Value::Object(std::mem::take(&mut map));
            (event_type_of_object(&whr, &object)?, object, None)
        };
    check_printable(&whr, &object, task_id.as_deref())?;
    let object_id = match object.get("id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        _ => {
            return Err(ApiError::bad_request(
                "missing_id",
                format!("{whr}the object has no string `id`"),
            ))
        }
    };
    let mut event = Event::new(event_type, object_id, object, Source::Http);
    event.task_id = task_id;
    Ok(event)
}

/// `{"event_type", "object", "task_id"?}`: the explicit form.
fn parse_envelope(
    whr: &str,
    mut map: Map<String, Value>,
) -> Result<(EventType, Value, Option<String>), ApiError> {
    let event_type = match map.remove("event_type") {
        Some(Value::String(s)) if !s.is_empty() => s.parse::<EventType>().unwrap(),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_event",
                format!("{whr}`event_type` must be a non-empty string"),
            ))
        }
    };
    if let EventType::Other(name) = &event_type {
        return Err(ApiError::bad_request(
            "unknown_event_type",
            format!(
                "{whr}unknown event type `{}`",
                escaped_excerpt(name, EXCERPT)
            ),
        ));
    }
    let task_id = match map.remove("task_id") {
        Some(Value::String(s)) => Some(s),
        None | Some(Value::Null) => None,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_event",
                format!("{whr}`task_id` must be a string"),
            ))
        }
    };
    let object = map.remove("object").unwrap_or(Value::Null);
    if !object.is_object() {
        return Err(ApiError::bad_request(
            "invalid_event",
            format!("{whr}`object` must be a JSON object"),
        ));
    }
    Ok((event_type, object, task_id))
}

/// A bare Connect object: the event type from its `type` (purchase, change, …).
fn event_type_of_object(whr: &str, object: &Value) -> Result<EventType, ApiError> {
    match (object.get("id"), EventType::for_object(object)) {
        (_, Some(t)) => Ok(t),
        (Some(Value::String(_)), None) => {
            Err(ApiError::bad_request(
                "unknown_event_type",
                format!(
                    "{whr}cannot tell the event type from `type` = {}; send {{\"event_type\": …, \"object\": …}} or a request of type purchase, change, suspend, resume, cancel, adjustment, renew or transfer",
                    object.get("type").map(|t| escaped_excerpt(&t.to_string(), EXCERPT)).unwrap_or_else(|| "(missing)".into())
                ),
            ))
        }
        _ => {
            Err(ApiError::bad_request(
                "missing_id",
                format!("{whr}the object has no string `id`"),
            ))
        }
    }
}

fn describe(event: &Event, outcome: &Outcome) -> Value {
    let mut out = Map::new();
    out.insert("event_type".into(), json!(event.event_type));
    out.insert("object_id".into(), json!(event.object_id));
    out.insert("status".into(), json!(event.status_str()));
    if let Value::Object(o) = serde_json::to_value(outcome).expect("outcome serializes") {
        out.extend(o);
    }
    Value::Object(out)
}

pub async fn post_events(
    State(state): State<AppState>,
    Extension(BodyTimeout(body_timeout)): Extension<BodyTimeout>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    match handle_post(state, body_timeout, &headers, request).await {
        Ok(response) => response,
        Err(e) => {
            tracing::info!(
                status = e.status.as_u16(),
                code = e.code,
                error = %escape_control(&e.message),
                "POST /events refused"
            );
            let timed_out = e.status == StatusCode::REQUEST_TIMEOUT;
            let mut response = e.into_response();
            if timed_out {
                // The rest of the body may still come: this connection cannot carry another request.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    }
}

async fn handle_post(
    state: AppState,
    body_timeout: Duration,
    headers: &HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let body = read_body(&state, body_timeout, headers, request).await?;
    let (events, single) = parse_body(&body)?;
    let outcomes = join_all(events.iter().map(|e| state.registry.dispatch(e))).await;
    Ok(respond(&events, &outcomes, single))
}

/// The body, if it is JSON, arrives within `body_timeout` and is within the size limit.
async fn read_body(
    state: &AppState,
    body_timeout: Duration,
    headers: &HeaderMap,
    request: Request,
) -> Result<Bytes, ApiError> {
    if !guard::is_json(headers) {
        let given = headers
            .get(header::CONTENT_TYPE)
            .map(|v| escaped_excerpt(&String::from_utf8_lossy(v.as_bytes()), EXCERPT))
            .unwrap_or_else(|| "none".into());
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("POST /events takes `Content-Type: application/json` (got {given})"),
        ));
    }
    match tokio::time::timeout(body_timeout, Bytes::from_request(request, state)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} ms (HTTP_BODY_TIMEOUT_MS)",
                body_timeout.as_millis()
            ),
        )),
        Ok(Err(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the body exceeds {} bytes (HTTP_MAX_BODY_BYTES)",
                state.max_body_bytes
            ),
        )),
        Ok(Err(e)) => Err(ApiError::new(
            e.status(),
            "bad_body",
            escaped_excerpt(&e.body_text(), EXCERPT),
        )),
        Ok(Ok(body)) => Ok(body),
    }
}

/// The events of a body: one object, or a non-empty array of them (`single` tells which).
fn parse_body(body: &[u8]) -> Result<(Vec<Event>, bool), ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "malformed_json",
            format!(
                "malformed JSON: {}",
                escaped_excerpt(&e.to_string(), EXCERPT)
            ),
        )
    })?;
    Ok(match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ApiError::bad_request("empty", "the array is empty"));
            }
            let events = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| parse_item(item, Some(i)))
                .collect::<Result<Vec<_>, _>>()?;
            (events, false)
        }
        other => (vec![parse_item(other, None)?], true),
    })
}

/// The answer: 503 + Retry-After when any event must be redelivered, else 422 when any failed,
/// else 201 when anything new was stored, else 200; one result, or `{"results": […]}`.
fn respond(events: &[Event], outcomes: &[Outcome], single: bool) -> Response {
    let retry_after = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Reschedule { countdown, .. } => Some(*countdown),
            Outcome::Retry { .. } => Some(crate::events::MIN_RESCHEDULE_COUNTDOWN),
            _ => None,
        })
        .max();
    let status = if retry_after.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else if outcomes.iter().any(|o| matches!(o, Outcome::Fail { .. })) {
        StatusCode::UNPROCESSABLE_ENTITY
    } else if outcomes.iter().any(|o| {
        matches!(
            o,
            Outcome::Done {
                document_id: Some(_),
                duplicate: false,
                ..
            }
        )
    }) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut results: Vec<Value> = events
        .iter()
        .zip(outcomes)
        .map(|(e, o)| describe(e, o))
        .collect();
    let body = if single {
        results.pop().expect("one result")
    } else {
        json!({ "results": results })
    };
    let mut response = (status, Json(body)).into_response();
    if let Some(secs) = retry_after {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            secs.to_string().parse().expect("digits"),
        );
    }
    response
}
