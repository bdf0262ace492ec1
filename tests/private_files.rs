//! Payment data is readable by its owner only, whatever the umask: the
//! data dir webhookd creates is 0700, the database file 0600, and the
//! output of `webhookd backup` 0600, also under the common umask 022.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{BIN, DEADLINE, Daemon, payload, post};

/// `webhookd args…` run by a shell that sets umask 022 first.
fn under_umask_022(args: &[&str]) -> Command {
    let mut command = Command::new("sh");
    command
        .args(["-c", "umask 022 && exec \"$0\" \"$@\"", BIN])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_data_dir_database_and_backup_are_private_under_umask_022() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().unwrap();
    let mut command = under_umask_022(&["--data-dir", data, "--listen", "127.0.0.1:0"]);
    command.stdout(Stdio::null());
    let daemon = Daemon::spawn(command);
    assert_eq!(post(daemon.addr, &payload("txn_private", "1")).status, 202);
    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(DEADLINE);
    assert!(status.success(), "{stderr}");

    // A file a shell creates under this umask is world-readable: the
    // umask really is 022 here.
    let shell_file = dir.path().join("by_the_shell");
    let made = Command::new("sh")
        .args([
            "-c",
            "umask 022 && : > \"$0\"",
            shell_file.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(made.success());
    assert_eq!(mode(&shell_file), 0o644);

    assert_eq!(mode(&data_dir), 0o700, "data dir");
    assert_eq!(mode(&data_dir.join("webhookd.redb")), 0o600, "database");

    let backup = dir.path().join("backup.redb");
    let output = under_umask_022(&["--data-dir", data, "backup", backup.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(mode(&backup), 0o600, "backup");
}
