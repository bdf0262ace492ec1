//! The command line (clap, with an environment variable for every option)
//! and logging set-up.

mod checks;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{FromArgMatches, Parser, ValueEnum};
use tracing_subscriber::EnvFilter;

use checks::{check_needed_options, command, usage_line};

/// Default capacity of the queue in front of the store writer (`--queue-depth`).
pub const DEFAULT_QUEUE_DEPTH: usize = 4096;

/// Largest accepted `--queue-depth`; each slot holds one parsed webhook.
pub const MAX_QUEUE_DEPTH: u64 = 1_000_000;

/// webhookd: receives payment webhooks, acknowledges each only once it is
/// fsync'd, and processes every transaction exactly once after a delay.
#[derive(Debug, Clone, Parser)]
#[command(name = "webhookd", version, about, long_about = None)]
pub struct Config {
    /// Directory of the embedded database; created if missing.
    #[arg(
        long,
        env = "WEBHOOKD_DATA_DIR",
        default_value = "./webhookd-data",
        value_name = "DIR",
        global = true
    )]
    pub data_dir: PathBuf,

    /// No progress bars: `export`, `check`, `backup` and a migration at
    /// start draw one on stderr when it is a terminal (never otherwise).
    #[arg(short, long, env = "WEBHOOKD_QUIET", global = true)]
    pub quiet: bool,

    /// Without a command, run the daemon. The commands work on the data dir
    /// of a stopped daemon.
    #[command(subcommand)]
    pub command: Option<AdminCommand>,

    /// Socket address to listen on; port 0 picks a free port.
    #[arg(
        long,
        env = "WEBHOOKD_LISTEN",
        default_value = "127.0.0.1:8000",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// How long after acceptance a transaction is processed (humantime: 30s, 500ms, 2m, 0s).
    #[arg(
        long,
        env = "WEBHOOKD_PROCESS_DELAY",
        default_value = "30s",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub process_delay: Duration,

    /// Request bodies larger than this are refused with 413.
    #[arg(
        long,
        env = "WEBHOOKD_MAX_BODY_BYTES",
        default_value_t = 65536,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_body_bytes: u64,

    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    #[arg(
        long,
        env = "WEBHOOKD_SHUTDOWN_GRACE",
        default_value = "10s",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub shutdown_grace: Duration,

    /// Delete PROCESSED transactions once their `processed_at` is older than
    /// this (off when not set). A purged `transaction_id` stays
    /// deduplicated for --dedup-window after its purge.
    #[arg(
        long,
        env = "WEBHOOKD_RETENTION",
        value_name = "DURATION",
        value_parser = parse_positive_duration
    )]
    pub retention: Option<Duration>,

    /// With --retention: how long after its purge a `transaction_id` is still
    /// deduplicated (a redelivery or replay is answered as a duplicate and
    /// processed no more); after it, the id is new again.
    #[arg(
        long,
        env = "WEBHOOKD_DEDUP_WINDOW",
        default_value = "7days",
        value_name = "DURATION",
        value_parser = parse_positive_duration
    )]
    pub dedup_window: Duration,

    /// Most connections served at once; more clients wait in the listen backlog.
    #[arg(
        long,
        env = "WEBHOOKD_MAX_CONNECTIONS",
        default_value_t = 4096,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..=1_000_000)
    )]
    pub max_connections: u64,

    /// A request head must arrive within this time; also closes idle keep-alive connections.
    #[arg(
        long,
        env = "WEBHOOKD_HEADER_READ_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION",
        value_parser = parse_positive_duration
    )]
    pub header_read_timeout: Duration,

    /// A request body must arrive within this time, else 408.
    #[arg(
        long,
        env = "WEBHOOKD_BODY_READ_TIMEOUT",
        default_value = "30s",
        value_name = "DURATION",
        value_parser = parse_positive_duration
    )]
    pub body_read_timeout: Duration,

    /// A connection whose answers the client leaves unread for this long
    /// (the server cannot write to it) is closed.
    #[arg(
        long,
        env = "WEBHOOKD_WRITE_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION",
        value_parser = parse_positive_duration
    )]
    pub write_timeout: Duration,

    /// Verify webhook signatures with this scheme (off when not set); POSTs
    /// without a valid signature get 401 and are not stored.
    #[arg(
        long,
        env = "WEBHOOKD_SIGNATURE_SCHEME",
        value_name = "SCHEME",
        value_enum
    )]
    pub signature_scheme: Option<crate::signature::Scheme>,

    /// File with the signing secrets, one per line (any one may match, so
    /// secrets can be rotated); `whsec_<base64>` for standard-webhooks.
    /// Given with --signature-scheme, never without.
    #[arg(long, env = "WEBHOOKD_SIGNING_SECRETS_FILE", value_name = "PATH")]
    pub signing_secrets_file: Option<PathBuf>,

    /// Header carrying the hex signature (e.g. X-Razorpay-Signature):
    /// required by --signature-scheme hmac-sha256, refused with the others.
    #[arg(long, env = "WEBHOOKD_SIGNATURE_HEADER", value_name = "NAME")]
    pub signature_header: Option<String>,

    /// Map each webhook body onto a transaction with this TOML file: where
    /// the body holds each field (JSON pointers), minor or major units, which
    /// events to take (e.g. Stripe's or Razorpay's; see
    /// /usr/share/doc/webhookd/examples). The body is kept with its
    /// transaction. Without it, bodies must be webhookd's own shape.
    #[arg(long, env = "WEBHOOKD_PAYLOAD_MAP", value_name = "FILE")]
    pub payload_map: Option<PathBuf>,
    /// Serve HTTPS (TLS 1.2 and 1.3; HTTP/2 and HTTP/1.1) on --listen with
    /// this PEM certificate chain, the server's certificate first. Given
    /// with --tls-key, never without; SIGHUP reloads both.
    #[arg(long, env = "WEBHOOKD_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert's first certificate (PKCS#8,
    /// PKCS#1 RSA or SEC1 EC). Given with --tls-cert, never without.
    #[arg(long, env = "WEBHOOKD_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// File with the admin token, one per line (any listed token is
    /// accepted; blank lines and # comments ignored). Admin routes (all but
    /// GET / and the webhook POST) then need `Authorization: Bearer
    /// <token>`, else 401. SIGHUP reloads it.
    #[arg(long, env = "WEBHOOKD_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Log one line per request (method, path, status, latency,
    /// transaction id; never payloads or signatures).
    #[arg(long, env = "WEBHOOKD_ACCESS_LOG")]
    pub access_log: bool,

    /// Log line format; the level comes from `RUST_LOG` (default info).
    #[arg(
        long,
        env = "WEBHOOKD_LOG_FORMAT",
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,

    /// Capacity of the queue in front of the store writer; when it is full,
    /// webhooks are answered 503 with Retry-After instead of queueing without bound.
    #[arg(
        long,
        env = "WEBHOOKD_QUEUE_DEPTH",
        default_value_t = DEFAULT_QUEUE_DEPTH as u64,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..=MAX_QUEUE_DEPTH)
    )]
    pub queue_depth: u64,

    /// A second socket for the admin routes (reads by id, listing, metrics,
    /// attempts, redelivery); --listen then serves only `GET /` and webhooks.
    #[arg(long, env = "WEBHOOKD_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// Deliver each transaction once due with a POST to this `http://` or
    /// `https://` URL; it is PROCESSED only after a 2xx answer (off when not set).
    #[arg(
        long,
        env = "WEBHOOKD_DELIVER_TO",
        value_name = "URL",
        value_parser = parse_deliver_url
    )]
    pub deliver_to: Option<hyper::Uri>,

    /// With --deliver-to: how long one attempt may take, from connecting to
    /// the end of the answer.
    #[arg(
        long,
        env = "WEBHOOKD_DELIVER_TIMEOUT",
        default_value = "15s",
        value_name = "DURATION",
        value_parser = parse_positive_duration
    )]
    pub deliver_timeout: Duration,

    /// With --deliver-to: most delivery attempts in flight at once.
    #[arg(
        long,
        env = "WEBHOOKD_DELIVER_CONCURRENCY",
        default_value_t = 32,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..=MAX_DELIVER_CONCURRENCY)
    )]
    pub deliver_concurrency: u64,

    /// With --deliver-to: the wait before each attempt, comma-separated; the
    /// first counts from the due time, each later one from the end of the
    /// attempt before; as many attempts as entries, then FAILED. Non-zero
    /// waits get ±20% jitter.
    #[arg(
        long,
        env = "WEBHOOKD_RETRY_SCHEDULE",
        default_value = crate::retry::DEFAULT_SCHEDULE,
        value_name = "LIST",
        value_parser = parse_retry_schedule
    )]
    pub retry_schedule: crate::retry::RetrySchedule,

    /// With --deliver-to: file of `whsec_…` secrets, one a line; every
    /// delivery is signed (Standard Webhooks) with each of them.
    #[arg(
        long,
        env = "WEBHOOKD_DELIVER_SIGNING_SECRET_FILE",
        value_name = "FILE"
    )]
    pub deliver_signing_secret_file: Option<PathBuf>,

    /// With --deliver-to: what each delivery carries: `transaction`,
    /// webhookd's JSON; `original`, the body as received from the
    /// provider with its Content-Type (needs --payload-map, which keeps it;
    /// a transaction stored without one is sent as `transaction`).
    #[arg(
        long,
        env = "WEBHOOKD_DELIVER_BODY",
        default_value = "transaction",
        value_name = "BODY",
        value_enum
    )]
    pub deliver_body: DeliverBody,

    /// With an https:// --deliver-to: PEM certificates to trust instead of
    /// the system's roots.
    #[arg(long, env = "WEBHOOKD_DELIVER_CA_FILE", value_name = "FILE")]
    pub deliver_ca_file: Option<PathBuf>,

    /// With an https:// --deliver-to: PEM client certificate chain for
    /// mutual TLS; needs --deliver-client-key.
    #[arg(long, env = "WEBHOOKD_DELIVER_CLIENT_CERT", value_name = "FILE")]
    pub deliver_client_cert: Option<PathBuf>,

    /// With an https:// --deliver-to: PEM private key of
    /// --deliver-client-cert.
    #[arg(long, env = "WEBHOOKD_DELIVER_CLIENT_KEY", value_name = "FILE")]
    pub deliver_client_key: Option<PathBuf>,
}

/// Largest accepted `--deliver-concurrency`.
pub const MAX_DELIVER_CONCURRENCY: u64 = 4096;

/// Admin commands, for the data dir of a stopped daemon (`check-map`
/// needs none).
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum AdminCommand {
    /// Print one stored transaction as JSON, as `GET /v1/transactions/{id}` shows it.
    Inspect {
        /// The transaction id.
        transaction_id: String,
    },
    /// Write every stored transaction to stdout, one JSON object per line, in arrival order.
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
    },
    /// Verify every page's checksum (without changing the file), that every
    /// record decodes and every pending job matches a PROCESSING
    /// transaction (and the reverse); exit 1 on damage.
    Check,
    /// Write a consistent, fsync'd copy of the database file to DEST (not
    /// while the daemon runs: redb locks the file).
    Backup {
        /// Where to write the copy; must not exist yet.
        dest: PathBuf,
    },
    /// Print the transaction SAMPLE would become under the payload map FILE,
    /// or the answer that would refuse it (no data dir or daemon needed);
    /// exit 1 if it would be refused, 2 if FILE does not load.
    CheckMap {
        /// The payload map (TOML).
        map: PathBuf,
        /// A webhook body, as the provider sends it.
        sample: PathBuf,
    },
}

impl AdminCommand {
    /// The command's name, for messages.
    #[must_use]
    pub fn verb(&self) -> &'static str {
        match self {
            AdminCommand::Inspect { .. } => "inspect",
            AdminCommand::Export { .. } => "export",
            AdminCommand::Check => "check",
            AdminCommand::Backup { .. } => "back up",
            AdminCommand::CheckMap { .. } => "check a payload map",
        }
    }
}

/// Output format of `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// JSON lines.
    Jsonl,
}

/// `--deliver-body`: which body a delivery carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DeliverBody {
    /// webhookd's JSON of the transaction.
    #[default]
    Transaction,
    /// The body as received from the provider, with its `Content-Type`
    /// (needs --payload-map, which keeps it).
    Original,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

fn parse_retry_schedule(text: &str) -> Result<crate::retry::RetrySchedule, String> {
    text.parse()
        .map_err(|e: crate::retry::ScheduleError| e.to_string())
}

/// An absolute `http://` or `https://` URL with a host.
fn parse_deliver_url(text: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = text.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(format!("scheme {other}:// is not http:// or https://")),
        None => return Err("needs http:// or https://".to_owned()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host".to_owned());
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err("must not carry a user or password".to_owned());
    }
    Ok(uri)
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be greater than zero".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// What `main` should do after parsing the command line.
pub enum Parsed {
    /// Run the daemon.
    Run(Box<Config>),
    /// Print this to stdout and exit 0 (`--help`, `--version`).
    Exit(String),
    /// Print this one line to stderr and exit with [`USAGE_EXIT_CODE`].
    Usage(String),
}

/// Exit code for a configuration error: a bad command line, environment
/// variable or option value, or a file they name that is missing or
/// malformed. Restarting cannot fix it (the systemd unit does not).
pub const USAGE_EXIT_CODE: u8 = 2;

/// Exit code for a failure at run time (unusable data directory, ...).
pub const FAILURE_EXIT_CODE: u8 = 1;

/// Parses the process arguments and environment.
///
/// A usage error becomes one line (clap's first line, e.g. `error: invalid
/// value 'abc' for '--process-delay <DURATION>': ...`) so that logs and
/// service managers show the cause, not a usage screen. When the bad value
/// came from the environment, the line names the variable instead: `invalid
/// value 'abc' for WEBHOOKD_PROCESS_DELAY (--process-delay): ...`. A
/// `WEBHOOKD_*` variable that is set but empty counts as unset (systemd's
/// `EnvironmentFile=` passes `VAR=` through as an empty value).
#[must_use]
pub fn parse() -> Parsed {
    parse_from(std::env::args_os())
}

/// [`parse`] with explicit arguments (the first is the program name).
pub fn parse_from<I, T>(args: I) -> Parsed
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let parsed = command().try_get_matches_from(&args).and_then(|matches| {
        check_needed_options(&matches)?;
        Config::from_arg_matches(&matches)
    });
    match parsed {
        Ok(config) => Parsed::Run(Box::new(config)),
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                Parsed::Exit(e.to_string())
            }
            _ => Parsed::Usage(format!("webhookd: {}", usage_line(&e, &args))),
        },
    }
}

/// Sends `tracing` events to stderr in the chosen format. Colours only when
/// stderr is a terminal.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(args: &[&str]) -> String {
        match parse_from(std::iter::once("webhookd").chain(args.iter().copied())) {
            Parsed::Usage(line) => line,
            _ => panic!("{args:?} should be a usage error"),
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let Parsed::Run(config) = parse_from(["webhookd"]) else {
            panic!("no arguments must parse");
        };
        assert_eq!(config.data_dir, PathBuf::from("./webhookd-data"));
        assert_eq!(config.listen, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(config.process_delay, Duration::from_secs(30));
        assert_eq!(config.max_body_bytes, 65536);
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        assert_eq!(config.log_format, LogFormat::Text);
        // Delivery, listeners and TLS are off until asked for; delivery's
        // own settings have these defaults.
        assert_eq!(config.deliver_to, None);
        assert_eq!(config.deliver_timeout, Duration::from_secs(15));
        assert_eq!(config.deliver_concurrency, 32);
        assert_eq!(
            config.retry_schedule,
            "0s,5s,5m,30m,2h,5h,10h,14h,20h,24h"
                .parse::<crate::retry::RetrySchedule>()
                .unwrap()
        );
        assert_eq!(config.deliver_signing_secret_file, None);
        assert_eq!(config.deliver_ca_file, None);
        assert_eq!(config.admin_listen, None);
        assert_eq!(config.tls_cert, None);
        assert_eq!(config.tls_key, None);
        assert_eq!(config.admin_token_file, None);
    }

    #[test]
    fn durations_use_humantime() {
        let Parsed::Run(config) = parse_from([
            "webhookd",
            "--process-delay",
            "500ms",
            "--shutdown-grace",
            "2m",
        ]) else {
            panic!("valid durations must parse");
        };
        assert_eq!(config.process_delay, Duration::from_millis(500));
        assert_eq!(config.shutdown_grace, Duration::from_secs(120));
    }

    #[test]
    fn bad_values_are_one_line_naming_the_option() {
        for (args, option) in [
            (&["--process-delay", "abc"][..], "--process-delay"),
            (&["--listen", "nonsense"][..], "--listen"),
            (&["--max-body-bytes", "0"][..], "--max-body-bytes"),
            (&["--log-format", "xml"][..], "--log-format"),
        ] {
            let line = usage(args);
            assert!(!line.contains('\n'), "{line}");
            assert!(line.contains(option), "{line}");
        }
    }
}
