//! PostgreSQL backend throughput: events/s persisted by `PostgresStorage` (group commit) under
//! concurrency, next to a raw multi-row `INSERT … VALUES (…), (…)` of the same documents (same
//! group size, same number of statements in flight, same table and indexes) on the same server
//! in the same run, and the ratio.
//!
//! ```text
//! POSTGRES_URL='postgres://…' cargo bench --bench postgres_throughput
//! ```
//! Knobs: BENCH_EVENTS (default 10000), BENCH_CONCURRENCY (default 256), BENCH_ROUNDS (default 2).
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a small smoke round and checks
//! that every event was stored once. Needs POSTGRES_URL (scripts/test.sh sets it); skips without.

use std::sync::Arc;
use std::time::{Duration, Instant};

use connect_extension_mongodb::config::secret::{redact_url, Secret};
use connect_extension_mongodb::events::{Event, EventType, Source};
use connect_extension_mongodb::storage::postgres::{PostgresStorage, Settings, IN_FLIGHT_BATCHES};
use connect_extension_mongodb::storage::{format_timestamp, IdStrategy};
use connect_extension_mongodb::storage::{EventDocument, SaveOutcome, Storage};
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn settings(url: &str, table: &str, batch_max: usize) -> Settings {
    Settings {
        url: Secret::new(url),
        table: table.into(),
        pool_size: 8,
        connect_timeout_ms: 5000,
        operation_timeout_ms: 60_000,
        batch_max,
        batch_wait_ms: 2,
    }
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

fn table(prefix: &str) -> String {
    format!(
        "bench_{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

async fn count_and_drop(store: &PostgresStorage) -> i64 {
    let client = store.pool().get().await.unwrap();
    let n: i64 = client
        .query_one(&format!("SELECT count(*) FROM {}", store.table()), &[])
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!("DROP TABLE {}", store.table()))
        .await
        .unwrap();
    n
}

/// The stored columns of a document, as the backend writes them.
type Columns = (
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
);

fn columns(d: &EventDocument) -> Columns {
    (
        d.id.clone(),
        d.event_type.clone(),
        d.status.clone(),
        d.object_id.clone(),
        d.body
            .get("asset")
            .and_then(|a| a.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string),
        format_timestamp(d.received_at),
        serde_json::to_string(&d.body).unwrap(),
    )
}

/// Raw baseline: the same documents, made into rows (timed, as the backend's are) and sent as one
/// multi-row `INSERT … VALUES` per group of `batch`, with `IN_FLIGHT_BATCHES` statements in flight
/// (each on its own pooled connection).
async fn raw_multi_row(url: &str, docs: &[EventDocument], batch: usize) -> (f64, String) {
    let store = PostgresStorage::connect(&settings(url, &table("raw"), batch))
        .await
        .unwrap();
    // The clock starts with the documents, as for the backend: turning them into rows (the
    // body's JSON text) is part of inserting them.
    let started = Instant::now();
    let chunks: Vec<Vec<Columns>> = docs
        .chunks(batch)
        .map(|c| c.iter().map(columns).collect())
        .collect();
    let queue = Arc::new(std::sync::Mutex::new(chunks.into_iter()));
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT_BATCHES {
        let (queue, pool, name) = (
            queue.clone(),
            store.pool().clone(),
            store.table().to_string(),
        );
        workers.push(tokio::spawn(async move {
            let client = pool.get().await.unwrap();
            loop {
                let next = queue.lock().unwrap().next();
                let Some(chunk) = next else { break };
                let values: Vec<String> = (0..chunk.len())
                    .map(|i| {
                        let p = i * 7;
                        format!(
                            "(${}, ${}, ${}, ${}, ${}, ${}::text::timestamptz, ${}::text::json)",
                            p + 1,
                            p + 2,
                            p + 3,
                            p + 4,
                            p + 5,
                            p + 6,
                            p + 7
                        )
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO {name} (id, event_type, status, object_id, asset_id, received_at, body) VALUES {}",
                    values.join(", ")
                );
                let stmt = client.prepare_cached(&sql).await.unwrap();
                let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(chunk.len() * 7);
                for r in &chunk {
                    params.extend([
                        &r.0 as &(dyn ToSql + Sync),
                        &r.1,
                        &r.2,
                        &r.3,
                        &r.4,
                        &r.5,
                        &r.6,
                    ]);
                }
                client.execute(&stmt, &params).await.unwrap();
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(count_and_drop(&store).await, docs.len() as i64);
    store.close().await;
    (docs.len() as f64 / secs, format!("{secs:.2} s"))
}

/// Informational: the backend's own statement (`INSERT … SELECT * FROM unnest(…) ON CONFLICT (id)
/// DO NOTHING RETURNING id`) on the same pre-serialised rows, groups of `batch`, the same number
/// in flight: what the server costs for the statement alone, without the callers' side.
async fn raw_unnest(url: &str, docs: &[EventDocument], batch: usize) -> (f64, String) {
    let store = PostgresStorage::connect(&settings(url, &table("unnest"), batch))
        .await
        .unwrap();
    let rows: Vec<Columns> = docs.iter().map(columns).collect();
    let chunks: Vec<Vec<Columns>> = rows.chunks(batch).map(|c| c.to_vec()).collect();
    let queue = Arc::new(std::sync::Mutex::new(chunks.into_iter()));
    let sql = format!(
        "INSERT INTO {} (id, event_type, status, object_id, asset_id, received_at, body) \
         SELECT i, e, s, o, a, r::timestamptz, b::json \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) \
         AS u(i, e, s, o, a, r, b) ON CONFLICT (id) DO NOTHING RETURNING id",
        store.table()
    );
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT_BATCHES {
        let (queue, pool, sql) = (queue.clone(), store.pool().clone(), sql.clone());
        workers.push(tokio::spawn(async move {
            let client = pool.get().await.unwrap();
            let stmt = client.prepare_cached(&sql).await.unwrap();
            loop {
                let next = queue.lock().unwrap().next();
                let Some(chunk) = next else { break };
                let col = |f: fn(&Columns) -> &str| chunk.iter().map(f).collect::<Vec<&str>>();
                let assets: Vec<Option<&str>> = chunk.iter().map(|r| r.4.as_deref()).collect();
                let (a, b, c, d, f, g) = (
                    col(|r| &r.0),
                    col(|r| &r.1),
                    col(|r| &r.2),
                    col(|r| &r.3),
                    col(|r| &r.5),
                    col(|r| &r.6),
                );
                let n = client
                    .query(&stmt, &[&a, &b, &c, &d, &assets, &f, &g])
                    .await
                    .unwrap()
                    .len();
                assert_eq!(n, chunk.len());
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(count_and_drop(&store).await, docs.len() as i64);
    store.close().await;
    (docs.len() as f64 / secs, format!("{secs:.2} s"))
}

/// Informational: what turning the documents into rows costs the callers (JSON text of the body,
/// the timestamp), on one core.
fn serialise_cost(docs: &[EventDocument]) -> f64 {
    let started = Instant::now();
    let mut bytes = 0;
    for d in docs {
        bytes += columns(d).6.len();
    }
    assert!(bytes > 0);
    docs.len() as f64 / started.elapsed().as_secs_f64()
}

/// This backend: `concurrency` tasks calling `save`, one event at a time each.
async fn backend_saves(
    url: &str,
    docs: &[EventDocument],
    concurrency: usize,
    batch: usize,
) -> (f64, String) {
    let store = Arc::new(
        PostgresStorage::connect(&settings(url, &table("group"), batch))
            .await
            .unwrap(),
    );
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
    let (groups, documents) = store.batch_stats();
    assert_eq!(count_and_drop(&store).await, docs.len() as i64);
    store.close().await;
    (
        docs.len() as f64 / secs,
        format!(
            "{secs:.2} s, {groups} statements, {:.1} events/statement",
            documents as f64 / groups.max(1) as f64
        ),
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let url = match std::env::var("POSTGRES_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            eprintln!(
                "POSTGRES_URL is not set: skipping (start a server with `scripts/test-postgres.sh` \
                 and `. target/postgres/server/env`, or run scripts/test.sh)"
            );
            return;
        }
    };
    let events = env_usize("BENCH_EVENTS", if bench_mode { 10_000 } else { 300 });
    let concurrency = env_usize("BENCH_CONCURRENCY", 256);
    let rounds = env_usize("BENCH_ROUNDS", if bench_mode { 2 } else { 1 });
    let batch = env_usize("BENCH_BATCH_MAX", 256);
    println!(
        "postgres throughput: {events} events/round, concurrency {concurrency}, batch_max {batch}, \
         {IN_FLIGHT_BATCHES} statements in flight, {rounds} round(s), server {}",
        redact_url(&url)
    );
    let mut raw = Vec::new();
    let mut ours = Vec::new();
    let mut unnest = Vec::new();
    for round in 0..rounds {
        let docs = documents(events, &format!("r{round}"));
        let (r, info) = raw_multi_row(&url, &docs, batch).await;
        println!("  round {round}: raw multi-row INSERT  {r:>9.0} docs/s  ({info})");
        raw.push(r);
        let (d, info) = backend_saves(&url, &docs, concurrency, batch).await;
        println!("  round {round}: postgres backend     {d:>9.0} docs/s  ({info})");
        ours.push(d);
        if bench_mode {
            let (u, info) = raw_unnest(&url, &docs, batch).await;
            println!("  round {round}: raw unnest INSERT    {u:>9.0} docs/s  ({info})  [the backend's statement, pre-serialised rows, for context]");
            unnest.push(u);
            let c = serialise_cost(&docs);
            println!(
                "  round {round}: rows from documents  {c:>9.0} docs/s  [one core, for context]"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "raw multi-row INSERT: {:.0} docs/s | postgres backend (group commit): {:.0} docs/s | ratio {:.2} (goal ≥ 0.80)",
        mean(&raw),
        mean(&ours),
        mean(&ours) / mean(&raw)
    );
    if !unnest.is_empty() {
        println!(
            "raw unnest INSERT … ON CONFLICT … RETURNING (the backend's statement): {:.0} docs/s",
            mean(&unnest)
        );
    }
    if !bench_mode {
        println!("(smoke run under cargo test: checks that every event was stored once; the figures are not a measurement — use `cargo bench --bench postgres_throughput`)");
    }
}
