//! Connect channel benchmark: the **real release binary**, measured alone, against the fake
//! platform (`tests/it/support/fake_platform.rs`) running in this process on loopback.
//!
//! ```text
//! cargo build --release --bin connect-extension-mongodb
//! cargo bench --bench connect_throughput [-- N] [--mode none|local|all]
//! ```
//! (default N = 5000, mode `all`). `DAEMON_BIN=/path/to/binary` benchmarks another build.
//!
//! For each mode the daemon is spawned as a child process (`run`, configured by environment
//! variables only, `STORAGE_BACKENDS=none` or `local`, default logging) and the bench reports:
//! * throughput: N background purchase-request tasks pushed at once on the background channel,
//!   each costing the runner-compatible count query + object GET over HTTP, the registry, the
//!   storage save and the result frame, from the first task sent to the last result received;
//! * the daemon's CPU-seconds per 1,000 tasks (utime + stime from `/proc/<pid>/stat`, delta over
//!   the throughput run) and its peak RSS (`VmHWM` from `/proc/<pid>/status`) — the daemon
//!   alone, not the fake platform;
//! * start-up: from `spawn` to the first `setup_request` arriving at the fake;
//! * idle single-task latency: 50 tasks sent one at a time (20 ms apart), median and p90;
//! * after SIGTERM: the exit status, and (mode `local`) the number of documents in the SQLite
//!   file, which must equal the number of tasks answered `success`.

// The bench uses a part of the test helpers only.
#[allow(dead_code)]
#[path = "../tests/it/support/fake_platform.rs"]
mod fake_platform;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_platform::*;

const LATENCY_SAMPLES: usize = 50;

fn daemon_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DAEMON_BIN") {
        return PathBuf::from(p);
    }
    // target/release/deps/connect_throughput-… → target/release/connect-extension-mongodb
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("connect-extension-mongodb"))
        .expect("bench exe has no grandparent directory");
    if !bin.exists() {
        eprintln!(
            "error: {} does not exist.\nBuild the daemon first: cargo build --release --bin connect-extension-mongodb\n(or set DAEMON_BIN to a built binary)",
            bin.display()
        );
        std::process::exit(2);
    }
    let bench_time = exe.metadata().and_then(|m| m.modified()).ok();
    let bin_time = bin.metadata().and_then(|m| m.modified()).ok();
    if let (Some(b), Some(d)) = (bench_time, bin_time) {
        if d < b {
            eprintln!(
                "warning: {} is older than this bench; run `cargo build --release --bin connect-extension-mongodb` if the source changed",
                bin.display()
            );
        }
    }
    bin
}

/// utime + stime of `pid` in seconds (all threads, including exited ones).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// A `/proc/<pid>/status` field in MiB (`VmHWM`, `VmRSS`).
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| {
            v.trim_start_matches(':')
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

struct Figures {
    mode: &'static str,
    n: usize,
    elapsed: Duration,
    cpu: f64,
    idle_rss: f64,
    peak_rss: f64,
    startup: Duration,
    median: Duration,
    p90: Duration,
    threads: usize,
    stored: Option<usize>,
}

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn run_mode(bin: &PathBuf, mode: &'static str, n: usize) -> Figures {
    let platform = FakePlatform::start().await;
    let total = n + LATENCY_SAMPLES;
    for i in 0..total {
        platform.add_object(purchase_object(&format!("PR-BENCH-{i:06}"), "pending"));
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("daemon.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let started = Instant::now();
    let child = Command::new(bin)
        .arg("run")
        .current_dir(dir.path())
        .env_clear()
        .env("API_KEY", "ApiKey SU-BENCH:bench")
        .env("ENVIRONMENT_ID", "ENV-BENCH-01")
        .env("INSTANCE_ID", "bench")
        .env("SERVER_ADDRESS", platform.server_address())
        .env("API_ADDRESS", platform.api_address())
        .env("LOCAL_DATA_DIR", &data)
        .env("HTTP_LISTEN", "127.0.0.1:0")
        .env("STORAGE_BACKENDS", mode)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let mut daemon = Daemon { child, log };
    let pid = daemon.child.id();
    let (mut bg, ia) = platform.both_channels().await;
    let startup = bg.setup_at.min(ia.setup_at) - started;
    // Let the second channel's setup and the start-up work settle before measuring.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle_rss = status_mib(pid, "VmRSS");

    // Throughput: N tasks pushed at once.
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    for i in 0..n {
        bg.send(&background_task(
            &format!("TQ-{i:06}"),
            &format!("PR-BENCH-{i:06}"),
        ));
    }
    let results = bg.results(n).await;
    let elapsed = t0.elapsed();
    let cpu = cpu_seconds(pid) - cpu0;
    let ok = results
        .values()
        .filter(|r| r["data"]["output"]["result"] == "success")
        .count();
    assert_eq!(
        ok,
        n,
        "every task must succeed (daemon log: {})",
        daemon.log.display()
    );

    // Idle latency: one task at a time.
    let mut lat = Vec::new();
    for i in n..total {
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
    let peak_rss = status_mib(pid, "VmHWM");
    let threads = threads(pid);

    // SIGTERM: the daemon sends `shutdown`, drains, closes and exits 0.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let mut status = None;
    for _ in 0..1000 {
        if let Some(s) = daemon.child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = status.expect("the daemon did not exit within 10 s of SIGTERM");
    assert!(
        status.success(),
        "daemon exit {status} (log: {})",
        daemon.log.display()
    );
    drop(bg);
    drop(ia);

    let stored = (mode == "local").then(|| {
        let conn = rusqlite::Connection::open(data.join("events.sqlite3")).unwrap();
        let count: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        count as usize
    });
    if let Some(stored) = stored {
        assert_eq!(stored, total, "every success must be a stored document");
    }
    Figures {
        mode,
        n,
        elapsed,
        cpu,
        idle_rss,
        peak_rss,
        startup,
        median: lat[lat.len() / 2],
        p90: lat[lat.len() * 9 / 10],
        threads,
        stored,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; under `cargo test --all-targets` this is a small smoke run
    // (against the debug binary next to it) whose figures mean nothing.
    let bench_mode = args.iter().any(|a| a == "--bench");
    let n: usize = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(if bench_mode { 5000 } else { 200 });
    let mode = args
        .iter()
        .position(|a| a == "--mode")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or("all");
    let modes: Vec<&'static str> = match mode {
        "none" => vec!["none"],
        "local" => vec!["local"],
        "all" => vec!["none", "local"],
        other => {
            eprintln!("error: --mode {other}: accepted: none, local, all");
            std::process::exit(2);
        }
    };
    let bin = daemon_bin();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let figures: Vec<Figures> = modes
        .into_iter()
        .map(|m| rt.block_on(run_mode(&bin, m, n)))
        .collect();

    println!(
        "Connect channel benchmark: {} (daemon measured alone; fake platform in the bench process, loopback ws/http)",
        bin.display()
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for f in &figures {
        println!();
        println!(
            "mode `{}`: N = {} background purchase-request tasks (count + GET + {} each)",
            f.mode,
            f.n,
            if f.mode == "none" {
                "no storage: STORAGE_BACKENDS=none"
            } else {
                "durable SQLite commit"
            }
        );
        println!("| metric | this daemon | Python runner 43.1 (connect-protocol.md §9.2) |");
        println!("|---|---|---|");
        println!(
            "| throughput | {:.0} tasks/s ({:.2} s for {}) | 31–35 tasks/s |",
            f.n as f64 / f.elapsed.as_secs_f64(),
            f.elapsed.as_secs_f64(),
            f.n
        );
        println!(
            "| daemon CPU per 1,000 tasks | {:.3} CPU-s ({:.2} CPU-s in all) | ≈32 CPU-s |",
            f.cpu * 1000.0 / f.n as f64,
            f.cpu
        );
        println!(
            "| daemon peak RSS (VmHWM) | {:.1} MiB (idle after set-up: {:.1} MiB; {} threads) | ≈231 MiB |",
            f.peak_rss, f.idle_rss, f.threads
        );
        println!(
            "| spawn → first setup_request | {:.1} ms | ≈10 s |",
            ms(f.startup)
        );
        println!(
            "| idle single-task latency ({LATENCY_SAMPLES} tasks) | median {:.2} ms, p90 {:.2} ms | 0.3–0.45 s |",
            ms(f.median),
            ms(f.p90)
        );
        if let Some(s) = f.stored {
            println!(
                "| documents in SQLite after SIGTERM | {s} of {} answered success | |",
                f.n + LATENCY_SAMPLES
            );
        }
    }
}
