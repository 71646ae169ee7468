//! Wire types of the EaaS events channel (connect-protocol.md §3–§5), serde only.
//!
//! Field order in every struct is the order the Python runner's pydantic models serialize in, and
//! [`to_wire`] reproduces Python's `json.dumps` layout (`", "` / `": "` separators, ASCII-only
//! output), so our frames are byte-for-byte the shape the platform already receives.
//!
//! What [`parse_frame`] makes of a frame, checked against eaas-core 37 `Message.deserialize` (a
//! missing `version` means 1; version 2 goes through pydantic, anything else through the legacy
//! branch) and the runner's `EventsWorker.process_message`:
//!
//! | frame | the runner | here |
//! |---|---|---|
//! | `shutdown`, any or no `version`, any `data` | v1/v2: shutdown; other versions: validation error, lost | [`Incoming::Shutdown`] |
//! | v2 `task` | pydantic: `countdown` defaults to 0, `runtime: null` → 0.0, `Optional` fields may be absent, `str` takes numbers | [`Incoming::Task`], as lenient (an incoming `output` is never used: one that cannot be read even so is ignored) |
//! | v2 `task` that cannot be read but names `options.task_id` | validation error: lost, never answered | [`Incoming::UnreadableTask`]: answered `fail` with the reason |
//! | v2 `task` without a task id, v2 `setup_response` that cannot be read | validation error: lost | [`FrameError::InvalidData`]: logged, skipped |
//! | v1 / missing-version `task` | the legacy flat layout; a v2-shaped task raises `KeyError`: lost | [`FrameError::WrongVersion`]: logged, skipped (never answered: we do not speak v1) |
//! | v1 `configuration` (legacy setup_response) | translated | skipped: the platform answers our v2 `setup_request` with v2 |
//! | other types or versions | ignored or a validation error | [`FrameError::UnknownType`] / [`FrameError::WrongVersion`]: skipped |

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

/// The only protocol version the runner speaks.
pub const VERSION: u64 = 2;

/// `{"version": 2, "message_type": …, "data": …}`.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope<T: Serialize> {
    pub version: u64,
    pub message_type: &'static str,
    pub data: Option<T>,
}

impl<T: Serialize> Envelope<T> {
    pub fn new(message_type: &'static str, data: T) -> Self {
        Self {
            version: VERSION,
            message_type,
            data: Some(data),
        }
    }
}

/// `{"version": 2, "message_type": "shutdown", "data": null}`.
pub fn shutdown_frame() -> String {
    to_wire(&Envelope::<()> {
        version: VERSION,
        message_type: "shutdown",
        data: None,
    })
}

/// One declared extension variable (`@variables([...])`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariableDecl {
    pub name: String,
    pub initial_value: String,
    /// Present only when true, as the decorator lists are usually written.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secure: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Repository {
    pub readme_url: String,
    pub changelog_url: String,
}

/// `setup_request` data for an events channel (§4.2): every field present, `model_type` last.
#[derive(Debug, Clone, Serialize)]
pub struct SetupRequest {
    pub event_subscriptions: Map<String, Value>,
    pub ui_modules: Option<Value>,
    pub icon: Option<String>,
    pub variables: Vec<VariableDecl>,
    pub schedulables: Vec<Value>,
    pub anvil_callables: Option<Value>,
    pub transformations: Option<Value>,
    pub audience: Vec<String>,
    pub repository: Repository,
    pub runner_version: String,
    pub proxied_connect_api: Option<Value>,
    pub model_type: &'static str,
}

/// A variable as the platform sends it in `setup_response`. Secure values arrive in clear.
#[derive(Clone, PartialEq, Deserialize)]
pub struct Variable {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub secure: bool,
}

impl fmt::Debug for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.secure {
            "***"
        } else {
            self.value.as_deref().unwrap_or("")
        };
        write!(
            f,
            "Variable({}={shown:?}, secure={})",
            self.name, self.secure
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct LoggingMeta {
    #[serde(default)]
    pub repository_tag: Option<String>,
    #[serde(default)]
    pub account_id: Option<String>,
    #[serde(default)]
    pub account_name: Option<String>,
    #[serde(default)]
    pub service_id: Option<String>,
    #[serde(default)]
    pub products: Option<Vec<String>>,
    #[serde(default)]
    pub hub_id: Option<String>,
}

#[derive(Clone, Default, PartialEq, Deserialize)]
pub struct Logging {
    #[serde(default)]
    pub logging_api_key: Option<String>,
    #[serde(default)]
    pub log_level: Option<String>,
    #[serde(default)]
    pub runner_log_level: Option<String>,
    #[serde(default)]
    pub meta: Option<LoggingMeta>,
}

impl fmt::Debug for Logging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Logging")
            .field(
                "logging_api_key",
                &self.logging_api_key.as_ref().map(|_| "***"),
            )
            .field("log_level", &self.log_level)
            .field("runner_log_level", &self.runner_log_level)
            .field("meta", &self.meta)
            .finish()
    }
}

/// How to fetch the object behind a background task (§4.3, §5.2).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EventDefinition {
    pub event_type: String,
    pub api_collection_endpoint: String,
    pub api_resource_endpoint: String,
    pub api_collection_filter: String,
}

/// `setup_response` data (§4.3). Unknown fields are ignored, as pydantic does.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SetupResponse {
    #[serde(default)]
    pub variables: Option<Vec<Variable>>,
    #[serde(default)]
    pub environment_type: Option<String>,
    #[serde(default)]
    pub logging: Option<Logging>,
    #[serde(default)]
    pub event_definitions: Option<Vec<EventDefinition>>,
    #[serde(default)]
    pub environment_runtime: Option<String>,
    #[serde(default)]
    pub environment_hostname: Option<String>,
    #[serde(default)]
    pub environment_domain: Option<String>,
}

/// An installation API key: echoed back verbatim (as the runner does) but never printed.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct WireSecret(pub String);

impl Serialize for WireSecret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}
impl fmt::Debug for WireSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// `task.options` (§5.1). Field order as the runner's model. String fields are read as pydantic
/// v1 reads `str` (a number or a boolean becomes its text); every `Optional` field may be absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskOptions {
    #[serde(deserialize_with = "lenient::string")]
    pub task_id: String,
    #[serde(deserialize_with = "lenient::string")]
    pub task_category: String,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub correlation_id: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub reply_to: Option<String>,
    #[serde(default)]
    pub api_key: Option<WireSecret>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub installation_id: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub connect_correlation_id: Option<String>,
}

/// `task.input`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInput {
    #[serde(deserialize_with = "lenient::string")]
    pub event_type: String,
    #[serde(deserialize_with = "lenient::string")]
    pub object_id: String,
    #[serde(default)]
    pub data: Option<Value>,
}

/// `task.output` (§5.5). Read as eaas-core reads it: `countdown` defaults to 0, `runtime` to 0.0
/// (also when null), numbers may come as strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskOutput {
    #[serde(deserialize_with = "lenient::string")]
    pub result: String,
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(default, deserialize_with = "lenient::count")]
    pub countdown: u64,
    #[serde(default, deserialize_with = "lenient::seconds")]
    pub runtime: f64,
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub message: Option<String>,
}

/// A task, in both directions: the platform sends it with `output: null`, the runner echoes it
/// with `output` filled in. An incoming `output` is never used (the answer replaces it), so one
/// that cannot be read even leniently is ignored rather than a reason to refuse the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub options: TaskOptions,
    pub input: TaskInput,
    #[serde(default, deserialize_with = "lenient::output")]
    pub output: Option<TaskOutput>,
    pub model_type: ModelType,
}

/// A `task` frame of version 2 that cannot be read, but names its `options.task_id`: it is
/// answered `fail` (the frame is wrong, a redelivery would be the same), never left unanswered.
/// Its `Debug` shows neither `options` nor `input` (an installation `api_key` may be in there).
#[derive(Clone)]
pub struct UnreadableTask {
    pub task_id: String,
    /// `input.event_type` when it is a string (metric label), else empty.
    pub event_type: String,
    /// `options.task_category` when it is a string (metric label), else empty.
    pub task_category: String,
    /// Why it cannot be read (serde's words, at most 300 characters).
    pub reason: String,
    options: Value,
    input: Value,
}

impl fmt::Debug for UnreadableTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnreadableTask")
            .field("task_id", &self.task_id)
            .field("event_type", &self.event_type)
            .field("task_category", &self.task_category)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl UnreadableTask {
    /// The answer: `options` and `input` echoed as received, `output` set, `model_type` `task`.
    pub fn answer(&self, output: &TaskOutput) -> String {
        let mut data = Map::new();
        data.insert("options".into(), self.options.clone());
        data.insert("input".into(), self.input.clone());
        data.insert(
            "output".into(),
            serde_json::to_value(output).expect("an output always serializes"),
        );
        data.insert("model_type".into(), Value::String("task".into()));
        to_wire(&Envelope::new("task", Value::Object(data)))
    }
}

/// Readers as lenient as pydantic v1 (eaas-core 37) for the fields of a task.
mod lenient {
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    use super::TaskOutput;

    /// pydantic v1 `str`: a string, or a number/boolean as its text.
    pub(super) fn text_of(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(true) => Some("True".into()),
            Value::Bool(false) => Some("False".into()),
            _ => None,
        }
    }

    pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let v = Value::deserialize(d)?;
        text_of(&v)
            .ok_or_else(|| serde::de::Error::custom(format!("expected a string, got {}", kind(&v))))
    }

    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let v = Value::deserialize(d)?;
        if v.is_null() {
            return Ok(None);
        }
        text_of(&v)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("expected a string, got {}", kind(&v))))
    }

    /// pydantic v1 `int` with a default: null or absent → 0; floats truncate; numeric strings
    /// parse; negative values clamp to 0 (the field is only ever echoed).
    pub fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let v = Value::deserialize(d)?;
        let n = match &v {
            Value::Null => Some(0.0),
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        };
        match n {
            Some(n) if n.is_finite() => Ok(n.max(0.0).min(u64::MAX as f64) as u64),
            _ => Err(serde::de::Error::custom(format!(
                "expected a number, got {}",
                kind(&v)
            ))),
        }
    }

    /// `runtime`: eaas-core turns null into 0.0; numbers may come as strings.
    pub fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let v = Value::deserialize(d)?;
        let n = match &v {
            Value::Null => Some(0.0),
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        };
        match n {
            Some(n) if n.is_finite() => Ok(n),
            _ => Err(serde::de::Error::custom(format!(
                "expected a number, got {}",
                kind(&v)
            ))),
        }
    }

    /// An incoming `output`: read leniently; one that cannot be read is ignored (never used).
    pub fn output<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TaskOutput>, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(serde_json::from_value(v).ok())
    }

    pub(super) fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }
}

/// The `model_type` discriminator; a task must carry `"task"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelType {
    Task,
}

/// A frame from the platform, classified.
#[derive(Debug)]
pub enum Incoming {
    SetupResponse(Box<SetupResponse>),
    Task(Box<Task>),
    /// A v2 `task` that cannot be read but names its task id: answer it `fail`.
    UnreadableTask(Box<UnreadableTask>),
    Shutdown,
}

/// Why a frame was skipped.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a protocol envelope (expected an object with `message_type`)")]
    NotEnvelope,
    #[error("protocol version {0} is not supported (only version 2); legacy v1 frames carry no `version`")]
    WrongVersion(String),
    #[error("unknown message_type `{0}`")]
    UnknownType(String),
    #[error("invalid `{message_type}` data: {reason}")]
    InvalidData {
        message_type: String,
        reason: String,
    },
}

/// Parses one text frame. See the module docs for what each version and type does.
pub fn parse_frame(text: &str) -> Result<Incoming, FrameError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| FrameError::NotJson(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(FrameError::NotEnvelope);
    };
    let Some(Value::String(message_type)) = obj.remove("message_type") else {
        return Err(FrameError::NotEnvelope);
    };
    // The runner's parser defaults a missing `version` to 1 and turns a `shutdown` of version 1
    // into a shutdown: a shutdown is honoured whatever its version and data.
    if message_type == "shutdown" {
        return Ok(Incoming::Shutdown);
    }
    match obj.get("version") {
        Some(Value::Number(n)) if n.as_u64() == Some(VERSION) => {}
        None => return Err(FrameError::WrongVersion("1 (missing)".into())),
        Some(other) => return Err(FrameError::WrongVersion(other.to_string())),
    }
    let data = obj.remove("data").unwrap_or(Value::Null);
    let invalid = |reason: String| FrameError::InvalidData {
        message_type: message_type.clone(),
        reason,
    };
    let check_model_type = |data: &Value, expected: &str| -> Result<(), FrameError> {
        match data.get("model_type").and_then(Value::as_str) {
            Some(m) if m == expected => Ok(()),
            Some(m) => Err(invalid(format!(
                "model_type is `{m}`, expected `{expected}`"
            ))),
            None => Err(invalid("`model_type` is missing".into())),
        }
    };
    match message_type.as_str() {
        "setup_response" => {
            check_model_type(&data, "setup_response")?;
            let r: SetupResponse =
                serde_json::from_value(data).map_err(|e| invalid(e.to_string()))?;
            Ok(Incoming::SetupResponse(Box::new(r)))
        }
        "task" => {
            let parsed = check_model_type(&data, "task")
                .and_then(|()| Task::deserialize(&data).map_err(|e| invalid(e.to_string())));
            match parsed {
                Ok(t) => Ok(Incoming::Task(Box::new(t))),
                Err(e) => match unreadable(&data, &e) {
                    Some(u) => Ok(Incoming::UnreadableTask(Box::new(u))),
                    None => Err(e),
                },
            }
        }
        other => Err(FrameError::UnknownType(other.to_string())),
    }
}

/// Longest task id answered for an unreadable task (a longer one is not an id the platform made).
const MAX_TASK_ID: usize = 256;

/// The parts of an unreadable task needed to answer it, when it names its task id.
fn unreadable(data: &Value, error: &FrameError) -> Option<UnreadableTask> {
    let options = data.get("options")?;
    let task_id = lenient::text_of(options.get("task_id")?)?;
    if task_id.is_empty() || task_id.len() > MAX_TASK_ID {
        return None;
    }
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
    let reason = match error {
        FrameError::InvalidData { reason, .. } => reason.clone(),
        other => other.to_string(),
    };
    Some(UnreadableTask {
        task_id,
        event_type: text(data.get("input").and_then(|i| i.get("event_type"))),
        task_category: text(options.get("task_category")),
        reason: reason.chars().take(300).collect(),
        options: options.clone(),
        input: data.get("input").cloned().unwrap_or(Value::Null),
    })
}

/// Serializes like Python's `json.dumps(obj)`: `", "` and `": "` separators, non-ASCII escaped.
pub fn to_wire<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::with_capacity(512);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value
        .serialize(&mut ser)
        .expect("protocol types always serialize");
    String::from_utf8(out).expect("formatter writes ASCII")
}

struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        if fragment.is_ascii() {
            return w.write_all(fragment.as_bytes());
        }
        let mut buf = [0u16; 2];
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut buf) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TASK: &str = include_str!("../../tests/fixtures/task_background_purchase.json");
    const RESULT: &str = include_str!("../../tests/fixtures/task_result_success.json");
    const SETUP: &str = include_str!("../../tests/fixtures/setup_response.json");

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
}
