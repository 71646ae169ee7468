//! Group commit: the batcher task and the writer that turns one
//! `INSERT … SELECT * FROM unnest(…) ON CONFLICT (id) DO NOTHING RETURNING id` into an outcome per
//! document.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::errors::{pool_error, Scrub, BACKEND};
use crate::storage::error::StorageError;
use crate::storage::store::SaveOutcome;

pub(super) type Results = Vec<Result<SaveOutcome, StorageError>>;

/// One document in its stored form (checked: no NUL in a text column).
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) id: String,
    pub(super) event_type: String,
    pub(super) status: String,
    pub(super) object_id: String,
    pub(super) asset_id: Option<String>,
    /// RFC 3339, nine fraction digits (`timestamptz` keeps microseconds).
    pub(super) received_at: String,
    /// The whole document as JSON text, keys as received.
    pub(super) body: String,
}

pub(super) struct Job {
    pub(super) rows: Vec<Row>,
    pub(super) reply: oneshot::Sender<Results>,
}

pub(super) struct Writer {
    pub(super) pool: Pool,
    pub(super) insert_sql: String,
    pub(super) scrub: Scrub,
    pub(super) op_timeout: Duration,
    pub(super) batches: AtomicU64,
    pub(super) documents: AtomicU64,
}

pub(super) async fn batcher(
    writer: Arc<Writer>,
    mut rx: mpsc::Receiver<Job>,
    batch_max: usize,
    wait: Duration,
    in_flight: Arc<Semaphore>,
) {
    use mpsc::error::TryRecvError;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut count = first.rows.len();
        let mut jobs = vec![first];
        let deadline = tokio::time::Instant::now() + wait;
        while count < batch_max {
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) if wait.is_zero() => None,
                Err(TryRecvError::Empty) => tokio::time::timeout_at(deadline, rx.recv())
                    .await
                    .ok()
                    .flatten(),
            };
            match next {
                Some(job) => {
                    count += job.rows.len();
                    jobs.push(job);
                }
                None => break,
            }
        }
        let writer = writer.clone();
        tokio::spawn(async move {
            writer.write_jobs(jobs).await;
            drop(permit);
        });
    }
}

impl Writer {
    pub(super) async fn write_jobs(&self, jobs: Vec<Job>) {
        let rows: Vec<&Row> = jobs.iter().flat_map(|j| j.rows.iter()).collect();
        let results = self.write(&rows).await;
        drop(rows);
        let mut results = results.into_iter();
        for job in jobs {
            let mine: Results = results.by_ref().take(job.rows.len()).collect();
            let _ = job.reply.send(mine);
        }
    }

    pub(super) fn timeout_error(&self) -> StorageError {
        StorageError::timeout(
            BACKEND,
            format!(
                "no answer within {} ms (POSTGRES_OPERATION_TIMEOUT_MS)",
                self.op_timeout.as_millis()
            ),
        )
    }

    /// One result per row: the in-group duplicates (same id) are removed first (the first one
    /// is written; the others are `Duplicate`, or share its error), then one statement.
    pub(super) async fn write(&self, rows: &[&Row]) -> Results {
        let mut first_of: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
        let mut unique: Vec<&Row> = Vec::with_capacity(rows.len());
        let slot: Vec<usize> = rows
            .iter()
            .map(|r| {
                *first_of.entry(r.id.as_str()).or_insert_with(|| {
                    unique.push(r);
                    unique.len() - 1
                })
            })
            .collect();
        let written = self.insert(&unique).await;
        let mut seen = vec![false; unique.len()];
        slot.into_iter()
            .map(|u| {
                let r = &written[u];
                if std::mem::replace(&mut seen[u], true) {
                    r.clone().map(|_| SaveOutcome::Duplicate)
                } else {
                    r.clone()
                }
            })
            .collect()
    }

    /// One INSERT of distinct ids; on a permanent error of a group of more than one, the halves
    /// are sent again, so that only the bad document fails.
    async fn insert(&self, rows: &[&Row]) -> Results {
        let n = rows.len();
        if n == 0 {
            return Vec::new();
        }
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.documents.fetch_add(n as u64, Ordering::Relaxed);
        let result = match tokio::time::timeout(self.op_timeout, self.statement(rows)).await {
            Ok(r) => r,
            Err(_) => return vec![Err(self.timeout_error()); n],
        };
        match result {
            Ok(inserted) => rows
                .iter()
                .map(|r| {
                    Ok(if inserted.contains(&r.id) {
                        SaveOutcome::Inserted
                    } else {
                        SaveOutcome::Duplicate
                    })
                })
                .collect(),
            Err(e) if e.is_retriable() || n == 1 => {
                if e.is_retriable() {
                    tracing::warn!(error = %e, documents = n, "postgres group not stored (retriable)");
                }
                vec![Err(e); n]
            }
            Err(e) => {
                tracing::warn!(error = %e, documents = n, "postgres group refused; splitting it to find the document");
                let (a, b) = rows.split_at(n / 2);
                let mut out = Box::pin(self.insert(a)).await;
                out.extend(Box::pin(self.insert(b)).await);
                out
            }
        }
    }

    async fn statement(&self, rows: &[&Row]) -> Result<HashSet<String>, StorageError> {
        // Rows in id order: every transaction takes its row locks in the same order, so two
        // groups holding the same ids (two replicas, a redelivery) never deadlock (40P01). The
        // outcome of each document is read from `RETURNING id`, whatever the order.
        let mut sorted = rows.to_vec();
        sorted.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let rows = &sorted[..];
        let client = self.pool.get().await.map_err(|e| pool_error(e, &self.scrub))?;
        let stmt = client
            .prepare_cached(&self.insert_sql)
            .await
            .map_err(|e| self.scrub.error(&e))?;
        let col = |f: fn(&Row) -> &str| rows.iter().map(|r| f(r)).collect::<Vec<&str>>();
        let ids = col(|r| &r.id);
        let types = col(|r| &r.event_type);
        let statuses = col(|r| &r.status);
        let objects = col(|r| &r.object_id);
        let assets: Vec<Option<&str>> = rows.iter().map(|r| r.asset_id.as_deref()).collect();
        let received = col(|r| &r.received_at);
        let bodies = col(|r| &r.body);
        let returned = client
            .query(
                &stmt,
                &[
                    &ids, &types, &statuses, &objects, &assets, &received, &bodies,
                ],
            )
            .await
            .map_err(|e| self.scrub.error(&e))?;
        Ok(returned
            .into_iter()
            .filter_map(|row| row.try_get::<_, String>(0).ok())
            .collect())
    }
}
