//! The handler registry: (event type, statuses) → handler, like the Python runner's
//! `@event('asset_purchase_request_processing', statuses=[...])`.
//!
//! Built once at start-up and immutable afterwards; it is also the single source of the
//! `event_subscriptions` the websocket channel sends in `setup_request`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

use super::types::{Event, EventType, Status};
use crate::telemetry::{EventLabels, Metrics};

/// The minimum countdown the platform accepts for `reschedule` (connect-protocol.md §5.2).
pub const MIN_RESCHEDULE_COUNTDOWN: u64 = 30;

/// The minimum (and default) countdown of [`Outcome::slow_process_reschedule`]: 300 s, as
/// connect-eaas-core's `BackgroundResponse.slow_process_reschedule`.
pub const MIN_SLOW_PROCESS_COUNTDOWN: u64 = 300;

/// What handling an event came to, in the protocol's vocabulary.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// Handled (→ `success`). `document_id` when it was stored; `data` for interactive answers.
    #[serde(rename = "success")]
    Done {
        #[serde(skip_serializing_if = "Option::is_none")]
        document_id: Option<String>,
        /// True when the document already existed (a redelivery).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<Value>,
    },
    Skip {
        message: String,
    },
    Fail {
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<Value>,
    },
    /// Ask the platform to redeliver after `countdown` seconds (≥ 30).
    Reschedule {
        countdown: u64,
        message: String,
    },
    /// Ask the platform to redeliver (handler error, timeout, REST failure).
    Retry {
        message: String,
    },
}

impl Outcome {
    pub fn done() -> Self {
        Outcome::Done {
            document_id: None,
            duplicate: false,
            data: None,
        }
    }
    pub fn skip(message: impl Into<String>) -> Self {
        Outcome::Skip {
            message: message.into(),
        }
    }
    pub fn fail(message: impl Into<String>) -> Self {
        Outcome::Fail {
            message: message.into(),
            data: None,
        }
    }
    pub fn retry(message: impl Into<String>) -> Self {
        Outcome::Retry {
            message: message.into(),
        }
    }
    /// `countdown` is clamped to at least 30 s, as the runner does.
    pub fn reschedule(countdown: u64, message: impl Into<String>) -> Self {
        Outcome::Reschedule {
            countdown: countdown.max(MIN_RESCHEDULE_COUNTDOWN),
            message: message.into(),
        }
    }

    /// connect-eaas-core's `slow_process_reschedule`: a `reschedule` for slow processes,
    /// `countdown` raised to at least [`MIN_SLOW_PROCESS_COUNTDOWN`] (300 s).
    pub fn slow_process_reschedule(countdown: u64) -> Self {
        Outcome::Reschedule {
            countdown: countdown.max(MIN_SLOW_PROCESS_COUNTDOWN),
            message: "slow process: rescheduled".into(),
        }
    }

    /// An interactive answer (`InteractiveResponse.done`): `success` with
    /// `{http_status, headers, body}` returned to the caller.
    pub fn interactive(http_status: u16, headers: Option<Value>, body: Value) -> Self {
        Outcome::Done {
            document_id: None,
            duplicate: false,
            data: Some(serde_json::json!({
                "http_status": http_status, "headers": headers, "body": body
            })),
        }
    }

    /// A failed interactive answer (`InteractiveResponse.fail`): `fail` with `message` and
    /// `{http_status, headers, body}` returned to the caller (the runner's default status is 400).
    pub fn interactive_fail(
        http_status: u16,
        headers: Option<Value>,
        body: Value,
        message: impl Into<String>,
    ) -> Self {
        Outcome::Fail {
            message: message.into(),
            data: Some(serde_json::json!({
                "http_status": http_status, "headers": headers, "body": body
            })),
        }
    }

    /// A validation answer (`ValidationResponse.done`): the draft echoed back, with whatever the
    /// handler changed in it (e.g. a parameter's `value_error`), HTTP 200.
    pub fn validation(draft: Value) -> Self {
        Self::interactive(200, None, draft)
    }

    /// A failed validation (`ValidationResponse.fail`): `fail`, the draft returned with HTTP 400.
    pub fn validation_fail(draft: Value, message: impl Into<String>) -> Self {
        Self::interactive_fail(400, None, draft, message)
    }

    /// The wire name of the result: success, skip, fail, reschedule, retry.
    pub fn result_name(&self) -> &'static str {
        match self {
            Outcome::Done { .. } => "success",
            Outcome::Skip { .. } => "skip",
            Outcome::Fail { .. } => "fail",
            Outcome::Reschedule { .. } => "reschedule",
            Outcome::Retry { .. } => "retry",
        }
    }

    /// The platform will redeliver the event (nothing was committed for good).
    pub fn is_redelivery(&self) -> bool {
        matches!(self, Outcome::Reschedule { .. } | Outcome::Retry { .. })
    }

    pub fn message(&self) -> Option<&str> {
        match self {
            Outcome::Done { .. } => None,
            Outcome::Skip { message }
            | Outcome::Fail { message, .. }
            | Outcome::Reschedule { message, .. }
            | Outcome::Retry { message } => Some(message),
        }
    }
}

/// An event handler. Object-safe so the registry can hold `Arc<dyn Handler>`.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Short name for logs.
    fn name(&self) -> &str;
    async fn handle(&self, event: &Event) -> Outcome;
    /// The same, owning the event; handlers that keep the object override it to avoid a copy.
    async fn handle_owned(&self, event: Event) -> Outcome {
        self.handle(&event).await
    }
}

/// One registered handler and the statuses it accepts (empty = any, as for interactive events).
#[derive(Clone)]
pub struct Registration {
    pub statuses: Vec<Status>,
    pub handler: Arc<dyn Handler>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("statuses", &self.statuses)
            .field("handler", &self.handler.name())
            .finish()
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    handlers: BTreeMap<String, (EventType, Registration)>,
    metrics: Option<Arc<Metrics>>,
    installation_key: bool,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Registers `handler` for `event_type` and `statuses`. As in the Python runner, one handler per
    /// event type: a later registration replaces an earlier one.
    pub fn register(
        &mut self,
        event_type: EventType,
        statuses: Vec<Status>,
        handler: Arc<dyn Handler>,
    ) -> &mut Self {
        self.handlers.insert(
            event_type.as_str().to_string(),
            (event_type, Registration { statuses, handler }),
        );
        self
    }

    /// Asks the task runner to copy a task's installation `api_key` into its [`Event`]
    /// (`Event::installation_key`). Off by default: the built-in handlers make no REST calls.
    pub fn keep_installation_key(&mut self) -> &mut Self {
        self.installation_key = true;
        self
    }

    /// Whether events should carry the task's installation key.
    pub fn keeps_installation_key(&self) -> bool {
        self.installation_key
    }

    pub fn get(&self, event_type: &EventType) -> Option<&Registration> {
        self.handlers.get(event_type.as_str()).map(|(_, r)| r)
    }

    pub fn event_types(&self) -> impl Iterator<Item = &EventType> {
        self.handlers.values().map(|(t, _)| t)
    }

    /// `event_subscriptions` for `setup_request`: `{event_type: [statuses]}`, ordered by name.
    pub fn event_subscriptions(&self) -> serde_json::Map<String, Value> {
        self.handlers
            .iter()
            .map(|(name, (_, reg))| {
                let statuses = reg
                    .statuses
                    .iter()
                    .map(|s| Value::String(s.to_string()))
                    .collect();
                (name.clone(), Value::Array(statuses))
            })
            .collect()
    }

    /// Why an event would not reach a handler, if it would not.
    pub fn rejection(&self, event: &Event) -> Option<String> {
        let Some(reg) = self.get(&event.event_type) else {
            return Some(format!(
                "no handler is registered for event type `{}`",
                event.event_type
            ));
        };
        if reg.statuses.is_empty() {
            return None;
        }
        match &event.status {
            Some(s) if reg.statuses.contains(s) => None,
            other => Some(format!(
                "the status of {} ({}) is not among the statuses handled for `{}`: {}",
                event.object_id,
                other.as_ref().map(Status::as_str).unwrap_or("none"),
                event.event_type,
                reg.statuses
                    .iter()
                    .map(Status::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Runs the event through its handler (or skips it, saying why) and counts the outcome.
    pub async fn dispatch(&self, event: &Event) -> Outcome {
        let outcome = match self.rejection(event) {
            Some(reason) => Outcome::skip(reason),
            None => self.handler_for(event).handle(event).await,
        };
        self.record(&EventLabels::of(event), &event.object_id, &outcome);
        outcome
    }

    /// As [`Registry::dispatch`], giving the event to the handler (no copy of the object for
    /// handlers that keep it, such as the persist handler).
    pub async fn dispatch_owned(&self, event: Event) -> Outcome {
        let labels = EventLabels::of(&event);
        let object_id = event.object_id.clone();
        let outcome = match self.rejection(&event) {
            Some(reason) => Outcome::skip(reason),
            None => self.handler_for(&event).clone().handle_owned(event).await,
        };
        self.record(&labels, &object_id, &outcome);
        outcome
    }

    fn handler_for(&self, event: &Event) -> &Arc<dyn Handler> {
        &self
            .get(&event.event_type)
            .expect("rejection() checked the registration")
            .handler
    }

    fn record(&self, labels: &EventLabels, object_id: &str, outcome: &Outcome) {
        if let Some(m) = &self.metrics {
            m.count_event(labels, outcome.result_name());
        }
        let event_type = &labels.event_type;
        // Object ids and messages may come from outside (a frame, an HTTP body): escaped.
        let object_id = crate::sanitize::escape_control(object_id);
        match outcome {
            Outcome::Done { document_id, .. } => tracing::debug!(
                %event_type, %object_id,
                document_id = document_id.as_deref().unwrap_or(""), "event handled"),
            Outcome::Skip { message } => tracing::info!(
                %event_type, %object_id, message = %crate::sanitize::escape_control(message), "event skipped"),
            other => tracing::warn!(
                %event_type, %object_id,
                result = other.result_name(),
                message = %crate::sanitize::escape_control(other.message().unwrap_or("")),
                "event not completed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Source;
    use serde_json::json;

    struct Fixed(Outcome);
    #[async_trait]
    impl Handler for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        async fn handle(&self, _event: &Event) -> Outcome {
            self.0.clone()
        }
    }

    fn pr(status: &str) -> Event {
        Event::new(
            EventType::AssetPurchaseRequestProcessing,
            "PR-1",
            json!({"id": "PR-1", "type": "purchase", "status": status}),
            Source::Http,
        )
    }

    #[tokio::test]
    async fn dispatch_routes_by_type_and_status() {
        let mut r = Registry::new();
        r.register(
            EventType::AssetPurchaseRequestProcessing,
            vec![Status::Pending],
            Arc::new(Fixed(Outcome::done())),
        );
        assert_eq!(r.dispatch(&pr("pending")).await, Outcome::done());
        let skipped = r.dispatch(&pr("approved")).await;
        assert_eq!(skipped.result_name(), "skip");
        assert!(skipped.message().unwrap().contains("approved"));
        assert!(skipped.message().unwrap().contains("pending"));

        let other = Event::new(
            EventType::AssetChangeRequestProcessing,
            "PR-2",
            json!({"id": "PR-2", "status": "pending"}),
            Source::Http,
        );
        let skipped = r.dispatch(&other).await;
        assert_eq!(skipped.result_name(), "skip");
        assert!(skipped
            .message()
            .unwrap()
            .contains("no handler is registered for event type `asset_change_request_processing`"));
    }

    #[tokio::test]
    async fn every_outcome_passes_through() {
        for o in [
            Outcome::skip("s"),
            Outcome::fail("f"),
            Outcome::retry("r"),
            Outcome::reschedule(45, "later"),
        ] {
            let mut r = Registry::new();
            r.register(
                EventType::AssetPurchaseRequestProcessing,
                vec![Status::Pending],
                Arc::new(Fixed(o.clone())),
            );
            assert_eq!(r.dispatch(&pr("pending")).await, o);
        }
    }

    #[test]
    fn reschedule_is_clamped_to_30_seconds() {
        assert_eq!(
            Outcome::reschedule(1, "x"),
            Outcome::Reschedule {
                countdown: 30,
                message: "x".into()
            }
        );
        assert!(matches!(
            Outcome::reschedule(600, "x"),
            Outcome::Reschedule { countdown: 600, .. }
        ));
    }

    #[test]
    fn slow_process_reschedule_waits_at_least_300_seconds() {
        for (asked, got) in [
            (0, 300),
            (30, 300),
            (299, 300),
            (300, 300),
            (301, 301),
            (3600, 3600),
        ] {
            assert!(
                matches!(Outcome::slow_process_reschedule(asked), Outcome::Reschedule { countdown, .. } if countdown == got),
                "{asked} → {got}"
            );
        }
        assert_eq!(
            Outcome::slow_process_reschedule(10).result_name(),
            "reschedule"
        );
    }

    #[test]
    fn interactive_and_validation_answers() {
        let o = Outcome::interactive(201, Some(json!({"X-A": "1"})), json!({"ok": true}));
        assert_eq!(
            o,
            Outcome::Done {
                document_id: None,
                duplicate: false,
                data: Some(
                    json!({"http_status": 201, "headers": {"X-A": "1"}, "body": {"ok": true}})
                )
            }
        );
        let o = Outcome::validation_fail(json!({"id": "PR-1"}), "bad");
        assert_eq!(o.message(), Some("bad"));
        assert!(
            matches!(o, Outcome::Fail { data: Some(d), .. } if d["http_status"] == 400 && d["body"]["id"] == "PR-1")
        );
    }

    #[test]
    fn subscriptions_come_from_registrations() {
        let mut r = Registry::new();
        let h: Arc<dyn Handler> = Arc::new(Fixed(Outcome::done()));
        r.register(
            EventType::AssetPurchaseRequestProcessing,
            vec![Status::Pending, Status::Approved],
            h.clone(),
        );
        r.register(EventType::AssetPurchaseRequestValidation, vec![], h);
        assert_eq!(
            Value::Object(r.event_subscriptions()),
            json!({"asset_purchase_request_processing": ["pending", "approved"],
                   "asset_purchase_request_validation": []})
        );
    }
}
