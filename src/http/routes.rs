//! Routing, and the handlers of the webhook, transaction and metrics
//! routes (health: [`super::health`], listing: [`super::listing`]).
//!
//! Every request is counted in the metrics after it is answered; a
//! rejected one (4xx except 404, all 5xx) is logged at warn with its
//! reason, rate limited ([`super::warnings`]), and with `--access-log`
//! every request gets one line. Payloads, secrets and signatures are never
//! logged.

use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::body::{self, BodyError};
use super::errors::{AboutTransaction, ApiError, Rejection, close_connection, json, json_bytes};
use super::original::{self, Include};
use super::{AppState, Face, access, delivery, health, listing, mapped, openapi, untrusted};
use crate::clock::now_ms;
use crate::metrics::{Format, Route, WebhookOutcome};
use crate::model;
use crate::store::StoreError;
use crate::store::payloads::OriginalBody;
use crate::store::writer::AcceptOutcome;
use crate::view::{
    delivered_json, delivered_json_with_payload, transaction_json, transaction_json_with_payload,
};

const WEBHOOKS_PATH: &str = "/v1/webhooks/transactions";
const TRANSACTIONS_PATH: &str = "/v1/transactions";
const TRANSACTIONS_PREFIX: &str = "/v1/transactions/";
const METRICS_PATH: &str = "/metrics";
const OPENAPI_PATH: &str = "/openapi.json";

/// Routes the request, then counts and logs it.
pub(super) async fn handle(
    state: &AppState,
    face: Face,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let route = match route_of(request.uri().path()) {
        // Another socket's route is unknown here.
        Route::Webhooks if face == Face::Admin => Route::Unknown,
        route if face == Face::Public && access::exposure(route) == access::Exposure::Admin => {
            Route::Unknown
        }
        route => route,
    };
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
    if rejected
        && let Some(rejection) = rejection
        && state.warnings.admit()
    {
        tracing::warn!(
            status = status.as_u16(),
            code = rejection.code,
            transaction_id,
            detail = rejection.detail.as_deref(),
            "request rejected: {}",
            rejection.message
        );
    }
    if let Some((method, path)) = access {
        tracing::info!(
            target: "webhookd::access",
            %method,
            path = &*untrusted::escape(&path),
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
        OPENAPI_PATH => Route::OpenApi,
        TRANSACTIONS_PATH => Route::Transactions,
        delivery::REDELIVERIES_PATH => Route::Redeliveries,
        _ if path.starts_with(delivery::REDELIVERIES_PREFIX) => Route::Redelivery,
        _ if path.starts_with(TRANSACTIONS_PREFIX) => delivery::transaction_route(path),
        _ => Route::Unknown,
    }
}

async fn dispatch(
    state: &AppState,
    route: Route,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if let Err(refused) = access::authorize(state, route, request.headers()) {
        return refused.response();
    }
    let method = request.method();
    match route {
        Route::Health if method == Method::GET => {
            let delivery = state.delivery.as_ref().map(|d| d.status.paused());
            health::health(&state.health, &state.writer, delivery).await
        }
        Route::Webhooks if method == Method::POST => match receive(state, request).await {
            Ok(response) | Err(response) => response,
        },
        Route::Metrics if method == Method::GET => {
            let accept = request.headers().get(header::ACCEPT);
            let format = Format::negotiate(accept.and_then(|v| v.to_str().ok()));
            metrics(state, format).await
        }
        Route::OpenApi if method == Method::GET => openapi::document(),
        Route::Transaction if method == Method::GET => {
            let raw_id = request.uri().path()[TRANSACTIONS_PREFIX.len()..].to_owned();
            match original::parse_query(request.uri().query()) {
                Ok(include) => status(state, &raw_id, include).await,
                Err(e) => e.response(),
            }
        }
        Route::Transactions if method == Method::GET => {
            listing::list(state, request.uri().query()).await
        }
        Route::Attempts if method == Method::GET => {
            delivery::attempts(state, delivery::id_segment(request.uri().path())).await
        }
        Route::Redeliver if method == Method::POST => {
            delivery::redeliver(state, delivery::id_segment(request.uri().path())).await
        }
        Route::Redeliveries if method == Method::POST => delivery::create(state, request).await,
        Route::Redelivery if method == Method::GET => {
            delivery::progress(state, request.uri().path()).await
        }
        Route::Health
        | Route::Metrics
        | Route::OpenApi
        | Route::Transaction
        | Route::Transactions
        | Route::Attempts
        | Route::Redelivery => ApiError::MethodNotAllowed("GET").response(),
        Route::Webhooks | Route::Redeliver | Route::Redeliveries => {
            ApiError::MethodNotAllowed("POST").response()
        }
        Route::Unknown => ApiError::NotFound("no such path").response(),
    }
}

// --- GET /metrics --------------------------------------------------------

/// Every metric in `format`, with the job gauges read from the jobs table now.
async fn metrics(state: &AppState, format: Format) -> Response<Full<Bytes>> {
    let reader = state.store.clone();
    let now = now_ms();
    let delivers = state.delivery.is_some();
    let read = move || {
        let failed = if delivers {
            Some(reader.failed_count()?)
        } else {
            None
        };
        Ok::<_, crate::store::StoreError>((reader.job_stats(now)?, failed))
    };
    let jobs = match tokio::task::spawn_blocking(read).await {
        Ok(Ok((figures, failed))) => {
            if let Some(failed) = failed {
                state.metrics.set_failed(failed);
            }
            figures
        }
        Ok(Err(e)) => {
            return ApiError::read_failed(format!("job gauges read failed: {e}")).response();
        }
        Err(e) => {
            return ApiError::read_failed(format!("job gauges read task failed: {e}")).response();
        }
    };
    let text = state
        .metrics
        .render(format, &jobs, now, state.store.unindexed_count());
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    // The answer depends on the request's Accept header.
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

// --- POST /v1/webhooks/transactions --------------------------------------

#[derive(Serialize)]
struct Accepted<'a> {
    transaction_id: &'a str,
    status: &'static str,
    duplicate: bool,
}

/// Checks run in the documented order: 415, 413, 401 (when signatures are
/// on; over the raw body, before parsing), 400, 422 (or, with a payload
/// map, 200 for an event it does not take), then the write.
async fn receive(
    state: &AppState,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Response<Full<Bytes>>> {
    let (parts, body) = read_json_body(state, request).await?;
    let headers = parts.headers;
    if let Some(verifier) = &state.verifier {
        let now = now_ms() / 1000;
        verifier
            .verify(&headers, &body, now)
            .map_err(|rejection| ApiError::InvalidSignature(rejection.0).response())?;
    }
    // Without a payload map: webhookd's own shape, and nothing else kept.
    let (transaction, original) = match &state.payload_map {
        None => (
            model::parse_payload(&body).map_err(|e| ApiError::from(e).response())?,
            None,
        ),
        Some(map) => match mapped::map(state, map, &headers, body) {
            mapped::Outcome::Store(transaction, original) => (transaction, Some(original)),
            mapped::Outcome::Answer(response) => return Err(response),
        },
    };
    let id = transaction.transaction_id.clone();
    let about = |mut response: Response<Full<Bytes>>| {
        response
            .extensions_mut()
            .insert(AboutTransaction(id.clone()));
        response
    };
    let outcome = match original {
        None => state.writer.accept(transaction).await,
        Some(original) => {
            state
                .writer
                .accept_with_original(transaction, original)
                .await
        }
    }
    .map_err(|e| about(ApiError::from(&e).response()))?;
    let (status, duplicate) = match outcome {
        // Counted as accepted by the writer, once committed: also when
        // this client is gone before its answer.
        AcceptOutcome::Created => (model::Status::Processing, false),
        AcceptOutcome::Duplicate(status) => {
            state.metrics.webhook(WebhookOutcome::Duplicate);
            (status, true)
        }
        AcceptOutcome::Conflict => return Err(about(ApiError::Conflict.response())),
    };
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

/// The head and the body of a POST that must carry JSON, read within the
/// body's bounds (`--max-body-bytes`, its pieces, `--body-read-timeout`).
/// Anything wrong is the answer to give; where the body is left unread
/// the connection is closed with it, since the rest cannot be skipped
/// cheaply.
pub(super) async fn read_json_body(
    state: &AppState,
    request: Request<Incoming>,
) -> Result<(hyper::http::request::Parts, Bytes), Response<Full<Bytes>>> {
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
        return Err(close_connection(
            ApiError::PayloadTooLarge(limit).response(),
        ));
    }
    let (parts, body) = request.into_parts();
    let body = body::read(body, declared, limit, state.limits.body_read_timeout)
        .await
        .map_err(|e| {
            close_connection(
                match e {
                    BodyError::TooLarge(limit) => ApiError::PayloadTooLarge(limit),
                    BodyError::TooManyPieces(limit) => ApiError::TooManyPieces(limit),
                    BodyError::TimedOut(limit) => ApiError::BodyTimeout(limit),
                    e @ BodyError::Read(_) => ApiError::InvalidJson(e.to_string()),
                }
                .response(),
            )
        })?;
    Ok((parts, body))
}

/// `application/json`, any case, parameters (`; charset=utf-8`) allowed.
pub(super) fn is_json_content_type(value: Option<&HeaderValue>) -> bool {
    let Some(Ok(value)) = value.map(HeaderValue::to_str) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

// --- GET /v1/transactions/{id} -------------------------------------------

/// The transaction as the API shows it (with `--deliver-to`, with its
/// delivery fields), and with `include=payload` the body it arrived with
/// after them; each answer is read from one snapshot.
async fn status(state: &AppState, raw_id: &str, include: Include) -> Response<Full<Bytes>> {
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
    let delivers = state.delivery.is_some();
    let read = move || -> Result<Option<Vec<u8>>, ReadError> {
        Ok(match (delivers, include.payload) {
            (false, false) => store.get(&id)?.map(|record| transaction_json(&record)),
            (true, false) => store.delivery_view(&id)?.map(|view| delivered_json(&view)),
            (false, true) => match store.get_with_original(&id)? {
                None => None,
                Some((record, original)) => Some(transaction_json_with_payload(
                    &record,
                    payload_text(original.as_ref())?,
                )),
            },
            (true, true) => match store.delivery_view_with_original(&id)? {
                None => None,
                Some((view, original)) => Some(delivered_json_with_payload(
                    &view,
                    payload_text(original.as_ref())?,
                )),
            },
        })
    };
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(Some(json))) => json_bytes(StatusCode::OK, json),
        Ok(Ok(None)) => ApiError::NotFound("no such transaction").response(),
        Ok(Err(e)) => ApiError::read_failed(e.to_string()).response(),
        Err(e) => ApiError::read_failed(format!("transaction read task failed: {e}")).response(),
    }
}

/// Why a transaction could not be read for `GET /v1/transactions/{id}`.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("transaction read failed: {0}")]
    Store(#[from] StoreError),
    /// Decoding a stored body checks this; only damage gets here.
    #[error("original body read failed: {0}")]
    NotText(#[from] std::str::Utf8Error),
}

/// `(content type, body)` of a kept body, the body as text.
fn payload_text(original: Option<&OriginalBody>) -> Result<Option<(&str, &str)>, ReadError> {
    original
        .map(|original| {
            Ok((
                original.content_type.as_str(),
                std::str::from_utf8(&original.body)?,
            ))
        })
        .transpose()
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
}
