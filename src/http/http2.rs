//! HTTP/2, served over TLS where ALPN chose it, with the same bounds as
//! HTTP/1.1 and those HTTP/2 adds.
//!
//! - A request's head: [`super::MAX_HEAD_BYTES`] of header list
//!   (`SETTINGS_MAX_HEADER_LIST_SIZE`; a larger one gets 431 on its stream).
//! - Its body: `--max-body-bytes`, its pieces and `--body-read-timeout`, as
//!   for HTTP/1.1 (the same reader); unread body data held per connection:
//!   [`WINDOW_BYTES`] (the flow-control windows).
//! - Streams: [`MAX_CONCURRENT_STREAMS`] per connection (more are refused
//!   with `REFUSED_STREAM`), and across all connections at most as many
//!   requests at once as `--max-connections` (more wait for a turn), so
//!   HTTP/2 cannot multiply the bodies in memory.
//! - Resets: a client that resets streams before they are served (the
//!   "rapid reset" attack), or makes the server reset them, gets a `GOAWAY`
//!   after [`MAX_PENDING_RESETS`] or [`MAX_LOCAL_ERROR_RESETS`].
//! - Time: a connection must bring its first request by its head deadline
//!   and, like an idle HTTP/1.1 keep-alive connection, is closed once it
//!   has had no request in progress for `--header-read-timeout` (a
//!   `GOAWAY`, then the close if the client does not end it first).
//!
//! hyper runs each stream as a task on the executor it is given:
//! `StreamTasks`, whose tasks the server owns and ends at shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Handler, MAX_HEAD_BYTES};

/// Streams one connection may have open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 16;

/// Streams a client may reset before the server has taken them up; one
/// more and the connection gets `GOAWAY` (`ENHANCE_YOUR_CALM`).
pub const MAX_PENDING_RESETS: usize = 20;

/// Streams the server may reset because of the client's errors before it
/// sends `GOAWAY`.
pub const MAX_LOCAL_ERROR_RESETS: usize = 256;

/// Flow-control window of each stream and of the connection: the most
/// body data a client can send that the server has not read yet (the
/// protocol's default).
pub const WINDOW_BYTES: u32 = 65_535;

/// The stream tasks of every HTTP/2 connection, owned by the server.
#[derive(Clone, Default)]
pub(super) struct StreamTasks {
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl<F> hyper::rt::Executor<F> for StreamTasks
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, stream: F) {
        let mut tasks = self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Finished tasks are reaped here, so the set holds only live streams.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            stream.await;
        });
    }
}

impl StreamTasks {
    /// Ends the streams still running (their connections are gone by then).
    pub(super) async fn shutdown(&self) {
        let mut tasks = std::mem::take(
            &mut *self
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        tasks.shutdown().await;
    }
}

/// The connection settings for every HTTP/2 connection.
pub(super) fn builder(tasks: StreamTasks) -> http2::Builder<StreamTasks> {
    let mut builder = http2::Builder::new(tasks);
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        .initial_stream_window_size(WINDOW_BYTES)
        .initial_connection_window_size(WINDOW_BYTES);
    builder
}

/// Counts a connection's requests in progress while it lives.
struct InProgress(watch::Sender<usize>);

impl InProgress {
    fn start(count: &watch::Sender<usize>) -> Self {
        count.send_modify(|n| *n += 1);
        InProgress(count.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Completes once no request has been in progress for `timeout`; before
/// the first request, at `first_deadline`.
async fn idle(mut count: watch::Receiver<usize>, first_deadline: Instant, timeout: Duration) {
    let mut deadline = first_deadline;
    loop {
        if *count.borrow_and_update() > 0 {
            if count.changed().await.is_err() {
                return std::future::pending().await;
            }
            deadline = Instant::now() + timeout;
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return,
            changed = count.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
                deadline = Instant::now() + timeout;
            }
        }
    }
}

/// Serves one HTTP/2 connection until the client ends it, it is idle for
/// `idle_timeout` (its first request due by `deadline`), or the server
/// shuts down (then [`super::serve`]'s grace period bounds it).
pub(super) async fn serve<I>(
    io: I,
    builder: &http2::Builder<StreamTasks>,
    handler: Handler,
    request_slots: Arc<Semaphore>,
    deadline: Instant,
    idle_timeout: Duration,
    mut closing: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (in_progress, count) = watch::channel(0usize);
    let service = service_fn(move |request| {
        let started = InProgress::start(&in_progress);
        let handler = handler.clone();
        let request_slots = Arc::clone(&request_slots);
        async move {
            let _started = started;
            let _slot = request_slots
                .acquire_owned()
                .await
                .expect("the request semaphore is never closed");
            Ok::<_, Infallible>(handler.handle(request).await)
        }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let idled = tokio::select! {
        ended = connection.as_mut() => {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
            }
            return;
        }
        () = idle(count, deadline, idle_timeout) => true,
        _ = closing.wait_for(|closing| *closing) => false,
    };
    connection.as_mut().graceful_shutdown();
    if idled {
        tracing::debug!("closing an idle HTTP/2 connection");
        // The client has another idle period to take the GOAWAY.
        let _ = tokio::time::timeout(idle_timeout, connection).await;
    } else {
        let _ = connection.await;
    }
}
