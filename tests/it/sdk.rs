//! The SDK (`src/sdk`) through its three examples, run as the daemon against the fake platform:
//! each test exercises exactly the example's code (included from `examples/`).

use std::sync::Arc;

use serde_json::{json, Value};

use crate::support::*;

#[path = "../../examples/approve_purchase.rs"]
mod approve_purchase;
#[path = "../../examples/scheduled_report.rs"]
mod scheduled_report;
#[path = "../../examples/validate_draft.rs"]
mod validate_draft;

fn output(result: &Value) -> &Value {
    &result["data"]["output"]
}

/// A platform whose `setup_response` sets the extension variable `TEMPLATE_ID`.
async fn platform_with_template(template_id: &str) -> Arc<FakePlatform> {
    capture_logs();
    let platform = FakePlatform::start().await;
    let mut data = setup_response_data();
    data["variables"] = json!([{"name": "TEMPLATE_ID", "value": template_id, "secure": false}]);
    *platform.state.setup_response.lock().unwrap() = data;
    platform
}

/// A purchase request `id` for `asset` with one item of `quantity`.
fn request(id: &str, status: &str, asset: &str, quantity: &str) -> Value {
    let mut o = purchase_object(id, status);
    o["asset"]["id"] = json!(asset);
    o["asset"]["items"] = json!([{"id": "PRD-276-377-545-0001", "quantity": quantity}]);
    o
}

fn approve_path(id: &str) -> String {
    format!("/public/v1/requests/{id}/approve")
}

#[tokio::test]
async fn approve_purchase_approves_once_per_asset_and_items() {
    let platform = platform_with_template("TL-0001-SDK").await;
    let h = Harness::start_extension(platform, approve_purchase::extension(), &[]).await;
    let (mut bg, _ia) = h.platform.both_channels().await;

    // The setup_request declares the example's variable after the storage ones.
    let setup: Value = serde_json::from_str(&h.platform.received()[0]).unwrap();
    let vars = setup["data"]["variables"].as_array().unwrap();
    assert_eq!(
        vars.last().unwrap(),
        &json!({"name": "TEMPLATE_ID", "initial_value": ""})
    );

    // 1. First pending request for the asset: stored, then approved with the template.
    h.platform
        .add_object(request("PR-SDK-0001-001", "pending", "AS-SDK-1", "5"));
    let mut task = background_task("TQ-SDK-1", "PR-SDK-0001-001");
    task["data"]["options"]["api_key"] = json!("ApiKey SU-INSTALL:installation-key");
    bg.send(&task);
    let r = &bg.results(1).await["TQ-SDK-1"];
    assert_eq!(output(r)["result"], "success", "{r}");
    let calls = h.platform.api_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].method, "POST");
    assert_eq!(calls[0].path, approve_path("PR-SDK-0001-001"));
    assert_eq!(calls[0].body, json!({"template_id": "TL-0001-SDK"}));
    // The installation key of the task, not API_KEY.
    assert_eq!(calls[0].authorization, "ApiKey SU-INSTALL:installation-key");
    assert!(h
        .stored()
        .await
        .iter()
        .any(|d| d["id"] == "PR-SDK-0001-001" && d["status"] == "pending"));

    // The platform sends the approved request: stored, no API call.
    h.platform
        .add_object(request("PR-SDK-0001-001", "approved", "AS-SDK-1", "5"));
    bg.send(&background_task("TQ-SDK-2", "PR-SDK-0001-001"));
    let r = &bg.results(1).await["TQ-SDK-2"];
    assert_eq!(output(r)["result"], "success", "{r}");
    assert_eq!(h.platform.api_calls().len(), 1);

    // 2. Another pending request for the same asset and items: stored, not approved again.
    h.platform
        .add_object(request("PR-SDK-0001-002", "pending", "AS-SDK-1", "5"));
    bg.send(&background_task("TQ-SDK-3", "PR-SDK-0001-002"));
    let r = &bg.results(1).await["TQ-SDK-3"];
    assert_eq!(output(r)["result"], "skip", "{r}");
    assert_eq!(
        output(r)["message"],
        "PR-SDK-0001-001 already approved asset AS-SDK-1 with the same items"
    );
    assert_eq!(h.platform.api_calls().len(), 1, "no second approve call");
    assert!(h
        .stored()
        .await
        .iter()
        .any(|d| d["id"] == "PR-SDK-0001-002"));

    // Same asset, other items: approved (with API_KEY: the task carries no installation key).
    h.platform
        .add_object(request("PR-SDK-0001-003", "pending", "AS-SDK-1", "7"));
    bg.send(&background_task("TQ-SDK-4", "PR-SDK-0001-003"));
    let r = &bg.results(1).await["TQ-SDK-4"];
    assert_eq!(output(r)["result"], "success", "{r}");
    let calls = h.platform.api_calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].path, approve_path("PR-SDK-0001-003"));
    assert_eq!(calls[1].authorization, API_KEY);

    let logs: Vec<String> = log_text()
        .lines()
        .filter(|l| l.contains("PR-SDK-0001-"))
        .map(String::from)
        .collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("approved") && l.contains("TQ-SDK-1")),
        "{logs:#?}"
    );
    println!("approve_purchase log lines:\n{}", logs.join("\n"));
    h.shutdown().await;
}

#[tokio::test]
async fn approve_purchase_fails_on_4xx_with_the_api_message_and_retries_on_5xx() {
    let platform = platform_with_template("TL-0002-SDK").await;
    let h = Harness::start_extension(platform, approve_purchase::extension(), &[]).await;
    let (mut bg, _ia) = h.platform.both_channels().await;

    h.platform
        .add_object(request("PR-SDK-0002-001", "pending", "AS-SDK-2", "1"));
    h.platform.answer_api(
        "POST",
        &approve_path("PR-SDK-0002-001"),
        &[(
            400,
            json!({"error_code": "REQ_003", "errors": ["Template TL-0002-SDK does not exist."]}),
        )],
    );
    bg.send(&background_task("TQ-SDK-400", "PR-SDK-0002-001"));
    let r = &bg.results(1).await["TQ-SDK-400"];
    assert_eq!(output(r)["result"], "fail", "{r}");
    assert_eq!(output(r)["message"], "Template TL-0002-SDK does not exist.");
    assert_eq!(h.platform.api_calls().len(), 1, "a 4xx is not retried");

    h.platform
        .add_object(request("PR-SDK-0002-002", "pending", "AS-SDK-3", "1"));
    let error = (
        500,
        json!({"error_code": "SERVER_ERROR", "errors": ["boom"]}),
    );
    h.platform.answer_api(
        "POST",
        &approve_path("PR-SDK-0002-002"),
        &[error.clone(), error.clone(), error.clone(), error],
    );
    bg.send(&background_task("TQ-SDK-500", "PR-SDK-0002-002"));
    let r = &bg.results(1).await["TQ-SDK-500"];
    assert_eq!(output(r)["result"], "retry", "{r}");
    assert!(output(r)["message"]
        .as_str()
        .unwrap()
        .contains("answered HTTP 500"));
    let calls: Vec<_> = h
        .platform
        .api_calls()
        .into_iter()
        .filter(|c| c.path == approve_path("PR-SDK-0002-002"))
        .collect();
    // The client's retries (3, as for the daemon's own calls), then the handler answers retry.
    assert_eq!(calls.len(), 4, "{calls:?}");
    // Both requests were stored before the API call (`success` would have meant "stored").
    let stored = h.stored().await;
    for id in ["PR-SDK-0002-001", "PR-SDK-0002-002"] {
        assert!(stored.iter().any(|d| d["id"] == id), "{id}");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn validate_draft_sets_value_error_on_a_malformed_email() {
    capture_logs();
    let platform = FakePlatform::start().await;
    let h = Harness::start_extension(platform, validate_draft::extension(), &[]).await;
    let (_bg, mut ia) = h.platform.both_channels().await;
    let mut bad = purchase_object("PR-SDK-VAL-1", "draft");
    bad["asset"]["params"][0]["value"] = json!("not an e-mail");
    let good = purchase_object("PR-SDK-VAL-2", "draft");
    for (task, draft) in [("TQ-VAL-1", &bad), ("TQ-VAL-2", &good)] {
        ia.send(&interactive_task(
            task,
            "asset_purchase_request_validation",
            draft["id"].as_str().unwrap(),
            draft.clone(),
        ));
    }
    let results = ia.results(2).await;
    let answer = &output(&results["TQ-VAL-1"]);
    assert_eq!(answer["result"], "success", "{answer}");
    assert_eq!(answer["data"]["http_status"], 200);
    let mut expected = bad.clone();
    expected["asset"]["params"][0]["value_error"] =
        json!("`not an e-mail` is not a valid e-mail address");
    assert_eq!(answer["data"]["body"], expected);
    let answer = &output(&results["TQ-VAL-2"]);
    assert_eq!(answer["result"], "success", "{answer}");
    assert_eq!(
        answer["data"]["body"], good,
        "a valid draft is echoed unchanged"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn scheduled_report_counts_stored_events_per_status() {
    capture_logs();
    let platform = FakePlatform::start().await;
    let h = Harness::start_extension(platform, scheduled_report::extension(), &[]).await;
    let (mut bg, _ia) = h.platform.both_channels().await;
    let setup: Value = serde_json::from_str(&h.platform.received()[0]).unwrap();
    assert_eq!(
        setup["data"]["schedulables"],
        json!([{"method": "status_report", "name": "status_report",
                "description": "Counts the stored purchase-request events per status"}])
    );
    // Stored by the default persist handler (the extension adds no event handler).
    for (i, status) in ["pending", "pending", "approved", "failed"]
        .iter()
        .enumerate()
    {
        let id = format!("PR-SDK-SCH-{i}");
        h.platform.add_object(purchase_object(&id, status));
        bg.send(&background_task(&format!("TQ-SCH-{i}"), &id));
    }
    let results = bg.results(4).await;
    assert!(results.values().all(|r| output(r)["result"] == "success"));

    h.platform.add_resource(
        "/public/v1/devops/services/SRVC-0000-0000/environments/ENV-TEST-01/schedules/EFS-SDK-1",
        json!({"id": "EFS-SDK-1", "method": "status_report", "parameter": {}}),
    );
    let mut s = background_task("TQ-SCH-RUN", "EFS-SDK-1");
    s["data"]["options"]["task_category"] = json!("scheduled");
    s["data"]["input"]["event_type"] = json!("scheduled_execution");
    bg.send(&s);
    let r = &bg.results(1).await["TQ-SCH-RUN"];
    assert_eq!(output(r)["result"], "success", "{r}");
    let line = log_text()
        .lines()
        .find(|l| l.contains("stored events per status") && l.contains("TQ-SCH-RUN"))
        .map(String::from)
        .expect("the report line, in the task's span");
    assert!(
        line.contains(r#"{\"approved\":1,\"failed\":1,\"pending\":2}"#)
            || line.contains(r#"{"approved":1,"failed":1,"pending":2}"#),
        "{line}"
    );
    h.shutdown().await;
}
