//! ferry: a store-and-forward telemetry producer for Linux gateways.
//! Local programs hand it events; it stores them durably in a SQLite outbox
//! at once and forwards them to Kafka whenever the uplink is up.
//!
//! Data flows one way: sockets → `ingest` → `outbox` → `forward` → `kafka`.
//! The modules are layered; each imports only from layers below it
//! (`../shared/tools/import_cycles.py src` finds no cycle):
//!
//! ```text
//! cli                      subcommands, the exit code of each
//!   daemon  client  fleet  `ferry run`; send, status and dlq over the socket/outbox;
//!                          `ferry fleet` from the heartbeat topic
//!     config               the whole file: composes each component's section,
//!                          environment overrides, errors naming file/line/key
//!       mqtt               subscriptions to local MQTT brokers, into the outbox
//!       ingest  forward  metrics  heartbeat
//!                          listeners and formats; what to send and when;
//!                          /metrics and /health; the fleet heartbeat
//!         outbox           SQLite storage, group commit, plans beside it
//!                          (stored runs are written with kafka's codec)
//!           kafka          ferry's own producer (its own layers: kafka/mod.rs)
//!             event  stats  backoff  breaker
//!                          the event and its at-rest encoding; counters;
//!                          the pure retry and breaker cores
//!               clock  units  pattern  varint  exit  shutdown  notify
//!               log_limit  memory  dirsync  alloc_count  bad_setting
//!                          small pure pieces: time, sizes and durations, topic
//!                          patterns, varints, exit codes, one shutdown signal,
//!                          systemd notify, log rate limiting, giving memory
//!                          back, names made durable (directory fsyncs), the
//!                          counting allocator (benchmark build only), a
//!                          setting a section's check refuses (key and why)
//! ```
//!
//! Each layer's failures are typed (`thiserror` enums, or hand-written
//! ones): `outbox::{OutboxError, StorageError, StoreError, Corruption}`,
//! `outbox::open_error`, `outbox::offline::OfflineError`,
//! `ingest::BindError`, `kafka::errors::Failure` (classified),
//! `kafka::record_read::ReadError`, `kafka::sasl::SaslError`,
//! `forward::security::SecurityError`, `units::UnitError`, the MQTT
//! session's and mapping's, `client::ClientError` and
//! `daemon::StartError`. Each message says what failed, where, and what to
//! do where there is something to do.
//!
//! Each component owns its config section (`outbox::config::OutboxConfig`,
//! `ingest::config::{IngestConfig, ListenerConfig}`,
//! `forward::config::KafkaConfig`, `forward::route::RouteConfig`,
//! `mqtt::config::MqttConfig`, `heartbeat::HeartbeatConfig`,
//! `backoff::RetryConfig`, `breaker::BreakerConfig`,
//! `metrics::MetricsConfig`), and checks it, refusing a value with a
//! `bad_setting::BadSetting` (its key and why); `config` composes them,
//! re-exports them and names the file and line.

#[cfg(feature = "count-allocs")]
pub mod alloc_count;
pub mod backoff;
pub mod bad_setting;
pub mod breaker;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dirsync;
pub mod event;
pub mod exit;
pub mod fleet;
pub mod forward;
pub mod heartbeat;
pub mod ingest;
pub mod kafka;
pub mod log_limit;
pub mod memory;
pub mod metrics;
pub mod mqtt;
pub mod notify;
pub mod outbox;
pub mod pattern;
pub mod shutdown;
pub mod stats;
pub mod units;
pub mod varint;
