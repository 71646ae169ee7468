use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use connect_extension_mongodb::Settings;
use connect_extension_mongodb::{shutdown, telemetry, App};

// Allocator: jemalloc (tikv-jemallocator), measured in BENCHMARKS.md ("Connect channel"). With
// glibc malloc a third of the daemon's CPU went to malloc/free (perf); jemalloc cut CPU per task by
// ~30–40 % and raised throughput ~1.4×. mimalloc (default features, no `secure`) was measured too:
// the same CPU within noise, but 26 MiB idle unless MIMALLOC_ARENA_EAGER_COMMIT=0 is set, and
// without its `override` feature the bundled SQLite keeps using glibc malloc (two allocators, two
// sets of retained pages). jemalloc is linked unprefixed, so SQLite's malloc goes through it as
// well, and its defaults are tuned for a small daemon: one arena (two tokio workers + one SQLite
// writer do not need an arena per core; the thread caches absorb the contention) and unused dirty
// pages returned after 1 s. MALLOC_CONF in the environment still overrides these at run time.
// Only in the binary: the library (and its tests) stay allocator-neutral.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's compiled-in options (read at its first allocation; a C string).
#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals)]
#[export_name = "malloc_conf"]
pub static malloc_conf: &[u8; 47] = b"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// A stateful CloudBlue Connect extension: receives Connect events and persists them.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file layered over the defaults (default: config/local.toml when present).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration and print it, secrets redacted.
    CheckConfig,
    /// POST JSON files (Connect objects or envelopes) to a running daemon's /events.
    Send {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Base URL of the daemon (default: from HTTP_LISTEN).
        #[arg(long)]
        url: Option<String>,
    },
    /// Exit 0 when the daemon's /health answers (for container health checks).
    Health {
        #[arg(long)]
        url: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = runtime().expect("tokio runtime");
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            telemetry::init(settings.telemetry.log_format);
            runtime.block_on(async {
                let app = match App::build(settings).await {
                    Ok(app) => app,
                    Err(e) => {
                        tracing::error!(error = %e, "start-up failed");
                        return ExitCode::FAILURE;
                    }
                };
                let code = match app.run(shutdown::on_signal()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!(error = %e, "stopped with an error");
                        ExitCode::FAILURE
                    }
                };
                // The last records (the drain, "stopped") still reach the platform's log service.
                telemetry::ship::shutdown(std::time::Duration::from_secs(2)).await;
                code
            })
        }
        Command::CheckConfig => check_config(&settings),
        Command::Send { files, url } => {
            let base = url.unwrap_or_else(|| format!("http://{}", settings.http.listen));
            runtime.block_on(send(base, settings.http.token.expose().to_string(), files))
        }
        Command::Health { url } => {
            let base = url.unwrap_or_else(|| format!("http://{}", settings.http.listen));
            runtime.block_on(health(base))
        }
    }
}

/// `check-config`: the effective configuration (secrets redacted) on stdout, the verdict on stderr.
fn check_config(settings: &Settings) -> ExitCode {
    println!(
        "{}",
        serde_json::to_string_pretty(&settings.redacted_json()).expect("json")
    );
    match settings.storage.backend_list() {
        Ok(b) => eprintln!(
            "configuration OK; storage backends: {}; Connect channel: {}",
            b.iter().map(|b| b.as_str()).collect::<Vec<_>>().join(", "),
            if settings.connect.enabled() {
                "on"
            } else {
                "off (API_KEY/ENVIRONMENT_ID not set)"
            }
        ),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// `health`: GET /health of a running daemon; success when it answers 2xx within 3 s.
async fn health(base: String) -> ExitCode {
    let client = reqwest::Client::new();
    match client
        .get(format!("{}/health", base.trim_end_matches('/')))
        .timeout(std::time::Duration::from_secs(3))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("unhealthy: HTTP {}", r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The tokio runtime: at most two worker threads unless TOKIO_WORKER_THREADS says otherwise.
/// The daemon waits on sockets, not the CPU (BENCHMARKS.md: a few hundred µs of CPU per task), so
/// one worker per core on a large host would only add threads, malloc arenas and memory.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        builder.worker_threads(cores.clamp(1, 2));
    }
    builder.build()
}

async fn send(base: String, token: String, files: Vec<PathBuf>) -> ExitCode {
    let client = reqwest::Client::new();
    let url = format!("{}/events", base.trim_end_matches('/'));
    let mut code = ExitCode::SUCCESS;
    for file in files {
        let body = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                code = ExitCode::FAILURE;
                continue;
            }
        };
        let mut req = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if !token.is_empty() {
            req = req.bearer_auth(&token);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                println!("{}: {} {}", file.display(), status.as_u16(), text);
                if !status.is_success() {
                    code = ExitCode::FAILURE;
                }
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                code = ExitCode::FAILURE;
            }
        }
    }
    code
}
