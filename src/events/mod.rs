//! Events: the model ([`types`]), the handler registry and dispatch ([`registry`]), and the
//! built-in handlers ([`persist`], [`validation`]).

pub mod labels;
pub mod persist;
pub mod registry;
pub mod settings;
pub mod types;
pub mod validation;

pub use registry::{
    Handler, Outcome, Registration, Registry, MIN_RESCHEDULE_COUNTDOWN, MIN_SLOW_PROCESS_COUNTDOWN,
};
pub use types::{Category, Event, EventType, Source, Status};

use std::sync::Arc;

use crate::config::error::ConfigError;
use crate::storage::SharedStorage;
use crate::telemetry::Metrics;

/// The registry the daemon runs with: the persist handler for every configured
/// (event type, statuses) rule (`events.persist`, default: the tutorial's purchase-request statuses).
pub fn default_registry(
    settings: &settings::Settings,
    storage_settings: &crate::storage::Settings,
    storage: Arc<SharedStorage>,
    metrics: Arc<Metrics>,
) -> Result<Registry, ConfigError> {
    let persist: Arc<dyn Handler> = Arc::new(persist::PersistHandler::new(
        storage,
        storage_settings.id_strategy,
        storage_settings.reschedule_countdown,
        metrics.clone(),
    ));
    let mut registry = Registry::new().with_metrics(metrics);
    for rule in settings.persist_rules()? {
        registry.register(rule.event_type, rule.statuses, persist.clone());
    }
    Ok(registry)
}
