//! `postgres`: PostgreSQL through `tokio-postgres`, a `deadpool-postgres` pool and rustls
//! (`tokio-postgres-rustls`, ring).
//!
//! | idempotent save | bulk | ordering | durability |
//! |---|---|---|---|
//! | yes: `id` primary key, `ON CONFLICT (id) DO NOTHING` = [`SaveOutcome::Duplicate`] | group commit into one `INSERT … SELECT * FROM unnest(…)` | newest first by received time | the server's (`synchronous_commit`) |
//!
//! **Connection.** `POSTGRES_URL`, a libpq URI (`postgres://USER:PASSWORD@HOST:PORT/DB?…`). Its
//! `sslmode` and `sslrootcert` are handled here and mapped onto rustls (see [`url`]: `prefer`
//! and `require` encrypt without checking the certificate, as libpq does; `verify-ca` checks the
//! chain; `verify-full` the chain and the host name); every other key goes to `tokio-postgres`
//! (`channel_binding`, `target_session_attrs`, `application_name`, …). The URL is a secret: every
//! message shows it through [`redact_url`](crate::config::secret::redact_url) and has its
//! password scrubbed. Start-up fails with `Config` (bad URL, refused credentials, missing database
//! or privilege) or `Unavailable` (server unreachable).
//!
//! **Schema** (created at start-up in one transaction under `pg_advisory_xact_lock`, so several
//! replicas starting at once do not race; `CREATE … IF NOT EXISTS`, fixed names):
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS <POSTGRES_TABLE> (
//!   id text PRIMARY KEY,            -- the document's deterministic `_id`
//!   event_type text NOT NULL, status text NOT NULL, object_id text NOT NULL,
//!   asset_id text,                  -- the object's `asset.id`, when it has one
//!   received_at timestamptz NOT NULL,  -- microseconds; the exact time is in body._connect
//!   seq bigint GENERATED ALWAYS AS IDENTITY,  -- tie-break for "newest first"
//!   body json NOT NULL);            -- the whole stored document, `_id` and `_connect` included
//! -- indexes: (received_at DESC, seq DESC), and (event_type | status | object_id | asset_id, received_at DESC, seq DESC)
//! ```
//!
//! **`json`, not `jsonb`.** `jsonb` normalises a document: it sorts the keys and keeps only the
//! last of a repeated key, so `GET /events/{id}` would return the object with its keys in another
//! order than received, unlike every other backend (SQLite keeps the text, MongoDB the BSON
//! order). `json` keeps the text verbatim — still validated, still queryable with `->`/`->>` —
//! and it also accepts the escape `\u0000`, which `jsonb` refuses. What it lacks is a GIN index on
//! the body; the read-back filters use the indexed columns. (Changing to `jsonb` later is
//! `ALTER TABLE … ALTER body TYPE jsonb`, a table rewrite.)
//!
//! **Group commit.** `save` turns its document into a row in the caller's task and queues it. A
//! batcher task takes the first queued row, collects more until `POSTGRES_BATCH_MAX` rows or
//! `POSTGRES_BATCH_WAIT_MS` have passed, and sends them as one prepared statement (7 array
//! parameters whatever the group size, so one cached statement serves every size); up to
//! [`IN_FLIGHT_BATCHES`] groups are in flight at once. Repeated ids within a group are removed
//! first (the first is written, the others are `Duplicate`). `RETURNING id` lists exactly the
//! rows inserted: every other id was already stored (`Duplicate`). A statement is all or
//! nothing, so a group refused for a permanent reason is split in halves and sent again until
//! only the bad document fails; a retriable error fails the whole group (`reschedule`, and the
//! redelivery is a no-op for what was committed).
//!
//! **Documents PostgreSQL cannot take**: a NUL character in the id, event type, status, object id
//! or asset id (a `text` column refuses it) is refused before sending, as that document's
//! `Rejected` (`fail`). In the body, a NUL is written as the JSON escape `\u0000`, which `json`
//! keeps.
//!
//! **Errors** are classified by SQLSTATE in one table, [`errors::SQLSTATES`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;

use crate::storage::backend::{self, Backend};
use crate::storage::error::StorageError;
use crate::storage::store::{
    format_timestamp, EventDocument, ListQuery, SaveOutcome, Storage,
};

pub mod errors;
pub mod settings;
pub mod url;

mod batch;
mod setup;

use batch::{Row, Writer};
use crate::storage::group::{batcher, submit, Job, Results};
pub use errors::{classify, classify_sqlstate, kind_of, SQLSTATES};
use errors::{pool_error, Scrub, BACKEND};
use setup::{build_pool, create_schema, insert_sql};
pub use settings::Settings;


/// This backend in the registry (`storage/mod.rs`).
pub const DESCRIPTOR: Backend = Backend {
    name: BACKEND,
    defaults: include_str!("default.toml"),
    env: settings::ENV,
    platform_variables: settings::PLATFORM_VARIABLES,
    uses_database: false,
    auto: true,
    parse: backend::parse::<Settings>,
    open: |section, _common| {
        let settings = backend::section::<Settings>(section).clone();
        Box::pin(async move {
            let store = PostgresStorage::connect(&settings).await?;
            Ok(Arc::new(store) as Arc<dyn Storage>)
        })
    },
};

/// Most groups in flight at once.
pub const IN_FLIGHT_BATCHES: usize = 4;
const QUEUE_CAPACITY: usize = 8192;
/// Longest `close` waits for queued and in-flight groups.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The stored form of `doc`: refused (`Rejected`) when a text column would hold a NUL.
fn to_row(doc: &EventDocument) -> Result<Row, StorageError> {
    let asset_id = doc
        .body
        .get("asset")
        .and_then(|a| a.get("id"))
        .and_then(Value::as_str)
        .map(str::to_string);
    for (column, value) in [
        ("id", Some(doc.id.as_str())),
        ("event_type", Some(doc.event_type.as_str())),
        ("status", Some(doc.status.as_str())),
        ("object_id", Some(doc.object_id.as_str())),
        ("asset_id", asset_id.as_deref()),
    ] {
        if value.is_some_and(|v| v.contains('\0')) {
            return Err(StorageError::rejected(
                BACKEND,
                format!(
                    "the document's {column} contains a NUL character (U+0000), which a PostgreSQL text column cannot store"
                ),
            ));
        }
    }
    let body = serde_json::to_string(&doc.body)
        .map_err(|e| StorageError::rejected(BACKEND, format!("not serialisable: {e}")))?;
    Ok(Row {
        id: doc.id.clone(),
        event_type: doc.event_type.clone(),
        status: doc.status.clone(),
        object_id: doc.object_id.clone(),
        asset_id,
        received_at: format_timestamp(doc.received_at),
        body,
    })
}

pub struct PostgresStorage {
    pool: Pool,
    writer: Arc<Writer>,
    tx: Mutex<Option<mpsc::Sender<Job<Row>>>>,
    batcher: Mutex<Option<JoinHandle<()>>>,
    in_flight: Arc<Semaphore>,
    table: String,
    shown: String,
}

impl PostgresStorage {
    /// Builds the pool, checks the server answers (authenticating), and creates the schema.
    pub async fn connect(s: &Settings) -> Result<Self, StorageError> {
        let config_err = |m: String| StorageError::config(BACKEND, format!("POSTGRES_URL: {m}"));
        if s.url.is_empty() {
            return Err(config_err("not set".into()));
        }
        if !settings::valid_table(&s.table) {
            return Err(StorageError::config(
                BACKEND,
                format!(
                    "POSTGRES_TABLE (config key `storage.postgres.table`): `{}` is not a plain identifier",
                    s.table
                ),
            ));
        }
        let target = url::parse(s.url.expose()).map_err(config_err)?;
        let scrub = Scrub(target.secrets.clone().into());
        let op_timeout = Duration::from_millis(s.operation_timeout_ms.max(1));
        let pool = build_pool(&target, s)?;
        let shown = target.shown.clone();
        create_schema(&pool, &scrub, &shown, &s.table, op_timeout).await?;

        let table = s.table.clone();
        let writer = Arc::new(Writer {
            pool: pool.clone(),
            insert_sql: insert_sql(&table),
            scrub,
            op_timeout,
            batches: AtomicU64::new(0),
            documents: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_BATCHES));
        let batcher = tokio::spawn(batcher(
            writer.clone(),
            rx,
            s.batch_max.max(1),
            Duration::from_millis(s.batch_wait_ms),
            in_flight.clone(),
        ));
        tracing::info!(url = %shown, table = %table, "postgres storage connected");
        Ok(Self {
            pool,
            writer,
            tx: Mutex::new(Some(tx)),
            batcher: Mutex::new(Some(batcher)),
            in_flight,
            table,
            shown,
        })
    }

    /// Group-commit counters: (INSERT statements sent, documents in them).
    pub fn batch_stats(&self) -> (u64, u64) {
        (
            self.writer.batches.load(Ordering::Relaxed),
            self.writer.documents.load(Ordering::Relaxed),
        )
    }

    /// The table (`POSTGRES_TABLE`).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The URL, redacted.
    pub fn shown_url(&self) -> &str {
        &self.shown
    }

    /// The connection pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn submit(&self, rows: Vec<Row>) -> Results {
        let tx = self.tx.lock().expect("postgres tx lock").clone();
        submit(tx, rows, BACKEND).await
    }

    /// Runs one query (cached statement) under the operation timeout; the `body` column of each row.
    async fn bodies(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Value>, StorageError> {
        let scrub = &self.writer.scrub;
        let run = async {
            let client = self.pool.get().await.map_err(|e| pool_error(e, scrub))?;
            let stmt = client
                .prepare_cached(sql)
                .await
                .map_err(|e| scrub.error(&e))?;
            let rows = client
                .query(&stmt, params)
                .await
                .map_err(|e| scrub.error(&e))?;
            rows.iter()
                .map(|row| {
                    let text: String = row.try_get(0).map_err(|e| scrub.error(&e))?;
                    serde_json::from_str(&text).map_err(|e| {
                        StorageError::internal(BACKEND, format!("a stored body is not JSON: {e}"))
                    })
                })
                .collect()
        };
        match tokio::time::timeout(self.writer.op_timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(self.writer.timeout_error()),
        }
    }
}

#[async_trait]
impl Storage for PostgresStorage {
    fn name(&self) -> &'static str {
        BACKEND
    }

    async fn save(&self, doc: &EventDocument) -> Result<SaveOutcome, StorageError> {
        let row = to_row(doc)?;
        self.submit(vec![row]).await.pop().unwrap_or_else(|| {
            Err(StorageError::internal(
                BACKEND,
                "no result from the group writer",
            ))
        })
    }

    async fn save_many(&self, docs: &[EventDocument]) -> Results {
        let prepared: Vec<Result<Row, StorageError>> = docs.iter().map(to_row).collect();
        let good: Vec<Row> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let mut written = if good.is_empty() {
            Vec::new()
        } else {
            self.submit(good).await
        }
        .into_iter();
        prepared
            .into_iter()
            .map(|p| match p {
                Ok(_) => written.next().unwrap_or_else(|| {
                    Err(StorageError::internal(
                        BACKEND,
                        "missing result from the group writer",
                    ))
                }),
                Err(e) => Err(e),
            })
            .collect()
    }

    async fn ping(&self) -> Result<(), StorageError> {
        let scrub = &self.writer.scrub;
        let run = async {
            let client = self.pool.get().await.map_err(|e| pool_error(e, scrub))?;
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| scrub.error(&e))?;
            Ok(())
        };
        match tokio::time::timeout(self.writer.op_timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(self.writer.timeout_error()),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Value>, StorageError> {
        let sql = format!("SELECT body::text FROM \"{}\" WHERE id = $1", self.table);
        Ok(self.bodies(&sql, &[&id]).await?.pop())
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Value>, StorageError> {
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        let mut conditions = Vec::new();
        for (column, value) in [
            ("event_type", &query.event_type),
            ("status", &query.status),
            ("object_id", &query.object_id),
            ("asset_id", &query.asset_id),
        ] {
            if let Some(v) = value {
                params.push(v);
                conditions.push(format!("{column} = ${}", params.len()));
            }
        }
        let limit = query.effective_limit() as i64;
        params.push(&limit);
        let mut sql = format!("SELECT body::text FROM \"{}\"", self.table);
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(
            " ORDER BY received_at DESC, seq DESC LIMIT ${}",
            params.len()
        ));
        self.bodies(&sql, &params).await
    }

    async fn close(&self) {
        // Dropping the sender lets the batcher send what is queued, then exit.
        drop(self.tx.lock().expect("postgres tx lock").take());
        let batcher = self.batcher.lock().expect("postgres batcher lock").take();
        let drain = async {
            if let Some(batcher) = batcher {
                let _ = batcher.await;
            }
            let _ = self.in_flight.acquire_many(IN_FLIGHT_BATCHES as u32).await;
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, drain).await.is_err() {
            tracing::warn!(
                timeout_ms = CLOSE_TIMEOUT.as_millis() as u64,
                "postgres storage: groups still in flight at the close timeout; their events were not answered success, so they are redelivered"
            );
        }
        self.pool.close();
    }
}

#[cfg(test)]
mod tests;
