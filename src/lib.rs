//! webhookd: a durable payment-webhook receiver on one embedded redb file.
//!
//! - [`cli`]: command line, environment variables, logging set-up;
//! - [`clock`]: the wall clock in milliseconds, the unit of every stored time;
//! - [`admin`]: `inspect`, `export`, `check`, `backup` on a stopped daemon's data dir;
//! - [`http`]: the hyper server, routing, body limits, the JSON API and its errors;
//! - [`metrics`]: counters, histograms and gauges for `GET /metrics`;
//! - [`model`]: the transaction record, payload parsing and validation, exact amounts;
//! - [`store`]: the redb file (tables, the log and its tail, merges,
//!   migrations, recovery after storage faults; the design is in its doc)
//!   and the single group-committing writer ([`store::writer`]), the
//!   durable-write path;
//! - [`scheduler`]: fires due jobs, in due order, from the store;
//! - [`delivery`]: with `--deliver-to`, POSTs due transactions to it
//!   (client, dispatcher, breaker, bulk redelivery worker);
//! - [`retry`]: the retry schedule of deliveries, its jitter, `Retry-After`;
//! - [`tls`]: the one TLS crypto provider;
//! - [`retention`]: `--retention`, deletes old PROCESSED transactions;
//! - [`signature`]: optional webhook signature verification;
//! - [`shutdown`]: SIGTERM/SIGINT handling;
//! - [`view`]: how a transaction and a time are shown (API, `inspect`, `export`, logs).
//!
//! Each depends only on those below it: `http` on `store`, `metrics` and
//! `model`; `store` on `metrics`, `model` and `clock`; `cli` and `model`
//! on none of them.
//!
//! [`run`] wires them together and shuts them down in order: stop accepting
//! → drain requests (and, at the same time, let delivery attempts in
//! flight finish within the grace) → stop the scheduler → stop the
//! dispatcher → flush and stop the writer.
//! [`run_with`] does the same on storage and with a shutdown trigger chosen
//! by the caller, so tests can run the real server in-process.

#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod clock;
pub mod delivery;
pub mod http;
pub mod metrics;
pub mod model;
mod parts;
pub mod retention;
pub mod retry;
pub mod scheduler;
pub mod shutdown;
pub mod signature;
pub mod store;
pub mod tls;
pub mod view;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::Config;
use crate::parts::Parts;
use crate::shutdown::ShutdownSignals;
use crate::store::writer;
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
    /// The delivery settings are unusable.
    #[error(transparent)]
    Delivery(#[from] delivery::ConfigError),
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
            Error::Signature(_) | Error::Delivery(_) => cli::USAGE_EXIT_CODE,
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

/// One warning at start when `--listen` is reachable from other hosts and
/// something on it is open to whoever reaches it: posting (no
/// `--signature-scheme`), reading transaction data (no `--admin-listen`).
fn warn_if_open_to_others(listen: SocketAddr, signed: bool, admin_socket: bool) {
    if listen.ip().to_canonical().is_loopback() {
        return;
    }
    match (signed, admin_socket) {
        (true, true) => {}
        (false, true) => tracing::warn!(
            %listen,
            "listening beyond this host without --signature-scheme: anyone who can reach {listen} can store webhooks"
        ),
        (true, false) => tracing::warn!(
            %listen,
            "listening beyond this host without --admin-listen: transaction data is readable by anyone who can reach {listen}; set --admin-listen to a private address to serve reads, listing, metrics and redelivery there"
        ),
        (false, false) => tracing::warn!(
            %listen,
            "listening beyond this host without --signature-scheme or --admin-listen: anyone who can reach {listen} can store webhooks, and transaction data is readable by anyone who can reach it"
        ),
    }
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
    // Checked before the store is touched: bad settings change nothing.
    let verifier = signature::Verifier::from_config(
        config.signature_scheme,
        config.signing_secrets_file.as_deref(),
        config.signature_header.as_deref(),
    )?;
    let delivery = delivery::DeliveryConfig::from_config(config)?;
    let store = Store::open_with(&config.data_dir, &*options.storage)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("http")
        .build()
        .map_err(start_error("async runtime"))?;
    let (listener, addr) = bind(&runtime, config.listen)?;
    let admin = config
        .admin_listen
        .map(|admin| bind(&runtime, admin))
        .transpose()?;

    let metrics = Arc::new(if delivery.is_some() {
        metrics::Metrics::with_delivery()
    } else {
        metrics::Metrics::new()
    });
    let parts = Parts::start(config, &store, &metrics, delivery.as_ref(), &runtime)?;
    let (signals, shutdown) = match shutdown_trigger(options.shutdown) {
        Ok(trigger) => trigger,
        Err(e) => {
            // The start-up error is the one reported.
            let _ = parts.stop(&runtime, tokio::time::Instant::now());
            return Err(e);
        }
    };

    let pending_jobs = store.pending_jobs().unwrap_or_default();
    warn_if_open_to_others(config.listen, verifier.is_some(), admin.is_some());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        data_dir = %config.data_dir.display(),
        process_delay = %humantime::format_duration(config.process_delay),
        max_body_bytes = config.max_body_bytes,
        queue_depth = config.queue_depth,
        max_connections = config.max_connections,
        signatures = config.signature_scheme.map_or("off", signature::Scheme::name),
        access_log = config.access_log,
        retention = %config
            .retention
            .map_or_else(|| "off".to_owned(), |r| humantime::format_duration(r).to_string()),
        dedup_window = %humantime::format_duration(config.dedup_window),
        delivery = %delivery.as_ref().map_or_else(|| "off".to_owned(), describe_destination),
        pending_jobs,
        "{}",
        http::ready_line(addr)
    );
    if let Some((_, admin_addr)) = &admin {
        tracing::info!("{}", http::admin_ready_line(*admin_addr));
    }
    on_ready(addr);
    let limits = http::Limits {
        max_body_bytes: config.max_body_bytes,
        max_connections: usize::try_from(config.max_connections).unwrap_or(usize::MAX),
        header_read_timeout: config.header_read_timeout,
        body_read_timeout: config.body_read_timeout,
        write_timeout: config.write_timeout,
    };
    let mut state = http::AppState::new(
        store,
        parts.writer.clone(),
        limits,
        verifier,
        config.access_log,
        metrics,
    );
    if let Some(delivering) = &parts.delivery {
        state = state.with_delivery(http::DeliveryApi {
            status: delivering.status.clone(),
            redeliveries: delivering.redeliveries.waker(),
        });
    }
    let state = Arc::new(state);
    let triggered_at = serve_all(&runtime, listener, admin, &state, shutdown, config);
    drop(state);

    // Every connection has ended, so the scheduler, the dispatcher and
    // retention hold the last writer handles; once they stop, the writer
    // drains its queue and exits. Delivery attempts had the same grace as
    // requests, counted from the shutdown signal.
    let stopped = parts.stop(&runtime, triggered_at + config.shutdown_grace);
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    if let Some(signals) = signals {
        signals.close();
    }
    stopped?;
    tracing::info!("stopped; every acknowledged transaction is on disk");
    Ok(())
}

/// Binds `addr` on the runtime; returns the listener and the address bound.
fn bind(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), Error> {
    let listen_error = |source| Error::Listen { addr, source };
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    Ok((listener, bound))
}

/// The destination as logged: scheme, host and port, never a path or
/// query that could carry a token.
fn describe_destination(delivery: &delivery::DeliveryConfig) -> String {
    let url = &delivery.url;
    format!(
        "{}://{}",
        url.scheme_str().unwrap_or("http"),
        url.authority().map_or("", |a| a.as_str())
    )
}

/// Serves the public socket (and the admin socket, if any) until
/// `shutdown`, then drains both within the grace; returns when the
/// shutdown was asked for.
fn serve_all(
    runtime: &tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    admin: Option<(tokio::net::TcpListener, SocketAddr)>,
    state: &Arc<http::AppState>,
    shutdown: Trigger,
    config: &Config,
) -> tokio::time::Instant {
    let (stop, stopping) = tokio::sync::watch::channel(None);
    let stopped = |mut stopping: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>| async move {
        let _ = stopping.wait_for(Option::is_some).await;
    };
    let public_face = if admin.is_some() {
        http::Face::Public
    } else {
        http::Face::Both
    };
    runtime.block_on(async {
        let trigger = async {
            shutdown.await;
            let _ = stop.send(Some(tokio::time::Instant::now()));
        };
        let public = http::serve_face(
            listener,
            public_face,
            Arc::clone(state),
            stopped(stopping.clone()),
            config.shutdown_grace,
        );
        let admin = async {
            if let Some((admin, _)) = admin {
                http::serve_face(
                    admin,
                    http::Face::Admin,
                    Arc::clone(state),
                    stopped(stopping.clone()),
                    config.shutdown_grace,
                )
                .await;
            }
        };
        tokio::join!(trigger, public, admin);
    });
    let triggered_at = *stopping.borrow();
    triggered_at.unwrap_or_else(tokio::time::Instant::now)
}
