use super::codec::{bson_to_json, json_to_bson};
use super::uri::{scrub_error, uri_password};
use super::*;
use crate::settings::Settings;
use crate::storage::ErrorKind;
use mongodb::bson::Bson;
use serde_json::json;

#[test]
fn credentials_are_encoded_like_python_quote() {
    // urllib.parse.quote("p@ss:w/rd?#%", safe='') == 'p%40ss%3Aw%2Frd%3F%23%25'
    assert_eq!(
        encode_credential("p@ss:w/rd?#%"),
        "p%40ss%3Aw%2Frd%3F%23%25"
    );
    // unreserved characters are kept; space, plus and non-ASCII are encoded (UTF-8)
    assert_eq!(encode_credential("a-b.c_d~e"), "a-b.c_d~e");
    assert_eq!(encode_credential("a b+ü"), "a%20b%2B%C3%BC");
    assert_eq!(
        srv_uri("cluster0.example.mongodb.net", "al@ice", "p@:/?#%"),
        "mongodb+srv://al%40ice:p%40%3A%2F%3F%23%25@cluster0.example.mongodb.net/"
    );
}

#[test]
fn uri_password_is_found_and_scrubbed() {
    let uri = "mongodb://app:s%40cret@h1:27017,h2/?authSource=admin";
    assert_eq!(uri_password(uri), Some("s%40cret"));
    assert_eq!(uri_password("mongodb://h1:27017/"), None);
    assert_eq!(uri_password("mongodb://user@h1/"), None);
    let secrets = vec!["s%40cret".to_string(), "s@cret".to_string()];
    assert_eq!(
        scrub("bad s@cret and s%40cret".into(), &secrets),
        "bad *** and ***"
    );
}

#[test]
fn a_source_that_shows_a_secret_is_dropped_when_scrubbing() {
    let secrets = vec!["s@cret".to_string()];
    let leaking = StorageError::unavailable(BACKEND, "auth s@cret")
        .with_source(std::io::Error::other("password s@cret refused"));
    let e = scrub_error(leaking, &secrets);
    assert_eq!(e.to_string(), "driver storage unavailable: auth ***");
    assert!(std::error::Error::source(&e).is_none());
    let clean = StorageError::unavailable(BACKEND, "down")
        .with_source(std::io::Error::other("connection refused"));
    let e = scrub_error(clean, &secrets);
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn write_concern_values() {
    assert!(parse_write_concern("majority").is_ok());
    assert!(parse_write_concern("2").is_ok());
    let e = parse_write_concern("0").unwrap_err().to_string();
    assert!(e.contains("DRIVER_WRITE_CONCERN"), "{e}");
    let e = parse_write_concern("all").unwrap_err().to_string();
    assert!(e.contains("accepted: majority"), "{e}");
}

#[test]
fn keys_are_sanitised_losslessly() {
    for (orig, stored) in [
        ("plain", "plain"),
        ("$ref", "%24ref"),
        ("a.b", "a%2Eb"),
        ("50%", "50%25"),
        ("a$b", "a$b"),
        ("$a.$b%2E", "%24a%2E$b%252E"),
        ("nul\0x", "nul%00x"),
        ("ünï.cødé", "ünï%2Ecødé"),
        ("", "%"),
        ("%", "%25"),
    ] {
        assert_eq!(encode_key(orig), stored);
        assert_eq!(decode_key(stored), orig);
    }
}

#[test]
fn json_round_trips_through_bson() {
    let v = json!({
        "i": 1, "neg": -5, "big": i64::MAX, "huge": u64::MAX, "f": 1.5, "whole_float": 2.0,
        "s": "x", "n": null, "b": false, "arr": [1, "a", {"$in": [1]}, []],
        "obj": {"a.b": {"$c": {}}, "%": "%"},
    });
    let Bson::Document(d) = json_to_bson(&v) else {
        panic!()
    };
    assert!(d.get_document("obj").unwrap().contains_key("a%2Eb"));
    assert!(matches!(d.get("huge"), Some(Bson::Decimal128(_))));
    assert!(matches!(d.get("i"), Some(Bson::Int32(1))));
    // through the wire format and back
    let raw = RawDocumentBuf::from_document(&d).unwrap();
    let back: Document = raw.to_document().unwrap();
    assert_eq!(bson_to_json(Bson::Document(back)), v);
}

#[test]
fn stored_form_has_a_date_and_reads_back_exactly() {
    let doc = crate::storage::conformance::sample_doc("PR-1", "pending", "u");
    let raw = to_stored(&doc).unwrap();
    let d = raw.to_document().unwrap();
    let meta = d.get_document(META_KEY).unwrap();
    let date = meta.get_datetime(RECEIVED_DATE).unwrap();
    assert_eq!(
        date.timestamp_millis() as i128,
        doc.received_at.unix_timestamp_nanos() / 1_000_000
    );
    assert_eq!(from_stored(d), Value::Object(doc.body));
}

#[test]
fn oversized_documents_are_rejected_before_sending() {
    let mut doc = crate::storage::conformance::sample_doc("PR-BIG", "pending", "u");
    doc.body
        .insert("blob".into(), json!("x".repeat(MAX_DOCUMENT_BYTES)));
    let e = to_stored(&doc).unwrap_err();
    assert!(!e.is_retriable());
    assert!(e.to_string().contains("16 MiB"), "{e}");
}

fn settings_with(vars: &[(&str, &str)]) -> Settings {
    Settings::from_vars(vars.iter().copied()).unwrap()
}

async fn connect_error(vars: &[(&str, &str)]) -> StorageError {
    match DriverStorage::connect(&settings_with(vars)).await {
        Ok(_) => panic!("connect must fail for {vars:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_bad_uri_is_a_config_error_naming_the_setting_without_the_password() {
    for uri in [
        "mongodb://app:s3cr3t-pw@127.0.0.1:notaport/",
        "http://app:s3cr3t-pw@127.0.0.1:27017/",
        "mongodb://app:s3cr3t-pw@127.0.0.1:27017/?retryWrites=maybe",
    ] {
        let e = connect_error(&[("MONGODB_URI", uri)]).await;
        let text = e.to_string();
        assert!(e.kind() == ErrorKind::Config, "{uri}: {text}");
        assert!(text.contains("MONGODB_URI"), "{text}");
        assert!(
            text.contains("not a valid MongoDB connection string"),
            "{text}"
        );
        assert!(
            text.contains("mongodb://app:***@") || text.contains("http://app:***@"),
            "{text}"
        );
        assert!(!text.contains("s3cr3t"), "{text}");
    }
}

#[tokio::test]
async fn an_unreachable_cluster_is_unavailable_naming_the_setting_without_the_password() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let uri = format!("mongodb://app:s3cr3t%40pw@127.0.0.1:{port}/?directConnection=true");
    let e = connect_error(&[
        ("MONGODB_URI", &uri),
        ("DRIVER_SERVER_SELECTION_TIMEOUT_MS", "200"),
    ])
    .await;
    let text = e.to_string();
    assert!(e.kind() == ErrorKind::Unavailable, "{text}");
    assert!(text.contains("cannot reach MongoDB"), "{text}");
    assert!(text.contains("MONGODB_URI"), "{text}");
    assert!(
        text.contains("DRIVER_SERVER_SELECTION_TIMEOUT_MS"),
        "{text}"
    );
    assert!(!text.contains("s3cr3t"), "{text}");
}

#[tokio::test]
async fn a_write_concern_of_zero_is_refused() {
    let e = connect_error(&[
        ("MONGODB_URI", "mongodb://127.0.0.1:1/"),
        ("DRIVER_WRITE_CONCERN", "0"),
    ])
    .await;
    assert!(e.kind() == ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("DRIVER_WRITE_CONCERN"), "{e}");
}

#[test]
fn the_tutorial_variables_build_the_srv_uri() {
    let s = settings_with(&[
        ("DB_HOST", "cluster0.example.mongodb.net"),
        ("DB_USER", "alice"),
        ("DB_PASSWORD", "p@ss:w/rd?#%"),
    ]);
    let t = Target::from_settings(s.storage.section::<super::settings::Settings>().unwrap()).unwrap();
    assert_eq!(
        t.uri,
        "mongodb+srv://alice:p%40ss%3Aw%2Frd%3F%23%25@cluster0.example.mongodb.net/"
    );
    assert!(t.setting.contains("DB_HOST"));
    assert_eq!(
        t.shown(),
        "mongodb+srv://alice:***@cluster0.example.mongodb.net/"
    );
    // MONGODB_URI wins when both are set.
    let s = settings_with(&[
        ("DB_HOST", "cluster0.example.mongodb.net"),
        ("DB_USER", "alice"),
        ("DB_PASSWORD", "pw"),
        ("MONGODB_URI", "mongodb://h:1/"),
    ]);
    assert_eq!(
        Target::from_settings(s.storage.section::<super::settings::Settings>().unwrap()).unwrap().uri,
        "mongodb://h:1/"
    );
}

#[tokio::test]
async fn an_unresolvable_db_host_names_the_tutorial_variables_without_the_password() {
    let e = connect_error(&[
        ("DB_HOST", "no-such-cluster.invalid"),
        ("DB_USER", "alice"),
        ("DB_PASSWORD", "p@ss:w/rd?#%"),
        ("DRIVER_SERVER_SELECTION_TIMEOUT_MS", "200"),
    ])
    .await;
    let text = e.to_string();
    assert!(text.contains("DB_HOST"), "{text}");
    assert!(!text.contains("p@ss") && !text.contains("p%40ss"), "{text}");
}

#[test]
fn codes_are_classified() {
    let m = String::new;
    for code in [
        6, 7, 91, 189, 9001, 10107, 11600, 11602, 13435, 13436, 112, 13, 99999,
    ] {
        let e = classify_code(code, m());
        assert!(e.kind() == ErrorKind::Unavailable, "{code}: {e:?}");
    }
    for code in [50, 64, 89, 262] {
        assert!(classify_code(code, m()).kind() == ErrorKind::Timeout);
    }
    for code in [2, 52, 57, 121, 10334] {
        let e = classify_code(code, m());
        assert!(!e.is_retriable(), "{code}");
    }
    assert!(is_duplicate_key(11000));
    assert!(!is_duplicate_key(121));
}

#[test]
fn only_a_duplicate_on_the_id_index_is_a_redelivery() {
    let msg = |index: &str, key: &str| {
        format!("E11000 duplicate key error collection: db.c index: {index} dup key: {{ {key}: \"x\" }}")
    };
    assert_eq!(duplicate_on_id(&msg("_id_", "_id"), None), Some(true));
    assert_eq!(duplicate_on_id(&msg("id_1", "id"), None), Some(false));
    assert_eq!(duplicate_on_id(&msg("_id_1", "_id"), None), Some(false));
    assert_eq!(
        duplicate_on_id("E11000 duplicate key error dup key: { _id: \"x\" }", None),
        Some(true)
    );
    assert_eq!(
        duplicate_on_id("E11000 duplicate key error dup key: { \"id\": 1 }", None),
        Some(false)
    );
    assert_eq!(duplicate_on_id("E11000 duplicate key error", None), None);
    // keyPattern in the details wins over the message.
    let details = doc! {"keyPattern": {"_id": 1}, "keyValue": {"_id": "x"}};
    assert_eq!(duplicate_on_id("E11000", Some(&details)), Some(true));
    let details = doc! {"keyPattern": {"id": 1}, "keyValue": {"id": "x"}};
    assert_eq!(
        duplicate_on_id(&msg("_id_", "_id"), Some(&details)),
        Some(false)
    );
}
