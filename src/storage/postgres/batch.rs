//! Group commit: the batcher task and the writer that turns one
//! `INSERT … SELECT * FROM unnest(…) ON CONFLICT (id) DO NOTHING RETURNING id` into an outcome per
//! document.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use async_trait::async_trait;

use super::errors::{pool_error, Scrub, BACKEND};
use crate::storage::error::StorageError;
use crate::storage::group::{GroupWrite, Results};
use crate::storage::store::SaveOutcome;

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

pub(super) struct Writer {
    pub(super) pool: Pool,
    pub(super) insert_sql: String,
    pub(super) scrub: Scrub,
    pub(super) op_timeout: Duration,
    pub(super) batches: AtomicU64,
    pub(super) documents: AtomicU64,
}

#[async_trait]
impl GroupWrite<Row> for Writer {
    async fn write(&self, rows: &[&Row]) -> Results {
        self.write_group(rows).await
    }
}

impl Writer {
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
    async fn write_group(&self, rows: &[&Row]) -> Results {
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
