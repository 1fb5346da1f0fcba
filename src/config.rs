//! Configuration: the TOML file, `FERRY_*` environment overrides, and
//! validation whose errors name the file, the line and the key. Each
//! component owns its section's type and checks it (`check`, naming the
//! key); this file composes them and adds the checks that span sections.
//!
//! Precedence: built-in defaults < config file < environment. With no file
//! at all ferry runs on defaults that need nothing installed.

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

    fn apply_env(&mut self, env: &[(String, String)]) -> Result<(), ConfigError> {
        for (name, value) in env {
            match name.as_str() {
                "FERRY_BROKERS" => {
                    self.kafka.brokers = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect();
                }
                "FERRY_DATA_DIR" => self.data_dir = PathBuf::from(value),
                "FERRY_NODE_ID" => self.node_id = value.clone(),
                "FERRY_DURABILITY" => {
                    self.outbox.durability = match value.as_str() {
                        "fsync" => Durability::Fsync,
                        "relaxed" => Durability::Relaxed,
                        other => {
                            return Err(ConfigError {
                                file: None,
                                line: None,
                                key: Some("FERRY_DURABILITY".into()),
                                message: format!(
                                    "`{other}` is not a durability; use \"fsync\" or \"relaxed\""
                                ),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `FERRY_<SECTION>__<KEY>` (and deeper: `FERRY_KAFKA__SASL__USERNAME`,
    /// `FERRY_LISTENER__0__PATH` for the first listener in the file) sets
    /// any key. The value is read as the key's type: a string as it is
    /// (`7d`, `zstd`), a number or boolean as in TOML, a list as TOML
    /// (`["a:1", "b:2"]`) or comma-separated (`a:1,b:2`). An error names the
    /// variable (or, when only several together are wrong, all of them).
    fn apply_env_paths(self, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let mut vars: Vec<&(String, String)> = env
            .iter()
            .filter(|(n, _)| n.starts_with("FERRY_") && n.contains("__"))
            .collect();
        if vars.is_empty() {
            return Ok(self);
        }
        vars.sort();
        let env_error = |name: &str, message: String| ConfigError {
            file: None,
            line: None,
            key: Some(name.to_string()),
            message,
        };
        let base = toml::Value::try_from(&self)
            .map_err(|e| env_error("FERRY_*", format!("cannot apply overrides: {e}")))?;
        let apply = |skip: Option<usize>| -> Result<toml::Value, ConfigError> {
            let mut v = base.clone();
            for (i, (name, raw)) in vars.iter().enumerate() {
                if Some(i) == skip {
                    continue;
                }
                let path: Vec<String> = name["FERRY_".len()..]
                    .split("__")
                    .map(str::to_ascii_lowercase)
                    .collect();
                set_path(&mut v, &path, raw).map_err(|m| env_error(name, m.to_string()))?;
            }
            Ok(v)
        };
        let message = match apply(None)?.try_into::<Config>() {
            Ok(config) => return Ok(config),
            Err(e) => e.message().trim().to_string(),
        };
        // Which one: the variable without which the rest load.
        for (i, (name, raw)) in vars.iter().enumerate() {
            if apply(Some(i))?.try_into::<Config>().is_ok() {
                return Err(env_error(name, format!("`{raw}`: {message}")));
            }
        }
        let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        Err(env_error(&names.join(", "), message))
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

/// An environment value read as the type of the value it replaces (see
/// `Config::apply_env_paths`).
fn env_value(raw: &str, replaces: Option<&toml::Value>) -> toml::Value {
    let as_toml = || {
        format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
    };
    match replaces {
        Some(toml::Value::String(_)) => toml::Value::String(raw.to_string()),
        Some(toml::Value::Array(_)) if !raw.trim_start().starts_with('[') => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => as_toml().unwrap_or_else(|| toml::Value::String(raw.to_string())),
    }
}

/// Why an environment override's name does not lead to a key.
#[derive(Debug, thiserror::Error)]
enum OverrideError {
    #[error("names no key")]
    NoKey,
    #[error("`{0}` is not an index into the list")]
    NotAnIndex(String),
    #[error("there is no entry {index} in the list (it has {len})")]
    NoEntry { index: usize, len: usize },
    #[error("`{0}` is not a section")]
    NotASection(String),
    #[error("the parent of `{0}` is not a section")]
    ParentNotASection(String),
}

/// Set the value of `raw` at `path` (table keys, or indexes into existing
/// lists) in `root`, creating sections the file left out.
fn set_path(root: &mut toml::Value, path: &[String], raw: &str) -> Result<(), OverrideError> {
    let Some((last, parents)) = path.split_last() else {
        return Err(OverrideError::NoKey);
    };
    let index = |part: &str, len: usize| -> Result<usize, OverrideError> {
        let i: usize = part
            .parse()
            .map_err(|_| OverrideError::NotAnIndex(part.into()))?;
        if i < len {
            Ok(i)
        } else {
            Err(OverrideError::NoEntry { index: i, len })
        }
    };
    let mut at = root;
    for part in parents {
        at = match at {
            toml::Value::Table(t) => t
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(Default::default())),
            toml::Value::Array(a) => {
                let i = index(part, a.len())?;
                &mut a[i]
            }
            _ => return Err(OverrideError::NotASection(part.clone())),
        };
    }
    match at {
        toml::Value::Table(t) => {
            let value = env_value(raw, t.get(last.as_str()));
            t.insert(last.clone(), value);
            Ok(())
        }
        toml::Value::Array(a) => {
            let i = index(last, a.len())?;
            a[i] = env_value(raw, Some(&a[i]));
            Ok(())
        }
        _ => Err(OverrideError::ParentNotASection(last.clone())),
    }
}

/// Line (1-based) of byte `offset`, and the dotted key written on that line
/// (with its `[section]`), for parse errors that only carry a span.
fn locate_span(text: &str, offset: usize) -> (Option<usize>, Option<String>) {
    let offset = offset.min(text.len());
    let line_no = text[..offset].matches('\n').count() + 1;
    let mut section = String::new();
    let mut key = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if i + 1 > line_no {
            break;
        }
        if let Some(s) = trimmed.strip_prefix('[') {
            section = s.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            if i + 1 == line_no {
                key = Some(section.clone());
            }
        } else if i + 1 == line_no {
            key = trimmed.split_once('=').map(|(k, _)| {
                let k = k.trim().trim_matches('"');
                if section.is_empty() {
                    k.to_string()
                } else {
                    format!("{section}.{k}")
                }
            });
        }
    }
    (Some(line_no), key)
}

/// Line (1-based) where `section.key` is set in `text`, if it is.
fn find_key_line(text: &str, dotted: &str) -> Option<usize> {
    let (want_section, want_key) = match dotted.rsplit_once('.') {
        Some((s, k)) => (s, k),
        None => ("", dotted),
    };
    let mut section = String::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(s) = trimmed.strip_prefix('[') {
            section = s.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        } else if let Some((k, _)) = trimmed.split_once('=') {
            if section == want_section && k.trim().trim_matches('"') == want_key {
                return Some(i + 1);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Some(Path::new("/etc/ferry/test.toml")), &[])
    }

    #[test]
    fn defaults_need_nothing() {
        let c = parse("").unwrap();
        assert_eq!(c.kafka.brokers, vec!["127.0.0.1:9092"]);
        assert_eq!(c.data_dir, PathBuf::from("./ferry-data"));
        assert_eq!(
            c.control_socket(),
            Some(PathBuf::from("./ferry-data/ferry.sock"))
        );
        assert_eq!(c.outbox.when_full, WhenFull::DropOldest);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse("node_id = \"a\"\n[outbox]\nmax_bytez = 5\n").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("/etc/ferry/test.toml, line 3"), "{text}");
        assert!(text.contains("outbox.max_bytez"), "{text}");
        assert!(text.contains("unknown field"), "{text}");
    }

    #[test]
    fn bad_value_names_line_and_key() {
        let e = parse("[outbox]\n\nmax_bytes = \"12 parsecs\"\n").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("outbox.max_bytes"), "{text}");
    }

    #[test]
    fn semantic_error_names_line_and_key() {
        let e = parse("[ingest]\nmax_event_bytes = \"2MiB\"\n").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("line 2"), "{text}");
        assert!(text.contains("ingest.max_event_bytes"), "{text}");
    }

    #[test]
    fn the_memory_budget_has_a_default_and_a_floor() {
        let c = parse("").unwrap();
        assert_eq!(c.kafka.max_in_flight_bytes, 8 * 1024 * 1024);
        let c = parse("[kafka]\nmax_in_flight_bytes = \"16MiB\"\n").unwrap();
        assert_eq!(c.kafka.max_in_flight_bytes, 16 * 1024 * 1024);
        let e = parse("[kafka]\nmax_in_flight_bytes = \"100KiB\"\n").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("line 2"), "{text}");
        assert!(text.contains("kafka.max_in_flight_bytes"), "{text}");
        assert!(text.contains("256 KiB"), "{text}");
    }

    #[test]
    fn mqtt_entries_are_checked_and_errors_name_the_key() {
        let ok = "[[mqtt]]\nbroker = \"127.0.0.1:1883\"\n[[mqtt.subscribe]]\nfilter = \"z2m/+\"\ntopic = \"zigbee\"\nkey = \"{2}\"\n";
        let c = parse(ok).unwrap();
        assert_eq!(c.mqtt[0].client_id_for("gw1"), "ferry-gw1");
        assert_eq!(c.mqtt[0].subscriptions[0].qos, 1);
        assert!(c.named_topics().contains(&"zigbee".to_string()));
        for (bad, key, why) in [
            (
                ok.replace("z2m/+", "z2m/#/x"),
                "mqtt.subscribe.filter",
                "`#` must be the last level",
            ),
            (
                ok.replace("{2}", "{3}"),
                "mqtt.subscribe.key",
                "uses level {3}",
            ),
            (
                ok.replace("\"zigbee\"", "\"zig bee\""),
                "mqtt.subscribe.topic",
                "invalid topic name",
            ),
            (
                ok.replace("key = ", "qos = 2\nkey = "),
                "mqtt.subscribe.qos",
                "qos 2 is not offered",
            ),
            (
                ok.replace("127.0.0.1:1883", "localhost"),
                "mqtt.broker",
                "not host:port",
            ),
            (
                format!("{ok}{ok}"),
                "mqtt.name",
                "two [[mqtt]] entries are named `mqtt`",
            ),
            (
                ok.replace(
                    "[[mqtt.subscribe]]",
                    "password_file = \"/p\"\n[[mqtt.subscribe]]",
                ),
                "mqtt.username",
                "password_file is set but username is not",
            ),
        ] {
            let text = parse(&bad).unwrap_err().to_string();
            assert!(text.contains(key) && text.contains(why), "{bad}\n{text}");
        }
    }

    #[test]
    fn env_overrides_file() {
        let env = vec![
            ("FERRY_BROKERS".to_string(), "a:1, b:2".to_string()),
            ("FERRY_DATA_DIR".to_string(), "/var/lib/ferry".to_string()),
        ];
        let c = Config::from_toml("[kafka]\nbrokers=[\"x:9\"]\n", None, &env).unwrap();
        assert_eq!(c.kafka.brokers, vec!["a:1", "b:2"]);
        assert_eq!(c.outbox_path(), PathBuf::from("/var/lib/ferry/outbox.db"));
    }

    fn with_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_toml(text, None, &env)
    }

    #[test]
    fn every_key_can_be_set_from_the_environment() {
        let text = "[[listener]]\ntype = \"unix\"\npath = \"/run/a.sock\"\n";
        let c = with_env(
            text,
            &[
                ("FERRY_KAFKA__LINGER_MS", "25"),
                ("FERRY_KAFKA__COMPRESSION", "zstd"),
                ("FERRY_KAFKA__BROKERS", "a:1,b:2"),
                ("FERRY_KAFKA__ALLOW_AUTO_CREATE_TOPICS", "false"),
                ("FERRY_OUTBOX__MAX_AGE", "2d"),
                ("FERRY_OUTBOX__MAX_BYTES", "64MiB"),
                ("FERRY_RETRY__MULTIPLIER", "1.5"),
                ("FERRY_KAFKA__SASL__MECHANISM", "SCRAM-SHA-512"),
                ("FERRY_KAFKA__SASL__USERNAME", "gw-7"),
                ("FERRY_KAFKA__SASL__PASSWORD_FILE", "/etc/ferry/pw"),
                ("FERRY_LISTENER__0__PATH", "/run/b.sock"),
                ("FERRY_LOG", "debug"),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.linger_ms, 25);
        assert_eq!(c.kafka.compression, Compression::Zstd);
        assert_eq!(c.kafka.brokers, ["a:1", "b:2"]);
        assert!(!c.kafka.allow_auto_create_topics);
        assert_eq!(c.outbox.max_age, std::time::Duration::from_secs(2 * 86_400));
        assert_eq!(c.outbox.max_bytes, 64 << 20);
        assert_eq!(c.retry.multiplier, 1.5);
        let sasl = c.kafka.sasl.unwrap();
        assert_eq!(
            (sasl.mechanism, sasl.username.as_str()),
            (SaslMechanism::ScramSha512, "gw-7")
        );
        assert_eq!(
            c.listeners[0].path.as_deref(),
            Some(Path::new("/run/b.sock"))
        );
    }

    #[test]
    fn a_bad_environment_override_names_the_variable() {
        let e = with_env("", &[("FERRY_KAFKA__LINGER_MS", "soon")]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("FERRY_KAFKA__LINGER_MS"), "{e}");
        let e = with_env("", &[("FERRY_KAFKA__LINGERMS", "5")]).unwrap_err();
        assert!(e.to_string().contains("FERRY_KAFKA__LINGERMS"), "{e}");
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = with_env("", &[("FERRY_LISTENER__3__PATH", "/x")]).unwrap_err();
        assert!(e.to_string().contains("no entry 3"), "{e}");
        // Semantic checks run after the overrides, naming the key.
        let e = with_env("", &[("FERRY_KAFKA__ZSTD_LEVEL", "40")]).unwrap_err();
        assert!(e.to_string().contains("kafka.zstd_level"), "{e}");
    }

    #[test]
    fn lines_listener_needs_topic() {
        let e = parse("[[listener]]\ntype = \"tcp\"\nformat = \"lines\"\n").unwrap_err();
        assert!(e.to_string().contains("listener.topic"), "{e}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 * 1024 * 1024);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("5 furlongs").is_err());
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("1y").is_err());
    }

    #[test]
    fn effective_config_round_trips() {
        let c = parse("[kafka]\nlinger_ms = 7\n").unwrap();
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!(again.kafka.linger_ms, 7);
    }
}
