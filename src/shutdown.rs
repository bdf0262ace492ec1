//! SIGTERM/SIGINT handling (signal-hook): the first signal asks for a
//! graceful shutdown; a second one ends the process at once, which is safe
//! because everything acknowledged is already on disk.

use std::thread::JoinHandle;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};
use tokio::sync::watch;

/// Exit code when a second signal cuts a graceful shutdown short.
pub const FORCED_EXIT_CODE: i32 = 130;

/// Installed signal handlers and the thread that watches them.
pub struct ShutdownSignals {
    handle: Handle,
    thread: JoinHandle<()>,
    requested: watch::Receiver<bool>,
}

impl ShutdownSignals {
    /// Installs the handlers. Signals that arrive from now on are not lost.
    pub fn install() -> std::io::Result<Self> {
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        let handle = signals.handle();
        let (notify, requested) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("signals".to_owned())
            .spawn(move || {
                let mut seen = 0;
                for signal in signals.forever() {
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

    /// Stops watching signals and joins the watcher thread.
    pub fn close(self) {
        self.handle.close();
        if self.thread.join().is_err() {
            tracing::error!("signal thread panicked");
        }
    }
}
