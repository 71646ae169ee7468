//! SQLite errors classified: only what is about the document is permanent.

use crate::storage::error::StorageError;

/// The backend's name in errors, logs and metrics.
pub(super) const BACKEND: &str = "local";

/// Whether a SQLite error is about the document being inserted (permanent for that document)
/// rather than about the store (retriable).
pub(super) fn is_document_error(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::TooBig)
}

/// Classifies a SQLite error: only `TOOBIG` is about the document; every other SQLite code
/// (read-only, corrupt, not a database, out of memory, permission, I/O, full, cannot open, busy,
/// locked, protocol…) is about the store and retriable; anything else is `Internal` (retriable).
pub fn sql_err(e: rusqlite::Error) -> StorageError {
    let message = e.to_string();
    let err = if is_document_error(&e) {
        StorageError::rejected(BACKEND, message)
    } else if e.sqlite_error_code().is_some() {
        StorageError::unavailable(BACKEND, message)
    } else {
        StorageError::internal(BACKEND, message)
    };
    err.with_source(e)
}
