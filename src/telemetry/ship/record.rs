//! The tracing layer's side: each event copied into a bounded [`Record`](super::Record).

use super::{global, Record, COLLECT_MAX_BYTES, MAX_FIELDS, QUEUE_MAX_BYTES, RECORD_MAX_BYTES};
use serde_json::Value;
use std::sync::atomic::Ordering;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

pub(super) struct ShipLayer;

impl<S: Subscriber> Layer<S> for ShipLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let g = global();
        let Ok(guard) = g.tx.read() else { return };
        let Some(tx) = guard.as_ref() else { return };
        let meta = event.metadata();
        let mut visitor = Collect::default();
        event.record(&mut visitor);
        let size = visitor.bytes;
        if g.queued_bytes.fetch_add(size, Ordering::Relaxed) + size > QUEUE_MAX_BYTES {
            g.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            g.dropped.inc();
            return;
        }
        let record = Record {
            at: time::OffsetDateTime::now_utc(),
            level: *meta.level(),
            target: meta.target(),
            file: meta.file(),
            line: meta.line(),
            message: visitor.message,
            fields: visitor.fields,
            size,
        };
        if tx.try_send(record).is_err() {
            g.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            g.dropped.inc();
        }
    }
}

#[derive(Default)]
pub(super) struct Collect {
    pub(super) message: String,
    pub(super) fields: Vec<(&'static str, Value)>,
    pub(super) bytes: usize,
}

pub(super) fn cut(s: String, max: usize) -> String {
    if s.len() > max {
        format!("{}…", prefix(&s, max))
    } else {
        s
    }
}

impl Collect {
    pub(super) fn push(&mut self, field: &Field, value: Value) {
        let len = value.as_str().map_or(8, str::len);
        if self.fields.len() < MAX_FIELDS && self.bytes + len <= RECORD_MAX_BYTES {
            self.bytes += len;
            self.fields.push((field.name(), value));
        }
    }

    pub(super) fn string(&mut self, field: &Field, s: String) {
        if field.name() == "message" {
            self.bytes += s.len();
            self.message = s;
        } else {
            self.push(field, Value::String(s));
        }
    }
}

impl Visit for Collect {
    fn record_str(&mut self, field: &Field, value: &str) {
        let s = if value.len() > COLLECT_MAX_BYTES {
            format!("{}…", prefix(value, COLLECT_MAX_BYTES))
        } else {
            value.to_string()
        };
        self.string(field, s);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let s = cut(format!("{value:?}"), COLLECT_MAX_BYTES);
        self.string(field, s);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::from(value));
    }
}

/// The longest prefix of `s` of at most `max` bytes (on a character boundary).
pub(super) fn prefix(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
