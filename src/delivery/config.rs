//! `--deliver-to` and the options that go with it, checked and loaded
//! before the data directory is touched: a bad file is a configuration
//! error (exit 2), never a delivery that silently stays off.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::cli::{Config, DeliverBody};
use crate::retry::RetrySchedule;
use crate::signature::{SignError, Signer};

/// Everything the dispatcher needs to deliver.
#[derive(Clone)]
pub struct DeliveryConfig {
    /// Where transactions are sent.
    pub url: hyper::Uri,
    /// One attempt, from connect to the end of the answer.
    pub timeout: Duration,
    /// Most attempts in flight at once.
    pub concurrency: usize,
    /// The waits before each attempt.
    pub schedule: Arc<RetrySchedule>,
    /// Signs each request when secrets are configured.
    pub signer: Option<Signer>,
    /// TLS for an `https://` URL.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Which body each delivery carries.
    pub body: DeliverBody,
}

impl std::fmt::Debug for DeliveryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryConfig")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .field("schedule", &self.schedule.to_string())
            .field("signed", &self.signer.is_some())
            .field("tls", &self.tls.is_some())
            .field("body", &self.body)
            .finish()
    }
}

/// Why the delivery settings are unusable. Each message names the flag.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The signing secrets file.
    #[error(transparent)]
    Signing(#[from] SignError),
    /// A TLS option with an `http://` URL.
    #[error("{0} is set but --deliver-to is an http:// URL: TLS options need an https:// one")]
    TlsWithoutHttps(&'static str),
    /// A PEM file cannot be read or holds nothing usable.
    #[error("{flag} {}: {message}", path.display())]
    Pem {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No system roots could be loaded for an `https://` destination.
    #[error(
        "--deliver-to is https:// but no system root certificates were found; install them (ca-certificates) or set --deliver-ca-file"
    )]
    NoSystemRoots,
    /// The client certificate and key do not make a TLS identity.
    #[error("--deliver-client-cert and --deliver-client-key cannot be used together: {0}")]
    ClientIdentity(#[source] rustls::Error),
    /// rustls refused the configuration.
    #[error("cannot set up TLS for --deliver-to: {0}")]
    Tls(#[source] rustls::Error),
}

impl DeliveryConfig {
    /// The delivery settings of `config`; `None` without `--deliver-to`.
    pub fn from_config(config: &Config) -> Result<Option<DeliveryConfig>, ConfigError> {
        let Some(url) = config.deliver_to.clone() else {
            return Ok(None);
        };
        let signer = config
            .deliver_signing_secret_file
            .as_deref()
            .map(Signer::from_file)
            .transpose()?;
        let https = url.scheme_str() == Some("https");
        let tls_files = [
            (config.deliver_ca_file.is_some(), "--deliver-ca-file"),
            (
                config.deliver_client_cert.is_some(),
                "--deliver-client-cert",
            ),
        ];
        if !https && let Some((_, flag)) = tls_files.iter().find(|(given, _)| *given) {
            return Err(ConfigError::TlsWithoutHttps(flag));
        }
        let tls = https
            .then(|| {
                client_tls(
                    config.deliver_ca_file.as_deref(),
                    config
                        .deliver_client_cert
                        .as_deref()
                        .zip(config.deliver_client_key.as_deref()),
                )
            })
            .transpose()?;
        Ok(Some(DeliveryConfig {
            url,
            timeout: config.deliver_timeout,
            concurrency: usize::try_from(config.deliver_concurrency).unwrap_or(usize::MAX),
            schedule: Arc::new(config.retry_schedule.clone()),
            signer,
            tls,
            body: config.deliver_body,
        }))
    }
}

/// The TLS client configuration: `ca_file`'s roots or the system's, and a
/// client identity for mutual TLS.
fn client_tls(
    ca_file: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = ca_file {
        for cert in certificates("--deliver-ca-file", path)? {
            roots.add(cert).map_err(|e| ConfigError::Pem {
                flag: "--deliver-ca-file",
                path: path.to_owned(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
    } else {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(ConfigError::NoSystemRoots);
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(ConfigError::Tls)?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => {
            let chain = certificates("--deliver-client-cert", cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| ConfigError::Pem {
                flag: "--deliver-client-key",
                path: key.to_owned(),
                message: format!("no PEM private key: {e}"),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(ConfigError::ClientIdentity)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Every PEM certificate in `path`; at least one.
fn certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem_error = |message: String| ConfigError::Pem {
        flag,
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error("holds no PEM certificate".to_owned()));
    }
    Ok(certs)
}
