//! A recorded run: the real server on a recording disk, driven by clients
//! that post new webhooks, redeliver them (also while the first copy is in
//! flight), send conflicting payloads and read transactions back, with
//! idle pauses (so the id and rows merges run), a graceful restart, and a
//! live power cut in the middle of a burst. Every exchange goes into the
//! ledger with the moment of the disk at which it was sent and answered.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;
use serde_json::Value;

use crate::common::{Response, millis, now_millis, transaction_path};
use crate::deliveries::{Received, Receiver};
use crate::disk::{Disk, DiskOpener, Recorded};
use crate::server::{Client, Server};

/// Bytes one commit writes that only an id merge's idle chunk reaches.
const LARGE_COMMIT: usize = 200 * 1024;

/// Client connections posting at once: enough for writer batches of
/// several commands.
const CLIENTS: usize = 8;

/// What a recorded run does.
#[derive(Debug)]
pub struct Scenario {
    pub name: &'static str,
    /// `--process-delay`, ms.
    pub delay_ms: u64,
    /// `--retention`, ms, if on.
    pub retention_ms: Option<u64>,
    /// `--dedup-window`, ms (with retention).
    pub window_ms: u64,
    /// Redeliveries and conflicts go only to ids first posted this recently
    /// (ms); `None`: to any id, however long ago.
    pub replay_horizon_ms: Option<u64>,
    /// Whether it delivers to a destination the run starts
    /// ([`crate::deliveries`]).
    pub deliver: bool,
    pub steps: &'static [Step],
    /// Its share of the cut points.
    pub weight: usize,
}

impl Scenario {
    /// Its flags; `destination` the delivery flags, if it delivers.
    fn flags(&self, destination: Option<&Receiver>) -> Vec<String> {
        let mut flags = vec!["--process-delay".into(), format!("{}ms", self.delay_ms)];
        if let Some(retention) = self.retention_ms {
            flags.extend([
                "--retention".into(),
                format!("{retention}ms"),
                "--dedup-window".into(),
                format!("{}ms", self.window_ms),
            ]);
        }
        flags.extend(destination.map(Receiver::flags).unwrap_or_default());
        flags
    }

    /// The earliest a transaction first sent at `sent_ms` can have been
    /// purged (processed after its delay, purged after the retention), if
    /// retention is on.
    pub fn earliest_purge_ms(&self, sent_ms: u64) -> Option<u64> {
        Some(sent_ms + self.delay_ms + self.retention_ms?)
    }

    /// The earliest its tombstone can have expired: a window after that.
    pub fn earliest_expiry_ms(&self, sent_ms: u64) -> Option<u64> {
        Some(self.earliest_purge_ms(sent_ms)? + self.window_ms)
    }
}

/// One step of a scenario.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// This many new ids, posted without a pause, among redeliveries,
    /// conflicts and reads.
    Burst(usize),
    /// No webhooks for this long (ms); a reader reads now and then.
    Idle(u64),
    /// No requests until the id merge's first chunk is in the file, then
    /// on at once: the merge goes on beside the next burst.
    UntilMerged,
    /// Graceful stop, then a start on the same disk.
    Restart,
    /// A burst of this many new ids with a power cut at a random moment
    /// of it; requests go on after the cut, then the server is stopped.
    CutDuring(usize),
}

/// What one request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// The id's one payload.
    Post,
    /// A payload that differs from it (a conflict).
    Conflict,
    /// `GET /v1/transactions/{id}`.
    Read,
}

/// One exchange with the server.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Exchange {
    /// Number of the transaction id ([`transaction_id`]).
    pub id: usize,
    pub kind: Kind,
    /// The disk's moment when it was sent, and when it was answered
    /// (`usize::MAX`: never).
    pub sent_at: usize,
    pub answered_at: usize,
    pub sent_ms: u64,
    /// HTTP status, 0 if no answer came.
    pub status: u16,
    /// A 202's `duplicate` and `status`.
    pub duplicate: Option<bool>,
    pub shown_status: Option<String>,
    /// A read's `created_at` and `processed_at` (ms).
    pub created_ms: Option<u64>,
    pub processed_ms: Option<u64>,
    /// Whatever was wrong with the answer itself.
    pub wrong: Option<String>,
}

/// A recorded run.
pub struct Run {
    pub scenario: &'static Scenario,
    pub history: Vec<Recorded>,
    pub exchanges: Vec<Exchange>,
    /// Every request the destination received (none if it delivers nothing).
    pub received: Vec<Received>,
    /// Ids used (numbers `0..ids`).
    pub ids: usize,
    /// Moment of the live power cut.
    pub cut_moment: usize,
    /// When the run started (ms).
    pub started_ms: u64,
    /// How the server's stop after the cut ended.
    pub stop_after_cut: String,
    /// Stretches of moments worth more cut points than their share: a
    /// restart (shutdown merges, the next open), an id merge going on in
    /// chunks.
    pub focus: Vec<std::ops::Range<usize>>,
}

/// The transaction id of number `n`.
pub fn transaction_id(n: usize) -> String {
    format!("txn_pc_{n}")
}

/// The number of a transaction id, if it is one of ours.
pub fn id_number(id: &str) -> Option<usize> {
    id.strip_prefix("txn_pc_")?.parse().ok()
}

/// The one payload of id `n` (and, for a conflict, one that differs from it
/// in the destination account). Amounts vary in scale and size; the
/// currency is sent in lower case now and then (stored upper-cased).
pub fn payload(n: usize, conflict: bool) -> String {
    let amount = match n % 5 {
        0 => format!("{}.{:02}", n + 1, n % 100),
        1 => "0.000001".to_owned(),
        2 => format!("12345678901234567.{:02}", n % 100),
        3 => format!("{}", n + 1),
        _ => format!("{}.50", n % 1000),
    };
    let currency = ["INR", "usd", "EUR", "JPY"][n % 4];
    let destination = if conflict {
        "acc_conflict".to_owned()
    } else {
        format!("acc_m_{}", n % 37)
    };
    format!(
        r#"{{"transaction_id":"{}","source_account":"acc_s_{}","destination_account":"{destination}","amount":{amount},"currency":"{currency}"}}"#,
        transaction_id(n),
        n % 1000
    )
}

/// What the workers share.
struct Shared {
    disk: std::sync::Arc<Disk>,
    /// Next new id; a burst ends once it reaches `burst_end`.
    next_id: AtomicUsize,
    burst_end: AtomicUsize,
    /// The new id whose post cuts the power, if this burst cuts.
    cut_at_id: AtomicUsize,
    cut_moment: AtomicUsize,
    cut_done: AtomicBool,
    /// (id, first sent ms) of every id posted, in posting order.
    posted: Mutex<Vec<(usize, u64)>>,
    /// (id, first sent ms) of every id answered 202.
    acked: Mutex<Vec<(usize, u64)>>,
    exchanges: Mutex<Vec<Exchange>>,
    horizon_ms: Option<u64>,
}

impl Shared {
    /// A random id among `list`'s, first sent within the horizon.
    fn pick(&self, list: &Mutex<Vec<(usize, u64)>>, rng: &mut XorShiftRng) -> Option<usize> {
        let list = list.lock().unwrap();
        let now = now_millis();
        let from = match self.horizon_ms {
            None => 0,
            Some(h) => list.partition_point(|&(_, ms)| ms + h < now),
        };
        if from >= list.len() {
            return None;
        }
        let (id, ms) = list[rng.random_range(from..list.len())];
        self.horizon_ms.is_none_or(|h| ms + h >= now).then_some(id)
    }
}

/// Runs a scenario on a recording disk and returns what happened.
pub fn record(scenario: &'static Scenario, seed: u64) -> Run {
    let dir = tempfile::tempdir().expect("data dir");
    let disk = Disk::recording();
    let opener = DiskOpener(std::sync::Arc::clone(&disk));
    let destination = scenario
        .deliver
        .then(|| Receiver::start(std::sync::Arc::clone(&disk), seed));
    let flags = scenario.flags(destination.as_ref());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let started_ms = now_millis();
    opener.stand_in(dir.path());
    let mut server = Some(Server::start(dir.path(), opener.clone(), &flags));
    let shared = Shared {
        disk: std::sync::Arc::clone(&disk),
        next_id: AtomicUsize::new(0),
        burst_end: AtomicUsize::new(0),
        cut_at_id: AtomicUsize::new(usize::MAX),
        cut_moment: AtomicUsize::new(usize::MAX),
        cut_done: AtomicBool::new(false),
        posted: Mutex::new(Vec::new()),
        acked: Mutex::new(Vec::new()),
        exchanges: Mutex::new(Vec::new()),
        horizon_ms: scenario.replay_horizon_ms,
    };
    let mut rng = XorShiftRng::seed_from_u64(seed);
    let mut stop_after_cut = String::new();
    let mut focus = Vec::new();
    for step in scenario.steps {
        let addr = server.as_ref().expect("running").addr;
        match *step {
            Step::Burst(n) => burst(&shared, addr, n, None, &mut rng),
            Step::Idle(ms) => idle(&shared, addr, ms, &mut rng),
            Step::UntilMerged => {
                let from = disk.ops();
                let deadline = Instant::now() + Duration::from_secs(10);
                // The first chunk of an idle id merge is by far the largest
                // commit; nothing else writes while no webhooks come.
                while disk.bytes_in_last_commit() < LARGE_COMMIT && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                // That commit, and the next batches with the merge's chunks.
                focus.push(from..disk.ops() + 300);
            }
            Step::Restart => {
                let from = disk.ops();
                server
                    .take()
                    .expect("running")
                    .stop()
                    .expect("a graceful stop before the restart");
                opener.stand_in(dir.path());
                server = Some(Server::start(dir.path(), opener.clone(), &flags));
                focus.push(from..disk.ops() + 100);
            }
            Step::CutDuring(n) => {
                let at = rng.random_range(0..n);
                burst(&shared, addr, n, Some(at), &mut rng);
                // Requests go on against the dead disk for a while.
                idle(&shared, addr, 300, &mut rng);
                stop_after_cut = match server.take().expect("running").stop() {
                    Ok(()) => "stopped without an error".to_owned(),
                    Err(e) => format!("stopped with: {e}"),
                };
            }
        }
    }
    assert!(
        shared.cut_done.load(Ordering::SeqCst),
        "the scenario ends with a power cut"
    );
    Run {
        scenario,
        history: disk.history(),
        exchanges: shared.exchanges.into_inner().unwrap(),
        received: destination.map(|d| d.received()).unwrap_or_default(),
        ids: shared
            .next_id
            .load(Ordering::SeqCst)
            .min(shared.burst_end.load(Ordering::SeqCst)),
        cut_moment: shared.cut_moment.load(Ordering::SeqCst),
        started_ms,
        stop_after_cut,
        focus,
    }
}

/// `n` new ids from [`CLIENTS`] connections, with the power cut at the
/// post of the `cut_after`-th if given.
fn burst(
    shared: &Shared,
    addr: std::net::SocketAddr,
    n: usize,
    cut_after: Option<usize>,
    rng: &mut XorShiftRng,
) {
    let start = shared.next_id.load(Ordering::SeqCst);
    shared.burst_end.store(start + n, Ordering::SeqCst);
    shared.cut_at_id.store(
        cut_after.map_or(usize::MAX, |k| start + k),
        Ordering::SeqCst,
    );
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            let seed = rng.random();
            s.spawn(move || worker(shared, addr, seed));
        }
    });
}

fn worker(shared: &Shared, addr: std::net::SocketAddr, seed: u64) {
    let mut rng = XorShiftRng::seed_from_u64(seed);
    let mut client = Client::new(addr);
    loop {
        let roll = rng.random_range(0..100);
        if roll < 66 {
            let n = shared.next_id.fetch_add(1, Ordering::SeqCst);
            if n >= shared.burst_end.load(Ordering::SeqCst) {
                // Not used: the next burst starts from the counter's end.
                shared.next_id.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            if n == shared.cut_at_id.load(Ordering::SeqCst) {
                let moment = shared.disk.cut();
                shared.cut_moment.store(moment, Ordering::SeqCst);
                shared.cut_done.store(true, Ordering::SeqCst);
            }
            shared.posted.lock().unwrap().push((n, now_millis()));
            post(shared, &mut client, n, Kind::Post);
        } else if roll < 82 {
            if let Some(n) = shared.pick(&shared.posted, &mut rng) {
                post(shared, &mut client, n, Kind::Post);
            }
        } else if roll < 88 {
            if let Some(n) = shared.pick(&shared.acked, &mut rng) {
                post(shared, &mut client, n, Kind::Conflict);
            }
        } else if let Some(n) = shared.pick(&shared.acked, &mut rng) {
            read(shared, &mut client, n);
        }
    }
}

/// No webhooks for `ms`; a read every 50 ms.
fn idle(shared: &Shared, addr: std::net::SocketAddr, ms: u64, rng: &mut XorShiftRng) {
    let mut client = Client::new(addr);
    let until = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < until {
        if let Some(n) = shared.pick(&shared.acked, rng) {
            read(shared, &mut client, n);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn exchange(shared: &Shared, n: usize, kind: Kind) -> Exchange {
    Exchange {
        id: n,
        kind,
        sent_at: shared.disk.ops(),
        answered_at: usize::MAX,
        sent_ms: now_millis(),
        status: 0,
        duplicate: None,
        shown_status: None,
        created_ms: None,
        processed_ms: None,
        wrong: None,
    }
}

fn answered(shared: &Shared, mut ex: Exchange, response: Option<&Response>) {
    if let Some(response) = response {
        ex.answered_at = shared.disk.ops();
        ex.status = response.status;
    }
    shared.exchanges.lock().unwrap().push(ex);
}

fn post(shared: &Shared, client: &mut Client, n: usize, kind: Kind) {
    let mut ex = exchange(shared, n, kind);
    let sent_ms = ex.sent_ms;
    let response = client.post(&payload(n, kind == Kind::Conflict)).ok();
    if let Some(r) = &response {
        let cut = shared.cut_done.load(Ordering::SeqCst);
        match (kind, r.status) {
            (Kind::Post, 202) => {
                let body: Value = serde_json::from_str(&r.body).unwrap_or_default();
                ex.duplicate = body["duplicate"].as_bool();
                ex.shown_status = body["status"].as_str().map(str::to_owned);
                if body["transaction_id"] != transaction_id(n).as_str() || ex.duplicate.is_none() {
                    ex.wrong = Some(format!("202 with body {}", r.body));
                }
                let mut acked = shared.acked.lock().unwrap();
                if !acked.iter().rev().take(64).any(|&(id, _)| id == n) {
                    acked.push((n, sent_ms));
                }
            }
            (Kind::Conflict, 409) => {}
            (_, 503) if cut => {}
            (_, status) => {
                ex.wrong = Some(format!("{kind:?} answered {status}: {}", r.body));
            }
        }
    }
    answered(shared, ex, response.as_ref());
}

fn read(shared: &Shared, client: &mut Client, n: usize) {
    let mut ex = exchange(shared, n, Kind::Read);
    let response = client.get(&transaction_path(&transaction_id(n))).ok();
    if let Some(r) = &response {
        let cut = shared.cut_done.load(Ordering::SeqCst);
        match r.status {
            200 => {
                let body: Value = serde_json::from_str(&r.body).unwrap_or_default();
                ex.shown_status = body["status"].as_str().map(str::to_owned);
                if body["created_at"].is_string() {
                    ex.created_ms = Some(millis(&body["created_at"]));
                }
                if body["processed_at"].is_string() {
                    ex.processed_ms = Some(millis(&body["processed_at"]));
                }
                if body["transaction_id"] != transaction_id(n).as_str() {
                    ex.wrong = Some(format!("read {n}: {}", r.body));
                }
            }
            // Purged by retention.
            404 => {}
            503 if cut => {}
            status => ex.wrong = Some(format!("read answered {status}: {}", r.body)),
        }
    }
    answered(shared, ex, response.as_ref());
}
