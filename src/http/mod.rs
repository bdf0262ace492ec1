//! The HTTP API on hyper 1.x: routing, request limits, JSON in and out, and
//! the API's error shape.
//!
//! This module never writes the database itself: acceptance goes to the
//! store writer and waits for its durable commit; reads use redb read
//! transactions on tokio's blocking pool, so no redb call runs on an async
//! worker thread.
//!
//! Everything a client can hold is bounded: connections
//! (`--max-connections`); the time to send a request head
//! (`--header-read-timeout`) and body (`--body-read-timeout`); the time it
//! may leave its answers unread (`--write-timeout`); the head's size
//! ([`MAX_HEAD_BYTES`]); the body's size (`--max-body-bytes`) and the
//! pieces it comes in ([`MAX_BODY_FRAMES`]); the log lines its mistakes
//! write ([`MAX_WARNINGS_PER_SECOND`]); and the commits its health checks
//! cost ([`HEALTH_PROBE_INTERVAL`]).
//!
//! - `connection`: the TLS handshake and its deadline; HTTP/2 without TLS
//!   refused cleanly; the write deadline;
//! - `http2`: HTTP/2 over TLS and its bounds (streams, resets, windows, idle);
//! - `access`: public and admin routes, the admin token check;
//! - `routes`: routing, logging, the webhook, transaction and metrics handlers;
//! - `body`: reading a body within its bounds;
//! - `mapped`: the webhook route with `--payload-map`, and IGNORED answers;
//! - `original`: `?include=payload` on a transaction;
//! - `health`: `GET /` and its cached storage probe;
//! - `listing`: `GET /v1/transactions`, its query and cursors;
//! - `openapi`: `GET /openapi.json`, the API's `OpenAPI` 3.1 document;
//! - `delivery`: attempts, redelivery and bulk redeliveries;
//! - `errors`: the error answers;
//! - `untrusted`: escaping what a client sent before it is echoed or logged;
//! - `warnings`: the rate limit on per-request warnings.

pub mod access;
mod body;
mod connection;
mod delivery;
mod errors;
mod health;
pub mod http2;
mod listing;
mod mapped;
mod openapi;
mod original;
mod routes;
mod untrusted;
mod warnings;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

pub use body::{MAX_BODY_FRAMES, MIN_MEAN_FRAME_BYTES, max_frames};
pub use errors::{OVERLOADED, SHUTTING_DOWN, STORAGE_FAILING, rejection_answer};
pub use health::{HEALTH_PROBE_INTERVAL, HEALTH_PROBE_TIMEOUT};
pub use listing::DEFAULT_PAGE;
pub use mapped::ignored_answer;
pub use openapi::OPENAPI_DOCUMENT;
pub use untrusted::MAX_ECHOED_CHARS;
pub use warnings::MAX_WARNINGS_PER_SECOND;

use crate::admin_token::TokenCell;
use crate::delivery::DeliveryStatus;
use crate::delivery::redeliveries::RedeliveryWaker;
use crate::metrics::Metrics;
use crate::payload_map::PayloadMap;
use crate::signature::Verifier;
use crate::store::Store;
use crate::store::writer::WriterHandle;

/// Bounds on what one client can hold: set from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body (`--max-body-bytes`).
    pub max_body_bytes: u64,
    /// Most connections served at once; further clients wait in the
    /// listen backlog (`--max-connections`).
    pub max_connections: usize,
    /// A request head (also the next one on an idle keep-alive
    /// connection) must arrive within this time (`--header-read-timeout`).
    pub header_read_timeout: Duration,
    /// A whole request body must arrive within this time (`--body-read-timeout`).
    pub body_read_timeout: Duration,
    /// A connection whose answers cannot be written for this long (its
    /// client does not read them) is closed (`--write-timeout`).
    pub write_timeout: Duration,
}

/// Largest request head (request line and headers) hyper buffers.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Which routes a socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    /// Every route (`--listen` without `--admin-listen`).
    Both,
    /// The public routes only, `GET /` and `POST /v1/webhooks/transactions`
    /// (`--listen` with `--admin-listen`); anything else is 404.
    Public,
    /// Every route but the webhook (`--admin-listen`).
    Admin,
}

/// What the delivery routes and `GET /` need with `--deliver-to`.
#[derive(Clone)]
pub struct DeliveryApi {
    /// Whether the breaker has paused delivery.
    pub status: DeliveryStatus,
    /// Wakes the bulk redelivery worker.
    pub redeliveries: RedeliveryWaker,
}

/// What every request handler needs.
pub struct AppState {
    store: Store,
    writer: WriterHandle,
    limits: Limits,
    verifier: Option<Verifier>,
    access_log: bool,
    metrics: Arc<Metrics>,
    health: health::HealthCheck,
    warnings: warnings::Warnings,
    payload_map: Option<PayloadMap>,
    admin_tokens: Option<Arc<TokenCell>>,
    delivery: Option<DeliveryApi>,
}

impl AppState {
    /// Bundles the store (for reads), the writer (for writes), the limits,
    /// the signature verifier (if one is configured) and the metrics.
    #[must_use]
    pub fn new(
        store: Store,
        writer: WriterHandle,
        limits: Limits,
        verifier: Option<Verifier>,
        access_log: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        AppState {
            store,
            writer,
            limits,
            verifier,
            access_log,
            metrics,
            health: health::HealthCheck::new(),
            warnings: warnings::Warnings::new(),
            payload_map: None,
            admin_tokens: None,
            delivery: None,
        }
    }

    /// With `--deliver-to`: the delivery routes work, `GET /` says whether
    /// delivery is paused, and transactions show their delivery fields.
    #[must_use]
    pub fn with_delivery(mut self, delivery: DeliveryApi) -> Self {
        self.delivery = Some(delivery);
        self
    }

    /// Maps webhook bodies with `map` (`--payload-map`) instead of reading
    /// webhookd's own shape, and keeps each body with its transaction.
    #[must_use]
    pub fn with_payload_map(mut self, map: Option<PayloadMap>) -> Self {
        self.payload_map = map;
        self
    }

    /// Makes the admin routes need one of the tokens in `tokens`
    /// (`--admin-token-file`); a reload replaces them in the cell.
    #[must_use]
    pub fn with_admin_tokens(mut self, tokens: Arc<TokenCell>) -> Self {
        self.admin_tokens = Some(tokens);
        self
    }
}

/// Serves HTTP on an already bound listener until `shutdown` completes,
/// then stops accepting, lets in-flight requests finish for up to `grace`,
/// and closes what is left. With `tls`, every connection is TLS first
/// (HTTP/2 where ALPN chose it, else HTTP/1.1).
///
/// Every connection task is owned by a `JoinSet`, and every HTTP/2 stream
/// task by the server's `http2::StreamTasks`; when this returns, all of them have
/// ended, and with them their handles to the writer.
pub async fn serve(
    listener: TcpListener,
    face: Face,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let limits = state.limits;
    let connection_slots = Arc::new(Semaphore::new(limits.max_connections));
    let stream_tasks = http2::StreamTasks::default();
    let protocols = Arc::new(Protocols::new(&state, face, tls, stream_tasks.clone()));
    let graceful = GracefulShutdown::new();
    // Tells connections not yet handed to hyper that the server is closing.
    let (closing, closing_watch) = watch::channel(false);
    let mut connections = JoinSet::new();
    // Reports suppressed warnings once a window is over, also after a flood stops.
    let warning_reports = tokio::spawn({
        let state = Arc::clone(&state);
        async move {
            let mut ticks = tokio::time::interval(warnings::WINDOW);
            loop {
                ticks.tick().await;
                state.warnings.flush(false);
            }
        }
    });
    tokio::pin!(shutdown);

    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = Arc::clone(&connection_slots).acquire_owned() => {
                slot.expect("the connection semaphore is never closed")
            }
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Taken here, so a graceful shutdown also waits for connections
        // still being opened.
        let watcher = graceful.watcher();
        let closing = closing_watch.clone();
        let protocols = Arc::clone(&protocols);
        connections.spawn(async move {
            // Held until the connection ends, on every path.
            let _slot = slot;
            protocols.serve(stream, peer, watcher, closing).await;
        });
        while connections.try_join_next().is_some() {}
    }

    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "shutting down: stopped accepting, draining in-flight requests"
    );
    let _ = closing.send(true);
    // HTTP/1.1 connections end through `graceful`, HTTP/2 ones on `closing`.
    let drained = async {
        graceful.shutdown().await;
        while connections.join_next().await.is_some() {}
    };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            ?grace,
            "shutdown grace period over; closing remaining connections"
        );
    }
    connections.shutdown().await;
    stream_tasks.shutdown().await;
    warning_reports.abort();
    let _ = warning_reports.await;
    state.warnings.flush(true);
}

/// Answers the requests of one socket: its routes, on the shared state.
#[derive(Clone)]
struct Handler {
    state: Arc<AppState>,
    face: Face,
}

impl Handler {
    async fn handle(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
        routes::handle(&self.state, self.face, request).await
    }
}

/// What every connection of one server shares: the TLS acceptor, if any,
/// and the HTTP/1.1 and HTTP/2 settings.
struct Protocols {
    state: Arc<AppState>,
    /// The routes this socket serves.
    face: Face,
    tls: Option<TlsAcceptor>,
    http1: http1::Builder,
    http2: hyper::server::conn::http2::Builder<http2::StreamTasks>,
    /// HTTP/2 requests in progress across all connections: one per
    /// connection slot, as HTTP/1.1 has.
    request_slots: Arc<Semaphore>,
}

impl Protocols {
    fn new(
        state: &Arc<AppState>,
        face: Face,
        tls: Option<Arc<rustls::ServerConfig>>,
        stream_tasks: http2::StreamTasks,
    ) -> Self {
        let limits = state.limits;
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(MAX_HEAD_BYTES);
        Protocols {
            state: Arc::clone(state),
            face,
            tls: tls.map(TlsAcceptor::from),
            http1,
            http2: http2::builder(stream_tasks),
            request_slots: Arc::new(Semaphore::new(limits.max_connections)),
        }
    }

    fn handler(&self) -> Handler {
        Handler {
            state: Arc::clone(&self.state),
            face: self.face,
        }
    }

    /// Serves one accepted connection: TLS first if configured, then
    /// HTTP/2 where ALPN chose it, else HTTP/1.1.
    async fn serve(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        watcher: Watcher,
        closing: watch::Receiver<bool>,
    ) {
        let limits = self.state.limits;
        // The TLS handshake and the first bytes of a request count against it.
        let deadline = tokio::time::Instant::now() + limits.header_read_timeout;
        let Some(acceptor) = &self.tls else {
            if let Some(io) =
                connection::open(stream, deadline, limits.write_timeout, closing).await
            {
                self.serve_http1(TokioIo::new(io), watcher, peer).await;
            }
            return;
        };
        let Some(stream) = connection::handshake(stream, acceptor, deadline, closing.clone()).await
        else {
            return;
        };
        if connection::negotiated_h2(&stream) {
            let io = connection::ClientIo::new(stream, limits.write_timeout);
            http2::serve(
                io,
                &self.http2,
                self.handler(),
                Arc::clone(&self.request_slots),
                deadline,
                limits.header_read_timeout,
                closing,
            )
            .await;
        } else if let Some(io) =
            connection::open(stream, deadline, limits.write_timeout, closing).await
        {
            self.serve_http1(TokioIo::new(io), watcher, peer).await;
        }
    }

    /// Serves one HTTP/1.1 connection until it ends or, once the server
    /// shuts down, its request in progress is answered.
    async fn serve_http1<I>(&self, io: I, watcher: Watcher, peer: SocketAddr)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let handler = self.handler();
        let service = service_fn(move |request| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.handle(request).await) }
        });
        let connection = watcher.watch(self.http1.serve_connection(io, service));
        if let Err(e) = connection.await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// Address the server is bound to, as logged in the ready line.
#[must_use]
pub fn ready_line(addr: SocketAddr) -> String {
    format!("listening on {addr}")
}

/// The admin socket's ready line, logged after [`ready_line`].
#[must_use]
pub fn admin_ready_line(addr: SocketAddr) -> String {
    format!("admin listening on {addr}")
}
