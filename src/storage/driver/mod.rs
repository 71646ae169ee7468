//! `driver`: MongoDB through the official `mongodb` crate (3.x), one pooled client per process.
//!
//! | idempotent save | bulk | ordering | durability |
//! |---|---|---|---|
//! | yes: deterministic `_id`, duplicate key (11000) on `_id` = [`SaveOutcome::Duplicate`] | group commit into `insert_many(ordered = false)` | newest first by received time | write concern `DRIVER_WRITE_CONCERN` (default `majority`) |
//!
//! **Connection.** `MONGODB_URI` (any scheme and options: replica sets, TLS, `authSource`,
//! `retryWrites`…) wins when set; otherwise the tutorial's form
//! `mongodb+srv://{DB_USER}:{DB_PASSWORD}@{DB_HOST}/` is built, with user and password
//! percent-encoded exactly as Python's `urllib.parse.quote(s, safe='')` does ([`encode_credential`]).
//! `DRIVER_SERVER_SELECTION_TIMEOUT_MS` (default 5 s) and `DRIVER_WRITE_CONCERN` override the
//! corresponding URI options. Start-up fails with [`StorageError::Config`] (bad URI, bad write
//! concern, failed authentication) or [`StorageError::Unavailable`] (cluster unreachable), the
//! message naming the setting and showing the URI with its password replaced by `***`.
//!
//! **One client per process.** Clients are cached by (connection string, server selection timeout,
//! tokio runtime): a live reconfiguration that leaves these unchanged reuses the pooled client; a
//! change builds a new one, and the old one is dropped with the last backend that used it.
//! (The runtime is part of the key because a client's monitors run on the runtime that built it.)
//!
//! **Document shape.** `EventDocument::body` converted to BSON — the Connect object untouched,
//! `_id`, and `_connect` (our metadata) — plus one extra field, `_connect.received_date`: the
//! receive time as a BSON `Date` (millisecond precision), used for sorting and indexing, handy
//! for TTL indexes and date queries, and removed again on read-back. `_connect.received_at` keeps
//! the exact RFC 3339 string. JSON → BSON: integers become `Int32`/`Int64` (integers above
//! `i64::MAX` become `Decimal128`), other numbers `Double`; read-back turns them into the same JSON
//! values, so `get` returns exactly the body that was saved (the conformance suite checks this).
//!
//! **Field names are sanitised losslessly.** MongoDB cannot store a field name containing NUL, and
//! treats names starting with `$` or containing `.` specially (operators, paths; servers before 5.0
//! refuse them). Such names are stored percent-encoded: `%` → `%25`, `.` → `%2E`, NUL → `%00`, and a
//! leading `$` → `%24` (so `$ref` is stored as `%24ref`, `a.b` as `a%2Eb`, `50%` as `50%25`). Every
//! name containing `%` is encoded too, so decoding (percent-decoding every stored name that contains
//! `%`) is exact, and read-back returns the original names. The empty name is stored as `%`. Names without any of these characters —
//! all of Connect's — are stored as they are. Queries on such fields in the database must use the
//! encoded name.
//!
//! **Group commit.** `save` converts its document in the caller's task, then queues it. A batcher
//! task takes the first queued document, collects more until `DRIVER_BATCH_MAX` documents or
//! `DRIVER_BATCH_WAIT_MS` have passed, and sends them as one `insert_many(ordered = false)`; up to
//! [`IN_FLIGHT_BATCHES`] batches are in flight at once, and while they are, new saves queue up and
//! form the next (bigger) batch. Each document gets its own outcome from the per-document write
//! errors: a duplicate key on `_id` → `Duplicate` (see [`duplicate_on_id`]); a duplicate key on any
//! other unique index (a user's own index) → `Rejected` with the reason, never counted as stored;
//! another code → [`classify_code`]; a write-concern error → retriable for every document of the
//! batch not refused for good, duplicates included (not yet durable). A batch-level error that
//! is permanent (not transient) is retried one document at a time, so one bad document cannot
//! fail its neighbours. A document over 16 MiB is refused before it is queued.
//!
//! **Errors** are classified in one place, [`classify`] / [`classify_code`]: network, server
//! selection, not-primary/shutdown/step-down, write-concern and timeouts are retriable
//! (`Unavailable`/`Timeout`: the event is answered `reschedule`, nothing lost); invalid documents
//! (bad field names, too large, validation failure, type errors) are `Rejected` (the event is
//! answered `fail` with the reason). Authentication/authorization failures after start-up are
//! treated as retriable: the event itself is fine, and once the credentials are fixed its
//! redelivery succeeds. Unknown codes are treated as retriable too (losing an event is worse than
//! redelivering it).
//!
//! **Indexes** (created idempotently at start-up, fixed names): `_connect.received_date`, and
//! `_connect.event_type` / `_connect.status` / `_connect.object_id`, each with
//! `_connect.received_date` descending — the read-back queries of `GET /events`.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{self, doc, Bson, Document, RawDocumentBuf};
use mongodb::error::{Error as MongoError, ErrorKind, InsertManyError, WriteFailure};
use mongodb::options::{ClientOptions, CollectionOptions, IndexOptions, WriteConcern};
use mongodb::{Client, Collection, IndexModel};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{Map, Number, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;

use super::{EventDocument, ListQuery, SaveOutcome, Storage, StorageError, META_KEY};
use crate::config::secret::redact_uri;

pub mod settings;

use settings::{Params, Settings as DriverSettings};

const BACKEND: &str = "driver";
/// MongoDB's largest document.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;
/// Most `insert_many` batches in flight at once.
pub const IN_FLIGHT_BATCHES: usize = 2;
/// The BSON `Date` copy of the receive time, inside `_connect` (removed on read-back).
pub const RECEIVED_DATE: &str = "received_date";
const QUEUE_CAPACITY: usize = 8192;
/// Longest `close` waits for queued and in-flight batches.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `close` waits for the client's shutdown (`Client::shutdown`).
pub const CLIENT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Connection string
// ---------------------------------------------------------------------------------------------

/// What Python's `urllib.parse.quote(s, safe='')` leaves alone: letters, digits, `-._~`.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a user name or password for a connection string, like Python's
/// `urllib.parse.quote(s, safe='')` (UTF-8, upper-case hex).
pub fn encode_credential(s: &str) -> String {
    utf8_percent_encode(s, USERINFO).to_string()
}

/// The tutorial's connection string: `mongodb+srv://{user}:{password}@{host}/`.
pub fn srv_uri(host: &str, user: &str, password: &str) -> String {
    format!(
        "mongodb+srv://{}:{}@{}/",
        encode_credential(user),
        encode_credential(password),
        host
    )
}

/// The connection string to use, where it came from, and the strings never to show.
struct Target {
    uri: String,
    /// The setting(s) named in errors.
    setting: &'static str,
    secrets: Vec<String>,
}

impl Target {
    fn from_settings(s: &DriverSettings) -> Result<Target, StorageError> {
        if !s.uri.is_empty() {
            let uri = s.uri.expose().to_string();
            let mut secrets = Vec::new();
            if let Some(pw) = uri_password(&uri) {
                secrets.push(pw.to_string());
                if let Ok(decoded) = percent_decode_str(pw).decode_utf8() {
                    secrets.push(decoded.into_owned());
                }
            }
            return Ok(Target {
                uri,
                setting: "MONGODB_URI (config key `storage.driver.uri`)",
                secrets,
            });
        }
        if s.host.is_empty() {
            return Err(StorageError::Config {
                backend: BACKEND,
                message: "neither MONGODB_URI (storage.driver.uri) nor DB_HOST (storage.driver.host) is set".into(),
            });
        }
        let pw = s.password.expose();
        Ok(Target {
            uri: srv_uri(&s.host, &s.user, pw),
            setting: "DB_HOST/DB_USER/DB_PASSWORD (config keys `storage.driver.host`, `.user`, `.password`)",
            secrets: vec![pw.to_string(), encode_credential(pw)],
        })
    }

    /// The URI as logs may show it.
    fn shown(&self) -> String {
        redact_uri(&self.uri).unwrap_or_else(|| self.uri.clone())
    }
}

/// The (still encoded) password of `scheme://user:password@host…`, if any.
fn uri_password(uri: &str) -> Option<&str> {
    let rest = uri.split_once("://")?.1;
    let userinfo = &rest[..rest.rfind('@')?];
    let pw = userinfo.split_once(':')?.1;
    (!pw.is_empty()).then_some(pw)
}

/// Replaces every secret in `message` with `***`.
fn scrub(message: String, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(message, |m, s| m.replace(s.as_str(), "***"))
}

fn scrub_error(e: StorageError, secrets: &[String]) -> StorageError {
    if secrets.is_empty() {
        return e;
    }
    e.map_message(|m| scrub(m, secrets))
}

/// `DRIVER_WRITE_CONCERN`: `majority` or a number of nodes ≥ 1.
pub fn parse_write_concern(s: &str) -> Result<WriteConcern, StorageError> {
    let err = |why: &str| {
        StorageError::Config {
        backend: BACKEND,
        message: format!(
            "DRIVER_WRITE_CONCERN (config key `storage.driver.write_concern`): `{s}` {why}; accepted: majority, or a number of nodes ≥ 1"
        ),
    }
    };
    match s.trim() {
        "majority" => Ok(WriteConcern::majority()),
        n => match n.parse::<u32>() {
            Ok(0) => Err(err(
                "(unacknowledged) cannot confirm that an event was stored",
            )),
            Ok(n) => Ok(WriteConcern::nodes(n)),
            Err(_) => Err(err("is not accepted")),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// One client per process (per runtime), rebuilt only when its settings change
// ---------------------------------------------------------------------------------------------

#[derive(Clone, PartialEq, Eq)]
struct ClientKey {
    runtime: tokio::runtime::Id,
    uri: String,
    server_selection_timeout_ms: u64,
}

struct ClientHandle {
    client: Client,
}

static CLIENTS: tokio::sync::Mutex<Vec<(ClientKey, Weak<ClientHandle>)>> =
    tokio::sync::Mutex::const_new(Vec::new());

/// When `handle` has no other user (no other backend holds it), takes it out of the cache — no
/// later `connect` can pick it up — and returns its client, to be shut down.
async fn release_client(handle: &Arc<ClientHandle>) -> Option<Client> {
    let mut clients = CLIENTS.lock().await;
    if Arc::strong_count(handle) > 1 {
        return None;
    }
    let ours = Arc::downgrade(handle);
    clients.retain(|(_, weak)| weak.strong_count() > 0 && !weak.ptr_eq(&ours));
    Some(handle.client.clone())
}

async fn shared_client(
    target: &Target,
    settings: &DriverSettings,
) -> Result<Arc<ClientHandle>, StorageError> {
    let key = ClientKey {
        runtime: tokio::runtime::Handle::current().id(),
        uri: target.uri.clone(),
        server_selection_timeout_ms: settings.server_selection_timeout_ms,
    };
    let mut clients = CLIENTS.lock().await;
    clients.retain(|(_, weak)| weak.strong_count() > 0);
    if let Some(handle) = clients
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(handle);
    }
    let mut options = ClientOptions::parse(&target.uri).await.map_err(|e| {
        let bad_uri = !matches!(e.kind.as_ref(), ErrorKind::DnsResolve { .. });
        let message = scrub(
            if bad_uri {
                format!(
                    "{}: {} is not a valid MongoDB connection string: {}",
                    target.setting,
                    target.shown(),
                    describe(&e)
                )
            } else {
                format!(
                    "{}: cannot resolve the cluster of {}: {}",
                    target.setting,
                    target.shown(),
                    describe(&e)
                )
            },
            &target.secrets,
        );
        if bad_uri {
            StorageError::Config {
                backend: BACKEND,
                message,
            }
        } else {
            StorageError::Unavailable {
                backend: BACKEND,
                message,
            }
        }
    })?;
    options.server_selection_timeout =
        Some(Duration::from_millis(settings.server_selection_timeout_ms));
    if options.app_name.is_none() {
        options.app_name = Some("connect-extension-mongodb".into());
    }
    let client = Client::with_options(options).map_err(|e| StorageError::Config {
        backend: BACKEND,
        message: scrub(
            format!("{} {}: {}", target.setting, target.shown(), describe(&e)),
            &target.secrets,
        ),
    })?;
    let handle = Arc::new(ClientHandle { client });
    clients.push((key, Arc::downgrade(&handle)));
    Ok(handle)
}

// ---------------------------------------------------------------------------------------------
// Error classification — the one place
// ---------------------------------------------------------------------------------------------

/// A short description of a driver error (its kind's message and labels).
fn describe(e: &MongoError) -> String {
    let labels = e.labels();
    if labels.is_empty() {
        e.kind.to_string()
    } else {
        let mut labels: Vec<_> = labels.iter().map(String::as_str).collect();
        labels.sort_unstable();
        format!("{} [labels: {}]", e.kind, labels.join(", "))
    }
}

/// Duplicate key: the document is already stored.
pub fn is_duplicate_key(code: i32) -> bool {
    matches!(code, 11000 | 11001 | 12582)
}

/// Classifies a server error code (command, write or write-concern error).
pub fn classify_code(code: i32, message: String) -> StorageError {
    let backend = BACKEND;
    match code {
        // Time limits: the write may or may not have happened; retrying is safe (idempotent).
        50 | 64 | 89 | 202 | 262 | 290 => StorageError::Timeout { backend, message },
        // The document itself is unacceptable: retrying cannot help.
        2 // BadValue
        | 9 // FailedToParse
        | 14 // TypeMismatch
        | 17 // ?(invalid BSON type)
        | 22 // InvalidBSON
        | 52 // DollarPrefixedFieldName
        | 55 // InvalidDBRef
        | 56 // EmptyFieldName
        | 57 // DottedFieldName
        | 66 // ImmutableField
        | 121 // DocumentValidationFailure
        | 10334 // BSONObjectTooLarge
        | 17280 // KeyTooLong
        | 16755 // cannot extract geo keys
        | 17419 // document too large after update
        => StorageError::Rejected { backend, message },
        // Everything else — not primary, shutting down, stepping down, host unreachable, socket
        // errors, write conflicts, auth problems and unknown codes — is answered `reschedule`.
        _ => StorageError::Unavailable { backend, message },
    }
}

/// Classifies a driver error: retriable (`Unavailable`/`Timeout`) or permanent (`Rejected`).
pub fn classify(e: &MongoError) -> StorageError {
    let message = describe(e);
    let backend = BACKEND;
    match e.kind.as_ref() {
        ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            StorageError::Timeout { backend, message }
        }
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Authentication { .. }
        | ErrorKind::Shutdown => StorageError::Unavailable { backend, message },
        ErrorKind::InvalidArgument { .. } | ErrorKind::BsonSerialization(_) => {
            StorageError::Rejected { backend, message }
        }
        ErrorKind::Command(c) => classify_code(c.code, message),
        ErrorKind::Write(WriteFailure::WriteError(w)) => classify_code(w.code, message),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
            write_concern_error(w.code, message)
        }
        ErrorKind::InsertMany(InsertManyError {
            write_concern_error: Some(w),
            ..
        }) => write_concern_error(w.code, message),
        ErrorKind::InsertMany(InsertManyError {
            write_errors: Some(errors),
            ..
        }) if !errors.is_empty() => classify_code(errors[0].code, message),
        // Invalid responses, internal driver errors and anything new: transient until proven
        // otherwise (the event is redelivered, not lost).
        _ => StorageError::Unavailable { backend, message },
    }
}

/// The write happened on the primary but the write concern was not satisfied: retriable.
fn write_concern_error(code: i32, message: String) -> StorageError {
    let message = format!("write concern not satisfied: {message}");
    match code {
        64 => StorageError::Timeout {
            backend: BACKEND,
            message,
        },
        _ => StorageError::Unavailable {
            backend: BACKEND,
            message,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// JSON ↔ BSON, with lossless field-name sanitising
// ---------------------------------------------------------------------------------------------

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
fn json_to_bson(v: &Value) -> Bson {
    super::bson_json::json_to_bson(v, encode_key)
}

fn json_to_document(o: &Map<String, Value>) -> Document {
    super::bson_json::json_to_document(o, encode_key)
}

fn bson_to_json(b: Bson) -> Value {
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

fn document_to_json(d: Document) -> Map<String, Value> {
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
            return Err(StorageError::Internal {
                backend: BACKEND,
                message: format!("document {} has no `{META_KEY}` object", doc.id),
            })
        }
    }
    let raw = RawDocumentBuf::from_document(&d).map_err(|e| StorageError::Rejected {
        backend: BACKEND,
        message: format!("document {} cannot be encoded as BSON: {e}", doc.id),
    })?;
    let size = raw.as_bytes().len();
    if size > MAX_DOCUMENT_BYTES {
        return Err(StorageError::Rejected {
            backend: BACKEND,
            message: format!(
                "document {} is {size} bytes as BSON; MongoDB stores at most {MAX_DOCUMENT_BYTES} bytes (16 MiB) per document",
                doc.id
            ),
        });
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

// ---------------------------------------------------------------------------------------------
// Group commit
// ---------------------------------------------------------------------------------------------

type Results = Vec<Result<SaveOutcome, StorageError>>;

struct Job {
    docs: Vec<RawDocumentBuf>,
    reply: oneshot::Sender<Results>,
}

struct Writer {
    coll: Collection<RawDocumentBuf>,
    secrets: Arc<[String]>,
    op_timeout: Duration,
    batches: AtomicU64,
    documents: AtomicU64,
}

async fn batcher(
    writer: Arc<Writer>,
    mut rx: mpsc::Receiver<Job>,
    batch_max: usize,
    wait: Duration,
    in_flight: Arc<Semaphore>,
) {
    use mpsc::error::TryRecvError;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut count = first.docs.len();
        let mut jobs = vec![first];
        let deadline = tokio::time::Instant::now() + wait;
        while count < batch_max {
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) if wait.is_zero() => None,
                Err(TryRecvError::Empty) => tokio::time::timeout_at(deadline, rx.recv())
                    .await
                    .ok()
                    .flatten(),
            };
            match next {
                Some(job) => {
                    count += job.docs.len();
                    jobs.push(job);
                }
                None => break,
            }
        }
        let writer = writer.clone();
        tokio::spawn(async move {
            writer.write_jobs(jobs).await;
            drop(permit);
        });
    }
}

impl Writer {
    async fn write_jobs(&self, jobs: Vec<Job>) {
        let docs: Vec<&RawDocumentBuf> = jobs.iter().flat_map(|j| j.docs.iter()).collect();
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.documents
            .fetch_add(docs.len() as u64, Ordering::Relaxed);
        let results = self.insert(&docs).await;
        drop(docs);
        let mut results = results.into_iter();
        for job in jobs {
            let mine: Results = results.by_ref().take(job.docs.len()).collect();
            let _ = job.reply.send(mine);
        }
    }

    fn timeout_error(&self) -> StorageError {
        StorageError::Timeout {
            backend: BACKEND,
            message: format!(
                "no answer within {} ms (DRIVER_OPERATION_TIMEOUT_MS)",
                self.op_timeout.as_millis()
            ),
        }
    }

    /// One `insert_many(ordered = false)`; one result per document.
    async fn insert(&self, docs: &[&RawDocumentBuf]) -> Results {
        let n = docs.len();
        if n == 0 {
            return Vec::new();
        }
        let call = self.coll.insert_many(docs.iter().copied()).ordered(false);
        let result = match tokio::time::timeout(self.op_timeout, call).await {
            Ok(r) => r,
            Err(_) => return vec![Err(self.timeout_error()); n],
        };
        match result {
            Ok(_) => vec![Ok(SaveOutcome::Inserted); n],
            Err(e) => match e.kind.as_ref() {
                ErrorKind::InsertMany(failure) => self.per_document(docs, failure).await,
                _ => {
                    let err = scrub_error(classify(&e), &self.secrets);
                    if err.is_retriable() || n == 1 {
                        if err.is_retriable() {
                            tracing::warn!(error = %err, documents = n, "driver batch not stored (retriable)");
                        }
                        vec![Err(err); n]
                    } else {
                        // A permanent batch-level error: find out which document it is about.
                        tracing::warn!(error = %err, documents = n, "driver batch refused; retrying one document at a time");
                        let mut out = Vec::with_capacity(n);
                        for d in docs {
                            out.extend(Box::pin(self.insert(std::slice::from_ref(d))).await);
                        }
                        out
                    }
                }
            },
        }
    }

    /// One result per document from an `insert_many` failure: a duplicate on `_id` is
    /// `Duplicate` (a redelivery), a duplicate on any other unique index is `Rejected` with the
    /// reason, other write errors are classified by code; when the batch also carries a
    /// write-concern error, every document not refused for good — duplicates included (their
    /// earlier write may not be durable either) — gets that retriable error.
    async fn per_document(&self, docs: &[&RawDocumentBuf], failure: &InsertManyError) -> Results {
        let n = docs.len();
        let concern = failure.write_concern_error.as_ref().map(|w| {
            scrub_error(
                write_concern_error(w.code, format!("{} {}: {}", w.code, w.code_name, w.message)),
                &self.secrets,
            )
        });
        let mut out: Vec<Option<Result<SaveOutcome, StorageError>>> = vec![None; n];
        for we in failure.write_errors.iter().flatten() {
            let Some(slot) = out.get_mut(we.index) else {
                continue;
            };
            let name = we.code_name.as_deref().unwrap_or("");
            let message = || format!("{} {name}: {}", we.code, we.message);
            *slot = Some(if is_duplicate_key(we.code) {
                // Another index (or none named): a redelivery still collides on `_id` too, but
                // the server names only one index — look the `_id` up.
                let on_id = match duplicate_on_id(&we.message, we.details.as_ref()) {
                    Some(true) => Ok(true),
                    _ => self.id_stored(docs[we.index]).await,
                };
                match (on_id, &concern) {
                    (Ok(true), Some(wc)) => Err(wc.clone()),
                    (Ok(true), None) => Ok(SaveOutcome::Duplicate),
                    (Ok(false), _) => Err(scrub_error(
                        StorageError::Rejected {
                            backend: BACKEND,
                            message: format!(
                                "the document collides with a stored one on a unique index other than `_id` (not a redelivery): {}",
                                message()
                            ),
                        },
                        &self.secrets,
                    )),
                    (Err(e), _) => Err(e),
                }
            } else {
                Err(scrub_error(
                    classify_code(we.code, message()),
                    &self.secrets,
                ))
            });
        }
        let rest = match concern {
            Some(wc) => Err(wc),
            None => Ok(SaveOutcome::Inserted),
        };
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| rest.clone()))
            .collect()
    }

    /// Whether a document with the `_id` of `doc` is stored (a failed look-up is retriable).
    async fn id_stored(&self, doc: &RawDocumentBuf) -> Result<bool, StorageError> {
        let id = doc
            .get("_id")
            .ok()
            .flatten()
            .and_then(|v| Bson::try_from(v).ok())
            .ok_or_else(|| StorageError::Internal {
                backend: BACKEND,
                message: "a stored document without `_id`".into(),
            })?;
        let lookup = self.coll.count_documents(doc! {"_id": id}).limit(1);
        match tokio::time::timeout(self.op_timeout, lookup).await {
            Ok(Ok(found)) => Ok(found > 0),
            Ok(Err(e)) => Err(scrub_error(classify(&e), &self.secrets)),
            Err(_) => Err(self.timeout_error()),
        }
    }
}

/// Which unique index a duplicate-key error is about: `Some(true)` for `_id` (its `keyPattern`
/// in the error details, or the index name `_id_` / the key `_id` in the server's message),
/// `Some(false)` for another index, `None` when the error does not say.
pub fn duplicate_on_id(message: &str, details: Option<&Document>) -> Option<bool> {
    if let Some(pattern) = details.and_then(|d| d.get_document("keyPattern").ok()) {
        return Some(pattern.len() == 1 && pattern.contains_key("_id"));
    }
    if let Some((_, rest)) = message.split_once("index: ") {
        let name = rest.split_whitespace().next().unwrap_or_default();
        return Some(name == "_id_");
    }
    if let Some((_, rest)) = message.split_once("dup key: {") {
        let key = rest.split(':').next().unwrap_or_default().trim();
        return Some(key.trim_matches('"') == "_id");
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The backend
// ---------------------------------------------------------------------------------------------

pub struct DriverStorage {
    handle: Arc<ClientHandle>,
    read: Collection<Document>,
    writer: Arc<Writer>,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    batcher: Mutex<Option<JoinHandle<()>>>,
    in_flight: Arc<Semaphore>,
    database: String,
}

impl DriverStorage {
    /// Connects (reusing the process's client when the connection settings are unchanged),
    /// checks the cluster answers, and creates the indexes.
    pub async fn connect<'a>(params: impl Into<Params<'a>>) -> Result<Self, StorageError> {
        let Params {
            settings: ds,
            database,
        } = params.into();
        let target = Target::from_settings(ds)?;
        let write_concern = parse_write_concern(&ds.write_concern)?;
        if database.is_empty() {
            return Err(StorageError::Config {
                backend: BACKEND,
                message: "DB (config key `storage.database`) must not be empty".into(),
            });
        }
        if ds.collection.is_empty() {
            return Err(StorageError::Config {
                backend: BACKEND,
                message:
                    "DRIVER_COLLECTION (config key `storage.driver.collection`) must not be empty"
                        .into(),
            });
        }
        let handle = shared_client(&target, ds).await?;
        let db = handle.client.database(database);

        // Start-up check: a round trip (authenticates too).
        if let Err(e) = db.run_command(doc! {"ping": 1}).await {
            let unreachable = matches!(e.kind.as_ref(), ErrorKind::ServerSelection { .. });
            let auth = matches!(e.kind.as_ref(), ErrorKind::Authentication { .. })
                || matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == 18 || c.code == 13);
            let message = scrub(
                if unreachable {
                    format!(
                        "cannot reach MongoDB at {} ({}) within {} ms (DRIVER_SERVER_SELECTION_TIMEOUT_MS): {}",
                        target.shown(),
                        target.setting,
                        ds.server_selection_timeout_ms,
                        describe(&e)
                    )
                } else if auth {
                    format!(
                        "authentication to {} failed: check the credentials in {}: {}",
                        target.shown(),
                        target.setting,
                        describe(&e)
                    )
                } else {
                    format!(
                        "MongoDB at {} ({}) refused `ping`: {}",
                        target.shown(),
                        target.setting,
                        describe(&e)
                    )
                },
                &target.secrets,
            );
            return Err(if auth {
                StorageError::Config {
                    backend: BACKEND,
                    message,
                }
            } else {
                StorageError::Unavailable {
                    backend: BACKEND,
                    message,
                }
            });
        }

        let read: Collection<Document> = db.collection(&ds.collection);
        let secrets: Arc<[String]> = target.secrets.clone().into();
        ensure_indexes(&read)
            .await
            .map_err(|e| scrub_error(e, &secrets))?;

        let coll: Collection<RawDocumentBuf> = db.collection_with_options(
            &ds.collection,
            CollectionOptions::builder()
                .write_concern(write_concern)
                .build(),
        );
        let writer = Arc::new(Writer {
            coll,
            secrets,
            op_timeout: Duration::from_millis(ds.operation_timeout_ms.max(1)),
            batches: AtomicU64::new(0),
            documents: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_BATCHES));
        let batcher = tokio::spawn(batcher(
            writer.clone(),
            rx,
            ds.batch_max.max(1),
            Duration::from_millis(ds.batch_wait_ms),
            in_flight.clone(),
        ));
        tracing::info!(
            uri = %target.shown(),
            database = %database,
            collection = %ds.collection,
            "driver storage connected"
        );
        Ok(Self {
            handle,
            read,
            writer,
            tx: Mutex::new(Some(tx)),
            batcher: Mutex::new(Some(batcher)),
            in_flight,
            database: database.to_string(),
        })
    }

    /// The process-wide client this backend uses.
    pub fn client(&self) -> &Client {
        &self.handle.client
    }

    /// Whether `other` uses the same pooled client (same connection settings, same runtime).
    pub fn shares_client_with(&self, other: &DriverStorage) -> bool {
        Arc::ptr_eq(&self.handle, &other.handle)
    }

    /// Group-commit counters: (`insert_many` batches sent, documents in them).
    pub fn batch_stats(&self) -> (u64, u64) {
        (
            self.writer.batches.load(Ordering::Relaxed),
            self.writer.documents.load(Ordering::Relaxed),
        )
    }

    /// The database name (`DB`).
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The collection (`DRIVER_COLLECTION`), as raw BSON documents.
    pub fn collection(&self) -> &Collection<Document> {
        &self.read
    }

    fn closed() -> StorageError {
        StorageError::Unavailable {
            backend: BACKEND,
            message: "the driver storage is shutting down".into(),
        }
    }

    async fn submit(&self, docs: Vec<RawDocumentBuf>) -> Results {
        let n = docs.len();
        let Some(tx) = self.tx.lock().expect("driver tx lock").clone() else {
            return vec![Err(Self::closed()); n];
        };
        let (reply, rx) = oneshot::channel();
        if tx.send(Job { docs, reply }).await.is_err() {
            return vec![Err(Self::closed()); n];
        }
        match rx.await {
            Ok(r) if r.len() == n => r,
            Ok(_) => vec![
                Err(StorageError::Internal {
                    backend: BACKEND,
                    message: "wrong number of results from the batch writer".into(),
                });
                n
            ],
            Err(_) => vec![
                Err(StorageError::Unavailable {
                    backend: BACKEND,
                    message: "the batch writer stopped before answering".into(),
                });
                n
            ],
        }
    }

    async fn with_timeout<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, MongoError>>,
    ) -> Result<T, StorageError> {
        match tokio::time::timeout(self.writer.op_timeout, f).await {
            Ok(r) => r.map_err(|e| scrub_error(classify(&e), &self.writer.secrets)),
            Err(_) => Err(self.writer.timeout_error()),
        }
    }
}

/// Creates the read-back indexes (idempotent: same names and keys every time).
async fn ensure_indexes(coll: &Collection<Document>) -> Result<(), StorageError> {
    let date = format!("{META_KEY}.{RECEIVED_DATE}");
    let model = |name: &str, keys: Document| {
        IndexModel::builder()
            .keys(keys)
            .options(IndexOptions::builder().name(name.to_string()).build())
            .build()
    };
    let mut models = vec![model("connect_received", doc! {date.clone(): -1})];
    for field in ["event_type", "status", "object_id"] {
        models.push(model(
            &format!("connect_{field}_received"),
            doc! {format!("{META_KEY}.{field}"): 1, date.clone(): -1},
        ));
    }
    coll.create_indexes(models).await.map_err(|e| {
        let err = classify(&e);
        let message = format!(
            "cannot create the read-back indexes on {}.{} (DB, DRIVER_COLLECTION): {}",
            coll.namespace().db,
            coll.name(),
            describe(&e)
        );
        if err.is_retriable() {
            StorageError::Unavailable {
                backend: BACKEND,
                message,
            }
        } else {
            StorageError::Config {
                backend: BACKEND,
                message,
            }
        }
    })?;
    Ok(())
}

#[async_trait]
impl Storage for DriverStorage {
    fn name(&self) -> &'static str {
        BACKEND
    }

    async fn save(&self, doc: &EventDocument) -> Result<SaveOutcome, StorageError> {
        let raw = to_stored(doc)?;
        self.submit(vec![raw]).await.pop().unwrap_or_else(|| {
            Err(StorageError::Internal {
                backend: BACKEND,
                message: "no result from the batch writer".into(),
            })
        })
    }

    async fn save_many(&self, docs: &[EventDocument]) -> Results {
        let prepared: Vec<Result<RawDocumentBuf, StorageError>> =
            docs.iter().map(to_stored).collect();
        let good: Vec<RawDocumentBuf> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let mut written = if good.is_empty() {
            Vec::new()
        } else {
            self.submit(good).await
        }
        .into_iter();
        prepared
            .into_iter()
            .map(|p| match p {
                Ok(_) => written.next().unwrap_or_else(|| {
                    Err(StorageError::Internal {
                        backend: BACKEND,
                        message: "missing result from the batch writer".into(),
                    })
                }),
                Err(e) => Err(e),
            })
            .collect()
    }

    async fn ping(&self) -> Result<(), StorageError> {
        let db = self.handle.client.database(&self.database);
        self.with_timeout(db.run_command(doc! {"ping": 1}).into_future())
            .await
            .map(|_| ())
    }

    async fn get(&self, id: &str) -> Result<Option<Value>, StorageError> {
        let found = self
            .with_timeout(self.read.find_one(doc! {"_id": id}).into_future())
            .await?;
        Ok(found.map(from_stored))
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Value>, StorageError> {
        let mut filter = Document::new();
        for (field, value) in [
            ("event_type", &query.event_type),
            ("status", &query.status),
            ("object_id", &query.object_id),
        ] {
            if let Some(v) = value {
                filter.insert(format!("{META_KEY}.{field}"), v.clone());
            }
        }
        let limit = query.effective_limit() as i64;
        let sort = doc! {format!("{META_KEY}.{RECEIVED_DATE}"): -1, "_id": -1};
        let docs: Vec<Document> = self
            .with_timeout(async {
                self.read
                    .find(filter)
                    .sort(sort)
                    .limit(limit)
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        Ok(docs.into_iter().map(from_stored).collect())
    }

    async fn close(&self) {
        // Dropping the sender lets the batcher send what is queued, then exit.
        drop(self.tx.lock().expect("driver tx lock").take());
        let batcher = self.batcher.lock().expect("driver batcher lock").take();
        let drain = async {
            if let Some(batcher) = batcher {
                let _ = batcher.await;
            }
            // Wait for the batches still in flight.
            let _ = self.in_flight.acquire_many(IN_FLIGHT_BATCHES as u32).await;
        };
        if tokio::time::timeout(CLOSE_TIMEOUT, drain).await.is_err() {
            tracing::warn!(
                timeout_ms = CLOSE_TIMEOUT.as_millis() as u64,
                "driver storage: batches still in flight at the close timeout; their events were not answered success, so they are redelivered"
            );
        }
        // The last user of the pooled client shuts it down, so that no driver task is left to
        // run (or panic) while the runtime is torn down.
        if let Some(client) = release_client(&self.handle).await {
            if tokio::time::timeout(CLIENT_SHUTDOWN_TIMEOUT, client.clone().shutdown())
                .await
                .is_err()
            {
                tracing::warn!(
                    timeout_ms = CLIENT_SHUTDOWN_TIMEOUT.as_millis() as u64,
                    "driver storage: the client did not shut down in time; closing it immediately"
                );
                let _ = tokio::time::timeout(
                    CLIENT_SHUTDOWN_TIMEOUT,
                    client.shutdown().immediate(true).into_future(),
                )
                .await;
            }
        }
    }
}

use std::future::IntoFuture;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
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
            assert!(matches!(e, StorageError::Config { .. }), "{uri}: {text}");
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
        assert!(matches!(e, StorageError::Unavailable { .. }), "{text}");
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
        assert!(matches!(e, StorageError::Config { .. }), "{e}");
        assert!(e.to_string().contains("DRIVER_WRITE_CONCERN"), "{e}");
    }

    #[test]
    fn the_tutorial_variables_build_the_srv_uri() {
        let s = settings_with(&[
            ("DB_HOST", "cluster0.example.mongodb.net"),
            ("DB_USER", "alice"),
            ("DB_PASSWORD", "p@ss:w/rd?#%"),
        ]);
        let t = Target::from_settings(&s.storage.driver).unwrap();
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
            Target::from_settings(&s.storage.driver).unwrap().uri,
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
            assert!(
                matches!(e, StorageError::Unavailable { .. }),
                "{code}: {e:?}"
            );
        }
        for code in [50, 64, 89, 262] {
            assert!(matches!(
                classify_code(code, m()),
                StorageError::Timeout { .. }
            ));
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
}
