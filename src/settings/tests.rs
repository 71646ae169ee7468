use super::*;
use crate::config::secret::{redact_uri, redact_url, SecretUrl};
use crate::events::EventType;
use crate::storage::data_api::settings::Settings as DataApi;
use crate::storage::driver::settings::Settings as Driver;
use crate::storage::settings::IdStrategy;

fn driver(s: &Settings) -> &Driver {
    s.storage.section::<Driver>().unwrap()
}

fn data_api(s: &Settings) -> &DataApi {
    s.storage.section::<DataApi>().unwrap()
}

fn backends(s: &Settings) -> Vec<&'static str> {
    s.storage
        .backend_list()
        .unwrap()
        .iter()
        .map(|b| b.as_str())
        .collect()
}

fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::from_vars(vars.iter().copied())
}

#[test]
fn defaults_are_the_embedded_default() {
    let s = load(&[]).unwrap();
    assert_eq!(s.http.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(backends(&s), ["local"]);
    assert_eq!(s.storage.id_strategy, IdStrategy::State);
    assert!(!s.connect.enabled());
    let rules = s.events.persist_rules().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].event_type,
        EventType::AssetPurchaseRequestProcessing
    );
    assert_eq!(rules[0].statuses.len(), 7);
}

#[test]
fn tutorial_variables_map_to_their_settings() {
    let s = load(&[
        (
            "DATA_API_ENDPOINT",
            "https://data.example/app/x/endpoint/data/v1",
        ),
        ("DB", "tutorial"),
        ("HTTP_COLLECTION", "http_coll"),
        ("CLUSTER", "Cluster9"),
        ("DB_HOST", "cluster0.example.mongodb.net"),
        ("DB_USER", "alice"),
        ("DB_PASSWORD", "p@ss:w/rd"),
        ("DRIVER_COLLECTION", "driver_coll"),
        ("DATA_API_KEY", "dk-123"),
        ("API_KEY", "ApiKey SU-1:abc"),
    ])
    .unwrap();
    assert_eq!(
        data_api(&s).endpoint,
        "https://data.example/app/x/endpoint/data/v1"
    );
    assert_eq!(s.storage.database, "tutorial");
    assert_eq!(data_api(&s).collection, "http_coll");
    assert_eq!(data_api(&s).cluster, "Cluster9");
    assert_eq!(driver(&s).host, "cluster0.example.mongodb.net");
    assert_eq!(driver(&s).user, "alice");
    assert_eq!(driver(&s).password.expose(), "p@ss:w/rd");
    assert_eq!(driver(&s).collection, "driver_coll");
    // API_KEY in the process environment is the Connect platform key, not the Data API key.
    assert_eq!(s.connect.api_key.expose(), "ApiKey SU-1:abc");
    assert_eq!(data_api(&s).api_key.expose(), "dk-123");
    // auto: both backends, as the tutorial's v0.2.0 writes to both
    assert_eq!(backends(&s), ["driver", "data_api"]);
}

#[test]
fn env_overrides_file_overrides_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("local.toml");
    std::fs::write(
        &file,
        "[storage]\ndatabase = \"from_file\"\nid_strategy = \"task\"\n",
    )
    .unwrap();
    let s = Settings::load_with(Some(&file), |_| None).unwrap();
    assert_eq!(s.storage.database, "from_file");
    assert_eq!(s.storage.id_strategy, IdStrategy::Task);
    let s = Settings::load_with(Some(&file), |k| (k == "DB").then(|| "from_env".into())).unwrap();
    assert_eq!(s.storage.database, "from_env");
    assert_eq!(s.storage.id_strategy, IdStrategy::Task);
}

#[test]
fn missing_config_file_is_an_error() {
    let err = Settings::load_with(Some(Path::new("/nonexistent/x.toml")), |_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/x.toml"), "{err}");
}

#[test]
fn errors_name_the_variable_and_accepted_values() {
    let err = load(&[("ID_STRATEGY", "random")]).unwrap_err().to_string();
    assert!(err.contains("ID_STRATEGY"), "{err}");
    assert!(err.contains("state") && err.contains("generated"), "{err}");

    let err = load(&[("BACKGROUND_TASK_MAX_EXECUTION_TIME", "five")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("BACKGROUND_TASK_MAX_EXECUTION_TIME"), "{err}");

    let err = load(&[("STORAGE_BACKENDS", "cassandra")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("STORAGE_BACKENDS") && err.contains("data_api"),
        "{err}"
    );

    let err = load(&[("LOG_FORMAT", "xml")]).unwrap_err().to_string();
    assert!(err.contains("LOG_FORMAT") && err.contains("json"), "{err}");

    let err = load(&[("HTTP_LISTEN", "0.0.0.0:8080")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("HTTP_TOKEN"), "{err}");
    assert!(load(&[("HTTP_LISTEN", "0.0.0.0:8080"), ("HTTP_TOKEN", "t")]).is_ok());

    let err = load(&[("DB_HOST", "h")]).unwrap_err().to_string();
    assert!(err.contains("DB_USER"), "{err}");
    let err = load(&[("DB_HOST", "h"), ("DB_USER", "u")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("DB_PASSWORD"), "{err}");

    let err = load(&[("DATA_API_ENDPOINT", "ftp://x")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("DATA_API_ENDPOINT"), "{err}");

    let err = load(&[("PERSIST_EVENTS", "asset_purchase_request_processing:bogus")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("PERSIST_EVENTS") && err.contains("pending"),
        "{err}"
    );

    let err = load(&[("STORAGE_PRIMARY", "driver")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("STORAGE_PRIMARY"), "{err}");

    let err = load(&[("DRIVER_WRITE_CONCERN", "all")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("DRIVER_WRITE_CONCERN") && err.contains("majority"),
        "{err}"
    );

    let err = load(&[("RESCHEDULE_COUNTDOWN", "5")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("RESCHEDULE_COUNTDOWN"), "{err}");
}

#[test]
fn secrets_are_redacted_everywhere() {
    let s = load(&[
        ("API_KEY", "ApiKey SU-1:topsecret1"),
        ("DATA_API_KEY", "topsecret2"),
        ("DB_HOST", "h"),
        ("DB_USER", "u"),
        ("DB_PASSWORD", "topsecret3"),
        (
            "MONGODB_URI",
            "mongodb://u:topsecret4@db:27017/?authSource=admin",
        ),
        ("HTTP_TOKEN", "topsecret5"),
    ])
    .unwrap();
    let debug = format!("{s:?}");
    let json = s.redacted_json().to_string();
    let env = format!("{:?}", s.env_view());
    for out in [&debug, &json, &env] {
        assert!(!out.contains("topsecret"), "{out}");
    }
    assert!(
        json.contains("mongodb://u:***@db:27017/?authSource=admin"),
        "{json}"
    );
    assert_eq!(driver(&s).password.expose(), "topsecret3");
}

#[test]
fn every_secret_variable_is_a_secret_type() {
    // Secret keys must deserialize into `Secret`, so they can never be printed in clear.
    let vars: Vec<(&str, &str)> = env_vars()
        .filter(|v| v.secret)
        .map(|v| (v.name, "zz-secret-zz"))
        .collect();
    let mut all = vars.clone();
    all.extend([("DB_HOST", "h"), ("DB_USER", "u")]);
    let s = load(&all).unwrap_or_else(|e| panic!("{e}"));
    assert!(!format!("{s:?}").contains("zz-secret-zz"));
    assert!(!s.redacted_json().to_string().contains("zz-secret-zz"));
}

#[test]
fn every_env_var_key_exists_in_defaults() {
    let s = load(&[]).unwrap();
    let view = s.env_view();
    let json = s.redacted_json();
    for v in env_vars() {
        let mut cur = &json;
        for part in v.key.split('.') {
            cur = &cur[part];
        }
        assert!(!cur.is_null(), "{} maps to missing key {}", v.name, v.key);
        assert!(view.contains_key(v.name));
    }
}
#[test]
fn redact_url_hides_passwords_and_unlisted_query_values() {
    let out = redact_url(
        "mongodb://app:pw-SECRET@db1:27017,db2/x?authSource=admin&tls=true&tlsCertificateKeyFilePassword=kp-SECRET&replicaSet=rs0",
    );
    assert_eq!(
        out,
        "mongodb://app:***@db1:27017,db2/x?authSource=admin&tls=true&tlsCertificateKeyFilePassword=***&replicaSet=rs0"
    );
    let out =
        redact_url("https://user:pw-SECRET@host/app/x/endpoint/data/v1?key=k-SECRET&appName=a");
    assert_eq!(
        out,
        "https://user:***@host/app/x/endpoint/data/v1?key=***&appName=a"
    );
    // A password holding `/`, `?` or `@` stays hidden whole.
    for s in [
        "mongodb://u:p/w?SECRET@db/?tls=true",
        "mongodb://u:p@w-SECRET@db/",
        "mongodb+srv://u:pSECRET@c0.example.net/?retryWrites=true&w=majority",
    ] {
        let out = redact_url(s);
        assert!(!out.contains("SECRET"), "{s} → {out}");
        assert!(out.contains("u:***@"), "{s} → {out}");
    }
    // An `@` in the query is not userinfo; a bare query token is hidden; a fragment too.
    assert_eq!(
        redact_url("https://h/p?email=a@b.example&tls=true&tokenSECRET#fragSECRET"),
        "https://h/p?email=***&tls=true&***#***"
    );
    // No scheme: the query is still redacted.
    assert_eq!(redact_url("host/p?apiKey=SECRET"), "host/p?apiKey=***");
    // Token-as-user over http(s) is hidden; a plain user name of a database URI is kept.
    assert_eq!(redact_url("https://tokSECRET@h/"), "https://***@h/");
    assert_eq!(redact_url("mongodb://x509user@h/"), "mongodb://x509user@h/");
    // Case-insensitive allow-list, as MongoDB options are.
    assert_eq!(
        redact_url("mongodb://h/?AUTHSOURCE=admin"),
        "mongodb://h/?AUTHSOURCE=admin"
    );
    // redact_uri (the driver backend) now redacts every URI, with or without a password.
    assert_eq!(
        redact_uri("mongodb://h/?tlsCertificateKeyFilePassword=SECRET").as_deref(),
        Some("mongodb://h/?tlsCertificateKeyFilePassword=***")
    );
    assert_eq!(redact_uri("not a uri"), None);
}
#[test]
fn url_secrets_are_redacted_in_settings_output() {
    let s = load(&[
        (
            "MONGODB_URI",
            "mongodb://u@db:27017/?tls=true&tlsCertificateKeyFilePassword=kp-SECRET",
        ),
        (
            "DATA_API_ENDPOINT",
            "https://user:ep-SECRET@data.example/app/x/endpoint/data/v1?key=q-SECRET",
        ),
    ])
    .unwrap();
    let debug = format!("{s:?}");
    let json = s.redacted_json().to_string();
    let env = format!("{:?}", s.env_view());
    for out in [&debug, &json, &env] {
        assert!(!out.contains("SECRET"), "{out}");
    }
    assert_eq!(
        s.env_view()["DATA_API_ENDPOINT"],
        "https://user:***@data.example/app/x/endpoint/data/v1?key=***"
    );
    // A bad endpoint's error names the variable, not the secret.
    let err = load(&[("DATA_API_ENDPOINT", "ftp://u:ep-SECRET@h/?key=q-SECRET")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("DATA_API_ENDPOINT") && !err.contains("SECRET"),
        "{err}"
    );
    // The URL type itself.
    let u = SecretUrl::new("https://u:pw-SECRET@h/?apiKey=k-SECRET");
    for out in [
        format!("{u}"),
        format!("{u:?}"),
        serde_json::to_string(&u).unwrap(),
    ] {
        assert!(!out.contains("SECRET"), "{out}");
    }
    assert_eq!(u.expose(), "https://u:pw-SECRET@h/?apiKey=k-SECRET");
}

#[test]
fn every_numeric_setting_is_bounded() {
    let max = u64::MAX.to_string();
    for (var, bad) in [
        ("CONNECT_RESULT_BUFFER", max.as_str()),
        ("CONNECT_RESULT_BUFFER", "0"),
        ("CONNECT_RESULT_BUFFER_BYTES", "10"),
        ("CONNECT_PING_INTERVAL", max.as_str()),
        ("CONNECT_PING_INTERVAL", "0"),
        ("CONNECT_SETUP_TIMEOUT", max.as_str()),
        ("CONNECT_SETUP_TIMEOUT", "0"),
        ("CONNECT_MAX_IN_FLIGHT", max.as_str()),
        ("CONNECT_REST_CONCURRENCY", "1000000"),
        ("CONNECT_MAX_FRAME_BYTES", max.as_str()),
        ("BACKGROUND_TASK_MAX_EXECUTION_TIME", max.as_str()),
        ("BACKGROUND_TASK_MAX_EXECUTION_TIME", "0"),
        ("INTERACTIVE_TASK_MAX_EXECUTION_TIME", max.as_str()),
        ("HTTP_MAX_BODY_BYTES", max.as_str()),
        ("RESCHEDULE_COUNTDOWN", max.as_str()),
        ("DRIVER_SERVER_SELECTION_TIMEOUT_MS", max.as_str()),
        ("DRIVER_SERVER_SELECTION_TIMEOUT_MS", "0"),
        ("DRIVER_BATCH_MAX", "0"),
        ("DRIVER_BATCH_MAX", max.as_str()),
        ("DRIVER_BATCH_WAIT_MS", max.as_str()),
        ("DRIVER_OPERATION_TIMEOUT_MS", max.as_str()),
        ("DRIVER_OPERATION_TIMEOUT_MS", "0"),
        ("DRIVER_WRITE_CONCERN", max.as_str()),
        ("DATA_API_TIMEOUT_MS", max.as_str()),
        ("DATA_API_TIMEOUT_MS", "0"),
        ("DATA_API_DEADLINE_MS", max.as_str()),
        ("DATA_API_DEADLINE_MS", "0"),
        ("SHUTDOWN_GRACE", max.as_str()),
    ] {
        let err = match load(&[(var, bad)]) {
            Ok(_) => panic!("{var}={bad} accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(var), "{var}={bad}: {err}");
        assert!(
            err.contains("between") || err.contains("accepted"),
            "{var}={bad}: {err}"
        );
    }
    // The defaults and the documented extremes pass.
    assert!(load(&[]).is_ok());
    for (var, ok) in [
        ("CONNECT_PING_INTERVAL", "1"),
        ("CONNECT_RESULT_BUFFER", "1"),
        ("SHUTDOWN_GRACE", "0"),
        ("DRIVER_BATCH_WAIT_MS", "0"),
        ("DRIVER_WRITE_CONCERN", "1"),
    ] {
        load(&[(var, ok)]).unwrap_or_else(|e| panic!("{var}={ok}: {e}"));
    }
}
