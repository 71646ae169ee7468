use super::*;
use serde_json::json;

const TASK: &str = include_str!("../../../tests/fixtures/task_background_purchase.json");
const RESULT: &str = include_str!("../../../tests/fixtures/task_result_success.json");
const SETUP: &str = include_str!("../../../tests/fixtures/setup_response.json");

#[test]
fn fixtures_parse() {
    match parse_frame(TASK).unwrap() {
        Incoming::Task(t) => {
            assert_eq!(t.options.task_id, "TQ-000042-9a1c");
            assert_eq!(t.input.object_id, "PR-0000-0000-0042-001");
            assert!(t.output.is_none());
        }
        other => panic!("{other:?}"),
    }
    match parse_frame(SETUP).unwrap() {
        Incoming::SetupResponse(r) => {
            assert_eq!(r.event_definitions.as_ref().unwrap().len(), 1);
            let meta = r.logging.unwrap().meta.unwrap();
            assert_eq!(meta.service_id.as_deref(), Some("SRVC-0000-0000"));
            assert!(r.variables.unwrap()[1].secure);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn result_round_trips_in_field_order() {
    let Incoming::Task(t) = parse_frame(RESULT).unwrap() else {
        panic!()
    };
    let wire = to_wire(&Envelope::new("task", &*t));
    let back: Value = serde_json::from_str(&wire).unwrap();
    let orig: Value = serde_json::from_str(RESULT).unwrap();
    assert_eq!(back, orig);
    assert!(wire.starts_with(
        "{\"version\": 2, \"message_type\": \"task\", \"data\": {\"options\": {\"task_id\": "
    ));
    assert!(wire.ends_with("\"model_type\": \"task\"}}"), "{wire}");
}

#[test]
fn python_layout_and_ascii() {
    assert_eq!(
        to_wire(&json!({"a": [1, 2], "b": "é€😀"})),
        r#"{"a": [1, 2], "b": "\u00e9\u20ac\ud83d\ude00"}"#
    );
    assert_eq!(
        shutdown_frame(),
        r#"{"version": 2, "message_type": "shutdown", "data": null}"#
    );
}

#[test]
fn bad_frames_are_classified() {
    assert!(matches!(parse_frame("nope"), Err(FrameError::NotJson(_))));
    assert_eq!(parse_frame("[1]").unwrap_err(), FrameError::NotEnvelope);
    assert!(matches!(
        parse_frame(r#"{"message_type":"task","data":{"task_id":"x"}}"#),
        Err(FrameError::WrongVersion(_))
    ));
    assert!(matches!(
        parse_frame(r#"{"version":2,"message_type":"bogus","data":null}"#),
        Err(FrameError::UnknownType(t)) if t == "bogus"
    ));
    let no_model = TASK.replace("\"model_type\": \"task\"", "\"x\": 1");
    // It names its task id: answered `fail`, not skipped.
    assert!(matches!(
        parse_frame(&no_model),
        Ok(Incoming::UnreadableTask(u)) if u.reason.contains("`model_type` is missing")
    ));
    assert!(matches!(
        parse_frame(r#"{"version":2,"message_type":"shutdown","data":null}"#),
        Ok(Incoming::Shutdown)
    ));
}

#[test]
fn shutdown_is_honoured_whatever_its_version() {
    for frame in [
        r#"{"message_type":"shutdown"}"#,
        r#"{"version":1,"message_type":"shutdown","data":null}"#,
        r#"{"version":3,"message_type":"shutdown"}"#,
        r#"{"version":"2","message_type":"shutdown","data":{"x":1}}"#,
    ] {
        assert!(
            matches!(parse_frame(frame), Ok(Incoming::Shutdown)),
            "{frame}"
        );
    }
    // Other v1 frames stay skipped.
    assert!(matches!(
        parse_frame(r#"{"version":1,"message_type":"configuration","data":{}}"#),
        Err(FrameError::WrongVersion(_))
    ));
}

#[test]
fn task_output_is_read_as_leniently_as_eaas_core() {
    let with = |output: Value| {
        let mut v: Value = serde_json::from_str(TASK).unwrap();
        v["data"]["output"] = output;
        match parse_frame(&v.to_string()).unwrap() {
            Incoming::Task(t) => t.output,
            other => panic!("{other:?}"),
        }
    };
    let o = with(json!({"result": "retry", "runtime": null})).unwrap();
    assert_eq!((o.countdown, o.runtime), (0, 0.0));
    let o = with(json!({"result": 1, "countdown": "30", "runtime": "1.5"})).unwrap();
    assert_eq!((o.result.as_str(), o.countdown, o.runtime), ("1", 30, 1.5));
    let o = with(json!({"result": "x", "countdown": -3, "runtime": 2})).unwrap();
    assert_eq!((o.countdown, o.runtime), (0, 2.0));
    // Unreadable even so: ignored (the answer replaces it), the task is still a task.
    assert_eq!(with(json!({"countdown": [1]})), None);
    assert_eq!(with(json!("nonsense")), None);
}

#[test]
fn numbers_are_read_as_strings_like_pydantic() {
    let mut v: Value = serde_json::from_str(TASK).unwrap();
    v["data"]["options"]["task_id"] = json!(123);
    v["data"]["options"]["correlation_id"] = json!(true);
    let Incoming::Task(t) = parse_frame(&v.to_string()).unwrap() else {
        panic!()
    };
    assert_eq!(t.options.task_id, "123");
    assert_eq!(t.options.correlation_id.as_deref(), Some("True"));
}

#[test]
fn an_unreadable_task_with_an_id_can_be_answered() {
    let mut v: Value = serde_json::from_str(TASK).unwrap();
    v["data"]["input"]["object_id"] = json!({"$gt": ""});
    v["data"]["options"]["api_key"] = json!("ApiKey SU-9:inst-secret");
    v["data"]["extra"] = json!("not echoed");
    let Incoming::UnreadableTask(u) = parse_frame(&v.to_string()).unwrap() else {
        panic!()
    };
    assert_eq!(u.task_id, "TQ-000042-9a1c");
    assert!(u.reason.contains("expected a string"), "{}", u.reason);
    assert!(!format!("{u:?}").contains("inst-secret"));
    let answer: Value = serde_json::from_str(&u.answer(&TaskOutput {
        result: "fail".into(),
        data: None,
        countdown: 0,
        runtime: 0.0,
        message: Some("m".into()),
    }))
    .unwrap();
    assert_eq!(answer["version"], 2);
    assert_eq!(answer["message_type"], "task");
    assert_eq!(answer["data"]["options"], v["data"]["options"]);
    assert_eq!(answer["data"]["input"], v["data"]["input"]);
    assert_eq!(answer["data"]["output"]["result"], "fail");
    assert_eq!(answer["data"]["model_type"], "task");
    assert!(answer["data"].get("extra").is_none());
    // Without a task id (or with an absurd one) there is nothing to answer.
    for id in [
        Value::Null,
        json!(""),
        json!("x".repeat(300)),
        json!({"a": 1}),
    ] {
        let mut w = v.clone();
        w["data"]["options"]["task_id"] = id;
        assert!(matches!(
            parse_frame(&w.to_string()),
            Err(FrameError::InvalidData { .. })
        ));
    }
}

#[test]
fn installation_key_is_echoed_but_not_debug_printed() {
    let with_key = TASK.replace(
        "\"api_key\": null",
        "\"api_key\": \"ApiKey SU-9:inst-secret\"",
    );
    let Incoming::Task(t) = parse_frame(&with_key).unwrap() else {
        panic!()
    };
    assert!(!format!("{t:?}").contains("inst-secret"));
    assert!(to_wire(&*t).contains("ApiKey SU-9:inst-secret"));
}
