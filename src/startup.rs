//! What [`crate::run_with`] does between reading the settings and serving:
//! the files the settings name, the sockets, the start-up log lines and
//! warnings, systemd supervision, and serving both sockets until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::admin_token::{AdminTokens, TokenCell};
use crate::cli::Config;
use crate::parts::Parts;
use crate::reload::Reloader;
use crate::shutdown::ShutdownSignals;
use crate::store::Store;
use crate::{Error, Trigger, delivery, http, secret_files, signature, start_error, systemd, tls};

/// Everything read from the files the settings name, and checked, before
/// the store is touched.
pub(crate) struct Settings {
    pub(crate) verifier: Option<signature::Verifier>,
    pub(crate) payload_map: Option<crate::payload_map::PayloadMap>,
    pub(crate) delivery: Option<delivery::DeliveryConfig>,
    pub(crate) secrets: Secrets,
}

impl Settings {
    pub(crate) fn load(config: &Config) -> Result<Settings, Error> {
        Ok(Settings {
            verifier: signature::Verifier::from_config(
                config.signature_scheme,
                config.signing_secrets_file.as_deref(),
                config.signature_header.as_deref(),
            )?,
            payload_map: config
                .payload_map
                .as_deref()
                .map(crate::payload_map::PayloadMap::load)
                .transpose()?,
            delivery: delivery::DeliveryConfig::from_config(config)?,
            secrets: Secrets::load(config)?,
        })
    }
}

/// The certificate, key and admin token files the command line names,
/// read and checked, with what reloads them on SIGHUP.
pub(crate) struct Secrets {
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) admin_tokens: Option<Arc<TokenCell>>,
    pub(crate) reloader: Arc<Reloader>,
}

impl Secrets {
    pub(crate) fn load(config: &Config) -> Result<Secrets, Error> {
        let mut reloader = Reloader::new();
        let mut tls = None;
        if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
            let files = tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            };
            let cell = Arc::new(tls::CertificateCell::new(tls::load(&files)?));
            tls = Some(tls::server_config(Arc::clone(&cell)));
            reloader = reloader.tls(files, cell);
        }
        let mut admin_tokens = None;
        if let Some(path) = &config.admin_token_file {
            let cell = Arc::new(TokenCell::new(AdminTokens::from_file(path)?));
            admin_tokens = Some(Arc::clone(&cell));
            reloader = reloader.token(path.clone(), cell);
        }
        Ok(Secrets {
            tls,
            admin_tokens,
            reloader: Arc::new(reloader),
        })
    }

    /// One warning for each secret file other users can read.
    fn warn_if_readable_by_others(&self, config: &Config) {
        self.reloader.warn_if_readable_by_others();
        if let Some(path) = &config.signing_secrets_file {
            secret_files::warn_if_readable_by_others(path, "--signing-secrets-file");
        }
        if let Some(path) = &config.deliver_signing_secret_file {
            secret_files::warn_if_readable_by_others(path, "--deliver-signing-secret-file");
        }
    }
}

/// Opens the store. Crash repair and schema migrations run here; systemd
/// is told that start-up goes on for as long as they take, and a terminal
/// sees a migration's progress (a bar, cleared before the next log line).
pub(crate) fn open_store(
    config: &Config,
    storage: &dyn crate::store::StorageOpener,
    notifier: &systemd::Notifier,
) -> Result<Store, Error> {
    Ok(systemd::while_starting(
        notifier,
        "opening the database (repairing or migrating it if needed)",
        || {
            let progress = crate::progress_bar::TerminalProgress::on_stderr(config.quiet);
            Store::open_with(&config.data_dir, storage, &progress)
        },
    )?)
}

/// What ends [`crate::run_with`]: the caller's trigger, or else
/// SIGTERM/SIGINT through the signal handlers installed here (returned to
/// be closed).
pub(crate) fn shutdown_trigger(
    trigger: Option<Trigger>,
) -> Result<(Option<ShutdownSignals>, Trigger), Error> {
    if let Some(trigger) = trigger {
        return Ok((None, trigger));
    }
    let signals = ShutdownSignals::install().map_err(start_error("signal handlers"))?;
    let requested = Box::pin(signals.requested());
    Ok((Some(signals), requested))
}

/// The public listener: the socket systemd passed if it passed one (then
/// `--listen` is not used), else `listen` bound now.
pub(crate) fn listen(
    runtime: &tokio::runtime::Runtime,
    listen: SocketAddr,
    activated: Option<std::net::TcpListener>,
) -> Result<(tokio::net::TcpListener, SocketAddr), Error> {
    let Some(socket) = activated else {
        return bind(runtime, listen);
    };
    let listener = socket
        .set_nonblocking(true)
        .and_then(|()| {
            let _runtime = runtime.enter();
            tokio::net::TcpListener::from_std(socket)
        })
        .map_err(|source| Error::Start {
            what: "listener systemd passed",
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: listen,
        source,
    })?;
    tracing::info!(
        %addr,
        "serving the socket systemd passed (socket activation); --listen is not used"
    );
    Ok((listener, addr))
}

/// Binds `addr` on the runtime; returns the listener and the address bound.
pub(crate) fn bind(
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

/// What the start-up lines say beside the settings.
pub(crate) struct Ready<'a> {
    pub(crate) addr: SocketAddr,
    pub(crate) admin_addr: Option<SocketAddr>,
    pub(crate) signed: bool,
    pub(crate) secrets: &'a Secrets,
    pub(crate) delivery: Option<&'a delivery::DeliveryConfig>,
}

/// The start-up line: version, settings, pending jobs, and the ready line's
/// `listening on` text; then the admin socket's ready line, if there is one.
pub(crate) fn log_ready(config: &Config, ready: &Ready<'_>, store: &Store) {
    let pending_jobs = store.pending_jobs().unwrap_or_default();
    warn_if_open_to_others(
        ready.addr,
        ready.signed,
        ready.secrets.admin_tokens.is_some(),
        ready.admin_addr.is_some(),
    );
    ready.secrets.warn_if_readable_by_others(config);
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
        tls = if ready.secrets.tls.is_some() { "on" } else { "off" },
        admin_token = if ready.secrets.admin_tokens.is_some() { "on" } else { "off" },
        retention = %config
            .retention
            .map_or_else(|| "off".to_owned(), |r| humantime::format_duration(r).to_string()),
        dedup_window = %humantime::format_duration(config.dedup_window),
        delivery = %ready.delivery.map_or_else(|| "off".to_owned(), describe_destination),
        pending_jobs,
        "{}",
        http::ready_line(ready.addr)
    );
    if let Some(admin_addr) = ready.admin_addr {
        tracing::info!("{}", http::admin_ready_line(admin_addr));
    }
}

/// One warning at start when `--listen` is reachable from other hosts and
/// something on it is open to whoever reaches it: posting (no
/// `--signature-scheme`), reading transaction data (no `--admin-listen`
/// and no `--admin-token-file`).
fn warn_if_open_to_others(listen: SocketAddr, signed: bool, admin_token: bool, admin_socket: bool) {
    if listen.ip().to_canonical().is_loopback() {
        return;
    }
    let readable = !admin_socket && !admin_token;
    match (signed, readable) {
        (true, false) => {}
        (false, false) => tracing::warn!(
            %listen,
            "listening beyond this host without --signature-scheme: anyone who can reach {listen} can store webhooks"
        ),
        (true, true) => tracing::warn!(
            %listen,
            "listening beyond this host without --admin-listen: transaction data is readable by anyone who can reach {listen}; set --admin-listen to a private address to serve reads, listing, metrics and redelivery there (or --admin-token-file)"
        ),
        (false, true) => tracing::warn!(
            %listen,
            "listening beyond this host without --signature-scheme or --admin-listen: anyone who can reach {listen} can store webhooks, and transaction data is readable by anyone who can reach it"
        ),
    }
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

/// The bounds on what one client can hold, from the command line.
pub(crate) fn limits(config: &Config) -> http::Limits {
    http::Limits {
        max_body_bytes: config.max_body_bytes,
        max_connections: usize::try_from(config.max_connections).unwrap_or(usize::MAX),
        header_read_timeout: config.header_read_timeout,
        body_read_timeout: config.body_read_timeout,
        write_timeout: config.write_timeout,
    }
}

/// Starts telling systemd how the daemon is doing (when it runs under
/// systemd): status lines, and watchdog pings while the writer and the
/// scheduler make progress.
pub(crate) fn supervise(
    notifier: &Arc<systemd::Notifier>,
    store: &Store,
    parts: &Parts,
    metrics: &Arc<crate::metrics::Metrics>,
    addr: SocketAddr,
) -> Result<Option<systemd::Supervisor>, Error> {
    let watched = systemd::Watched {
        store: store.clone(),
        writer: parts.writer.clone(),
        heartbeats: parts.heartbeats(),
        addr,
        metrics: Arc::clone(metrics),
    };
    systemd::Supervisor::start(Arc::clone(notifier), watched)
        .map_err(start_error("systemd notification thread"))
}

/// The sockets [`serve_all`] serves.
pub(crate) struct Sockets {
    /// `--listen` (or the socket systemd passed), with TLS if configured.
    pub(crate) public: tokio::net::TcpListener,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// `--admin-listen`, plain HTTP.
    pub(crate) admin: Option<tokio::net::TcpListener>,
}

/// Serves the public socket (and the admin socket, if any) until
/// `shutdown`, then drains both within the grace; returns when the
/// shutdown was asked for. systemd hears `STOPPING=1` at that moment.
pub(crate) fn serve_all(
    runtime: &tokio::runtime::Runtime,
    sockets: Sockets,
    state: &Arc<http::AppState>,
    shutdown: Trigger,
    notifier: &Arc<systemd::Notifier>,
    grace: std::time::Duration,
) -> tokio::time::Instant {
    let (stop, stopping) = tokio::sync::watch::channel(None);
    let stopped = |mut stopping: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>| async move {
        let _ = stopping.wait_for(Option::is_some).await;
    };
    let public_face = if sockets.admin.is_some() {
        http::Face::Public
    } else {
        http::Face::Both
    };
    runtime.block_on(async {
        let trigger = async {
            shutdown.await;
            notifier.stopping();
            let _ = stop.send(Some(tokio::time::Instant::now()));
        };
        let public = http::serve(
            sockets.public,
            public_face,
            sockets.tls,
            Arc::clone(state),
            stopped(stopping.clone()),
            grace,
        );
        let admin = async {
            if let Some(admin) = sockets.admin {
                http::serve(
                    admin,
                    http::Face::Admin,
                    None,
                    Arc::clone(state),
                    stopped(stopping.clone()),
                    grace,
                )
                .await;
            }
        };
        tokio::join!(trigger, public, admin);
    });
    let triggered_at = *stopping.borrow();
    triggered_at.unwrap_or_else(tokio::time::Instant::now)
}
