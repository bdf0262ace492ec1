//! Ingest: drives `POST /v1/webhooks/transactions` with unique ids at 1, 16,
//! 64 and 256 connections against a fresh webhookd, and in the same run,
//! interleaved run by run, against three reference servers that parse the
//! same JSON and answer 202 (see `common/reference.rs`): one that stores
//! nothing, one that makes each batch durable in a plain file (the disk's
//! floor), one that commits each batch into one redb table (redb's floor).
//! Prints one table row per server and connection count: medians over
//! `WEBHOOKD_BENCH_RUNS` runs (default 3).
//!
//! Run: `cargo bench --bench ingest`
//! Request counts: `WEBHOOKD_BENCH_REQUESTS="1=20000,16=100000,64=200000,256=200000"`
//! (the default); e.g. `WEBHOOKD_BENCH_REQUESTS=64=1000000` for the long run.
//! `WEBHOOKD_BENCH_DAEMON_ARGS` adds arguments to webhookd's command line,
//! e.g. `--process-delay 1h` to keep processing out of a long run.

#![allow(clippy::cast_precision_loss)] // figures for display

mod common;

use common::{LoadResult, Reference, Server, median, run_load, runs};

const DEFAULT_REQUESTS: [(usize, u64); 4] =
    [(1, 20_000), (16, 100_000), (64, 200_000), (256, 200_000)];

fn plan() -> Vec<(usize, u64)> {
    let Ok(spec) = std::env::var("WEBHOOKD_BENCH_REQUESTS") else {
        return DEFAULT_REQUESTS.to_vec();
    };
    spec.split(',')
        .map(|pair| {
            let (c, n) = pair
                .split_once('=')
                .expect("WEBHOOKD_BENCH_REQUESTS entries look like 64=200000");
            (
                c.trim().parse().expect("connection count"),
                n.trim().parse().expect("request count"),
            )
        })
        .collect()
}

struct Row {
    rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    errors: u64,
}

fn row(result: &LoadResult) -> Row {
    Row {
        rate: result.per_second(),
        p50: result.ms(0.50),
        p99: result.ms(0.99),
        p999: result.ms(0.999),
        max: result.max_ms(),
        errors: result.other,
    }
}

fn median_row(rows: &[Row]) -> Row {
    let pick = |f: fn(&Row) -> f64| median(rows.iter().map(f).collect());
    Row {
        rate: pick(|r| r.rate),
        p50: pick(|r| r.p50),
        p99: pick(|r| r.p99),
        p999: pick(|r| r.p999),
        max: pick(|r| r.max),
        errors: rows.iter().map(|r| r.errors).sum(),
    }
}

/// The servers of each run, in the order they run and print.
const SERVERS: [Option<Reference>; 4] = [
    None,
    Some(Reference::File),
    Some(Reference::Redb),
    Some(Reference::NoStorage),
];

fn label(server: Option<Reference>) -> &'static str {
    match server {
        None => "webhookd",
        Some(Reference::File) => "floor: file + fdatasync",
        Some(Reference::Redb) => "floor: redb insert + commit",
        Some(Reference::NoStorage) => "no storage",
        Some(Reference::RedbProcess) => "floor: redb insert + rewrite",
    }
}

fn main() {
    common::reference::run_if_asked();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = runs();
    let daemon_args = std::env::var("WEBHOOKD_BENCH_DAEMON_ARGS").unwrap_or_default();
    let daemon_args: Vec<&str> = daemon_args.split_whitespace().collect();
    if !daemon_args.is_empty() {
        println!("webhookd started with: {}", daemon_args.join(" "));
    }
    println!("ingest: POST with unique ids, median of {runs} runs; latency in ms");
    println!(
        "| conns | requests | server | 202/s | p50 | p99 | p99.9 | max | non-202 | webhookd/this |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut seed = 1;
    for (connections, requests) in plan() {
        let mut rows: Vec<Vec<Row>> = SERVERS.iter().map(|_| Vec::new()).collect();
        for _ in 0..runs {
            for (server, results) in SERVERS.iter().zip(&mut rows) {
                let dir = tempfile::tempdir().expect("temp dir");
                let process = match server {
                    None => Server::webhookd(dir.path(), &daemon_args),
                    Some(kind) => Server::reference(*kind, dir.path(), requests),
                };
                results.push(row(&run_load(process.addr, connections, requests, seed)));
                process.stop();
                seed += 1;
            }
        }
        let medians: Vec<Row> = rows.iter().map(|r| median_row(r)).collect();
        for (server, m) in SERVERS.iter().zip(&medians) {
            println!(
                "| {connections} | {requests} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {:.2} |",
                label(*server),
                m.rate,
                m.p50,
                m.p99,
                m.p999,
                m.max,
                m.errors,
                medians[0].rate / m.rate
            );
        }
    }
}
