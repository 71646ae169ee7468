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
mod lenient;

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
mod tests;
