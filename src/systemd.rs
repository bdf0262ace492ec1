//! systemd integration: the notify protocol of a `Type=notify` service, its
//! watchdog, and socket activation. Everything here is a no-op unless
//! systemd (or anything speaking its protocol) asked for it through the
//! environment: `NOTIFY_SOCKET`, `WATCHDOG_USEC`, `LISTEN_FDS`/`LISTEN_PID`.
//!
//! - Start-up: `EXTEND_TIMEOUT_USEC` every [`STARTUP_EXTEND_EVERY`] while the
//!   database is opened (where crash repair and schema migrations run), so a
//!   long recovery is not killed by `TimeoutStartSec=`; `READY=1` once the
//!   socket is bound and start-up recovery is done.
//! - Running: a `STATUS=` line (pending and due jobs, the writer's queue,
//!   whether writes fail; with `--deliver-to`, attempts in flight, FAILED
//!   transactions and whether delivery is paused) every [`STATUS_EVERY`],
//!   shown by `systemctl status`.
//! - Watchdog (`WatchdogSec=`): `WATCHDOG=1` every quarter of the timeout,
//!   but only while the store writer and the scheduler make progress: when
//!   either has been inside one piece of work (a batch, a round) for more
//!   than half the timeout, the pings stop and systemd restarts the service.
//! - Shutdown: `STOPPING=1` as soon as it starts; nothing after it.
//! - Socket activation: the one TCP socket systemd passes is served instead
//!   of binding `--listen` (which is then not used), so connections made
//!   while the service restarts wait in that socket's backlog.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::clock::now_ms;
use crate::heartbeat::Heartbeat;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::store::writer::WriterHandle;

/// How often `STATUS=` is refreshed while running.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// How often start-up says it is still going while the database opens.
pub const STARTUP_EXTEND_EVERY: Duration = Duration::from_secs(10);

/// How much time each of those messages asks for (from when it is sent).
pub const STARTUP_EXTEND_BY: Duration = Duration::from_secs(30);

/// Longest `STATUS=` text: a failure reason is cut to fit.
const MAX_STATUS_CHARS: usize = 200;

/// Sends notifications to the service manager, if there is one.
#[derive(Debug)]
pub struct Notifier {
    /// `NOTIFY_SOCKET` is set.
    enabled: bool,
    /// `STOPPING=1` was sent: nothing else goes out after it. Held while
    /// a status or ping is sent, so none can follow `STOPPING=1`.
    stopping: Mutex<bool>,
    /// One warning when a notification cannot be sent, not one per message.
    warned: AtomicBool,
}

impl Notifier {
    /// Enabled when the environment names a notify socket.
    #[must_use]
    pub fn from_env() -> Self {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
            stopping: Mutex::new(false),
            warned: AtomicBool::new(false),
        }
    }

    /// Whether notifications go anywhere.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states)
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(error = %e, "cannot send a notification to systemd (NOTIFY_SOCKET)");
        }
    }

    /// Asks for `by` more start-up time, saying what takes it.
    pub fn extend_startup(&self, by: Duration, status: &str) {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        self.send(&[
            NotifyState::ExtendTimeoutUsec(usec),
            NotifyState::Status(status),
        ]);
    }

    /// `READY=1` with a first status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// Sends `states` unless `STOPPING=1` went out already.
    fn send_unless_stopping(&self, states: &[NotifyState<'_>]) {
        let stopping = self.stopping.lock().unwrap_or_else(PoisonError::into_inner);
        if !*stopping {
            self.send(states);
        }
    }

    /// A new status line; nothing once stopping.
    pub fn status(&self, status: &str) {
        self.send_unless_stopping(&[NotifyState::Status(status)]);
    }

    /// `WATCHDOG=1`; nothing once stopping.
    fn watchdog(&self) {
        self.send_unless_stopping(&[NotifyState::Watchdog]);
    }

    /// `STOPPING=1`, once; no status or watchdog message follows it.
    pub fn stopping(&self) {
        let mut stopping = self.stopping.lock().unwrap_or_else(PoisonError::into_inner);
        if !*stopping {
            *stopping = true;
            self.send(&[
                NotifyState::Stopping,
                NotifyState::Status("shutting down: draining requests"),
            ]);
        }
    }
}

/// Runs `work` (opening the database: crash repair, migrations), telling
/// systemd every [`STARTUP_EXTEND_EVERY`] that start-up is still going.
pub fn while_starting<T>(notifier: &Notifier, status: &str, work: impl FnOnce() -> T) -> T {
    if !notifier.enabled() {
        return work();
    }
    let (done, finished) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            loop {
                notifier.extend_startup(STARTUP_EXTEND_BY, status);
                match finished.recv_timeout(STARTUP_EXTEND_EVERY) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        });
        let result = work();
        drop(done);
        result
    })
}

/// Why the socket passed by systemd cannot be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivationError {
    /// More than one socket was passed; webhookd serves one.
    #[error(
        "systemd passed {0} sockets (LISTEN_FDS={0}); webhookd serves exactly one: give webhookd.socket a single ListenStream="
    )]
    TooMany(usize),
    /// The descriptor is not a TCP socket.
    #[error("the socket systemd passed (LISTEN_FDS, fd 3) is not a TCP stream socket: {0}")]
    NotTcp(#[source] std::io::Error),
}

/// The listening socket systemd passed, if it passed one to this process
/// (`LISTEN_PID` is this process).
pub fn activated_listener() -> Result<Option<std::net::TcpListener>, ActivationError> {
    let mut fds = listenfd::ListenFd::from_env();
    match fds.len() {
        0 => Ok(None),
        1 => fds
            .take_tcp_listener(0)
            .map_err(ActivationError::NotTcp)?
            .ok_or_else(|| {
                ActivationError::NotTcp(std::io::Error::other("the descriptor was already taken"))
            })
            .map(Some),
        n => Err(ActivationError::TooMany(n)),
    }
}

/// The watchdog timeout systemd set for this process (`WATCHDOG_USEC`,
/// `WATCHDOG_PID`), if any.
#[must_use]
pub fn watchdog_timeout() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|t| !t.is_zero())
}

/// What the status line and the watchdog look at.
pub struct Watched {
    /// Read for the pending and due jobs.
    pub store: Store,
    /// Its queue length and recent failures.
    pub writer: WriterHandle,
    /// `(name, heartbeat)` of every thread the watchdog vouches for.
    pub heartbeats: Vec<(&'static str, Heartbeat)>,
    /// Where the daemon listens.
    pub addr: SocketAddr,
    /// Attempts in flight and the breaker, with `--deliver-to`.
    pub metrics: Arc<Metrics>,
}

/// The thread that refreshes `STATUS=` and pets the watchdog. Stop it
/// with [`Supervisor::stop`].
pub struct Supervisor {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Supervisor {
    /// Sends `READY=1` with a first status line and starts the thread, if
    /// `notifier` is enabled; the watchdog is petted if systemd set one
    /// ([`watchdog_timeout`]).
    pub fn start(notifier: Arc<Notifier>, watched: Watched) -> std::io::Result<Option<Supervisor>> {
        if !notifier.enabled() {
            return Ok(None);
        }
        notifier.ready(&status_line(&watched));
        let watchdog = watchdog_timeout();
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("systemd-notify".to_owned())
            .spawn(move || supervise(&notifier, watchdog, &watched, &stopped))?;
        Ok(Some(Supervisor { stop, thread }))
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) {
        drop(self.stop);
        if self.thread.join().is_err() {
            tracing::error!("systemd notification thread panicked");
        }
    }
}

fn supervise(
    notifier: &Notifier,
    watchdog: Option<Duration>,
    watched: &Watched,
    stopped: &mpsc::Receiver<()>,
) {
    let ping_every = watchdog.map(|timeout| timeout / 4);
    let stall_bound = watchdog.map(|timeout| timeout / 2);
    let mut next_status = Instant::now() + STATUS_EVERY;
    let mut next_ping = Instant::now();
    let mut stalled_before = false;
    loop {
        let now = Instant::now();
        if let (Some(every), Some(bound)) = (ping_every, stall_bound)
            && now >= next_ping
        {
            match stalled(&watched.heartbeats, bound) {
                None => {
                    notifier.watchdog();
                    if stalled_before {
                        tracing::info!(
                            "store writer and scheduler moving again; watchdog pings resumed"
                        );
                    }
                    stalled_before = false;
                }
                Some((name, busy)) => {
                    if !stalled_before {
                        tracing::error!(
                            thread = name,
                            busy_for = ?busy,
                            "no progress for more than half the watchdog timeout; not pinging the systemd watchdog, so systemd will restart webhookd if this goes on"
                        );
                    }
                    stalled_before = true;
                }
            }
            next_ping = now + every;
        }
        if now >= next_status {
            notifier.status(&status_line(watched));
            next_status = now + STATUS_EVERY;
        }
        let wake = ping_every.map_or(next_status, |_| next_status.min(next_ping));
        match stopped.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The first heartbeat busy for longer than `bound`, with how long.
fn stalled(
    heartbeats: &[(&'static str, Heartbeat)],
    bound: Duration,
) -> Option<(&'static str, Duration)> {
    heartbeats.iter().find_map(|(name, heartbeat)| {
        heartbeat
            .busy_for()
            .filter(|busy| *busy > bound)
            .map(|busy| (*name, busy))
    })
}

/// `pending 12, due 0, queue 0, writes ok` (or `writes failing: …`);
/// with `--deliver-to` also `in flight 3, failed 1, delivery ok` (or
/// `paused`).
#[must_use]
pub fn status_line(watched: &Watched) -> String {
    let mut jobs = match watched.store.job_stats(now_ms()) {
        Ok(jobs) => format!("pending {}, due {}", jobs.pending, jobs.due),
        Err(e) => format!("jobs unknown ({e})"),
    };
    if let Some((in_flight, paused)) = watched.metrics.delivery_now() {
        let failed = watched
            .store
            .failed_count()
            .map_or_else(|e| format!("unknown ({e})"), |n| n.to_string());
        let delivery = if paused { "paused" } else { "ok" };
        let _ = write!(
            jobs,
            ", in flight {in_flight}, failed {failed}, delivery {delivery}"
        );
    }
    let writes = watched.writer.recent_failure().map_or_else(
        || "writes ok".to_owned(),
        |e| format!("writes failing: {e}"),
    );
    let line = format!(
        "listening on {}; {jobs}, queue {}, {writes}",
        watched.addr,
        watched.writer.queued()
    );
    // A line break would end the STATUS= assignment and start another.
    let line = line.replace(['\n', '\r'], " ");
    match line.char_indices().nth(MAX_STATUS_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resting_or_moving_thread_is_not_stalled_and_a_stuck_one_is() {
        let resting = Heartbeat::new();
        resting.rest();
        let moving = Heartbeat::new();
        let stuck = Heartbeat::busy_since(Duration::from_secs(20));
        let bound = Duration::from_secs(10);
        let healthy = [("writer", moving.clone()), ("scheduler", resting.clone())];
        assert_eq!(stalled(&healthy, bound), None);
        let parts = [
            ("writer", moving),
            ("scheduler", resting),
            ("stuck", stuck.clone()),
        ];
        let (name, busy) = stalled(&parts, bound).expect("one is stuck");
        assert_eq!(name, "stuck");
        assert!(busy >= Duration::from_secs(20), "{busy:?}");
        stuck.beat();
        assert_eq!(stalled(&parts, bound), None, "a beat ends the stall");
    }
}
