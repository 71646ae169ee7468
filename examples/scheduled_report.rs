//! A schedulable that counts the stored purchase-request events per status and logs the counts.
//!
//! Declare a schedule for the method `status_report` in the Connect portal (DevOps → Schedules);
//! each run logs one line with the counts.
//! Run: `API_KEY=… ENVIRONMENT_ID=… cargo run --example scheduled_report`.

use std::collections::BTreeMap;

use connect_extension_mongodb::sdk::{Context, Event, Extension, ListQuery, Outcome, Status};

/// The extension: one schedulable method, `status_report`.
pub fn extension() -> Extension {
    Extension::new().schedulable(
        "status_report",
        "Counts the stored purchase-request events per status",
        report,
    )
}

/// The counts per status of the stored purchase-request events (the newest
/// [`ListQuery::MAX_LIMIT`] per status).
pub async fn count_by_status(ctx: &Context) -> Result<BTreeMap<String, usize>, String> {
    let mut counts = BTreeMap::new();
    for status in [
        Status::Pending,
        Status::Approved,
        Status::Failed,
        Status::Inquiring,
        Status::Scheduled,
        Status::Revoking,
        Status::Revoked,
    ] {
        let docs = ctx
            .storage()
            .list(&ListQuery {
                event_type: Some("asset_purchase_request_processing".into()),
                status: Some(status.to_string()),
                limit: Some(ListQuery::MAX_LIMIT),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        if !docs.is_empty() {
            counts.insert(status.to_string(), docs.len());
        }
    }
    Ok(counts)
}

/// The schedulable: logs `stored events per status` with the counts.
pub async fn report(_schedule: Event, ctx: Context) -> Outcome {
    match count_by_status(&ctx).await {
        Ok(counts) => {
            let counts = serde_json::to_string(&counts).unwrap_or_default();
            tracing::info!(%counts, "stored events per status");
            Outcome::done()
        }
        Err(e) => Outcome::fail(format!("cannot read the store: {e}")),
    }
}

#[allow(dead_code)]
fn main() {
    extension().run();
}
