//! Benchmark (prints figures, asserts nothing): the HTTP task channel into the embedded SQLite
//! store — N distinct purchase-request events posted with C concurrent keep-alive clients.
//!
//!     cargo bench --bench http_local            # N=20000 C=64
//!     BENCH_N=5000 BENCH_C=16 cargo bench --bench http_local

use std::sync::Arc;
use std::time::Instant;

use connect_extension_mongodb::App;
use connect_extension_mongodb::Settings;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let tick = 100.0; // USER_HZ on Linux
    let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (utime + stime) / tick
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // Under `cargo test --all-targets` (no `--bench` argument) this is a quick smoke run.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let n = env_or("BENCH_N", if bench_mode { 20_000 } else { 200 });
    let c = env_or("BENCH_C", 64);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        let settings = Settings::from_vars([
            ("HTTP_LISTEN", "127.0.0.1:0".to_string()),
            ("LOCAL_DATA_DIR", data.display().to_string()),
        ])
        .unwrap();
        let app = App::build(settings).await.unwrap();
        let url = format!("http://{}/events", app.http_addr());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run(shutdown.clone()));

        let template: Value =
            serde_json::from_str(include_str!("../tests/fixtures/purchase_request.json")).unwrap();
        let bodies: Arc<Vec<String>> = Arc::new(
            (0..n)
                .map(|i| {
                    let mut v = template.clone();
                    v["id"] = Value::String(format!("PR-BENCH-{i:08}"));
                    v.to_string()
                })
                .collect(),
        );
        let client = reqwest::Client::new();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..c {
            let (client, url, bodies, next) =
                (client.clone(), url.clone(), bodies.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                let mut created = 0usize;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= bodies.len() {
                        break created;
                    }
                    let resp = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(bodies[i].clone())
                        .send()
                        .await
                        .unwrap();
                    if resp.status() == reqwest::StatusCode::CREATED {
                        created += 1;
                    }
                }
            }));
        }
        let mut created = 0;
        for w in workers {
            created += w.await.unwrap();
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        shutdown.cancel();
        handle.await.unwrap().unwrap();
        println!("http_local: N={n} concurrency={c}");
        println!("  stored (201)        : {created}");
        println!("  throughput          : {:.0} events/s", n as f64 / elapsed);
        println!(
            "  CPU (client+daemon) : {:.3} CPU-s per 1,000 events",
            cpu / n as f64 * 1000.0
        );
        println!("  peak RSS (process)  : {:.1} MiB", peak_rss_mib());
        assert_eq!(created, n, "every event must be stored");
    });
}
