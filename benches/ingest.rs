//! Ingest: drives `POST /v1/webhooks/transactions` with unique ids at 1, 16,
//! 64 and 256 connections against a fresh webhookd and, in the same run,
//! against three reference servers that parse the same JSON and answer
//! 202 (see `common/reference.rs`): one that makes each batch durable in a
//! plain file (the disk's floor), one that commits each batch into one
//! redb table with webhookd's cache size (redb's floor), and one that
//! stores nothing, which measures the load generator itself: its rate is
//! the most this client can drive on this machine, so a server near it is
//! limited by the client, not by itself.
//!
//! The servers of one connection count run one after another, in an order
//! that rotates run by run, so no server always runs first or last on a
//! machine whose speed drifts. Prints one table row per server and
//! connection count: medians over `WEBHOOKD_BENCH_RUNS` runs (default 3),
//! connection errors summed (each failed connection is opened again).
//!
//! Run: `cargo bench --bench ingest`. The client is `wrk` where it is
//! installed (`benches/install-wrk.sh`), else the built-in hyper client;
//! `WEBHOOKD_BENCH_CLIENT=wrk|hyper` chooses. With `wrk` every run lasts
//! `WEBHOOKD_BENCH_SECONDS` (default 10); with the built-in client it sends
//! `WEBHOOKD_BENCH_REQUESTS="1=20000,16=100000,64=200000,256=200000"`
//! (the default: connections=requests). `WEBHOOKD_BENCH_CONNECTIONS=1,64`
//! picks connection counts for either. `WEBHOOKD_BENCH_DAEMON_ARGS` adds
//! arguments to webhookd's command line, e.g. `--process-delay 1h` to keep
//! processing out of a long run.

#![allow(clippy::cast_precision_loss)] // figures for display

mod common;

use std::time::Duration;

use common::{Client, Limit, LoadResult, Reference, Server, median, runs};

const DEFAULT_REQUESTS: [(usize, u64); 4] =
    [(1, 20_000), (16, 100_000), (64, 200_000), (256, 200_000)];

/// (connections, when a run stops) for each table section.
fn plan(client: Client) -> Vec<(usize, Limit)> {
    let requests: Vec<(usize, u64)> = match std::env::var("WEBHOOKD_BENCH_REQUESTS") {
        Err(_) => DEFAULT_REQUESTS.to_vec(),
        Ok(spec) => spec
            .split(',')
            .map(|pair| {
                let (c, n) = pair
                    .split_once('=')
                    .expect("WEBHOOKD_BENCH_REQUESTS entries look like 64=200000");
                (
                    c.trim().parse().expect("connection count"),
                    n.trim().parse().expect("request count"),
                )
            })
            .collect(),
    };
    let connections: Vec<usize> = match std::env::var("WEBHOOKD_BENCH_CONNECTIONS") {
        Err(_) => requests.iter().map(|(c, _)| *c).collect(),
        Ok(list) => list
            .split(',')
            .map(|c| c.trim().parse().expect("WEBHOOKD_BENCH_CONNECTIONS=1,64"))
            .collect(),
    };
    let seconds = std::env::var("WEBHOOKD_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    connections
        .into_iter()
        .map(|c| {
            let limit = match client {
                Client::Wrk => Limit::Duration(Duration::from_secs(seconds)),
                Client::Hyper => Limit::Requests(
                    requests
                        .iter()
                        .find(|(rc, _)| *rc == c)
                        .map_or(100_000, |(_, n)| *n),
                ),
            };
            (c, limit)
        })
        .collect()
}

struct Row {
    requests: u64,
    rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    other: u64,
    errors: u64,
}

fn row(result: &LoadResult) -> Row {
    Row {
        requests: result.accepted + result.other,
        rate: result.per_second(),
        p50: result.p50(),
        p99: result.p99(),
        p999: result.p999(),
        max: result.max(),
        other: result.other,
        errors: result.errors,
    }
}

fn median_row(rows: &[Row]) -> Row {
    let pick = |f: fn(&Row) -> f64| median(rows.iter().map(f).collect());
    Row {
        requests: {
            let mut counts: Vec<u64> = rows.iter().map(|r| r.requests).collect();
            counts.sort_unstable();
            counts[counts.len() / 2]
        },
        rate: pick(|r| r.rate),
        p50: pick(|r| r.p50),
        p99: pick(|r| r.p99),
        p999: pick(|r| r.p999),
        max: pick(|r| r.max),
        other: rows.iter().map(|r| r.other).sum(),
        errors: rows.iter().map(|r| r.errors).sum(),
    }
}

/// The servers of each run, in the order they print.
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
        Some(Reference::NoStorage) => "client ceiling: no-storage server",
        Some(Reference::RedbProcess) => "floor: redb insert + rewrite",
    }
}

fn main() {
    common::reference::run_if_asked();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = runs();
    let client = Client::from_env();
    let daemon_args = std::env::var("WEBHOOKD_BENCH_DAEMON_ARGS").unwrap_or_default();
    let daemon_args: Vec<&str> = daemon_args.split_whitespace().collect();
    if !daemon_args.is_empty() {
        println!("webhookd started with: {}", daemon_args.join(" "));
    }
    println!(
        "ingest: POST with unique ids, client: {} ({} threads), median of {runs} runs; latency in ms",
        client.name(),
        common::load_threads()
    );
    if client == Client::Hyper {
        println!("(wrk drives harder where installed: benches/install-wrk.sh)");
    }
    println!(
        "| conns | requests | server | 202/s | p50 | p99 | p99.9 | max | non-202 | conn errors | webhookd/this |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut seed = 1;
    for (connections, limit) in plan(client) {
        let mut rows: Vec<Vec<Row>> = SERVERS.iter().map(|_| Vec::new()).collect();
        for run in 0..runs {
            // Rotate the order run by run.
            for k in 0..SERVERS.len() {
                let at = (k + run) % SERVERS.len();
                let dir = tempfile::tempdir().expect("temp dir");
                let process = match SERVERS[at] {
                    None => Server::webhookd(dir.path(), &daemon_args),
                    Some(kind) => {
                        let room = match limit {
                            Limit::Requests(n) => n,
                            // Room for 40,000 bodies a second, more than any
                            // durable floor reached here; past it the file grows.
                            Limit::Duration(d) => d.as_secs().max(1) * 40_000,
                        };
                        Server::reference(kind, dir.path(), room)
                    }
                };
                let result = client.drive(process.addr, connections, seed, limit, || {});
                rows[at].push(row(&result));
                process.stop();
                seed += 1;
            }
        }
        let medians: Vec<Row> = rows.iter().map(|r| median_row(r)).collect();
        for (server, m) in SERVERS.iter().zip(&medians) {
            println!(
                "| {connections} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} | {:.2} |",
                m.requests,
                label(*server),
                m.rate,
                m.p50,
                m.p99,
                m.p999,
                m.max,
                m.other,
                m.errors,
                medians[0].rate / m.rate
            );
        }
    }
}
