//! `insertOne` / `insertMany` and their outcomes: which documents were inserted, which were
//! already there (a redelivery), which were refused; and the shapes of read answers.

use super::errors::{decode_error, truncate, ApiError, ApiErrorKind, DuplicateOn};
use super::{decode_value, ApiResult, DataApiStorage, BACKEND, INSERT_MANY_CHUNK, MAX_ERROR_BODY};
use crate::storage::error::StorageError;
use crate::storage::store::{EventDocument, SaveOutcome};
use serde_json::{json, Value};

/// What a 2xx insert answer must carry: the `_id`s sent, in order (`insertedId` / `insertedIds`),
/// or FerretDB's `{"n": <count sent>}`. Anything else proves nothing.
pub(super) fn check_inserted(action: &str, answer: &Value, ids: &[&str]) -> ApiResult<()> {
    let unexpected = |why: &str| {
        decode_error(
            action,
            &format!(
                "{why}; the answer was {}",
                truncate(&answer.to_string(), MAX_ERROR_BODY)
            ),
        )
    };
    let Value::Object(o) = answer else {
        return Err(unexpected("the answer is not a JSON object"));
    };
    let same = |v: &Value, id: &str| decode_value(v.clone()).as_str() == Some(id);
    if action == "insertOne" {
        if let Some(v) = o.get("insertedId").filter(|v| !v.is_null()) {
            return if ids.len() == 1 && same(v, ids[0]) {
                Ok(())
            } else {
                Err(unexpected("`insertedId` is not the `_id` sent"))
            };
        }
    } else if let Some(v) = o.get("insertedIds") {
        let Some(list) = v.as_array() else {
            return Err(unexpected("`insertedIds` is not an array"));
        };
        return if list.len() == ids.len() && list.iter().zip(ids).all(|(v, id)| same(v, id)) {
            Ok(())
        } else {
            Err(unexpected("`insertedIds` are not the `_id`s sent"))
        };
    }
    match o.get("n").and_then(Value::as_u64) {
        Some(n) if n == ids.len() as u64 => Ok(()),
        Some(_) => Err(unexpected("`n` is not the number of documents sent")),
        None if action == "insertOne" => Err(unexpected("no `insertedId` in the answer")),
        None => Err(unexpected("no `insertedIds` in the answer")),
    }
}

impl DataApiStorage {
    pub(super) async fn insert_one(
        &self,
        doc: &EventDocument,
    ) -> Result<SaveOutcome, StorageError> {
        let document = Value::Object(doc.body.clone());
        let result = self.checked(
            self.call("insertOne", vec![("document", document)], self.deadline)
                .await
                // A 2xx counts only with the proof the contract gives (the `_id` sent, or `n: 1`).
                .and_then(|answer| check_inserted("insertOne", &answer, &[doc.id.as_str()])),
        );
        let err = match result {
            Ok(()) => return Ok(SaveOutcome::Inserted),
            Err(e) => e,
        };
        match err.duplicate.clone() {
            Some(DuplicateOn::Id) => {
                tracing::debug!(id = %doc.id, "Data API: already stored (duplicate key)");
                Ok(SaveOutcome::Duplicate)
            }
            // Another index named, or none: stored under this `_id` (some servers name another
            // unique index when the document is there already), else refused with the reason.
            Some(on) => match self.existing_ids(&[doc.id.as_str()]).await {
                Ok(found) if found.contains(&doc.id) => Ok(SaveOutcome::Duplicate),
                Ok(_) => Err(other_index(&on, &err)),
                Err(e) => Err(self.storage_error(*e)),
            },
            None => Err(self.storage_error(*err)),
        }
    }

    /// The ids among `ids` that are stored.
    pub(super) async fn existing_ids(&self, ids: &[&str]) -> ApiResult<Vec<String>> {
        let answer = self
            .call(
                "find",
                vec![
                    ("filter", json!({"_id": {"$in": ids}})),
                    ("projection", json!({"_id": 1})),
                    ("limit", json!(ids.len())),
                ],
                self.deadline,
            )
            .await;
        let docs = self.checked(answer.and_then(|a| documents_of(a, "find")))?;
        Ok(docs
            .iter()
            .filter_map(|d| d.get("_id").and_then(Value::as_str).map(str::to_string))
            .collect())
    }

    /// Inserts `docs[idx]` with ordered `insertMany` requests, filling `out[i]` for each.
    pub(super) async fn insert_many_indices(
        &self,
        docs: &[EventDocument],
        idx: Vec<usize>,
        out: &mut [Option<Result<SaveOutcome, StorageError>>],
    ) {
        let mut pending: std::collections::VecDeque<usize> = idx.into();
        while !pending.is_empty() {
            if pending.len() == 1 {
                let i = pending.pop_front().expect("one");
                out[i] = Some(self.insert_one(&docs[i]).await);
                return;
            }
            let n = pending.len().min(INSERT_MANY_CHUNK);
            let chunk: Vec<usize> = pending.drain(..n).collect();
            let ids: Vec<&str> = chunk.iter().map(|&i| docs[i].id.as_str()).collect();
            let documents: Vec<Value> = chunk
                .iter()
                .map(|&i| Value::Object(docs[i].body.clone()))
                .collect();
            let result = self.checked(
                self.call(
                    "insertMany",
                    vec![("documents", Value::Array(documents))],
                    self.deadline,
                )
                .await
                .and_then(|answer| check_inserted("insertMany", &answer, &ids)),
            );
            let err = match result {
                Ok(()) => {
                    for &i in &chunk {
                        out[i] = Some(Ok(SaveOutcome::Inserted));
                    }
                    continue;
                }
                Err(e) => e,
            };
            if let Some(on) = err.duplicate.clone() {
                if !self
                    .after_duplicate(docs, &chunk, &err, &on, &mut pending, out)
                    .await
                {
                    return;
                }
            } else if matches!(
                err.kind,
                ApiErrorKind::BadRequest | ApiErrorKind::PayloadTooLarge
            ) {
                // One bad document must not sink the others: one insertOne each, own outcomes
                // (a refusal that is not about a document then stays retriable for each).
                for &i in &chunk {
                    out[i] = Some(self.insert_one(&docs[i]).await);
                }
            } else {
                // Unreachable, refused, misconfigured or an answer that proves nothing: the rest
                // would fare no better.
                let e = self.storage_error(*err);
                for &i in chunk.iter().chain(pending.iter()) {
                    out[i] = Some(Err(e.clone()));
                }
                return;
            }
        }
    }

    /// After a duplicate-key answer to an ordered `insertMany` of `chunk`: settles what landed
    /// and what already existed, queues the rest again (`pending`). False when the store failed
    /// meanwhile (every unsettled document then has that error).
    async fn after_duplicate(
        &self,
        docs: &[EventDocument],
        chunk: &[usize],
        err: &ApiError,
        on: &DuplicateOn,
        pending: &mut std::collections::VecDeque<usize>,
        out: &mut [Option<Result<SaveOutcome, StorageError>>],
    ) -> bool {
        let ids: Vec<&str> = chunk.iter().map(|&i| docs[i].id.as_str()).collect();
        // Ordered insert: everything before the duplicate landed, nothing after it was
        // tried. Only an `_id` duplicate says where it stopped.
        let position = match *on {
            DuplicateOn::Id => err
                .error
                .as_deref()
                .and_then(|m| duplicate_position(m, &ids))
                .or_else(|| duplicate_position(&err.body, &ids)),
            _ => None,
        };
        let unknown: Vec<usize> = match position {
            Some(p) => {
                for &i in &chunk[..p] {
                    out[i] = Some(Ok(SaveOutcome::Inserted));
                }
                out[chunk[p]] = Some(Ok(SaveOutcome::Duplicate));
                chunk[p + 1..].to_vec()
            }
            // The message does not say which: whatever exists now is stored (documents
            // this request stored before the failure are among them).
            None => chunk.to_vec(),
        };
        if unknown.is_empty() {
            return true;
        }
        let unknown_ids: Vec<&str> = unknown.iter().map(|&i| docs[i].id.as_str()).collect();
        match self.existing_ids(&unknown_ids).await {
            Ok(existing) => {
                let mut retry = Vec::new();
                for &i in &unknown {
                    if existing.iter().any(|e| *e == docs[i].id) {
                        out[i] = Some(Ok(SaveOutcome::Duplicate));
                    } else {
                        retry.push(i);
                    }
                }
                if position.is_some() {
                    // Not stored yet: insert them before the rest of the batch.
                    for i in retry.into_iter().rev() {
                        pending.push_front(i);
                    }
                } else {
                    // No position to make progress with: one insertOne each (a document
                    // clashing on another unique index then fails alone).
                    for i in retry {
                        out[i] = Some(self.insert_one(&docs[i]).await);
                    }
                }
                true
            }
            Err(e) => {
                let e = self.storage_error(*e);
                for &i in unknown.iter().chain(pending.iter()) {
                    out[i] = Some(Err(e.clone()));
                }
                false
            }
        }
    }

}

/// A duplicate on a unique index other than `_id`: the document is refused, with the reason.
pub(super) fn other_index(on: &DuplicateOn, err: &ApiError) -> StorageError {
    let index = match on {
        DuplicateOn::Index(name) => format!("unique index `{name}`"),
        _ => "a unique index other than `_id`".to_string(),
    };
    StorageError::rejected(
        BACKEND,
        format!(
            "duplicate key on {index}, not `_id` (another document holds the same value): {}",
            err.describe()
        ),
    )
}
/// The position in `ids` of the key named by a duplicate-key message
/// (`… dup key: { _id: "PR-1:pending:u" }`).
pub(super) fn duplicate_position(message: &str, ids: &[&str]) -> Option<usize> {
    let tail = &message[message.find("dup key")?..];
    ids.iter().position(|id| {
        serde_json::to_string(id)
            .map(|quoted| tail.contains(&quoted))
            .unwrap_or(false)
    })
}

pub(super) fn documents_of(answer: Value, action: &str) -> ApiResult<Vec<Value>> {
    match answer {
        Value::Object(mut o) => match o.remove("documents") {
            Some(Value::Array(docs)) => Ok(docs.into_iter().map(decode_value).collect()),
            Some(Value::Null) => Ok(Vec::new()),
            _ => Err(decode_error(action, "no `documents` array in the answer")),
        },
        _ => Err(decode_error(action, "the answer is not a JSON object")),
    }
}

/// The `document` of a `findOne` answer (`null`: not found); no `document` key is not an answer.
pub(super) fn document_of(answer: Value) -> ApiResult<Option<Value>> {
    match answer {
        Value::Object(mut o) => match o.remove("document") {
            Some(Value::Null) => Ok(None),
            Some(doc @ Value::Object(_)) => Ok(Some(decode_value(doc))),
            Some(_) => Err(decode_error("findOne", "`document` is not an object")),
            None => Err(decode_error("findOne", "no `document` in the answer")),
        },
        _ => Err(decode_error("findOne", "the answer is not a JSON object")),
    }
}
