//! Validate purchase-request drafts: an e-mail parameter that is not an e-mail address gets its
//! `value_error` set in the draft returned to Connect (the platform shows it to the customer).
//!
//! Run: `API_KEY=… ENVIRONMENT_ID=… cargo run --example validate_draft`.

use connect_extension_mongodb::sdk::{Context, Event, EventType, Extension, Outcome};
use serde_json::json;

/// The extension: a validation handler for purchase-request drafts.
pub fn extension() -> Extension {
    Extension::new().validation(EventType::AssetPurchaseRequestValidation, validate)
}

/// Sets `value_error` on every `email` parameter whose value is not an address; the draft is
/// answered back either way (HTTP 200, as Connect validation extensions do).
pub async fn validate(event: Event, _ctx: Context) -> Outcome {
    let mut draft = event.object;
    if let Some(params) = draft["asset"]["params"].as_array_mut() {
        for param in params {
            let is_email = param["type"] == "email"
                || param["id"].as_str().is_some_and(|id| id.contains("email"));
            let value = param["value"].as_str().unwrap_or_default();
            if is_email && !value.is_empty() && !looks_like_email(value) {
                param["value_error"] = json!(format!("`{value}` is not a valid e-mail address"));
            }
        }
    }
    Outcome::validation(draft)
}

/// `local@domain.tld`, no spaces.
fn looks_like_email(value: &str) -> bool {
    match value.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !value.contains(char::is_whitespace)
                && domain.split('.').count() >= 2
                && domain.split('.').all(|p| !p.is_empty())
        }
        None => false,
    }
}

#[allow(dead_code)]
fn main() {
    extension().run();
}
