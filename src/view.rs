//! How a stored transaction is shown to people and programs: the JSON of
//! `GET /v1/transactions/{id}` (also printed by `webhookd inspect` and
//! `webhookd export`) and the format of every timestamp webhookd writes.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;
use serde_json::value::RawValue;

use crate::model::{self, Record};
use crate::store::delivery_read::DeliveryView;

/// The fields of a transaction as the API shows them, in this order.
#[derive(Serialize)]
pub struct TransactionView<'a> {
    /// The sender's id.
    pub transaction_id: &'a str,
    /// Paying account.
    pub source_account: &'a str,
    /// Receiving account.
    pub destination_account: &'a str,
    /// The exact decimal amount, as a JSON number.
    pub amount: &'a RawValue,
    /// Three upper-case letters.
    pub currency: &'a str,
    /// `PROCESSING`, `PROCESSED` or `FAILED`.
    pub status: &'static str,
    /// When the transaction was accepted ([`format_time`]).
    pub created_at: String,
    /// When it was processed; `null` until then.
    pub processed_at: Option<String>,
}

/// A stored transaction as `GET /v1/transactions/{id}` answers it.
#[must_use]
pub fn transaction_json(record: &Record) -> Vec<u8> {
    let amount = amount_json(record);
    serde_json::to_vec(&view(record, &amount)).expect("a transaction view always serialises")
}

/// A view with the body the transaction arrived with, as
/// `?include=payload` answers it: `V`'s fields, then these two.
#[derive(Serialize)]
struct WithPayload<'a, V> {
    #[serde(flatten)]
    view: V,
    /// The body as received, as a JSON string; `null` if none was kept.
    payload: Option<&'a str>,
    /// The request's `Content-Type`; `null` if no body was kept.
    payload_content_type: Option<&'a str>,
}

impl<'a, V> WithPayload<'a, V> {
    /// `payload` is `(content type, body)`, or `None` for a transaction
    /// stored without one.
    fn new(view: V, payload: Option<(&'a str, &'a str)>) -> Self {
        WithPayload {
            view,
            payload: payload.map(|(_, body)| body),
            payload_content_type: payload.map(|(content_type, _)| content_type),
        }
    }
}

/// [`transaction_json`] plus `"payload"` (the body it arrived with, as
/// a JSON string, so it decodes to exactly those bytes) and
/// `"payload_content_type"`: `payload` is `(content type, body)`, or
/// `None` for a transaction stored without one (both are then `null`).
#[must_use]
pub fn transaction_json_with_payload(record: &Record, payload: Option<(&str, &str)>) -> Vec<u8> {
    let amount = amount_json(record);
    serde_json::to_vec(&WithPayload::new(view(record, &amount), payload))
        .expect("a transaction view always serialises")
}

fn amount_json(record: &Record) -> Box<RawValue> {
    // Invariant: a formatted Decimal is a valid JSON number (digits, at most
    // one '.', no exponent, positive).
    RawValue::from_string(model::format_amount(record.transaction.amount))
        .expect("a formatted decimal is a JSON number")
}

fn view<'a>(record: &'a Record, amount: &'a RawValue) -> TransactionView<'a> {
    let tx = &record.transaction;
    TransactionView {
        transaction_id: &tx.transaction_id,
        source_account: &tx.source_account,
        destination_account: &tx.destination_account,
        amount,
        currency: tx.currency.as_str(),
        status: record.status.as_str(),
        created_at: format_time(record.created_at_ms),
        processed_at: record.processed_at_ms.map(format_time),
    }
}

/// A transaction as `GET /v1/transactions/{id}` answers it with
/// `--deliver-to` set: the fields above, then where delivery stands.
#[derive(Serialize)]
struct DeliveredView<'a> {
    #[serde(flatten)]
    transaction: TransactionView<'a>,
    /// Every attempt it had, the one in flight included.
    attempts: u32,
    /// When the next attempt is due; `null` unless PROCESSING and waiting.
    next_attempt_at: Option<String>,
    /// What the last failed attempt came to; `null` after a success.
    last_error: Option<&'a str>,
    /// When it became FAILED; `null` otherwise.
    failed_at: Option<String>,
}

/// A stored transaction with its delivery fields, as the API shows it
/// with `--deliver-to` set.
#[must_use]
pub fn delivered_json(view: &DeliveryView) -> Vec<u8> {
    let amount = amount_json(&view.record);
    serde_json::to_vec(&delivered_view(view, &amount))
        .expect("a transaction view always serialises")
}

/// [`delivered_json`] plus `"payload"` and `"payload_content_type"`, as
/// in [`transaction_json_with_payload`].
#[must_use]
pub fn delivered_json_with_payload(view: &DeliveryView, payload: Option<(&str, &str)>) -> Vec<u8> {
    let amount = amount_json(&view.record);
    serde_json::to_vec(&WithPayload::new(delivered_view(view, &amount), payload))
        .expect("a transaction view always serialises")
}

fn delivered_view<'a>(view: &'a DeliveryView, amount: &'a RawValue) -> DeliveredView<'a> {
    let record = &view.record;
    let next_attempt_at = match view.open_attempt {
        Some(_) => None,
        None => view.due_ms.map(format_time),
    };
    DeliveredView {
        transaction: self::view(record, amount),
        attempts: view.open_attempt.unwrap_or(record.delivery.attempts),
        next_attempt_at,
        last_error: record.delivery.last_error.as_deref(),
        failed_at: record.delivery.failed_at_ms.map(format_time),
    }
}

/// RFC 3339 in UTC with millisecond precision and a `Z` suffix.
#[must_use]
pub fn format_time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery_view() -> DeliveryView {
        let transaction = model::parse_payload(
            br#"{"transaction_id":"t1","source_account":"a","destination_account":"b","amount":1500.50,"currency":"INR"}"#,
        )
        .unwrap();
        DeliveryView {
            record: Record {
                transaction,
                status: model::Status::Failed,
                created_at_ms: 1_764_000_000_123,
                processed_at_ms: None,
                delivery: model::Delivery {
                    attempts: 3,
                    schedule_pos: 3,
                    last_error: Some("HTTP 410 Gone".to_owned()),
                    failed_at_ms: Some(1_764_000_001_000),
                },
            },
            due_ms: None,
            open_attempt: None,
        }
    }

    #[test]
    fn the_payload_follows_every_field_of_the_delivery_view() {
        let view = delivery_view();
        let plain = String::from_utf8(delivered_json(&view)).unwrap();
        let body = "{ \"a\" :\r\n1}";
        let with = String::from_utf8(delivered_json_with_payload(
            &view,
            Some(("application/json; charset=utf-8", body)),
        ))
        .unwrap();
        let expected = format!(
            "{},\"payload\":{},\"payload_content_type\":\"application/json; charset=utf-8\"}}",
            plain.strip_suffix('}').unwrap(),
            serde_json::to_string(body).unwrap()
        );
        assert_eq!(with, expected);
        assert!(plain.contains(r#""attempts":3,"next_attempt_at":null,"last_error":"HTTP 410 Gone","failed_at":"2025-11-24T16:00:01.000Z""#), "{plain}");
        let without = String::from_utf8(delivered_json_with_payload(&view, None)).unwrap();
        assert_eq!(
            without,
            format!(
                "{},\"payload\":null,\"payload_content_type\":null}}",
                plain.strip_suffix('}').unwrap()
            )
        );
    }

    #[test]
    fn times_are_rfc3339_utc_with_z() {
        assert_eq!(format_time(1_764_000_000_123), "2025-11-24T16:00:00.123Z");
    }
}
