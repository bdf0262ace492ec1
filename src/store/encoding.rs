//! How a [`Record`] is laid out in the `log` table.
//!
//! Every value starts with a one-byte format version, followed by the
//! bincode (standard config) encoding of that version's struct. Version 2
//! (written today) carries the transaction id, since the `log` table is
//! keyed by arrival, not by id. Version 1 values (schema 1's
//! `transactions` table, keyed by id) are read only to migrate them.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::model::{Currency, NewTransaction, Record, Status};

/// Version byte of the layout written today.
pub const RECORD_VERSION: u8 = 2;

/// Version byte of schema 1's layout (no id inside).
pub const RECORD_VERSION_1: u8 = 1;

/// Layout version 2, as written (borrows the strings it writes).
#[derive(Serialize)]
struct RecordV2Ref<'a> {
    transaction_id: &'a str,
    source_account: &'a str,
    destination_account: &'a str,
    /// `Decimal::serialize()`: 16 bytes, exact.
    amount: [u8; 16],
    currency: [u8; 3],
    status: Status,
    created_at_ms: u64,
    processed_at_ms: Option<u64>,
}

/// Layout version 2, as read. Field order must match [`RecordV2Ref`].
#[derive(Deserialize)]
struct RecordV2 {
    transaction_id: String,
    source_account: String,
    destination_account: String,
    amount: [u8; 16],
    currency: [u8; 3],
    status: Status,
    created_at_ms: u64,
    processed_at_ms: Option<u64>,
}

/// Layout version 1, as read: version 2 without the id.
#[derive(Deserialize)]
struct RecordV1 {
    source_account: String,
    destination_account: String,
    amount: [u8; 16],
    currency: [u8; 3],
    status: Status,
    created_at_ms: u64,
    processed_at_ms: Option<u64>,
}

/// A stored value that cannot be decoded: written by a newer version, or damaged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The version byte is not one this build knows.
    #[error("unknown record format version {0}")]
    UnknownVersion(u8),
    /// The bytes after the version byte do not decode.
    #[error("record does not decode: {0}")]
    Malformed(String),
}

/// Encodes a record into `out` (cleared first), ready to store in the log.
pub fn encode_into(
    transaction: &NewTransaction,
    status: Status,
    created_at_ms: u64,
    processed_at_ms: Option<u64>,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.push(RECORD_VERSION);
    let value = RecordV2Ref {
        transaction_id: &transaction.transaction_id,
        source_account: &transaction.source_account,
        destination_account: &transaction.destination_account,
        amount: transaction.amount.serialize(),
        currency: transaction.currency.bytes(),
        status,
        created_at_ms,
        processed_at_ms,
    };
    // Invariant: encoding plain fields into a Vec cannot fail.
    bincode::serde::encode_into_std_write(&value, out, bincode::config::standard())
        .expect("encoding a record into memory cannot fail");
}

/// The bytes after the version byte, if it is `version`.
fn after_version(bytes: &[u8], version: u8) -> Result<&[u8], DecodeError> {
    let (&found, rest) = bytes
        .split_first()
        .ok_or_else(|| DecodeError::Malformed("empty value".to_owned()))?;
    if found != version {
        return Err(DecodeError::UnknownVersion(found));
    }
    Ok(rest)
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8], version: u8) -> Result<T, DecodeError> {
    let rest = after_version(bytes, version)?;
    let (value, used): (T, usize) =
        bincode::serde::decode_from_slice(rest, bincode::config::standard())
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != rest.len() {
        return Err(DecodeError::Malformed("trailing bytes".to_owned()));
    }
    Ok(value)
}

fn currency(bytes: [u8; 3]) -> Result<Currency, DecodeError> {
    Currency::from_bytes(bytes)
        .ok_or_else(|| DecodeError::Malformed("currency is not three letters".to_owned()))
}

/// Decodes a value of the `log` table.
///
/// # Errors
/// [`DecodeError`] if the value is from an unknown layout or damaged.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    into_record(body(bytes, RECORD_VERSION)?)
}

fn into_record(value: RecordV2) -> Result<Record, DecodeError> {
    Ok(Record {
        transaction: NewTransaction {
            transaction_id: value.transaction_id,
            source_account: value.source_account,
            destination_account: value.destination_account,
            amount: Decimal::deserialize(value.amount),
            currency: currency(value.currency)?,
        },
        status: value.status,
        created_at_ms: value.created_at_ms,
        processed_at_ms: value.processed_at_ms,
    })
}

/// The transaction id of a `log` value, without decoding the rest (the id
/// is the first field); for rebuilding the id map at start-up.
///
/// # Errors
/// [`DecodeError`] if the value is from an unknown layout or damaged.
pub fn decode_id(bytes: &[u8]) -> Result<&str, DecodeError> {
    let rest = after_version(bytes, RECORD_VERSION)?;
    let (id, _): (&str, usize) =
        bincode::serde::borrow_decode_from_slice(rest, bincode::config::standard())
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    Ok(id)
}

/// Decodes a schema 1 value stored under `id` (for the migration).
///
/// # Errors
/// [`DecodeError`] if the value is not a version 1 record.
pub fn decode_v1(id: &str, bytes: &[u8]) -> Result<Record, DecodeError> {
    let value: RecordV1 = body(bytes, RECORD_VERSION_1)?;
    into_record(RecordV2 {
        transaction_id: id.to_owned(),
        source_account: value.source_account,
        destination_account: value.destination_account,
        amount: value.amount,
        currency: value.currency,
        status: value.status,
        created_at_ms: value.created_at_ms,
        processed_at_ms: value.processed_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_amount;

    fn sample() -> NewTransaction {
        NewTransaction {
            transaction_id: "txn/ü 1".to_owned(),
            source_account: "acc_user_789".to_owned(),
            destination_account: "acc_merchant_456".to_owned(),
            amount: parse_amount("12345678901234567.89").unwrap(),
            currency: Currency::parse("inr").unwrap(),
        }
    }

    #[test]
    fn records_round_trip_exactly() {
        let tx = sample();
        let mut buf = Vec::new();
        for (status, processed) in [
            (Status::Processing, None),
            (Status::Processed, Some(1_764_000_000_999)),
        ] {
            encode_into(&tx, status, 1_764_000_000_123, processed, &mut buf);
            assert_eq!(buf[0], RECORD_VERSION);
            let back = decode(&buf).unwrap();
            assert_eq!(decode_id(&buf).unwrap(), tx.transaction_id);
            assert_eq!(back.transaction, tx);
            assert_eq!(back.status, status);
            assert_eq!(back.created_at_ms, 1_764_000_000_123);
            assert_eq!(back.processed_at_ms, processed);
            assert_eq!(
                crate::model::format_amount(back.transaction.amount),
                "12345678901234567.89"
            );
        }
    }

    #[test]
    fn unknown_versions_and_damage_are_reported_not_guessed() {
        let mut buf = Vec::new();
        encode_into(&sample(), Status::Processing, 1, None, &mut buf);
        let mut newer = buf.clone();
        newer[0] = RECORD_VERSION + 1;
        assert!(matches!(
            decode(&newer),
            Err(DecodeError::UnknownVersion(3))
        ));
        assert!(decode(&buf[..buf.len() - 3]).is_err());
        assert!(decode(&[]).is_err());
        let mut longer = buf.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        // A version 1 value is not silently read as version 2, nor the reverse.
        assert!(matches!(
            decode_v1("x", &buf),
            Err(DecodeError::UnknownVersion(2))
        ));
    }
}
