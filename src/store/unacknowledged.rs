//! Log entries of a failed commit: answered 503, yet possibly in the file.
//!
//! A commit whose fsync fails has already written its pages and header
//! (into the OS page cache at least), so reopening the file can show it as
//! committed although every caller was told "not stored". The writer
//! records here the log entries such a commit created, before it answers.
//! They are never findable by id (the writer drops their ids from the log's
//! tail, and only committed entries are merged into `id_hashes`), the
//! listing skips them, and after the next successful reopen the writer
//! deletes whatever of them the file shows, in one durable commit, before
//! anything else is written ([`recovery`](super::writer::recovery)). So
//! the database ends up agreeing with the 503s, also after a restart.
//!
//! Bounded: the writer applies no batch while entries are pending (it
//! takes them back first), so they come from one failed batch at most.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A log entry a failed commit created, with the keys it was written under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) transaction_id: Box<str>,
    pub(crate) log_key: u64,
    pub(crate) created_ms: u64,
}

/// The set, shared by the writer (which fills and empties it) and readers.
#[derive(Debug, Default)]
pub(crate) struct Unacknowledged {
    /// Whether `entries` is non-empty: reads skip the lock when it is not.
    any: AtomicBool,
    entries: Mutex<Vec<Refused>>,
}

impl Unacknowledged {
    /// Adds what a failed commit created. Called before its callers are answered.
    pub(crate) fn record(&self, refused: impl IntoIterator<Item = Refused>) {
        let mut entries = self.lock();
        entries.extend(refused);
        self.any.store(!entries.is_empty(), Ordering::Release);
    }

    /// Whether reads must treat the log entry at `log_key` as not stored.
    pub(crate) fn contains_key(&self, log_key: u64) -> bool {
        self.any.load(Ordering::Acquire) && self.lock().iter().any(|r| r.log_key == log_key)
    }

    /// The pending entries, to take back.
    pub(crate) fn pending(&self) -> Vec<Refused> {
        if !self.any.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.lock().clone()
    }

    /// Forgets the entries once their taking back has committed.
    pub(crate) fn clear(&self) {
        let mut entries = self.lock();
        entries.clear();
        self.any.store(false, Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Refused>> {
        // Only whole entries are pushed or removed under the lock.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
