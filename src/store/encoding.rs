//! How a [`Record`] is laid out in the `transactions` table.
//!
//! Every value starts with a one-byte format version, followed by the
//! bincode (standard config) encoding of that version's struct. The
//! transaction id is the table key and is not repeated in the value. A new
//! layout gets a new version byte and a decoder here; old values stay
//! readable until a migration rewrites them.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::model::{Currency, NewTransaction, Record, Status};

/// Version byte of the layout written today.
pub const RECORD_VERSION: u8 = 1;

/// Layout version 1, as written (borrows the strings it writes).
#[derive(Serialize)]
struct RecordV1Ref<'a> {
    source_account: &'a str,
    destination_account: &'a str,
    /// `Decimal::serialize()`: 16 bytes, exact.
    amount: [u8; 16],
    currency: [u8; 3],
    status: Status,
    created_at_ms: u64,
    processed_at_ms: Option<u64>,
}

/// Layout version 1, as read. Field order must match [`RecordV1Ref`].
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

/// Encodes a record into `out` (cleared first), ready to store under its id.
pub fn encode_into(
    transaction: &NewTransaction,
    status: Status,
    created_at_ms: u64,
    processed_at_ms: Option<u64>,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.push(RECORD_VERSION);
    let value = RecordV1Ref {
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

/// Decodes the value stored under `id`.
///
/// # Errors
/// [`DecodeError`] if the value is from an unknown layout or damaged.
pub fn decode(id: &str, bytes: &[u8]) -> Result<Record, DecodeError> {
    let (&version, rest) = bytes
        .split_first()
        .ok_or_else(|| DecodeError::Malformed("empty value".to_owned()))?;
    if version != RECORD_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let (value, used): (RecordV1, usize) =
        bincode::serde::decode_from_slice(rest, bincode::config::standard())
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != rest.len() {
        return Err(DecodeError::Malformed("trailing bytes".to_owned()));
    }
    let currency = Currency::from_bytes(value.currency)
        .ok_or_else(|| DecodeError::Malformed("currency is not three letters".to_owned()))?;
    Ok(Record {
        transaction: NewTransaction {
            transaction_id: id.to_owned(),
            source_account: value.source_account,
            destination_account: value.destination_account,
            amount: Decimal::deserialize(value.amount),
            currency,
        },
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
            let back = decode(&tx.transaction_id, &buf).unwrap();
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
            decode("x", &newer),
            Err(DecodeError::UnknownVersion(2))
        ));
        assert!(decode("x", &buf[..buf.len() - 3]).is_err());
        assert!(decode("x", &[]).is_err());
        let mut longer = buf.clone();
        longer.push(0);
        assert!(decode("x", &longer).is_err());
    }
}
