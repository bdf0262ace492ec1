//! What `--help` cannot say by itself: environment variables set but
//! empty count as unset, a bad value from the environment is named by its
//! variable, and options that only work together are refused alone.

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use super::{Config, DeliverBody};

/// The command line definition, with every option whose environment
/// variable is set but empty left to its default, as if it were unset.
pub(super) fn command() -> clap::Command {
    Config::command().mut_args(|arg| {
        let empty = arg
            .get_env()
            .and_then(std::env::var_os)
            .is_some_and(|value| value.is_empty());
        if empty { arg.env(None) } else { arg }
    })
}

/// The first line of clap's message for `error`; if the offending value
/// came from an environment variable, the option is named through it.
pub(super) fn usage_line(error: &clap::Error, args: &[std::ffi::OsString]) -> String {
    let rendered = error.to_string();
    let line = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("error: invalid command line")
        .trim();
    let Some(clap::error::ContextValue::String(invalid)) =
        error.get(clap::error::ContextKind::InvalidArg)
    else {
        return line.to_owned();
    };
    // `invalid` is how clap shows the option, e.g. `--process-delay <DURATION>`.
    let long = invalid.split_whitespace().next().unwrap_or(invalid);
    let Some(arg) = Config::command()
        .get_arguments()
        .find(|arg| {
            arg.get_long()
                .is_some_and(|name| long == format!("--{name}"))
        })
        .cloned()
    else {
        return line.to_owned();
    };
    let Some(variable) = arg.get_env().map(|v| v.to_string_lossy().into_owned()) else {
        return line.to_owned();
    };
    // The value came from the environment if, without that variable, this
    // option is no longer the one in error (the command line gave none).
    let without_env = command()
        .mut_arg(arg.get_id(), |arg| arg.env(None))
        .try_get_matches_from(args)
        .and_then(|matches| Config::from_arg_matches(&matches));
    let same_option_fails = without_env.is_err_and(|e| {
        matches!(
            e.get(clap::error::ContextKind::InvalidArg),
            Some(clap::error::ContextValue::String(other)) if other == invalid
        )
    });
    if same_option_fails {
        return line.to_owned();
    }
    line.replacen(&format!("'{invalid}'"), &format!("{variable} ({long})"), 1)
}

/// Refuses an option set without the one it works with (also through its
/// environment variable): a half-configured feature must not start.
pub(super) fn check_needed_options(matches: &ArgMatches) -> Result<(), clap::Error> {
    let given = |id: &str| {
        matches
            .value_source(id)
            .is_some_and(|source| source != ValueSource::DefaultValue)
    };
    let refuse = |message: String| {
        Err(clap::Error::raw(
            clap::error::ErrorKind::MissingRequiredArgument,
            format!("{message}\n"),
        ))
    };
    if given("dedup_window") && !given("retention") {
        return refuse("--dedup-window is set without --retention: the window keeps the ids of transactions that retention purges; set both, or neither".to_owned());
    }
    if !given("deliver_to") {
        for (id, flag) in DELIVERY_OPTIONS {
            if given(id) {
                return refuse(format!(
                    "{flag} is set without --deliver-to: it configures delivery; set --deliver-to, or leave {flag} unset"
                ));
            }
        }
    }
    if matches.get_one::<DeliverBody>("deliver_body") == Some(&DeliverBody::Original)
        && !given("payload_map")
    {
        return refuse("--deliver-body original is set without --payload-map: only a mapped webhook's body is kept to be forwarded; set --payload-map, or use --deliver-body transaction".to_owned());
    }
    match (given("deliver_client_cert"), given("deliver_client_key")) {
        (true, false) => {
            return refuse(
                "--deliver-client-cert needs --deliver-client-key (the certificate's private key)"
                    .to_owned(),
            );
        }
        (false, true) => {
            return refuse(
                "--deliver-client-key needs --deliver-client-cert (the certificate it belongs to)"
                    .to_owned(),
            );
        }
        _ => {}
    }
    match (given("tls_cert"), given("tls_key")) {
        (true, false) => refuse("--tls-cert is set without --tls-key: HTTPS needs the certificate chain and its private key; set both, or neither".to_owned()),
        (false, true) => refuse("--tls-key is set without --tls-cert: HTTPS needs the certificate chain and its private key; set both, or neither".to_owned()),
        _ => Ok(()),
    }
}

/// The options that only mean something with `--deliver-to`: (clap id, flag).
const DELIVERY_OPTIONS: [(&str, &str); 8] = [
    ("deliver_timeout", "--deliver-timeout"),
    ("deliver_concurrency", "--deliver-concurrency"),
    ("retry_schedule", "--retry-schedule"),
    (
        "deliver_signing_secret_file",
        "--deliver-signing-secret-file",
    ),
    ("deliver_body", "--deliver-body"),
    ("deliver_ca_file", "--deliver-ca-file"),
    ("deliver_client_cert", "--deliver-client-cert"),
    ("deliver_client_key", "--deliver-client-key"),
];
