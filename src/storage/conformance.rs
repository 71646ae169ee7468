//! The storage conformance suite: plain async functions every backend must pass, plus
//! [`storage_conformance!`](crate::storage_conformance), which expands to one `#[tokio::test]` per case.
//!
//! ```ignore
//! crate::storage_conformance!(async {
//!     let (guard, store) = make_store().await;   // guard: anything to keep alive (temp dir, db)
//!     (Box::new(guard) as Box<dyn std::any::Any + Send>, store as Arc<dyn Storage>)
//! });
//! ```
//! Each function uses ids unique to the call, so backends may share one database between cases.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use crate::storage::store::{EventDocument, ListQuery, Provenance, SaveOutcome, Storage};

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A purchase-request document for `object_id` in `status`, updated at `updated`.
pub fn sample_doc(object_id: &str, status: &str, updated: &str) -> EventDocument {
    let object = json!({
        "id": object_id,
        "type": "purchase",
        "status": status,
        "updated": updated,
        "asset": {"id": "AS-1", "items": [{"id": "PRD-1-0001", "quantity": "5"}], "params": []},
        "note": "",
    });
    // As the persist handler stores an HTTP event with the `state` id strategy.
    let task_id = unique("TQ");
    let meta = Provenance {
        event_type: "asset_purchase_request_processing",
        status,
        object_id,
        task_id: Some(&task_id),
        source: "http",
        received_at: OffsetDateTime::now_utc(),
    };
    EventDocument::new(format!("{object_id}:{status}:{updated}"), meta, object)
}

fn with_time(mut doc: EventDocument, event_type: &str, secs_ago: i64) -> EventDocument {
    doc.received_at = OffsetDateTime::now_utc() - time::Duration::seconds(secs_ago);
    doc.event_type = event_type.to_string();
    let meta = doc.body.get_mut(super::META_KEY).expect("meta");
    meta["event_type"] = json!(event_type);
    meta["received_at"] = json!(super::format_timestamp(doc.received_at));
    doc
}

fn ids(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| d["_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

pub async fn ping_ok(s: &dyn Storage) {
    s.ping().await.expect("ping");
}

pub async fn round_trip(s: &dyn Storage) {
    let doc = sample_doc(&unique("PR"), "pending", "2026-11-28T17:21:48+00:00");
    assert_eq!(s.save(&doc).await.unwrap(), SaveOutcome::Inserted);
    let back = s.get(&doc.id).await.unwrap().expect("stored document");
    assert_eq!(back, Value::Object(doc.body.clone()));
    assert_eq!(back["asset"]["items"][0]["quantity"], json!("5"));
}

pub async fn get_missing_is_none(s: &dyn Storage) {
    assert_eq!(s.get(&unique("nope")).await.unwrap(), None);
}

pub async fn save_is_idempotent(s: &dyn Storage) {
    let object_id = unique("PR");
    let doc = sample_doc(&object_id, "pending", "u1");
    assert_eq!(s.save(&doc).await.unwrap(), SaveOutcome::Inserted);
    // A redelivery: same _id, different task and receive time.
    let mut again = sample_doc(&object_id, "pending", "u1");
    again.received_at += time::Duration::seconds(5);
    assert_eq!(again.id, doc.id);
    assert_eq!(s.save(&again).await.unwrap(), SaveOutcome::Duplicate);
    let listed = s
        .list(&ListQuery {
            object_id: Some(object_id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    // The first write wins: the stored document is the original one.
    assert_eq!(listed[0], Value::Object(doc.body));
}

pub async fn save_many_reports_each_document(s: &dyn Storage) {
    let existing = sample_doc(&unique("PR"), "pending", "u");
    assert_eq!(s.save(&existing).await.unwrap(), SaveOutcome::Inserted);
    let a = sample_doc(&unique("PR"), "pending", "u");
    let b = sample_doc(&unique("PR"), "approved", "u");
    let results = s
        .save_many(&[a.clone(), existing.clone(), b.clone(), a.clone()])
        .await;
    let results: Vec<_> = results.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(
        results,
        vec![
            SaveOutcome::Inserted,
            SaveOutcome::Duplicate,
            SaveOutcome::Inserted,
            SaveOutcome::Duplicate
        ]
    );
    assert!(s.save_many(&[]).await.is_empty());
    for d in [&a, &b, &existing] {
        assert!(s.get(&d.id).await.unwrap().is_some());
    }
}

pub async fn list_filters_newest_first(s: &dyn Storage) {
    let obj = unique("PR");
    let t1 = unique("type_a");
    let t2 = unique("type_b");
    let d_old = with_time(sample_doc(&obj, "pending", "1"), &t1, 30);
    let d_mid = with_time(sample_doc(&obj, "approved", "2"), &t1, 20);
    let d_new = with_time(sample_doc(&obj, "failed", "3"), &t2, 10);
    for d in [&d_mid, &d_new, &d_old] {
        assert_eq!(s.save(d).await.unwrap(), SaveOutcome::Inserted);
    }
    let by_object = s
        .list(&ListQuery {
            object_id: Some(obj.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ids(&by_object),
        vec![d_new.id.clone(), d_mid.id.clone(), d_old.id.clone()]
    );
    let by_type = s
        .list(&ListQuery {
            event_type: Some(t1.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&by_type), vec![d_mid.id.clone(), d_old.id.clone()]);
    let by_status = s
        .list(&ListQuery {
            object_id: Some(obj.clone()),
            status: Some("approved".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&by_status), vec![d_mid.id.clone()]);
    let limited = s
        .list(&ListQuery {
            object_id: Some(obj.clone()),
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&limited), vec![d_new.id.clone(), d_mid.id.clone()]);
    let none = s
        .list(&ListQuery {
            object_id: Some(obj),
            event_type: Some(t2),
            status: Some("pending".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
}

pub async fn list_filters_by_asset(s: &dyn Storage) {
    let asset = unique("AS");
    let other = unique("AS");
    let with_asset = |status: &str, updated: &str, asset: &str, secs_ago: i64| {
        let mut d = with_time(
            sample_doc(&unique("PR"), status, updated),
            "asset_purchase_request_processing",
            secs_ago,
        );
        d.body["asset"]["id"] = json!(asset);
        d
    };
    let a_old = with_asset("approved", "1", &asset, 30);
    let a_new = with_asset("pending", "2", &asset, 10);
    let b = with_asset("approved", "3", &other, 20);
    let mut no_asset = sample_doc(&unique("PR"), "approved", "4");
    no_asset.body.remove("asset");
    for d in [&a_old, &b, &a_new, &no_asset] {
        assert_eq!(s.save(d).await.unwrap(), SaveOutcome::Inserted);
    }
    let by_asset = s
        .list(&ListQuery {
            asset_id: Some(asset.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&by_asset), vec![a_new.id.clone(), a_old.id.clone()]);
    let approved = s
        .list(&ListQuery {
            asset_id: Some(asset.clone()),
            status: Some("approved".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&approved), vec![a_old.id.clone()]);
    let unknown = s
        .list(&ListQuery {
            asset_id: Some(unique("AS")),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(unknown.is_empty());
}

pub async fn values_are_kept_losslessly(s: &dyn Storage) {
    let mut doc = sample_doc(&unique("PR"), "pending", "u");
    let mut extra = Map::new();
    extra.insert("unicode".into(), json!("Zürich — 東京 — emoji 🎉"));
    extra.insert("big".into(), json!(i64::MAX));
    extra.insert("negative".into(), json!(-42));
    extra.insert("float".into(), json!(1.5));
    extra.insert("null".into(), Value::Null);
    extra.insert("empty_array".into(), json!([]));
    extra.insert("empty_object".into(), json!({}));
    extra.insert("bool".into(), json!(true));
    extra.insert(
        "nested".into(),
        json!({"a": [{"b": {"c": ["d", 1, null]}}]}),
    );
    for (k, v) in extra {
        doc.body.insert(k, v);
    }
    s.save(&doc).await.unwrap();
    assert_eq!(
        s.get(&doc.id).await.unwrap().unwrap(),
        Value::Object(doc.body)
    );
}

pub async fn concurrent_duplicates_store_once(s: Arc<dyn Storage>) {
    let docs: Vec<EventDocument> = (0..50)
        .map(|_| sample_doc(&unique("PR"), "pending", "u"))
        .collect();
    let mut tasks = Vec::new();
    for round in 0..2 {
        for d in &docs {
            let (s, d) = (s.clone(), d.clone());
            tasks.push(tokio::spawn(async move {
                let _ = round;
                s.save(&d).await
            }));
        }
    }
    let mut inserted = HashSet::new();
    let mut duplicates = 0;
    for t in tasks {
        // which of the two copies wins is up to the backend
        match t.await.unwrap().unwrap() {
            SaveOutcome::Inserted => {}
            SaveOutcome::Duplicate => duplicates += 1,
        }
    }
    for d in &docs {
        assert!(s.get(&d.id).await.unwrap().is_some());
        inserted.insert(d.id.clone());
    }
    assert_eq!(inserted.len(), 50);
    assert_eq!(duplicates, 50);
}

/// What a conformance case runs against: the store, something to keep alive while it runs (a
/// temp dir, a test server), and an optional async clean-up (e.g. dropping a test database).
pub struct Fixture {
    pub storage: Arc<dyn Storage>,
    pub guard: Box<dyn std::any::Any + Send>,
    pub cleanup: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl Fixture {
    pub fn new(storage: Arc<dyn Storage>, guard: impl std::any::Any + Send) -> Self {
        Self {
            storage,
            guard: Box::new(guard),
            cleanup: None,
        }
    }

    pub fn with_cleanup(
        mut self,
        cleanup: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.cleanup = Some(Box::pin(cleanup));
        self
    }

    pub async fn finish(self) {
        if let Some(c) = self.cleanup {
            c.await;
        }
        drop(self.guard);
    }
}

/// Expands to one `#[tokio::test]` per conformance case — the single list of cases every backend
/// runs. `$make` is an async fn `(case: &'static str) -> Option<Fixture>`; `None` skips the case
/// (a backend whose server is deliberately not configured, e.g. `SKIP_MONGO_TESTS=1`).
#[macro_export]
macro_rules! storage_conformance {
    ($make:path) => {
        mod conformance_suite {
            #[allow(unused_imports)]
            use super::*;
            $crate::storage_conformance!(@case $make, ping_ok, as_ref);
            $crate::storage_conformance!(@case $make, round_trip, as_ref);
            $crate::storage_conformance!(@case $make, get_missing_is_none, as_ref);
            $crate::storage_conformance!(@case $make, save_is_idempotent, as_ref);
            $crate::storage_conformance!(@case $make, save_many_reports_each_document, as_ref);
            $crate::storage_conformance!(@case $make, list_filters_newest_first, as_ref);
            $crate::storage_conformance!(@case $make, list_filters_by_asset, as_ref);
            $crate::storage_conformance!(@case $make, values_are_kept_losslessly, as_ref);
            $crate::storage_conformance!(@case $make, concurrent_duplicates_store_once, clone);
        }
    };
    (@case $make:path, $case:ident, $pass:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            let Some(fixture) = $make(stringify!($case)).await else {
                return;
            };
            $crate::storage::conformance::$case(fixture.storage.$pass()).await;
            fixture.finish().await;
        }
    };
}

#[cfg(test)]
mod tests {
    /// Every case function is in the macro's list, so every backend runs it.
    #[test]
    fn every_case_is_in_the_macro() {
        let src = include_str!("conformance.rs");
        let mut cases = 0;
        for line in src.lines() {
            // top-level case functions only (not `Fixture`'s methods)
            if let Some(rest) = line.strip_prefix("pub async fn ") {
                let name = rest.split('(').next().unwrap();
                cases += 1;
                assert!(
                    src.contains(&format!("(@case $make, {name}, ")),
                    "conformance case `{name}` is missing from storage_conformance!"
                );
            }
        }
        assert_eq!(cases, 9);
    }
}
