//! The idempotent producer's sequence streams, one per destination
//! partition: the producer id and epoch it is produced with, the next
//! sequence number, and a generation that changes whenever the stream is
//! started afresh, so that lanes planned in an older generation are cut and
//! numbered again before they are sent.
//!
//! A stream starts afresh (its producer id under the next epoch, from
//! sequence 0) when its planned batches can no longer be sent as planned:
//! a record Kafka refused for good, a topic parked, a hole in its
//! sequence, or the broker forgetting ferry's producer. Batches are never
//! renumbered under the same producer id and epoch, so a sequence number
//! always means one batch. Pure: the caller asks the broker for producer
//! ids.

use crate::kafka::producer::ProducerIdentity;
use crate::outbox::plan::Stream as StoredStream;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    pub producer: Option<ProducerIdentity>,
    pub next_sequence: i32,
    pub generation: u64,
}

/// Whether the brokers give ferry an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotence {
    /// Not asked yet.
    Unknown,
    /// No InitProducerId (or not authorised): at-least-once.
    Off,
    /// The newest producer id: new streams start with it.
    On(ProducerIdentity),
}

pub struct Streams {
    pub idempotence: Idempotence,
    map: HashMap<(String, i32), Stream>,
    /// Partitions whose stream must start afresh before their next batch.
    fresh: HashSet<(String, i32)>,
    next_generation: u64,
    /// The newest producer id is from an earlier run: a partition without
    /// a stream waits for one obtained now.
    stale: bool,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            idempotence: Idempotence::Unknown,
            map: HashMap::new(),
            fresh: HashSet::new(),
            next_generation: 1,
            stale: false,
        }
    }
}

impl Streams {
    /// Streams as stored, continued under `current` (the newest producer id).
    pub fn restore(current: ProducerIdentity, stored: &[StoredStream]) -> Self {
        let mut s = Self {
            idempotence: Idempotence::On(current),
            ..Self::default()
        };
        for st in stored {
            let generation = s.generation();
            s.map.insert(
                (st.topic.clone(), st.partition),
                Stream {
                    producer: Some(ProducerIdentity {
                        producer_id: st.producer_id,
                        epoch: st.epoch,
                    }),
                    next_sequence: st.next_sequence,
                    generation,
                },
            );
        }
        s
    }

    /// Forget every stream and the producer id: the next batch of any
    /// partition waits for a producer id obtained now. Generations keep
    /// counting up, so every lane planned so far is cut and numbered again.
    pub fn reset(&mut self) {
        self.reset_except(&[]);
    }

    /// As [`Streams::reset`], but the streams of `keep` go on as they are
    /// (their planned lanes still go as planned); every other partition
    /// waits for a producer id obtained now.
    pub fn reset_except(&mut self, keep: &[(String, i32)]) {
        self.map.retain(|k, _| keep.contains(k));
        self.fresh.retain(|k| keep.contains(k));
        self.next_generation += 1;
        if self.map.is_empty() {
            self.idempotence = Idempotence::Unknown;
        } else {
            self.stale = true;
        }
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// A producer id must be asked for before `(topic, partition)` can get
    /// its next batch.
    pub fn needs_producer_id(&self, topic: &str, partition: i32) -> bool {
        match self.idempotence {
            Idempotence::Unknown => true,
            Idempotence::Off => false,
            Idempotence::On(_) => {
                let key = (topic.to_string(), partition);
                self.fresh.contains(&key) || (self.stale && !self.map.contains_key(&key))
            }
        }
    }

    /// The broker answered InitProducerId (`None`: no idempotence). Streams
    /// waiting to start afresh start with this id at sequence 0.
    pub fn producer_id_received(&mut self, producer: Option<ProducerIdentity>) {
        self.stale = false;
        self.idempotence = match producer {
            Some(p) => Idempotence::On(p),
            None => Idempotence::Off,
        };
        for key in std::mem::take(&mut self.fresh) {
            let generation = self.generation();
            self.map.insert(
                key,
                Stream {
                    producer,
                    next_sequence: if producer.is_some() { 0 } else { -1 },
                    generation,
                },
            );
        }
    }

    /// The stream of `(topic, partition)`, started with the newest producer
    /// id if it has none.
    pub fn get(&mut self, topic: &str, partition: i32) -> &mut Stream {
        let producer = match self.idempotence {
            Idempotence::On(p) => Some(p),
            _ => None,
        };
        let key = (topic.to_string(), partition);
        if !self.map.contains_key(&key) {
            let generation = self.generation();
            self.map.insert(
                key.clone(),
                Stream {
                    producer,
                    next_sequence: if producer.is_some() { 0 } else { -1 },
                    generation,
                },
            );
        }
        self.map.get_mut(&key).expect("inserted above")
    }

    /// Start this partition's stream afresh before its next batch: a new
    /// producer id (sequence 0), and a new generation at once, so lanes
    /// planned so far are planned again.
    pub fn start_afresh(&mut self, topic: &str, partition: i32) {
        let key = (topic.to_string(), partition);
        match self.idempotence {
            // As Kafka's Java client does since 2.5 (KIP-360): the same
            // producer id under the next epoch, from sequence 0, decided
            // here without asking the broker. Kafka takes a higher epoch at
            // sequence 0 and fences the old one on this partition; a new id
            // only when the epoch would overflow.
            Idempotence::On(_)
                if self
                    .map
                    .get(&key)
                    .and_then(|s| s.producer)
                    .is_some_and(|p| p.epoch < i16::MAX - 1) =>
            {
                let generation = self.generation();
                if let Some(s) = self.map.get_mut(&key)
                    && let Some(p) = s.producer.as_mut()
                {
                    p.epoch += 1;
                    s.next_sequence = 0;
                    s.generation = generation;
                }
            }
            Idempotence::On(_) => {
                self.fresh.insert(key.clone());
                let generation = self.generation();
                if let Some(s) = self.map.get_mut(&key) {
                    s.generation = generation;
                }
            }
            Idempotence::Off | Idempotence::Unknown => {
                let generation = self.generation();
                if let Some(s) = self.map.get_mut(&key) {
                    s.generation = generation;
                }
            }
        }
    }

    /// Start this partition's stream afresh under a new producer id (the
    /// broker fenced the epoch): asked for before its next batch.
    pub fn start_with_new_id(&mut self, topic: &str, partition: i32) {
        let key = (topic.to_string(), partition);
        if let Some(s) = self.map.get_mut(&key) {
            s.producer = None;
        }
        self.start_afresh(topic, partition);
    }

    /// The stored form of these partitions' streams.
    pub fn stored(&self, keys: impl IntoIterator<Item = (String, i32)>) -> Vec<StoredStream> {
        keys.into_iter()
            .filter_map(|(topic, partition)| {
                let s = self.map.get(&(topic.clone(), partition))?;
                let p = s.producer?;
                Some(StoredStream {
                    topic,
                    partition,
                    producer_id: p.producer_id,
                    epoch: p.epoch,
                    next_sequence: s.next_sequence,
                })
            })
            .collect()
    }

    /// The current generation of a partition's stream, if it has one.
    pub fn generation_of(&self, topic: &str, partition: i32) -> Option<u64> {
        self.map
            .get(&(topic.to_string(), partition))
            .map(|s| s.generation)
    }

    /// The producer a partition's stream uses, if it has one.
    pub fn producer_of(&self, topic: &str, partition: i32) -> Option<ProducerIdentity> {
        self.map
            .get(&(topic.to_string(), partition))
            .and_then(|s| s.producer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ProducerIdentity = ProducerIdentity {
        producer_id: 1,
        epoch: 0,
    };
    const B: ProducerIdentity = ProducerIdentity {
        producer_id: 2,
        epoch: 0,
    };

    #[test]
    fn new_streams_take_the_newest_producer_and_start_at_zero() {
        let mut s = Streams::default();
        assert!(s.needs_producer_id("t", 0));
        s.producer_id_received(Some(A));
        assert!(!s.needs_producer_id("t", 0));
        let st = s.get("t", 0);
        assert_eq!((st.producer, st.next_sequence), (Some(A), 0));
        st.next_sequence = 40;
        assert_eq!(s.get("t", 0).next_sequence, 40);
    }

    #[test]
    fn a_fresh_start_bumps_the_epoch_and_leaves_other_partitions_alone() {
        let mut s = Streams::default();
        s.producer_id_received(Some(A));
        s.get("t", 0).next_sequence = 10;
        s.get("t", 1).next_sequence = 20;
        let old = s.generation_of("t", 0).unwrap();
        s.start_afresh("t", 0);
        assert_ne!(s.generation_of("t", 0), Some(old));
        // No round trip to the broker: the same id, the next epoch, from 0.
        assert!(!s.needs_producer_id("t", 0) && !s.needs_producer_id("t", 1));
        let st = *s.get("t", 0);
        let bumped = ProducerIdentity {
            producer_id: A.producer_id,
            epoch: A.epoch + 1,
        };
        assert_eq!((st.producer, st.next_sequence), (Some(bumped), 0));
        let other = *s.get("t", 1);
        assert_eq!((other.producer, other.next_sequence), (Some(A), 20));
    }

    #[test]
    fn an_epoch_at_its_limit_takes_a_new_id() {
        let worn = ProducerIdentity {
            producer_id: 1,
            epoch: i16::MAX - 1,
        };
        let mut s = Streams::default();
        s.producer_id_received(Some(worn));
        s.get("t", 0).next_sequence = 10;
        s.start_afresh("t", 0);
        assert!(s.needs_producer_id("t", 0) && !s.needs_producer_id("t", 1));
        s.producer_id_received(Some(B));
        let st = *s.get("t", 0);
        assert_eq!((st.producer, st.next_sequence), (Some(B), 0));
        // A partition seen for the first time now takes the newest id.
        assert_eq!(s.get("u", 0).producer, Some(B));
    }

    #[test]
    fn a_reset_asks_for_a_new_id_and_never_reuses_a_generation() {
        let stored = vec![StoredStream {
            topic: "t".into(),
            partition: 0,
            producer_id: 1,
            epoch: 0,
            next_sequence: 500,
        }];
        let mut s = Streams::restore(A, &stored);
        let before = s.generation_of("t", 0).unwrap();
        s.reset();
        assert_eq!(s.idempotence, Idempotence::Unknown);
        assert!(s.needs_producer_id("t", 0));
        assert_eq!(s.generation_of("t", 0), None);
        s.producer_id_received(Some(B));
        let st = *s.get("t", 0);
        assert_eq!((st.producer, st.next_sequence), (Some(B), 0));
        assert!(st.generation > before);
    }

    #[test]
    fn a_reset_may_keep_some_streams_going() {
        let stored = vec![
            StoredStream {
                topic: "t".into(),
                partition: 0,
                producer_id: 1,
                epoch: 0,
                next_sequence: 500,
            },
            StoredStream {
                topic: "t".into(),
                partition: 1,
                producer_id: 1,
                epoch: 0,
                next_sequence: 70,
            },
        ];
        let mut s = Streams::restore(A, &stored);
        s.reset_except(&[("t".to_string(), 1)]);
        // The kept stream needs nothing; any other waits for a new id.
        assert!(!s.needs_producer_id("t", 1));
        assert!(s.needs_producer_id("t", 0) && s.needs_producer_id("u", 0));
        s.producer_id_received(Some(B));
        assert_eq!(s.get("t", 1).next_sequence, 70);
        assert_eq!(s.get("t", 1).producer, Some(A));
        assert_eq!(s.get("t", 0).producer, Some(B));
        assert_eq!(s.get("t", 0).next_sequence, 0);
    }

    #[test]
    fn without_idempotence_there_are_no_sequences() {
        let mut s = Streams::default();
        s.producer_id_received(None);
        assert!(!s.needs_producer_id("t", 0));
        let st = *s.get("t", 0);
        assert_eq!((st.producer, st.next_sequence), (None, -1));
        assert!(s.stored([("t".to_string(), 0)]).is_empty());
    }

    #[test]
    fn restored_streams_continue_where_they_stopped() {
        let stored = vec![StoredStream {
            topic: "t".into(),
            partition: 2,
            producer_id: 1,
            epoch: 0,
            next_sequence: 77,
        }];
        let mut s = Streams::restore(B, &stored);
        assert_eq!(s.get("t", 2).next_sequence, 77);
        assert_eq!(s.get("t", 2).producer, Some(A));
        assert_eq!(s.get("t", 3).producer, Some(B));
        assert_eq!(s.stored([("t".to_string(), 2)]), stored);
    }
}
