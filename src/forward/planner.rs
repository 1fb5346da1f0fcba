//! Planning a window: every event routed to its destination topics and
//! partitions (murmur2 for keys, sticky for keyless, stored runs whole
//! where they fit), one lane per partition. [`plan_window`] is pure: the
//! blocks, the routes, the partition counts and the limits in, the lanes
//! out; the forwarder's [`Forwarder::plan`] gives it its inputs and tells
//! the outbox what it found.

use super::Forwarder;
use super::plan::{Item, Lane};
use super::route::Router;
use crate::kafka::partitioner::{Sticky, partition_for_key};
use crate::kafka::record_batch::Codec;
use crate::outbox::run::KEYLESS;
use crate::outbox::{Block, CorruptBlock};
use log::debug;
use std::collections::HashMap;

/// What planning needs besides the blocks, fixed for one window.
pub struct PlanInputs<'a, C: Fn(&str) -> Option<i32>> {
    pub router: &'a Router,
    /// The cluster's partition count of a topic (`None`: not known; the
    /// topic is planned onto one partition and its runs are decoded).
    pub partition_count: C,
    /// The codec batches go in, and this node's hash (a stored run is
    /// sent as stored only if it was built for both).
    pub codec: Codec,
    pub node_hash: u32,
    pub max_batch_events: usize,
    pub max_batch_bytes: usize,
}

/// A planned window.
#[derive(Debug, Default)]
pub struct Planned<'b> {
    pub lanes: Vec<Lane>,
    /// Stored runs that do not decode (to be quarantined).
    pub undecodable: Vec<CorruptBlock>,
    /// Each source topic met and the one partition count its events go
    /// with (`None`: unknown, or its destinations differ), for the outbox
    /// to cut new runs by.
    pub run_partitions: Vec<(&'b str, Option<i32>)>,
}

impl Forwarder {
    /// Plan the window's blocks (those `keep` marks) onto lanes with what
    /// the forwarder knows now (see [`plan_window`]), and tell the outbox
    /// each source topic's partition count, so that it cuts runs to fit.
    /// Returns the lanes and the runs that do not decode (to quarantine).
    pub(super) fn plan(
        &mut self,
        blocks: &[Block],
        keep: &[bool],
    ) -> (Vec<Lane>, Vec<CorruptBlock>) {
        let cluster = self.cluster.as_ref();
        let inputs = PlanInputs {
            router: &self.router,
            partition_count: |topic: &str| cluster.and_then(|c| c.partition_count(topic)),
            codec: self.codec,
            node_hash: self.node_hash,
            max_batch_events: self.config.max_batch_events as usize,
            max_batch_bytes: self.config.max_batch_bytes as usize,
        };
        let planned = plan_window(&inputs, &mut self.sticky, blocks, keep);
        for (topic, partitions) in planned.run_partitions {
            self.outbox.run_shapes.set_partitions(topic, partitions);
        }
        (planned.lanes, planned.undecodable)
    }
}

/// Assign every event of the blocks `keep` marks to its destination
/// partitions. A stored run that fits every destination as stored goes
/// whole to its partition without being decoded; one that does not is
/// decoded and planned event by event (see `outbox::run`). Keyless events
/// of a destination stick to one partition for the window, chosen by
/// `sticky` on first use.
pub fn plan_window<'b, C: Fn(&str) -> Option<i32>>(
    inputs: &PlanInputs<'_, C>,
    sticky: &mut Sticky,
    blocks: &'b [Block],
    keep: &[bool],
) -> Planned<'b> {
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
    // A lane's share of the window, with room for keys that crowd a
    // partition: reserved once, not grown event by event.
    let events: usize = blocks.iter().map(|b| b.count as usize).sum();
    let (max_events, max_bytes) = (inputs.max_batch_events, inputs.max_batch_bytes);
    let mut run_partitions = Vec::new();
    for (b, block) in blocks.iter().enumerate() {
        if !keep[b] {
            continue;
        }
        let topic = block.topic.as_str();
        if source != Some(topic) {
            routed.clear();
            inputs.router.for_each_destination(topic, |to| {
                let d = *by_topic.entry(to).or_insert_with(|| {
                    let known = (inputs.partition_count)(to);
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
                routed
                    .iter()
                    .all(|&d| destinations[d].known && destinations[d].partitions == f.partitions)
            });
            run_partitions.push((topic, one_count.map(|f| f.partitions)));
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
                h.fits(dest.partitions, partition, inputs.codec, inputs.node_hash)
                    && block.count as usize <= max_events
                    && run.raw_bytes <= max_bytes
            });
            if as_stored {
                for &d in &routed {
                    let dest = &mut destinations[d];
                    let partition = if h.partitions == KEYLESS {
                        *dest
                            .sticky
                            .get_or_insert_with(|| sticky.next_batch(dest.partitions))
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
                undecodable.push(CorruptBlock {
                    seq_first: block.seq_first,
                    events: block.count,
                    why: why.to_string(),
                });
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
                        .get_or_insert_with(|| sticky.next_batch(dest.partitions)),
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
    Planned {
        lanes,
        undecodable,
        run_partitions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::forward::route::RouteConfig;

    /// A block of events of `topic` from sequence `seq_first`, one per key
    /// (`None`: keyless).
    fn block(topic: &str, seq_first: i64, keys: &[Option<&str>]) -> Block {
        let mut data = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            Event {
                topic,
                key: key.map(str::as_bytes),
                headers: &[],
                value: format!("v{i}").as_bytes(),
                timestamp_ms: 1_700_000_000_000,
                clock: None,
            }
            .encode_into(&mut data);
        }
        Block {
            seq_first,
            topic: topic.into(),
            count: keys.len() as u32,
            created_ms: 0,
            data,
            run: None,
        }
    }

    fn inputs<'a>(
        router: &'a Router,
        counts: &'a [(&'a str, i32)],
    ) -> PlanInputs<'a, impl Fn(&str) -> Option<i32> + 'a> {
        PlanInputs {
            router,
            partition_count: move |t: &str| counts.iter().find(|c| c.0 == t).map(|c| c.1),
            codec: Codec::Lz4,
            node_hash: 1,
            max_batch_events: 1000,
            max_batch_bytes: 1 << 20,
        }
    }

    /// The lane of `(topic, partition)` and its items' sequence numbers.
    fn lane(p: &Planned<'_>, topic: &str, partition: i32) -> Option<Vec<i64>> {
        p.lanes
            .iter()
            .find(|l| l.topic == topic && l.partition == partition)
            .map(|l| l.items.iter().map(|i| i.seq).collect())
    }

    #[test]
    fn keys_go_where_murmur2_puts_them_on_every_destination_in_order() {
        let router = Router::new(&[RouteConfig {
            pattern: "sensors".into(),
            to: vec!["a".into(), "b".into()],
            priority: 5,
        }]);
        let counts = [("a", 3), ("b", 5)];
        let keys: Vec<String> = (0..20).map(|i| format!("device-{i}")).collect();
        let keyed: Vec<Option<&str>> = keys.iter().map(|k| Some(k.as_str())).collect();
        let blocks = vec![
            block("sensors", 10, &keyed[..12]),
            block("sensors", 22, &keyed[12..]),
        ];
        let p = plan_window(
            &inputs(&router, &counts),
            &mut Sticky::seeded(0),
            &blocks,
            &[true, true],
        );
        assert!(p.undecodable.is_empty());
        for (dest, n) in counts {
            let mut seen = 0;
            for partition in 0..n {
                let Some(seqs) = lane(&p, dest, partition) else {
                    continue;
                };
                assert!(
                    seqs.windows(2).all(|w| w[0] < w[1]),
                    "{dest}/{partition}: {seqs:?}"
                );
                for seq in &seqs {
                    let key = keys[(*seq - 10) as usize].as_bytes();
                    assert_eq!(partition_for_key(key, n), partition, "{dest}: seq {seq}");
                }
                seen += seqs.len();
            }
            assert_eq!(seen, 20, "{dest}: every event once");
        }
        // The two destinations differ in partitions: runs are not cut.
        assert_eq!(p.run_partitions, vec![("sensors", None)]);
    }

    #[test]
    fn keyless_events_stick_to_one_partition_per_destination_for_the_window() {
        let router = Router::new(&[]);
        let counts = [("t", 4)];
        let blocks = vec![block("t", 1, &[None; 5]), block("t", 6, &[None; 3])];
        let mut sticky = Sticky::seeded(7);
        let p = plan_window(
            &inputs(&router, &counts),
            &mut sticky,
            &blocks,
            &[true, true],
        );
        // Seed 7 over 4 partitions: partition 3, chosen once.
        assert_eq!(p.lanes.len(), 1);
        assert_eq!(lane(&p, "t", 3), Some((1..9).collect()));
        assert_eq!(sticky.next_batch(4), 0, "one choice taken for the window");
        assert_eq!(p.run_partitions, vec![("t", Some(4))]);
    }

    #[test]
    fn a_topic_of_unknown_partitions_goes_to_partition_0_and_left_out_blocks_are_not_planned() {
        let router = Router::new(&[]);
        let blocks = vec![
            block("new", 1, &[Some("k"), None]),
            block("new", 3, &[Some("x")]),
        ];
        let p = plan_window(
            &inputs(&router, &[]),
            &mut Sticky::seeded(0),
            &blocks,
            &[true, false],
        );
        assert_eq!(p.lanes.len(), 1);
        assert_eq!(lane(&p, "new", 0), Some(vec![1, 2]));
        assert_eq!(p.run_partitions, vec![("new", None)]);
        let items = &p.lanes[0].items;
        assert!(items.iter().all(|i| i.block == 0));
    }
}
