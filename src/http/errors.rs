//! The API's error answers, `{"error":{"code","message","field"?}}`, and the
//! small helpers every handler builds its responses with.
//!
//! A message never carries internal detail (I/O errors, file paths, keys):
//! a 503 says only one of [`STORAGE_FAILING`], [`OVERLOADED`] or
//! [`SHUTTING_DOWN`], and the detail goes to the log with the rejection.
//! Text a client chose is escaped before it is echoed ([`super::untrusted`]).

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::untrusted;
use crate::model::PayloadError;
use crate::payload_map::Rejection as MapRejection;
use crate::store::writer::WriteError;

/// `Retry-After` on every 503, in seconds.
const RETRY_AFTER_SECONDS: &str = "1";

/// Why a 503: storage cannot complete reads or writes.
pub const STORAGE_FAILING: &str = "storage is failing";
/// Why a 503: the queue in front of the store writer is full.
pub const OVERLOADED: &str = "overloaded";
/// Why a 503: the daemon is shutting down.
pub const SHUTTING_DOWN: &str = "shutting down";

/// What an error response was about, for the warn log (never a payload).
#[derive(Clone)]
pub(super) struct Rejection {
    pub code: &'static str,
    /// The message the client got (already escaped).
    pub message: String,
    /// What went wrong inside, for the log only.
    pub detail: Option<String>,
}

/// The transaction a response is about, for the logs.
#[derive(Clone)]
pub(super) struct AboutTransaction(pub String);

/// Every error the API answers with: one variant per row of the README's
/// error table.
#[derive(Debug)]
pub(super) enum ApiError {
    InvalidJson(String),
    NotFound(&'static str),
    MethodNotAllowed(&'static str),
    Conflict,
    /// 409 for an admin request the transaction's state refuses.
    ConflictState(&'static str),
    /// The limit in bytes (`--max-body-bytes`).
    PayloadTooLarge(u64),
    /// The body came in more pieces than the limit given.
    TooManyPieces(usize),
    UnsupportedMediaType,
    InvalidField {
        field: Cow<'static, str>,
        message: String,
    },
    Unavailable {
        /// A short, stable reason for the client.
        reason: &'static str,
        /// The internal error, for the log.
        detail: Option<String>,
    },
    BodyTimeout(Duration),
    InvalidSignature(&'static str),
    /// An admin route without the admin token (never quoting what was sent).
    Unauthorized(&'static str),
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

impl From<MapRejection> for ApiError {
    fn from(e: MapRejection) -> Self {
        match e {
            MapRejection::InvalidJson(message) => ApiError::InvalidJson(message),
            MapRejection::InvalidField { field, message } => ApiError::InvalidField {
                field: Cow::Borrowed(field),
                message,
            },
        }
    }
}

/// The status and body the API answers a body the payload map refuses
/// with (what `webhookd check-map` prints, too).
#[must_use]
pub fn rejection_answer(rejection: MapRejection) -> (StatusCode, Vec<u8>) {
    let error = ApiError::from(rejection);
    let (status, code, message, field) = error.parts();
    (status, error_body(code, &message, field))
}

impl From<&WriteError> for ApiError {
    fn from(e: &WriteError) -> Self {
        let reason = match e {
            WriteError::QueueFull => OVERLOADED,
            WriteError::Closed => SHUTTING_DOWN,
            WriteError::Storage(_) | WriteError::NotReopened(_) | WriteError::Corrupt { .. } => {
                STORAGE_FAILING
            }
        };
        ApiError::Unavailable {
            reason,
            detail: Some(e.to_string()),
        }
    }
}

impl ApiError {
    /// 503 for a read that failed; `detail` goes to the log only.
    pub(super) fn read_failed(detail: String) -> Self {
        ApiError::Unavailable {
            reason: STORAGE_FAILING,
            detail: Some(detail),
        }
    }

    pub(super) fn response(&self) -> Response<Full<Bytes>> {
        let (status, code, message, field) = self.parts();
        let mut response = json_bytes(status, error_body(code, &message, field));
        let detail = match self {
            ApiError::Unavailable { detail, .. } => detail.clone(),
            _ => None,
        };
        response.extensions_mut().insert(Rejection {
            code,
            // Escaped as in the body: it goes to the log.
            message: untrusted::escape(&message).into_owned(),
            detail,
        });
        match self {
            ApiError::MethodNotAllowed(allow) => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Unavailable { .. } => response = with_retry_after(response),
            ApiError::Unauthorized(_) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"webhookd admin\""),
                );
            }
            _ => {}
        }
        response
    }

    /// Status, code, message (not yet escaped) and field of the answer.
    fn parts(&self) -> (StatusCode, &'static str, String, Option<&str>) {
        match self {
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
            ApiError::ConflictState(message) => (
                StatusCode::CONFLICT,
                "conflict",
                (*message).to_owned(),
                None,
            ),
            ApiError::PayloadTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body is larger than {limit} bytes (--max-body-bytes)"),
                None,
            ),
            ApiError::TooManyPieces(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "request body arrived in more than {limit} pieces; send it in fewer, larger chunks"
                ),
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
            ApiError::Unavailable { reason, .. } => (
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
            ApiError::Unauthorized(reason) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                (*reason).to_owned(),
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
        }
    }
}

/// `{"error":{"code","message","field"?}}`. Every message may quote what a
/// client sent; none may carry a line break or a control character into a
/// log or a terminal, so message and field are escaped here.
fn error_body(code: &'static str, message: &str, field: Option<&str>) -> Vec<u8> {
    // Invariant: a struct of strings always serialises.
    serde_json::to_vec(&ErrorBody {
        error: ErrorDetail {
            code,
            message: &untrusted::escape(message),
            field: field.map(untrusted::escape).as_deref(),
        },
    })
    .expect("an error body always serialises")
}

pub(super) fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    // Invariant: these bodies are plain structs of strings, numbers and
    // raw JSON numbers; serialising them cannot fail.
    json_bytes(
        status,
        serde_json::to_vec(body).expect("response bodies always serialise"),
    )
}

pub(super) fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) fn with_retry_after(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECONDS),
    );
    response
}

pub(super) fn close_connection(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(error: &ApiError) -> String {
        error
            .response()
            .extensions()
            .get::<Rejection>()
            .expect("every error carries its rejection")
            .message
            .clone()
    }

    #[test]
    fn a_503_names_a_stable_reason_and_keeps_the_detail_for_the_log() {
        let error = ApiError::from(&WriteError::Storage(std::sync::Arc::new(
            crate::store::StoreError::Storage(redb::Error::Io(std::io::Error::other(
                "I/O error at /var/lib/webhookd/webhookd.redb: No space left",
            ))),
        )));
        let response = error.response();
        let rejection = response.extensions().get::<Rejection>().unwrap();
        assert_eq!(
            rejection.message,
            "not stored, try again later: storage is failing"
        );
        assert!(
            rejection
                .detail
                .as_deref()
                .unwrap()
                .contains("No space left")
        );
        assert_eq!(
            message(&ApiError::from(&WriteError::QueueFull)),
            "not stored, try again later: overloaded"
        );
        assert_eq!(
            message(&ApiError::from(&WriteError::Closed)),
            "not stored, try again later: shutting down"
        );
    }

    #[test]
    fn the_413_message_names_the_flag() {
        assert!(message(&ApiError::PayloadTooLarge(1024)).contains("--max-body-bytes"));
    }

    #[test]
    fn messages_never_carry_a_line_break() {
        let error = ApiError::InvalidJson("body is not valid JSON: x\nERROR forged".to_owned());
        assert!(!message(&error).contains('\n'));
    }
}
