//! Driver backend throughput: events/s persisted by `DriverStorage` under concurrency, next to a
//! raw `insert_many` baseline (same documents, same batch size, same number of batches in flight,
//! same indexes and write concern) on the same server in the same run, and the ratio.
//!
//! ```text
//! MONGODB_URI='mongodb://127.0.0.1:27017/?retryWrites=false' cargo bench --bench driver_throughput
//! ```
//! Knobs: BENCH_EVENTS (default 10000), BENCH_CONCURRENCY (default 256), BENCH_ROUNDS (default 2).
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a small smoke round and checks
//! that every event was stored once. Needs MONGODB_URI (see scripts/test.sh); SKIP_MONGO_TESTS=1
//! skips the smoke round.

use std::sync::Arc;
use std::time::{Duration, Instant};

use connect_extension_mongodb::events::{Event, EventType, Source};
use connect_extension_mongodb::storage::driver::{to_stored, DriverStorage, IN_FLIGHT_BATCHES};
use connect_extension_mongodb::storage::IdStrategy;
use connect_extension_mongodb::storage::{EventDocument, SaveOutcome, Storage};
use connect_extension_mongodb::Settings;
use mongodb::bson::{doc, Document};
use serde_json::{json, Value};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn settings(uri: &str, db: &str) -> Settings {
    let vars = [
        ("STORAGE_BACKENDS", "driver".to_string()),
        ("DB", db.to_string()),
        ("MONGODB_URI", uri.to_string()),
    ];
    Settings::from_vars(vars).expect("settings")
}

/// `n` purchase-request documents (the tutorial's fixture, ~3 KB each) with distinct ids.
fn documents(n: usize, run: &str) -> Vec<EventDocument> {
    let object: Value =
        serde_json::from_str(include_str!("../tests/fixtures/purchase_request.json")).unwrap();
    (0..n)
        .map(|i| {
            let mut o = object.clone();
            let id = format!("PR-{run}-{i:07}");
            o["id"] = json!(id);
            let e = Event::new(
                EventType::AssetPurchaseRequestProcessing,
                &id,
                o,
                Source::Websocket,
            )
            .with_task_id(format!("TQ-{i}"));
            EventDocument::from_event(&e, IdStrategy::State)
        })
        .collect()
}

fn unique_db(prefix: &str) -> String {
    format!(
        "bench_{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// Raw baseline: the same documents as BSON, `insert_many(ordered=false)` in batches of
/// `batch` with `IN_FLIGHT_BATCHES` batches in flight.
async fn raw_insert_many(uri: &str, docs: &[EventDocument], batch: usize) -> (f64, String) {
    let db = unique_db("raw");
    // Same indexes and write concern: connect a DriverStorage to create them, use its client.
    let store = DriverStorage::connect(&settings(uri, &db)).await.unwrap();
    let coll = store
        .client()
        .database(&db)
        .collection_with_options::<Document>(
            store.collection().name(),
            mongodb::options::CollectionOptions::builder()
                .write_concern(mongodb::options::WriteConcern::majority())
                .build(),
        );
    let bson: Vec<Document> = docs
        .iter()
        .map(|d| to_stored(d).unwrap().to_document().unwrap())
        .collect();
    let chunks: Vec<Vec<Document>> = bson.chunks(batch).map(|c| c.to_vec()).collect();
    let queue = Arc::new(std::sync::Mutex::new(chunks.into_iter()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT_BATCHES {
        let (queue, coll) = (queue.clone(), coll.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().unwrap().next();
                let Some(chunk) = next else { break };
                coll.insert_many(chunk).ordered(false).await.unwrap();
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(
        coll.count_documents(doc! {}).await.unwrap(),
        docs.len() as u64
    );
    store.client().database(&db).drop().await.unwrap();
    (docs.len() as f64 / secs, format!("{secs:.2} s"))
}

/// This backend: `concurrency` tasks calling `save`, one event at a time each.
async fn driver_saves(uri: &str, docs: &[EventDocument], concurrency: usize) -> (f64, String) {
    let db = unique_db("driver");
    let store = Arc::new(DriverStorage::connect(&settings(uri, &db)).await.unwrap());
    let owned: Vec<EventDocument> = docs.to_vec();
    let queue = Arc::new(std::sync::Mutex::new(owned.into_iter()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (queue, store) = (queue.clone(), store.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().unwrap().next();
                let Some(d) = next else { break };
                assert_eq!(store.save(&d).await.unwrap(), SaveOutcome::Inserted);
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let (batches, documents) = store.batch_stats();
    assert_eq!(
        store.collection().count_documents(doc! {}).await.unwrap(),
        docs.len() as u64
    );
    store.client().database(&db).drop().await.unwrap();
    (
        docs.len() as f64 / secs,
        format!(
            "{secs:.2} s, {batches} batches, {:.1} events/batch",
            documents as f64 / batches.max(1) as f64
        ),
    )
}

/// Informational: one `insert_one` per event, same concurrency, no group commit.
async fn raw_insert_one(uri: &str, docs: &[EventDocument], concurrency: usize) -> (f64, String) {
    let db = unique_db("one");
    let store = DriverStorage::connect(&settings(uri, &db)).await.unwrap();
    let coll = store.collection().clone();
    let bson: Vec<Document> = docs
        .iter()
        .map(|d| to_stored(d).unwrap().to_document().unwrap())
        .collect();
    let queue = Arc::new(std::sync::Mutex::new(bson.into_iter()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (queue, coll) = (queue.clone(), coll.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().unwrap().next();
                let Some(d) = next else { break };
                coll.insert_one(d).await.unwrap();
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    store.client().database(&db).drop().await.unwrap();
    (docs.len() as f64 / secs, format!("{secs:.2} s"))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let uri = match std::env::var("MONGODB_URI") {
        Ok(u) if !u.is_empty() => u,
        _ if std::env::var("SKIP_MONGO_TESTS").is_ok_and(|v| v == "1") => {
            eprintln!("SKIP_MONGO_TESTS=1: skipping the driver throughput smoke run");
            return;
        }
        _ => {
            eprintln!(
                "MONGODB_URI is not set: start a server with `scripts/test-mongo.sh` and \
                 `. target/secantus/server/env`, or export MONGODB_URI=mongodb://HOST:PORT/"
            );
            std::process::exit(1);
        }
    };
    let shown = connect_extension_mongodb::config::redact_uri(&uri).unwrap_or(uri.clone());
    let events = env_usize("BENCH_EVENTS", if bench_mode { 10_000 } else { 300 });
    let concurrency = env_usize("BENCH_CONCURRENCY", 256);
    let rounds = env_usize("BENCH_ROUNDS", if bench_mode { 2 } else { 1 });
    let batch = settings(&uri, "x")
        .storage
        .section::<connect_extension_mongodb::storage::driver::settings::Settings>()
        .unwrap()
        .batch_max;
    println!(
        "driver throughput: {events} events/round, concurrency {concurrency}, batch_max {batch}, \
         {IN_FLIGHT_BATCHES} batches in flight, {rounds} round(s), server {shown}"
    );

    let mut raw = Vec::new();
    let mut ours = Vec::new();
    let mut one = Vec::new();
    for round in 0..rounds {
        let docs = documents(events, &format!("r{round}"));
        let (r, info) = raw_insert_many(&uri, &docs, batch).await;
        println!("  round {round}: raw insert_many   {r:>9.0} events/s  ({info})");
        raw.push(r);
        let (d, info) = driver_saves(&uri, &docs, concurrency).await;
        println!("  round {round}: driver backend    {d:>9.0} events/s  ({info})");
        ours.push(d);
        if bench_mode && env_usize("BENCH_INSERT_ONE", 1) == 1 {
            let (o, info) = raw_insert_one(&uri, &docs, concurrency).await;
            println!("  round {round}: raw insert_one    {o:>9.0} events/s  ({info})  [no batching, for context]");
            one.push(o);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "raw insert_many: {:.0} events/s | driver backend: {:.0} events/s | ratio {:.2} (goal ≥ 0.80)",
        mean(&raw),
        mean(&ours),
        mean(&ours) / mean(&raw)
    );
    if !one.is_empty() {
        println!("raw insert_one (no batching): {:.0} events/s", mean(&one));
    }
    if !bench_mode {
        println!("(smoke run under cargo test: checks that every event was stored once; the figures are not a measurement — use `cargo bench --bench driver_throughput`)");
    }
}
