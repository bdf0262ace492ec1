//! A 202 leaves only after the fsync of the commit that holds its
//! transaction. The daemon runs under `strace` while many clients post at
//! once, so commits carry several webhooks and answers interleave; for
//! every request the trace must show, in this order:
//!
//! 1. the read that brought its body in;
//! 2. the first write (`pwrite64`) of its record into `webhookd.redb`;
//! 3. an `fsync`/`fdatasync` of `webhookd.redb` that began after that write
//!    and returned 0;
//! 4. and only then the write of its `HTTP/1.1 202`.
//!
//! A daemon that answered before its own commit's sync fails step 3 for
//! that request, however many other commits' syncs lie between two 202s.
//!
//! Why line order is time order here: strace writes every event of every
//! thread to one file in the order it handles them, and a traced thread
//! stays stopped at each system call until strace has handled it. So an
//! event that makes another one possible (a sync returning, which lets the
//! writer answer the connection task, which then writes the 202) is always
//! printed before it.
//!
//! Needs `strace`; where build.rs finds it missing the test is ignored
//! (never under `CI=true`, where it fails naming what is missing).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::Duration;

use common::requirements::Need;
use common::{Daemon, payload, poll_until, post};

const THREADS: usize = 16;
const PER_THREAD: usize = 8;
const REQUESTS: usize = THREADS * PER_THREAD;
/// Every id is this prefix and three digits, so no id is a prefix of another.
const ID_PREFIX: &str = "txn_sync_";

fn id(n: usize) -> String {
    format!("{ID_PREFIX}{n:03}")
}

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

/// One system call from the trace: where it began and where it returned
/// (the same line unless another thread's event came in between).
#[derive(Debug)]
struct Call {
    name: String,
    entry: usize,
    exit: usize,
    /// Arguments and result, with an `<unfinished ...>` part joined to its
    /// `resumed` part.
    text: String,
}

impl Call {
    /// Whether the first argument is a descriptor of the database file
    /// (strace `-y` prints `3</path/webhookd.redb>`).
    fn on_database(&self) -> bool {
        self.text
            .split_once('>')
            .is_some_and(|(fd, _)| fd.ends_with("/webhookd.redb"))
    }

    fn returned(&self) -> &str {
        self.text.rsplit_once(" = ").map_or("", |(_, r)| r.trim())
    }

    /// The request ids (`txn_sync_NNN`) in the call's data.
    fn ids(&self) -> Vec<usize> {
        let mut found = Vec::new();
        let mut rest = self.text.as_str();
        while let Some(at) = rest.find(ID_PREFIX) {
            rest = &rest[at + ID_PREFIX.len()..];
            if let Some(n) = rest.get(..3).and_then(|d| d.parse().ok()) {
                found.push(n);
            }
        }
        found
    }
}

/// Parses `strace -f` output (`PID name(args) = result`, or an
/// `<unfinished ...>` line joined with its `<... name resumed>` line).
fn parse_trace(lines: &[&str]) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut unfinished: HashMap<&str, Call> = HashMap::new();
    for (at, line) in lines.iter().enumerate() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let (name, tail) = resumed
                .split_once(" resumed>")
                .unwrap_or_else(|| panic!("line {at}: {line}"));
            let mut call = unfinished
                .remove(pid)
                .unwrap_or_else(|| panic!("line {at} resumes a call never begun: {line}"));
            assert_eq!(call.name, name, "line {at}: {line}");
            call.exit = at;
            call.text.push_str(tail);
            calls.push(call);
        } else if let Some((name, args)) = rest.split_once('(') {
            if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                continue;
            }
            let begun = args.strip_suffix(" <unfinished ...>");
            let call = Call {
                name: name.to_owned(),
                entry: at,
                exit: at,
                text: begun.unwrap_or(args).to_owned(),
            };
            if begun.is_some() {
                unfinished.insert(pid, call);
            } else {
                calls.push(call);
            }
        }
        // Anything else is a signal or exit notice.
    }
    calls.sort_by_key(|c| c.entry);
    calls
}

/// Where, in the trace, each step of one request happened.
#[derive(Debug, Default, Clone, Copy)]
struct Steps {
    /// Return of the read that brought the request in.
    read: Option<usize>,
    /// Start of the first write of the record to the database file after that.
    stored: Option<usize>,
    /// Start of the write of the 202.
    answered: Option<usize>,
}

/// Runs webhookd under strace while `THREADS` clients post `REQUESTS`
/// webhooks at once, stops it, and returns the trace.
fn trace_concurrent_posts(dir: &std::path::Path) -> String {
    let trace = dir.join("trace.txt");
    let mut command = Command::new("strace");
    command
        .args(["-f", "-qq", "-y", "-s", "65536"])
        .args([
            "-e",
            "trace=read,readv,recvfrom,recvmsg,write,writev,pwrite64,pwritev,pwritev2,sendto,sendmsg,fsync,fdatasync",
        ])
        .arg("-o")
        .arg(&trace)
        .arg(common::BIN)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen", "127.0.0.1:0", "--process-delay", "1h"])
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

    // Many at once, so commits group several webhooks and the 202s of one
    // commit interleave with the reads and writes of the next.
    let addr = daemon.addr;
    let start = Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let start = &start;
            scope.spawn(move || {
                start.wait();
                for n in 0..PER_THREAD {
                    let id = id(thread * PER_THREAD + n);
                    let response = post(addr, &payload(&id, "1"));
                    assert_eq!(response.status, 202, "{id}: {}", response.body);
                    assert_eq!(response.json()["duplicate"], false, "{id}");
                }
            });
        }
    });
    // Stop webhookd itself; strace then exits and flushes its output.
    let status = Command::new("kill")
        .args(["-TERM", &webhookd.0])
        .status()
        .unwrap();
    assert!(status.success(), "could not signal webhookd under strace");
    assert!(daemon.wait_exit(Duration::from_secs(30)).0.success());
    poll_until(Duration::from_secs(10), "the trace file", || {
        std::fs::read_to_string(&trace).ok()
    })
}

/// Each request's steps, and the (entry, exit) lines of every sync of
/// the database file that returned 0.
fn steps_of(calls: &[Call]) -> (Vec<Steps>, Vec<(usize, usize)>) {
    let mut steps = vec![Steps::default(); REQUESTS];
    let mut syncs = Vec::new();
    for call in calls {
        match call.name.as_str() {
            "read" | "readv" | "recvfrom" | "recvmsg" => {
                for n in call.ids() {
                    assert!(
                        steps[n].read.is_none(),
                        "{} read twice: line {}",
                        id(n),
                        call.exit
                    );
                    steps[n].read = Some(call.exit);
                }
            }
            "pwrite64" | "pwritev" | "pwritev2" | "write" if call.on_database() => {
                for n in call.ids() {
                    let step = &mut steps[n];
                    if step.read.is_some_and(|r| r < call.entry) && step.stored.is_none() {
                        step.stored = Some(call.entry);
                    }
                }
            }
            "fsync" | "fdatasync" if call.on_database() && call.returned() == "0" => {
                syncs.push((call.entry, call.exit));
            }
            "write" | "writev" | "sendto" | "sendmsg" if call.text.contains("HTTP/1.1 202") => {
                for n in call.ids() {
                    assert!(
                        steps[n].answered.is_none(),
                        "{} answered twice: line {}",
                        id(n),
                        call.entry
                    );
                    steps[n].answered = Some(call.entry);
                }
            }
            _ => {}
        }
    }
    (steps, syncs)
}

#[test]
#[cfg_attr(
    webhookd_no_strace,
    ignore = "needs strace (apt-get install strace); never ignored under CI=true"
)]
fn every_202_follows_the_completed_fsync_of_the_commit_that_wrote_its_record() {
    common::require(Need::Strace);
    let dir = tempfile::tempdir().unwrap();
    let text = trace_concurrent_posts(dir.path());
    let lines: Vec<&str> = text.lines().collect();
    let (steps, syncs) = steps_of(&parse_trace(&lines));

    let excerpt = |from: usize, to: usize| {
        lines[from..=to.min(lines.len() - 1)]
            .iter()
            .enumerate()
            .map(|(i, l)| {
                format!(
                    "{:>6} {}",
                    from + i,
                    l.chars().take(160).collect::<String>()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    // The sync that made each request durable, and the requests it covered.
    let mut covered_by: BTreeMap<usize, usize> = BTreeMap::new();
    for (n, step) in steps.iter().enumerate() {
        let id = id(n);
        let read = step
            .read
            .unwrap_or_else(|| panic!("{id}: no read of the request in the trace"));
        let answered = step
            .answered
            .unwrap_or_else(|| panic!("{id}: no 202 in the trace"));
        let stored = step
            .stored
            .filter(|&stored| stored < answered)
            .unwrap_or_else(|| {
                panic!(
                    "{id}: its 202 (line {answered}) was written before its record reached webhookd.redb (first write after the request was read: {:?}):\n{}",
                    step.stored,
                    excerpt(read, answered)
                )
            });
        // Syncs run one at a time on the writer thread, so the first that
        // began after the record was written is the one to look at.
        let sync = syncs.iter().find(|(entry, _)| *entry > stored);
        match sync {
            Some(&(entry, exit)) if exit < answered => {
                *covered_by.entry(entry).or_default() += 1;
            }
            _ => panic!(
                "{id}: its 202 (line {answered}) was written before an fsync of webhookd.redb that began after its record was written (line {stored}) had returned; sync: {sync:?}\n{}",
                excerpt(read, answered.max(sync.map_or(0, |s| s.1)))
            ),
        }
    }
    // The load really was concurrent: some commit's sync covered several.
    let largest = covered_by.values().max().copied().unwrap_or(0);
    assert!(
        largest >= 2,
        "every request had a sync of its own; the test did not exercise group commits"
    );
}
