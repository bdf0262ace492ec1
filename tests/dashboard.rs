//! The Grafana dashboard shipped in `packaging/grafana/`: every query parses
//! as `PromQL`, every metric it names is one the running daemon's
//! `GET /metrics` serves (a histogram's `_bucket`, `_sum` and `_count`, a
//! counter's `_total`, an info metric's `_info`), and every label value it
//! selects (`outcome="ignored"`, a route and status) is one a served series
//! has, so a renamed metric or label cannot leave an empty panel behind.
//! The delivery metrics are registered only with `--deliver-to` and the
//! `ignored` outcome appears with `--payload-map`, so the queries are checked
//! against the union of a plain daemon's scrape and one of a daemon with
//! both. It also covers what an operator looks at first: intake and
//! outcomes, p99 latency, commit batch sizes, pending and due jobs, the
//! oldest due job's age, and delivery.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_json::Value;

use common::{Daemon, get, payload, post, send_raw};

const DASHBOARD: &str = "packaging/grafana/webhookd-dashboard.json";
const STRIPE_MAP: &str = "packaging/examples/stripe.toml";
const STRIPE_EVENT: &str = "packaging/examples/stripe-payment_intent.succeeded.json";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo(DASHBOARD)).expect("read the dashboard"))
        .expect("the dashboard is JSON")
}

/// Every panel, also those inside rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// (panel title, `PromQL`) of every query.
fn queries(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |target| {
                    let expr = target["expr"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{title}: a target without expr"));
                    (title.clone(), expr.to_owned())
                })
        })
        .collect()
}

/// Grafana's variables replaced by values `PromQL` accepts.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$instance", ".*")
}

struct Selectors(Vec<VectorSelector>);

impl ExprVisitor for Selectors {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        match expr {
            Expr::VectorSelector(selector) => self.0.push(selector.clone()),
            Expr::MatrixSelector(matrix) => self.0.push(matrix.vs.clone()),
            _ => {}
        }
        Ok(true)
    }
}

/// The series selectors of a query.
fn selectors(expr: &str) -> Vec<VectorSelector> {
    let parsed = parser::parse(&as_promql(expr)).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let mut found = Selectors(Vec::new());
    walk_expr(&mut found, &parsed).expect("the visitor never fails");
    found.0
}

/// The metric names a query selects.
fn metric_names(expr: &str) -> BTreeSet<String> {
    selectors(expr).into_iter().filter_map(|s| s.name).collect()
}

/// Sample names `/metrics` serves, from its `# TYPE family type` lines,
/// each with the family it belongs to.
fn served_sample_names(exposition: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (family, kind) = rest.split_once(' ').expect("# TYPE name type");
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            "gauge" | "unknown" => &[""],
            other => panic!("unexpected metric type {other} for {family}"),
        };
        for suffix in suffixes {
            names.insert(format!("{family}{suffix}"), family.to_owned());
        }
    }
    names
}

/// What a scrape serves: each sample name, with the label sets of its series.
type Served = BTreeMap<String, Vec<BTreeMap<String, String>>>;

/// Scrapes as Prometheus asks (`OpenMetrics`, whose TYPE lines name the
/// families without their sample suffixes).
fn scrape(addr: SocketAddr) -> Served {
    let scrape = send_raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(scrape.status, 200);
    assert!(
        scrape
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        scrape.header("content-type")
    );
    let exposition = openmetrics_parser::openmetrics::parse_openmetrics(&scrape.body)
        .unwrap_or_else(|e| panic!("not OpenMetrics ({e:?}):\n{}", scrape.body));
    let mut served = Served::new();
    for (sample, family) in served_sample_names(&scrape.body) {
        let series = exposition
            .families
            .get(&family)
            .unwrap_or_else(|| panic!("no family {family} in the parsed scrape"))
            .iter_samples()
            .map(|s| {
                s.get_labelset()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .collect();
        served.insert(sample, series);
    }
    served
}

/// The ways `expr` selects what `served` does not have: a metric name it
/// does not serve, or a label matcher no series of that metric satisfies
/// (`instance`, which the scraper adds, aside). Empty when all is served.
fn unserved(expr: &str, served: &Served) -> Vec<String> {
    let mut missing = Vec::new();
    for selector in selectors(expr) {
        let Some(name) = &selector.name else {
            missing.push(format!("a selector without a metric name: {selector}"));
            continue;
        };
        let Some(series) = served.get(name) else {
            missing.push(format!("{name} is not served"));
            continue;
        };
        for matcher in &selector.matchers.matchers {
            if matcher.name == "instance" || matcher.name == "__name__" {
                continue;
            }
            let value_of = |labels: &BTreeMap<String, String>| {
                labels.get(&matcher.name).cloned().unwrap_or_default()
            };
            let satisfied = series.iter().any(|labels| match &matcher.op {
                MatchOp::Equal => value_of(labels) == matcher.value,
                MatchOp::NotEqual => value_of(labels) != matcher.value,
                MatchOp::Re(re) => re.is_match(&value_of(labels)),
                MatchOp::NotRe(re) => !re.is_match(&value_of(labels)),
            });
            if !satisfied {
                missing.push(format!(
                    "no series of {name} has {}{}\"{}\"",
                    matcher.name, matcher.op, matcher.value
                ));
            }
        }
    }
    missing
}

/// An address nothing listens on: connections to it are refused.
fn refusing_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// A plain daemon's scrape, after a webhook, a bad one and a health check
/// (labelled families appear once they have a series).
fn plain_scrape() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    assert_eq!(
        post(daemon.addr, &payload("txn_dashboard", "1")).status,
        202
    );
    assert_eq!(post(daemon.addr, "{").status, 400);
    assert_eq!(get(daemon.addr, "/").status, 200);
    scrape(daemon.addr)
}

/// The scrape of a daemon delivering to an address that refuses, with the
/// packaged Stripe payload map: a mapped event (its one attempt fails and
/// it is FAILED), an ignored one, and both kinds of redelivery.
fn delivering_scrape() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let destination = format!("http://{}/hook", refusing_address());
    let map = repo(STRIPE_MAP);
    let daemon = Daemon::start(
        dir.path(),
        &[
            "--deliver-to",
            &destination,
            "--process-delay",
            "0s",
            "--retry-schedule",
            "0s",
            "--payload-map",
            map.to_str().unwrap(),
        ],
    );
    let addr = daemon.addr;
    let event = std::fs::read_to_string(repo(STRIPE_EVENT)).unwrap();
    let id = serde_json::from_str::<Value>(&event).unwrap()["data"]["object"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(post(addr, &event).status, 202);
    let other = event.replace("payment_intent.succeeded", "charge.refunded");
    let ignored = post(addr, &other);
    assert_eq!(ignored.status, 200, "{}", ignored.body);
    assert_eq!(ignored.json()["status"], "IGNORED");
    common::poll_until(common::DEADLINE, "the refused delivery to fail", || {
        (common::get_transaction(addr, &id).json()["status"] == "FAILED").then_some(())
    });
    let redeliver = common::request(addr, "POST", &format!("/v1/transactions/{id}/redeliver"));
    assert_eq!(redeliver.status, 202, "{}", redeliver.body);
    let filter = r#"{"status":"FAILED"}"#;
    let bulk = send_raw(
        addr,
        format!(
            "POST /v1/redeliveries HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{filter}",
            filter.len()
        )
        .as_bytes(),
    );
    assert_eq!(bulk.status, 202, "{}", bulk.body);
    scrape(addr)
}

#[test]
fn every_metric_and_label_value_the_dashboard_queries_is_served() {
    let dashboard = dashboard();
    let plain = plain_scrape();
    assert!(
        plain.contains_key("webhookd_webhooks_total"),
        "the scrape lacks the basics: {plain:?}"
    );
    let delivering = delivering_scrape();
    // Why both scrapes: the delivery metrics exist only with --deliver-to.
    assert!(!plain.contains_key("webhookd_delivery_paused"));
    assert!(delivering.contains_key("webhookd_delivery_paused"));
    let mut served = plain;
    for (name, series) in delivering {
        served.entry(name).or_default().extend(series);
    }

    let mut queried: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (title, expr) in queries(&dashboard) {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{title}: `{expr}` selects no metric");
        for name in names {
            assert!(
                name.starts_with("webhookd_"),
                "{title}: `{expr}` selects {name}, not a webhookd metric"
            );
            queried.entry(name).or_default().push(title.clone());
        }
        let missing = unserved(&expr, &served);
        assert!(
            missing.is_empty(),
            "{title}: `{expr}` selects what GET /metrics does not serve: {missing:?}; served: {:?}",
            served.keys().collect::<Vec<_>>()
        );
    }
    // The variable's query (Grafana's label_values, not PromQL).
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(definition) = variable["definition"].as_str() {
            let name = definition
                .strip_prefix("label_values(")
                .and_then(|rest| rest.split(',').next())
                .unwrap_or_else(|| panic!("unexpected variable query {definition}"));
            assert!(
                served.contains_key(name.trim()),
                "variable query {definition}"
            );
        }
    }

    // What an operator looks at first.
    for needed in [
        "webhookd_webhooks_total",
        "webhookd_webhook_rejections_total",
        "webhookd_http_request_duration_seconds_bucket",
        "webhookd_commit_batch_size_bucket",
        "webhookd_pending_jobs",
        "webhookd_due_jobs",
        "webhookd_oldest_due_job_age_seconds",
        "webhookd_delivery_attempts_total",
        "webhookd_delivery_attempt_duration_seconds_bucket",
        "webhookd_delivery_attempts_in_flight",
        "webhookd_delivery_paused",
        "webhookd_failed_transactions",
    ] {
        assert!(
            queried.contains_key(needed),
            "no panel queries {needed}: {queried:?}"
        );
    }
    let all = queries(&dashboard);
    let p99_of = |histogram: &str| {
        all.iter()
            .any(|(_, expr)| expr.contains("histogram_quantile(0.99") && expr.contains(histogram))
    };
    assert!(
        p99_of("webhookd_http_request_duration_seconds_bucket"),
        "no p99 latency panel"
    );
    assert!(
        p99_of("webhookd_delivery_attempt_duration_seconds_bucket"),
        "no p99 delivery attempt duration panel"
    );
    let selects = |needle: &str| all.iter().any(|(_, expr)| expr.contains(needle));
    assert!(
        selects(r#"webhookd_webhooks_total{outcome="ignored""#),
        "no panel shows IGNORED events"
    );
    for route in [
        "/v1/transactions/{transaction_id}/redeliver",
        "/v1/redeliveries",
    ] {
        assert!(
            selects(&format!(r#"route="{route}",status="202""#)),
            "no panel counts redeliveries through {route}"
        );
    }
}

#[test]
fn a_query_naming_an_unknown_metric_or_label_value_is_caught() {
    // The check above fails on a misspelt metric or label value: its parser
    // sees both.
    let served: Served = BTreeMap::from([
        (
            "webhookd_commit_batch_size_bucket".to_owned(),
            vec![BTreeMap::new()],
        ),
        (
            "webhookd_webhooks_total".to_owned(),
            vec![BTreeMap::from([(
                "outcome".to_owned(),
                "ignored".to_owned(),
            )])],
        ),
    ]);
    let misspelt_name = r#"sum by (le) (rate(webhookd_commit_batch_sizes_bucket{instance=~"$instance"}[$__rate_interval]))"#;
    assert_eq!(
        metric_names(misspelt_name).into_iter().collect::<Vec<_>>(),
        ["webhookd_commit_batch_sizes_bucket"]
    );
    assert_eq!(
        unserved(misspelt_name, &served),
        ["webhookd_commit_batch_sizes_bucket is not served"]
    );
    let misspelt_value = r#"sum(rate(webhookd_webhooks_total{outcome="ignord",instance=~"$instance"}[$__rate_interval]))"#;
    assert_eq!(unserved(misspelt_value, &served).len(), 1);
    let right = r#"sum(rate(webhookd_webhooks_total{outcome=~"ign.*",instance=~"$instance"}[$__rate_interval]))"#;
    assert!(unserved(right, &served).is_empty());
    let names = served_sample_names(
        "# TYPE webhookd_commit_batch_size histogram\n# TYPE webhookd_pending_jobs gauge\n",
    );
    assert!(!names.contains_key("webhookd_commit_batch_sizes_bucket"));
    assert_eq!(
        names
            .get("webhookd_commit_batch_size_bucket")
            .map(String::as_str),
        Some("webhookd_commit_batch_size")
    );
}

#[test]
fn every_panel_has_a_title_a_data_source_and_a_position() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "webhookd");
    assert!(dashboard["schemaVersion"].as_u64().is_some());
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "{title}: id reused"
        );
        assert!(panel["gridPos"]["w"].as_u64().is_some(), "{title}: gridPos");
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{title}: uses the dashboard's data source variable"
            );
        }
    }
}
