//! The admin token (`--admin-token-file`): when set, every admin route
//! needs `Authorization: Bearer <token>`.
//!
//! The file holds one token per line (blank lines and `#` comments
//! ignored); any listed token is accepted, so a token can be rotated with
//! two listed. Only each token's SHA-256 is kept, and a presented token is
//! hashed and compared with every one of them in constant time
//! (`subtle`), so neither the position of the first differing byte nor the
//! token's length shows in the time an answer takes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use hyper::header::{AUTHORIZATION, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret_files;

/// Why the token file cannot be used: a configuration error. The message
/// never quotes the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The file cannot be read.
    #[error("cannot read --admin-token-file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no token, or a malformed one.
    #[error("--admin-token-file {}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: &'static str,
    },
}

/// The accepted tokens, as SHA-256 digests.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminTokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTokens")
            .field("tokens", &self.digests.len())
            .finish_non_exhaustive()
    }
}

/// Whether a request may use an admin route, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A listed token was presented.
    Allowed,
    /// No `Authorization` header (or more than one).
    Missing,
    /// An `Authorization` header with a scheme other than `Bearer`.
    WrongScheme,
    /// A bearer token that is not listed.
    WrongToken,
}

impl AdminTokens {
    /// Reads the token file.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let bytes = secret_files::read(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file_error = |message| TokenError::File {
            path: path.to_owned(),
            message,
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| file_error("not UTF-8 text"))?;
        AdminTokens::parse(text).map_err(file_error)
    }

    /// Tokens from the text of a token file.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let mut digests = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // What a client can send after `Bearer `: visible ASCII, no spaces.
            if !line.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("a token must be printable ASCII without spaces, one per line");
            }
            digests.push(Sha256::digest(line.as_bytes()).into());
        }
        if digests.is_empty() {
            return Err("holds no token (it is empty, blank, or only comments)");
        }
        Ok(AdminTokens { digests })
    }

    /// Checks a request's `Authorization` header: `Bearer <token>` (the
    /// scheme in any case) with a listed token.
    #[must_use]
    pub fn check(&self, headers: &HeaderMap) -> Verdict {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Verdict::Missing;
        };
        let value = value.as_bytes();
        let split = value.iter().position(|&b| b == b' ').unwrap_or(value.len());
        let (scheme, rest) = value.split_at(split);
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return Verdict::WrongScheme;
        }
        let presented: [u8; 32] = Sha256::digest(rest.trim_ascii()).into();
        // Every digest is compared, whichever matches.
        let matched = self
            .digests
            .iter()
            .fold(subtle::Choice::from(0), |found, digest| {
                found | digest.ct_eq(&presented)
            });
        if bool::from(matched) {
            Verdict::Allowed
        } else {
            Verdict::WrongToken
        }
    }
}

/// The tokens in force; a reload replaces them for the requests after it.
#[derive(Debug)]
pub struct TokenCell {
    current: RwLock<Arc<AdminTokens>>,
}

impl TokenCell {
    /// A cell holding `tokens`.
    #[must_use]
    pub fn new(tokens: AdminTokens) -> Self {
        TokenCell {
            current: RwLock::new(Arc::new(tokens)),
        }
    }

    /// The tokens in force now.
    #[must_use]
    pub fn current(&self) -> Arc<AdminTokens> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Puts `tokens` in force.
    pub fn replace(&self, tokens: AdminTokens) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn only_a_listed_bearer_token_is_allowed() {
        let tokens =
            AdminTokens::parse("# rotated on Monday\nold-token\n\n  new-token  \n").unwrap();
        let check = |values: &[&str]| tokens.check(&headers(values));
        assert_eq!(check(&["Bearer new-token"]), Verdict::Allowed);
        assert_eq!(check(&["bearer old-token"]), Verdict::Allowed);
        assert_eq!(check(&["BEARER  new-token "]), Verdict::Allowed);
        assert_eq!(check(&[]), Verdict::Missing);
        assert_eq!(
            check(&["Bearer new-token", "Bearer new-token"]),
            Verdict::Missing
        );
        assert_eq!(check(&["Basic bmV3LXRva2Vu"]), Verdict::WrongScheme);
        assert_eq!(check(&["new-token"]), Verdict::WrongScheme);
        assert_eq!(check(&["Bearer"]), Verdict::WrongToken);
        assert_eq!(check(&["Bearer new-toke"]), Verdict::WrongToken);
        assert_eq!(check(&["Bearer new-token2"]), Verdict::WrongToken);
        assert_eq!(check(&["Bearer # rotated on Monday"]), Verdict::WrongToken);
    }

    #[test]
    fn a_file_without_a_token_or_with_a_malformed_one_is_refused() {
        for text in [
            "",
            "  \n\t\n",
            "# only a comment\n",
            "two words\n",
            "tab\there\n",
        ] {
            assert!(AdminTokens::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn the_debug_form_shows_no_digest() {
        let tokens = AdminTokens::parse("s3cret").unwrap();
        assert_eq!(format!("{tokens:?}"), "AdminTokens { tokens: 1, .. }");
    }
}
