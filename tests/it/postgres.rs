//! The `postgres` backend against a real PostgreSQL server: the conformance suite, the group
//! write, an outage mid-stream, TLS (`verify-full`) with SCRAM, and refused credentials.
//!
//! The shared server is `POSTGRES_URL` (`scripts/test.sh` starts one and sets it, with
//! `POSTGRES_TLS_URL` and `POSTGRES_TEST_CA`); without it, these tests start one with
//! `scripts/test-postgres.sh` (its default home under target/), and skip only if that fails.
//! The outage test starts a private server of its own (its own `POSTGRES_HOME`).

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use connect_extension_mongodb::config::secret::Secret;
use connect_extension_mongodb::events::persist::PersistHandler;
use connect_extension_mongodb::events::{Event, EventType, Handler, Outcome, Source};
use connect_extension_mongodb::storage::conformance::{self as c, sample_doc};
use connect_extension_mongodb::storage::postgres::{PostgresStorage, Settings};
use connect_extension_mongodb::storage::{
    ErrorKind, IdStrategy, SaveOutcome, SharedStorage, Storage,
};
use connect_extension_mongodb::telemetry::Metrics;
use serde_json::{json, Value};

fn script() -> String {
    format!("{}/scripts/test-postgres.sh", env!("CARGO_MANIFEST_DIR"))
}

fn read_env(home: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{home}/env")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

/// The shared server's variables (`POSTGRES_URL`, `POSTGRES_TLS_URL`, `POSTGRES_TEST_CA`);
/// `None` (skip) only when `POSTGRES_URL` is unset and the script cannot start a server.
fn shared() -> Option<&'static Vec<(String, String)>> {
    static VARS: OnceLock<Option<Vec<(String, String)>>> = OnceLock::new();
    VARS.get_or_init(|| {
        if std::env::var("POSTGRES_URL").is_ok_and(|u| !u.is_empty()) {
            return Some(
                ["POSTGRES_URL", "POSTGRES_TLS_URL", "POSTGRES_TEST_CA"]
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
                    .collect(),
            );
        }
        let home = format!("{}/target/postgres/server", env!("CARGO_MANIFEST_DIR"));
        let ok = Command::new("bash")
            .arg(script())
            .arg("start")
            .env("POSTGRES_HOME", &home)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            eprintln!("POSTGRES_URL is unset and scripts/test-postgres.sh cannot start a server: skipping the postgres tests");
            return None;
        }
        Some(read_env(&home))
    })
    .as_ref()
}

fn var(name: &str) -> Option<String> {
    shared()?
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

fn settings(url: &str, table: &str) -> Settings {
    Settings {
        url: Secret::new(url),
        table: table.into(),
        pool_size: 4,
        connect_timeout_ms: 2000,
        operation_timeout_ms: 10_000,
        batch_max: 64,
        batch_wait_ms: 2,
    }
}

async fn open(url: &str, table: &str) -> PostgresStorage {
    PostgresStorage::connect(&settings(url, table))
        .await
        .expect("connect")
}

async fn count(store: &PostgresStorage, filter: &str) -> i64 {
    let client = store.pool().get().await.unwrap();
    let sql = format!("SELECT count(*) FROM \"{}\" {filter}", store.table());
    client.query_one(&sql, &[]).await.unwrap().get(0)
}

async fn drop_table(store: &PostgresStorage) {
    let client = store.pool().get().await.unwrap();
    let _ = client
        .batch_execute(&format!("DROP TABLE IF EXISTS \"{}\"", store.table()))
        .await;
}

// ---------------------------------------------------------------------------------------------
// The storage conformance suite
// ---------------------------------------------------------------------------------------------

async fn conformance_fixture(case: &'static str) -> Option<c::Fixture> {
    let url = var("POSTGRES_URL")?;
    let store = Arc::new(open(&url, &unique(&format!("t_{case}"))).await);
    let s = store.clone();
    Some(c::Fixture::new(store, ()).with_cleanup(async move {
        drop_table(&s).await;
        s.close().await;
    }))
}

connect_extension_mongodb::storage_conformance!(conformance_fixture);

// ---------------------------------------------------------------------------------------------
// Group commit
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_write_is_idempotent_with_duplicates_inside_and_across_groups() {
    let Some(url) = var("POSTGRES_URL") else {
        return;
    };
    let store = Arc::new(open(&url, &unique("t_group")).await);
    let docs: Vec<_> = (0..300)
        .map(|i| sample_doc(&unique(&format!("PR-{i}")), "pending", "u"))
        .collect();
    // 300 concurrent saves, each document twice (duplicates in the same and in later groups),
    // then all of them again in one save_many with in-batch repeats.
    let mut tasks = Vec::new();
    for round in 0..2 {
        for d in &docs {
            let (s, d) = (store.clone(), d.clone());
            tasks.push(tokio::spawn(async move {
                if round == 1 {
                    tokio::task::yield_now().await;
                }
                s.save(&d).await.unwrap()
            }));
        }
    }
    let mut inserted = 0;
    let mut duplicate = 0;
    for t in tasks {
        match t.await.unwrap() {
            SaveOutcome::Inserted => inserted += 1,
            SaveOutcome::Duplicate => duplicate += 1,
        }
    }
    assert_eq!((inserted, duplicate), (300, 300));
    let (groups, grouped) = store.batch_stats();
    assert!(
        groups < 600,
        "group commit: {groups} statements for {grouped} documents"
    );

    let fresh = sample_doc(&unique("PR-new"), "pending", "u");
    let again: Vec<_> = docs
        .iter()
        .take(10)
        .cloned()
        .chain([fresh.clone(), fresh.clone(), docs[0].clone()])
        .collect();
    let results: Vec<_> = store
        .save_many(&again)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut expected = vec![SaveOutcome::Duplicate; 10];
    expected.extend([
        SaveOutcome::Inserted,
        SaveOutcome::Duplicate,
        SaveOutcome::Duplicate,
    ]);
    assert_eq!(results, expected);
    assert_eq!(count(&store, "").await, 301);
    drop_table(&store).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_back_in_the_order_received_and_asset_id_is_indexed() {
    let Some(url) = var("POSTGRES_URL") else {
        return;
    };
    let store = open(&url, &unique("t_order")).await;
    let mut doc = sample_doc(&unique("PR"), "pending", "u");
    doc.body.insert("zeta".into(), json!(1));
    doc.body.insert("alpha".into(), json!({"y": 2, "b": 1}));
    store.save(&doc).await.unwrap();
    let back = store.get(&doc.id).await.unwrap().unwrap();
    let keys: Vec<_> = back.as_object().unwrap().keys().cloned().collect();
    let sent: Vec<_> = doc.body.keys().cloned().collect();
    assert_eq!(keys, sent);
    assert_eq!(
        serde_json::to_string(&back).unwrap(),
        serde_json::to_string(&Value::Object(doc.body.clone())).unwrap()
    );
    assert_eq!(count(&store, "WHERE asset_id = 'AS-1'").await, 1);
    drop_table(&store).await;
    store.close().await;
}

// ---------------------------------------------------------------------------------------------
// Outage
// ---------------------------------------------------------------------------------------------

/// A PostgreSQL server of the test's own (own `POSTGRES_HOME`, port and data), stopped
/// (`pg_ctl stop -m fast`) and restarted by the test; cleaned when dropped.
struct PrivateServer {
    home: tempfile::TempDir,
    url: String,
}

impl PrivateServer {
    async fn start() -> Option<PrivateServer> {
        shared()?;
        let home = tempfile::Builder::new()
            .prefix("cem-pg-")
            .tempdir()
            .unwrap();
        let mut server = PrivateServer {
            home,
            url: String::new(),
        };
        server.run("start").await;
        let url = read_env(server.home.path().to_str().unwrap())
            .into_iter()
            .find(|(k, _)| k == "POSTGRES_URL")
            .map(|(_, v)| v)
            .expect("env file");
        server.url = url;
        Some(server)
    }

    fn command(&self, action: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .arg(action)
            .env("POSTGRES_HOME", self.home.path())
            .env_remove("POSTGRES_PORT")
            .env_remove("POSTGRES_FRESH");
        cmd
    }

    async fn run(&self, action: &'static str) {
        let mut cmd = self.command(action);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .expect("run scripts/test-postgres.sh");
        assert!(
            out.status.success(),
            "scripts/test-postgres.sh {action} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.command("clean").output();
    }
}

fn purchase_event(object_id: &str) -> Event {
    let mut object: Value =
        serde_json::from_str(include_str!("../fixtures/purchase_request.json")).unwrap();
    object["id"] = json!(object_id);
    Event::new(
        EventType::AssetPurchaseRequestProcessing,
        object_id,
        object,
        Source::Websocket,
    )
    .with_task_id(format!("TQ-{}", uuid::Uuid::new_v4().simple()))
}

async fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_mid_stream_events_are_rescheduled_and_none_lost() {
    let Some(server) = PrivateServer::start().await else {
        return;
    };
    let store = Arc::new(open(&server.url, "outage").await);
    let handler = Arc::new(PersistHandler::new(
        Arc::new(SharedStorage::new(store.clone())),
        IdStrategy::State,
        30,
        Metrics::shared(),
    ));
    const N: usize = 200;
    let events: Vec<Event> = (0..N)
        .map(|i| purchase_event(&format!("PR-{i:04}")))
        .collect();
    let done = Arc::new(AtomicUsize::new(0));
    let rescheduled = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(16));
    // The first 40 events may start at once; the others only once the server is down, so that
    // the stream cannot finish before the stop takes effect (a slow `pg_ctl stop` under load).
    const BEFORE: usize = 40;
    let started = Arc::new(tokio::sync::Semaphore::new(BEFORE));
    let mut tasks = Vec::new();
    for event in events.clone() {
        let (handler, done, rescheduled, failed, in_flight, started) = (
            handler.clone(),
            done.clone(),
            rescheduled.clone(),
            failed.clone(),
            in_flight.clone(),
            started.clone(),
        );
        tasks.push(tokio::spawn(async move {
            started.acquire().await.unwrap().forget();
            let _slot = in_flight.acquire().await.unwrap();
            loop {
                match handler.handle(&event).await {
                    Outcome::Done { .. } => {
                        done.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Outcome::Reschedule { .. } => {
                        rescheduled.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        panic!(
                            "event {}: {other:?} (must be success or reschedule)",
                            event.object_id
                        )
                    }
                }
            }
        }));
    }
    let failing = || failed.load(Ordering::SeqCst) > 0;
    wait_until("the first 40 events", Duration::from_secs(120), || {
        failing() || done.load(Ordering::SeqCst) >= BEFORE
    })
    .await;
    assert!(!failing());
    server.run("stop").await;
    let done_while_down = done.load(Ordering::SeqCst);
    started.add_permits(N - BEFORE);
    wait_until("reschedules while down", Duration::from_secs(120), || {
        failing() || rescheduled.load(Ordering::SeqCst) >= 20
    })
    .await;
    assert!(!failing());
    assert!(done.load(Ordering::SeqCst) <= done_while_down + 16);
    assert!(done_while_down < N, "the stream ended before the outage");
    let ping = store.ping().await.unwrap_err();
    assert!(ping.is_retriable(), "{ping}");
    server.run("start").await;
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), N);
    store.ping().await.unwrap();
    assert_eq!(count(&store, "").await, N as i64);
    // nothing twice
    let client = store.pool().get().await.unwrap();
    let distinct: i64 = client
        .query_one("SELECT count(DISTINCT object_id) FROM outage", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct, N as i64);
    drop(client);
    store.close().await;
}

// ---------------------------------------------------------------------------------------------
// TLS, SCRAM, credentials
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verify_full_with_scram() {
    let Some(url) = var("POSTGRES_TLS_URL") else {
        return;
    };
    // The script's server authenticates host connections with SCRAM-SHA-256 (pg_hba), over TLS
    // with a certificate of its test CA (`sslrootcert`).
    assert!(url.contains("sslmode=verify-full"), "{url}");
    let store = open(&url, &unique("t_tls")).await;
    store.ping().await.unwrap();
    let client = store.pool().get().await.unwrap();
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the session is encrypted");
    drop(client);
    let doc = sample_doc(&unique("PR"), "pending", "u");
    assert_eq!(store.save(&doc).await.unwrap(), SaveOutcome::Inserted);
    drop_table(&store).await;
    store.close().await;

    // verify-full against the system roots (not the test CA): refused, retriable, no password shown.
    let system = url
        .split('?')
        .next()
        .map(|base| format!("{base}?sslmode=verify-full&sslrootcert=system"))
        .unwrap();
    let password = password_of(&url);
    if let Err(e) = PostgresStorage::connect(&settings(&system, "t_never")).await {
        assert!(!e.to_string().contains(&password), "{e}");
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    } else {
        panic!("a certificate of the test CA was accepted against the system roots");
    }
}

fn password_of(url: &str) -> String {
    let userinfo = url.split("://").nth(1).unwrap().rsplit_once('@').unwrap().0;
    userinfo.split_once(':').unwrap().1.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_a_configuration_error_with_the_password_redacted() {
    let Some(url) = var("POSTGRES_URL") else {
        return;
    };
    let password = password_of(&url);
    let wrong = url.replacen(&format!(":{password}@"), ":Wr0ng-S3cret-Pa55@", 1);
    assert_ne!(wrong, url);
    let e = PostgresStorage::connect(&settings(&wrong, "t_never"))
        .await
        .err()
        .expect("refused");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let text = format!("{e} {e:?}");
    assert!(!text.contains("Wr0ng-S3cret-Pa55"), "{text}");
    assert!(text.contains("***"), "{text}");
    assert!(text.contains("28P01"), "{text}");
}

#[test]
fn auto_picks_postgres_when_postgres_url_is_set() {
    use connect_extension_mongodb::Settings as All;
    let s = All::from_vars([("POSTGRES_URL", "postgres://u:pw@127.0.0.1:1/db")]).unwrap();
    let kinds = s.storage.backend_list().unwrap();
    assert_eq!(
        kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        vec!["postgres"]
    );
    let e = All::from_vars([("STORAGE_BACKENDS", "postgres")]).expect_err("POSTGRES_URL required");
    assert!(e.to_string().contains("POSTGRES_URL"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The daemon on this backend (HTTP channel): fan-out, read-back, /ready
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_fans_out_to_local_and_postgres_and_reads_back_from_postgres() {
    use crate::support::TestApp;
    use connect_extension_mongodb::storage::EventDocument;
    use reqwest::StatusCode;
    let Some(url) = var("POSTGRES_URL") else {
        return;
    };
    const PURCHASE: &str = include_str!("../fixtures/purchase_request.json");
    let table = unique("t_daemon");
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(
        dir.path(),
        &[
            ("STORAGE_BACKENDS", "local,postgres"),
            ("STORAGE_PRIMARY", "postgres"),
            ("POSTGRES_URL", &url),
            ("POSTGRES_TABLE", &table),
        ],
    )
    .await;
    let (status, body) = app.post(PURCHASE).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["document_id"].as_str().unwrap().to_string();
    let (status, doc) = app.get(&format!("/events/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    // The object exactly as received, keys in their order (`json`, not `jsonb`): `_id`, the
    // object's keys, `_connect`.
    let fixture: Value = serde_json::from_str(PURCHASE).unwrap();
    assert_eq!(EventDocument::object_of(&doc), fixture);
    let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
    let mut expected = vec!["_id"];
    expected.extend(fixture.as_object().unwrap().keys().map(String::as_str));
    expected.push("_connect");
    assert_eq!(keys, expected);
    let (status, list) = app
        .get(&format!(
            "/events?object_id={}",
            fixture["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["documents"][0], doc);
    let (status, ready) = app.get("/ready").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    // Stored by the local backend too (fan-out).
    let (again, _) = app.post(PURCHASE).await;
    assert!(again.is_success());
    app.stop().await;
    let store = open(&url, &table).await;
    assert_eq!(count(&store, "").await, 1);
    drop_table(&store).await;
    store.close().await;
}

// ---------------------------------------------------------------------------------------------
// "Apply Changes": the platform's extension variables select the backend through the registry
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_url_as_an_extension_variable_moves_the_storage_to_postgres() {
    use crate::support::{
        background_task, log_text, purchase_object, setup_response_data, setup_response_frame,
        Harness,
    };
    let Some(url) = var("POSTGRES_URL") else {
        return;
    };
    let password = url::Url::parse(&url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
        .filter(|p| !p.is_empty())
        .expect("the test server's URL has a password");
    let table = unique("t_apply");
    // The daemon starts on the embedded default (`auto`, nothing configured: local).
    let h = Harness::start(&[], None).await;
    let (mut bg, ia) = h.platform.both_channels().await;
    assert_eq!(h.storage.current().name(), "local");
    let before = h.storage.current();
    let mut data = setup_response_data();
    data["variables"] = json!([
        {"name": "POSTGRES_URL", "value": url, "secure": true},
        {"name": "POSTGRES_TABLE", "value": table, "secure": false}
    ]);
    bg.send(&setup_response_frame(&data));
    ia.send(&setup_response_frame(&data));
    assert!(
        h.storage_swapped_from(&before).await,
        "storage was not rebuilt"
    );
    drop(before);
    assert_eq!(h.storage.current().name(), "postgres");
    h.platform
        .add_object(purchase_object("PR-PGAPPLY-0001", "pending"));
    bg.send(&background_task("TQ-PGAPPLY-1", "PR-PGAPPLY-0001"));
    let results = bg.results(1).await;
    assert!(
        results
            .values()
            .all(|r| r["data"]["output"]["result"] == "success"),
        "{results:?}"
    );
    let store = open(&url, &table).await;
    assert_eq!(
        count(&store, "WHERE object_id = 'PR-PGAPPLY-0001'").await,
        1
    );
    drop_table(&store).await;
    store.close().await;
    assert!(
        !log_text().contains(&password),
        "the URL's password reached the logs"
    );
}

/// Two writers (two processes, say two replicas receiving the same redelivered events) inserting
/// the same ids in opposite orders at the same time: each group takes its row locks in id order,
/// so they never deadlock (40P01 would answer the events `reschedule` for nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_groups_with_the_same_ids_in_opposite_orders_never_deadlock() {
    let Some(url) = var("POSTGRES_URL") else {
        return;
    };
    let table = unique("t_order");
    let a = Arc::new(open(&url, &table).await);
    let b = Arc::new(open(&url, &table).await);
    for round in 0..20 {
        let docs: Vec<_> = (0..200)
            .map(|i| sample_doc(&unique(&format!("PR-{round}-{i}")), "pending", "u"))
            .collect();
        let mut reversed = docs.clone();
        reversed.reverse();
        let (a, b) = (a.clone(), b.clone());
        let (ra, rb) = tokio::join!(async move { a.save_many(&docs).await }, async move {
            b.save_many(&reversed).await
        });
        for r in ra.iter().chain(rb.iter()) {
            if let Err(e) = r {
                panic!("round {round}: {e}");
            }
        }
    }
    assert_eq!(count(&a, "").await, 20 * 200);
    drop_table(&a).await;
    a.close().await;
    b.close().await;
}
