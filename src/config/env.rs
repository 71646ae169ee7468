//! The environment variables the daemon reads, one by one, and the configuration key each sets.
//! The table is also the single place that says which settings are secrets.
/// One environment variable and the configuration key it overrides.
#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    pub name: &'static str,
    pub key: &'static str,
    pub secret: bool,
}

pub const fn var(name: &'static str, key: &'static str) -> EnvVar {
    EnvVar {
        name,
        key,
        secret: false,
    }
}
pub const fn secret(name: &'static str, key: &'static str) -> EnvVar {
    EnvVar {
        name,
        key,
        secret: true,
    }
}

/// The environment variables of the core sections, and the key each sets. Each storage backend
/// lists its own (`Backend::env`); `settings::env_vars()` gives them all.
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
