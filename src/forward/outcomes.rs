//! Collecting a window's lane outcomes: acknowledged batches, records
//! Kafka refuses for good (dead letters), leaders lost, failures.

use super::Forwarder;
use super::lane::LaneOutcome;
use super::plan::Lane;
use super::window::Window;
use crate::kafka::errors::{Class, Failure};
use crate::outbox::dead_letter::NewDeadLetter;
use crate::stats::now_ms;
use log::{error, info, warn};
use std::collections::HashSet;
use std::time::Instant;
use tokio::task::JoinSet;

impl Forwarder {
    /// Wait for the lane jobs of `window` and record what they achieved.
    pub(super) async fn collect(
        &mut self,
        window: &mut Window,
        mut set: JoinSet<(usize, LaneOutcome)>,
    ) -> Result<(), Failure> {
        let blocks = window.blocks.clone();
        let Some(lanes) = window.lanes.as_mut() else {
            return Ok(());
        };
        let mut first_error: Option<Failure> = None;
        let mut refused: Option<Failure> = None;
        let mut parked: Vec<(String, Failure)> = Vec::new();
        // Dropping `set` (when shutdown cancels this attempt) aborts the tasks.
        while let Some(next) = set.join_next().await {
            let (i, out) = match next {
                Ok(r) => r,
                Err(e) => {
                    first_error
                        .get_or_insert(Failure::transient(format!("produce task failed: {e}")));
                    continue;
                }
            };
            let lane = &mut lanes[i];
            let done = lane.done();
            let acked_before = lane.acked;
            // Events of batches the broker wrote after an earlier one failed.
            let written: HashSet<i64> = out
                .written_out_of_turn
                .iter()
                .filter_map(|&r| lane.batches.get(acked_before + r))
                .flat_map(|b| &lane.items[b.start as usize..(b.start + b.len) as usize])
                .map(|item| item.seq)
                .collect();
            if let Some(p) = lane.producer.filter(|_| out.acked > 0) {
                self.confirmed.acknowledged(
                    &lane.topic,
                    lane.partition,
                    p.producer_id,
                    Instant::now(),
                );
            }
            lane.acked += out.acked;
            lane.sent_before = lane.sent_before.max(acked_before + out.sent);
            if !out.refused.is_empty() || out.halve {
                let f = out.failure.clone().unwrap_or_else(|| {
                    Failure::new(Class::PermanentRecord, "OTHER", "refused".into())
                });
                if out.halve {
                    let len = lane.batches.get(lane.acked).map_or(1, |b| b.len as usize);
                    lane.batch_limit = (len / 2).max(1);
                } else {
                    let now = now_ms();
                    let mut gone: Vec<usize> = Vec::new();
                    for (rel, reason) in &out.refused {
                        let idx = done + rel;
                        let Some(item) = lane.items.get(idx).copied() else {
                            continue;
                        };
                        let block = &blocks[item.block as usize];
                        let event = block.event_bytes(item.offset as usize).unwrap_or_default();
                        error!(
                            "event {}:{} (topic {}) refused by Kafka for good: {} ({reason}); moved to dead letters (`ferry dlq list`)",
                            self.node_id, item.seq, lane.topic, f.name
                        );
                        window.dead.push(NewDeadLetter {
                            seq: item.seq,
                            destination: lane.topic.clone(),
                            event: event.to_vec(),
                            reason: reason.clone(),
                            error_name: f.name.clone(),
                            attempts: 1,
                            first_attempt_ms: window.first_attempt_ms,
                            last_attempt_ms: now,
                        });
                        gone.push(idx);
                    }
                    // `gone` counts from the lane's start; drop the finished
                    // items first, then the refused ones.
                    let shift = lane.done();
                    lane.compact();
                    let mut k = shift;
                    lane.items.retain(|_| {
                        let keep = !gone.contains(&k);
                        k += 1;
                        keep
                    });
                    lane.batch_limit = usize::MAX;
                }
                // The batch and all after it in this partition were never
                // written: the stream starts afresh, the lane is cut again.
                lane.replan = true;
                self.streams.start_afresh(&lane.topic, lane.partition);
                if !written.is_empty() {
                    lane.drop_written(&written);
                }
                refused.get_or_insert(f);
                continue;
            }
            if !written.is_empty() {
                // A hole in the partition's sequence: what follows it goes
                // under a new epoch, without what was written already.
                lane.drop_written(&written);
                self.streams.start_afresh(&lane.topic, lane.partition);
            }
            match out.failure {
                None => {}
                Some(f) if f.class == Class::ConfigTopic => {
                    parked.push((lane.topic.clone(), f));
                }
                // The lane before it failed; if that one's topic
                // got parked, this lane is held below with it.
                Some(f) if out.gave_up => {
                    first_error.get_or_insert(f);
                }
                Some(f) => {
                    if f.class == Class::ProducerState {
                        lane.replan = true;
                        // Fenced (a newer epoch of ferry's producer id is
                        // known there): a new id. Otherwise the next epoch.
                        let fenced =
                            f.name == "INVALID_PRODUCER_EPOCH" || f.name == "PRODUCER_FENCED";
                        // Rare (each needs a broker error) and worth a line each.
                        warn!(
                            "{} [{}]: the broker no longer accepts ferry's producer state for this partition; it starts afresh under {}, and batches in flight then may arrive twice",
                            f.message,
                            f.name,
                            if fenced {
                                "a new producer id"
                            } else {
                                "the next epoch of its producer id"
                            }
                        );
                        if fenced {
                            self.streams.start_with_new_id(&lane.topic, lane.partition);
                        } else {
                            self.streams.start_afresh(&lane.topic, lane.partition);
                        }
                    }
                    // Look the leader up afresh next time.
                    if let Some(c) = self.cluster.as_mut() {
                        c.forget_topic(&lane.topic);
                    }
                    first_error.get_or_insert(f);
                }
            }
        }
        for (topic, f) in parked {
            self.abandon_topic(&blocks, lanes, &topic, &f);
        }
        self.hold_parked(&blocks, lanes);
        // A once-parked topic that now delivers is forgiven: its backoff resets.
        for lane in lanes.iter().filter(|l| !l.abandoned && l.settled()) {
            if self.parked.forgive(&lane.topic) {
                info!("topic {}: delivering again", lane.topic);
            }
        }
        if lanes.iter().all(Lane::settled) {
            return Ok(());
        }
        Err(first_error.or(refused).unwrap_or_else(|| {
            Failure::transient("a produce job stopped before its events were sent".into())
        }))
    }
}
