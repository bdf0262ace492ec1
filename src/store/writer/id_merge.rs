//! The id merge: writing the log's tail's ids into `id_hashes`.
//!
//! `id_hashes` is keyed by hash, so its rows land all over the table; one
//! insert per webhook would rewrite a leaf per webhook. Instead, an
//! accepted id waits in the tail, and once [`ID_MERGE_THRESHOLD`] wait (or
//! when the writer is idle) a merge freezes them (a move of an ordered
//! set: nothing is copied or sorted while webhooks wait) and writes them
//! in hash order, [`ID_MERGE_CHUNK`] per batch while webhooks flow
//! ([`IDLE_ID_MERGE_CHUNK`] when idle), in the same commits as the
//! webhooks. Sorted chunks of a large set rewrite each page once for many
//! ids. The merge's last chunk moves the watermark, `ids_indexed_upto`, to
//! the last log key the merge covers, and only after that commit do the
//! frozen ids leave the tail. A crash mid-merge loses nothing: the next
//! start takes the ids after the watermark from the log again, and
//! writing an id twice writes the same row.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use super::{MERGE_PACE, Tables};
use crate::store::schema::IDS_INDEXED_UPTO_KEY;
use crate::store::tail::LogTail;

/// Ids waiting in the tail that start a merge.
pub const ID_MERGE_THRESHOLD: usize = 65_536;

/// Ids written per batch while webhooks flow: small, so the extra pages one
/// commit writes stay few; but at least [`MERGE_PACE`] times the batch's
/// new transactions, so the tail stays within about two merges.
pub const ID_MERGE_CHUNK: usize = 512;

/// Ids written per batch when the writer is otherwise idle.
pub const IDLE_ID_MERGE_CHUNK: usize = 16_384;

/// Where the id merge stands.
pub(super) struct IdMerge {
    /// The committed watermark.
    indexed_upto: u64,
    /// The merge in progress, if any.
    running: Option<Running>,
}

struct Running {
    /// The frozen ids, (hash, log key), in order.
    entries: Arc<BTreeSet<(u64, u64)>>,
    /// Entries up to and including this one are committed to `id_hashes`.
    merged_through: Option<(u64, u64)>,
    /// Every log entry up to this key is in `entries` or already in `id_hashes`.
    upto: u64,
}

/// The part of a merge one batch wrote.
pub(super) struct IdStep {
    /// The last entry it wrote.
    through: Option<(u64, u64)>,
    /// Whether that finished the merge.
    finished: bool,
}

/// Ids to write in a batch that created `created` transactions.
pub(super) fn chunk(idle: bool, created: usize) -> usize {
    if idle {
        IDLE_ID_MERGE_CHUNK
    } else {
        ID_MERGE_CHUNK.max(created.saturating_mul(MERGE_PACE))
    }
}

impl IdMerge {
    pub(super) fn new(indexed_upto: u64) -> IdMerge {
        IdMerge {
            indexed_upto,
            running: None,
        }
    }

    /// The committed watermark.
    pub(super) fn indexed_upto(&self) -> u64 {
        self.indexed_upto
    }

    /// Whether ids wait to be merged.
    pub(super) fn pending(&self, tail: &LogTail) -> bool {
        self.running.is_some() || tail.unindexed_ids() > 0
    }

    /// Starts a merge over every committed log entry up to `last_key` not
    /// yet in `id_hashes`, if enough ids wait (or, when idle, any).
    pub(super) fn start_if_due(&mut self, tail: &LogTail, idle: bool, last_key: u64) {
        if self.running.is_some() {
            return;
        }
        let waiting = tail.unindexed_ids();
        if waiting >= ID_MERGE_THRESHOLD || (idle && waiting > 0) {
            self.running = Some(Running {
                entries: tail.freeze_ids(),
                merged_through: None,
                upto: last_key,
            });
        }
    }

    /// Writes the next `chunk` ids of the running merge, if any; its last
    /// chunk also moves the watermark.
    pub(super) fn step(
        &self,
        tables: &mut Tables<'_>,
        chunk: usize,
    ) -> Result<Option<IdStep>, redb::Error> {
        let Some(running) = &self.running else {
            return Ok(None);
        };
        let start = running
            .merged_through
            .map_or(Bound::Unbounded, Bound::Excluded);
        let mut rest = running.entries.range((start, Bound::Unbounded)).peekable();
        let mut through = running.merged_through;
        for &entry in rest.by_ref().take(chunk) {
            tables.id_hashes.insert(entry, ())?;
            through = Some(entry);
        }
        let finished = rest.peek().is_none();
        if finished {
            tables.set_meta(IDS_INDEXED_UPTO_KEY, running.upto)?;
        }
        Ok(Some(IdStep { through, finished }))
    }

    /// After the commit of a step: at the merge's end every frozen id is in
    /// `id_hashes`, so the frozen set leaves the tail and the watermark moves.
    pub(super) fn committed(&mut self, step: &IdStep, tail: &LogTail) {
        let Some(running) = &mut self.running else {
            return;
        };
        running.merged_through = step.through;
        if step.finished {
            self.indexed_upto = running.upto;
            self.running = None;
            tail.drop_frozen_ids();
        }
    }
}
