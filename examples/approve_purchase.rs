//! Approve pending purchase requests, once per asset and items — a stateful Connect extension.
//!
//! On every purchase request event the request is stored first (`.after_store()`: `success`
//! still means "stored"). For a *pending* request the handler then looks in the store: when an
//! earlier request for the same asset with the same items was already *approved*, it does not
//! approve again (`skip`); otherwise it calls `POST /public/v1/requests/{id}/approve` with the
//! template from the extension variable `TEMPLATE_ID`. A 4xx about the request → `fail` with the
//! API's message; refused credentials (401/403), throttling (429), a 5xx, a timeout or a network
//! error → `retry` (the platform redelivers).
//!
//! Run: `API_KEY=… ENVIRONMENT_ID=… cargo run --example approve_purchase`.

use connect_extension_mongodb::sdk::{
    Context, Event, EventType, Extension, ListQuery, Outcome, Status,
};
use serde_json::{json, Value};

/// The extension: the handler for purchase requests and the `TEMPLATE_ID` variable.
pub fn extension() -> Extension {
    Extension::new()
        .variable("TEMPLATE_ID", "", false)
        .event(
            EventType::AssetPurchaseRequestProcessing,
            // Every status is stored (the store is the extension's memory); only pending is approved.
            &[
                Status::Pending,
                Status::Approved,
                Status::Failed,
                Status::Inquiring,
            ],
            approve,
        )
        .after_store()
}

/// Runs after the request was stored.
pub async fn approve(event: Event, ctx: Context) -> Outcome {
    if event.status != Some(Status::Pending) {
        return Outcome::done(); // stored; nothing else to do
    }
    let request = &event.object;
    let asset_id = request["asset"]["id"].as_str().unwrap_or_default();
    // The stateful part: was the same asset with the same items approved before?
    let approved_before = match ctx
        .storage()
        .list(&ListQuery {
            asset_id: Some(asset_id.to_string()),
            status: Some("approved".into()),
            ..Default::default()
        })
        .await
    {
        Ok(docs) => docs,
        Err(e) => return Outcome::retry(format!("cannot read the store: {e}")),
    };
    if let Some(earlier) = approved_before
        .iter()
        .find(|d| d["id"] != request["id"] && items(d) == items(request))
    {
        let earlier = earlier["id"].as_str().unwrap_or_default();
        tracing::info!(request = %event.object_id, asset = asset_id, earlier, "same asset and items already approved: not approving again");
        return Outcome::skip(format!(
            "{earlier} already approved asset {asset_id} with the same items"
        ));
    }
    let Some(template_id) = ctx.variable("TEMPLATE_ID").filter(|t| !t.is_empty()) else {
        // A missing setting is about the configuration, not this request: ask for redelivery
        // (the request is stored; once TEMPLATE_ID is set with "Apply Changes" it is approved).
        return Outcome::reschedule(300, "the extension variable TEMPLATE_ID is not set");
    };
    let path = format!("requests/{}/approve", event.object_id);
    match ctx
        .client()
        .post(&path, &json!({"template_id": template_id}))
        .await
    {
        Ok(_) => {
            tracing::info!(request = %event.object_id, asset = asset_id, template_id, "approved");
            Outcome::done()
        }
        Err(e) => {
            tracing::warn!(request = %event.object_id, error = %e, "approval failed");
            e.outcome() // a 4xx about the request → fail with the API's message; credentials (401/403), 429, 5xx, timeout → retry
        }
    }
}

/// The items of a request as (id, quantity) pairs, sorted.
fn items(request: &Value) -> Vec<(String, String)> {
    let mut items: Vec<(String, String)> = request["asset"]["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    let quantity = match &i["quantity"] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (i["id"].as_str().unwrap_or_default().to_string(), quantity)
                })
                .collect()
        })
        .unwrap_or_default();
    items.sort();
    items
}

#[allow(dead_code)]
fn main() {
    extension().run();
}
