//! Storage: one object-safe trait, several backends chosen by configuration.
//!
//! | backend    | file          | idempotent save | bulk            | durability                        |
//! |------------|---------------|-----------------|-----------------|-----------------------------------|
//! | `local`    | `local/`      | yes (`_id` PK)  | one transaction | SQLite WAL, `synchronous=FULL`    |
//! | `driver`   | `driver/`     | yes (E11000)    | `insert_many`   | write concern (default majority)  |
//! | `data_api` | `data_api/`   | yes (dup. key)  | `insertMany`    | whatever the gateway's cluster has |
//! | `postgres` | `postgres/`   | yes (`id` PK)  | one `INSERT … unnest` | the server's (`synchronous_commit`) |
//! | `none`     | `discard.rs`  | —               | —               | none: keeps nothing (benchmarks only) |
//!
//! **Document shape.** The Connect object exactly as received or fetched (the tutorial stores the
//! request as-is), plus `_id` and one reserved key, `_connect`, holding our metadata (event type,
//! status, object id, task id, source, received time). The object's own keys are never touched.
//!
//! **Idempotency.** `_id` is deterministic (see [`IdStrategy`]), so a redelivered event finds its
//! document already there; backends report that as [`SaveOutcome::Duplicate`], which callers count
//! as success.
//!
//! **Errors.** A [`StorageError`] has a backend, a message and an [`ErrorKind`];
//! [`ErrorKind::is_retriable`] is the one place that decides whether an event is answered
//! `reschedule` (transient: try again later, nothing lost) or `fail` (permanent). Only
//! [`ErrorKind::RejectedDocument`] — about this document — is
//! permanent. Backends build errors with the constructors (`StorageError::unavailable(…)`, …).
//!
//! **Health.** [`SharedStorage`] keeps one health state fed by every save result and every
//! readiness ping ([`SharedStorage::ping`]): the change healthy → failing is logged at ERROR once,
//! with the (secret-free) reason; failing → healthy at INFO once; while it stays failing, each
//! event logs at WARN at most. `/ready` answers 503 with the reason while the ping fails.

/// The registered backends: each line is a folder (or file) that defines `pub const DESCRIPTOR`.
/// Adding a backend is its folder plus one line here (ARCHITECTURE.md).
macro_rules! backends {
    ($($(#[$doc:meta])* $name:ident,)+) => {
        $($(#[$doc])* pub mod $name;)+
        /// Every registered backend, in the order `auto` considers them and `check-config` lists them.
        pub const BACKENDS: &[&backend::Backend] = &[$(&$name::DESCRIPTOR),+];
    };
}

backends! {
    /// `local`: SQLite on the local disk (the embedded default).
    local,
    /// `driver`: MongoDB through the official driver.
    driver,
    /// `data_api`: MongoDB Atlas through the Data API (HTTPS).
    data_api,
    /// `postgres`: PostgreSQL (tokio-postgres, group commit).
    postgres,
    /// `none`: keeps nothing (benchmarks only).
    discard,
}

pub mod backend;
pub mod bson_json;
#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
mod error;
pub mod fanout;
pub(crate) mod group;
pub mod settings;
pub mod store;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::config::error::ConfigError;
pub use backend::{Backend, Common, IdStrategy};
pub use error::{ErrorKind, StorageError};
pub use settings::{BackendKind, Settings};
pub use store::{
    format_timestamp, EventDocument, ListQuery, Provenance, SaveOutcome, Storage, META_KEY,
};

/// A change of the storage's health (see [`Health::record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthChange {
    /// Nothing changed.
    Same,
    /// Healthy → failing, with the reason (logged at ERROR, once).
    Failing(String),
    /// Failing → healthy (logged at INFO, once).
    Recovered,
}

/// Whether the store works, fed by every save and ping result; logs each state change once.
#[derive(Debug, Default)]
pub struct Health {
    /// `Some(reason)` while failing.
    failing: Mutex<Option<String>>,
}

impl Health {
    /// Records one result. A store fault (a retriable error) makes it failing; a success makes it
    /// healthy; an error about a document ([`ErrorKind::RejectedDocument`]) says nothing about the
    /// store and changes nothing. Logs the change healthy → failing at ERROR and failing →
    /// healthy at INFO, each once; a fault while already failing only updates the reason.
    pub fn record<T>(&self, backend: &str, result: &Result<T, StorageError>) -> HealthChange {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(_) => match failing.take() {
                Some(reason) => {
                    tracing::info!(backend, previous_error = %reason, "storage recovered");
                    HealthChange::Recovered
                }
                None => HealthChange::Same,
            },
            Err(e) if e.is_retriable() => {
                let reason = e.to_string();
                let change = if failing.is_none() {
                    tracing::error!(backend, error = %reason, "storage failing: events are answered reschedule/503 until it recovers");
                    HealthChange::Failing(reason.clone())
                } else {
                    tracing::debug!(backend, error = %reason, "storage still failing");
                    HealthChange::Same
                };
                *failing = Some(reason);
                change
            }
            Err(_) => HealthChange::Same,
        }
    }

    /// Why the store is failing, if it is.
    pub fn failing_reason(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The storage in use, swappable at run time (live configuration from Connect): an event takes the
/// current `Arc` once and finishes on it, even if a new backend is swapped in meanwhile.
pub struct SharedStorage {
    current: RwLock<Arc<dyn Storage>>,
    health: Health,
}

impl SharedStorage {
    /// Longest [`SharedStorage::ping`] waits for the backend.
    pub const PING_TIMEOUT: Duration = Duration::from_secs(5);

    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self {
            current: RwLock::new(storage),
            health: Health::default(),
        }
    }
    pub fn current(&self) -> Arc<dyn Storage> {
        self.current.read().expect("storage lock").clone()
    }
    /// Installs `storage`; returns the previous one (which in-flight saves may still be using).
    pub fn replace(&self, storage: Arc<dyn Storage>) -> Arc<dyn Storage> {
        std::mem::replace(&mut *self.current.write().expect("storage lock"), storage)
    }

    /// The health state (fed by [`SharedStorage::record_save`] and [`SharedStorage::ping`]).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Records a save result of `backend` in the health state.
    pub fn record_save(&self, backend: &str, result: &Result<SaveOutcome, StorageError>) {
        self.health.record(backend, result);
    }

    /// Pings the current backend (bounded by [`SharedStorage::PING_TIMEOUT`]) and records the
    /// result; the error is the reason, secret-free.
    pub async fn ping(&self) -> Result<(), StorageError> {
        let storage = self.current();
        let result = match tokio::time::timeout(Self::PING_TIMEOUT, storage.ping()).await {
            Ok(r) => r,
            Err(_) => Err(StorageError::timeout(
                storage.name(),
                format!(
                    "ping got no answer within {} ms",
                    Self::PING_TIMEOUT.as_millis()
                ),
            )),
        };
        self.health.record(storage.name(), &result);
        result
    }
}

/// Builds one backend from its section.
pub async fn connect_backend(
    kind: BackendKind,
    settings: &Settings,
) -> Result<Arc<dyn Storage>, StorageError> {
    let section = settings.section_of(kind.as_str()).ok_or_else(|| {
        StorageError::config(
            "storage",
            format!("backend `{}` is not registered", kind.as_str()),
        )
    })?;
    (kind.0.open)(section, &settings.common()).await
}

/// Builds the configured storage: one backend, or a fan-out over several (every event must be
/// committed by all of them), with reads served by the primary.
pub async fn connect(
    settings: &(impl AsRef<Settings> + ?Sized),
) -> Result<Arc<dyn Storage>, StorageError> {
    let settings = settings.as_ref();
    let config_err = |e: ConfigError| StorageError::config("storage", e.to_string());
    let kinds = settings.backend_list().map_err(config_err)?;
    let primary = settings.primary_backend().map_err(config_err)?;
    let mut backends = Vec::with_capacity(kinds.len());
    for kind in &kinds {
        backends.push(connect_backend(*kind, settings).await?);
    }
    if backends.len() == 1 {
        return Ok(backends.pop().expect("one backend"));
    }
    let primary_index = kinds.iter().position(|k| *k == primary).unwrap_or(0);
    Ok(Arc::new(fanout::FanOut::new(backends, primary_index)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    #[test]
    fn timestamps_sort_as_strings() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let a = format_timestamp(t);
        let b = format_timestamp(t + time::Duration::nanoseconds(1_500_000));
        let c = format_timestamp(t + time::Duration::seconds(1));
        assert_eq!(a, "2023-11-14T22:13:20.000000000Z");
        assert!(a < b && b < c, "{a} {b} {c}");
    }

    /// Captures the log of `f` (all levels).
    fn captured_log(f: impl FnOnce()) -> String {
        use std::io::Write;
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn health_logs_each_state_change_once() {
        let down = || -> Result<(), StorageError> {
            Err(StorageError::unavailable(
                "local",
                "attempt to write a readonly database",
            ))
        };
        let rejected =
            || -> Result<(), StorageError> { Err(StorageError::rejected("local", "too big")) };
        let health = Health::default();
        let mut changes = Vec::new();
        let log = captured_log(|| {
            changes.push(health.record("local", &Ok(())));
            changes.push(health.record("local", &rejected()));
            for _ in 0..5 {
                changes.push(health.record("local", &down()));
            }
            changes.push(health.record("local", &rejected()));
            assert!(health
                .failing_reason()
                .unwrap()
                .contains("readonly database"));
            for _ in 0..3 {
                changes.push(health.record("local", &Ok(())));
            }
            changes.push(health.record("local", &down()));
        });
        use HealthChange::*;
        let failing =
            || Failing("local storage unavailable: attempt to write a readonly database".into());
        assert_eq!(
            changes,
            vec![
                Same,
                Same,
                failing(),
                Same,
                Same,
                Same,
                Same,
                Same,
                Recovered,
                Same,
                Same,
                failing()
            ]
        );
        let errors: Vec<_> = log.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 2, "one ERROR per change to failing:\n{log}");
        assert!(errors[0].contains("readonly database"), "{log}");
        let infos: Vec<_> = log.lines().filter(|l| l.contains(" INFO ")).collect();
        assert_eq!(infos.len(), 1, "one INFO per recovery:\n{log}");
        assert!(infos[0].contains("storage recovered"), "{log}");
        assert!(
            !log.lines().any(
                |l| l.contains("WARN") || l.contains("ERROR") && !l.contains("storage failing")
            ),
            "{log}"
        );
    }

    #[test]
    fn retriable_classification() {
        let b = "x";
        let m = String::new;
        assert!(StorageError::unavailable(b, m()).is_retriable());
        assert!(StorageError::timeout(b, m()).is_retriable());
        assert!(!StorageError::rejected(b, m()).is_retriable());
        assert!(StorageError::config(b, m()).is_retriable());
        assert!(StorageError::internal(b, m()).is_retriable());
    }
}
