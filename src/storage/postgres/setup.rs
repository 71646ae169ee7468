//! Start-up: the connection pool (rustls), the first connection (authentication) and the schema
//! (one transaction under an advisory lock), and the group INSERT's SQL.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use super::errors::{pool_error, Scrub, BACKEND};
use super::settings::Settings;
use super::url;
use crate::storage::error::StorageError;
use crate::storage::ErrorKind;

/// The DDL of the table and its indexes (idempotent).
pub(super) fn schema_sql(table: &str) -> String {
    let mut sql = format!(
        "SELECT pg_advisory_xact_lock(hashtext('connect-extension-mongodb:{table}'));\n\
         CREATE TABLE IF NOT EXISTS \"{table}\" (\
           id text PRIMARY KEY, \
           event_type text NOT NULL, \
           status text NOT NULL, \
           object_id text NOT NULL, \
           asset_id text, \
           received_at timestamptz NOT NULL, \
           seq bigint GENERATED ALWAYS AS IDENTITY, \
           body json NOT NULL);\n\
         CREATE INDEX IF NOT EXISTS \"{table}_received\" ON \"{table}\" (received_at DESC, seq DESC);\n"
    );
    for column in ["event_type", "status", "object_id", "asset_id"] {
        sql.push_str(&format!(
            "CREATE INDEX IF NOT EXISTS \"{table}_{column}\" ON \"{table}\" ({column}, received_at DESC, seq DESC);\n"
        ));
    }
    sql
}

/// The group INSERT: seven arrays, one cached statement for every group size.
pub(super) fn insert_sql(table: &str) -> String {
    format!(
        "INSERT INTO \"{table}\" (id, event_type, status, object_id, asset_id, received_at, body) \
         SELECT i, e, s, o, a, r::timestamptz, b::json \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) \
         AS u(i, e, s, o, a, r, b) \
         ON CONFLICT (id) DO NOTHING RETURNING id"
    )
}

/// The pool over `target` with rustls (nothing is connected yet).
pub(super) fn build_pool(target: &url::Target, s: &Settings) -> Result<Pool, StorageError> {
    let config_err = |m: String| StorageError::config(BACKEND, format!("POSTGRES_URL: {m}"));
    let tls = url::tls_config(target).map_err(config_err)?;
    let mut config = target.config.clone();
    let connect_timeout = Duration::from_millis(s.connect_timeout_ms.max(1));
    let op_timeout = Duration::from_millis(s.operation_timeout_ms.max(1));
    config.connect_timeout(connect_timeout);
    if config.get_application_name().is_none() {
        config.application_name("connect-extension-mongodb");
    }
    let manager = Manager::from_config(
        config,
        tokio_postgres_rustls::MakeRustlsConnect::new(tls),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(s.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(op_timeout))
        .create_timeout(Some(connect_timeout))
        .recycle_timeout(Some(op_timeout))
        .build()
        .map_err(|e| StorageError::internal(BACKEND, format!("pool: {e}")))
}

/// The first connection (authenticates): refused credentials, database or privilege → `Config`,
/// anything else `Unavailable`; the message names POSTGRES_URL and shows it redacted.
async fn first_connection(
    pool: &Pool,
    scrub: &Scrub,
    shown: &str,
) -> Result<deadpool_postgres::Object, StorageError> {
    pool.get().await.map_err(|e| {
        let err = pool_error(e, scrub);
        let config = err.kind() == ErrorKind::Config;
        let message = format!(
            "{} PostgreSQL at {shown} (POSTGRES_URL): {}",
            if config { "refused by" } else { "cannot connect to" },
            err.message()
        );
        StorageError::new(
            if config {
                ErrorKind::Config
            } else {
                ErrorKind::Unavailable
            },
            BACKEND,
            scrub.text(message),
        )
    })
}

/// Creates the table and its indexes ([`schema_sql`], one transaction under an advisory lock).
pub(super) async fn create_schema(
    pool: &Pool,
    scrub: &Scrub,
    shown: &str,
    table: &str,
    op_timeout: Duration,
) -> Result<(), StorageError> {
    let mut client = first_connection(pool, scrub, shown).await?;
    let schema = async {
        let tx = client.transaction().await?;
        tx.batch_execute(&schema_sql(table)).await?;
        tx.commit().await
    };
    match tokio::time::timeout(op_timeout, schema).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            let err = scrub.error(&e);
            let message = format!(
                "cannot create the table `{table}` and its indexes (POSTGRES_TABLE) at {shown}: {}",
                err.message()
            );
            Err(if err.is_retriable() && err.kind() != ErrorKind::Internal {
                StorageError::new(err.kind(), BACKEND, message)
            } else {
                StorageError::config(BACKEND, message)
            })
        }
        Err(_) => Err(StorageError::timeout(
            BACKEND,
            format!(
                "creating the table `{table}` at {shown} took longer than {} ms (POSTGRES_OPERATION_TIMEOUT_MS)",
                op_timeout.as_millis()
            ),
        )),
    }
}
