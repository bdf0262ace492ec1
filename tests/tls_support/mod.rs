//! Shared by the TLS tests: a test CA that issues server certificates
//! (rcgen), rustls clients (HTTP/1.1 over a blocking rustls stream, HTTP/2
//! through hyper's client), raw HTTP/2 frames for the attacks, and the
//! check that a daemon's stderr holds no secret.
//!
//! A test file uses it with `mod common; mod tls_support;`.

#![allow(dead_code)] // each test file uses part of this

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedProtocolVersion,
};

use crate::common::Response;

/// A certificate authority made for one test.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate issued by a [`Ca`], with its key.
pub struct Issued {
    /// The server's certificate, then the CA's.
    pub chain_pem: String,
    pub key_pem: String,
    /// The server's certificate alone, as a client sees it.
    pub leaf_der: Vec<u8>,
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "webhookd test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A certificate for `hosts`, valid from last year to ten years on.
    pub fn issue(&self, hosts: &[&str]) -> Issued {
        let year = this_year();
        self.issue_with(hosts, |p| {
            p.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
            p.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
        })
    }

    /// A certificate for `hosts` that expired years ago.
    pub fn issue_expired(&self, hosts: &[&str]) -> Issued {
        self.issue_with(hosts, |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    fn issue_with(&self, hosts: &[&str], adjust: impl FnOnce(&mut CertificateParams)) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())
                .unwrap();
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            chain_pem: format!("{}{}", cert.pem(), self.issuer.pem()),
            key_pem: key.serialize_pem(),
            leaf_der: cert.der().to_vec(),
        }
    }
}

/// The current year, near enough for certificate validity.
fn this_year() -> i32 {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    1970 + i32::try_from(seconds / 31_556_952).unwrap()
}

/// Writes `text` to `dir/name` with `mode`; returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// Writes the chain and key owner-only; returns `--tls-cert`, `--tls-key`
/// arguments.
pub fn tls_args(dir: &Path, issued: &Issued) -> Vec<String> {
    let cert = write_file(dir, "cert.pem", &issued.chain_pem, 0o600);
    let key = write_file(dir, "key.pem", &issued.key_pem, 0o600);
    vec![
        "--tls-cert".to_owned(),
        cert.to_str().unwrap().to_owned(),
        "--tls-key".to_owned(),
        key.to_str().unwrap().to_owned(),
    ]
}

/// A client trusting `ca`, speaking `versions` and offering `alpn`.
pub fn client_config(
    ca: &Ca,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let mut config = ClientConfig::builder_with_provider(webhookd::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A clock stopped at one instant, for a client that lives in the past.
#[derive(Debug)]
struct StoppedClock(u64);

impl rustls::time_provider::TimeProvider for StoppedClock {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        Some(rustls::pki_types::UnixTime::since_unix_epoch(
            Duration::from_secs(self.0),
        ))
    }
}

/// An HTTP/1.1 client trusting `ca` whose clock says `unix_seconds`.
pub fn http1_config_at(ca: &Ca, unix_seconds: u64) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let mut config = ClientConfig::builder_with_details(
        webhookd::tls::provider(),
        Arc::new(StoppedClock(unix_seconds)),
    )
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// TLS 1.2 and 1.3, HTTP/1.1 only.
pub fn http1_config(ca: &Ca) -> Arc<ClientConfig> {
    client_config(ca, rustls::ALL_VERSIONS, &[b"http/1.1"])
}

/// TLS 1.2 and 1.3, HTTP/2 only.
pub fn h2_config(ca: &Ca) -> Arc<ClientConfig> {
    client_config(ca, rustls::ALL_VERSIONS, &[b"h2"])
}

/// An HTTP/1.1 connection over TLS (blocking).
pub struct TlsConnection {
    stream: StreamOwned<ClientConnection, TcpStream>,
}

impl TlsConnection {
    /// Connects and completes the handshake for server name `host`.
    pub fn connect(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
        host: &str,
    ) -> Result<TlsConnection, std::io::Error> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(30)))?;
        let name = ServerName::try_from(host.to_owned()).unwrap();
        let connection = ClientConnection::new(config, name).map_err(std::io::Error::other)?;
        let mut stream = StreamOwned::new(connection, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsConnection { stream })
    }

    pub fn version(&self) -> rustls::ProtocolVersion {
        self.stream.conn.protocol_version().unwrap()
    }

    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.stream.conn.alpn_protocol().map(<[u8]>::to_vec)
    }

    /// The server's certificate as presented in the handshake.
    pub fn server_certificate(&self) -> Vec<u8> {
        self.stream.conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// Sends `request` as is and reads one response.
    pub fn exchange(&mut self, request: &str) -> std::io::Result<Response> {
        self.stream.write_all(request.as_bytes())?;
        self.stream.flush()?;
        read_response(&mut self.stream)
    }

    pub fn get(&mut self, path: &str, headers: &str) -> Response {
        self.exchange(&format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n"
        ))
        .unwrap()
    }

    pub fn post(&mut self, body: &str) -> Response {
        self.exchange(&format!(
            "POST /v1/webhooks/transactions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
        .unwrap()
    }

    /// True once the server has closed the connection.
    pub fn closed_by_server(&mut self) -> bool {
        self.stream
            .sock
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        let mut byte = [0u8; 1];
        let closed = match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        self.stream
            .sock
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        closed
    }
}

/// Reads one HTTP/1.1 response with a `Content-Length` (webhookd always
/// sends one).
pub fn read_response(stream: &mut impl Read) -> std::io::Result<Response> {
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    if reader.read_line(&mut status_line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    // The reader holds nothing beyond this response: one request at a time.
    assert!(reader.buffer().is_empty(), "bytes after the response");
    Ok(Response {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    })
}

/// A runtime for the async clients (HTTP/2, raw frames).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Connects over TLS with tokio-rustls.
pub async fn connect_async(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    host: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(host.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// An HTTP/2 client connection (hyper) over TLS; its driver runs on the
/// runtime given.
pub struct H2Client {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    pub driver: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

/// A response as an HTTP/2 test sees it.
#[derive(Debug)]
pub struct H2Response {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: String,
    pub version: hyper::Version,
}

impl H2Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

impl H2Client {
    pub async fn connect(addr: SocketAddr, ca: &Ca) -> H2Client {
        let stream = connect_async(addr, h2_config(ca), "localhost")
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        H2Client {
            sender,
            driver: tokio::spawn(connection),
        }
    }

    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> hyper::Result<H2Response> {
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(H2Response {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
            version: parts.version,
        })
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> H2Response {
        let mut request = Request::get(format!("https://localhost{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Full::default()).unwrap())
            .await
            .unwrap()
    }

    pub async fn post(&mut self, body: &str) -> H2Response {
        let request = Request::post("https://localhost/v1/webhooks/transactions")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        self.send(request).await.unwrap()
    }
}

// --- raw HTTP/2 frames ----------------------------------------------------

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap();
    let mut out = length.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK: a literal field without indexing whose name is static table
/// entry `index`, with a short plain value.
fn literal(out: &mut Vec<u8>, index: u8, value: &str) {
    if index < 15 {
        out.push(index);
    } else {
        out.extend_from_slice(&[0x0f, index - 15]);
    }
    out.push(u8::try_from(value.len()).expect("short values only"));
    out.extend_from_slice(value.as_bytes());
}

/// The header block of `GET /` (static table only).
pub fn get_health_block() -> Vec<u8> {
    // :method GET, :scheme https, :path /
    let mut out = vec![0x82, 0x87, 0x84];
    literal(&mut out, 1, "localhost");
    out
}

/// The header block of a webhook POST announcing `length` body bytes.
pub fn post_webhook_block(length: usize) -> Vec<u8> {
    // :method POST, :scheme https
    let mut out = vec![0x83, 0x87];
    literal(&mut out, 4, "/v1/webhooks/transactions");
    literal(&mut out, 1, "localhost");
    literal(&mut out, 31, "application/json");
    literal(&mut out, 28, &length.to_string());
    out
}

/// A frame as read back: type, flags, stream, payload.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a `RST_STREAM` or `GOAWAY`.
    pub fn error_code(&self) -> u32 {
        let at = if self.kind == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// Reads one frame; `None` at the end of the stream.
pub async fn read_frame(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<Option<Frame>> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    match reader.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; length];
    reader.read_exact(&mut payload).await?;
    Ok(Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
        payload,
    }))
}

// --- secrets in logs --------------------------------------------------------

/// Pieces of a PEM key that would show if any of it were logged: every
/// base64 line, every 24 characters of the base64 text, the first bytes of
/// the DER in hex and as a Rust byte list.
pub fn key_fragments(key_pem: &str) -> Vec<String> {
    use base64::Engine as _;
    let body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let mut fragments: Vec<String> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_owned)
        .collect();
    let chars: Vec<char> = body.chars().collect();
    fragments.extend(
        chars
            .chunks(24)
            .filter(|c| c.len() == 24)
            .map(|c| c.iter().collect()),
    );
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .unwrap();
    fragments.push(hex::encode(&der[..24]));
    fragments.push(format!("{:?}", &der[..12]).trim_end_matches(']').to_owned());
    fragments
}

/// Fails naming the secret if `text` holds any of `secrets`.
#[track_caller]
pub fn assert_holds_no_secret(what: &str, text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{what} holds secret material {secret:?}:\n{text}"
        );
    }
}
