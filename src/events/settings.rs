//! The events settings (`[events]`): which events the persist handler stores.

use serde::{Deserialize, Serialize};

use super::types::{Category, EventType, Status};
use crate::config::error::{join, setting_error, split_list, ConfigError};

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    /// Raw `events.persist` spec; parsed by [`Settings::persist_rules`].
    pub persist: String,
}

/// One persistence rule: store events of `event_type` whose status is one of `statuses`
/// (any status when the list is empty, as for interactive events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistRule {
    pub event_type: EventType,
    pub statuses: Vec<Status>,
}

impl Settings {
    /// Parses `"type:s1,s2;type2:s3"`.
    pub fn persist_rules(&self) -> Result<Vec<PersistRule>, ConfigError> {
        let mut rules: Vec<PersistRule> = Vec::new();
        for part in self
            .persist
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (ty, statuses) = part.split_once(':').unwrap_or((part, ""));
            let event_type: EventType = ty.trim().parse().unwrap();
            if let EventType::Other(name) = &event_type {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    return Err(setting_error(
                        "events.persist",
                        format!("`{name}` is not an event type; expected \"event_type:status,status;…\", e.g. \"asset_purchase_request_processing:pending,approved\""),
                    ));
                }
            }
            let statuses: Vec<Status> = split_list(statuses)
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
            if event_type.category() == Category::Background && statuses.is_empty() {
                return Err(setting_error(
                    "events.persist",
                    format!("background event type `{event_type}` needs at least one status (accepted: {})",
                        join(event_type.known_statuses())),
                ));
            }
            let known = event_type.known_statuses();
            if let Some(bad) = statuses
                .iter()
                .find(|s| !known.is_empty() && !known.contains(s))
            {
                return Err(setting_error(
                    "events.persist",
                    format!(
                        "`{bad}` is not a status of `{event_type}`; accepted: {}",
                        join(known)
                    ),
                ));
            }
            if rules.iter().any(|r| r.event_type == event_type) {
                return Err(setting_error(
                    "events.persist",
                    format!("`{event_type}` is listed twice"),
                ));
            }
            rules.push(PersistRule {
                event_type,
                statuses,
            });
        }
        Ok(rules)
    }
}
