//! One connection of a link: subscribe, read packets, store each read's
//! messages as one batch of the group commit, and write PUBACKs in arrival
//! order once that batch is committed. Up to [`Appender::DEPTH`] batches
//! wait for their commit while the next read is decoded.

mod inbound;

use super::codec::{self, Check, Incoming};
use super::connect::Stream;
use super::encode;
use super::session_error::SessionError;
use super::state::{End, LinkState, Watched};
use crate::outbox::mqtt_marks::Mark;
use crate::outbox::{Appender, StoreError};
use crate::shutdown::Shutdown;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Read this much at a time at first.
const READ_CHUNK: usize = 64 * 1024;
/// Room for the topic, properties and framing around an event's payload.
const PACKET_OVERHEAD: usize = 70 * 1024;
/// Acknowledged marks are confirmed (a PINGREQ after them) at most this often.
const CONFIRM_EVERY: Duration = Duration::from_millis(250);

/// What one read's messages need once their batch is committed.
#[derive(Default)]
struct Batch {
    /// (packet id, reason code), in arrival order.
    acks: Vec<(u16, u8)>,
    /// Marks of the QoS 1 messages stored by this batch.
    marks: Vec<Mark>,
    /// Marks of redeliveries recognised (stored before): acknowledged
    /// again, then confirmed and removed like the others.
    redelivered: Vec<Mark>,
    /// It carries messages to store.
    stores: bool,
    /// `None` while the batch awaits its commit.
    outcome: Option<Result<(), StoreError>>,
}

/// One connection's state.
pub(super) struct Session<'l> {
    link: &'l LinkState,
    buf: Vec<u8>,
    out: Vec<u8>,
    unanswered: VecDeque<Batch>,
    appender: Appender,
    /// Bytes of an oversized packet still to be discarded.
    skip: usize,
    /// The link's marks while this connection runs: committed batches add
    /// theirs, PINGRESPs take the confirmed ones away (so the map holds
    /// about what is in flight, however long the connection lasts).
    pub(super) marks: HashMap<u16, u64>,
    /// Marks acknowledged since the last confirmation ping.
    unconfirmed: Vec<Mark>,
    /// Marks a PINGREQ in flight will confirm.
    confirming: Option<Vec<Mark>>,
    ping_sent: Option<Instant>,
    last_confirm: Instant,
    /// When anything last came from the broker (a busy broker is alive
    /// even if its PINGRESP is still queued behind messages).
    last_read: Instant,
    keep_alive: Duration,
    /// A resumed session: the marks from before it. The broker resends
    /// what it has unacknowledged right behind the CONNACK; marks not
    /// redelivered by the first PINGRESP are stale (their PUBACK arrived
    /// but was never confirmed) and go then.
    inherited: Option<HashMap<u16, u64>>,
    /// A commit stored messages from this connection (acknowledging only
    /// redeliveries is not progress: a link that stores nothing must not
    /// have its backoff reset by them).
    pub(super) progressed: bool,
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
    pub(super) subscribed: bool,
    pub(super) unsubscribed: bool,
}

impl<'l> Session<'l> {
    pub(super) fn new(
        link: &'l LinkState,
        marks: HashMap<u16, u64>,
        session_present: bool,
        keep_alive: Duration,
        early: Vec<u8>,
    ) -> Self {
        let mut buf = early;
        buf.reserve(READ_CHUNK);
        let inherited = (session_present && !marks.is_empty()).then(|| marks.clone());
        Session {
            last_read: Instant::now(),
            keep_alive,
            inherited,
            progressed: false,
            link,
            buf,
            out: Vec::with_capacity(256),
            unanswered: VecDeque::with_capacity(Appender::DEPTH + 1),
            appender: Appender::new(&link.ctx.outbox),
            skip: 0,
            marks,
            unconfirmed: Vec::new(),
            confirming: None,
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

    pub(super) async fn run(
        &mut self,
        stream: &mut Stream,
        watched: &mut Watched,
        shutdown: &mut Shutdown,
    ) -> End {
        if let Err(e) = self.subscribe(stream).await {
            return End::Failed(e);
        }
        // Connected means messages flow: at once on a session that has its
        // subscriptions, else once the broker granted them (SUBACK).
        if self.subscribe_id.is_none() {
            self.link.stats.connected.store(true, Relaxed);
        }
        let keep_alive = self.keep_alive;
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
                        self.confirm_before_leaving(stream).await;
                        self.out.clear();
                        encode::encode_disconnect(&mut self.out);
                        let _ = self.write_out(stream, "DISCONNECT").await;
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
            // Acknowledged marks wait at most CONFIRM_EVERY for their PINGREQ.
            let confirm_due = !self.unconfirmed.is_empty() && self.ping_sent.is_none();
            let confirm_at = tokio::time::Instant::from_std(self.last_confirm + CONFIRM_EVERY);
            let n = tokio::select! {
                r = stream.read_buf(&mut self.buf) => match r {
                    Ok(n) if n > 0 => {
                        self.last_read = Instant::now();
                        n
                    }
                    Ok(_) => {
                        self.drain().await;
                        return End::Failed(SessionError::Closed { broker: self.link.config.broker.clone() });
                    }
                    Err(e) => {
                        self.drain().await;
                        return End::Failed(SessionError::Read { broker: self.link.config.broker.clone(), source: e });
                    }
                },
                result = self.appender.answer(), if waiting => {
                    self.settle(result);
                    continue;
                }
                _ = tokio::time::sleep_until(confirm_at), if confirm_due => continue,
                _ = tick.tick() => {
                    if let Some(sent) = self.ping_sent
                        && sent.elapsed() > keep_alive
                        && self.last_read < sent
                    {
                        self.drain().await;
                        return End::Failed(SessionError::NoPingAnswer(keep_alive));
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
    async fn subscribe(&mut self, stream: &mut Stream) -> Result<(), SessionError> {
        self.out.clear();
        let level = self.level();
        if !self.link.unsubscribe.is_empty() {
            let filters: Vec<&str> = self.link.unsubscribe.iter().map(String::as_str).collect();
            let id = self.packet_id();
            self.unsubscribe_id = Some(id);
            encode::encode_unsubscribe(&mut self.out, level, id, &filters);
        }
        let wanted = self.link.wanted();
        if self.link.subscribed.as_ref() != Some(&wanted) {
            let filters: Vec<(&str, u8)> = wanted.iter().map(|(f, q)| (f.as_str(), *q)).collect();
            let id = self.packet_id();
            self.subscribe_id = Some(id);
            encode::encode_subscribe(&mut self.out, level, id, &filters);
        }
        if self.out.is_empty() {
            return Ok(());
        }
        self.write_out(stream, "SUBSCRIBE").await
    }

    /// Write `self.out`, within the keep-alive (a broker that stops
    /// reading is a dead connection, not a reason to wait forever).
    async fn write_out(
        &mut self,
        stream: &mut Stream,
        what: &'static str,
    ) -> Result<(), SessionError> {
        match tokio::time::timeout(self.keep_alive, stream.write_all(&self.out)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(SessionError::Write { what, source }),
            Err(_) => Err(SessionError::WriteStalled {
                what,
                waited: self.keep_alive,
            }),
        }
    }

    /// Before a clean DISCONNECT: have the last PUBACKs confirmed (a
    /// PINGREQ and its PINGRESP, at most 2 s), so their marks go now
    /// rather than linger. Messages arriving meanwhile are left to the
    /// broker's redelivery.
    async fn confirm_before_leaving(&mut self, stream: &mut Stream) {
        if self.unconfirmed.is_empty() && self.confirming.is_none() {
            return;
        }
        if self.ping_sent.is_none() && self.confirm(stream, true).await.is_err() {
            return;
        }
        let waited = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let mut pos = 0;
                while let Ok(Check::Complete { body_start, total }) = codec::check(&self.buf[pos..])
                {
                    let packet = &self.buf[pos..pos + total];
                    pos += total;
                    if let Ok(Incoming::PingResp) = codec::decode(packet, body_start, self.level())
                    {
                        return true;
                    }
                }
                self.buf.drain(..pos);
                match stream.read_buf(&mut self.buf).await {
                    Ok(n) if n > 0 => {}
                    _ => return false,
                }
            }
        })
        .await;
        if waited == Ok(true) {
            self.pingresp().await;
        }
    }

    /// A PINGRESP: the broker has handled every PUBACK written before the
    /// PINGREQ; their marks go. The first one also ends what a resumed
    /// session inherited and did not see redelivered.
    async fn pingresp(&mut self) {
        self.ping_sent = None;
        let mut gone = self.confirming.take().unwrap_or_default();
        if let Some(inherited) = self.inherited.take() {
            gone.extend(inherited);
        }
        if gone.is_empty() {
            return;
        }
        for (id, digest) in &gone {
            if self.marks.get(id) == Some(digest) {
                self.marks.remove(id);
            }
        }
        self.link
            .ctx
            .outbox
            .mqtt_forget(&self.link.config.name, gone)
            .await;
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
                self.marks.extend(b.marks.iter().copied());
                self.progressed |= b.stores;
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
    async fn acknowledge(&mut self, stream: &mut Stream, batch: Batch) -> Result<(), SessionError> {
        if batch.acks.is_empty() {
            return Ok(());
        }
        self.out.clear();
        let level = self.level();
        for (id, reason) in &batch.acks {
            encode::encode_puback(&mut self.out, level, *id, *reason);
        }
        self.write_out(stream, "PUBACK").await?;
        self.link
            .stats
            .acknowledged
            .fetch_add(batch.acks.len() as u64, Relaxed);
        self.unconfirmed.extend_from_slice(&batch.marks);
        self.unconfirmed.extend_from_slice(&batch.redelivered);
        Ok(())
    }

    /// Send a PINGREQ when acknowledged marks wait to be confirmed (or,
    /// with `keep_alive`, in any case) and none is in flight.
    async fn confirm(&mut self, stream: &mut Stream, keep_alive: bool) -> Result<(), SessionError> {
        if self.ping_sent.is_some() {
            return Ok(());
        }
        let due = !self.unconfirmed.is_empty() && self.last_confirm.elapsed() >= CONFIRM_EVERY;
        if !(due || keep_alive) {
            return Ok(());
        }
        self.out.clear();
        encode::encode_pingreq(&mut self.out);
        self.write_out(stream, "PINGREQ").await?;
        self.ping_sent = Some(Instant::now());
        self.last_confirm = Instant::now();
        self.confirming = Some(std::mem::take(&mut self.unconfirmed));
        Ok(())
    }
}
