//! Redelivery: putting FAILED or PROCESSED transactions back to
//! PROCESSING, one by id or a bulk redelivery a chunk at a time.

use redb::ReadableTable;

use super::Writer;
use super::delivery::{Step, Stored, read};
use super::delivery_commands::RedeliverOutcome;
use super::ops::Tables;
use crate::model::Status;
use crate::store::redeliveries::{
    self, REDELIVERY_CHUNK, Redelivery, RedeliveryFilter, RedeliveryState,
};
use crate::store::schema::{REDELIVERIES, first_log_key_at, status_key};

impl Writer {
    /// Puts a FAILED or PROCESSED transaction back to PROCESSING with its
    /// schedule started afresh: due after the schedule's first wait.
    pub(super) fn redeliver_key(
        &mut self,
        tables: &mut Tables<'_>,
        key: u64,
        stored: Stored,
        step: &mut Step<'_>,
    ) -> Result<(), redb::Error> {
        let mut record = stored.record;
        let old = record.status;
        tables.log_by_status.remove((status_key(old), key))?;
        if let (Status::Processed, Some(at)) = (old, record.processed_at_ms) {
            tables.log_by_processed_at.remove((at, key))?;
        }
        record.status = Status::Processing;
        record.processed_at_ms = None;
        record.delivery.failed_at_ms = None;
        record.delivery.schedule_pos = 0;
        let first_wait = self.retry.as_ref().and_then(|r| r.wait_ms_before(0));
        let next_due = step.now_ms.saturating_add(first_wait.unwrap_or(0));
        let has_rows = key <= step.rows_upto;
        if has_rows {
            tables
                .log_by_status
                .insert((status_key(Status::Processing), key), ())?;
        }
        self.write_record(tables, key, &record, Some(next_due))?;
        // Its old job is gone (completed): only a new one is written.
        self.move_job(tables, key, None, next_due, has_rows, step)?;
        step.applied.wrote_data = true;
        Ok(())
    }

    pub(super) fn redeliver_id(
        &mut self,
        tables: &mut Tables<'_>,
        transaction_id: &str,
        step: &mut Step<'_>,
    ) -> Result<RedeliverOutcome, redb::Error> {
        let mut lookup = self.store.look_up_id(transaction_id);
        let Some((key, _)) = lookup.find(&tables.id_hashes, &tables.log)? else {
            return Ok(RedeliverOutcome::NotFound);
        };
        let Some(stored) = read(tables, key)? else {
            return Ok(RedeliverOutcome::NotFound);
        };
        if stored.record.status == Status::Processing {
            return Ok(RedeliverOutcome::AlreadyProcessing);
        }
        self.redeliver_key(tables, key, stored, step)?;
        Ok(RedeliverOutcome::Redelivered)
    }

    /// The next chunk of a bulk redelivery; `None` if there is no such one.
    pub(super) fn redelivery_step(
        &mut self,
        tables: &mut Tables<'_>,
        id: u64,
        step: &mut Step<'_>,
    ) -> Result<Option<Redelivery>, redb::Error> {
        let mut table = tables.txn.open_table(REDELIVERIES)?;
        let Some(mut redelivery) = table
            .get(id)?
            .and_then(|v| redeliveries::decode(v.value()).ok())
        else {
            return Ok(None);
        };
        if redelivery.state == RedeliveryState::Done {
            return Ok(Some(redelivery));
        }
        let s = status_key(redelivery.filter.status);
        let high = redelivery
            .filter
            .created_before_ms
            .map_or(u64::MAX, |ms| first_log_key_at(ms).saturating_sub(1));
        let high = high.min(redelivery.upper_key);
        let mut keys = Vec::new();
        if redelivery.cursor <= high {
            for row in tables
                .log_by_status
                .range((s, redelivery.cursor)..=(s, high))?
                .take(REDELIVERY_CHUNK)
            {
                keys.push(row?.0.value().1);
            }
        }
        for &key in &keys {
            if let Some(stored) = read(tables, key)?
                && stored.record.status == redelivery.filter.status
            {
                self.redeliver_key(tables, key, stored, step)?;
                redelivery.done += 1;
            }
        }
        match keys.last() {
            Some(&last) if keys.len() == REDELIVERY_CHUNK => redelivery.cursor = last + 1,
            _ => redelivery.state = RedeliveryState::Done,
        }
        table.insert(id, redeliveries::encode(&redelivery).as_slice())?;
        step.applied.wrote_data = true;
        Ok(Some(redelivery))
    }
}

pub(super) fn create_redelivery(
    tables: &mut Tables<'_>,
    filter: RedeliveryFilter,
    matched: u64,
    upper_key: u64,
    step: &mut Step<'_>,
) -> Result<u64, redb::Error> {
    let mut table = tables.txn.open_table(REDELIVERIES)?;
    let id = table.last()?.map_or(1, |(key, _)| key.value() + 1);
    let cursor = filter
        .created_after_ms
        .map_or(0, |ms| first_log_key_at(ms.saturating_add(1)));
    let redelivery = Redelivery {
        filter,
        upper_key,
        cursor,
        matched,
        done: 0,
        state: RedeliveryState::Running,
    };
    table.insert(id, redeliveries::encode(&redelivery).as_slice())?;
    step.applied.wrote_data = true;
    Ok(id)
}
