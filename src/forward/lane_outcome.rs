//! What one lane attempt achieved ([`LaneOutcome`], from `lane`), and the
//! one place a lane's state changes because of it: [`Lane::apply`]. Pure:
//! what the forwarder must then do (note the producer, dead-letter
//! records, start the partition's stream afresh, park a topic, back off)
//! comes back as [`Applied`].

use super::plan::{Item, Lane};
use crate::kafka::errors::{Class, Failure};
use crate::kafka::producer::ProducerIdentity;
use std::collections::HashSet;

/// What a lane attempt achieved.
#[derive(Debug, Default)]
pub struct LaneOutcome {
    /// Batches delivered, from the front.
    pub acked: usize,
    /// Batches sent in this attempt (delivered or not), from the front.
    pub sent: usize,
    /// Items (indexes into the attempt's items) Kafka refused for good,
    /// with the broker's reason.
    pub refused: Vec<(usize, String)>,
    /// The first undelivered batch was refused as a whole and names no
    /// record: halve it to find the one.
    pub halve: bool,
    pub failure: Option<Failure>,
    /// The lane before it (same partition) did not finish: nothing tried.
    pub gave_up: bool,
    /// Batches after the first undelivered one that the broker wrote all
    /// the same (indexes into the attempt's batches): their events are
    /// delivered; the rest of the lane goes under a new producer epoch.
    pub written_out_of_turn: Vec<usize>,
}

/// How the partition's idempotent stream goes on after the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamChange {
    /// Same producer, the next sequences.
    Continues,
    /// A hole or a refusal: the next epoch (what follows starts at 0).
    Afresh,
    /// Fenced: a newer epoch of ferry's producer id is known at the
    /// broker, so a new producer id.
    NewProducerId,
}

/// What a lane's failure means for its window.
#[derive(Debug, Clone)]
pub enum LaneFailure {
    /// Records refused for good (dead-lettered) or a batch to halve: the
    /// lane is cut again and retried.
    Refused(Failure),
    /// The topic is missing or not authorised: park it.
    Park(Failure),
    /// The lane before it did not finish; nothing was tried.
    GaveUp(Failure),
    /// Anything else: retried after a backoff, the leader looked up afresh.
    Failed(Failure),
}

/// What the forwarder does after [`Lane::apply`].
#[derive(Debug)]
pub struct Applied {
    /// Batches were acknowledged under this producer.
    pub acknowledged: Option<ProducerIdentity>,
    /// Items Kafka refused for good, with its reason: dead letters now.
    pub dead: Vec<(Item, String)>,
    pub stream: StreamChange,
    pub failure: Option<LaneFailure>,
}

impl Lane {
    /// Take in what an attempt achieved: batches acknowledged, records
    /// refused for good (left out, returned as dead letters), a batch to
    /// halve, batches written out of turn (left out: delivered), and a
    /// failure that needs the lane cut again under new producer state.
    pub fn apply(&mut self, out: LaneOutcome) -> Applied {
        let done = self.done();
        let acked_before = self.acked;
        // Events of batches the broker wrote after an earlier one failed.
        let written: HashSet<i64> = out
            .written_out_of_turn
            .iter()
            .filter_map(|&r| self.batches.get(acked_before + r))
            .flat_map(|b| &self.items[b.start as usize..(b.start + b.len) as usize])
            .map(|item| item.seq)
            .collect();
        let mut applied = Applied {
            acknowledged: self.producer.filter(|_| out.acked > 0),
            dead: Vec::new(),
            stream: StreamChange::Continues,
            failure: None,
        };
        self.acked += out.acked;
        self.sent_before = self.sent_before.max(acked_before + out.sent);
        if !out.refused.is_empty() || out.halve {
            let f = out
                .failure
                .unwrap_or_else(|| Failure::new(Class::PermanentRecord, "OTHER", "refused".into()));
            if out.halve {
                let len = self.batches.get(self.acked).map_or(1, |b| b.len as usize);
                self.batch_limit = (len / 2).max(1);
            } else {
                let mut gone: Vec<usize> = Vec::new();
                for (rel, reason) in out.refused {
                    let idx = done + rel;
                    if let Some(item) = self.items.get(idx).copied() {
                        applied.dead.push((item, reason));
                        gone.push(idx);
                    }
                }
                // `gone` counts from the lane's start; drop the finished
                // items first, then the refused ones.
                let shift = self.done();
                self.compact();
                let mut k = shift;
                self.items.retain(|_| {
                    let keep = !gone.contains(&k);
                    k += 1;
                    keep
                });
                self.batch_limit = usize::MAX;
            }
            // The batch and all after it in this partition were never
            // written: the stream starts afresh, the lane is cut again.
            self.cut_again();
            applied.stream = StreamChange::Afresh;
            if !written.is_empty() {
                self.drop_written(&written);
            }
            applied.failure = Some(LaneFailure::Refused(f));
            return applied;
        }
        if !written.is_empty() {
            // A hole in the partition's sequence: what follows it goes
            // under a new epoch, without what was written already.
            self.drop_written(&written);
            applied.stream = StreamChange::Afresh;
        }
        applied.failure = match out.failure {
            None => None,
            Some(f) if f.class == Class::ConfigTopic => Some(LaneFailure::Park(f)),
            // The lane before it failed; if that one's topic got parked,
            // this lane is held with it.
            Some(f) if out.gave_up => Some(LaneFailure::GaveUp(f)),
            Some(f) => {
                if f.class == Class::ProducerState {
                    self.cut_again();
                    let fenced = f.name == "INVALID_PRODUCER_EPOCH" || f.name == "PRODUCER_FENCED";
                    applied.stream = if fenced {
                        StreamChange::NewProducerId
                    } else {
                        StreamChange::Afresh
                    };
                }
                Some(LaneFailure::Failed(f))
            }
        };
        applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lane of `n` items (sequences 100..) cut into batches of `per`,
    /// numbered from 0 under producer 7.
    fn lane(n: usize, per: usize) -> Lane {
        let mut l = Lane::new("t".into(), 0);
        l.items = (0..n)
            .map(|i| Item {
                block: 0,
                offset: i as u32,
                seq: 100 + i as i64,
            })
            .collect();
        let producer = ProducerIdentity {
            producer_id: 7,
            epoch: 0,
        };
        let mut next = 0;
        l.cut(
            (per, usize::MAX),
            |_| 1,
            |_| None,
            Some(producer),
            1,
            &mut next,
        );
        l
    }

    fn seqs(l: &Lane) -> Vec<i64> {
        l.items.iter().map(|i| i.seq).collect()
    }

    #[test]
    fn acknowledged_batches_finish_their_items() {
        let mut l = lane(6, 2);
        let a = l.apply(LaneOutcome {
            acked: 2,
            sent: 3,
            ..LaneOutcome::default()
        });
        assert_eq!(a.acknowledged.map(|p| p.producer_id), Some(7));
        assert!(a.dead.is_empty() && a.failure.is_none());
        assert_eq!(a.stream, StreamChange::Continues);
        assert_eq!((l.done(), l.sent_before, l.replan), (4, 3, false));
        assert!(!l.settled());
        l.apply(LaneOutcome {
            acked: 1,
            sent: 1,
            ..LaneOutcome::default()
        });
        assert!(l.settled());
    }

    #[test]
    fn refused_records_leave_the_lane_as_dead_letters_and_the_stream_starts_afresh() {
        let mut l = lane(6, 2);
        // The first batch delivered; the second batch's first record (the
        // attempt's item 2) refused for good.
        let a = l.apply(LaneOutcome {
            acked: 1,
            sent: 2,
            refused: vec![(2, "CORRUPT_MESSAGE".into())],
            failure: Some(Failure::new(
                Class::PermanentRecord,
                "CORRUPT_MESSAGE",
                "bad".into(),
            )),
            ..LaneOutcome::default()
        });
        assert_eq!(a.dead.len(), 1);
        assert_eq!(
            (a.dead[0].0.seq, a.dead[0].1.as_str()),
            (102, "CORRUPT_MESSAGE")
        );
        assert_eq!(a.stream, StreamChange::Afresh);
        assert!(
            matches!(a.failure, Some(LaneFailure::Refused(ref f)) if f.name == "CORRUPT_MESSAGE")
        );
        // Finished and refused items are gone; the rest is cut again.
        assert_eq!(seqs(&l), vec![103, 104, 105]);
        assert!(l.replan);
        assert_eq!(l.batch_limit, usize::MAX);
    }

    #[test]
    fn a_batch_refused_as_a_whole_is_halved() {
        let mut l = lane(8, 4);
        let a = l.apply(LaneOutcome {
            sent: 1,
            halve: true,
            ..LaneOutcome::default()
        });
        assert_eq!(l.batch_limit, 2);
        assert!(a.dead.is_empty() && l.replan);
        assert!(matches!(a.failure, Some(LaneFailure::Refused(ref f)) if f.name == "OTHER"));
        assert_eq!(seqs(&l).len(), 8);
    }

    #[test]
    fn batches_written_out_of_turn_are_delivered_and_left_out() {
        let mut l = lane(6, 2);
        // Batch 0 failed; batch 1 (items 102, 103) was written all the same.
        let a = l.apply(LaneOutcome {
            sent: 3,
            written_out_of_turn: vec![1],
            failure: Some(Failure::transient("timeout".into())),
            ..LaneOutcome::default()
        });
        assert_eq!(seqs(&l), vec![100, 101, 104, 105]);
        assert_eq!(a.stream, StreamChange::Afresh);
        assert!(l.replan && l.batches.is_empty());
        assert!(matches!(a.failure, Some(LaneFailure::Failed(_))));
    }

    #[test]
    fn producer_state_failures_choose_the_next_epoch_or_a_new_id() {
        for (name, stream) in [
            ("OUT_OF_ORDER_SEQUENCE_NUMBER", StreamChange::Afresh),
            ("PRODUCER_FENCED", StreamChange::NewProducerId),
            ("INVALID_PRODUCER_EPOCH", StreamChange::NewProducerId),
        ] {
            let mut l = lane(4, 2);
            let a = l.apply(LaneOutcome {
                sent: 1,
                failure: Some(Failure::new(Class::ProducerState, name, "x".into())),
                ..LaneOutcome::default()
            });
            assert_eq!(a.stream, stream, "{name}");
            assert!(l.replan, "{name}");
            assert!(a.acknowledged.is_none());
        }
    }

    #[test]
    fn topic_failures_park_and_a_lane_that_gave_up_says_so() {
        let mut l = lane(2, 2);
        let f = Failure::new(Class::ConfigTopic, "TOPIC_AUTHORIZATION_FAILED", "x".into());
        let a = l.apply(LaneOutcome {
            failure: Some(f.clone()),
            ..LaneOutcome::default()
        });
        assert!(matches!(a.failure, Some(LaneFailure::Park(_))));
        let a = l.apply(LaneOutcome {
            failure: Some(Failure::transient("before".into())),
            gave_up: true,
            ..LaneOutcome::default()
        });
        assert!(matches!(a.failure, Some(LaneFailure::GaveUp(_))));
        assert_eq!(a.stream, StreamChange::Continues);
        assert!(!l.replan);
    }
}
