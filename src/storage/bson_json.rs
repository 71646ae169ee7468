//! JSON → BSON for the MongoDB backends (driver and Data API's EJSON mode), in one place.
//!
//! Plain JSON is converted without reading `$`-keys as Extended JSON: integers that fit are Int32,
//! larger ones Int64, integers above `i64::MAX` Decimal128 (every digit kept), the rest Double.
//! Field names go through a caller-chosen function (the driver escapes `$`/`.`; the Data API keeps
//! names as they are).

use std::borrow::Cow;

use bson::{Bson, Document};
use serde_json::{Map, Value};

/// How a field name is written to BSON.
pub type KeyFn = fn(&str) -> Cow<'_, str>;

/// Field names unchanged.
pub fn keep_key(k: &str) -> Cow<'_, str> {
    Cow::Borrowed(k)
}

pub fn json_to_bson(v: &Value, key: KeyFn) -> Bson {
    match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                match i32::try_from(i) {
                    Ok(i) => Bson::Int32(i),
                    Err(_) => Bson::Int64(i),
                }
            } else if let Some(u) = n.as_u64() {
                // Above i64::MAX: Decimal128 keeps every digit.
                match u.to_string().parse::<bson::Decimal128>() {
                    Ok(d) => Bson::Decimal128(d),
                    Err(_) => Bson::Double(u as f64),
                }
            } else {
                Bson::Double(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(a) => Bson::Array(a.iter().map(|v| json_to_bson(v, key)).collect()),
        Value::Object(o) => Bson::Document(json_to_document(o, key)),
    }
}

pub fn json_to_document(o: &Map<String, Value>, key: KeyFn) -> Document {
    let mut d = Document::new();
    for (k, v) in o {
        d.insert(key(k).into_owned(), json_to_bson(v, key));
    }
    d
}
