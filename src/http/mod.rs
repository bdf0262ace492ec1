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
//! - `connection`: HTTP/2 refused cleanly; the write deadline;
//! - `routes`: routing, logging, the webhook, transaction and metrics handlers;
//! - `body`: reading a body within its bounds;
//! - `health`: `GET /` and its cached storage probe;
//! - `listing`: `GET /v1/transactions`, its query and cursors;
//! - `delivery`: attempts, redelivery and bulk redeliveries;
//! - `errors`: the error answers;
//! - `untrusted`: escaping what a client sent before it is echoed or logged;
//! - `warnings`: the rate limit on per-request warnings.

mod body;
mod connection;
mod delivery;
mod errors;
mod health;
mod listing;
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
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

pub use body::{MAX_BODY_FRAMES, MIN_MEAN_FRAME_BYTES, max_frames};
pub use errors::{OVERLOADED, SHUTTING_DOWN, STORAGE_FAILING};
pub use health::{HEALTH_PROBE_INTERVAL, HEALTH_PROBE_TIMEOUT};
pub use listing::DEFAULT_PAGE;
pub use untrusted::MAX_ECHOED_CHARS;
pub use warnings::MAX_WARNINGS_PER_SECOND;

use crate::delivery::DeliveryStatus;
use crate::delivery::redeliveries::RedeliveryWaker;
use crate::metrics::Metrics;
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
    /// `GET /` and `POST /v1/webhooks/transactions` only (`--listen` with
    /// `--admin-listen`); anything else is 404.
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
}

/// Serves HTTP on an already bound listener until `shutdown` completes,
/// then stops accepting, lets in-flight requests finish for up to `grace`,
/// and closes what is left.
///
/// Every connection task is owned by a `JoinSet`; when this returns, all of
/// them have ended, and with them their handles to the writer.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    serve_face(listener, Face::Both, state, shutdown, grace).await;
}

/// [`serve`] with the routes of `face` only.
pub async fn serve_face(
    listener: TcpListener,
    face: Face,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let limits = state.limits;
    let connection_slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // Tells connections not yet handed to hyper that the server is closing.
    let (closing, closing_watch) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let builder = Arc::new(builder);
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
        let state = Arc::clone(&state);
        let builder = Arc::clone(&builder);
        connections.spawn(async move {
            // Held until the connection ends, on every path.
            let _slot = slot;
            let Some(io) = connection::open(
                stream,
                limits.header_read_timeout,
                limits.write_timeout,
                closing,
            )
            .await
            else {
                return;
            };
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(routes::handle(&state, face, request).await) }
            });
            let connection = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
        while connections.try_join_next().is_some() {}
    }

    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "shutting down: stopped accepting, draining in-flight requests"
    );
    let _ = closing.send(true);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "shutdown grace period over; closing remaining connections"
        );
    }
    connections.shutdown().await;
    warning_reports.abort();
    let _ = warning_reports.await;
    state.warnings.flush(true);
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
