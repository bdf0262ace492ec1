//! `--payload-map`: a provider's webhook body (Stripe's event envelope,
//! Razorpay's, any JSON shape) mapped onto a transaction.
//!
//! The map is a small TOML file. For each of the five fields it says
//! where the body holds it (an RFC 6901 JSON pointer, or a list of them
//! tried in order), a fixed value, or both (the value when no pointer
//! finds one); whether the amount is in major units (`1500.50`) or minor
//! units (`150050`, converted by the currency's ISO 4217 exponent,
//! [`crate::currency`]); and, optionally, which events to take: a pointer
//! and the values accepted there. A body whose event is not accepted is
//! [`Mapped::Ignored`]: answered 200, stored nowhere.
//!
//! ```toml
//! [event]
//! pointer = "/type"
//! accept = ["payment_intent.succeeded"]
//!
//! [transaction_id]
//! pointer = "/data/object/id"
//!
//! [source_account]
//! pointer = ["/data/object/customer", "/data/object/payment_method"]
//!
//! [destination_account]
//! pointer = "/account"
//! value = "platform"
//!
//! [amount]
//! pointer = "/data/object/amount_received"
//! units = "minor"
//!
//! [currency]
//! pointer = "/data/object/currency"
//! ```
//!
//! A pointer that finds `null` finds nothing. Every value found is
//! checked as webhookd's own payload's is (the same rules, the same 400
//! and 422 answers), and each message names the pointer. Amounts stay
//! exact all the way: the body's number text is read as it is
//! ([`mod@pointer`]), never through `f64`.

mod file;
pub mod pointer;

use std::path::Path;

use rust_decimal::Decimal;
use serde_json::value::RawValue;

pub use file::{LoadError, MAX_MAP_FILE_BYTES};
use pointer::{Found, Lookup, Pointer};

use crate::currency::{self, MinorUnitsError};
use crate::model::{self, Currency, Field, NewTransaction, PayloadError};

/// The name a 422 about the event gives in `field`.
pub const EVENT_FIELD: &str = "event";

/// A loaded, checked payload map.
#[derive(Debug, Clone)]
pub struct PayloadMap {
    lookup: Lookup,
    event: Option<EventRule>,
    transaction_id: Rule<String>,
    source_account: Rule<String>,
    destination_account: Rule<String>,
    amount: AmountRule,
    currency: Rule<Currency>,
}

/// Where a field is: pointers (with their slots in the lookup's answer)
/// tried in order, then the fixed value.
#[derive(Debug, Clone)]
struct Rule<T> {
    pointers: Vec<(Pointer, usize)>,
    fixed: Option<T>,
}

#[derive(Debug, Clone)]
struct AmountRule {
    rule: Rule<Decimal>,
    units: Units,
}

#[derive(Debug, Clone)]
struct EventRule {
    pointers: Vec<(Pointer, usize)>,
    accept: Vec<String>,
}

/// How the amount is written in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Units {
    /// As webhookd keeps it: `1500.50`.
    Major,
    /// In the currency's minor unit: `150050` paise for ₹1500.50.
    Minor,
}

/// What a body becomes under a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    /// A transaction, to store as any other.
    Transaction(NewTransaction),
    /// An event the map does not take; nothing is stored.
    Ignored {
        /// The body's event value.
        event: String,
    },
}

/// Why a body was refused: the same 400 and 422 answers as without a map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// 400 `invalid_json`: not JSON, or not a JSON object.
    #[error("{0}")]
    InvalidJson(String),
    /// 422 `invalid_field`: a field (or the event) is missing or invalid;
    /// the message names the pointer.
    #[error("{message}")]
    InvalidField {
        /// A transaction field's name, or [`EVENT_FIELD`].
        field: &'static str,
        /// Begins with the field's name.
        message: String,
    },
}

impl From<PayloadError> for Rejection {
    fn from(e: PayloadError) -> Self {
        match e {
            PayloadError::InvalidJson(message) => Rejection::InvalidJson(message),
            PayloadError::InvalidField { field, message } => Rejection::InvalidField {
                field: field.name(),
                message: format!("{} {message}", field.name()),
            },
        }
    }
}

/// A value a rule settled on: found at a pointer, or the fixed one.
enum Source<'a, T> {
    Body(&'a RawValue, &'a Pointer),
    Fixed(&'a T),
}

impl PayloadMap {
    /// Reads and checks the map in `path`.
    ///
    /// # Errors
    /// [`LoadError`]: the file cannot be read, is not TOML, or is not a
    /// valid map; the message names the file and the line.
    pub fn load(path: &Path) -> Result<PayloadMap, LoadError> {
        file::load(path)
    }

    /// Maps a webhook body: a transaction, an ignored event, or the
    /// answer that refuses it. Checks run in the order of the fields,
    /// after the event.
    ///
    /// # Errors
    /// [`Rejection`] for a body that is not a JSON object, or whose event
    /// or fields are missing or invalid.
    pub fn apply(&self, body: &[u8]) -> Result<Mapped, Rejection> {
        model::check_not_empty(body)?;
        let root: &RawValue = serde_json::from_slice(body)
            .map_err(|e| Rejection::InvalidJson(model::not_json_message(&e)))?;
        if !root.get().trim_start().starts_with('{') {
            return Err(Rejection::InvalidJson(model::BODY_NOT_AN_OBJECT.to_owned()));
        }
        let found = self
            .lookup
            .resolve(root)
            .map_err(|e| Rejection::InvalidJson(model::not_json_message(&e)))?;
        if let Some(event) = &self.event {
            let (raw, pointer) = first(&event.pointers, &found, EVENT_FIELD)?
                .ok_or_else(|| required(EVENT_FIELD, &event.pointers))?;
            let value = model::string_value(raw).map_err(|m| at(EVENT_FIELD, m, pointer))?;
            if !event.accept.contains(&value) {
                return Ok(Mapped::Ignored { event: value });
            }
        }
        let transaction_id = text(&self.transaction_id, Field::TransactionId, &found)?;
        let source_account = text(&self.source_account, Field::SourceAccount, &found)?;
        let destination_account =
            text(&self.destination_account, Field::DestinationAccount, &found)?;
        let amount = self.amount(&found)?;
        let currency = match settle(&self.currency, Field::Currency, &found)? {
            Source::Fixed(currency) => *currency,
            Source::Body(raw, pointer) => {
                let name = Field::Currency.name();
                let text = model::string_value(raw).map_err(|m| at(name, m, pointer))?;
                Currency::parse(&text).map_err(|m| at(name, m, pointer))?
            }
        };
        let amount = match self.amount.units {
            Units::Major => amount,
            Units::Minor => currency::from_minor_units(amount, currency).map_err(|e| match e {
                MinorUnitsError::UnknownCurrency => Rejection::InvalidField {
                    field: Field::Currency.name(),
                    message: format!("currency {currency} {e}"),
                },
                // Checked with the amount above.
                MinorUnitsError::NotWhole => Rejection::InvalidField {
                    field: Field::Amount.name(),
                    message: format!("amount {e}"),
                },
            })?,
        };
        Ok(Mapped::Transaction(NewTransaction {
            transaction_id,
            source_account,
            destination_account,
            amount,
            currency,
        }))
    }

    /// The amount as found, exact and positive; in minor units, whole.
    fn amount(&self, found: &[Found<'_>]) -> Result<Decimal, Rejection> {
        let name = Field::Amount.name();
        match settle(&self.amount.rule, Field::Amount, found)? {
            Source::Fixed(amount) => Ok(*amount),
            Source::Body(raw, pointer) => {
                let amount = model::parse_amount(raw.get()).map_err(|m| at(name, m, pointer))?;
                if self.amount.units == Units::Minor && amount.normalize().scale() != 0 {
                    return Err(at(name, "must be a whole number of minor units", pointer));
                }
                Ok(amount)
            }
        }
    }
}

/// The first pointer that finds a value other than `null`.
fn first<'a>(
    pointers: &'a [(Pointer, usize)],
    found: &[Found<'a>],
    name: &'static str,
) -> Result<Option<(&'a RawValue, &'a Pointer)>, Rejection> {
    for (pointer, slot) in pointers {
        match found[*slot] {
            Found::Missing => {}
            Found::Value(raw) if raw.get() == "null" => {}
            Found::Value(raw) => return Ok(Some((raw, pointer))),
            Found::Ambiguous => {
                return Err(Rejection::InvalidField {
                    field: name,
                    message: format!(
                        "{name} is ambiguous: a key on the way to {pointer} appears more than once"
                    ),
                });
            }
        }
    }
    Ok(None)
}

/// Where `rule`'s value comes from for this body.
fn settle<'a, T>(
    rule: &'a Rule<T>,
    field: Field,
    found: &[Found<'a>],
) -> Result<Source<'a, T>, Rejection> {
    let name = field.name();
    match first(&rule.pointers, found, name)? {
        Some((raw, pointer)) => Ok(Source::Body(raw, pointer)),
        None => rule
            .fixed
            .as_ref()
            .map(Source::Fixed)
            .ok_or_else(|| required(name, &rule.pointers)),
    }
}

fn text(rule: &Rule<String>, field: Field, found: &[Found<'_>]) -> Result<String, Rejection> {
    let name = field.name();
    match settle(rule, field, found)? {
        Source::Fixed(text) => Ok(text.clone()),
        Source::Body(raw, pointer) => {
            let text = model::string_value(raw).map_err(|m| at(name, m, pointer))?;
            model::validate_text(&text).map_err(|m| at(name, m, pointer))?;
            Ok(text)
        }
    }
}

/// `amount must be a JSON number (at /data/object/amount)`.
fn at(name: &'static str, message: &str, pointer: &Pointer) -> Rejection {
    Rejection::InvalidField {
        field: name,
        message: format!("{name} {message} (at {pointer})"),
    }
}

/// `source_account is required (nothing at /a or /b)`.
fn required(name: &'static str, pointers: &[(Pointer, usize)]) -> Rejection {
    let places: Vec<&str> = pointers.iter().map(|(p, _)| p.as_str()).collect();
    Rejection::InvalidField {
        field: name,
        message: format!("{name} is required (nothing at {})", places.join(" or ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRIPE: &str = r#"
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

    fn map(text: &str) -> PayloadMap {
        file::parse(text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn event(object: &str) -> String {
        format!(
            r#"{{"id":"evt_1","type":"payment_intent.succeeded","data":{{"object":{object}}}}}"#
        )
    }

    fn transaction(body: &str) -> NewTransaction {
        match map(STRIPE).apply(body.as_bytes()) {
            Ok(Mapped::Transaction(tx)) => tx,
            other => panic!("{other:?} for {body}"),
        }
    }

    #[track_caller]
    fn refused(body: &str) -> (&'static str, String) {
        match map(STRIPE).apply(body.as_bytes()) {
            Err(Rejection::InvalidField { field, message }) => (field, message),
            other => panic!("{other:?} for {body}"),
        }
    }

    #[test]
    fn a_stripe_event_becomes_its_transaction() {
        let tx = transaction(&event(
            r#"{"id":"pi_1","customer":"cus_9","payment_method":"pm_2","amount_received":150050,"currency":"inr"}"#,
        ));
        assert_eq!(tx.transaction_id, "pi_1");
        assert_eq!(tx.source_account, "cus_9");
        assert_eq!(tx.destination_account, "platform");
        assert_eq!(tx.amount, model::parse_amount("1500.50").unwrap());
        assert_eq!(tx.currency.as_str(), "INR");
    }

    #[test]
    fn null_and_missing_fall_through_to_the_next_pointer_then_the_value() {
        let tx = transaction(&event(
            r#"{"id":"pi_1","customer":null,"payment_method":"pm_2","amount_received":5000,"currency":"jpy"}"#,
        ));
        assert_eq!(tx.source_account, "pm_2");
        assert_eq!(model::format_amount(tx.amount), "5000");
        let with_account =
            event(r#"{"id":"pi_1","customer":"c","amount_received":12345,"currency":"kwd"}"#)
                .replacen('{', r#"{"account":"acct_7","#, 1);
        let tx = transaction(&with_account);
        assert_eq!(tx.destination_account, "acct_7");
        assert_eq!(model::format_amount(tx.amount), "12.345");
    }

    #[test]
    fn other_events_are_ignored_and_say_which() {
        let body = event(r#"{"id":"pi_1"}"#).replace("payment_intent.succeeded", "charge.refunded");
        assert_eq!(
            map(STRIPE).apply(body.as_bytes()),
            Ok(Mapped::Ignored {
                event: "charge.refunded".to_owned()
            })
        );
    }

    #[test]
    fn refusals_name_the_field_and_the_pointer() {
        let (field, message) = refused(&event(
            r#"{"id":"pi_1","customer":"c","amount_received":"150050","currency":"inr"}"#,
        ));
        assert_eq!(field, "amount");
        assert_eq!(
            message,
            "amount must be a JSON number (at /data/object/amount_received)"
        );
        let (field, message) = refused(&event(
            r#"{"id":"pi_1","customer":"c","amount_received":1500.5,"currency":"inr"}"#,
        ));
        assert_eq!(
            (field, message.as_str()),
            (
                "amount",
                "amount must be a whole number of minor units (at /data/object/amount_received)"
            )
        );
        for amount in ["0", "-5", "1e40", "79228162514264337593543950336"] {
            let (field, _) = refused(&event(&format!(
                r#"{{"id":"pi_1","customer":"c","amount_received":{amount},"currency":"inr"}}"#
            )));
            assert_eq!(field, "amount", "{amount}");
        }
        let (field, message) = refused(&event(r#"{"customer":"c"}"#));
        assert_eq!(
            (field, message.as_str()),
            (
                "transaction_id",
                "transaction_id is required (nothing at /data/object/id)"
            )
        );
        let (field, message) = refused(&event(
            r#"{"id":"pi_1","amount_received":1,"currency":"inr"}"#,
        ));
        assert_eq!(field, "source_account");
        assert_eq!(
            message,
            "source_account is required (nothing at /data/object/customer or /data/object/payment_method)"
        );
        let (field, message) = refused(&event(
            r#"{"id":"pi_1","customer":"c","amount_received":100,"currency":"xau"}"#,
        ));
        assert_eq!(field, "currency");
        assert!(
            message.starts_with("currency XAU has no minor unit"),
            "{message}"
        );
        let (field, _) = refused(&event(
            r#"{"id":"pi_1","customer":"c","amount_received":100,"currency":"euro"}"#,
        ));
        assert_eq!(field, "currency");
        let (field, message) = refused(&event(r#"{"id":"pi_1","id":"pi_2"}"#));
        assert_eq!(field, "transaction_id");
        assert!(message.contains("appears more than once"), "{message}");
        let (field, message) = refused(r#"{"data":{}}"#);
        assert_eq!(
            (field, message.as_str()),
            ("event", "event is required (nothing at /type)")
        );
        let (field, message) = refused(r#"{"type":7}"#);
        assert_eq!(
            (field, message.as_str()),
            ("event", "event must be a string (at /type)")
        );
    }

    #[test]
    fn bodies_that_are_not_json_objects_get_todays_400() {
        for body in ["", "  ", "nope", "[1]", "\"x\"", "{\"a\":1} x", "{"] {
            let mapped = map(STRIPE).apply(body.as_bytes());
            let today = model::parse_payload(body.as_bytes()).map(|_| ());
            match (mapped, today) {
                (Err(Rejection::InvalidJson(a)), Err(PayloadError::InvalidJson(b))) => {
                    assert_eq!(a, b, "{body:?}");
                }
                other => panic!("{body:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_map_without_an_event_rule_takes_every_body() {
        let map = map(&STRIPE
            .replace(
                "[event]\npointer = \"/type\"\naccept = [\"payment_intent.succeeded\"]\n",
                "",
            )
            .replace("units = \"minor\"", "units = \"major\""));
        let body = event(r#"{"id":"p","customer":"c","amount_received":12.50,"currency":"usd"}"#)
            .replace("payment_intent.succeeded", "anything");
        match map.apply(body.as_bytes()) {
            Ok(Mapped::Transaction(tx)) => assert_eq!(model::format_amount(tx.amount), "12.5"),
            other => panic!("{other:?}"),
        }
    }
}
