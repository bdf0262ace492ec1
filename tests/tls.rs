//! HTTPS on `--listen` through the real binary, with certificates made in
//! the test: TLS 1.2 and 1.3 clients (rustls and curl) post a webhook and
//! read it back over HTTP/1.1 and HTTP/2; TLS 1.0/1.1 and plain HTTP are
//! refused without harm to other connections; an expired or wrong-host
//! certificate is the client's error while the daemon keeps serving. Each
//! daemon's stderr is checked for key bytes.

mod common;
mod tls_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, payload};
use tls_support::{
    Ca, H2Client, Issued, TlsConnection, assert_holds_no_secret, client_config, http1_config,
    http1_config_at, key_fragments, runtime, tls_args,
};

/// A daemon serving HTTPS with a certificate for `localhost` from `ca`.
fn https_daemon(dir: &std::path::Path, issued: &Issued, extra: &[&str]) -> Daemon {
    let mut args: Vec<String> = tls_args(dir, issued);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start(&dir.join("data"), &args)
}

/// Stops the daemon and checks that nothing it logged holds key bytes.
fn stop_and_check_stderr(daemon: Daemon, issued: &Issued) {
    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(common::DEADLINE);
    assert!(status.success(), "{stderr}");
    assert_holds_no_secret("stderr", &stderr, &key_fragments(&issued.key_pem));
}

#[test]
fn tls_1_2_and_1_3_clients_post_and_read_back_over_http_1_1_and_http_2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let issued = ca.issue(&["localhost"]);
    let daemon = https_daemon(dir.path(), &issued, &[]);
    assert!(
        daemon.stderr_text().contains("tls=\"on\"") || daemon.stderr_text().contains("tls=on"),
        "the ready line says TLS is on: {}",
        daemon.stderr_text()
    );
    let versions = [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ];
    for (version, expected) in versions {
        // HTTP/1.1, two requests on one kept-alive connection.
        let config = client_config(&ca, &[version], &[b"http/1.1"]);
        let mut connection = TlsConnection::connect(daemon.addr, config, "localhost").unwrap();
        assert_eq!(connection.version(), expected);
        assert_eq!(connection.alpn().as_deref(), Some(&b"http/1.1"[..]));
        let id = format!("txn_h1_{expected:?}");
        let posted = connection.post(&payload(&id, "12.5"));
        assert_eq!(posted.status, 202, "{}", posted.body);
        assert_eq!(posted.json()["duplicate"], false);
        let read = connection.get(&common::transaction_path(&id), "");
        assert_eq!(read.status, 200, "{}", read.body);
        assert_eq!(read.json()["transaction_id"], id.as_str());
        assert_eq!(read.json()["amount"], serde_json::json!(12.5));

        // HTTP/2 through hyper's client.
        let runtime = runtime();
        runtime.block_on(async {
            let stream = tls_support::connect_async(
                daemon.addr,
                client_config(&ca, &[version], &[b"h2"]),
                "localhost",
            )
            .await
            .unwrap();
            assert_eq!(stream.get_ref().1.protocol_version(), Some(expected));
            drop(stream);
            let mut client = H2Client::connect(daemon.addr, &ca).await;
            let id = format!("txn_h2_{expected:?}");
            let posted = client.post(&payload(&id, "7")).await;
            assert_eq!(posted.version, hyper::Version::HTTP_2);
            assert_eq!(posted.status, 202, "{}", posted.body);
            let read = client.get(&common::transaction_path(&id), &[]).await;
            assert_eq!(read.status, 200, "{}", read.body);
            assert_eq!(read.json()["transaction_id"], id.as_str());
            let again = client.post(&payload(&id, "7")).await;
            assert_eq!(again.json()["duplicate"], true);
        });
    }
    stop_and_check_stderr(daemon, &issued);
}

/// Runs curl against the daemon; returns (exit code, stdout, stderr).
fn curl(addr: SocketAddr, ca_file: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let port = addr.port();
    let output = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "20"])
        .arg("--cacert")
        .arg(ca_file)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(args)
        .output()
        .expect("run curl");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
#[cfg_attr(
    webhookd_no_curl,
    ignore = "needs curl (apt-get install curl); never ignored under CI=true"
)]
fn curl_speaks_https_with_tls_1_2_and_1_3_over_http_1_1_and_http_2() {
    common::require(common::requirements::Need::Curl);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let issued = ca.issue(&["localhost"]);
    let ca_file = tls_support::write_file(
        dir.path(),
        "ca.pem",
        &issued.chain_pem[issued.chain_pem.rfind("-----BEGIN").unwrap()..],
        0o644,
    );
    let daemon = https_daemon(dir.path(), &issued, &[]);
    let port = daemon.addr.port();
    let cases = [
        (
            ["--tlsv1.2", "--tls-max", "1.2", "--http1.1"],
            "TLSv1.2",
            "1.1",
        ),
        (["--tlsv1.2", "--tls-max", "1.2", "--http2"], "TLSv1.2", "2"),
        (
            ["--tlsv1.3", "--tls-max", "1.3", "--http1.1"],
            "TLSv1.3",
            "1.1",
        ),
        (["--tlsv1.3", "--tls-max", "1.3", "--http2"], "TLSv1.3", "2"),
    ];
    for (n, (flags, tls, http)) in cases.into_iter().enumerate() {
        let id = format!("txn_curl_{n}");
        let mut args: Vec<&str> = flags.to_vec();
        let body = payload(&id, "3.25");
        let url = format!("https://localhost:{port}/v1/webhooks/transactions");
        args.extend([
            "-w",
            "\n%{http_code} %{http_version}",
            "-H",
            "Content-Type: application/json",
            "--data",
            &body,
            &url,
        ]);
        let (code, out, err) = curl(daemon.addr, &ca_file, &args);
        assert_eq!(code, 0, "{flags:?}: {err}");
        assert!(
            out.ends_with(&format!("\n202 {http}")),
            "{flags:?}: {out}\n{err}"
        );
        assert!(
            err.contains(&format!("SSL connection using {tls}")),
            "{err}"
        );
        let url = format!("https://localhost:{port}{}", common::transaction_path(&id));
        let mut args: Vec<&str> = flags.to_vec();
        args.push(&url);
        let (code, out, err) = curl(daemon.addr, &ca_file, &args);
        assert_eq!(code, 0, "{err}");
        let read: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(read["transaction_id"], id.as_str());
    }
    stop_and_check_stderr(daemon, &issued);
}

/// A TLS extension: type, length, data.
fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut out = kind.to_be_bytes().to_vec();
    out.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// A list with a 16-bit length prefix.
fn list16(items: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(items.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(items);
    out
}

/// A TLS `ClientHello` offering only `version` (0x0301 is TLS 1.0, 0x0302
/// TLS 1.1, 0x0303 TLS 1.2), with no `supported_versions` extension, as an
/// old client sends it; its suites, groups and signature algorithms are
/// ones the server has, so only the version can stand in the way.
fn client_hello(version: u16) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // no session id
    // ECDHE-ECDSA/RSA-AES128-GCM-SHA256, then the old CBC suites.
    let suites: Vec<u8> = [0xc02bu16, 0xc02f, 0xc013, 0xc014, 0x002f, 0x0035]
        .iter()
        .flat_map(|s| s.to_be_bytes())
        .collect();
    body.extend_from_slice(&list16(&suites));
    body.extend_from_slice(&[1, 0]); // compression: null
    let host = b"localhost";
    let mut name = vec![0]; // host_name
    name.extend_from_slice(&list16(host));
    let mut extensions = extension(0x0000, &list16(&name)); // server_name
    // supported_groups: x25519, secp256r1.
    extensions.extend(extension(0x000a, &list16(&[0x00, 0x1d, 0x00, 0x17])));
    extensions.extend(extension(0x000b, &[1, 0])); // ec_point_formats: uncompressed
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256.
    extensions.extend(extension(0x000d, &list16(&[4, 3, 8, 4, 4, 1])));
    body.extend_from_slice(&list16(&extensions));
    let mut handshake = vec![1]; // client_hello
    handshake.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&list16(&handshake));
    record
}

/// Everything the server sends until it closes (within 10 s).
fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server neither answered nor closed: {e}"),
        }
    }
    (received, started.elapsed())
}

#[test]
fn tls_1_0_and_1_1_and_plain_http_are_refused_without_harm_to_other_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let issued = ca.issue(&["localhost"]);
    // Long enough that a prompt close below is a refusal, not a timeout.
    let daemon = https_daemon(dir.path(), &issued, &["--header-read-timeout", "60s"]);
    let mut kept = TlsConnection::connect(daemon.addr, http1_config(&ca), "localhost").unwrap();
    assert_eq!(kept.post(&payload("txn_before", "1")).status, 202);

    // The same hello offering TLS 1.2 gets a ServerHello: the hello is sound.
    let mut control = TcpStream::connect(daemon.addr).unwrap();
    control.write_all(&client_hello(0x0303)).unwrap();
    control
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = [0u8; 6];
    control.read_exact(&mut head).unwrap();
    assert_eq!((head[0], head[5]), (0x16, 2), "a ServerHello: {head:?}");
    drop(control);

    for (version, name) in [(0x0301u16, "TLS 1.0"), (0x0302, "TLS 1.1")] {
        let mut stream = TcpStream::connect(daemon.addr).unwrap();
        stream.write_all(&client_hello(version)).unwrap();
        let (received, took) = read_until_closed(&mut stream);
        // A fatal protocol_version alert, then the close.
        assert!(received.len() >= 7, "{name}: {received:?}");
        assert_eq!(received[0], 0x15, "{name}: an alert record: {received:?}");
        assert_eq!(&received[3..7], &[0, 2, 2, 70], "{name}: {received:?}");
        assert!(
            took < Duration::from_secs(10),
            "{name}: closed after {took:?}"
        );
    }

    let mut plain = TcpStream::connect(daemon.addr).unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (received, took) = read_until_closed(&mut plain);
    assert!(
        !received.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(took < Duration::from_secs(10), "closed after {took:?}");

    // The connection opened before, and new ones, are served as before.
    assert_eq!(kept.post(&payload("txn_after", "1")).status, 202);
    assert_eq!(kept.get("/v1/transactions/txn_before", "").status, 200);
    let mut fresh = TlsConnection::connect(daemon.addr, http1_config(&ca), "localhost").unwrap();
    assert_eq!(fresh.get("/v1/transactions/txn_after", "").status, 200);
    stop_and_check_stderr(daemon, &issued);
}

/// Unix seconds of 2020-06-01, when the expired certificate was valid.
const JUNE_2020: u64 = 1_590_969_600;

#[test]
fn an_expired_or_wrong_host_certificate_is_the_clients_error_and_the_daemon_keeps_serving() {
    let ca = Ca::new();

    let dir = tempfile::tempdir().unwrap();
    let expired = ca.issue_expired(&["localhost"]);
    let daemon = https_daemon(dir.path(), &expired, &[]);
    for _ in 0..3 {
        let error = TlsConnection::connect(daemon.addr, http1_config(&ca), "localhost")
            .err()
            .expect("a client with today's clock refuses the expired certificate");
        assert!(
            format!("{error:?}").contains("Expired"),
            "refused for the expiry: {error:?}"
        );
    }
    // The daemon is fine: a client whose clock says 2020 is served.
    let mut in_2020 =
        TlsConnection::connect(daemon.addr, http1_config_at(&ca, JUNE_2020), "localhost").unwrap();
    assert_eq!(in_2020.post(&payload("txn_expired", "1")).status, 202);
    stop_and_check_stderr(daemon, &expired);

    let dir = tempfile::tempdir().unwrap();
    let other_host = ca.issue(&["other.example"]);
    let daemon = https_daemon(dir.path(), &other_host, &[]);
    for _ in 0..3 {
        let error = TlsConnection::connect(daemon.addr, http1_config(&ca), "localhost")
            .err()
            .expect("a client for localhost refuses a certificate for other.example");
        assert!(
            format!("{error:?}").contains("NotValidForName"),
            "refused for the name: {error:?}"
        );
    }
    let mut right_name =
        TlsConnection::connect(daemon.addr, http1_config(&ca), "other.example").unwrap();
    assert_eq!(right_name.post(&payload("txn_other_host", "1")).status, 202);
    stop_and_check_stderr(daemon, &other_host);
}

#[test]
fn sigterm_does_not_wait_for_idle_http2_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let issued = ca.issue(&["localhost"]);
    let daemon = https_daemon(dir.path(), &issued, &["--shutdown-grace", "30s"]);
    let runtime = runtime();
    let mut client = runtime.block_on(H2Client::connect(daemon.addr, &ca));
    assert_eq!(
        runtime
            .block_on(client.post(&payload("txn_before_stop", "1")))
            .status,
        202
    );
    let started = Instant::now();
    daemon.terminate();
    let (status, stderr) = daemon.wait_exit(DEADLINE_AFTER_TERM);
    assert!(status.success(), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}: the idle HTTP/2 connection held the shutdown",
        started.elapsed()
    );
    assert!(!stderr.contains("grace period over"), "{stderr}");
    // The client saw a clean end (GOAWAY), not a reset.
    let ended = runtime.block_on(client.driver).unwrap();
    assert!(ended.is_ok(), "{ended:?}");
}

/// Longer than the test's grace period, so a hang shows as a failure of
/// the assertion on the time taken, not of the wait.
const DEADLINE_AFTER_TERM: Duration = Duration::from_secs(60);
