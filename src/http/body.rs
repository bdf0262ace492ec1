//! Reading a webhook's body within its bounds: its size (`--max-body-bytes`),
//! the number of pieces it arrives in ([`max_frames`]), and the time it
//! takes (`--body-read-timeout`).
//!
//! Each piece (a chunk of a chunked body, or one read of a body with a
//! `Content-Length`) is copied into one buffer, never larger than the
//! limit, as it arrives, and released at once. Keeping the pieces
//! themselves would pin the connection's read buffer once per piece: a
//! body sent as 1-byte chunks would then hold kilobytes per byte.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// Least number of pieces a body may arrive in, whatever its limit:
/// enough for any real client (a body with a `Content-Length` arrives in a
/// few reads, one per network segment at worst).
pub const MAX_BODY_FRAMES: usize = 4096;

/// For a `--max-body-bytes` above `MAX_BODY_FRAMES` times this, the number
/// of pieces allowed grows with it: on average a piece must bring this many
/// bytes (network segments bring over a thousand).
pub const MIN_MEAN_FRAME_BYTES: u64 = 256;

/// Buffer reserved up front for a body without a `Content-Length`; it
/// grows as the body arrives, up to the limit.
const CHUNKED_START_BYTES: usize = 4096;

/// Most pieces a body may arrive in under a `limit` of bytes.
#[must_use]
pub fn max_frames(limit: u64) -> usize {
    MAX_BODY_FRAMES.max(usize::try_from(limit / MIN_MEAN_FRAME_BYTES).unwrap_or(usize::MAX))
}

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    #[error("request body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("request body arrived in more than {0} pieces")]
    TooManyPieces(usize),
    #[error("request body not received within {0:?}")]
    TimedOut(Duration),
    #[error("could not read the request body: {0}")]
    Read(#[source] hyper::Error),
}

/// Reads the whole body: at most `limit` bytes (`declared` is its
/// `Content-Length`, already checked against `limit`), in at most
/// [`max_frames`] pieces, within `timeout`.
pub(super) async fn read(
    body: Incoming,
    declared: Option<u64>,
    limit: u64,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    tokio::time::timeout(timeout, collect(body, declared, limit))
        .await
        .map_err(|_| BodyError::TimedOut(timeout))?
}

async fn collect(
    mut body: Incoming,
    declared: Option<u64>,
    limit: u64,
) -> Result<Bytes, BodyError> {
    let max_bytes = usize::try_from(limit).unwrap_or(usize::MAX);
    let max_pieces = max_frames(limit);
    let initial = declared.map_or(CHUNKED_START_BYTES, |n| {
        usize::try_from(n).unwrap_or(max_bytes)
    });
    let mut buffer = Vec::with_capacity(initial.min(max_bytes));
    let mut pieces = 0_usize;
    while let Some(frame) = body.frame().await {
        pieces += 1;
        if pieces > max_pieces {
            return Err(BodyError::TooManyPieces(max_pieces));
        }
        // Trailers carry no body bytes; they only count as a piece.
        let Ok(data) = frame.map_err(BodyError::Read)?.into_data() else {
            continue;
        };
        let needed = buffer.len().saturating_add(data.len());
        if needed > max_bytes {
            return Err(BodyError::TooLarge(limit));
        }
        if needed > buffer.capacity() {
            // Doubling, but never past the limit.
            let target = needed
                .max(buffer.capacity().saturating_mul(2))
                .min(max_bytes);
            buffer.reserve_exact(target - buffer.len());
        }
        buffer.extend_from_slice(&data);
        // `data` (and with it hyper's read buffer) is released here.
    }
    Ok(Bytes::from(buffer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_piece_limit_grows_only_for_large_bodies() {
        assert_eq!(max_frames(65_536), MAX_BODY_FRAMES);
        assert_eq!(max_frames(1), MAX_BODY_FRAMES);
        assert_eq!(max_frames(10 * 1024 * 1024), 40_960);
    }
}
