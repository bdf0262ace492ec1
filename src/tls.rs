//! TLS with rustls: the one crypto provider webhookd uses (ring), and
//! HTTPS on `--listen` from a PEM certificate chain and key
//! (`--tls-cert`, `--tls-key`).
//!
//! The server speaks TLS 1.2 and 1.3 only (rustls has nothing older) and
//! offers ALPN `h2` then `http/1.1`. Its certificate comes from a
//! [`CertificateCell`], which a reload replaces: handshakes from then on
//! present the new certificate, and connections already open keep the
//! keys they agreed on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::secret_files;

/// ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The crypto provider for every TLS use in webhookd: rustls's ring
/// provider, passed explicitly to each configuration (never installed as
/// the process-wide default, so nothing depends on which was set first).
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// The certificate chain and key files (`--tls-cert`, `--tls-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificates, the server's own first, then its intermediates.
    pub cert: PathBuf,
    /// The PEM private key of the first certificate.
    pub key: PathBuf,
}

/// Why the certificate or key cannot be used. Messages name the file and
/// the flag, never the key's bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {flag} {}: {source}", path.display())]
    Read {
        /// `--tls-cert` or `--tls-key`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no PEM `CERTIFICATE` block.
    #[error("--tls-cert {}: no certificate (expected a PEM CERTIFICATE block)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The certificate file's PEM is damaged.
    #[error("--tls-cert {}: not valid PEM: {source}", path.display())]
    CertificatePem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: pem::Error,
    },
    /// The first certificate cannot be parsed.
    #[error("--tls-cert {}: not a usable X.509 certificate: {source}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The key file holds no PEM private key block.
    #[error(
        "--tls-key {}: no private key (expected a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)",
        path.display()
    )]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key file's PEM is damaged (the message never quotes it).
    #[error("--tls-key {}: a damaged PEM block", path.display())]
    KeyPem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: pem::Error,
    },
    /// The key is of a kind the provider cannot sign with.
    #[error("--tls-key {}: not a usable RSA, ECDSA (P-256, P-384) or Ed25519 key", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The key is not the first certificate's.
    #[error("--tls-key {} is not the key of the first certificate in --tls-cert {}", key.display(), cert.display())]
    Mismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
}

/// Reads and checks the chain and key: the chain is not empty, the key is
/// one rustls can sign with, and it belongs to the first certificate.
pub fn load(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_chain(&files.cert)?;
    let key = read_key(&files.key)?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::Key {
            path: files.key.clone(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        // A key that cannot show its public half is checked by the first handshake.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::Mismatch {
            key: files.key.clone(),
            cert: files.cert.clone(),
        }),
        Err(source) => Err(TlsError::Certificate {
            path: files.cert.clone(),
            source,
        }),
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    secret_files::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read("--tls-cert", path)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::CertificatePem {
            path: path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read("--tls-key", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        source => TlsError::KeyPem {
            path: path.to_owned(),
            source,
        },
    })
}

/// The certificate and key new handshakes present; [`CertificateCell::replace`]
/// swaps them without touching connections already open.
pub struct CertificateCell {
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for CertificateCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of every log line.
        f.debug_struct("CertificateCell").finish_non_exhaustive()
    }
}

impl CertificateCell {
    /// A cell holding `certified`.
    #[must_use]
    pub fn new(certified: Arc<CertifiedKey>) -> Self {
        CertificateCell {
            current: RwLock::new(certified),
        }
    }

    /// What the next handshake presents.
    #[must_use]
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Presents `certified` from the next handshake on.
    pub fn replace(&self, certified: Arc<CertifiedKey>) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = certified;
    }
}

impl ResolvesServerCert for CertificateCell {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The server side of TLS on `--listen`: TLS 1.2 and 1.3, ALPN `h2` then
/// `http/1.1`, no client certificates, the certificate from `cell`.
#[must_use]
pub fn server_config(cell: Arc<CertificateCell>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(cell);
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn certificate(host: &str) -> rcgen::CertifiedKey<rcgen::KeyPair> {
        rcgen::generate_simple_self_signed(vec![host.to_owned()]).unwrap()
    }

    #[test]
    fn a_matching_chain_and_key_load() {
        let dir = tempfile::tempdir().unwrap();
        let made = certificate("localhost");
        let files = TlsFiles {
            cert: write(dir.path(), "cert.pem", &made.cert.pem()),
            key: write(dir.path(), "key.pem", &made.signing_key.serialize_pem()),
        };
        let loaded = load(&files).unwrap();
        assert_eq!(loaded.cert[0].as_ref(), made.cert.der().as_ref());
    }

    #[test]
    fn bad_files_are_refused_naming_the_flag_and_never_quoting_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let made = certificate("localhost");
        let other = certificate("localhost");
        let key_pem = made.signing_key.serialize_pem();
        let cert = write(dir.path(), "cert.pem", &made.cert.pem());
        let key = write(dir.path(), "key.pem", &key_pem);
        let other_key = write(dir.path(), "other.pem", &other.signing_key.serialize_pem());
        // A key block whose base64 is damaged half-way.
        let body_line = key_pem.lines().nth(1).unwrap();
        let damaged = key_pem.replacen(body_line, &format!("{}!!", &body_line[..10]), 1);
        let damaged = write(dir.path(), "damaged.pem", &damaged);
        let empty = write(dir.path(), "empty.pem", "");
        let missing = dir.path().join("missing.pem");
        let cases = [
            (cert.clone(), missing.clone(), "cannot read --tls-key"),
            (missing, key.clone(), "cannot read --tls-cert"),
            (empty.clone(), key.clone(), "--tls-cert"),
            (cert.clone(), empty, "no private key"),
            (key.clone(), key.clone(), "no certificate"),
            (cert.clone(), cert.clone(), "no private key"),
            (cert.clone(), damaged, "damaged PEM"),
            (cert, other_key, "is not the key of the first certificate"),
        ];
        for (cert, key, expected) in cases {
            let error = load(&TlsFiles { cert, key }).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains('\n'), "{error}");
            for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
                assert!(!error.contains(&line[..16]), "{error} quotes the key");
            }
        }
    }

    #[test]
    fn the_server_prefers_h2_then_http_1_1() {
        let made = certificate("localhost");
        let key =
            PrivateKeyDer::from_pem_slice(made.signing_key.serialize_pem().as_bytes()).unwrap();
        let signer = provider().key_provider.load_private_key(key).unwrap();
        let cell = Arc::new(CertificateCell::new(Arc::new(CertifiedKey::new(
            vec![made.cert.der().clone()],
            signer,
        ))));
        let config = server_config(cell);
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }
}
