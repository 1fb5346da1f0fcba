//! Topics parked after a configuration failure (missing, not
//! authorised): their blocks are held back and skipped, the rest goes on,
//! and a parked topic is tried again when its time comes.

use super::parking::Parking;
use super::plan::Lane;
use super::{Forwarder, LOUD_LOG_INTERVAL};
use crate::kafka::errors::Failure;
use crate::log_limit::LogLimiter;
use crate::outbox::Block;
use log::debug;
use std::collections::HashSet;
use std::time::Instant;

impl Forwarder {
    /// Park `topic` (a destination): its source blocks are skipped until a
    /// growing, jittered delay has passed; a topic Kafka does not know yet
    /// is first retried on a short schedule (it may be being created).
    pub(super) fn park(
        &mut self,
        topic: &str,
        sources: impl IntoIterator<Item = String>,
        f: &Failure,
    ) {
        let missing = f.name == "UNKNOWN_TOPIC_OR_PARTITION" || f.name == "LEADER_NOT_AVAILABLE";
        let Parking { delay, short } =
            self.parked
                .park(topic, sources, missing, &f.message, Instant::now());
        if short {
            let msg = format!(
                "topic {topic}: {} [{}]; its events are kept and retried shortly (in {} ms), other topics go on",
                f.message,
                f.name,
                delay.as_millis()
            );
            self.loud
                .entry(topic.to_string())
                .or_insert_with(|| LogLimiter::new(LOUD_LOG_INTERVAL))
                .warn(&msg);
            self.publish_state(Some(f));
            return;
        }
        let msg = format!(
            "topic {topic}: {} [{}: {}]; its events are kept and retried in {:.0} s, other topics go on",
            f.message,
            f.class.as_str(),
            f.name,
            delay.as_secs_f64()
        );
        self.loud(topic, &msg);
        self.publish_state(Some(f));
    }

    /// Source topics whose blocks are held back for parked destinations.
    pub(super) fn parked_sources(&self) -> Vec<String> {
        self.parked.held_sources()
    }

    /// A parked topic is due for its retry.
    pub(super) fn unpark_due(&self) -> bool {
        self.parked.due(Instant::now())
    }

    /// Lift parks whose time has come; true if any was lifted.
    pub(super) fn unpark_expired(&mut self) -> bool {
        let lifted = self.parked.lift_due(Instant::now());
        for (t, reason) in &lifted {
            debug!("topic {t}: retrying after park ({reason})");
            // Ask Kafka about it afresh.
            if let Some(c) = self.cluster.as_mut() {
                c.forget_topic(t);
            }
        }
        !lifted.is_empty()
    }

    /// Blocks of this window that must stay: a lane of theirs was abandoned.
    pub(super) fn held_blocks(&self, blocks: &[Block], lanes: &[Lane]) -> HashSet<i64> {
        let mut held = HashSet::new();
        for lane in lanes.iter().filter(|l| l.abandoned) {
            for item in &lane.items[lane.done()..] {
                held.insert(blocks[item.block as usize].seq_first);
            }
        }
        held
    }

    /// Abandon, in this window, the unfinished lanes of topics that are
    /// parked now (without parking them again): their blocks are held.
    pub(super) fn hold_parked(&mut self, blocks: &[Block], lanes: &mut [Lane]) {
        for lane in lanes.iter_mut().filter(|l| !l.settled()) {
            if self.parked.is_parked(&lane.topic) {
                let mut sources = HashSet::new();
                abandon(lane, blocks, &mut sources);
                self.parked.hold(&lane.topic, sources);
                // Its numbered batches will not go as planned.
                if !lane.batches.is_empty() {
                    self.streams.start_afresh(&lane.topic, lane.partition);
                }
            }
        }
    }

    /// Park `topic` and abandon its lanes in this window.
    pub(super) fn abandon_topic(
        &mut self,
        blocks: &[Block],
        lanes: &mut [Lane],
        topic: &str,
        f: &Failure,
    ) {
        let mut sources = HashSet::new();
        for lane in lanes
            .iter_mut()
            .filter(|l| l.topic == topic && !l.settled())
        {
            abandon(lane, blocks, &mut sources);
            if !lane.batches.is_empty() {
                self.streams.start_afresh(&lane.topic, lane.partition);
            }
        }
        self.park(topic, sources, f);
    }
}

fn abandon(lane: &mut Lane, blocks: &[Block], sources: &mut HashSet<String>) {
    lane.abandon();
    for item in &lane.items[lane.done()..] {
        sources.insert(blocks[item.block as usize].topic.clone());
    }
}
