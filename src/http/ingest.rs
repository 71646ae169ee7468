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

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::future::join_all;
use serde_json::{json, Map, Value};

use super::{ApiError, AppState};
use crate::events::{Event, EventType, Outcome, Source};

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
    let (event_type, object, task_id) = if map.contains_key("event_type")
        && map.contains_key("object")
    {
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
                format!("{whr}unknown event type `{name}`"),
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
        (event_type, object, task_id)
    } else {
        let object = Value::Object(std::mem::take(&mut map));
        let event_type = match (object.get("id"), EventType::for_object(&object)) {
            (_, Some(t)) => t,
            (Some(Value::String(_)), None) => {
                return Err(ApiError::bad_request(
                    "unknown_event_type",
                    format!(
                        "{whr}cannot tell the event type from `type` = {}; send {{\"event_type\": …, \"object\": …}} or a request of type purchase, change, suspend, resume, cancel, adjustment, renew or transfer",
                        object.get("type").map(Value::to_string).unwrap_or_else(|| "(missing)".into())
                    ),
                ))
            }
            _ => {
                return Err(ApiError::bad_request(
                    "missing_id",
                    format!("{whr}the object has no string `id`"),
                ))
            }
        };
        (event_type, object, None)
    };
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
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the body exceeds {} bytes (HTTP_MAX_BODY_BYTES)",
                    state.max_body_bytes
                ),
            )
        } else {
            ApiError::new(e.status(), "bad_body", e.body_text())
        }
    })?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("malformed_json", format!("malformed JSON: {e}")))?;
    let (events, single) = match value {
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
    };

    let outcomes = join_all(events.iter().map(|e| state.registry.dispatch(e))).await;

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
        .zip(&outcomes)
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
    Ok(response)
}
