//! Sustained: 60 s of POSTs at 64 connections with `--process-delay 1s`,
//! so processing runs alongside ingest. Every 10 s it prints the window's
//! throughput, the backlog of due-but-unprocessed jobs and the age of the
//! oldest one (from `GET /metrics`), and the daemon's RSS. The backlog must
//! stay flat.
//!
//! Each of `WEBHOOKD_BENCH_RUNS` runs (default 3) starts a fresh daemon
//! and prints its own table, then drives the `redb-process` reference
//! server (`common/reference.rs`: one redb table, each body inserted and
//! rewritten once 1 s later, one commit per batch) with the same load for
//! the same time; the last line gives the medians of both.
//!
//! Run: `cargo bench --bench sustained`
//! (`WEBHOOKD_BENCH_SECONDS` changes the length, default 60.)

#![allow(clippy::cast_precision_loss)] // figures for display

mod common;

use std::time::Duration;

use common::{Limit, Reference, Server, median, metric, run_load_until, runs};

const CONNECTIONS: usize = 64;
const WINDOW_SECONDS: u64 = 10;

/// What one run showed.
struct Summary {
    rate: f64,
    /// The `redb-process` floor's rate in the same run.
    floor_rate: f64,
    floor_p99: f64,
    p99: f64,
    max_backlog: f64,
    peak_rss_mib: f64,
    flat: bool,
}

fn main() {
    common::reference::run_if_asked();
    let seconds: u64 = std::env::var("WEBHOOKD_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let runs = runs();
    let summaries: Vec<Summary> = (1..=runs).map(|run| run_once(seconds, run)).collect();
    let pick = |f: fn(&Summary) -> f64| median(summaries.iter().map(f).collect());
    println!(
        "median of {runs} runs: {:.0} accepted/s, p99 {:.2} ms, largest due backlog {:.0} jobs, peak RSS {:.1} MiB; backlog flat in {} of {runs} runs",
        pick(|s| s.rate),
        pick(|s| s.p99),
        pick(|s| s.max_backlog),
        pick(|s| s.peak_rss_mib),
        summaries.iter().filter(|s| s.flat).count()
    );
    println!(
        "floor (redb insert + rewrite 1 s later), same runs: {:.0}/s, p99 {:.2} ms; webhookd/floor {:.2}",
        pick(|s| s.floor_rate),
        pick(|s| s.floor_p99),
        pick(|s| s.rate) / pick(|s| s.floor_rate)
    );
}

fn run_once(seconds: u64, run: usize) -> Summary {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::webhookd(dir.path(), &["--process-delay", "1s"]);
    let addr = server.addr;
    let pid = server.child.id();
    println!(
        "sustained run {run}: {CONNECTIONS} connections, {seconds} s, --process-delay 1s; figures per {WINDOW_SECONDS} s window"
    );
    println!(
        "| window | accepted 202/s | due backlog (jobs) | oldest due job (s) | pending jobs | RSS (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut second = 0;
    let mut window_start = 0;
    let mut backlogs = Vec::new();
    let result = run_load_until(
        addr,
        CONNECTIONS,
        7 + run as u64,
        Limit::Duration(Duration::from_secs(seconds)),
        |accepted| {
            second += 1;
            if second % WINDOW_SECONDS == 0 {
                let due = metric(addr, "webhookd_due_jobs");
                let age = metric(addr, "webhookd_oldest_due_job_age_seconds");
                let pending = metric(addr, "webhookd_pending_jobs");
                let (rss, _) = common::rss_kib(pid);
                println!(
                    "| {}-{} s | {:.0} | {due:.0} | {age:.2} | {pending:.0} | {:.1} |",
                    second - WINDOW_SECONDS,
                    second,
                    (accepted - window_start) as f64 / WINDOW_SECONDS as f64,
                    rss as f64 / 1024.0
                );
                window_start = accepted;
                backlogs.push(due);
            }
        },
    );
    let (_, peak) = server.rss_kib();
    let peak_rss_mib = peak as f64 / 1024.0;
    println!(
        "total: {} accepted in {:.1} s = {:.0}/s, p99 {:.2} ms, non-202 {}, peak RSS {peak_rss_mib:.1} MiB",
        result.accepted,
        result.elapsed.as_secs_f64(),
        result.per_second(),
        result.ms(0.99),
        result.other,
    );
    let first = backlogs.first().copied().unwrap_or(0.0);
    let last = backlogs.last().copied().unwrap_or(0.0);
    let max_backlog = backlogs.iter().copied().fold(0.0, f64::max);
    let flat = last <= first.max(1000.0);
    println!(
        "backlog: first window {first:.0}, last {last:.0}, max {max_backlog:.0} -> {}",
        if flat { "flat" } else { "GROWING" }
    );
    server.stop();

    let floor_dir = tempfile::tempdir().expect("temp dir");
    let floor = Server::reference(Reference::RedbProcess, floor_dir.path(), 0);
    let floor_result = run_load_until(
        floor.addr,
        CONNECTIONS,
        7 + run as u64,
        Limit::Duration(Duration::from_secs(seconds)),
        |_| {},
    );
    floor.stop();
    println!(
        "floor: redb insert + rewrite 1 s later: {:.0}/s, p99 {:.2} ms",
        floor_result.per_second(),
        floor_result.ms(0.99)
    );
    Summary {
        floor_rate: floor_result.per_second(),
        floor_p99: floor_result.ms(0.99),
        rate: result.per_second(),
        p99: result.ms(0.99),
        max_backlog,
        peak_rss_mib,
        flat,
    }
}
