//! The binary as users run it: check-config, bad configuration, run + send + SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_connect-extension-mongodb");

fn cmd(dir: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir) // no config/local.toml here
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LOCAL_DATA_DIR", dir.join("data"));
    c
}

#[test]
fn check_config_prints_the_effective_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let out = cmd(dir.path())
        .arg("check-config")
        .env("API_KEY", "ApiKey SU-000:verysecret1")
        .env("DATA_API_KEY", "verysecret2")
        .env(
            "DATA_API_ENDPOINT",
            "https://data.example/app/a/endpoint/data/v1",
        )
        .env("MONGODB_URI", "mongodb://app:verysecret3@db.example:27017/")
        .env("DB_PASSWORD", "verysecret4")
        .env("HTTP_TOKEN", "verysecret5")
        .env("ENVIRONMENT_ID", "ENV-1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains("verysecret") && !stderr.contains("verysecret"),
        "{stdout}{stderr}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        json["storage"]["driver"]["uri"],
        "mongodb://app:***@db.example:27017/"
    );
    assert_eq!(json["connect"]["api_key"], "***");
    assert!(stderr.contains("driver, data_api"), "{stderr}");
}

#[test]
fn invalid_settings_fail_at_start_up_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value, expect) in [
        ("ID_STRATEGY", "sometimes", "state, task, generated"),
        ("HTTP_LISTEN", "not-an-address", "HTTP_LISTEN"),
        ("STORAGE_BACKENDS", "redis", "local, driver, data_api"),
        ("CONNECT_INSECURE", "maybe", "true, false"),
    ] {
        for sub in [&["check-config"][..], &[][..]] {
            let out = cmd(dir.path()).args(sub).env(var, value).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{var}={value} accepted");
            assert!(stderr.contains(var), "{var}: {stderr}");
            assert!(stderr.contains(expect), "{var}: {stderr}");
        }
    }
}

#[test]
fn run_send_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // find a free port for the daemon
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = cmd(dir.path())
        .env("HTTP_LISTEN", &listen)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut logs = Vec::new();
    while !logs.iter().any(|l: &String| l.contains("listening")) {
        assert!(Instant::now() < deadline, "daemon did not start: {logs:?}");
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            logs.push(l);
        }
    }

    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/purchase_request.json"
    );
    let out = cmd(dir.path())
        .args(["send", fixture])
        .env("HTTP_LISTEN", &listen)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 201 "), "{stdout}");
    let out = cmd(dir.path())
        .args(["health"])
        .env("HTTP_LISTEN", &listen)
        .output()
        .unwrap();
    assert!(out.status.success());

    // SIGTERM: graceful, exit code 0
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = child.wait().unwrap();
    assert!(code.success(), "exit status {code:?}");
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
        logs.push(l);
    }
    assert!(logs.iter().any(|l| l.contains("stopped")), "{logs:?}");

    // the event is on disk after the process is gone
    let db = dir.path().join("data/events.sqlite3");
    assert!(db.exists());
    let out = cmd(dir.path())
        .args(["health"])
        .env("HTTP_LISTEN", &listen)
        .output()
        .unwrap();
    assert!(!out.status.success(), "nothing listens any more");
}

/// Issue 13 item 14: out-of-range numbers are refused by check-config and at start-up, naming the
/// variable and the range (they used to pass check-config and panic at start).
#[test]
fn out_of_range_numbers_are_refused_naming_the_variable_and_range() {
    let dir = tempfile::tempdir().unwrap();
    let max = u64::MAX.to_string();
    for (var, value) in [
        ("CONNECT_RESULT_BUFFER", max.as_str()),
        ("CONNECT_PING_INTERVAL", max.as_str()),
        ("SHUTDOWN_GRACE", max.as_str()),
        ("DRIVER_BATCH_MAX", "0"),
    ] {
        // (Start-up with these values: tests/it/connect.rs::an_out_of_range_ping_interval_fails_the_daemon.)
        {
            let out = cmd(dir.path())
                .arg("check-config")
                .env(var, value)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{var}={value} accepted: {stderr}");
            assert!(
                stderr.contains(var) && stderr.contains("between"),
                "{var}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{var}: {stderr}");
        }
    }
}

/// Issue 13 item 9: URLs are shown with passwords and unlisted query values hidden.
#[test]
fn check_config_redacts_url_passwords_and_query_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let out = cmd(dir.path())
        .arg("check-config")
        .env(
            "MONGODB_URI",
            "mongodb://app@db.example:27017/?tls=true&tlsCertificateKeyFilePassword=kp-SECRET-1&authSource=admin",
        )
        .env(
            "DATA_API_ENDPOINT",
            "https://user:pw-SECRET-2@data.example/app/a/endpoint/data/v1?key=q-SECRET-3",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains("SECRET") && !stderr.contains("SECRET"),
        "{stdout}{stderr}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        json["storage"]["driver"]["uri"],
        "mongodb://app@db.example:27017/?tls=true&tlsCertificateKeyFilePassword=***&authSource=admin"
    );
    assert_eq!(
        json["storage"]["data_api"]["endpoint"],
        "https://user:***@data.example/app/a/endpoint/data/v1?key=***"
    );
}
