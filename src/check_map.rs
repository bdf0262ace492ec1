//! `webhookd check-map FILE SAMPLE`: what a webhook body would become
//! under a payload map, without a daemon or a data dir, so a map can be
//! tried on a provider's sample event before it goes live.
//!
//! stdout gets one JSON line: the transaction (in webhookd's own payload
//! shape, the amount exact), or the answer the daemon would give instead:
//! `{"status":"IGNORED",…}` for an event the map does not take, or the
//! error body of the 400 or 422, built by the same code as the API's.
//! Exit code 0 for a transaction or an ignored event, 1 for a refusal
//! (with one line on stderr saying why), 2 when the map does not load or
//! the sample cannot be read.

use std::io::Write as _;
use std::path::Path;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::cli::{FAILURE_EXIT_CODE, USAGE_EXIT_CODE};
use crate::model::{self, NewTransaction};
use crate::payload_map::{Mapped, PayloadMap};

/// The transaction as a webhook payload of webhookd's own shape.
#[derive(Serialize)]
struct TransactionShape<'a> {
    transaction_id: &'a str,
    source_account: &'a str,
    destination_account: &'a str,
    amount: &'a RawValue,
    currency: &'a str,
}

/// Runs `check-map`; returns the exit code.
#[must_use]
pub fn run(map: &Path, sample: &Path) -> u8 {
    let map = match PayloadMap::load(map) {
        Ok(map) => map,
        Err(e) => {
            eprintln!("webhookd: error: {e}");
            return USAGE_EXIT_CODE;
        }
    };
    let body = match std::fs::read(sample) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("webhookd: error: cannot read {}: {e}", sample.display());
            return USAGE_EXIT_CODE;
        }
    };
    let (line, code) = match map.apply(&body) {
        Ok(Mapped::Transaction(transaction)) => (transaction_json(&transaction), 0),
        Ok(Mapped::Ignored { event }) => {
            eprintln!(
                "webhookd check-map: {}: ignored: the map does not take event {event:?} (answered 200, nothing stored)",
                sample.display()
            );
            (crate::http::ignored_answer(&event).1, 0)
        }
        Err(rejection) => {
            let message = rejection.to_string();
            let (status, answer) = crate::http::rejection_answer(rejection);
            eprintln!(
                "webhookd check-map: {}: refused with {}: {}",
                sample.display(),
                status.as_u16(),
                message.escape_debug()
            );
            (answer, FAILURE_EXIT_CODE)
        }
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(&line)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush())
    {
        eprintln!("webhookd: error: cannot write stdout: {e}");
        return FAILURE_EXIT_CODE;
    }
    code
}

fn transaction_json(transaction: &NewTransaction) -> Vec<u8> {
    // Invariant: a formatted Decimal is a valid JSON number.
    let amount = RawValue::from_string(model::format_amount(transaction.amount))
        .expect("a formatted decimal is a JSON number");
    serde_json::to_vec(&TransactionShape {
        transaction_id: &transaction.transaction_id,
        source_account: &transaction.source_account,
        destination_account: &transaction.destination_account,
        amount: &amount,
        currency: transaction.currency.as_str(),
    })
    .expect("a transaction always serialises")
}
