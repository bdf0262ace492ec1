//! The one place the TLS crypto provider is chosen: rustls with `ring`
//! (no aws-lc-rs, which needs cmake and a C toolchain; no OpenSSL). Every
//! TLS configuration webhookd builds takes it from here, never from a
//! process-wide default.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The crypto provider of every TLS configuration.
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
