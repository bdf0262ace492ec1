//! The transaction record, its status, and parsing and validation of the
//! incoming webhook payload.
//!
//! Parsing never goes through `f64`: the amount is taken from the raw JSON
//! number text and turned into an exact [`Decimal`], or refused.

use std::fmt;

use rust_decimal::Decimal;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Longest accepted string field, in bytes of UTF-8.
pub const MAX_FIELD_BYTES: usize = 255;

/// Largest scale `Decimal` can carry: digits after the decimal point.
const MAX_SCALE: u32 = 28;

/// Exponents beyond this cannot give a representable amount; refusing them
/// early keeps the digit expansion below bounded.
const MAX_EXPONENT_MAGNITUDE: i64 = 64;

/// A validated incoming transaction: what the processor sent us, normalised
/// (currency upper-cased, amount exact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTransaction {
    /// The processor's id; the key of the record.
    pub transaction_id: String,
    /// Account the money comes from.
    pub source_account: String,
    /// Account the money goes to.
    pub destination_account: String,
    /// Exact amount, greater than zero.
    pub amount: Decimal,
    /// ISO-4217-shaped code: three upper-case ASCII letters.
    pub currency: Currency,
}

/// Processing state of a stored transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Status {
    /// Accepted and durably stored; its job has not completed yet.
    Processing,
    /// Processed exactly once; `processed_at` is set and never changes
    /// (unless an operator redelivers it).
    Processed,
    /// Delivery to `--deliver-to` gave up: the schedule ran out, or the
    /// destination answered 410. Kept until redelivered; never purged.
    Failed,
}

impl Status {
    /// The API's spelling of the status.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Processing => "PROCESSING",
            Status::Processed => "PROCESSED",
            Status::Failed => "FAILED",
        }
    }
}

/// A stored transaction: the payload plus what webhookd added to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The fields as accepted.
    pub transaction: NewTransaction,
    /// Current status.
    pub status: Status,
    /// When the writer committed the acceptance, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When processing committed, milliseconds since the Unix epoch.
    pub processed_at_ms: Option<u64>,
    /// Where delivery to `--deliver-to` stands (all zero without it).
    pub delivery: Delivery,
}

/// A transaction's delivery to `--deliver-to`: what its attempts came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Every attempt it ever had, interrupted ones included.
    pub attempts: u32,
    /// Attempts since its retry schedule (re)started: the index of the
    /// next wait in the schedule. A redelivery sets it back to 0.
    pub schedule_pos: u32,
    /// What the last failed attempt came to, short; `None` after a success.
    pub last_error: Option<String>,
    /// When it became FAILED, milliseconds since the Unix epoch.
    pub failed_at_ms: Option<u64>,
}

/// Three upper-case ASCII letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Validates and upper-cases a currency code.
    ///
    /// # Errors
    /// Anything but exactly three ASCII letters.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        match text.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_alphabetic) => Ok(Currency([
                a.to_ascii_uppercase(),
                b.to_ascii_uppercase(),
                c.to_ascii_uppercase(),
            ])),
            _ => Err("must be three ASCII letters"),
        }
    }

    /// Rebuilds a currency from stored bytes, checking them again so a
    /// damaged record is not passed off as valid.
    #[must_use]
    pub fn from_bytes(bytes: [u8; 3]) -> Option<Self> {
        bytes
            .iter()
            .all(u8::is_ascii_uppercase)
            .then_some(Currency(bytes))
    }

    /// The three stored bytes.
    #[must_use]
    pub fn bytes(self) -> [u8; 3] {
        self.0
    }

    /// The code as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Invariant: only ASCII letters are ever stored in a Currency.
        std::str::from_utf8(&self.0).expect("currency is ASCII by construction")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload field a validation error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `transaction_id`
    TransactionId,
    /// `source_account`
    SourceAccount,
    /// `destination_account`
    DestinationAccount,
    /// `amount`
    Amount,
    /// `currency`
    Currency,
}

impl Field {
    /// The JSON name of the field.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Field::TransactionId => "transaction_id",
            Field::SourceAccount => "source_account",
            Field::DestinationAccount => "destination_account",
            Field::Amount => "amount",
            Field::Currency => "currency",
        }
    }

    const ALL: [Field; 5] = [
        Field::TransactionId,
        Field::SourceAccount,
        Field::DestinationAccount,
        Field::Amount,
        Field::Currency,
    ];
}

/// Why a payload was refused. Maps onto 400 `invalid_json` and 422 `invalid_field`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The body is not JSON, or not a JSON object.
    #[error("{0}")]
    InvalidJson(String),
    /// A field is missing, has the wrong type, or is out of range.
    #[error("{field}: {message}", field = .field.name())]
    InvalidField {
        /// The offending field.
        field: Field,
        /// What is wrong with it.
        message: &'static str,
    },
}

fn invalid(field: Field, message: &'static str) -> PayloadError {
    PayloadError::InvalidField { field, message }
}

/// Parses and validates a webhook body.
///
/// # Errors
/// [`PayloadError::InvalidJson`] if the body is not a JSON object,
/// [`PayloadError::InvalidField`] for the first field that fails validation
/// (in the order of [`Field`]).
pub fn parse_payload(body: &[u8]) -> Result<NewTransaction, PayloadError> {
    check_not_empty(body)?;
    let raw: RawFields<'_> = serde_json::from_slice(body).map_err(|e| {
        PayloadError::InvalidJson(match e.classify() {
            serde_json::error::Category::Data => BODY_NOT_AN_OBJECT.to_owned(),
            _ => not_json_message(&e),
        })
    })?;
    for field in Field::ALL {
        if raw.duplicated[field as usize] {
            return Err(invalid(field, "appears more than once"));
        }
    }
    let value = |field: Field| raw.values[field as usize].ok_or(invalid(field, "is required"));
    Ok(NewTransaction {
        transaction_id: parse_text(Field::TransactionId, value(Field::TransactionId)?)?,
        source_account: parse_text(Field::SourceAccount, value(Field::SourceAccount)?)?,
        destination_account: parse_text(
            Field::DestinationAccount,
            value(Field::DestinationAccount)?,
        )?,
        amount: parse_amount(value(Field::Amount)?.get())
            .map_err(|message| invalid(Field::Amount, message))?,
        currency: Currency::parse(&parse_string(Field::Currency, value(Field::Currency)?)?)
            .map_err(|message| invalid(Field::Currency, message))?,
    })
}

/// The 400 message for a body that is JSON but not an object.
pub const BODY_NOT_AN_OBJECT: &str = "body must be a JSON object";

/// Refuses an empty (or all-whitespace) body with its own 400 message.
///
/// # Errors
/// [`PayloadError::InvalidJson`] when `body` holds nothing but whitespace.
pub fn check_not_empty(body: &[u8]) -> Result<(), PayloadError> {
    if body.trim_ascii().is_empty() {
        return Err(PayloadError::InvalidJson(
            "body is empty; it must be a JSON object".to_owned(),
        ));
    }
    Ok(())
}

/// The 400 message for a body that is not JSON.
#[must_use]
pub fn not_json_message(error: &serde_json::Error) -> String {
    format!("body is not valid JSON: {error}")
}

/// The five known fields as raw JSON text, borrowed from the body; unknown
/// fields are skipped without being kept.
struct RawFields<'a> {
    values: [Option<&'a RawValue>; 5],
    duplicated: [bool; 5],
}

impl<'de> serde::Deserialize<'de> for RawFields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RawFieldsVisitor)
    }
}

struct RawFieldsVisitor;

impl<'de> Visitor<'de> for RawFieldsVisitor {
    type Value = RawFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = RawFields {
            values: [None; 5],
            duplicated: [false; 5],
        };
        // A duplicate key is remembered, not reported at once, so that the
        // rest of the body is still checked for being valid JSON (400 wins
        // over 422).
        while let Some(key) = map.next_key::<Key>()? {
            match key.0 {
                Some(field) => {
                    let value: &'de RawValue = map.next_value()?;
                    let slot = &mut fields.values[field as usize];
                    if slot.is_some() {
                        fields.duplicated[field as usize] = true;
                    }
                    *slot = Some(value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// An object key: one of the known fields, or `None` for anything else.
struct Key(Option<Field>);

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Key, E> {
                Ok(Key(Field::ALL.into_iter().find(|f| f.name() == name)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

fn parse_string(field: Field, raw: &RawValue) -> Result<String, PayloadError> {
    string_value(raw).map_err(|message| invalid(field, message))
}

/// The text of a JSON string.
///
/// # Errors
/// A message for the client when `raw` is not a JSON string.
pub fn string_value(raw: &RawValue) -> Result<String, &'static str> {
    if !raw.get().starts_with('"') {
        return Err("must be a string");
    }
    serde_json::from_str(raw.get()).map_err(|_| "must be a string")
}

fn parse_text(field: Field, raw: &RawValue) -> Result<String, PayloadError> {
    let text = parse_string(field, raw)?;
    validate_text(&text).map_err(|message| invalid(field, message))?;
    Ok(text)
}

/// Checks an id or account: 1 to [`MAX_FIELD_BYTES`] bytes, no control characters.
///
/// # Errors
/// A message saying which rule the text breaks.
pub fn validate_text(text: &str) -> Result<(), &'static str> {
    if text.is_empty() {
        return Err("must not be empty");
    }
    if text.len() > MAX_FIELD_BYTES {
        return Err("must be at most 255 bytes of UTF-8");
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(())
}

/// Turns the text of a JSON number into an exact decimal greater than zero.
///
/// The digits are carried as text until the value is known to fit, so no
/// value is ever rounded: `0.1` stays `0.1`, `1e2` becomes `100`, and a
/// number `Decimal` cannot hold exactly (more than 28 fractional digits or
/// more than 96 bits of mantissa) is refused.
///
/// # Errors
/// A message for the client: not a number, not positive, or not exact.
pub fn parse_amount(text: &str) -> Result<Decimal, &'static str> {
    const NOT_A_NUMBER: &str = "must be a JSON number";
    const NOT_EXACT: &str =
        "cannot be represented exactly (at most 28 decimal places and 28 significant digits)";

    let text = text.trim();
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if !unsigned.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(NOT_A_NUMBER);
    }
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], &unsigned[at + 1..]),
        None => (unsigned, "0"),
    };
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let exponent_digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
    if !all_digits(integer)
        || !all_digits(fraction)
        || exponent_digits.is_empty()
        || !all_digits(exponent_digits)
    {
        return Err(NOT_A_NUMBER);
    }

    // value = digits × 10^(exponent − fraction.len()); drop zeros that carry
    // no value from both ends before deciding whether it fits.
    let digits_joined = format!("{integer}{fraction}");
    let significant = digits_joined.trim_start_matches('0');
    let significant_trimmed = significant.trim_end_matches('0');
    if significant_trimmed.is_empty() {
        return Err("must be greater than zero");
    }
    if negative {
        return Err("must be greater than zero");
    }
    let exponent: i64 = if exponent_digits.len() > 6 {
        return Err(NOT_EXACT);
    } else {
        // Invariant: at most 6 ASCII digits and an optional sign parse as i64.
        exponent.parse().expect("short exponent parses")
    };
    let trailing_zeros =
        i64::try_from(significant.len() - significant_trimmed.len()).map_err(|_| NOT_EXACT)?;
    let fraction_digits = i64::try_from(fraction.len()).map_err(|_| NOT_EXACT)?;
    let power = exponent - fraction_digits + trailing_zeros;
    if power.abs() > MAX_EXPONENT_MAGNITUDE {
        return Err(NOT_EXACT);
    }
    let (digits, scale) = if power >= 0 {
        let zeros = "0".repeat(power.unsigned_abs() as usize);
        (format!("{significant_trimmed}{zeros}"), 0)
    } else {
        (significant_trimmed.to_owned(), power.unsigned_abs() as u32)
    };
    if scale > MAX_SCALE || digits.len() > 29 {
        return Err(NOT_EXACT);
    }
    // Invariant: at most 29 decimal digits always fit in u128.
    let mantissa: i128 = digits.parse().expect("29 digits fit in i128");
    Decimal::try_from_i128_with_scale(mantissa, scale).map_err(|_| NOT_EXACT)
}

/// Formats an amount the way it is returned: exact, no exponent, no
/// trailing fractional zeros (`1500.50` → `1500.5`).
#[must_use]
pub fn format_amount(amount: Decimal) -> String {
    amount.normalize().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(amount: &str, currency: &str) -> String {
        format!(
            r#"{{"transaction_id":"t1","source_account":"a","destination_account":"b","amount":{amount},"currency":{currency}}}"#
        )
    }

    #[track_caller]
    fn field_error(body: &str) -> (Field, &'static str) {
        match parse_payload(body.as_bytes()) {
            Err(PayloadError::InvalidField { field, message }) => (field, message),
            other => panic!("expected invalid field for {body}, got {other:?}"),
        }
    }

    #[test]
    fn amounts_keep_their_exact_decimal_value() {
        for (input, expected) in [
            ("0.1", "0.1"),
            ("12345678901234567.89", "12345678901234567.89"),
            ("1500.50", "1500.5"),
            ("1500.500000", "1500.5"),
            ("1e2", "100"),
            ("1E+2", "100"),
            ("12.5e-1", "1.25"),
            (
                "0.0000000000000000000000000001",
                "0.0000000000000000000000000001",
            ),
            (
                "79228162514264337593543950335",
                "79228162514264337593543950335",
            ),
            ("000.5", "0.5"),
            ("100", "100"),
        ] {
            let amount = parse_amount(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(format_amount(amount), expected, "input {input}");
        }
    }

    #[test]
    fn amounts_that_cannot_be_kept_exactly_are_refused_not_rounded() {
        for input in [
            "1e-40",
            "0.00000000000000000000000000001",
            "123456789012345678901234567890.5",
            "79228162514264337593543950336",
            "1e30",
            "1e999999999",
            "1e-999999999",
        ] {
            assert!(parse_amount(input).is_err(), "{input} should be refused");
        }
    }

    #[test]
    fn amounts_must_be_positive_numbers() {
        for input in [
            "0", "0.0", "-1", "-0", "0e5", "\"1\"", "true", "null", "[1]",
        ] {
            assert!(parse_amount(input).is_err(), "{input} should be refused");
        }
    }

    #[test]
    fn equal_values_compare_equal_whatever_their_spelling() {
        assert_eq!(parse_amount("1500.50"), parse_amount("1500.5"));
        assert_eq!(parse_amount("1e2"), parse_amount("100.000"));
        assert_ne!(parse_amount("0.1"), parse_amount("0.10000000000000001"));
    }

    #[test]
    fn a_valid_payload_is_normalised() {
        let tx = parse_payload(body("1500.50", "\"inr\"").as_bytes()).unwrap();
        assert_eq!(tx.transaction_id, "t1");
        assert_eq!(tx.currency.as_str(), "INR");
        assert_eq!(format_amount(tx.amount), "1500.5");
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let text = body("1", "\"EUR\"").replacen('{', r#"{"extra":{"deep":[1,2]},"#, 1);
        assert!(parse_payload(text.as_bytes()).is_ok());
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_invalid_json() {
        for text in [
            "", "nope", "{", "[]", "\"x\"", "12", "null", "{} {}", "{\"a\":}",
        ] {
            assert!(
                matches!(
                    parse_payload(text.as_bytes()),
                    Err(PayloadError::InvalidJson(_))
                ),
                "{text:?}"
            );
        }
    }

    #[test]
    fn an_empty_body_is_called_empty() {
        for text in ["", " ", "\r\n\t "] {
            assert_eq!(
                parse_payload(text.as_bytes()),
                Err(PayloadError::InvalidJson(
                    "body is empty; it must be a JSON object".to_owned()
                )),
                "{text:?}"
            );
        }
    }

    #[test]
    fn each_field_is_validated_and_named() {
        assert_eq!(field_error(&body("\"1.5\"", "\"EUR\"")).0, Field::Amount);
        assert_eq!(field_error(&body("0", "\"EUR\"")).0, Field::Amount);
        assert_eq!(field_error(&body("1", "\"EU\"")).0, Field::Currency);
        assert_eq!(field_error(&body("1", "\"EURO\"")).0, Field::Currency);
        assert_eq!(field_error(&body("1", "\"1UR\"")).0, Field::Currency);
        assert_eq!(field_error(&body("1", "\"ÄBC\"")).0, Field::Currency);
        assert_eq!(field_error(&body("1", "978")).0, Field::Currency);
        let no_id = body("1", "\"EUR\"").replace(r#""transaction_id":"t1","#, "");
        assert_eq!(field_error(&no_id), (Field::TransactionId, "is required"));
        let numeric_id = body("1", "\"EUR\"").replace(r#""t1""#, "7");
        assert_eq!(field_error(&numeric_id).0, Field::TransactionId);
        let control = body("1", "\"EUR\"").replace(r#""a""#, r#""a\u0001b""#);
        assert_eq!(field_error(&control).0, Field::SourceAccount);
        let twice = body("1", "\"EUR\"").replace(r#""b""#, r#""b","destination_account":"c""#);
        assert_eq!(
            field_error(&twice),
            (Field::DestinationAccount, "appears more than once")
        );
    }

    #[test]
    fn text_fields_are_limited_to_255_bytes_without_control_characters() {
        assert!(validate_text(&"x".repeat(255)).is_ok());
        assert!(validate_text(&"x".repeat(256)).is_err());
        // 2-byte characters: 127 × 2 = 254 bytes fits, 128 × 2 = 256 does not.
        assert!(validate_text(&"é".repeat(127)).is_ok());
        assert!(validate_text(&"é".repeat(128)).is_err());
        assert!(validate_text("").is_err());
        assert!(validate_text("a\nb").is_err());
        assert!(validate_text("a\u{7f}b").is_err());
        assert!(validate_text("a/b c ü").is_ok());
    }
}
