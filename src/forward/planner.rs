//! Planning a window: every event routed to its destination topics and
//! partitions (murmur2 for keys, sticky for keyless, stored runs whole
//! where they fit), one lane per partition.

use super::Forwarder;
use super::plan::{Item, Lane};
use crate::kafka::partitioner::partition_for_key;
use crate::outbox::Block;
use crate::outbox::run::KEYLESS;
use log::debug;
use std::collections::HashMap;

impl Forwarder {
    /// Assign every event of the window to its destination partitions. A
    /// stored run that fits every destination as stored goes whole to its
    /// partition without being decoded; one that does not is decoded and
    /// planned event by event (see `outbox::run`). Also tells the outbox
    /// each source topic's partition count, so that it cuts runs to fit.
    /// Returns the lanes and the runs that do not decode (to quarantine).
    pub(super) fn plan(
        &mut self,
        blocks: &[Block],
        keep: &[bool],
    ) -> (Vec<Lane>, Vec<(i64, u32, String)>) {
        /// A destination topic of this window: its partition count (and
        /// whether the cluster knows it), the partition its keyless events
        /// stick to (chosen on first use) and the lane of each partition
        /// (`u32::MAX`: none yet).
        struct Destination<'a> {
            topic: &'a str,
            partitions: i32,
            known: bool,
            sticky: Option<i32>,
            lanes: Vec<u32>,
        }
        let mut destinations: Vec<Destination> = Vec::new();
        let mut by_topic: HashMap<&str, usize> = HashMap::new();
        // The source topic last routed and its destinations: routes (glob
        // patterns) and partition counts are looked up when the source
        // topic changes, not for every block (a block holds one topic).
        let mut source: Option<&str> = None;
        let mut routed: Vec<usize> = Vec::new();
        let mut lanes: Vec<Lane> = Vec::new();
        let mut undecodable = Vec::new();
        let cluster = self.cluster.as_ref();
        // A lane's share of the window, with room for keys that crowd a
        // partition: reserved once, not grown event by event.
        let events: usize = blocks.iter().map(|b| b.count as usize).sum();
        let max_events = self.config.max_batch_events as usize;
        let max_bytes = self.config.max_batch_bytes as usize;
        for (b, block) in blocks.iter().enumerate() {
            if !keep[b] {
                continue;
            }
            let topic = block.topic.as_str();
            if source != Some(topic) {
                routed.clear();
                self.router.for_each_destination(topic, |to| {
                    let d = *by_topic.entry(to).or_insert_with(|| {
                        let known = cluster.and_then(|c| c.partition_count(to));
                        let partitions = known.unwrap_or(1).max(1);
                        destinations.push(Destination {
                            topic: to,
                            partitions,
                            known: known.is_some(),
                            sticky: None,
                            lanes: vec![u32::MAX; partitions as usize],
                        });
                        destinations.len() - 1
                    });
                    routed.push(d);
                });
                // Runs are cut for one partition count: the destinations'
                // when they all have the same, known one.
                let first = routed.first().map(|&d| &destinations[d]);
                let one_count = first.filter(|f| {
                    routed.iter().all(|&d| {
                        destinations[d].known && destinations[d].partitions == f.partitions
                    })
                });
                self.outbox
                    .run_shapes
                    .set_partitions(topic, one_count.map(|f| f.partitions));
                source = Some(topic);
            }
            let mut place = |dest: &mut Destination, partition: i32, item: Item| {
                // (Every choice is below the count; kept in range
                // regardless, as an event left out would be lost.)
                let partition = partition.rem_euclid(dest.partitions);
                let slot = &mut dest.lanes[partition as usize];
                if *slot == u32::MAX {
                    let mut lane = Lane::new(dest.topic.to_string(), partition);
                    let share = 2 * events / dest.partitions as usize;
                    lane.items.reserve(share.max(16).min(events));
                    lanes.push(lane);
                    *slot = (lanes.len() - 1) as u32;
                }
                lanes[*slot as usize].items.push(item);
            };
            if let Some(run) = &block.run {
                let h = &run.header;
                let as_stored = routed.iter().all(|&d| {
                    let dest = &destinations[d];
                    let partition = if h.partitions == KEYLESS {
                        0
                    } else {
                        h.partition
                    };
                    h.fits(dest.partitions, partition, self.codec, self.node_hash)
                        && block.count as usize <= max_events
                        && run.raw_bytes <= max_bytes
                });
                if as_stored {
                    for &d in &routed {
                        let dest = &mut destinations[d];
                        let partition = if h.partitions == KEYLESS {
                            *dest
                                .sticky
                                .get_or_insert_with(|| self.sticky.next_batch(dest.partitions))
                        } else {
                            h.partition
                        };
                        for (seq, offset) in block.places() {
                            let item = Item {
                                block: b as u32,
                                offset: offset as u32,
                                seq,
                            };
                            place(dest, partition, item);
                        }
                    }
                    continue;
                }
                if let Some(Err(why)) = block.decoded_run() {
                    undecodable.push((block.seq_first, block.count, why.to_string()));
                    continue;
                }
            }
            for (seq, offset, event) in block.events() {
                let item = Item {
                    block: b as u32,
                    offset: offset as u32,
                    seq,
                };
                for &d in &routed {
                    let dest = &mut destinations[d];
                    let partition = match event.key {
                        Some(k) => partition_for_key(k, dest.partitions),
                        None => *dest
                            .sticky
                            .get_or_insert_with(|| self.sticky.next_batch(dest.partitions)),
                    };
                    place(dest, partition, item);
                }
            }
        }
        debug!(
            "window of {} blocks planned onto {} partitions",
            blocks.len(),
            lanes.len()
        );
        (lanes, undecodable)
    }
}
