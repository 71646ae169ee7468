//! Connect channel throughput against the in-process fake platform, compared with the Python
//! runner's figures from connect-protocol.md §9.2.
//!
//! `cargo bench --bench connect_throughput [-- N]` (default N = 2000). Prints tasks/s for N
//! background purchase-request tasks pushed at once (each: count query + object GET over HTTP,
//! registry, SQLite commit, result), CPU-seconds per 1,000 tasks and peak RSS (both for the whole
//! process, i.e. daemon **plus** the fake platform — an upper bound for the daemon), time from
//! start to the first `setup_request`, and the idle single-task round trip.

#[path = "../tests/support/fake_platform.rs"]
mod fake_platform;

use std::time::{Duration, Instant};

use connect_extension_mongodb::config::Settings;
use connect_extension_mongodb::{App, AppOptions};
use fake_platform::*;
use tokio_util::sync::CancellationToken;

fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(run(n));
}

async fn run(n: usize) {
    let platform = FakePlatform::start().await;
    for i in 0..n + 50 {
        platform.add_object(purchase_object(&format!("PR-BENCH-{i:06}"), "pending"));
    }
    let dir = tempfile::tempdir().unwrap();
    let env: std::collections::HashMap<String, String> = [
        ("API_KEY", "ApiKey SU-BENCH:bench".to_string()),
        ("ENVIRONMENT_ID", "ENV-BENCH-01".to_string()),
        ("INSTANCE_ID", "bench".to_string()),
        ("SERVER_ADDRESS", platform.server_address()),
        ("API_ADDRESS", platform.api_address()),
        (
            "LOCAL_DATA_DIR",
            dir.path().join("data").display().to_string(),
        ),
        ("HTTP_LISTEN", "127.0.0.1:0".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();

    let started = Instant::now();
    let settings = Settings::load_with(Some(&empty), move |k| env.get(k).cloned()).unwrap();
    let app = App::build_with(settings, AppOptions::default())
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let run = tokio::spawn(app.run(stop.clone()));
    let (mut bg, _ia) = platform.both_channels().await;
    let to_setup = started.elapsed();

    // Throughput: N tasks pushed at once.
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    for i in 0..n {
        bg.send(&background_task(
            &format!("TQ-{i:06}"),
            &format!("PR-BENCH-{i:06}"),
        ));
    }
    let results = bg.results(n).await;
    let elapsed = t0.elapsed();
    let cpu = cpu_seconds() - cpu0;
    let ok = results
        .values()
        .filter(|r| r["data"]["output"]["result"] == "success")
        .count();
    assert_eq!(ok, n, "every task must succeed");

    // Idle latency: one task at a time.
    let mut lat = Vec::new();
    for i in n..n + 25 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        bg.send(&background_task(
            &format!("TQ-{i:06}"),
            &format!("PR-BENCH-{i:06}"),
        ));
        let r = bg.recv_json().await;
        lat.push(t.elapsed());
        assert_eq!(r["data"]["output"]["result"], "success");
    }
    lat.sort();
    let median = lat[lat.len() / 2];
    let p90 = lat[lat.len() * 9 / 10];
    let rss = peak_rss_mib();
    stop.cancel();
    let _ = run.await;

    println!("Connect channel benchmark: N = {n} background purchase-request tasks (count + GET + SQLite commit each), fake platform on loopback, same process");
    println!(
        "| metric | this daemon | Python runner 43.1 (connect-protocol.md §9.2) |\n|---|---|---|"
    );
    println!(
        "| throughput | {:.0} tasks/s ({:.2} s for {n}) | 31–35 tasks/s (25 with rich logging) |",
        n as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "| CPU per 1,000 tasks | {:.2} CPU-s (daemon + fake platform) | ≈32 CPU-s (runner alone) |",
        cpu * 1000.0 / n as f64
    );
    println!("| peak RSS | {rss:.1} MiB (daemon + fake platform) | ≈231 MiB |");
    println!(
        "| start → first setup_request | {:.1} ms | ≈10 s |",
        to_setup.as_secs_f64() * 1000.0
    );
    println!(
        "| idle single-task latency | median {:.1} ms, p90 {:.1} ms | 0.3–0.45 s |",
        median.as_secs_f64() * 1000.0,
        p90.as_secs_f64() * 1000.0
    );
}
