//! `GET /metrics`: scraped from the real daemon, as Prometheus scrapes it
//! (`OpenMetrics` text, parsed here) with every counter checked against the
//! requests the test made, and as other scrapers do (the Prometheus text
//! format 0.0.4, checked by `promtool check metrics` and parsed here); a
//! real Prometheus server scrapes it too.
//!
//! The promtool and Prometheus tests need Debian's `prometheus` package
//! (`.ci/run` installs it); where it is missing they are ignored, except
//! under `CI=true`.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::requirements::Need;
use common::{
    DEADLINE, Daemon, get, get_transaction, payload, poll_until, post, post_with_type, send_raw,
};
use openmetrics_parser::{
    MetricsExposition, OpenMetricsType, OpenMetricsValue, PrometheusType, PrometheusValue,
};

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;
type TextExposition = MetricsExposition<PrometheusType, PrometheusValue>;

/// What Prometheus 2.x sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics` with `accept` as the `Accept` header (none if `None`).
fn get_metrics(addr: SocketAddr, accept: Option<&str>) -> common::Response {
    let accept = accept.map_or_else(String::new, |a| format!("Accept: {a}\r\n"));
    let response = send_raw(
        addr,
        format!("GET /metrics HTTP/1.1\r\nHost: test\r\n{accept}Connection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(response.status, 200, "{}", response.body);
    response
}

/// Scrapes as Prometheus does, and parses the answer as `OpenMetrics`.
fn scrape(addr: SocketAddr) -> Exposition {
    let response = get_metrics(addr, Some(PROMETHEUS_ACCEPT));
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

/// Scrapes without an `Accept` header and parses the answer as the
/// Prometheus text format 0.0.4; returns it with the raw text.
fn scrape_text(addr: SocketAddr) -> (TextExposition, String) {
    let response = get_metrics(addr, None);
    assert_eq!(response.header("content-type"), Some(TEXT_TYPE));
    let parsed = openmetrics_parser::prometheus::parse_prometheus(&response.body)
        .unwrap_or_else(|e| panic!("not valid Prometheus text ({e:?}):\n{}", response.body));
    (parsed, response.body)
}

/// Runs `promtool check metrics` (parse and lint) on `text`; fails with
/// what it said.
fn promtool_check(text: &str) {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\non:\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
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

    // Labels are route templates: ids never become series (in either format).
    for accept in [Some(PROMETHEUS_ACCEPT), None] {
        let text = get_metrics(addr, accept).body;
        assert!(!text.contains("m-secret"), "an id leaked into a label");
        assert!(!text.contains("never-stored"), "an id leaked into a label");
    }
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

/// The value of the text-format sample of `family` with all of `labels`.
fn text_value(exposition: &TextExposition, family: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = exposition
        .families
        .get(family)
        .unwrap_or_else(|| panic!("no metric family {family} in the text format"))
        .iter_samples()
        .find(|sample| {
            let set = sample.get_labelset().expect("labels");
            labels
                .iter()
                .all(|(name, value)| set.get_label_value(name) == Some(*value))
        })
        .unwrap_or_else(|| panic!("no {family} sample with {labels:?}"));
    match &sample.value {
        PrometheusValue::Counter(c) => c.value.as_f64(),
        PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
        other => panic!("{family} is not a counter or gauge: {other:?}"),
    }
}

#[test]
#[cfg_attr(
    webhookd_no_promtool,
    ignore = "needs promtool (apt-get install prometheus); never ignored under CI=true"
)]
fn without_accept_the_prometheus_text_format_passes_promtool_and_matches_openmetrics() {
    common::require(Need::Promtool);
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--process-delay", "0s"]);
    let addr = daemon.addr;
    // Before any request, when most families have few series, and after.
    let (_, fresh) = scrape_text(addr);
    promtool_check(&fresh);
    make_one_request_of_each_kind(addr);
    let openmetrics = poll_until(DEADLINE, "both transactions counted as processed", || {
        let m = scrape(addr);
        (count(&m, "webhookd_transactions_processed", &[]) >= 2).then_some(m)
    });
    let (text, raw) = scrape_text(addr);
    promtool_check(&raw);
    assert!(!raw.contains("# EOF") && !raw.contains("# UNIT"), "{raw}");

    // Every OpenMetrics family is in the text format, named and typed as
    // that format wants: counters with `_total`, info as a gauge with `_info`.
    for (name, family) in &openmetrics.families {
        let (text_name, text_type) = match family.family_type {
            OpenMetricsType::Counter => (format!("{name}_total"), PrometheusType::Counter),
            OpenMetricsType::Info => (format!("{name}_info"), PrometheusType::Gauge),
            OpenMetricsType::Gauge => (name.clone(), PrometheusType::Gauge),
            OpenMetricsType::Histogram => (name.clone(), PrometheusType::Histogram),
            ref other => panic!("{name}: unexpected type {other:?}"),
        };
        let text_family = text
            .families
            .get(&text_name)
            .unwrap_or_else(|| panic!("{name} is missing from the text format as {text_name}"));
        assert_eq!(text_family.family_type, text_type, "{text_name}");
        assert!(!text_family.help.is_empty(), "{text_name} has no HELP");
    }
    assert_eq!(text.families.len(), openmetrics.families.len());

    // The same counts in both formats (no webhook arrived in between).
    for outcome in ["accepted", "duplicate", "conflict", "rejected"] {
        let in_text = text_value(&text, "webhookd_webhooks_total", &[("outcome", outcome)]);
        assert_eq!(
            whole(in_text),
            count(&openmetrics, "webhookd_webhooks", &[("outcome", outcome)]),
            "{outcome}"
        );
    }
    let processed = text_value(&text, "webhookd_transactions_processed_total", &[]);
    assert_eq!(whole(processed), 2);
    let build = text
        .families
        .get("webhookd_build_info")
        .expect("build info");
    let sample = build.iter_samples().next().expect("one build info sample");
    assert_eq!(
        sample.get_labelset().unwrap().get_label_value("version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(whole(text_value(&text, "webhookd_build_info", &[])), 1);
}

#[test]
fn accept_chooses_openmetrics_only_when_the_scraper_asks_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    for (accept, expected) in [
        (Some(PROMETHEUS_ACCEPT), OPENMETRICS_TYPE),
        // Prometheus 3.
        (
            Some(
                "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
                 application/openmetrics-text;version=0.0.1;q=0.5,\
                 text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,\
                 text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
            ),
            OPENMETRICS_TYPE,
        ),
        (Some("Application/OpenMetrics-Text"), OPENMETRICS_TYPE),
        (None, TEXT_TYPE),
        (Some("*/*"), TEXT_TYPE),
        (Some("text/plain"), TEXT_TYPE),
        (Some("application/openmetrics-text;q=0"), TEXT_TYPE),
        (
            Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"),
            TEXT_TYPE,
        ),
        (
            Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            TEXT_TYPE,
        ),
    ] {
        let response = get_metrics(daemon.addr, accept);
        assert_eq!(
            response.header("content-type"),
            Some(expected),
            "{accept:?}"
        );
        assert_eq!(response.header("vary"), Some("accept"));
        assert_eq!(
            response.body.ends_with("# EOF\n"),
            expected == OPENMETRICS_TYPE,
            "{accept:?}"
        );
    }
}

/// A Prometheus server scraping one target every second, killed (SIGKILL) when
/// dropped.
struct Prometheus {
    child: std::process::Child,
    /// Its web server (API).
    web: SocketAddr,
}

impl Prometheus {
    fn start(dir: &std::path::Path, target: SocketAddr) -> Prometheus {
        // A free port for Prometheus's own web server.
        let web = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: webhookd\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, web }
    }

    /// The target's state once it has been scraped ("up" only once a
    /// scrape was parsed without error).
    fn scraped_target(&self) -> serde_json::Value {
        poll_until(
            std::time::Duration::from_secs(60),
            "Prometheus to scrape webhookd",
            || {
                let response = common::try_send_raw(
                    self.web,
                    b"GET /api/v1/targets HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                )
                .ok()?;
                // 503 until Prometheus has started.
                if response.status != 200 {
                    return None;
                }
                let target = response.json()["data"]["activeTargets"][0].clone();
                (target["lastScrape"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
                    && target["health"] != "unknown")
                    .then_some(target)
            },
        )
    }

    /// The result of an instant query, once it has one.
    fn query(&self, expr: &str) -> serde_json::Value {
        let path = format!(
            "/api/v1/query?query={}",
            expr.replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
                .replace('=', "%3D")
        );
        poll_until(DEADLINE, expr, || {
            let response = get(self.web, &path);
            assert_eq!(response.status, 200, "{}", response.body);
            let result = response.json()["data"]["result"].clone();
            result
                .as_array()
                .is_some_and(|r| !r.is_empty())
                .then_some(result)
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[cfg_attr(
    webhookd_no_prometheus,
    ignore = "needs a Prometheus server (apt-get install prometheus); never ignored under CI=true"
)]
fn a_real_prometheus_scrapes_it_without_errors() {
    common::require(Need::Prometheus);
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), &[]);
    assert_eq!(post(daemon.addr, &payload("p-1", "1")).status, 202);

    let prometheus = Prometheus::start(dir.path(), daemon.addr);
    let target = prometheus.scraped_target();
    assert_eq!(
        target["health"],
        "up",
        "{target}\nprometheus log:\n{}",
        std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
    );
    assert_eq!(target["lastError"], "", "{target}");
    // The scrape that made the target "up" is queryable once committed.
    let accepted = prometheus.query(r#"webhookd_webhooks_total{outcome="accepted"}"#);
    assert_eq!(accepted[0]["value"][1], "1", "{accepted}");
    let build = prometheus.query("webhookd_build_info");
    assert_eq!(
        build[0]["metric"]["version"],
        env!("CARGO_PKG_VERSION"),
        "{build}"
    );
}
