//! The `[[mqtt]]` entries: which local MQTT brokers ferry subscribes to,
//! how it logs in, and how each topic filter maps to a Kafka topic and
//! key. Owned by `mqtt`; `config` composes them.

use crate::bad_setting::BadSetting;
use crate::forward::config::TlsConfig;
use crate::units::duration;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// MQTT 5 where the broker speaks it, else 3.1.1.
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "5")]
    V5,
    #[serde(rename = "3.1.1")]
    V311,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Names this link in logs, `ferry status` and metrics, and keeps its
    /// redelivery records apart from other links' (default "mqtt").
    #[serde(default = "default_name")]
    pub name: String,
    /// host:port of the broker (default 127.0.0.1:1883; 8883 is usual with TLS).
    #[serde(default = "default_broker")]
    pub broker: String,
    /// Stable client id: the broker keeps ferry's session under it
    /// (default `ferry-<node_id>`, with `-<name>` for links other than "mqtt").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the password (first line); never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    #[serde(default = "default_keep_alive", with = "duration")]
    pub keep_alive: Duration,
    /// MQTT 5: how long the broker keeps the session (and queues messages)
    /// while ferry is away. 3.1.1 sessions last as the broker decides
    /// (Mosquitto: `persistent_client_expiration`).
    #[serde(default = "default_session_expiry", with = "duration")]
    pub session_expiry: Duration,
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// MQTT 5: QoS 1 messages the broker may have waiting for ferry's
    /// acknowledgement at once (3.1.1: the broker's `max_inflight_messages`).
    #[serde(default = "default_receive_maximum")]
    pub receive_maximum: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Host name the broker's certificate must carry (default: the host of `broker`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    #[serde(rename = "subscribe", default)]
    pub subscriptions: Vec<SubscriptionConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// MQTT topic filter (`+` one level, `#` the rest).
    pub filter: String,
    /// 1 (default): acknowledged after the outbox commit; 0: at most once.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Kafka topic: text with `{N}` for the N-th level of the MQTT topic
    /// (from 1) and `{topic}` for the whole MQTT topic.
    pub topic: String,
    /// Kafka key, the same way (default `{topic}`: one MQTT topic keeps its
    /// order in one partition); "" for no key.
    #[serde(default = "default_key")]
    pub key: String,
}

fn default_name() -> String {
    "mqtt".into()
}
fn default_broker() -> String {
    "127.0.0.1:1883".into()
}
fn default_protocol() -> Protocol {
    Protocol::Auto
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_session_expiry() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_receive_maximum() -> u16 {
    1000
}
fn default_qos() -> u8 {
    1
}
fn default_key() -> String {
    "{topic}".into()
}

impl SubscriptionConfig {
    pub fn spec(&self) -> super::mapping::RouteSpec<'_> {
        super::mapping::RouteSpec {
            filter: &self.filter,
            qos: self.qos,
            topic: &self.topic,
            key: &self.key,
        }
    }
}

impl MqttConfig {
    /// The mapping of every subscription.
    pub fn mapping(&self) -> Result<super::mapping::Mapping, BadSetting> {
        super::mapping::Mapping::new(self.subscriptions.iter().map(SubscriptionConfig::spec))
    }

    /// The client id the broker knows ferry's session by.
    pub fn client_id_for(&self, node_id: &str) -> String {
        match &self.client_id {
            Some(id) => id.clone(),
            None if self.name == "mqtt" => format!("ferry-{node_id}"),
            None => format!("ferry-{node_id}-{}", self.name),
        }
    }

    /// Host part of `broker` (for TLS).
    pub fn host(&self) -> &str {
        self.broker
            .rsplit_once(':')
            .map_or(self.broker.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
    }

    /// Semantic checks; the error names the key.
    pub fn check(&self) -> Result<(), BadSetting> {
        let named = |key: &str| format!("mqtt.{key}");
        let at = format!("[[mqtt]] `{}`", self.name);
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(BadSetting::at(
                named("name"),
                format!(
                    "`{}`: a link name is letters, digits, '-' and '_'",
                    self.name
                ),
            ));
        }
        if !self.broker.contains(':') {
            return Err(BadSetting::at(
                named("broker"),
                format!(
                    "{at}: `{}` is not host:port (for example \"127.0.0.1:1883\")",
                    self.broker
                ),
            ));
        }
        if self.password_file.is_some() && self.username.is_none() {
            return Err(BadSetting::at(
                named("username"),
                format!("{at}: password_file is set but username is not"),
            ));
        }
        if self.keep_alive < Duration::from_secs(5) || self.keep_alive > Duration::from_secs(3600) {
            return Err(BadSetting::at(
                named("keep_alive"),
                format!("{at}: must be between 5s and 1h"),
            ));
        }
        if self.connect_timeout < Duration::from_millis(100)
            || self.connect_timeout > Duration::from_secs(600)
        {
            return Err(BadSetting::at(
                named("connect_timeout"),
                format!("{at}: must be between 100ms and 10m"),
            ));
        }
        if self.receive_maximum == 0 {
            return Err(BadSetting::at(
                named("receive_maximum"),
                format!("{at}: must be at least 1"),
            ));
        }
        if let Some(t) = &self.tls {
            crate::forward::security::tls_config_in(t, "mqtt.tls")
                .map_err(|e| BadSetting::at(named("tls.ca_file"), format!("{at}: {e}")))?;
        }
        if self.subscriptions.is_empty() {
            return Err(BadSetting::at(
                named("subscribe"),
                format!("{at} subscribes to nothing: add [[mqtt.subscribe]] with filter and topic"),
            ));
        }
        for s in &self.subscriptions {
            if s.qos > 1 {
                return Err(BadSetting::at(
                    named("subscribe.qos"),
                    format!(
                        "{at}, filter `{}`: qos {} is not offered: 1 (acknowledged after the outbox commit) or 0",
                        s.filter, s.qos
                    ),
                ));
            }
            super::mapping::Route::new(s.spec()).map_err(|e| {
                BadSetting::at(
                    named(&format!("subscribe.{}", e.key)),
                    format!("{at}: {}", e.message),
                )
            })?;
        }
        Ok(())
    }
}

/// Check every link, and that names and client ids are unique.
pub fn check_all(links: &[MqttConfig], node_id: &str) -> Result<(), BadSetting> {
    for (i, l) in links.iter().enumerate() {
        l.check()?;
        if links[..i].iter().any(|o| o.name == l.name) {
            return Err(BadSetting::at(
                "mqtt.name".into(),
                format!(
                    "two [[mqtt]] entries are named `{}`: give each its own name",
                    l.name
                ),
            ));
        }
        let id = l.client_id_for(node_id);
        if links[..i]
            .iter()
            .any(|o| o.broker == l.broker && o.client_id_for(node_id) == id)
        {
            return Err(BadSetting::at(
                "mqtt.client_id".into(),
                format!(
                    "two [[mqtt]] entries use client id `{id}` on {}: the broker would throw one out for the other",
                    l.broker
                ),
            ));
        }
    }
    Ok(())
}
