//! Admin commands on a stopped daemon's data dir: inspect, export, check,
//! backup; and their refusal while the daemon runs.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{BIN, Daemon, assert_one_line_failure, get_transaction, payload, post, run_to_exit};

fn admin(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run webhookd");
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

const IDS: [&str; 3] = ["txn_a", "txn b/ü", "txn_c"];

/// A data dir with three PROCESSING transactions; returns their GET bodies.
fn stopped_daemon_dir(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let daemon = Daemon::start(dir, &["--process-delay", "1h"]);
    let bodies = IDS
        .iter()
        .map(|id| {
            assert_eq!(post(daemon.addr, &payload(id, "12.50")).status, 202);
            get_transaction(daemon.addr, id).json()
        })
        .collect();
    daemon.signal("TERM");
    assert!(daemon.wait_exit(Duration::from_secs(20)).0.success());
    bodies
}

#[test]
fn inspect_export_and_check_read_a_stopped_daemons_data() {
    let dir = tempfile::tempdir().unwrap();
    let bodies = stopped_daemon_dir(dir.path());

    let (code, stdout, _) = admin(dir.path(), &["inspect", IDS[1]]);
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap(),
        bodies[1]
    );

    let (code, _, stderr) = admin(dir.path(), &["inspect", "txn_unknown"]);
    let line = assert_one_line_failure(code, &stderr, 1);
    assert!(line.contains("txn_unknown"), "{line}");

    let (code, stdout, _) = admin(dir.path(), &["export", "--format", "jsonl"]);
    assert_eq!(code, Some(0));
    let mut exported: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut expected = bodies.clone();
    let key = |v: &serde_json::Value| v["transaction_id"].as_str().unwrap().to_owned();
    exported.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(exported, expected);

    let (code, stdout, stderr) = admin(dir.path(), &["check"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout.trim(),
        "ok: 3 transactions (3 processing, 0 processed), 3 pending jobs"
    );
}

#[test]
fn check_reports_a_transaction_whose_job_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    stopped_daemon_dir(dir.path());
    {
        let db = redb::Database::create(dir.path().join("webhookd.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut jobs = txn
                .open_table(redb::TableDefinition::<(u64, u64), ()>::new("jobs_by_due"))
                .unwrap();
            let first = jobs.pop_first().unwrap();
            assert!(first.is_some());
        }
        txn.commit().unwrap();
    }
    let (code, _, stderr) = admin(dir.path(), &["check"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("has no pending job"), "{stderr}");
}

#[test]
fn backup_writes_a_copy_the_daemon_can_serve() {
    let dir = tempfile::tempdir().unwrap();
    let bodies = stopped_daemon_dir(dir.path());
    let copy = tempfile::tempdir().unwrap();
    let dest = copy.path().join("webhookd.redb");
    let (code, stdout, stderr) = admin(dir.path(), &["backup", dest.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("backup of"), "{stdout}");
    // A backup never overwrites.
    let (code, _, stderr) = admin(dir.path(), &["backup", dest.to_str().unwrap()]);
    let line = assert_one_line_failure(code, &stderr, 1);
    assert!(line.contains("already exists"), "{line}");

    let daemon = Daemon::start(copy.path(), &["--process-delay", "1h"]);
    for (id, body) in IDS.iter().zip(&bodies) {
        assert_eq!(&get_transaction(daemon.addr, id).json(), body);
    }
}

#[test]
fn admin_commands_refuse_a_data_dir_in_use_or_without_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let dest = dir.path().join("copy.redb");
    for args in [
        vec!["inspect", "x"],
        vec!["check"],
        vec!["backup", dest.to_str().unwrap()],
    ] {
        let (code, _, stderr) = admin(dir.path(), &args);
        let line = assert_one_line_failure(code, &stderr, 1);
        assert!(line.contains("in use"), "{args:?}: {line}");
    }
    assert!(!dest.exists());
    assert_eq!(common::get(daemon.addr, "/").status, 200);

    let empty = tempfile::tempdir().unwrap();
    let missing = empty.path().join("nothing-here");
    let (code, stderr) = run_to_exit(&["--data-dir", missing.to_str().unwrap(), "check"], &[]);
    let line = assert_one_line_failure(code, &stderr, 1);
    assert!(line.contains("no database"), "{line}");
    assert!(!missing.exists(), "check created the data dir");
}
