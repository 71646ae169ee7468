//! Error classification — the one place: [`SQLSTATES`] (a SQLSTATE or its class → an
//! [`ErrorKind`]), [`classify_sqlstate`], and [`classify`] for a `tokio_postgres` error.
//!
//! Retriable (the event is answered `reschedule`): no SQLSTATE at all (refused, reset, closed),
//! connection exceptions, serialization failures and deadlocks, insufficient resources, operator
//! intervention (admin/crash shutdown), a read-only standby, locks, system errors; `Timeout` for a
//! cancelled statement. `Config` (retriable too, loud, `/ready` 503): authentication, a missing
//! database, table or privilege. `Rejected` (the document's `fail`): the data classes 22 and 23,
//! and 54000 (a value too large for an index). `Internal`: our own SQL is wrong (other class 42,
//! a protocol violation) or the server reports corruption (XX). Anything not in the table:
//! `Unavailable` (losing an event is worse than redelivering it).

use deadpool_postgres::PoolError;
use std::sync::Arc;
use crate::storage::error::StorageError;
use crate::storage::ErrorKind;

/// The backend's name in errors, logs and metrics.
pub(super) const BACKEND: &str = "postgres";

use ErrorKind::{Config, Internal, RejectedDocument as Rejected, Timeout, Unavailable};

/// SQLSTATE (5 characters) or class (its first 2) → kind. An exact code wins over its class.
pub const SQLSTATES: &[(&str, ErrorKind)] = &[
    // class 08: connection exception
    ("08", Unavailable),
    ("08P01", Internal), // protocol_violation
    // class 40: transaction rollback
    ("40", Unavailable), // 40000, 40001 serialization_failure, 40P01 deadlock_detected
    ("40002", Rejected), // transaction_integrity_constraint_violation
    ("40003", Timeout),  // statement_completion_unknown
    // class 53: insufficient resources (disk full, out of memory, too many connections)
    ("53", Unavailable),
    // class 57: operator intervention
    ("57", Unavailable), // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now…
    ("57014", Timeout),  // query_canceled (statement_timeout)
    ("57P04", Config),   // database_dropped
    // read-only standby (e.g. during a failover)
    ("25006", Unavailable),
    // locks and system errors
    ("55P03", Unavailable), // lock_not_available
    ("55006", Unavailable), // object_in_use
    ("58", Unavailable),    // 58000 system_error, 58030 io_error
    // the data is wrong: this document's `fail`
    ("22", Rejected), // 22P02 bad json, 22P05 \u0000 in jsonb, 22021 NUL byte, 22001 too long…
    ("23", Rejected), // 23502 not null, 23505 a second unique index, 23514 check…
    ("54000", Rejected), // program_limit_exceeded (an index row too large)
    // settings
    ("28", Config),    // 28000 invalid_authorization_specification, 28P01 invalid_password
    ("3D000", Config), // invalid_catalog_name: no such database
    ("42501", Config), // insufficient_privilege
    ("42P01", Config), // undefined_table (dropped under us)
    // our bug / corruption
    ("42", Internal), // 42601 syntax_error, 42703 undefined_column…
    ("XX", Internal), // XX000 internal_error, XX001 data_corrupted
];

/// The kind of a SQLSTATE: its exact entry in [`SQLSTATES`], else its class's, else `Unavailable`.
pub fn kind_of(code: &str) -> ErrorKind {
    let exact = SQLSTATES.iter().find(|(c, _)| *c == code);
    let class = || {
        SQLSTATES
            .iter()
            .find(|(c, _)| c.len() == 2 && code.get(..2) == Some(*c))
    };
    exact.or_else(class).map_or(Unavailable, |(_, k)| *k)
}

/// A storage error of the kind of `code` ([`kind_of`]).
pub fn classify_sqlstate(code: &str, message: impl Into<String>) -> StorageError {
    StorageError::new(kind_of(code), BACKEND, message)
}

/// A short description of a `tokio_postgres` error: the server's severity, SQLSTATE, message
/// and detail, or the client's error chain.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(" (");
                s.push_str(d);
                s.push(')');
            }
            s
        }
        None => crate::sanitize::error_chain(e, false),
    }
}

/// Classifies a `tokio_postgres` error: by SQLSTATE when the server sent one; else (I/O,
/// refused, closed connection, TLS) `Unavailable`. The message is secret-free only if `e` is: the
/// caller scrubs it ([`super::scrub`]).
pub fn classify(e: &tokio_postgres::Error) -> StorageError {
    let message = describe(e);
    match e.code() {
        Some(state) => classify_sqlstate(state.code(), message),
        None => StorageError::unavailable(BACKEND, message),
    }
}

/// Replaces the URL's password (as written and decoded) by `***` in messages.
#[derive(Debug, Clone)]
pub(crate) struct Scrub(pub(super) Arc<[String]>);

impl Scrub {
    pub(super) fn text(&self, s: String) -> String {
        self.0
            .iter()
            .filter(|x| !x.is_empty())
            .fold(s, |acc, secret| acc.replace(secret.as_str(), "***"))
    }
    pub(super) fn storage(&self, e: StorageError) -> StorageError {
        e.map_message(|m| self.text(m))
    }
    /// [`classify`], scrubbed.
    pub(super) fn error(&self, e: &tokio_postgres::Error) -> StorageError {
        self.storage(classify(e))
    }
}

/// A pool error: the backend's error classified, a pool timeout or a closed pool `Unavailable`.
pub(crate) fn pool_error(e: PoolError, scrub: &Scrub) -> StorageError {
    match e {
        PoolError::Backend(e) => scrub.error(&e),
        PoolError::Timeout(t) => StorageError::unavailable(
            BACKEND,
            format!("no connection to PostgreSQL in time ({t:?} timeout of the pool)"),
        ),
        PoolError::Closed => StorageError::unavailable(BACKEND, "the connection pool is closed"),
        other => scrub.storage(StorageError::unavailable(BACKEND, other.to_string())),
    }
}
