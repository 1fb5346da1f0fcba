//! Collecting a window's lane outcomes: acknowledged batches, records
//! Kafka refuses for good (dead letters), leaders lost, failures.

use super::Forwarder;
use super::lane_outcome::{LaneFailure, LaneOutcome, StreamChange};
use super::plan::Lane;
use super::window::Window;
use crate::kafka::errors::{Class, Failure};
use crate::outbox::dead_letter::NewDeadLetter;
use crate::stats::now_ms;
use log::{error, info, warn};
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
            let applied = lane.apply(out);
            if let Some(p) = applied.acknowledged {
                self.confirmed.acknowledged(
                    &lane.topic,
                    lane.partition,
                    p.producer_id,
                    Instant::now(),
                );
            }
            if let Some(LaneFailure::Refused(f)) = &applied.failure {
                let now = now_ms();
                for (item, reason) in applied.dead {
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
                        reason,
                        error_name: f.name.clone(),
                        attempts: 1,
                        first_attempt_ms: window.first_attempt_ms,
                        last_attempt_ms: now,
                    });
                }
            }
            if let Some(LaneFailure::Failed(f)) = &applied.failure
                && f.class == Class::ProducerState
            {
                // Rare (each needs a broker error) and worth a line each.
                warn!(
                    "{} [{}]: the broker no longer accepts ferry's producer state for this partition; it starts afresh under {}, and batches in flight then may arrive twice",
                    f.message,
                    f.name,
                    if applied.stream == StreamChange::NewProducerId {
                        "a new producer id"
                    } else {
                        "the next epoch of its producer id"
                    }
                );
            }
            match applied.stream {
                StreamChange::Continues => {}
                StreamChange::Afresh => self.streams.start_afresh(&lane.topic, lane.partition),
                StreamChange::NewProducerId => {
                    self.streams.start_with_new_id(&lane.topic, lane.partition)
                }
            }
            match applied.failure {
                None => {}
                Some(LaneFailure::Refused(f)) => {
                    refused.get_or_insert(f);
                }
                Some(LaneFailure::Park(f)) => parked.push((lane.topic.clone(), f)),
                Some(LaneFailure::GaveUp(f)) => {
                    first_error.get_or_insert(f);
                }
                Some(LaneFailure::Failed(f)) => {
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
