//! `GET /v1/transactions?status=&created_after=&created_before=&limit=&cursor=`:
//! the query, its cursors, and the page as JSON.
//!
//! Every parameter may appear once; an unknown one is refused (422 naming
//! it) so a typo never silently widens the listing. A cursor is opaque to
//! clients: base64url of a version byte and the log key of the last
//! transaction of the page (big-endian).

use std::borrow::Cow;
use std::time::UNIX_EPOCH;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::AppState;
use super::errors::{ApiError, json_bytes};
use super::untrusted;
use crate::model::Status;
use crate::store::{ListQuery, MAX_PAGE};
use crate::view::{delivered_json, transaction_json};

/// Page size when `limit` is not given.
pub const DEFAULT_PAGE: usize = 50;

/// Version byte at the start of every cursor.
const CURSOR_VERSION: u8 = 1;

/// Newest first, from the listing index.
pub(super) async fn list(state: &AppState, query: Option<&str>) -> Response<Full<Bytes>> {
    let query = match parse_query(query.unwrap_or("")) {
        Ok(query) => query,
        Err(e) => return e.response(),
    };
    let store = state.store.clone();
    if state.delivery.is_some() {
        return match tokio::task::spawn_blocking(move || store.list_with_delivery(&query)).await {
            Ok(Ok((views, next))) => page_json(views.iter().map(delivered_json), next),
            Ok(Err(e)) => ApiError::read_failed(format!("listing read failed: {e}")).response(),
            Err(e) => ApiError::read_failed(format!("listing read task failed: {e}")).response(),
        };
    }
    let page = match tokio::task::spawn_blocking(move || store.list(&query)).await {
        Ok(Ok(page)) => page,
        Ok(Err(e)) => return ApiError::read_failed(format!("listing read failed: {e}")).response(),
        Err(e) => {
            return ApiError::read_failed(format!("listing read task failed: {e}")).response();
        }
    };
    page_json(page.transactions.iter().map(transaction_json), page.next)
}

/// `{"transactions":[…],"next_cursor":…}` of transactions already in JSON.
fn page_json(
    transactions: impl Iterator<Item = Vec<u8>>,
    next: Option<u64>,
) -> Response<Full<Bytes>> {
    let mut body = Vec::with_capacity(64 * 1024);
    body.extend_from_slice(b"{\"transactions\":[");
    for (i, transaction) in transactions.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&transaction);
    }
    body.extend_from_slice(b"],\"next_cursor\":");
    match next {
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

/// A parameter the client named, echoed back cut short (and escaped
/// with the whole message when the answer is built).
fn named_by_client(name: &str, message: impl FnOnce(&str) -> String) -> ApiError {
    let name = untrusted::cut(name);
    ApiError::InvalidField {
        message: message(&name),
        field: Cow::Owned(name.into_owned()),
    }
}

fn parse_query(raw: &str) -> Result<ListQuery, ApiError> {
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
            return Err(named_by_client(&name, |name| {
                format!("{name} is given more than once")
            }));
        }
        match name.as_ref() {
            "status" => {
                query.status = Some(match value.as_ref() {
                    "PROCESSING" => Status::Processing,
                    "PROCESSED" => Status::Processed,
                    "FAILED" => Status::Failed,
                    _ => {
                        return Err(invalid_parameter(
                            "status",
                            "must be PROCESSING, PROCESSED or FAILED",
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
                return Err(named_by_client(&name, |name| {
                    format!(
                        "unknown parameter {name}; known: status, created_after, created_before, limit, cursor"
                    )
                }));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The `field` and `message` of the answer to `query`, which must be refused.
    fn refused(query: &str) -> (String, String) {
        let error = parse_query(query).expect_err(query);
        let response = error.response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(http_body_util::BodyExt::collect(response.into_body()))
            .unwrap()
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        (
            json["error"]["field"].as_str().unwrap().to_owned(),
            json["error"]["message"].as_str().unwrap().to_owned(),
        )
    }

    #[test]
    fn an_unknown_parameter_is_named_escaped_and_cut_short() {
        let (field, message) = refused("x%0A2026-01-01T00:00:00Z%20ERROR%20forged=1");
        assert_eq!(field, "x\\n2026-01-01T00:00:00Z ERROR forged");
        assert!(
            message.starts_with("unknown parameter x\\n2026"),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
        let (field, _) = refused(&format!("{}=1", "a".repeat(10_000)));
        assert_eq!(field.chars().count(), untrusted::MAX_ECHOED_CHARS + 1);
    }

    #[test]
    fn a_repeated_parameter_is_refused() {
        let (field, message) = refused("limit=1&limit=2");
        assert_eq!(field, "limit");
        assert!(message.contains("more than once"), "{message}");
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Some(42));
        assert_eq!(decode_cursor("AAAA"), None);
        assert_eq!(decode_cursor("not base64!"), None);
    }
}
