//! Webhook signature verification, off unless a scheme and secrets are
//! configured. Verification runs on the raw body bytes before any parsing.
//! Each secret's MAC is computed once per request; every candidate
//! signature of the right length is compared with it in constant time
//! (`CtOutput`'s `==`). Any configured secret may match, so a secret can be
//! rotated with two active.
//!
//! The same Standard Webhooks scheme signs outbound deliveries ([`Signer`]):
//! one MAC function and one secrets-file format serve both directions.

mod sign;

pub use sign::{SignError, Signer};

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::digest::{CtOutput, Output};
use hmac::{Hmac, Mac};
use hyper::HeaderMap;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far a signed timestamp may be from now, either way.
pub const TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(300);

/// Most `v1` signatures one request may carry. Senders put one per active
/// secret (two while rotating); a header with more is refused before any
/// MAC is computed, so a client cannot make a request cost more by
/// repeating entries.
pub const MAX_SIGNATURES: usize = 16;

/// Prefix of a Standard Webhooks secret; the rest is base64.
const STANDARD_SECRET_PREFIX: &str = "whsec_";

/// Length of an HMAC-SHA256 tag; candidates of any other length are skipped.
const TAG_LEN: usize = 32;

/// The standard-webhooks headers (id, timestamp, signature): the standard's
/// own names, and the `svix-*` names Svix sends by default. A request uses
/// one set: the `webhook-*` one if it has any of those headers, else `svix-*`.
const STANDARD_HEADER_SETS: [[&str; 3]; 2] = [
    ["webhook-id", "webhook-timestamp", "webhook-signature"],
    ["svix-id", "svix-timestamp", "svix-signature"],
];

/// Signature scheme (`--signature-scheme`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheme {
    /// Standard Webhooks (Svix): `webhook-id`, `webhook-timestamp`,
    /// `webhook-signature: v1,<base64>` (or the same as `svix-*`); signs
    /// `{id}.{timestamp}.{body}`.
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

/// Why the signature settings are unusable: a configuration error, found
/// before anything touches the data dir.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Only part of the settings is given (names the flags involved).
    #[error("{0}")]
    Incomplete(String),
    /// `--signature-header` is not a valid header name.
    #[error("--signature-header {0:?} is not a header name")]
    HeaderName(String),
    /// The secrets file cannot be read.
    #[error("cannot read --signing-secrets-file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// No secret, or a malformed one (the secret itself is never part of
    /// the message).
    #[error("{0}")]
    Secret(&'static str),
    /// The secrets file holds no secret, or a malformed one.
    #[error("--signing-secrets-file {}: {message}", path.display())]
    SecretsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: &'static str,
    },
}

/// Why a request's signature was refused (answered 401 `invalid_signature`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(pub &'static str);

impl Verifier {
    /// Builds the verifier the command line asks for: `None` when no
    /// signature setting is given. Every half-configuration is refused (a
    /// scheme without secrets, secrets without a scheme, `hmac-sha256`
    /// without `--signature-header`, `--signature-header` with another
    /// scheme or none), so verification never silently stays off. The flags
    /// are checked before the secrets file (one secret per line; blank
    /// lines and `#` comments ignored) is read.
    pub fn from_config(
        scheme: Option<Scheme>,
        secrets_file: Option<&Path>,
        header: Option<&str>,
    ) -> Result<Option<Verifier>, ConfigError> {
        let (scheme, path) = match (scheme, secrets_file) {
            (None, None) => {
                return match header {
                    None => Ok(None),
                    Some(_) => Err(ConfigError::Incomplete(
                        "--signature-header is set but --signature-scheme is not: \
                         --signature-header is for --signature-scheme hmac-sha256"
                            .to_owned(),
                    )),
                };
            }
            (None, Some(_)) => {
                return Err(ConfigError::Incomplete(
                    "--signing-secrets-file is set but --signature-scheme is not: set both, \
                     or neither to turn signatures off"
                        .to_owned(),
                ));
            }
            (Some(scheme), None) => {
                return Err(ConfigError::Incomplete(format!(
                    "--signature-scheme {} needs --signing-secrets-file",
                    scheme.name()
                )));
            }
            (Some(scheme), Some(path)) => (scheme, path),
        };
        let header = header_name(scheme, header)?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let secrets = secret_lines(&text);
        let keys = decode_keys(scheme, &secrets).map_err(|message| ConfigError::SecretsFile {
            path: path.to_owned(),
            message,
        })?;
        Ok(Some(Verifier {
            scheme,
            header,
            keys,
        }))
    }

    /// Builds a verifier from secrets given directly.
    pub fn new(
        scheme: Scheme,
        secrets: &[&str],
        header: Option<&str>,
    ) -> Result<Verifier, ConfigError> {
        let header = header_name(scheme, header)?;
        let keys = decode_keys(scheme, secrets).map_err(ConfigError::Secret)?;
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
                let signature = header_text(headers, name.as_str())?.trim();
                let tags = self.tags(&[body]);
                if signature.len() == 2 * TAG_LEN
                    && let Ok(signature) = hex::decode(signature)
                    && matches_any(&tags, &signature)
                {
                    return Ok(());
                }
                Err(Rejection("the signature does not match"))
            }
        }
    }

    fn verify_standard(&self, headers: &HeaderMap, body: &[u8], now: u64) -> Result<(), Rejection> {
        let [id_name, timestamp_name, signature_name] = standard_header_names(headers);
        let id = header_text(headers, id_name)?;
        let timestamp = header_text(headers, timestamp_name)?;
        check_timestamp(timestamp, now)?;
        let candidates: Vec<&str> = header_text(headers, signature_name)?
            .split_whitespace()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .collect();
        check_count(candidates.len())?;
        let tags = self.tags(&[id.as_bytes(), b".", timestamp.as_bytes(), b".", body]);
        // 32 bytes are 44 base64 characters.
        let matched = candidates.iter().any(|encoded| {
            encoded.len() == TAG_LEN.div_ceil(3) * 4
                && BASE64
                    .decode(encoded)
                    .is_ok_and(|signature| matches_any(&tags, &signature))
        });
        if matched {
            Ok(())
        } else {
            Err(Rejection("no v1 signature matches"))
        }
    }

    fn verify_stripe(&self, headers: &HeaderMap, body: &[u8], now: u64) -> Result<(), Rejection> {
        let header = header_text(headers, "stripe-signature")?;
        let mut timestamp = None;
        let mut candidates = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", t)) => timestamp = Some(t),
                Some(("v1", v)) => candidates.push(v),
                _ => {}
            }
        }
        let timestamp = timestamp.ok_or(Rejection("Stripe-Signature has no t="))?;
        check_timestamp(timestamp, now)?;
        check_count(candidates.len())?;
        let tags = self.tags(&[timestamp.as_bytes(), b".", body]);
        let matched = candidates.iter().any(|encoded| {
            encoded.len() == 2 * TAG_LEN
                && hex::decode(encoded).is_ok_and(|signature| matches_any(&tags, &signature))
        });
        if matched {
            Ok(())
        } else {
            Err(Rejection("no Stripe-Signature v1 entry matches"))
        }
    }

    /// Each key's MAC of the concatenated `parts`, computed once per request.
    fn tags(&self, parts: &[&[u8]]) -> Vec<CtOutput<HmacSha256>> {
        self.keys.iter().map(|key| mac(key, parts)).collect()
    }
}

/// HMAC-SHA256 under `key` of the concatenated `parts`.
fn mac(key: &[u8], parts: &[&[u8]]) -> CtOutput<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize()
}

/// The secrets of a secrets file: one per line, blank lines and `#`
/// comments ignored.
fn secret_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// Whether `signature` equals one of `tags`; each comparison is
/// constant-time (`CtOutput`'s `==`), and a wrong length matches nothing.
fn matches_any(tags: &[CtOutput<HmacSha256>], signature: &[u8]) -> bool {
    if signature.len() != TAG_LEN {
        return false;
    }
    let candidate = CtOutput::<HmacSha256>::new(Output::<HmacSha256>::clone_from_slice(signature));
    // `contains` compares with `CtOutput`'s `==`, which is constant-time.
    tags.contains(&candidate)
}

/// The `--signature-header` for `scheme`: required by `hmac-sha256`,
/// refused with the others.
fn header_name(
    scheme: Scheme,
    header: Option<&str>,
) -> Result<Option<hyper::header::HeaderName>, ConfigError> {
    match (scheme, header) {
        (Scheme::HmacSha256, Some(name)) => hyper::header::HeaderName::from_bytes(name.as_bytes())
            .map(Some)
            .map_err(|_| ConfigError::HeaderName(name.to_owned())),
        (Scheme::HmacSha256, None) => Err(ConfigError::Incomplete(
            "--signature-scheme hmac-sha256 needs --signature-header".to_owned(),
        )),
        (_, Some(_)) => Err(ConfigError::Incomplete(format!(
            "--signature-header is only for --signature-scheme hmac-sha256, not {}",
            scheme.name()
        ))),
        (_, None) => Ok(None),
    }
}

/// The secrets as HMAC keys: `whsec_<base64>` decoded for standard-webhooks,
/// the raw bytes otherwise.
fn decode_keys(scheme: Scheme, secrets: &[&str]) -> Result<Vec<Vec<u8>>, &'static str> {
    if secrets.is_empty() {
        return Err("holds no secret");
    }
    secrets
        .iter()
        .map(|secret| match scheme {
            Scheme::StandardWebhooks => secret
                .strip_prefix(STANDARD_SECRET_PREFIX)
                .and_then(|b64| BASE64.decode(b64).ok())
                .filter(|key| !key.is_empty())
                .ok_or("a standard-webhooks secret must look like whsec_<base64>"),
            Scheme::Stripe | Scheme::HmacSha256 => Ok(secret.as_bytes().to_vec()),
        })
        .collect()
}

/// The header set this request uses: `webhook-*` if it has any of them,
/// else `svix-*`.
fn standard_header_names(headers: &HeaderMap) -> [&'static str; 3] {
    let [standard, svix] = STANDARD_HEADER_SETS;
    if standard.iter().any(|name| headers.contains_key(*name)) {
        standard
    } else if svix.iter().any(|name| headers.contains_key(*name)) {
        svix
    } else {
        standard
    }
}

fn check_count(candidates: usize) -> Result<(), Rejection> {
    if candidates > MAX_SIGNATURES {
        return Err(Rejection(
            "more than 16 v1 signatures in one request; at most 16 are checked",
        ));
    }
    Ok(())
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
mod tests;
