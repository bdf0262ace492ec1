//! The delivery metrics, registered only with `--deliver-to`: attempts by
//! outcome, their duration, attempts in flight, whether the breaker has
//! paused delivery, and how many transactions are FAILED.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Every outcome an attempt is counted under.
pub const ATTEMPT_OUTCOMES: [&str; 3] = ["delivered", "failed", "interrupted"];

pub(super) struct DeliveryMetrics {
    attempts: Family<OutcomeLabels, Counter>,
    duration: Histogram,
    in_flight: Gauge,
    paused: Gauge,
    failed: Gauge,
}

impl DeliveryMetrics {
    pub(super) fn register(registry: &mut Registry) -> DeliveryMetrics {
        let attempts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "delivery_attempts",
            "Delivery attempts by outcome: delivered (2xx), failed, interrupted (cut off by a stop, counted at the next start)",
            attempts.clone(),
        );
        // 1 ms to about 65 s, doubling: attempts wait on the network.
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "delivery_attempt_duration_seconds",
            "Time of one delivery attempt, from connecting to the end of the answer",
            duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "delivery_attempts_in_flight",
            "Delivery attempts whose request has not ended yet",
            in_flight.clone(),
        );
        let paused = Gauge::default();
        registry.register(
            "delivery_paused",
            "1 while delivery is paused after repeated failures (one probe every 30 s), else 0",
            paused.clone(),
        );
        let failed = Gauge::default();
        registry.register(
            "failed_transactions",
            "Transactions FAILED (delivery gave up), read at scrape time",
            failed.clone(),
        );
        for outcome in ATTEMPT_OUTCOMES {
            drop(attempts.get_or_create(&OutcomeLabels { outcome }));
        }
        DeliveryMetrics {
            attempts,
            duration,
            in_flight,
            paused,
            failed,
        }
    }
}

impl super::Metrics {
    /// A [`super::Metrics`] with the delivery metrics registered too.
    #[must_use]
    pub fn with_delivery() -> Self {
        let mut metrics = Self::new();
        metrics.delivery = Some(DeliveryMetrics::register(&mut metrics.registry));
        metrics
    }

    /// Counts one ended attempt (`outcome` one of [`ATTEMPT_OUTCOMES`]).
    pub fn delivery_attempt(&self, outcome: &'static str, elapsed: std::time::Duration) {
        if let Some(d) = &self.delivery {
            d.attempts.get_or_create(&OutcomeLabels { outcome }).inc();
            d.duration.observe(elapsed.as_secs_f64());
        }
    }

    /// Counts attempts a stop cut off, found at start-up.
    pub fn delivery_interrupted(&self, count: u64) {
        if let Some(d) = &self.delivery {
            d.attempts
                .get_or_create(&OutcomeLabels {
                    outcome: "interrupted",
                })
                .inc_by(count);
        }
    }

    /// Moves the in-flight gauge by `change`.
    pub fn delivery_in_flight(&self, change: i64) {
        if let Some(d) = &self.delivery {
            d.in_flight.inc_by(change);
        }
    }

    /// Sets the paused gauge.
    pub fn delivery_paused(&self, paused: bool) {
        if let Some(d) = &self.delivery {
            d.paused.set(i64::from(paused));
        }
    }

    /// Sets the FAILED gauge (read from the store at scrape time).
    pub fn set_failed(&self, count: u64) {
        if let Some(d) = &self.delivery {
            d.failed.set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Attempts in flight and whether delivery is paused, with
    /// `--deliver-to`.
    #[must_use]
    pub fn delivery_now(&self) -> Option<(i64, bool)> {
        self.delivery
            .as_ref()
            .map(|d| (d.in_flight.get(), d.paused.get() != 0))
    }

    /// Whether the delivery metrics are registered.
    #[must_use]
    pub fn delivers(&self) -> bool {
        self.delivery.is_some()
    }
}
