//! The Connect channel with the MongoDB driver backend on a real server: "Apply Changes" that
//! moves the collection (the tutorial's DRIVER_COLLECTION extension variable) makes later events
//! land in the new collection, while earlier ones stay where they were committed.

use crate::support;
use crate::support::mongo;

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::doc;
use serde_json::{json, Value};
use support::*;

/// Sends the purchase-request tasks `range` and checks every one is answered `success`.
async fn answer_all_success(bg: &mut Conn, range: std::ops::Range<usize>) {
    let n = range.len();
    for i in range {
        bg.send(&background_task(
            &format!("TQ-DRV-{i}"),
            &format!("PR-DRV-{i}"),
        ));
    }
    let results = bg.results(n).await;
    assert!(
        results
            .values()
            .all(|r| r["data"]["output"]["result"] == "success"),
        "{results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_collection_change_from_connect_moves_later_events() {
    let Some(uri) = mongo::mongo_uri() else {
        return;
    };
    let db = mongo::unique_db("connect_driver");
    let h = Harness::start(
        &[
            ("STORAGE_BACKENDS", "driver"),
            ("MONGODB_URI", &uri),
            ("DB", &db),
            ("DRIVER_COLLECTION", "first_collection"),
        ],
        None,
    )
    .await;
    let (mut bg, ia) = h.platform.both_channels().await;
    for i in 0..10 {
        h.platform
            .add_object(purchase_object(&format!("PR-DRV-{i}"), "pending"));
    }
    answer_all_success(&mut bg, 0..5).await;

    // "Apply Changes" in the portal: DRIVER_COLLECTION moves, on both channels.
    let before = h.storage.current();
    let mut data = setup_response_data();
    data["variables"] = json!([
        {"name": "DRIVER_COLLECTION", "value": "second_collection", "secure": false},
    ]);
    bg.send(&setup_response_frame(&data));
    ia.send(&setup_response_frame(&data));
    let mut swapped = false;
    for _ in 0..500 {
        if !Arc::ptr_eq(&before, &h.storage.current()) {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        swapped,
        "the storage was not rebuilt after the collection changed"
    );
    drop(before);

    answer_all_success(&mut bg, 5..10).await;

    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let database = client.database(&db);
    let ids = |coll: &'static str| {
        let database = database.clone();
        async move {
            let mut cursor = database
                .collection::<mongodb::bson::Document>(coll)
                .find(doc! {})
                .await
                .unwrap();
            let mut ids = Vec::new();
            while cursor.advance().await.unwrap() {
                let d = cursor.deserialize_current().unwrap();
                ids.push(d.get_str("id").unwrap().to_string());
            }
            ids.sort();
            ids
        }
    };
    let first: Vec<String> = ids("first_collection").await;
    let second: Vec<String> = ids("second_collection").await;
    let expect =
        |r: std::ops::Range<usize>| -> Vec<String> { r.map(|i| format!("PR-DRV-{i}")).collect() };
    assert_eq!(first, expect(0..5));
    assert_eq!(second, expect(5..10));

    // Read-back follows the new collection too.
    let (status, body) = h.get("/events?object_id=PR-DRV-7").await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["count"], 1, "{body}");
    h.shutdown().await;
    database.drop().await.unwrap();
}
