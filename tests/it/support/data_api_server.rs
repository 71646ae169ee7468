//! A Data API v1-compatible HTTP server for tests, on top of a real MongoDB-compatible server
//! (through the `mongodb` driver): the contract of `docs/data-api.md` /
//! `../shared/docs/atlas-data-api.md` §6–§7, §12.2.
//!
//! - `POST /app/{appId}/endpoint/data/{v1|beta}/action/{action}` (and the bare `/action/{action}`
//!   prefix the emulators use) for the ten actions: findOne, find, insertOne, insertMany,
//!   updateOne, updateMany, replaceOne, deleteOne, deleteMany, aggregate.
//! - Auth: `Authorization: Bearer` first (an invalid token is 401, no fall-back), then `apiKey` or
//!   `api-key`, then `email` + `password` (one alone: 400 MissingParameter); no credentials: 400
//!   InvalidParameter; wrong ones: 401 InvalidSession. Bodies as documented, each with a `link`.
//! - `application/json` and `application/ejson` bodies, both read as Extended JSON (lenient);
//!   anything else 400 (text). Answers in the `Accept` format or the app default: EJSON canonical,
//!   JSON as the service flattened it (hex ids, ISO dates with milliseconds, …).
//! - 201 for inserts (configurable), 200 otherwise. Database-level failures: 400 plain text
//!   `Failed to insert document: FunctionError: (DuplicateKey) E11000 …`.
//! - Fault injection from a queue (per action or any): 429 with/without `Retry-After`, 500, any
//!   status/body, slow answers, the connection dropped after the write committed, `text/plain`
//!   success bodies, redirects (to a [`Recorder`] that keeps what it receives), endless bodies.
//!   Every request is logged (path, headers, raw and parsed body).
//! - Gateway variants: duplicates answered with another status (HTTP 500, as one widely used
//!   gateway does) and/or as JSON; FerretDB-style `{"n": k}` insert answers.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bson::{doc, oid::ObjectId, Bson, Document};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub const ACTIONS: [&str; 10] = [
    "findOne",
    "find",
    "insertOne",
    "insertMany",
    "updateOne",
    "updateMany",
    "replaceOne",
    "deleteOne",
    "deleteMany",
    "aggregate",
];

/// How the emulated App Services app is set up.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub app_id: String,
    pub api_keys: Vec<String>,
    pub bearer_tokens: Vec<String>,
    /// email → password
    pub users: Vec<(String, String)>,
    /// "User ID"/"System" mode: no credentials needed.
    pub open: bool,
    /// Linked data sources (`dataSource` values accepted).
    pub data_sources: Vec<String>,
    /// Status of a successful insertOne/insertMany (201 as observed, 200 per the OpenAPI file).
    pub insert_status: u16,
    /// The app's default `return_type` is EJSON (else JSON).
    pub default_ejson: bool,
    /// Beta quirk: every success body labelled `text/plain`.
    pub text_plain_success: bool,
    /// Status of a duplicate-key answer (400 as documented; 500 from some gateways).
    pub duplicate_status: u16,
    /// Duplicate-key answers as JSON `{error, error_code: "DuplicateKey", code: 11000}` instead
    /// of plain text.
    pub duplicate_as_json: bool,
    /// FerretDB-style insert answers: `{"n": <count>}` instead of `insertedId(s)`.
    pub n_style_inserts: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            app_id: "data-abcde".into(),
            api_keys: vec!["test-api-key".into()],
            bearer_tokens: vec!["test-access-token".into()],
            users: vec![("user@example.com".into(), "pa55word".into())],
            open: false,
            data_sources: vec!["Cluster0".into(), "mongodb-atlas".into()],
            insert_status: 201,
            default_ejson: false,
            text_plain_success: false,
            duplicate_status: 400,
            duplicate_as_json: false,
            n_style_inserts: false,
        }
    }
}

/// A fault to inject into one request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429, with `Retry-After: <value>` when given.
    TooManyRequests { retry_after: Option<String> },
    /// 500 with the documented internal-error body.
    InternalError,
    /// Any status with a body and content type.
    Status {
        status: u16,
        content_type: &'static str,
        body: String,
    },
    /// Wait, then handle the request normally (the write happens after the wait).
    Slow(Duration),
    /// Handle the request (the write commits), then drop the connection without an answer.
    DropAfterCommit,
    /// Handle normally, label the success body `text/plain`.
    TextPlainSuccess,
    /// No fault: handle normally (to aim a later fault at the n-th request).
    Pass,
    /// Answer a redirect (`status` 301/302/307/308) to `location`, without handling the request.
    Redirect { status: u16, location: String },
    /// Answer `status` with a body that never ends (64 KiB chunks until the client hangs up).
    Endless {
        status: u16,
        content_type: &'static str,
    },
}

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub action: String,
    pub headers: HeaderMap,
    pub raw_body: Bytes,
    /// The body parsed as JSON (Null when it is not JSON).
    pub body: Value,
    /// The fault injected into it, if any.
    pub fault: Option<String>,
}

struct Shared {
    config: ServerConfig,
    mongo: mongodb::Client,
    faults: Mutex<VecDeque<(Option<String>, Fault)>>,
    log: Mutex<Vec<Recorded>>,
    log_ids: AtomicU64,
}

/// A running server; stops when dropped.
pub struct DataApiServer {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>/app/<appId>/endpoint/data/v1` (append `/action/<name>`).
    pub base_url: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Drop for DataApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl DataApiServer {
    pub async fn start(mongo_uri: &str, config: ServerConfig) -> DataApiServer {
        let mongo = mongodb::Client::with_uri_str(mongo_uri)
            .await
            .unwrap_or_else(|e| panic!("MongoDB client for {mongo_uri}: {e}"));
        let app_id = config.app_id.clone();
        let shared = Arc::new(Shared {
            config,
            mongo,
            faults: Mutex::new(VecDeque::new()),
            log: Mutex::new(Vec::new()),
            log_ids: AtomicU64::new(1),
        });
        let router = Router::new()
            .route(
                "/app/{app_id}/endpoint/data/{version}/action/{action}",
                post(handle),
            )
            .route("/action/{action}", post(handle))
            .with_state(shared.clone());
        let (addr, stop) = serve_on_loopback(router).await;
        DataApiServer {
            addr,
            base_url: format!("http://{addr}/app/{app_id}/endpoint/data/v1"),
            shared,
            stop,
        }
    }

    /// Queues `fault` for the next request to `action` (any action when `None`). Faults are
    /// consumed in order, one per request.
    pub fn inject(&self, action: Option<&str>, fault: Fault) {
        self.shared
            .faults
            .lock()
            .unwrap()
            .push_back((action.map(str::to_string), fault));
    }

    pub fn clear_faults(&self) {
        self.shared.faults.lock().unwrap().clear();
    }

    pub fn pending_faults(&self) -> usize {
        self.shared.faults.lock().unwrap().len()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.log.lock().unwrap().clone()
    }

    pub fn requests_for(&self, action: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.action == action)
            .collect()
    }

    pub fn clear_log(&self) {
        self.shared.log.lock().unwrap().clear();
    }

    pub fn mongo(&self) -> &mongodb::Client {
        &self.shared.mongo
    }
}

// ---------------------------------------------------------------------------------------------

fn link(shared: &Shared) -> String {
    let n = shared.log_ids.fetch_add(1, Ordering::Relaxed);
    format!(
        "https://services.cloud.mongodb.com/groups/000000000000000000000000/apps/{}/logs?co_id={n:024x}",
        shared.config.app_id
    )
}

fn json_response(status: u16, body: Value) -> Response {
    let mut r = (
        StatusCode::from_u16(status).expect("status"),
        body.to_string(),
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn text_response(status: u16, body: String) -> Response {
    let mut r = (StatusCode::from_u16(status).expect("status"), body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn error(shared: &Shared, status: u16, message: &str, code: &str) -> Response {
    json_response(
        status,
        json!({"error": message, "error_code": code, "link": link(shared)}),
    )
}

fn bad_param(shared: &Shared, message: impl AsRef<str>) -> Response {
    error(shared, 400, message.as_ref(), "InvalidParameter")
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `None` = authenticated; `Some(response)` = refused.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let cfg = &shared.config;
    let invalid_session = || {
        error(
            shared,
            401,
            "invalid session: error finding user for endpoint",
            "InvalidSession",
        )
    };
    if let Some(auth) = header_str(headers, "authorization") {
        if let Some(token) = auth.strip_prefix("Bearer ") {
            // An invalid token fails the request; no fall-back to other headers.
            return (!cfg.bearer_tokens.iter().any(|t| t == token.trim())).then(invalid_session);
        }
    }
    // Header names are case-insensitive: `apiKey` arrives as `apikey`.
    if let Some(key) = header_str(headers, "apikey").or_else(|| header_str(headers, "api-key")) {
        return (!cfg.api_keys.iter().any(|k| k == key)).then(invalid_session);
    }
    let email = header_str(headers, "email");
    let password = header_str(headers, "password");
    match (email, password) {
        (Some(e), Some(p)) => {
            return (!cfg.users.iter().any(|(ue, up)| ue == e && up == p)).then(invalid_session)
        }
        (Some(_), None) | (None, Some(_)) => {
            return Some(error(
                shared,
                400,
                "must specify some form of authentication (either email+password, api-key, or jwt) in the request header or body",
                "MissingParameter",
            ))
        }
        (None, None) => {}
    }
    if headers.contains_key("jwttokenstring") {
        return Some(invalid_session());
    }
    if cfg.open {
        return None;
    }
    Some(error(
        shared,
        400,
        "no authentication methods were specified",
        "InvalidParameter",
    ))
}

fn media_type(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    Path(params): Path<HashMap<String, String>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let action = params.get("action").cloned().unwrap_or_default();
    let mut fault = None;
    if ACTIONS.contains(&action.as_str()) {
        let mut faults = shared.faults.lock().unwrap();
        if let Some(pos) = faults
            .iter()
            .position(|(a, _)| a.as_deref().is_none_or(|a| a == action))
        {
            fault = faults.remove(pos).map(|(_, f)| f);
        }
    }
    shared.log.lock().unwrap().push(Recorded {
        path: uri.path().to_string(),
        action: action.clone(),
        headers: headers.clone(),
        raw_body: raw.clone(),
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
        fault: fault.as_ref().map(|f| format!("{f:?}")),
    });

    if let Some(app) = params.get("app_id") {
        if *app != shared.config.app_id {
            return json_response(
                404,
                json!({"error": format!("cannot find app using Client App ID '{app}'")}),
            );
        }
    }
    if let Some(version) = params.get("version") {
        if version != "v1" && version != "beta" {
            return (StatusCode::NOT_FOUND, "").into_response();
        }
    }
    if !ACTIONS.contains(&action.as_str()) {
        return (StatusCode::NOT_FOUND, "").into_response();
    }

    let (mut drop_after, mut text_plain) = (false, shared.config.text_plain_success);
    match fault {
        Some(Fault::TooManyRequests { retry_after }) => {
            let mut r = error(
                &shared,
                429,
                "too many requests: the app's concurrent request limit was exceeded",
                "TooManyRequests",
            );
            if let Some(v) = retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_str(&v).unwrap());
            }
            return r;
        }
        Some(Fault::InternalError) => {
            return json_response(
                500,
                json!({"error": "The Data API encountered an internal error and could not complete the request."}),
            )
        }
        Some(Fault::Status {
            status,
            content_type,
            body,
        }) => {
            let mut r = (StatusCode::from_u16(status).unwrap(), body).into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            return r;
        }
        Some(Fault::Redirect { status, location }) => {
            return Response::builder()
                .status(status)
                .header(header::LOCATION, location)
                .body(Body::empty())
                .unwrap();
        }
        Some(Fault::Endless {
            status,
            content_type,
        }) => {
            let chunk = Bytes::from(vec![b' '; 64 * 1024]);
            let opening = Bytes::from_static(b"{\"documents\": [\"");
            let stream =
                futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(opening) })
                    .chain(futures_util::stream::repeat_with(move || Ok(chunk.clone())));
            return Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from_stream(stream))
                .unwrap();
        }
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        Some(Fault::DropAfterCommit) => drop_after = true,
        Some(Fault::TextPlainSuccess) => text_plain = true,
        Some(Fault::Pass) | None => {}
    }

    if let Some(refused) = authenticate(&shared, &headers) {
        return refused;
    }
    match media_type(&headers, header::CONTENT_TYPE).as_deref() {
        Some("application/json") | Some("application/ejson") => {}
        _ => {
            return text_response(
                400,
                "Only application/ejson and application/json content types accepted.".into(),
            )
        }
    }
    let ejson_answer = match media_type(&headers, header::ACCEPT).as_deref() {
        Some("application/ejson") => true,
        Some("application/json") => false,
        _ => shared.config.default_ejson,
    };
    // Both content types are read as Extended JSON, canonical or relaxed (lenient).
    let value: Value = match serde_json::from_slice(&raw) {
        Ok(v) => v,
        Err(e) => return bad_param(&shared, format!("invalid JSON body: {e}")),
    };
    if !value.is_object() {
        return bad_param(&shared, "the request body must be a JSON object");
    }
    let body = match Bson::try_from(value) {
        Ok(Bson::Document(d)) => d,
        Ok(_) => return bad_param(&shared, "the request body must be a JSON object"),
        Err(e) => return bad_param(&shared, format!("invalid Extended JSON body: {e}")),
    };
    let data_source = match body.get("dataSource") {
        Some(Bson::String(s)) => s.clone(),
        _ => return bad_param(&shared, "dataSource must be a string"),
    };
    if !shared.config.data_sources.contains(&data_source) {
        return json_response(
            400,
            json!({"error": format!("The data source '{data_source}' is disabled or does not exist")}),
        );
    }
    let (database, collection) = match (body.get("database"), body.get("collection")) {
        (Some(Bson::String(d)), Some(Bson::String(c))) if !d.is_empty() && !c.is_empty() => {
            (d.clone(), c.clone())
        }
        _ => return bad_param(&shared, "database and collection must be non-empty strings"),
    };
    for optional in ["projection", "sort", "limit", "skip", "upsert"] {
        if matches!(body.get(optional), Some(Bson::Null)) {
            return json_response(400, json!({"error": "Bad Request"}));
        }
    }
    let coll = shared
        .mongo
        .database(&database)
        .collection::<Document>(&collection);
    let result = run_action(&action, &coll, &body, &database, &collection).await;
    let answer = match result {
        Ok(answer) => answer,
        Err(Failure::Param(m)) => return bad_param(&shared, m),
        Err(Failure::Db(text)) => return text_response(400, text),
        Err(Failure::Duplicate(text)) => {
            let status = shared.config.duplicate_status;
            return if shared.config.duplicate_as_json {
                json_response(
                    status,
                    json!({"error": text, "error_code": "DuplicateKey", "code": 11000, "link": link(&shared)}),
                )
            } else {
                text_response(status, text)
            };
        }
        Err(Failure::Internal(m)) => return error(&shared, 500, &m, "InternalServerError"),
    };
    let answer = match (shared.config.n_style_inserts, action.as_str()) {
        (true, "insertOne") => doc! {"n": 1},
        (true, "insertMany") => {
            let n = answer
                .get_array("insertedIds")
                .map(|a| a.len())
                .unwrap_or(0);
            doc! {"n": n as i32}
        }
        _ => answer,
    };
    let status = if action.starts_with("insert") {
        shared.config.insert_status
    } else {
        200
    };
    if drop_after {
        // The write is committed; the client gets no answer, only a broken connection.
        let stream = futures_util::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other(
                "injected fault: connection dropped after the write committed",
            ))
        });
        return Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(stream))
            .unwrap();
    }
    let (json_body, content_type) = if ejson_answer {
        (
            Bson::Document(answer).into_canonical_extjson(),
            "application/ejson",
        )
    } else {
        (json_mode(Bson::Document(answer)), "application/json")
    };
    let content_type = if text_plain {
        "text/plain; charset=utf-8"
    } else {
        content_type
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(json_body.to_string()))
        .unwrap()
}

enum Failure {
    /// 400 InvalidParameter (JSON).
    Param(String),
    /// Database-level failure: 400 plain text.
    Db(String),
    /// 500.
    Internal(String),
    /// A duplicate key (E11000, any unique index): 400 plain text unless the config says otherwise.
    Duplicate(String),
}

fn get_doc(body: &Document, key: &str, required: bool) -> Result<Option<Document>, Failure> {
    match body.get(key) {
        Some(Bson::Document(d)) => Ok(Some(d.clone())),
        None if !required => Ok(None),
        None => Err(Failure::Param(format!("'{key}' is required"))),
        Some(_) => Err(Failure::Param(format!("'{key}' must be an object"))),
    }
}

fn get_docs(body: &Document, key: &str) -> Result<Vec<Document>, Failure> {
    match body.get(key) {
        Some(Bson::Array(a)) => a
            .iter()
            .map(|b| match b {
                Bson::Document(d) => Ok(d.clone()),
                _ => Err(Failure::Param(format!("'{key}' must hold only objects"))),
            })
            .collect(),
        None => Err(Failure::Param(format!("'{key}' is required"))),
        Some(_) => Err(Failure::Param(format!("'{key}' must be an array"))),
    }
}

fn get_int(body: &Document, key: &str) -> Result<Option<i64>, Failure> {
    match body.get(key) {
        None => Ok(None),
        Some(Bson::Int32(i)) => Ok(Some(*i as i64)),
        Some(Bson::Int64(i)) => Ok(Some(*i)),
        Some(Bson::Double(f)) if f.fract() == 0.0 => Ok(Some(*f as i64)),
        Some(_) => Err(Failure::Param(format!("'{key}' must be an integer"))),
    }
}

fn get_bool(body: &Document, key: &str) -> Result<bool, Failure> {
    match body.get(key) {
        None => Ok(false),
        Some(Bson::Boolean(b)) => Ok(*b),
        Some(_) => Err(Failure::Param(format!("'{key}' must be a boolean"))),
    }
}

fn count(n: u64) -> Bson {
    match i32::try_from(n) {
        Ok(i) => Bson::Int32(i),
        Err(_) => Bson::Int64(n as i64),
    }
}

/// `Failed to <what>: FunctionError: (<CodeName>) <message>`; duplicate keys always carry the
/// standard `E11000 … dup key: { _id: … }` text.
fn db_failure(
    what: &str,
    e: &mongodb::error::Error,
    ns: &str,
    docs: Option<&[Document]>,
) -> Failure {
    use mongodb::error::{ErrorKind, WriteFailure};
    let (code, code_name, message, index) = match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => {
            (w.code, w.code_name.clone(), w.message.clone(), Some(0))
        }
        ErrorKind::InsertMany(im) => match im.write_errors.as_ref().and_then(|w| w.first()) {
            Some(w) => (
                w.code,
                w.code_name.clone(),
                w.message.clone(),
                Some(w.index),
            ),
            None => (0, None, e.to_string(), None),
        },
        ErrorKind::Command(c) => (c.code, Some(c.code_name.clone()), c.message.clone(), None),
        _ => return Failure::Internal(format!("Failed to {what}: {e}")),
    };
    if code == 11000 {
        let mut message = message;
        if !message.contains("E11000") || !message.contains("dup key") {
            let id = docs
                .zip(index)
                .and_then(|(d, i)| d.get(i))
                .and_then(|d| d.get("_id"))
                .map(|id| id.clone().into_relaxed_extjson().to_string())
                .unwrap_or_else(|| "?".into());
            message = format!(
                "E11000 duplicate key error collection: {ns} index: _id_ dup key: {{ _id: {id} }}"
            );
        }
        return Failure::Duplicate(format!(
            "Failed to {what}: FunctionError: (DuplicateKey) {message}"
        ));
    }
    let name = code_name
        .filter(|n| !n.is_empty())
        .map(|n| format!("({n}) "))
        .unwrap_or_default();
    Failure::Db(format!("Failed to {what}: FunctionError: {name}{message}"))
}

async fn run_action(
    action: &str,
    coll: &mongodb::Collection<Document>,
    body: &Document,
    database: &str,
    collection: &str,
) -> Result<Document, Failure> {
    let ns = format!("{database}.{collection}");
    let filter = || get_doc(body, "filter", false).map(|f| f.unwrap_or_default());
    match action {
        "findOne" => {
            let mut op = coll.find_one(filter()?);
            if let Some(p) = get_doc(body, "projection", false)? {
                op = op.projection(p);
            }
            let found = op
                .await
                .map_err(|e| db_failure("find document", &e, &ns, None))?;
            Ok(doc! {"document": found.map(Bson::Document).unwrap_or(Bson::Null)})
        }
        "find" | "aggregate" => {
            let cursor = if action == "find" {
                let limit = get_int(body, "limit")?.unwrap_or(1000);
                if !(0..=50_000).contains(&limit) {
                    return Err(Failure::Param("'limit' must be between 0 and 50000".into()));
                }
                let skip = get_int(body, "skip")?.unwrap_or(0);
                if skip < 0 {
                    return Err(Failure::Param("'skip' must not be negative".into()));
                }
                let mut op = coll.find(filter()?).limit(limit).skip(skip as u64);
                if let Some(p) = get_doc(body, "projection", false)? {
                    op = op.projection(p);
                }
                if let Some(s) = get_doc(body, "sort", false)? {
                    op = op.sort(s);
                }
                op.await
            } else {
                coll.aggregate(get_docs(body, "pipeline")?).await
            };
            let what = if action == "find" {
                "find documents"
            } else {
                "aggregate documents"
            };
            let docs: Vec<Document> = match cursor {
                Ok(c) => c
                    .try_collect()
                    .await
                    .map_err(|e| db_failure(what, &e, &ns, None))?,
                Err(e) => return Err(db_failure(what, &e, &ns, None)),
            };
            Ok(doc! {"documents": docs.into_iter().map(Bson::Document).collect::<Vec<_>>()})
        }
        "insertOne" => {
            let mut document = get_doc(body, "document", true)?.expect("required");
            if !document.contains_key("_id") {
                let mut with_id = doc! {"_id": ObjectId::new()};
                with_id.extend(document);
                document = with_id;
            }
            let id = document.get("_id").cloned().expect("_id");
            coll.insert_one(&document).await.map_err(|e| {
                db_failure(
                    "insert document",
                    &e,
                    &ns,
                    Some(std::slice::from_ref(&document)),
                )
            })?;
            Ok(doc! {"insertedId": id})
        }
        "insertMany" => {
            let documents: Vec<Document> = get_docs(body, "documents")?
                .into_iter()
                .map(|d| {
                    if d.contains_key("_id") {
                        d
                    } else {
                        let mut with_id = doc! {"_id": ObjectId::new()};
                        with_id.extend(d);
                        with_id
                    }
                })
                .collect();
            if documents.is_empty() {
                return Err(Failure::Db(
                    "Failed to insert documents: FunctionError: (InvalidLength) documents must be a non-empty array".into(),
                ));
            }
            let ids: Vec<Bson> = documents
                .iter()
                .map(|d| d.get("_id").cloned().expect("_id"))
                .collect();
            coll.insert_many(&documents)
                .await
                .map_err(|e| db_failure("insert documents", &e, &ns, Some(&documents)))?;
            Ok(doc! {"insertedIds": ids})
        }
        "updateOne" | "updateMany" => {
            let update = get_doc(body, "update", true)?.expect("required");
            let upsert = get_bool(body, "upsert")?;
            let f = get_doc(body, "filter", true)?.expect("required");
            let r = if action == "updateOne" {
                coll.update_one(f, update).upsert(upsert).await
            } else {
                coll.update_many(f, update).upsert(upsert).await
            }
            .map_err(|e| db_failure("update document(s)", &e, &ns, None))?;
            let mut out = doc! {"matchedCount": count(r.matched_count), "modifiedCount": count(r.modified_count)};
            if let Some(id) = r.upserted_id {
                out.insert("upsertedId", id);
            }
            Ok(out)
        }
        "replaceOne" => {
            let replacement = get_doc(body, "replacement", true)?.expect("required");
            let upsert = get_bool(body, "upsert")?;
            let f = get_doc(body, "filter", true)?.expect("required");
            let r = coll
                .replace_one(f, replacement)
                .upsert(upsert)
                .await
                .map_err(|e| db_failure("replace document", &e, &ns, None))?;
            let mut out = doc! {"matchedCount": count(r.matched_count), "modifiedCount": count(r.modified_count)};
            if let Some(id) = r.upserted_id {
                out.insert("upsertedId", id);
            }
            Ok(out)
        }
        "deleteOne" | "deleteMany" => {
            let f = get_doc(body, "filter", true)?.expect("required");
            let r = if action == "deleteOne" {
                coll.delete_one(f).await
            } else {
                coll.delete_many(f).await
            }
            .map_err(|e| db_failure("delete document(s)", &e, &ns, None))?;
            Ok(doc! {"deletedCount": count(r.deleted_count)})
        }
        other => Err(Failure::Param(format!("unknown action {other}"))),
    }
}

/// A value as the service's JSON mode flattened it (§5.3): ObjectId → hex, Date → ISO-8601 UTC
/// with milliseconds, Int64 → number, Decimal128 → string, Binary → `{Subtype, Data}`, …
pub fn json_mode(b: Bson) -> Value {
    match b {
        Bson::Double(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(f.to_string())),
        Bson::String(s) | Bson::Symbol(s) | Bson::JavaScriptCode(s) => Value::String(s),
        Bson::Array(a) => Value::Array(a.into_iter().map(json_mode).collect()),
        Bson::Document(d) => Value::Object(d.into_iter().map(|(k, v)| (k, json_mode(v))).collect()),
        Bson::Boolean(b) => Value::Bool(b),
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::RegularExpression(r) => json!({"Pattern": r.pattern, "Options": r.options}),
        Bson::JavaScriptCodeWithScope(c) => {
            json!({"Code": c.code, "Scope": json_mode(Bson::Document(c.scope))})
        }
        Bson::Int32(i) => json!(i),
        Bson::Int64(i) => json!(i),
        Bson::Timestamp(t) => json!({"T": t.time, "I": t.increment}),
        Bson::Binary(bin) => {
            let subtype = u8::from(bin.subtype);
            let canonical = Bson::Binary(bin).into_canonical_extjson();
            json!({"Subtype": subtype, "Data": canonical["$binary"]["base64"]})
        }
        Bson::ObjectId(o) => Value::String(o.to_hex()),
        Bson::DateTime(d) => {
            let millis = d.timestamp_millis();
            let t = time::OffsetDateTime::from_unix_timestamp_nanos(millis as i128 * 1_000_000)
                .expect("date in range");
            let f = time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
            );
            Value::String(t.format(&f).expect("format"))
        }
        Bson::Decimal128(d) => Value::String(d.to_string()),
        Bson::MaxKey | Bson::MinKey | Bson::DbPointer(_) => json!({}),
    }
}

// ---------------------------------------------------------------------------------------------

/// One request as a [`Recorder`] received it.
#[derive(Debug, Clone)]
#[allow(dead_code, reason = "read through `Debug`, in assertion messages")]
pub struct Received {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Another host (a redirect target): records every request, answers 200 with an HTML page.
pub struct Recorder {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    stop: CancellationToken,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Recorder {
    pub async fn start() -> Recorder {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        let router = Router::new().fallback(
            move |method: axum::http::Method,
                  uri: axum::http::Uri,
                  headers: HeaderMap,
                  body: Bytes| {
                let log = log.clone();
                async move {
                    log.lock().unwrap().push(Received {
                        method: method.to_string(),
                        uri: uri.to_string(),
                        headers,
                        body,
                    });
                    let mut r = (
                        StatusCode::OK,
                        "<!DOCTYPE html><html><body>Welcome to the captive portal</body></html>",
                    )
                        .into_response();
                    r.headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
                    r
                }
            },
        );
        let (addr, stop) = serve_on_loopback(router).await;
        Recorder {
            addr,
            received,
            stop,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Serves `router` on a free loopback port until the returned token is cancelled.
async fn serve_on_loopback(router: axum::Router) -> (SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await;
    });
    (addr, stop)
}
