//! Tombstones: what deduplicates a transaction after retention purged it.
//!
//! A purge deletes the record, its listing and retention rows, but keeps
//! its `id_hashes` row and writes a tombstone under its log key in
//! `id_tombstones`: the end of its dedup window (the purge time plus the
//! `--dedup-window` in force then), a SHA-256 digest of its fields, and its
//! id. A lookup by id that meets an `id_hashes` candidate without a record
//! reads the tombstone there: the same id within the window is known, so a
//! redelivery or replay with the same fields is a duplicate (of a
//! PROCESSED transaction: only those are purged) and one with other fields
//! a conflict, exactly as before the purge. The id is compared in full, so
//! two ids that share a hash never make a new transaction look known.
//! Nothing else about the transaction is kept.
//!
//! Only the writer's acceptance consults tombstones; a read by id of a
//! purged transaction finds nothing. Once its window has ended, a
//! tombstone counts for nothing, and retention deletes it with its
//! `id_hashes` row, oldest log key first, in bounded batches. A tombstone
//! whose window ends before that of an older one (after `--dedup-window`
//! was shortened) waits for it: it no longer counts meanwhile.

use redb::{ReadableTable, Table};
use sha2::{Digest, Sha256};

use super::ids::IdHasher;
use crate::model::NewTransaction;

/// The tombstone table's value: (end of the window, fields digest, id).
pub(crate) type Tombstone<'a> = (u64, [u8; 32], &'a str);

/// A stable digest of the fields two payloads must share to be "the same"
/// (the equality deduplication uses): the id, the accounts, the amount by
/// value, the currency. Stored on disk, so it never changes between builds.
pub(crate) fn fields_digest(transaction: &NewTransaction) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"webhookd tombstone fields v1\0");
    for text in [
        &transaction.transaction_id,
        &transaction.source_account,
        &transaction.destination_account,
    ] {
        hasher.update((text.len() as u64).to_be_bytes());
        hasher.update(text.as_bytes());
    }
    // Normalised, so 1500.50 and 1500.5 (equal amounts) give one digest.
    hasher.update(transaction.amount.normalize().serialize());
    hasher.update(transaction.currency.bytes());
    hasher.finalize().into()
}

/// The fields digest of `id`'s tombstone among `keys` (log keys `id_hashes`
/// filed its hash under that have no record), if one's window is still
/// open at `now_ms`.
pub(crate) fn find(
    tombstones: &impl ReadableTable<u64, Tombstone<'static>>,
    keys: &[u64],
    id: &str,
    now_ms: u64,
) -> Result<Option<[u8; 32]>, redb::StorageError> {
    for &key in keys {
        if let Some(stored) = tombstones.get(key)? {
            let (until_ms, digest, purged_id) = stored.value();
            if purged_id == id && now_ms < until_ms {
                return Ok(Some(digest));
            }
        }
    }
    Ok(None)
}

/// Deletes up to `limit` tombstones whose window ended by `now_ms`, with
/// their `id_hashes` rows, oldest log key first; stops at the first whose
/// window is still open. Returns how many it deleted.
pub(crate) fn expire(
    tombstones: &mut Table<'_, u64, Tombstone<'static>>,
    id_hashes: &mut Table<'_, (u64, u64), ()>,
    hasher: &IdHasher,
    now_ms: u64,
    limit: usize,
) -> Result<u64, redb::StorageError> {
    let mut expired = Vec::new();
    for row in tombstones.iter()?.take(limit) {
        let (key, value) = row?;
        let (until_ms, _, id) = value.value();
        if until_ms > now_ms {
            break;
        }
        expired.push((key.value(), hasher.hash(id)));
    }
    for &(key, hash) in &expired {
        tombstones.remove(key)?;
        id_hashes.remove((hash, key))?;
    }
    Ok(expired.len() as u64)
}

#[cfg(test)]
mod tests {
    use redb::backends::InMemoryBackend;
    use redb::{Database, ReadableTableMetadata, TableDefinition};

    use super::*;
    use crate::model::{Currency, parse_amount};

    fn transaction(id: &str, amount: &str, currency: &str) -> NewTransaction {
        NewTransaction {
            transaction_id: id.to_owned(),
            source_account: "acc_s".to_owned(),
            destination_account: "acc_d".to_owned(),
            amount: parse_amount(amount).unwrap(),
            currency: Currency::parse(currency).unwrap(),
        }
    }

    #[test]
    fn the_digest_is_equal_exactly_when_the_payloads_are_the_same() {
        let a = transaction("txn_1", "1500.50", "inr");
        let b = transaction("txn_1", "1500.5", "INR");
        assert_eq!(a, b);
        assert_eq!(fields_digest(&a), fields_digest(&b));
        for other in [
            transaction("txn_2", "1500.5", "INR"),
            transaction("txn_1", "1500.51", "INR"),
            transaction("txn_1", "1500.5", "EUR"),
            NewTransaction {
                source_account: "acc_d".to_owned(),
                destination_account: "acc_s".to_owned(),
                ..a.clone()
            },
        ] {
            assert_ne!(a, other);
            assert_ne!(fields_digest(&a), fields_digest(&other), "{other:?}");
        }
        // Stored on disk: these bytes must never change.
        assert_eq!(hex::encode(fields_digest(&a)), GOLDEN);
    }

    /// `fields_digest` of `txn_1`, `acc_s` → `acc_d`, 1500.5 INR, computed
    /// apart from this code (Python's hashlib over the same bytes: the tag,
    /// each text with its length as a big-endian u64, `Decimal::serialize`
    /// of 1500.5, `INR`).
    const GOLDEN: &str = "1584549e9e717e6d95b195f2e8ad57b3da4ab188b45207a9a977f6ecb1cac431";

    #[test]
    fn a_tombstone_answers_only_for_its_own_id_and_only_within_its_window() {
        const TOMBSTONES: TableDefinition<u64, Tombstone<'static>> =
            TableDefinition::new("id_tombstones");
        const ID_HASHES: TableDefinition<(u64, u64), ()> = TableDefinition::new("id_hashes");
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        let hasher = IdHasher::for_tests(1, 2);
        let txn = db.begin_write().unwrap();
        {
            let mut tombstones = txn.open_table(TOMBSTONES).unwrap();
            let mut id_hashes = txn.open_table(ID_HASHES).unwrap();
            for (key, id, until) in [(1, "txn_a", 100), (2, "txn_b", 300), (3, "txn_c", 200)] {
                tombstones
                    .insert(key, (until, [key as u8; 32], id))
                    .unwrap();
                id_hashes.insert((hasher.hash(id), key), ()).unwrap();
            }
            // Two ids under one hash (keys 1 and 2 as candidates): each
            // finds its own tombstone, a third id none.
            assert_eq!(
                find(&tombstones, &[1, 2], "txn_b", 50).unwrap(),
                Some([2; 32])
            );
            assert_eq!(
                find(&tombstones, &[1, 2], "txn_a", 50).unwrap(),
                Some([1; 32])
            );
            assert_eq!(find(&tombstones, &[1, 2], "txn_new", 50).unwrap(), None);
            // Its window over, a tombstone counts for nothing.
            assert_eq!(find(&tombstones, &[1], "txn_a", 100).unwrap(), None);

            // Expiry goes in log-key order and stops at an open window.
            let expired = expire(&mut tombstones, &mut id_hashes, &hasher, 250, 10).unwrap();
            assert_eq!(expired, 1);
            assert!(tombstones.get(1).unwrap().is_none());
            assert!(id_hashes.get((hasher.hash("txn_a"), 1)).unwrap().is_none());
            assert!(tombstones.get(3).unwrap().is_some(), "waits behind key 2");
            // Bounded by the limit.
            assert_eq!(
                expire(&mut tombstones, &mut id_hashes, &hasher, 400, 1).unwrap(),
                1
            );
            assert_eq!(
                expire(&mut tombstones, &mut id_hashes, &hasher, 400, 1).unwrap(),
                1
            );
            assert_eq!(tombstones.len().unwrap(), 0);
            assert_eq!(id_hashes.len().unwrap(), 0);
        }
    }
}
