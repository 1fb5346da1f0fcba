//! MQTT ingest: ferry subscribes to local MQTT brokers (`[[mqtt]]`) and
//! stores their messages in the outbox like any other event, QoS 1
//! acknowledged only after the commit, in arrival order, redeliveries
//! recognised (see `link`).
//!
//! ferry speaks MQTT itself on a small hand-written codec rather than
//! through rumqttc: ordered acknowledgements after a commit, nothing
//! acknowledged on a dropped connection, redeliveries matched to stored
//! marks and the session's state are exactly the parts that client hides
//! or gets wrong for this use (README, "MQTT ingest").
//!
//! ```text
//! mod       Links: one task per link, reloads added, changed and removed links
//!   link      one link: connect again after failures, reloads, session marks
//!     session   one connection: subscribe, store each read, acknowledge in order
//!       session/inbound  a read's packets decoded, mapped and stored
//!       state     what a link keeps across connections; why one ended; the digest
//!       session_error  why a connection was given up
//!     connect   TCP/TLS, CONNECT and CONNACK; check-config --connect
//!     mapping   topic filters and the Kafka topic and key templates
//!     codec     MQTT 3.1.1 and 5 packets from the broker (pure)
//!     encode    the packets ferry sends (pure)
//!     config    the [[mqtt]] entries
//! ```

pub mod codec;
pub mod config;
pub mod connect;
pub mod encode;
pub mod link;
pub mod mapping;
mod session;
mod session_error;
mod state;

pub use state::digest;

use crate::backoff::RetryConfig;
use crate::ingest::Context;
use crate::shutdown::Shutdown;
use crate::stats::MqttLinkStats;
use config::MqttConfig;
use log::{error, info};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

/// The running links, by name.
pub struct Links {
    links: HashMap<String, watch::Sender<Option<Arc<MqttConfig>>>>,
    retry: RetryConfig,
    ctx: Arc<Context>,
    shutdown: Shutdown,
}

impl Links {
    /// Start one task per configured link.
    pub fn start(
        configs: &[MqttConfig],
        retry: &RetryConfig,
        ctx: Arc<Context>,
        shutdown: &Shutdown,
    ) -> Links {
        let mut links = Links {
            links: HashMap::new(),
            retry: retry.clone(),
            ctx,
            shutdown: shutdown.clone(),
        };
        for c in configs {
            links.spawn(c);
        }
        links
    }

    fn spawn(&mut self, config: &MqttConfig) {
        let config = Arc::new(config.clone());
        let stats = self.stats_for(&config);
        match link::Link::new(config.clone(), self.retry.clone(), self.ctx.clone(), stats) {
            Ok(link) => {
                let (tx, rx) = watch::channel(Some(config.clone()));
                tokio::spawn(link.run(rx, self.shutdown.clone()));
                self.links.insert(config.name.clone(), tx);
            }
            Err(e) => error!("MQTT link {} not started: {e}", config.name),
        }
    }

    /// The link's counters, kept across a reload.
    fn stats_for(&self, config: &MqttConfig) -> Arc<MqttLinkStats> {
        let Ok(mut all) = self.ctx.stats.mqtt.lock() else {
            return Arc::default();
        };
        if let Some(s) = all.iter().find(|s| s.name == config.name) {
            return s.clone();
        }
        let s = Arc::new(MqttLinkStats {
            name: config.name.clone(),
            broker: config.broker.clone(),
            ..Default::default()
        });
        all.push(s.clone());
        s
    }

    /// A reloaded config: changed links finish what they have in flight
    /// and connect again with the new settings (a subscription removed is
    /// unsubscribed); new links start; removed ones stop.
    pub fn reload(&mut self, configs: &[MqttConfig]) {
        self.links.retain(|name, tx| {
            let keep = configs.iter().any(|c| &c.name == name);
            if !keep {
                info!("MQTT link {name}: removed by the reload; stopping it (its session stays with the broker until it expires)");
                let _ = tx.send(None);
            }
            keep
        });
        for c in configs {
            match self.links.get(&c.name) {
                Some(tx) => {
                    if tx.borrow().as_deref() != Some(c) {
                        let _ = tx.send(Some(Arc::new(c.clone())));
                    }
                }
                None => self.spawn(c),
            }
        }
        if let Ok(mut all) = self.ctx.stats.mqtt.lock() {
            all.retain(|s| configs.iter().any(|c| c.name == s.name));
        }
    }
}
