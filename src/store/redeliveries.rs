//! Bulk redeliveries: durable jobs, in the `redeliveries` table, that put
//! every FAILED (or PROCESSED) transaction of a creation-time range back to
//! PROCESSING, a chunk per writer command.
//!
//! A bulk redelivery covers the transactions up to the last log key at its
//! creation (later arrivals are not part of it) and walks the
//! `log_by_status` index of its status from the oldest, keeping a cursor
//! (the next log key to look at) that each chunk moves in the same commit
//! as the transactions it put back. So a crash loses nothing and repeats
//! nothing: the next start carries on from the cursor. `matched` is how
//! many matched when it was created; a transaction whose status changes
//! before its chunk reaches it is taken as it is then, so `done` can end
//! a little off `matched`.

use serde::{Deserialize, Serialize};

use super::encoding::{self, DecodeError};
use crate::model::Status;

/// Version byte of the layout written today.
const REDELIVERY_VERSION: u8 = 1;

/// Most transactions one chunk puts back (one writer command).
pub const REDELIVERY_CHUNK: usize = 256;

/// Whether a bulk redelivery has more to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RedeliveryState {
    /// Chunks remain.
    Running,
    /// It has reached its last transaction.
    Done,
}

impl RedeliveryState {
    /// The API's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RedeliveryState::Running => "running",
            RedeliveryState::Done => "done",
        }
    }
}

/// What a bulk redelivery matches: a status and a creation-time range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedeliveryFilter {
    /// FAILED or PROCESSED.
    pub status: Status,
    /// Only those created strictly after this time (ms).
    pub created_after_ms: Option<u64>,
    /// Only those created strictly before this time (ms).
    pub created_before_ms: Option<u64>,
}

/// A bulk redelivery as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redelivery {
    /// What it matches.
    pub filter: RedeliveryFilter,
    /// The last log key at its creation: nothing after it is part of it.
    pub upper_key: u64,
    /// The next log key to look at.
    pub cursor: u64,
    /// How many transactions matched when it was created.
    pub matched: u64,
    /// How many it has put back to PROCESSING.
    pub done: u64,
    /// Running or done.
    pub state: RedeliveryState,
}

pub(crate) fn encode(redelivery: &Redelivery) -> Vec<u8> {
    let mut out = Vec::new();
    encoding::encode_versioned(REDELIVERY_VERSION, redelivery, &mut out);
    out
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Redelivery, DecodeError> {
    encoding::decode_versioned(REDELIVERY_VERSION, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redeliveries_round_trip() {
        let redelivery = Redelivery {
            filter: RedeliveryFilter {
                status: Status::Failed,
                created_after_ms: Some(1),
                created_before_ms: None,
            },
            upper_key: 99,
            cursor: 7,
            matched: 3,
            done: 1,
            state: RedeliveryState::Running,
        };
        assert_eq!(decode(&encode(&redelivery)).unwrap(), redelivery);
        assert!(decode(&[9]).is_err());
    }
}
