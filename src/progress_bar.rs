//! Progress bars for the long admin commands (`export`, `check`, `backup`)
//! and a migration at start, from what the store reports through
//! [`Progress`].
//!
//! A bar is drawn on stderr, and only when stderr is a terminal and
//! `--quiet` is not given; otherwise nothing at all is written, so output
//! that goes to a file, a pipe or the journal is the same with or without
//! bars. Nothing is ever written to stdout. A stage's bar is drawn as soon
//! as it starts (its total is known then) and cleared when it ends, so what
//! is printed after it (a summary, a log line, an error) stands alone.

use std::io::IsTerminal;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::store::Progress;

/// How often a bar is redrawn even when no step is reported (during a long
/// commit, say), so its elapsed time and rate keep moving.
const STEADY_TICK: Duration = Duration::from_millis(200);

/// A stage counted in steps: what, a bar as wide as the terminal leaves,
/// count, rate (whole steps per second) and time left.
const COUNT_TEMPLATE: &str = "{msg} [{wide_bar}] {human_pos}/{human_len} ({per_sec:0}, ETA {eta})";

/// A stage counted in bytes.
const BYTES_TEMPLATE: &str =
    "{msg} [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta})";

/// Draws each stage reported to it as a bar on stderr, if it draws at all
/// ([`TerminalProgress::on_stderr`]). Any bar still shown when it is
/// dropped (a stage an error ended) is cleared.
pub struct TerminalProgress {
    draws: bool,
    /// The bar of the current stage, if one is shown.
    bar: Mutex<Option<ProgressBar>>,
}

impl TerminalProgress {
    /// Draws if stderr is a terminal, unless `quiet`.
    #[must_use]
    pub fn on_stderr(quiet: bool) -> Self {
        TerminalProgress {
            draws: !quiet && std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
        }
    }

    /// Whether it draws anything.
    #[must_use]
    pub fn draws(&self) -> bool {
        self.draws
    }

    /// A stage of `total` bytes begins (the bar shows sizes and bytes per second).
    pub fn start_bytes(&self, what: &str, total: u64) {
        self.start_with(what, total, BYTES_TEMPLATE);
    }

    /// Runs `print` with the bar hidden, for a line written to stderr while
    /// a stage is under way; the bar is drawn again below it.
    pub fn suspend<R>(&self, print: impl FnOnce() -> R) -> R {
        match &*self.current() {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<ProgressBar>> {
        self.bar.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start_with(&self, what: &str, total: u64, template: &'static str) {
        if !self.draws {
            return;
        }
        let mut current = self.current();
        if let Some(previous) = current.take() {
            previous.finish_and_clear();
        }
        let style = ProgressStyle::with_template(template)
            .expect("the templates are constants that parse")
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
            .with_style(style)
            .with_message(what.to_owned());
        // Drawn now rather than at the first step or tick: a stage that
        // ends in milliseconds still shows (and tests see it).
        bar.tick();
        bar.enable_steady_tick(STEADY_TICK);
        *current = Some(bar);
    }
}

impl Progress for TerminalProgress {
    fn start(&self, what: &str, total: u64) {
        self.start_with(what, total, COUNT_TEMPLATE);
    }

    fn advance(&self, steps: u64) {
        if let Some(bar) = &*self.current() {
            bar.inc(steps);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.current().take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for TerminalProgress {
    fn drop(&mut self) {
        self.finish();
    }
}
