//! Delivery over TLS: a destination whose certificate a test CA signed is
//! trusted through `--deliver-ca-file` (and not through the system roots),
//! and mutual TLS presents `--deliver-client-cert`/`--deliver-client-key`
//! to a destination that requires a client certificate. Certificates are
//! made here with rcgen.

mod common;
#[path = "common/sink.rs"]
mod sink;

use std::path::Path;
use std::sync::Arc;

use common::requirements::Need;
use common::{DEADLINE, Daemon, get, get_transaction, payload, poll_until, post, transaction_path};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::Value;
use sink::{Answer, Sink};

struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, signed by the test CA.
struct Leaf {
    cert: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "webhookd test CA");
        Pki {
            ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            key,
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The sink's TLS configuration, requiring a client certificate from the
/// test CA if `mutual`.
fn server_config(pki: &Pki, mutual: bool) -> Arc<rustls::ServerConfig> {
    let server = pki.leaf(&["localhost"]);
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if mutual {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(pki.roots()), provider())
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server.key.serialize_der()));
    Arc::new(builder.with_single_cert(vec![server.cert], key).unwrap())
}

fn deliver_to(dir: &Path, sink: &Sink, extra: &[&str]) -> Daemon {
    let url = sink.url();
    let mut args = vec![
        "--process-delay",
        "0s",
        "--deliver-to",
        url.as_str(),
        "--retry-schedule",
        "0s",
    ];
    args.extend_from_slice(extra);
    Daemon::start(dir, &args)
}

fn wait_done(daemon: &Daemon, id: &str) -> Value {
    poll_until(DEADLINE, "PROCESSED or FAILED", || {
        let view = get_transaction(daemon.addr, id).json();
        (view["status"] != "PROCESSING").then_some(view)
    })
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn an_https_destination_is_trusted_through_the_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let sink = Sink::start_tls(|_| Answer::status(200), server_config(&pki, false));
    let ca = write(dir.path(), "ca.pem", &pki.ca.pem());

    let trusted = deliver_to(
        &dir.path().join("trusted"),
        &sink,
        &["--deliver-ca-file", &ca],
    );
    assert_eq!(post(trusted.addr, &payload("txn_tls", "5")).status, 202);
    assert_eq!(wait_done(&trusted, "txn_tls")["status"], "PROCESSED");
    assert_eq!(sink.count(), 1);
    assert_eq!(sink.seen()[0].json()["transaction_id"], "txn_tls");
}

/// Without `--deliver-ca-file` the system's roots are used, and they do not
/// know the test CA: the handshake fails and nothing reaches the destination.
#[test]
#[cfg_attr(
    webhookd_no_system_roots,
    ignore = "needs the system's root certificates (apt-get install ca-certificates); never ignored under CI=true"
)]
fn without_a_ca_file_the_system_roots_do_not_trust_a_private_ca() {
    common::require(Need::SystemRoots);
    assert!(
        !rustls_native_certs::load_native_certs().certs.is_empty(),
        "no system root certificate loads"
    );
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let sink = Sink::start_tls(|_| Answer::status(200), server_config(&pki, false));
    let untrusted = deliver_to(&dir.path().join("untrusted"), &sink, &[]);
    assert_eq!(
        post(untrusted.addr, &payload("txn_untrusted", "5")).status,
        202
    );
    let failed = wait_done(&untrusted, "txn_untrusted");
    assert_eq!(failed["status"], "FAILED");
    let error = failed["last_error"].as_str().unwrap().to_lowercase();
    assert!(
        error.contains("certificate") || error.contains("issuer"),
        "{error}"
    );
    assert_eq!(sink.count(), 0);
}

#[test]
fn mutual_tls_presents_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let sink = Sink::start_tls(|_| Answer::status(200), server_config(&pki, true));
    let ca = write(dir.path(), "ca.pem", &pki.ca.pem());
    let client = pki.leaf(&["webhookd.client"]);
    let cert = write(dir.path(), "client.pem", &client.cert_pem);
    let key = write(dir.path(), "client.key", &client.key.serialize_pem());

    let without = deliver_to(
        &dir.path().join("without"),
        &sink,
        &["--deliver-ca-file", &ca],
    );
    assert_eq!(
        post(without.addr, &payload("txn_anonymous", "5")).status,
        202
    );
    assert_eq!(wait_done(&without, "txn_anonymous")["status"], "FAILED");
    assert_eq!(sink.count(), 0, "refused in the handshake");

    let with = deliver_to(
        &dir.path().join("with"),
        &sink,
        &[
            "--deliver-ca-file",
            &ca,
            "--deliver-client-cert",
            &cert,
            "--deliver-client-key",
            &key,
        ],
    );
    assert_eq!(post(with.addr, &payload("txn_mutual", "5")).status, 202);
    assert_eq!(wait_done(&with, "txn_mutual")["status"], "PROCESSED");
    let seen = sink.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].client_certificate);
    let journal = get(
        with.addr,
        &format!("{}/attempts", transaction_path("txn_mutual")),
    )
    .json();
    assert_eq!(journal["attempts"][0]["outcome"], "delivered");
}

#[test]
fn a_client_key_that_does_not_match_its_certificate_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let client = pki.leaf(&["webhookd.client"]);
    let other = KeyPair::generate().unwrap();
    let cert = write(dir.path(), "client.pem", &client.cert_pem);
    let key = write(dir.path(), "other.key", &other.serialize_pem());
    let data = dir.path().join("data");
    let (code, stderr) = common::run_to_exit(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--deliver-to",
            "https://localhost:9/hook",
            "--deliver-client-cert",
            &cert,
            "--deliver-client-key",
            &key,
        ],
        &[],
    );
    let line = common::assert_one_line_failure(code, &stderr, 2);
    assert!(
        line.contains("--deliver-client-cert") && line.contains("--deliver-client-key"),
        "{line}"
    );
    assert!(!data.exists());
}
