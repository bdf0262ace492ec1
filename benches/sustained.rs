//! Sustained: 60 s of POSTs at 64 connections with `--process-delay 1s`,
//! so processing runs alongside ingest. Every 10 s it prints the window's
//! accepted webhooks per second (webhookd's own counter), the backlog of
//! due-but-unprocessed jobs and the age of the oldest one (from
//! `GET /metrics`), and the daemon's RSS. The backlog must stay flat.
//!
//! Each of `WEBHOOKD_BENCH_RUNS` runs (default 3) starts a fresh daemon
//! and prints its own table, and drives the `redb-process` reference
//! server (`common/reference.rs`: one redb table with webhookd's cache
//! size, each body inserted and rewritten once 1 s later, one commit per
//! batch) with the same load for the same time, webhookd first in odd
//! runs and the floor first in even ones. Each run ends with a 10 s run
//! against the no-storage server: the most this client drives here. The
//! last lines give the medians.
//!
//! Run: `cargo bench --bench sustained`
//! (`WEBHOOKD_BENCH_SECONDS` changes the length, default 60; the client is
//! `wrk` where installed, see `benches/README.md`.)

#![allow(clippy::cast_precision_loss)] // figures for display

mod common;

use std::time::Duration;

use common::{Client, Limit, LoadResult, Reference, Server, median, metric, runs};

const CONNECTIONS: usize = 64;
const WINDOW_SECONDS: u64 = 10;

/// What one run showed.
struct Summary {
    rate: f64,
    p99: f64,
    /// The `redb-process` floor's rate and p99 in the same run.
    floor_rate: f64,
    floor_p99: f64,
    /// The no-storage server's rate: the client's ceiling.
    ceiling_rate: f64,
    max_backlog: f64,
    peak_rss_mib: f64,
    flat: bool,
    errors: u64,
}

fn main() {
    common::reference::run_if_asked();
    let seconds: u64 = std::env::var("WEBHOOKD_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let runs = runs();
    let client = Client::from_env();
    println!("client: {}", client.name());
    let summaries: Vec<Summary> = (1..=runs)
        .map(|run| run_once(client, seconds, run))
        .collect();
    let pick = |f: fn(&Summary) -> f64| median(summaries.iter().map(f).collect());
    println!(
        "median of {runs} runs: {:.0} accepted/s, p99 {:.2} ms, largest due backlog {:.0} jobs, peak RSS {:.1} MiB; backlog flat in {} of {runs} runs; connection errors {}",
        pick(|s| s.rate),
        pick(|s| s.p99),
        pick(|s| s.max_backlog),
        pick(|s| s.peak_rss_mib),
        summaries.iter().filter(|s| s.flat).count(),
        summaries.iter().map(|s| s.errors).sum::<u64>()
    );
    println!(
        "floor (redb insert + rewrite 1 s later), same runs: {:.0}/s, p99 {:.2} ms; webhookd/floor {:.2}",
        pick(|s| s.floor_rate),
        pick(|s| s.floor_p99),
        pick(|s| s.rate) / pick(|s| s.floor_rate)
    );
    println!(
        "client ceiling (no-storage server, {CONNECTIONS} connections): {:.0}/s",
        pick(|s| s.ceiling_rate)
    );
}

/// Drives webhookd for `seconds`, printing a line per window.
fn drive_webhookd(client: Client, seconds: u64, run: usize) -> (LoadResult, Vec<f64>, f64) {
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
    let accepted = || metric(addr, r#"webhookd_webhooks_total{outcome="accepted"}"#);
    let mut second = 0;
    let mut window_start = accepted();
    let mut backlogs = Vec::new();
    let result = client.drive(
        addr,
        CONNECTIONS,
        7 + run as u64,
        Limit::Duration(Duration::from_secs(seconds)),
        || {
            second += 1;
            if second % WINDOW_SECONDS == 0 {
                let now = accepted();
                let due = metric(addr, "webhookd_due_jobs");
                let age = metric(addr, "webhookd_oldest_due_job_age_seconds");
                let pending = metric(addr, "webhookd_pending_jobs");
                let (rss, _) = common::rss_kib(pid);
                println!(
                    "| {}-{} s | {:.0} | {due:.0} | {age:.2} | {pending:.0} | {:.1} |",
                    second - WINDOW_SECONDS,
                    second,
                    (now - window_start) / WINDOW_SECONDS as f64,
                    rss as f64 / 1024.0
                );
                window_start = now;
                backlogs.push(due);
            }
        },
    );
    let (_, peak) = server.rss_kib();
    server.stop();
    (result, backlogs, peak as f64 / 1024.0)
}

fn drive_reference(client: Client, kind: Reference, seconds: u64, run: usize) -> LoadResult {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::reference(kind, dir.path(), 0);
    let result = client.drive(
        server.addr,
        CONNECTIONS,
        7 + run as u64,
        Limit::Duration(Duration::from_secs(seconds)),
        || {},
    );
    server.stop();
    result
}

fn run_once(client: Client, seconds: u64, run: usize) -> Summary {
    // Alternate which of the two runs first.
    let (result, backlogs, peak_rss_mib, floor) = if run % 2 == 1 {
        let (result, backlogs, peak) = drive_webhookd(client, seconds, run);
        let floor = drive_reference(client, Reference::RedbProcess, seconds, run);
        (result, backlogs, peak, floor)
    } else {
        let floor = drive_reference(client, Reference::RedbProcess, seconds, run);
        let (result, backlogs, peak) = drive_webhookd(client, seconds, run);
        (result, backlogs, peak, floor)
    };
    println!(
        "total: {} accepted in {:.1} s = {:.0}/s, p99 {:.2} ms, non-202 {}, connection errors {}, peak RSS {peak_rss_mib:.1} MiB",
        result.accepted,
        result.elapsed.as_secs_f64(),
        result.per_second(),
        result.p99(),
        result.other,
        result.errors,
    );
    let first = backlogs.first().copied().unwrap_or(0.0);
    let last = backlogs.last().copied().unwrap_or(0.0);
    let max_backlog = backlogs.iter().copied().fold(0.0, f64::max);
    let flat = last <= first.max(1000.0);
    println!(
        "backlog: first window {first:.0}, last {last:.0}, max {max_backlog:.0} -> {}",
        if flat { "flat" } else { "GROWING" }
    );
    println!(
        "floor: redb insert + rewrite 1 s later: {:.0}/s, p99 {:.2} ms, connection errors {}",
        floor.per_second(),
        floor.p99(),
        floor.errors
    );
    let ceiling = drive_reference(client, Reference::NoStorage, seconds.min(10), run);
    println!(
        "client ceiling: no-storage server: {:.0}/s, connection errors {}",
        ceiling.per_second(),
        ceiling.errors
    );
    Summary {
        rate: result.per_second(),
        p99: result.p99(),
        floor_rate: floor.per_second(),
        floor_p99: floor.p99(),
        ceiling_rate: ceiling.per_second(),
        max_backlog,
        peak_rss_mib,
        flat,
        errors: result.errors + floor.errors + ceiling.errors,
    }
}
