//! A 202 leaves only after an fsync: the daemon runs under strace, and in
//! the trace every `HTTP/1.1 202` written to a socket comes after an
//! fdatasync/fsync that completed since the previous 202. This is what
//! makes an acknowledged transaction survive losing the OS page cache
//! (power loss), not only a killed process.
//!
//! Needs `strace` (`.ci/run` installs it); without it the test says so and
//! passes vacuously on that machine only.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, payload, poll_until, post};

const REQUESTS: usize = 30;

/// SIGKILLs a process by pid when dropped (a no-op once it has exited).
struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn every_202_is_preceded_by_its_own_completed_fsync() {
    let can_trace = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !can_trace {
        eprintln!(
            "skipping: strace is not installed or may not trace here (apt-get install strace)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.txt");
    let data = dir.path().join("data");
    let mut command = Command::new("strace");
    command
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=fsync,fdatasync,write,writev,sendto,sendmsg",
        ])
        .arg("-o")
        .arg(&trace)
        .arg(common::BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let daemon = Daemon::spawn(command);
    // webhookd is strace's child. Killing strace (as dropping `daemon` does)
    // would leave webhookd running, so it gets a guard of its own.
    let children = Command::new("pgrep")
        .args(["-P", &daemon.pid().to_string()])
        .output()
        .unwrap();
    let webhookd = KillOnDrop(
        String::from_utf8(children.stdout)
            .unwrap()
            .trim()
            .to_owned(),
    );
    assert!(!webhookd.0.is_empty(), "webhookd under strace not found");

    // One at a time, so each acknowledgement needs a commit of its own.
    for i in 0..REQUESTS {
        assert_eq!(
            post(daemon.addr, &payload(&format!("txn_sync_{i}"), "1")).status,
            202
        );
    }
    // Stop webhookd itself; strace then exits and flushes its output.
    let status = Command::new("kill")
        .args(["-TERM", &webhookd.0])
        .status()
        .unwrap();
    assert!(status.success(), "could not signal webhookd under strace");
    assert!(daemon.wait_exit(Duration::from_secs(30)).0.success());
    let text = poll_until(Duration::from_secs(10), "the trace file", || {
        std::fs::read_to_string(&trace).ok()
    });

    let mut synced = false;
    let mut acknowledgements = 0;
    let mut syncs = 0;
    let lines: Vec<&str> = text.lines().collect();
    for (at, line) in lines.iter().enumerate() {
        // With several threads strace may split a call into
        // `fdatasync(5 <unfinished ...>` and `<... fdatasync resumed>) = 0`;
        // only the line carrying the result counts as completed.
        let is_sync = [
            "fdatasync(",
            "fsync(",
            "fdatasync resumed>",
            "fsync resumed>",
        ]
        .iter()
        .any(|call| line.contains(call));
        let completed = line.contains(" = 0");
        if is_sync && completed {
            syncs += 1;
            synced = true;
        } else if line.contains("\"HTTP/1.1 202") {
            assert!(
                synced,
                "a 202 was written without a completed fsync since the previous one:\n{}",
                lines[at.saturating_sub(15)..=at].join("\n")
            );
            synced = false;
            acknowledgements += 1;
        }
    }
    assert_eq!(acknowledgements, REQUESTS, "every 202 seen in the trace");
    assert!(
        syncs >= REQUESTS,
        "{syncs} syncs for {REQUESTS} acknowledgements"
    );
}
