//! The bodies webhooks arrived with: table `payloads`, log key → the
//! raw bytes and the request's `Content-Type`.
//!
//! Kept only with `--payload-map`, where the stored transaction is a
//! translation of what the provider sent and the original is the proof.
//! The row is written in the same write transaction as its log entry, so
//! a 202 means both are on disk; without a map nothing is written here,
//! and the commit a 202 waits for touches the log alone, as before.
//! A retention purge deletes the row with its record, taking back a
//! failed commit deletes it with its log entry, and `webhookd check`
//! reports a row without a record or one that does not decode.
//!
//! Value layout, version 1: the version byte, the `Content-Type`'s length
//! (u16, big-endian), the `Content-Type` (visible ASCII, as HTTP allows),
//! then the body exactly as received (valid UTF-8: only bodies that
//! parsed as JSON are kept).

use bytes::Bytes;
use redb::{ReadableTable, Table};

use super::delivery_read::DeliveryView;
use super::read::Snapshot;
use super::schema::{ID_HASHES, LOG, PAYLOADS};
use super::{Store, StoreError};
use crate::model::Record;

/// Version byte of the layout written today.
pub const PAYLOAD_VERSION: u8 = 1;

/// A webhook body as it was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalBody {
    /// The request's `Content-Type` header, as sent.
    pub content_type: String,
    /// The body, byte for byte.
    pub body: Bytes,
}

/// A stored row that cannot be decoded: written by a newer version, or damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The version byte is not one this build knows (or the row is empty).
    #[error("unknown original body format version {0:?}")]
    UnknownVersion(Option<u8>),
    /// The lengths do not add up, or the text is not what was written.
    #[error("original body row is malformed: {0}")]
    Malformed(&'static str),
}

/// The row for `original`. A `Content-Type` longer than 65,535 bytes
/// cannot arrive: request heads are far smaller.
pub(crate) fn encode(original: &OriginalBody) -> Vec<u8> {
    let content_type = original.content_type.as_bytes();
    // Invariant: request heads are bounded far below 64 KiB.
    let length = u16::try_from(content_type.len()).expect("a header value is under 64 KiB");
    let mut row = Vec::with_capacity(3 + content_type.len() + original.body.len());
    row.push(PAYLOAD_VERSION);
    row.extend_from_slice(&length.to_be_bytes());
    row.extend_from_slice(content_type);
    row.extend_from_slice(&original.body);
    row
}

/// Reads a row back.
///
/// # Errors
/// [`DecodeError`] for a row of an unknown version or a damaged one.
pub fn decode(row: &[u8]) -> Result<OriginalBody, DecodeError> {
    let Some((&PAYLOAD_VERSION, rest)) = row.split_first() else {
        return Err(DecodeError::UnknownVersion(row.first().copied()));
    };
    let Some((length, rest)) = rest.split_first_chunk::<2>() else {
        return Err(DecodeError::Malformed("no Content-Type length"));
    };
    let length = usize::from(u16::from_be_bytes(*length));
    if rest.len() < length {
        return Err(DecodeError::Malformed("shorter than its Content-Type"));
    }
    let (content_type, body) = rest.split_at(length);
    let content_type = std::str::from_utf8(content_type)
        .map_err(|_| DecodeError::Malformed("Content-Type is not text"))?;
    if std::str::from_utf8(body).is_err() {
        return Err(DecodeError::Malformed("body is not UTF-8"));
    }
    Ok(OriginalBody {
        content_type: content_type.to_owned(),
        body: Bytes::copy_from_slice(body),
    })
}

/// Writes the row of the log entry at `log_key` (in the writer's batch).
pub(crate) fn insert(
    table: &mut Table<'_, u64, &'static [u8]>,
    log_key: u64,
    original: &OriginalBody,
) -> Result<(), redb::StorageError> {
    table.insert(log_key, encode(original).as_slice())?;
    Ok(())
}

impl Store {
    /// The body the transaction at `log_key` arrived with and its
    /// `Content-Type`; `None` when none was kept (stored without
    /// `--payload-map`, or no such transaction). For forwarding a
    /// transaction as it was received.
    pub fn original_body(&self, log_key: u64) -> Result<Option<OriginalBody>, StoreError> {
        read(&self.snapshot()?, log_key)
    }

    /// One transaction by id, with its original body if one was kept, both
    /// from one snapshot.
    pub fn get_with_original(
        &self,
        transaction_id: &str,
    ) -> Result<Option<(Record, Option<OriginalBody>)>, StoreError> {
        let mut lookup = self.look_up_id(transaction_id);
        let snapshot = self.snapshot()?;
        let found = lookup
            .find(&snapshot.table(ID_HASHES)?, &snapshot.table(LOG)?)
            .map_err(StoreError::storage)?;
        match found {
            None => Ok(None),
            Some((key, Ok(record))) => Ok(Some((record, read(&snapshot, key)?))),
            Some((key, Err(source))) => Err(StoreError::Corrupt { key, source }),
        }
    }

    /// [`Store::delivery_view`] with the transaction's original body if
    /// one was kept, both from one snapshot.
    pub fn delivery_view_with_original(
        &self,
        transaction_id: &str,
    ) -> Result<Option<(DeliveryView, Option<OriginalBody>)>, StoreError> {
        let mut lookup = self.look_up_id(transaction_id);
        let snapshot = self.snapshot()?;
        let Some((key, view)) = Store::delivery_view_in(&snapshot, &mut lookup)? else {
            return Ok(None);
        };
        Ok(Some((view, read(&snapshot, key)?)))
    }
}

fn read(snapshot: &Snapshot, log_key: u64) -> Result<Option<OriginalBody>, StoreError> {
    let table = snapshot.table(PAYLOADS)?;
    let Some(row) = table.get(log_key).map_err(StoreError::storage)? else {
        return Ok(None);
    };
    decode(row.value())
        .map(Some)
        .map_err(|source| StoreError::CorruptOriginal {
            key: log_key,
            source,
        })
}

/// `webhookd check`'s part: every row belongs to a stored record and
/// decodes. Returns how many rows there are.
pub(crate) fn check(
    snapshot: &Snapshot,
    is_stored: &dyn Fn(u64) -> bool,
    problems: &mut Vec<String>,
) -> Result<u64, StoreError> {
    let mut rows = 0;
    for row in snapshot
        .table(PAYLOADS)?
        .iter()
        .map_err(StoreError::storage)?
    {
        let (key, value) = row.map_err(StoreError::storage)?;
        let key = key.value();
        rows += 1;
        if !is_stored(key) {
            problems.push(format!(
                "original body at log key {key} has no stored transaction"
            ));
        }
        if let Err(e) = decode(value.value()) {
            problems.push(format!("original body at log key {key}: {e}"));
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_give_back_the_exact_bytes_and_content_type() {
        let original = OriginalBody {
            content_type: "application/json; charset=utf-8".to_owned(),
            body: Bytes::from_static(b"{ \"amount\" : 1500.50 ,\n\"x\":\"\\u00e9\xc3\xa9\"}\n"),
        };
        assert_eq!(decode(&encode(&original)), Ok(original));
        let empty_type = OriginalBody {
            content_type: String::new(),
            body: Bytes::from_static(b"{}"),
        };
        assert_eq!(decode(&encode(&empty_type)), Ok(empty_type));
    }

    #[test]
    fn damaged_rows_are_reported_not_misread() {
        let row = encode(&OriginalBody {
            content_type: "application/json".to_owned(),
            body: Bytes::from_static(b"{}"),
        });
        assert_eq!(decode(&[]), Err(DecodeError::UnknownVersion(None)));
        assert_eq!(
            decode(&[9, 0, 0]),
            Err(DecodeError::UnknownVersion(Some(9)))
        );
        assert!(matches!(decode(&row[..2]), Err(DecodeError::Malformed(_))));
        assert!(matches!(decode(&row[..5]), Err(DecodeError::Malformed(_))));
        let mut bad = row.clone();
        bad.push(0xff);
        assert!(matches!(decode(&bad), Err(DecodeError::Malformed(_))));
    }
}
