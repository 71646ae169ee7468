//! Group commit: the batcher task and the writer that turns one `insert_many` into an
//! outcome per document.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::error::{ErrorKind, InsertManyError};
use mongodb::Collection;
use async_trait::async_trait;

use super::errors::{classify, classify_code, is_duplicate_key, write_concern_error};
use super::uri::scrub_error;
use super::errors::BACKEND;
use crate::storage::error::StorageError;
use crate::storage::group::{GroupWrite, Results};
use crate::storage::store::SaveOutcome;

pub(super) struct Writer {
    pub(super) coll: Collection<RawDocumentBuf>,
    pub(super) secrets: Arc<[String]>,
    pub(super) op_timeout: Duration,
    pub(super) batches: AtomicU64,
    pub(super) documents: AtomicU64,
}

/// One group: one `insert_many` (counted for [`super::DriverStorage::batch_stats`]).
#[async_trait]
impl GroupWrite<RawDocumentBuf> for Writer {
    async fn write(&self, docs: &[&RawDocumentBuf]) -> Results {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.documents
            .fetch_add(docs.len() as u64, Ordering::Relaxed);
        self.insert(docs).await
    }
}

impl Writer {
    pub(super) fn timeout_error(&self) -> StorageError {
        StorageError::timeout(
            BACKEND,
            format!(
                "no answer within {} ms (DRIVER_OPERATION_TIMEOUT_MS)",
                self.op_timeout.as_millis()
            ),
        )
    }

    /// One `insert_many(ordered = false)`; one result per document.
    pub(super) async fn insert(&self, docs: &[&RawDocumentBuf]) -> Results {
        let n = docs.len();
        if n == 0 {
            return Vec::new();
        }
        let call = self.coll.insert_many(docs.iter().copied()).ordered(false);
        let result = match tokio::time::timeout(self.op_timeout, call).await {
            Ok(r) => r,
            Err(_) => return vec![Err(self.timeout_error()); n],
        };
        match result {
            Ok(_) => vec![Ok(SaveOutcome::Inserted); n],
            Err(e) => match e.kind.as_ref() {
                ErrorKind::InsertMany(failure) => self.per_document(docs, failure).await,
                _ => {
                    let err = scrub_error(classify(&e), &self.secrets);
                    if err.is_retriable() || n == 1 {
                        if err.is_retriable() {
                            tracing::warn!(error = %err, documents = n, "driver batch not stored (retriable)");
                        }
                        vec![Err(err); n]
                    } else {
                        // A permanent batch-level error: find out which document it is about.
                        tracing::warn!(error = %err, documents = n, "driver batch refused; retrying one document at a time");
                        let mut out = Vec::with_capacity(n);
                        for d in docs {
                            out.extend(Box::pin(self.insert(std::slice::from_ref(d))).await);
                        }
                        out
                    }
                }
            },
        }
    }

    /// One result per document from an `insert_many` failure: a duplicate on `_id` is
    /// `Duplicate` (a redelivery), a duplicate on any other unique index is `Rejected` with the
    /// reason, other write errors are classified by code; when the batch also carries a
    /// write-concern error, every document not refused for good — duplicates included (their
    /// earlier write may not be durable either) — gets that retriable error.
    pub(super) async fn per_document(
        &self,
        docs: &[&RawDocumentBuf],
        failure: &InsertManyError,
    ) -> Results {
        let n = docs.len();
        let concern = failure.write_concern_error.as_ref().map(|w| {
            scrub_error(
                write_concern_error(w.code, format!("{} {}: {}", w.code, w.code_name, w.message)),
                &self.secrets,
            )
        });
        let mut out: Vec<Option<Result<SaveOutcome, StorageError>>> = vec![None; n];
        for we in failure.write_errors.iter().flatten() {
            let Some(slot) = out.get_mut(we.index) else {
                continue;
            };
            let name = we.code_name.as_deref().unwrap_or("");
            let message = || format!("{} {name}: {}", we.code, we.message);
            *slot = Some(if is_duplicate_key(we.code) {
                // Another index (or none named): a redelivery still collides on `_id` too, but
                // the server names only one index — look the `_id` up.
                let on_id = match duplicate_on_id(&we.message, we.details.as_ref()) {
                    Some(true) => Ok(true),
                    _ => self.id_stored(docs[we.index]).await,
                };
                match (on_id, &concern) {
                    (Ok(true), Some(wc)) => Err(wc.clone()),
                    (Ok(true), None) => Ok(SaveOutcome::Duplicate),
                    (Ok(false), _) => Err(scrub_error(
                        StorageError::rejected(BACKEND, format!(
                                "the document collides with a stored one on a unique index other than `_id` (not a redelivery): {}",
                                message()
                            )),
                        &self.secrets,
                    )),
                    (Err(e), _) => Err(e),
                }
            } else {
                Err(scrub_error(
                    classify_code(we.code, message()),
                    &self.secrets,
                ))
            });
        }
        let rest = match concern {
            Some(wc) => Err(wc),
            None => Ok(SaveOutcome::Inserted),
        };
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| rest.clone()))
            .collect()
    }

    /// Whether a document with the `_id` of `doc` is stored (a failed look-up is retriable).
    pub(super) async fn id_stored(&self, doc: &RawDocumentBuf) -> Result<bool, StorageError> {
        let id = doc
            .get("_id")
            .ok()
            .flatten()
            .and_then(|v| Bson::try_from(v).ok())
            .ok_or_else(|| StorageError::internal(BACKEND, "a stored document without `_id`"))?;
        let lookup = self.coll.count_documents(doc! {"_id": id}).limit(1);
        match tokio::time::timeout(self.op_timeout, lookup).await {
            Ok(Ok(found)) => Ok(found > 0),
            Ok(Err(e)) => Err(scrub_error(classify(&e), &self.secrets)),
            Err(_) => Err(self.timeout_error()),
        }
    }
}

/// Which unique index a duplicate-key error is about: `Some(true)` for `_id` (its `keyPattern`
/// in the error details, or the index name `_id_` / the key `_id` in the server's message),
/// `Some(false)` for another index, `None` when the error does not say.
pub fn duplicate_on_id(message: &str, details: Option<&Document>) -> Option<bool> {
    if let Some(pattern) = details.and_then(|d| d.get_document("keyPattern").ok()) {
        return Some(pattern.len() == 1 && pattern.contains_key("_id"));
    }
    if let Some((_, rest)) = message.split_once("index: ") {
        let name = rest.split_whitespace().next().unwrap_or_default();
        return Some(name == "_id_");
    }
    if let Some((_, rest)) = message.split_once("dup key: {") {
        let key = rest.split(':').next().unwrap_or_default().trim();
        return Some(key.trim_matches('"') == "_id");
    }
    None
}
