//! Configuration: `config/default.toml` (embedded) < optional file < environment variables.
//!
//! Environment variables are mapped explicitly, one by one ([`ENV_VARS`]), rather than through a
//! prefix convention, because the names are fixed by the tutorial (DATA_API_ENDPOINT, DB, …) and by
//! the Python runner (API_KEY, ENVIRONMENT_ID, …). The table is also the single place that says which
//! settings are secrets.
//!
//! Validation happens once, at start-up ([`Settings::validate`], also run by `check-config` and on
//! every storage rebuild from extension variables); every error names the variable, the key and
//! the accepted values, so a typo in a container's environment fails fast and clearly. Every
//! numeric setting has a range ([`Settings::bounds`]): no value can overflow a timer, a semaphore
//! or an allocation later.
//!
//! Secrets are [`Secret`]s; URLs that may carry credentials are shown only through [`redact_url`]
//! ([`SecretUrl`]): the password of the userinfo and every query value not on
//! [`URL_QUERY_ALLOW_LIST`] become `***`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};

use crate::events::{EventType, Status};

/// The documented defaults, embedded so the binary runs with no file around it.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// One environment variable and the configuration key it overrides.
#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    pub name: &'static str,
    pub key: &'static str,
    pub secret: bool,
}

const fn var(name: &'static str, key: &'static str) -> EnvVar {
    EnvVar {
        name,
        key,
        secret: false,
    }
}
const fn secret(name: &'static str, key: &'static str) -> EnvVar {
    EnvVar {
        name,
        key,
        secret: true,
    }
}

/// Every environment variable the daemon reads, and the key it sets.
pub const ENV_VARS: &[EnvVar] = &[
    var("HTTP_LISTEN", "http.listen"),
    secret("HTTP_TOKEN", "http.token"),
    var("HTTP_MAX_BODY_BYTES", "http.max_body_bytes"),
    var("HTTP_ALLOWED_HOSTS", "http.allowed_hosts"),
    var("HTTP_HEADER_TIMEOUT_MS", "http.header_timeout_ms"),
    var("HTTP_BODY_TIMEOUT_MS", "http.body_timeout_ms"),
    var("HTTP_MAX_CONNECTIONS", "http.max_connections"),
    var("STORAGE_BACKENDS", "storage.backends"),
    var("STORAGE_PRIMARY", "storage.primary"),
    var("ID_STRATEGY", "storage.id_strategy"),
    var("DB", "storage.database"),
    var("RESCHEDULE_COUNTDOWN", "storage.reschedule_countdown"),
    var("LOCAL_DATA_DIR", "storage.local.path"),
    secret("MONGODB_URI", "storage.driver.uri"),
    var("DB_HOST", "storage.driver.host"),
    var("DB_USER", "storage.driver.user"),
    secret("DB_PASSWORD", "storage.driver.password"),
    var("DRIVER_COLLECTION", "storage.driver.collection"),
    var("DRIVER_WRITE_CONCERN", "storage.driver.write_concern"),
    var(
        "DRIVER_SERVER_SELECTION_TIMEOUT_MS",
        "storage.driver.server_selection_timeout_ms",
    ),
    var("DRIVER_BATCH_MAX", "storage.driver.batch_max"),
    var("DRIVER_BATCH_WAIT_MS", "storage.driver.batch_wait_ms"),
    var(
        "DRIVER_OPERATION_TIMEOUT_MS",
        "storage.driver.operation_timeout_ms",
    ),
    var("DATA_API_ENDPOINT", "storage.data_api.endpoint"),
    secret("DATA_API_KEY", "storage.data_api.api_key"),
    secret("DATA_API_BEARER_TOKEN", "storage.data_api.bearer_token"),
    var("DATA_API_EMAIL", "storage.data_api.email"),
    secret("DATA_API_PASSWORD", "storage.data_api.password"),
    var("CLUSTER", "storage.data_api.cluster"),
    var("HTTP_COLLECTION", "storage.data_api.collection"),
    var("DATA_API_EJSON", "storage.data_api.ejson"),
    var("DATA_API_TIMEOUT_MS", "storage.data_api.request_timeout_ms"),
    var("DATA_API_DEADLINE_MS", "storage.data_api.deadline_ms"),
    var("PERSIST_EVENTS", "events.persist"),
    secret("API_KEY", "connect.api_key"),
    var("ENVIRONMENT_ID", "connect.environment_id"),
    var("INSTANCE_ID", "connect.instance_id"),
    var("SERVER_ADDRESS", "connect.server_address"),
    var("API_ADDRESS", "connect.api_address"),
    var("CONNECT_INSECURE", "connect.insecure"),
    var(
        "BACKGROUND_TASK_MAX_EXECUTION_TIME",
        "connect.background_task_max_execution_time",
    ),
    var(
        "INTERACTIVE_TASK_MAX_EXECUTION_TIME",
        "connect.interactive_task_max_execution_time",
    ),
    var("CONNECT_SETUP_TIMEOUT", "connect.setup_timeout"),
    var("CONNECT_MAX_IN_FLIGHT", "connect.max_in_flight"),
    var("CONNECT_REST_CONCURRENCY", "connect.rest_concurrency"),
    var("CONNECT_MAX_FRAME_BYTES", "connect.max_frame_bytes"),
    var("CONNECT_PING_INTERVAL", "connect.ping_interval"),
    var("CONNECT_RESULT_BUFFER", "connect.result_buffer"),
    var("CONNECT_RESULT_BUFFER_BYTES", "connect.result_buffer_bytes"),
    var("CONNECT_PERSIST_INTERACTIVE", "connect.persist_interactive"),
    var("RUNNER_VERSION", "connect.runner_version"),
    var("EXTENSION_AUDIENCE", "connect.audience"),
    var("EXTENSION_README_URL", "connect.readme_url"),
    var("EXTENSION_CHANGELOG_URL", "connect.changelog_url"),
    var("LOG_FORMAT", "telemetry.log_format"),
    var("CONNECT_LOG_SHIP", "telemetry.log_ship"),
    var("CONNECT_LOG_SHIP_URL", "telemetry.log_ship_url"),
    var("CONNECT_LOG_SHIP_QUEUE", "telemetry.log_ship_queue"),
    var("CONNECT_LOG_SHIP_FLUSH_MS", "telemetry.log_ship_flush_ms"),
    var(
        "CONNECT_LOG_SHIP_TIMEOUT_MS",
        "telemetry.log_ship_timeout_ms",
    ),
    var("SHUTDOWN_GRACE", "shutdown.grace"),
];

/// The variable that overrides `key`, if any.
pub fn env_name_for(key: &str) -> Option<&'static str> {
    ENV_VARS.iter().find(|v| v.key == key).map(|v| v.name)
}

/// The accepted range of one numeric setting (see [`Settings::bounds`]).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub key: &'static str,
    pub value: u64,
    pub min: u64,
    pub max: u64,
    pub unit: &'static str,
    pub why: &'static str,
}

impl Bound {
    fn new(key: &'static str, value: u64, min: u64, max: u64, unit: &'static str) -> Self {
        Self {
            key,
            value,
            min,
            max,
            unit,
            why: "",
        }
    }
    fn why(mut self, why: &'static str) -> Self {
        self.why = why;
        self
    }
}

/// A configuration error: always names the setting (variable and key) and what is accepted.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn setting_error(key: &str, message: impl fmt::Display) -> ConfigError {
    match env_name_for(key) {
        Some(env) => ConfigError(format!("{env} (config key `{key}`): {message}")),
        None => ConfigError(format!("config key `{key}`: {message}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

/// A secret string: redacted in `Debug`, `Display` and serialization (check-config output).
/// Exposed only where a request or connection is built, through [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// What logs may show: empty stays empty, a database or HTTP URL is shown through
    /// [`redact_url`] (user and host kept, password and unlisted query values hidden), anything
    /// else becomes `***`.
    pub fn redacted(&self) -> String {
        if self.0.is_empty() {
            return String::new();
        }
        let lower = self.0.to_ascii_lowercase();
        if ["mongodb://", "mongodb+srv://", "http://", "https://"]
            .iter()
            .any(|p| lower.starts_with(p))
        {
            redact_url(&self.0)
        } else {
            "***".to_string()
        }
    }
}

/// A URL that may carry credentials (userinfo, a key in the query string): shown everywhere
/// (logs, `check-config`, errors, `/ready` reasons) only through [`redact_url`].
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The URL itself, only where a request or connection is built.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({:?})", self.redacted())
    }
}
impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}
impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// Query parameters whose values are shown: connection options that are never secret. Every
/// other parameter keeps its name and shows `***` (`tlsCertificateKeyFilePassword`, `key`, …).
pub const URL_QUERY_ALLOW_LIST: &[&str] = &[
    "authSource",
    "authMechanism",
    "replicaSet",
    "tls",
    "ssl",
    "tlsAllowInvalidCertificates",
    "tlsAllowInvalidHostnames",
    "tlsInsecure",
    "retryWrites",
    "retryReads",
    "w",
    "wtimeoutMS",
    "journal",
    "appName",
    "directConnection",
    "loadBalanced",
    "readPreference",
    "readConcernLevel",
    "maxPoolSize",
    "minPoolSize",
    "maxIdleTimeMS",
    "connectTimeoutMS",
    "socketTimeoutMS",
    "serverSelectionTimeoutMS",
    "heartbeatFrequencyMS",
    "localThresholdMS",
    "compressors",
    "srvServiceName",
    "srvMaxHosts",
];

/// Any URL string made safe to show: the password of the userinfo becomes `***` (the user is
/// kept — except over http(s), where a user without a password is usually a token and is hidden
/// too), every query value whose name is not in [`URL_QUERY_ALLOW_LIST`] becomes `***` (a bare
/// query token too), and a fragment becomes `#***`. Scheme, hosts and path are kept. A password
/// holding `/`, `?` or `@` unencoded is hidden whole.
pub fn redact_url(s: &str) -> String {
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, s),
    };
    let mut out = String::with_capacity(s.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    let mut rest = rest;
    if scheme.is_some() {
        // The userinfo ends at the last `@` before the query; when no `@` precedes the first `?`,
        // the password itself may hold a `?`: take the last `@` of all.
        let first_q = rest.find('?').unwrap_or(rest.len());
        let at = rest[..first_q].rfind('@').or_else(|| rest.rfind('@'));
        if let Some(at) = at {
            let userinfo = &rest[..at];
            let (user, password) = match userinfo.split_once(':') {
                Some((u, _)) => (u, true),
                None => (userinfo, false),
            };
            if !user.contains(['/', '?', '#']) {
                let http = scheme.is_some_and(|sc| {
                    sc.eq_ignore_ascii_case("http") || sc.eq_ignore_ascii_case("https")
                });
                if password {
                    out.push_str(user);
                    out.push_str(":***@");
                } else if http {
                    out.push_str("***@");
                } else {
                    out.push_str(user);
                    out.push('@');
                }
                rest = &rest[at + 1..];
            }
        }
    }
    let (before_fragment, fragment) = match rest.split_once('#') {
        Some((b, _)) => (b, true),
        None => (rest, false),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let parts: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _))
                        if URL_QUERY_ALLOW_LIST
                            .iter()
                            .any(|a| a.eq_ignore_ascii_case(k)) =>
                    {
                        kv.to_string()
                    }
                    Some((k, _)) => format!("{k}=***"),
                    None if kv.is_empty()
                        || URL_QUERY_ALLOW_LIST
                            .iter()
                            .any(|a| a.eq_ignore_ascii_case(kv)) =>
                    {
                        kv.to_string()
                    }
                    None => "***".to_string(),
                })
                .collect();
            out.push_str(&parts.join("&"));
        }
        None => out.push_str(before_fragment),
    }
    if fragment {
        out.push_str("#***");
    }
    out
}

/// [`redact_url`] of `s` when it is a URL (`scheme://…`), else `None` (the driver's helper).
pub fn redact_uri(s: &str) -> Option<String> {
    s.contains("://").then(|| redact_url(s))
}

/// Serializes a URL-valued string setting through [`redact_url`].
fn serialize_url<S: Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(value))
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({:?})", self.redacted())
    }
}
impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    pub http: HttpSettings,
    pub storage: StorageSettings,
    pub events: EventsSettings,
    pub connect: ConnectSettings,
    pub telemetry: TelemetrySettings,
    pub shutdown: ShutdownSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    pub token: Secret,
    pub max_body_bytes: usize,
    /// Comma-separated `Host` names accepted on /events besides loopback names (`http::guard`).
    pub allowed_hosts: String,
    pub header_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdStrategy {
    State,
    Task,
    Generated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    Local,
    Driver,
    DataApi,
    /// `none`: answers every save as stored and keeps nothing — benchmarking only, never `auto`.
    Discard,
}

impl BackendKind {
    pub const ALL: [BackendKind; 4] = [Self::Local, Self::Driver, Self::DataApi, Self::Discard];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Driver => "driver",
            Self::DataApi => "data_api",
            Self::Discard => "none",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StorageSettings {
    /// Raw value of `storage.backends` ("auto" or a list); see [`StorageSettings::backend_list`].
    pub backends: String,
    pub primary: String,
    pub id_strategy: IdStrategy,
    pub database: String,
    pub reschedule_countdown: u64,
    pub local: LocalSettings,
    pub driver: DriverSettings,
    pub data_api: DataApiSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LocalSettings {
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct DriverSettings {
    pub uri: Secret,
    pub host: String,
    pub user: String,
    pub password: Secret,
    pub collection: String,
    pub write_concern: String,
    pub server_selection_timeout_ms: u64,
    pub batch_max: usize,
    pub batch_wait_ms: u64,
    pub operation_timeout_ms: u64,
}

impl DriverSettings {
    pub fn is_configured(&self) -> bool {
        !self.uri.is_empty() || !self.host.is_empty()
    }
}

#[derive(Clone, Deserialize, Serialize, PartialEq)]
pub struct DataApiSettings {
    /// May carry credentials (userinfo, a key in the query): shown only through [`redact_url`].
    #[serde(serialize_with = "serialize_url")]
    pub endpoint: String,
    pub api_key: Secret,
    pub bearer_token: Secret,
    pub email: String,
    pub password: Secret,
    pub cluster: String,
    pub collection: String,
    pub ejson: bool,
    pub request_timeout_ms: u64,
    pub deadline_ms: u64,
}

impl fmt::Debug for DataApiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataApiSettings")
            .field("endpoint", &redact_url(&self.endpoint))
            .field("api_key", &self.api_key)
            .field("bearer_token", &self.bearer_token)
            .field("email", &self.email)
            .field("password", &self.password)
            .field("cluster", &self.cluster)
            .field("collection", &self.collection)
            .field("ejson", &self.ejson)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("deadline_ms", &self.deadline_ms)
            .finish()
    }
}

impl DataApiSettings {
    pub fn is_configured(&self) -> bool {
        !self.endpoint.is_empty()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct EventsSettings {
    /// Raw `events.persist` spec; parsed by [`EventsSettings::persist_rules`].
    pub persist: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ConnectSettings {
    pub api_key: Secret,
    pub environment_id: String,
    pub instance_id: String,
    pub server_address: String,
    pub api_address: String,
    pub insecure: bool,
    pub background_task_max_execution_time: u64,
    pub interactive_task_max_execution_time: u64,
    pub setup_timeout: u64,
    pub max_in_flight: usize,
    pub rest_concurrency: usize,
    pub max_frame_bytes: usize,
    pub ping_interval: u64,
    pub result_buffer: usize,
    pub result_buffer_bytes: usize,
    pub persist_interactive: bool,
    pub runner_version: String,
    pub audience: String,
    pub readme_url: String,
    pub changelog_url: String,
}

impl ConnectSettings {
    /// The websocket channel runs only when both the platform key and the environment are known.
    pub fn enabled(&self) -> bool {
        !self.api_key.is_empty() && !self.environment_id.is_empty()
    }
    pub fn audience_list(&self) -> Vec<String> {
        split_list(&self.audience)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    /// Ship logs to the platform's log service when a `setup_response` carries a key.
    pub log_ship: bool,
    /// The log service's listener (base URL; the key goes into its query).
    #[serde(serialize_with = "serialize_url")]
    pub log_ship_url: String,
    pub log_ship_queue: usize,
    pub log_ship_flush_ms: u64,
    pub log_ship_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ShutdownSettings {
    /// Seconds.
    pub grace: u64,
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

/// One persistence rule: store events of `event_type` whose status is one of `statuses`
/// (any status when the list is empty, as for interactive events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistRule {
    pub event_type: EventType,
    pub statuses: Vec<Status>,
}

impl EventsSettings {
    /// Parses `"type:s1,s2;type2:s3"`.
    pub fn persist_rules(&self) -> Result<Vec<PersistRule>, ConfigError> {
        let mut rules: Vec<PersistRule> = Vec::new();
        for part in self
            .persist
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (ty, statuses) = part.split_once(':').unwrap_or((part, ""));
            let event_type: EventType = ty.trim().parse().unwrap();
            if let EventType::Other(name) = &event_type {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    return Err(setting_error(
                        "events.persist",
                        format!("`{name}` is not an event type; expected \"event_type:status,status;…\", e.g. \"asset_purchase_request_processing:pending,approved\""),
                    ));
                }
            }
            let statuses: Vec<Status> = split_list(statuses)
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
            if event_type.category() == crate::events::Category::Background && statuses.is_empty() {
                return Err(setting_error(
                    "events.persist",
                    format!("background event type `{event_type}` needs at least one status (accepted: {})",
                        join(event_type.known_statuses())),
                ));
            }
            let known = event_type.known_statuses();
            if let Some(bad) = statuses
                .iter()
                .find(|s| !known.is_empty() && !known.contains(s))
            {
                return Err(setting_error(
                    "events.persist",
                    format!(
                        "`{bad}` is not a status of `{event_type}`; accepted: {}",
                        join(known)
                    ),
                ));
            }
            if rules.iter().any(|r| r.event_type == event_type) {
                return Err(setting_error(
                    "events.persist",
                    format!("`{event_type}` is listed twice"),
                ));
            }
            rules.push(PersistRule {
                event_type,
                statuses,
            });
        }
        Ok(rules)
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl StorageSettings {
    /// The backends every event is written to, resolved from `storage.backends`.
    pub fn backend_list(&self) -> Result<Vec<BackendKind>, ConfigError> {
        let raw = self.backends.trim();
        if raw.is_empty() || raw == "auto" {
            let mut list = Vec::new();
            if self.driver.is_configured() {
                list.push(BackendKind::Driver);
            }
            if self.data_api.is_configured() {
                list.push(BackendKind::DataApi);
            }
            if list.is_empty() {
                list.push(BackendKind::Local);
            }
            return Ok(list);
        }
        let mut list = Vec::new();
        for name in split_list(raw) {
            let kind = BackendKind::parse(&name).ok_or_else(|| {
                setting_error(
                    "storage.backends",
                    format!("unknown backend `{name}`; accepted: auto, or a comma-separated list of local, driver, data_api (or none, for benchmarks)"),
                )
            })?;
            if !list.contains(&kind) {
                list.push(kind);
            }
        }
        Ok(list)
    }

    /// The backend answering read-back.
    pub fn primary_backend(&self) -> Result<BackendKind, ConfigError> {
        let list = self.backend_list()?;
        if self.primary.trim().is_empty() {
            return Ok(list[0]);
        }
        let kind = BackendKind::parse(self.primary.trim()).ok_or_else(|| {
            setting_error(
                "storage.primary",
                format!(
                    "unknown backend `{}`; accepted: local, driver, data_api, none",
                    self.primary
                ),
            )
        })?;
        if !list.contains(&kind) {
            return Err(setting_error(
                "storage.primary",
                format!(
                    "`{}` is not among the configured backends ({})",
                    kind.as_str(),
                    list.iter()
                        .map(|b| b.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(kind)
    }
}

impl Settings {
    /// Loads the configuration from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with(file, |name| std::env::var(name).ok())
    }

    /// Loads with an injected environment (tests must not mutate the process environment).
    pub fn load_with(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        Self::build(Some(file), env)
    }

    /// The embedded defaults overridden by `vars` (environment-variable names and values) only —
    /// no configuration file, no process environment. For tests, benchmarks and tools.
    pub fn from_vars<K: AsRef<str>, V: AsRef<str>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Settings, ConfigError> {
        let map: BTreeMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
            .collect();
        Self::build(None, |name| map.get(name).cloned())
    }

    /// `file`: `None` = no file layer; `Some(None)` = `config/local.toml` when present;
    /// `Some(Some(path))` = that file, which must exist.
    fn build(
        file: Option<Option<&Path>>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        use config::{Config, File, FileFormat};
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        match file {
            None => {}
            Some(Some(path)) => {
                if !path.exists() {
                    return Err(ConfigError(format!(
                        "--config {}: no such file",
                        path.display()
                    )));
                }
                builder = builder.add_source(File::from(path).format(FileFormat::Toml));
            }
            Some(None) => {
                builder = builder.add_source(
                    File::with_name("config/local.toml")
                        .format(FileFormat::Toml)
                        .required(false),
                );
            }
        }
        for v in ENV_VARS {
            if let Some(value) = env(v.name).filter(|s| !s.is_empty()) {
                builder = builder
                    .set_override(v.key, value)
                    .map_err(|e| setting_error(v.key, e))?;
            }
        }
        let built = builder.build().map_err(map_config_error)?;
        let settings: Settings = built.try_deserialize().map_err(map_config_error)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Cross-field checks the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.http.listen.ip().is_loopback() && self.http.token.is_empty() {
            return Err(setting_error(
                "http.listen",
                format!(
                    "{} is not a loopback address, so HTTP_TOKEN must be set (POST /events would be open to the network)",
                    self.http.listen
                ),
            ));
        }
        self.check_bounds()?;
        crate::http::check_settings(&self.http)?;
        let backends = self.storage.backend_list()?;
        self.storage.primary_backend()?;
        if backends.contains(&BackendKind::Driver) && !self.storage.driver.is_configured() {
            return Err(setting_error(
                "storage.driver.uri",
                "the driver backend is selected but neither MONGODB_URI nor DB_HOST is set",
            ));
        }
        if backends.contains(&BackendKind::Driver) && self.storage.driver.uri.is_empty() {
            for (key, empty) in [
                ("storage.driver.user", self.storage.driver.user.is_empty()),
                (
                    "storage.driver.password",
                    self.storage.driver.password.is_empty(),
                ),
            ] {
                if empty {
                    return Err(setting_error(
                        key,
                        "required with DB_HOST (the URI is mongodb+srv://DB_USER:DB_PASSWORD@DB_HOST/); or set MONGODB_URI",
                    ));
                }
            }
        }
        let remote =
            backends.contains(&BackendKind::Driver) || backends.contains(&BackendKind::DataApi);
        if remote && self.storage.database.is_empty() {
            return Err(setting_error("storage.database", "must not be empty"));
        }
        if backends.contains(&BackendKind::DataApi) {
            let ep = &self.storage.data_api.endpoint;
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return Err(setting_error(
                    "storage.data_api.endpoint",
                    format!(
                        "`{}` must be an http:// or https:// URL (…/endpoint/data/v1)",
                        redact_url(ep)
                    ),
                ));
            }
        }
        let wc = self.storage.driver.write_concern.as_str();
        if wc != "majority" && wc.parse::<u32>().is_err() {
            return Err(setting_error(
                "storage.driver.write_concern",
                format!(
                    "`{wc}` is not accepted; accepted: majority, or a number of nodes (e.g. 1)"
                ),
            ));
        }
        self.events.persist_rules()?;
        for a in self.connect.audience_list() {
            if !["vendor", "distributor", "reseller"].contains(&a.as_str()) {
                return Err(setting_error(
                    "connect.audience",
                    format!("`{a}` is not accepted; accepted: vendor, distributor, reseller"),
                ));
            }
        }
        Ok(())
    }

    /// Every numeric setting within its range (one table: [`Settings::bounds`]).
    fn check_bounds(&self) -> Result<(), ConfigError> {
        for b in self.bounds() {
            if b.value < b.min || b.value > b.max {
                return Err(setting_error(
                    b.key,
                    format!(
                        "{} is out of range; accepted: a whole number between {} and {} ({}){}",
                        b.value,
                        b.min,
                        b.max,
                        b.unit,
                        if b.why.is_empty() {
                            String::new()
                        } else {
                            format!("; {}", b.why)
                        }
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The accepted range of every numeric setting: wide enough for any sane deployment, narrow
    /// enough that no value overflows a timer, a semaphore or an allocation.
    pub fn bounds(&self) -> Vec<Bound> {
        const MIB: u64 = 1024 * 1024;
        let st = &self.storage;
        let c = &self.connect;
        let n = |v: usize| v as u64;
        vec![
            Bound::new(
                "http.max_body_bytes",
                n(self.http.max_body_bytes),
                1,
                256 * MIB,
                "bytes",
            ),
            Bound::new(
                "http.header_timeout_ms",
                self.http.header_timeout_ms,
                100,
                3_600_000,
                "milliseconds",
            ),
            Bound::new(
                "http.body_timeout_ms",
                self.http.body_timeout_ms,
                100,
                3_600_000,
                "milliseconds",
            ),
            Bound::new(
                "http.max_connections",
                n(self.http.max_connections),
                1,
                65_536,
                "connections",
            ),
            Bound::new(
                "storage.reschedule_countdown",
                st.reschedule_countdown,
                30,
                86_400,
                "seconds",
            )
            .why("30 is the platform's minimum"),
            Bound::new(
                "storage.driver.server_selection_timeout_ms",
                st.driver.server_selection_timeout_ms,
                1,
                600_000,
                "milliseconds",
            ),
            Bound::new(
                "storage.driver.batch_max",
                n(st.driver.batch_max),
                1,
                100_000,
                "documents",
            ),
            Bound::new(
                "storage.driver.batch_wait_ms",
                st.driver.batch_wait_ms,
                0,
                10_000,
                "milliseconds",
            ),
            Bound::new(
                "storage.driver.operation_timeout_ms",
                st.driver.operation_timeout_ms,
                1,
                3_600_000,
                "milliseconds",
            ),
            Bound::new(
                "storage.data_api.request_timeout_ms",
                st.data_api.request_timeout_ms,
                1,
                600_000,
                "milliseconds",
            ),
            Bound::new(
                "storage.data_api.deadline_ms",
                st.data_api.deadline_ms,
                1,
                3_600_000,
                "milliseconds",
            ),
            Bound::new(
                "connect.background_task_max_execution_time",
                c.background_task_max_execution_time,
                1,
                86_400,
                "seconds",
            ),
            Bound::new(
                "connect.interactive_task_max_execution_time",
                c.interactive_task_max_execution_time,
                1,
                86_400,
                "seconds",
            ),
            Bound::new(
                "connect.setup_timeout",
                c.setup_timeout,
                1,
                3_600,
                "seconds",
            ),
            Bound::new(
                "connect.max_in_flight",
                n(c.max_in_flight),
                1,
                100_000,
                "tasks",
            ),
            Bound::new(
                "connect.rest_concurrency",
                n(c.rest_concurrency),
                1,
                4_096,
                "requests",
            ),
            Bound::new(
                "connect.max_frame_bytes",
                n(c.max_frame_bytes),
                2 * MIB,
                256 * MIB,
                "bytes",
            )
            .why("at least 2 MiB, the platform's assumption"),
            Bound::new(
                "connect.ping_interval",
                c.ping_interval,
                1,
                3_600,
                "seconds",
            ),
            Bound::new(
                "connect.result_buffer",
                n(c.result_buffer),
                1,
                10_000_000,
                "results",
            ),
            Bound::new(
                "connect.result_buffer_bytes",
                n(c.result_buffer_bytes),
                1024,
                16 * 1024 * MIB,
                "bytes",
            ),
            Bound::new(
                "telemetry.log_ship_queue",
                n(self.telemetry.log_ship_queue),
                1,
                1_000_000,
                "records",
            ),
            Bound::new(
                "telemetry.log_ship_flush_ms",
                self.telemetry.log_ship_flush_ms,
                10,
                600_000,
                "milliseconds",
            ),
            Bound::new(
                "telemetry.log_ship_timeout_ms",
                self.telemetry.log_ship_timeout_ms,
                100,
                600_000,
                "milliseconds",
            ),
            Bound::new("shutdown.grace", self.shutdown.grace, 0, 3_600, "seconds"),
        ]
    }

    /// The effective configuration as TOML-like JSON, secrets redacted (for `check-config`).
    pub fn redacted_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("settings serialize")
    }

    /// Env names mapped to their (redacted) effective value; handy for docs and tests.
    pub fn env_view(&self) -> BTreeMap<&'static str, String> {
        let json = self.redacted_json();
        ENV_VARS
            .iter()
            .map(|v| {
                let mut cur = &json;
                for part in v.key.split('.') {
                    cur = &cur[part];
                }
                let shown = match cur {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (v.name, shown)
            })
            .collect()
    }
}

/// Rewrites the `config` crate's messages so they name the environment variable too.
fn map_config_error(e: config::ConfigError) -> ConfigError {
    let msg = e.to_string();
    // The crate reports `… for key \`a.b\`` (or "a.b"); find which of our keys it is.
    let mut best: Option<&EnvVar> = None;
    for v in ENV_VARS {
        if msg.contains(v.key) && best.is_none_or(|b| v.key.len() > b.key.len()) {
            best = Some(v);
        }
    }
    match best {
        Some(v) => {
            let hint = accepted_values(v.key)
                .map(|a| format!("; accepted: {a}"))
                .unwrap_or_default();
            ConfigError(format!("{} (config key `{}`): {msg}{hint}", v.name, v.key))
        }
        None => ConfigError(msg),
    }
}

/// What a key accepts, for error messages the deserializer alone would leave vague.
fn accepted_values(key: &str) -> Option<&'static str> {
    let defaults = toml::Value::Table(DEFAULTS.parse::<toml::Table>().ok()?);
    let mut cur = &defaults;
    for part in key.split('.') {
        cur = cur.get(part)?;
    }
    Some(match key {
        "storage.id_strategy" => "state, task, generated",
        "telemetry.log_format" => "text, json",
        "http.listen" => "an address with a port, e.g. 127.0.0.1:8080 or 0.0.0.0:8080",
        _ => match cur {
            toml::Value::Boolean(_) => "true, false",
            toml::Value::Integer(_) => "a whole number ≥ 0",
            _ => return None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_vars(vars.iter().copied())
    }

    #[test]
    fn defaults_are_the_embedded_default() {
        let s = load(&[]).unwrap();
        assert_eq!(s.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.storage.backend_list().unwrap(), vec![BackendKind::Local]);
        assert_eq!(s.storage.id_strategy, IdStrategy::State);
        assert!(!s.connect.enabled());
        let rules = s.events.persist_rules().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].event_type,
            EventType::AssetPurchaseRequestProcessing
        );
        assert_eq!(rules[0].statuses.len(), 7);
    }

    #[test]
    fn tutorial_variables_map_to_their_settings() {
        let s = load(&[
            (
                "DATA_API_ENDPOINT",
                "https://data.example/app/x/endpoint/data/v1",
            ),
            ("DB", "tutorial"),
            ("HTTP_COLLECTION", "http_coll"),
            ("CLUSTER", "Cluster9"),
            ("DB_HOST", "cluster0.example.mongodb.net"),
            ("DB_USER", "alice"),
            ("DB_PASSWORD", "p@ss:w/rd"),
            ("DRIVER_COLLECTION", "driver_coll"),
            ("DATA_API_KEY", "dk-123"),
            ("API_KEY", "ApiKey SU-1:abc"),
        ])
        .unwrap();
        assert_eq!(
            s.storage.data_api.endpoint,
            "https://data.example/app/x/endpoint/data/v1"
        );
        assert_eq!(s.storage.database, "tutorial");
        assert_eq!(s.storage.data_api.collection, "http_coll");
        assert_eq!(s.storage.data_api.cluster, "Cluster9");
        assert_eq!(s.storage.driver.host, "cluster0.example.mongodb.net");
        assert_eq!(s.storage.driver.user, "alice");
        assert_eq!(s.storage.driver.password.expose(), "p@ss:w/rd");
        assert_eq!(s.storage.driver.collection, "driver_coll");
        // API_KEY in the process environment is the Connect platform key, not the Data API key.
        assert_eq!(s.connect.api_key.expose(), "ApiKey SU-1:abc");
        assert_eq!(s.storage.data_api.api_key.expose(), "dk-123");
        // auto: both backends, as the tutorial's v0.2.0 writes to both
        assert_eq!(
            s.storage.backend_list().unwrap(),
            vec![BackendKind::Driver, BackendKind::DataApi]
        );
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("local.toml");
        std::fs::write(
            &file,
            "[storage]\ndatabase = \"from_file\"\nid_strategy = \"task\"\n",
        )
        .unwrap();
        let s = Settings::load_with(Some(&file), |_| None).unwrap();
        assert_eq!(s.storage.database, "from_file");
        assert_eq!(s.storage.id_strategy, IdStrategy::Task);
        let s =
            Settings::load_with(Some(&file), |k| (k == "DB").then(|| "from_env".into())).unwrap();
        assert_eq!(s.storage.database, "from_env");
        assert_eq!(s.storage.id_strategy, IdStrategy::Task);
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let err = Settings::load_with(Some(Path::new("/nonexistent/x.toml")), |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/x.toml"), "{err}");
    }

    #[test]
    fn errors_name_the_variable_and_accepted_values() {
        let err = load(&[("ID_STRATEGY", "random")]).unwrap_err().to_string();
        assert!(err.contains("ID_STRATEGY"), "{err}");
        assert!(err.contains("state") && err.contains("generated"), "{err}");

        let err = load(&[("BACKGROUND_TASK_MAX_EXECUTION_TIME", "five")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("BACKGROUND_TASK_MAX_EXECUTION_TIME"), "{err}");

        let err = load(&[("STORAGE_BACKENDS", "postgres")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("STORAGE_BACKENDS") && err.contains("data_api"),
            "{err}"
        );

        let err = load(&[("LOG_FORMAT", "xml")]).unwrap_err().to_string();
        assert!(err.contains("LOG_FORMAT") && err.contains("json"), "{err}");

        let err = load(&[("HTTP_LISTEN", "0.0.0.0:8080")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("HTTP_TOKEN"), "{err}");
        assert!(load(&[("HTTP_LISTEN", "0.0.0.0:8080"), ("HTTP_TOKEN", "t")]).is_ok());

        let err = load(&[("DB_HOST", "h")]).unwrap_err().to_string();
        assert!(err.contains("DB_USER"), "{err}");
        let err = load(&[("DB_HOST", "h"), ("DB_USER", "u")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("DB_PASSWORD"), "{err}");

        let err = load(&[("DATA_API_ENDPOINT", "ftp://x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("DATA_API_ENDPOINT"), "{err}");

        let err = load(&[("PERSIST_EVENTS", "asset_purchase_request_processing:bogus")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("PERSIST_EVENTS") && err.contains("pending"),
            "{err}"
        );

        let err = load(&[("STORAGE_PRIMARY", "driver")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("STORAGE_PRIMARY"), "{err}");

        let err = load(&[("DRIVER_WRITE_CONCERN", "all")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("DRIVER_WRITE_CONCERN") && err.contains("majority"),
            "{err}"
        );

        let err = load(&[("RESCHEDULE_COUNTDOWN", "5")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("RESCHEDULE_COUNTDOWN"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_everywhere() {
        let s = load(&[
            ("API_KEY", "ApiKey SU-1:topsecret1"),
            ("DATA_API_KEY", "topsecret2"),
            ("DB_HOST", "h"),
            ("DB_USER", "u"),
            ("DB_PASSWORD", "topsecret3"),
            (
                "MONGODB_URI",
                "mongodb://u:topsecret4@db:27017/?authSource=admin",
            ),
            ("HTTP_TOKEN", "topsecret5"),
        ])
        .unwrap();
        let debug = format!("{s:?}");
        let json = s.redacted_json().to_string();
        let env = format!("{:?}", s.env_view());
        for out in [&debug, &json, &env] {
            assert!(!out.contains("topsecret"), "{out}");
        }
        assert!(
            json.contains("mongodb://u:***@db:27017/?authSource=admin"),
            "{json}"
        );
        assert_eq!(s.storage.driver.password.expose(), "topsecret3");
    }

    #[test]
    fn every_secret_variable_is_a_secret_type() {
        // Secret keys must deserialize into `Secret`, so they can never be printed in clear.
        let vars: Vec<(&str, &str)> = ENV_VARS
            .iter()
            .filter(|v| v.secret)
            .map(|v| (v.name, "zz-secret-zz"))
            .collect();
        let mut all = vars.clone();
        all.extend([("DB_HOST", "h"), ("DB_USER", "u")]);
        let s = load(&all).unwrap();
        assert!(!format!("{s:?}").contains("zz-secret-zz"));
        assert!(!s.redacted_json().to_string().contains("zz-secret-zz"));
    }

    #[test]
    fn every_env_var_key_exists_in_defaults() {
        let s = load(&[]).unwrap();
        let view = s.env_view();
        let json = s.redacted_json();
        for v in ENV_VARS {
            let mut cur = &json;
            for part in v.key.split('.') {
                cur = &cur[part];
            }
            assert!(!cur.is_null(), "{} maps to missing key {}", v.name, v.key);
            assert!(view.contains_key(v.name));
        }
    }
    #[test]
    fn redact_url_hides_passwords_and_unlisted_query_values() {
        let out = redact_url(
            "mongodb://app:pw-SECRET@db1:27017,db2/x?authSource=admin&tls=true&tlsCertificateKeyFilePassword=kp-SECRET&replicaSet=rs0",
        );
        assert_eq!(
            out,
            "mongodb://app:***@db1:27017,db2/x?authSource=admin&tls=true&tlsCertificateKeyFilePassword=***&replicaSet=rs0"
        );
        let out =
            redact_url("https://user:pw-SECRET@host/app/x/endpoint/data/v1?key=k-SECRET&appName=a");
        assert_eq!(
            out,
            "https://user:***@host/app/x/endpoint/data/v1?key=***&appName=a"
        );
        // A password holding `/`, `?` or `@` stays hidden whole.
        for s in [
            "mongodb://u:p/w?SECRET@db/?tls=true",
            "mongodb://u:p@w-SECRET@db/",
            "mongodb+srv://u:pSECRET@c0.example.net/?retryWrites=true&w=majority",
        ] {
            let out = redact_url(s);
            assert!(!out.contains("SECRET"), "{s} → {out}");
            assert!(out.contains("u:***@"), "{s} → {out}");
        }
        // An `@` in the query is not userinfo; a bare query token is hidden; a fragment too.
        assert_eq!(
            redact_url("https://h/p?email=a@b.example&tls=true&tokenSECRET#fragSECRET"),
            "https://h/p?email=***&tls=true&***#***"
        );
        // No scheme: the query is still redacted.
        assert_eq!(redact_url("host/p?apiKey=SECRET"), "host/p?apiKey=***");
        // Token-as-user over http(s) is hidden; a plain user name of a database URI is kept.
        assert_eq!(redact_url("https://tokSECRET@h/"), "https://***@h/");
        assert_eq!(redact_url("mongodb://x509user@h/"), "mongodb://x509user@h/");
        // Case-insensitive allow-list, as MongoDB options are.
        assert_eq!(
            redact_url("mongodb://h/?AUTHSOURCE=admin"),
            "mongodb://h/?AUTHSOURCE=admin"
        );
        // redact_uri (driver.rs) now redacts every URI, with or without a password.
        assert_eq!(
            redact_uri("mongodb://h/?tlsCertificateKeyFilePassword=SECRET").as_deref(),
            Some("mongodb://h/?tlsCertificateKeyFilePassword=***")
        );
        assert_eq!(redact_uri("not a uri"), None);
    }
    #[test]
    fn url_secrets_are_redacted_in_settings_output() {
        let s = load(&[
            (
                "MONGODB_URI",
                "mongodb://u@db:27017/?tls=true&tlsCertificateKeyFilePassword=kp-SECRET",
            ),
            (
                "DATA_API_ENDPOINT",
                "https://user:ep-SECRET@data.example/app/x/endpoint/data/v1?key=q-SECRET",
            ),
        ])
        .unwrap();
        let debug = format!("{s:?}");
        let json = s.redacted_json().to_string();
        let env = format!("{:?}", s.env_view());
        for out in [&debug, &json, &env] {
            assert!(!out.contains("SECRET"), "{out}");
        }
        assert_eq!(
            s.env_view()["DATA_API_ENDPOINT"],
            "https://user:***@data.example/app/x/endpoint/data/v1?key=***"
        );
        // A bad endpoint's error names the variable, not the secret.
        let err = load(&[("DATA_API_ENDPOINT", "ftp://u:ep-SECRET@h/?key=q-SECRET")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("DATA_API_ENDPOINT") && !err.contains("SECRET"),
            "{err}"
        );
        // The URL type itself.
        let u = SecretUrl::new("https://u:pw-SECRET@h/?apiKey=k-SECRET");
        for out in [
            format!("{u}"),
            format!("{u:?}"),
            serde_json::to_string(&u).unwrap(),
        ] {
            assert!(!out.contains("SECRET"), "{out}");
        }
        assert_eq!(u.expose(), "https://u:pw-SECRET@h/?apiKey=k-SECRET");
    }

    #[test]
    fn every_numeric_setting_is_bounded() {
        let max = u64::MAX.to_string();
        for (var, bad) in [
            ("CONNECT_RESULT_BUFFER", max.as_str()),
            ("CONNECT_RESULT_BUFFER", "0"),
            ("CONNECT_RESULT_BUFFER_BYTES", "10"),
            ("CONNECT_PING_INTERVAL", max.as_str()),
            ("CONNECT_PING_INTERVAL", "0"),
            ("CONNECT_SETUP_TIMEOUT", max.as_str()),
            ("CONNECT_SETUP_TIMEOUT", "0"),
            ("CONNECT_MAX_IN_FLIGHT", max.as_str()),
            ("CONNECT_REST_CONCURRENCY", "1000000"),
            ("CONNECT_MAX_FRAME_BYTES", max.as_str()),
            ("BACKGROUND_TASK_MAX_EXECUTION_TIME", max.as_str()),
            ("BACKGROUND_TASK_MAX_EXECUTION_TIME", "0"),
            ("INTERACTIVE_TASK_MAX_EXECUTION_TIME", max.as_str()),
            ("HTTP_MAX_BODY_BYTES", max.as_str()),
            ("RESCHEDULE_COUNTDOWN", max.as_str()),
            ("DRIVER_SERVER_SELECTION_TIMEOUT_MS", max.as_str()),
            ("DRIVER_SERVER_SELECTION_TIMEOUT_MS", "0"),
            ("DRIVER_BATCH_MAX", "0"),
            ("DRIVER_BATCH_MAX", max.as_str()),
            ("DRIVER_BATCH_WAIT_MS", max.as_str()),
            ("DRIVER_OPERATION_TIMEOUT_MS", max.as_str()),
            ("DRIVER_OPERATION_TIMEOUT_MS", "0"),
            ("DRIVER_WRITE_CONCERN", max.as_str()),
            ("DATA_API_TIMEOUT_MS", max.as_str()),
            ("DATA_API_TIMEOUT_MS", "0"),
            ("DATA_API_DEADLINE_MS", max.as_str()),
            ("DATA_API_DEADLINE_MS", "0"),
            ("SHUTDOWN_GRACE", max.as_str()),
        ] {
            let err = match load(&[(var, bad)]) {
                Ok(_) => panic!("{var}={bad} accepted"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(var), "{var}={bad}: {err}");
            assert!(
                err.contains("between") || err.contains("accepted"),
                "{var}={bad}: {err}"
            );
        }
        // The defaults and the documented extremes pass.
        assert!(load(&[]).is_ok());
        for (var, ok) in [
            ("CONNECT_PING_INTERVAL", "1"),
            ("CONNECT_RESULT_BUFFER", "1"),
            ("SHUTDOWN_GRACE", "0"),
            ("DRIVER_BATCH_WAIT_MS", "0"),
            ("DRIVER_WRITE_CONCERN", "1"),
        ] {
            load(&[(var, ok)]).unwrap_or_else(|e| panic!("{var}={ok}: {e}"));
        }
    }
}
