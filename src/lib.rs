//! webhookd: a durable payment-webhook receiver on one embedded redb file.
//!
//! - [`cli`]: command line, environment variables, logging set-up;
//! - [`clock`]: the wall clock in milliseconds, the unit of every stored time;
//! - [`currency`]: ISO 4217 minor units, for amounts sent in minor units;
//! - [`admin`]: `inspect`, `export`, `check`, `backup` on a stopped daemon's data dir;
//! - [`check_map`]: `check-map`, a sample body through a payload map, offline;
//! - [`http`]: the hyper server, routing, body limits, the JSON API and its errors;
//! - [`metrics`]: counters, histograms and gauges for `GET /metrics`;
//! - [`model`]: the transaction record, payload parsing and validation, exact amounts;
//! - [`payload_map`]: `--payload-map`, a provider's body mapped onto a transaction;
//! - [`progress_bar`]: progress of the long admin commands and of a migration
//!   at start, as a bar on a terminal's stderr;
//! - [`store`]: the redb file (tables, the log and its tail, merges,
//!   migrations, recovery after storage faults; the design is in its doc)
//!   and the single group-committing writer ([`store::writer`]), the
//!   durable-write path;
//! - [`scheduler`]: fires due jobs, in due order, from the store;
//! - [`retention`]: `--retention`, deletes old PROCESSED transactions;
//! - [`signature`]: optional webhook signature verification;
//! - [`shutdown`]: SIGTERM/SIGINT handling;
//! - [`systemd`]: readiness, status, watchdog and socket activation under systemd;
//! - [`heartbeat`]: the progress marks the watchdog reads from the writer and scheduler;
//! - [`view`]: how a transaction and a time are shown (API, `inspect`, `export`, logs).
//!
//! Each depends only on those below it: `http` on `store`, `metrics`,
//! `payload_map` and `model`; `store` on `metrics`, `model` and `clock`;
//! `payload_map` on `currency` and `model`; `cli` and `model` on none of
//! them.
//!
//! [`run`] wires them together and shuts them down in order: stop accepting
//! → drain requests → stop the scheduler → flush and stop the writer.
//! [`run_with`] does the same on storage and with a shutdown trigger chosen
//! by the caller, so tests can run the real server in-process.

#![forbid(unsafe_code)]

pub mod admin;
pub mod check_map;
pub mod cli;
pub mod clock;
pub mod currency;
pub mod heartbeat;
pub mod http;
pub mod metrics;
pub mod model;
pub mod payload_map;
pub mod progress_bar;
pub mod retention;
pub mod scheduler;
pub mod shutdown;
pub mod signature;
pub mod store;
pub mod systemd;
pub mod view;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::Config;
use crate::retention::Retention;
use crate::scheduler::Scheduler;
use crate::shutdown::ShutdownSignals;
use crate::store::writer::{self, WriterHandle, WriterThread};
use crate::store::{FileOpener, OpenError, StorageOpener, Store};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The signature verification settings are unusable.
    #[error(transparent)]
    Signature(#[from] signature::ConfigError),
    /// The `--payload-map` file cannot be used.
    #[error(transparent)]
    PayloadMap(#[from] payload_map::LoadError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A thread, the runtime or the signal handlers could not be started.
    #[error("cannot start the {what}: {source}")]
    Start {
        /// Which part.
        what: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The store writer could not start.
    #[error(transparent)]
    Writer(#[from] writer::SpawnError),
    /// The socket systemd passed cannot be served.
    #[error(transparent)]
    Activation(#[from] systemd::ActivationError),
    /// The store writer thread panicked; acknowledged data is still on disk.
    #[error("the store writer thread panicked")]
    WriterPanicked,
}

impl Error {
    /// The process exit code for this error: [`cli::USAGE_EXIT_CODE`] (2)
    /// for a configuration error (a flag, an environment variable or a
    /// file they name), which a restart cannot fix; [`cli::FAILURE_EXIT_CODE`]
    /// (1) for a failure at run time.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Signature(_) | Error::Activation(_) | Error::PayloadMap(_) => {
                cli::USAGE_EXIT_CODE
            }
            Error::Open(_)
            | Error::Listen { .. }
            | Error::Start { .. }
            | Error::Writer(_)
            | Error::WriterPanicked => cli::FAILURE_EXIT_CODE,
        }
    }
}

fn start_error(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Start { what, source }
}

/// How long the runtime waits for outstanding blocking reads at exit.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// A future that completes when the daemon should shut down.
type Trigger = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What [`run_with`] lets its caller choose; the default is what [`run`] does.
pub struct RunOptions {
    storage: Box<dyn StorageOpener>,
    shutdown: Option<Trigger>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            storage: Box::new(FileOpener),
            shutdown: None,
        }
    }
}

impl RunOptions {
    /// Opens the database file's storage with `opener` (e.g. a backend
    /// that injects faults) instead of [`FileOpener`].
    #[must_use]
    pub fn storage(mut self, opener: impl StorageOpener + 'static) -> Self {
        self.storage = Box::new(opener);
        self
    }

    /// Shuts down gracefully when `trigger` completes, instead of on
    /// SIGTERM/SIGINT (no signal handlers are installed then).
    #[must_use]
    pub fn shutdown_on(mut self, trigger: impl Future<Output = ()> + Send + 'static) -> Self {
        self.shutdown = Some(Box::pin(trigger));
        self
    }
}

/// What ends [`run_with`]: the caller's trigger, or else SIGTERM/SIGINT
/// through the signal handlers installed here (returned to be closed).
fn shutdown_trigger(trigger: Option<Trigger>) -> Result<(Option<ShutdownSignals>, Trigger), Error> {
    if let Some(trigger) = trigger {
        return Ok((None, trigger));
    }
    let signals = ShutdownSignals::install().map_err(start_error("signal handlers"))?;
    let requested = Box::pin(signals.requested());
    Ok((Some(signals), requested))
}

/// One warning at start when the port is reachable from other hosts and
/// nothing checks who posts to it.
fn warn_if_open_to_others(listen: SocketAddr, signed: bool) {
    if !listen.ip().to_canonical().is_loopback() && !signed {
        tracing::warn!(
            %listen,
            "listening beyond this host without --signature-scheme: anyone who can reach {listen} can store webhooks and read every transaction"
        );
    }
}

/// The listener: the socket systemd passed if it passed one (then
/// `--listen` is not used), else `listen` bound now.
fn listen(
    runtime: &tokio::runtime::Runtime,
    listen: SocketAddr,
    activated: Option<std::net::TcpListener>,
) -> Result<(tokio::net::TcpListener, SocketAddr), Error> {
    let socket_activated = activated.is_some();
    let listener = match activated {
        Some(socket) => socket
            .set_nonblocking(true)
            .and_then(|()| {
                let _runtime = runtime.enter();
                tokio::net::TcpListener::from_std(socket)
            })
            .map_err(|source| Error::Start {
                what: "listener systemd passed",
                source,
            })?,
        None => runtime
            .block_on(tokio::net::TcpListener::bind(listen))
            .map_err(|source| Error::Listen {
                addr: listen,
                source,
            })?,
    };
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: listen,
        source,
    })?;
    if socket_activated {
        tracing::info!(
            %addr,
            "serving the socket systemd passed (socket activation); --listen is not used"
        );
    }
    Ok((listener, addr))
}

/// The start-up line: version, settings, pending jobs, and the ready line's
/// `listening on` text.
fn log_ready(config: &Config, addr: SocketAddr, signed: bool, store: &Store) {
    let pending_jobs = store.pending_jobs().unwrap_or_default();
    warn_if_open_to_others(addr, signed);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        data_dir = %config.data_dir.display(),
        process_delay = %humantime::format_duration(config.process_delay),
        max_body_bytes = config.max_body_bytes,
        queue_depth = config.queue_depth,
        max_connections = config.max_connections,
        signatures = config.signature_scheme.map_or("off", signature::Scheme::name),
        payload_map = %config
            .payload_map
            .as_deref()
            .map_or_else(|| "off".into(), |path| path.display().to_string()),
        access_log = config.access_log,
        retention = %config
            .retention
            .map_or_else(|| "off".to_owned(), |r| humantime::format_duration(r).to_string()),
        dedup_window = %humantime::format_duration(config.dedup_window),
        pending_jobs,
        "{}",
        http::ready_line(addr)
    );
}

/// Runs the daemon until SIGTERM/SIGINT, then shuts it down in order.
///
/// Nothing is logged before the store is open, so a start-up failure is
/// the only line on stderr.
pub fn run(config: &Config) -> Result<(), Error> {
    run_with(config, RunOptions::default(), |_| {})
}

/// [`run`] with `options`; calls `on_ready` with the bound address once it
/// serves (right after the `listening on` line) and returns once shut down.
pub fn run_with(
    config: &Config,
    options: RunOptions,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), Error> {
    // Checked before the store is touched: bad signature settings change nothing.
    let verifier = signature::Verifier::from_config(
        config.signature_scheme,
        config.signing_secrets_file.as_deref(),
        config.signature_header.as_deref(),
    )?;
    let payload_map = config
        .payload_map
        .as_deref()
        .map(payload_map::PayloadMap::load)
        .transpose()?;
    let activated = systemd::activated_listener()?;
    let notifier = Arc::new(systemd::Notifier::from_env());
    // Crash repair and schema migrations run here; systemd is told that
    // start-up goes on for as long as they take, and a terminal sees a
    // migration's progress (a bar, cleared before the next log line).
    let store = systemd::while_starting(
        &notifier,
        "opening the database (repairing or migrating it if needed)",
        || {
            let progress = progress_bar::TerminalProgress::on_stderr(config.quiet);
            Store::open_with(&config.data_dir, &*options.storage, &progress)
        },
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("http")
        .build()
        .map_err(start_error("async runtime"))?;
    let (listener, addr) = listen(&runtime, config.listen, activated)?;

    let metrics = Arc::new(metrics::Metrics::new());
    let parts = Parts::start(config, &store, &metrics)?;
    let (signals, shutdown) = match shutdown_trigger(options.shutdown) {
        Ok(trigger) => trigger,
        Err(e) => {
            // The start-up error is the one reported.
            let _ = parts.stop();
            return Err(e);
        }
    };

    log_ready(config, addr, verifier.is_some(), &store);
    let watched = systemd::Watched {
        store: store.clone(),
        writer: parts.writer.clone(),
        heartbeats: vec![
            ("store writer", parts.writer.heartbeat()),
            ("scheduler", parts.scheduler.heartbeat()),
        ],
        addr,
    };
    let supervisor = match systemd::Supervisor::start(Arc::clone(&notifier), watched) {
        Ok(supervisor) => supervisor,
        Err(source) => {
            let _ = parts.stop();
            return Err(Error::Start {
                what: "systemd notification thread",
                source,
            });
        }
    };
    on_ready(addr);
    let limits = http::Limits {
        max_body_bytes: config.max_body_bytes,
        max_connections: usize::try_from(config.max_connections).unwrap_or(usize::MAX),
        header_read_timeout: config.header_read_timeout,
        body_read_timeout: config.body_read_timeout,
        write_timeout: config.write_timeout,
    };
    let state = Arc::new(
        http::AppState::new(
            store,
            parts.writer.clone(),
            limits,
            verifier,
            config.access_log,
            metrics,
        )
        .with_payload_map(payload_map),
    );
    let shutdown = {
        let notifier = Arc::clone(&notifier);
        async move {
            shutdown.await;
            notifier.stopping();
        }
    };
    runtime.block_on(http::serve(
        listener,
        state,
        shutdown,
        config.shutdown_grace,
    ));
    if let Some(supervisor) = supervisor {
        supervisor.stop();
    }

    // Every connection has ended, so the scheduler and retention hold the
    // last writer handles; once they stop, the writer drains its queue and
    // exits.
    let stopped = parts.stop();
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    if let Some(signals) = signals {
        signals.close();
    }
    stopped?;
    tracing::info!("stopped; every acknowledged transaction is on disk");
    Ok(())
}

/// The threads behind the server: the writer, and those that send it work.
struct Parts {
    writer: WriterHandle,
    writer_thread: WriterThread,
    scheduler: Scheduler,
    retention: Option<Retention>,
}

impl Parts {
    /// Starts the writer, the scheduler and (with `--retention`) retention.
    /// If one cannot start, those already started are stopped in order.
    fn start(
        config: &Config,
        store: &Store,
        metrics: &Arc<metrics::Metrics>,
    ) -> Result<Parts, Error> {
        let (waker, nudged) = scheduler::waker();
        let (writer, writer_thread) = writer::spawn(
            store.clone(),
            config.process_delay,
            usize::try_from(config.queue_depth).unwrap_or(usize::MAX),
            Arc::clone(metrics),
            {
                let waker = waker.clone();
                move |due| waker.new_job_due(due)
            },
        )?;
        let scheduler = match Scheduler::start(store.clone(), writer.clone(), waker, nudged) {
            Ok(scheduler) => scheduler,
            Err(source) => {
                drop(writer);
                let _ = writer_thread.join();
                return Err(Error::Start {
                    what: "scheduler",
                    source,
                });
            }
        };
        let retention = match config
            .retention
            .map(|age| Retention::start(writer.clone(), age, config.dedup_window))
            .transpose()
        {
            Ok(retention) => retention,
            Err(source) => {
                drop(writer);
                scheduler.stop();
                let _ = writer_thread.join();
                return Err(Error::Start {
                    what: "retention",
                    source,
                });
            }
        };
        Ok(Parts {
            writer,
            writer_thread,
            scheduler,
            retention,
        })
    }

    /// Stops the threads that hold writer handles, then waits for the
    /// writer to drain its queue and exit.
    fn stop(self) -> Result<(), Error> {
        drop(self.writer);
        self.scheduler.stop();
        if let Some(retention) = self.retention {
            retention.stop();
        }
        self.writer_thread.join().map_err(|_| Error::WriterPanicked)
    }
}
