//! What a delivery carries: the transaction as webhookd's JSON, or, with
//! `--deliver-body original`, the body the provider sent, byte for byte,
//! with the provider's `Content-Type`.
//!
//! The original is read from the store when its attempt starts, never
//! held in memory per pending job, so every attempt (a retry, one after a
//! crash, a redelivery) sends the same bytes. A transaction stored
//! without one (accepted before `--payload-map` was set) is delivered as
//! webhookd's JSON with `application/json`; the first such delivery of a
//! run is logged. A stored original that cannot be read fails the attempt
//! without sending anything: a different body is never sent in its place.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use hyper::header::HeaderValue;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::cli::DeliverBody;
use crate::model::{self, Record};
use crate::store::{Store, StoreError};
use crate::view::format_time;

/// The body of one attempt and its `Content-Type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The request's `Content-Type`.
    pub content_type: HeaderValue,
    /// The request's body, exactly as sent (and signed).
    pub body: Bytes,
}

/// Why an attempt has no body to send.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The store could not read the original body, or its row is damaged.
    #[error("cannot read the original body: {0}")]
    Read(#[source] StoreError),
    /// The read did not run to its end.
    #[error("the original body read task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The stored `Content-Type` is not a header value (only damage does this).
    #[error("the original body's stored Content-Type is not a valid header value")]
    ContentType(#[source] hyper::header::InvalidHeaderValue),
}

/// Where the dispatcher gets each attempt's body.
pub struct BodySource {
    kind: DeliverBody,
    store: Store,
    /// Whether a transaction without an original body was logged this run.
    fallback_logged: AtomicBool,
}

impl BodySource {
    /// Bodies of `kind`; the originals are read from `store`.
    #[must_use]
    pub fn new(kind: DeliverBody, store: Store) -> BodySource {
        BodySource {
            kind,
            store,
            fallback_logged: AtomicBool::new(false),
        }
    }

    /// The body of an attempt for the transaction `record` at `log_key`.
    ///
    /// # Errors
    /// [`BodyError`] when the original body is wanted and cannot be read.
    pub async fn body(&self, log_key: u64, record: &Record) -> Result<Outgoing, BodyError> {
        if self.kind == DeliverBody::Transaction {
            return Ok(transaction_body(record));
        }
        let store = self.store.clone();
        let original = tokio::task::spawn_blocking(move || store.original_body(log_key))
            .await
            .map_err(BodyError::Task)?
            .map_err(BodyError::Read)?;
        let Some(original) = original else {
            if !self.fallback_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    transaction_id = %record.transaction.transaction_id,
                    "--deliver-body original: this transaction was stored without its original body (accepted before --payload-map was set), so it is delivered as webhookd's JSON with Content-Type application/json; logged once, for the first such transaction"
                );
            }
            return Ok(transaction_body(record));
        };
        Ok(Outgoing {
            content_type: HeaderValue::from_str(&original.content_type)
                .map_err(BodyError::ContentType)?,
            body: original.body,
        })
    }
}

/// webhookd's JSON of a transaction, as `--deliver-body transaction` sends it.
#[derive(Serialize)]
struct TransactionBody<'a> {
    transaction_id: &'a str,
    source_account: &'a str,
    destination_account: &'a str,
    amount: &'a RawValue,
    currency: &'a str,
    created_at: String,
}

/// webhookd's JSON body for a transaction, the amount exactly as stored,
/// with `Content-Type: application/json`.
#[must_use]
pub fn transaction_body(record: &Record) -> Outgoing {
    let tx = &record.transaction;
    // Invariant: a formatted Decimal is a valid JSON number.
    let amount = RawValue::from_string(model::format_amount(tx.amount))
        .expect("a formatted decimal is a JSON number");
    let body = serde_json::to_vec(&TransactionBody {
        transaction_id: &tx.transaction_id,
        source_account: &tx.source_account,
        destination_account: &tx.destination_account,
        amount: &amount,
        currency: tx.currency.as_str(),
        created_at: format_time(record.created_at_ms),
    })
    .expect("a delivery body always serialises");
    Outgoing {
        content_type: HeaderValue::from_static("application/json"),
        body: Bytes::from(body),
    }
}
