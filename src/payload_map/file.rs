//! Reading a `--payload-map` file: TOML, each mistake reported with the
//! file and the line it is on.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

use super::pointer::{Lookup, Pointer};
use super::{AmountRule, EventRule, PayloadMap, Rule, Units};
use crate::currency;
use crate::model::{self, Currency, Field};

/// Largest `--payload-map` file read. A map is a few hundred bytes; the
/// bound keeps a wrong path (a log, a device) from being read whole.
pub const MAX_MAP_FILE_BYTES: u64 = 64 * 1024;

/// Why a payload map cannot be used: a configuration error (exit 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file cannot be read.
    #[error("cannot read --payload-map {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_MAP_FILE_BYTES`].
    #[error("--payload-map {} is larger than {MAX_MAP_FILE_BYTES} bytes; is it the right file?", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid TOML, or not a valid map.
    #[error("--payload-map {} line {line}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the mistake.
        line: usize,
        /// What is wrong, on one line.
        message: String,
    },
}

/// Reads and checks the map in `path`.
pub(super) fn load(path: &Path) -> Result<PayloadMap, LoadError> {
    use std::io::Read as _;
    let read_error = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut text = String::new();
    file.take(MAX_MAP_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_MAP_FILE_BYTES {
        return Err(LoadError::TooLarge {
            path: path.to_owned(),
        });
    }
    parse(&text).map_err(|Mistake { span, message }| LoadError::Invalid {
        path: path.to_owned(),
        line: line_of(&text, span.start),
        message,
    })
}

/// A mistake in the text, and where it is.
#[derive(Debug)]
pub(super) struct Mistake {
    span: Range<usize>,
    message: String,
}

fn mistake(span: Range<usize>, message: impl Into<String>) -> Mistake {
    Mistake {
        span,
        message: message.into(),
    }
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].split(|&b| b == b'\n').count()
}

/// The file as written. Unknown keys are mistakes: a misspelt `units`
/// must not silently leave amounts in major units.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MapFile {
    event: Option<Spanned<EventTable>>,
    transaction_id: Spanned<FieldTable>,
    source_account: Spanned<FieldTable>,
    destination_account: Spanned<FieldTable>,
    amount: Spanned<AmountTable>,
    currency: Spanned<FieldTable>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventTable {
    pointer: Spanned<Pointers>,
    accept: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldTable {
    pointer: Option<Spanned<Pointers>>,
    value: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmountTable {
    pointer: Option<Spanned<Pointers>>,
    value: Option<Spanned<AmountValue>>,
    units: Spanned<Units>,
}

/// `pointer = "/a"` or `pointer = ["/a", "/b"]`.
struct Pointers(Vec<Spanned<String>>);

impl<'de> Deserialize<'de> for Pointers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PointersVisitor;
        impl<'de> Visitor<'de> for PointersVisitor {
            type Value = Pointers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a JSON pointer such as "/data/object/id", or a list of them"#)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Pointers, E> {
                // The span of a lone string is the key's; the caller has it.
                Ok(Pointers(vec![Spanned::new(0..0, text.to_owned())]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Pointers, A::Error> {
                let mut all = Vec::new();
                while let Some(pointer) = seq.next_element::<Spanned<String>>()? {
                    all.push(pointer);
                }
                Ok(Pointers(all))
            }
        }
        deserializer.deserialize_any(PointersVisitor)
    }
}

/// A fixed amount: an integer, or a string holding a decimal number
/// (`"1500.50"`). A TOML float is refused: it is binary and may not be
/// the number written.
enum AmountValue {
    Integer(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for AmountValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AmountVisitor;
        impl Visitor<'_> for AmountVisitor {
            type Value = AmountValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"an integer, or a decimal number in a string such as "1500.50""#)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<AmountValue, E> {
                Ok(AmountValue::Integer(n))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<AmountValue, E> {
                Err(E::custom(
                    r#"amount.value must be an integer or a string such as "1500.50": a TOML float may not be exactly the number written"#,
                ))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<AmountValue, E> {
                Ok(AmountValue::Text(text.to_owned()))
            }
        }
        deserializer.deserialize_any(AmountVisitor)
    }
}

/// Parses and checks a map; every mistake carries its span.
pub(super) fn parse(text: &str) -> Result<PayloadMap, Mistake> {
    let file: MapFile = toml::from_str(text).map_err(|e| {
        // toml's messages may span lines; the operator gets one.
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        mistake(e.span().unwrap_or(0..0), message)
    })?;
    let mut lookup = Lookup::default();
    let event = file
        .event
        .map(|table| event_rule(table, &mut lookup))
        .transpose()?;
    let text_rule = |field: Field, table: Spanned<FieldTable>, lookup: &mut Lookup| {
        field_rule(field, table, lookup, |text| {
            model::validate_text(text).map(|()| text.to_owned())
        })
    };
    let transaction_id = text_rule(Field::TransactionId, file.transaction_id, &mut lookup)?;
    let source_account = text_rule(Field::SourceAccount, file.source_account, &mut lookup)?;
    let destination_account = text_rule(
        Field::DestinationAccount,
        file.destination_account,
        &mut lookup,
    )?;
    let amount = amount_rule(file.amount, &mut lookup)?;
    let currency_span = file.currency.span();
    let currency = field_rule(Field::Currency, file.currency, &mut lookup, Currency::parse)?;
    if amount.units == Units::Minor
        && let Some(fixed) = currency.fixed
        && currency::minor_unit_exponent(fixed).is_none()
    {
        return Err(mistake(
            currency_span,
            format!(
                "currency.value {fixed} {}",
                currency::MinorUnitsError::UnknownCurrency
            ),
        ));
    }
    Ok(PayloadMap {
        lookup,
        event,
        transaction_id,
        source_account,
        destination_account,
        amount,
        currency,
    })
}

fn event_rule(table: Spanned<EventTable>, lookup: &mut Lookup) -> Result<EventRule, Mistake> {
    let table = table.into_inner();
    let pointers = pointers("event", Some(table.pointer), lookup)?;
    let accept_span = table.accept.span();
    let accept: Vec<String> = table
        .accept
        .into_inner()
        .into_iter()
        .map(Spanned::into_inner)
        .collect();
    if accept.is_empty() {
        return Err(mistake(
            accept_span,
            "event.accept lists no event, so every webhook would be ignored",
        ));
    }
    Ok(EventRule { pointers, accept })
}

/// The pointers of `field` (`field.pointer`), each parsed and added to `lookup`.
fn pointers(
    name: &str,
    pointer: Option<Spanned<Pointers>>,
    lookup: &mut Lookup,
) -> Result<Vec<(Pointer, usize)>, Mistake> {
    let Some(pointer) = pointer else {
        return Ok(Vec::new());
    };
    let whole = pointer.span();
    let list = pointer.into_inner().0;
    if list.is_empty() {
        return Err(mistake(whole, format!("{name}.pointer is an empty list")));
    }
    list.into_iter()
        .map(|text| {
            let span = if text.span().is_empty() {
                whole.clone()
            } else {
                text.span()
            };
            let text = text.into_inner();
            let parsed = Pointer::parse(&text).map_err(|e| {
                mistake(
                    span,
                    format!("{name}.pointer {text:?} is not a JSON pointer (RFC 6901): it {e}"),
                )
            })?;
            let slot = lookup.add(&parsed);
            Ok((parsed, slot))
        })
        .collect()
}

fn field_rule<T>(
    field: Field,
    table: Spanned<FieldTable>,
    lookup: &mut Lookup,
    check: impl Fn(&str) -> Result<T, &'static str>,
) -> Result<Rule<T>, Mistake> {
    let name = field.name();
    let span = table.span();
    let table = table.into_inner();
    if table.pointer.is_none() && table.value.is_none() {
        return Err(needs_pointer_or_value(name, span));
    }
    let pointers = pointers(name, table.pointer, lookup)?;
    let fixed = table
        .value
        .map(|value| {
            let span = value.span();
            check(value.get_ref())
                .map_err(|e| mistake(span, format!("{name}.value {:?} {e}", value.get_ref())))
        })
        .transpose()?;
    Ok(Rule { pointers, fixed })
}

fn needs_pointer_or_value(name: &str, span: Range<usize>) -> Mistake {
    mistake(
        span,
        format!(
            "[{name}] needs pointer (where the body holds it) or value (a fixed value), or both"
        ),
    )
}

fn amount_rule(table: Spanned<AmountTable>, lookup: &mut Lookup) -> Result<AmountRule, Mistake> {
    let span = table.span();
    let table = table.into_inner();
    if table.pointer.is_none() && table.value.is_none() {
        return Err(needs_pointer_or_value("amount", span));
    }
    let units = table.units.into_inner();
    let pointers = pointers("amount", table.pointer, lookup)?;
    let fixed = table
        .value
        .map(|value| {
            let span = value.span();
            let text = match value.into_inner() {
                AmountValue::Integer(n) => n.to_string(),
                AmountValue::Text(text) => text,
            };
            fixed_amount(&text, units)
                .map_err(|e| mistake(span, format!("amount.value {text:?} {e}")))
        })
        .transpose()?;
    Ok(AmountRule {
        rule: Rule { pointers, fixed },
        units,
    })
}

/// A fixed amount, exact and positive; whole in minor units.
fn fixed_amount(text: &str, units: Units) -> Result<Decimal, &'static str> {
    let amount = model::parse_amount(text)?;
    if units == Units::Minor && amount.normalize().scale() != 0 {
        return Err("must be a whole number of minor units (units = \"minor\")");
    }
    Ok(amount)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[event]
pointer = "/type"
accept = ["payment_intent.succeeded"]

[transaction_id]
pointer = "/data/object/id"

[source_account]
pointer = ["/data/object/customer", "/data/object/payment_method"]

[destination_account]
pointer = "/account"
value = "platform"

[amount]
pointer = "/data/object/amount_received"
units = "minor"

[currency]
pointer = "/data/object/currency"
"#;

    /// The line and message of the mistake in `text`.
    #[track_caller]
    fn refused(text: &str) -> (usize, String) {
        match parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(m) => (line_of(text, m.span.start), m.message),
        }
    }

    #[test]
    fn a_complete_map_loads() {
        let map = parse(FULL).unwrap();
        assert_eq!(map.amount.units, Units::Minor);
        assert_eq!(map.source_account.pointers.len(), 2);
        assert_eq!(map.destination_account.fixed.as_deref(), Some("platform"));
    }

    #[test]
    fn a_bad_pointer_is_named_on_its_line() {
        let (line, message) = refused(&FULL.replace(r#""/data/object/id""#, r#""data/object/id""#));
        assert_eq!(line, 7, "{message}");
        assert!(
            message.contains(r#"transaction_id.pointer "data/object/id""#),
            "{message}"
        );
        assert!(message.contains("must start with"), "{message}");
        let (line, message) =
            refused(&FULL.replace(r#""/data/object/payment_method""#, r#""/data/~2""#));
        assert_eq!(line, 10, "{message}");
        assert!(message.contains("\"~\""), "{message}");
    }

    #[test]
    fn an_unknown_key_is_named_on_its_line() {
        let (line, message) = refused(&FULL.replace("units = ", "unit = "));
        assert_eq!(line, 18, "{message}");
        assert!(message.contains("unknown field `unit`"), "{message}");
        let (line, message) = refused(&FULL.replace("[currency]", "[currencies]"));
        assert_eq!(line, 20, "{message}");
        assert!(message.contains("unknown field `currencies`"), "{message}");
    }

    #[test]
    fn a_missing_setting_is_named() {
        let (line, message) = refused(&FULL.replace("units = \"minor\"\n", ""));
        assert_eq!(line, 16, "{message}");
        assert!(message.contains("missing field `units`"), "{message}");
        let (line, message) = refused(&FULL.replace("pointer = \"/data/object/currency\"\n", ""));
        assert_eq!(line, 20, "{message}");
        assert!(message.contains("[currency] needs pointer"), "{message}");
        let without = &FULL[..FULL.find("[currency]").unwrap()];
        let (line, message) = refused(without);
        assert_eq!(line, 1, "{message}");
        assert!(message.contains("missing field `currency`"), "{message}");
    }

    #[test]
    fn fixed_values_are_checked_like_the_body_would_be() {
        let fixed =
            |setting: &str| FULL.replace("pointer = \"/data/object/amount_received\"", setting);
        let (line, message) = refused(&fixed("value = \"ten\""));
        assert_eq!(line, 17, "{message}");
        assert!(
            message.contains(r#"amount.value "ten" must be a JSON number"#),
            "{message}"
        );
        let (_, message) = refused(&fixed("value = 12.5"));
        assert!(message.contains("TOML float"), "{message}");
        let (_, message) = refused(&fixed("value = \"12.5\""));
        assert!(message.contains("whole number of minor units"), "{message}");
        let (_, message) = refused(&fixed("value = 0"));
        assert!(message.contains("greater than zero"), "{message}");
        assert!(parse(&fixed("value = 150050")).is_ok());
        let (_, message) = refused(&FULL.replace("value = \"platform\"", "value = \"\""));
        assert!(
            message.contains("destination_account.value \"\" must not be empty"),
            "{message}"
        );
        let (_, message) =
            refused(&FULL.replace("pointer = \"/data/object/currency\"", "value = \"XAU\""));
        assert!(
            message.contains("currency.value XAU has no minor unit"),
            "{message}"
        );
        let (_, message) = refused(&FULL.replace("[\"payment_intent.succeeded\"]", "[]"));
        assert!(message.contains("event.accept lists no event"), "{message}");
    }

    #[test]
    fn bad_toml_is_named_on_its_line() {
        let (line, message) = refused(&FULL.replace("[amount]", "[amount"));
        assert_eq!(line, 16, "{message}");
        assert!(!message.contains('\n'));
    }
}
