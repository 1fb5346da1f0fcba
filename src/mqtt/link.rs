//! One `[[mqtt]]` link: connect and log in with a stable client id and a
//! persistent session, subscribe, and carry messages into the outbox.
//! A QoS 1 message is acknowledged (PUBACK) only after the commit that
//! stored it, in the order messages arrived; a redelivery of a message
//! already stored is recognised by its mark and acknowledged, not stored
//! again (see `outbox::mqtt_marks`).
//!
//! Any failure to store ends the connection without further
//! acknowledgements (see `session`), so the broker keeps (and later
//! redelivers) every message not yet stored; the link waits with the
//! shared jittered backoff and connects again.

use super::codec;
use super::config::MqttConfig;
use super::connect::{Connected, connect, initial_level};
use super::session::Session;
use super::state::{End, LinkState, Watched};
use crate::backoff::{Backoff, RetryConfig};
use crate::bad_setting::BadSetting;
use crate::ingest::Context;
use crate::log_limit::LogLimiter;
use crate::shutdown::Shutdown;
use crate::stats::MqttLinkStats;
use log::{error, info, warn};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// A broker that refused ferry's login is asked again at most this often.
const AUTH_RETRY_MIN: Duration = Duration::from_secs(10);

pub struct Link {
    state: LinkState,
    retry: RetryConfig,
    connected_once: bool,
}

impl Link {
    pub fn new(
        config: Arc<MqttConfig>,
        retry: RetryConfig,
        ctx: Arc<Context>,
        stats: Arc<MqttLinkStats>,
    ) -> Result<Link, BadSetting> {
        // The config check refuses these before a link is made (a
        // reload's new config too); the key is named in full all the same.
        let mapping = config
            .mapping()
            .map_err(|e| BadSetting::at(format!("mqtt.subscribe.{}", e.key), e.message))?;
        Ok(Link {
            state: LinkState {
                level: initial_level(config.protocol),
                config,
                mapping,
                retired: None,
                ctx,
                stats,
                marks: HashMap::new(),
                subscribed: None,
                unsubscribe: Vec::new(),
                limiter: LogLimiter::new(Duration::from_secs(60)),
            },
            retry,
            connected_once: false,
        })
    }

    fn name(&self) -> &str {
        &self.state.config.name
    }

    /// Connect, carry messages, and connect again after any failure, until
    /// shutdown or the link's removal.
    pub async fn run(mut self, mut watched: Watched, mut shutdown: Shutdown) {
        match self.state.ctx.outbox.mqtt_marks(self.name()).await {
            Ok(marks) => self.state.marks = marks.into_iter().collect(),
            Err(e) => {
                error!(
                    "MQTT link {}: cannot read its redelivery marks from the outbox: {e}; not connecting",
                    self.name()
                );
                return;
            }
        }
        let seed = crate::backoff::seed_from_environment(&self.state.ctx.node_id);
        let mut backoff = Backoff::new(&self.retry, seed);
        let mut was_up = false;
        loop {
            if shutdown.is_shutdown() {
                return;
            }
            let client_id = self.state.config.client_id_for(&self.state.ctx.node_id);
            let config = self.state.config.clone();
            // A broker that stalls the handshake holds up neither a stop
            // nor a reload.
            let connected = tokio::select! {
                c = connect(&config, &client_id, &mut self.state.level, false) => c,
                _ = shutdown.recv() => return,
                r = watched.changed() => {
                    if r.is_err() || !self.apply_config(&watched) {
                        return;
                    }
                    continue;
                }
            };
            let end = match connected {
                Ok(c) => {
                    self.state.stats.connects.fetch_add(1, Relaxed);
                    self.state.stats.set_error(None);
                    self.on_connected(c.session_present).await;
                    was_up = true;
                    let keep_alive = match c.server_keep_alive {
                        Some(s) if s > 0 => config.keep_alive.min(Duration::from_secs(s as u64)),
                        _ => config.keep_alive,
                    };
                    let began = std::time::Instant::now();
                    let (end, stored) = self
                        .session(c, keep_alive, &mut watched, &mut shutdown)
                        .await;
                    let progressed = stored || began.elapsed() >= keep_alive;
                    self.state.stats.connected.store(false, Relaxed);
                    // Only a connection that carried something resets the
                    // backoff: one that fails at once (a full outbox, a
                    // broker that throws ferry out) must not loop fast.
                    if progressed {
                        backoff.reset();
                    }
                    (end, progressed)
                }
                Err(e) => {
                    self.state.stats.set_error(Some(e.message.clone()));
                    if was_up || e.auth {
                        // The first failure after being up, and a refused
                        // login, are always logged; the rest rate-limited.
                        error!("{}", e.message);
                    } else {
                        self.state.limiter.warn(&e.message);
                    }
                    was_up = false;
                    let mut delay = backoff.next_delay();
                    if e.auth {
                        delay = delay.max(AUTH_RETRY_MIN);
                    }
                    if self.pause(delay, &mut watched, &mut shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            let (end, progressed) = end;
            match end {
                End::Shutdown => return,
                End::Reconfigure => {
                    if !self.apply_config(&watched) {
                        info!(
                            "MQTT link {}: removed from the config, stopped",
                            self.name()
                        );
                        return;
                    }
                }
                End::Failed(why) => {
                    let msg = format!(
                        "MQTT link {} to {}: connection lost: {why}; connecting again",
                        self.name(),
                        self.state.config.broker
                    );
                    // Once per loss after a working connection; a link that
                    // fails again at once is logged rate-limited.
                    if progressed {
                        warn!("{msg}");
                    } else {
                        self.state.limiter.warn(&msg);
                    }
                    self.state.stats.set_error(Some(why.to_string()));
                    if self
                        .pause(backoff.next_delay(), &mut watched, &mut shutdown)
                        .await
                    {
                        return;
                    }
                }
                End::Store(e) => {
                    self.state.limiter.warn(&format!(
                        "MQTT link {}: messages not stored ({e}); not acknowledged, so the broker keeps them; connecting again after a pause",
                        self.name()
                    ));
                    self.state.stats.set_error(Some(e.to_string()));
                    if self
                        .pause(backoff.next_delay(), &mut watched, &mut shutdown)
                        .await
                    {
                        return;
                    }
                }
            }
        }
    }

    /// Wait `delay` (a config change ends the wait); true if ferry stops.
    async fn pause(
        &mut self,
        delay: Duration,
        watched: &mut Watched,
        shutdown: &mut Shutdown,
    ) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = shutdown.recv() => true,
            r = watched.changed() => r.is_err() || !self.apply_config(watched),
        }
    }

    /// Take the watched config; false if the link was removed.
    fn apply_config(&mut self, watched: &Watched) -> bool {
        let Some(new) = watched.borrow().clone() else {
            return false;
        };
        if *new == *self.state.config {
            return true;
        }
        match new.mapping() {
            Ok(mapping) => {
                let old: Vec<&str> = self
                    .state
                    .config
                    .subscriptions
                    .iter()
                    .map(|s| s.filter.as_str())
                    .collect();
                for f in old {
                    if !new.subscriptions.iter().any(|s| s.filter == f) {
                        self.state.unsubscribe.push(f.to_string());
                    }
                }
                if new.protocol != self.state.config.protocol {
                    self.state.level = initial_level(new.protocol);
                }
                self.state.retired = Some(std::mem::replace(&mut self.state.mapping, mapping));
                self.state.config = new;
                self.state.subscribed = None;
                info!("MQTT link {}: new config applied", self.name());
            }
            Err(e) => error!(
                "MQTT link {}: reloaded subscription refused (mqtt.subscribe.{}: {}); the running one stays",
                self.name(),
                e.key,
                e.message
            ),
        }
        true
    }

    async fn on_connected(&mut self, session_present: bool) {
        info!(
            "MQTT link {}: connected to {} as {} (MQTT {}, session {})",
            self.name(),
            self.state.config.broker,
            self.state.config.client_id_for(&self.state.ctx.node_id),
            if self.state.level >= codec::LEVEL_5 {
                "5"
            } else {
                "3.1.1"
            },
            if session_present { "resumed" } else { "new" }
        );
        if !session_present {
            if self.connected_once || !self.state.marks.is_empty() {
                warn!(
                    "MQTT link {}: the broker {} had no session for client id {}: QoS 1 messages published while ferry was away were not kept by it (Mosquitto: `persistence true`, `persistent_client_expiration`; MQTT 5: mqtt.session_expiry)",
                    self.name(),
                    self.state.config.broker,
                    self.state.config.client_id_for(&self.state.ctx.node_id)
                );
            }
            // The broker's packet ids start afresh: old marks mean nothing.
            // Awaited, so the clear is done before this session's first
            // commit stores new marks.
            self.state.marks.clear();
            if let Err(e) = self.state.ctx.outbox.mqtt_clear(self.name()).await {
                warn!(
                    "MQTT link {}: cannot clear old redelivery marks: {e}",
                    self.name()
                );
            }
            self.state.subscribed = None;
        }
        self.connected_once = true;
    }

    /// Subscribe (if this connection needs it) and carry messages until
    /// the connection ends.
    /// Also whether the connection stored anything.
    async fn session(
        &mut self,
        c: Connected,
        keep_alive: Duration,
        watched: &mut Watched,
        shutdown: &mut Shutdown,
    ) -> (End, bool) {
        let Connected {
            mut stream,
            session_present,
            early,
            ..
        } = c;
        let marks = std::mem::take(&mut self.state.marks);
        let mut s = Session::new(&self.state, marks, session_present, keep_alive, early);
        let end = s.run(&mut stream, watched, shutdown).await;
        let Session {
            marks,
            subscribed,
            unsubscribed,
            progressed,
            ..
        } = s;
        self.state.marks = marks;
        if subscribed {
            self.state.subscribed = Some(self.state.wanted());
        }
        if unsubscribed {
            self.state.unsubscribe.clear();
        }
        (end, progressed)
    }
}
