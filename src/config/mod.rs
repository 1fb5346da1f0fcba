//! Configuration: the TOML file, `FERRY_*` environment overrides, and
//! validation whose errors name the file, the line and the key. Each
//! component owns its section's type and checks it (`check`, naming the
//! key); this file composes them and adds the checks that span sections.
//!
//! Precedence: built-in defaults < config file < environment. With no file
//! at all ferry runs on defaults that need nothing installed.
//!
//! ```text
//! mod.rs      the file: sections composed, cross-section checks, errors
//!   overrides   FERRY_* environment overrides, each named in its error
//!   spans       the line a key or a parse error is on
//!   tests
//! ```

pub use crate::backoff::RetryConfig;
use crate::bad_setting::BadSetting;
pub use crate::event::KAFKA_MAX_EVENT_BYTES;
pub use crate::forward::config::{Compression, KafkaConfig, SaslConfig, SaslMechanism, TlsConfig};
pub use crate::forward::route::RouteConfig;
pub use crate::ingest::config::{Format, IngestConfig, ListenerConfig, ListenerKind, parse_mode};
pub use crate::metrics::MetricsConfig;
pub use crate::outbox::config::{Durability, OutboxConfig, WhenFull};
pub use crate::units::{parse_duration, parse_size};
use serde::{Deserialize, Serialize};
use spans::{find_key_line, locate_span};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where ferry looks for its config when `-c` is not given.
pub const SYSTEM_CONFIG: &str = "/etc/ferry/ferry.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// First half of every `ferry-id`; must be unique in the fleet.
    pub node_id: String,
    /// Outbox database and default unix socket live here.
    pub data_dir: PathBuf,
    pub kafka: KafkaConfig,
    pub outbox: OutboxConfig,
    pub ingest: IngestConfig,
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(rename = "route", skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    pub retry: RetryConfig,
    pub breaker: crate::breaker::BreakerConfig,
    pub metrics: MetricsConfig,
    pub heartbeat: crate::heartbeat::HeartbeatConfig,
    /// Local MQTT brokers to subscribe to.
    #[serde(rename = "mqtt", skip_serializing_if = "Vec::is_empty")]
    pub mqtt: Vec<crate::mqtt::config::MqttConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: default_node_id(),
            data_dir: PathBuf::from("./ferry-data"),
            kafka: KafkaConfig::default(),
            outbox: OutboxConfig::default(),
            ingest: IngestConfig::default(),
            listeners: Vec::new(),
            routes: Vec::new(),
            retry: RetryConfig::default(),
            breaker: crate::breaker::BreakerConfig::default(),
            metrics: MetricsConfig::default(),
            heartbeat: crate::heartbeat::HeartbeatConfig::default(),
            mqtt: Vec::new(),
        }
    }
}

fn default_node_id() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ferry".to_string())
}

/// A config problem, located as precisely as we can.
#[derive(Debug)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config error")?;
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, " in {}, line {}", file.display(), line)?,
            (Some(file), None) => write!(f, " in {}", file.display())?,
            (None, _) => write!(f, " in environment/defaults")?,
        }
        if let Some(key) = &self.key {
            write!(f, ", key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Load from `explicit` (`-c`), else the system file if present, else
    /// defaults; then apply the environment and validate.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let file = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None if Path::new(SYSTEM_CONFIG).exists() => Some(PathBuf::from(SYSTEM_CONFIG)),
            None => None,
        };
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
                    file: Some(path.clone()),
                    line: None,
                    key: None,
                    message: format!("cannot read the config file: {e}"),
                })?;
                Self::from_toml(&text, Some(&path), &env)
            }
            None => Self::from_toml("", None, &env),
        }
    }

    /// Parse `text` (the contents of `file`), apply `env` overrides, validate.
    pub fn from_toml(
        text: &str,
        file: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, key) = match e.span() {
                Some(span) => locate_span(text, span.start),
                None => (None, None),
            };
            ConfigError {
                file: file.map(Path::to_path_buf),
                line,
                key,
                message: e.message().trim().to_string(),
            }
        })?;
        // Errors in environment overrides name the variable, and the file
        // whose value it overrides.
        let in_file = |mut e: ConfigError| {
            e.file = file.map(Path::to_path_buf);
            e
        };
        config.apply_env(env).map_err(in_file)?;
        config = config.apply_env_paths(env).map_err(in_file)?;
        config.fill_defaults();
        config
            .validate()
            .map_err(|BadSetting { key, message }| ConfigError {
                file: file.map(Path::to_path_buf),
                line: find_key_line(text, &key),
                key: Some(key),
                message,
            })?;
        Ok(config)
    }

    fn fill_defaults(&mut self) {
        if self.listeners.is_empty() {
            self.listeners.push(ListenerConfig {
                kind: ListenerKind::Unix,
                format: Format::Frames,
                path: None,
                mode: None,
                group: None,
                address: None,
                topic: None,
                key: None,
            });
        }
    }

    /// Semantic checks; the error names the key (`section.key`).
    fn validate(&self) -> Result<(), BadSetting> {
        if self.node_id.is_empty() || self.node_id.contains(':') {
            return Err(BadSetting::at(
                "node_id".into(),
                format!(
                    "`{}` is not a node id: it must be non-empty and contain no ':'",
                    self.node_id
                ),
            ));
        }
        self.kafka.check()?;
        self.ingest.check()?;
        if let Some(t) = &self.kafka.tls {
            crate::forward::security::tls_config(t)
                .map_err(|e| BadSetting::at("kafka.tls.ca_file".to_string(), e.to_string()))?;
        }
        self.heartbeat.check()?;
        crate::mqtt::config::check_all(&self.mqtt, &self.node_id)?;
        self.metrics.check()?;
        self.breaker.check()?;
        self.retry.check()?;
        for l in &self.listeners {
            l.check()?;
        }
        for r in &self.routes {
            r.check()?;
        }
        Ok(())
    }

    pub fn outbox_path(&self) -> PathBuf {
        self.outbox
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("outbox.db"))
    }

    pub fn listener_path(&self, l: &ListenerConfig) -> PathBuf {
        l.socket_path(&self.data_dir)
    }

    pub fn listener_address(l: &ListenerConfig) -> String {
        l.bind_address()
    }

    /// The socket `ferry send` and `ferry status` talk to: the first unix
    /// listener that speaks frames.
    pub fn control_socket(&self) -> Option<PathBuf> {
        self.listeners
            .iter()
            .find(|l| l.kind == ListenerKind::Unix && l.format == Format::Frames)
            .map(|l| self.listener_path(l))
    }

    /// The effective configuration as TOML (no secrets exist yet to redact).
    /// The Kafka topics this config names: route destinations, the topics
    /// of `lines` listeners (routed), the dead-letter and loss topics.
    /// Topics that producers name in their frames are not known here.
    pub fn named_topics(&self) -> Vec<String> {
        let router = crate::forward::route::Router::new(&self.routes);
        let mut out: Vec<String> = Vec::new();
        let mut add = |t: &str| {
            if !t.contains('*') && !out.iter().any(|o| o == t) {
                out.push(t.to_string());
            }
        };
        for r in &self.routes {
            r.to.iter().for_each(|t| add(t));
        }
        for l in &self.listeners {
            if let Some(t) = &l.topic {
                router.for_each_destination(t, &mut add);
            }
        }
        for s in self.mqtt.iter().flat_map(|m| &m.subscriptions) {
            if let Some(t) = crate::mqtt::mapping::Template::parse(&s.topic)
                .ok()
                .and_then(|t| t.literal())
            {
                router.for_each_destination(&t, &mut add);
            }
        }
        for t in [&self.kafka.dead_letter_topic, &self.kafka.loss_topic]
            .into_iter()
            .flatten()
        {
            add(t);
        }
        out
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

mod overrides;
mod spans;
#[cfg(test)]
mod tests;
