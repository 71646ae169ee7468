//! Handling one task (§5.2–§5.4): from the task frame to its `output`.
//!
//! * **background**: event definition → RQL status gate (count) → object GET → registry. The count
//!   and the GET share one REST slot (a [`super::rest::RestSession`]: a started task finishes its
//!   REST calls before a queued one starts) and one budget of BACKGROUND_TASK_MAX_EXECUTION_TIME
//!   (slot wait, retries and `Retry-After` waits included); the handler then gets its own
//!   BACKGROUND_TASK_MAX_EXECUTION_TIME. Any failure is `retry` with a clear error chain.
//! * **interactive**: `input.data` → registry (validation types fall back to echoing the draft),
//!   bounded by INTERACTIVE_TASK_MAX_EXECUTION_TIME. Failures are `fail`, never a silent drop.
//! * **scheduled**: the schedule GET and a registered `scheduled_execution` handler, else `fail`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::protocol::{EventDefinition, Task, TaskOutput};
use super::rest::{substitute, Rest};
use crate::events::{
    Event, EventType, Handler, Outcome, Registry, Source, MIN_RESCHEDULE_COUNTDOWN,
};

/// Everything a task needs, shared by all tasks of the process.
pub struct TaskContext {
    pub registry: Arc<Registry>,
    pub rest: Arc<Rest>,
    /// The platform key (API_KEY); an installation key in the task wins.
    pub api_key: crate::config::secret::Secret,
    /// Answers validation tasks no registered handler claims.
    pub fallback_validation: Arc<dyn Handler>,
    pub background_timeout: Duration,
    pub interactive_timeout: Duration,
    pub environment_id: String,
}

/// The event definitions a channel received in its first `setup_response`.
pub type Definitions = HashMap<String, EventDefinition>;

fn output(result: &str, message: Option<String>, runtime: f64) -> TaskOutput {
    TaskOutput {
        result: result.to_string(),
        data: None,
        countdown: 0,
        runtime,
        message,
    }
}

/// `retry` on an error path; the runner leaves `runtime` at 0.0 there.
pub fn retry(message: impl Into<String>) -> TaskOutput {
    output("retry", Some(message.into()), 0.0)
}

fn fail(message: impl Into<String>) -> TaskOutput {
    output("fail", Some(message.into()), 0.0)
}

/// Runs `task` to its output. Never panics on bad input; every path answers.
pub async fn run(
    ctx: &TaskContext,
    defs: &Definitions,
    service_id: Option<&str>,
    task: &Task,
) -> TaskOutput {
    match task.options.task_category.as_str() {
        "background" => background(ctx, defs, task).await,
        "interactive" => interactive(ctx, task).await,
        "scheduled" => scheduled(ctx, service_id, task).await,
        other => fail(format!(
            "task category `{other}` is not handled on the events channel (accepted: background, interactive, scheduled)"
        )),
    }
}

/// The task's installation key for the event, when the registry keeps it (SDK extensions).
fn installation_key(ctx: &TaskContext, task: &Task) -> Option<crate::config::secret::Secret> {
    if !ctx.registry.keeps_installation_key() {
        return None;
    }
    match &task.options.api_key {
        Some(k) if !k.0.is_empty() => Some(crate::config::secret::Secret::new(k.0.clone())),
        _ => None,
    }
}

fn key_for<'a>(ctx: &'a TaskContext, task: &'a Task) -> &'a str {
    match &task.options.api_key {
        Some(k) if !k.0.is_empty() => &k.0,
        _ => ctx.api_key.expose(),
    }
}

async fn background(ctx: &TaskContext, defs: &Definitions, task: &Task) -> TaskOutput {
    let event_type: EventType = task.input.event_type.parse().unwrap();
    let object_id = &task.input.object_id;
    let Some(def) = defs.get(&task.input.event_type) else {
        return retry(format!(
            "no event definition for `{}` in the platform's setup_response; cannot fetch {object_id}",
            task.input.event_type
        ));
    };
    let Some(reg) = ctx.registry.get(&event_type) else {
        return retry(format!(
            "this extension does not subscribe to `{}` (no handler registered); another instance may",
            task.input.event_type
        ));
    };
    let statuses: Vec<&str> = reg.statuses.iter().map(|s| s.as_str()).collect();
    let filter = substitute(
        &def.api_collection_filter,
        object_id,
        &format!("({})", statuses.join(",")),
    );
    let key = key_for(ctx, task);
    // One REST slot for the count and the GET (started tasks finish first), one budget for both.
    let session = match ctx.rest.session(ctx.background_timeout).await {
        Ok(s) => s,
        Err(e) => return retry(format!("status check of {object_id} not started: {e}")),
    };
    match session
        .count(&def.api_collection_endpoint, &filter, key)
        .await
    {
        Ok(0) => {
            return output(
                "skip",
                Some(format!(
                    "The request status does not match the supported statuses: {}.",
                    statuses.join(",")
                )),
                0.0,
            )
        }
        Ok(_) => {}
        Err(e) => return retry(format!("status check of {object_id} failed: {e}")),
    }
    let path = def.api_resource_endpoint.replace("{pk}", object_id);
    let object = match session.get_json(&path, key).await {
        Ok(o) => o,
        Err(e) => return retry(format!("fetching {object_id} failed: {e}")),
    };
    drop(session); // the slot is for REST calls only, not for the handler
    let mut event = Event::new(event_type, object_id.clone(), object, Source::Websocket)
        .with_task_id(task.options.task_id.clone());
    event.installation_key = installation_key(ctx, task);
    let started = Instant::now();
    match tokio::time::timeout(ctx.background_timeout, ctx.registry.dispatch_owned(event)).await {
        Ok(outcome) => background_output(outcome, started.elapsed().as_secs_f64()),
        Err(_) => retry(format!(
            "the handler did not finish within BACKGROUND_TASK_MAX_EXECUTION_TIME ({} s)",
            ctx.background_timeout.as_secs()
        )),
    }
}

/// Maps a handler outcome to a background result; `reschedule` countdown clamped to ≥ 30 s.
pub fn background_output(outcome: Outcome, runtime: f64) -> TaskOutput {
    let mut out = output(outcome.result_name(), None, runtime);
    match outcome {
        Outcome::Done { .. } => {}
        Outcome::Skip { message } | Outcome::Fail { message, .. } | Outcome::Retry { message } => {
            out.message = Some(message)
        }
        Outcome::Reschedule { countdown, message } => {
            out.countdown = countdown.max(MIN_RESCHEDULE_COUNTDOWN);
            out.message = Some(message);
        }
    }
    out
}

fn is_empty_data(data: &Option<Value>) -> bool {
    match data {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    }
}

async fn interactive(ctx: &TaskContext, task: &Task) -> TaskOutput {
    let event_type: EventType = task.input.event_type.parse().unwrap();
    let validation = event_type.is_validation();
    let http_error = |message: &str| http_error_data(validation, message);
    if is_empty_data(&task.input.data) {
        let message = format!(
            "interactive task {} for `{}` carries no data (input.data is empty): nothing to handle",
            task.options.task_id, task.input.event_type
        );
        return TaskOutput {
            data: http_error(&message),
            ..fail(message)
        };
    }
    let data = task.input.data.clone().unwrap_or(Value::Null);
    let handler: Option<Arc<dyn Handler>> = match ctx.registry.get(&event_type) {
        Some(_) => None, // dispatched through the registry (status rules, metrics)
        None if validation => Some(ctx.fallback_validation.clone()),
        None => {
            let message = format!(
                "no handler is registered for `{}`: this extension does not handle it",
                task.input.event_type
            );
            return TaskOutput {
                data: http_error(&message),
                ..fail(message)
            };
        }
    };
    let mut event = Event::new(
        event_type,
        task.input.object_id.clone(),
        data.clone(),
        Source::Websocket,
    )
    .with_task_id(task.options.task_id.clone());
    event.installation_key = installation_key(ctx, task);
    if event.object_id.is_empty() {
        event.object_id = data
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
    }
    let started = Instant::now();
    let fut = async {
        match &handler {
            Some(h) => h.handle(&event).await,
            None => ctx.registry.dispatch(&event).await,
        }
    };
    let outcome = match tokio::time::timeout(ctx.interactive_timeout, fut).await {
        Ok(o) => o,
        Err(_) => {
            let message = format!(
                "the handler did not finish within INTERACTIVE_TASK_MAX_EXECUTION_TIME ({} s)",
                ctx.interactive_timeout.as_secs()
            );
            return TaskOutput {
                data: http_error(&message),
                ..fail(message)
            };
        }
    };
    let runtime = started.elapsed().as_secs_f64();
    interactive_answer(outcome, validation, data, runtime)
}

/// The `data` of an interactive failure: an HTTP 400 answer with the message (none for a
/// validation, whose answer is the draft).
fn http_error_data(validation: bool, message: &str) -> Option<Value> {
    (!validation).then(|| json!({"http_status": 400, "headers": null, "body": message}))
}

/// The answer to an interactive task from its handler's outcome (`data` is the task's data,
/// echoed when the handler gives none).
fn interactive_answer(outcome: Outcome, validation: bool, data: Value, runtime: f64) -> TaskOutput {
    let http_error = |message: &str| http_error_data(validation, message);
    let echo = || json!({"http_status": 200, "headers": null, "body": data});
    match outcome {
        Outcome::Done { data: d, .. } => TaskOutput {
            data: Some(d.unwrap_or_else(echo)),
            ..output("success", None, runtime)
        },
        // A validation event outside the handled statuses: not ours to judge; the draft passes.
        Outcome::Skip { .. } if validation => TaskOutput {
            data: Some(echo()),
            ..output("success", None, runtime)
        },
        Outcome::Fail { message, data: d } => TaskOutput {
            data: d.or_else(|| http_error(&message)),
            ..output("fail", Some(message), runtime)
        },
        other => {
            let message = other.message().unwrap_or("not handled").to_string();
            TaskOutput {
                data: http_error(&message),
                ..output("fail", Some(message), runtime)
            }
        }
    }
}

async fn scheduled(ctx: &TaskContext, service_id: Option<&str>, task: &Task) -> TaskOutput {
    if ctx.registry.get(&EventType::ScheduledExecution).is_none() {
        return fail(format!(
            "scheduled task for schedule {}: this extension declares no schedulable method",
            task.input.object_id
        ));
    }
    let Some(service_id) = service_id else {
        return retry(
            "the platform has not sent logging.meta.service_id yet; cannot load the schedule",
        );
    };
    let path = format!(
        "devops/services/{service_id}/environments/{}/schedules/{}",
        ctx.environment_id, task.input.object_id
    );
    let fetched = match ctx.rest.session(ctx.background_timeout).await {
        Ok(session) => session.get_json(&path, ctx.api_key.expose()).await,
        Err(e) => Err(e),
    };
    let schedule = match fetched {
        Ok(s) => s,
        Err(e) => {
            return retry(format!(
                "loading schedule {} failed: {e}",
                task.input.object_id
            ))
        }
    };
    let mut event = Event::new(
        EventType::ScheduledExecution,
        task.input.object_id.clone(),
        schedule,
        Source::Websocket,
    )
    .with_task_id(task.options.task_id.clone());
    event.installation_key = installation_key(ctx, task);
    let started = Instant::now();
    let outcome = ctx.registry.dispatch(&event).await;
    let mut out = background_output(outcome, started.elapsed().as_secs_f64());
    if out.result == "reschedule" {
        // Scheduled executions answer success/fail; a storage hiccup asks for a redelivery.
        out.result = "retry".into();
        out.countdown = 0;
    }
    out
}

/// The category label of a task for metrics.
pub fn category_label(task: &Task) -> String {
    match task.options.task_category.as_str() {
        "background" | "interactive" | "scheduled" => task.options.task_category.clone(),
        _ => "other".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reschedule_clamped_and_messages_kept() {
        let o = background_output(
            Outcome::Reschedule {
                countdown: 5,
                message: "later".into(),
            },
            0.1,
        );
        assert_eq!((o.result.as_str(), o.countdown), ("reschedule", 30));
        let o = background_output(Outcome::reschedule(600, "x"), 0.1);
        assert_eq!(o.countdown, 600);
        let o = background_output(Outcome::done(), 0.1);
        assert_eq!(
            (o.result.as_str(), o.countdown, o.message),
            ("success", 0, None)
        );
        let o = background_output(Outcome::fail("bad"), 0.1);
        assert_eq!(o.message.as_deref(), Some("bad"));
    }
}
