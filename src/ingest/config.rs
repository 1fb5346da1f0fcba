//! The `[ingest]` section and the `[[listener]]` entries. Owned by ingest;
//! `config` composes them and checks the listeners.

use crate::bad_setting::BadSetting;
use crate::event::KAFKA_MAX_EVENT_BYTES;
use crate::units::{UnitError, size};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest event (key + value + headers) accepted at the door.
    #[serde(with = "size")]
    pub max_event_bytes: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_event_bytes: KAFKA_MAX_EVENT_BYTES,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    Unix,
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Lines,
    Frames,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    #[serde(rename = "type")]
    pub kind: ListenerKind,
    #[serde(default = "default_format")]
    pub format: Format,
    /// unix: socket path (default `<data_dir>/ferry.sock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// unix: file mode, octal string (default "0660").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// unix: group that may write to the socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// tcp/udp: bind address (default 127.0.0.1 and port 7070).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// lines: destination topic of every line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// lines: optional key of every line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

fn default_format() -> Format {
    Format::Frames
}

impl ListenerConfig {
    /// unix: the socket's path (default `<data_dir>/ferry.sock`).
    pub fn socket_path(&self, data_dir: &Path) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| data_dir.join("ferry.sock"))
    }

    /// (kind, where it listens), for the heartbeat.
    pub fn describe(&self, data_dir: &Path) -> (String, String) {
        match self.kind {
            ListenerKind::Unix => (
                "unix".into(),
                self.socket_path(data_dir).display().to_string(),
            ),
            ListenerKind::Tcp => ("tcp".into(), self.bind_address()),
            ListenerKind::Udp => ("udp".into(), self.bind_address()),
        }
    }

    /// tcp/udp: the address to bind (default 127.0.0.1:7070).
    pub fn bind_address(&self) -> String {
        self.address
            .clone()
            .unwrap_or_else(|| "127.0.0.1:7070".to_string())
    }
}

/// Parse an octal file mode such as "0660".
pub fn parse_mode(mode: &str) -> Result<u32, UnitError> {
    u32::from_str_radix(mode.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| UnitError::NotAMode(mode.into()))
}

impl IngestConfig {
    /// Semantic checks of `[ingest]`; the error names the key.
    pub fn check(&self) -> Result<(), BadSetting> {
        if self.max_event_bytes == 0 || self.max_event_bytes > KAFKA_MAX_EVENT_BYTES {
            return Err(BadSetting::at(
                "ingest.max_event_bytes".into(),
                format!(
                    "{} is out of range: it must be between 1 and {} (what a default Kafka broker accepts)",
                    self.max_event_bytes, KAFKA_MAX_EVENT_BYTES
                ),
            ));
        }
        Ok(())
    }
}

impl ListenerConfig {
    /// Semantic checks of one `[[listener]]`; the error names the key.
    pub fn check(&self) -> Result<(), BadSetting> {
        match self.kind {
            ListenerKind::Unix => {
                if self.address.is_some() {
                    return Err(BadSetting::at(
                        "listener.address".into(),
                        "a unix listener takes `path`, not `address`".into(),
                    ));
                }
                if let Some(mode) = &self.mode {
                    parse_mode(mode)
                        .map_err(|m| BadSetting::at("listener.mode".to_string(), m.to_string()))?;
                }
            }
            ListenerKind::Tcp | ListenerKind::Udp => {
                if self.path.is_some() || self.mode.is_some() || self.group.is_some() {
                    return Err(BadSetting::at(
                        "listener.path".into(),
                        "tcp and udp listeners take `address`, not path/mode/group".into(),
                    ));
                }
                if let Some(a) = &self.address {
                    a.parse::<std::net::SocketAddr>().map_err(|_| {
                        BadSetting::at(
                            "listener.address".to_string(),
                            format!("`{a}` is not ip:port (for example \"127.0.0.1:7070\")"),
                        )
                    })?;
                }
            }
        }
        match self.format {
            Format::Lines => match &self.topic {
                None => {
                    return Err(BadSetting::at(
                        "listener.topic".into(),
                        "a `lines` listener needs `topic`: lines carry only a value".into(),
                    ));
                }
                Some(t) => crate::event::validate_topic(t)
                    .map_err(|e| BadSetting::at("listener.topic".to_string(), e.to_string()))?,
            },
            Format::Frames => {
                if self.topic.is_some() || self.key.is_some() {
                    return Err(BadSetting::at(
                        "listener.topic".into(),
                        "a `frames` listener takes topic and key from each frame; remove `topic`/`key`".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}
