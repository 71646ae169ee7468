//! `driver`: MongoDB through the official `mongodb` crate (3.x), one pooled client per process.
//!
//! | idempotent save | bulk | ordering | durability |
//! |---|---|---|---|
//! | yes: deterministic `_id`, duplicate key (11000) on `_id` = [`SaveOutcome::Duplicate`] | group commit into `insert_many(ordered = false)` | newest first by received time | write concern `DRIVER_WRITE_CONCERN` (default `majority`) |
//!
//! **Connection.** `MONGODB_URI` (any scheme and options: replica sets, TLS, `authSource`,
//! `retryWrites`…) wins when set; otherwise the tutorial's form
//! `mongodb+srv://{DB_USER}:{DB_PASSWORD}@{DB_HOST}/` is built, with user and password
//! percent-encoded exactly as Python's `urllib.parse.quote(s, safe='')` does ([`encode_credential`]).
//! `DRIVER_SERVER_SELECTION_TIMEOUT_MS` (default 5 s) and `DRIVER_WRITE_CONCERN` override the
//! corresponding URI options. Start-up fails with [`ErrorKind::Config`](crate::storage::ErrorKind::Config) (bad URI, bad write
//! concern, failed authentication) or [`ErrorKind::Unavailable`](crate::storage::ErrorKind::Unavailable) (cluster unreachable), the
//! message naming the setting and showing the URI with its password replaced by `***`.
//!
//! **One client per process.** Clients are cached by (connection string, server selection timeout,
//! tokio runtime): a live reconfiguration that leaves these unchanged reuses the pooled client; a
//! change builds a new one, and the old one is dropped with the last backend that used it.
//! (The runtime is part of the key because a client's monitors run on the runtime that built it.)
//!
//! **Document shape.** `EventDocument::body` converted to BSON — the Connect object untouched,
//! `_id`, and `_connect` (our metadata) — plus one extra field, `_connect.received_date`: the
//! receive time as a BSON `Date` (millisecond precision), used for sorting and indexing, handy
//! for TTL indexes and date queries, and removed again on read-back. `_connect.received_at` keeps
//! the exact RFC 3339 string. JSON → BSON: integers become `Int32`/`Int64` (integers above
//! `i64::MAX` become `Decimal128`), other numbers `Double`; read-back turns them into the same JSON
//! values, so `get` returns exactly the body that was saved (the conformance suite checks this).
//!
//! **Field names are sanitised losslessly.** MongoDB cannot store a field name containing NUL, and
//! treats names starting with `$` or containing `.` specially (operators, paths; servers before 5.0
//! refuse them). Such names are stored percent-encoded: `%` → `%25`, `.` → `%2E`, NUL → `%00`, and a
//! leading `$` → `%24` (so `$ref` is stored as `%24ref`, `a.b` as `a%2Eb`, `50%` as `50%25`). Every
//! name containing `%` is encoded too, so decoding (percent-decoding every stored name that contains
//! `%`) is exact, and read-back returns the original names. The empty name is stored as `%`. Names without any of these characters —
//! all of Connect's — are stored as they are. Queries on such fields in the database must use the
//! encoded name.
//!
//! **Group commit.** `save` converts its document in the caller's task, then queues it. A batcher
//! task takes the first queued document, collects more until `DRIVER_BATCH_MAX` documents or
//! `DRIVER_BATCH_WAIT_MS` have passed, and sends them as one `insert_many(ordered = false)`; up to
//! [`IN_FLIGHT_BATCHES`] batches are in flight at once, and while they are, new saves queue up and
//! form the next (bigger) batch. Each document gets its own outcome from the per-document write
//! errors: a duplicate key on `_id` → `Duplicate` (see [`duplicate_on_id`]); a duplicate key on any
//! other unique index (a user's own index) → `Rejected` with the reason, never counted as stored;
//! another code → [`classify_code`]; a write-concern error → retriable for every document of the
//! batch not refused for good, duplicates included (not yet durable). A batch-level error that
//! is permanent (not transient) is retried one document at a time, so one bad document cannot
//! fail its neighbours. A document over 16 MiB is refused before it is queued.
//!
//! **Errors** are classified in one place, [`classify`] / [`classify_code`]: network, server
//! selection, not-primary/shutdown/step-down, write-concern and timeouts are retriable
//! (`Unavailable`/`Timeout`: the event is answered `reschedule`, nothing lost); invalid documents
//! (bad field names, too large, validation failure, type errors) are `Rejected` (the event is
//! answered `fail` with the reason). Authentication/authorization failures after start-up are
//! treated as retriable: the event itself is fine, and once the credentials are fixed its
//! redelivery succeeds. Unknown codes are treated as retriable too (losing an event is worse than
//! redelivering it).
//!
//! **Indexes** (created idempotently at start-up, fixed names): `_connect.received_date`, and
//! `_connect.event_type` / `_connect.status` / `_connect.object_id`, each with
//! `_connect.received_date` descending — the read-back queries of `GET /events`.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document, RawDocumentBuf};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::{CollectionOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::storage::error::StorageError;
use crate::storage::store::{EventDocument, ListQuery, SaveOutcome, Storage, META_KEY};

pub mod settings;

use crate::storage::backend::{self, Backend};

use settings::Params;


/// This backend in the registry (`storage/mod.rs`).
pub const DESCRIPTOR: Backend = Backend {
    name: BACKEND,
    defaults: include_str!("default.toml"),
    env: settings::ENV,
    platform_variables: settings::PLATFORM_VARIABLES,
    uses_database: true,
    auto: true,
    parse: backend::parse::<settings::Settings>,
    open: |section, common| {
        let settings = backend::section::<settings::Settings>(section).clone();
        let database = common.database.to_string();
        Box::pin(async move {
            let store = DriverStorage::connect(Params {
                settings: &settings,
                database: &database,
            })
            .await?;
            Ok(Arc::new(store) as Arc<dyn Storage>)
        })
    },
};
/// Most `insert_many` batches in flight at once.
pub const IN_FLIGHT_BATCHES: usize = 2;
const QUEUE_CAPACITY: usize = 8192;
/// Longest `close` waits for queued and in-flight batches.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `close` waits for the client's shutdown (`Client::shutdown`).
pub const CLIENT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

mod batch;
mod client;
mod codec;
mod errors;
mod uri;

pub use batch::duplicate_on_id;
pub use codec::{decode_key, encode_key, from_stored, to_stored, MAX_DOCUMENT_BYTES, RECEIVED_DATE};
use errors::BACKEND;
pub use errors::{classify, classify_code, is_duplicate_key};
pub use uri::{encode_credential, parse_write_concern, srv_uri};

use batch::Writer;
use crate::storage::group::{batcher, submit, Job, Results};
use client::{release_client, shared_client, ClientHandle};
use errors::describe;
use uri::{scrub, scrub_error, Target};

// ---------------------------------------------------------------------------------------------
// The backend
// ---------------------------------------------------------------------------------------------

pub struct DriverStorage {
    handle: Arc<ClientHandle>,
    read: Collection<Document>,
    writer: Arc<Writer>,
    tx: Mutex<Option<mpsc::Sender<Job<RawDocumentBuf>>>>,
    batcher: Mutex<Option<JoinHandle<()>>>,
    in_flight: Arc<Semaphore>,
    database: String,
}

impl DriverStorage {
    /// Connects (reusing the process's client when the connection settings are unchanged),
    /// checks the cluster answers, and creates the indexes.
    pub async fn connect<'a>(params: impl Into<Params<'a>>) -> Result<Self, StorageError> {
        let Params {
            settings: ds,
            database,
        } = params.into();
        let target = Target::from_settings(ds)?;
        let write_concern = parse_write_concern(&ds.write_concern)?;
        if database.is_empty() {
            return Err(StorageError::config(
                BACKEND,
                "DB (config key `storage.database`) must not be empty",
            ));
        }
        if ds.collection.is_empty() {
            return Err(StorageError::config(
                BACKEND,
                "DRIVER_COLLECTION (config key `storage.driver.collection`) must not be empty",
            ));
        }
        let handle = shared_client(&target, ds).await?;
        let db = handle.client.database(database);

        // Start-up check: a round trip (authenticates too).
        if let Err(e) = db.run_command(doc! {"ping": 1}).await {
            return Err(ping_error(&e, &target, ds));
        }

        let read: Collection<Document> = db.collection(&ds.collection);
        let secrets: Arc<[String]> = target.secrets.clone().into();
        ensure_indexes(&read)
            .await
            .map_err(|e| scrub_error(e, &secrets))?;

        let coll: Collection<RawDocumentBuf> = db.collection_with_options(
            &ds.collection,
            CollectionOptions::builder()
                .write_concern(write_concern)
                .build(),
        );
        let writer = Arc::new(Writer {
            coll,
            secrets,
            op_timeout: Duration::from_millis(ds.operation_timeout_ms.max(1)),
            batches: AtomicU64::new(0),
            documents: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_BATCHES));
        let batcher = tokio::spawn(batcher(
            writer.clone(),
            rx,
            ds.batch_max.max(1),
            Duration::from_millis(ds.batch_wait_ms),
            in_flight.clone(),
        ));
        tracing::info!(
            uri = %target.shown(),
            database = %database,
            collection = %ds.collection,
            "driver storage connected"
        );
        Ok(Self {
            handle,
            read,
            writer,
            tx: Mutex::new(Some(tx)),
            batcher: Mutex::new(Some(batcher)),
            in_flight,
            database: database.to_string(),
        })
    }

    /// The process-wide client this backend uses.
    pub fn client(&self) -> &Client {
        &self.handle.client
    }

    /// Whether `other` uses the same pooled client (same connection settings, same runtime).
    pub fn shares_client_with(&self, other: &DriverStorage) -> bool {
        Arc::ptr_eq(&self.handle, &other.handle)
    }

    /// Group-commit counters: (`insert_many` batches sent, documents in them).
    pub fn batch_stats(&self) -> (u64, u64) {
        (
            self.writer.batches.load(Ordering::Relaxed),
            self.writer.documents.load(Ordering::Relaxed),
        )
    }

    /// The database name (`DB`).
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The collection (`DRIVER_COLLECTION`), as raw BSON documents.
    pub fn collection(&self) -> &Collection<Document> {
        &self.read
    }

    async fn submit(&self, docs: Vec<RawDocumentBuf>) -> Results {
        let tx = self.tx.lock().expect("driver tx lock").clone();
        submit(tx, docs, BACKEND).await
    }

    async fn with_timeout<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, MongoError>>,
    ) -> Result<T, StorageError> {
        match tokio::time::timeout(self.writer.op_timeout, f).await {
            Ok(r) => r.map_err(|e| scrub_error(classify(&e), &self.writer.secrets)),
            Err(_) => Err(self.writer.timeout_error()),
        }
    }
}

/// Why the start-up `ping` failed, secret-free: credentials refused → a configuration error;
/// unreachable or refused otherwise → unavailable (retriable).
fn ping_error(e: &MongoError, target: &Target, ds: &settings::Settings) -> StorageError {
    let unreachable = matches!(e.kind.as_ref(), ErrorKind::ServerSelection { .. });
    let auth = matches!(e.kind.as_ref(), ErrorKind::Authentication { .. })
        || matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == 18 || c.code == 13);
    let message = scrub(
        if unreachable {
            format!(
                "cannot reach MongoDB at {} ({}) within {} ms (DRIVER_SERVER_SELECTION_TIMEOUT_MS): {}",
                target.shown(),
                target.setting,
                ds.server_selection_timeout_ms,
                describe(e)
            )
        } else if auth {
            format!(
                "authentication to {} failed: check the credentials in {}: {}",
                target.shown(),
                target.setting,
                describe(e)
            )
        } else {
            format!(
                "MongoDB at {} ({}) refused `ping`: {}",
                target.shown(),
                target.setting,
                describe(e)
            )
        },
        &target.secrets,
    );
    if auth {
        StorageError::config(BACKEND, message)
    } else {
        StorageError::unavailable(BACKEND, message)
    }
}


/// Creates the read-back indexes (idempotent: same names and keys every time).
async fn ensure_indexes(coll: &Collection<Document>) -> Result<(), StorageError> {
    let date = format!("{META_KEY}.{RECEIVED_DATE}");
    let model = |name: &str, keys: Document| {
        IndexModel::builder()
            .keys(keys)
            .options(IndexOptions::builder().name(name.to_string()).build())
            .build()
    };
    let mut models = vec![model("connect_received", doc! {date.clone(): -1})];
    for field in ["event_type", "status", "object_id"] {
        models.push(model(
            &format!("connect_{field}_received"),
            doc! {format!("{META_KEY}.{field}"): 1, date.clone(): -1},
        ));
    }
    coll.create_indexes(models).await.map_err(|e| {
        let err = classify(&e);
        let message = format!(
            "cannot create the read-back indexes on {}.{} (DB, DRIVER_COLLECTION): {}",
            coll.namespace().db,
            coll.name(),
            describe(&e)
        );
        if err.is_retriable() {
            StorageError::unavailable(BACKEND, message)
        } else {
            StorageError::config(BACKEND, message)
        }
    })?;
    Ok(())
}

#[async_trait]
impl Storage for DriverStorage {
    fn name(&self) -> &'static str {
        BACKEND
    }

    async fn save(&self, doc: &EventDocument) -> Result<SaveOutcome, StorageError> {
        let raw = to_stored(doc)?;
        self.submit(vec![raw]).await.pop().unwrap_or_else(|| {
            Err(StorageError::internal(
                BACKEND,
                "no result from the batch writer",
            ))
        })
    }

    async fn save_many(&self, docs: &[EventDocument]) -> Results {
        let prepared: Vec<Result<RawDocumentBuf, StorageError>> =
            docs.iter().map(to_stored).collect();
        let good: Vec<RawDocumentBuf> = prepared
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
                        "missing result from the batch writer",
                    ))
                }),
                Err(e) => Err(e),
            })
            .collect()
    }

    async fn ping(&self) -> Result<(), StorageError> {
        let db = self.handle.client.database(&self.database);
        self.with_timeout(db.run_command(doc! {"ping": 1}).into_future())
            .await
            .map(|_| ())
    }

    async fn get(&self, id: &str) -> Result<Option<Value>, StorageError> {
        let found = self
            .with_timeout(self.read.find_one(doc! {"_id": id}).into_future())
            .await?;
        Ok(found.map(from_stored))
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Value>, StorageError> {
        let mut filter = Document::new();
        for (field, value) in [
            ("event_type", &query.event_type),
            ("status", &query.status),
            ("object_id", &query.object_id),
        ] {
            if let Some(v) = value {
                filter.insert(format!("{META_KEY}.{field}"), v.clone());
            }
        }
        if let Some(asset) = &query.asset_id {
            filter.insert("asset.id", asset.clone());
        }
        let limit = query.effective_limit() as i64;
        let sort = doc! {format!("{META_KEY}.{RECEIVED_DATE}"): -1, "_id": -1};
        let docs: Vec<Document> = self
            .with_timeout(async {
                self.read
                    .find(filter)
                    .sort(sort)
                    .limit(limit)
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        Ok(docs.into_iter().map(from_stored).collect())
    }

    async fn close(&self) {
        // Dropping the sender lets the batcher send what is queued, then exit.
        drop(self.tx.lock().expect("driver tx lock").take());
        let batcher = self.batcher.lock().expect("driver batcher lock").take();
        let drain = async {
            if let Some(batcher) = batcher {
                let _ = batcher.await;
            }
            // Wait for the batches still in flight.
            let _ = self.in_flight.acquire_many(IN_FLIGHT_BATCHES as u32).await;
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, drain).await.is_err() {
            tracing::warn!(
                timeout_ms = CLOSE_TIMEOUT.as_millis() as u64,
                "driver storage: batches still in flight at the close timeout; their events were not answered success, so they are redelivered"
            );
        }
        // The last user of the pooled client shuts it down, so that no driver task is left to
        // run (or panic) while the runtime is torn down.
        if let Some(client) = release_client(&self.handle).await {
            if tokio::time::timeout(CLIENT_SHUTDOWN_TIMEOUT, client.clone().shutdown())
                .await
                .is_err()
            {
                tracing::warn!(
                    timeout_ms = CLIENT_SHUTDOWN_TIMEOUT.as_millis() as u64,
                    "driver storage: the client did not shut down in time; closing it immediately"
                );
                let _ = tokio::time::timeout(
                    CLIENT_SHUTDOWN_TIMEOUT,
                    client.shutdown().immediate(true).into_future(),
                )
                .await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
