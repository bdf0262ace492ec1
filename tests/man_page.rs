//! The packaged man page (`packaging/webhookd.8`), environment file
//! (`packaging/webhookd.env`, installed as `/etc/default/webhookd` and
//! `/etc/sysconfig/webhookd`) and shell completions
//! (`packaging/completions/`: bash, zsh, fish) are rendered from the clap
//! definition, so none can disagree with `--help`: these tests fail when the
//! committed files differ from what the current `Config` renders.
//!
//! After changing an option, regenerate them all with
//! `WEBHOOKD_UPDATE_MAN=1 cargo test --test man_page` and commit them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_mangen::roff::{Roff, bold, italic, roman};
use webhookd::cli::Config;

const UPDATE_VAR: &str = "WEBHOOKD_UPDATE_MAN";

/// Shell completions: (shell, file under `packaging/`).
const COMPLETIONS: [(clap_complete::Shell, &str); 3] = [
    (clap_complete::Shell::Bash, "completions/webhookd.bash"),
    (clap_complete::Shell::Zsh, "completions/_webhookd"),
    (clap_complete::Shell::Fish, "completions/webhookd.fish"),
];

fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging")
        .join(file)
}

/// The man page's SIGNALS section.
const SIGNALS: &str = "SIGTERM or SIGINT starts a graceful shutdown: stop accepting connections, \
    let in-flight requests finish for up to --shutdown-grace, \
    then exit 0 with every acknowledged transaction on disk. \
    A second signal cuts the grace period short. \
    SIGHUP (systemctl reload webhookd) re-reads --tls-cert, --tls-key and \
    --admin-token-file: new connections and requests use them, open connections \
    are kept, and if a file is unusable the previous ones stay in use and one \
    line in the log says why. It never stops the daemon.";

/// `webhookd(8)`: `clap_mangen`'s sections (name, synopsis, description,
/// options with their variables and defaults, version) plus the
/// operational sections a daemon's page carries.
fn render_man_page() -> String {
    let man = clap_mangen::Man::new(Config::command())
        .section("8")
        .manual("System Administration");
    let mut out = Vec::new();
    man.render(&mut out)
        .expect("rendering to memory cannot fail");

    let mut roff = Roff::new();
    roff.control("SH", ["ENVIRONMENT"])
        .text([roman(
            "Every option above can also be set through the environment variable named with it; \
             a command-line option wins over its variable. In addition:",
        )])
        .control("TP", [])
        .text([bold("RUST_LOG")])
        .text([roman(
            "Log level and filter (tracing EnvFilter syntax, e.g. info, debug, webhookd=debug). \
             Default: info.",
        )]);
    roff.control("SH", ["FILES"])
        .control("TP", [])
        .text([italic("/var/lib/webhookd/webhookd.redb")])
        .text([roman(
            "The database of the packaged service (its --data-dir is /var/lib/webhookd). \
             Only one webhookd process can open it at a time; \
             copy it only while the service is stopped.",
        )])
        .control("TP", [])
        .text([
            italic("/etc/default/webhookd"),
            roman(" (Debian), "),
            italic("/etc/sysconfig/webhookd"),
            roman(" (RPM)"),
        ])
        .text([roman(
            "Settings for the service as VARIABLE=value lines, every variable listed \
             commented out with its default. Package upgrades keep local changes.",
        )])
        .control("TP", [])
        .text([italic("/usr/lib/systemd/system/webhookd.service")])
        .text([roman(
            "The systemd unit (Type=notify): runs webhookd as the system user webhookd, \
             sandboxed, restarted on failure and when the watchdog finds the store writer \
             or the scheduler stuck. Logs go to the journal.",
        )])
        .control("TP", [])
        .text([italic("/usr/share/doc/webhookd/examples/webhookd.socket")])
        .text([roman(
            "Optional socket activation: copied to /etc/systemd/system/ and enabled, \
             systemd holds the listening socket (its ListenStream= replaces --listen), \
             so connections made while webhookd restarts are not refused.",
        )]);
    roff.control("SH", ["ENVIRONMENT SET BY SYSTEMD"])
        .control("TP", [])
        .text([bold("NOTIFY_SOCKET")])
        .text([roman(
            "Where to send READY=1, STATUS=, STOPPING=1, EXTEND_TIMEOUT_USEC= and WATCHDOG=1.",
        )])
        .control("TP", [])
        .text([bold("WATCHDOG_USEC")])
        .text([roman(
            "The watchdog timeout: WATCHDOG=1 is sent every quarter of it while the store \
             writer and the scheduler make progress.",
        )])
        .control("TP", [])
        .text([bold("LISTEN_FDS"), roman(", "), bold("LISTEN_PID")])
        .text([roman(
            "Socket activation: one TCP socket passed as fd 3 is served and --listen is not \
             used; more than one, or one that is not a TCP socket, stops the start (exit 2).",
        )]);
    roff.control("SH", ["SIGNALS"]).text([roman(SIGNALS)]);
    roff.control("SH", ["EXIT STATUS"])
        .control("TP", [])
        .text([bold("0")])
        .text([roman("Clean shutdown, or --help/--version.")])
        .control("TP", [])
        .text([bold("1")])
        .text([roman(
            "Could not start: data directory unusable or in use by another webhookd, \
             database written by a newer webhookd, address in use. One line on stderr says what.",
        )])
        .control("TP", [])
        .text([bold("2")])
        .text([roman(
            "Bad command line or option value, an unusable file it names (TLS certificate \
             or key, admin token or signing secrets file), or an unusable socket passed by \
             systemd (restarting will not help).",
        )])
        .control("TP", [])
        .text([bold("130")])
        .text([roman("A second signal cut a graceful shutdown short.")]);
    roff.control("SH", ["SEE ALSO"]).text([roman(
        "systemctl(1), journalctl(1), systemd.exec(5), /usr/share/doc/webhookd/README.md",
    )]);

    let mut page = String::from_utf8(out).expect("clap_mangen writes UTF-8");
    // to_roff, not render: the apostrophe preamble is already in `page`.
    page.push_str(&roff.to_roff());
    page
}

/// Appends `text` as `# ` comment lines of at most 78 columns.
fn push_comment(out: &mut String, text: &str) {
    for paragraph in text.lines() {
        let mut line = String::from("#");
        for word in paragraph.split_whitespace() {
            if line.len() > 1 && line.len() + 1 + word.len() > 78 {
                out.push_str(&line);
                out.push('\n');
                line = String::from("#");
            }
            line.push(' ');
            line.push_str(word);
        }
        out.push_str(&line);
        out.push('\n');
    }
}

/// The environment file: every option's variable with its help text and,
/// commented out, its built-in default.
fn render_env_file() -> String {
    let mut out = String::new();
    push_comment(
        &mut out,
        "Settings for webhookd.service, read through systemd's EnvironmentFile=: \
         /etc/default/webhookd from the .deb, /etc/sysconfig/webhookd from the .rpm.\n\
         Upgrades never overwrite this file; the pristine copy is \
         /usr/share/doc/webhookd/webhookd.env.\n\
         One VARIABLE=value per line, no spaces around '=', no shell syntax. \
         Every variable is listed, commented out, with its built-in default: \
         uncomment a line and change the value, then run `systemctl restart webhookd`. \
         See webhookd(8).",
    );
    for arg in Config::command().get_arguments() {
        let Some(env) = arg.get_env() else { continue };
        if arg.is_hide_env_set() {
            continue;
        }
        out.push('\n');
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(ToString::to_string);
        push_comment(&mut out, help.as_deref().unwrap_or("(undocumented)"));
        let choices: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_owned())
            .collect();
        if !choices.is_empty() {
            push_comment(&mut out, &format!("One of: {}.", choices.join(", ")));
        }
        if arg.get_id() == "data_dir" {
            push_comment(
                &mut out,
                "The service passes --data-dir /var/lib/webhookd (its StateDirectory), \
                 which takes precedence over this variable.",
            );
        }
        let default: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        writeln!(out, "#{}={}", env.to_string_lossy(), default.join(",")).unwrap();
    }
    out.push('\n');
    push_comment(
        &mut out,
        "Log level and filter (tracing EnvFilter syntax: info, debug, webhookd=debug, ...).",
    );
    out.push_str("#RUST_LOG=info\n");
    out
}

fn updating() -> bool {
    std::env::var_os(UPDATE_VAR).is_some_and(|v| v == "1")
}

/// Compares `rendered` with the committed file, or rewrites the file when
/// `WEBHOOKD_UPDATE_MAN=1`.
fn check_or_update(file: &str, rendered: &str) {
    let path = packaging(file);
    if updating() {
        std::fs::write(&path, rendered).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != rendered {
        let first_difference = committed
            .lines()
            .zip(rendered.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(rendered.lines().count()));
        panic!(
            "{} is out of date with the clap definition in src/cli.rs (first difference at \
             line {}). Regenerate it with `{UPDATE_VAR}=1 cargo test --test man_page` and \
             commit the result.",
            path.display(),
            first_difference + 1,
        );
    }
}

/// The completion script for `shell`, as `clap_complete` renders it.
fn render_completions(shell: clap_complete::Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Config::command(), "webhookd", &mut out);
    String::from_utf8(out).expect("completions are UTF-8")
}

#[test]
fn completions_match_the_clap_definition() {
    for (shell, file) in COMPLETIONS {
        check_or_update(file, &render_completions(shell));
    }
}

/// What the packaging relies on, stated on its own: every option and
/// every admin command completes in every shell.
#[test]
fn completions_offer_every_option_and_command() {
    let command = Config::command();
    for (shell, _) in COMPLETIONS {
        let script = render_completions(shell);
        for arg in command.get_arguments() {
            if let Some(long) = arg.get_long() {
                assert!(script.contains(long), "{shell}: --{long}");
            }
        }
        for sub in command.get_subcommands() {
            assert!(
                script.contains(sub.get_name()),
                "{shell}: {}",
                sub.get_name()
            );
        }
    }
}

#[test]
fn man_page_matches_the_clap_definition() {
    check_or_update("webhookd.8", &render_man_page());
}

#[test]
fn env_file_matches_the_clap_definition() {
    check_or_update("webhookd.env", &render_env_file());
}

/// The property the packaging relies on, stated on its own so that a
/// hand-edited file fails with a message naming the variable.
#[test]
fn env_file_lists_every_variable_with_its_default() {
    if updating() {
        return; // the file is being rewritten by env_file_matches_the_clap_definition
    }
    let path = packaging("webhookd.env");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut expected = Vec::new();
    for arg in Config::command().get_arguments() {
        let Some(env) = arg.get_env() else { continue };
        let env = env.to_string_lossy().into_owned();
        let default: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let line = format!("#{env}={}", default.join(","));
        assert!(
            text.lines().any(|l| l == line),
            "{} lacks the line `{line}` for --{}",
            path.display(),
            arg.get_long().unwrap_or_default(),
        );
        expected.push(env);
    }
    assert!(
        expected.len() >= 7,
        "the clap definition lost its env vars: {expected:?}"
    );
    // No variable the daemon does not read.
    for line in text.lines() {
        let name = line.trim_start_matches('#').split('=').next().unwrap_or("");
        if name.starts_with("WEBHOOKD_") && line.contains('=') {
            assert!(
                expected.iter().any(|e| e == name),
                "{} sets {name}, which webhookd does not read",
                path.display()
            );
        }
    }
}

#[test]
fn man_page_documents_every_option_and_variable() {
    let page = render_man_page();
    for arg in Config::command().get_arguments() {
        if let Some(long) = arg.get_long() {
            // roff escapes '-' as '\-'.
            assert!(
                page.contains(&format!("\\-\\-{}", long.replace('-', "\\-"))),
                "--{long}"
            );
        }
        if let Some(env) = arg.get_env() {
            assert!(page.contains(&*env.to_string_lossy()), "{env:?}");
        }
    }
}
