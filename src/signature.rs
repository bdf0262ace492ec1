//! Webhook signature verification, off unless a scheme and secrets are
//! configured. Verification runs on the raw body bytes before any parsing;
//! every comparison is constant-time (`Mac::verify_slice`). Any configured
//! secret may match, so a secret can be rotated with two active.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use hyper::HeaderMap;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far a signed timestamp may be from now, either way.
pub const TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(300);

/// Prefix of a Standard Webhooks secret; the rest is base64.
const STANDARD_SECRET_PREFIX: &str = "whsec_";

/// Signature scheme (`--signature-scheme`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheme {
    /// Standard Webhooks (Svix): `webhook-id`, `webhook-timestamp`,
    /// `webhook-signature: v1,<base64>`; signs `{id}.{timestamp}.{body}`.
    StandardWebhooks,
    /// Stripe: `Stripe-Signature: t=<unix>,v1=<hex>`; signs `{t}.{body}`.
    Stripe,
    /// Hex HMAC-SHA256 of the body in the header named by `--signature-header`.
    HmacSha256,
}

impl Scheme {
    /// The scheme's command-line spelling.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Scheme::StandardWebhooks => "standard-webhooks",
            Scheme::Stripe => "stripe",
            Scheme::HmacSha256 => "hmac-sha256",
        }
    }
}

/// A configured verifier: the scheme and its decoded secrets.
#[derive(Clone)]
pub struct Verifier {
    scheme: Scheme,
    header: Option<hyper::header::HeaderName>,
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("Verifier")
            .field("scheme", &self.scheme)
            .field("secrets", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Why the signature configuration is unusable (a start-up error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The secrets file cannot be read.
    #[error("cannot read signing secrets file {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is incomplete or a secret is malformed.
    #[error("{0}")]
    Invalid(String),
}

/// Why a request's signature was refused (answered 401 `invalid_signature`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(pub &'static str);

impl Verifier {
    /// Builds a verifier from the command line: a scheme, a file with one
    /// secret per line (blank lines and `#` comments ignored), and for
    /// `hmac-sha256` the header that carries the signature.
    pub fn from_config(
        scheme: Scheme,
        secrets_file: Option<&Path>,
        header: Option<&str>,
    ) -> Result<Verifier, ConfigError> {
        let path = secrets_file.ok_or_else(|| {
            ConfigError::Invalid(
                "--signature-scheme needs --signing-secrets-file with at least one secret"
                    .to_owned(),
            )
        })?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let secrets: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        Verifier::new(scheme, &secrets, header).map_err(|e| match e {
            ConfigError::Invalid(message) => {
                ConfigError::Invalid(format!("{message} (in {})", path.display()))
            }
            other => other,
        })
    }

    /// Builds a verifier from secrets given directly.
    pub fn new(
        scheme: Scheme,
        secrets: &[&str],
        header: Option<&str>,
    ) -> Result<Verifier, ConfigError> {
        if secrets.is_empty() {
            return Err(ConfigError::Invalid(
                "the signing secrets file holds no secret".to_owned(),
            ));
        }
        let keys = secrets
            .iter()
            .map(|secret| match scheme {
                Scheme::StandardWebhooks => secret
                    .strip_prefix(STANDARD_SECRET_PREFIX)
                    .and_then(|b64| BASE64.decode(b64).ok())
                    .filter(|key| !key.is_empty())
                    .ok_or_else(|| {
                        ConfigError::Invalid(
                            "a standard-webhooks secret must look like whsec_<base64>".to_owned(),
                        )
                    }),
                Scheme::Stripe | Scheme::HmacSha256 => Ok(secret.as_bytes().to_vec()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let header = match (scheme, header) {
            (Scheme::HmacSha256, Some(name)) => Some(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    ConfigError::Invalid(format!(
                        "--signature-header {name:?} is not a header name"
                    ))
                })?,
            ),
            (Scheme::HmacSha256, None) => {
                return Err(ConfigError::Invalid(
                    "--signature-scheme hmac-sha256 needs --signature-header".to_owned(),
                ));
            }
            _ => None,
        };
        Ok(Verifier {
            scheme,
            header,
            keys,
        })
    }

    /// Checks a request's signature over its raw body at `now_unix` seconds.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now_unix: u64) -> Result<(), Rejection> {
        match self.scheme {
            Scheme::StandardWebhooks => self.verify_standard(headers, body, now_unix),
            Scheme::Stripe => self.verify_stripe(headers, body, now_unix),
            Scheme::HmacSha256 => {
                let name = self
                    .header
                    .as_ref()
                    .expect("hmac-sha256 always has a header");
                let signature = header_text(headers, name.as_str())?;
                let signature = hex::decode(signature.trim())
                    .map_err(|_| Rejection("the signature is not hex"))?;
                self.any_key_matches(&[body], &signature)
            }
        }
    }

    fn verify_standard(&self, headers: &HeaderMap, body: &[u8], now: u64) -> Result<(), Rejection> {
        let id = header_text(headers, "webhook-id")?;
        let timestamp = header_text(headers, "webhook-timestamp")?;
        check_timestamp(timestamp, now)?;
        let signatures = header_text(headers, "webhook-signature")?;
        let signed = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body];
        for entry in signatures.split_whitespace() {
            let Some(encoded) = entry.strip_prefix("v1,") else {
                continue;
            };
            if let Ok(signature) = BASE64.decode(encoded)
                && self.any_key_matches(&signed, &signature).is_ok()
            {
                return Ok(());
            }
        }
        Err(Rejection("no webhook-signature entry matches"))
    }

    fn verify_stripe(&self, headers: &HeaderMap, body: &[u8], now: u64) -> Result<(), Rejection> {
        let header = header_text(headers, "stripe-signature")?;
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", t)) => timestamp = Some(t),
                Some(("v1", v)) => signatures.push(v),
                _ => {}
            }
        }
        let timestamp = timestamp.ok_or(Rejection("Stripe-Signature has no t="))?;
        check_timestamp(timestamp, now)?;
        let signed = [timestamp.as_bytes(), b".", body];
        for encoded in signatures {
            if let Ok(signature) = hex::decode(encoded)
                && self.any_key_matches(&signed, &signature).is_ok()
            {
                return Ok(());
            }
        }
        Err(Rejection("no Stripe-Signature v1 entry matches"))
    }

    /// Constant-time: each key's MAC is compared with `verify_slice`.
    fn any_key_matches(&self, parts: &[&[u8]], signature: &[u8]) -> Result<(), Rejection> {
        let matched = self.keys.iter().any(|key| {
            let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
            for part in parts {
                mac.update(part);
            }
            mac.verify_slice(signature).is_ok()
        });
        if matched {
            Ok(())
        } else {
            Err(Rejection("the signature does not match"))
        }
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, Rejection> {
    headers
        .get(name)
        .ok_or(Rejection("a signature header is missing"))?
        .to_str()
        .map_err(|_| Rejection("a signature header is not text"))
}

fn check_timestamp(text: &str, now: u64) -> Result<(), Rejection> {
    let timestamp: u64 = text
        .trim()
        .parse()
        .map_err(|_| Rejection("the signature timestamp is not a number"))?;
    if timestamp.abs_diff(now) > TIMESTAMP_TOLERANCE.as_secs() {
        return Err(Rejection(
            "the signature timestamp is more than 300 s from now",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const STANDARD_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const STANDARD_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;

    fn standard_headers(signature: &str) -> HeaderMap {
        headers(&[
            ("webhook-id", "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk"),
            ("webhook-timestamp", "1649367553"),
            ("webhook-signature", signature),
        ])
    }

    #[test]
    fn standard_webhooks_test_vector_verifies() {
        let verifier = Verifier::new(Scheme::StandardWebhooks, &[STANDARD_SECRET], None).unwrap();
        let good = standard_headers("v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
        assert_eq!(verifier.verify(&good, STANDARD_BODY, 1_649_367_553), Ok(()));
        // Several entries: any one matching passes.
        let several = standard_headers("v1,AAAA v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
        assert_eq!(
            verifier.verify(&several, STANDARD_BODY, 1_649_367_600),
            Ok(())
        );
    }

    #[test]
    fn standard_webhooks_refuses_tampering_old_timestamps_and_missing_headers() {
        let verifier = Verifier::new(Scheme::StandardWebhooks, &[STANDARD_SECRET], None).unwrap();
        let good = standard_headers("v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
        let tampered = br#"{"email":"test@example.com","username":"test_usex"}"#;
        assert!(verifier.verify(&good, tampered, 1_649_367_553).is_err());
        assert!(
            verifier
                .verify(&good, STANDARD_BODY, 1_649_367_553 + 301)
                .is_err()
        );
        assert!(
            verifier
                .verify(&good, STANDARD_BODY, 1_649_367_553 - 301)
                .is_err()
        );
        assert!(
            verifier
                .verify(&HeaderMap::new(), STANDARD_BODY, 1_649_367_553)
                .is_err()
        );
        let other = Verifier::new(Scheme::StandardWebhooks, &["whsec_c2VjcmV0"], None).unwrap();
        assert!(other.verify(&good, STANDARD_BODY, 1_649_367_553).is_err());
    }

    #[test]
    fn a_second_secret_allows_rotation() {
        let verifier = Verifier::new(
            Scheme::StandardWebhooks,
            &["whsec_c2VjcmV0", STANDARD_SECRET],
            None,
        )
        .unwrap();
        let good = standard_headers("v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
        assert_eq!(verifier.verify(&good, STANDARD_BODY, 1_649_367_553), Ok(()));
    }

    fn hex_hmac(key: &[u8], parts: &[&[u8]]) -> String {
        let mut mac = HmacSha256::new_from_slice(key).unwrap();
        for part in parts {
            mac.update(part);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn stripe_signatures_verify_with_the_raw_secret() {
        let secret = "whsec_stripe_test_secret";
        let verifier = Verifier::new(Scheme::Stripe, &[secret], None).unwrap();
        let body = br#"{"id":"evt_1"}"#;
        let good = hex_hmac(secret.as_bytes(), &[b"1700000000", b".", body]);
        let header = format!("t=1700000000,v1=deadbeef,v1={good}");
        let map = headers(&[("stripe-signature", &header)]);
        assert_eq!(verifier.verify(&map, body, 1_700_000_100), Ok(()));
        assert!(verifier.verify(&map, b"{}", 1_700_000_100).is_err());
        assert!(verifier.verify(&map, body, 1_700_000_400).is_err());
    }

    #[test]
    fn plain_hmac_reads_the_configured_header() {
        let verifier =
            Verifier::new(Scheme::HmacSha256, &["razor"], Some("X-Razorpay-Signature")).unwrap();
        let body = b"{\"a\":1}";
        let good = hex_hmac(b"razor", &[body]);
        let map = headers(&[("x-razorpay-signature", &good)]);
        assert_eq!(verifier.verify(&map, body, 0), Ok(()));
        assert!(verifier.verify(&map, b"{\"a\":2}", 0).is_err());
        assert!(Verifier::new(Scheme::HmacSha256, &["razor"], None).is_err());
    }

    #[test]
    fn malformed_configuration_is_refused() {
        assert!(Verifier::new(Scheme::StandardWebhooks, &["not-whsec"], None).is_err());
        assert!(Verifier::new(Scheme::StandardWebhooks, &["whsec_!!!"], None).is_err());
        assert!(Verifier::new(Scheme::Stripe, &[], None).is_err());
        let debug = format!(
            "{:?}",
            Verifier::new(Scheme::Stripe, &["s3cret"], None).unwrap()
        );
        assert!(!debug.contains("s3cret"), "{debug}");
    }
}
