//! The delivery journal: every attempt to deliver a transaction to
//! `--deliver-to`, in the `attempts` table keyed by (log key, attempt
//! number), and the attempts in flight in `attempts_open`.
//!
//! An attempt is written (started, no outcome) in the commit that hands it
//! to the dispatcher, before its request is sent, with a row in
//! `attempts_open`; its outcome is written, and that row deleted, in the
//! commit that records what the destination answered. So every request a
//! destination ever saw has its row here. A row still open at start-up is
//! one a crash cut off: it is recorded `interrupted` before anything is
//! served (see the writer's delivery operations).
//!
//! Values start with a version byte, then the bincode (standard config)
//! encoding of [`StoredAttempt`].

use serde::{Deserialize, Serialize};

use super::encoding::{self, DecodeError};

/// Version byte of the attempt layout written today.
pub const ATTEMPT_VERSION: u8 = 1;

/// Most bytes of a response body kept with its attempt.
pub const RESPONSE_EXCERPT_BYTES: usize = 4096;

/// Longest error text kept with an attempt (and as a record's `last_error`).
pub const MAX_ERROR_CHARS: usize = 200;

/// What an attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptOutcome {
    /// The destination answered 2xx.
    Delivered,
    /// Any other answer, a timeout, a connection or TLS error.
    Failed,
    /// A crash or a shutdown cut it off before its outcome was written;
    /// the destination may or may not have seen the request.
    Interrupted,
}

impl AttemptOutcome {
    /// The API's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Interrupted => "interrupted",
        }
    }
}

/// One attempt as the journal holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAttempt {
    /// When it was journaled, just before its request was sent (ms).
    pub started_at_ms: u64,
    /// When its answer (or failure) arrived (ms); `None` while in flight and
    /// for an interrupted one.
    pub finished_at_ms: Option<u64>,
    /// `None` while in flight.
    pub outcome: Option<AttemptOutcome>,
    /// The HTTP status, if an answer came.
    pub status_code: Option<u16>,
    /// Why it failed, short.
    pub error: Option<String>,
    /// From the request's start to its end (ms).
    pub duration_ms: Option<u64>,
    /// The first [`RESPONSE_EXCERPT_BYTES`] of the answer's body, as text.
    pub response_excerpt: Option<String>,
}

/// One attempt with its number, as reads return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// 1-based, counting every attempt the transaction ever had.
    pub number: u32,
    /// The rest.
    pub stored: StoredAttempt,
}

/// Encodes an attempt into `out` (cleared first).
pub(crate) fn encode_into(attempt: &StoredAttempt, out: &mut Vec<u8>) {
    encoding::encode_versioned(ATTEMPT_VERSION, attempt, out);
}

/// Decodes a value of the `attempts` table.
pub(crate) fn decode(bytes: &[u8]) -> Result<StoredAttempt, DecodeError> {
    encoding::decode_versioned(ATTEMPT_VERSION, bytes)
}

/// `text` cut to at most `max` characters (an ellipsis marks the cut).
#[must_use]
pub fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_round_trip_and_unknown_versions_are_refused() {
        let attempt = StoredAttempt {
            started_at_ms: 5,
            finished_at_ms: Some(9),
            outcome: Some(AttemptOutcome::Failed),
            status_code: Some(503),
            error: Some("HTTP 503".to_owned()),
            duration_ms: Some(4),
            response_excerpt: Some("busy".to_owned()),
        };
        let mut buf = Vec::new();
        encode_into(&attempt, &mut buf);
        assert_eq!(decode(&buf).unwrap(), attempt);
        buf[0] = 2;
        assert!(matches!(decode(&buf), Err(DecodeError::UnknownVersion(2))));
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn shorten_cuts_on_characters() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("ääää", 2), "ää…");
    }
}
