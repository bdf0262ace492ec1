//! `GET /v1/transactions/{id}?include=payload`: the transaction with the
//! body it was mapped from.
//!
//! The answer is the view the route gives without the parameter (with
//! `--deliver-to`, the delivery fields included), then the body as a JSON
//! string, `"payload"`, and `"payload_content_type"`: decoding that
//! string gives back the bytes received, exactly (a stored body is valid
//! UTF-8, and a JSON string carries any UTF-8 text unchanged), where
//! embedding it as JSON would let the client's parser change its
//! whitespace, key order and number text. Both are `null` for a
//! transaction stored without a payload map.
//!
//! The only parameter is `include`, once, with the one value `payload`;
//! anything else is 422 naming the parameter, so a typo never silently
//! drops what was asked for.

use std::borrow::Cow;

use super::errors::ApiError;
use super::untrusted;

/// What the query asks to add to the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Include {
    /// `include=payload`.
    pub payload: bool,
}

/// Parses the query of `GET /v1/transactions/{id}`.
pub(super) fn parse_query(raw: Option<&str>) -> Result<Include, ApiError> {
    let mut include = Include::default();
    let mut seen = false;
    for (name, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            "include" if seen => return Err(invalid("include is given more than once")),
            "include" if value == "payload" => {
                include.payload = true;
                seen = true;
            }
            "include" => {
                return Err(invalid(format!(
                    "include={} is not known; the one value is payload",
                    untrusted::cut(&value)
                )));
            }
            _ => {
                let name = untrusted::cut(&name).into_owned();
                return Err(ApiError::InvalidField {
                    message: format!("unknown parameter {name}; known: include"),
                    field: Cow::Owned(name),
                });
            }
        }
    }
    Ok(include)
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidField {
        field: Cow::Borrowed("include"),
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(query: &str) -> (String, String) {
        match parse_query(Some(query)) {
            Err(ApiError::InvalidField { field, message }) => (field.into_owned(), message),
            other => panic!("{query}: {other:?}"),
        }
    }

    #[test]
    fn only_include_payload_is_understood() {
        assert_eq!(parse_query(None).unwrap(), Include { payload: false });
        assert_eq!(parse_query(Some("")).unwrap(), Include { payload: false });
        assert_eq!(
            parse_query(Some("include=payload")).unwrap(),
            Include { payload: true }
        );
        let (field, message) = refused("include=attempts");
        assert_eq!(field, "include");
        assert!(
            message.contains("include=attempts is not known"),
            "{message}"
        );
        assert_eq!(refused("include=payload&include=payload").0, "include");
        assert_eq!(refused("inclde=payload").0, "inclde");
        assert_eq!(refused("include=").0, "include");
    }
}
