use super::*;
use crate::connect::protocol::{Logging, Variable};
use crate::Settings;

fn var(name: &str, value: &str) -> Variable {
    Variable {
        name: name.into(),
        value: Some(value.into()),
        secure: false,
    }
}

fn resp(vars: Vec<Variable>, service: Option<&str>) -> SetupResponse {
    SetupResponse {
        variables: Some(vars),
        logging: Some(Logging {
            meta: Some(LoggingMeta {
                service_id: service.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn merge_follows_runner_rules() {
    let mut m = Merged::default();
    m.merge(&resp(vec![var("A", "1"), var("B", "2")], Some("SRVC-1")));
    assert_eq!(m.variable("A"), Some("1"));
    // empty list keeps the old one; null service id keeps the old one
    m.merge(&resp(vec![], None));
    assert_eq!(m.variable("B"), Some("2"));
    assert_eq!(m.meta.service_id.as_deref(), Some("SRVC-1"));
    // non-empty list replaces wholesale
    m.merge(&resp(vec![var("A", "3")], Some("SRVC-2")));
    assert_eq!(m.variable("A"), Some("3"));
    assert_eq!(m.variable("B"), None);
    assert_eq!(m.meta.service_id.as_deref(), Some("SRVC-2"));
}

#[test]
fn variables_map_to_storage_keys() {
    assert_eq!(
        storage_key_for_variable("API_KEY"),
        Some("storage.data_api.api_key")
    );
    assert_eq!(storage_key_for_variable("DB"), Some("storage.database"));
    assert_eq!(
        storage_key_for_variable("HTTP_COLLECTION"),
        Some("storage.data_api.collection")
    );
    // What decides whether and where events are kept is refused.
    for name in [
        "LOCAL_DATA_DIR",
        "STORAGE_BACKENDS",
        "STORAGE_PRIMARY",
        "ID_STRATEGY",
        "RESCHEDULE_COUNTDOWN",
    ] {
        assert_eq!(storage_key_for_variable(name), None, "{name}");
        assert!(refused_variable(name), "{name}");
    }
    assert_eq!(storage_key_for_variable("ENVIRONMENT_ID"), None);
    assert_eq!(storage_key_for_variable("GREETING"), None);
    assert!(!refused_variable("GREETING"));
    assert!(!refused_variable("DB"));
    // every allowed variable can be set
    let s = Settings::load_with(None, |_| None).unwrap();
    for name in extension_variables().chain(["API_KEY"]) {
        let key = storage_key_for_variable(name).unwrap_or_else(|| panic!("{name}"));
        let value = if key.ends_with("_ms") || key.ends_with("batch_max") {
            "40"
        } else if key.ends_with("ejson") {
            "true"
        } else {
            "x"
        };
        let changed = s
            .with_overrides(&[(key, value)])
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_ne!(changed.env_view(), s.env_view(), "{name} changed nothing");
    }
}

#[test]
fn secure_variables_are_declared_with_a_placeholder() {
    let s = Settings::from_vars([
        ("DATA_API_KEY", "dk-SECRET"),
        ("DB_HOST", "h"),
        ("DB_USER", "u"),
        ("DB_PASSWORD", "pw-SECRET"),
    ])
    .unwrap();
    let decls = declared_variables(&s.storage);
    for d in &decls {
        assert!(!d.initial_value.contains("SECRET"), "{d:?}");
    }
    assert!(decls
        .iter()
        .any(|d| d.name == "DB_USER" && d.initial_value == "u"));
}

#[test]
fn only_settings_of_selected_backends_call_for_a_rebuild() {
    let base = Settings::from_vars([
        ("MONGODB_URI", "mongodb://h/"),
        ("STORAGE_BACKENDS", "driver"),
    ])
    .unwrap();
    let other = base
        .with_overrides(&[
            ("storage.data_api.collection", "elsewhere"),
            ("storage.data_api.cluster", "C9"),
        ])
        .unwrap();
    assert_eq!(base.storage.fingerprint(), other.storage.fingerprint());
    let other = other
        .with_overrides(&[("storage.driver.collection", "elsewhere")])
        .unwrap();
    assert_ne!(base.storage.fingerprint(), other.storage.fingerprint());
}
