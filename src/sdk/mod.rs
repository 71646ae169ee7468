//! Write Connect extensions in Rust: the counterpart of `connect-eaas-core`.
//!
//! An [`Extension`] collects handlers for (event type, statuses) — `@event` —, declared
//! variables — `@variables` —, schedulables — `@schedulable` — and interactive / validation
//! handlers, then runs the same daemon ([`crate::App`]) with them. A handler is an async function
//! or closure taking the [`Event`] and a [`Context`] and returning an [`Outcome`]
//! (`Outcome::done()`, `skip`, `fail`, `retry`, `reschedule`, [`Outcome::slow_process_reschedule`],
//! [`Outcome::interactive`], [`Outcome::validation`]).
//!
//! The persist handler stays the default for every event type the configuration stores
//! (`events.persist`); an SDK handler replaces it for its event type unless it is declared with
//! [`Extension::after_store`]: then the event is stored first, the handler runs only when that
//! succeeded, and a storage failure is the answer (so `success` still means "stored").
//!
//! See `examples/` and `docs/extensions.md`.

mod context;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};
use tracing::Instrument;

pub use crate::connect::rest::Method;
pub use crate::events::{Event, EventType, Outcome, Status};
pub use crate::storage::ListQuery;
pub use context::{ApiError, Client, Context, Store, Variables};

use crate::connect::protocol::VariableDecl;
use crate::connect::ExtensionSetup;
use crate::events::persist::PersistHandler;
use crate::events::{Handler, Registry};
use crate::settings::Settings;
use crate::storage::SharedStorage;
use crate::telemetry::Metrics;
use crate::{App, AppError, AppOptions, ExtensionInstall};
use context::Runtime;

/// A user handler: anything async taking the event and its context. Closures and `async fn`s
/// `Fn(Event, Context) -> impl Future<Output = Outcome>` implement it.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Handles one event.
    async fn handle(&self, event: Event, ctx: Context) -> Outcome;
}

#[async_trait]
impl<F, Fut> EventHandler for F
where
    F: Fn(Event, Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    async fn handle(&self, event: Event, ctx: Context) -> Outcome {
        (self)(event, ctx).await
    }
}

/// One `.event(…)` / `.interactive(…)` declaration.
struct Declared {
    event_type: EventType,
    statuses: Vec<Status>,
    handler: Arc<dyn EventHandler>,
    after_store: bool,
}

/// One `.schedulable(…)` declaration.
struct Schedulable {
    name: String,
    description: String,
    handler: Arc<dyn EventHandler>,
}

/// An extension: handlers, variables and schedulables, run as the daemon ([`Extension::run`]).
///
/// ```no_run
/// use connect_extension_mongodb::sdk::{Context, Event, EventType, Extension, Outcome, Status};
///
/// async fn on_pending(event: Event, _ctx: Context) -> Outcome {
///     tracing::info!(request = %event.object_id, "stored");
///     Outcome::done()
/// }
///
/// fn main() {
///     Extension::new()
///         .event(EventType::AssetPurchaseRequestProcessing, &[Status::Pending], on_pending)
///         .after_store()
///         .run();
/// }
/// ```
#[derive(Default)]
pub struct Extension {
    events: Vec<Declared>,
    variables: Vec<VariableDecl>,
    schedulables: Vec<Schedulable>,
}

impl Extension {
    /// An extension with no handlers (the daemon as it is: it stores events).
    pub fn new() -> Self {
        Self::default()
    }

    /// `@event(event_type, statuses=[…])`: `handler` handles background events of `event_type`
    /// in one of `statuses`. One handler per event type (a later one replaces an earlier one,
    /// and the built-in persist handler for that type unless [`Extension::after_store`]).
    pub fn event(
        mut self,
        event_type: EventType,
        statuses: &[Status],
        handler: impl EventHandler,
    ) -> Self {
        self.events.push(Declared {
            event_type,
            statuses: statuses.to_vec(),
            handler: Arc::new(handler),
            after_store: false,
        });
        self
    }

    /// Makes the handler declared just before run after the event is stored (the persist
    /// handler first): the handler runs only when storing succeeded (or the document was already
    /// there); otherwise the storage outcome (`reschedule` / `fail`) is the answer.
    ///
    /// # Panics
    /// When no handler was declared before.
    pub fn after_store(mut self) -> Self {
        self.events
            .last_mut()
            .expect("after_store() follows an event(), interactive() or validation()")
            .after_store = true;
        self
    }

    /// An interactive handler (product actions, custom events): any status; answer with
    /// [`Outcome::interactive`] / [`Outcome::interactive_fail`].
    pub fn interactive(self, event_type: EventType, handler: impl EventHandler) -> Self {
        self.event(event_type, &[], handler)
    }

    /// A validation handler (`*_validation` types): the event's object is the draft; answer
    /// with [`Outcome::validation`] (the draft, e.g. with a parameter's `value_error` set) or
    /// [`Outcome::validation_fail`].
    pub fn validation(self, event_type: EventType, handler: impl EventHandler) -> Self {
        self.event(event_type, &[], handler)
    }

    /// `@variables([{name, initial_value, secure}])`: declared in `setup_request` after the
    /// daemon's own storage variables (a name the daemon already declares is not repeated).
    pub fn variable(mut self, name: &str, initial: &str, secure: bool) -> Self {
        self.variables.push(VariableDecl {
            name: name.to_string(),
            initial_value: initial.to_string(),
            secure,
        });
        self
    }

    /// `@schedulable(name, description)`: `handler` runs when the platform executes a schedule
    /// whose method is `name` (the event's object is the schedule). Answer `done` or `fail`.
    pub fn schedulable(
        mut self,
        name: &str,
        description: &str,
        handler: impl EventHandler,
    ) -> Self {
        self.schedulables.push(Schedulable {
            name: name.to_string(),
            description: description.to_string(),
            handler: Arc::new(handler),
        });
        self
    }

    /// Builds the daemon with this extension (as [`App::build`]).
    pub async fn build(self, settings: Settings) -> Result<App, AppError> {
        self.build_with(settings, AppOptions::default()).await
    }

    /// As [`Extension::build`], with other options (tests: Connect timings, a registry hook).
    pub async fn build_with(
        self,
        settings: Settings,
        mut options: AppOptions,
    ) -> Result<App, AppError> {
        options.extension = Some(self.into_install());
        App::build_with(settings, options).await
    }

    /// This extension as an installer for [`AppOptions::extension`] (to build the [`App`] with
    /// other options yourself).
    pub fn into_install(self) -> ExtensionInstall {
        Box::new(move |registry, settings, storage, metrics| {
            self.install(registry, settings, storage, metrics)
        })
    }

    /// Runs the daemon as the default binary's `run` does: settings from the environment (and
    /// `--config PATH`, default `config/local.toml` when present), logs, until SIGTERM / Ctrl-C. Exits the process with status 1 on failure.
    pub fn run(self) {
        let args: Vec<String> = std::env::args().collect();
        let file = args
            .iter()
            .position(|a| a == "--config")
            .and_then(|i| args.get(i + 1))
            .map(std::path::PathBuf::from);
        let settings = match Settings::load(file.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        };
        crate::telemetry::init(settings.telemetry.log_format);
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        let ok = runtime.block_on(async {
            let ok = match self.build(settings).await {
                Ok(app) => match app.run(crate::shutdown::on_signal()).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(error = %e, "stopped with an error");
                        false
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, "start-up failed");
                    false
                }
            };
            crate::telemetry::ship::shutdown(Duration::from_secs(2)).await;
            ok
        });
        if !ok {
            std::process::exit(1);
        }
    }

    /// Registers the handlers and returns what the Connect channel must add (called by
    /// [`App::build_with`]).
    pub(crate) fn install(
        self,
        registry: &mut Registry,
        settings: &Settings,
        storage: &Arc<SharedStorage>,
        metrics: &Arc<Metrics>,
    ) -> ExtensionSetup {
        let persist: Arc<dyn Handler> = Arc::new(PersistHandler::new(
            storage.clone(),
            settings.storage.id_strategy,
            settings.storage.reschedule_countdown,
            metrics.clone(),
        ));
        let rt = Arc::new(Runtime {
            rest: OnceLock::new(),
            live: OnceLock::new(),
            api_key: settings.connect.api_key.clone(),
            budget: Duration::from_secs(settings.connect.background_task_max_execution_time),
            storage: storage.clone(),
            persist: persist.clone(),
            declared: self.variables.clone(),
        });
        registry.keep_installation_key();
        for d in self.events {
            let name = format!("sdk:{}", d.event_type);
            registry.register(
                d.event_type,
                d.statuses,
                Arc::new(SdkHandler {
                    name,
                    rt: rt.clone(),
                    handler: d.handler,
                    persist: d.after_store.then(|| persist.clone()),
                }),
            );
        }
        let schedulables: Vec<Value> = self
            .schedulables
            .iter()
            .map(|s| json!({"method": s.name, "name": s.name, "description": s.description}))
            .collect();
        if !self.schedulables.is_empty() {
            registry.register(
                EventType::ScheduledExecution,
                Vec::new(),
                Arc::new(ScheduleDispatch {
                    rt: rt.clone(),
                    methods: self
                        .schedulables
                        .into_iter()
                        .map(|s| (s.name, s.handler))
                        .collect(),
                }),
            );
        }
        let on_build_rt = rt.clone();
        ExtensionSetup {
            variables: self.variables,
            schedulables,
            on_build: Some(Box::new(move |rest, live| {
                let _ = on_build_rt.rest.set(rest);
                let _ = on_build_rt.live.set(live);
            })),
        }
    }
}

/// The context of `event`, and the span its handler runs in.
fn context_of(rt: &Arc<Runtime>, event: &Event) -> (Context, tracing::Span) {
    let span = tracing::info_span!(
        "task",
        task_id = event.task_id.as_deref().unwrap_or(""),
        event_type = %event.event_type,
        object_id = %crate::sanitize::escape_control(&event.object_id),
    );
    let ctx = Context {
        rt: rt.clone(),
        key: event.installation_key.clone(),
        task_id: event.task_id.clone(),
    };
    (ctx, span)
}

/// A user handler in the registry: optionally after the persist handler, in the task's span.
struct SdkHandler {
    name: String,
    rt: Arc<Runtime>,
    handler: Arc<dyn EventHandler>,
    persist: Option<Arc<dyn Handler>>,
}

#[async_trait]
impl Handler for SdkHandler {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(&self, event: &Event) -> Outcome {
        self.handle_owned(event.clone()).await
    }

    async fn handle_owned(&self, event: Event) -> Outcome {
        let (ctx, span) = context_of(&self.rt, &event);
        async {
            let (mut stored_id, mut stored_duplicate) = (None, false);
            if let Some(persist) = &self.persist {
                match persist.handle(&event).await {
                    Outcome::Done {
                        document_id,
                        duplicate,
                        ..
                    } => (stored_id, stored_duplicate) = (document_id, duplicate),
                    not_stored => return not_stored,
                }
            }
            match self.handler.handle(event, ctx).await {
                // `done()` after the store names the stored document (logs, HTTP answers).
                Outcome::Done {
                    document_id: None,
                    data,
                    ..
                } if stored_id.is_some() => Outcome::Done {
                    document_id: stored_id,
                    duplicate: stored_duplicate,
                    data,
                },
                other => other,
            }
        }
        .instrument(span)
        .await
    }
}

/// The `scheduled_execution` handler: the schedule's `method` picks the schedulable.
struct ScheduleDispatch {
    rt: Arc<Runtime>,
    methods: Vec<(String, Arc<dyn EventHandler>)>,
}

#[async_trait]
impl Handler for ScheduleDispatch {
    fn name(&self) -> &str {
        "sdk:schedulables"
    }

    async fn handle(&self, event: &Event) -> Outcome {
        let method = event
            .object
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("");
        let Some((_, handler)) = self.methods.iter().find(|(m, _)| m == method) else {
            return Outcome::fail(format!(
                "schedule {}: no schedulable method `{}` in this extension",
                event.object_id,
                crate::sanitize::escape_control(method)
            ));
        };
        let (ctx, span) = context_of(&self.rt, event);
        handler.handle(event.clone(), ctx).instrument(span).await
    }
}
