//! The Grafana dashboard shipped in `packaging/grafana/`: every query parses
//! as `PromQL`, and every metric it names is one the running daemon's
//! `GET /metrics` serves (a histogram's `_bucket`, `_sum` and `_count`, a
//! counter's `_total`, an info metric's `_info`), so a renamed metric
//! cannot leave an empty panel behind. It also covers what an operator
//! looks at first: intake and outcomes, p99 latency, commit batch sizes,
//! pending and due jobs, and the oldest due job's age.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_json::Value;

use common::{Daemon, get, payload, post};

const DASHBOARD: &str = "packaging/grafana/webhookd-dashboard.json";

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DASHBOARD);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("read the dashboard"))
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

struct Names(BTreeSet<String>);

impl ExprVisitor for Names {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        let selector = match expr {
            Expr::VectorSelector(selector) => Some(selector),
            Expr::MatrixSelector(matrix) => Some(&matrix.vs),
            _ => None,
        };
        if let Some(name) = selector.and_then(|s| s.name.clone()) {
            self.0.insert(name);
        }
        Ok(true)
    }
}

/// The metric names a query selects.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let parsed = parser::parse(&as_promql(expr)).unwrap_or_else(|e| panic!("{expr}: {e}"));
    let mut names = Names(BTreeSet::new());
    walk_expr(&mut names, &parsed).expect("the visitor never fails");
    names.0
}

/// Sample names `/metrics` serves, from its `# TYPE family type` lines.
fn served_sample_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
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
            names.insert(format!("{family}{suffix}"));
        }
    }
    names
}

#[test]
fn every_metric_the_dashboard_queries_is_served() {
    let dashboard = dashboard();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    // Labelled families appear once they have a series.
    assert_eq!(
        post(daemon.addr, &payload("txn_dashboard", "1")).status,
        202
    );
    assert_eq!(post(daemon.addr, "{").status, 400);
    assert_eq!(get(daemon.addr, "/").status, 200);
    // As Prometheus asks for it (OpenMetrics, whose TYPE lines name the
    // families without their sample suffixes).
    let scrape = common::send_raw(
        daemon.addr,
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
    let served = served_sample_names(&scrape.body);
    assert!(
        served.contains("webhookd_webhooks_total"),
        "the scrape lacks the basics: {served:?}"
    );

    let mut queried: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (title, expr) in queries(&dashboard) {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{title}: `{expr}` selects no metric");
        for name in names {
            assert!(
                name.starts_with("webhookd_"),
                "{title}: `{expr}` selects {name}, not a webhookd metric"
            );
            assert!(
                served.contains(&name),
                "{title}: `{expr}` selects {name}, which GET /metrics does not serve; served: {served:?}"
            );
            queried.entry(name).or_default().push(title.clone());
        }
    }
    // The variable's query (Grafana's label_values, not PromQL).
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(definition) = variable["definition"].as_str() {
            let name = definition
                .strip_prefix("label_values(")
                .and_then(|rest| rest.split(',').next())
                .unwrap_or_else(|| panic!("unexpected variable query {definition}"));
            assert!(served.contains(name.trim()), "variable query {definition}");
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
    ] {
        assert!(
            queried.contains_key(needed),
            "no panel queries {needed}: {queried:?}"
        );
    }
    let p99 = queries(&dashboard).into_iter().any(|(_, expr)| {
        expr.contains("histogram_quantile(0.99")
            && expr.contains("webhookd_http_request_duration_seconds_bucket")
    });
    assert!(p99, "no p99 latency panel");
}

#[test]
fn a_query_naming_an_unknown_metric_is_caught() {
    // The check above fails on a misspelt metric: its parser sees the name.
    let names = metric_names(
        r#"sum by (le) (rate(webhookd_commit_batch_sizes_bucket{instance=~"$instance"}[$__rate_interval]))"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["webhookd_commit_batch_sizes_bucket"]
    );
    let served = served_sample_names(
        "# TYPE webhookd_commit_batch_size histogram\n# TYPE webhookd_pending_jobs gauge\n",
    );
    assert!(!served.contains("webhookd_commit_batch_sizes_bucket"));
    assert!(served.contains("webhookd_commit_batch_size_bucket"));
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
