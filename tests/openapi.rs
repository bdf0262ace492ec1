//! The `OpenAPI` document (`src/http/openapi.json`): the daemon serves it
//! byte for byte at `GET /openapi.json`; it is valid `OpenAPI` 3.1 by a real
//! validator (`openapi-spec-validator`, installed by
//! `tests/openapi/install.sh`); every path answers the methods it does not
//! list with `405` and an `Allow` naming the ones it lists; and the README's
//! Answers table and the document name the same statuses, error codes and
//! routes. `tests/openapi/schemathesis.sh` (run by `.ci/run`) fuzzes the
//! daemon against the same document.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use common::requirements::{self, Need};
use common::{Daemon, get, request};

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
        let concrete = path.replace("{transaction_id}", "txn_1");
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
