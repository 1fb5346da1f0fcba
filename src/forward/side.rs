//! Side records, produced best effort between windows and without
//! idempotence (at-least-once): the heartbeat to its topic (first: it is
//! the highest priority), loss markers to the loss topic and dead letters
//! to the DLQ topic, each with the headers the contract names.
//!
//! They never hold up the data: after a failure (a side topic missing, its
//! leader away) they wait out a backoff of their own, each attempt is
//! bounded by [`SIDE_BUDGET`], and what waits and why is in `ferry status`
//! and, rate-limited, in the log.

use super::record_writer::RecordWriter;
use super::{Forwarder, RECORD_OVERHEAD};
use crate::breaker::State;
use crate::kafka::errors::{Class, Failure};
use crate::kafka::partitioner::partition_for_key;
use crate::kafka::producer;
use crate::kafka::record_batch::ProducerFields;
use crate::stats::now_ms;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// At most this long for one side-record request, awaited between windows.
const SIDE_BUDGET: Duration = Duration::from_secs(2);
/// Side records back off from at least this long to at least
/// [`SIDE_MAX_DELAY`]: with a side topic unreachable, the loop spends at
/// most a few per cent of its time on them.
const SIDE_FIRST_DELAY: Duration = Duration::from_secs(1);
const SIDE_MAX_DELAY: Duration = Duration::from_secs(60);

/// When side records may be tried next, and why they wait.
pub(super) struct SideRetry {
    backoff: crate::backoff::Backoff,
    next_try: Option<Instant>,
    /// What failed last (shown in `ferry status` while records wait).
    pub problem: Option<String>,
}

impl SideRetry {
    pub(super) fn new(retry: &crate::backoff::RetryConfig, seed: u64) -> Self {
        let side = crate::backoff::RetryConfig {
            initial: retry.initial.max(SIDE_FIRST_DELAY),
            max: retry.max.max(SIDE_MAX_DELAY),
            multiplier: retry.multiplier,
        };
        Self {
            backoff: crate::backoff::Backoff::new(&side, seed),
            next_try: None,
            problem: None,
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.next_try.is_none_or(|t| now >= t)
    }

    fn failed(&mut self, problem: String, now: Instant) {
        self.next_try = Some(now + self.backoff.next_delay());
        self.problem = Some(problem);
    }

    /// The uplink works again after failing: what the side records waited
    /// for was most likely the uplink itself, so they go at once.
    pub(super) fn uplink_back(&mut self) {
        self.backoff.reset();
        self.next_try = None;
    }

    fn succeeded(&mut self) {
        self.backoff.reset();
        self.next_try = None;
        self.problem = None;
    }
}

impl Forwarder {
    /// Best effort, once per loop: the heartbeat to its topic, loss markers
    /// to the loss topic and dead letters to the DLQ topic. What fails stays queued for next time; a
    /// dead letter the DLQ topic refuses for good is marked so and left.
    pub(super) async fn deliver_side_records(&mut self) {
        let now = Instant::now();
        // Half-open too: the uplink came back and the backlog may be gone
        // in one window, leaving no data to close the breaker with; a side
        // record delivered then counts as a successful probe.
        if self.breaker.state(now) == State::Open || !self.side.due(now) {
            return;
        }
        let w = &self.outbox.waiting;
        let waiting = (self.heartbeat_topic.is_some() && w.heartbeat.load(Relaxed))
            || (self.config.loss_topic.is_some() && w.loss_markers.load(Relaxed) > 0)
            || (self.config.dead_letter_topic.is_some() && w.dead_letters.load(Relaxed) > 0);
        if !waiting {
            return;
        }
        // A quiet gateway's heartbeat may be the first thing it sends.
        if let Err(f) = self.cluster() {
            let message = f.message.clone();
            self.side_failed("(all)", &message);
            return;
        }
        let had_problem = self.side.problem.is_some();
        self.side_records().await;
        if had_problem != self.side.problem.is_some() {
            self.publish_state(None);
        }
    }

    async fn side_records(&mut self) {
        if let Some(topic) = self.heartbeat_topic.clone()
            && self.outbox.waiting.heartbeat.load(Relaxed)
            && let Ok(Some((version, body))) = self.outbox.heartbeat_pending().await
        {
            let batch = self.plain_batch([body.as_str()]);
            match self.produce_side(&topic, batch).await {
                // Refused for good (too large for the topic): the next
                // interval's replaces it.
                Side::Delivered | Side::Refused => self.outbox.heartbeat_sent(version).await,
                // The loss markers and dead letters are still tried: their
                // topics may be fine.
                Side::Failed => {}
            }
        }
        if let Some(topic) = self.config.loss_topic.clone() {
            if self.outbox.waiting.loss_markers.load(Relaxed) > 0 {
                if let Ok(markers) = self.outbox.loss_pending().await {
                    if markers.is_empty() {
                        self.outbox.waiting.loss_markers.store(0, Relaxed);
                    } else {
                        let ids: Vec<i64> = markers.iter().map(|m| m.0).collect();
                        let batch = self.plain_batch(markers.iter().map(|(_, b)| b.as_str()));
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

    /// One batch of ferry's own records (heartbeat, loss markers), keyed by
    /// the node id.
    fn plain_batch<'a>(&self, bodies: impl IntoIterator<Item = &'a str>) -> bytes::Bytes {
        let mut w = RecordWriter::new(self.node_id.clone());
        for body in bodies {
            w.push_plain(
                now_ms(),
                Some(self.node_id.as_bytes()),
                body.as_bytes(),
                &[],
            );
        }
        w.finish(ProducerFields::NONE, self.codec)
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
                if cluster.partition_count(topic).is_none() {
                    let asked =
                        tokio::time::timeout(SIDE_BUDGET, cluster.refresh(&[topic.to_string()]))
                            .await;
                    if let Err(why) = asked
                        .map_err(|_| "no answer".to_string())
                        .and_then(|r| r.map_err(|f| f.message))
                    {
                        self.side_failed(topic, &format!("metadata of {topic}: {why}"));
                        return Side::Failed;
                    }
                }
                cluster.partition_count(topic)
            }
            Err(f) => {
                self.side_failed(topic, &f.message);
                return Side::Failed;
            }
        };
        let Some(n) = known else {
            self.side_failed(
                topic,
                &format!("topic {topic} (a side topic: heartbeat, loss markers or dead letters) does not exist or is not authorised: create it, or allow ferry to write to it"),
            );
            return Side::Failed;
        };
        let partition = partition_for_key(node_id.as_bytes(), n);
        let codec = self.codec;
        let Ok(cluster) = self.cluster() else {
            return Side::Failed;
        };
        let name = producer::topic_name(topic);
        let attempt = async {
            let conn = match cluster.leader(topic, partition).await {
                Ok(c) => c,
                Err(f) => {
                    cluster.forget_topic(topic);
                    return Err(f);
                }
            };
            let version = producer::produce_version(&conn, codec)?;
            let pending =
                producer::send_batch(&conn, version, &name, partition, (&batch, &[]), timeout_ms)
                    .await?;
            producer::answer(&conn, pending, &name, partition).await
        };
        // The answer of a request cut off here is dropped when it comes;
        // the records are sent again (side records are at-least-once).
        let result = tokio::time::timeout(SIDE_BUDGET, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(Failure::new(
                    Class::Transient,
                    "REQUEST_TIMEOUT",
                    format!("no answer within {} s", SIDE_BUDGET.as_secs()),
                ))
            });
        let outcome = self.side_outcome(topic, partition, result);
        match outcome {
            Side::Failed => {}
            Side::Delivered | Side::Refused => {
                self.side.succeeded();
                // The uplink works (before any data went, say).
                self.stats.set_uplink_up(true);
                if self.breaker.on_side_success(Instant::now()) {
                    self.publish_state(None);
                }
            }
        }
        outcome
    }

    fn side_outcome(
        &mut self,
        topic: &str,
        partition: i32,
        result: Result<producer::PartitionAnswer, Failure>,
    ) -> Side {
        match result {
            Ok(a) if a.error_code == 0 => Side::Delivered,
            Ok(a) => {
                let f = Failure::from_code(
                    a.error_code,
                    &format!("produce to {topic}/{partition}"),
                    a.error_message.as_deref(),
                );
                if f.class == Class::PermanentRecord {
                    self.log.warn(&f.message);
                    Side::Refused
                } else {
                    self.side_failed(topic, &format!("{} [{}]", f.message, f.name));
                    Side::Failed
                }
            }
            Err(f) => {
                // Not reaching the broker at all is the uplink down, whatever
                // went (a slow answer or a leader away is not).
                if f.name == "NETWORK" {
                    self.stats.set_uplink_up(false);
                }
                self.side_failed(topic, &format!("produce to {topic}: {}", f.message));
                Side::Failed
            }
        }
    }

    /// A side topic could not take its records now: back off, say so.
    fn side_failed(&mut self, topic: &str, why: &str) {
        let heartbeat = if self.outbox.waiting.heartbeat.load(Relaxed) {
            "a heartbeat, "
        } else {
            ""
        };
        let waiting = format!(
            "{heartbeat}{} loss marker(s), {} dead letter(s) wait for their side topics; last: {why}",
            self.outbox.waiting.loss_markers.load(Relaxed),
            self.outbox.waiting.dead_letters.load(Relaxed)
        );
        self.loud(
            &format!("side:{topic}"),
            &format!("{waiting}; retried later"),
        );
        self.side.failed(waiting, Instant::now());
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
