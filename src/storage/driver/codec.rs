//! JSON ↔ BSON, with lossless field-name sanitising (the key codec), and the stored form.

use std::borrow::Cow;

use mongodb::bson::{self, Bson, Document, RawDocumentBuf};
use percent_encoding::percent_decode_str;
use serde_json::{Map, Number, Value};

use super::errors::BACKEND;

/// MongoDB's largest document.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;
/// The BSON `Date` copy of the receive time, inside `_connect` (removed on read-back).
pub const RECEIVED_DATE: &str = "received_date";
use crate::storage::error::StorageError;
use crate::storage::store::{EventDocument, META_KEY};

/// The stored form of a field name (see the module doc).
pub fn encode_key(k: &str) -> Cow<'_, str> {
    if k.is_empty() {
        // Some servers refuse empty names; a lone `%` never results from encoding anything else.
        return Cow::Borrowed("%");
    }
    if !(k.starts_with('$') || k.contains(['.', '%', '\0'])) {
        return Cow::Borrowed(k);
    }
    let mut out = String::with_capacity(k.len() + 6);
    for (i, c) in k.char_indices() {
        match c {
            '%' => out.push_str("%25"),
            '.' => out.push_str("%2E"),
            '\0' => out.push_str("%00"),
            '$' if i == 0 => out.push_str("%24"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The original form of a stored field name.
pub fn decode_key(k: &str) -> Cow<'_, str> {
    if k == "%" {
        return Cow::Borrowed("");
    }
    if !k.contains('%') {
        return Cow::Borrowed(k);
    }
    match percent_decode_str(k).decode_utf8() {
        Ok(s) => Cow::Owned(s.into_owned()),
        Err(_) => Cow::Borrowed(k),
    }
}

#[cfg(test)]
pub(super) fn json_to_bson(v: &Value) -> Bson {
    crate::storage::bson_json::json_to_bson(v, encode_key)
}

pub(super) fn json_to_document(o: &Map<String, Value>) -> Document {
    crate::storage::bson_json::json_to_document(o, encode_key)
}

pub(super) fn bson_to_json(b: Bson) -> Value {
    match b {
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Boolean(b) => Value::Bool(b),
        Bson::Int32(i) => Value::from(i),
        Bson::Int64(i) => Value::from(i),
        Bson::Double(f) => match Number::from_f64(f) {
            Some(n) => Value::Number(n),
            None => Bson::Double(f).into_relaxed_extjson(),
        },
        Bson::Decimal128(d) => match d.to_string().parse::<u64>() {
            Ok(u) => Value::from(u),
            Err(_) => Bson::Decimal128(d).into_relaxed_extjson(),
        },
        Bson::String(s) => Value::String(s),
        Bson::Array(a) => Value::Array(a.into_iter().map(bson_to_json).collect()),
        Bson::Document(d) => Value::Object(document_to_json(d)),
        // Not written by us (a document someone else put in the collection): Extended JSON.
        other => other.into_relaxed_extjson(),
    }
}

pub(super) fn document_to_json(d: Document) -> Map<String, Value> {
    d.into_iter()
        .map(|(k, v)| (decode_key(&k).into_owned(), bson_to_json(v)))
        .collect()
}

/// The stored BSON of `doc`, refused when it is over [`MAX_DOCUMENT_BYTES`].
pub fn to_stored(doc: &EventDocument) -> Result<RawDocumentBuf, StorageError> {
    let mut d = json_to_document(&doc.body);
    let millis = (doc.received_at.unix_timestamp_nanos() / 1_000_000) as i64;
    let date = Bson::DateTime(bson::DateTime::from_millis(millis));
    match d.get_mut(META_KEY) {
        Some(Bson::Document(meta)) => {
            meta.insert(RECEIVED_DATE, date);
        }
        _ => {
            return Err(StorageError::internal(
                BACKEND,
                format!("document {} has no `{META_KEY}` object", doc.id),
            ))
        }
    }
    let raw = RawDocumentBuf::from_document(&d).map_err(|e| {
        StorageError::rejected(
            BACKEND,
            format!("document {} cannot be encoded as BSON: {e}", doc.id),
        )
    })?;
    let size = raw.as_bytes().len();
    if size > MAX_DOCUMENT_BYTES {
        return Err(StorageError::rejected(BACKEND, format!(
                "document {} is {size} bytes as BSON; MongoDB stores at most {MAX_DOCUMENT_BYTES} bytes (16 MiB) per document",
                doc.id
            )));
    }
    Ok(raw)
}

/// The JSON body of a stored document, exactly as it was saved.
pub fn from_stored(mut d: Document) -> Value {
    if let Some(Bson::Document(meta)) = d.get_mut(META_KEY) {
        meta.remove(RECEIVED_DATE);
    }
    Value::Object(document_to_json(d))
}
