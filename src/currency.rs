//! Minor units (ISO 4217): how many decimal places a currency's amounts
//! have, so an amount a provider sends in minor units (Stripe's and
//! Razorpay's `150050` for ₹1500.50) becomes the exact decimal webhookd
//! keeps.
//!
//! The exponents come from the `iso_currency` crate (JPY 0, INR 2, KWD 3,
//! CLF 4; none for gold, SDRs, test and "no currency" codes); the unit
//! tests check it against the published list one in
//! `tests/data/iso4217-list-one.tsv`. A code the standard gives no minor
//! unit, or does not know, cannot be converted.

use rust_decimal::Decimal;

use crate::model::Currency;

/// Decimal places of `currency`'s minor unit; `None` for a code without
/// one (XAU, XDR, XXX, ...) or unknown to ISO 4217.
#[must_use]
pub fn minor_unit_exponent(currency: Currency) -> Option<u32> {
    iso_currency::Currency::from_code(currency.as_str())
        .and_then(iso_currency::Currency::exponent)
        .map(u32::from)
}

/// Why a minor-unit amount cannot be converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MinorUnitsError {
    /// The amount has a fractional part.
    #[error("must be a whole number of minor units")]
    NotWhole,
    /// The currency has no minor unit in ISO 4217, or is not in it.
    #[error("has no minor unit in ISO 4217, so an amount in minor units cannot be converted")]
    UnknownCurrency,
}

/// `minor` minor units of `currency` as an amount in major units, exactly:
/// `150050` INR is `1500.50`, `5000` JPY is `5000`, `12345` KWD is `12.345`.
///
/// Exact by construction: the integer's digits are kept and only the
/// scale is set, so nothing is ever rounded.
///
/// # Errors
/// [`MinorUnitsError::NotWhole`] for `1.5` minor units;
/// [`MinorUnitsError::UnknownCurrency`] when the currency's exponent is unknown.
pub fn from_minor_units(minor: Decimal, currency: Currency) -> Result<Decimal, MinorUnitsError> {
    let whole = minor.normalize();
    if whole.scale() != 0 {
        return Err(MinorUnitsError::NotWhole);
    }
    let exponent = minor_unit_exponent(currency).ok_or(MinorUnitsError::UnknownCurrency)?;
    // Invariant: a scale-0 Decimal's mantissa is below 2^96 and ISO 4217's
    // exponents are at most 4, far below Decimal's 28.
    Ok(
        Decimal::try_from_i128_with_scale(whole.mantissa(), exponent)
            .expect("an integer Decimal with a scale of at most 4 fits"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{format_amount, parse_amount};

    fn currency(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    fn convert(minor: &str, code: &str) -> Result<String, MinorUnitsError> {
        from_minor_units(parse_amount(minor).unwrap(), currency(code)).map(format_amount)
    }

    /// Every code of the published list one has the minor unit the list
    /// gives it, and the codes it gives none have none here either.
    #[test]
    fn exponents_agree_with_the_published_iso_4217_list() {
        let list = include_str!("../tests/data/iso4217-list-one.tsv");
        let mut checked = 0;
        for line in list.lines().filter(|l| !l.starts_with('#')) {
            let mut columns = line.split('\t');
            let (Some(code), Some(minor)) = (columns.next(), columns.next()) else {
                panic!("malformed line {line:?}");
            };
            let expected = match minor {
                "N.A." => None,
                digits => Some(digits.parse::<u32>().unwrap()),
            };
            assert_eq!(minor_unit_exponent(currency(code)), expected, "{code}");
            checked += 1;
        }
        assert!(checked >= 170, "the list has only {checked} codes");
    }

    #[test]
    fn minor_units_become_exact_major_amounts() {
        assert_eq!(convert("150050", "INR").unwrap(), "1500.5");
        assert_eq!(
            from_minor_units(parse_amount("150050").unwrap(), currency("INR")).unwrap(),
            parse_amount("1500.50").unwrap()
        );
        assert_eq!(convert("5000", "JPY").unwrap(), "5000");
        assert_eq!(convert("12345", "KWD").unwrap(), "12.345");
        assert_eq!(convert("1", "BHD").unwrap(), "0.001");
        assert_eq!(convert("1", "CLF").unwrap(), "0.0001");
        assert_eq!(convert("1e3", "USD").unwrap(), "10");
        assert_eq!(convert("150050.000", "INR").unwrap(), "1500.5");
        // The largest integer Decimal holds keeps every digit.
        assert_eq!(
            convert("79228162514264337593543950335", "KWD").unwrap(),
            "79228162514264337593543950.335"
        );
    }

    #[test]
    fn fractions_and_currencies_without_minor_units_are_refused() {
        assert_eq!(convert("1.5", "USD"), Err(MinorUnitsError::NotWhole));
        assert_eq!(convert("100", "XAU"), Err(MinorUnitsError::UnknownCurrency));
        assert_eq!(convert("100", "XXX"), Err(MinorUnitsError::UnknownCurrency));
        assert_eq!(convert("100", "ABC"), Err(MinorUnitsError::UnknownCurrency));
    }
}
