use super::*;
use crate::storage::conformance::{sample_doc, Fixture};
use super::setup::schema_sql;
use crate::storage::ErrorKind;
use std::sync::OnceLock;

/// Every row of the research table (docs/postgres-backend.md §2), code → kind.
#[test]
fn sqlstates_are_classified_per_the_table() {
    use ErrorKind::*;
    let rows: &[(&str, ErrorKind)] = &[
        ("08000", Unavailable),
        ("08003", Unavailable),
        ("08006", Unavailable),
        ("08001", Unavailable),
        ("08004", Unavailable),
        ("08007", Unavailable),
        ("08P01", Internal),
        ("40001", Unavailable),
        ("40P01", Unavailable),
        ("40000", Unavailable),
        ("40003", Timeout),
        ("40002", RejectedDocument),
        ("53000", Unavailable),
        ("53100", Unavailable),
        ("53200", Unavailable),
        ("53300", Unavailable),
        ("53400", Unavailable),
        ("57P01", Unavailable),
        ("57P02", Unavailable),
        ("57P03", Unavailable),
        ("57P05", Unavailable),
        ("57014", Timeout),
        ("57P04", Config),
        ("25006", Unavailable),
        ("55P03", Unavailable),
        ("55006", Unavailable),
        ("58000", Unavailable),
        ("58030", Unavailable),
        ("22P02", RejectedDocument),
        ("22P05", RejectedDocument),
        ("22021", RejectedDocument),
        ("22001", RejectedDocument),
        ("23502", RejectedDocument),
        ("23505", RejectedDocument),
        ("23514", RejectedDocument),
        ("54000", RejectedDocument),
        ("28000", Config),
        ("28P01", Config),
        ("3D000", Config),
        ("42501", Config),
        ("42P01", Config),
        ("42601", Internal),
        ("42703", Internal),
        ("XX000", Internal),
        ("XX001", Internal),
        // anything else
        ("0A000", Unavailable),
        ("P0001", Unavailable),
        ("", Unavailable),
    ];
    for (code, kind) in rows {
        assert_eq!(kind_of(code), *kind, "SQLSTATE {code}");
        let e = classify_sqlstate(code, "m");
        assert_eq!(e.kind(), *kind, "SQLSTATE {code}");
        assert_eq!(e.backend(), "postgres");
    }
    // Only the data classes fail the document.
    for (code, kind) in rows {
        assert_eq!(
            classify_sqlstate(code, "m").is_retriable(),
            *kind != RejectedDocument,
            "{code}"
        );
    }
}

#[test]
fn the_table_has_well_formed_unique_entries() {
    let mut seen = std::collections::HashSet::new();
    for (code, _) in SQLSTATES {
        assert!(code.len() == 2 || code.len() == 5, "{code}");
        assert!(seen.insert(*code), "{code} twice");
    }
}

#[test]
fn sslmodes_map_onto_rustls() {
    use super::url::{parse, Verify};
    use tokio_postgres::config::SslMode;
    let base = "postgres://app:s%40cret@db.example:5433/events";
    for (mode, ssl, verify) in [
        ("", SslMode::Prefer, Verify::None),
        ("?sslmode=disable", SslMode::Disable, Verify::Off),
        ("?sslmode=allow", SslMode::Prefer, Verify::None),
        ("?sslmode=prefer", SslMode::Prefer, Verify::None),
        ("?sslmode=require", SslMode::Require, Verify::None),
        ("?sslmode=verify-ca", SslMode::Require, Verify::Ca),
        ("?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x", SslMode::Require, Verify::Full),
    ] {
        let t = parse(&format!("{base}{mode}")).unwrap();
        assert_eq!(t.config.get_ssl_mode(), ssl, "{mode}");
        assert_eq!(t.verify, verify, "{mode}");
        assert_eq!(t.config.get_dbname(), Some("events"));
        assert_eq!(t.config.get_password(), Some(&b"s@cret"[..]));
        assert!(!t.shown.contains("cret"), "{}", t.shown);
        assert!(t.secrets.contains(&"s@cret".to_string()));
    }
    let t = parse(&format!("{base}?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem")).unwrap();
    assert_eq!(t.root_cert.as_deref(), Some("/tmp/ca.pem"));
    let t = parse(&format!("{base}?sslmode=verify-full&sslrootcert=system")).unwrap();
    assert_eq!(t.root_cert, None);
    for bad in [
        format!("{base}?sslmode=verify"),
        format!("{base}?bogus_key=1"),
        "mysql://app:s%40cret@h/db".to_string(),
        "host=h password=s@cret".to_string(),
    ] {
        let e = parse(&bad).unwrap_err();
        assert!(!e.contains("cret"), "{e}");
    }
    // verify-* needs readable roots
    let t = parse(&format!("{base}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")).unwrap();
    let e = super::url::tls_config(&t).unwrap_err();
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
}

fn doc_with(id: &str) -> EventDocument {
    let mut d = sample_doc("PR-1", "pending", "u");
    d.id = id.into();
    d
}

#[test]
fn nul_in_a_text_column_is_refused_before_sending() {
    let e = to_row(&doc_with("a\0b")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RejectedDocument);
    assert!(e.message().contains("NUL"), "{e}");
    let mut d = doc_with("ok");
    d.body.insert("asset".into(), serde_json::json!({"id": "AS\u{0}1"}));
    assert!(to_row(&d).is_err());
    // In the body a NUL is the JSON escape `\u0000`, which `json` keeps.
    let mut d = doc_with("ok");
    d.body.insert("note".into(), serde_json::json!("x\u{0}y"));
    let row = to_row(&d).unwrap();
    assert!(row.body.contains("\\u0000"), "{}", row.body);
    assert_eq!(row.asset_id.as_deref(), Some("AS-1"));
}

#[test]
fn schema_names_every_index() {
    let sql = schema_sql("t1");
    for idx in ["t1_received", "t1_event_type", "t1_status", "t1_object_id", "t1_asset_id"] {
        assert!(sql.contains(&format!("\"{idx}\"")), "{sql}");
    }
    assert!(sql.contains("body json NOT NULL"));
    assert!(sql.starts_with("SELECT pg_advisory_xact_lock"));
}

/// The test server's URL: `POSTGRES_URL`, else the one `scripts/test-postgres.sh start` provides
/// (its default home); `None` (skip) only when neither works.
pub(crate) fn test_url() -> Option<String> {
    static URL: OnceLock<Option<String>> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(u) = std::env::var("POSTGRES_URL") {
            if !u.is_empty() {
                return Some(u);
            }
        }
        let root = env!("CARGO_MANIFEST_DIR");
        let out = std::process::Command::new("bash")
            .arg(format!("{root}/scripts/test-postgres.sh"))
            .arg("start")
            .env_remove("POSTGRES_HOME")
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let env =
                    std::fs::read_to_string(format!("{root}/target/postgres/server/env")).ok()?;
                env.lines().find_map(|l| {
                    l.strip_prefix("export POSTGRES_URL=")
                        .map(|v| v.trim_matches('\'').to_string())
                })
            }
            _ => {
                eprintln!("POSTGRES_URL is unset and scripts/test-postgres.sh cannot start a server: skipping");
                None
            }
        }
    })
    .clone()
}

fn settings_for(url: &str, table: &str) -> Settings {
    Settings {
        url: crate::config::secret::Secret::new(url),
        table: table.into(),
        pool_size: 4,
        connect_timeout_ms: 5000,
        operation_timeout_ms: 30000,
        batch_max: 64,
        batch_wait_ms: 2,
    }
}

async fn fixture(_case: &'static str) -> Option<Fixture> {
    let url = test_url()?;
    let store = PostgresStorage::connect(&settings_for(&url, "t_unit_conformance"))
        .await
        .expect("connect");
    let store = Arc::new(store);
    let closing = store.clone();
    Some(Fixture::new(store, ()).with_cleanup(async move { closing.close().await }))
}

crate::storage_conformance!(fixture);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_document_fails_alone_and_its_neighbours_are_stored() {
    let Some(url) = test_url() else { return };
    let store = PostgresStorage::connect(&settings_for(&url, "t_unit_split"))
        .await
        .unwrap();
    let id = |s: &str| format!("{s}-{}", uuid::Uuid::new_v4().simple());
    // An id too large for the primary key's btree (54000): refused by the server, not before.
    // (random, so that compression does not bring it under the limit)
    let huge = doc_with(
        &(0..400)
            .map(|_| uuid::Uuid::new_v4().simple().to_string())
            .collect::<String>(),
    );
    let (a, b, c) = (doc_with(&id("a")), doc_with(&id("b")), doc_with(&id("c")));
    let nul = doc_with("n\0ul");
    let results = store
        .save_many(&[a.clone(), huge, b.clone(), nul, c.clone(), a.clone()])
        .await;
    assert_eq!(results[0].as_ref().unwrap(), &SaveOutcome::Inserted);
    let e = results[1].as_ref().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RejectedDocument, "{e}");
    assert_eq!(results[2].as_ref().unwrap(), &SaveOutcome::Inserted);
    assert_eq!(
        results[3].as_ref().unwrap_err().kind(),
        ErrorKind::RejectedDocument
    );
    assert_eq!(results[4].as_ref().unwrap(), &SaveOutcome::Inserted);
    assert_eq!(results[5].as_ref().unwrap(), &SaveOutcome::Duplicate);
    for d in [&a, &b, &c] {
        assert!(store.get(&d.id).await.unwrap().is_some());
    }
    store.close().await;
}

#[tokio::test]
async fn a_bad_url_is_a_config_error_naming_the_setting_without_the_password() {
    for url in [
        "postgres://app:pa55word@h:5432/db?sslmode=sometimes",
        "postgres://app:pa55word@h:5432/db?unknown_key=1",
        "mysql://app:pa55word@h/db",
    ] {
        let e = PostgresStorage::connect(&settings_for(url, "t"))
            .await
            .err()
            .expect("refused");
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        assert!(e.to_string().contains("POSTGRES_URL"), "{e}");
        assert!(!e.to_string().contains("pa55word"), "{e}");
    }
}
