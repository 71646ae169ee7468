//! Item 16: the real daemon binary with the driver backend, SIGTERM while saves are in flight —
//! it must stop cleanly (exit 0) and never panic on the way out (the mongodb driver's
//! `connection_requester` unwrap when the runtime is torn down under its pool worker).
//!
//! Needs `MONGODB_URI` (see tests/it/support/mongo.rs).

use crate::support::free_port;
use crate::support::mongo as support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{mongo_uri, unique_db};

const PURCHASE: &str = include_str!("../fixtures/purchase_request.json");
/// Daemons started and stopped per test run (the race is timing-dependent); more with
/// `STORAGE_SIGTERM_ROUNDS`.
fn rounds() -> usize {
    std::env::var("STORAGE_SIGTERM_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

/// One daemon: start it, stream POSTs at it, SIGTERM it mid-stream; returns (exit code, stderr).
async fn one_round(uri: &str, db: &str, round: usize) -> (Option<i32>, String, usize) {
    let port = free_port();
    let home = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_connect-extension-mongodb"))
        .current_dir(home.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("STORAGE_BACKENDS", "driver")
        .env("MONGODB_URI", uri)
        .env("DB", db)
        .env("HTTP_LISTEN", format!("127.0.0.1:{port}"))
        .env("SHUTDOWN_GRACE", "5")
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon starts");
    let pid = child.id() as libc::pid_t;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    // Ready (a hang guard, not a timing assertion).
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the daemon did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Stream POSTs from 16 clients until the daemon stops answering.
    let stored = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..16 {
        let (http, base, stored, stop) = (http.clone(), base.clone(), stored.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut object: Value = serde_json::from_str(PURCHASE).unwrap();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                object["id"] = json!(format!("PR-{round}-{c}-{i}"));
                i += 1;
                match http
                    .post(format!("{base}/events"))
                    .header("content-type", "application/json")
                    .body(object.to_string())
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        stored.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }));
    }
    let started = Instant::now();
    while stored.load(Ordering::SeqCst) < 100 + 37 * round {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the daemon stored only {} events",
            stored.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // SIGTERM mid-stream: the clients are still posting.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);

    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .expect("daemon output");
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let mut log = String::from_utf8_lossy(&output.stderr).into_owned();
    log.push_str(&String::from_utf8_lossy(&output.stdout));
    (output.status.code(), log, stored.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_while_saves_are_in_flight_stops_cleanly_without_a_panic() {
    let Some(uri) = mongo_uri() else { return };
    let db = unique_db("sigterm");
    for round in 0..rounds() {
        let (code, log, stored) =
            tokio::time::timeout(Duration::from_secs(120), one_round(&uri, &db, round))
                .await
                .expect("a round finishes");
        assert!(
            !log.contains("panicked"),
            "round {round}: the daemon panicked on the way out:\n{log}"
        );
        assert_eq!(
            code,
            Some(0),
            "round {round}: the daemon must exit 0 on SIGTERM:\n{log}"
        );
        assert!(log.contains("stopped"), "round {round}:\n{log}");
        assert!(stored > 0);
    }
    let check = support::Db::open_with(&uri, "unused", |s| s.storage.database = db.clone()).await;
    assert!(check.count(mongodb::bson::doc! {}).await > 0);
    check.drop_db().await;
}

/// The same race in process, many times over: a driver backend used, closed and dropped, then its
/// runtime torn down at once — as `main` does after `App::run` returns. Without a client shutdown
/// in `close`, dropping the last client spawns `endSessions`, which can run while the runtime
/// drops the pool worker: the driver then panics in a runtime thread.
/// The name of the threads of the runtimes below (the panic hook counts theirs only).
const TEARDOWN_THREADS: &str = "driver-teardown-rt";

#[test]
fn closing_the_driver_backend_then_ending_the_runtime_never_panics() {
    let Some(uri) = mongo_uri() else { return };
    let panics = Arc::new(AtomicUsize::new(0));
    let seen = panics.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // Only the threads of this test's runtimes (not another test's assertion or runtime).
        if std::thread::current().name() == Some(TEARDOWN_THREADS) {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        previous(info);
    }));
    let db = unique_db("teardown");
    let settings = support::driver_settings(&uri, &db);
    let rounds = 100 * rounds();
    for round in 0..rounds {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(TEARDOWN_THREADS)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            use connect_extension_mongodb::storage::Storage;
            let store = Arc::new(
                connect_extension_mongodb::storage::driver::DriverStorage::connect(&settings)
                    .await
                    .expect("connects"),
            );
            let saves: Vec<_> = (0..8)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let d = connect_extension_mongodb::storage::conformance::sample_doc(
                            &format!("PR-{round}-{i}"),
                            "pending",
                            "u",
                        );
                        store.save(&d).await
                    })
                })
                .collect();
            for s in saves {
                s.await.unwrap().unwrap();
            }
            store.close().await;
        });
        // End the runtime at varying moments after the client was dropped.
        std::thread::sleep(Duration::from_micros((round % 16) as u64 * 40));
        drop(runtime);
        assert_eq!(
            panics.load(Ordering::SeqCst),
            0,
            "round {round}: a runtime thread panicked on the way out"
        );
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let check =
            support::Db::open_with(&uri, "unused", |s| s.storage.database = db.clone()).await;
        assert_eq!(check.count(mongodb::bson::doc! {}).await, 8 * rounds as u64);
        check.drop_db().await;
    });
}
