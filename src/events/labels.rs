//! The metric labels of events: only values this build knows, so nothing from outside (a forged
//! status, a made-up event type) ever becomes a label.

use super::types::{Event, EventType, Status};
use crate::telemetry::EventLabels;

/// The metric label of an event type: its name when this build knows it, else `other`.
pub fn event_type_label(event_type: &EventType) -> String {
    match event_type {
        EventType::Other(_) => "other".to_string(),
        known => known.as_str().to_string(),
    }
}

/// [`event_type_label`] of an event type name from outside (a frame, a body).
pub fn event_type_label_of(name: &str) -> String {
    match name.parse::<EventType>() {
        Ok(t) => event_type_label(&t),
        Err(never) => match never {},
    }
}

/// The metric label of a status: its name when this build knows it, else `other` (empty when
/// the object has no status).
pub fn status_label(status: Option<&Status>) -> String {
    match status {
        None => String::new(),
        Some(Status::Other(_)) => "other".to_string(),
        Some(known) => known.as_str().to_string(),
    }
}

impl EventLabels {
    pub fn of(event: &Event) -> Self {
        EventLabels {
            event_type: event_type_label(&event.event_type),
            status: status_label(event.status.as_ref()),
            source: event.source.as_str().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Outcome;
    use crate::telemetry::Metrics;

    #[test]
    fn labels_come_only_from_known_values() {
        use crate::events::Source;
        let forged = "pending\"} 1\nconnect_ext_forged_total 1\n# EOF";
        let mut event = Event::new(
            "asset_purchase_request_processing".parse().unwrap(),
            "PR-1",
            serde_json::json!({"id": "PR-1", "status": forged}),
            Source::Http,
        );
        let labels = EventLabels::of(&event);
        assert_eq!(labels.status, "other");
        assert_eq!(labels.event_type, "asset_purchase_request_processing");
        event.event_type = "made_up\"} 1\n".parse().unwrap();
        event.status = Some(Status::Pending);
        let labels = EventLabels::of(&event);
        assert_eq!(labels.event_type, "other");
        assert_eq!(labels.status, "pending");
        let metrics = Metrics::new();
        metrics.count_event(&labels, Outcome::skip("x").result_name());
        let text = metrics.encode();
        assert!(
            !text.contains("forged") && !text.contains("made_up"),
            "{text}"
        );
        assert_eq!(status_label(None), "");
    }
}
