//! webhookd: a durable payment-webhook receiver on one embedded redb file.
//!
//! - [`cli`]: command line, environment variables, logging set-up;
//! - [`clock`]: the wall clock in milliseconds, the unit of every stored time;
//! - [`currency`]: ISO 4217 minor units, for amounts sent in minor units;
//! - [`admin`]: `inspect`, `export`, `check`, `backup` on a stopped daemon's data dir;
//! - [`check_map`]: `check-map`, a sample body through a payload map, offline;
//! - [`delivery`]: `--deliver-to`: the dispatcher, its HTTP client, the
//!   breaker and the bulk redelivery worker;
//! - [`retry`]: the retry schedule of delivery attempts;
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
//! - [`tls`]: the rustls crypto provider, HTTPS certificates and keys;
//! - [`admin_token`]: the bearer token of the admin routes;
//! - [`secret_files`]: reading key and token files, warnings about their modes;
//! - [`reload`]: SIGHUP reloads of the certificate, key and admin token;
//! - [`shutdown`]: SIGTERM/SIGINT/SIGHUP handling;
//! - [`systemd`]: readiness, status, watchdog and socket activation under systemd;
//! - [`heartbeat`]: the progress marks the watchdog reads from the writer and scheduler;
//! - [`view`]: how a transaction and a time are shown (API, `inspect`, `export`, logs).
//!
//! Each depends only on those below it: `http` on `store`, `metrics`,
//! `payload_map`, `model` and `admin_token`; `store` on `metrics`, `model`
//! and `clock`; `payload_map` on `currency` and `model`; `reload` on `tls`
//! and `admin_token`, which use `secret_files`; `cli` and `model` on none
//! of them.
//!
//! [`run`] wires them together and shuts them down in order: stop accepting
//! → drain requests → stop the scheduler → let delivery attempts finish
//! within the grace → stop retention → flush and stop the writer.
//! [`run_with`] does the same on storage and with a shutdown trigger chosen
//! by the caller, so tests can run the real server in-process.

#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_token;
pub mod check_map;
pub mod cli;
pub mod clock;
pub mod currency;
pub mod delivery;
pub mod heartbeat;
pub mod http;
pub mod metrics;
pub mod model;
mod parts;
pub mod payload_map;
pub mod progress_bar;
pub mod reload;
pub mod retention;
pub mod retry;
pub mod scheduler;
pub mod secret_files;
pub mod shutdown;
pub mod signature;
mod startup;
pub mod store;
pub mod systemd;
pub mod tls;
pub mod view;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::Config;
use crate::parts::Parts;
use crate::startup::{Ready, Settings, Sockets};
use crate::store::writer;
use crate::store::{FileOpener, OpenError, StorageOpener};

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
    /// The `--payload-map` file cannot be used.
    #[error(transparent)]
    PayloadMap(#[from] payload_map::LoadError),
    /// The TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The admin token file is unusable.
    #[error(transparent)]
    AdminToken(#[from] admin_token::TokenError),
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
            Error::Signature(_)
            | Error::Delivery(_)
            | Error::Activation(_)
            | Error::PayloadMap(_)
            | Error::Tls(_)
            | Error::AdminToken(_) => cli::USAGE_EXIT_CODE,
            Error::Open(_)
            | Error::Listen { .. }
            | Error::Start { .. }
            | Error::Writer(_)
            | Error::WriterPanicked => cli::FAILURE_EXIT_CODE,
        }
    }
}

pub(crate) fn start_error(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Start { what, source }
}

/// How long the runtime waits for outstanding blocking reads at exit.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// A future that completes when the daemon should shut down.
pub(crate) type Trigger = Pin<Box<dyn Future<Output = ()> + Send>>;

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
    let Settings {
        verifier,
        payload_map,
        delivery,
        secrets,
    } = Settings::load(config)?;
    let activated = systemd::activated_listener()?;
    let notifier = Arc::new(systemd::Notifier::from_env());
    let store = startup::open_store(config, &*options.storage, &notifier)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("http")
        .build()
        .map_err(start_error("async runtime"))?;
    let (listener, addr) = startup::listen(&runtime, config.listen, activated)?;
    let admin = config
        .admin_listen
        .map(|admin| startup::bind(&runtime, admin))
        .transpose()?;

    let metrics = Arc::new(if delivery.is_some() {
        metrics::Metrics::with_delivery()
    } else {
        metrics::Metrics::new()
    });
    let parts = Parts::start(config, &store, &metrics, delivery.as_ref(), &runtime)?;
    let started = startup::shutdown_trigger(options.shutdown).and_then(|trigger| {
        Ok((
            trigger,
            startup::supervise(&notifier, &store, &parts, &metrics, addr)?,
        ))
    });
    let ((signals, shutdown), supervisor) = match started {
        Ok(started) => started,
        Err(e) => {
            // The start-up error is the one reported.
            let _ = parts.stop(&runtime, tokio::time::Instant::now());
            return Err(e);
        }
    };
    let ready = Ready {
        addr,
        admin_addr: admin.as_ref().map(|(_, admin_addr)| *admin_addr),
        signed: verifier.is_some(),
        secrets: &secrets,
        delivery: delivery.as_ref(),
    };
    startup::log_ready(config, &ready, &store);
    on_ready(addr);
    let mut state = http::AppState::new(
        store,
        parts.writer.clone(),
        startup::limits(config),
        verifier,
        config.access_log,
        metrics,
    )
    .with_payload_map(payload_map);
    if let Some(tokens) = secrets.admin_tokens {
        state = state.with_admin_tokens(tokens);
    }
    if let Some(delivering) = &parts.delivery {
        state = state.with_delivery(http::DeliveryApi {
            status: delivering.status.clone(),
            redeliveries: delivering.redeliveries.waker(),
        });
    }
    let reloads = signals
        .as_ref()
        .map(|signals| runtime.spawn(reload::run(secrets.reloader, signals.reloads())));
    let state = Arc::new(state);
    let sockets = Sockets {
        public: listener,
        tls: secrets.tls,
        admin: admin.map(|(admin, _)| admin),
    };
    let triggered_at = startup::serve_all(
        &runtime,
        sockets,
        &state,
        shutdown,
        &notifier,
        config.shutdown_grace,
    );
    drop(state);
    if let Some(reloads) = reloads {
        reloads.abort();
        let _ = runtime.block_on(reloads);
    }
    if let Some(supervisor) = supervisor {
        supervisor.stop();
    }
    stop(
        runtime,
        parts,
        signals,
        triggered_at + config.shutdown_grace,
    )
}

/// Once every connection has ended, the scheduler, the dispatcher and
/// retention hold the last writer handles; once they stop, the writer
/// drains its queue and exits. Delivery attempts in flight get until
/// `deadline`: the same grace as requests, counted from the shutdown signal.
fn stop(
    runtime: tokio::runtime::Runtime,
    parts: Parts,
    signals: Option<shutdown::ShutdownSignals>,
    deadline: tokio::time::Instant,
) -> Result<(), Error> {
    let stopped = parts.stop(&runtime, deadline);
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    if let Some(signals) = signals {
        signals.close();
    }
    stopped?;
    tracing::info!("stopped; every acknowledged transaction is on disk");
    Ok(())
}
