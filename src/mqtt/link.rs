//! One `[[mqtt]]` link: connect and log in with a stable client id and a
//! persistent session, subscribe, and carry messages into the outbox.
//! A QoS 1 message is acknowledged (PUBACK) only after the commit that
//! stored it, in the order messages arrived; a redelivery of a message
//! already stored is recognised by its mark and acknowledged, not stored
//! again (see `outbox::mqtt_marks`).
//!
//! Each read of the socket becomes one batch of the group commit; up to
//! [`Appender::DEPTH`] batches wait for their commit while the next read
//! is decoded. Any failure to store ends the connection without further
//! acknowledgements, so the broker keeps (and later redelivers) every
//! message not yet stored; the link waits with the shared jittered
//! backoff and connects again.

use super::codec::{self, Check, Incoming, Property, Publish};
use super::config::{MqttConfig, Protocol};
use super::mapping::{Mapping, Unroutable};
use crate::backoff::{Backoff, RetryConfig};
use crate::clock::Reading;
use crate::event::Event;
use crate::ingest::Context;
use crate::log_limit::LogLimiter;
use crate::outbox::mqtt_marks::{LinkMarks, Mark};
use crate::outbox::{Appender, StoreError};
use crate::shutdown::Shutdown;
use crate::stats::MqttLinkStats;
use log::{error, info, warn};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// Read this much at a time at first.
const READ_CHUNK: usize = 64 * 1024;
/// Room for the topic, properties and framing around an event's payload.
const PACKET_OVERHEAD: usize = 70 * 1024;
/// Acknowledged marks are confirmed (a PINGREQ after them) at most this often.
const CONFIRM_EVERY: Duration = Duration::from_millis(250);
/// A broker that refused ferry's login is asked again at most this often.
const AUTH_RETRY_MIN: Duration = Duration::from_secs(10);

/// A connection, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Stream = Box<dyn Io>;

/// Why a session ended.
#[derive(Debug)]
enum End {
    /// ferry is stopping: everything read was stored and acknowledged.
    Shutdown,
    /// The link's config changed: reconnect with the new one.
    Reconfigure,
    /// The connection failed or the broker misbehaved; retry after a pause.
    Failed(String),
    /// Storing failed (outbox full under `reject`, disk): no more acks on
    /// this connection; retry after a pause.
    Store(StoreError),
}

/// Why connecting failed.
struct ConnectError {
    message: String,
    /// The broker refused the login: no retry helps until the operator acts.
    auth: bool,
}

/// The config a link runs with; `None` once the link was removed.
pub type Watched = watch::Receiver<Option<Arc<MqttConfig>>>;

pub struct Link {
    config: Arc<MqttConfig>,
    mapping: Mapping,
    retry: RetryConfig,
    ctx: Arc<Context>,
    stats: Arc<MqttLinkStats>,
    /// Packet id → digest of messages stored whose PUBACK the broker may
    /// not have seen (loaded from the outbox at start).
    marks: HashMap<u16, u64>,
    /// Protocol level in use; `Protocol::Auto` falls back to 3.1.1 once.
    level: u8,
    /// Filters subscribed in this process (a changed config subscribes again).
    subscribed: Option<Vec<(String, u8)>>,
    /// Filters of an earlier config to unsubscribe on the next connection.
    unsubscribe: Vec<String>,
    limiter: LogLimiter,
    connected_once: bool,
}

/// What one read's messages need once their batch is committed.
#[derive(Default)]
struct Batch {
    /// (packet id, reason code), in arrival order.
    acks: Vec<(u16, u8)>,
    /// Marks of the QoS 1 messages stored by this batch.
    marks: Vec<Mark>,
    /// `None` while the batch awaits its commit.
    outcome: Option<Result<(), StoreError>>,
}

/// A 64-bit digest of a message: CRC-32C over topic, properties and
/// payload, and the payload's length.
pub fn digest(p: &Publish<'_>) -> u64 {
    let mut crc = crc32c::crc32c(p.topic.as_bytes());
    crc = crc32c::crc32c_append(crc, p.properties);
    crc = crc32c::crc32c_append(crc, p.payload);
    ((crc as u64) << 32) | (p.payload.len() as u32 as u64)
}

impl Link {
    pub fn new(
        config: Arc<MqttConfig>,
        retry: RetryConfig,
        ctx: Arc<Context>,
        stats: Arc<MqttLinkStats>,
    ) -> Result<Link, String> {
        let mapping = config
            .mapping()
            .map_err(|(k, e)| format!("mqtt.subscribe.{k}: {e}"))?;
        Ok(Link {
            level: initial_level(config.protocol),
            config,
            mapping,
            retry,
            ctx,
            stats,
            marks: HashMap::new(),
            subscribed: None,
            unsubscribe: Vec::new(),
            limiter: LogLimiter::new(Duration::from_secs(60)),
            connected_once: false,
        })
    }

    fn name(&self) -> &str {
        &self.config.name
    }

    /// Connect, carry messages, and connect again after any failure, until
    /// shutdown or the link's removal.
    pub async fn run(mut self, mut watched: Watched, mut shutdown: Shutdown) {
        match self.ctx.outbox.mqtt_marks(self.name()).await {
            Ok(marks) => self.marks = marks.into_iter().collect(),
            Err(e) => {
                error!(
                    "MQTT link {}: cannot read its redelivery marks from the outbox: {e}; not connecting",
                    self.name()
                );
                return;
            }
        }
        let seed = crate::backoff::seed_from_environment(&self.ctx.node_id);
        let mut backoff = Backoff::new(&self.retry, seed);
        let mut was_up = false;
        loop {
            if shutdown.is_shutdown() {
                return;
            }
            let end = match self.connect().await {
                Ok((stream, session_present, early)) => {
                    self.stats.connected.store(true, Relaxed);
                    self.stats.connects.fetch_add(1, Relaxed);
                    self.stats.set_error(None);
                    backoff.reset();
                    self.on_connected(session_present, was_up).await;
                    was_up = true;
                    let end = self
                        .session(stream, early, &mut watched, &mut shutdown)
                        .await;
                    self.stats.connected.store(false, Relaxed);
                    end
                }
                Err(e) => {
                    self.stats.set_error(Some(e.message.clone()));
                    if was_up || e.auth {
                        // The first failure after being up, and a refused
                        // login, are always logged; the rest rate-limited.
                        error!("{}", e.message);
                    } else {
                        self.limiter.warn(&e.message);
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
                    warn!(
                        "MQTT link {} to {}: connection lost: {why}; connecting again",
                        self.name(),
                        self.config.broker
                    );
                    self.stats.set_error(Some(why));
                    if self
                        .pause(backoff.next_delay(), &mut watched, &mut shutdown)
                        .await
                    {
                        return;
                    }
                }
                End::Store(e) => {
                    self.limiter.warn(&format!(
                        "MQTT link {}: messages not stored ({e}); not acknowledged, so the broker keeps them; connecting again after a pause",
                        self.name()
                    ));
                    self.stats.set_error(Some(e.to_string()));
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
        if *new == *self.config {
            return true;
        }
        match new.mapping() {
            Ok(mapping) => {
                let old: Vec<&str> = self
                    .config
                    .subscriptions
                    .iter()
                    .map(|s| s.filter.as_str())
                    .collect();
                for f in old {
                    if !new.subscriptions.iter().any(|s| s.filter == f) {
                        self.unsubscribe.push(f.to_string());
                    }
                }
                if new.protocol != self.config.protocol {
                    self.level = initial_level(new.protocol);
                }
                self.mapping = mapping;
                self.config = new;
                self.subscribed = None;
                info!("MQTT link {}: new config applied", self.name());
            }
            Err((k, e)) => error!(
                "MQTT link {}: reloaded subscription refused (mqtt.subscribe.{k}: {e}); the running one stays",
                self.name()
            ),
        }
        true
    }

    async fn on_connected(&mut self, session_present: bool, _was_up: bool) {
        info!(
            "MQTT link {}: connected to {} as {} (MQTT {}, session {})",
            self.name(),
            self.config.broker,
            self.config.client_id_for(&self.ctx.node_id),
            if self.level >= codec::LEVEL_5 {
                "5"
            } else {
                "3.1.1"
            },
            if session_present { "resumed" } else { "new" }
        );
        if !session_present {
            if self.connected_once || !self.marks.is_empty() {
                warn!(
                    "MQTT link {}: the broker {} had no session for client id {}: QoS 1 messages published while ferry was away were not kept by it (Mosquitto: `persistence true`, `persistent_client_expiration`; MQTT 5: mqtt.session_expiry)",
                    self.name(),
                    self.config.broker,
                    self.config.client_id_for(&self.ctx.node_id)
                );
            }
            // The broker's packet ids start afresh: old marks mean nothing.
            if !self.marks.is_empty() {
                self.marks.clear();
                self.ctx.outbox.mqtt_clear(self.name()).await;
            }
            self.subscribed = None;
        }
        self.connected_once = true;
    }

    /// TCP (and TLS), CONNECT and its CONNACK.
    /// Also any bytes that came behind the CONNACK (a resumed session's
    /// messages may).
    async fn connect(&mut self) -> Result<(Stream, bool, Vec<u8>), ConnectError> {
        loop {
            let fail = |message: String| ConnectError {
                message,
                auth: false,
            };
            let c = self.config.clone();
            let name = &c.name;
            let timeout = c.connect_timeout;
            let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&c.broker))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return Err(fail(format!(
                        "MQTT link {name}: cannot connect to {}: {e}",
                        c.broker
                    )));
                }
                Err(_) => {
                    return Err(fail(format!(
                        "MQTT link {name}: no connection to {} within {timeout:?} (mqtt.connect_timeout)",
                        c.broker
                    )));
                }
            };
            let _ = tcp.set_nodelay(true);
            let mut stream: Stream = match &c.tls {
                None => Box::new(tcp),
                Some(t) => {
                    let tls = crate::forward::security::tls_config_in(t, "mqtt.tls")
                        .map_err(|e| fail(format!("MQTT link {name}: {e}")))?;
                    let host = c.tls_server_name.as_deref().unwrap_or(c.host()).to_string();
                    let server = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| {
                        fail(format!(
                            "MQTT link {name}: `{host}` is no TLS server name ({e}); set mqtt.tls_server_name"
                        ))
                    })?;
                    let connector = tokio_rustls::TlsConnector::from(tls);
                    match tokio::time::timeout(timeout, connector.connect(server, tcp)).await {
                        Ok(Ok(s)) => Box::new(s),
                        Ok(Err(e)) => {
                            return Err(fail(format!(
                                "MQTT link {name}: TLS with {} failed: {e}",
                                c.broker
                            )));
                        }
                        Err(_) => {
                            return Err(fail(format!(
                                "MQTT link {name}: TLS with {} did not finish within {timeout:?}",
                                c.broker
                            )));
                        }
                    }
                }
            };
            let password = match &c.password_file {
                None => None,
                Some(file) => {
                    Some(read_password(file).map_err(|e| fail(format!("MQTT link {name}: {e}")))?)
                }
            };
            let client_id = c.client_id_for(&self.ctx.node_id);
            let mut out = Vec::with_capacity(128);
            codec::Connect {
                level: self.level,
                client_id: &client_id,
                clean_start: false,
                keep_alive_s: c.keep_alive.as_secs().min(u16::MAX as u64) as u16,
                username: c.username.as_deref(),
                password: password.as_deref(),
                session_expiry_s: c.session_expiry.as_secs().min(u32::MAX as u64) as u32,
                receive_maximum: c.receive_maximum,
            }
            .encode_into(&mut out);
            let answer = tokio::time::timeout(timeout, async {
                stream.write_all(&out).await?;
                let mut buf = Vec::with_capacity(256);
                loop {
                    if let Ok(Check::Complete { body_start, total }) = codec::check(&buf) {
                        return Ok::<_, std::io::Error>(Some((buf, body_start, total)));
                    }
                    if buf.len() > 64 * 1024 || stream.read_buf(&mut buf).await? == 0 {
                        return Ok(None);
                    }
                }
            })
            .await;
            let (mut buf, body_start, total) = match answer {
                Ok(Ok(Some(a))) => a,
                Ok(Ok(None)) => {
                    if self.level >= codec::LEVEL_5 && c.protocol == Protocol::Auto {
                        // Some 3.1.1 brokers just close on a level they do not know.
                        self.level = codec::LEVEL_3_1_1;
                        continue;
                    }
                    return Err(fail(format!(
                        "MQTT link {name}: {} closed the connection before answering CONNECT",
                        c.broker
                    )));
                }
                Ok(Err(e)) => {
                    return Err(fail(format!(
                        "MQTT link {name}: connecting to {} failed: {e}",
                        c.broker
                    )));
                }
                Err(_) => {
                    return Err(fail(format!(
                        "MQTT link {name}: {} did not answer CONNECT within {timeout:?}",
                        c.broker
                    )));
                }
            };
            match codec::decode(&buf[..total], body_start, self.level) {
                Ok(Incoming::ConnAck {
                    session_present,
                    code: 0,
                    ..
                }) => {
                    buf.drain(..total);
                    return Ok((stream, session_present, buf));
                }
                Ok(Incoming::ConnAck { code, reason, .. }) => {
                    if self.level >= codec::LEVEL_5
                        && c.protocol == Protocol::Auto
                        && (code == 0x84 || code == 0x01)
                    {
                        self.level = codec::LEVEL_3_1_1;
                        continue;
                    }
                    let meaning = codec::connack_meaning(self.level, code);
                    let auth = codec::is_auth_refusal(self.level, code);
                    let hint = if auth {
                        format!(
                            "; check mqtt.username (`{}`) and mqtt.password_file ({}) against the broker's users and ACL",
                            c.username.as_deref().unwrap_or(""),
                            c.password_file
                                .as_ref()
                                .map_or("not set".into(), |p| p.display().to_string())
                        )
                    } else {
                        String::new()
                    };
                    return Err(ConnectError {
                        message: format!(
                            "MQTT link {name}: {} refused the connection: {meaning} (code 0x{code:02x}{}){hint}",
                            c.broker,
                            reason.map(|r| format!(", \"{r}\"")).unwrap_or_default()
                        ),
                        auth,
                    });
                }
                Ok(other) => {
                    return Err(fail(format!(
                        "MQTT link {name}: {} answered CONNECT with {other:?}, not CONNACK",
                        c.broker
                    )));
                }
                Err(e) => {
                    return Err(fail(format!(
                        "MQTT link {name}: {} sent a malformed CONNACK: {e}",
                        c.broker
                    )));
                }
            }
        }
    }

    /// Subscribe (if this connection needs it) and carry messages until
    /// the connection ends.
    async fn session(
        &mut self,
        mut stream: Stream,
        early: Vec<u8>,
        watched: &mut Watched,
        shutdown: &mut Shutdown,
    ) -> End {
        let mut s = Session::new(self, early);
        let end = s.run(&mut stream, watched, shutdown).await;
        let Session {
            marks_stored,
            confirmed,
            subscribed,
            unsubscribed,
            ..
        } = s;
        if subscribed {
            self.subscribed = Some(self.wanted());
        }
        if unsubscribed {
            self.unsubscribe.clear();
        }
        for (id, digest) in marks_stored {
            self.marks.insert(id, digest);
        }
        if !confirmed.is_empty() {
            for (id, digest) in &confirmed {
                if self.marks.get(id) == Some(digest) {
                    self.marks.remove(id);
                }
            }
            self.ctx.outbox.mqtt_forget(self.name(), confirmed).await;
        }
        end
    }
}

impl Link {
    /// The filters (and QoS) the config asks for.
    fn wanted(&self) -> Vec<(String, u8)> {
        self.config
            .subscriptions
            .iter()
            .map(|s| (s.filter.clone(), s.qos))
            .collect()
    }
}

fn initial_level(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::V311 => codec::LEVEL_3_1_1,
        Protocol::Auto | Protocol::V5 => codec::LEVEL_5,
    }
}

/// The password: the file's first line.
pub fn read_password(file: &std::path::Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        format!(
            "cannot read the password file {} (mqtt.password_file): {e}",
            file.display()
        )
    })?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(format!(
            "the password file {} (mqtt.password_file) is empty",
            file.display()
        ));
    }
    Ok(line.as_bytes().to_vec())
}

/// One connection's state.
struct Session<'l> {
    link: &'l Link,
    buf: Vec<u8>,
    out: Vec<u8>,
    unanswered: VecDeque<Batch>,
    appender: Appender,
    /// Bytes of an oversized packet still to be discarded.
    skip: usize,
    /// Marks of committed batches (moved into the link's marks at the end).
    marks_stored: Vec<Mark>,
    /// Marks acknowledged since the last confirmation ping.
    unconfirmed: Vec<Mark>,
    /// Marks a PINGREQ in flight will confirm.
    confirming: Option<Vec<Mark>>,
    /// Marks the broker has seen acknowledged.
    confirmed: Vec<Mark>,
    ping_sent: Option<Instant>,
    last_confirm: Instant,
    /// Scratch buffers for each message: Kafka topic, key, headers.
    topic: String,
    key: String,
    headers: Vec<u8>,
    max_packet: usize,
    next_packet_id: u16,
    /// Packet ids of this connection's SUBSCRIBE and UNSUBSCRIBE.
    subscribe_id: Option<u16>,
    unsubscribe_id: Option<u16>,
    /// The broker granted the subscription / confirmed the unsubscription.
    subscribed: bool,
    unsubscribed: bool,
}

impl<'l> Session<'l> {
    fn new(link: &'l Link, early: Vec<u8>) -> Self {
        let mut buf = early;
        buf.reserve(READ_CHUNK);
        Session {
            link,
            buf,
            out: Vec::with_capacity(256),
            unanswered: VecDeque::with_capacity(Appender::DEPTH + 1),
            appender: Appender::new(&link.ctx.outbox),
            skip: 0,
            marks_stored: Vec::new(),
            unconfirmed: Vec::new(),
            confirming: None,
            confirmed: Vec::new(),
            ping_sent: None,
            last_confirm: Instant::now(),
            topic: String::new(),
            key: String::new(),
            headers: Vec::new(),
            max_packet: link.ctx.max_event_bytes + PACKET_OVERHEAD,
            next_packet_id: 1,
            subscribe_id: None,
            unsubscribe_id: None,
            subscribed: false,
            unsubscribed: false,
        }
    }

    fn name(&self) -> &str {
        &self.link.config.name
    }

    fn level(&self) -> u8 {
        self.link.level
    }

    async fn run(
        &mut self,
        stream: &mut Stream,
        watched: &mut Watched,
        shutdown: &mut Shutdown,
    ) -> End {
        if let Err(e) = self.subscribe(stream).await {
            return End::Failed(e);
        }
        let keep_alive = self.link.config.keep_alive;
        let mut tick = tokio::time::interval(keep_alive / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut closing: Option<End> = None;
        // Messages that came right behind the CONNACK.
        if !self.buf.is_empty()
            && let Err(e) = self.take_packets().await
        {
            self.drain().await;
            return End::Failed(e);
        }
        loop {
            // Acknowledge, in order, every batch whose commit is done.
            while self.unanswered.front().is_some_and(|b| b.outcome.is_some()) {
                let Some(done) = self.unanswered.pop_front() else {
                    break;
                };
                match done.outcome {
                    Some(Err(e)) => {
                        // No acknowledgement may follow a message not
                        // stored; learn which later batches were stored.
                        self.drain().await;
                        return End::Store(e);
                    }
                    _ => {
                        if let Err(e) = self.acknowledge(stream, done).await {
                            self.drain().await;
                            return End::Failed(e);
                        }
                    }
                }
            }
            if let Some(end) = closing.take() {
                if self.unanswered.is_empty() {
                    if matches!(end, End::Shutdown | End::Reconfigure) {
                        self.out.clear();
                        codec::encode_disconnect(&mut self.out);
                        let _ = stream.write_all(&self.out).await;
                        let _ = stream.shutdown().await;
                    }
                    return end;
                }
                let result = self.appender.answer().await;
                self.settle(result);
                closing = Some(end);
                continue;
            }
            if let Err(e) = self.confirm(stream, false).await {
                self.drain().await;
                return End::Failed(e);
            }
            if self.unanswered.len() >= Appender::DEPTH {
                let result = self.appender.answer().await;
                self.settle(result);
                continue;
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            let waiting = self.unanswered.iter().any(|b| b.outcome.is_none());
            let n = tokio::select! {
                r = stream.read_buf(&mut self.buf) => match r {
                    Ok(0) => {
                        self.drain().await;
                        return End::Failed(format!("{} closed the connection", self.link.config.broker));
                    }
                    Ok(n) => n,
                    Err(e) => {
                        self.drain().await;
                        return End::Failed(format!("read from {} failed: {e}", self.link.config.broker));
                    }
                },
                result = self.appender.answer(), if waiting => {
                    self.settle(result);
                    continue;
                }
                _ = tick.tick() => {
                    if let Some(sent) = self.ping_sent
                        && sent.elapsed() > keep_alive
                    {
                        self.drain().await;
                        return End::Failed(format!("no answer to PINGREQ within {keep_alive:?} (mqtt.keep_alive)"));
                    }
                    if let Err(e) = self.confirm(stream, true).await {
                        self.drain().await;
                        return End::Failed(e);
                    }
                    continue;
                }
                r = watched.changed(), if closing.is_none() => {
                    if r.is_err() {
                        // The daemon is going away.
                        closing = Some(End::Shutdown);
                    } else if watched.borrow().as_deref() != Some(&*self.link.config) {
                        closing = Some(End::Reconfigure);
                    }
                    continue;
                }
                _ = shutdown.recv() => {
                    closing = Some(End::Shutdown);
                    continue;
                }
            };
            let _ = n;
            match self.take_packets().await {
                Ok(()) => {}
                Err(e) => {
                    self.drain().await;
                    return End::Failed(e);
                }
            }
        }
    }

    /// SUBSCRIBE to every filter unless this session already has them, and
    /// UNSUBSCRIBE filters a reload removed. Their answers come in the loop.
    async fn subscribe(&mut self, stream: &mut Stream) -> Result<(), String> {
        self.out.clear();
        let level = self.level();
        if !self.link.unsubscribe.is_empty() {
            let filters: Vec<&str> = self.link.unsubscribe.iter().map(String::as_str).collect();
            let id = self.packet_id();
            self.unsubscribe_id = Some(id);
            codec::encode_unsubscribe(&mut self.out, level, id, &filters);
        }
        let wanted = self.link.wanted();
        if self.link.subscribed.as_ref() != Some(&wanted) {
            let filters: Vec<(&str, u8)> = wanted.iter().map(|(f, q)| (f.as_str(), *q)).collect();
            let id = self.packet_id();
            self.subscribe_id = Some(id);
            codec::encode_subscribe(&mut self.out, level, id, &filters);
        }
        if self.out.is_empty() {
            return Ok(());
        }
        stream
            .write_all(&self.out)
            .await
            .map_err(|e| format!("cannot subscribe: {e}"))
    }

    fn packet_id(&mut self) -> u16 {
        let id = self.next_packet_id;
        self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
        id
    }

    /// The oldest batch awaiting its commit has its answer.
    fn settle(&mut self, result: Result<(), StoreError>) {
        if let Some(b) = self.unanswered.iter_mut().find(|b| b.outcome.is_none()) {
            if result.is_ok() {
                self.marks_stored.extend_from_slice(&b.marks);
            }
            b.outcome = Some(result);
        }
    }

    /// Wait for every submitted batch's answer without acknowledging any:
    /// the connection is ending; marks of what was stored are kept.
    async fn drain(&mut self) {
        while self.unanswered.iter().any(|b| b.outcome.is_none()) {
            let result = self.appender.answer().await;
            self.settle(result);
        }
        self.unanswered.clear();
    }

    /// Write one committed batch's PUBACKs.
    async fn acknowledge(&mut self, stream: &mut Stream, batch: Batch) -> Result<(), String> {
        if batch.acks.is_empty() {
            return Ok(());
        }
        self.out.clear();
        let level = self.level();
        for (id, reason) in &batch.acks {
            codec::encode_puback(&mut self.out, level, *id, *reason);
        }
        stream
            .write_all(&self.out)
            .await
            .map_err(|e| format!("cannot write PUBACK: {e}"))?;
        self.link
            .stats
            .acknowledged
            .fetch_add(batch.acks.len() as u64, Relaxed);
        self.unconfirmed.extend_from_slice(&batch.marks);
        Ok(())
    }

    /// Send a PINGREQ when acknowledged marks wait to be confirmed (or,
    /// with `keep_alive`, in any case) and none is in flight.
    async fn confirm(&mut self, stream: &mut Stream, keep_alive: bool) -> Result<(), String> {
        if self.ping_sent.is_some() {
            return Ok(());
        }
        let due = !self.unconfirmed.is_empty() && self.last_confirm.elapsed() >= CONFIRM_EVERY;
        if !(due || keep_alive) {
            return Ok(());
        }
        self.out.clear();
        codec::encode_pingreq(&mut self.out);
        stream
            .write_all(&self.out)
            .await
            .map_err(|e| format!("cannot write PINGREQ: {e}"))?;
        self.ping_sent = Some(Instant::now());
        self.last_confirm = Instant::now();
        self.confirming = Some(std::mem::take(&mut self.unconfirmed));
        Ok(())
    }

    /// Decode every whole packet in the buffer; messages become one batch.
    async fn take_packets(&mut self) -> Result<(), String> {
        if self.skip > 0 {
            let d = self.skip.min(self.buf.len());
            self.buf.drain(..d);
            self.skip -= d;
        }
        let ctx = self.link.ctx.clone();
        let now = ctx.clock.read();
        let mut batch = Batch::default();
        let mut events = self.appender.batch(self.buf.len() + self.buf.len() / 4);
        let mut pos = 0usize;
        let mut failure = None;
        let buf = std::mem::take(&mut self.buf);
        while pos < buf.len() {
            let (body_start, total) = match codec::check(&buf[pos..]) {
                Err(e) => {
                    failure = Some(format!("malformed packet from the broker: {e}"));
                    break;
                }
                Ok(Check::Incomplete { total }) => {
                    if let Some(total) = total.filter(|t| *t > self.max_packet) {
                        match codec::publish_head(&buf[pos..]) {
                            Err(e) => {
                                failure = Some(format!("malformed packet from the broker: {e}"))
                            }
                            Ok(None) if buf[pos] >> 4 != 3 => {
                                failure = Some(format!(
                                    "the broker sent a packet of {total} bytes (type {})",
                                    buf[pos] >> 4
                                ))
                            }
                            Ok(None) => {}
                            Ok(Some((qos, id, topic))) => {
                                self.link.stats.received.fetch_add(1, Relaxed);
                                ctx.stats.received.fetch_add(1, Relaxed);
                                self.refuse(
                                    &mut batch,
                                    qos,
                                    id,
                                    codec::REASON_QUOTA_EXCEEDED,
                                    &format!(
                                        "a message of {total} bytes on `{topic}` is larger than ingest.max_event_bytes ({} bytes); acknowledged and dropped",
                                        ctx.max_event_bytes
                                    ),
                                );
                                self.skip = total - (buf.len() - pos);
                                pos = buf.len();
                            }
                        }
                    }
                    break;
                }
                Ok(Check::Complete { body_start, total }) => (body_start, total),
            };
            let packet = &buf[pos..pos + total];
            pos += total;
            match codec::decode(packet, body_start, self.level()) {
                Err(e) => {
                    failure = Some(format!("malformed packet from the broker: {e}"));
                    break;
                }
                Ok(Incoming::Publish(p)) => {
                    self.take_publish(&p, &now, &mut batch, &mut events);
                }
                Ok(Incoming::PingResp) => {
                    self.ping_sent = None;
                    if let Some(c) = self.confirming.take() {
                        self.confirmed.extend(c);
                    }
                }
                Ok(Incoming::SubAck { packet_id, codes }) => {
                    if Some(packet_id) == self.subscribe_id {
                        self.subscribed = true;
                    }
                    let wanted = self.link.wanted();
                    for (i, code) in codes.iter().enumerate() {
                        if *code >= 0x80 {
                            let filter = wanted.get(i).map_or("?", |w| w.0.as_str());
                            let msg = format!(
                                "MQTT link {}: {} refused the subscription to `{filter}` (code 0x{code:02x}: not authorized by its ACL?); messages on it are not received",
                                self.name(),
                                self.link.config.broker
                            );
                            error!("{msg}");
                            self.link.stats.set_error(Some(msg));
                        }
                    }
                }
                Ok(Incoming::UnsubAck { packet_id }) => {
                    if Some(packet_id) == self.unsubscribe_id {
                        self.unsubscribed = true;
                    }
                }
                Ok(Incoming::Disconnect { code, reason }) => {
                    failure = Some(format!(
                        "the broker disconnected ferry (reason 0x{code:02x}{})",
                        reason.map(|r| format!(", \"{r}\"")).unwrap_or_default()
                    ));
                    break;
                }
                Ok(Incoming::ConnAck { .. }) => {
                    failure = Some("a second CONNACK on one connection".into());
                    break;
                }
                Ok(Incoming::Unexpected(kind)) => {
                    failure = Some(format!(
                        "packet type {kind}, which a QoS 1 subscriber never expects"
                    ));
                    break;
                }
            }
        }
        self.buf = buf;
        self.buf.drain(..pos);
        // On a failure what this read stored is still committed but not
        // acknowledged: the broker redelivers it and the marks recognise it.
        if events.count > 0 && !batch.marks.is_empty() {
            events.marks = Some(Box::new(LinkMarks {
                link: self.name().to_string(),
                marks: batch.marks.clone(),
            }));
        }
        batch.outcome = match self.appender.submit(events).await {
            Ok(true) => None,
            Ok(false) => Some(Ok(())),
            Err(e) => Some(Err(e)),
        };
        if !batch.acks.is_empty() || batch.outcome.is_none() {
            self.unanswered.push_back(batch);
        }
        match failure {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    fn refuse(&self, batch: &mut Batch, qos: u8, id: u16, reason: u8, why: &str) {
        let stats = &self.link.stats;
        stats.rejected.fetch_add(1, Relaxed);
        self.link.ctx.stats.rejected.fetch_add(1, Relaxed);
        self.link
            .limiter
            .warn(&format!("MQTT link {}: {why}", self.name()));
        if qos > 0 {
            batch.acks.push((id, reason));
        }
    }

    fn take_publish(
        &mut self,
        p: &Publish<'_>,
        now: &Reading,
        batch: &mut Batch,
        events: &mut crate::outbox::AppendBatch,
    ) {
        let link = self.link;
        link.stats.received.fetch_add(1, Relaxed);
        link.ctx.stats.received.fetch_add(1, Relaxed);
        if p.qos > 1 {
            // Subscriptions ask for QoS 1 at most; a broker must downgrade.
            self.refuse(
                batch,
                0,
                0,
                0,
                &format!(
                    "a QoS {} message on `{}` (ferry subscribes at QoS 1 at most) was dropped",
                    p.qos, p.topic
                ),
            );
            return;
        }
        let digest = (p.qos == 1).then(|| digest(p));
        if p.dup {
            log::debug!(
                "MQTT link {}: redelivery of packet id {} ({})",
                self.name(),
                p.packet_id,
                match (link.marks.get(&p.packet_id), digest) {
                    (Some(m), Some(d)) if *m == d => "stored before: acknowledged only",
                    (Some(_), _) => "a different message had that id: stored",
                    (None, _) => "not stored before: stored",
                }
            );
        }
        if p.dup
            && let Some(d) = digest
            && link.marks.get(&p.packet_id) == Some(&d)
        {
            link.stats.redeliveries.fetch_add(1, Relaxed);
            batch.acks.push((p.packet_id, codec::REASON_SUCCESS));
            return;
        }
        let has_key = match link.mapping.map(p.topic, &mut self.topic, &mut self.key) {
            Ok(k) => k,
            Err(Unroutable::NoRoute) => {
                self.refuse(
                    batch,
                    p.qos,
                    p.packet_id,
                    0x10,
                    &format!(
                        "a message on `{}` matches no [[mqtt.subscribe]] filter (a subscription the persistent session kept from an earlier config?); acknowledged and not stored",
                        p.topic
                    ),
                );
                return;
            }
            Err(Unroutable::BadTopic(why)) => {
                self.refuse(
                    batch,
                    p.qos,
                    p.packet_id,
                    codec::REASON_TOPIC_NAME_INVALID,
                    &format!("{why}; acknowledged and not stored"),
                );
                return;
            }
        };
        self.headers.clear();
        let mut count: u16 = 0;
        let mut put = |out: &mut Vec<u8>, name: &str, value: &[u8]| {
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value);
            count = count.saturating_add(1);
        };
        self.headers.extend_from_slice(&[0, 0]);
        put(&mut self.headers, "mqtt-topic", p.topic.as_bytes());
        if p.retain {
            put(&mut self.headers, "mqtt-retained", b"1");
        }
        let mut props = codec::Properties::new(p.properties);
        while let Ok(Some(prop)) = props.next_property() {
            if let Property::User(name, value) = prop {
                put(&mut self.headers, name, value.as_bytes());
            }
        }
        self.headers[..2].copy_from_slice(&count.to_be_bytes());
        let event = Event {
            topic: &self.topic,
            key: has_key.then_some(self.key.as_bytes()),
            headers: &self.headers,
            value: p.payload,
            timestamp_ms: now.wall_ms,
            clock: now.stamp(),
        };
        let len = event.payload_len();
        if len > link.ctx.max_event_bytes {
            self.refuse(
                batch,
                p.qos,
                p.packet_id,
                codec::REASON_QUOTA_EXCEEDED,
                &format!(
                    "a message on `{}` of {len} bytes (key, headers and payload) is larger than ingest.max_event_bytes ({} bytes); acknowledged and dropped",
                    p.topic, link.ctx.max_event_bytes
                ),
            );
            return;
        }
        event.encode_into(&mut events.data);
        events.count += 1;
        if let Some(d) = digest {
            batch.acks.push((p.packet_id, codec::REASON_SUCCESS));
            batch.marks.push((p.packet_id, d));
        }
    }
}
