//! Property tests of the payload parser: arbitrary bytes and arbitrary JSON
//! never panic, every valid payload round-trips exactly, and every amount
//! keeps exactly the decimal value its text has (worked out here digit by
//! digit) or is refused, never rounded.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use webhookd::model::{Field, PayloadError, format_amount, parse_amount, parse_payload};

/// Any JSON value, nested a few levels deep.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::json!(f)),
        ".{0,40}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("transaction_id".to_owned()),
                    Just("amount".to_owned()),
                    Just("currency".to_owned()),
                    ".{0,12}"
                ],
                inner,
                0..8
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Text that passes validation: 1 to 255 bytes, no control characters.
fn valid_text() -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{1,60}".prop_filter("at most 255 bytes", |s| s.len() <= 255)
}

/// A positive decimal as (digits, scale) and its canonical spelling.
fn decimal() -> impl Strategy<Value = (String, String)> {
    (1_u64..=u64::MAX, 0_u32..=12).prop_map(|(mantissa, scale)| {
        let digits = mantissa.to_string();
        let written = if scale == 0 {
            digits.clone()
        } else {
            let padded = format!("{digits:0>width$}", width = scale as usize + 1);
            let (int, frac) = padded.split_at(padded.len() - scale as usize);
            format!("{int}.{frac}")
        };
        let canonical = if written.contains('.') {
            written
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_owned()
        } else {
            written.clone()
        };
        (written, canonical)
    })
}

/// The value of a JSON number written as `text`, worked out digit by
/// digit without any number type: the plain decimal it equals (no
/// exponent, no leading or trailing zeros), or `None` if it is zero or
/// cannot be kept exactly in 96 bits with at most 28 decimal places.
fn exact_value(text: &str) -> Option<String> {
    const TWO_TO_THE_96: &str = "79228162514264337593543950336";
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], text[at + 1..].parse::<i64>().unwrap()),
        None => (text, 0),
    };
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let length = |s: &str| i64::try_from(s.len()).unwrap();
    // value = significant × 10^power
    let digits = format!("{integer}{fraction}");
    let digits = digits.trim_start_matches('0');
    let significant = digits.trim_end_matches('0');
    if significant.is_empty() {
        return None;
    }
    let power = exponent - length(fraction) + length(digits) - length(significant);
    // Stored as an integer below 2^96 with a scale of at most 28.
    let scale = usize::try_from(-power).unwrap_or(0);
    if scale > 28 {
        return None;
    }
    let integer_digits = format!(
        "{significant}{}",
        "0".repeat(usize::try_from(power).unwrap_or(0))
    );
    let fits = integer_digits.len() < TWO_TO_THE_96.len()
        || (integer_digits.len() == TWO_TO_THE_96.len() && integer_digits.as_str() < TWO_TO_THE_96);
    if !fits {
        return None;
    }
    Some(if scale == 0 {
        integer_digits
    } else if integer_digits.len() > scale {
        let (whole, part) = integer_digits.split_at(integer_digits.len() - scale);
        format!("{whole}.{part}")
    } else {
        format!(
            "0.{}{integer_digits}",
            "0".repeat(scale - integer_digits.len())
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_payload(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics_and_non_objects_are_invalid_json(value in json_value()) {
        let text = value.to_string();
        let result = parse_payload(text.as_bytes());
        if !value.is_object() {
            prop_assert!(matches!(result, Err(PayloadError::InvalidJson(_))));
        }
    }

    #[test]
    fn valid_payloads_round_trip_exactly(
        id in valid_text(),
        source in valid_text(),
        destination in valid_text(),
        (amount, canonical) in decimal(),
        currency in "[a-zA-Z]{3}",
        extra in json_value(),
    ) {
        let body = serde_json::json!({
            "transaction_id": id,
            "source_account": source,
            "destination_account": destination,
            "currency": currency,
            "extra": extra,
        })
        .to_string();
        // Splice the amount in as a raw JSON number, exactly as written.
        let body = body.replacen('{', &format!("{{\"amount\":{amount},"), 1);
        let parsed = parse_payload(body.as_bytes()).expect("valid payload");
        prop_assert_eq!(&parsed.transaction_id, &id);
        prop_assert_eq!(&parsed.source_account, &source);
        prop_assert_eq!(&parsed.destination_account, &destination);
        prop_assert_eq!(parsed.currency.as_str(), currency.to_ascii_uppercase());
        prop_assert_eq!(format_amount(parsed.amount), canonical);
    }

    #[test]
    fn amounts_keep_their_exact_value_or_are_refused(
        text in prop_oneof![
            // Mostly representable...
            "[0-9]{1,15}(\\.[0-9]{1,12})?([eE][+-]?[0-9]{1,2})?",
            // ...and often not: too many digits, places or powers of ten.
            "[0-9]{1,30}(\\.[0-9]{1,30})?([eE][+-]?[0-9]{1,3})?",
        ]
    ) {
        let result = parse_amount(&text);
        match exact_value(&text) {
            Some(expected) => {
                let amount = result.map_err(|e| TestCaseError::fail(format!("{text} refused: {e}")))?;
                prop_assert_eq!(format_amount(amount), expected, "{}", text);
            }
            None => prop_assert!(result.is_err(), "{} accepted as {:?}", text, result),
        }
    }

    #[test]
    fn invalid_text_fields_are_refused_naming_the_field(
        bad in prop_oneof![
            Just(String::new()),
            "[a-z]{256,300}",
            "[a-z]{0,10}[\\x00-\\x1f\\x7f][a-z]{0,10}",
        ],
        which in 0_usize..3,
    ) {
        let field = [Field::TransactionId, Field::SourceAccount, Field::DestinationAccount][which];
        let mut object = serde_json::json!({
            "transaction_id": "t",
            "source_account": "s",
            "destination_account": "d",
            "amount": 1,
            "currency": "EUR",
        });
        object[field.name()] = serde_json::Value::String(bad);
        let result = parse_payload(object.to_string().as_bytes());
        prop_assert!(
            matches!(result, Err(PayloadError::InvalidField { field: f, .. }) if f == field),
            "{:?}", result
        );
    }
}
