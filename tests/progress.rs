//! Progress of the long admin commands (`export`, `check`, `backup`) and of
//! a migration at start: a bar on stderr when stderr is a terminal, and
//! nothing at all otherwise or with `--quiet`; stdout is the same either
//! way.
//!
//! The terminal is a pseudo-terminal that `script` (util-linux) opens: the
//! command's stderr goes to it and its stdout to a file, as in
//! `webhookd export > dump.jsonl` typed at a shell.

mod common;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::requirements::Need;
use common::{BIN, DEADLINE, payload, poll_until};
use redb::{Database, TableDefinition};
use serde::Serialize;
use tokio::task::JoinSet;
use webhookd::store::{FileOpener, Progress, Store, writer};

/// Transactions in the admin commands' dataset: enough for a file of more
/// than 8 MiB, which `backup` copies in several chunks.
const TRANSACTIONS: u64 = 40_000;

/// Records in the schema 1 file the migration tests start from.
const V1_RECORDS: u64 = 3_000;

/// How long one command may take on a loaded machine.
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// Stores `count` PROCESSING transactions through the store's writer (far
/// faster than over HTTP) and closes the store.
fn build_dataset(dir: &Path, count: u64) {
    const IN_FLIGHT: u64 = 4096;
    let store = Store::open(dir).unwrap();
    let (handle, thread) = writer::spawn(
        store,
        Duration::from_secs(3600),
        IN_FLIGHT as usize,
        Arc::default(),
        |_| {},
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        for first in (0..count).step_by(IN_FLIGHT as usize) {
            let mut pending = JoinSet::new();
            for n in first..(first + IN_FLIGHT).min(count) {
                let handle = handle.clone();
                let body = payload(&format!("txn_progress_{n:06}"), "12.50");
                let transaction = webhookd::model::parse_payload(body.as_bytes()).unwrap();
                pending.spawn(async move { handle.accept(transaction).await });
            }
            while let Some(done) = pending.join_next().await {
                done.unwrap().unwrap();
            }
        }
    });
    drop(handle);
    thread.join().unwrap();
}

/// What a run of webhookd gave: exit code, stdout, stderr.
struct Output {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// `webhookd --data-dir DIR ARGS` with stdout and stderr piped: not terminals.
fn piped(dir: &Path, args: &[&str]) -> Output {
    let output = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Output {
        code: output.status.code(),
        stdout: output.stdout,
        stderr: output.stderr,
    }
}

/// `arg` quoted for `sh`.
fn quoted(arg: &str) -> String {
    assert!(!arg.contains('\''), "{arg}");
    format!("'{arg}'")
}

/// A shell command line: `webhookd --data-dir DIR ARGS`.
fn command_line(dir: &Path, args: &[&str]) -> String {
    let mut line = format!(
        "{} --data-dir {}",
        quoted(BIN),
        quoted(dir.to_str().unwrap())
    );
    for arg in args {
        line.push(' ');
        line.push_str(&quoted(arg));
    }
    line
}

/// `script` running a shell command on a new pseudo-terminal, its output
/// (what the terminal shows) on a pipe. Dropping it kills `script`; the
/// command then loses its terminal (SIGHUP) and ends too.
struct Script(std::process::Child);

impl Script {
    fn start(shell_command: &str) -> (Script, std::process::ChildStdout) {
        let mut child = Command::new("script")
            .args(["-qec", shell_command, "/dev/null"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start script");
        let shown = child.stdout.take().unwrap();
        (Script(child), shown)
    }

    /// Its exit status once it has exited by itself within `deadline`.
    fn wait(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < deadline,
                "script did not finish within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `shell_command` on a new pseudo-terminal; returns its exit code
/// and everything the terminal showed.
fn on_terminal(shell_command: &str) -> (Option<i32>, Vec<u8>) {
    let (mut script, mut pipe) = Script::start(shell_command);
    let reader = std::thread::spawn(move || {
        let mut shown = Vec::new();
        let _ = pipe.read_to_end(&mut shown);
        shown
    });
    let status = script.wait(COMMAND_DEADLINE);
    (status.code(), reader.join().unwrap())
}

/// An admin command with stderr on a terminal and stdout into a file:
/// exit code, what the terminal showed, what went to stdout.
fn admin_on_terminal(dir: &Path, args: &[&str]) -> (Option<i32>, Vec<u8>, Vec<u8>) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let line = format!(
        "{} > {}",
        command_line(dir, args),
        quoted(out.path().to_str().unwrap())
    );
    let (code, shown) = on_terminal(&line);
    (code, shown, std::fs::read(out.path()).unwrap())
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    find(haystack, needle).is_some()
}

fn find(haystack: &[u8], needle: &str) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle.as_bytes())
}

fn rfind(haystack: &[u8], needle: &str) -> Option<usize> {
    haystack
        .windows(needle.len())
        .rposition(|window| window == needle.as_bytes())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that `shown` is a bar for the stage `what` of `total` steps:
/// its name, its count, a rate, a time left, drawn with terminal escapes.
#[track_caller]
fn assert_bar(shown: &[u8], what: &str, total: &str) {
    for part in [what, total, "/s", "ETA", "\x1b["] {
        assert!(contains(shown, part), "no {part:?} in {:?}", text(shown));
    }
}

/// A copy of the dataset's data dir: the admin commands lock the file, so
/// each run needs its own.
fn copy_of(dir: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("webhookd.redb"), copy.path().join("webhookd.redb")).unwrap();
    copy
}

#[test]
fn without_a_terminal_export_check_and_backup_write_the_same_with_or_without_quiet() {
    let dir = tempfile::tempdir().unwrap();
    build_dataset(dir.path(), TRANSACTIONS);

    for command in [&["export", "--format", "jsonl"][..], &["check"]] {
        let plain = piped(dir.path(), command);
        let quiet = piped(dir.path(), &[&["--quiet"], command].concat());
        assert_eq!(plain.code, Some(0), "{}", text(&plain.stderr));
        assert_eq!(quiet.code, Some(0), "{}", text(&quiet.stderr));
        assert_eq!(plain.stdout, quiet.stdout, "{command:?}");
        assert!(plain.stderr.is_empty(), "{}", text(&plain.stderr));
        assert!(quiet.stderr.is_empty(), "{}", text(&quiet.stderr));
        assert!(
            !plain.stdout.contains(&0x1b),
            "an escape code in {command:?}"
        );
    }
    let export = piped(dir.path(), &["export"]).stdout;
    let lines: Vec<serde_json::Value> = text(&export)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, TRANSACTIONS);
    assert_eq!(
        text(&piped(dir.path(), &["check"]).stdout),
        format!(
            "ok: {TRANSACTIONS} transactions ({TRANSACTIONS} processing, 0 processed), {TRANSACTIONS} pending jobs\n"
        )
    );

    // The same copy twice (the first removed in between), so the two
    // summaries name the same path.
    let copies = tempfile::tempdir().unwrap();
    let dest = copies.path().join("backup.redb");
    let source = dir.path().join("webhookd.redb");
    let mut outputs = Vec::new();
    for quiet in [&[][..], &["-q"]] {
        let run = piped(
            dir.path(),
            &[quiet, &["backup", dest.to_str().unwrap()]].concat(),
        );
        assert_eq!(run.code, Some(0), "{}", text(&run.stderr));
        assert!(run.stderr.is_empty(), "{}", text(&run.stderr));
        let copy = std::fs::read(&dest).unwrap();
        assert!(copy.len() > 8 << 20, "{} bytes: one chunk only", copy.len());
        assert!(copy == std::fs::read(&source).unwrap(), "the copy differs");
        assert_eq!(
            text(&run.stdout),
            format!(
                "backup of {} written to {} ({} bytes)\n",
                source.display(),
                dest.display(),
                copy.len()
            )
        );
        std::fs::remove_file(&dest).unwrap();
        outputs.push(run.stdout);
    }
    assert_eq!(outputs[0], outputs[1]);
}

#[test]
#[cfg_attr(
    webhookd_no_script,
    ignore = "needs script (apt-get install bsdutils); never ignored under CI=true"
)]
fn on_a_terminal_export_check_and_backup_draw_a_bar_on_stderr_and_quiet_draws_none() {
    common::require(Need::Script);
    let dataset = tempfile::tempdir().unwrap();
    build_dataset(dataset.path(), TRANSACTIONS);
    let total = "40,000";

    let expected_export = piped(copy_of(dataset.path()).path(), &["export"]).stdout;
    let dir = copy_of(dataset.path());
    let (code, shown, stdout) = admin_on_terminal(dir.path(), &["export"]);
    assert_eq!(code, Some(0), "{}", text(&shown));
    assert_bar(&shown, "reading transactions", total);
    assert!(stdout == expected_export, "export's stdout changed");

    let expected_check = piped(copy_of(dataset.path()).path(), &["check"]).stdout;
    let (code, shown, stdout) = admin_on_terminal(dir.path(), &["check"]);
    assert_eq!(code, Some(0), "{}", text(&shown));
    assert_bar(&shown, "checking the log and its indexes", "/");
    assert_eq!(text(&stdout), text(&expected_check));

    let copies = tempfile::tempdir().unwrap();
    let dest = copies.path().join("backup.redb");
    let (code, shown, stdout) = admin_on_terminal(dir.path(), &["backup", dest.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{}", text(&shown));
    assert_bar(&shown, "copying the database", "MiB");
    let size = std::fs::metadata(&dest).unwrap().len();
    assert!(
        text(&stdout).ends_with(&format!("({size} bytes)\n")),
        "{}",
        text(&stdout)
    );

    // --quiet, or WEBHOOKD_QUIET: the terminal shows nothing at all.
    let quiet_dest = copies.path().join("quiet.redb");
    for args in [
        &["--quiet", "export"][..],
        &["check", "-q"],
        &["-q", "backup", quiet_dest.to_str().unwrap()],
    ] {
        let (code, shown, stdout) = admin_on_terminal(dir.path(), args);
        assert_eq!(code, Some(0), "{args:?}: {}", text(&shown));
        assert_eq!(text(&shown), "", "{args:?}");
        assert!(!stdout.is_empty(), "{args:?}");
    }
    let line = format!(
        "WEBHOOKD_QUIET=true {}",
        command_line(dir.path(), &["check"])
    );
    let (code, shown) = on_terminal(&format!("{line} > /dev/null"));
    assert_eq!((code, text(&shown)), (Some(0), String::new()));
}

#[test]
#[cfg_attr(
    webhookd_no_script,
    ignore = "needs script (apt-get install bsdutils); never ignored under CI=true"
)]
fn export_to_the_terminal_itself_draws_no_bar_between_its_lines() {
    common::require(Need::Script);
    let dir = tempfile::tempdir().unwrap();
    build_dataset(dir.path(), 2_000);
    let expected = piped(dir.path(), &["export"]).stdout;
    let (code, shown) = on_terminal(&command_line(dir.path(), &["export"]));
    assert_eq!(code, Some(0), "{}", text(&shown));
    // The terminal turns each "\n" into "\r\n"; nothing else is added.
    assert_eq!(text(&shown).replace("\r\n", "\n"), text(&expected));
}

// ---- Migrations ------------------------------------------------------

const V1_TRANSACTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("transactions");
const V1_JOBS: TableDefinition<(u64, &str), ()> = TableDefinition::new("jobs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// A schema 1 value: a version byte 1, then bincode (standard config) of
/// these fields in this order.
#[derive(Serialize)]
struct RecordV1 {
    source_account: &'static str,
    destination_account: &'static str,
    amount: [u8; 16],
    currency: [u8; 3],
    /// 0 = PROCESSING.
    status: u32,
    created_at_ms: u64,
    processed_at_ms: Option<u64>,
}

/// A schema 1 file of [`V1_RECORDS`] PROCESSING transactions, each with
/// its job a day from now.
fn write_version_1(dir: &Path) -> PathBuf {
    let file = dir.join("webhookd.redb");
    let db = Database::create(&file).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut transactions = txn.open_table(V1_TRANSACTIONS).unwrap();
        let mut jobs = txn.open_table(V1_JOBS).unwrap();
        let now = common::now_millis();
        for n in 0..V1_RECORDS {
            let id = format!("v1_{n:05}");
            let record = RecordV1 {
                source_account: "s",
                destination_account: "d",
                amount: "7.25".parse::<rust_decimal::Decimal>().unwrap().serialize(),
                currency: *b"EUR",
                status: 0,
                created_at_ms: now - 60_000 + n,
                processed_at_ms: None,
            };
            let mut value = vec![1];
            value.extend(
                bincode::serde::encode_to_vec(&record, bincode::config::standard()).unwrap(),
            );
            transactions.insert(id.as_str(), value.as_slice()).unwrap();
            jobs.insert((now + 86_400_000, id.as_str()), ()).unwrap();
        }
        txn.open_table(META)
            .unwrap()
            .insert("schema_version", 1)
            .unwrap();
    }
    txn.commit().unwrap();
    file
}

/// One stage as a [`Progress`] saw it.
#[derive(Debug, Default)]
struct Stage {
    what: String,
    total: u64,
    steps: u64,
    finished: bool,
}

/// Records every stage reported to it.
#[derive(Default)]
struct Recorder(Mutex<Vec<Stage>>);

impl Progress for Recorder {
    fn start(&self, what: &str, total: u64) {
        self.0.lock().unwrap().push(Stage {
            what: what.to_owned(),
            total,
            ..Stage::default()
        });
    }
    fn advance(&self, steps: u64) {
        let mut stages = self.0.lock().unwrap();
        let stage = stages.last_mut().expect("a step before any stage");
        assert!(!stage.finished, "a step after {stage:?} finished");
        stage.steps += steps;
    }
    fn finish(&self) {
        self.0.lock().unwrap().last_mut().unwrap().finished = true;
    }
}

impl Recorder {
    /// The stages so far, each asserted complete: every step reported and
    /// finished, so a bar never stops short of its total.
    #[track_caller]
    fn completed(&self) -> Vec<(String, u64)> {
        let stages = std::mem::take(&mut *self.0.lock().unwrap());
        stages
            .into_iter()
            .map(|stage| {
                assert!(stage.finished, "{stage:?}");
                assert_eq!(stage.steps, stage.total, "{stage:?}");
                (stage.what, stage.total)
            })
            .collect()
    }
}

#[test]
fn every_stage_a_migration_check_or_export_reports_reaches_its_total() {
    let dir = tempfile::tempdir().unwrap();
    write_version_1(dir.path());
    let recorder = Recorder::default();
    let store = Store::open_with(dir.path(), &FileOpener, &recorder).unwrap();
    assert_eq!(
        recorder.completed(),
        [
            (
                "migrating schema 1 to 4: reading records".to_owned(),
                V1_RECORDS
            ),
            (
                "migrating schema 1 to 4: writing records".to_owned(),
                2 * V1_RECORDS
            ),
        ]
    );

    let report = store.check(&recorder).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let stages = recorder.completed();
    assert_eq!(stages.len(), 1, "{stages:?}");
    assert_eq!(stages[0].0, "checking the log and its indexes");
    // The log, and the job, id and listing rows of every transaction.
    assert_eq!(stages[0].1, 4 * V1_RECORDS);

    let mut visited = 0;
    store
        .for_each_transaction(&recorder, |_, record| {
            record.unwrap();
            visited += 1;
            true
        })
        .unwrap();
    assert_eq!(visited, V1_RECORDS);
    assert_eq!(
        recorder.completed(),
        [("reading transactions".to_owned(), V1_RECORDS)]
    );

    // A current file reports nothing when opened.
    drop(store);
    let store = Store::open_with(dir.path(), &FileOpener, &recorder).unwrap();
    assert_eq!(recorder.completed(), []);
    drop(store);
}

/// The daemon on a terminal, started on `dir`: the terminal's output once
/// it is ready and has been stopped with SIGTERM.
fn daemon_on_terminal(dir: &Path, extra: &[&str]) -> Vec<u8> {
    let pid_file = dir.join("daemon.pid");
    let mut args = vec!["--listen", "127.0.0.1:0", "--process-delay", "1h"];
    args.extend(extra);
    // The shell writes its pid, then becomes webhookd.
    let line = format!(
        "echo $$ > {}; exec {}",
        quoted(pid_file.to_str().unwrap()),
        command_line(dir, &args)
    );
    let (mut script, mut pipe) = Script::start(&line);
    let shown = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let shown = Arc::clone(&shown);
        std::thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                shown.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    poll_until(
        common::READY_DEADLINE,
        "the ready line on the terminal",
        || contains(&shown.lock().unwrap(), "listening on").then_some(()),
    );
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let killed = Command::new("kill")
        .args(["-TERM", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    script.wait(DEADLINE);
    reader.join().unwrap();
    Arc::try_unwrap(shown).unwrap().into_inner().unwrap()
}

#[test]
#[cfg_attr(
    webhookd_no_script,
    ignore = "needs script (apt-get install bsdutils); never ignored under CI=true"
)]
fn a_migration_at_start_draws_its_stages_on_a_terminal_then_logs_as_before() {
    common::require(Need::Script);
    let migrated = "migrated the database from schema version 1 to 4";

    let dir = tempfile::tempdir().unwrap();
    write_version_1(dir.path());
    let shown = daemon_on_terminal(dir.path(), &[]);
    let total = "3,000";
    assert_bar(&shown, "migrating schema 1 to 4: reading records", total);
    assert_bar(&shown, "migrating schema 1 to 4: writing records", "6,000");
    // The bar is gone before the log line that follows it.
    let last_bar = rfind(&shown, "migrating schema 1 to 4").unwrap();
    let logged = find(&shown, migrated).unwrap_or_else(|| panic!("{}", text(&shown)));
    assert!(last_bar < logged, "{}", text(&shown));

    let dir = tempfile::tempdir().unwrap();
    write_version_1(dir.path());
    let shown = daemon_on_terminal(dir.path(), &["--quiet"]);
    assert!(contains(&shown, migrated), "{}", text(&shown));
    assert!(!contains(&shown, "migrating schema"), "{}", text(&shown));

    // Not a terminal: the log lines as before, nothing else.
    let dir = tempfile::tempdir().unwrap();
    write_version_1(dir.path());
    let daemon = common::Daemon::start(dir.path(), &["--process-delay", "1h"]);
    let log = daemon.stderr_text();
    assert!(log.contains(migrated), "{log}");
    assert!(!log.contains("migrating schema"), "{log}");
    assert!(!log.contains('\x1b'), "{log}");
}

#[test]
#[cfg_attr(
    webhookd_no_script,
    ignore = "needs script (apt-get install bsdutils); never ignored under CI=true"
)]
fn an_admin_command_on_an_old_file_shows_the_migration_then_its_own_bar() {
    common::require(Need::Script);
    let dir = tempfile::tempdir().unwrap();
    write_version_1(dir.path());
    let (code, shown, stdout) = admin_on_terminal(dir.path(), &["check"]);
    assert_eq!(code, Some(0), "{}", text(&shown));
    assert_bar(&shown, "migrating schema 1 to 4: reading records", "3,000");
    assert_bar(&shown, "migrating schema 1 to 4: writing records", "6,000");
    assert_bar(&shown, "checking the log and its indexes", "12,000");
    assert_eq!(
        text(&stdout),
        format!(
            "ok: {V1_RECORDS} transactions ({V1_RECORDS} processing, 0 processed), {V1_RECORDS} pending jobs\n"
        )
    );
}
