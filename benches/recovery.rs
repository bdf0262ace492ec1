//! Recovery: a data dir holding 1,000,000 pending, already overdue jobs,
//! once as closed cleanly and once as left by a process killed with
//! SIGKILL (so redb must repair the file on open, as after a real crash).
//! Reports time from exec to the ready line, time from exec until every
//! job is PROCESSED (pending jobs = 0 in `GET /metrics`), and the daemon's
//! peak RSS. Medians of
//! `WEBHOOKD_BENCH_RUNS` runs (default 3), each on a fresh copy of the file.
//!
//! Run: `cargo bench --bench recovery`
//! (`WEBHOOKD_BENCH_JOBS` changes the job count, default 1000000;
//! `WEBHOOKD_BENCH_DATASET=<dir>` builds the dataset there once and reuses it.)

#![allow(clippy::cast_precision_loss)] // figures for display

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Server, median, metric, payload, runs, transaction_id};
use tokio::task::JoinSet;
use webhookd::store::Store;
use webhookd::store::writer;

const BUILD_FLAG: &str = "--build-dataset";
/// Accepts in flight at once while building; the writer batches them.
const BUILD_CONCURRENCY: usize = 8192;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == BUILD_FLAG) {
        build_dataset(
            Path::new(&args[at + 1]),
            args[at + 2].parse().expect("job count"),
        );
        return;
    }
    let jobs: u64 = std::env::var("WEBHOOKD_BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);

    // WEBHOOKD_BENCH_DATASET=<dir> keeps the built dataset there and reuses it.
    let scratch = tempfile::tempdir().expect("temp dir");
    let source = std::env::var_os("WEBHOOKD_BENCH_DATASET")
        .map_or_else(|| scratch.path().to_owned(), std::path::PathBuf::from);
    let file = source.join(webhookd::store::DB_FILE_NAME);
    let started = Instant::now();
    if !file.exists() {
        build_crashed(&source, jobs);
    }
    let size = std::fs::metadata(&file).expect("db file").len();
    // The same data closed cleanly: open it once (redb repairs it) and close.
    let clean_dir = source.join("clean");
    let clean = clean_dir.join(webhookd::store::DB_FILE_NAME);
    if !clean.exists() {
        std::fs::create_dir_all(&clean_dir).expect("clean dir");
        std::fs::copy(&file, &clean).expect("copy");
        drop(Store::open(&clean_dir).expect("open and repair"));
    }
    println!(
        "recovery: {jobs} overdue jobs, file {:.0} MiB (dataset ready after {:.1} s); medians of {} runs",
        size as f64 / 1_048_576.0,
        started.elapsed().as_secs_f64(),
        runs()
    );
    println!("| file left by | exec → ready (s) | exec → all PROCESSED (s) | peak RSS (MiB) |");
    println!("|---|---:|---:|---:|");
    measure("clean shutdown", &clean);
    measure("SIGKILL (redb repairs on open)", &file);
}

/// Starts webhookd on fresh copies of `file` and times the recovery.
fn measure(label: &str, file: &Path) {
    let (mut ready, mut done, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::copy(file, dir.path().join(webhookd::store::DB_FILE_NAME)).expect("copy");
        let server = Server::webhookd(dir.path(), &[]);
        while metric(server.addr, "webhookd_pending_jobs") > 0.0 {
            assert!(
                server.spawned_at.elapsed() < Duration::from_secs(600),
                "jobs not processed within 10 minutes"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let all_done = server.spawned_at.elapsed();
        let (_, peak) = server.rss_kib();
        eprintln!(
            "  {label}: ready {:.3} s, all PROCESSED {:.2} s, peak RSS {:.1} MiB",
            server.ready_after.as_secs_f64(),
            all_done.as_secs_f64(),
            peak as f64 / 1024.0
        );
        ready.push(server.ready_after.as_secs_f64());
        done.push(all_done.as_secs_f64());
        rss.push(peak as f64 / 1024.0);
        server.stop();
    }
    println!(
        "| {label} | {:.3} | {:.2} | {:.1} |",
        median(ready),
        median(done),
        median(rss)
    );
}

/// Runs this binary as a child that builds the dataset and then waits; the
/// child is killed with SIGKILL while it still holds the database open.
fn build_crashed(dir: &Path, jobs: u64) {
    let mut child = Command::new(std::env::current_exe().expect("bench executable"))
        .arg(BUILD_FLAG)
        .arg(dir)
        .arg(jobs.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start dataset builder");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let line = lines.next().expect("builder output").expect("read");
    assert_eq!(line, "built", "dataset builder failed");
    child.kill().expect("SIGKILL builder");
    let _ = child.wait();
}

/// Accepts `jobs` transactions through the store writer with no delay, so
/// every job is overdue by the time the daemon starts; then prints "built"
/// and waits to be killed.
fn build_dataset(dir: &Path, jobs: u64) {
    let store = Store::open(dir).expect("open store");
    let (handle, _thread) = writer::spawn(
        store,
        Duration::ZERO,
        BUILD_CONCURRENCY,
        Arc::default(),
        |_| {},
    )
    .expect("writer");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut next = 0;
        while next < jobs {
            let mut pending = JoinSet::new();
            for n in next..(next + BUILD_CONCURRENCY as u64).min(jobs) {
                let handle = handle.clone();
                let transaction =
                    webhookd::model::parse_payload(payload(&transaction_id(99, n)).as_bytes())
                        .expect("valid payload");
                pending.spawn(async move { handle.accept(transaction).await });
            }
            next = (next + BUILD_CONCURRENCY as u64).min(jobs);
            while let Some(done) = pending.join_next().await {
                done.expect("task").expect("stored");
            }
        }
    });
    println!("built");
    // Hold the database open until the parent kills this process.
    loop {
        std::thread::park();
    }
}
