//! Drives a server with `wrk` (Debian's package; `benches/install-wrk.sh`)
//! and `benches/wrk/webhooks.lua`, which POSTs unique ids and prints one
//! `WRK_RESULT` line that this parses.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{LoadResult, load_threads};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/wrk/webhooks.lua");

/// Runs `wrk` for `duration` (whole seconds, at least one) over
/// `connections` connections, calling `each_second` meanwhile.
pub fn run(
    addr: SocketAddr,
    connections: usize,
    seed: u64,
    duration: Duration,
    mut each_second: impl FnMut(),
) -> LoadResult {
    let threads = load_threads().min(connections);
    let mut child = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .args(["--timeout", "10s", "-s", SCRIPT])
        .arg(format!("http://{addr}/"))
        .env("WEBHOOKD_BENCH_SEED", seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run wrk (benches/install-wrk.sh installs it)");
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).expect("read wrk output");
        text
    });
    let mut last_tick = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for wrk") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick += Duration::from_secs(1);
            each_second();
        }
    };
    let output = reader.join().expect("wrk output reader");
    assert!(status.success(), "wrk failed ({status}):\n{output}");
    parse(&output).unwrap_or_else(|| panic!("no WRK_RESULT line in wrk's output:\n{output}"))
}

/// The figures of the `WRK_RESULT` line.
fn parse(output: &str) -> Option<LoadResult> {
    let line = output.lines().find_map(|l| l.strip_prefix("WRK_RESULT "))?;
    let field = |name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    let requests = field("requests")?;
    // wrk counts answers with a status of 400 or more as status errors.
    let other = field("status")?;
    let errors = field("connect")? + field("read")? + field("write")? + field("timeout")?;
    let ms = |name: &str| field(name).map(|us| us as f64 / 1000.0);
    Some(LoadResult {
        accepted: requests - other,
        other,
        errors,
        elapsed: Duration::from_micros(field("duration_us")?),
        latency_ms: [ms("p50_us")?, ms("p99_us")?, ms("p999_us")?, ms("max_us")?],
    })
}
