//! After a crash: the producer state and the delivery plans stored before
//! ferry stopped are loaded, the sequence streams restored, and the planned
//! windows rebuilt from their blocks, to be sent first with the same
//! producer ids and sequences (the broker drops what it already has).

use super::plan::{self, Item, Lane};
use super::streams::Streams;
use super::{Forwarder, Window};
use crate::kafka::producer::ProducerIdentity;
use crate::outbox::Block;
use crate::outbox::config::Durability;
use crate::outbox::plan::SavedWindow;
use log::{error, warn};
use std::collections::HashMap;

impl Forwarder {
    /// The producer state and the plans stored before ferry last stopped:
    /// restore the streams and rebuild those windows from their blocks.
    pub(super) async fn recover_plans(&mut self) -> Vec<Window> {
        let saved = match self.outbox.load_plans().await {
            Ok(s) => s,
            Err(e) => {
                error!(
                    "cannot read the stored delivery plans: {e}; windows are planned afresh (duplicates possible)"
                );
                return Vec::new();
            }
        };
        let boot = i64::from(self.clock.read().boot);
        let trusted = match saved.producer {
            Some(p) if self.durability == Durability::Fsync || p.boot == boot => Some(p),
            Some(_) => {
                // A power cut may have undone the last commits under
                // `relaxed`: sequences stored then cannot be trusted.
                warn!(
                    "the machine restarted since the producer state was stored under relaxed durability: ferry takes a new producer id; windows in flight then are sent again at least once"
                );
                if let Err(e) = self.outbox.forget_producer().await {
                    error!("cannot clear the stored producer state: {e}");
                }
                None
            }
            None => None,
        };
        if let Some(p) = trusted {
            self.streams = Streams::restore(
                ProducerIdentity {
                    producer_id: p.producer_id,
                    epoch: p.epoch,
                },
                &saved.streams,
            );
        }
        let mut windows = Vec::new();
        for stored in saved.windows {
            let blocks = match self.outbox.read_blocks(stored.blocks.clone()).await {
                Ok(b) => b,
                Err(e) => {
                    error!(
                        "cannot read the blocks of a stored delivery window: {e}; it is planned afresh"
                    );
                    continue;
                }
            };
            if blocks.is_empty() {
                continue;
            }
            let mut window = Window::from_stored(blocks, &stored);
            // The streams were stored with the newest plan: their cluster.
            if trusted.is_some() && stored.cluster.is_some() {
                self.streams_cluster = stored.cluster.clone();
            }
            window.lanes = self.restore_lanes(&window.blocks, &stored, trusted.is_some(), true);
            windows.push(window);
        }
        windows
    }

    /// A stored plan's lanes, placed in `blocks`. Lanes of streams that
    /// started afresh since (or whose events are gone) are planned again:
    /// after a restart (`at_start`) under a new producer id (a stored id
    /// may be shared with cloned gateways); for a window put aside while
    /// ferry runs, on the partition's stream as it is now (its planned
    /// batches were not written: it had no leader; if they might have
    /// been, the stream started afresh for that reason, and they go again
    /// at least once).
    pub(super) fn restore_lanes(
        &mut self,
        blocks: &[Block],
        stored: &SavedWindow,
        trusted: bool,
        at_start: bool,
    ) -> Option<Vec<Lane>> {
        let mut place: HashMap<i64, (u32, u32)> = HashMap::new();
        for (b, block) in blocks.iter().enumerate() {
            for (seq, offset) in block.places() {
                place.insert(seq, (b as u32, offset as u32));
            }
        }
        let Some(lanes) = plan::decode(&stored.plan) else {
            error!(
                "stored delivery plan of window {} is unreadable; it is planned afresh (duplicates possible)",
                stored.id
            );
            return None;
        };
        let mut out = Vec::new();
        for s in lanes {
            let mut lane = Lane::new(s.topic, s.partition);
            lane.items = s
                .seqs
                .iter()
                .filter_map(|seq| {
                    place.get(seq).map(|&(block, offset)| Item {
                        block,
                        offset,
                        seq: *seq,
                    })
                })
                .collect();
            let complete = lane.items.len() == s.seqs.len();
            // A stream started afresh by an earlier stored window (its
            // planned batches could not go as planned) restarts every later
            // window's lane of that partition too: their sequences followed
            // batches that may never have been written.
            let current = s.producer.producer_id >= 0
                && self.streams.producer_of(&lane.topic, lane.partition) == Some(s.producer)
                && !self.streams.needs_producer_id(&lane.topic, lane.partition);
            if trusted && complete && current {
                let generation = self
                    .streams
                    .generation_of(&lane.topic, lane.partition)
                    .unwrap_or(0);
                lane.resume(&s.batches, s.producer, generation);
            } else if !at_start {
                lane.cut_again();
            } else if !s.batches.is_empty() {
                // Sent again under a stream that starts afresh: at least once.
                warn!(
                    "{}/{}: {} events planned before ferry stopped go again under a new producer id (duplicates possible)",
                    lane.topic,
                    lane.partition,
                    lane.items.len()
                );
                // A new id, not the next epoch: a stored id may be shared
                // with gateways cloned from this card.
                self.streams.start_with_new_id(&lane.topic, lane.partition);
            }
            if !lane.items.is_empty() {
                out.push(lane);
            }
        }
        Some(out)
    }
}
