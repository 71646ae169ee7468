//! One record as one line of the log service (Python runner's JSON shape), secrets masked.

use super::record::cut;
use super::{global, Destination, Record, LOG_TYPE, SECRET_FIELDS, SHIP_MAX_BYTES};
use crate::redact::Scrubber;
use serde_json::{Map, Value};
use std::sync::atomic::Ordering;
use tracing::Level;

/// Masks the token after every `ApiKey ` (Connect API keys, installation keys in tasks).
pub(super) fn mask_api_keys(s: &str) -> String {
    const MARK: &str = "apikey ";
    let lower = s.to_ascii_lowercase();
    if !lower.contains(MARK) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = 0;
    let mut from = 0;
    while let Some(pos) = lower[from..].find(MARK) {
        let start = from + pos + MARK.len();
        let end = s[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '}' | ']'))
            .map_or(s.len(), |e| start + e);
        out.push_str(&s[rest..start]);
        out.push_str("***");
        rest = end;
        from = end.max(start);
        if from >= s.len() {
            break;
        }
    }
    out.push_str(&s[rest..]);
    out
}

/// A string as it may be shipped: secrets masked, then cut.
pub(super) fn clean(s: &str, scrubber: &Scrubber) -> String {
    cut(mask_api_keys(&scrubber.scrub(s)), SHIP_MAX_BYTES)
}

pub(super) fn python_level(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        _ => "DEBUG",
    }
}

/// One NDJSON line: the runner's fields, the event's, the meta fields; scrubbed.
pub(super) fn format_line(r: Record, d: &Destination) -> String {
    global().queued_bytes.fetch_sub(r.size, Ordering::Relaxed);
    let mut line = Map::new();
    let ts =
        r.at.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
    line.insert("@timestamp".into(), Value::String(ts));
    line.insert(
        "log_level".into(),
        Value::String(python_level(&r.level).into()),
    );
    line.insert("logger".into(), Value::String(r.target.to_string()));
    line.insert(
        "message".into(),
        Value::String(clean(&r.message, &d.scrubber)),
    );
    if let Some(line_number) = r.line {
        line.insert("line_number".into(), Value::from(line_number));
    }
    if let Some(file) = r.file {
        line.insert("path_name".into(), Value::String(file.to_string()));
    }
    line.insert("type".into(), Value::String(LOG_TYPE.into()));
    for (name, value) in r.fields {
        let value = if SECRET_FIELDS.iter().any(|s| name.eq_ignore_ascii_case(s)) {
            Value::String("***".into())
        } else {
            match value {
                Value::String(s) => Value::String(clean(&s, &d.scrubber)),
                other => other,
            }
        };
        if !line.contains_key(name) {
            line.insert(name.to_string(), value);
        }
    }
    for (k, v) in &d.meta {
        line.insert(k.clone(), v.clone());
    }
    let text = serde_json::to_string(&Value::Object(line)).unwrap_or_default();
    // Once more on the serialized line (a secret split across fields, escaping).
    mask_api_keys(&d.scrubber.scrub(&text))
}
