//! Storage errors: a backend, an [`ErrorKind`] that alone decides retriable vs permanent, and a
//! secret-free message, with an optional source.
//!
//! Build them with the constructors ([`StorageError::unavailable`], …), attach the underlying
//! error with [`StorageError::with_source`]; read them with [`StorageError::kind`],
//! [`StorageError::backend`], [`StorageError::message`]. Tests name a kind with
//! `e.kind() == ErrorKind::Config`.
//!
//! The `Display` text is the kind's prefix and the message only; the source is reachable through
//! [`std::error::Error::source`] (for logs, [`crate::sanitize::error_chain`]) and never enters the
//! message: attach only sources without secrets (a `reqwest` error `without_url()`, …).

use std::fmt;
use std::sync::Arc;

/// What went wrong, as far as a caller must know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The backend could not be reached or did not answer (network, server selection, 5xx, 429).
    Unavailable,
    /// The operation did not finish in time; it may or may not have been committed.
    Timeout,
    /// The backend refused this document for good (invalid document, too large).
    RejectedDocument,
    /// The backend's settings are wrong (bad URI, missing collection, refused credentials…).
    Config,
    /// A bug or corrupted state on our side.
    Internal,
}

impl ErrorKind {
    /// Whether trying again later can succeed. Retriable errors become `reschedule`, the others `fail`.
    ///
    /// Only [`ErrorKind::RejectedDocument`] — an error about *this document* — is permanent.
    /// Everything about the store, the network or the credentials (`Config` included: a wrong key
    /// or a missing endpoint is fixed by the operator, and the redelivery then succeeds) and
    /// anything unexplained (`Internal`) is retriable: the deterministic `_id` makes a redelivery
    /// safe, a wrong `fail` loses the event.
    pub fn is_retriable(self) -> bool {
        self != Self::RejectedDocument
    }
}

/// The underlying error of a [`StorageError`]: shared, so the error stays `Clone`.
pub type ErrorSource = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A storage error, classified once by its [`ErrorKind`] ([`StorageError::is_retriable`]).
#[derive(Debug, Clone)]
pub struct StorageError {
    kind: ErrorKind,
    backend: &'static str,
    message: String,
    source: Option<ErrorSource>,
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timed out",
            ErrorKind::RejectedDocument => "rejected the request",
            ErrorKind::Config => "misconfigured",
            ErrorKind::Internal => "internal error",
        };
        write!(f, "{} storage {what}: {}", self.backend, self.message)
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl StorageError {
    /// An error of `kind` from `backend`.
    pub fn new(kind: ErrorKind, backend: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            backend,
            message: message.into(),
            source: None,
        }
    }
    /// [`ErrorKind::Unavailable`].
    pub fn unavailable(backend: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, backend, message)
    }
    /// [`ErrorKind::Timeout`].
    pub fn timeout(backend: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, backend, message)
    }
    /// [`ErrorKind::RejectedDocument`].
    pub fn rejected(backend: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::RejectedDocument, backend, message)
    }
    /// [`ErrorKind::Config`].
    pub fn config(backend: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, backend, message)
    }
    /// [`ErrorKind::Internal`].
    pub fn internal(backend: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, backend, message)
    }

    /// The same error with `source` as its cause ([`std::error::Error::source`]); the message
    /// and the `Display` text are unchanged. `source` must carry no secret.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The same error without its source (e.g. when the source may hold a secret).
    pub fn without_source(mut self) -> Self {
        self.source = None;
        self
    }

    /// The source's cause chain and its `Debug` text, to check it for secrets before keeping it.
    pub fn source_text(&self) -> Option<String> {
        self.source
            .as_deref()
            .map(|s| format!("{}\n{s:?}", crate::sanitize::error_chain(s, false)))
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The backend's short name ("local", "driver", "data_api", "storage" before one is chosen).
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// What happened, secret-free (without the kind's prefix).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether trying again later can succeed ([`ErrorKind::is_retriable`]).
    pub fn is_retriable(&self) -> bool {
        self.kind.is_retriable()
    }

    /// Whether this is an error about the document itself (the event is answered `fail`).
    pub fn is_permanent(&self) -> bool {
        !self.is_retriable()
    }

    /// The same error with its message rewritten (e.g. to scrub a secret), kind and source kept.
    pub fn map_message(mut self, f: impl FnOnce(String) -> String) -> Self {
        self.message = f(self.message);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_the_kind_prefix_and_the_message_without_the_source() {
        let io = std::io::Error::other("secret cause");
        let cases = [
            (
                StorageError::unavailable("driver", "m"),
                "driver storage unavailable: m",
            ),
            (
                StorageError::timeout("local", "m"),
                "local storage timed out: m",
            ),
            (
                StorageError::rejected("data_api", "m"),
                "data_api storage rejected the request: m",
            ),
            (
                StorageError::config("storage", "m"),
                "storage storage misconfigured: m",
            ),
            (
                StorageError::internal("local", "m"),
                "local storage internal error: m",
            ),
        ];
        for (e, shown) in cases {
            let e = e.with_source(std::io::Error::other(io.to_string()));
            assert_eq!(e.to_string(), shown);
            let cause = std::error::Error::source(&e).expect("source kept");
            assert_eq!(cause.to_string(), "secret cause");
            assert_eq!(e.clone().to_string(), shown);
        }
    }
}
