//! `GET /metrics`: scraped from the real daemon and parsed as `OpenMetrics`
//! text (what Prometheus scrapes), with every counter checked against the
//! requests the test made.

mod common;

use std::net::SocketAddr;

use common::{DEADLINE, Daemon, get, get_transaction, payload, poll_until, post, post_with_type};
use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

fn scrape(addr: SocketAddr) -> Exposition {
    let response = get(addr, "/metrics");
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "content type: {:?}",
        response.header("content-type")
    );
    openmetrics_parser::openmetrics::parse_openmetrics(&response.body)
        .unwrap_or_else(|e| panic!("not valid OpenMetrics text ({e:?}):\n{}", response.body))
}

/// The sample of `family` whose labels include all of `labels`, if any.
fn sample<'a>(
    exposition: &'a Exposition,
    family: &str,
    labels: &[(&str, &str)],
) -> Option<&'a openmetrics_parser::Sample<OpenMetricsValue>> {
    exposition
        .families
        .get(family)
        .unwrap_or_else(|| panic!("no metric family {family}"))
        .iter_samples()
        .find(|sample| {
            let set = sample.get_labelset().expect("labels");
            labels
                .iter()
                .all(|(name, value)| set.get_label_value(name) == Some(*value))
        })
}

/// The value of the sample of `family` whose labels include all of `labels`
/// (counters, gauges); `None` if there is no such sample.
fn value(exposition: &Exposition, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    sample(exposition, family, labels).map(|sample| match &sample.value {
        OpenMetricsValue::Counter(c) => c.value.as_f64(),
        OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => n.as_f64(),
        other => panic!("{family} is not a counter or gauge: {other:?}"),
    })
}

/// A counter's or integer gauge's value; a missing series fails the test.
fn count(exposition: &Exposition, family: &str, labels: &[(&str, &str)]) -> u64 {
    let value = value(exposition, family, labels)
        .unwrap_or_else(|| panic!("no {family} series with labels {labels:?}"));
    whole(value)
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn whole(value: f64) -> u64 {
    assert!(
        value >= 0.0 && value.fract() == 0.0,
        "{value} is not a count"
    );
    value as u64
}

/// A histogram sample's (count, sum, buckets), checked for consistency:
/// cumulative buckets never decrease and the `+Inf` bucket equals the count.
fn histogram(exposition: &Exposition, family: &str, labels: &[(&str, &str)]) -> (u64, f64) {
    assert_eq!(
        exposition.families[family].family_type,
        OpenMetricsType::Histogram
    );
    let sample = sample(exposition, family, labels)
        .unwrap_or_else(|| panic!("no {family} sample with {labels:?}"));
    let OpenMetricsValue::Histogram(h) = &sample.value else {
        panic!("{family} is not a histogram");
    };
    let count = h.count.expect("histogram count");
    let mut previous = 0.0;
    for bucket in &h.buckets {
        let n = bucket.count.as_f64();
        assert!(n >= previous, "{family}: buckets must be cumulative");
        previous = n;
    }
    let last = h.buckets.last().expect("at least the +Inf bucket");
    assert!(last.upper_bound.is_infinite());
    assert_eq!(whole(last.count.as_f64()), count);
    (count, h.sum.expect("histogram sum").as_f64())
}

/// Two new, one redelivery, one conflict, one of each rejection, and two 404s.
fn make_one_request_of_each_kind(addr: SocketAddr) {
    assert_eq!(post(addr, &payload("m-secret-1", "10.00")).status, 202);
    assert_eq!(post(addr, &payload("m-secret-2", "20.00")).status, 202);
    assert_eq!(post(addr, &payload("m-secret-1", "10.0")).status, 202);
    assert_eq!(post(addr, &payload("m-secret-1", "11")).status, 409);
    assert_eq!(post(addr, "{").status, 400);
    assert_eq!(post(addr, r#"{"transaction_id":"x"}"#).status, 422);
    assert_eq!(post_with_type(addr, Some("text/plain"), "{}").status, 415);
    assert_eq!(get(addr, "/no/such/path").status, 404);
    assert_eq!(get_transaction(addr, "never-stored").status, 404);
}

const WEBHOOKS: &str = "/v1/webhooks/transactions";

#[test]
fn counters_histograms_and_build_info_follow_the_requests_made() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "0s"]);
    let addr = daemon.addr;

    let first = scrape(addr);
    let build = first
        .families
        .get("webhookd_build")
        .expect("build info family");
    assert_eq!(build.family_type, OpenMetricsType::Info);
    let version = build
        .iter_samples()
        .next()
        .expect("one build info sample")
        .get_labelset()
        .unwrap()
        .get_label_value("version")
        .map(str::to_owned);
    assert_eq!(version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(
        count(&first, "webhookd_webhooks", &[("outcome", "accepted")]),
        0
    );

    make_one_request_of_each_kind(addr);

    // Processing commits before the counter moves; wait for both.
    let metrics = poll_until(DEADLINE, "both transactions counted as processed", || {
        let m = scrape(addr);
        (count(&m, "webhookd_transactions_processed", &[]) >= 2).then_some(m)
    });
    assert_eq!(count(&metrics, "webhookd_transactions_processed", &[]), 2);

    for (outcome, expected) in [
        ("accepted", 2),
        ("duplicate", 1),
        ("conflict", 1),
        ("rejected", 3),
    ] {
        assert_eq!(
            count(&metrics, "webhookd_webhooks", &[("outcome", outcome)]),
            expected,
            "webhooks with outcome {outcome}"
        );
    }
    for (code, expected) in [
        ("conflict", 1),
        ("invalid_json", 1),
        ("invalid_field", 1),
        ("unsupported_media_type", 1),
        ("payload_too_large", 0),
    ] {
        assert_eq!(
            count(&metrics, "webhookd_webhook_rejections", &[("code", code)]),
            expected,
            "rejections with code {code}"
        );
    }
    for (route, status, expected) in [
        (WEBHOOKS, "202", 3),
        (WEBHOOKS, "409", 1),
        (WEBHOOKS, "400", 1),
        (WEBHOOKS, "422", 1),
        (WEBHOOKS, "415", 1),
        ("unknown", "404", 1),
        ("/v1/transactions/{transaction_id}", "404", 1),
    ] {
        assert_eq!(
            count(
                &metrics,
                "webhookd_http_requests",
                &[("route", route), ("status", status)]
            ),
            expected,
            "requests to {route} answered {status}"
        );
    }
    // Scrapes before this one were counted (a request is counted once answered).
    assert!(
        count(
            &metrics,
            "webhookd_http_requests",
            &[("route", "/metrics"), ("status", "200")]
        ) >= 1
    );

    let (webhook_requests, webhook_seconds) = histogram(
        &metrics,
        "webhookd_http_request_duration_seconds",
        &[("route", WEBHOOKS)],
    );
    assert_eq!(webhook_requests, 7);
    assert!(webhook_seconds > 0.0);

    // At least the two acceptances and one completion were committed.
    let (commits, commands) = histogram(&metrics, "webhookd_commit_batch_size", &[]);
    assert!(commits >= 2, "commits counted: {commits}");
    assert!(commands >= 2.0, "each commit carries a command");
    let (timed_commits, commit_seconds) =
        histogram(&metrics, "webhookd_commit_duration_seconds", &[]);
    assert_eq!(timed_commits, commits);
    assert!(commit_seconds > 0.0);

    // Labels are route templates: ids never become series.
    let text = get(addr, "/metrics").body;
    assert!(!text.contains("m-secret"), "an id leaked into a label");
    assert!(!text.contains("never-stored"), "an id leaked into a label");
}

#[test]
fn job_gauges_count_pending_work_from_the_jobs_table() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1h"]);
    let addr = daemon.addr;
    for i in 0..3 {
        assert_eq!(post(addr, &payload(&format!("g-{i}"), "1")).status, 202);
    }
    let metrics = scrape(addr);
    assert_eq!(count(&metrics, "webhookd_pending_jobs", &[]), 3);
    assert_eq!(count(&metrics, "webhookd_due_jobs", &[]), 0);
    let age = value(&metrics, "webhookd_oldest_due_job_age_seconds", &[]).expect("age gauge");
    assert!(age.abs() < f64::EPSILON, "nothing is due yet, age {age}");
    assert_eq!(count(&metrics, "webhookd_transactions_processed", &[]), 0);

    // The gauges are read from disk: a restart reports the same jobs.
    daemon.kill();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "1h"]);
    let metrics = scrape(daemon.addr);
    assert_eq!(count(&metrics, "webhookd_pending_jobs", &[]), 3);
}
