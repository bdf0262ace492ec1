//! `GET /`: whether storage still completes durable writes.
//!
//! The answer comes from a small durable write (a probe) through the store
//! writer, made at most once per [`HEALTH_PROBE_INTERVAL`]; requests in
//! between are served the last probe's answer, and requests that come while
//! a probe runs wait for it. So a flood of health checks costs at most one
//! commit a second, never a commit and a writer-queue slot each. A write of
//! webhooks that failed within the writer's memory of failures still makes
//! the answer UNHEALTHY at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde::Serialize;
use tokio::sync::watch;

use super::errors::{SHUTTING_DOWN, STORAGE_FAILING, json, with_retry_after};
use crate::clock::now_ms;
use crate::store::writer::{WriteError, WriterHandle};
use crate::view::format_time;

/// How long `GET /` waits for its write probe before calling storage unhealthy.
pub const HEALTH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Least time between two write probes; answers in between are the last probe's.
pub const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Why storage is unhealthy when a probe does not finish in time.
const PROBE_TIMED_OUT: &str = "storage did not complete a write in time";

/// A probe's answer: `None` when healthy, else the short reason.
#[derive(Clone, Copy)]
struct Probed {
    at: Instant,
    failure: Option<&'static str>,
}

/// The last probe and whether one is running; one per server.
pub(super) struct HealthCheck {
    latest: watch::Sender<Option<Probed>>,
    probing: AtomicBool,
}

/// Clears the probing flag when the probing request ends, also when its
/// client went away mid-probe, and wakes the requests waiting for it.
struct ProbingGuard<'a>(&'a HealthCheck);

impl Drop for ProbingGuard<'_> {
    fn drop(&mut self) {
        self.0.probing.store(false, Ordering::Release);
        self.0.latest.send_modify(|_| {});
    }
}

impl HealthCheck {
    pub(super) fn new() -> Self {
        HealthCheck {
            latest: watch::Sender::new(None),
            probing: AtomicBool::new(false),
        }
    }

    /// The storage failure a probe made at most [`HEALTH_PROBE_INTERVAL`]
    /// ago found, probing now if the last one is older.
    async fn probe_failure(&self, writer: &WriterHandle) -> Option<&'static str> {
        let mut latest = self.latest.subscribe();
        loop {
            if let Some(probed) = *latest.borrow_and_update()
                && probed.at.elapsed() < HEALTH_PROBE_INTERVAL
            {
                return probed.failure;
            }
            if self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let guard = ProbingGuard(self);
                // A probe may have finished since the look above.
                if let Some(probed) = *self.latest.borrow()
                    && probed.at.elapsed() < HEALTH_PROBE_INTERVAL
                {
                    return probed.failure;
                }
                let failure = probe(writer).await;
                self.latest.send_replace(Some(Probed {
                    at: Instant::now(),
                    failure,
                }));
                drop(guard);
                return failure;
            }
            // Another request is probing: wait for its answer (or for it to
            // give up), then look again.
            if tokio::time::timeout(HEALTH_PROBE_TIMEOUT, latest.changed())
                .await
                .is_err()
            {
                return Some(PROBE_TIMED_OUT);
            }
        }
    }
}

/// One durable write through the writer.
async fn probe(writer: &WriterHandle) -> Option<&'static str> {
    match tokio::time::timeout(HEALTH_PROBE_TIMEOUT, writer.probe()).await {
        // Overloaded (queue full) is not unhealthy in itself: the writer is
        // busy committing.
        Ok(Ok(()) | Err(WriteError::QueueFull)) => None,
        Ok(Err(WriteError::Closed)) => Some(SHUTTING_DOWN),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health probe: storage cannot complete a write");
            Some(STORAGE_FAILING)
        }
        Err(_) => {
            tracing::warn!(
                "health probe: storage did not complete a write within {HEALTH_PROBE_TIMEOUT:?}"
            );
            Some(PROBE_TIMED_OUT)
        }
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    current_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    /// With `--deliver-to`: `paused` while the breaker holds delivery, else `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery: Option<&'static str>,
}

/// `200 HEALTHY`, or `503 UNHEALTHY` with a short reason and `Retry-After`.
/// A paused delivery (`delivery_paused`, with `--deliver-to`) is reported
/// but is not unhealthy: webhooks are still accepted.
pub(super) async fn health(
    check: &HealthCheck,
    writer: &WriterHandle,
    delivery_paused: Option<bool>,
) -> Response<Full<Bytes>> {
    let failure = check.probe_failure(writer).await.or_else(|| {
        // Still unhealthy if real writes failed just now: a tiny probe can
        // fit on a disk that refuses the records themselves. The writer
        // has logged what failed.
        writer.recent_failure().map(|_| STORAGE_FAILING)
    });
    let body = Health {
        status: if failure.is_none() {
            "HEALTHY"
        } else {
            "UNHEALTHY"
        },
        current_time: format_time(now_ms()),
        reason: failure,
        delivery: delivery_paused.map(|paused| if paused { "paused" } else { "ok" }),
    };
    match failure {
        None => json(StatusCode::OK, &body),
        Some(_) => with_retry_after(json(StatusCode::SERVICE_UNAVAILABLE, &body)),
    }
}
