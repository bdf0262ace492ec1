//! Signing outbound deliveries with Standard Webhooks: `webhook-signature`
//! is `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, one entry
//! per secret, space-separated, so a receiver that knows any one of them
//! (old or new, while rotating) can verify.

use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::{BASE64, Scheme, decode_keys, mac, secret_lines};

/// The secrets every delivery is signed with (`--deliver-signing-secret-file`).
#[derive(Clone)]
pub struct Signer {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("Signer")
            .field("secrets", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Why the signing secrets are unusable (a configuration error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The file cannot be read.
    #[error("cannot read --deliver-signing-secret-file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// No secret, or one that is not `whsec_<base64>` (never printed).
    #[error("--deliver-signing-secret-file {}: {message}", path.display())]
    Secrets {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: &'static str,
    },
}

impl Signer {
    /// Reads `whsec_<base64>` secrets, one a line (blank lines and `#`
    /// comments ignored), in the format the verifier reads.
    pub fn from_file(path: &Path) -> Result<Signer, SignError> {
        let text = std::fs::read_to_string(path).map_err(|source| SignError::Read {
            path: path.to_owned(),
            source,
        })?;
        Signer::new(&secret_lines(&text)).map_err(|message| SignError::Secrets {
            path: path.to_owned(),
            message,
        })
    }

    /// A signer for secrets given directly.
    pub fn new(secrets: &[&str]) -> Result<Signer, &'static str> {
        Ok(Signer {
            keys: decode_keys(Scheme::StandardWebhooks, secrets)?,
        })
    }

    /// The `webhook-signature` value for a message: one `v1,<base64>` per
    /// secret, space-separated.
    #[must_use]
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let timestamp = timestamp.to_string();
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body];
        self.keys
            .iter()
            .map(|key| format!("v1,{}", BASE64.encode(mac(key, &parts).into_bytes())))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use hyper::HeaderMap;
    use hyper::header::HeaderValue;

    use super::super::Verifier;
    use super::*;

    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    #[test]
    fn the_standard_webhooks_test_vector_is_signed_as_published() {
        let signer = Signer::new(&[SECRET]).unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        assert_eq!(
            signer.sign("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1_649_367_553, body),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn every_secret_signs_and_the_verifier_accepts_each_alone() {
        let other = "whsec_c2VjcmV0";
        let signer = Signer::new(&[other, SECRET]).unwrap();
        let signature = signer.sign("msg_1", 1_700_000_000, b"{}");
        assert_eq!(signature.split(' ').count(), 2);
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", HeaderValue::from_static("msg_1"));
        headers.insert("webhook-timestamp", HeaderValue::from_static("1700000000"));
        headers.insert(
            "webhook-signature",
            HeaderValue::from_str(&signature).unwrap(),
        );
        for secret in [other, SECRET] {
            let verifier = Verifier::new(Scheme::StandardWebhooks, &[secret], None).unwrap();
            assert_eq!(verifier.verify(&headers, b"{}", 1_700_000_000), Ok(()));
            assert!(verifier.verify(&headers, b"{ }", 1_700_000_000).is_err());
        }
    }

    #[test]
    fn bad_secrets_files_are_refused_without_printing_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets");
        std::fs::write(&path, "# rotated monthly\n\n").unwrap();
        let e = Signer::from_file(&path).unwrap_err().to_string();
        assert!(
            e.contains("--deliver-signing-secret-file") && e.contains("no secret"),
            "{e}"
        );
        std::fs::write(&path, "plaintext-secret-123\n").unwrap();
        let e = Signer::from_file(&path).unwrap_err().to_string();
        assert!(
            e.contains("whsec_") && !e.contains("plaintext-secret-123"),
            "{e}"
        );
        let e = Signer::from_file(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
        assert!(!format!("{:?}", Signer::new(&[SECRET]).unwrap()).contains("C2FV"));
    }
}
