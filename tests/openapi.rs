//! The `OpenAPI` document (`src/http/openapi.json`): the daemon serves it
//! byte for byte at `GET /openapi.json`; it is valid `OpenAPI` 3.1 by a real
//! validator (`openapi-spec-validator`, installed by
//! `tests/openapi/install.sh`); every path answers the methods it does not
//! list with `405` and an `Allow` naming the ones it lists; the README's
//! Answers table and the document name the same statuses, error codes and
//! routes; the tags say which socket serves each operation under
//! `--admin-listen`, and the declared bearer scheme is exactly what
//! `--admin-token-file` asks for; `GET /metrics` answers each documented
//! media type; and the objects the daemon answers with (with delivery, and
//! `?include=payload`) have exactly the documented fields.
//! `tests/openapi/schemathesis.sh` (run by `.ci/run`) fuzzes the daemon
//! against the same document.

mod common;
#[path = "common/sink.rs"]
mod sink;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use common::requirements::{self, Need};
use common::{Daemon, Response, get, payload, post, request, send_raw};
use sink::{Answer, Sink};

const DOCUMENT: &str = "src/http/openapi.json";
const VALIDATOR: &str = "openapi-spec-validator";
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn document() -> Value {
    let text = std::fs::read_to_string(repo(DOCUMENT)).expect("read the document");
    serde_json::from_str(&text).expect("the document is JSON")
}

/// Follows a local `$ref` (`#/components/...`) once, if `value` is one.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("only local references are used: {reference}"));
            doc.pointer(pointer)
                .unwrap_or_else(|| panic!("dangling reference {reference}"))
        }
        None => value,
    }
}

/// The error code a response's schema pins (`"const"` under `error.code`), if any.
fn pinned_code(doc: &Value, response: &Value) -> Option<String> {
    let schema = resolve(doc, response).pointer("/content/application~1json/schema")?;
    schema
        .get("allOf")?
        .as_array()?
        .iter()
        .find_map(|part| part.pointer("/properties/error/properties/code/const"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Status → error codes answered with it, over every operation and the
/// path-wide `MethodNotAllowed` answer.
fn document_answers(doc: &Value) -> BTreeMap<u16, BTreeSet<String>> {
    let mut answers: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    let mut add = |status: u16, response: &Value| {
        let codes = answers.entry(status).or_default();
        codes.extend(pinned_code(doc, response));
    };
    for (_, operation) in operations(doc) {
        for (status, response) in operation["responses"].as_object().expect("responses") {
            add(status.parse().expect("numeric status"), response);
        }
    }
    add(405, &doc["components"]["responses"]["MethodNotAllowed"]);
    answers
}

/// `(method, path, operation)` for every operation, the path as the
/// document writes it.
fn each_operation(doc: &Value) -> Vec<(&'static str, &str, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                out.push((method, path.as_str(), operation));
            }
        }
    }
    out
}

/// A document path with its parameters filled in.
fn concrete(path: &str, transaction_id: &str, redelivery_id: &str) -> String {
    path.replace("{transaction_id}", transaction_id)
        .replace("{redelivery_id}", redelivery_id)
}

/// `method path` with extra header lines (each ending in `\r\n`) and an
/// optional JSON body.
fn call(addr: SocketAddr, method: &str, path: &str, headers: &str, body: Option<&str>) -> Response {
    let body_headers = body.map_or(String::new(), |b| {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        )
    });
    send_raw(
        addr,
        format!(
            "{} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}{body_headers}\r\n{}",
            method.to_uppercase(),
            body.unwrap_or("")
        )
        .as_bytes(),
    )
}

/// Fails unless the operation lists the status it was answered with.
#[track_caller]
fn assert_documented(operation: &Value, what: &str, response: &Response) {
    assert!(
        operation["responses"]
            .get(response.status.to_string())
            .is_some(),
        "{what} answered {}, which the document does not list for it: {}",
        response.status,
        response.body
    );
}

/// The address in the `admin listening on IP:PORT` line, which follows the
/// public ready line `Daemon::start` waits for.
fn admin_address(daemon: &Daemon) -> SocketAddr {
    common::poll_until(common::DEADLINE, "the admin ready line", || {
        let stderr = daemon.stderr_text();
        let at = stderr.find("admin listening on ")?;
        common::ready_address(&stderr[at + "admin ".len()..])
    })
}

/// `("GET /v1/transactions/{}", operation)` for every operation; path
/// parameters as `{}`.
fn operations(doc: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                out.push((
                    format!("{} {}", method.to_uppercase(), template(path)),
                    operation,
                ));
            }
        }
    }
    out
}

/// A path with every `{name}` as `{}`, so `{id}` and `{transaction_id}` match.
fn template(path: &str) -> String {
    let mut out = String::new();
    let mut in_name = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_name = true;
                out.push_str("{}");
            }
            '}' => in_name = false,
            _ if in_name => {}
            _ => out.push(c),
        }
    }
    out
}

/// The rows of the README's "### Answers" table: (status, code, when).
fn readme_answers() -> Vec<(u16, String, String)> {
    let readme = std::fs::read_to_string(repo("README.md")).expect("read README.md");
    let table = readme
        .split("\n### Answers\n")
        .nth(1)
        .expect("README.md has a '### Answers' section");
    table
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2) // header and separator
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            assert!(cells.len() >= 3, "short row in the Answers table: {line}");
            let status = cells[0]
                .parse()
                .unwrap_or_else(|_| panic!("status in the row {line}"));
            (
                status,
                cells[1].trim_matches('`').to_owned(),
                cells[2..].join("|"),
            )
        })
        .collect()
}

/// Every `` `METHOD /path` `` a text names, path parameters as `{}`.
fn routes_named(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|quoted| {
            let (method, path) = quoted.split_once(' ')?;
            (METHODS.contains(&method.to_lowercase().as_str()) && path.starts_with('/'))
                .then(|| format!("{method} {}", template(path)))
        })
        .collect()
}

#[test]
fn the_served_document_is_the_file_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let served = get(daemon.addr, "/openapi.json");
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.header("content-type"), Some("application/json"));
    let file = std::fs::read_to_string(repo(DOCUMENT)).unwrap();
    assert!(
        served.body == file,
        "GET /openapi.json differs from {DOCUMENT} ({} bytes served, {} in the file)",
        served.body.len(),
        file.len()
    );
    assert_eq!(
        webhookd::http::OPENAPI_DOCUMENT,
        file,
        "the compiled-in document"
    );
}

#[test]
fn the_document_states_this_version() {
    assert_eq!(document()["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(document()["openapi"], "3.1.0");
}

#[test]
#[cfg_attr(
    webhookd_no_openapi_validator,
    ignore = "needs openapi-spec-validator (tests/openapi/install.sh); never ignored under CI=true"
)]
fn the_document_is_valid_openapi_3_1() {
    common::require(Need::OpenApiValidator);
    let validator = requirements::openapi_validator().expect("checked by require");
    let validate = |path: &Path| {
        Command::new(&validator)
            .args(["--schema", "3.1"])
            .arg(path)
            .output()
            .expect("run the validator")
    };
    let out = validate(&repo(DOCUMENT));
    assert!(
        out.status.success(),
        "{DOCUMENT} is not valid OpenAPI 3.1:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The validator does refuse what is wrong: the same document with a
    // response that lacks its required description, or a reference to a
    // schema that does not exist.
    let dir = tempfile::tempdir().unwrap();
    let mut undescribed = document();
    undescribed["paths"]["/"]["get"]["responses"]["200"]
        .as_object_mut()
        .unwrap()
        .remove("description");
    let mut dangling = document();
    dangling["components"]["schemas"]["Transaction"]["properties"]["amount"]["$ref"] =
        Value::from("#/components/schemas/Decimal");
    for (name, broken) in [("undescribed", undescribed), ("dangling", dangling)] {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec(&broken).unwrap()).unwrap();
        assert!(
            !validate(&path).status.success(),
            "{VALIDATOR} accepted the {name} document"
        );
    }
}

#[test]
fn every_path_refuses_the_methods_it_does_not_list_with_405_and_allow() {
    let doc = document();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = concrete(path, "txn_1", "rdl_1");
        let listed: Vec<String> = METHODS
            .iter()
            .filter(|m| item.get(**m).is_some())
            .map(|m| m.to_uppercase())
            .collect();
        for method in METHODS.map(str::to_uppercase) {
            let response = request(daemon.addr, &method, &concrete);
            if listed.contains(&method) {
                assert_ne!(response.status, 405, "{method} {path} is listed");
                continue;
            }
            response.assert_error(405, "method_not_allowed");
            assert_eq!(
                response.header("allow"),
                Some(listed.join(", ").as_str()),
                "{method} {path}"
            );
        }
    }
    get(daemon.addr, "/v2/nothing").assert_error(404, "not_found");
}

#[test]
fn the_readme_answers_table_and_the_document_agree() {
    let doc = document();
    let answers = document_answers(&doc);
    let rows = readme_answers();
    assert!(rows.len() >= 10, "the Answers table lost rows: {rows:?}");
    let mut named_in_readme = BTreeSet::new();
    for (status, code, when) in &rows {
        let codes = answers
            .get(status)
            .unwrap_or_else(|| panic!("README answers {status}, the document never does"));
        if code.is_empty() {
            assert!(
                codes.is_empty(),
                "README's {status} row has no error code, the document's has {codes:?}"
            );
        } else {
            assert!(
                codes.contains(code),
                "README answers {status} {code}; the document's {status} has {codes:?}"
            );
        }
        for route in routes_named(when) {
            assert!(
                operations(&doc).iter().any(|(name, _)| *name == route),
                "README's Answers table names {route}, which the document does not list"
            );
            named_in_readme.insert((*status, route));
        }
    }
    for (status, codes) in &answers {
        let readme_codes: BTreeSet<&str> = rows
            .iter()
            .filter(|(s, _, _)| s == status)
            .map(|(_, code, _)| code.as_str())
            .collect();
        assert!(
            !readme_codes.is_empty(),
            "the document answers {status}; the README's Answers table has no row for it"
        );
        for code in codes {
            assert!(
                readme_codes.contains(code.as_str()),
                "the document answers {status} {code}; the README's Answers table does not"
            );
        }
    }
    // Every route's success answer is named in its row.
    for (route, operation) in operations(&doc) {
        for status in operation["responses"].as_object().unwrap().keys() {
            let status: u16 = status.parse().unwrap();
            if (200..300).contains(&status) {
                assert!(
                    named_in_readme.contains(&(status, route.clone())),
                    "README's {status} row does not name {route}"
                );
            }
        }
    }
}

#[test]
fn the_tags_say_which_socket_serves_each_operation() {
    let doc = document();
    let dir = tempfile::tempdir().unwrap();
    // Delivery on (to a port nothing listens on, never reached within the
    // hour's delay), so the delivery routes answer as they do in use.
    let daemon = Daemon::start(
        dir.path(),
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--process-delay",
            "1h",
            "--deliver-to",
            "http://127.0.0.1:9/hook",
        ],
    );
    let public = daemon.addr;
    let admin = admin_address(&daemon);
    // Something for the reads by id to find.
    assert_eq!(post(public, &payload("txn_1", "5")).status, 202);
    let created = call(
        admin,
        "POST",
        "/v1/redeliveries",
        "",
        Some(r#"{"status":"FAILED"}"#),
    );
    assert_eq!(created.status, 202, "{}", created.body);
    let redelivery_id = created.json()["redelivery_id"].as_str().unwrap().to_owned();

    for (method, path, operation) in each_operation(&doc) {
        let tags: Vec<&str> = operation["tags"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path} has no tags"))
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert!(
            !tags.is_empty() && tags.iter().all(|t| ["public", "admin"].contains(t)),
            "{method} {path}: tags {tags:?}"
        );
        let target = concrete(path, "txn_1", &redelivery_id);
        for (socket, addr) in [("public", public), ("admin", admin)] {
            let what = format!("{method} {path} on the {socket} socket");
            let response = call(addr, method, &target, "", None);
            if tags.contains(&socket) {
                assert_ne!(response.status, 404, "{what}: {}", response.body);
            } else {
                response.assert_error(404, "not_found");
            }
            assert_documented(operation, &what, &response);
        }
    }
}

#[test]
fn the_operations_that_declare_the_admin_token_need_it_and_no_other() {
    let doc = document();
    let unauthorized = &doc["components"]["responses"]["Unauthorized"];
    let challenge = unauthorized["headers"]["WWW-Authenticate"]["schema"]["const"]
        .as_str()
        .expect("the documented WWW-Authenticate value");
    let dir = tempfile::tempdir().unwrap();
    let token = "openapi-test-token-0123456789abcdef";
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start(
        &data,
        &[
            "--admin-token-file",
            token_file.to_str().unwrap(),
            "--process-delay",
            "1h",
            "--deliver-to",
            "http://127.0.0.1:9/hook",
        ],
    );
    let addr = daemon.addr;
    assert_eq!(post(addr, &payload("txn_1", "5")).status, 202);
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let mut declared = 0;
    for (method, path, operation) in each_operation(&doc) {
        let target = concrete(path, "txn_1", "rdl_1");
        let needs_token = match operation.get("security") {
            None => false,
            Some(security) => {
                assert_eq!(
                    security,
                    &serde_json::json!([{}, {"adminToken": []}]),
                    "{method} {path}: the token is optional (it depends on --admin-token-file)"
                );
                true
            }
        };
        declared += usize::from(needs_token);
        for (what, headers) in [
            ("no token", String::new()),
            (
                "a wrong token",
                "Authorization: Bearer not-the-token\r\n".to_owned(),
            ),
            (
                "another scheme",
                format!("Authorization: Basic {token}\r\n"),
            ),
        ] {
            let response = call(addr, method, &target, &headers, None);
            let what = format!("{method} {path} with {what}");
            assert_documented(operation, &what, &response);
            if needs_token {
                response.assert_error(401, "unauthorized");
                assert_eq!(
                    response.header("www-authenticate"),
                    Some(challenge),
                    "{what}"
                );
            } else {
                assert_ne!(response.status, 401, "{what}: {}", response.body);
            }
        }
        let response = call(addr, method, &target, &bearer, None);
        let what = format!("{method} {path} with the token");
        assert_ne!(response.status, 401, "{what}: {}", response.body);
        assert_documented(operation, &what, &response);
    }
    assert!(
        declared >= 8,
        "only {declared} operations declare the token"
    );
}

#[test]
fn metrics_answers_each_documented_media_type_and_says_it_varies_by_accept() {
    let doc = document();
    let answer = &doc["paths"]["/metrics"]["get"]["responses"]["200"];
    let vary = answer["headers"]["Vary"]["schema"]["const"]
        .as_str()
        .unwrap();
    let documented: BTreeSet<&str> = answer["content"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        documented,
        BTreeSet::from(["application/openmetrics-text", "text/plain"])
    );
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut served = BTreeSet::new();
    for accept in [
        None,
        Some("text/plain"),
        Some("application/openmetrics-text; version=1.0.0"),
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
        Some("*/*"),
    ] {
        let headers = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
        let response = call(daemon.addr, "GET", "/metrics", &headers, None);
        assert_eq!(response.status, 200, "{accept:?}");
        let content_type = response.header("content-type").unwrap();
        let essence = content_type.split(';').next().unwrap().trim();
        assert!(
            documented.contains(essence),
            "Accept {accept:?}: {content_type}, not a documented media type"
        );
        let expected = if accept.is_some_and(|a| a.starts_with("application/openmetrics-text")) {
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        } else {
            "text/plain; version=0.0.4; charset=utf-8"
        };
        assert_eq!(content_type, expected, "Accept {accept:?}");
        assert_eq!(response.header("vary"), Some(vary), "Accept {accept:?}");
        served.insert(essence.to_owned());
    }
    assert_eq!(served.len(), documented.len(), "{served:?}");
}

/// Fails unless `value` has exactly the fields the named schema allows:
/// every required one, none it does not list (when it lists them all),
/// and the fields it says come together, together.
#[track_caller]
fn assert_shape(doc: &Value, schema: &str, value: &Value) {
    let definition = &doc["components"]["schemas"][schema];
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("{schema}: not an object: {value}"));
    for field in definition["required"].as_array().into_iter().flatten() {
        let field = field.as_str().unwrap();
        assert!(
            object.contains_key(field),
            "{schema}: no {field} in {value}"
        );
    }
    if definition["additionalProperties"] == false {
        let listed = definition["properties"].as_object().unwrap();
        for field in object.keys() {
            assert!(
                listed.contains_key(field),
                "{schema}: {field} is not documented: {value}"
            );
        }
    }
    for (field, together) in definition["dependentRequired"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if object.contains_key(field) {
            for other in together.as_array().unwrap() {
                let other = other.as_str().unwrap();
                assert!(
                    object.contains_key(other),
                    "{schema}: {field} without {other}: {value}"
                );
            }
        }
    }
}

#[test]
fn answers_with_delivery_have_exactly_the_documented_fields() {
    let doc = document();
    let dir = tempfile::tempdir().unwrap();
    // txn_gone is answered 410 (FAILED at once), every other one 200.
    let sink = Sink::start(|seen| {
        if seen.json()["transaction_id"] == "txn_gone" {
            Answer::status(410)
        } else {
            Answer::status(200)
        }
    });
    let url = sink.url();
    let daemon = Daemon::start(
        dir.path(),
        &[
            "--process-delay",
            "0s",
            "--deliver-to",
            &url,
            "--retry-schedule",
            "0s",
        ],
    );
    let addr = daemon.addr;
    for id in ["txn_ok", "txn_gone"] {
        let accepted = post(addr, &payload(id, "5"));
        assert_eq!(accepted.status, 202);
        assert_shape(&doc, "Accepted", &accepted.json());
    }
    let settled = |id: &str, status: &str| {
        common::poll_until(common::DEADLINE, &format!("{id} {status}"), || {
            let view = common::get_transaction(addr, id).json();
            (view["status"] == status).then_some(view)
        })
    };
    let delivered_fields = ["attempts", "next_attempt_at", "last_error", "failed_at"];
    for (id, status) in [("txn_ok", "PROCESSED"), ("txn_gone", "FAILED")] {
        let view = settled(id, status);
        assert_shape(&doc, "Transaction", &view);
        for field in delivered_fields {
            assert!(
                view.get(field).is_some(),
                "{id}: no {field} with --deliver-to: {view}"
            );
        }
        let with_payload = get(addr, &format!("/v1/transactions/{id}?include=payload"));
        assert_eq!(with_payload.status, 200, "{}", with_payload.body);
        let with_payload = with_payload.json();
        assert_shape(&doc, "Transaction", &with_payload);
        assert!(
            with_payload["payload"].is_null(),
            "stored without a payload map"
        );
        assert!(with_payload["payload_content_type"].is_null());

        let attempts = get(addr, &format!("/v1/transactions/{id}/attempts")).json();
        assert_shape(&doc, "Attempts", &attempts);
        let attempts = attempts["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{attempts:?}");
        assert_shape(&doc, "Attempt", &attempts[0]);
    }
    let page = get(addr, "/v1/transactions?status=FAILED").json();
    assert_shape(&doc, "Page", &page);
    let listed = page["transactions"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{page}");
    assert_shape(&doc, "Transaction", &listed[0]);

    let redelivered = call(
        addr,
        "POST",
        "/v1/transactions/txn_gone/redeliver",
        "",
        None,
    );
    assert_eq!(redelivered.status, 202, "{}", redelivered.body);
    assert_shape(&doc, "Redelivered", &redelivered.json());
    let created = call(
        addr,
        "POST",
        "/v1/redeliveries",
        "",
        Some(r#"{"status":"PROCESSED"}"#),
    );
    assert_eq!(created.status, 202, "{}", created.body);
    let created = created.json();
    assert_shape(&doc, "RedeliveryCreated", &created);
    let progress = get(
        addr,
        &format!(
            "/v1/redeliveries/{}",
            created["redelivery_id"].as_str().unwrap()
        ),
    );
    assert_eq!(progress.status, 200, "{}", progress.body);
    assert_shape(&doc, "RedeliveryProgress", &progress.json());

    let health = get(addr, "/").json();
    assert_shape(&doc, "Healthy", &health);
    let states = &doc["components"]["schemas"]["DeliveryState"]["enum"];
    assert!(
        states.as_array().unwrap().contains(&health["delivery"]),
        "GET / with --deliver-to: {health}"
    );
}
