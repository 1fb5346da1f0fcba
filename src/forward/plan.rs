//! A delivery window's plan: which of its events go to which partition,
//! cut into record batches, each with the idempotent producer's base
//! sequence. The plan is stored before anything of it is sent (see
//! `outbox::plan`), so after a crash the same batches go again with the
//! same sequences. Pure: no I/O, no clock.

use crate::kafka::producer::ProducerIdentity;
use crate::kafka::record_batch::Codec;
use crate::outbox::Block;
use crate::varint::{put_signed as put, unzigzag};

/// One event's place in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub block: u32,
    pub offset: u32,
    pub seq: i64,
}

/// A run of a lane's items sent as one record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Index of its first item in the lane.
    pub start: u32,
    pub len: u32,
    /// The idempotent producer's sequence of its first record (-1 without
    /// idempotence).
    pub base_sequence: i32,
}

/// Events of one window bound for one partition, in order, and their batches.
#[derive(Debug, Clone)]
pub struct Lane {
    pub topic: String,
    pub partition: i32,
    pub items: Vec<Item>,
    pub batches: Vec<Batch>,
    /// The producer the batches' sequences belong to (`None`: not
    /// idempotent, or not planned yet).
    pub producer: Option<ProducerIdentity>,
    /// The stream generation the batches were planned in (see `Streams`).
    pub generation: u64,
    /// Batches finished (acknowledged or dead-lettered), from the front.
    pub acked: usize,
    /// Batches, from the front, that may have reached the broker in an
    /// earlier attempt (or before a crash).
    pub sent_before: usize,
    /// Needs its remaining items cut into batches anew before it is sent.
    pub replan: bool,
    /// At most this many events per batch (halved to find a bad record).
    pub batch_limit: usize,
    /// The topic got parked: give up on this lane for this window.
    pub abandoned: bool,
    /// Its partition has no leader (or lanes of it wait aside): not sent
    /// in this attempt (see `forward::deferral`).
    pub deferred: bool,
}

impl Lane {
    pub fn new(topic: String, partition: i32) -> Self {
        Self {
            topic,
            partition,
            items: Vec::new(),
            batches: Vec::new(),
            producer: None,
            generation: 0,
            acked: 0,
            sent_before: 0,
            replan: true,
            batch_limit: usize::MAX,
            abandoned: false,
            deferred: false,
        }
    }

    /// Its partition has no leader: not sent in this attempt.
    pub fn defer(&mut self) {
        self.deferred = true;
    }

    /// A new attempt: every lane is tried again (see `forward::deferral`).
    pub fn undefer(&mut self) {
        self.deferred = false;
    }

    /// Its topic got parked: given up on for this window.
    pub fn abandon(&mut self) {
        self.abandoned = true;
    }

    /// Known never to have been sent (a window put aside before it went):
    /// none of its batches can have reached the broker.
    pub fn never_sent(&mut self) {
        self.sent_before = 0;
    }

    /// Restored after a restart with the batches it was planned as, under
    /// the producer that numbered them: sent again exactly so (they may have
    /// reached the broker, which then drops them as duplicates).
    pub fn resume(&mut self, batches: &[(u32, i32)], producer: ProducerIdentity, generation: u64) {
        let mut start = 0u32;
        self.batches.clear();
        for &(len, base_sequence) in batches {
            self.batches.push(Batch {
                start,
                len,
                base_sequence,
            });
            start += len;
        }
        self.producer = Some(producer);
        self.generation = generation;
        self.sent_before = self.batches.len();
        self.replan = false;
    }

    /// Its batches' numbering no longer holds (another cluster, another
    /// producer): cut and numbered again before it is sent.
    pub fn cut_again(&mut self) {
        self.replan = true;
    }

    /// Items finished, from the front.
    pub fn done(&self) -> usize {
        if self.acked == 0 {
            return 0;
        }
        self.batches
            .get(self.acked)
            .map_or(self.items.len(), |b| b.start as usize)
    }

    /// Nothing left to try in this window: all done, or abandoned.
    pub fn settled(&self) -> bool {
        self.abandoned || self.done() == self.items.len()
    }

    /// Drop the finished items and batches, keeping only what is left.
    pub fn compact(&mut self) {
        let done = self.done();
        if done == 0 {
            return;
        }
        self.items.drain(..done);
        self.batches.drain(..self.acked);
        for b in &mut self.batches {
            b.start -= done as u32;
        }
        self.sent_before = self.sent_before.saturating_sub(self.acked);
        self.acked = 0;
    }

    /// Leave out the items (by sequence number) whose batches the broker
    /// wrote after an earlier batch of the lane failed: they are
    /// delivered. What is left is cut and numbered again.
    pub fn drop_written(&mut self, written: &std::collections::HashSet<i64>) {
        self.compact();
        self.items.retain(|item| !written.contains(&item.seq));
        self.batches.clear();
        self.sent_before = 0;
        self.replan = true;
    }

    /// Cut the remaining items into batches of at most `max_events` events
    /// and `max_bytes` bytes (`size` of each item), numbering them from
    /// `next_sequence` (advanced past them; -1 stays -1). Where the items
    /// at a point are a whole stored run within the limits (`whole_run`:
    /// its events and size), the run is a batch of its own, so that it is
    /// sent as stored (see `outbox::run`).
    pub fn cut(
        &mut self,
        (max_events, max_bytes): (usize, usize),
        size: impl Fn(&Item) -> usize,
        whole_run: impl Fn(&[Item]) -> Option<(usize, usize)>,
        producer: Option<ProducerIdentity>,
        generation: u64,
        next_sequence: &mut i32,
    ) {
        self.compact();
        let max_events = max_events.min(self.batch_limit).max(1);
        let run_at = |items: &[Item]| {
            whole_run(items).filter(|&(n, bytes)| n <= max_events && bytes <= max_bytes)
        };
        self.batches.clear();
        let mut start = 0usize;
        while start < self.items.len() {
            let len = match run_at(&self.items[start..]) {
                Some((n, _)) => n,
                None => {
                    let mut len = 0usize;
                    let mut bytes = 0usize;
                    for (i, item) in self.items[start..].iter().enumerate() {
                        let s = size(item);
                        if len > 0
                            && (len >= max_events
                                || bytes + s > max_bytes
                                || run_at(&self.items[start + i..]).is_some())
                        {
                            break;
                        }
                        len += 1;
                        bytes += s;
                    }
                    len
                }
            };
            let base_sequence = *next_sequence;
            if base_sequence >= 0 {
                *next_sequence = advance(base_sequence, len);
            }
            self.batches.push(Batch {
                start: start as u32,
                len: len as u32,
                base_sequence,
            });
            start += len;
        }
        self.producer = producer;
        self.generation = generation;
        self.sent_before = 0;
        self.replan = false;
    }
}

/// If `items` start with every event of a stored run, in order, and the
/// run can be sent as stored to `(partitions, partition)`: its events and
/// uncompressed size (see `outbox::run`).
pub fn whole_stored_run(
    blocks: &[Block],
    items: &[Item],
    (partitions, partition): (i32, i32),
    codec: Codec,
    node: u32,
) -> Option<(usize, usize)> {
    let first = items.first()?;
    let block = blocks.get(first.block as usize)?;
    let run = block.run.as_ref()?;
    let n = block.count as usize;
    let last = items.get(n.checked_sub(1)?)?;
    let whole = first.offset == 0 && last.block == first.block && last.offset as usize == n - 1;
    (whole && run.header.fits(partitions, partition, codec, node)).then_some((n, run.raw_bytes))
}

/// Sequence numbers wrap to 0 after `i32::MAX`, as Kafka's do.
pub fn advance(sequence: i32, by: usize) -> i32 {
    ((sequence as i64 + by as i64) % (i32::MAX as i64 + 1)) as i32
}

/// The stored form of the remaining part of each lane: topic, partition,
/// producer, batches (length, base sequence) and the items' sequence
/// numbers as runs. Items are found again by sequence number in the
/// window's blocks.
pub fn encode(lanes: &[Lane]) -> Vec<u8> {
    let mut out = Vec::new();
    // Every lane with events left, abandoned ones too (after a restart
    // they are tried again): a window's blocks are deleted once its stored
    // lanes are delivered, so a lane left out would be lost.
    let live: Vec<&Lane> = lanes.iter().filter(|l| l.done() < l.items.len()).collect();
    put(&mut out, live.len() as i64);
    for lane in live {
        put(&mut out, lane.topic.len() as i64);
        out.extend_from_slice(lane.topic.as_bytes());
        put(&mut out, lane.partition as i64);
        let p = lane.producer.unwrap_or(ProducerIdentity {
            producer_id: -1,
            epoch: -1,
        });
        put(&mut out, p.producer_id);
        put(&mut out, p.epoch as i64);
        let batches = &lane.batches[lane.acked..];
        let done = lane.done();
        put(&mut out, batches.len() as i64);
        for b in batches {
            put(&mut out, b.len as i64);
            put(&mut out, b.base_sequence as i64);
        }
        // Runs of consecutive sequence numbers: (gap from the last, length),
        // counted first, then written (no list of them is built).
        let items = &lane.items[done..];
        put(&mut out, seq_runs(items).count() as i64);
        for (gap, n) in seq_runs(items) {
            put(&mut out, gap);
            put(&mut out, n);
        }
    }
    out
}

/// The runs of consecutive sequence numbers of `items`, each as (gap from
/// the end of the run before, length).
fn seq_runs(items: &[Item]) -> impl Iterator<Item = (i64, i64)> + '_ {
    let mut last = 0i64;
    let mut i = 0;
    std::iter::from_fn(move || {
        let first = items.get(i)?.seq;
        let mut n = 1;
        while i + n < items.len() && items[i + n].seq == first + n as i64 {
            n += 1;
        }
        let run = (first - last, n as i64);
        last = first + n as i64;
        i += n;
        Some(run)
    })
}

/// A lane as stored: items as sequence numbers, to be placed by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLane {
    pub topic: String,
    pub partition: i32,
    pub producer: ProducerIdentity,
    /// (length, base sequence) of each batch.
    pub batches: Vec<(u32, i32)>,
    pub seqs: Vec<i64>,
}

/// Read what [`encode`] wrote; `None` if it is not that.
pub fn decode(mut bytes: &[u8]) -> Option<Vec<StoredLane>> {
    let r = &mut bytes;
    let n = take(r)?;
    let mut lanes = Vec::new();
    for _ in 0..n {
        let len = usize::try_from(take(r)?).ok()?;
        let topic = std::str::from_utf8(r.get(..len)?).ok()?.to_string();
        *r = &r[len..];
        let partition = i32::try_from(take(r)?).ok()?;
        let producer = ProducerIdentity {
            producer_id: take(r)?,
            epoch: i16::try_from(take(r)?).ok()?,
        };
        let nb = take(r)?;
        let mut batches = Vec::new();
        for _ in 0..nb {
            batches.push((u32::try_from(take(r)?).ok()?, i32::try_from(take(r)?).ok()?));
        }
        let nr = take(r)?;
        let mut seqs = Vec::new();
        let mut last = 0i64;
        for _ in 0..nr {
            let first = last + take(r)?;
            let len = take(r)?;
            if !(0..=1 << 24).contains(&len) {
                return None;
            }
            seqs.extend(first..first + len);
            last = first + len;
        }
        // A lane never numbered (its topic was unknown) has no batches.
        if !batches.is_empty() && batches.iter().map(|b| b.0 as usize).sum::<usize>() != seqs.len()
        {
            return None;
        }
        lanes.push(StoredLane {
            topic,
            partition,
            producer,
            batches,
            seqs,
        });
    }
    r.is_empty().then_some(lanes)
}

fn take(r: &mut &[u8]) -> Option<i64> {
    let mut u = 0u64;
    for i in 0..10 {
        let (&b, rest) = r.split_first()?;
        *r = rest;
        u |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(unzigzag(u));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: ProducerIdentity = ProducerIdentity {
        producer_id: 9,
        epoch: 0,
    };

    fn lane(seqs: &[i64]) -> Lane {
        let mut l = Lane::new("t".into(), 3);
        l.items = seqs
            .iter()
            .map(|&seq| Item {
                block: 0,
                offset: seq as u32,
                seq,
            })
            .collect();
        l
    }

    #[test]
    fn batches_respect_both_limits_and_number_from_the_stream() {
        let mut l = lane(&[1, 2, 3, 4, 5, 6, 7]);
        let mut next = 10;
        l.cut((3, 1000), |_| 10, |_| None, Some(PID), 1, &mut next);
        let lens: Vec<u32> = l.batches.iter().map(|b| b.len).collect();
        assert_eq!(lens, [3, 3, 1]);
        let bases: Vec<i32> = l.batches.iter().map(|b| b.base_sequence).collect();
        assert_eq!(bases, [10, 13, 16]);
        assert_eq!(next, 17);
        // Bytes: 25 per item, 60 per batch -> 2 per batch.
        let mut next = 0;
        l.cut((100, 60), |_| 25, |_| None, Some(PID), 1, &mut next);
        assert_eq!(l.batches.len(), 4);
        // An item larger than the limit still goes, alone.
        l.cut((100, 10), |_| 25, |_| None, Some(PID), 1, &mut next);
        assert_eq!(l.batches.len(), 7);
    }

    #[test]
    fn without_idempotence_sequences_stay_unset() {
        let mut l = lane(&[1, 2]);
        let mut next = -1;
        l.cut((1, 100), |_| 1, |_| None, None, 0, &mut next);
        assert!(l.batches.iter().all(|b| b.base_sequence == -1));
        assert_eq!(next, -1);
    }

    #[test]
    fn sequences_wrap_as_kafka_wraps_them() {
        assert_eq!(advance(i32::MAX, 1), 0);
        assert_eq!(advance(i32::MAX - 1, 3), 1);
    }

    #[test]
    fn replanning_keeps_only_what_is_left() {
        let mut l = lane(&[1, 2, 3, 4, 5]);
        let mut next = 0;
        l.cut((2, 1000), |_| 1, |_| None, Some(PID), 1, &mut next);
        l.acked = 1;
        assert_eq!(l.done(), 2);
        l.cut((10, 1000), |_| 1, |_| None, Some(PID), 2, &mut next);
        assert_eq!(l.items.len(), 3);
        assert_eq!(
            l.batches,
            vec![Batch {
                start: 0,
                len: 3,
                base_sequence: 5
            }]
        );
        assert_eq!((l.acked, l.done()), (0, 0));
    }

    #[test]
    fn plans_round_trip_through_their_stored_form() {
        let mut a = lane(&[5, 6, 7, 9, 10, 20]);
        let mut next = 100;
        a.cut((4, 1000), |_| 1, |_| None, Some(PID), 1, &mut next);
        let mut b = lane(&[8]);
        b.partition = 1;
        b.cut((4, 1000), |_| 1, |_| None, Some(PID), 1, &mut next);
        a.acked = 1; // the first batch is finished: not stored
        let stored = decode(&encode(&[a, b])).unwrap();
        assert_eq!(
            stored,
            vec![
                StoredLane {
                    topic: "t".into(),
                    partition: 3,
                    producer: PID,
                    batches: vec![(2, 104)],
                    seqs: vec![10, 20],
                },
                StoredLane {
                    topic: "t".into(),
                    partition: 1,
                    producer: PID,
                    batches: vec![(1, 106)],
                    seqs: vec![8],
                },
            ]
        );
        assert_eq!(decode(&[1, 2]), None);
    }

    /// A window's blocks go once its stored lanes are delivered: a lane
    /// that was abandoned (its topic parked) or never numbered must be
    /// stored too, or its events would be lost after a restart.
    #[test]
    fn abandoned_and_unnumbered_lanes_are_stored_too() {
        let mut parked = lane(&[1, 2]);
        let mut next = 0;
        parked.cut((10, 1000), |_| 1, |_| None, Some(PID), 1, &mut next);
        parked.abandoned = true;
        let unnumbered = lane(&[3]);
        let mut finished = lane(&[4]);
        finished.cut((10, 1000), |_| 1, |_| None, Some(PID), 1, &mut next);
        finished.acked = 1;
        let stored = decode(&encode(&[parked, unnumbered, finished])).unwrap();
        let seqs: Vec<Vec<i64>> = stored.iter().map(|l| l.seqs.clone()).collect();
        assert_eq!(seqs, vec![vec![1, 2], vec![3]]);
        assert_eq!(stored[1].producer.producer_id, -1);
        assert!(stored[1].batches.is_empty());
    }
}
