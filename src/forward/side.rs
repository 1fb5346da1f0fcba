//! Side records, produced best effort between windows and without
//! idempotence (at-least-once): loss markers to the loss topic and dead
//! letters to the DLQ topic, each with the headers the contract names.

use super::lane::RecordWriter;
use super::partitioner::partition_for_key;
use super::{Forwarder, RECORD_OVERHEAD};
use crate::breaker::State;
use crate::kafka::errors::{Class, Failure};
use crate::kafka::producer;
use crate::kafka::record_batch::ProducerFields;
use crate::stats::now_ms;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

impl Forwarder {
    /// Best effort, once per loop: loss markers to the loss topic and dead
    /// letters to the DLQ topic. What fails stays queued for next time; a
    /// dead letter the DLQ topic refuses for good is marked so and left.
    pub(super) async fn deliver_side_records(&mut self) {
        if self.breaker.state(Instant::now()) != State::Closed || self.cluster.is_none() {
            return;
        }
        if let Some(topic) = self.config.loss_topic.clone() {
            if self.outbox.waiting.loss_markers.load(Relaxed) > 0 {
                if let Ok(markers) = self.outbox.loss_pending().await {
                    if markers.is_empty() {
                        self.outbox.waiting.loss_markers.store(0, Relaxed);
                    } else {
                        let ids: Vec<i64> = markers.iter().map(|m| m.0).collect();
                        let mut w = RecordWriter::new(self.node_id.clone());
                        for (_, body) in &markers {
                            w.push_plain(
                                now_ms(),
                                Some(self.node_id.as_bytes()),
                                body.as_bytes(),
                                &[],
                            );
                        }
                        let batch = w.finish(ProducerFields::NONE, self.codec);
                        if self.produce_side(&topic, batch).await == Side::Delivered {
                            self.outbox.loss_delivered(ids).await;
                        }
                    }
                }
            }
        }
        if let Some(topic) = self.config.dead_letter_topic.clone() {
            if self.outbox.waiting.dead_letters.load(Relaxed) > 0 {
                let Ok(pending) = self.outbox.dlq_pending().await else {
                    return;
                };
                if pending.is_empty() {
                    self.outbox.waiting.dead_letters.store(0, Relaxed);
                    return;
                }
                let max_bytes = self.config.max_batch_bytes as usize;
                let clock = self.clock.read();
                // Groups within the batch size; a group refused for good
                // is sent again one by one, so one bad letter holds up none.
                let mut start = 0;
                while start < pending.len() {
                    let mut end = start;
                    let mut bytes = 0;
                    while end < pending.len()
                        && (end == start || bytes + pending[end].event.len() < max_bytes)
                    {
                        bytes += pending[end].event.len() + RECORD_OVERHEAD;
                        end += 1;
                    }
                    match self
                        .produce_dead_letters(&topic, &pending[start..end], &clock)
                        .await
                    {
                        Side::Delivered => {}
                        Side::Refused if end - start > 1 => {
                            for one in start..end {
                                if self
                                    .produce_dead_letters(&topic, &pending[one..one + 1], &clock)
                                    .await
                                    == Side::Failed
                                {
                                    return;
                                }
                            }
                        }
                        Side::Refused => {}
                        Side::Failed => return,
                    }
                    start = end;
                }
            }
        }
    }

    /// Produce these dead letters to the DLQ topic in one batch, and record
    /// what became of them.
    async fn produce_dead_letters(
        &mut self,
        topic: &str,
        letters: &[crate::outbox::dead_letter::ForDlq],
        clock: &crate::clock::Reading,
    ) -> Side {
        let mut w = RecordWriter::new(self.node_id.clone());
        for letter in letters {
            let Ok((event, _)) = crate::event::Event::decode_from(&letter.event) else {
                continue;
            };
            let at = letter.last_attempt_ms.to_string();
            let extra: [(&[u8], &[u8]); 3] = [
                (b"dlq-reason", letter.reason.as_bytes()),
                (b"dlq-timestamp", at.as_bytes()),
                (b"original-topic", letter.destination.as_bytes()),
            ];
            w.push_dead_letter(&event, clock, &extra);
        }
        let batch = w.finish(ProducerFields::NONE, self.codec);
        let ids: Vec<i64> = letters.iter().map(|l| l.id).collect();
        let outcome = self.produce_side(topic, batch).await;
        let n = ids.len() as u64;
        match outcome {
            Side::Delivered => self.outbox.dlq_sent(ids).await,
            Side::Refused if n == 1 => {
                self.loud(
                    topic,
                    &format!(
                        "dead letter {} refused by the DLQ topic {topic} for good; it stays in `ferry dlq list` and is not sent there again",
                        ids[0]
                    ),
                );
                self.outbox.dlq_refused(ids).await;
            }
            Side::Refused | Side::Failed => return outcome,
        }
        let _ = self
            .outbox
            .waiting
            .dead_letters
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
        outcome
    }

    /// One batch to a side topic (loss markers, dead letters), without
    /// idempotence: these are at-least-once.
    async fn produce_side(&mut self, topic: &str, batch: bytes::Bytes) -> Side {
        let timeout_ms = self.produce_timeout_ms();
        let node_id = self.node_id.clone();
        let known = match self.cluster() {
            Ok(cluster) => {
                if cluster.partition_count(topic).is_none()
                    && cluster.refresh(&[topic.to_string()]).await.is_err()
                {
                    return Side::Failed;
                }
                cluster.partition_count(topic)
            }
            Err(_) => return Side::Failed,
        };
        let Some(n) = known else {
            self.loud(
                topic,
                &format!("topic {topic} (side topic for loss markers/dead letters) does not exist; create it"),
            );
            return Side::Failed;
        };
        let partition = partition_for_key(node_id.as_bytes(), n);
        let codec = self.codec;
        let Ok(cluster) = self.cluster() else {
            return Side::Failed;
        };
        let name = producer::topic_name(topic);
        let result = async {
            let conn = cluster.leader(topic, partition).await?;
            let version = producer::produce_version(&conn, codec)?;
            let pending =
                producer::send_batch(&conn, version, &name, partition, batch, timeout_ms).await?;
            producer::answer(&conn, pending, &name, partition).await
        }
        .await;
        match result {
            Ok(a) if a.error_code == 0 => Side::Delivered,
            Ok(a) => {
                let f = Failure::from_code(
                    a.error_code,
                    &format!("produce to {topic}/{partition}"),
                    a.error_message.as_deref(),
                );
                self.log.warn(&format!("{}; will retry", f.message));
                if f.class == Class::PermanentRecord {
                    Side::Refused
                } else {
                    Side::Failed
                }
            }
            Err(f) => {
                self.log.warn(&format!(
                    "produce to {topic} failed: {}; will retry",
                    f.message
                ));
                Side::Failed
            }
        }
    }
}

/// What became of a batch to a side topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Delivered,
    /// Refused for good (too large, invalid).
    Refused,
    /// Not now (network, leader, topic missing): try again later.
    Failed,
}
