//! What `GET /metrics` exposes, in the `OpenMetrics` text format (which
//! Prometheus scrapes natively), built on the `prometheus-client` crate.
//!
//! Counters and histograms are updated where things happen (the request
//! handler, the store writer); the job gauges are read from the durable
//! jobs table at scrape time, so they are never out of step with the disk.
//! Every label has a small fixed set of values: routes are path templates,
//! never raw paths, so a client cannot create series at will.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::store::JobStats;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A request's route: the path template, so ids never become labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `GET /`.
    Health,
    /// `POST /v1/webhooks/transactions`.
    Webhooks,
    /// `GET /v1/transactions/{transaction_id}`.
    Transaction,
    /// `GET /v1/transactions`.
    Transactions,
    /// `GET /metrics`.
    Metrics,
    /// `GET /openapi.json`.
    OpenApi,
    /// Any other path.
    Unknown,
}

impl Route {
    /// The route label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Health => "/",
            Route::Webhooks => "/v1/webhooks/transactions",
            Route::Transaction => "/v1/transactions/{transaction_id}",
            Route::Transactions => "/v1/transactions",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/openapi.json",
            Route::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

/// What a webhook delivery came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// New transaction stored (202, `duplicate: false`).
    Accepted,
    /// Redelivery of a stored transaction (202, `duplicate: true`).
    Duplicate,
    /// Same id, different fields (409).
    Conflict,
    /// Any other error answer; its code is counted separately.
    Rejected(&'static str),
}

/// Every error code a webhook delivery can be answered with.
pub const WEBHOOK_ERROR_CODES: [&str; 8] = [
    "invalid_json",
    "conflict",
    "payload_too_large",
    "unsupported_media_type",
    "invalid_field",
    "invalid_signature",
    "request_timeout",
    "unavailable",
];

/// Every metric webhookd exposes. One per process, shared by `Arc`.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    webhooks: Family<OutcomeLabels, Counter>,
    rejections: Family<CodeLabels, Counter>,
    processed: Counter,
    purged: Counter,
    pending_jobs: Gauge,
    due_jobs: Gauge,
    oldest_due_age: Gauge<f64, AtomicU64>,
    unindexed_ids: Gauge,
    commit_batch_size: Histogram,
    commit_duration: Histogram,
}

/// Latency buckets: 50 µs to about 1.6 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric, all at zero.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("webhookd");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status code",
            requests.clone(),
        );
        let request_duration: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time from routing a request to its answer, by route",
            request_duration.clone(),
        );
        let webhooks = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhooks",
            "Webhook deliveries by outcome: accepted, duplicate, conflict, rejected",
            webhooks.clone(),
        );
        let rejections = Family::<CodeLabels, Counter>::default();
        registry.register(
            "webhook_rejections",
            "Webhook deliveries answered with an error, by error code",
            rejections.clone(),
        );
        let processed = Counter::default();
        registry.register(
            "transactions_processed",
            "Transactions marked PROCESSED (committed) since start",
            processed.clone(),
        );
        let purged = Counter::default();
        registry.register(
            "transactions_purged",
            "PROCESSED transactions deleted by --retention since start",
            purged.clone(),
        );
        let pending_jobs = Gauge::default();
        registry.register(
            "pending_jobs",
            "Accepted transactions not yet processed",
            pending_jobs.clone(),
        );
        let due_jobs = Gauge::default();
        registry.register(
            "due_jobs",
            "Pending jobs already due (the processing backlog)",
            due_jobs.clone(),
        );
        let oldest_due_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "oldest_due_job_age_seconds",
            "How long the earliest due, unprocessed job has been waiting",
            oldest_due_age.clone(),
        );
        let unindexed_ids = Gauge::default();
        registry.register(
            "unindexed_ids",
            "Stored transactions whose id is not yet in the on-disk id index (held in memory until the next merge)",
            unindexed_ids.clone(),
        );
        let commit_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "commit_batch_size",
            "Commands (acceptances, completions, probes) applied per durable commit",
            commit_batch_size.clone(),
        );
        let commit_duration = latency_histogram();
        registry.register(
            "commit_duration_seconds",
            "Time of one durable commit, fsync included",
            commit_duration.clone(),
        );
        registry.register(
            "build",
            "Version of this webhookd",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        // Series that exist from the start read 0 instead of missing, so
        // rates and alerts work before the first event of each kind.
        for outcome in ["accepted", "duplicate", "conflict", "rejected"] {
            drop(webhooks.get_or_create(&OutcomeLabels { outcome }));
        }
        for code in WEBHOOK_ERROR_CODES {
            drop(rejections.get_or_create(&CodeLabels { code }));
        }
        Metrics {
            registry,
            requests,
            request_duration,
            webhooks,
            rejections,
            processed,
            purged,
            pending_jobs,
            due_jobs,
            oldest_due_age,
            unindexed_ids,
            commit_batch_size,
            commit_duration,
        }
    }

    /// Counts one answered request.
    pub fn request(&self, route: Route, status: u16, elapsed: Duration) {
        let route = route.as_str();
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
        self.request_duration
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one webhook delivery by what it came to.
    pub fn webhook(&self, outcome: WebhookOutcome) {
        let name = match outcome {
            WebhookOutcome::Accepted => "accepted",
            WebhookOutcome::Duplicate => "duplicate",
            WebhookOutcome::Conflict => "conflict",
            WebhookOutcome::Rejected(code) => {
                self.rejections.get_or_create(&CodeLabels { code }).inc();
                "rejected"
            }
        };
        if outcome == WebhookOutcome::Conflict {
            self.rejections
                .get_or_create(&CodeLabels { code: "conflict" })
                .inc();
        }
        self.webhooks
            .get_or_create(&OutcomeLabels { outcome: name })
            .inc();
    }

    /// Records one durable commit: how many commands it carried, how long it took.
    pub fn commit(&self, commands: usize, elapsed: Duration) {
        // A batch holds at most a few thousand commands: exact in an f64.
        self.commit_batch_size
            .observe(f64::from(u32::try_from(commands).unwrap_or(u32::MAX)));
        self.commit_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts transactions whose processing committed.
    pub fn processed(&self, count: u64) {
        self.processed.inc_by(count);
    }

    /// Counts transactions deleted by retention.
    pub fn purged(&self, count: u64) {
        self.purged.inc_by(count);
    }

    /// Renders the exposition, with the job gauges set from `jobs` read at
    /// `now_ms` and the count of ids awaiting the id index.
    #[must_use]
    pub fn render(&self, jobs: &JobStats, now_ms: u64, unindexed_ids: usize) -> String {
        self.unindexed_ids
            .set(i64::try_from(unindexed_ids).unwrap_or(i64::MAX));
        self.pending_jobs
            .set(i64::try_from(jobs.pending).unwrap_or(i64::MAX));
        self.due_jobs
            .set(i64::try_from(jobs.due).unwrap_or(i64::MAX));
        let age = jobs
            .earliest_due_ms
            .filter(|&due| due <= now_ms)
            .map_or(0.0, |due| Duration::from_millis(now_ms - due).as_secs_f64());
        self.oldest_due_age.set(age);
        let mut text = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
