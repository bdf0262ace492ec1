//! The jobs of the log's tail: PROCESSING entries whose job rows are not
//! yet written. Kept in two orders, so the writer can drop a prefix of log
//! keys once their rows commit, and the scheduler can take just the due
//! ones without walking (or copying) the whole tail each round.

use std::collections::{BTreeMap, BTreeSet};

use crate::store::Job;

#[derive(Default)]
pub(crate) struct TailJobs {
    /// Log key → due time.
    by_key: BTreeMap<u64, u64>,
    /// (due time, log key), the same jobs in the order they fall due.
    by_due: BTreeSet<(u64, u64)>,
}

impl TailJobs {
    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }

    pub(crate) fn insert(&mut self, log_key: u64, due_ms: u64) {
        if let Some(old) = self.by_key.insert(log_key, due_ms) {
            self.by_due.remove(&(old, log_key));
        }
        self.by_due.insert((due_ms, log_key));
    }

    pub(crate) fn remove(&mut self, log_key: u64) {
        if let Some(due_ms) = self.by_key.remove(&log_key) {
            self.by_due.remove(&(due_ms, log_key));
        }
    }

    /// Drops every job at or before log key `upto`.
    pub(crate) fn drop_through(&mut self, upto: u64) {
        let kept = self.by_key.split_off(&upto.saturating_add(1));
        let dropped = std::mem::replace(&mut self.by_key, kept);
        if dropped.len() > self.by_key.len() {
            // Most of the tail went: rebuilding the rest is cheaper.
            self.by_due = self.by_key.iter().map(|(&k, &d)| (d, k)).collect();
        } else {
            for (log_key, due_ms) in dropped {
                self.by_due.remove(&(due_ms, log_key));
            }
        }
    }

    /// Up to `limit` jobs at or before log key `upto`, in log-key order.
    pub(crate) fn through(&self, upto: u64, limit: usize) -> Vec<(u64, u64)> {
        self.by_key
            .range(..=upto)
            .take(limit)
            .map(|(&key, &due)| (key, due))
            .collect()
    }

    /// Up to `limit` jobs due at or before `now_ms`, earliest first.
    pub(crate) fn due(&self, now_ms: u64, limit: usize) -> Vec<Job> {
        self.by_due
            .range(..=(now_ms, u64::MAX))
            .take(limit)
            .map(|&(due_ms, log_key)| Job { due_ms, log_key })
            .collect()
    }

    /// The job that falls due first.
    pub(crate) fn earliest(&self) -> Option<Job> {
        self.by_due
            .first()
            .map(|&(due_ms, log_key)| Job { due_ms, log_key })
    }

    /// Every job, in log-key order.
    pub(crate) fn all(&self) -> Vec<Job> {
        self.by_key
            .iter()
            .map(|(&log_key, &due_ms)| Job { due_ms, log_key })
            .collect()
    }
}

impl FromIterator<(u64, u64)> for TailJobs {
    /// From (log key, due time) pairs.
    fn from_iter<I: IntoIterator<Item = (u64, u64)>>(pairs: I) -> TailJobs {
        let by_key: BTreeMap<u64, u64> = pairs.into_iter().collect();
        let by_due = by_key.iter().map(|(&k, &d)| (d, k)).collect();
        TailJobs { by_key, by_due }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(jobs: &[Job]) -> Vec<u64> {
        jobs.iter().map(|job| job.log_key).collect()
    }

    #[test]
    fn due_jobs_come_in_due_order_whatever_their_log_keys() {
        // Due times need not follow log keys: a restart with another
        // --process-delay reloads older jobs due later than newer ones.
        let mut tail: TailJobs = [(1, 500), (2, 100), (3, 300)].into_iter().collect();
        tail.insert(4, 200);
        assert_eq!(keys(&tail.due(300, 10)), [2, 4, 3]);
        assert_eq!(keys(&tail.due(300, 2)), [2, 4]);
        assert_eq!(keys(&tail.due(99, 10)), Vec::<u64>::new());
        assert_eq!(tail.earliest().map(|job| job.due_ms), Some(100));
    }

    #[test]
    fn both_orders_forget_removed_and_dropped_jobs() {
        let mut tail: TailJobs = (1..=10).map(|k| (k, 1000 - k)).collect();
        tail.remove(10);
        tail.remove(42);
        tail.drop_through(3);
        assert_eq!(tail.len(), 6);
        assert_eq!(keys(&tail.due(u64::MAX, 100)), [9, 8, 7, 6, 5, 4]);
        assert_eq!(tail.through(6, 100), [(4, 996), (5, 995), (6, 994)]);
        assert_eq!(tail.through(6, 2), [(4, 996), (5, 995)]);
        // Dropping most of the tail takes the rebuilding path.
        tail.drop_through(8);
        assert_eq!(keys(&tail.all()), [9]);
        assert_eq!(tail.earliest().map(|job| job.due_ms), Some(991));
        // Re-inserting a key moves it in the due order.
        tail.insert(9, 5);
        assert_eq!(
            tail.due(10, 10),
            [Job {
                due_ms: 5,
                log_key: 9
            }]
        );
        assert_eq!(tail.len(), 1);
    }
}
