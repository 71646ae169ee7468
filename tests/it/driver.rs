//! The MongoDB driver backend against a real MongoDB-wire server (SecantusDB or mongod/Atlas).
//!
//! Run with `scripts/test.sh` (provisions the server), or with `MONGODB_URI` set. Without it these
//! tests fail with instructions, unless `SKIP_MONGO_TESTS=1`. Every test uses its own database.

use crate::support::mongo as support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use connect_extension_mongodb::events::persist::PersistHandler;
use connect_extension_mongodb::events::{Event, EventType, Handler, Outcome, Source};
use connect_extension_mongodb::storage::conformance::{self as c, sample_doc};
use connect_extension_mongodb::storage::driver::{encode_credential, DriverStorage};
use connect_extension_mongodb::storage::fanout::FanOut;
use connect_extension_mongodb::storage::local::LocalStorage;
use connect_extension_mongodb::storage::IdStrategy;
use connect_extension_mongodb::storage::{
    ErrorKind, EventDocument, SaveOutcome, SharedStorage, Storage,
};
use connect_extension_mongodb::telemetry::Metrics;
use mongodb::bson::doc;
use serde_json::{json, Value};
use support::{mongo_uri, Db, PrivateServer};

// ---------------------------------------------------------------------------------------------
// The storage conformance suite
// ---------------------------------------------------------------------------------------------

/// Each conformance case on its own database, dropped afterwards.
async fn conformance_fixture(case: &'static str) -> Option<c::Fixture> {
    let uri = mongo_uri()?;
    let db = Db::open(&uri, case).await;
    let storage = db.storage();
    Some(c::Fixture::new(storage, ()).with_cleanup(db.drop_db()))
}

connect_extension_mongodb::storage_conformance!(conformance_fixture);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn purchase_event(object_id: &str, updated: &str) -> Event {
    let mut object: Value =
        serde_json::from_str(include_str!("../fixtures/purchase_request.json")).unwrap();
    object["id"] = json!(object_id);
    object["updated"] = json!(updated);
    Event::new(
        EventType::AssetPurchaseRequestProcessing,
        object_id,
        object,
        Source::Websocket,
    )
    .with_task_id(format!("TQ-{}", uuid::Uuid::new_v4().simple()))
}

fn persist_handler(storage: Arc<dyn Storage>) -> Arc<PersistHandler> {
    Arc::new(PersistHandler::new(
        Arc::new(SharedStorage::new(storage)),
        IdStrategy::State,
        30,
        Metrics::shared(),
    ))
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Polls `cond` every 20 ms; panics after `limit` (a hang guard, not a timing assertion).
async fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Group commit, duplicates, documents
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_500_concurrent_saves() {
    let Some(uri) = mongo_uri() else { return };
    let db = Db::open(&uri, "group_commit").await;
    let docs: Vec<EventDocument> = (0..500)
        .map(|i| sample_doc(&unique("PR"), "pending", &format!("u{i}")))
        .collect();

    let save_all = |docs: Vec<EventDocument>| {
        let store = db.store.clone();
        async move {
            let tasks: Vec<_> = docs
                .into_iter()
                .map(|d| {
                    let store = store.clone();
                    tokio::spawn(async move { (d.id.clone(), store.save(&d).await) })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }
    };

    // 500 new documents at once: every one inserted, in far fewer round trips than documents.
    for (id, r) in save_all(docs.clone()).await {
        assert_eq!(r.unwrap(), SaveOutcome::Inserted, "{id}");
    }
    let (batches, documents) = db.store.batch_stats();
    assert_eq!(documents, 500);
    assert!(
        batches < 250,
        "500 concurrent saves went out in {batches} insert_many batches: not coalesced"
    );
    assert_eq!(db.count(doc! {}).await, 500);

    // Mixed: 250 redeliveries of stored documents and 250 new ones, all concurrently.
    let new: Vec<EventDocument> = (0..250)
        .map(|i| sample_doc(&unique("PR"), "approved", &format!("v{i}")))
        .collect();
    let new_ids: HashSet<String> = new.iter().map(|d| d.id.clone()).collect();
    let mut mixed: Vec<EventDocument> = docs[..250].to_vec();
    mixed.extend(new.iter().cloned());
    for (id, r) in save_all(mixed).await {
        let expected = if new_ids.contains(&id) {
            SaveOutcome::Inserted
        } else {
            SaveOutcome::Duplicate
        };
        assert_eq!(r.unwrap(), expected, "{id}");
    }
    assert_eq!(db.count(doc! {}).await, 750);
    for d in docs.iter().chain(&new) {
        assert_eq!(db.count(doc! {"_id": &d.id}).await, 1, "{}", d.id);
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_delivery_is_stored_once_and_answered_success() {
    let Some(uri) = mongo_uri() else { return };
    let db = Db::open(&uri, "dup_delivery").await;
    let handler = persist_handler(db.storage());
    let event = purchase_event(&unique("PR"), "2026-11-28T17:21:48+00:00");

    let first = handler.handle(&event).await;
    let Outcome::Done {
        document_id: Some(id),
        duplicate: false,
        ..
    } = first
    else {
        panic!("first delivery: {first:?}")
    };
    // Connect redelivers the same event (new task id), ten times at once.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (handler, event) = (handler.clone(), event.clone().with_task_id(unique("TQ")));
        tasks.push(tokio::spawn(async move { handler.handle(&event).await }));
    }
    for t in tasks {
        match t.await.unwrap() {
            Outcome::Done {
                document_id: Some(again),
                duplicate: true,
                ..
            } => assert_eq!(again, id),
            other => panic!("redelivery: {other:?}"),
        }
    }
    assert_eq!(db.count(doc! {}).await, 1);
    let stored = db.store.get(&id).await.unwrap().unwrap();
    assert_eq!(EventDocument::object_of(&stored), event.object);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_field_names_are_stored_encoded_and_read_back_exactly() {
    let Some(uri) = mongo_uri() else { return };
    let db = Db::open(&uri, "keys").await;
    let mut d = sample_doc(&unique("PR"), "pending", "u");
    d.body.insert(
        "params".into(),
        json!([{"$ref": "x", "a.b": {"$set": 1, "50%": "%2E"}, "": "empty"}]),
    );
    assert_eq!(db.store.save(&d).await.unwrap(), SaveOutcome::Inserted);
    assert_eq!(
        db.store.get(&d.id).await.unwrap().unwrap(),
        Value::Object(d.body.clone())
    );
    // What is in the database: the encoded names (queryable as such).
    assert_eq!(db.count(doc! {"params.%24ref": "x"}).await, 1);
    assert_eq!(db.count(doc! {"params.a%2Eb.50%25": "%2E"}).await, 1);
    // The receive time is also a BSON date.
    let raw = db
        .store
        .collection()
        .find_one(doc! {"_id": &d.id})
        .await
        .unwrap()
        .unwrap();
    assert!(raw
        .get_document("_connect")
        .unwrap()
        .get_datetime("received_date")
        .is_ok());
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_document_is_rejected_without_failing_its_neighbours() {
    let Some(uri) = mongo_uri() else { return };
    let db = Db::open(&uri, "oversized").await;
    let ok = sample_doc(&unique("PR"), "pending", "u");
    let mut big = sample_doc(&unique("PR"), "pending", "u");
    big.body
        .insert("blob".into(), json!("x".repeat(17 * 1024 * 1024)));
    let results = db.store.save_many(&[ok.clone(), big.clone()]).await;
    assert_eq!(results[0].as_ref().unwrap(), &SaveOutcome::Inserted);
    let err = results[1].as_ref().unwrap_err();
    assert!(!err.is_retriable(), "{err}");
    assert!(err.to_string().contains("16 MiB"), "{err}");
    // Through the persist handler: a permanent failure is answered `fail` with the reason.
    let mut event = purchase_event(&unique("PR"), "u");
    event.object["blob"] = json!("x".repeat(17 * 1024 * 1024));
    match persist_handler(db.storage()).handle(&event).await {
        Outcome::Fail { message, .. } => assert!(message.contains("16 MiB"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(db.count(doc! {}).await, 1);
    db.drop_db().await;
}

/// Item 6: only a duplicate on `_id` is a redelivery. A duplicate on another unique index (the
/// user's own index on `id`) is a different document refused by the database: `Rejected` with the
/// reason, answered `fail` — never counted as stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_on_another_unique_index_is_rejected_not_counted_as_stored() {
    let Some(uri) = mongo_uri() else { return };
    let db = Db::open(&uri, "dup_other_index").await;
    db.store
        .collection()
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"id": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .name("user_unique_id".to_string())
                        .build(),
                )
                .build(),
        )
        .await
        .unwrap();
    let object_id = unique("PR");
    let first = sample_doc(&object_id, "pending", "u1");
    let second = sample_doc(&object_id, "approved", "u2"); // another `_id`, the same `id`
    assert_ne!(first.id, second.id);
    assert_eq!(db.store.save(&first).await.unwrap(), SaveOutcome::Inserted);
    let err = db.store.save(&second).await.unwrap_err();
    assert!(err.kind() == ErrorKind::RejectedDocument, "{err:?}");
    assert!(err.to_string().contains("user_unique_id"), "{err}");
    // In a batch too, without failing its neighbours; a real redelivery is still a duplicate.
    let other = sample_doc(&unique("PR"), "pending", "u");
    let results = db
        .store
        .save_many(&[first.clone(), second.clone(), other.clone()])
        .await;
    assert_eq!(results[0].as_ref().unwrap(), &SaveOutcome::Duplicate);
    assert!(
        results[1]
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::RejectedDocument),
        "{:?}",
        results[1]
    );
    assert_eq!(results[2].as_ref().unwrap(), &SaveOutcome::Inserted);
    // Through the persist handler: `fail` with the reason.
    let mut event = purchase_event(&object_id, "u3");
    event.object["id"] = json!(object_id);
    match persist_handler(db.storage()).handle(&event).await {
        Outcome::Fail { message, .. } => assert!(message.contains("user_unique_id"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(db.count(doc! {}).await, 2);
    db.drop_db().await;
}

/// Item 6: a duplicate that comes with a write-concern error is not known to be durable (the
/// earlier write may not have replicated): retriable, not `Duplicate`. The fault: write concern
/// `2` on the single-node test server ("Not enough data-bearing nodes").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_with_a_write_concern_error_is_retriable() {
    let Some(uri) = mongo_uri() else { return };
    let db = Db::open(&uri, "dup_wc").await;
    let stored = sample_doc(&unique("PR"), "pending", "u");
    assert_eq!(db.store.save(&stored).await.unwrap(), SaveOutcome::Inserted);
    let name = db.name.clone();
    let unsatisfiable = Db::open_with(&uri, "unused", |s| {
        s.storage.database = name;
        s.storage
            .section_mut::<connect_extension_mongodb::storage::driver::settings::Settings>()
            .unwrap()
            .write_concern = "2".into();
        s.storage
            .section_mut::<connect_extension_mongodb::storage::driver::settings::Settings>()
            .unwrap()
            .operation_timeout_ms = 10_000;
    })
    .await;
    let new = sample_doc(&unique("PR"), "pending", "u");
    let results = unsatisfiable
        .store
        .save_many(&[stored.clone(), new.clone()])
        .await;
    for (what, r) in [("the duplicate", &results[0]), ("the new one", &results[1])] {
        let err = r.as_ref().expect_err(what);
        assert!(err.is_retriable(), "{what}: {err}");
        assert!(err.to_string().contains("write concern"), "{what}: {err}");
    }
    db.drop_db().await;
}

/// Item 4: with several backends, a retriable error on any one makes the event retriable — here
/// the driver refuses the document for good (over 16 MiB) while the local store is read-only (a
/// store fault): the event must be redelivered, not failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_a_store_fault_on_one_backend_wins_over_a_refusal_by_another() {
    let Some(uri) = mongo_uri() else { return };
    let driver = Db::open(&uri, "fanout_mixed").await;
    let dir = tempfile::tempdir().unwrap();
    LocalStorage::open(dir.path()).unwrap().close().await;
    let read_only: Arc<dyn Storage> =
        Arc::new(LocalStorage::open_with_read_only_writer(dir.path()).unwrap());
    for backends in [
        vec![driver.storage(), read_only.clone()],
        vec![read_only.clone(), driver.storage()],
    ] {
        let fanout: Arc<dyn Storage> = Arc::new(FanOut::new(backends, 0));
        let mut event = purchase_event(&unique("PR"), "u");
        event.object["blob"] = json!("x".repeat(17 * 1024 * 1024));
        let doc = EventDocument::from_event(&event, IdStrategy::State);
        let err = fanout.save(&doc).await.unwrap_err();
        assert!(err.is_retriable(), "{err}");
        match persist_handler(fanout.clone()).handle(&event).await {
            Outcome::Reschedule { message, .. } => {
                assert!(message.contains("local storage"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
    read_only.close().await;
    driver.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_per_process_rebuilt_only_when_its_settings_change() {
    let Some(uri) = mongo_uri() else { return };
    let a = Db::open(&uri, "client_a").await;
    let b = Db::open(&uri, "client_b").await; // another database, same connection settings
    assert!(a.store.shares_client_with(&b.store));
    let c = Db::open_with(&uri, "client_c", |s| {
        s.storage
            .section_mut::<connect_extension_mongodb::storage::driver::settings::Settings>()
            .unwrap()
            .server_selection_timeout_ms = 4321;
    })
    .await;
    assert!(!a.store.shares_client_with(&c.store));
    for db in [a, b, c] {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_configuration_writes_both_and_reads_from_the_primary() {
    let Some(uri) = mongo_uri() else { return };
    let dir = tempfile::tempdir().unwrap();
    let name = support::unique_db("fanout_cfg");
    let s = support::settings(&[
        ("STORAGE_BACKENDS", "local,driver"),
        ("STORAGE_PRIMARY", "driver"),
        ("DB", &name),
        ("LOCAL_DATA_DIR", dir.path().to_str().unwrap()),
        ("MONGODB_URI", &uri),
    ]);
    let storage = connect_extension_mongodb::storage::connect(&s)
        .await
        .unwrap();
    assert_eq!(storage.name(), "fanout");
    let d = sample_doc(&unique("PR"), "pending", "u");
    assert_eq!(storage.save(&d).await.unwrap(), SaveOutcome::Inserted);
    assert_eq!(storage.save(&d).await.unwrap(), SaveOutcome::Duplicate);
    assert_eq!(
        storage.get(&d.id).await.unwrap().unwrap(),
        Value::Object(d.body.clone())
    );
    storage.close().await;
    let local = LocalStorage::open(dir.path()).unwrap();
    assert_eq!(
        local.get(&d.id).await.unwrap().unwrap(),
        Value::Object(d.body.clone())
    );
    let driver = Db::open_with(&uri, "unused", |s| s.storage.database = name.clone()).await;
    assert_eq!(driver.count(doc! {"_id": &d.id}).await, 1);
    driver.drop_db().await;
}

// ---------------------------------------------------------------------------------------------
// Outages: a private server that is stopped and restarted
// ---------------------------------------------------------------------------------------------

/// Quick failure detection for outage tests.
fn outage_settings(s: &mut connect_extension_mongodb::Settings) {
    s.storage
        .section_mut::<connect_extension_mongodb::storage::driver::settings::Settings>()
        .unwrap()
        .server_selection_timeout_ms = 1000;
    s.storage
        .section_mut::<connect_extension_mongodb::storage::driver::settings::Settings>()
        .unwrap()
        .operation_timeout_ms = 10_000;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_mid_stream_events_are_rescheduled_and_none_lost() {
    let Some(server) = PrivateServer::start(None).await else {
        return;
    };
    let db = Db::open_with(&server.uri, "outage", outage_settings).await;
    let handler = persist_handler(db.storage());
    const N: usize = 200;
    let events: Vec<Event> = (0..N)
        .map(|i| purchase_event(&format!("PR-{i:04}"), "u"))
        .collect();
    let done = Arc::new(AtomicUsize::new(0));
    let rescheduled = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(16));

    // "Connect": delivers every event; redelivers it after a `reschedule` until it is `success`.
    let mut tasks = Vec::new();
    for event in events.clone() {
        let (handler, done, rescheduled, failed, in_flight) = (
            handler.clone(),
            done.clone(),
            rescheduled.clone(),
            failed.clone(),
            in_flight.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _slot = in_flight.acquire().await.unwrap();
            loop {
                match handler.handle(&event).await {
                    Outcome::Done { .. } => {
                        done.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Outcome::Reschedule { countdown, message } => {
                        assert!(countdown >= 30);
                        assert!(message.contains("will be redelivered"), "{message}");
                        rescheduled.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        panic!(
                            "event {}: {other:?} (must be success or reschedule)",
                            event.object_id
                        )
                    }
                }
            }
        }));
    }

    let failing = || failed.load(Ordering::SeqCst) > 0;
    wait_until("the first 40 events", Duration::from_secs(120), || {
        failing() || done.load(Ordering::SeqCst) >= 40
    })
    .await;
    assert!(
        !failing(),
        "an event was answered neither success nor reschedule"
    );
    server.stop().await;
    let done_while_down = done.load(Ordering::SeqCst);
    wait_until("reschedules while down", Duration::from_secs(120), || {
        failing() || rescheduled.load(Ordering::SeqCst) >= 20
    })
    .await;
    assert!(
        !failing(),
        "an event was answered neither success nor reschedule while the server was down"
    );
    // Still down: nothing new got through.
    assert_eq!(done.load(Ordering::SeqCst), done_while_down);
    assert!(done_while_down < N, "the stream ended before the outage");
    server.restart().await;
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), N);
    assert!(rescheduled.load(Ordering::SeqCst) >= 20);

    // All stored, each exactly once.
    assert_eq!(db.count(doc! {}).await, N as u64);
    for e in &events {
        assert_eq!(
            db.count(doc! {"_connect.object_id": &e.object_id}).await,
            1,
            "{}",
            e.object_id
        );
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_with_the_driver_down_reschedules_then_succeeds() {
    let Some(server) = PrivateServer::start(None).await else {
        return;
    };
    let driver = Db::open_with(&server.uri, "fanout_down", outage_settings).await;
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn Storage> = Arc::new(LocalStorage::open(dir.path()).unwrap());
    let fanout: Arc<dyn Storage> = Arc::new(FanOut::new(vec![driver.storage(), local.clone()], 0));
    let handler = persist_handler(fanout.clone());

    let before = purchase_event(&unique("PR"), "u");
    assert!(matches!(
        handler.handle(&before).await,
        Outcome::Done {
            duplicate: false,
            ..
        }
    ));

    server.stop().await;
    let during = purchase_event(&unique("PR"), "u");
    let doc_id = EventDocument::from_event(&during, IdStrategy::State).id;
    for _ in 0..2 {
        match handler.handle(&during).await {
            Outcome::Reschedule { message, .. } => {
                assert!(message.contains("driver storage"), "{message}")
            }
            other => panic!("with the driver down: {other:?}"),
        }
    }
    // The local backend has it already; that is fine (idempotent), the event is not `success` yet.
    assert!(local.get(&doc_id).await.unwrap().is_some());

    server.restart().await;
    // Connect redelivers: committed by the driver now; the local copy is a duplicate.
    match handler.handle(&during).await {
        Outcome::Done {
            document_id: Some(id),
            duplicate: false,
            ..
        } => assert_eq!(id, doc_id),
        other => panic!("after the restart: {other:?}"),
    }
    let from_driver = driver.store.get(&doc_id).await.unwrap().unwrap();
    let from_local = local.get(&doc_id).await.unwrap().unwrap();
    assert_eq!(from_driver, from_local);
    assert_eq!(driver.count(doc! {}).await, 2);
    local.close().await;
    driver.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_with_reserved_characters_authenticates() {
    const USER: &str = "app@cem";
    const PASSWORD: &str = "p@ss:w/rd?#%";
    let Some(server) = PrivateServer::start(Some((USER, PASSWORD))).await else {
        return;
    };
    let port = server
        .uri
        .rsplit_once("127.0.0.1:")
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap()
        .to_string();
    // The credentials encoded by our function (the same one the DB_HOST form uses).
    let uri = format!(
        "mongodb://{}:{}@127.0.0.1:{port}/?authSource=admin&retryWrites=false",
        encode_credential(USER),
        encode_credential(PASSWORD)
    );
    let db = Db::open(&uri, "auth").await;
    let d = sample_doc(&unique("PR"), "pending", "u");
    assert_eq!(db.store.save(&d).await.unwrap(), SaveOutcome::Inserted);
    assert_eq!(
        db.store.get(&d.id).await.unwrap().unwrap(),
        Value::Object(d.body)
    );
    db.drop_db().await;

    // A wrong password: a configuration error naming the setting, never showing the password.
    let wrong = uri.replace(&encode_credential(PASSWORD), &encode_credential("wr@ng:pw"));
    let s = support::driver_settings(&wrong, "auth_wrong");
    let err = DriverStorage::connect(&s).await.err().expect("must fail");
    let text = err.to_string();
    assert!(err.kind() == ErrorKind::Config, "{text}");
    assert!(text.contains("MONGODB_URI"), "{text}");
    assert!(text.contains("authentication"), "{text}");
    assert!(
        !text.contains("wr@ng") && !text.contains("wr%40ng"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// The daemon end to end: HTTP in, driver storage, read-back
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_stores_each_accepted_purchase_request_once_and_reads_it_back() {
    let Some(uri) = mongo_uri() else { return };
    let name = support::unique_db("daemon");
    let s = support::settings(&[
        ("STORAGE_BACKENDS", "driver"),
        ("DB", &name),
        ("MONGODB_URI", &uri),
        ("HTTP_LISTEN", "127.0.0.1:0"),
    ]);
    let app = connect_extension_mongodb::App::build(s).await.unwrap();
    let base = format!("http://{}", app.http_addr());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(app.run(shutdown.clone()));
    let http = reqwest::Client::new();

    let object: Value =
        serde_json::from_str(include_str!("../fixtures/purchase_request.json")).unwrap();
    let first = http
        .post(format!("{base}/events"))
        .json(&object)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201, "{:?}", first.text().await);
    let again = http
        .post(format!("{base}/events"))
        .json(&object)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200, "a redelivery is a duplicate");

    let listed: Value = http
        .get(format!(
            "{base}/events?object_id={}",
            object["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["count"], json!(1), "{listed}");
    let stored = &listed["documents"][0];
    assert_eq!(EventDocument::object_of(stored), object);
    let id = stored["_id"].as_str().unwrap();
    let one: Value = http
        .get(format!("{base}/events/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(&one, stored);

    shutdown.cancel();
    running.await.unwrap().unwrap();
    let check = Db::open_with(&uri, "unused", |s| s.storage.database = name.clone()).await;
    assert_eq!(check.count(doc! {}).await, 1);
    check.drop_db().await;
}
