//! The HTTP API of CONTRACT §2 on hyper 1.x: routing, body limits, JSON in
//! and out, and the contract's error shape.
//!
//! This module never writes the database itself: acceptance goes to the
//! store writer and waits for its durable commit; reads use redb read
//! transactions on tokio's blocking pool, so no redb call runs on an async
//! worker thread.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::metrics::{Metrics, Route, WebhookOutcome};
use crate::model::{self, PayloadError, Record, Status};
use crate::signature::Verifier;
use crate::store::writer::{AcceptOutcome, WriteError, WriterHandle};
use crate::store::{ListQuery, MAX_PAGE, Store};

/// Bounds on what one client can hold: set from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body (`--max-body-bytes`).
    pub max_body_bytes: u64,
    /// Most connections served at once; further clients wait in the
    /// listen backlog (`--max-connections`).
    pub max_connections: usize,
    /// A request head (also the next one on an idle keep-alive
    /// connection) must arrive within this time (`--header-read-timeout`).
    pub header_read_timeout: Duration,
    /// A whole request body must arrive within this time (`--body-read-timeout`).
    pub body_read_timeout: Duration,
}

/// Largest request head (request line and headers) hyper buffers.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How long `GET /` waits for its write probe before calling storage unhealthy.
pub const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `Retry-After` on every 503, in seconds.
const RETRY_AFTER_SECONDS: &str = "1";

const WEBHOOKS_PATH: &str = "/v1/webhooks/transactions";
const TRANSACTIONS_PATH: &str = "/v1/transactions";
const TRANSACTIONS_PREFIX: &str = "/v1/transactions/";
const METRICS_PATH: &str = "/metrics";

/// What every request handler needs.
pub struct AppState {
    store: Store,
    writer: WriterHandle,
    limits: Limits,
    verifier: Option<Verifier>,
    access_log: bool,
    metrics: Arc<Metrics>,
}

impl AppState {
    /// Bundles the store (for reads), the writer (for writes), the limits,
    /// the signature verifier (if one is configured) and the metrics.
    #[must_use]
    pub fn new(
        store: Store,
        writer: WriterHandle,
        limits: Limits,
        verifier: Option<Verifier>,
        access_log: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        AppState {
            store,
            writer,
            limits,
            verifier,
            access_log,
            metrics,
        }
    }
}

/// Serves HTTP on an already bound listener until `shutdown` completes,
/// then stops accepting, lets in-flight requests finish for up to `grace`,
/// and closes what is left.
///
/// Every connection task is owned by a `JoinSet`; when this returns, all of
/// them have ended, and with them their handles to the writer.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let limits = state.limits;
    let connection_slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    tokio::pin!(shutdown);

    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = Arc::clone(&connection_slots).acquire_owned() => {
                slot.expect("the connection semaphore is never closed")
            }
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let service = service_fn(move |request| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(handle(&state, request).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        connections.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
        while connections.try_join_next().is_some() {}
    }

    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "shutting down: stopped accepting, draining in-flight requests"
    );
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "shutdown grace period over; closing remaining connections"
        );
    }
    connections.shutdown().await;
}

/// What an error response was about, for the warn log (never a payload).
#[derive(Clone)]
struct Rejection {
    code: &'static str,
    message: String,
}

/// The transaction a response is about, for the logs.
#[derive(Clone)]
struct AboutTransaction(String);

/// Routes the request, then counts it in the metrics and logs: rejected
/// requests (4xx except 404, all 5xx) at warn with their reason, and with
/// `--access-log` one line per request. Payloads, secrets and signatures
/// are never logged.
async fn handle(state: &AppState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let route = route_of(request.uri().path());
    let access = state
        .access_log
        .then(|| (request.method().clone(), request.uri().path().to_owned()));
    let response = dispatch(state, route, request).await;
    let status = response.status();
    let elapsed = started.elapsed();
    state.metrics.request(route, status.as_u16(), elapsed);
    let rejection = response.extensions().get::<Rejection>();
    if route == Route::Webhooks
        && let Some(rejection) = rejection
    {
        state.metrics.webhook(if rejection.code == "conflict" {
            WebhookOutcome::Conflict
        } else {
            WebhookOutcome::Rejected(rejection.code)
        });
    }
    let transaction_id = response
        .extensions()
        .get::<AboutTransaction>()
        .map(|t| t.0.as_str());
    let rejected =
        (status.is_client_error() && status != StatusCode::NOT_FOUND) || status.is_server_error();
    if rejected && let Some(rejection) = rejection {
        tracing::warn!(
            status = status.as_u16(),
            code = rejection.code,
            transaction_id,
            "request rejected: {}",
            rejection.message
        );
    }
    if let Some((method, path)) = access {
        tracing::info!(
            target: "webhookd::access",
            %method,
            path,
            status = status.as_u16(),
            latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            transaction_id,
        );
    }
    response
}

/// Which route a path belongs to, whatever the method.
fn route_of(path: &str) -> Route {
    match path {
        "/" => Route::Health,
        WEBHOOKS_PATH => Route::Webhooks,
        METRICS_PATH => Route::Metrics,
        TRANSACTIONS_PATH => Route::Transactions,
        _ if path.starts_with(TRANSACTIONS_PREFIX) => Route::Transaction,
        _ => Route::Unknown,
    }
}

async fn dispatch(
    state: &AppState,
    route: Route,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = request.method();
    match route {
        Route::Health if method == Method::GET => health(state).await,
        Route::Webhooks if method == Method::POST => match receive(state, request).await {
            Ok(response) | Err(response) => response,
        },
        Route::Metrics if method == Method::GET => metrics(state).await,
        Route::Transaction if method == Method::GET => {
            let raw_id = request.uri().path()[TRANSACTIONS_PREFIX.len()..].to_owned();
            status(state, &raw_id).await
        }
        Route::Transactions if method == Method::GET => list(state, request.uri().query()).await,
        Route::Health | Route::Metrics | Route::Transaction | Route::Transactions => {
            ApiError::MethodNotAllowed("GET").response()
        }
        Route::Webhooks => ApiError::MethodNotAllowed("POST").response(),
        Route::Unknown => ApiError::NotFound("no such path").response(),
    }
}

// --- GET / -------------------------------------------------------------

#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    current_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

async fn health(state: &AppState) -> Response<Full<Bytes>> {
    let failure = match tokio::time::timeout(HEALTH_PROBE_TIMEOUT, state.writer.probe()).await {
        // The probe committed; still unhealthy if real writes failed just now.
        // Overloaded (queue full) is not unhealthy in itself: the writer is
        // busy committing.
        Ok(Ok(()) | Err(WriteError::QueueFull)) => state.writer.recent_failure(),
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!(
            "storage did not complete a write within {}",
            humantime::format_duration(HEALTH_PROBE_TIMEOUT)
        )),
    };
    let body = Health {
        status: if failure.is_none() {
            "HEALTHY"
        } else {
            "UNHEALTHY"
        },
        current_time: format_time(now_ms()),
        reason: failure.as_deref(),
    };
    match failure {
        None => json(StatusCode::OK, &body),
        Some(_) => with_retry_after(json(StatusCode::SERVICE_UNAVAILABLE, &body)),
    }
}

// --- GET /metrics --------------------------------------------------------

/// Every metric, with the job gauges read from the jobs table now.
async fn metrics(state: &AppState) -> Response<Full<Bytes>> {
    let reader = state.store.clone();
    let now = now_ms();
    let jobs = match tokio::task::spawn_blocking(move || reader.job_stats(now)).await {
        Ok(Ok(figures)) => figures,
        Ok(Err(e)) => return ApiError::Unavailable(e.to_string()).response(),
        Err(_) => return ApiError::Unavailable("the read did not complete".to_owned()).response(),
    };
    let text = state
        .metrics
        .render(&jobs, now, state.store.unindexed_count());
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    response
}

// --- POST /v1/webhooks/transactions --------------------------------------

#[derive(Serialize)]
struct Accepted<'a> {
    transaction_id: &'a str,
    status: &'static str,
    duplicate: bool,
}

/// Checks run in the contract's order: 415, 413, 401 (when signatures are
/// on; over the raw body, before parsing), 400, 422, then the write.
async fn receive(
    state: &AppState,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Response<Full<Bytes>>> {
    if !is_json_content_type(request.headers().get(header::CONTENT_TYPE)) {
        return Err(ApiError::UnsupportedMediaType.response());
    }
    let limit = state.limits.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        // Refused before reading any of it; the connection is closed since
        // the unread body cannot be skipped cheaply.
        return Err(close_connection(
            ApiError::PayloadTooLarge(limit).response(),
        ));
    }
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let limited = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    let body = match tokio::time::timeout(state.limits.body_read_timeout, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(close_connection(
                ApiError::PayloadTooLarge(limit).response(),
            ));
        }
        Ok(Err(e)) => {
            return Err(close_connection(
                ApiError::InvalidJson(format!("could not read the request body: {e}")).response(),
            ));
        }
        Err(_) => {
            return Err(close_connection(
                ApiError::BodyTimeout(state.limits.body_read_timeout).response(),
            ));
        }
    };
    if let Some(verifier) = &state.verifier {
        let now = now_ms() / 1000;
        verifier
            .verify(&headers, &body, now)
            .map_err(|rejection| ApiError::InvalidSignature(rejection.0).response())?;
    }
    let transaction = model::parse_payload(&body).map_err(|e| ApiError::from(e).response())?;
    let id = transaction.transaction_id.clone();
    let about = |mut response: Response<Full<Bytes>>| {
        response
            .extensions_mut()
            .insert(AboutTransaction(id.clone()));
        response
    };
    let outcome = state
        .writer
        .accept(transaction)
        .await
        .map_err(|e| about(ApiError::Unavailable(e.to_string()).response()))?;
    let (status, duplicate) = match outcome {
        AcceptOutcome::Created => (model::Status::Processing, false),
        AcceptOutcome::Duplicate(status) => (status, true),
        AcceptOutcome::Conflict => return Err(about(ApiError::Conflict.response())),
    };
    state.metrics.webhook(if duplicate {
        WebhookOutcome::Duplicate
    } else {
        WebhookOutcome::Accepted
    });
    let accepted = json(
        StatusCode::ACCEPTED,
        &Accepted {
            transaction_id: &id,
            status: status.as_str(),
            duplicate,
        },
    );
    // Only the access log reads the id of a 202; without it, skip the copy.
    Ok(if state.access_log {
        about(accepted)
    } else {
        accepted
    })
}

/// `application/json`, any case, parameters (`; charset=utf-8`) allowed.
fn is_json_content_type(value: Option<&HeaderValue>) -> bool {
    let Some(Ok(value)) = value.map(HeaderValue::to_str) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

// --- GET /v1/transactions/{id} -------------------------------------------

#[derive(Serialize)]
struct TransactionView<'a> {
    transaction_id: &'a str,
    source_account: &'a str,
    destination_account: &'a str,
    amount: &'a RawValue,
    currency: &'a str,
    status: &'static str,
    created_at: String,
    processed_at: Option<String>,
}

async fn status(state: &AppState, raw_id: &str) -> Response<Full<Bytes>> {
    // Ids are UTF-8 by validation, so a path that does not decode to UTF-8
    // cannot name a stored transaction.
    let Ok(id) = percent_encoding::percent_decode_str(raw_id).decode_utf8() else {
        return ApiError::NotFound("no such transaction").response();
    };
    if id.is_empty() {
        return ApiError::NotFound("no such transaction").response();
    }
    let id = id.into_owned();
    let store = state.store.clone();
    let read = tokio::task::spawn_blocking(move || store.get(&id)).await;
    match read {
        Ok(Ok(Some(record))) => transaction_response(&record),
        Ok(Ok(None)) => ApiError::NotFound("no such transaction").response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "transaction read failed");
            ApiError::Unavailable(e.to_string()).response()
        }
        Err(e) => {
            tracing::error!(error = %e, "transaction read task failed");
            ApiError::Unavailable("the read did not complete".to_owned()).response()
        }
    }
}

fn transaction_response(record: &Record) -> Response<Full<Bytes>> {
    json_bytes(StatusCode::OK, transaction_json(record))
}

/// A stored transaction as `GET /v1/transactions/{id}` shows it (also used
/// by `webhookd inspect` and `webhookd export`).
#[must_use]
pub fn transaction_json(record: &Record) -> Vec<u8> {
    let tx = &record.transaction;
    // Invariant: a formatted Decimal is a valid JSON number (digits, at most
    // one '.', no exponent, positive).
    let amount = RawValue::from_string(model::format_amount(tx.amount))
        .expect("a formatted decimal is a JSON number");
    serde_json::to_vec(&TransactionView {
        transaction_id: &tx.transaction_id,
        source_account: &tx.source_account,
        destination_account: &tx.destination_account,
        amount: &amount,
        currency: tx.currency.as_str(),
        status: record.status.as_str(),
        created_at: format_time(record.created_at_ms),
        processed_at: record.processed_at_ms.map(format_time),
    })
    .expect("a transaction view always serialises")
}

// --- GET /v1/transactions ---------------------------------------------------

/// Page size when `limit` is not given.
pub const DEFAULT_PAGE: usize = 50;

/// Version byte at the start of every cursor.
const CURSOR_VERSION: u8 = 1;

/// `GET /v1/transactions?status=&created_after=&created_before=&limit=&cursor=`:
/// newest first, from the listing index.
async fn list(state: &AppState, query: Option<&str>) -> Response<Full<Bytes>> {
    let query = match parse_list_query(query.unwrap_or("")) {
        Ok(query) => query,
        Err(e) => return e.response(),
    };
    let store = state.store.clone();
    let page = match tokio::task::spawn_blocking(move || store.list(&query)).await {
        Ok(Ok(page)) => page,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "listing read failed");
            return ApiError::Unavailable(e.to_string()).response();
        }
        Err(_) => return ApiError::Unavailable("the read did not complete".to_owned()).response(),
    };
    let mut body = Vec::with_capacity(64 + page.transactions.len() * 256);
    body.extend_from_slice(b"{\"transactions\":[");
    for (i, record) in page.transactions.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&transaction_json(record));
    }
    body.extend_from_slice(b"],\"next_cursor\":");
    match page.next {
        Some(log_key) => {
            body.push(b'"');
            body.extend_from_slice(encode_cursor(log_key).as_bytes());
            body.push(b'"');
        }
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
    json_bytes(StatusCode::OK, body)
}

fn invalid_parameter(field: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidField {
        field: Cow::Borrowed(field),
        message: format!("{field} {}", message.into()),
    }
}

/// Parses the listing's query string. Every parameter may appear once; an
/// unknown one is refused (422 naming it) so a typo never silently widens
/// the listing.
fn parse_list_query(raw: &str) -> Result<ListQuery, ApiError> {
    let mut query = ListQuery {
        status: None,
        created_after_ms: None,
        created_before_ms: None,
        limit: DEFAULT_PAGE,
        after: None,
    };
    let mut seen: Vec<Cow<'_, str>> = Vec::new();
    for (name, value) in form_urlencoded::parse(raw.as_bytes()) {
        if seen.contains(&name) {
            return Err(ApiError::InvalidField {
                field: Cow::Owned(name.clone().into_owned()),
                message: format!("{name} is given more than once"),
            });
        }
        match name.as_ref() {
            "status" => {
                query.status = Some(match value.as_ref() {
                    "PROCESSING" => Status::Processing,
                    "PROCESSED" => Status::Processed,
                    _ => {
                        return Err(invalid_parameter(
                            "status",
                            "must be PROCESSING or PROCESSED",
                        ));
                    }
                });
            }
            "created_after" => {
                query.created_after_ms = Some(parse_timestamp("created_after", &value)?);
            }
            "created_before" => {
                query.created_before_ms = Some(parse_timestamp("created_before", &value)?);
            }
            "limit" => {
                query.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        invalid_parameter(
                            "limit",
                            format!("must be a whole number from 1 to {MAX_PAGE}"),
                        )
                    })?;
            }
            "cursor" => {
                query.after = Some(decode_cursor(&value).ok_or_else(|| {
                    invalid_parameter("cursor", "is not a cursor this server handed out")
                })?);
            }
            _ => {
                return Err(ApiError::InvalidField {
                    field: Cow::Owned(name.clone().into_owned()),
                    message: format!(
                        "unknown parameter {name}; known: status, created_after, created_before, limit, cursor"
                    ),
                });
            }
        }
        seen.push(name);
    }
    Ok(query)
}

/// An RFC 3339 timestamp (`2026-11-22T10:30:00Z`, fractional seconds
/// allowed) as milliseconds since the Unix epoch.
fn parse_timestamp(field: &'static str, value: &str) -> Result<u64, ApiError> {
    humantime::parse_rfc3339(value)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .ok_or_else(|| {
            invalid_parameter(
                field,
                "must be an RFC 3339 UTC timestamp such as 2026-11-22T10:30:00Z",
            )
        })
}

/// Opaque to clients: base64url of a version byte and the log key of the
/// last transaction of the page (big-endian).
fn encode_cursor(log_key: u64) -> String {
    let mut raw = [0_u8; 9];
    raw[0] = CURSOR_VERSION;
    raw[1..].copy_from_slice(&log_key.to_be_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(text: &str) -> Option<u64> {
    let raw = URL_SAFE_NO_PAD.decode(text).ok()?;
    let (&version, key) = raw.split_first()?;
    if version != CURSOR_VERSION {
        return None;
    }
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

// --- errors and responses ------------------------------------------------

/// Every error the API answers with: one variant per row of CONTRACT §2's
/// error table (plus 408 for a body that never finishes arriving).
#[derive(Debug)]
enum ApiError {
    InvalidJson(String),
    NotFound(&'static str),
    MethodNotAllowed(&'static str),
    Conflict,
    PayloadTooLarge(u64),
    UnsupportedMediaType,
    InvalidField {
        field: Cow<'static, str>,
        message: String,
    },
    Unavailable(String),
    BodyTimeout(Duration),
    InvalidSignature(&'static str),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl From<PayloadError> for ApiError {
    fn from(e: PayloadError) -> Self {
        match e {
            PayloadError::InvalidJson(message) => ApiError::InvalidJson(message),
            PayloadError::InvalidField { field, message } => ApiError::InvalidField {
                field: Cow::Borrowed(field.name()),
                message: format!("{} {message}", field.name()),
            },
        }
    }
}

impl ApiError {
    fn response(&self) -> Response<Full<Bytes>> {
        let (status, code, message, field) = match self {
            ApiError::InvalidJson(m) => (StatusCode::BAD_REQUEST, "invalid_json", m.clone(), None),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", (*m).to_owned(), None),
            ApiError::MethodNotAllowed(allow) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("this path only allows {allow}"),
                None,
            ),
            ApiError::Conflict => (
                StatusCode::CONFLICT,
                "conflict",
                "a transaction with this transaction_id and different fields is already stored"
                    .to_owned(),
                None,
            ),
            ApiError::PayloadTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body is larger than {limit} bytes"),
                None,
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Content-Type must be application/json".to_owned(),
                None,
            ),
            ApiError::InvalidField { field, message } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                message.clone(),
                Some(field.as_ref()),
            ),
            ApiError::Unavailable(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("not stored, try again later: {reason}"),
                None,
            ),
            ApiError::InvalidSignature(reason) => (
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                format!("webhook signature rejected: {reason}"),
                None,
            ),
            ApiError::BodyTimeout(limit) => (
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "request body not received within {}",
                    humantime::format_duration(*limit)
                ),
                None,
            ),
        };
        let mut response = json(
            status,
            &ErrorBody {
                error: ErrorDetail {
                    code,
                    message: &message,
                    field,
                },
            },
        );
        response
            .extensions_mut()
            .insert(Rejection { code, message });
        match self {
            ApiError::MethodNotAllowed(allow) => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Unavailable(_) => response = with_retry_after(response),
            _ => {}
        }
        response
    }
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    // Invariant: these bodies are plain structs of strings, numbers and
    // raw JSON numbers; serialising them cannot fail.
    json_bytes(
        status,
        serde_json::to_vec(body).expect("response bodies always serialise"),
    )
}

fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn with_retry_after(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECONDS),
    );
    response
}

fn close_connection(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn now_ms() -> u64 {
    crate::clock::now_ms()
}

/// RFC 3339 in UTC with millisecond precision and a `Z` suffix.
#[must_use]
pub fn format_time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Address the server is bound to, as logged in the ready line.
#[must_use]
pub fn ready_line(addr: SocketAddr) -> String {
    format!("listening on {addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_are_recognised_with_parameters_and_any_case() {
        let check = |v: &str| is_json_content_type(Some(&HeaderValue::from_str(v).unwrap()));
        assert!(check("application/json"));
        assert!(check("Application/JSON; charset=utf-8"));
        assert!(!check("text/plain"));
        assert!(!check("application/jsonx"));
        assert!(!is_json_content_type(None));
    }

    #[test]
    fn times_are_rfc3339_utc_with_z() {
        assert_eq!(format_time(1_764_000_000_123), "2025-11-24T16:00:00.123Z");
    }
}
