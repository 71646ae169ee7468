//! Helpers for tests that need a MongoDB-wire server.
//!
//! * [`mongo_uri`]: the shared server (`MONGODB_URI`, set by `scripts/test.sh`). When it is unset the
//!   test **fails** with instructions, unless `SKIP_MONGO_TESTS=1` opts out.
//! * [`PrivateServer`]: a SecantusDB instance of the test's own (own port and data dir, started with
//!   `scripts/test-mongo.sh`), for tests that stop and restart the server. `SKIP_MONGO_TESTS=1`
//!   skips these too.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use connect_extension_mongodb::storage::driver::DriverStorage;
use connect_extension_mongodb::storage::Storage;
use connect_extension_mongodb::Settings;

const HOW: &str =
    "run the MongoDB tests with `scripts/test.sh` (it starts a SecantusDB test server \
    on a free port and sets MONGODB_URI), or export MONGODB_URI=mongodb://HOST:PORT/ yourself \
    (add ?retryWrites=false for SecantusDB); set SKIP_MONGO_TESTS=1 to skip them";

fn skipping(what: &str) -> bool {
    if std::env::var("SKIP_MONGO_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("SKIP_MONGO_TESTS=1: skipping {what}");
        true
    } else {
        false
    }
}

/// The shared test server's URI; `None` only when `SKIP_MONGO_TESTS=1`. Panics when unset.
pub fn mongo_uri() -> Option<String> {
    match std::env::var("MONGODB_URI") {
        Ok(uri) if !uri.is_empty() => Some(uri),
        _ if skipping("a test that needs MONGODB_URI") => None,
        _ => panic!("MONGODB_URI is not set: {HOW}"),
    }
}

/// A database name no other test uses.
pub fn unique_db(prefix: &str) -> String {
    format!(
        "t_{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Default settings (no config file, no process environment) plus `vars`.
pub fn settings(vars: &[(&str, &str)]) -> Settings {
    Settings::from_vars(vars.iter().copied()).expect("settings")
}

/// Settings for the driver backend on `uri`, database `db`.
pub fn driver_settings(uri: &str, db: &str) -> Settings {
    settings(&[
        ("STORAGE_BACKENDS", "driver"),
        ("DB", db),
        ("MONGODB_URI", uri),
    ])
}

/// A driver backend on its own database; the guard drops the database.
pub struct Db {
    pub store: Arc<DriverStorage>,
    pub name: String,
}

impl Db {
    pub async fn open(uri: &str, prefix: &str) -> Db {
        Self::open_with(uri, prefix, |_| {}).await
    }

    pub async fn open_with(uri: &str, prefix: &str, tweak: impl FnOnce(&mut Settings)) -> Db {
        let name = unique_db(prefix);
        let mut s = driver_settings(uri, &name);
        tweak(&mut s);
        let store = DriverStorage::connect(&s)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"));
        Db {
            store: Arc::new(store),
            name,
        }
    }

    pub fn storage(&self) -> Arc<dyn Storage> {
        self.store.clone()
    }

    /// Documents in the collection matching `filter`.
    pub async fn count(&self, filter: mongodb::bson::Document) -> u64 {
        self.store
            .collection()
            .count_documents(filter)
            .await
            .expect("count")
    }

    pub async fn drop_db(self) {
        let _ = self.store.client().database(&self.name).drop().await;
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/test-mongo.sh")
}

/// A SecantusDB server of the test's own, on its own free port and data directory, that the test
/// may stop and restart. Stopped when dropped.
pub struct PrivateServer {
    home: tempfile::TempDir,
    auth: Option<(String, String)>,
    pub uri: String,
}

impl PrivateServer {
    /// Starts one (`auth`: user and password to create and require). `None` when skipping.
    pub async fn start(auth: Option<(&str, &str)>) -> Option<PrivateServer> {
        if skipping("a test that starts its own SecantusDB server") {
            return None;
        }
        let home = tempfile::Builder::new()
            .prefix("cem-secantus-")
            .tempdir()
            .unwrap();
        let mut server = PrivateServer {
            home,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            uri: String::new(),
        };
        server.run("start").await;
        let env = std::fs::read_to_string(server.home.path().join("env")).expect("env file");
        let uri = env
            .trim()
            .strip_prefix("export MONGODB_URI='")
            .and_then(|s| s.strip_suffix('\''))
            .expect("env file format");
        server.uri = uri.replace("'\\''", "'");
        Some(server)
    }

    fn command(&self, action: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .arg(action)
            .env("SECANTUS_HOME", self.home.path())
            .env_remove("SECANTUS_PORT")
            .env_remove("SECANTUS_FRESH");
        match &self.auth {
            Some((u, p)) => {
                cmd.env("SECANTUS_AUTH", "1")
                    .env("SECANTUS_USER", u)
                    .env("SECANTUS_PASSWORD", p);
            }
            None => {
                cmd.env_remove("SECANTUS_AUTH");
            }
        }
        cmd
    }

    async fn run(&self, action: &'static str) {
        let mut cmd = self.command(action);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .expect("run scripts/test-mongo.sh");
        assert!(
            out.status.success(),
            "scripts/test-mongo.sh {action} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server (SIGTERM; its data stays).
    pub async fn stop(&self) {
        self.run("stop").await;
    }

    /// Starts it again on the same port and data directory.
    pub async fn restart(&self) {
        self.run("start").await;
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.command("stop").output();
    }
}
