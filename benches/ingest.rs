//! Ingest: drives `POST /v1/webhooks/transactions` with unique ids at 1, 16,
//! 64 and 256 connections against a fresh webhookd, and in the same run
//! against a baseline server that parses the same JSON and answers 202
//! without storing anything. Prints one table row per connection count:
//! medians over `WEBHOOKD_BENCH_RUNS` runs (default 3).
//!
//! Run: `cargo bench --bench ingest`
//! Request counts: `WEBHOOKD_BENCH_REQUESTS="1=20000,16=100000,64=200000,256=200000"`
//! (the default); e.g. `WEBHOOKD_BENCH_REQUESTS=64=1000000` for the long run.

#![allow(clippy::cast_precision_loss)] // figures for display

mod common;

use common::{LoadResult, Server, median, run_load, runs};

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

fn main() {
    common::run_baseline_if_asked();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = runs();
    println!("ingest: POST with unique ids, median of {runs} runs; latency in ms");
    println!(
        "| conns | requests | webhookd 202/s | p50 | p99 | p99.9 | max | non-202 | baseline req/s | baseline p99 | webhookd/baseline |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut seed = 1;
    for (connections, requests) in plan() {
        let mut ours = Vec::new();
        let mut base = Vec::new();
        for _ in 0..runs {
            let dir = tempfile::tempdir().expect("temp dir");
            let server = Server::webhookd(dir.path(), &[]);
            ours.push(row(&run_load(server.addr, connections, requests, seed)));
            server.stop();
            seed += 1;

            let server = Server::baseline();
            base.push(row(&run_load(server.addr, connections, requests, seed)));
            drop(server);
            seed += 1;
        }
        let (o, b) = (median_row(&ours), median_row(&base));
        println!(
            "| {connections} | {requests} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {:.0} | {:.2} | {:.2} |",
            o.rate,
            o.p50,
            o.p99,
            o.p999,
            o.max,
            o.errors,
            b.rate,
            b.p99,
            o.rate / b.rate
        );
    }
}
