//! Signal handling (signal-hook): the first SIGTERM/SIGINT asks for a
//! graceful shutdown; a second one ends the process at once, which is safe
//! because everything acknowledged is already on disk. SIGHUP asks for a
//! reload of the certificate, key and admin token (see [`crate::reload`])
//! and never ends the daemon.

use std::thread::JoinHandle;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};
use tokio::sync::watch;

/// Exit code when a second signal cuts a graceful shutdown short.
pub const FORCED_EXIT_CODE: i32 = 130;

/// Installed signal handlers and the thread that watches them.
pub struct ShutdownSignals {
    handle: Handle,
    thread: JoinHandle<()>,
    requested: watch::Receiver<bool>,
    reloads: watch::Receiver<u64>,
}

impl ShutdownSignals {
    /// Installs the handlers. Signals that arrive from now on are not lost.
    pub fn install() -> std::io::Result<Self> {
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        let handle = signals.handle();
        let (notify, requested) = watch::channel(false);
        let (reload, reloads) = watch::channel(0u64);
        let thread = std::thread::Builder::new()
            .name("signals".to_owned())
            .spawn(move || {
                let mut seen = 0;
                for signal in signals.forever() {
                    if signal == SIGHUP {
                        tracing::info!(signal, "reload requested");
                        reload.send_modify(|count| *count += 1);
                        continue;
                    }
                    seen += 1;
                    if seen == 1 {
                        tracing::info!(signal, "shutdown requested");
                        let _ = notify.send(true);
                    } else {
                        tracing::warn!(signal, "second signal: exiting now");
                        std::process::exit(FORCED_EXIT_CODE);
                    }
                }
            })?;
        Ok(ShutdownSignals {
            handle,
            thread,
            requested,
            reloads,
        })
    }

    /// Completes when shutdown has been requested.
    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut requested = self.requested.clone();
        async move {
            // An error means the watcher thread is gone, which only
            // happens in `close`; treat it as a request too.
            let _ = requested.wait_for(|&r| r).await;
        }
    }

    /// The number of SIGHUPs so far; it changes with each one, also for
    /// those that arrived before this was called.
    #[must_use]
    pub fn reloads(&self) -> watch::Receiver<u64> {
        self.reloads.clone()
    }

    /// Stops watching signals and joins the watcher thread.
    pub fn close(self) {
        self.handle.close();
        if self.thread.join().is_err() {
            tracing::error!("signal thread panicked");
        }
    }
}
