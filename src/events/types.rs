//! The event model: Connect event types and statuses, exactly as named on the wire.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use time::OffsetDateTime;

/// How the platform delivers an event type (connect-protocol.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// The object is fetched through REST; results are success/skip/fail/retry/reschedule.
    Background,
    /// The object arrives in `input.data`; the answer carries `{http_status, headers, body}`.
    Interactive,
    Scheduled,
}

macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $($variant:ident = $wire:literal $(: $cat:ident, [$($st:ident),*])?),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($variant,)*
            /// A name this build does not know; kept verbatim (the platform can add new ones).
            Other(String),
        }

        impl $name {
            /// Every known value, in declaration order.
            pub const KNOWN: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $wire,)*
                    $name::Other(s) => s,
                }
            }
        }

        impl FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(match s {
                    $($wire => $name::$variant,)*
                    other => $name::Other(other.to_string()),
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Ok(s.parse().unwrap())
            }
        }
    };
}

string_enum! {
    /// Statuses of Connect objects that event subscriptions name.
    Status {
        Draft = "draft",
        TiersSetup = "tiers_setup",
        Pending = "pending",
        Inquiring = "inquiring",
        Approved = "approved",
        Failed = "failed",
        Scheduled = "scheduled",
        Revoking = "revoking",
        Revoked = "revoked",
        Reviewing = "reviewing",
        Deploying = "deploying",
        Canceled = "canceled",
        Completed = "completed",
        Accepted = "accepted",
        Ignored = "ignored",
        Uploading = "uploading",
        Uploaded = "uploaded",
        Invalid = "invalid",
        Processing = "processing",
        Processed = "processed",
        Ready = "ready",
        Rejected = "rejected",
        Closed = "closed",
    }
}

string_enum! {
    /// Every event type `connect-eaas-core` declares (connect-protocol.md §6), plus `Other`.
    EventType {
        AssetPurchaseRequestProcessing = "asset_purchase_request_processing",
        AssetChangeRequestProcessing = "asset_change_request_processing",
        AssetSuspendRequestProcessing = "asset_suspend_request_processing",
        AssetResumeRequestProcessing = "asset_resume_request_processing",
        AssetCancelRequestProcessing = "asset_cancel_request_processing",
        AssetAdjustmentRequestProcessing = "asset_adjustment_request_processing",
        AssetRenewRequestProcessing = "asset_renew_request_processing",
        AssetTransferRequestProcessing = "asset_transfer_request_processing",
        TierConfigSetupRequestProcessing = "tier_config_setup_request_processing",
        TierConfigChangeRequestProcessing = "tier_config_change_request_processing",
        TierConfigAdjustmentRequestProcessing = "tier_config_adjustment_request_processing",
        ListingNewRequestProcessing = "listing_new_request_processing",
        ListingRemoveRequestProcessing = "listing_remove_request_processing",
        TierAccountUpdateRequestProcessing = "tier_account_update_request_processing",
        UsageFileRequestProcessing = "usage_file_request_processing",
        PartUsageFileRequestProcessing = "part_usage_file_request_processing",
        AssetPurchaseRequestValidation = "asset_purchase_request_validation",
        AssetChangeRequestValidation = "asset_change_request_validation",
        AssetRenewRequestValidation = "asset_renew_request_validation",
        AssetTransferRequestValidation = "asset_transfer_request_validation",
        TierConfigSetupRequestValidation = "tier_config_setup_request_validation",
        TierConfigChangeRequestValidation = "tier_config_change_request_validation",
        ProductActionExecution = "product_action_execution",
        ProductCustomEventProcessing = "product_custom_event_processing",
        ScheduledExecution = "scheduled_execution",
    }
}

impl EventType {
    pub fn category(&self) -> Category {
        use EventType::*;
        match self {
            AssetPurchaseRequestValidation
            | AssetChangeRequestValidation
            | AssetRenewRequestValidation
            | AssetTransferRequestValidation
            | TierConfigSetupRequestValidation
            | TierConfigChangeRequestValidation
            | ProductActionExecution
            | ProductCustomEventProcessing => Category::Interactive,
            ScheduledExecution => Category::Scheduled,
            Other(name) if name.ends_with("_validation") => Category::Interactive,
            _ => Category::Background,
        }
    }

    /// Whether this is a `*_validation` event (answered with the draft by default).
    pub fn is_validation(&self) -> bool {
        self.as_str().ends_with("_validation")
    }

    /// The statuses public sources list for this type (empty = any / not applicable).
    pub fn known_statuses(&self) -> &'static [Status] {
        use EventType::*;
        use Status as S;
        const ASSET: &[Status] = &[
            S::Pending,
            S::Approved,
            S::Failed,
            S::Inquiring,
            S::Scheduled,
            S::Revoking,
            S::Revoked,
        ];
        const TIER_CONFIG: &[Status] = &[S::Pending, S::Approved, S::Failed, S::Inquiring];
        const LISTING: &[Status] = &[
            S::Draft,
            S::Reviewing,
            S::Deploying,
            S::Canceled,
            S::Completed,
        ];
        const TIER_ACCOUNT: &[Status] = &[S::Pending, S::Accepted, S::Ignored];
        const USAGE: &[Status] = &[
            S::Draft,
            S::Uploading,
            S::Uploaded,
            S::Invalid,
            S::Processing,
            S::Processed,
            S::Ready,
            S::Rejected,
            S::Pending,
            S::Accepted,
            S::Closed,
        ];
        const CHUNK: &[Status] = &[S::Draft, S::Ready, S::Closed, S::Failed];
        const VALIDATION: &[Status] = &[
            S::Draft,
            S::TiersSetup,
            S::Pending,
            S::Inquiring,
            S::Approved,
            S::Failed,
        ];
        match self {
            AssetPurchaseRequestProcessing
            | AssetChangeRequestProcessing
            | AssetSuspendRequestProcessing
            | AssetResumeRequestProcessing
            | AssetCancelRequestProcessing
            | AssetAdjustmentRequestProcessing
            | AssetRenewRequestProcessing
            | AssetTransferRequestProcessing => ASSET,
            TierConfigSetupRequestProcessing
            | TierConfigChangeRequestProcessing
            | TierConfigAdjustmentRequestProcessing => TIER_CONFIG,
            ListingNewRequestProcessing | ListingRemoveRequestProcessing => LISTING,
            TierAccountUpdateRequestProcessing => TIER_ACCOUNT,
            UsageFileRequestProcessing => USAGE,
            PartUsageFileRequestProcessing => CHUNK,
            AssetPurchaseRequestValidation
            | AssetChangeRequestValidation
            | TierConfigSetupRequestValidation
            | TierConfigChangeRequestValidation => VALIDATION,
            _ => &[],
        }
    }

    /// The event type of a Connect object posted on its own (HTTP channel), from its `id` prefix
    /// and `type`: an asset request `PR-…` of type `purchase` is `asset_purchase_request_processing`.
    pub fn for_object(object: &Value) -> Option<EventType> {
        let id = object.get("id")?.as_str()?;
        let ty = object.get("type").and_then(Value::as_str).unwrap_or("");
        use EventType::*;
        if id.starts_with("TCR-") {
            return Some(match ty {
                "setup" => TierConfigSetupRequestProcessing,
                "update" | "change" => TierConfigChangeRequestProcessing,
                "adjustment" => TierConfigAdjustmentRequestProcessing,
                _ => return None,
            });
        }
        if id.starts_with("TAR-") {
            return Some(TierAccountUpdateRequestProcessing);
        }
        if id.starts_with("LSTR-") {
            return Some(match ty {
                "new" => ListingNewRequestProcessing,
                "remove" => ListingRemoveRequestProcessing,
                _ => return None,
            });
        }
        Some(match ty {
            "purchase" => AssetPurchaseRequestProcessing,
            "change" => AssetChangeRequestProcessing,
            "suspend" => AssetSuspendRequestProcessing,
            "resume" => AssetResumeRequestProcessing,
            "cancel" => AssetCancelRequestProcessing,
            "adjustment" => AssetAdjustmentRequestProcessing,
            "renew" => AssetRenewRequestProcessing,
            "transfer" => AssetTransferRequestProcessing,
            _ => return None,
        })
    }
}

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Websocket,
    Http,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Websocket => "websocket",
            Source::Http => "http",
        }
    }
}

/// One event to handle: what happened to which Connect object, and the object itself.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_type: EventType,
    /// The object's `status` at the time the event was taken (None when the object has none).
    pub status: Option<Status>,
    pub object_id: String,
    /// The Connect object as received or fetched, untouched.
    pub object: Value,
    pub task_id: Option<String>,
    pub source: Source,
    pub received_at: OffsetDateTime,
    /// The installation `api_key` the task carried, kept only when the registry asks for it
    /// ([`crate::events::Registry::keep_installation_key`], set by SDK extensions); else None.
    pub installation_key: Option<crate::config::secret::Secret>,
}

impl Event {
    /// Builds an event from an object, reading `status` from it.
    pub fn new(
        event_type: EventType,
        object_id: impl Into<String>,
        object: Value,
        source: Source,
    ) -> Self {
        let status = object
            .get("status")
            .and_then(Value::as_str)
            .map(|s| s.parse().unwrap());
        Event {
            event_type,
            status,
            object_id: object_id.into(),
            object,
            task_id: None,
            source,
            received_at: OffsetDateTime::now_utc(),
            installation_key: None,
        }
    }

    pub fn with_task_id(mut self, task_id: impl Into<String>) -> Self {
        self.task_id = Some(task_id.into());
        self
    }

    pub fn status_str(&self) -> &str {
        self.status.as_ref().map(Status::as_str).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_round_trip_on_the_wire() {
        for t in EventType::KNOWN {
            let s = serde_json::to_string(t).unwrap();
            let back: EventType = serde_json::from_str(&s).unwrap();
            assert_eq!(&back, t);
            assert!(!matches!(back, EventType::Other(_)));
        }
        let other: EventType = serde_json::from_str("\"helpdesk_case_processing\"").unwrap();
        assert_eq!(other, EventType::Other("helpdesk_case_processing".into()));
        assert_eq!(
            serde_json::to_string(&other).unwrap(),
            "\"helpdesk_case_processing\""
        );
        assert_eq!(EventType::KNOWN.len(), 25);
    }

    #[test]
    fn categories_follow_the_protocol_table() {
        assert_eq!(
            EventType::AssetPurchaseRequestProcessing.category(),
            Category::Background
        );
        assert_eq!(
            EventType::AssetPurchaseRequestValidation.category(),
            Category::Interactive
        );
        assert_eq!(
            EventType::ProductActionExecution.category(),
            Category::Interactive
        );
        assert_eq!(
            EventType::ScheduledExecution.category(),
            Category::Scheduled
        );
    }

    #[test]
    fn object_type_maps_to_event_type() {
        let pr = json!({"id": "PR-1", "type": "purchase"});
        assert_eq!(
            EventType::for_object(&pr),
            Some(EventType::AssetPurchaseRequestProcessing)
        );
        let cancel = json!({"id": "PR-1", "type": "cancel"});
        assert_eq!(
            EventType::for_object(&cancel),
            Some(EventType::AssetCancelRequestProcessing)
        );
        let tcr = json!({"id": "TCR-1", "type": "setup"});
        assert_eq!(
            EventType::for_object(&tcr),
            Some(EventType::TierConfigSetupRequestProcessing)
        );
        assert_eq!(
            EventType::for_object(&json!({"id": "PR-1", "type": "bogus"})),
            None
        );
        assert_eq!(EventType::for_object(&json!({"type": "purchase"})), None);
    }
}
