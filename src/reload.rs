//! SIGHUP: read the TLS certificate and key and the admin token file
//! again.
//!
//! All of them are read and checked before any is put in force, so a
//! reload either takes everything or nothing: a file that fails keeps the
//! previous certificate, key and tokens in use, and one line in the log
//! says why. Handshakes and requests after a successful reload use the new
//! ones; connections already open are not cut.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::admin_token::{AdminTokens, TokenCell, TokenError};
use crate::secret_files;
use crate::tls::{self, CertificateCell, TlsError, TlsFiles};

/// Why a reload put nothing in force.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The certificate or key.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The admin token file.
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// What a SIGHUP reloads, and where it puts it.
#[derive(Debug, Default)]
pub struct Reloader {
    tls: Option<(TlsFiles, Arc<CertificateCell>)>,
    token: Option<(PathBuf, Arc<TokenCell>)>,
}

impl Reloader {
    /// Reloads nothing until given something.
    #[must_use]
    pub fn new() -> Self {
        Reloader::default()
    }

    /// Reloads `files` into `cell`.
    #[must_use]
    pub fn tls(mut self, files: TlsFiles, cell: Arc<CertificateCell>) -> Self {
        self.tls = Some((files, cell));
        self
    }

    /// Reloads the token file `path` into `cell`.
    #[must_use]
    pub fn token(mut self, path: PathBuf, cell: Arc<TokenCell>) -> Self {
        self.token = Some((path, cell));
        self
    }

    /// Whether there is anything to reload.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tls.is_none() && self.token.is_none()
    }

    /// Reads everything, then puts all of it in force, or none of it.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let certified = self
            .tls
            .as_ref()
            .map(|(files, _)| tls::load(files))
            .transpose()?;
        let tokens = self
            .token
            .as_ref()
            .map(|(path, _)| AdminTokens::from_file(path))
            .transpose()?;
        if let (Some((_, cell)), Some(certified)) = (&self.tls, certified) {
            cell.replace(certified);
        }
        if let (Some((_, cell)), Some(tokens)) = (&self.token, tokens) {
            cell.replace(tokens);
        }
        Ok(())
    }

    /// Warns about each secret file other users can read.
    pub fn warn_if_readable_by_others(&self) {
        if let Some((files, _)) = &self.tls {
            secret_files::warn_if_readable_by_others(&files.key, "--tls-key");
        }
        if let Some((path, _)) = &self.token {
            secret_files::warn_if_readable_by_others(path, "--admin-token-file");
        }
    }

    /// [`Reloader::reload`], then one log line saying what happened.
    pub fn reload_and_log(&self) {
        if self.is_empty() {
            tracing::info!(
                "SIGHUP: nothing to reload (no --tls-cert/--tls-key or --admin-token-file)"
            );
            return;
        }
        match self.reload() {
            Ok(()) => {
                self.warn_if_readable_by_others();
                let mut what = Vec::new();
                if let Some((files, _)) = &self.tls {
                    what.push(format!(
                        "certificate {} and key {}",
                        files.cert.display(),
                        files.key.display()
                    ));
                }
                if let Some((path, _)) = &self.token {
                    what.push(format!("admin token file {}", path.display()));
                }
                tracing::info!(
                    "SIGHUP: reloaded {}; new connections and requests use them",
                    what.join(", ")
                );
            }
            Err(e) => tracing::error!(
                "SIGHUP: reload failed, still using the previous certificate, key and admin token: {e}"
            ),
        }
    }
}

/// Reloads once for every change of `requests` (a count of SIGHUPs), on
/// the blocking pool, until the sender is gone.
pub async fn run(reloader: Arc<Reloader>, mut requests: watch::Receiver<u64>) {
    while requests.changed().await.is_ok() {
        let reloader = Arc::clone(&reloader);
        if tokio::task::spawn_blocking(move || reloader.reload_and_log())
            .await
            .is_err()
        {
            tracing::error!("SIGHUP: the reload task panicked; nothing was changed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_token_file_keeps_the_previous_certificate_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let first = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let second = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let files = TlsFiles {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        let token_file = dir.path().join("token");
        std::fs::write(&files.cert, first.cert.pem()).unwrap();
        std::fs::write(&files.key, first.signing_key.serialize_pem()).unwrap();
        std::fs::write(&token_file, "first").unwrap();
        let cell = Arc::new(CertificateCell::new(tls::load(&files).unwrap()));
        let tokens = Arc::new(TokenCell::new(AdminTokens::from_file(&token_file).unwrap()));
        let reloader = Reloader::new()
            .tls(files.clone(), Arc::clone(&cell))
            .token(token_file.clone(), Arc::clone(&tokens));

        std::fs::write(&files.cert, second.cert.pem()).unwrap();
        std::fs::write(&files.key, second.signing_key.serialize_pem()).unwrap();
        std::fs::write(&token_file, "   \n").unwrap();
        assert!(matches!(reloader.reload(), Err(ReloadError::Token(_))));
        assert_eq!(cell.current().cert[0].as_ref(), first.cert.der().as_ref());
        assert_eq!(*tokens.current(), AdminTokens::parse("first").unwrap());

        std::fs::write(&token_file, "second").unwrap();
        reloader.reload().unwrap();
        assert_eq!(cell.current().cert[0].as_ref(), second.cert.der().as_ref());
        assert_eq!(*tokens.current(), AdminTokens::parse("second").unwrap());
    }
}
