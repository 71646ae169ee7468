//! The Data API backend against a Data API-compatible server (tests/it/support/data_api_server.rs)
//! running on top of the real MongoDB-compatible server at `MONGODB_URI`. Each test uses its own
//! database and drops it at the end. Without `MONGODB_URI` the tests fail, unless
//! `SKIP_MONGO_TESTS=1`.

use crate::support::data_api_server;
use crate::support::mongo::mongo_uri;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bson::{doc, Bson, Document};
use connect_extension_mongodb::storage::conformance as c;
use connect_extension_mongodb::storage::data_api::{DataApiStorage, RetryPolicy};
use connect_extension_mongodb::storage::{ErrorKind, SaveOutcome, Storage};
use connect_extension_mongodb::Settings;
use data_api_server::{DataApiServer, Fault, ServerConfig};
use serde_json::{json, Value};

const COLLECTION: &str = "purchase_requests";

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
        Settings::from_vars(vars).expect("settings")
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

            async fn make(case: &'static str) -> Option<c::Fixture> {
                let env = Env::start(case).await?;
                let store: Arc<dyn Storage> = Arc::new(env.store($extra).await);
                Some(c::Fixture::new(store, env))
            }

            connect_extension_mongodb::storage_conformance!(make);
        }
    };
}

conformance!(conformance_json, &[]);
conformance!(conformance_ejson, &[("DATA_API_EJSON", "true")]);

// ---------------------------------------------------------------------------------------------
// The wire: what the tutorial sends is what the server receives.

fn header<'a>(r: &'a data_api_server::Recorded, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorial_request_is_what_the_server_receives() {
    let Some(env) = Env::start("tutorial").await else {
        return;
    };
    let store = env.store(&[]).await;
    let doc = sample();
    assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Inserted);

    let requests = env.server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let r = &requests[0];
    assert_eq!(r.path, "/app/data-abcde/endpoint/data/v1/action/insertOne");
    assert_eq!(header(r, "content-type"), Some("application/json"));
    assert_eq!(header(r, "access-control-request-headers"), Some("*"));
    assert_eq!(header(r, "api-key"), Some("test-api-key"));
    // The body, byte for byte: {collection, database, dataSource, document} in the tutorial's order.
    let expected = json!({
        "collection": COLLECTION,
        "database": env.database,
        "dataSource": "Cluster0",
        "document": Value::Object(doc.body.clone()),
    });
    assert_eq!(
        std::str::from_utf8(&r.raw_body).unwrap(),
        serde_json::to_string(&expected).unwrap()
    );
    // And it is stored as sent.
    let stored = env
        .collection()
        .find_one(doc! {"_id": &doc.id})
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(
        Bson::Document(stored).into_relaxed_extjson(),
        Value::Object(doc.body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejson_mode_sends_canonical_extended_json() {
    let Some(env) = Env::start("ejson_wire").await else {
        return;
    };
    let store = env.store(&[("DATA_API_EJSON", "true")]).await;
    let mut doc = sample();
    doc.body.insert("big".into(), json!(i64::MAX));
    doc.body.insert("ratio".into(), json!(0.25));
    assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Inserted);
    let r = &env.server.requests_for("insertOne")[0];
    assert_eq!(header(r, "content-type"), Some("application/ejson"));
    assert_eq!(header(r, "accept"), Some("application/ejson"));
    assert_eq!(header(r, "access-control-request-headers"), Some("*"));
    assert_eq!(
        r.body["document"]["big"],
        json!({"$numberLong": "9223372036854775807"})
    );
    assert_eq!(
        r.body["document"]["ratio"],
        json!({"$numberDouble": "0.25"})
    );
    let stored = env
        .collection()
        .find_one(doc! {"_id": &doc.id})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.get("big"), Some(&Bson::Int64(i64::MAX)));
    assert_eq!(
        store.get(&doc.id).await.unwrap(),
        Some(Value::Object(doc.body))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objectid_date_and_int64_round_trip_through_ejson() {
    let Some(env) = Env::start("ejson_types").await else {
        return;
    };
    let store = env.store(&[("DATA_API_EJSON", "true")]).await;
    let oid = bson::oid::ObjectId::new();
    let mut doc = sample();
    doc.body.insert("ref".into(), json!({"$oid": oid.to_hex()}));
    doc.body.insert(
        "when".into(),
        json!({"$date": {"$numberLong": "1654589430998"}}),
    );
    doc.body
        .insert("count".into(), json!({"$numberLong": "9007199254740993"}));
    assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Inserted);

    // Stored with the real BSON types.
    let stored = env
        .collection()
        .find_one(doc! {"_id": &doc.id})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.get("ref"), Some(&Bson::ObjectId(oid)));
    assert_eq!(
        stored.get("when"),
        Some(&Bson::DateTime(bson::DateTime::from_millis(1654589430998)))
    );
    assert_eq!(stored.get("count"), Some(&Bson::Int64(9007199254740993)));

    // Read back through EJSON: the same values, as relaxed Extended JSON (Int64 exact above 2^53).
    let back = store.get(&doc.id).await.unwrap().unwrap();
    assert_eq!(back["ref"], json!({"$oid": oid.to_hex()}));
    assert_eq!(back["when"], json!({"$date": "2022-06-07T08:10:30.998Z"}));
    assert_eq!(back["count"].as_i64(), Some(9007199254740993));
    assert_eq!(back["asset"], doc.body["asset"]);

    // The same document in the service's JSON mode: hex id, ISO date with milliseconds, number.
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/action/findOne", env.server.base_url))
        .header("apiKey", "test-api-key")
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .json(
            &json!({"dataSource": "Cluster0", "database": env.database, "collection": COLLECTION,
                      "filter": {"_id": doc.id}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["document"]["ref"], json!(oid.to_hex()));
    assert_eq!(
        answer["document"]["when"],
        json!("2022-06-07T08:10:30.998Z")
    );
    assert_eq!(answer["document"]["count"].as_i64(), Some(9007199254740993));
}

// ---------------------------------------------------------------------------------------------
// Faults: retried, then reschedule; stored exactly once.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_honouring_retry_after() {
    let Some(env) = Env::start("throttle").await else {
        return;
    };
    let store = env.store(&[]).await;
    // Retry-After: 0 → retried at once; twice, then through.
    for _ in 0..2 {
        env.server.inject(
            Some("insertOne"),
            Fault::TooManyRequests {
                retry_after: Some("0".into()),
            },
        );
    }
    let doc = sample();
    assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Inserted);
    assert_eq!(env.server.requests_for("insertOne").len(), 3);
    assert_eq!(env.count_id(&doc.id).await, 1);

    // Retry-After beyond the overall deadline (30 s by default): no point waiting, give up now
    // (retriable: the event is rescheduled). One request only proves the header was read.
    env.server.clear_log();
    env.server.inject(
        Some("insertOne"),
        Fault::TooManyRequests {
            retry_after: Some("3600".into()),
        },
    );
    let doc = sample();
    let err = store.save(&doc).await.unwrap_err();
    assert!(err.kind() == ErrorKind::Unavailable, "{err}");
    assert!(err.is_retriable());
    assert!(err.to_string().contains("HTTP 429"), "{err}");
    assert_eq!(env.server.requests_for("insertOne").len(), 1);
    assert_eq!(env.count_id(&doc.id).await, 0);
    // Redelivered later: stored.
    assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Inserted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried() {
    let Some(env) = Env::start("server_errors").await else {
        return;
    };
    let store = env.store(&[]).await;
    env.server.inject(Some("insertOne"), Fault::InternalError);
    env.server.inject(
        Some("insertOne"),
        Fault::Status {
            status: 503,
            content_type: "text/html",
            body: "<html>Service Unavailable</html>".into(),
        },
    );
    env.server.inject(
        Some("insertOne"),
        Fault::Status {
            status: 502,
            content_type: "text/plain",
            body: "Bad Gateway".into(),
        },
    );
    let doc = sample();
    assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Inserted);
    assert_eq!(env.server.requests_for("insertOne").len(), 4);
    assert_eq!(env.count_id(&doc.id).await, 1);
    // Reads are retried too.
    env.server.inject(Some("findOne"), Fault::InternalError);
    assert!(store.get(&doc.id).await.unwrap().is_some());
    assert_eq!(env.server.requests_for("findOne").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lasting_outage_is_answered_reschedule_and_nothing_is_lost() {
    use connect_extension_mongodb::events::persist::PersistHandler;
    use connect_extension_mongodb::events::{Event, EventType, Handler, Outcome, Source};
    use connect_extension_mongodb::storage::IdStrategy;
    use connect_extension_mongodb::storage::SharedStorage;
    use connect_extension_mongodb::telemetry::Metrics;

    let Some(env) = Env::start("outage").await else {
        return;
    };
    let store = env
        .store(&[
            ("DATA_API_TIMEOUT_MS", "300"),
            ("DATA_API_DEADLINE_MS", "600"),
        ])
        .await;
    for _ in 0..100 {
        env.server.inject(Some("insertOne"), Fault::InternalError);
    }
    let shared = Arc::new(SharedStorage::new(Arc::new(store)));
    let handler = PersistHandler::new(shared, IdStrategy::State, 60, Metrics::shared());
    let object =
        json!({"id": "PR-OUT-1", "status": "pending", "updated": "2026-01-01T00:00:00+00:00"});
    let event = Event::new(
        EventType::AssetPurchaseRequestProcessing,
        "PR-OUT-1",
        object,
        Source::Http,
    );
    match handler.handle(&event).await {
        Outcome::Reschedule { countdown, message } => {
            assert_eq!(countdown, 60);
            assert!(message.contains("HTTP 500"), "{message}");
            assert!(message.contains("internal error"), "{message}");
        }
        other => panic!("expected reschedule, got {other:?}"),
    }
    let tries = env.server.requests_for("insertOne").len();
    assert!(tries >= 2, "retried before giving up: {tries}");
    // The outage ends; the redelivery is stored, once.
    env.server.clear_faults();
    match handler.handle(&event).await {
        Outcome::Done {
            document_id,
            duplicate,
            ..
        } => {
            assert!(!duplicate);
            let id = document_id.unwrap();
            assert_eq!(env.count_id(&id).await, 1);
        }
        other => panic!("expected success, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_time_out_and_are_retried_storing_once() {
    let Some(env) = Env::start("slow").await else {
        return;
    };
    let store = env.store(&[("DATA_API_TIMEOUT_MS", "300")]).await;
    // The first attempt times out on the client; the server carries on and writes later.
    env.server
        .inject(Some("insertOne"), Fault::Slow(Duration::from_millis(1200)));
    let doc = sample();
    let outcome = store.save(&doc).await.unwrap();
    assert!(
        matches!(outcome, SaveOutcome::Inserted | SaveOutcome::Duplicate),
        "{outcome:?}"
    );
    assert!(env.server.requests_for("insertOne").len() >= 2);
    // Let the slow request finish its (now duplicate) insert, then check: exactly one document.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(env.count_id(&doc.id).await, 1);

    // Slow every time: past the deadline the save is a retriable timeout.
    let store = env
        .store(&[
            ("DATA_API_TIMEOUT_MS", "200"),
            ("DATA_API_DEADLINE_MS", "500"),
        ])
        .await;
    for _ in 0..20 {
        env.server
            .inject(Some("insertOne"), Fault::Slow(Duration::from_millis(1000)));
    }
    let doc = sample();
    let err = store.save(&doc).await.unwrap_err();
    assert!(err.kind() == ErrorKind::Timeout, "{err}");
    assert!(err.is_retriable());
    env.server.clear_faults();
    // Whatever the slow requests did meanwhile, the redelivery ends with one document.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(store.save(&doc).await.is_ok());
    assert_eq!(env.count_id(&doc.id).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_after_commit_is_stored_once() {
    let Some(env) = Env::start("drop").await else {
        return;
    };
    let store = env.store(&[]).await;
    env.server.inject(Some("insertOne"), Fault::DropAfterCommit);
    let doc = sample();
    // The first request committed, then the connection broke; the retry answers duplicate key,
    // which means the document is there.
    assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Duplicate);
    let inserts = env.server.requests_for("insertOne");
    assert_eq!(inserts.len(), 2);
    assert!(inserts[0].fault.as_deref() == Some("DropAfterCommit"));
    assert_eq!(env.count_id(&doc.id).await, 1);

    // insertMany: the whole batch committed, the answer lost.
    env.server
        .inject(Some("insertMany"), Fault::DropAfterCommit);
    let batch = [sample(), sample(), sample()];
    let results = store.save_many(&batch).await;
    for r in &results {
        assert!(r.is_ok(), "{results:?}");
    }
    for d in &batch {
        assert_eq!(env.count_id(&d.id).await, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_plain_success_bodies_and_200_inserts_are_accepted() {
    let Some(env) = Env::start("text_plain").await else {
        return;
    };
    let store = env.store(&[]).await;
    env.server
        .inject(Some("insertOne"), Fault::TextPlainSuccess);
    env.server.inject(Some("findOne"), Fault::TextPlainSuccess);
    let doc = sample();
    assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Inserted);
    assert_eq!(
        store.get(&doc.id).await.unwrap(),
        Some(Value::Object(doc.body.clone()))
    );
    assert_eq!(env.server.pending_faults(), 0);

    // A whole gateway with the beta quirks: text/plain everywhere, inserts answered 200.
    let quirky = Env::start_with(
        "quirks",
        ServerConfig {
            text_plain_success: true,
            insert_status: 200,
            ..ServerConfig::default()
        },
    )
    .await
    .unwrap();
    let s = quirky.store(&[("DATA_API_EJSON", "true")]).await;
    c::round_trip(&s).await;
    c::save_many_reports_each_document(&s).await;
    c::list_filters_newest_first(&s).await;
}

// ---------------------------------------------------------------------------------------------
// Authentication.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_a_retriable_configuration_error_with_the_servers_message() {
    let Some(env) = Env::start("wrong_key").await else {
        return;
    };
    let store = env.store(&[("DATA_API_KEY", "not-the-key-s3cr3t")]).await;
    let err = store.save(&sample()).await.unwrap_err();
    // About the credentials, not the document: the event is rescheduled until the key is fixed.
    assert!(err.kind() == ErrorKind::Config, "{err}");
    assert!(err.is_retriable());
    assert!(err.to_string().contains("check DATA_API_KEY"), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("HTTP 401"), "{msg}");
    assert!(
        msg.contains("invalid session: error finding user for endpoint"),
        "{msg}"
    );
    assert!(msg.contains("InvalidSession"), "{msg}");
    assert!(!msg.contains("not-the-key-s3cr3t"), "the key leaked: {msg}");
    assert!(!format!("{store:?}").contains("not-the-key-s3cr3t"));
    // Not retried.
    assert_eq!(env.server.requests().len(), 1);
    // Reads and ping too.
    assert!(store.ping().await.unwrap_err().kind() == ErrorKind::Config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_and_email_password_auth() {
    let Some(env) = Env::start("auth_modes").await else {
        return;
    };
    let bearer = env
        .store(&[
            ("DATA_API_KEY", ""),
            ("DATA_API_BEARER_TOKEN", "test-access-token"),
        ])
        .await;
    let doc = sample();
    assert_eq!(bearer.save(&doc).await.unwrap(), SaveOutcome::Inserted);
    let r = env.server.requests().pop().unwrap();
    assert_eq!(
        header(&r, "authorization"),
        Some("Bearer test-access-token")
    );
    assert_eq!(header(&r, "api-key"), None);

    let user = env
        .store(&[
            ("DATA_API_KEY", ""),
            ("DATA_API_EMAIL", "user@example.com"),
            ("DATA_API_PASSWORD", "pa55word"),
        ])
        .await;
    assert!(user.get(&doc.id).await.unwrap().is_some());
    let r = env.server.requests().pop().unwrap();
    assert_eq!(header(&r, "email"), Some("user@example.com"));

    let bad_token = env
        .store(&[("DATA_API_KEY", ""), ("DATA_API_BEARER_TOKEN", "expired")])
        .await;
    let err = bad_token.ping().await.unwrap_err();
    assert!(err.to_string().contains("InvalidSession"), "{err}");

    let none = env.store(&[("DATA_API_KEY", "")]).await;
    let err = none.save(&sample()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("no authentication methods were specified"),
        "{err}"
    );
    assert!(err.kind() == ErrorKind::Config, "{err}");

    // Only one of email/password is a configuration error on our side.
    let settings = env.settings(&[("DATA_API_KEY", ""), ("DATA_API_EMAIL", "user@example.com")]);
    assert!(DataApiStorage::connect(&settings).await.unwrap_err().kind() == ErrorKind::Config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfiguration_is_reported_clearly() {
    let Some(env) = Env::start("misconfig").await else {
        return;
    };
    // Wrong app id in the endpoint: 404 "cannot find app", a configuration error.
    let wrong_app = env.server.base_url.replace("data-abcde", "data-zzzzz");
    let store = env
        .store(&[("DATA_API_ENDPOINT", wrong_app.as_str())])
        .await;
    let err = store.save(&sample()).await.unwrap_err();
    assert!(err.kind() == ErrorKind::Config, "{err}");
    assert!(
        err.to_string()
            .contains("cannot find app using Client App ID 'data-zzzzz'"),
        "{err}"
    );
    // Unknown data source (CLUSTER): 400 with the server's message; about the configuration,
    // not the document, so retriable.
    let store = env.store(&[("CLUSTER", "Cluster9")]).await;
    let err = store.save(&sample()).await.unwrap_err();
    assert!(err.kind() == ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("CLUSTER"), "{err}");
    assert!(
        err.to_string()
            .contains("The data source 'Cluster9' is disabled or does not exist"),
        "{err}"
    );
    // Nothing listening: retried, then unavailable (reschedule).
    let store = DataApiStorage::connect(&env.settings(&[
        (
            "DATA_API_ENDPOINT",
            "http://127.0.0.1:9/app/x/endpoint/data/v1",
        ),
        ("DATA_API_DEADLINE_MS", "300"),
        ("DATA_API_TIMEOUT_MS", "100"),
    ]))
    .await
    .unwrap()
    .with_retry_policy(fast_retries());
    let err = store.save(&sample()).await.unwrap_err();
    assert!(err.is_retriable(), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The test server itself follows the contract (the ten actions, status codes, formats).

async fn raw(
    env: &Env,
    action: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> (u16, String, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/action/{action}", env.server.base_url))
        .header("apiKey", "test-api-key");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req = req.header("Content-Type", "application/ejson");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut full =
        json!({"dataSource": "mongodb-atlas", "database": env.database, "collection": "todo"});
    for (k, v) in body.as_object().unwrap() {
        full[k] = v.clone();
    }
    let resp = req.body(full.to_string()).send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    (
        status,
        ct,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_server_implements_the_ten_actions() {
    let Some(env) = Env::start("contract").await else {
        return;
    };
    let ej = [("Accept", "application/ejson")];
    let (s, ct, v) = raw(
        &env,
        "insertOne",
        json!({"document": {"_id": {"$oid": "629971c0d71aad65bd59c595"}, "text": "dishes", "status": "open",
               "date": {"$date": {"$numberLong": "1654589430998"}}}}),
        &ej,
    )
    .await;
    assert_eq!((s, ct.as_str()), (201, "application/ejson"));
    assert_eq!(
        v,
        json!({"insertedId": {"$oid": "629971c0d71aad65bd59c595"}})
    );

    let (s, _, v) = raw(
        &env,
        "insertMany",
        json!({"documents": [{"_id": "b", "text": "laundry", "status": "open", "n": 2},
                              {"_id": "c", "text": "cook", "status": "complete", "n": 3}]}),
        &[],
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(v, json!({"insertedIds": ["b", "c"]}));
    // No _id: the server makes an ObjectId (JSON mode: a 24-hex string).
    let (_, ct, v) = raw(
        &env,
        "insertOne",
        json!({"document": {"text": "x", "status": "x"}}),
        &[],
    )
    .await;
    assert_eq!(ct, "application/json");
    assert_eq!(v["insertedId"].as_str().map(str::len), Some(24), "{v}");

    let (s, _, v) = raw(
        &env,
        "find",
        json!({"filter": {"status": {"$in": ["open", "complete"]}}, "sort": {"text": 1},
               "projection": {"text": 1, "_id": 0}, "skip": 1, "limit": 2}),
        &[],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"documents": [{"text": "dishes"}, {"text": "laundry"}]})
    );

    let (_, _, v) = raw(&env, "findOne", json!({"filter": {"_id": "zz"}}), &[]).await;
    assert_eq!(v, json!({"document": null}));
    let (_, _, v) = raw(
        &env,
        "findOne",
        json!({"filter": {"_id": "b"}, "projection": {"n": 1}}),
        &ej,
    )
    .await;
    assert_eq!(
        v,
        json!({"document": {"_id": "b", "n": {"$numberInt": "2"}}})
    );

    let (s, _, v) = raw(
        &env,
        "updateOne",
        json!({"filter": {"_id": "b"}, "update": {"$set": {"status": "complete"}}}),
        &ej,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"matchedCount": {"$numberInt": "1"}, "modifiedCount": {"$numberInt": "1"}})
    );
    let (_, _, v) = raw(
        &env,
        "updateMany",
        json!({"filter": {"_id": "new"}, "update": {"$set": {"status": "open"}}, "upsert": true}),
        &[],
    )
    .await;
    assert_eq!(
        v,
        json!({"matchedCount": 0, "modifiedCount": 0, "upsertedId": "new"})
    );
    let (_, _, v) = raw(
        &env,
        "replaceOne",
        json!({"filter": {"_id": "c"}, "replacement": {"text": "cook dinner", "status": "complete"}}),
        &[],
    )
    .await;
    assert_eq!(v, json!({"matchedCount": 1, "modifiedCount": 1}));

    let (_, _, v) = raw(
        &env,
        "aggregate",
        json!({"pipeline": [{"$match": {"status": "complete"}}, {"$group": {"_id": "$status", "count": {"$sum": 1}}}]}),
        &[],
    )
    .await;
    assert_eq!(v, json!({"documents": [{"_id": "complete", "count": 2}]}));

    let (_, _, v) = raw(&env, "deleteOne", json!({"filter": {"_id": "new"}}), &[]).await;
    assert_eq!(v, json!({"deletedCount": 1}));
    let (_, _, v) = raw(
        &env,
        "deleteMany",
        json!({"filter": {"status": "complete"}}),
        &ej,
    )
    .await;
    assert_eq!(v, json!({"deletedCount": {"$numberInt": "2"}}));

    // Duplicate key: 400, plain text, the documented FunctionError form.
    let (s, ct, v) = raw(
        &env,
        "insertOne",
        json!({"document": {"_id": {"$oid": "629971c0d71aad65bd59c595"}}}),
        &[],
    )
    .await;
    assert_eq!(s, 400);
    assert!(ct.starts_with("text/plain"), "{ct}");
    let text = v.as_str().unwrap().to_string();
    assert!(
        text.starts_with("Failed to insert document: FunctionError: (DuplicateKey) E11000"),
        "{text}"
    );
    assert!(text.contains("dup key"), "{text}");

    // Errors: unknown action 404; no credentials 400 InvalidParameter; email alone 400
    // MissingParameter; unknown content type 400; null optional field 400.
    let (s, _, _) = raw(&env, "count", json!({}), &[]).await;
    assert_eq!(s, 404);
    let resp = reqwest::Client::new()
        .post(format!("{}/action/find", env.server.base_url))
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["error"],
        json!("no authentication methods were specified")
    );
    assert_eq!(v["error_code"], json!("InvalidParameter"));
    assert!(v["link"].is_string());
    let resp = reqwest::Client::new()
        .post(format!("{}/action/find", env.server.base_url))
        .header("Content-Type", "application/json")
        .header("email", "user@example.com")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error_code"], json!("MissingParameter"));
    let (s, _, v) = raw(&env, "find", json!({}), &[("Content-Type", "text/plain")]).await;
    assert_eq!(s, 400, "{v}");
    let (s, _, v) = raw(&env, "find", json!({"projection": null}), &[]).await;
    assert_eq!(s, 400, "{v}");
}

// ---------------------------------------------------------------------------------------------
// insertMany: every document gets its own, correct outcome.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_many_stopped_by_a_duplicate_gives_exact_outcomes() {
    let Some(env) = Env::start("many_dup").await else {
        return;
    };
    let store = env.store(&[]).await;
    let existing = sample();
    store.save(&existing).await.unwrap();
    env.server.clear_log();
    let (a, b, c2) = (sample(), sample(), sample());
    let results = store
        .save_many(&[
            a.clone(),
            b.clone(),
            existing.clone(),
            c2.clone(),
            b.clone(),
        ])
        .await;
    let results: Vec<SaveOutcome> = results.into_iter().map(Result::unwrap).collect();
    use SaveOutcome::*;
    assert_eq!(
        results,
        vec![Inserted, Inserted, Duplicate, Inserted, Duplicate]
    );
    // The ordered insertMany stopped at `existing` (a, b committed); the one after it was looked
    // up, then inserted on its own.
    let actions: Vec<String> = env
        .server
        .requests()
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert_eq!(actions, vec!["insertMany", "find", "insertOne"]);
    for d in [&a, &b, &existing, &c2] {
        assert_eq!(env.count_id(&d.id).await, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_batch_falls_back_to_one_insert_per_document() {
    let Some(env) = Env::start("many_rejected").await else {
        return;
    };
    let store = env.store(&[]).await;
    env.server.inject(
        Some("insertMany"),
        Fault::Status {
            status: 400,
            content_type: "text/plain",
            body: "Failed to insert documents: FunctionError: mongodb insert: argument must be an object".into(),
        },
    );
    // …and the second document alone is refused too.
    let docs = [sample(), sample(), sample()];
    env.server.inject(Some("insertOne"), Fault::Pass);
    env.server.inject(
        Some("insertOne"),
        Fault::Status {
            status: 400,
            content_type: "text/plain",
            body: "Failed to insert document: FunctionError: document is too large".into(),
        },
    );
    let results = store.save_many(&docs).await;
    // docs[0] and docs[2] stored; docs[1] refused, alone.
    assert_eq!(results[0].as_ref().unwrap(), &SaveOutcome::Inserted);
    assert_eq!(env.count_id(&docs[0].id).await, 1);
    let err = results[1].as_ref().unwrap_err();
    assert!(err.kind() == ErrorKind::RejectedDocument, "{err}");
    assert!(err.to_string().contains("document is too large"), "{err}");
    assert_eq!(results[2].as_ref().unwrap(), &SaveOutcome::Inserted);
    assert_eq!(env.count_id(&docs[2].id).await, 1);
    assert_eq!(env.count_id(&docs[1].id).await, 0);

    // Refused credentials: every document gets the error, after one request.
    env.server.clear_log();
    let bad = env.store(&[("DATA_API_KEY", "wrong")]).await;
    let results = bad.save_many(&[sample(), sample()]).await;
    assert!(results
        .iter()
        .all(|r| r.as_ref().is_err_and(|e| e.kind() == ErrorKind::Config)));
    assert_eq!(env.server.requests().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// End to end: the daemon with only the tutorial's Data API variables, events POSTed to it.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_stores_each_accepted_event_once_through_the_data_api() {
    let Some(env) = Env::start("daemon").await else {
        return;
    };
    let settings = env.settings(&[
        ("HTTP_LISTEN", "127.0.0.1:0"),
        ("STORAGE_BACKENDS", "auto"),
        ("DATA_API_TIMEOUT_MS", "2000"),
        ("DATA_API_DEADLINE_MS", "2500"),
    ]);
    let app = connect_extension_mongodb::App::build(settings)
        .await
        .expect("app");
    assert_eq!(app.storage().current().name(), "data_api");
    let base = format!("http://{}", app.http_addr());
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(app.run(stop.clone()));
    let http = reqwest::Client::new();

    let mut object: Value =
        serde_json::from_str(include_str!("../fixtures/purchase_request.json")).unwrap();
    let object_id = format!("PR-E2E-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    object["id"] = json!(object_id);
    let post = |body: Value| {
        let http = http.clone();
        let url = format!("{base}/events");
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            let retry_after = r.headers().get("retry-after").cloned();
            (status, retry_after, r.json::<Value>().await.unwrap())
        }
    };

    // An outage: answered "try again later", nothing stored.
    for _ in 0..100 {
        env.server.inject(Some("insertOne"), Fault::InternalError);
    }
    let (status, retry_after, body) = post(object.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert!(retry_after.is_some());
    assert_eq!(body["result"], json!("reschedule"), "{body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("HTTP 500"),
        "{body}"
    );
    env.server.clear_faults();

    // Redelivered, with the answer lost after the commit: stored, once.
    env.server.inject(Some("insertOne"), Fault::DropAfterCommit);
    let (status, _, body) = post(object.clone()).await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let id = body["document_id"]
        .as_str()
        .expect("document_id")
        .to_string();
    assert_eq!(env.count_id(&id).await, 1);

    // Delivered again: a duplicate, still one document; read back through the Data API.
    let (status, _, body) = post(object.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["duplicate"], json!(true), "{body}");
    assert_eq!(env.count_id(&id).await, 1);
    let stored: Value = http
        .get(format!("{base}/events/{}", urlencode(&id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The object exactly as POSTed.
    assert_eq!(
        connect_extension_mongodb::storage::EventDocument::object_of(&stored),
        object,
        "{stored}"
    );
    let ready = http.get(format!("{base}/ready")).send().await.unwrap();
    assert!(ready.status().is_success());

    stop.cancel();
    running.await.unwrap().unwrap();
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

// ---------------------------------------------------------------------------------------------
// Issue 13: a 2xx is not proof of a write; redirects are never followed; a duplicate is a duplicate
// whatever the status; credentials and endpoint errors are retriable; only `_id` duplicates count
// as stored; every answer is read within a bound.

use data_api_server::Recorder;

/// The log lines of the test process, captured by its one process-wide subscriber (a thread-local
/// `set_default` misses records under parallel load: tracing caches callsite interest globally).
/// Tests pick their own lines by a marker (their gateway's address).
struct Captured;

impl Captured {
    fn global() -> &'static Captured {
        crate::support::capture_logs();
        &Captured
    }
    fn text(&self) -> String {
        crate::support::trace_log_text()
    }
}

fn html(status: u16) -> Fault {
    Fault::Status {
        status,
        content_type: "text/html",
        body: "<!DOCTYPE html><html><body>Login</body></html>".into(),
    }
}

fn json_answer(status: u16, body: Value) -> Fault {
    Fault::Status {
        status,
        content_type: "application/json",
        body: body.to_string(),
    }
}

#[tokio::test]
async fn redirects_are_never_followed_and_are_a_loud_configuration_error() {
    let Some(env) = Env::start("redirect").await else {
        return;
    };
    let logs = Captured::global();
    let marker = env.server.addr.to_string();
    let elsewhere = Recorder::start().await;
    let location = format!(
        "http://thief:pw-s3cr3t@{}/steal/action/insertOne?secret=q-s3cr3t&x=1",
        elsewhere.addr
    );
    let store = env.store(&[]).await;
    for status in [307u16, 301, 308, 302] {
        env.server.clear_log();
        env.server.inject(
            Some("insertOne"),
            Fault::Redirect {
                status,
                location: location.clone(),
            },
        );
        let doc = sample();
        let err = store.save(&doc).await.unwrap_err();
        assert!(err.kind() == ErrorKind::Config, "{status}: {err}");
        assert!(err.is_retriable(), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("HTTP {status}")), "{msg}");
        assert!(msg.contains("DATA_API_ENDPOINT"), "{msg}");
        assert!(
            !msg.contains("s3cr3t"),
            "the Location's secrets leaked: {msg}"
        );
        // Not retried (a configuration error), nothing stored, nothing sent elsewhere.
        assert_eq!(env.server.requests_for("insertOne").len(), 1);
        assert_eq!(env.count_id(&doc.id).await, 0);
        assert!(
            elsewhere.received().is_empty(),
            "the other host received: {:?}",
            elsewhere.received()
        );
        // The redelivery, once the gateway is fixed, is stored.
        assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Inserted);
    }
    // Logged once per change of state, not once per event.
    let errors = |text: String| {
        text.lines()
            .filter(|l| l.contains("ERROR") && l.contains(&marker))
            .count()
    };
    let before = errors(logs.text());
    for _ in 0..3 {
        env.server.inject(
            Some("insertOne"),
            Fault::Redirect {
                status: 307,
                location: location.clone(),
            },
        );
        assert!(store.save(&sample()).await.is_err());
    }
    assert_eq!(errors(logs.text()) - before, 1, "{}", logs.text());
    // /ready's probe fails on a redirect too.
    env.server.inject(
        Some("findOne"),
        Fault::Redirect {
            status: 307,
            location: location.clone(),
        },
    );
    assert!(store.ping().await.unwrap_err().kind() == ErrorKind::Config);
    assert!(elsewhere.received().is_empty());
    // Reported loudly (ERROR, naming the setting), never with the Location's secrets.
    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("ERROR") && l.contains("DATA_API_ENDPOINT") && l.contains("307")),
        "{text}"
    );
    assert!(!text.contains("s3cr3t"), "a secret reached the log: {text}");
    assert!(!text.contains("test-api-key"), "the key reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_html_or_shapeless_2xx_is_not_a_write() {
    let Some(env) = Env::start("shapeless").await else {
        return;
    };
    let store = env.store(&[]).await;
    let doc = sample();
    let faults = [
        html(200),
        json_answer(201, json!({})),
        json_answer(201, json!({"ok": 1})),
        json_answer(201, json!({"insertedId": null})),
        json_answer(201, json!({"insertedId": "somebody-else"})),
        json_answer(201, json!({"insertedIds": [doc.id]})),
        json_answer(201, json!({"n": 0})),
        json_answer(204, json!(null)),
    ];
    for fault in faults {
        let shown = format!("{fault:?}");
        env.server.inject(Some("insertOne"), fault);
        let err = store.save(&doc).await.unwrap_err();
        assert!(err.kind() == ErrorKind::Unavailable, "{shown}: {err}");
        assert!(err.is_retriable(), "{err}");
        assert_eq!(env.count_id(&doc.id).await, 0, "{shown}");
    }
    // insertMany: an answer without every id is no proof for any of them.
    let batch = [sample(), sample(), sample()];
    for fault in [
        html(201),
        json_answer(201, json!({"insertedIds": [batch[0].id, batch[1].id]})),
        json_answer(
            201,
            json!({"insertedIds": [batch[0].id, batch[2].id, batch[1].id]}),
        ),
        json_answer(201, json!({"n": 2})),
        json_answer(201, json!({"insertedId": batch[0].id})),
    ] {
        let shown = format!("{fault:?}");
        env.server.inject(Some("insertMany"), fault);
        let results = store.save_many(&batch).await;
        for r in &results {
            let err = r.as_ref().unwrap_err();
            assert!(err.kind() == ErrorKind::Unavailable, "{shown}: {err}");
        }
    }
    // Reads and the readiness probe do not take an HTML page for an answer either.
    env.server.inject(Some("findOne"), html(200));
    assert!(store.ping().await.unwrap_err().is_retriable());
    env.server
        .inject(Some("findOne"), json_answer(200, json!({"ok": 1})));
    assert!(store.ping().await.is_err());
    env.server.inject(Some("findOne"), html(200));
    assert!(store.get(&doc.id).await.is_err());
    env.server.inject(Some("find"), html(200));
    assert!(store.list(&Default::default()).await.is_err());
    assert_eq!(env.server.pending_faults(), 0);
    // The redeliveries are stored.
    assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Inserted);
    for r in store.save_many(&batch).await {
        assert_eq!(r.unwrap(), SaveOutcome::Inserted);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_style_insert_answers_are_accepted() {
    // FerretDB's Data API answers inserts with `{"n": <count>}` (contract notes §10).
    let Some(env) = Env::start_with(
        "n_style",
        ServerConfig {
            n_style_inserts: true,
            ..ServerConfig::default()
        },
    )
    .await
    else {
        return;
    };
    let store = env.store(&[]).await;
    let doc = sample();
    assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Inserted);
    assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Duplicate);
    let batch = [sample(), sample(), doc.clone(), sample()];
    let results: Vec<SaveOutcome> = store
        .save_many(&batch)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    use SaveOutcome::*;
    assert_eq!(results, vec![Inserted, Inserted, Duplicate, Inserted]);
    for d in &batch {
        assert_eq!(env.count_id(&d.id).await, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_answered_as_http_500_is_stored_and_not_retried() {
    for (name, as_json) in [("dup500_text", false), ("dup500_json", true)] {
        let Some(env) = Env::start_with(
            name,
            ServerConfig {
                duplicate_status: 500,
                duplicate_as_json: as_json,
                ..ServerConfig::default()
            },
        )
        .await
        else {
            return;
        };
        let store = env.store(&[]).await;
        let doc = sample();
        assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Inserted);
        env.server.clear_log();
        assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Duplicate);
        assert_eq!(env.server.requests_for("insertOne").len(), 1, "{name}");

        // insertMany stopped by a duplicate: still exact per-document outcomes.
        env.server.clear_log();
        let (a, b, c2) = (sample(), sample(), sample());
        let results: Vec<SaveOutcome> = store
            .save_many(&[a.clone(), b.clone(), doc.clone(), c2.clone(), b.clone()])
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        use SaveOutcome::*;
        assert_eq!(
            results,
            vec![Inserted, Inserted, Duplicate, Inserted, Duplicate],
            "{name}"
        );
        assert_eq!(env.server.requests_for("insertMany").len(), 1, "{name}");
        for d in [&a, &b, &doc, &c2] {
            assert_eq!(env.count_id(&d.id).await, 1);
        }
    }
    // The same text behind a 502 from a proxy, and a bare `code: 11000` JSON body.
    let Some(env) = Env::start("dup_other").await else {
        return;
    };
    let store = env.store(&[]).await;
    let doc = sample();
    store.save(&doc).await.unwrap();
    env.server.clear_log();
    env.server.inject(
        Some("insertOne"),
        Fault::Status {
            status: 502,
            content_type: "text/plain",
            body: format!(
                "upstream: E11000 duplicate key error collection: x.y index: _id_ dup key: {{ _id: \"{}\" }}",
                doc.id
            ),
        },
    );
    assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Duplicate);
    env.server.inject(
        Some("insertOne"),
        json_answer(
            500,
            json!({"code": 11000, "errmsg": format!("duplicate key: index: _id_ dup key: {{ _id: \"{}\" }}", doc.id)}),
        ),
    );
    assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Duplicate);
    assert_eq!(env.server.requests_for("insertOne").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_not_found_answers_are_retriable_configuration_errors() {
    let Some(env) = Env::start("auth_retriable").await else {
        return;
    };
    let store = env.store(&[]).await;
    let cases = [
        (
            json_answer(
                401,
                json!({"error": "invalid session: error finding user for endpoint", "error_code": "InvalidSession"}),
            ),
            "DATA_API_KEY",
        ),
        (
            json_answer(
                403,
                json!({"error": "forbidden", "error_code": "Forbidden"}),
            ),
            "DATA_API_KEY",
        ),
        (html(403), "DATA_API_KEY"),
        (
            json_answer(
                404,
                json!({"error": "cannot find app using Client App ID 'data-abcde'"}),
            ),
            "DATA_API_ENDPOINT",
        ),
        (html(404), "DATA_API_ENDPOINT"),
    ];
    for (fault, setting) in cases {
        let shown = format!("{fault:?}");
        let doc = sample();
        env.server.clear_log();
        env.server.inject(Some("insertOne"), fault.clone());
        let err = store.save(&doc).await.unwrap_err();
        assert!(err.kind() == ErrorKind::Config, "{shown}: {err}");
        assert!(err.is_retriable(), "{err}");
        assert!(err.to_string().contains(setting), "{shown}: {err}");
        assert_eq!(env.server.requests().len(), 1, "not retried at once");
        // The same answer to a batch: every document retriable, after one request.
        env.server.inject(Some("insertMany"), fault.clone());
        for r in store.save_many(&[sample(), sample()]).await {
            assert!(
                r.as_ref().is_err_and(|e| e.kind() == ErrorKind::Config),
                "{shown}: {r:?}"
            );
        }
        // /ready's probe fails with the reason.
        env.server.inject(Some("findOne"), fault);
        let err = store.ping().await.unwrap_err();
        assert!(err.to_string().contains(setting), "{err}");
        // Fixed: the redelivery is stored.
        assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Inserted);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_on_another_unique_index_is_rejected_with_the_reason() {
    let Some(env) = Env::start("other_index").await else {
        return;
    };
    let store = env.store(&[]).await;
    unique_ref_index(&env).await;
    let with_ref = |r: &str| {
        let mut d = sample();
        d.body.insert("ref".into(), json!(r));
        d
    };
    let first = with_ref("R-1");
    assert_eq!(store.save(&first).await.unwrap(), SaveOutcome::Inserted);
    // The same document again: a duplicate on `_id`, stored.
    assert_eq!(store.save(&first).await.unwrap(), SaveOutcome::Duplicate);
    // Another document with the same `ref`: refused, with the index named.
    let clash = with_ref("R-1");
    let err = store.save(&clash).await.unwrap_err();
    assert!(err.kind() == ErrorKind::RejectedDocument, "{err}");
    assert!(err.to_string().contains("ref_unique"), "{err}");
    assert_eq!(env.count_id(&clash.id).await, 0);
    // In a batch, it fails alone; the others are stored.
    let (a, b) = (with_ref("R-2"), with_ref("R-3"));
    let results = store
        .save_many(&[a.clone(), with_ref("R-1"), b.clone(), first.clone()])
        .await;
    // The ordered insertMany stopped at the clash without saying where: `a` (committed by it) is
    // found stored, which is all a duplicate answer can tell.
    assert!(
        matches!(
            results[0],
            Ok(SaveOutcome::Inserted) | Ok(SaveOutcome::Duplicate)
        ),
        "{results:?}"
    );
    assert!(
        matches!(&results[1], Err(e) if e.kind() == ErrorKind::RejectedDocument && e.message().contains("ref_unique")),
        "{results:?}"
    );
    assert_eq!(results[2].as_ref().unwrap(), &SaveOutcome::Inserted);
    assert_eq!(results[3].as_ref().unwrap(), &SaveOutcome::Duplicate);
    assert_eq!(env.count_id(&a.id).await, 1);
    assert_eq!(env.count_id(&b.id).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_answers_are_cut_off_and_retriable() {
    let Some(env) = Env::start("endless").await else {
        return;
    };
    let store = env
        .store(&[
            ("DATA_API_TIMEOUT_MS", "20000"),
            ("DATA_API_DEADLINE_MS", "20000"),
        ])
        .await;
    let doc = sample();
    for (action, status) in [
        ("insertOne", 201),
        ("findOne", 200),
        ("find", 200),
        ("insertOne", 500),
    ] {
        env.server.clear_faults();
        // Enough for every attempt (an endless 500 is retried like any 500).
        for _ in 0..10 {
            env.server.inject(
                Some(action),
                Fault::Endless {
                    status,
                    content_type: "application/json",
                },
            );
        }
        let err = match action {
            "insertOne" => store.save(&doc).await.map(|_| ()).unwrap_err(),
            "findOne" => store.get(&doc.id).await.map(|_| ()).unwrap_err(),
            _ => store
                .list(&Default::default())
                .await
                .map(|_| ())
                .unwrap_err(),
        };
        assert!(err.is_retriable(), "{err}");
        assert!(
            err.kind() != ErrorKind::Timeout,
            "{action} {status}: read until the timeout instead of stopping at the bound: {err}"
        );
        if status < 300 {
            assert!(err.to_string().contains("longer than"), "{err}");
        }
    }
    env.server.clear_faults();
    assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Inserted);
}

/// The daemon on this test's gateway: base URL, stop token, its task.
async fn start_daemon(
    env: &Env,
) -> (
    String,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<Result<(), connect_extension_mongodb::AppError>>,
) {
    let settings = env.settings(&[
        ("HTTP_LISTEN", "127.0.0.1:0"),
        ("DATA_API_TIMEOUT_MS", "2000"),
        ("DATA_API_DEADLINE_MS", "2500"),
    ]);
    let app = connect_extension_mongodb::App::build(settings)
        .await
        .expect("app");
    let base = format!("http://{}", app.http_addr());
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(app.run(stop.clone()));
    (base, stop, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_answers_503_for_gateway_faults_and_422_only_for_the_document() {
    let Some(env) = Env::start_with(
        "daemon_faults",
        ServerConfig {
            duplicate_status: 500,
            ..ServerConfig::default()
        },
    )
    .await
    else {
        return;
    };
    unique_ref_index(&env).await;
    let elsewhere = Recorder::start().await;
    let (base, stop, running) = start_daemon(&env).await;
    let http = reqwest::Client::new();
    let post = |body: Value| {
        let http = http.clone();
        let url = format!("{base}/events");
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let ready = || {
        let http = http.clone();
        let url = format!("{base}/ready");
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let mut object: Value =
        serde_json::from_str(include_str!("../fixtures/purchase_request.json")).unwrap();
    object["id"] = json!(format!(
        "PR-FLT-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    object["ref"] = json!("R-1");

    let redirect = || Fault::Redirect {
        status: 307,
        location: format!("http://u:pw-s3cr3t@{}/x?secret=q-s3cr3t", elsewhere.addr),
    };
    let faults: Vec<(&str, Fault)> = vec![
        ("redirect", redirect()),
        ("html 200", html(200)),
        ("no insertedId", json_answer(201, json!({}))),
        (
            "401",
            json_answer(
                401,
                json!({"error": "invalid session", "error_code": "InvalidSession"}),
            ),
        ),
        ("403", html(403)),
        ("404", json_answer(404, json!({"error": "cannot find app"}))),
    ];
    for (name, fault) in faults {
        env.server.inject(Some("insertOne"), fault.clone());
        let (status, body) = post(object.clone()).await;
        assert_eq!(status, 503, "{name}: {body}");
        assert_eq!(body["result"], json!("reschedule"), "{name}: {body}");
        assert!(!body.to_string().contains("s3cr3t"), "{body}");
        // /ready turns 503 with the reason while the gateway answers so.
        if name != "no insertedId" {
            env.server.inject(Some("findOne"), fault);
            let (status, text) = ready().await;
            assert_eq!(status, 503, "{name}: {text}");
            assert!(text.contains("data_api"), "{text}");
            assert!(!text.contains("s3cr3t"), "{text}");
        }
        env.server.clear_faults();
    }
    assert!(
        elsewhere.received().is_empty(),
        "{:?}",
        elsewhere.received()
    );
    assert_eq!(ready().await.0, 200);

    // Stored now; the redelivery is a duplicate although the gateway answers it with a 500.
    let (status, body) = post(object.clone()).await;
    assert_eq!(status, 201, "{body}");
    let id = body["document_id"].as_str().unwrap().to_string();
    env.server.clear_log();
    let (status, body) = post(object.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["duplicate"], json!(true), "{body}");
    assert_eq!(env.server.requests_for("insertOne").len(), 1);
    assert_eq!(env.count_id(&id).await, 1);

    // Another object with the same value on a user's unique index: failed, with the reason.
    let mut other = object.clone();
    other["id"] = json!(format!("{}-B", object["id"].as_str().unwrap()));
    let (status, body) = post(other).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("ref_unique"), "{body}");

    stop.cancel();
    running.await.unwrap().unwrap();
}

/// A user's own unique index on `ref` (named `ref_unique`) in the test collection.
async fn unique_ref_index(env: &Env) {
    env.collection()
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"ref": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .name("ref_unique".to_string())
                        .build(),
                )
                .build(),
        )
        .await
        .expect("index");
}
