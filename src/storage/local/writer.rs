//! The one writer thread: takes every queued save (up to [`MAX_GROUP`] documents) into one
//! transaction, answers each caller with its own outcomes, and runs the readiness write probe.

use rusqlite::{params, Connection};
use tokio::sync::{mpsc, oneshot};

use super::errors::{is_document_error, sql_err, BACKEND};
use crate::storage::error::StorageError;
use crate::storage::store::{EventDocument, SaveOutcome};

/// Most documents committed in one transaction.
pub const MAX_GROUP: usize = 1024;

pub(super) type Reply = oneshot::Sender<Vec<Result<SaveOutcome, StorageError>>>;

/// A document as the writer inserts it, encoded by the caller (so the one writer thread only
/// runs SQLite, and no copy of the document crosses the channel).
pub(super) struct Row {
    id: String,
    event_type: String,
    status: String,
    object_id: String,
    received_ns: i64,
    /// The JSON body, or why it could not be encoded.
    body: Result<String, String>,
}

impl Row {
    pub(super) fn of(doc: &EventDocument) -> Row {
        Row {
            id: doc.id.clone(),
            event_type: doc.event_type.clone(),
            status: doc.status.clone(),
            object_id: doc.object_id.clone(),
            received_ns: doc.received_at.unix_timestamp_nanos() as i64,
            body: serde_json::to_string(&doc.body).map_err(|e| e.to_string()),
        }
    }
}

pub(super) enum WriteJob {
    Save {
        docs: Vec<Row>,
        reply: Reply,
    },
    /// The readiness probe: a write transaction on the write connection, rolled back.
    Probe(oneshot::Sender<Result<(), StorageError>>),
}

/// `BEGIN IMMEDIATE`, a write statement that changes no row, `ROLLBACK`: takes the write lock and
/// opens a write transaction as a save would, writes nothing. (`BEGIN IMMEDIATE` alone succeeds on
/// a read-only database: SQLite downgrades it to a read transaction there.)
pub(super) fn write_probe(conn: &Connection) -> Result<(), StorageError> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(sql_err)?;
    let probe = conn.execute_batch("DELETE FROM events WHERE 0");
    let rollback = conn.execute_batch("ROLLBACK");
    probe.map_err(sql_err)?;
    rollback.map_err(sql_err)
}

struct SaveJob {
    docs: Vec<Row>,
    reply: Reply,
}

pub(super) fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<WriteJob>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = Vec::new();
        let mut probes = Vec::new();
        let mut count = 0;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                WriteJob::Save { docs, reply } => {
                    count += docs.len();
                    jobs.push(SaveJob { docs, reply });
                }
                WriteJob::Probe(reply) => probes.push(reply),
            }
            if count < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        if !jobs.is_empty() {
            let results = commit_group(&mut conn, &jobs);
            let mut results = results.into_iter();
            for job in jobs {
                let mine: Vec<_> = results.by_ref().take(job.docs.len()).collect();
                let _ = job.reply.send(mine);
            }
        }
        for probe in probes {
            let _ = probe.send(write_probe(&conn));
        }
    }
}

/// Commits every document of `jobs` in one transaction; one result per document, in order.
fn commit_group(conn: &mut Connection, jobs: &[SaveJob]) -> Vec<Result<SaveOutcome, StorageError>> {
    let total: usize = jobs.iter().map(|j| j.docs.len()).sum();
    let mut attempt = || -> Result<Vec<Result<SaveOutcome, StorageError>>, rusqlite::Error> {
        let tx = conn.transaction()?;
        let mut out = Vec::with_capacity(total);
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO events (id, event_type, status, object_id, received_ns, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for doc in jobs.iter().flat_map(|j| &j.docs) {
                let body = match &doc.body {
                    Ok(b) => b,
                    Err(e) => {
                        out.push(Err(StorageError::rejected(
                            BACKEND,
                            format!("cannot encode document {}: {e}", doc.id),
                        )));
                        continue;
                    }
                };
                let changed = match stmt.execute(params![
                    doc.id,
                    doc.event_type,
                    doc.status,
                    doc.object_id,
                    doc.received_ns,
                    body
                ]) {
                    Ok(changed) => changed,
                    // About this document only (the statement failed, the transaction goes on).
                    Err(e) if is_document_error(&e) => {
                        out.push(Err(
                            sql_err(e).map_message(|m| format!("document {} refused: {m}", doc.id))
                        ));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                out.push(Ok(if changed == 1 {
                    SaveOutcome::Inserted
                } else {
                    SaveOutcome::Duplicate
                }));
            }
        }
        tx.commit()?;
        Ok(out)
    };
    match attempt() {
        Ok(out) => out,
        Err(e) => {
            let err = sql_err(e);
            // Per-event: WARN (the storage health tracker logs the state change at ERROR once).
            tracing::warn!(error = %err, documents = total, "local storage commit failed");
            vec![Err(err); total]
        }
    }
}
