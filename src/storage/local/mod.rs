//! `local`: the embedded default — a SQLite database file (`{path}/events.sqlite3`).
//!
//! | idempotent save | bulk | ordering | durability |
//! |---|---|---|---|
//! | yes: `_id` is a UNIQUE key, `INSERT OR IGNORE` | one transaction per group | newest first by received time | WAL + `synchronous=FULL`: a commit is fsync'ed before `save` returns |
//!
//! **Why SQLite (rusqlite, bundled) rather than redb:** the read-back API filters by event type,
//! status and object id and sorts by time — secondary indexes and `ORDER BY` that SQLite gives for
//! free and redb would make us hand-roll; the file is inspectable with the `sqlite3` CLI any user
//! has; WAL gives crash-safe commits and readers that never block the writer; and the bundled build
//! needs no system library, so `cargo run` works on a clean machine.
//!
//! **Group commit.** One writer thread owns the write connection. Saves queue up while a commit is
//! being fsync'ed; the writer then takes everything queued (up to [`MAX_GROUP`] documents) into the
//! next transaction. Throughput grows with concurrency while each `save` still returns only after
//! its own document is durable.
//!
//! **Errors.** Every SQLite error about the store — `READONLY` (a read-only remount), `CORRUPT`,
//! `NOTADB`, `NOMEM`, `PERM`, `IOERR`, `FULL`, `CANTOPEN`, `BUSY`, `LOCKED`, `PROTOCOL`… — is
//! [`ErrorKind::Unavailable`](crate::storage::ErrorKind::Unavailable) (the event is redelivered, nothing lost); only an error about the
//! document itself (`TOOBIG`, a body that cannot be encoded) is [`ErrorKind::RejectedDocument`](crate::storage::ErrorKind::RejectedDocument), and
//! only for that document, never its neighbours in the group. A save that gets no answer from the
//! writer within its bound ([`SAVE_TIMEOUT`]) is a retriable [`ErrorKind::Timeout`](crate::storage::ErrorKind::Timeout).
//!
//! **Readiness.** [`Storage::ping`] probes what a save needs: `BEGIN IMMEDIATE`, a write statement
//! that changes nothing, `ROLLBACK` on the write connection, through the writer thread (bounded by [`PING_TIMEOUT`]), plus a read.
//! `close` waits for queued writes at most [`CLOSE_TIMEOUT`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::storage::error::StorageError;
use crate::storage::store::{EventDocument, ListQuery, SaveOutcome, Storage};

pub mod settings;

mod errors;
mod writer;

pub use errors::sql_err;
pub use writer::MAX_GROUP;

use errors::BACKEND;
use writer::{writer_loop, Row, WriteJob};

use crate::storage::backend::{self, Backend};

/// This backend in the registry (`storage/mod.rs`): the embedded default, never picked by `auto`
/// (it is what `auto` falls back to).
pub const DESCRIPTOR: Backend = Backend {
    name: "local",
    defaults: include_str!("default.toml"),
    env: settings::ENV,
    platform_variables: &[],
    uses_database: false,
    auto: false,
    parse: backend::parse::<settings::Settings>,
    open: |section, _common| {
        let opened = LocalStorage::open(&backend::section::<settings::Settings>(section).path)
            .map(|s| Arc::new(s) as Arc<dyn Storage>);
        Box::pin(std::future::ready(opened))
    },
};

const FILE_NAME: &str = "events.sqlite3";
/// Longest a save waits for the writer (queueing, SQLite's 5 s busy timeout, the fsync) before it
/// is answered with a retriable [`ErrorKind::Timeout`](crate::storage::ErrorKind::Timeout) (the document may still be committed
/// later: the deterministic `_id` makes the redelivery a duplicate).
pub const SAVE_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest the readiness write probe waits for the writer.
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest `close` waits for the writer to finish what is queued.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SQLite itself retries a locked database.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct LocalStorage {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<WriteJob>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    reader: Arc<Mutex<Connection>>,
    save_timeout: Duration,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    event_type  TEXT NOT NULL,
    status      TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    received_ns INTEGER NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_type   ON events (event_type, received_ns);
CREATE INDEX IF NOT EXISTS events_by_status ON events (status, received_ns);
CREATE INDEX IF NOT EXISTS events_by_object ON events (object_id, received_ns);
CREATE INDEX IF NOT EXISTS events_by_time   ON events (received_ns);
";

impl LocalStorage {
    /// Opens (creating if needed) the database in directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        Self::open_inner(dir, false)
    }

    /// Test support: opens an existing database in `dir` with the *write* connection opened
    /// read-only by SQLite (`SQLITE_OPEN_READONLY`), as after a read-only remount — every save
    /// then fails with SQLite's `READONLY`. (Tests may run as root, where `chmod` cannot make the
    /// file read-only.)
    #[doc(hidden)]
    pub fn open_with_read_only_writer(dir: &Path) -> Result<Self, StorageError> {
        Self::open_inner(dir, true)
    }

    /// Sets how long a save waits for the writer before it is answered with a retriable
    /// [`ErrorKind::Timeout`](crate::storage::ErrorKind::Timeout) (default [`SAVE_TIMEOUT`]).
    pub fn with_save_timeout(mut self, timeout: Duration) -> Self {
        self.save_timeout = timeout;
        self
    }

    fn open_inner(dir: &Path, read_only_writer: bool) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StorageError::config(
                BACKEND,
                format!(
                    "cannot create data directory {} (LOCAL_DATA_DIR): {e}",
                    dir.display()
                ),
            )
        })?;
        let path = dir.join(FILE_NAME);
        let open_err = |e: rusqlite::Error| {
            StorageError::config(
                BACKEND,
                format!("cannot open {} (LOCAL_DATA_DIR): {e}", path.display()),
            )
        };
        let write = if read_only_writer {
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(open_err)?
        } else {
            let write = Connection::open(&path).map_err(open_err)?;
            write
                .pragma_update(None, "journal_mode", "WAL")
                .map_err(open_err)?;
            write
        };
        write
            .pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        write.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        tune(&write).map_err(open_err)?;
        if !read_only_writer {
            write.execute_batch(SCHEMA).map_err(open_err)?;
        }

        let reader = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        reader.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        tune(&reader).map_err(open_err)?;

        let (tx, rx) = mpsc::channel::<WriteJob>(4096);
        let thread = std::thread::Builder::new()
            .name("local-storage-writer".into())
            .spawn(move || writer_loop(write, rx))
            .map_err(|e| {
                StorageError::internal(BACKEND, format!("cannot start writer thread: {e}"))
            })?;
        Ok(Self {
            path,
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
            reader: Arc::new(Mutex::new(reader)),
            save_timeout: SAVE_TIMEOUT,
        })
    }

    /// The database file.
    pub fn file(&self) -> &Path {
        &self.path
    }

    fn closed() -> StorageError {
        StorageError::unavailable(BACKEND, "the store is shutting down")
    }

    async fn submit(&self, docs: Vec<Row>) -> Vec<Result<SaveOutcome, StorageError>> {
        let n = docs.len();
        let Some(tx) = self.writer.lock().expect("writer lock").clone() else {
            return vec![Err(Self::closed()); n];
        };
        let (reply, rx) = oneshot::channel();
        let wait = async {
            if tx.send(WriteJob::Save { docs, reply }).await.is_err() {
                return vec![Err(Self::closed()); n];
            }
            rx.await.unwrap_or_else(|_| vec![Err(Self::closed()); n])
        };
        match tokio::time::timeout(self.save_timeout, wait).await {
            Ok(results) => results,
            Err(_) => {
                let err = StorageError::timeout(BACKEND, format!(
                        "the SQLite writer did not answer within {} ms (database locked or the disk stalled); the document may be committed later",
                        self.save_timeout.as_millis()
                    ));
                tracing::warn!(error = %err, documents = n, "local save timed out");
                vec![Err(err); n]
            }
        }
    }

    /// The write probe ([`write_probe`]) on the write connection, through the writer thread,
    /// bounded by [`PING_TIMEOUT`].
    async fn probe_write(&self) -> Result<(), StorageError> {
        let Some(tx) = self.writer.lock().expect("writer lock").clone() else {
            return Err(StorageError::unavailable(BACKEND, "the store is closed"));
        };
        let (reply, rx) = oneshot::channel();
        let wait = async {
            if tx.send(WriteJob::Probe(reply)).await.is_err() {
                return Err(Self::closed());
            }
            rx.await.unwrap_or_else(|_| Err(Self::closed()))
        };
        match tokio::time::timeout(PING_TIMEOUT, wait).await {
            Ok(r) => r,
            Err(_) => Err(StorageError::timeout(
                BACKEND,
                format!(
                    "the write probe got no answer from the SQLite writer within {} ms",
                    PING_TIMEOUT.as_millis()
                ),
            )),
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StorageError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&reader.lock().expect("reader lock")))
            .await
            .map_err(|e| StorageError::internal(BACKEND, format!("reader task failed: {e}")))?
            .map_err(sql_err)
    }
}

/// Memory settings of both connections (durability is set on the write connection only): a
/// page cache of 512 KiB rather than SQLite's 2 MiB default (the writer appends rows and updates
/// four small indexes; the reader serves point look-ups), and no memory-mapped I/O.
fn tune(c: &Connection) -> Result<(), rusqlite::Error> {
    c.pragma_update(None, "cache_size", -512)?;
    c.pragma_update(None, "mmap_size", 0)?;
    Ok(())
}

fn parse_body(body: String) -> Result<Value, rusqlite::Error> {
    serde_json::from_str(&body).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

#[async_trait]
impl Storage for LocalStorage {
    fn name(&self) -> &'static str {
        BACKEND
    }

    async fn save(&self, doc: &EventDocument) -> Result<SaveOutcome, StorageError> {
        self.submit(vec![Row::of(doc)])
            .await
            .pop()
            .unwrap_or_else(|| Err(StorageError::internal(BACKEND, "no result from writer")))
    }

    async fn save_many(&self, docs: &[EventDocument]) -> Vec<Result<SaveOutcome, StorageError>> {
        if docs.is_empty() {
            return Vec::new();
        }
        self.submit(docs.iter().map(Row::of).collect()).await
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.probe_write().await?;
        self.read(|c| c.query_row("SELECT count(*) FROM events WHERE 0", [], |_| Ok(())))
            .await
    }

    async fn get(&self, id: &str) -> Result<Option<Value>, StorageError> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row("SELECT body FROM events WHERE id = ?1", [id], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .map(parse_body)
            .transpose()
        })
        .await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Value>, StorageError> {
        let q = query.clone();
        let limit = query.effective_limit() as i64;
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT body FROM events
                 WHERE (?1 IS NULL OR event_type = ?1)
                   AND (?2 IS NULL OR status = ?2)
                   AND (?3 IS NULL OR object_id = ?3)
                   AND (?5 IS NULL OR json_extract(body, '$.asset.id') = ?5)
                 ORDER BY received_ns DESC, seq DESC
                 LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![q.event_type, q.status, q.object_id, limit, q.asset_id],
                |r| r.get::<_, String>(0),
            )?;
            rows.map(|r| r.and_then(parse_body)).collect()
        })
        .await
    }

    async fn close(&self) {
        // Dropping the sender lets the writer finish what is queued, then exit.
        drop(self.writer.lock().expect("writer lock").take());
        let handle = self.writer_thread.lock().expect("writer lock").take();
        if let Some(handle) = handle {
            let join = tokio::task::spawn_blocking(move || handle.join());
            if tokio::time::timeout(CLOSE_TIMEOUT, join).await.is_err() {
                tracing::warn!(
                    timeout_ms = CLOSE_TIMEOUT.as_millis() as u64,
                    "local storage: the writer did not finish within the close timeout; \
                     saves still queued were not answered success, so they are redelivered"
                );
            }
        }
    }
}

impl Drop for LocalStorage {
    fn drop(&mut self) {
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
    }
}

#[cfg(test)]
mod tests;
