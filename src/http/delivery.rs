//! The delivery routes: a transaction's attempts, redelivering one
//! transaction, and durable bulk redeliveries with their progress.

use std::borrow::Cow;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use serde_json::Value;

use super::AppState;
use super::errors::{ApiError, json};
use super::routes::read_json_body;
use crate::metrics::Route;
use crate::model::Status;
use crate::store::attempts::AttemptOutcome;
use crate::store::redeliveries::{RedeliveryFilter, RedeliveryState};
use crate::store::writer::RedeliverOutcome;
use crate::view::format_time;

/// `POST /v1/redeliveries`.
pub(super) const REDELIVERIES_PATH: &str = "/v1/redeliveries";
/// `GET /v1/redeliveries/{redelivery_id}`.
pub(super) const REDELIVERIES_PREFIX: &str = "/v1/redeliveries/";
const TRANSACTIONS_PREFIX: &str = "/v1/transactions/";
const ATTEMPTS_SUFFIX: &str = "/attempts";
const REDELIVER_SUFFIX: &str = "/redeliver";
/// Prefix of a bulk redelivery's id.
const REDELIVERY_ID_PREFIX: &str = "rdl_";

const NOT_CONFIGURED: &str = "delivery is not configured (start webhookd with --deliver-to)";

/// The route of a path under `/v1/transactions/`: a transaction, its
/// attempts, or its redelivery. Ids have every `/` percent-encoded, so a
/// suffix after the id is never part of it.
pub(super) fn transaction_route(path: &str) -> Route {
    let rest = &path[TRANSACTIONS_PREFIX.len()..];
    match rest.rsplit_once('/') {
        Some((id, "attempts")) if !id.is_empty() && !id.contains('/') => Route::Attempts,
        Some((id, "redeliver")) if !id.is_empty() && !id.contains('/') => Route::Redeliver,
        _ => Route::Transaction,
    }
}

/// The raw id segment of an attempts or redeliver path.
pub(super) fn id_segment(path: &str) -> &str {
    let rest = &path[TRANSACTIONS_PREFIX.len()..];
    rest.strip_suffix(ATTEMPTS_SUFFIX)
        .or_else(|| rest.strip_suffix(REDELIVER_SUFFIX))
        .unwrap_or(rest)
}

fn decode_id(raw: &str) -> Option<String> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .filter(|id| !id.is_empty())
        .map(Cow::into_owned)
}

#[derive(Serialize)]
struct AttemptView<'a> {
    attempt: u32,
    started_at: String,
    finished_at: Option<String>,
    outcome: Option<&'static str>,
    status_code: Option<u16>,
    error: Option<&'a str>,
    duration_ms: Option<u64>,
    response_excerpt: Option<&'a str>,
}

#[derive(Serialize)]
struct Attempts<'a> {
    attempts: Vec<AttemptView<'a>>,
}

/// `GET /v1/transactions/{id}/attempts`.
pub(super) async fn attempts(state: &AppState, raw_id: &str) -> Response<Full<Bytes>> {
    let Some(id) = decode_id(raw_id) else {
        return ApiError::NotFound("no such transaction").response();
    };
    let store = state.store.clone();
    let found = match tokio::task::spawn_blocking(move || store.attempts(&id)).await {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return ApiError::NotFound("no such transaction").response(),
        Ok(Err(e)) => {
            return ApiError::read_failed(format!("attempts read failed: {e}")).response();
        }
        Err(e) => {
            return ApiError::read_failed(format!("attempts read task failed: {e}")).response();
        }
    };
    let attempts = found
        .iter()
        .map(|a| AttemptView {
            attempt: a.number,
            started_at: format_time(a.stored.started_at_ms),
            finished_at: a.stored.finished_at_ms.map(format_time),
            outcome: a.stored.outcome.map(AttemptOutcome::as_str),
            status_code: a.stored.status_code,
            error: a.stored.error.as_deref(),
            duration_ms: a.stored.duration_ms,
            response_excerpt: a.stored.response_excerpt.as_deref(),
        })
        .collect();
    json(StatusCode::OK, &Attempts { attempts })
}

#[derive(Serialize)]
struct Redelivered<'a> {
    transaction_id: &'a str,
    status: &'static str,
}

/// `POST /v1/transactions/{id}/redeliver`.
pub(super) async fn redeliver(state: &AppState, raw_id: &str) -> Response<Full<Bytes>> {
    let Some(id) = decode_id(raw_id) else {
        return ApiError::NotFound("no such transaction").response();
    };
    if state.delivery.is_none() {
        return ApiError::ConflictState(NOT_CONFIGURED).response();
    }
    match state.writer.redeliver(id.clone()).await {
        Ok(RedeliverOutcome::Redelivered) => json(
            StatusCode::ACCEPTED,
            &Redelivered {
                transaction_id: &id,
                status: Status::Processing.as_str(),
            },
        ),
        Ok(RedeliverOutcome::AlreadyProcessing) => {
            ApiError::ConflictState("the transaction is PROCESSING already").response()
        }
        Ok(RedeliverOutcome::NotFound) => ApiError::NotFound("no such transaction").response(),
        Err(e) => ApiError::from(&e).response(),
    }
}

#[derive(Serialize)]
struct Progress {
    redelivery_id: String,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    matched: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    done: Option<u64>,
}

fn invalid(field: &'static str, message: &str) -> ApiError {
    ApiError::InvalidField {
        field: Cow::Borrowed(field),
        message: format!("{field} {message}"),
    }
}

/// The filter of a bulk redelivery request body.
fn parse_filter(body: &[u8]) -> Result<RedeliveryFilter, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidJson(format!("body is not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::InvalidJson(
            "body is not a JSON object".to_owned(),
        ));
    };
    let mut filter = RedeliveryFilter {
        status: Status::Failed,
        created_after_ms: None,
        created_before_ms: None,
    };
    let mut status = None;
    for (name, value) in &fields {
        match name.as_str() {
            "status" => {
                status = Some(match value.as_str() {
                    Some("FAILED") => Status::Failed,
                    Some("PROCESSED") => Status::Processed,
                    _ => return Err(invalid("status", "must be FAILED or PROCESSED")),
                });
            }
            "created_after" => filter.created_after_ms = Some(timestamp("created_after", value)?),
            "created_before" => {
                filter.created_before_ms = Some(timestamp("created_before", value)?);
            }
            other => {
                let name = super::untrusted::cut(other).into_owned();
                return Err(ApiError::InvalidField {
                    message: format!(
                        "unknown field {name}; known: status, created_after, created_before"
                    ),
                    field: Cow::Owned(name),
                });
            }
        }
    }
    filter.status = status.ok_or_else(|| invalid("status", "is required (FAILED or PROCESSED)"))?;
    Ok(filter)
}

fn timestamp(field: &'static str, value: &Value) -> Result<u64, ApiError> {
    value
        .as_str()
        .and_then(|text| humantime::parse_rfc3339(text).ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .ok_or_else(|| {
            invalid(
                field,
                "must be an RFC 3339 UTC timestamp such as 2026-11-22T10:30:00Z",
            )
        })
}

/// `POST /v1/redeliveries`: a durable bulk redelivery.
pub(super) async fn create(state: &AppState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match read_json_body(state, request).await {
        Ok((_, body)) => body,
        Err(response) => return response,
    };
    let filter = match parse_filter(&body) {
        Ok(filter) => filter,
        Err(e) => return e.response(),
    };
    let Some(delivery) = &state.delivery else {
        return ApiError::ConflictState(NOT_CONFIGURED).response();
    };
    let store = state.store.clone();
    let counted = tokio::task::spawn_blocking(move || {
        store.count_for_redelivery(
            filter.status,
            filter.created_after_ms,
            filter.created_before_ms,
        )
    })
    .await;
    let (matched, upper_key) = match counted {
        Ok(Ok(counted)) => counted,
        Ok(Err(e)) => return ApiError::read_failed(format!("count failed: {e}")).response(),
        Err(e) => return ApiError::read_failed(format!("count task failed: {e}")).response(),
    };
    match state
        .writer
        .create_redelivery(filter, matched, upper_key)
        .await
    {
        Ok(id) => {
            delivery.redeliveries.wake();
            tracing::info!(
                redelivery_id = id,
                status = filter.status.as_str(),
                created_after = filter.created_after_ms.map(format_time),
                created_before = filter.created_before_ms.map(format_time),
                matched,
                "bulk redelivery created"
            );
            json(
                StatusCode::ACCEPTED,
                &Progress {
                    redelivery_id: format!("{REDELIVERY_ID_PREFIX}{id}"),
                    state: RedeliveryState::Running.as_str(),
                    matched: None,
                    done: None,
                },
            )
        }
        Err(e) => ApiError::from(&e).response(),
    }
}

/// `GET /v1/redeliveries/{redelivery_id}`.
pub(super) async fn progress(state: &AppState, path: &str) -> Response<Full<Bytes>> {
    let raw = &path[REDELIVERIES_PREFIX.len()..];
    let Some(id) = raw
        .strip_prefix(REDELIVERY_ID_PREFIX)
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| n.to_string().len() == raw.len() - REDELIVERY_ID_PREFIX.len())
    else {
        return ApiError::NotFound("no such redelivery").response();
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.redelivery(id)).await {
        Ok(Ok(Some(redelivery))) => json(
            StatusCode::OK,
            &Progress {
                redelivery_id: format!("{REDELIVERY_ID_PREFIX}{id}"),
                state: redelivery.state.as_str(),
                matched: Some(redelivery.matched),
                done: Some(redelivery.done),
            },
        ),
        Ok(Ok(None)) => ApiError::NotFound("no such redelivery").response(),
        Ok(Err(e)) => ApiError::read_failed(format!("redelivery read failed: {e}")).response(),
        Err(e) => ApiError::read_failed(format!("redelivery read task failed: {e}")).response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_after_an_id_name_the_delivery_routes() {
        assert_eq!(
            transaction_route("/v1/transactions/t1/attempts"),
            Route::Attempts
        );
        assert_eq!(
            transaction_route("/v1/transactions/t1/redeliver"),
            Route::Redeliver
        );
        assert_eq!(transaction_route("/v1/transactions/t1"), Route::Transaction);
        assert_eq!(
            transaction_route("/v1/transactions/t%2Fattempts"),
            Route::Transaction
        );
        assert_eq!(
            transaction_route("/v1/transactions//attempts"),
            Route::Transaction
        );
        assert_eq!(id_segment("/v1/transactions/t%201/attempts"), "t%201");
    }

    #[test]
    fn bulk_filters_need_a_status_and_refuse_unknown_fields() {
        assert!(parse_filter(br#"{"status":"FAILED"}"#).is_ok());
        assert!(parse_filter(br#"{"created_after":"2026-01-01T00:00:00Z"}"#).is_err());
        assert!(parse_filter(br#"{"status":"PROCESSING"}"#).is_err());
        assert!(parse_filter(br#"{"status":"FAILED","created_afer":"x"}"#).is_err());
        assert!(parse_filter(br#"{"status":"FAILED","created_before":"yesterday"}"#).is_err());
        assert!(parse_filter(b"[1]").is_err());
    }
}
