//! Finding a transaction by its id.
//!
//! The id index (`id_hashes`, and the writer's in-memory tail of it) files
//! each log key under a 64-bit keyed hash of its transaction id: rows of a
//! fixed 16 bytes, where the ids themselves are up to 255 bytes of text.
//! The index is written in bulk merges that touch most of its leaves, so
//! its size is what each merge costs. A hash names candidates only: the
//! record in the log is what says whose it is, so two ids that collide
//! cost one more log read, never a wrong answer.
//!
//! The hash is SipHash-1-3 under a 128-bit key drawn from the OS when the
//! database is created and kept in `meta`: stable for the file's life, and
//! unknown outside it, so nobody sending webhooks can pick ids that pile
//! up under one hash.
//!
//! `IdLookup` is the one lookup by id, used by reads and by the writer.

use std::collections::BTreeSet;
use std::hash::Hasher;

use redb::{Database, ReadableTable};
use siphasher::sip::SipHasher13;

use super::encoding::{self, DecodeError};
use super::schema::{ID_HASH_KEY_NAMES, META, read_meta};
use super::tail::LogTail;
use crate::model::Record;

/// The file's keyed hash of transaction ids.
#[derive(Clone, Copy)]
pub(crate) struct IdHasher {
    k0: u64,
    k1: u64,
}

/// Why the file's hash key could not be read or made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HashKeyError {
    #[error(transparent)]
    Storage(#[from] redb::Error),
    #[error("the OS gave no randomness for the id hash key: {0}")]
    Randomness(#[source] getrandom::Error),
}

impl IdHasher {
    #[cfg(test)]
    pub(crate) fn for_tests(k0: u64, k1: u64) -> IdHasher {
        IdHasher { k0, k1 }
    }

    pub(crate) fn hash(&self, id: &str) -> u64 {
        let mut hasher = SipHasher13::new_with_keys(self.k0, self.k1);
        hasher.write(id.as_bytes());
        hasher.finish()
    }

    /// The file's hash key; a file without one (new, or from a schema
    /// before 4) gets a fresh one in a commit of its own first.
    pub(crate) fn of(db: &Database) -> Result<IdHasher, HashKeyError> {
        let (Some(k0), Some(k1)) = (
            read_meta(db, ID_HASH_KEY_NAMES[0])?,
            read_meta(db, ID_HASH_KEY_NAMES[1])?,
        ) else {
            let hasher = IdHasher {
                k0: getrandom::u64().map_err(HashKeyError::Randomness)?,
                k1: getrandom::u64().map_err(HashKeyError::Randomness)?,
            };
            let txn = db.begin_write().map_err(redb::Error::from)?;
            {
                let mut meta = txn.open_table(META).map_err(redb::Error::from)?;
                meta.insert(ID_HASH_KEY_NAMES[0], hasher.k0)
                    .map_err(redb::Error::from)?;
                meta.insert(ID_HASH_KEY_NAMES[1], hasher.k1)
                    .map_err(redb::Error::from)?;
            }
            txn.commit().map_err(redb::Error::from)?;
            return Ok(hasher);
        };
        Ok(IdHasher { k0, k1 })
    }
}

/// The log keys filed under `hash` in an in-memory part of the index.
pub(crate) fn filed_under(set: &BTreeSet<(u64, u64)>, hash: u64) -> impl Iterator<Item = u64> + '_ {
    set.range((hash, 0)..=(hash, u64::MAX)).map(|&(_, key)| key)
}

/// A log key and its record, decoded (or why not).
pub(crate) type Found = (u64, Result<Record, DecodeError>);

/// Looking up one transaction id: the lookup that reads and the writer
/// share. [`IdLookup::new`] takes the log's tail's candidates; the caller
/// then opens its snapshot or write transaction and calls
/// [`IdLookup::find`] on it. In that order, an id that leaves the tail in
/// between is in the `id_hashes` that `find` reads.
pub(crate) struct IdLookup<'a> {
    id: &'a str,
    hash: u64,
    candidates: Vec<u64>,
    /// Candidates [`IdLookup::find`] met without a record (purged ones, whose
    /// tombstones say whose they were).
    gone: Vec<u64>,
}

impl<'a> IdLookup<'a> {
    pub(crate) fn new(id: &'a str, hasher: &IdHasher, tail: &LogTail) -> IdLookup<'a> {
        let hash = hasher.hash(id);
        IdLookup {
            id,
            hash,
            candidates: tail.id_candidates(hash),
            gone: Vec::new(),
        }
    }

    /// The hash `id_hashes` files the id under.
    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }

    /// The id's log entry, if any: the first candidate (from the tail,
    /// then from `id_hashes`) whose record is this id's. A record whose id
    /// cannot be read counts as a match: damage is reported, never skipped.
    pub(crate) fn find(
        &mut self,
        id_hashes: &impl ReadableTable<(u64, u64), ()>,
        log: &impl ReadableTable<u64, &'static [u8]>,
    ) -> Result<Option<Found>, redb::StorageError> {
        for row in id_hashes.range((self.hash, 0)..=(self.hash, u64::MAX))? {
            self.candidates.push(row?.0.value().1);
        }
        find_in_log(
            log,
            self.candidates.iter().copied(),
            self.id,
            &mut self.gone,
        )
    }

    /// The candidates [`IdLookup::find`] met that have no record.
    pub(crate) fn gone(&self) -> &[u64] {
        &self.gone
    }
}

/// The first of `candidates` whose log record is `id`'s, with its log key
/// and the record decoded. A record whose id cannot be read counts as a
/// match: damage is reported, never skipped over.
/// Candidates without a record go to `gone`.
fn find_in_log(
    log: &impl ReadableTable<u64, &'static [u8]>,
    candidates: impl IntoIterator<Item = u64>,
    id: &str,
    gone: &mut Vec<u64>,
) -> Result<Option<Found>, redb::StorageError> {
    for key in candidates {
        let Some(stored) = log.get(key)? else {
            gone.push(key);
            continue;
        };
        let bytes = stored.value();
        let record = encoding::decode(bytes);
        let other = match &record {
            Ok(record) => record.transaction.transaction_id != id,
            // Damage past the id still shows whose record it is.
            Err(_) => encoding::decode_id(bytes).is_ok_and(|found| found != id),
        };
        if !other {
            return Ok(Some((key, record)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_depends_on_the_key_and_stays_put_for_one() {
        let a = IdHasher { k0: 1, k1: 2 };
        let b = IdHasher { k0: 1, k1: 3 };
        assert_eq!(a.hash("txn_1"), a.hash("txn_1"));
        assert_ne!(a.hash("txn_1"), a.hash("txn_2"));
        assert_ne!(a.hash("txn_1"), b.hash("txn_1"));
        // Stored rows outlive builds: the hash of these bytes under this
        // key must never change (it is SipHash-1-3 of the id's bytes alone,
        // without the terminator `Hash for str` would add).
        assert_eq!(a.hash("txn_1"), GOLDEN);
    }

    /// SipHash-1-3 of `b"txn_1"` under keys (1, 2), from an independent
    /// implementation of the spec (one that gives the paper's SipHash-2-4
    /// test vector).
    const GOLDEN: u64 = 12_292_367_795_368_176_421;

    #[test]
    fn candidates_are_checked_against_the_log() {
        use crate::model::{Currency, NewTransaction, Status, parse_amount};
        use redb::backends::InMemoryBackend;

        const LOG: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log");
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut log = txn.open_table(LOG).unwrap();
            let mut buf = Vec::new();
            for (key, id) in [(1, "txn_a"), (2, "txn_b")] {
                let transaction = NewTransaction {
                    transaction_id: id.to_owned(),
                    source_account: "s".to_owned(),
                    destination_account: "d".to_owned(),
                    amount: parse_amount("1").unwrap(),
                    currency: Currency::parse("EUR").unwrap(),
                };
                let state = encoding::State {
                    status: Status::Processing,
                    created_at_ms: 1,
                    processed_at_ms: None,
                    due_at_ms: Some(2),
                };
                encoding::encode_into(&transaction, state, &mut buf);
                log.insert(key, buf.as_slice()).unwrap();
            }
            log.insert(3, [0xff_u8].as_slice()).unwrap();
            // Two ids filed under one hash: each finds its own record.
            let found = |candidates: &[u64], id| {
                find_in_log(&log, candidates.iter().copied(), id, &mut Vec::new())
                    .unwrap()
                    .map(|(key, record)| (key, record.map(|r| r.transaction.transaction_id).ok()))
            };
            assert_eq!(found(&[1, 2], "txn_b"), Some((2, Some("txn_b".to_owned()))));
            assert_eq!(found(&[1, 2], "txn_a"), Some((1, Some("txn_a".to_owned()))));
            // Neither is a third id's; a purged candidate (no record) is skipped.
            assert_eq!(found(&[1, 2, 9], "txn_c"), None);
            // A record whose id cannot be read is reported, not skipped.
            assert_eq!(found(&[3, 2], "txn_b"), Some((3, None)));
        }
    }

    #[test]
    fn filed_under_finds_every_key_of_one_hash_and_no_other() {
        let set: BTreeSet<(u64, u64)> = [(5, 1), (7, 2), (7, 9), (7, u64::MAX), (8, 0)]
            .into_iter()
            .collect();
        assert_eq!(filed_under(&set, 7).collect::<Vec<_>>(), [2, 9, u64::MAX]);
        assert_eq!(filed_under(&set, 6).count(), 0);
    }
}
