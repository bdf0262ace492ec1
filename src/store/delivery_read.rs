//! Reads of delivery state: a transaction with its delivery fields, its
//! attempts, bulk redeliveries, counts by status. One snapshot each.

use redb::{ReadableTable, ReadableTableMetadata};

use super::attempts::{self, Attempt};
use super::read::Snapshot;
use super::redeliveries::{self, Redelivery, RedeliveryState};
use super::schema::{
    ATTEMPTS, ATTEMPTS_OPEN, ID_HASHES, LOG, LOG_BY_STATUS, REDELIVERIES, first_log_key_at,
    status_key,
};
use super::{BACKLOG_COUNT_CAP, Store, StoreError, encoding};
use crate::model::{Record, Status};

/// Most attempts `GET /v1/transactions/{id}/attempts` lists: the newest.
pub const MAX_LISTED_ATTEMPTS: usize = 1000;

/// A transaction as its view with delivery shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryView {
    /// The record, with its delivery fields.
    pub record: Record,
    /// When its job falls due (the next attempt), if PROCESSING.
    pub due_ms: Option<u64>,
    /// The number of its attempt in flight, if one is.
    pub open_attempt: Option<u32>,
}

impl Store {
    /// The log key and record stored under `transaction_id`, in `snapshot`.
    fn find_in(
        snapshot: &Snapshot,
        lookup: &mut super::ids::IdLookup<'_>,
    ) -> Result<Option<(u64, Record, Option<u64>)>, StoreError> {
        let log = snapshot.table(LOG)?;
        let found = lookup
            .find(&snapshot.table(ID_HASHES)?, &log)
            .map_err(StoreError::storage)?;
        let Some((key, _)) = found else {
            return Ok(None);
        };
        let Some(value) = log.get(key).map_err(StoreError::storage)? else {
            return Ok(None);
        };
        let (record, due) = encoding::decode_with_due(value.value())
            .map_err(|source| StoreError::Corrupt { key, source })?;
        Ok(Some((key, record, due)))
    }

    /// A transaction with where its delivery stands.
    pub fn delivery_view(&self, transaction_id: &str) -> Result<Option<DeliveryView>, StoreError> {
        let mut lookup = self.look_up_id(transaction_id);
        let snapshot = self.snapshot()?;
        Ok(Store::delivery_view_in(&snapshot, &mut lookup)?.map(|(_, view)| view))
    }

    /// [`Store::delivery_view`] in `snapshot`, with the transaction's log key.
    pub(super) fn delivery_view_in(
        snapshot: &Snapshot,
        lookup: &mut super::ids::IdLookup<'_>,
    ) -> Result<Option<(u64, DeliveryView)>, StoreError> {
        let Some((key, record, due)) = Store::find_in(snapshot, lookup)? else {
            return Ok(None);
        };
        let open_attempt = snapshot
            .table(ATTEMPTS_OPEN)?
            .get(key)
            .map_err(StoreError::storage)?
            .map(|v| v.value());
        let due_ms = due.filter(|_| record.status == Status::Processing);
        Ok(Some((
            key,
            DeliveryView {
                record,
                due_ms,
                open_attempt,
            },
        )))
    }

    /// The attempts of a transaction, oldest first (at most the newest
    /// [`MAX_LISTED_ATTEMPTS`]); `None` if there is no such transaction.
    pub fn attempts(&self, transaction_id: &str) -> Result<Option<Vec<Attempt>>, StoreError> {
        let mut lookup = self.look_up_id(transaction_id);
        let snapshot = self.snapshot()?;
        let Some((key, _, _)) = Store::find_in(&snapshot, &mut lookup)? else {
            return Ok(None);
        };
        let table = snapshot.table(ATTEMPTS)?;
        let mut found = Vec::new();
        for row in table
            .range((key, 0)..=(key, u32::MAX))
            .map_err(StoreError::storage)?
            .rev()
            .take(MAX_LISTED_ATTEMPTS)
        {
            let (k, v) = row.map_err(StoreError::storage)?;
            let stored = attempts::decode(v.value())
                .map_err(|source| StoreError::Corrupt { key, source })?;
            found.push(Attempt {
                number: k.value().1,
                stored,
            });
        }
        found.reverse();
        Ok(Some(found))
    }

    /// Every attempt of the transaction at `log_key`, oldest first (tests
    /// and `check`).
    pub fn attempts_at(&self, log_key: u64) -> Result<Vec<Attempt>, StoreError> {
        let snapshot = self.snapshot()?;
        let table = snapshot.table(ATTEMPTS)?;
        let mut found = Vec::new();
        for row in table
            .range((log_key, 0)..=(log_key, u32::MAX))
            .map_err(StoreError::storage)?
        {
            let (k, v) = row.map_err(StoreError::storage)?;
            let stored = attempts::decode(v.value()).map_err(|source| StoreError::Corrupt {
                key: log_key,
                source,
            })?;
            found.push(Attempt {
                number: k.value().1,
                stored,
            });
        }
        Ok(found)
    }

    /// A bulk redelivery.
    pub fn redelivery(&self, id: u64) -> Result<Option<Redelivery>, StoreError> {
        let snapshot = self.snapshot()?;
        let table = snapshot.table(REDELIVERIES)?;
        let Some(value) = table.get(id).map_err(StoreError::storage)? else {
            return Ok(None);
        };
        redeliveries::decode(value.value())
            .map(Some)
            .map_err(|source| StoreError::Corrupt { key: id, source })
    }

    /// The ids of the bulk redeliveries still running, oldest first.
    pub fn running_redeliveries(&self) -> Result<Vec<u64>, StoreError> {
        let snapshot = self.snapshot()?;
        let table = snapshot.table(REDELIVERIES)?;
        let mut running = Vec::new();
        for row in table.iter().map_err(StoreError::storage)? {
            let (id, value) = row.map_err(StoreError::storage)?;
            if redeliveries::decode(value.value())
                .is_ok_and(|r| r.state == RedeliveryState::Running)
            {
                running.push(id.value());
            }
        }
        Ok(running)
    }

    /// How many transactions of `status` were created strictly between the
    /// two times, and the last log key of the snapshot counted: what a new
    /// bulk redelivery matches.
    pub fn count_for_redelivery(
        &self,
        status: Status,
        created_after_ms: Option<u64>,
        created_before_ms: Option<u64>,
    ) -> Result<(u64, u64), StoreError> {
        let snapshot = self.snapshot()?;
        let upper = snapshot
            .table(LOG)?
            .last()
            .map_err(StoreError::storage)?
            .map_or(0, |(key, _)| key.value());
        let low = created_after_ms.map_or(0, |ms| first_log_key_at(ms.saturating_add(1)));
        let high = created_before_ms.map_or(u64::MAX, first_log_key_at);
        let s = status_key(status);
        let mut count = 0;
        if low < high {
            for row in snapshot
                .table(LOG_BY_STATUS)?
                .range((s, low)..(s, high))
                .map_err(StoreError::storage)?
            {
                row.map_err(StoreError::storage)?;
                count += 1;
            }
        }
        Ok((count, upper))
    }

    /// FAILED transactions, counted up to [`BACKLOG_COUNT_CAP`].
    pub fn failed_count(&self) -> Result<u64, StoreError> {
        let snapshot = self.snapshot()?;
        let table = snapshot.table(LOG_BY_STATUS)?;
        let s = status_key(Status::Failed);
        let mut count = 0;
        for row in table
            .range((s, 0)..=(s, u64::MAX))
            .map_err(StoreError::storage)?
            .take(usize::try_from(BACKLOG_COUNT_CAP).unwrap_or(usize::MAX))
        {
            row.map_err(StoreError::storage)?;
            count += 1;
        }
        Ok(count)
    }

    /// Attempts journaled as started without an outcome yet.
    pub fn open_attempts(&self) -> Result<u64, StoreError> {
        self.snapshot()?
            .table(ATTEMPTS_OPEN)?
            .len()
            .map_err(StoreError::storage)
    }
}
