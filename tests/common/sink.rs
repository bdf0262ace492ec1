//! A delivery destination for tests and benches: a hyper server on port 0
//! (plain or TLS, optionally requiring a client certificate) that records
//! every request it receives (headers, body, when) and answers as the test
//! says: a status with headers and a body, hang, or close the connection.

#![allow(dead_code)] // each test uses part of this

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// How a sink answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This status, these headers, this body.
    Status {
        code: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// This status with an empty body, after a delay.
    Slow { code: u16, delay: Duration },
    /// Never answer (for [`HANG_FOR`], far past any test's timeout).
    Hang,
    /// Close the connection without an answer.
    Close,
}

impl Answer {
    /// A status with an empty body.
    pub fn status(code: u16) -> Answer {
        Answer::Status {
            code,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// `code` after `delay` (other requests are served meanwhile).
    pub fn slow(code: u16, delay: Duration) -> Answer {
        Answer::Slow { code, delay }
    }

    /// A status with one header.
    pub fn with_header(code: u16, name: &str, value: &str) -> Answer {
        Answer::Status {
            code,
            headers: vec![(name.to_owned(), value.to_owned())],
            body: String::new(),
        }
    }

    /// A status with a body.
    pub fn with_body(code: u16, body: &str) -> Answer {
        Answer::Status {
            code,
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }
}

/// How long a hanging answer hangs.
pub const HANG_FOR: Duration = Duration::from_secs(300);

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When it arrived (its head and body read).
    pub at: Instant,
    /// The same, in milliseconds since the epoch.
    pub at_ms: u64,
    /// When the answer went out (or the connection was closed); `None`
    /// while hanging.
    pub answered_at: Option<Instant>,
    pub method: String,
    pub path: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status answered; `None` for a hang or a close.
    pub status: Option<u16>,
    /// Whether the client presented a certificate (TLS only).
    pub client_certificate: bool,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// The `webhook-id` header.
    pub fn id(&self) -> &str {
        self.header("webhook-id").expect("webhook-id")
    }

    /// The `Webhook-Attempt` header as a number.
    pub fn attempt(&self) -> u32 {
        self.header("webhook-attempt")
            .expect("webhook-attempt")
            .parse()
            .expect("a number")
    }
}

type Behaviour = Box<dyn FnMut(&Seen) -> Answer + Send>;

/// A running sink; stops when dropped.
pub struct Sink {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests received, kept or not.
    received: Arc<AtomicUsize>,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
    behaviour: Arc<Mutex<Behaviour>>,
    tls: bool,
    runtime: Option<tokio::runtime::Runtime>,
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

impl Sink {
    /// A plain HTTP sink answering as `behaviour` says.
    pub fn start(behaviour: impl FnMut(&Seen) -> Answer + Send + 'static) -> Sink {
        Sink::spawn(Box::new(behaviour), None, true)
    }

    /// A sink that answers every request with `code` and only counts
    /// them, keeping none (for load: memory stays flat).
    pub fn counting(code: u16) -> Sink {
        Sink::spawn(Box::new(move |_| Answer::status(code)), None, false)
    }

    /// A sink that answers every request with `code`.
    pub fn answering(code: u16) -> Sink {
        Sink::start(move |_| Answer::status(code))
    }

    /// An HTTPS sink with this server configuration (which may require a
    /// client certificate).
    pub fn start_tls(
        behaviour: impl FnMut(&Seen) -> Answer + Send + 'static,
        config: Arc<rustls::ServerConfig>,
    ) -> Sink {
        Sink::spawn(Box::new(behaviour), Some(config), true)
    }

    fn spawn(behaviour: Behaviour, tls: Option<Arc<rustls::ServerConfig>>, keep: bool) -> Sink {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("sink")
            .build()
            .expect("sink runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the sink");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let received = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let behaviour = Arc::new(Mutex::new(behaviour));
        let is_tls = tls.is_some();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        {
            let seen = Arc::clone(&seen);
            let received = Arc::clone(&received);
            let connections = Arc::clone(&connections);
            let behaviour = Arc::clone(&behaviour);
            runtime.spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    connections.fetch_add(1, Ordering::SeqCst);
                    let keeper = Keeper {
                        seen: keep.then(|| Arc::clone(&seen)),
                        received: Arc::clone(&received),
                    };
                    let behaviour = Arc::clone(&behaviour);
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        match acceptor {
                            None => serve(TokioIo::new(stream), false, keeper, behaviour).await,
                            Some(acceptor) => {
                                let Ok(tls) = acceptor.accept(stream).await else {
                                    return;
                                };
                                let client_certificate =
                                    tls.get_ref().1.peer_certificates().is_some();
                                serve(TokioIo::new(tls), client_certificate, keeper, behaviour)
                                    .await;
                            }
                        }
                    });
                }
            });
        }
        Sink {
            addr,
            seen,
            received,
            connections,
            behaviour,
            tls: is_tls,
            runtime: Some(runtime),
        }
    }

    /// The URL webhookd is told to deliver to.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://localhost:{}/hook", self.addr.port())
    }

    /// Answers from now on as `behaviour` says.
    pub fn set(&self, behaviour: impl FnMut(&Seen) -> Answer + Send + 'static) {
        *self.behaviour.lock().unwrap() = Box::new(behaviour);
    }

    /// Every request received so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// How many connections were opened to it so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The requests seen per `webhook-id`, in arrival order.
    pub fn by_id(&self) -> HashMap<String, Vec<Seen>> {
        let mut by_id: HashMap<String, Vec<Seen>> = HashMap::new();
        for seen in self.seen() {
            by_id.entry(seen.id().to_owned()).or_default().push(seen);
        }
        by_id
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Where a connection files what it receives.
#[derive(Clone)]
struct Keeper {
    /// `None` for a counting sink.
    seen: Option<Arc<Mutex<Vec<Seen>>>>,
    received: Arc<AtomicUsize>,
}

async fn serve<I>(
    io: TokioIo<I>,
    client_certificate: bool,
    keeper: Keeper,
    behaviour: Arc<Mutex<Behaviour>>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let keeper = keeper.clone();
        let behaviour = Arc::clone(&behaviour);
        async move {
            let (parts, body) = request.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .unwrap_or_default();
            let mut request = Seen {
                at: Instant::now(),
                at_ms: now_ms(),
                answered_at: None,
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_ascii_lowercase(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body,
                status: None,
                client_certificate,
            };
            let answer = (behaviour.lock().unwrap())(&request);
            if let Answer::Status { code, .. } | Answer::Slow { code, .. } = &answer {
                request.status = Some(*code);
            }
            if let Answer::Slow { delay, .. } = &answer {
                // Recorded as answered once the delay is over (the
                // delay is known, the answer goes out right after it).
                request.answered_at = Some(Instant::now() + *delay);
            } else if !matches!(answer, Answer::Hang) {
                request.answered_at = Some(Instant::now());
            }
            if let Some(seen) = &keeper.seen {
                seen.lock().unwrap().push(request);
            }
            keeper.received.fetch_add(1, Ordering::SeqCst);
            match answer {
                Answer::Status {
                    code,
                    headers,
                    body,
                } => {
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                    for (name, value) in headers {
                        response.headers_mut().insert(
                            hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                            hyper::header::HeaderValue::from_str(&value).unwrap(),
                        );
                    }
                    Ok::<_, CloseConnection>(response)
                }
                Answer::Slow { code, delay } => {
                    tokio::time::sleep(delay).await;
                    let mut response = Response::new(Full::new(Bytes::new()));
                    *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                    Ok(response)
                }
                Answer::Hang => {
                    tokio::time::sleep(HANG_FOR).await;
                    Ok(Response::new(Full::new(Bytes::new())))
                }
                Answer::Close => Err(CloseConnection),
            }
        }
    });
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service)
        .await;
}

/// Returned by the service to make hyper drop the connection unanswered.
#[derive(Debug)]
struct CloseConnection;

impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("closed on purpose")
    }
}

impl std::error::Error for CloseConnection {}
