//! The Data API backend against a Data API-compatible server (tests/support/data_api_server.rs)
//! running on top of the real MongoDB-compatible server at `MONGODB_URI`. Each test uses its own
//! database and drops it at the end. Without `MONGODB_URI` the tests fail, unless
//! `SKIP_MONGO_TESTS=1`.

#[path = "support/data_api_server.rs"]
mod data_api_server;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Bson, Document};
use connect_extension_mongodb::config::Settings;
use connect_extension_mongodb::storage::conformance as c;
use connect_extension_mongodb::storage::data_api::{DataApiStorage, RetryPolicy};
use connect_extension_mongodb::storage::{SaveOutcome, Storage, StorageError};
use data_api_server::{DataApiServer, Fault, ServerConfig};
use serde_json::{json, Value};

const COLLECTION: &str = "purchase_requests";

fn mongo_uri() -> Option<String> {
    match std::env::var("MONGODB_URI") {
        Ok(uri) if !uri.is_empty() => Some(uri),
        _ if std::env::var("SKIP_MONGO_TESTS").as_deref() == Ok("1") => {
            eprintln!("SKIP_MONGO_TESTS=1: skipping a test that needs MONGODB_URI");
            None
        }
        _ => panic!(
            "MONGODB_URI is not set: these tests need a MongoDB-compatible server \
             (scripts/test.sh provisions one; e.g. MONGODB_URI=mongodb://127.0.0.1:27017/?retryWrites=false). \
             Set SKIP_MONGO_TESTS=1 to skip them."
        ),
    }
}

/// One test's world: the server, its own database, and a client configured against them.
struct Env {
    server: DataApiServer,
    uri: String,
    database: String,
}

impl Drop for Env {
    fn drop(&mut self) {
        // Best effort: drop this test's database (from a thread with its own runtime, since we may
        // be inside the test's runtime).
        let (uri, db) = (self.uri.clone(), self.database.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let client = mongodb::Client::with_uri_str(&uri).await.ok()?;
                client.database(&db).drop().await.ok()
            })
        })
        .join();
    }
}

impl Env {
    async fn start(name: &str) -> Option<Env> {
        Self::start_with(name, ServerConfig::default()).await
    }

    async fn start_with(name: &str, config: ServerConfig) -> Option<Env> {
        let uri = mongo_uri()?;
        let server = DataApiServer::start(&uri, config).await;
        let database = format!(
            "dataapi_{name}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Some(Env {
            server,
            uri,
            database,
        })
    }

    /// Settings as a user sets them: the tutorial's variables, plus `extra`.
    fn settings(&self, extra: &[(&str, &str)]) -> Settings {
        let mut vars: HashMap<String, String> = [
            ("DATA_API_ENDPOINT", self.server.base_url.as_str()),
            ("DATA_API_KEY", "test-api-key"),
            ("DB", self.database.as_str()),
            ("HTTP_COLLECTION", COLLECTION),
            ("CLUSTER", "Cluster0"),
            ("STORAGE_BACKENDS", "data_api"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            vars.insert(k.to_string(), v.to_string());
        }
        Settings::load_with(None, |k| vars.get(k).cloned()).expect("settings")
    }

    async fn store(&self, extra: &[(&str, &str)]) -> DataApiStorage {
        DataApiStorage::connect(&self.settings(extra))
            .await
            .expect("connect")
            .with_retry_policy(fast_retries())
    }

    fn collection(&self) -> mongodb::Collection<Document> {
        self.server
            .mongo()
            .database(&self.database)
            .collection(COLLECTION)
    }

    async fn count_id(&self, id: &str) -> u64 {
        self.collection()
            .count_documents(doc! {"_id": id})
            .await
            .expect("count")
    }
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(200),
        max_attempts: 8,
    }
}

fn sample() -> connect_extension_mongodb::storage::EventDocument {
    c::sample_doc(
        &format!("PR-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]),
        "pending",
        "2026-11-28T17:21:48+00:00",
    )
}

// ---------------------------------------------------------------------------------------------
// The storage conformance suite, in both wire formats.

macro_rules! conformance {
    ($mode:ident, $extra:expr) => {
        mod $mode {
            use super::*;

            async fn make(name: &str) -> Option<(Env, Arc<dyn Storage>)> {
                let env = Env::start(name).await?;
                let store: Arc<dyn Storage> = Arc::new(env.store($extra).await);
                Some((env, store))
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ping_ok() {
                let Some((_e, s)) = make("ping").await else { return };
                c::ping_ok(s.as_ref()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn round_trip() {
                let Some((_e, s)) = make("round_trip").await else { return };
                c::round_trip(s.as_ref()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn get_missing_is_none() {
                let Some((_e, s)) = make("missing").await else { return };
                c::get_missing_is_none(s.as_ref()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn save_is_idempotent() {
                let Some((_e, s)) = make("idempotent").await else { return };
                c::save_is_idempotent(s.as_ref()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn save_many_reports_each_document() {
                let Some((_e, s)) = make("save_many").await else { return };
                c::save_many_reports_each_document(s.as_ref()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn list_filters_newest_first() {
                let Some((_e, s)) = make("list").await else { return };
                c::list_filters_newest_first(s.as_ref()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn values_are_kept_losslessly() {
                let Some((_e, s)) = make("lossless").await else { return };
                c::values_are_kept_losslessly(s.as_ref()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_duplicates_store_once() {
                let Some((_e, s)) = make("concurrent").await else { return };
                c::concurrent_duplicates_store_once(s).await;
            }
        }
    };
}

conformance!(conformance_json, &[]);
conformance!(conformance_ejson, &[("DATA_API_EJSON", "true")]);
