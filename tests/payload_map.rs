//! `--payload-map` through the real binary: a map file with a mistake
//! stops start-up (exit 2, one line naming the file and the line, the
//! data dir untouched); a body the map cannot resolve gets the same 400
//! and 422 answers as without a map, naming the pointer, and stores
//! nothing; `check-map` exits 2 for a map that does not load.

mod common;

use std::path::Path;
use std::process::Command;

use common::{BIN, Daemon, assert_one_line_failure, get, post, post_with_type, run_to_exit};

/// A map for a made-up provider; each test breaks one line of it.
const MAP: &str = r#"# a provider that sends {"kind", "payment": {...}}
[event]
pointer = "/kind"
accept = ["payment.done"]

[transaction_id]
pointer = "/payment/id"

[source_account]
pointer = "/payment/payer"

[destination_account]
value = "merchant_1"

[amount]
pointer = "/payment/amount"
units = "minor"

[currency]
pointer = "/payment/currency"
"#;

fn write_map(dir: &Path, text: &str) -> String {
    let path = dir.join("map.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// `MAP` with `from` (which must be in it) replaced by `to`.
#[track_caller]
fn broken(from: &str, to: &str) -> String {
    assert!(MAP.contains(from), "{from:?}");
    MAP.replacen(from, to, 1)
}

/// Starts webhookd with `map` as its payload map, expecting a refusal:
/// returns the one line, after checking exit 2 and an untouched data dir.
#[track_caller]
fn refused_at_start(map_text: &str, via_env: bool) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let map = write_map(dir.path(), map_text);
    let data = dir.path().join("data");
    let line = if via_env {
        common::refused_at_start(&data, &[], &[("WEBHOOKD_PAYLOAD_MAP", map.as_str())])
    } else {
        common::refused_at_start(&data, &["--payload-map", &map], &[])
    };
    assert!(line.contains(&map), "the line names the file: {line}");
    (line, map)
}

#[test]
fn map_file_mistakes_stop_start_up_with_one_line_naming_the_file_and_the_line() {
    let cases = [
        // A bad pointer (no leading slash).
        (
            broken("\"/payment/id\"", "\"payment/id\""),
            7,
            "transaction_id.pointer \"payment/id\" is not a JSON pointer",
        ),
        // A bad escape in a pointer.
        (
            broken("\"/payment/payer\"", "\"/payment/pay~er\""),
            10,
            "not followed by 0 or 1",
        ),
        // An unknown setting: a misspelt `units` must not leave amounts in major units.
        (broken("units = ", "unit = "), 17, "unknown field `unit`"),
        // An unknown field.
        (
            broken("[currency]", "[currencies]"),
            19,
            "unknown field `currencies`",
        ),
        // A missing setting.
        (
            broken("units = \"minor\"\n", ""),
            15,
            "missing field `units`",
        ),
        // A field with neither pointer nor value.
        (
            broken("pointer = \"/payment/currency\"\n", ""),
            19,
            "[currency] needs pointer",
        ),
        // A non-numeric amount, and an amount in units that do not exist.
        (
            broken("pointer = \"/payment/amount\"", "value = \"ten\""),
            16,
            "amount.value \"ten\" must be a JSON number",
        ),
        (
            broken("units = \"minor\"", "units = \"cents\""),
            17,
            "unknown variant `cents`",
        ),
        // Not TOML at all.
        (broken("[amount]", "[amount"), 15, ""),
        (broken("\"/payment/id\"", "\"/payment/id"), 7, ""),
    ];
    for (i, (text, line_number, words)) in cases.iter().enumerate() {
        let (line, map) = refused_at_start(text, i % 2 == 1);
        assert!(
            line.starts_with(&format!(
                "webhookd: error: --payload-map {map} line {line_number}: "
            )),
            "case {i}: {line}"
        );
        assert!(line.contains(words), "case {i}: {line}");
    }
}

#[test]
fn a_missing_map_file_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let missing = dir.path().join("nope.toml");
    let (code, stderr) = run_to_exit(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--payload-map",
            missing.to_str().unwrap(),
        ],
        &[],
    );
    let line = assert_one_line_failure(code, &stderr, 2);
    assert!(line.contains("cannot read --payload-map"), "{line}");
    assert!(line.contains(missing.to_str().unwrap()), "{line}");
    assert!(!data.exists());
}

#[test]
fn check_map_exits_2_for_a_map_that_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let map = write_map(dir.path(), &broken("\"/payment/id\"", "\"payment/id\""));
    let sample = dir.path().join("sample.json");
    std::fs::write(&sample, "{}").unwrap();
    let output = Command::new(BIN)
        .args(["check-map", &map])
        .arg(&sample)
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let line = assert_one_line_failure(output.status.code(), &stderr, 2);
    assert!(line.contains(&format!("{map} line 7")), "{line}");
    assert!(output.stdout.is_empty());
    // A sample that cannot be read is a file named on the command line too.
    let map = write_map(dir.path(), MAP);
    let output = Command::new(BIN)
        .args(["check-map", &map, "/nonexistent/sample.json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_one_line_failure(output.status.code(), &stderr, 2);
}

fn payment(id: &str, amount: &str, currency: &str) -> String {
    format!(
        r#"{{"kind":"payment.done","payment":{{"id":"{id}","payer":"cus_1","amount":{amount},"currency":{currency}}}}}"#
    )
}

#[test]
fn bodies_the_map_cannot_resolve_get_todays_answers_naming_the_pointer_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let map = write_map(dir.path(), MAP);
    let daemon = Daemon::start(
        &dir.path().join("data"),
        &["--process-delay", "1h", "--payload-map", &map],
    );
    let addr = daemon.addr;

    let response = post(addr, &payment("p1", "150050", "\"INR\""));
    assert_eq!(response.status, 202, "{}", response.body);
    assert_eq!(common::get_transaction(addr, "p1").json()["amount"], 1500.5);
    assert_eq!(
        common::get_transaction(addr, "p1").json()["destination_account"],
        "merchant_1"
    );

    // Not JSON, not an object, no content type: today's answers.
    post(addr, "{\"kind\":").assert_error(400, "invalid_json");
    post(addr, "[1,2]").assert_error(400, "invalid_json");
    post_with_type(addr, Some("text/plain"), &payment("p9", "1", "\"INR\""))
        .assert_error(415, "unsupported_media_type");

    for (body, field, message) in [
        (
            payment("p2", "\"150050\"", "\"INR\""),
            "amount",
            "amount must be a JSON number (at /payment/amount)",
        ),
        (
            payment("p2", "1500.5", "\"INR\""),
            "amount",
            "amount must be a whole number of minor units (at /payment/amount)",
        ),
        (
            payment("p2", "0", "\"INR\""),
            "amount",
            "amount must be greater than zero (at /payment/amount)",
        ),
        (
            payment("p2", "1e40", "\"INR\""),
            "amount",
            "amount cannot be represented exactly (at most 28 decimal places and 28 significant digits) (at /payment/amount)",
        ),
        (
            payment("p2", "100", "\"XAU\""),
            "currency",
            "currency XAU has no minor unit in ISO 4217, so an amount in minor units cannot be converted",
        ),
        (
            payment("p2", "100", "\"INRX\""),
            "currency",
            "currency must be three ASCII letters (at /payment/currency)",
        ),
        (
            r#"{"kind":"payment.done","payment":{"payer":"c","amount":1,"currency":"INR"}}"#
                .to_owned(),
            "transaction_id",
            "transaction_id is required (nothing at /payment/id)",
        ),
        (
            payment("", "1", "\"INR\""),
            "transaction_id",
            "transaction_id must not be empty (at /payment/id)",
        ),
        (
            r#"{"payment":{"id":"p2"}}"#.to_owned(),
            "event",
            "event is required (nothing at /kind)",
        ),
        (
            payment("p2", "1", "\"INR\"").replacen("{\"id\"", "{\"id\":\"p3\",\"id\"", 1),
            "transaction_id",
            "transaction_id is ambiguous: a key on the way to /payment/id appears more than once",
        ),
    ] {
        let error = post(addr, &body).assert_error(422, "invalid_field");
        assert_eq!(error["error"]["field"], field, "{body}");
        assert_eq!(error["error"]["message"], message, "{body}");
    }
    common::get_transaction(addr, "p2").assert_error(404, "not_found");
    common::get_transaction(addr, "p3").assert_error(404, "not_found");
    let all = get(addr, "/v1/transactions").json();
    assert_eq!(all["transactions"].as_array().unwrap().len(), 1);
}
