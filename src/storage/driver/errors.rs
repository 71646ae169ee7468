//! Error classification — the one place ([`classify`], [`classify_code`]).

use mongodb::error::{Error as MongoError, ErrorKind, InsertManyError, WriteFailure};

/// The backend's name in errors, logs and metrics.
pub(super) const BACKEND: &str = "driver";
use crate::storage::error::StorageError;

/// A short description of a driver error (its kind's message and labels).
pub(super) fn describe(e: &MongoError) -> String {
    let labels = e.labels();
    if labels.is_empty() {
        e.kind.to_string()
    } else {
        let mut labels: Vec<_> = labels.iter().map(String::as_str).collect();
        labels.sort_unstable();
        format!("{} [labels: {}]", e.kind, labels.join(", "))
    }
}

/// Duplicate key: the document is already stored.
pub fn is_duplicate_key(code: i32) -> bool {
    matches!(code, 11000 | 11001 | 12582)
}

/// Classifies a server error code (command, write or write-concern error).
pub fn classify_code(code: i32, message: String) -> StorageError {
    let backend = BACKEND;
    match code {
        // Time limits: the write may or may not have happened; retrying is safe (idempotent).
        50 | 64 | 89 | 202 | 262 | 290 => StorageError::timeout(backend, message),
        // The document itself is unacceptable: retrying cannot help.
        2 // BadValue
        | 9 // FailedToParse
        | 14 // TypeMismatch
        | 17 // ?(invalid BSON type)
        | 22 // InvalidBSON
        | 52 // DollarPrefixedFieldName
        | 55 // InvalidDBRef
        | 56 // EmptyFieldName
        | 57 // DottedFieldName
        | 66 // ImmutableField
        | 121 // DocumentValidationFailure
        | 10334 // BSONObjectTooLarge
        | 17280 // KeyTooLong
        | 16755 // cannot extract geo keys
        | 17419 // document too large after update
        => StorageError::rejected(backend, message),
        // Everything else — not primary, shutting down, stepping down, host unreachable, socket
        // errors, write conflicts, auth problems and unknown codes — is answered `reschedule`.
        _ => StorageError::unavailable(backend, message),
    }
}

/// Classifies a driver error: retriable (`Unavailable`/`Timeout`) or permanent (`Rejected`).
pub fn classify(e: &MongoError) -> StorageError {
    classify_kind(e).with_source(e.clone())
}

fn classify_kind(e: &MongoError) -> StorageError {
    let message = describe(e);
    let backend = BACKEND;
    match e.kind.as_ref() {
        ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            StorageError::timeout(backend, message)
        }
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Authentication { .. }
        | ErrorKind::Shutdown => StorageError::unavailable(backend, message),
        ErrorKind::InvalidArgument { .. } | ErrorKind::BsonSerialization(_) => {
            StorageError::rejected(backend, message)
        }
        ErrorKind::Command(c) => classify_code(c.code, message),
        ErrorKind::Write(WriteFailure::WriteError(w)) => classify_code(w.code, message),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
            write_concern_error(w.code, message)
        }
        ErrorKind::InsertMany(InsertManyError {
            write_concern_error: Some(w),
            ..
        }) => write_concern_error(w.code, message),
        ErrorKind::InsertMany(InsertManyError {
            write_errors: Some(errors),
            ..
        }) if !errors.is_empty() => classify_code(errors[0].code, message),
        // Invalid responses, internal driver errors and anything new: transient until proven
        // otherwise (the event is redelivered, not lost).
        _ => StorageError::unavailable(backend, message),
    }
}

/// The write happened on the primary but the write concern was not satisfied: retriable.
pub(super) fn write_concern_error(code: i32, message: String) -> StorageError {
    let message = format!("write concern not satisfied: {message}");
    match code {
        64 => StorageError::timeout(BACKEND, message),
        _ => StorageError::unavailable(BACKEND, message),
    }
}
