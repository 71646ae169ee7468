//! Readers as lenient as pydantic v1 (eaas-core 37) for the fields of a task.

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

/// A finite number as pydantic v1 reads one: null → 0, numbers, numeric strings, booleans.
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = Value::deserialize(d)?;
    let n = match &v {
        Value::Null => Some(0.0),
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    };
    n.filter(|n| n.is_finite())
        .ok_or_else(|| serde::de::Error::custom(format!("expected a number, got {}", kind(&v))))
}

/// pydantic v1 `int` with a default: null or absent → 0; floats truncate; numeric strings
/// parse; negative values clamp to 0 (the field is only ever echoed).
pub fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    number(d).map(|n| n.max(0.0).min(u64::MAX as f64) as u64)
}

/// `runtime`: eaas-core turns null into 0.0; numbers may come as strings.
pub fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    number(d)
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
