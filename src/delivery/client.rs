//! One delivery attempt over HTTP: hyper-util's pooled client (connections
//! are reused), rustls for `https://`, one overall timeout from connect to
//! the end of the answer, redirects never followed (a 3xx is a failure),
//! and the answer's body read within bounds.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::body::Outgoing;
use super::config::DeliveryConfig;
use crate::clock::now_ms;
use crate::retry::retry_after;
use crate::signature::Signer;
use crate::store::attempts::{MAX_ERROR_CHARS, RESPONSE_EXCERPT_BYTES, shorten};

/// Most bytes of an answer's body read (the first
/// [`RESPONSE_EXCERPT_BYTES`] are kept): reading a short body to its end
/// lets the connection be reused; past this the connection is dropped.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Idle connections kept per destination, at most.
const MAX_IDLE_CONNECTIONS: usize = 256;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    /// When the request started (ms).
    pub started_at_ms: u64,
    /// When the answer (or the failure) came (ms).
    pub finished_at_ms: u64,
    /// How long it took.
    pub duration: Duration,
    /// The answer's status, if one came.
    pub status: Option<u16>,
    /// Why it failed; `None` for a 2xx.
    pub error: Option<String>,
    /// The first bytes of the answer's body, if one came.
    pub excerpt: Option<String>,
    /// The `Retry-After` of a 429 or 503, capped at an hour.
    pub retry_after: Option<Duration>,
}

impl AttemptResult {
    /// A 2xx came.
    #[must_use]
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// The destination answered 410: the transaction is gone for it.
    #[must_use]
    pub fn gone(&self) -> bool {
        self.status == Some(410)
    }

    /// An attempt that failed before its request was sent, for `error`.
    #[must_use]
    pub fn not_sent(error: &str) -> AttemptResult {
        let now = now_ms();
        AttemptResult {
            started_at_ms: now,
            finished_at_ms: now,
            duration: Duration::ZERO,
            status: None,
            error: Some(shorten(error, MAX_ERROR_CHARS)),
            excerpt: None,
            retry_after: None,
        }
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The HTTP client of the dispatcher.
pub struct DeliveryClient {
    client: HttpsClient,
    url: hyper::Uri,
    timeout: Duration,
    signer: Option<Signer>,
    user_agent: HeaderValue,
}

/// The `webhook-id` (and `Idempotency-Key`) of the transaction at
/// `log_key`: fixed for its life, different for every transaction stored.
#[must_use]
pub fn webhook_id(log_key: u64) -> String {
    format!("msg_{log_key:016x}")
}

impl DeliveryClient {
    /// A client for `config`'s destination.
    #[must_use]
    pub fn new(config: &DeliveryConfig) -> DeliveryClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let tls = config.tls.clone().unwrap_or_else(|| {
            // Never used for an http:// URL; the connector wants one.
            std::sync::Arc::new(
                rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                    .with_safe_default_protocol_versions()
                    .expect("the ring provider supports the default versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        });
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS.min(config.concurrency.max(1)))
            .build(connector);
        DeliveryClient {
            client,
            url: config.url.clone(),
            timeout: config.timeout,
            signer: config.signer.clone(),
            user_agent: HeaderValue::from_static(concat!("webhookd/", env!("CARGO_PKG_VERSION"))),
        }
    }

    /// Sends attempt `attempt` of the transaction at `log_key` with
    /// `outgoing` as its body. Never longer than the timeout, whatever the
    /// destination does.
    pub async fn attempt(&self, log_key: u64, attempt: u32, outgoing: &Outgoing) -> AttemptResult {
        let started = Instant::now();
        let started_at_ms = now_ms();
        let outcome =
            tokio::time::timeout(self.timeout, self.exchange(log_key, attempt, outgoing)).await;
        let duration = started.elapsed();
        let finished_at_ms = now_ms().max(started_at_ms);
        let mut result = AttemptResult {
            started_at_ms,
            finished_at_ms,
            duration,
            status: None,
            error: None,
            excerpt: None,
            retry_after: None,
        };
        match outcome {
            Err(_) => {
                result.error = Some(format!(
                    "timed out after {}",
                    humantime::format_duration(self.timeout)
                ));
            }
            Ok(Err(error)) => result.error = Some(shorten(&error, MAX_ERROR_CHARS)),
            Ok(Ok(answer)) => {
                let status = answer.status;
                result.status = Some(status.as_u16());
                result.excerpt = Some(answer.excerpt);
                if !status.is_success() {
                    result.error = Some(match status.canonical_reason() {
                        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
                        None => format!("HTTP {}", status.as_u16()),
                    });
                }
                if matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                ) {
                    result.retry_after = answer
                        .retry_after
                        .and_then(|v| retry_after(&v, SystemTime::now()));
                }
            }
        }
        result
    }

    async fn exchange(
        &self,
        log_key: u64,
        attempt: u32,
        outgoing: &Outgoing,
    ) -> Result<Answer, String> {
        let id = webhook_id(log_key);
        let body = &outgoing.body;
        let timestamp = now_ms() / 1000;
        let mut request = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, outgoing.content_type.clone())
            .header(header::USER_AGENT, self.user_agent.clone())
            .header("webhook-id", &id)
            .header("idempotency-key", &id)
            .header("webhook-timestamp", timestamp)
            .header("webhook-attempt", attempt);
        if let Some(signer) = &self.signer {
            request = request.header("webhook-signature", signer.sign(&id, timestamp, body));
        }
        let request = request
            .body(Full::new(body.clone()))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| describe(&e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = response.into_body();
        let mut kept = Vec::new();
        let mut read = 0_usize;
        while read < MAX_RESPONSE_BYTES {
            match body.frame().await {
                None => break,
                Some(Err(e)) => return Err(format!("reading the answer: {}", describe(&e))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        read += data.len();
                        let room = RESPONSE_EXCERPT_BYTES.saturating_sub(kept.len());
                        kept.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
            }
        }
        Ok(Answer {
            status,
            retry_after,
            excerpt: String::from_utf8_lossy(&kept).into_owned(),
        })
    }
}

struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    excerpt: String,
}

/// An error and its sources, the way an operator reads them.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
