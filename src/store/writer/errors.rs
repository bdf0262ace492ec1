//! What the writer answers when it cannot do what was asked, and why it
//! cannot start.

use std::sync::Arc;

use crate::store::StoreError;
use crate::store::encoding::DecodeError;

/// Why the writer could not do what was asked. All of these mean "not
/// stored; try again later" to a client. Clone, since one failed commit is
/// reported to every caller of its batch: sources are shared by `Arc`.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The queue in front of the writer is full (overload).
    #[error("the write queue is full")]
    QueueFull,
    /// The writer has stopped (shutting down).
    #[error("the store writer is shut down")]
    Closed,
    /// The write transaction or its commit failed; nothing of the batch was stored.
    #[error("storage cannot accept writes: {0}")]
    Storage(#[source] Arc<StoreError>),
    /// A write failed earlier and the database could not be reopened yet;
    /// nothing was tried.
    #[error("storage failed and the database could not be reopened yet: {0}")]
    NotReopened(#[source] Arc<StoreError>),
    /// The record already stored under this id cannot be decoded.
    #[error("stored record {key} cannot be read: {source}")]
    Corrupt {
        /// Its log key.
        key: u64,
        /// Why it does not decode.
        #[source]
        source: Arc<DecodeError>,
    },
}

/// Why the writer could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// Reading where the log and the merges stand failed.
    #[error("cannot read the database to start the store writer: {0}")]
    Read(#[from] StoreError),
    /// A thread could not be started.
    #[error("cannot start the store writer's threads: {0}")]
    Thread(#[source] std::io::Error),
    /// The delivery attempts the last stop cut off could not be recorded.
    #[error("cannot record the delivery attempts the last stop cut off: {0}")]
    Interrupted(#[source] WriteError),
}
