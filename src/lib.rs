//! ferry: a store-and-forward telemetry producer for Linux gateways.
//! Local programs hand it events; it stores them durably in a SQLite outbox
//! at once and forwards them to Kafka whenever the uplink is up.

#[cfg(feature = "count-allocs")]
pub mod alloc_count;
pub mod backoff;
pub mod breaker;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod event;
pub mod forward;
pub mod ingest;
pub mod kafka;
pub mod log_limit;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod pattern;
pub mod shutdown;
pub mod stats;
pub mod varint;
