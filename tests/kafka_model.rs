//! The Kafka model itself (tests/common/kafka_model.rs): its idempotent
//! producer rules against Kafka's, and one run of the real ferry against it.
// The harness (`mod common`) needs librdkafka's mock cluster: host only.
#![cfg(target_arch = "x86_64")]

mod common;

use common::kafka_model::{
    BatchHeader, KafkaModel, ProducerStates, Verdict, code, increment_sequence,
};
use common::*;
use std::time::Duration;

const PID: i64 = 1000;

fn batch(epoch: i16, first_seq: i32, record_count: i32) -> BatchHeader {
    BatchHeader {
        producer_id: PID,
        epoch,
        first_seq,
        record_count,
    }
}

/// Append `n` batches of 10 records (seq 0..10, 10..20, ...) at epoch 0.
fn with_batches(n: i32) -> (ProducerStates, i64) {
    let mut s = ProducerStates::default();
    let mut end = 0;
    for i in 0..n {
        assert_eq!(s.apply(&batch(0, i * 10, 10), end, false), Verdict::Append);
        end += 10;
    }
    (s, end)
}

#[test]
fn a_duplicate_of_one_of_the_last_five_batches_answers_its_original_offset() {
    let (mut s, end) = with_batches(7);
    // Batches 2..=6 are retained (offsets 20.. to 60..).
    for i in 2..7 {
        assert_eq!(
            s.apply(&batch(0, i * 10, 10), end, false),
            Verdict::Duplicate {
                base_offset: i64::from(i) * 10
            }
        );
    }
    assert_eq!(s.entry(PID).unwrap().batches.len(), 5);
    // Same first sequence, other length: not a duplicate, and out of order.
    assert_eq!(
        s.apply(&batch(0, 60, 5), end, false),
        Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER)
    );
}

#[test]
fn a_duplicate_older_than_five_batches_is_out_of_order() {
    let (mut s, end) = with_batches(7);
    for i in 0..2 {
        assert_eq!(
            s.apply(&batch(0, i * 10, 10), end, false),
            Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER)
        );
    }
}

#[test]
fn a_gap_is_out_of_order_and_the_next_sequence_appends() {
    let (mut s, end) = with_batches(2);
    assert_eq!(
        s.apply(&batch(0, 21, 1), end, false),
        Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER)
    );
    assert_eq!(s.apply(&batch(0, 20, 1), end, false), Verdict::Append);
    let e = s.entry(PID).unwrap();
    assert_eq!(
        (e.last_seq(), e.batches.back().unwrap().first_offset),
        (20, 20)
    );
}

#[test]
fn an_unknown_producer_is_accepted_at_any_sequence_except_before_2_5() {
    let mut s = ProducerStates::default();
    assert_eq!(s.apply(&batch(3, 777, 5), 0, false), Verdict::Append);
    assert_eq!(s.entry(PID).unwrap().last_seq(), 781);
    let mut legacy = ProducerStates::default();
    assert_eq!(
        legacy.apply(&batch(3, 777, 5), 0, true),
        Verdict::Reject(code::UNKNOWN_PRODUCER_ID)
    );
    assert!(legacy.entry(PID).is_none(), "nothing recorded");
    assert_eq!(legacy.apply(&batch(3, 0, 5), 0, true), Verdict::Append);
    // Expired (forgotten) state is the same as never seen.
    let (mut s, end) = with_batches(3);
    s.entries.clear();
    assert_eq!(s.apply(&batch(0, 0, 10), end, false), Verdict::Append);
    let (mut s, end) = with_batches(3);
    s.entries.clear();
    assert_eq!(
        s.apply(&batch(0, 30, 10), end, true),
        Verdict::Reject(code::UNKNOWN_PRODUCER_ID)
    );
}

#[test]
fn a_bumped_epoch_needs_sequence_zero_and_starts_afresh() {
    let (mut s, end) = with_batches(3);
    assert_eq!(
        s.apply(&batch(1, 30, 10), end, false),
        Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER)
    );
    assert_eq!(s.apply(&batch(1, 0, 4), end, false), Verdict::Append);
    let e = s.entry(PID).unwrap();
    assert_eq!((e.epoch, e.batches.len(), e.last_seq()), (1, 1, 3));
    // The old epoch's batches are gone: not a duplicate, a fenced epoch.
    assert_eq!(
        s.apply(&batch(0, 0, 10), end + 4, false),
        Verdict::Reject(code::INVALID_PRODUCER_EPOCH)
    );
}

#[test]
fn a_lower_epoch_is_fenced() {
    let mut s = ProducerStates::default();
    assert_eq!(s.apply(&batch(5, 0, 1), 0, false), Verdict::Append);
    assert_eq!(
        s.apply(&batch(4, 1, 1), 1, false),
        Verdict::Reject(code::INVALID_PRODUCER_EPOCH)
    );
    assert_eq!(
        s.apply(&batch(4, 0, 1), 1, true),
        Verdict::Reject(code::INVALID_PRODUCER_EPOCH)
    );
}

#[test]
fn sequences_wrap_at_i32_max() {
    assert_eq!(increment_sequence(i32::MAX, 1), 0);
    assert_eq!(increment_sequence(i32::MAX - 1, 3), 1);
    let mut s = ProducerStates::default();
    // Records MAX-1, MAX, 0: the batch's last sequence is 0.
    let b = batch(0, i32::MAX - 1, 3);
    assert_eq!(b.last_seq(), 0);
    assert_eq!(s.apply(&b, 0, false), Verdict::Append);
    assert_eq!(s.apply(&batch(0, 1, 2), 3, false), Verdict::Append);
    assert_eq!(s.apply(&b, 5, false), Verdict::Duplicate { base_offset: 0 });
    // And a batch ending exactly at MAX is followed by 0.
    let mut s = ProducerStates::default();
    assert_eq!(
        s.apply(&batch(0, i32::MAX - 9, 10), 0, false),
        Verdict::Append
    );
    assert_eq!(s.apply(&batch(0, 0, 1), 10, false), Verdict::Append);
    assert_eq!(
        s.apply(&batch(0, 5, 1), 11, false),
        Verdict::Reject(code::OUT_OF_ORDER_SEQUENCE_NUMBER)
    );
}

#[test]
fn batches_without_producer_id_are_not_checked() {
    let mut s = ProducerStates::default();
    let b = BatchHeader {
        producer_id: -1,
        epoch: -1,
        first_seq: -1,
        record_count: 3,
    };
    assert_eq!(s.apply(&b, 0, true), Verdict::Append);
    assert_eq!(s.apply(&b, 3, true), Verdict::Append);
    assert!(s.entries.is_empty());
}

#[test]
fn ferry_delivers_every_event_once_to_the_model() {
    let model = KafkaModel::start(2);
    model.create_topic("m", 2);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &model.bootstrap(), "");
    f.start();

    const N: usize = 400;
    let mut client = FrameClient::connect(&f.socket()).unwrap();
    let mut acked = Vec::new();
    for chunk in 0..N / 100 {
        for i in chunk * 100..(chunk + 1) * 100 {
            let key = format!("k{}", i % 7);
            let value = format!("{key}|{i}");
            client
                .send_event("m", Some(key.as_bytes()), &[], value.as_bytes())
                .unwrap();
            acked.push(value);
        }
        assert_eq!(client.answers_for(100), Ok((100, vec![])));
    }
    f.wait_status(Duration::from_secs(60), "backlog delivered", |s| {
        s.backlog_events == 0 && s.sent == N as u64
    });

    let got = model.records("m");
    assert_eq!(got.len(), N, "each event in the log exactly once");
    assert_eq!(check_delivery(&acked, &got), 0, "no duplicates");
    assert!(
        got.iter().any(|g| g.partition == 0) && got.iter().any(|g| g.partition == 1),
        "both partitions (leaders on both brokers) used"
    );
    let c = model.counters();
    assert!(c.init_producer_id_calls >= 1, "{c:?}");
    assert_eq!((c.duplicates, c.out_of_order), (0, 0), "{c:?}");
    for p in 0..2 {
        for r in model.log("m", p) {
            assert!(
                c.producer_ids.contains(&r.producer_id),
                "record {r:?} not from an idempotent producer"
            );
        }
    }
    assert!(
        model
            .produce_answers()
            .iter()
            .all(|(_, _, e)| *e == code::NONE),
        "{:?}",
        model.produce_answers()
    );
    assert_eq!(f.terminate().0, Some(0));
}
