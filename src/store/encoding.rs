//! How a [`Record`] is laid out in the `log` table.
//!
//! Every value starts with a one-byte format version, followed by the
//! bincode (standard config) encoding of that version's struct. Version 4
//! is version 3 plus where delivery to `--deliver-to` stands (attempts,
//! schedule position, last error, `failed_at`); it is written only for a
//! record whose delivery has begun, so a daemon without `--deliver-to`
//! writes exactly what it wrote before. Version 3 is version 2 plus the
//! time processing falls due, so the
//! jobs of the log's tail can be rebuilt from the log alone (see
//! [`super::writer`]). Version 2 carries the transaction id, since the `log`
//! table is keyed by arrival, not by id; it is still read as it is.
//! Version 1 values (schema 1's `transactions` table, keyed by id) are
//! read only to migrate them.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::model::{Currency, Delivery, NewTransaction, Record, Status};

/// Version byte of the layout written for a record whose delivery has begun.
pub const RECORD_VERSION_4: u8 = 4;

/// Version byte of the layout written for every other record.
pub const RECORD_VERSION: u8 = 3;

/// Version byte of schema 2's layout (no due time).
pub const RECORD_VERSION_2: u8 = 2;

/// Version byte of schema 1's layout (no id inside).
pub const RECORD_VERSION_1: u8 = 1;

/// Layout version 3, as written (borrows the strings it writes).
#[derive(Serialize)]
struct RecordV3Ref<'a> {
    transaction_id: &'a str,
    source_account: &'a str,
    destination_account: &'a str,
    /// `Decimal::serialize()`: 16 bytes, exact.
    amount: [u8; 16],
    currency: [u8; 3],
    status: Status,
    created_at_ms: u64,
    processed_at_ms: Option<u64>,
    due_at_ms: Option<u64>,
}

/// Layout version 3, as read. Field order must match [`RecordV3Ref`].
#[derive(Deserialize)]
struct RecordV3 {
    transaction_id: String,
    source_account: String,
    destination_account: String,
    amount: [u8; 16],
    currency: [u8; 3],
    status: Status,
    created_at_ms: u64,
    processed_at_ms: Option<u64>,
    due_at_ms: Option<u64>,
}

/// Layout version 4, as written: version 3 and the delivery fields.
#[derive(Serialize)]
struct RecordV4Ref<'a> {
    base: RecordV3Ref<'a>,
    attempts: u32,
    schedule_pos: u32,
    last_error: Option<&'a str>,
    failed_at_ms: Option<u64>,
}

/// Layout version 4, as read. Field order must match [`RecordV4Ref`].
#[derive(Deserialize)]
struct RecordV4 {
    base: RecordV3,
    attempts: u32,
    schedule_pos: u32,
    last_error: Option<String>,
    failed_at_ms: Option<u64>,
}

/// Layout version 2, as read: version 3 without the due time.
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

/// The stored state of a transaction besides its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    /// Current status.
    pub status: Status,
    /// When the acceptance committed (ms).
    pub created_at_ms: u64,
    /// When processing committed (ms).
    pub processed_at_ms: Option<u64>,
    /// When processing falls due (ms), if known.
    pub due_at_ms: Option<u64>,
}

/// Encodes a record into `out` (cleared first), ready to store in the log.
pub fn encode_into(transaction: &NewTransaction, state: State, out: &mut Vec<u8>) {
    encode_with_delivery(transaction, state, &Delivery::default(), out);
}

/// [`encode_into`] with where delivery stands: version 4 once delivery has
/// begun (or the record is FAILED), else version 3.
pub fn encode_with_delivery(
    transaction: &NewTransaction,
    state: State,
    delivery: &Delivery,
    out: &mut Vec<u8>,
) {
    out.clear();
    let base = RecordV3Ref {
        transaction_id: &transaction.transaction_id,
        source_account: &transaction.source_account,
        destination_account: &transaction.destination_account,
        amount: transaction.amount.serialize(),
        currency: transaction.currency.bytes(),
        status: state.status,
        created_at_ms: state.created_at_ms,
        processed_at_ms: state.processed_at_ms,
        due_at_ms: state.due_at_ms,
    };
    // Invariant: encoding plain fields into a Vec cannot fail.
    let written = if *delivery == Delivery::default() && state.status != Status::Failed {
        out.push(RECORD_VERSION);
        bincode::serde::encode_into_std_write(&base, out, bincode::config::standard())
    } else {
        out.push(RECORD_VERSION_4);
        let value = RecordV4Ref {
            base,
            attempts: delivery.attempts,
            schedule_pos: delivery.schedule_pos,
            last_error: delivery.last_error.as_deref(),
            failed_at_ms: delivery.failed_at_ms,
        };
        bincode::serde::encode_into_std_write(&value, out, bincode::config::standard())
    };
    written.expect("encoding a record into memory cannot fail");
}

/// The version byte and the bytes after it.
fn split_version(bytes: &[u8]) -> Result<(u8, &[u8]), DecodeError> {
    let (&found, rest) = bytes
        .split_first()
        .ok_or_else(|| DecodeError::Malformed("empty value".to_owned()))?;
    Ok((found, rest))
}

/// The bytes after the version byte, if it is `version`.
fn after_version(bytes: &[u8], version: u8) -> Result<&[u8], DecodeError> {
    let (found, rest) = split_version(bytes)?;
    if found != version {
        return Err(DecodeError::UnknownVersion(found));
    }
    Ok(rest)
}

/// Writes a version byte, then `value` in bincode (standard config), into
/// `out` (cleared first): the layout of the tables besides the log.
pub(crate) fn encode_versioned<T: Serialize>(version: u8, value: &T, out: &mut Vec<u8>) {
    out.clear();
    out.push(version);
    bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
        .expect("encoding into memory cannot fail");
}

/// Reads what [`encode_versioned`] wrote with `version`; any other version
/// byte is [`DecodeError::UnknownVersion`].
pub(crate) fn decode_versioned<T: serde::de::DeserializeOwned>(
    version: u8,
    bytes: &[u8],
) -> Result<T, DecodeError> {
    body(after_version(bytes, version)?)
}

fn body<T: serde::de::DeserializeOwned>(rest: &[u8]) -> Result<T, DecodeError> {
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
    Ok(decode_with_due(bytes)?.0)
}

/// Decodes a value of the `log` table with the time its processing falls
/// due (`None` in a schema 2 value, whose job row holds it).
///
/// # Errors
/// [`DecodeError`] if the value is from an unknown layout or damaged.
pub fn decode_with_due(bytes: &[u8]) -> Result<(Record, Option<u64>), DecodeError> {
    match split_version(bytes)? {
        (RECORD_VERSION_4, rest) => {
            let value: RecordV4 = body(rest)?;
            let (mut record, due) = from_v3(value.base)?;
            record.delivery = Delivery {
                attempts: value.attempts,
                schedule_pos: value.schedule_pos,
                last_error: value.last_error,
                failed_at_ms: value.failed_at_ms,
            };
            Ok((record, due))
        }
        (RECORD_VERSION, rest) => from_v3(body(rest)?),
        (RECORD_VERSION_2, rest) => Ok((into_record(body(rest)?)?, None)),
        (other, _) => Err(DecodeError::UnknownVersion(other)),
    }
}

fn from_v3(value: RecordV3) -> Result<(Record, Option<u64>), DecodeError> {
    let due = value.due_at_ms;
    Ok((
        into_record(RecordV2 {
            transaction_id: value.transaction_id,
            source_account: value.source_account,
            destination_account: value.destination_account,
            amount: value.amount,
            currency: value.currency,
            status: value.status,
            created_at_ms: value.created_at_ms,
            processed_at_ms: value.processed_at_ms,
        })?,
        due,
    ))
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
        delivery: Delivery::default(),
    })
}

/// The transaction id of a `log` value, without decoding the rest (the id
/// is the first field); for rebuilding the id map at start-up.
///
/// # Errors
/// [`DecodeError`] if the value is from an unknown layout or damaged.
pub fn decode_id(bytes: &[u8]) -> Result<&str, DecodeError> {
    let rest = match split_version(bytes)? {
        (RECORD_VERSION_4 | RECORD_VERSION | RECORD_VERSION_2, rest) => rest,
        (other, _) => return Err(DecodeError::UnknownVersion(other)),
    };
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
    let value: RecordV1 = body(after_version(bytes, RECORD_VERSION_1)?)?;
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

    fn processing(created_at_ms: u64, due_at_ms: Option<u64>) -> State {
        State {
            status: Status::Processing,
            created_at_ms,
            processed_at_ms: None,
            due_at_ms,
        }
    }

    #[test]
    fn records_round_trip_exactly() {
        let tx = sample();
        let mut buf = Vec::new();
        for state in [
            processing(1_764_000_000_123, Some(1_764_000_030_123)),
            State {
                status: Status::Processed,
                created_at_ms: 1_764_000_000_123,
                processed_at_ms: Some(1_764_000_000_999),
                due_at_ms: None,
            },
        ] {
            encode_into(&tx, state, &mut buf);
            assert_eq!(buf[0], RECORD_VERSION);
            let (back, due) = decode_with_due(&buf).unwrap();
            assert_eq!(decode_id(&buf).unwrap(), tx.transaction_id);
            assert_eq!(back.transaction, tx);
            assert_eq!(back.status, state.status);
            assert_eq!(back.created_at_ms, 1_764_000_000_123);
            assert_eq!(back.processed_at_ms, state.processed_at_ms);
            assert_eq!(due, state.due_at_ms);
            assert_eq!(
                crate::model::format_amount(back.transaction.amount),
                "12345678901234567.89"
            );
        }
    }

    #[test]
    fn delivery_fields_round_trip_and_only_begun_deliveries_write_version_4() {
        let tx = sample();
        let mut buf = Vec::new();
        encode_with_delivery(&tx, processing(1, Some(2)), &Delivery::default(), &mut buf);
        assert_eq!(buf[0], RECORD_VERSION, "nothing delivered yet: version 3");
        let delivery = Delivery {
            attempts: 7,
            schedule_pos: 3,
            last_error: Some("HTTP 503".to_owned()),
            failed_at_ms: Some(99),
        };
        let failed = State {
            status: Status::Failed,
            created_at_ms: 1,
            processed_at_ms: None,
            due_at_ms: Some(50),
        };
        encode_with_delivery(&tx, failed, &delivery, &mut buf);
        assert_eq!(buf[0], RECORD_VERSION_4);
        let (back, due) = decode_with_due(&buf).unwrap();
        assert_eq!(back.transaction, tx);
        assert_eq!(back.status, Status::Failed);
        assert_eq!(back.delivery, delivery);
        assert_eq!(due, Some(50));
        assert_eq!(decode_id(&buf).unwrap(), tx.transaction_id);
        // FAILED alone (no attempt recorded) is version 4 too: version 3
        // readers must not meet a status they do not know.
        encode_with_delivery(&tx, failed, &Delivery::default(), &mut buf);
        assert_eq!(buf[0], RECORD_VERSION_4);
    }

    /// Schema 2's layout, spelled out here independently of the reader.
    #[derive(Serialize)]
    struct WrittenV2<'a> {
        transaction_id: &'a str,
        source_account: &'a str,
        destination_account: &'a str,
        amount: [u8; 16],
        currency: [u8; 3],
        status: Status,
        created_at_ms: u64,
        processed_at_ms: Option<u64>,
    }

    #[test]
    fn schema_2_values_are_still_read() {
        let tx = sample();
        let mut buf = vec![RECORD_VERSION_2];
        bincode::serde::encode_into_std_write(
            WrittenV2 {
                transaction_id: &tx.transaction_id,
                source_account: &tx.source_account,
                destination_account: &tx.destination_account,
                amount: tx.amount.serialize(),
                currency: tx.currency.bytes(),
                status: Status::Processed,
                created_at_ms: 7,
                processed_at_ms: Some(9),
            },
            &mut buf,
            bincode::config::standard(),
        )
        .unwrap();
        let (back, due) = decode_with_due(&buf).unwrap();
        assert_eq!(back.transaction, tx);
        assert_eq!(
            (back.status, back.created_at_ms, back.processed_at_ms, due),
            (Status::Processed, 7, Some(9), None)
        );
        assert_eq!(decode_id(&buf).unwrap(), tx.transaction_id);
    }

    #[test]
    fn unknown_versions_and_damage_are_reported_not_guessed() {
        let mut buf = Vec::new();
        encode_into(&sample(), processing(1, Some(2)), &mut buf);
        let mut newer = buf.clone();
        newer[0] = RECORD_VERSION_4 + 1;
        assert!(matches!(
            decode(&newer),
            Err(DecodeError::UnknownVersion(5))
        ));
        assert!(matches!(
            decode_id(&newer),
            Err(DecodeError::UnknownVersion(5))
        ));
        assert!(decode(&buf[..buf.len() - 3]).is_err());
        assert!(decode(&[]).is_err());
        let mut longer = buf.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        // A version 3 value is not read as version 2 (it has one more field).
        let mut relabelled = buf.clone();
        relabelled[0] = RECORD_VERSION_2;
        assert!(decode(&relabelled).is_err());
        // A version 1 value is not silently read as a later one, nor the reverse.
        assert!(matches!(
            decode_v1("x", &buf),
            Err(DecodeError::UnknownVersion(3))
        ));
    }
}
