//! Deliveries in a recorded run: the destination ([`Receiver`]) notes
//! every request it gets with the disk's moment, as the ledger does for
//! answers, and answers most with 200, some with 500 (tried again) and a
//! few with 410 (FAILED at once).
//!
//! A cut at a moment must then hold, for every request received by that
//! moment, its transaction and that attempt's row in the journal
//! ([`check_journal`]): a request leaves only after the commit that
//! journals its attempt has been synced. A transaction the file shows
//! PROCESSED was answered 2xx by then, and one it shows FAILED was
//! answered otherwise by then.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use webhookd::model::{Record, Status};

use crate::disk::Disk;
use crate::sink::{Answer, Sink};
use crate::workload::{id_number, transaction_id};

/// Attempts a transaction gets before it is FAILED, and their waits.
const RETRY_SCHEDULE: &str = "0s,100ms,100ms,100ms";

/// One request the destination received.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Received {
    /// Number of the transaction id.
    pub id: usize,
    /// Its `Webhook-Attempt`.
    pub attempt: u32,
    /// The disk's moment when its head and body had been read.
    pub at: usize,
    /// What the destination answered.
    pub status: u16,
}

/// The destination of a recorded run.
pub struct Receiver {
    sink: Sink,
    log: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Starts a destination on port 0 that notes `disk`'s moment at each
    /// request; its answers are chosen by `seed`.
    pub fn start(disk: Arc<Disk>, seed: u64) -> Receiver {
        let log = Arc::new(Mutex::new(Vec::new()));
        let noted = Arc::clone(&log);
        let sink = Sink::start(move |seen| {
            let at = disk.ops();
            let id = seen.json()["transaction_id"]
                .as_str()
                .and_then(id_number)
                .expect("a delivery of one of the run's transactions");
            let attempt = seen.attempt();
            let status = answer(seed, id, attempt);
            noted.lock().unwrap().push(Received {
                id,
                attempt,
                at,
                status,
            });
            Answer::status(status)
        });
        Receiver { sink, log }
    }

    /// The flags that deliver to it.
    pub fn flags(&self) -> Vec<String> {
        flags(&self.sink.url())
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }
}

/// Flags that deliver to `url` with the runs' retry schedule.
pub fn flags(url: &str) -> Vec<String> {
    [
        "--deliver-to",
        url,
        "--retry-schedule",
        RETRY_SCHEDULE,
        "--deliver-timeout",
        "5s",
        "--deliver-concurrency",
        "16",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The destination's answer to attempt `attempt` of id `id`: 75% 200,
/// 21% 500, 4% 410. Ten failures in a row pause delivery for 30 s, which
/// at these odds a run almost never sees.
fn answer(seed: u64, id: usize, attempt: u32) -> u16 {
    let roll = crate::mix(seed, id as u64, u64::from(attempt)) % 100;
    match roll {
        0..75 => 200,
        75..96 => 500,
        _ => 410,
    }
}

/// What [`check_journal`] found.
#[derive(Debug, Default)]
pub struct JournalFound {
    /// Requests received by the cut, each with its attempt's row.
    pub requests: usize,
    /// Transactions the file shows FAILED.
    pub failed: usize,
}

/// Every request received by `moment` has its transaction stored and its
/// attempt journaled (`journal` holds the `(log key, attempt)` of every
/// row, `open` those with no outcome yet), counted in its record once its
/// outcome is; PROCESSED and FAILED agree with what the destination
/// answered by then.
pub fn check_journal(
    received: &[Received],
    moment: usize,
    stored: &HashMap<usize, Record>,
    keys: &HashMap<usize, u64>,
    journal: &HashSet<(u64, u32)>,
    open: &[(u64, u32)],
) -> Result<JournalFound, String> {
    let open: HashSet<(u64, u32)> = open.iter().copied().collect();
    let mut found = JournalFound::default();
    let mut answered: HashMap<usize, (bool, bool)> = HashMap::new();
    for r in received.iter().filter(|r| r.at <= moment) {
        let id = transaction_id(r.id);
        let (Some(record), Some(&key)) = (stored.get(&r.id), keys.get(&r.id)) else {
            return Err(format!(
                "{id}: attempt {} reached the destination at moment {} and the transaction is not in the file cut at {moment}",
                r.attempt, r.at
            ));
        };
        if !journal.contains(&(key, r.attempt)) {
            return Err(format!(
                "{id}: attempt {} reached the destination at moment {} and is not journaled in the file cut at {moment}",
                r.attempt, r.at
            ));
        }
        if record.delivery.attempts < r.attempt && !open.contains(&(key, r.attempt)) {
            return Err(format!(
                "{id}: attempt {} reached the destination at moment {}, has an outcome, and the record counts {} attempts",
                r.attempt, r.at, record.delivery.attempts
            ));
        }
        let seen = answered.entry(r.id).or_default();
        seen.0 |= r.status == 200;
        seen.1 |= r.status != 200;
        found.requests += 1;
    }
    for (&n, record) in stored {
        let (ok, not_ok) = answered.get(&n).copied().unwrap_or_default();
        let agrees = match record.status {
            Status::Processed => ok,
            Status::Failed => {
                found.failed += 1;
                not_ok
            }
            Status::Processing => true,
        };
        if !agrees {
            return Err(format!(
                "{} is {:?} in the file cut at {moment}, and the destination had answered {}",
                transaction_id(n),
                record.status,
                match (ok, not_ok) {
                    (false, false) => "nothing",
                    (true, _) => "2xx",
                    (false, true) => "only failures",
                }
            ));
        }
    }
    Ok(found)
}
