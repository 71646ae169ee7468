//! The default answer to interactive validation events: `success` with the draft returned
//! unchanged (`{http_status: 200, headers: null, body: <draft>}`), optionally persisting it first.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;

use super::registry::{Handler, Outcome};
use super::types::Event;

pub struct EchoValidation {
    /// When set, the draft is stored first; a storage failure fails the validation (never a
    /// silent success).
    persist: Option<Arc<dyn Handler>>,
}

impl EchoValidation {
    pub fn new(persist: Option<Arc<dyn Handler>>) -> Self {
        Self { persist }
    }
}

#[async_trait]
impl Handler for EchoValidation {
    fn name(&self) -> &str {
        "echo-validation"
    }

    async fn handle(&self, event: &Event) -> Outcome {
        if let Some(p) = &self.persist {
            let stored = p.handle(event).await;
            if !matches!(stored, Outcome::Done { .. }) {
                return stored;
            }
        }
        Outcome::Done {
            document_id: None,
            duplicate: false,
            data: Some(json!({"http_status": 200, "headers": null, "body": event.object})),
        }
    }
}
