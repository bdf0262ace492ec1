//! The dispatcher: runs delivery attempts between the scheduler and the
//! writer.
//!
//! The scheduler asks the [`Gate`] how many attempts may start (the free
//! slots of `--deliver-concurrency`, fewer while the breaker counts
//! failures, one probe at a time while it is open) and which transactions
//! are busy, and hands due jobs over. The dispatcher journals their
//! attempts with one writer command for all the jobs handed over
//! meanwhile (one commit), sends each request, and journals each outcome
//! (outcomes of many attempts share a commit too).
//!
//! Never two attempts for one transaction: a job's log key is busy from
//! hand-over until its outcome has committed, and the scheduler skips busy
//! keys; the writer also refuses to start a transaction with an open
//! attempt. After a crash nothing is in flight, and the open attempts are
//! recorded `interrupted` before the scheduler starts.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::body::BodySource;
use super::breaker::{Breaker, Change};
use super::client::{AttemptResult, DeliveryClient};
use super::config::DeliveryConfig;
use crate::metrics::Metrics;
use crate::model::Record;
use crate::retry::RetrySchedule;
use crate::store::attempts::{AttemptOutcome, StoredAttempt};
use crate::store::writer::{Finish, Next, Started, WriteError, WriterHandle};
use crate::store::{Job, Store};

/// Pause before starting attempts again after the journal refused a start.
const HOLD_OFF_AFTER_ERROR: Duration = Duration::from_secs(1);

/// Pause between tries to journal an outcome while storage fails.
const FINISH_RETRY: Duration = Duration::from_secs(1);

/// What the scheduler may start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// How many attempts may start.
    pub free: usize,
    /// Whether the first is the breaker's probe.
    pub probe: bool,
    /// Log keys with an attempt handed over and not yet finished.
    pub busy: HashSet<u64>,
    /// When to ask again if nothing may start before then.
    pub retry_at: Option<Instant>,
}

struct Handed {
    jobs: Vec<Job>,
    probe: bool,
}

struct State {
    /// Keys handed over whose outcome has not committed yet.
    busy: HashSet<u64>,
    /// Attempts handed over whose request has not ended yet.
    running: usize,
    breaker: Breaker,
    /// No starts before this, after the journal refused one.
    hold_off: Option<Instant>,
}

struct Shared {
    state: Mutex<State>,
    concurrency: usize,
    paused: AtomicBool,
    wake_scheduler: Box<dyn Fn() + Send + Sync>,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Whole-value updates only: a panic elsewhere cannot leave it half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The request of an attempt ended (or was never sent).
    fn request_ended(&self, delivered: Option<bool>, probe: bool) {
        let change = {
            let mut state = self.lock();
            state.running = state.running.saturating_sub(1);
            let now = Instant::now();
            if let Some(delivered) = delivered {
                state.breaker.record(delivered, probe, now)
            } else {
                if probe {
                    state.breaker.probe_skipped(now);
                }
                None
            }
        };
        self.metrics.delivery_in_flight(-1);
        match change {
            Some(Change::Paused) => {
                self.paused.store(true, Ordering::Release);
                self.metrics.delivery_paused(true);
                tracing::warn!(
                    failures = super::breaker::THRESHOLD,
                    "delivery paused: the destination failed {} attempts in a row; one probe every {}s until one succeeds",
                    super::breaker::THRESHOLD,
                    super::breaker::PROBE_INTERVAL.as_secs()
                );
            }
            Some(Change::Resumed) => {
                self.paused.store(false, Ordering::Release);
                self.metrics.delivery_paused(false);
                tracing::info!("delivery resumed: the destination answered 2xx");
            }
            None => {}
        }
    }

    /// The transaction's outcome committed (or its start was skipped).
    fn release(&self, log_key: u64) {
        self.lock().busy.remove(&log_key);
        (self.wake_scheduler)();
    }
}

/// The scheduler's side of the dispatcher.
#[derive(Clone)]
pub struct Gate {
    shared: Arc<Shared>,
    handover: mpsc::UnboundedSender<Handed>,
}

impl Gate {
    /// What may start now.
    #[must_use]
    pub fn admission(&self) -> Admission {
        let now = Instant::now();
        let state = self.shared.lock();
        if let Some(until) = state.hold_off.filter(|&until| now < until) {
            return Admission {
                free: 0,
                probe: false,
                busy: HashSet::new(),
                retry_at: Some(until),
            };
        }
        let allowance = state
            .breaker
            .allowance(now, state.running, self.shared.concurrency);
        Admission {
            free: allowance.attempts,
            probe: allowance.probe,
            busy: state.busy.clone(),
            retry_at: allowance.retry_at,
        }
    }

    /// Hands due jobs over (no more than [`Gate::admission`] allowed, none
    /// busy); `probe` if the first is the breaker's probe.
    pub fn hand_over(&self, jobs: Vec<Job>, probe: bool) {
        if jobs.is_empty() {
            return;
        }
        {
            let mut state = self.shared.lock();
            state.running += jobs.len();
            state.busy.extend(jobs.iter().map(|job| job.log_key));
            if probe {
                state.breaker.probe_started(Instant::now());
            }
        }
        self.shared
            .metrics
            .delivery_in_flight(i64::try_from(jobs.len()).unwrap_or(i64::MAX));
        let count = jobs.len();
        if self.handover.send(Handed { jobs, probe }).is_err() {
            // The dispatcher has stopped: nothing was journaled.
            for _ in 0..count {
                self.shared.request_ended(None, false);
            }
        }
    }
}

/// Whether delivery is paused, for `GET /`.
#[derive(Clone)]
pub struct DeliveryStatus {
    shared: Arc<Shared>,
}

impl DeliveryStatus {
    /// Whether the breaker has paused delivery.
    #[must_use]
    pub fn paused(&self) -> bool {
        self.shared.paused.load(Ordering::Acquire)
    }
}

/// The running dispatcher: its task on the runtime, which owns every attempt.
pub struct Dispatcher {
    task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<Option<tokio::time::Instant>>,
}

impl Dispatcher {
    /// Starts the dispatcher on the current runtime; returns it with the
    /// scheduler's gate and the status `GET /` reads. `store` is read for
    /// original bodies (`--deliver-body original`); `wake_scheduler` is
    /// called whenever a slot or a busy transaction frees up.
    pub fn start(
        config: &DeliveryConfig,
        store: Store,
        writer: WriterHandle,
        metrics: Arc<Metrics>,
        wake_scheduler: Box<dyn Fn() + Send + Sync>,
    ) -> (Dispatcher, Gate, DeliveryStatus) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                busy: HashSet::new(),
                running: 0,
                breaker: Breaker::default(),
                hold_off: None,
            }),
            concurrency: config.concurrency,
            paused: AtomicBool::new(false),
            wake_scheduler,
            metrics,
        });
        let (handover, handed) = mpsc::unbounded_channel();
        let (stop, stopping) = watch::channel(None);
        let sender = Sender {
            client: DeliveryClient::new(config),
            bodies: BodySource::new(config.body, store),
            schedule: Arc::clone(&config.schedule),
        };
        let task = tokio::spawn(run(
            Arc::clone(&shared),
            handed,
            stopping,
            writer,
            Arc::new(sender),
        ));
        (
            Dispatcher { task, stop },
            Gate {
                shared: Arc::clone(&shared),
                handover,
            },
            DeliveryStatus { shared },
        )
    }

    /// Stops starting attempts and lets those in flight finish until
    /// `deadline`; any still running then are cut off (their attempts stay
    /// open and are recorded `interrupted` at the next start).
    pub async fn shutdown(self, deadline: tokio::time::Instant) {
        let _ = self.stop.send(Some(deadline));
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the delivery dispatcher failed");
        }
    }
}

async fn run(
    shared: Arc<Shared>,
    mut handed: mpsc::UnboundedReceiver<Handed>,
    mut stopping: watch::Receiver<Option<tokio::time::Instant>>,
    writer: WriterHandle,
    sender: Arc<Sender>,
) {
    let mut attempts = JoinSet::new();
    loop {
        let first = tokio::select! {
            handed = handed.recv() => handed,
            _ = stopping.changed() => None,
            Some(_) = attempts.join_next(), if !attempts.is_empty() => continue,
        };
        let Some(first) = first else { break };
        let mut jobs = first.jobs;
        let mut probe_key = first.probe.then(|| jobs[0].log_key);
        while let Ok(more) = handed.try_recv() {
            if more.probe {
                probe_key = Some(more.jobs[0].log_key);
            }
            jobs.extend(more.jobs);
        }
        let keys: Vec<u64> = jobs.iter().map(|job| job.log_key).collect();
        match writer.start_attempts(jobs).await {
            Ok(started) => {
                for started in started {
                    match started {
                        Started::Skip { log_key } => {
                            shared.request_ended(None, probe_key == Some(log_key));
                            shared.release(log_key);
                        }
                        Started::Go {
                            log_key,
                            attempt,
                            record,
                        } => {
                            attempts.spawn(attempt_task(
                                Arc::clone(&shared),
                                writer.clone(),
                                Arc::clone(&sender),
                                Attempt {
                                    log_key,
                                    number: attempt,
                                    record,
                                    probe: probe_key == Some(log_key),
                                },
                            ));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, jobs = keys.len(), "cannot journal delivery attempts; retrying shortly");
                shared.lock().hold_off = Some(Instant::now() + HOLD_OFF_AFTER_ERROR);
                for key in keys {
                    shared.request_ended(None, probe_key == Some(key));
                    shared.release(key);
                }
            }
        }
    }
    // Jobs handed over but not started: nothing was journaled for them.
    handed.close();
    while let Some(left) = handed.recv().await {
        for job in left.jobs {
            shared.request_ended(None, false);
            shared.release(job.log_key);
        }
    }
    // The loop also ends when the scheduler stops (its gate is dropped),
    // which comes before the shutdown call that names the deadline.
    let deadline = match stopping.wait_for(Option::is_some).await {
        Ok(deadline) => deadline.unwrap_or_else(tokio::time::Instant::now),
        // Dropped without a shutdown: nothing may wait.
        Err(_) => tokio::time::Instant::now(),
    };
    let in_flight = attempts.len();
    while !attempts.is_empty() {
        if tokio::time::timeout_at(deadline, attempts.join_next())
            .await
            .is_err()
        {
            tracing::warn!(
                attempts = attempts.len(),
                "shutdown grace over: cutting off delivery attempts still in flight; they are recorded as interrupted at the next start"
            );
            attempts.shutdown().await;
            break;
        }
    }
    if in_flight > 0 {
        tracing::info!(attempts = in_flight, "delivery stopped");
    }
}

/// What every attempt is sent with.
struct Sender {
    client: DeliveryClient,
    bodies: BodySource,
    schedule: Arc<RetrySchedule>,
}

struct Attempt {
    log_key: u64,
    number: u32,
    record: Record,
    probe: bool,
}

async fn attempt_task(
    shared: Arc<Shared>,
    writer: WriterHandle,
    sender: Arc<Sender>,
    attempt: Attempt,
) {
    let (result, sent) = match sender.bodies.body(attempt.log_key, &attempt.record).await {
        Ok(outgoing) => (
            sender
                .client
                .attempt(attempt.log_key, attempt.number, &outgoing)
                .await,
            true,
        ),
        // Journaled as a failed attempt that sent nothing; the schedule
        // goes on, as for any failure.
        Err(e) => {
            tracing::warn!(error = %e, log_key = attempt.log_key, "delivery attempt not sent");
            (AttemptResult::not_sent(&e.to_string()), false)
        }
    };
    let delivered = result.delivered();
    // A 410 is the destination up and answering on purpose: for the
    // breaker it counts as a success, not as a sign of an outage. An
    // attempt never sent tells nothing about the destination.
    shared.request_ended(sent.then_some(delivered || result.gone()), attempt.probe);
    shared.metrics.delivery_attempt(
        if delivered { "delivered" } else { "failed" },
        result.duration,
    );
    let next = next_step(
        &result,
        &sender.schedule,
        attempt.record.delivery.schedule_pos,
    );
    let finish = Finish {
        log_key: attempt.log_key,
        attempt: attempt.number,
        report: report(&result),
        next,
    };
    loop {
        match writer.finish_attempt(finish.clone()).await {
            Ok(()) => break,
            // Shutting down: left open, recorded `interrupted` at the next start.
            Err(WriteError::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %e, log_key = attempt.log_key, "cannot journal a delivery outcome; retrying");
                tokio::time::sleep(FINISH_RETRY).await;
            }
        }
    }
    if next == Next::Failed {
        tracing::warn!(
            log_key = attempt.log_key,
            attempts = attempt.number,
            error = result.error.as_deref(),
            "delivery failed for good: transaction FAILED"
        );
    }
    shared.release(attempt.log_key);
}

/// What follows an attempt: PROCESSED on a 2xx, FAILED on a 410 or when
/// the schedule has run out, else the next attempt after the schedule's
/// wait (at least a 429's or 503's `Retry-After`), counted from its end.
fn next_step(result: &AttemptResult, schedule: &RetrySchedule, position: u32) -> Next {
    if result.delivered() {
        return Next::Processed;
    }
    if result.gone() {
        return Next::Failed;
    }
    let Some(wait) = schedule.wait_before(position.saturating_add(1)) else {
        return Next::Failed;
    };
    let wait = result.retry_after.map_or(wait, |asked| wait.max(asked));
    let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
    Next::RetryAt(result.finished_at_ms.saturating_add(wait_ms))
}

fn report(result: &AttemptResult) -> StoredAttempt {
    StoredAttempt {
        started_at_ms: result.started_at_ms,
        finished_at_ms: Some(result.finished_at_ms),
        outcome: Some(if result.delivered() {
            AttemptOutcome::Delivered
        } else {
            AttemptOutcome::Failed
        }),
        status_code: result.status,
        error: result.error.clone(),
        duration_ms: Some(u64::try_from(result.duration.as_millis()).unwrap_or(u64::MAX)),
        response_excerpt: result.excerpt.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: Option<u16>, retry_after: Option<Duration>) -> AttemptResult {
        AttemptResult {
            started_at_ms: 1_000,
            finished_at_ms: 2_000,
            duration: Duration::from_secs(1),
            status,
            error: None,
            excerpt: None,
            retry_after,
        }
    }

    #[test]
    fn the_next_step_follows_the_answer_and_the_schedule() {
        let schedule: RetrySchedule = "0s,0s,0s".parse().unwrap();
        assert_eq!(
            next_step(&result(Some(204), None), &schedule, 0),
            Next::Processed
        );
        assert_eq!(
            next_step(&result(Some(410), None), &schedule, 0),
            Next::Failed
        );
        assert_eq!(
            next_step(&result(Some(500), None), &schedule, 0),
            Next::RetryAt(2_000)
        );
        assert_eq!(
            next_step(&result(Some(302), None), &schedule, 1),
            Next::RetryAt(2_000)
        );
        assert_eq!(
            next_step(&result(None, None), &schedule, 2),
            Next::Failed,
            "ran out"
        );
        let asked = result(Some(503), Some(Duration::from_secs(30)));
        assert_eq!(next_step(&asked, &schedule, 0), Next::RetryAt(32_000));
    }
}
