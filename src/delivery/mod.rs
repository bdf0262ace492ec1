//! Delivery: with `--deliver-to`, processing a transaction means sending
//! it to that URL in a POST; it is PROCESSED only once the destination answered 2xx.
//!
//! - [`config`]: the flags, checked and loaded before the data dir is touched;
//! - [`body`]: what a delivery carries (`--deliver-body`);
//! - [`client`]: one attempt over HTTP (hyper-util's pooled client, rustls);
//! - [`breaker`]: pausing delivery while the destination is down;
//! - [`dispatcher`]: attempts in flight, journaled through the writer;
//! - [`redeliveries`]: the worker behind durable bulk redeliveries.
//!
//! The retry schedule is [`crate::retry`]; the journal and the commands
//! that write it are the store's ([`crate::store::attempts`],
//! [`crate::store::writer::delivery`]); the signature is
//! [`crate::signature::Signer`].

pub mod body;
pub mod breaker;
pub mod client;
pub mod config;
pub mod dispatcher;
pub mod redeliveries;

pub use config::{ConfigError, DeliveryConfig};
pub use dispatcher::{DeliveryStatus, Dispatcher, Gate};
