//! The webhook route with `--payload-map`: the body mapped onto a
//! transaction ([`crate::payload_map`]), kept beside it as received, and
//! `200 {"status":"IGNORED","event":…}` for an event the map does not
//! take, so the provider stops sending it; nothing of it is stored.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::AppState;
use super::errors::{ApiError, json_bytes};
use super::untrusted;
use crate::metrics::WebhookOutcome;
use crate::model::NewTransaction;
use crate::payload_map::{Mapped, PayloadMap};
use crate::store::payloads::OriginalBody;

#[derive(Serialize)]
struct Ignored<'a> {
    status: &'static str,
    event: &'a str,
}

/// The answer to an event the map does not take: 200, the event it was
/// (cut to [`super::MAX_ECHOED_CHARS`]).
#[must_use]
pub fn ignored_answer(event: &str) -> (StatusCode, Vec<u8>) {
    let body = Ignored {
        status: "IGNORED",
        event: &untrusted::cut(event),
    };
    // Invariant: a struct of strings always serialises.
    let bytes = serde_json::to_vec(&body).expect("an IGNORED answer always serialises");
    (StatusCode::OK, bytes)
}

/// What the route does with a mapped body.
pub(super) enum Outcome {
    /// Store the transaction, with the body it came from.
    Store(NewTransaction, OriginalBody),
    /// Answer at once, storing nothing (IGNORED, or a 400/422 refusal).
    Answer(Response<Full<Bytes>>),
}

/// Maps `body` with `map`.
pub(super) fn map(state: &AppState, map: &PayloadMap, headers: &HeaderMap, body: Bytes) -> Outcome {
    match map.apply(&body) {
        Ok(Mapped::Transaction(transaction)) => {
            // Checked as application/json before the body was read, so
            // it is visible ASCII.
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            Outcome::Store(transaction, OriginalBody { content_type, body })
        }
        Ok(Mapped::Ignored { event }) => {
            state.metrics.webhook(WebhookOutcome::Ignored);
            let (status, answer) = ignored_answer(&event);
            Outcome::Answer(json_bytes(status, answer))
        }
        Err(rejection) => Outcome::Answer(ApiError::from(rejection).response()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ignored_answer_echoes_the_event_cut_short() {
        let (status, body) = ignored_answer("charge.refunded");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, br#"{"status":"IGNORED","event":"charge.refunded"}"#);
        let long = "e".repeat(10_000);
        let (_, body) = ignored_answer(&long);
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let event = answer["event"].as_str().unwrap();
        assert_eq!(event.chars().count(), super::super::MAX_ECHOED_CHARS + 1);
        assert!(event.ends_with('…'));
    }
}
