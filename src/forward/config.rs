//! The `[kafka]` section: brokers, batching, compression, the bandwidth
//! cap, timeouts, side topics, TLS and SASL. Owned by the forwarder, its
//! only user; `config` composes it into the whole file.

use crate::bad_setting::BadSetting;
use crate::units::{duration, size};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// `max_in_flight_bytes` by default: a small share of a 1 GiB Pi, and
/// over a 200 ms round trip it carries as much as ferry can encode
/// (BENCHMARKS.md measures it against twice as much).
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: u64 = 8 * 1024 * 1024;
/// The smallest `max_in_flight_bytes`: one stored block's worth of events.
pub const MIN_IN_FLIGHT_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub brokers: Vec<String>,
    pub client_id: String,
    pub compression: Compression,
    /// zstd's level when `compression = "zstd"` (1 fastest … 19 smallest).
    pub zstd_level: i32,
    pub linger_ms: u64,
    #[serde(with = "size")]
    pub max_batch_bytes: u64,
    pub max_batch_events: u64,
    /// Cap on bytes written to the brokers per second (after compression);
    /// 0 = no cap.
    #[serde(with = "size")]
    pub max_bytes_per_second: u64,
    /// The memory budget of delivery windows in flight: the events they
    /// hold, decompressed, as read from the outbox. One window always
    /// goes, whatever its size.
    #[serde(with = "size")]
    pub max_in_flight_bytes: u64,
    /// Metadata requests let the broker create a topic ferry produces to
    /// (as the Java producer's do); the broker's own setting decides.
    pub allow_auto_create_topics: bool,
    /// One attempt to connect (TCP, TLS, SASL) gives up after this long.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// A request without an answer by then fails (and its connection is closed).
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Dead letters are also produced here (headers dlq-reason,
    /// dlq-timestamp, original-topic) when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Loss markers (JSON naming dropped sequence ranges) go here when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_topic: Option<String>,
    /// TLS to the brokers (rustls) when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// SASL authentication when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sasl: Option<SaslConfig>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: vec!["127.0.0.1:9092".to_string()],
            client_id: "ferry".to_string(),
            compression: Compression::Lz4,
            zstd_level: 3,
            linger_ms: 5,
            max_batch_bytes: 1_000_000,
            max_batch_events: 10_000,
            max_bytes_per_second: 0,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
            allow_auto_create_topics: true,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            dead_letter_topic: None,
            loss_topic: None,
            tls: None,
            sasl: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) that sign the brokers' certificates.
    pub ca_file: PathBuf,
    /// Optional client certificate chain and key (PEM), for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    pub mechanism: SaslMechanism,
    pub username: String,
    /// The password lives in this file (mode 0600), never in the config.
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN", alias = "plain")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256", alias = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512", alias = "scram-sha-512")]
    ScramSha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Lz4,
    Zstd,
    None,
}

impl KafkaConfig {
    /// Semantic checks of `[kafka]`; the error names the key (`kafka.…`). The
    /// CA file is checked where it is loaded (`forward::security`).
    pub fn check(&self) -> Result<(), BadSetting> {
        if self.brokers.is_empty() {
            return Err(BadSetting::at(
                "kafka.brokers".into(),
                "no brokers: list at least one host:port".into(),
            ));
        }
        for b in &self.brokers {
            if b.contains(',') {
                return Err(BadSetting::at(
                    "kafka.brokers".into(),
                    format!(
                        "`{b}`: write one broker per list entry, e.g. [\"a:9092\", \"b:9092\"]"
                    ),
                ));
            }
            if !b.contains(':') {
                return Err(BadSetting::at(
                    "kafka.brokers".into(),
                    format!("`{b}` is not host:port (for example \"10.0.0.5:9092\")"),
                ));
            }
        }
        for (key, d) in [
            ("kafka.connect_timeout", self.connect_timeout),
            ("kafka.request_timeout", self.request_timeout),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
                return Err(BadSetting::at(
                    key.into(),
                    "must be between 100ms and 10m".into(),
                ));
            }
        }
        if !(1..=19).contains(&self.zstd_level) {
            return Err(BadSetting::at(
                "kafka.zstd_level".into(),
                format!(
                    "{} is not a zstd level ferry uses: 1 (fastest) to 19 (smallest)",
                    self.zstd_level
                ),
            ));
        }
        if self.max_batch_events == 0 {
            return Err(BadSetting::at(
                "kafka.max_batch_events".into(),
                "must be at least 1".into(),
            ));
        }
        if self.max_batch_bytes < 1024 {
            return Err(BadSetting::at(
                "kafka.max_batch_bytes".into(),
                "must be at least 1024 bytes".into(),
            ));
        }
        if self.max_in_flight_bytes < MIN_IN_FLIGHT_BYTES {
            return Err(BadSetting::at(
                "kafka.max_in_flight_bytes".into(),
                format!(
                    "{} bytes is below the smallest budget, {} KiB (one stored block of events); the default is {} MiB",
                    self.max_in_flight_bytes,
                    MIN_IN_FLIGHT_BYTES / 1024,
                    DEFAULT_MAX_IN_FLIGHT_BYTES / (1024 * 1024)
                ),
            ));
        }
        for (key, topic) in [
            ("kafka.dead_letter_topic", &self.dead_letter_topic),
            ("kafka.loss_topic", &self.loss_topic),
        ] {
            if let Some(t) = topic {
                crate::event::validate_topic(t)
                    .map_err(|e| BadSetting::at(key.to_string(), e.to_string()))?;
            }
        }
        if let Some(s) = &self.sasl {
            if s.username.is_empty() {
                return Err(BadSetting::at(
                    "kafka.sasl.username".into(),
                    "must not be empty".into(),
                ));
            }
        }
        Ok(())
    }
}
