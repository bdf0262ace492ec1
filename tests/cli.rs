//! Options and environment variables, the ready line, and one
//! clear line with a non-zero exit (nothing damaged) for every start-up
//! failure.

mod common;

use std::time::Duration;

use common::{
    Daemon, assert_one_line_failure, get, payload, post, run_to_exit, start_expecting_exit,
    wait_processed,
};

#[test]
fn version_and_help_exit_zero() {
    let (code, _) = run_to_exit(&["--version"], &[]);
    assert_eq!(code, Some(0));
    let output = std::process::Command::new(common::BIN)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "webhookd 0.1.0"
    );

    let output = std::process::Command::new(common::BIN)
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--data-dir",
        "--listen",
        "--process-delay",
        "--max-body-bytes",
        "--shutdown-grace",
        "--log-format",
        "--queue-depth",
        "WEBHOOKD_DATA_DIR",
        "WEBHOOKD_PROCESS_DELAY",
    ] {
        assert!(help.contains(option), "--help lacks {option}");
    }
}

#[test]
fn bad_option_values_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    for (args, mentions) in [
        (vec!["--process-delay", "abc"], "--process-delay"),
        (vec!["--shutdown-grace", "10 parsecs"], "--shutdown-grace"),
        (vec!["--listen", "nonsense"], "--listen"),
        (vec!["--max-body-bytes", "-5"], "-5"),
        (vec!["--max-body-bytes", "0"], "--max-body-bytes"),
        (vec!["--log-format", "xml"], "--log-format"),
        (vec!["--queue-depth", "0"], "--queue-depth"),
        (vec!["--no-such-flag"], "--no-such-flag"),
    ] {
        let mut full = vec!["--data-dir", data_dir];
        full.extend(&args);
        let (code, stderr) = run_to_exit(&full, &[]);
        let line = assert_one_line_failure(code, &stderr, 2);
        assert!(line.contains(mentions), "{args:?}: {line}");
    }
    // Nothing was created for a refused command line.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bad_environment_values_are_refused_like_options() {
    let (code, stderr) = run_to_exit(&[], &[("WEBHOOKD_PROCESS_DELAY", "soon")]);
    let line = assert_one_line_failure(code, &stderr, 2);
    assert!(line.contains("soon"), "{line}");
}

#[test]
fn environment_variables_configure_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(common::BIN);
    command
        .env("WEBHOOKD_DATA_DIR", dir.path())
        .env("WEBHOOKD_LISTEN", "127.0.0.1:0")
        .env("WEBHOOKD_PROCESS_DELAY", "0s")
        .env("WEBHOOKD_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let daemon = Daemon::spawn(command);
    let ready = daemon
        .stderr_text()
        .lines()
        .find(|l| l.contains("listening on"))
        .map(str::to_owned)
        .unwrap();
    let event: serde_json::Value = serde_json::from_str(&ready).expect("JSON log line");
    assert!(event.to_string().contains("listening on 127.0.0.1:"));
    assert_eq!(post(daemon.addr, &payload("txn_env", "1")).status, 202);
    wait_processed(daemon.addr, "txn_env", Duration::from_secs(20));
    assert!(dir.path().join("webhookd.redb").exists());

    // Every line, also the shutdown ones, is one JSON object.
    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{stderr}");
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(event.is_object(), "{line}");
    }
}

#[test]
fn a_data_dir_that_cannot_be_created_is_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let under_file = file.join("data");
    for path in [
        &under_file,
        &file,
        &std::path::PathBuf::from("/proc/webhookd-test-x"),
        &std::path::PathBuf::from("/proc/webhookd-test/data"),
    ] {
        let (code, stderr) = start_expecting_exit(path, &[]);
        let line = assert_one_line_failure(code, &stderr, 1);
        assert!(line.contains(path.to_str().unwrap()), "{line}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}

#[test]
fn a_second_instance_on_the_same_dir_is_refused_while_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let first = Daemon::start(dir.path(), &[]);
    assert_eq!(post(first.addr, &payload("txn_before", "1")).status, 202);
    let (code, stderr) = start_expecting_exit(dir.path(), &[]);
    let line = assert_one_line_failure(code, &stderr, 1);
    assert!(line.contains("in use"), "{line}");
    assert!(line.contains(dir.path().to_str().unwrap()), "{line}");

    assert_eq!(get(first.addr, "/").status, 200);
    assert_eq!(post(first.addr, &payload("txn_after", "1")).status, 202);
    assert_eq!(
        common::get_transaction(first.addr, "txn_before").status,
        200
    );
}

#[test]
fn a_database_with_a_newer_schema_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    assert_eq!(post(daemon.addr, &payload("txn_old", "1")).status, 202);
    daemon.terminate();
    let (status, _) = daemon.wait_exit(Duration::from_secs(20));
    assert!(status.success());

    let file = dir.path().join("webhookd.redb");
    {
        let db = redb::Database::create(&file).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u64>::new("meta"))
            .unwrap()
            .insert("schema_version", 999)
            .unwrap();
        txn.commit().unwrap();
    }
    let before = std::fs::read(&file).unwrap();
    let (code, stderr) = start_expecting_exit(dir.path(), &[]);
    let line = assert_one_line_failure(code, &stderr, 1);
    assert!(line.contains("newer"), "{line}");
    assert!(line.contains("999"), "{line}");
    assert!(line.contains(dir.path().to_str().unwrap()), "{line}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "database file changed"
    );
}

#[test]
fn an_address_in_use_is_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = run_to_exit(
        &[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--listen",
            &addr,
        ],
        &[],
    );
    let line = assert_one_line_failure(code, &stderr, 1);
    assert!(line.contains(&addr), "{line}");
}

#[test]
fn a_garbage_or_truncated_database_is_refused_and_left_untouched() {
    // Garbage where the database should be.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("webhookd.redb");
    let garbage: Vec<u8> = (0..100_000_u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&file, &garbage).unwrap();
    let (code, stderr) = start_expecting_exit(dir.path(), &[]);
    let line = assert_one_line_failure(code, &stderr, 1);
    assert!(line.contains(file.to_str().unwrap()), "{line}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        garbage,
        "garbage file changed"
    );

    // A real database cut short.
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    for i in 0..50 {
        assert_eq!(
            post(daemon.addr, &payload(&format!("txn_cut_{i}"), "1")).status,
            202
        );
    }
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(20)).0.success());
    let file = dir.path().join("webhookd.redb");
    let whole = std::fs::read(&file).unwrap();
    std::fs::write(&file, &whole[..whole.len() / 2]).unwrap();
    let (code, stderr) = start_expecting_exit(dir.path(), &[]);
    let line = assert_one_line_failure(code, &stderr, 1);
    assert!(line.contains(file.to_str().unwrap()), "{line}");
    assert_eq!(std::fs::read(&file).unwrap(), &whole[..whole.len() / 2]);
}

#[test]
fn an_empty_database_file_left_by_a_crash_at_first_start_becomes_a_new_database() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("webhookd.redb"), b"").unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    assert_eq!(post(daemon.addr, &payload("txn_fresh", "1")).status, 202);
}

/// A data dir on a read-only filesystem (root only: it mounts one).
#[test]
#[cfg_attr(
    webhookd_no_tmpfs,
    ignore = "needs root (CAP_SYS_ADMIN) to mount a tmpfs; never ignored under CI=true"
)]
fn a_data_dir_that_cannot_be_written_is_one_line_naming_it() {
    let mount = common::Tmpfs::mounted("ro,size=1m");
    let sub = mount.path().join("sub");
    let results: Vec<_> = [mount.path(), sub.as_path()]
        .iter()
        .map(|dir| {
            let (code, stderr) = start_expecting_exit(dir, &[]);
            (dir.to_str().unwrap().to_owned(), code, stderr)
        })
        .collect();
    for (dir, code, stderr) in results {
        let line = assert_one_line_failure(code, &stderr, 1);
        assert!(line.contains(&dir), "{line}");
        assert!(line.contains("Read-only"), "{line}");
    }
}

/// A data dir owned by another user: webhookd run as `nobody` (root only:
/// it drops privileges with `setpriv`) on a root-owned dir and database.
#[test]
#[cfg_attr(
    webhookd_no_setpriv,
    ignore = "needs root and setpriv (util-linux) to run webhookd as another user; never ignored under CI=true"
)]
fn a_data_dir_owned_by_another_user_is_one_line_and_left_untouched() {
    use std::os::unix::fs::PermissionsExt;
    common::require(common::requirements::Need::Setpriv);
    let setpriv = "setpriv";
    let parent = tempfile::tempdir().unwrap();
    let owned = parent.path().join("owned-by-root");
    std::fs::create_dir(&owned).unwrap();
    let daemon = Daemon::start(&owned, &[]);
    assert_eq!(post(daemon.addr, &payload("txn_owned", "1")).status, 202);
    daemon.terminate();
    assert!(daemon.wait_exit(common::DEADLINE).0.success());
    let empty = parent.path().join("empty-owned-by-root");
    std::fs::create_dir(&empty).unwrap();
    for dir in [parent.path(), owned.as_path(), empty.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let file = owned.join("webhookd.redb");
    let before = std::fs::read(&file).unwrap();

    for dir in [&owned, &empty] {
        let output = std::process::Command::new(setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(common::BIN)
            .arg("--data-dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .expect("run webhookd as nobody");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = assert_one_line_failure(output.status.code(), &stderr, 1);
        assert!(line.contains(dir.to_str().unwrap()), "{line}");
        assert!(line.contains("Permission denied"), "{line}");
    }
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the database changed"
    );
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "something was created in the empty dir"
    );
}
