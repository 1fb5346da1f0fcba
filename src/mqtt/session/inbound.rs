//! What comes in on a connection: every whole packet in the read buffer
//! decoded; PUBLISHes mapped to events (or refused with a reason) and
//! gathered as one batch for the group commit, the rest answered.

use super::{Batch, Session};
use crate::clock::Reading;
use crate::event::Event;
use crate::mqtt::codec::{self, Check, Incoming, Publish};
use crate::mqtt::mapping::{Unroutable, record_headers};
use crate::mqtt::session_error::SessionError;
use crate::mqtt::state::digest;
use crate::outbox::mqtt_marks::LinkMarks;
use log::error;
use std::sync::atomic::Ordering::Relaxed;

impl Session<'_> {
    /// Decode every whole packet in the buffer; messages become one batch.
    pub(super) async fn take_packets(&mut self) -> Result<(), SessionError> {
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
                    failure = Some(SessionError::Malformed(e));
                    break;
                }
                Ok(Check::Incomplete { total }) => {
                    if let Some(total) = total.filter(|t| *t > self.max_packet) {
                        match codec::publish_head(&buf[pos..]) {
                            Err(e) => failure = Some(SessionError::Malformed(e)),
                            Ok(None) if buf[pos] >> 4 != 3 => {
                                failure = Some(SessionError::Oversized {
                                    total,
                                    kind: buf[pos] >> 4,
                                })
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
                    failure = Some(SessionError::Malformed(e));
                    break;
                }
                Ok(Incoming::Publish(p)) => {
                    self.take_publish(&p, &now, &mut batch, &mut events);
                }
                Ok(Incoming::PingResp) => self.pingresp().await,
                Ok(Incoming::SubAck { packet_id, codes }) => {
                    if Some(packet_id) == self.subscribe_id {
                        self.subscribed = true;
                        self.link.stats.connected.store(true, Relaxed);
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
                    failure = Some(SessionError::Disconnected {
                        code,
                        reason: reason.map(str::to_string),
                    });
                    break;
                }
                Ok(Incoming::ConnAck { .. }) => {
                    failure = Some(SessionError::SecondConnAck);
                    break;
                }
                Ok(Incoming::Unexpected(kind)) => {
                    failure = Some(SessionError::Unexpected(kind));
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
        batch.stores = events.count > 0;
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

    pub(super) fn refuse(&self, batch: &mut Batch, qos: u8, id: u16, reason: u8, why: &str) {
        let stats = &self.link.stats;
        stats.rejected.fetch_add(1, Relaxed);
        self.link.ctx.stats.rejected.fetch_add(1, Relaxed);
        self.link
            .limiter
            .warn(&format!("MQTT link {}: {why}", self.name()));
        // QoS 2 is never asked for; a broker that sends it anyway gets no
        // PUBACK (that would be the wrong answer).
        if qos == 1 {
            batch.acks.push((id, reason));
        }
    }

    pub(super) fn take_publish(
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
                match (self.marks.get(&p.packet_id), digest) {
                    (Some(m), Some(d)) if *m == d => "stored before: acknowledged only",
                    (Some(_), _) => "a different message had that id: stored",
                    (None, _) => "not stored before: stored",
                }
            );
        }
        if p.dup
            && let Some(d) = digest
            && self.marks.get(&p.packet_id) == Some(&d)
        {
            link.stats.redeliveries.fetch_add(1, Relaxed);
            if let Some(inherited) = &mut self.inherited {
                inherited.remove(&p.packet_id);
            }
            batch.acks.push((p.packet_id, codec::REASON_SUCCESS));
            batch.redelivered.push((p.packet_id, d));
            return;
        }
        let mut mapped = link.mapping.map(p.topic, &mut self.topic, &mut self.key);
        if mapped == Err(Unroutable::NoRoute)
            && let Some(retired) = &link.retired
        {
            mapped = retired.map(p.topic, &mut self.topic, &mut self.key);
        }
        let has_key = match mapped {
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
        if let Err(count) = record_headers(p, &mut self.headers) {
            self.refuse(
                batch,
                p.qos,
                p.packet_id,
                codec::REASON_PAYLOAD_FORMAT_INVALID,
                &format!(
                    "a message on `{}` carries {count} headers with its user properties; a record takes at most 65,535; acknowledged and dropped",
                    p.topic
                ),
            );
            return;
        }
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
