//! One client connection, before and under hyper.
//!
//! - On a TLS socket the handshake comes first, and it must finish by the
//!   connection's head deadline (`--header-read-timeout` after it was
//!   accepted): a client that never starts or never finishes one holds its
//!   slot no longer than one that never sends a head. ALPN then says
//!   whether the connection speaks HTTP/2 ([`super::http2`]) or HTTP/1.1.
//! - A client that opens HTTP/1.1 with the HTTP/2 connection preface (h2c
//!   with prior knowledge, `curl --http2-prior-knowledge`; or over TLS
//!   without having negotiated `h2`) is refused the way HTTP/2 says to: a
//!   `GOAWAY` frame with the error `HTTP_1_1_REQUIRED`, then a clean
//!   close. HTTP/2 is served only over TLS, where ALPN chose it.
//! - [`ClientIo`] closes a connection whose answers the client has not
//!   read for `--write-timeout`: a client that pipelines requests and never
//!   reads would otherwise hold its connection slot, and the memory of its
//!   answers, for ever. Its close drops what is still queued for the
//!   client and resets the connection ([`DropUnsent`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The first bytes an HTTP/2 client with prior knowledge sends.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The first read of a connection: enough to tell HTTP/2 from HTTP/1.1,
/// and usually a whole webhook, which hyper then takes from this buffer.
const FIRST_READ_BYTES: usize = 1024;

/// An empty SETTINGS frame (HTTP/2 requires one first), then a GOAWAY with
/// last stream 0 (no request was processed), error `HTTP_1_1_REQUIRED`
/// (0xd) and the debug text "HTTP/1.1 only".
const H2_REFUSAL: &[u8] = b"\
    \0\0\0\x04\0\0\0\0\0\
    \0\0\x15\x07\0\0\0\0\0\
    \0\0\0\0\
    \0\0\0\x0d\
    HTTP/1.1 only";

/// How long a refused HTTP/2 client has to read the GOAWAY before the
/// connection is closed; what it sends meanwhile is read and dropped (up
/// to [`REFUSAL_DRAIN_BYTES`]), so the close is a FIN, not a reset that
/// could destroy the GOAWAY before the client reads it.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Most bytes read and dropped from a refused HTTP/2 client.
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;

/// Runs the TLS handshake of a new connection; `None` if it failed, did
/// not finish by `deadline`, or the server is shutting down. Failures are
/// logged at debug level only: scanners cause them all day long.
pub(super) async fn handshake(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    deadline: Instant,
    mut closing: watch::Receiver<bool>,
) -> Option<TlsStream<TcpStream>> {
    tokio::select! {
        accepted = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => match accepted {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!("TLS handshake not finished within --header-read-timeout");
                None
            }
        },
        _ = closing.wait_for(|closing| *closing) => None,
    }
}

/// Whether the client chose HTTP/2 through ALPN.
pub(super) fn negotiated_h2(stream: &TlsStream<TcpStream>) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2)
}

/// Reads a new HTTP/1.1 connection's first bytes and returns the
/// connection for hyper, with those bytes to be read again; `None` if the
/// client sent nothing by `deadline`, the server is shutting down, or it
/// spoke HTTP/2 and was refused.
///
/// A client that sends a prefix of the HTTP/2 preface and then something
/// else has until `deadline` here and `--header-read-timeout` again from
/// hyper for its head: still bounded.
pub(super) async fn open<S: AsyncRead + AsyncWrite + DropUnsent + Unpin>(
    mut stream: S,
    deadline: Instant,
    write_timeout: Duration,
    mut closing: watch::Receiver<bool>,
) -> Option<ClientIo<S>> {
    let mut first = vec![0; FIRST_READ_BYTES];
    let mut filled = 0;
    let sniff = async {
        loop {
            let n = stream.read(&mut first[filled..]).await?;
            filled += n;
            let seen = filled.min(H2_PREFACE.len());
            if n == 0 || first[..seen] != H2_PREFACE[..seen] {
                return Ok(false);
            }
            if seen == H2_PREFACE.len() {
                return Ok(true);
            }
        }
    };
    let is_h2 = tokio::select! {
        sniffed = tokio::time::timeout_at(deadline, sniff) => match sniffed {
            Ok(Ok(is_h2)) => is_h2,
            Ok(Err::<_, io::Error>(_)) | Err(_) => return None,
        },
        _ = closing.wait_for(|closing| *closing) => return None,
    };
    if is_h2 {
        refuse_h2(stream).await;
        return None;
    }
    first.truncate(filled);
    let mut io = ClientIo::new(stream, write_timeout);
    io.replay = first;
    Some(io)
}

/// Sends the refusal and closes cleanly (see [`REFUSAL_LINGER`]).
async fn refuse_h2<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    tracing::debug!("refused an HTTP/2 connection: HTTP/2 is served only over TLS, chosen by ALPN");
    let linger = async {
        stream.write_all(H2_REFUSAL).await?;
        stream.shutdown().await?;
        let mut sink = [0; 4096];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN_BYTES {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
}

/// A client's stream (TCP, or TLS over it) as hyper reads and writes it:
/// first the bytes [`open`] read, then the stream; a write that cannot
/// make progress for `write_timeout` fails with `TimedOut`, which ends the
/// connection.
pub(super) struct ClientIo<S> {
    stream: S,
    replay: Vec<u8>,
    replayed: usize,
    write_timeout: Duration,
    /// Started when a write could not proceed; cleared by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

/// A connection whose queued bytes can be dropped when it is closed.
///
/// After the write timeout, what the client left unread can never reach it
/// in time; closed normally, the kernel would keep it (and the close behind
/// it) queued for minutes, holding memory for a client that does not read.
/// So that close resets the connection instead.
pub(super) trait DropUnsent {
    /// Makes the coming close drop the unsent bytes and reset.
    fn drop_unsent_on_close(&self);
}

impl DropUnsent for TcpStream {
    fn drop_unsent_on_close(&self) {
        if let Err(e) = self.set_zero_linger() {
            tracing::debug!(error = %e, "could not set SO_LINGER 0");
        }
    }
}

impl DropUnsent for TlsStream<TcpStream> {
    fn drop_unsent_on_close(&self) {
        self.get_ref().0.drop_unsent_on_close();
    }
}

impl<S> ClientIo<S> {
    /// `stream` with nothing to replay.
    pub(super) fn new(stream: S, write_timeout: Duration) -> Self {
        ClientIo {
            stream,
            replay: Vec::new(),
            replayed: 0,
            write_timeout,
            stalled: None,
        }
    }
}

impl<S: DropUnsent> ClientIo<S> {
    /// After a write returned `Pending`: `Pending` while the deadline has
    /// not passed (the timer wakes the task when it does), else the error.
    fn stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let write_timeout = self.write_timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(write_timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.stream.drop_unsent_on_close();
                Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client did not read its answers within --write-timeout",
                ))
            }
        }
    }

    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Pending => self.stall(cx).map(Err),
            ready @ Poll::Ready(_) => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replayed < this.replay.len() {
            let rest = &this.replay[this.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n;
            if this.replayed == this.replay.len() {
                this.replay = Vec::new();
                this.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + DropUnsent + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, data);
        this.progress(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, data);
        this.progress(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.progress(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_shutdown(cx);
        this.progress(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_settings_frame_then_a_goaway_with_http_1_1_required() {
        let (settings, goaway) = H2_REFUSAL.split_at(9);
        assert_eq!(settings[3], 0x4, "SETTINGS");
        assert_eq!(&settings[..3], &[0, 0, 0], "empty");
        let length = usize::from(goaway[2]);
        assert_eq!(goaway[3], 0x7, "GOAWAY");
        assert_eq!(goaway.len(), 9 + length);
        assert_eq!(&goaway[9..13], &[0, 0, 0, 0], "last stream");
        assert_eq!(&goaway[13..17], &[0, 0, 0, 0xd], "HTTP_1_1_REQUIRED");
        assert_eq!(&goaway[17..], b"HTTP/1.1 only");
    }
}
