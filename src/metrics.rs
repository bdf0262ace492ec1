//! What `GET /metrics` exposes, built on the `prometheus-client` crate, in
//! the format the scraper asks for: `OpenMetrics` text when its `Accept`
//! names `application/openmetrics-text` (Prometheus does), else the
//! Prometheus text format 0.0.4 that every other scraper and
//! `promtool check metrics` read.
//!
//! Counters and histograms are updated where things happen (the request
//! handler, the store writer); the job gauges are set at scrape time from
//! what the store reads then (its jobs table and the log's tail).
//! Every label has a small fixed set of values: routes are path templates,
//! never raw paths, so a client cannot create series at will.

mod delivery;

pub use delivery::ATTEMPT_OUTCOMES;

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Pending-job figures for the job gauges, read at scrape time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobStats {
    /// Jobs not yet completed.
    pub pending: u64,
    /// Jobs already due but not yet completed (counted up to a cap).
    pub due: u64,
    /// Due time of the earliest pending job.
    pub earliest_due_ms: Option<u64>,
}

/// A format `GET /metrics` answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `OpenMetrics` text 1.0.0, for scrapers that ask for it.
    OpenMetrics,
    /// The Prometheus text format 0.0.4, the default.
    PrometheusText,
}

/// Media type of `OpenMetrics` text.
const OPENMETRICS_MEDIA_TYPE: &str = "application/openmetrics-text";

impl Format {
    /// The format for a request with this `Accept` header: `OpenMetrics` if
    /// it names `application/openmetrics-text` with a quality above zero
    /// and at least that of any range matching `text/plain`; else the
    /// Prometheus text format (also without an `Accept` header).
    #[must_use]
    pub fn negotiate(accept: Option<&str>) -> Format {
        let mut openmetrics = 0.0_f32;
        let mut text = 0.0_f32;
        for range in accept.unwrap_or_default().split(',') {
            let mut params = range.split(';');
            let media_type = params.next().unwrap_or_default().trim();
            let quality = params
                .filter_map(|param| param.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, q)| q.trim().parse::<f32>().ok())
                .unwrap_or(0.0);
            if media_type.eq_ignore_ascii_case(OPENMETRICS_MEDIA_TYPE) {
                openmetrics = openmetrics.max(quality);
            } else if ["text/plain", "text/*", "*/*"]
                .iter()
                .any(|t| media_type.eq_ignore_ascii_case(t))
            {
                text = text.max(quality);
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }

    /// The `Content-Type` of an answer in this format.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

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
    /// `GET /v1/transactions/{transaction_id}/attempts`.
    Attempts,
    /// `POST /v1/transactions/{transaction_id}/redeliver`.
    Redeliver,
    /// `POST /v1/redeliveries`.
    Redeliveries,
    /// `GET /v1/redeliveries/{redelivery_id}`.
    Redelivery,
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
            Route::Attempts => "/v1/transactions/{transaction_id}/attempts",
            Route::Redeliver => "/v1/transactions/{transaction_id}/redeliver",
            Route::Redeliveries => "/v1/redeliveries",
            Route::Redelivery => "/v1/redeliveries/{redelivery_id}",
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
    /// An event the payload map does not take (200 `IGNORED`); nothing stored.
    Ignored,
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
    /// With `--deliver-to` only.
    delivery: Option<delivery::DeliveryMetrics>,
}

/// Creates the webhook series, so they read 0 from the start and rates and
/// alerts work before the first event of each kind.
fn zero_series(
    webhooks: &Family<OutcomeLabels, Counter>,
    rejections: &Family<CodeLabels, Counter>,
) {
    for outcome in ["accepted", "duplicate", "conflict", "rejected"] {
        drop(webhooks.get_or_create(&OutcomeLabels { outcome }));
    }
    for code in WEBHOOK_ERROR_CODES {
        drop(rejections.get_or_create(&CodeLabels { code }));
    }
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
            "Webhook deliveries by outcome: accepted, duplicate, conflict, ignored, rejected",
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
        zero_series(&webhooks, &rejections);
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
            delivery: None,
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
            WebhookOutcome::Ignored => "ignored",
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

    /// Counts webhooks stored as new by one commit. Counted at the commit,
    /// not on the way out of the response: a webhook stays accepted if its
    /// client is gone before the answer.
    pub fn accepted(&self, count: u64) {
        self.webhooks
            .get_or_create(&OutcomeLabels {
                outcome: "accepted",
            })
            .inc_by(count);
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

    /// Renders the exposition in `format`, with the job gauges set from
    /// `jobs` read at `now_ms` and the count of ids awaiting the id index.
    #[must_use]
    pub fn render(
        &self,
        format: Format,
        jobs: &JobStats,
        now_ms: u64,
        unindexed_ids: usize,
    ) -> String {
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
        match format {
            Format::OpenMetrics => text,
            Format::PrometheusText => prometheus_text(&text),
        }
    }
}

/// The Prometheus text format 0.0.4 of an `OpenMetrics` exposition as
/// `prometheus-client` writes it (the crate encodes `OpenMetrics` only).
/// The sample lines are the same in both formats; the metadata differs: a
/// counter family is named with its `_total` suffix, an info family is a
/// gauge named with its `_info` suffix (its one sample is
/// `webhookd_build_info{version="…"} 1` in both formats), an unknown one is
/// `untyped`, and there are no `# UNIT` lines and no `# EOF`.
fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "unknown" => ("", "untyped"),
                other => ("", other),
            };
            if let Some((_, text)) = help.take_if(|(help_name, _)| *help_name == name) {
                let _ = writeln!(out, "# HELP {name}{suffix} {text}");
            }
            let _ = writeln!(out, "# TYPE {name}{suffix} {kind}");
            continue;
        }
        // prometheus-client writes each family's HELP right before its TYPE.
        if let Some((name, text)) = help.take() {
            let _ = writeln!(out, "# HELP {name} {text}");
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if !(line.starts_with("# UNIT ") || line == "# EOF") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_asked_for_at_least_as_much_as_text() {
        for (accept, expected) in [
            (None, Format::PrometheusText),
            (Some(""), Format::PrometheusText),
            (Some("*/*"), Format::PrometheusText),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (
                Some("application/openmetrics-text; version=1.0.0; q=0.5, text/plain; q=0.5"),
                Format::OpenMetrics,
            ),
            (
                Some("application/openmetrics-text;q=0.4,text/plain;q=0.5"),
                Format::PrometheusText,
            ),
            (
                Some("application/openmetrics-text;q=0"),
                Format::PrometheusText,
            ),
            (
                Some("application/openmetrics-text;q=nonsense"),
                Format::PrometheusText,
            ),
            (Some("application/json"), Format::PrometheusText),
        ] {
            assert_eq!(Format::negotiate(accept), expected, "{accept:?}");
        }
    }

    #[test]
    fn the_text_format_renames_counter_and_info_families_and_drops_eof() {
        let openmetrics = "\
# HELP a_requests Requests.
# TYPE a_requests counter
a_requests_total{route=\"/\"} 3
# HELP a_build Version.
# TYPE a_build info
a_build_info{version=\"1\"} 1
# HELP a_queue Queue.
# TYPE a_queue gauge
a_queue 2
# EOF
";
        assert_eq!(
            prometheus_text(openmetrics),
            "\
# HELP a_requests_total Requests.
# TYPE a_requests_total counter
a_requests_total{route=\"/\"} 3
# HELP a_build_info Version.
# TYPE a_build_info gauge
a_build_info{version=\"1\"} 1
# HELP a_queue Queue.
# TYPE a_queue gauge
a_queue 2
"
        );
    }

    #[test]
    fn every_family_has_help_and_type_in_both_formats() {
        let metrics = Metrics::new();
        metrics.request(Route::Health, 200, Duration::from_millis(1));
        let jobs = JobStats {
            pending: 0,
            due: 0,
            earliest_due_ms: None,
        };
        for format in [Format::OpenMetrics, Format::PrometheusText] {
            let text = metrics.render(format, &jobs, 0, 0);
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let name = rest.split(' ').next().unwrap();
                    assert!(
                        lines[i - 1].starts_with(&format!("# HELP {name} ")),
                        "{format:?}: {name} has no HELP"
                    );
                    assert!(
                        format == Format::OpenMetrics || !rest.ends_with(" info"),
                        "{line}"
                    );
                }
            }
        }
    }
}
