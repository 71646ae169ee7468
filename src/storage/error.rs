//! Storage errors: a backend, an [`ErrorKind`] that alone decides retriable vs permanent, and a
//! secret-free message.
//!
//! Build them with the constructors ([`StorageError::unavailable`], …); read them with
//! [`StorageError::kind`], [`StorageError::backend`], [`StorageError::message`]. The variants stay
//! matchable (`StorageError::Rejected { .. }`), one per kind.

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

/// Storage errors, classified once by their [`ErrorKind`] ([`StorageError::is_retriable`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// [`ErrorKind::Unavailable`].
    #[error("{backend} storage unavailable: {message}")]
    Unavailable {
        backend: &'static str,
        message: String,
    },
    /// [`ErrorKind::Timeout`].
    #[error("{backend} storage timed out: {message}")]
    Timeout {
        backend: &'static str,
        message: String,
    },
    /// [`ErrorKind::RejectedDocument`].
    #[error("{backend} storage rejected the request: {message}")]
    Rejected {
        backend: &'static str,
        message: String,
    },
    /// [`ErrorKind::Config`].
    #[error("{backend} storage misconfigured: {message}")]
    Config {
        backend: &'static str,
        message: String,
    },
    /// [`ErrorKind::Internal`].
    #[error("{backend} storage internal error: {message}")]
    Internal {
        backend: &'static str,
        message: String,
    },
}

impl StorageError {
    /// An error of `kind` from `backend`.
    pub fn new(kind: ErrorKind, backend: &'static str, message: impl Into<String>) -> Self {
        Self::from_parts(kind, backend, message.into())
    }
    pub fn unavailable(backend: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, backend, message)
    }
    pub fn timeout(backend: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, backend, message)
    }
    pub fn rejected(backend: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::RejectedDocument, backend, message)
    }
    pub fn config(backend: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, backend, message)
    }
    pub fn internal(backend: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, backend, message)
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Rejected { .. } => ErrorKind::RejectedDocument,
            Self::Config { .. } => ErrorKind::Config,
            Self::Internal { .. } => ErrorKind::Internal,
        }
    }

    /// The backend's short name ("local", "driver", "data_api", "storage" before one is chosen).
    pub fn backend(&self) -> &'static str {
        self.parts().0
    }

    /// What happened, secret-free (without the kind's prefix).
    pub fn message(&self) -> &str {
        self.parts().1
    }

    /// Whether trying again later can succeed ([`ErrorKind::is_retriable`]).
    pub fn is_retriable(&self) -> bool {
        self.kind().is_retriable()
    }

    /// Whether this is an error about the document itself (the event is answered `fail`).
    pub fn is_permanent(&self) -> bool {
        !self.is_retriable()
    }

    /// The same error with its message rewritten (e.g. to scrub a secret), kind kept.
    pub fn map_message(self, f: impl FnOnce(String) -> String) -> Self {
        let (kind, backend, message) = self.into_parts();
        Self::from_parts(kind, backend, f(message))
    }

    fn parts(&self) -> (&'static str, &str) {
        match self {
            Self::Unavailable {
                backend, message, ..
            }
            | Self::Timeout {
                backend, message, ..
            }
            | Self::Rejected {
                backend, message, ..
            }
            | Self::Config {
                backend, message, ..
            }
            | Self::Internal {
                backend, message, ..
            } => (backend, message),
        }
    }

    fn into_parts(self) -> (ErrorKind, &'static str, String) {
        let kind = self.kind();
        match self {
            Self::Unavailable { backend, message }
            | Self::Timeout { backend, message }
            | Self::Rejected { backend, message }
            | Self::Config { backend, message }
            | Self::Internal { backend, message } => (kind, backend, message),
        }
    }

    fn from_parts(kind: ErrorKind, backend: &'static str, message: String) -> Self {
        match kind {
            ErrorKind::Unavailable => Self::Unavailable { backend, message },
            ErrorKind::Timeout => Self::Timeout { backend, message },
            ErrorKind::RejectedDocument => Self::Rejected { backend, message },
            ErrorKind::Config => Self::Config { backend, message },
            ErrorKind::Internal => Self::Internal { backend, message },
        }
    }
}
