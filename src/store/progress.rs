//! How far a long store operation has come, told to whoever asks: a
//! whole-log walk (`export`, [`Store::check`](super::Store::check)) or a
//! migration when the file is opened.
//!
//! The store only reports through [`Progress`]; it never draws or prints
//! anything, so it stays free of terminals (the admin commands and the
//! daemon's start draw a bar from it, see `crate::progress_bar`). Each
//! operation reports one or more stages: [`Progress::start`] with the
//! stage's total, known before its first step (redb keeps every table's
//! length, so a total costs no walk), then [`Progress::advance`] until the
//! steps reach the total, then [`Progress::finish`]. A stage an error ends
//! gets no `finish`: the observer cleans up when it is dropped.

/// Receives the stages of a long store operation and their steps.
pub trait Progress {
    /// A stage of `total` steps begins; `what` names it for a person
    /// (`"migrating schema 1 to 4: reading records"`).
    fn start(&self, what: &str, total: u64);
    /// `steps` more steps of the current stage are done.
    fn advance(&self, steps: u64);
    /// The current stage is over (every step done).
    fn finish(&self);
}

/// A [`Progress`] that discards everything: for callers with nobody to tell.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _what: &str, _total: u64) {}
    fn advance(&self, _steps: u64) {}
    fn finish(&self) {}
}
