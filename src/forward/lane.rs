//! One lane's delivery attempt: its remaining batches, built straight from
//! the decompressed outbox blocks into record batches (no allocation per
//! record; see [`super::record_writer`]) and produced to the partition leader pipelined, each request
//! holding one of the partition's slots (see [`super::flight`]), answers
//! taken in order. The lane stops sending at the first batch that is not
//! delivered, but takes the answers of the batches already on the wire
//! behind it: a broker that holds no state for the producer (a new one,
//! or expired) writes them at any sequence, and they must not be sent
//! again. A lane whose partition has not yet acknowledged a batch under
//! its producer sends its first batch alone (a probe), so that the broker
//! holds the producer's state before batches are pipelined, and a refused
//! batch leaves no later one written out of turn. What the lane achieved
//! goes back to the forwarder, which decides what happens next.

use super::flight::{HandOver, Predecessor, Slot, Ticket};
use super::lane_outcome::LaneOutcome;
use super::plan::{Batch, Item, whole_stored_run};
use super::record_writer::WriterPool;
use crate::clock::SystemClock;
use crate::kafka::connection::{Connection, Pending};
use crate::kafka::errors::{
    Class, DUPLICATE_SEQUENCE_NUMBER, Failure, OUT_OF_ORDER_SEQUENCE_NUMBER,
};
use crate::kafka::producer::{self, ProducerIdentity};
use crate::kafka::record_batch::{Codec, ProducerFields};
use crate::outbox::Block;
use crate::stats::Stats;
use kafka_protocol::messages::ProduceRequest;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use tokio::sync::Semaphore;

/// A batch on the wire: its index, the answer to wait for, when it was
/// sent, and the partition slot it holds.
type InFlight = (usize, Pending<ProduceRequest>, Instant, Slot);

/// The remaining batches of one lane, and what they need.
pub struct LaneJob {
    pub conn: Arc<Connection>,
    pub version: i16,
    pub topic: String,
    pub partition: i32,
    pub blocks: Arc<Vec<Block>>,
    pub items: Vec<Item>,
    /// Starts relative to `items`.
    pub batches: Vec<Batch>,
    /// Batches (from the front) that may have reached the broker before.
    pub sent_before: usize,
    pub producer: Option<ProducerIdentity>,
    pub codec: Codec,
    pub node_id: Arc<str>,
    /// The topic's partition count and the node id's hash: what a stored
    /// run must have been cut for to go as stored (`outbox::run`).
    pub partitions: i32,
    pub node_hash: u32,
    pub stats: Arc<Stats>,
    pub clock: SystemClock,
    pub timeout_ms: i32,
    /// Record writers shared by all lanes (see [`WriterPool`]).
    pub writers: WriterPool,
    /// Start only once the previous lane of this partition has sent its
    /// batches (and learn how it ended when an answer is an error).
    pub after: Option<Predecessor>,
    /// Tell the next lane of this partition how this one gets on.
    pub hand_over: Option<HandOver>,
    /// The partition's request slots, shared with its other lanes.
    pub slots: Arc<Semaphore>,
    /// This lane's place in what the forwarder's loop watches.
    pub ticket: Ticket,
    /// Send the first batch alone and wait for its answer before the rest
    /// (see the module comment).
    pub probe: bool,
}

impl LaneJob {
    pub async fn run(mut self) -> LaneOutcome {
        let hand_over = self.hand_over.take();
        let mut after = self.after.take();
        // Without idempotence the broker cannot refuse a batch that
        // overtakes a failed one: then one request per partition at a time,
        // and a lane waits for the one before it to be acknowledged.
        let ready = match after.as_mut() {
            Some(after) if self.producer.is_some() => after.sent().await,
            Some(after) => after.finished().await,
            None => true,
        };
        let out = if ready {
            self.produce_all(hand_over.as_ref(), after.as_mut()).await
        } else {
            self.gave_up(LaneOutcome::default())
        };
        self.ticket.all_sent();
        if let Some(h) = hand_over {
            h.finished(out.failure.is_none() && out.acked == self.batches.len());
        }
        out
    }

    /// The lane before it (same partition) did not deliver everything, so
    /// what this lane sent after it could not be written either.
    fn gave_up(&self, out: LaneOutcome) -> LaneOutcome {
        LaneOutcome {
            failure: Some(Failure::transient(format!(
                "{}/{}: an earlier batch of this partition was not delivered",
                self.topic, self.partition
            ))),
            gave_up: true,
            ..out
        }
    }

    /// The next lane of the partition may start once every batch of this
    /// one is sent and, for a probe, the first is answered: until then the
    /// broker may hold no state for this producer, and would take the next
    /// lane's batch as a first one even if the probe was refused (a gap
    /// written out of order). A single-batch probe is all sent before its
    /// answer, so this is asked again when an answer comes.
    fn hand_over_once_sent(&self, hand_over: Option<&HandOver>, out: &LaneOutcome) {
        if out.sent == self.batches.len()
            && (!self.probe || out.acked > 0)
            && let Some(h) = hand_over
        {
            h.all_sent();
        }
    }

    async fn produce_all(
        &mut self,
        hand_over: Option<&HandOver>,
        mut after: Option<&mut Predecessor>,
    ) -> LaneOutcome {
        let mut out = LaneOutcome::default();
        let name = producer::topic_name(&self.topic);
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        let clock = self.clock.read();
        loop {
            while out.sent < self.batches.len() {
                if (self.producer.is_none() || (self.probe && out.acked == 0))
                    && !inflight.is_empty()
                {
                    break;
                }
                // A slot of the partition: wait for one only with nothing
                // of this lane's own in flight (its answers free slots).
                let slot = match self.slots.clone().try_acquire_owned() {
                    Ok(slot) => slot,
                    Err(_) if !inflight.is_empty() => break,
                    Err(_) => match self.slots.clone().acquire_owned().await {
                        Ok(slot) => slot,
                        Err(_) => {
                            out.failure = Some(Failure::transient(format!(
                                "produce to {}/{}: the partition's request slots are closed",
                                self.topic, self.partition
                            )));
                            return out;
                        }
                    },
                };
                let i = out.sent;
                // The batch goes to the socket from the buffers it was
                // encoded into; they come back for another batch.
                let batch = match self.stored_run(i) {
                    Some(run) => self.writers.stored(run, self.fields(i)),
                    None => self.writers.encode(&self.node_id, |w, spare| {
                        w.batch(
                            &self.blocks,
                            &self.items,
                            &self.batches[i],
                            &clock,
                            self.fields(i),
                            self.codec,
                            spare,
                        )
                    }),
                };
                let sent = producer::send_batch(
                    &self.conn,
                    self.version,
                    &name,
                    self.partition,
                    batch.parts(),
                    self.timeout_ms,
                )
                .await;
                self.writers.recycle(batch);
                match sent {
                    Ok(p) => inflight.push_back((i, p, Instant::now(), slot)),
                    Err(f) => {
                        out.failure = Some(self.context(f));
                        return out;
                    }
                }
                out.sent += 1;
                if out.sent == self.batches.len() {
                    self.ticket.all_sent();
                    self.hand_over_once_sent(hand_over, &out);
                }
            }
            let Some((i, pending, started, slot)) = inflight.pop_front() else {
                return out;
            };
            let answer = producer::answer(&self.conn, pending, &name, self.partition).await;
            drop(slot);
            self.stats.produce_latency.observe(started.elapsed());
            let answer = match answer {
                Ok(a) => a,
                Err(f) => {
                    out.failure = Some(self.context(f));
                    return out;
                }
            };
            if answer.throttle_ms > 0 {
                self.stats
                    .throttle_ms
                    .fetch_add(answer.throttle_ms as u64, Relaxed);
            }
            let batch = &self.batches[i];
            let delivered = match answer.error_code {
                0 | DUPLICATE_SEQUENCE_NUMBER => true,
                // With every batch before it delivered, a sequence the
                // broker calls out of order lies behind its last one: this
                // batch (which alone ever had these numbers) was written
                // before, and is older than the broker's memory of recent
                // batches. Only for batches that may have been sent before.
                OUT_OF_ORDER_SEQUENCE_NUMBER if i < self.sent_before => {
                    log::debug!(
                        "{}/{}: batch at sequence {} of {:?} was delivered before (OUT_OF_ORDER_SEQUENCE_NUMBER on a resend)",
                        self.topic,
                        self.partition,
                        batch.base_sequence,
                        self.producer
                    );
                    true
                }
                _ => false,
            };
            if delivered {
                out.acked += 1;
                self.stats.sent.fetch_add(batch.len as u64, Relaxed);
                self.stats.beat_forward();
                self.hand_over_once_sent(hand_over, &out);
                continue;
            }
            // An error while the lane before this one has failed: most
            // likely the gap it left (OUT_OF_ORDER_SEQUENCE_NUMBER), which
            // is no sign of lost producer state. Delivered again in order.
            let context = format!("produce to {}/{}", self.topic, self.partition);
            let f =
                Failure::from_code(answer.error_code, &context, answer.error_message.as_deref());
            // Refused for good, or for its sequence: it was not written, so
            // a batch behind it that was is a hole (the lane goes on under
            // the next epoch without it). After a transient error (which
            // may have been written anyway: REQUEST_TIMED_OUT) the lane is
            // sent again with the same sequences instead, and the broker
            // drops what it has.
            let not_written = matches!(f.class, Class::PermanentRecord | Class::ProducerState);
            if let Some(after) = after.as_deref_mut()
                && !after.finished().await
            {
                if not_written {
                    self.take_answers(&mut out, &mut inflight, &name).await;
                }
                return self.gave_up(out);
            }
            if f.class == Class::PermanentRecord {
                let start = batch.start as usize;
                for (index, message) in &answer.record_errors {
                    if let Some(idx) = usize::try_from(*index)
                        .ok()
                        .filter(|x| *x < batch.len as usize)
                    {
                        let why = message.clone().unwrap_or_else(|| f.message.clone());
                        out.refused
                            .push((start + idx, format!("{}: {why}", f.message)));
                    }
                }
                if out.refused.is_empty() {
                    if batch.len == 1 {
                        out.refused.push((start, f.message.clone()));
                    } else {
                        out.halve = true;
                    }
                }
            }
            out.failure = Some(f);
            if not_written {
                self.take_answers(&mut out, &mut inflight, &name).await;
            }
            return out;
        }
    }

    /// After a batch that was not written: the answers of the batches
    /// already on the wire behind it. Those the broker wrote (a broker without state
    /// for the producer takes any sequence) are noted, so they are not
    /// sent again; nothing more is sent.
    async fn take_answers(
        &self,
        out: &mut LaneOutcome,
        inflight: &mut VecDeque<InFlight>,
        name: &kafka_protocol::messages::TopicName,
    ) {
        while let Some((i, pending, _, slot)) = inflight.pop_front() {
            let answer = producer::answer(&self.conn, pending, name, self.partition).await;
            drop(slot);
            match answer {
                Ok(a) if a.error_code == 0 || a.error_code == DUPLICATE_SEQUENCE_NUMBER => {
                    log::warn!(
                        "{}/{}: the broker wrote the batch at sequence {} after an earlier one failed (it held no state for ferry's producer); its events count as delivered, the rest go under a new producer epoch",
                        self.topic,
                        self.partition,
                        self.batches[i].base_sequence
                    );
                    self.stats
                        .sent
                        .fetch_add(self.batches[i].len as u64, Relaxed);
                    out.written_out_of_turn.push(i);
                }
                Ok(_) => {}
                // The connection failed: the others' answers are lost too.
                Err(_) => return,
            }
        }
    }

    /// The stored run batch `i` is, whole, if it can go as stored.
    fn stored_run(&self, i: usize) -> Option<&Block> {
        let b = self.batches.get(i)?;
        let items = self
            .items
            .get(b.start as usize..(b.start + b.len) as usize)?;
        let destination = (self.partitions, self.partition);
        let (n, _) =
            whole_stored_run(&self.blocks, items, destination, self.codec, self.node_hash)?;
        (n == items.len()).then(|| &self.blocks[items[0].block as usize])
    }

    fn fields(&self, i: usize) -> ProducerFields {
        match self.producer {
            Some(p) => ProducerFields {
                producer_id: p.producer_id,
                producer_epoch: p.epoch,
                base_sequence: self.batches[i].base_sequence,
            },
            None => ProducerFields::NONE,
        }
    }

    fn context(&self, mut f: Failure) -> Failure {
        f.message = format!(
            "produce to {}/{}: {}",
            self.topic, self.partition, f.message
        );
        f
    }
}
