//! Delivery judged by Kafka's own rules: the real ferry against the broker
//! model (tests/common/kafka_model.rs, Kafka 3.9's producer-state rules),
//! whose log says whether every acknowledged event is there exactly once
//! and in per-key order. Each test is a path the lenient peers (tansu,
//! librdkafka's mock) cannot reveal; `seeded_fault_schedules` draws
//! ingest, faults, kills and reloads from a seed.
// The harness (`mod common`) needs librdkafka's mock cluster: host only.
#![cfg(target_arch = "x86_64")]

mod common;

use common::kafka_model::KafkaModel;
use common::*;
use std::time::{Duration, Instant};

/// Two gateways started from one copied data dir (a cloned SD card):
/// every event of both arrives once, each under its own producer id.
#[test]
fn two_gateways_cloned_from_one_card_deliver_every_event_once() {
    let model = KafkaModel::start(1);
    model.create_topic("fleet", 2);
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let (acked, delivery) = cloned_fleet_run(&a_dir, &b_dir, &model.bootstrap(), 500, 2_000);
    let got = model.records("fleet");
    assert_eq!(check_delivery(&acked, &got), 0, "a record arrived twice");
    assert_eq!(got.len(), acked.len());
    assert!(delivery.iter().all(|d| d == "exactly-once"), "{delivery:?}");
    // A's first run, A's second and B each had an id of their own.
    let c = model.counters();
    assert!(c.producer_ids.len() >= 3, "{c:?}");
    assert_eq!(c.duplicates, 0, "nothing was taken for a duplicate: {c:?}");
}

/// Two source topics of different priorities routed into one topic, over
/// a slow link (so windows of both are in flight at once, a newer
/// high-priority window launched before an older low-priority one), with
/// `kill -9` at seeded moments: the stored plans are replayed in the
/// order they were launched, and every event arrives once, in order.
#[test]
fn kill_9_with_two_priorities_in_flight_into_one_topic_over_a_slow_link() {
    let model = KafkaModel::start(1);
    model.create_topic("dest", 2);
    model.set_answer_delay(Duration::from_millis(25));
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(
        dir.path(),
        &model.bootstrap(),
        "[outbox]\ndurability = \"fsync\"\n\n\
         [[route]]\npattern = \"hi\"\nto = [\"dest\"]\npriority = 8\n\
         [[route]]\npattern = \"lo\"\nto = [\"dest\"]\npriority = 2\n\
         [kafka]\nlinger_ms = 2\nmax_batch_events = 100\n",
    );
    f.start();
    let hi = Load::start_prefixed(f.socket(), "hi", "h", 6, 100, Duration::from_millis(4));
    let lo = Load::start_prefixed(f.socket(), "lo", "l", 6, 100, Duration::from_millis(4));
    let mut rng = Rng::new(0x7a11);
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(200 + rng.below(500)));
        f.kill9();
        f.start();
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut acked = hi.stop();
    acked.extend(lo.stop());
    assert!(acked.len() > 2_000, "only {} acknowledged", acked.len());
    f.wait_status(Duration::from_secs(90), "backlog delivered", |s| {
        s.backlog_events == 0
    });
    // (Events stored but killed before their ack reached the client are
    // delivered too: the log may hold more than was acknowledged, never
    // one ferry-id twice.)
    let got = model.records("dest");
    assert_eq!(check_delivery(&acked, &got), 0, "a record arrived twice");
    let replays = f.log_text().matches("sent again first").count();
    eprintln!(
        "two priorities, 12 kills: {} events, {replays} restarts replayed stored windows, {:?}",
        acked.len(),
        model.counters()
    );
    assert!(replays >= 3, "windows were in flight at the kills");
}

/// Over a distant link (every answer held 150 ms) a stored backlog goes
/// out with several windows in flight, and never more events in them than
/// `kafka.max_in_flight_bytes` (the memory budget); every event arrives
/// once, in per-key order.
#[test]
fn windows_in_flight_stay_within_the_memory_budget_on_a_distant_link() {
    let model = KafkaModel::start(1);
    model.create_topic("far", 4);
    model.set_answer_delay(Duration::from_millis(150));
    let dir = tempfile::tempdir().unwrap();
    let acked = store_backlog(dir.path(), "far", 30_000, 24, 40);
    let budget: u64 = 768 * 1024;
    let mut f = Ferry::new(
        dir.path(),
        &model.bootstrap(),
        &format!("[kafka]\nmax_in_flight_bytes = {budget}\n"),
    );
    f.start();
    f.wait_status(Duration::from_secs(120), "backlog delivered", |s| {
        s.backlog_events == 0
    });
    let status = f.status();
    f.wait_log("the uplink is distant", 1, Duration::from_secs(5));
    let got = model.records("far");
    assert_eq!(check_delivery(&acked, &got), 0, "a record arrived twice");
    assert_eq!(got.len(), acked.len());
    let peak = status.in_flight_peak_bytes;
    eprintln!("peak in flight: {peak} bytes of a {budget}-byte budget");
    assert!(
        peak <= budget,
        "{peak} bytes in flight, over the budget of {budget}"
    );
    // The budget was used, by more than one window (each alone is at most
    // what is left of it): not a window at a time.
    assert!(peak > budget / 2, "only {peak} bytes were ever in flight");
    assert_eq!(status.in_flight_bytes, 0, "nothing left in flight");
}

/// Compress once (`outbox::run`): once the forwarder knows a topic's
/// partition count, busy commits store each partition's events as a record
/// run, which is sent as stored (header and stored records, CRC combined).
/// The Kafka model decodes every batch (CRC, records) and checks the
/// idempotent producer's sequences; every event arrives once, in per-key
/// order, through a `kill -9` with runs stored and in flight.
#[test]
fn busy_partitions_go_as_stored_runs_exactly_once() {
    let model = KafkaModel::start(1);
    model.create_topic("runs", 2);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &model.bootstrap(), "");
    f.start();
    // The first window tells the outbox the topic has 2 partitions.
    let mut acked = send_keyed(&f.socket(), "runs", "warm", 4, 200);
    f.wait_status(Duration::from_secs(30), "warm-up delivered", |s| {
        s.backlog_events == 0
    });
    // Commits of 100 events over 4 keys: about 50 per partition.
    acked.extend(send_keyed(&f.socket(), "runs", "a", 4, 6_000));
    f.kill9();
    f.start();
    // The partition count is learnt again by planning a window of the
    // topic (the stored windows replayed first are not planned anew): once
    // a first few events are delivered, the rest are stored as runs. (Sent
    // at once, a loaded machine could store all 6,000 before that.)
    acked.extend(send_keyed(&f.socket(), "runs", "b0", 4, 200));
    f.wait_status(Duration::from_secs(60), "first events delivered", |s| {
        s.backlog_events == 0
    });
    acked.extend(send_keyed(&f.socket(), "runs", "b", 4, 5_800));
    f.wait_status(Duration::from_secs(60), "backlog delivered", |s| {
        s.backlog_events == 0
    });
    let status = f.status();
    let got = model.records("runs");
    assert_eq!(check_delivery(&acked, &got), 0, "a record arrived twice");
    assert_eq!(got.len(), acked.len());
    eprintln!(
        "since the restart, {} events went as stored runs in {} batches (of {} stored since)",
        status.stored_run_events, status.stored_run_batches, 6_000
    );
    // Of the 5,800 sent once the count was known, most are runs.
    assert!(
        status.stored_run_events > 3_000,
        "only {} events went as stored runs\n{}",
        status.stored_run_events,
        f.log_text()
    );
}

/// The same, made certain: an older low-priority window is launched after
/// a newer high-priority one into the same partition, so its sequences
/// follow the newer window's; a stalled broker has processed neither when
/// ferry is killed. After the restart the stored windows must go in the
/// order they were launched: in block order, the low-priority window comes
/// first, out of sequence, and (before) was taken as delivered and lost.
#[test]
fn stored_windows_are_replayed_in_launch_order_not_block_order() {
    let model = KafkaModel::start(1);
    model.create_topic("dest", 1);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(
        dir.path(),
        &model.bootstrap(),
        "[outbox]\ndurability = \"fsync\"\n\n\
         [[route]]\npattern = \"hi\"\nto = [\"dest\"]\npriority = 8\n\
         [[route]]\npattern = \"lo\"\nto = [\"dest\"]\npriority = 2\n\
         [kafka]\nlinger_ms = 2\nmax_batch_events = 100\n",
    );
    f.start();
    // The broker knows ferry's producer on the partition.
    let mut acked = send_keyed(&f.socket(), "hi", "warm", 2, 100);
    f.wait_status(Duration::from_secs(30), "warm-up delivered", |s| {
        s.backlog_events == 0
    });
    // Older low-priority events, then newer high-priority ones, stored
    // while the broker is away.
    model.set_down(true);
    acked.extend(send_keyed(&f.socket(), "lo", "l", 3, 3_000));
    acked.extend(send_keyed(&f.socket(), "hi", "h", 3, 3_000));
    model.hold_produce(true);
    model.set_down(false);
    let planned = || stored_plans(dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    while planned() < 2 || model.held() == 0 {
        assert!(
            Instant::now() < deadline,
            "two windows planned, produce held: {} plans, {} held\n{}",
            planned(),
            model.held(),
            f.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    f.kill9();
    model.discard_held();
    f.start();
    f.wait_status(Duration::from_secs(60), "backlog delivered", |s| {
        s.backlog_events == 0
    });
    let got = model.records("dest");
    assert_eq!(check_delivery(&acked, &got), 0, "a record arrived twice");
    assert!(
        f.log_text().contains("sent again first"),
        "{}",
        f.log_text()
    );
    assert_eq!(f.terminate().0, Some(0));
}

/// A partition without a leader holds up only its own events: the other
/// partitions of its topic and the other topics flow meanwhile, also
/// across a `kill -9` (the windows put aside are stored plans), and once
/// the partition has a leader again everything arrives once, in order.
#[test]
fn a_partition_without_a_leader_holds_up_only_itself() {
    let model = KafkaModel::start(1);
    model.create_topic("p3", 3);
    model.create_topic("other", 1);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(
        dir.path(),
        &model.bootstrap(),
        "[outbox]\ndurability = \"fsync\"\n[kafka]\nlinger_ms = 2\nmax_batch_events = 200\n",
    );
    f.start();
    let keyed = Load::start_prefixed(f.socket(), "p3", "k", 12, 50, Duration::from_millis(5));
    let other = Load::start_prefixed(f.socket(), "other", "o", 3, 50, Duration::from_millis(5));
    std::thread::sleep(Duration::from_secs(1));
    model.set_offline("p3", 1, true);
    std::thread::sleep(Duration::from_secs(1));
    let count = |topic: &str, partition: i32| {
        model
            .records(topic)
            .iter()
            .filter(|g| g.partition == partition)
            .count()
    };
    let flows = || [count("p3", 0), count("p3", 2), count("other", 0)];
    let went_on = |before: &[usize; 3], after: &[usize; 3], when: &str, log: String| {
        for (i, (b, a)) in before.iter().zip(after.iter()).enumerate() {
            assert!(
                a > b,
                "flow {i} went on while p3/1 had no leader ({when}): {before:?} then {after:?}\n{log}"
            );
        }
    };
    let before = flows();
    let stuck = count("p3", 1);
    std::thread::sleep(Duration::from_secs(2));
    let during = flows();
    went_on(&before, &during, "before a restart", f.log_text());
    let s = f.status();
    assert!(
        s.forward
            .waiting_for_leader
            .iter()
            .any(|w| w.starts_with("p3/1")),
        "status names the partition: {s:?}"
    );
    // Across a restart, the windows put aside are found and put aside again.
    f.kill9();
    f.start();
    std::thread::sleep(Duration::from_secs(2));
    went_on(&during, &flows(), "after a restart", f.log_text());
    assert_eq!(
        count("p3", 1),
        stuck,
        "nothing reached the leaderless partition"
    );
    model.set_offline("p3", 1, false);
    std::thread::sleep(Duration::from_secs(1));
    let acked_keyed = keyed.stop();
    let acked_other = other.stop();
    f.wait_status(Duration::from_secs(60), "backlog delivered", |s| {
        s.backlog_events == 0 && s.forward.waiting_for_leader.is_empty()
    });
    assert_eq!(check_delivery(&acked_keyed, &model.records("p3")), 0);
    assert_eq!(check_delivery(&acked_other, &model.records("other")), 0);
    assert!(count("p3", 1) > stuck);
    assert_eq!(f.terminate().0, Some(0));
}

/// A record refused in the first batch of a new producer id, with more
/// batches of the partition ready behind it. A broker holding no state for
/// a producer takes any sequence, so batches pipelined behind the refused
/// one would be written, then sent again under a new stream (duplicates,
/// and the refused batch's other events after them: order broken). The
/// first batch goes alone; the rest follow under the next epoch.
#[test]
fn a_record_refused_in_a_new_producers_first_batch_leaves_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let acked = store_backlog(dir.path(), "r", 2_000, 4, 0);
    let model = KafkaModel::start(1);
    model.create_topic("r", 1);
    // The fourth event is in the first batch of the only partition.
    let bad = acked[3].clone();
    model.refuse_value(Some(bad.clone().into_bytes()));
    let mut f = Ferry::new(
        dir.path(),
        &model.bootstrap(),
        "[kafka]\nlinger_ms = 2\nmax_batch_events = 50\n",
    );
    f.start();
    f.wait_status(Duration::from_secs(60), "backlog delivered", |s| {
        s.backlog_events == 0
    });
    assert_eq!(f.status().dead_letters, 1);
    let delivered: Vec<String> = acked.iter().filter(|v| **v != bad).cloned().collect();
    let got = model.records("r");
    assert_eq!(
        check_delivery(&delivered, &got),
        0,
        "a record arrived twice"
    );
    assert_eq!(got.len(), delivered.len());
    let c = model.counters();
    assert_eq!(c.invalid_record, 1, "{c:?}");
    assert!(
        f.log_text().contains("the next epoch") || c.producer_ids.len() == 1,
        "{}",
        f.log_text()
    );
    assert_eq!(f.terminate().0, Some(0));
}

/// A new producer's first batch to a partition goes alone (a probe), and
/// the next window's lane of that partition waits for its answer too, also
/// when the first lane is a single batch (all sent before any answer). A
/// broker holding no state for the producer takes the next lane's batch at
/// any sequence when the probe is refused: it would be written ahead of
/// the probe's other events, which go again under the next epoch (per-key
/// order broken).
#[test]
fn the_next_window_waits_for_a_single_batch_probe_to_be_answered() {
    let model = KafkaModel::start(1);
    model.create_topic("q", 1);
    model.set_answer_delay(Duration::from_millis(400));
    let bad = "a-refused".to_string();
    model.refuse_value(Some(bad.clone().into_bytes()));
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &model.bootstrap(), "[kafka]\nlinger_ms = 2\n");
    f.start();
    let mut client = FrameClient::connect(&f.socket()).expect("connect to ferry");
    let mut send = |values: &[&str]| {
        for v in values {
            client
                .send_event("q", Some(b"k"), &[], v.as_bytes())
                .expect("send");
        }
        let (ok, errors) = client.answers_for(values.len() as u32).expect("answers");
        assert_eq!(ok as usize, values.len(), "refused: {errors:?}");
    };
    // One window, one batch: the probe, refused for its second record.
    send(&["a-first", &bad]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_plans(dir.path()) < 1 {
        assert!(
            Instant::now() < deadline,
            "the first window is planned\n{}",
            f.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The next window of the same key and partition, while the probe's
    // answer is on its way.
    send(&["b-second"]);
    f.wait_status(Duration::from_secs(30), "delivered", |s| {
        s.backlog_events == 0
    });
    assert_eq!(f.status().dead_letters, 1);
    let got: Vec<String> = model
        .records("q")
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    assert_eq!(
        got,
        ["a-first", "b-second"],
        "in order, once\n{}",
        f.log_text()
    );
    assert_eq!(f.terminate().0, Some(0));
}

/// The broker forgot ferry's producer while ferry still trusts it (state
/// expired within the window ferry trusts an acknowledgement for), and
/// the first batch after that is refused with batches pipelined behind
/// it: a broker without state writes those at any sequence. Their answers
/// are still taken, and their events count as delivered: nothing twice,
/// nothing lost (the refused batch's other events then come after them).
#[test]
fn batches_written_behind_a_refused_one_are_not_sent_again() {
    let model = KafkaModel::start(1);
    model.create_topic("x", 1);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(
        dir.path(),
        &model.bootstrap(),
        "[kafka]\nlinger_ms = 20\nmax_batch_events = 20\n",
    );
    f.start();
    let mut acked = send_keyed(&f.socket(), "x", "a", 4, 200);
    f.wait_status(Duration::from_secs(30), "delivered", |s| {
        s.backlog_events == 0
    });
    model.expire_producers();
    // The next events' fourth is refused; the rest of its batch and the
    // batches behind it are on the wire at once.
    let bad = "b-3|0".to_string();
    model.refuse_value(Some(bad.clone().into_bytes()));
    acked.extend(send_keyed(&f.socket(), "x", "b", 8, 400));
    f.wait_status(Duration::from_secs(30), "delivered", |s| {
        s.backlog_events == 0
    });
    assert_eq!(f.status().dead_letters, 1);
    let got = model.records("x");
    let counts = by_value(&got);
    for v in acked.iter().filter(|v| **v != bad) {
        assert_eq!(
            counts.get(v),
            Some(&1),
            "{v} arrived once\n{}",
            f.log_text()
        );
    }
    assert_eq!(got.len(), acked.len() - 1);
    let log = f.log_text();
    assert!(log.contains("after an earlier one failed"), "{log}");
    assert_eq!(f.terminate().0, Some(0));
}

/// A broker older than Kafka 2.5 forgets ferry's producer (its state
/// expired while the gateway was offline): UNKNOWN_PRODUCER_ID, then ferry
/// goes on under the next epoch. Nothing lost, nothing twice.
#[test]
fn a_broker_before_2_5_that_forgot_the_producer_loses_nothing() {
    let model = KafkaModel::start(1);
    model.set_legacy(true);
    model.create_topic("old", 2);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &model.bootstrap(), "");
    f.start();
    let mut acked = send_keyed(&f.socket(), "old", "x", 4, 1_000);
    f.wait_status(Duration::from_secs(30), "delivered", |s| {
        s.backlog_events == 0
    });
    model.expire_producers();
    acked.extend(send_keyed(&f.socket(), "old", "y", 4, 1_000));
    f.wait_status(Duration::from_secs(30), "delivered", |s| {
        s.backlog_events == 0
    });
    let got = model.records("old");
    assert_eq!(check_delivery(&acked, &got), 0, "a record arrived twice");
    assert_eq!(got.len(), acked.len());
    let c = model.counters();
    assert!(c.unknown_producer >= 1, "the broker forgot: {c:?}");
    assert!(
        f.log_text().contains("UNKNOWN_PRODUCER_ID"),
        "{}",
        f.log_text()
    );
    assert_eq!(f.terminate().0, Some(0));
}

/// Windows in flight at a `kill -9`, and ferry down for longer than a
/// broker keeps an idle producer's state (the stored plans are dated back
/// two days; the model forgets the producer): the resend is accepted at
/// any sequence and may be written again. ferry says so, in the log and in
/// `ferry status`, and loses nothing.
#[test]
fn a_resend_after_the_producer_state_expired_is_said_to_be_at_least_once() {
    let model = KafkaModel::start(1);
    model.create_topic("exp", 1);
    model.set_answer_delay(Duration::from_millis(400));
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(
        dir.path(),
        &model.bootstrap(),
        "[kafka]\nlinger_ms = 2\nmax_batch_events = 100\n",
    );
    f.start();
    let acked = send_keyed(&f.socket(), "exp", "e", 4, 2_000);
    let planned = || stored_plans(dir.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    while planned() == 0 || model.counters().appended_batches == 0 {
        assert!(Instant::now() < deadline, "no window went out");
        std::thread::sleep(Duration::from_millis(20));
    }
    f.kill9();
    let db = rusqlite::Connection::open(dir.path().join("data").join("outbox.db")).unwrap();
    let dated = db
        .execute(
            "UPDATE window_plans SET saved_ms = saved_ms - 2 * 86400000",
            [],
        )
        .unwrap();
    drop(db);
    assert!(
        dated > 0,
        "windows were planned (and in flight) at the kill"
    );
    model.expire_producers();
    model.set_answer_delay(Duration::ZERO);
    f.start();
    f.wait_status(Duration::from_secs(60), "delivered", |s| {
        s.backlog_events == 0
    });
    let got = model.records("exp");
    let values = by_value(&got);
    assert!(acked.iter().all(|v| values.contains_key(v)), "nothing lost");
    let log = f.log_text();
    assert!(
        log.contains("longer than Kafka keeps an idle producer's state"),
        "{log}"
    );
    let s = f.status();
    assert!(
        s.forward
            .delivery
            .contains("producer state may have expired"),
        "{s:?}"
    );
    assert_eq!(f.terminate().0, Some(0));
}

/// A reload points ferry at brokers of another cluster while windows are
/// planned: the cluster id differs, so the old producer ids mean nothing
/// there. New producer ids, the planned windows sent at least once, and
/// ferry says so in the log and in `ferry status`.
#[test]
fn a_reload_to_another_cluster_takes_new_producer_ids_and_says_so() {
    let old = KafkaModel::start(1);
    old.create_topic("moved", 2);
    let new = KafkaModel::start(1);
    new.set_cluster_id("other-cluster");
    new.create_topic("moved", 2);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &old.bootstrap(), "");
    f.start();
    let mut acked = send_keyed(&f.socket(), "moved", "a", 4, 500);
    f.wait_status(Duration::from_secs(30), "delivered", |s| {
        s.backlog_events == 0
    });
    // Windows planned for the old cluster, never answered.
    old.set_down(true);
    acked.extend(send_keyed(&f.socket(), "moved", "b", 4, 500));
    std::thread::sleep(Duration::from_millis(500));
    let config = std::fs::read_to_string(&f.config).unwrap();
    std::fs::write(
        &f.config,
        config.replace(&old.bootstrap(), &new.bootstrap()),
    )
    .unwrap();
    f.hangup();
    f.wait_status(
        Duration::from_secs(60),
        "delivered to the new cluster",
        |s| s.backlog_events == 0,
    );
    let mut got = old.records("moved");
    got.extend(new.records("moved"));
    check_delivery(&acked, &got);
    let log = f.log_text();
    assert!(
        log.contains("now belong to Kafka cluster other-cluster"),
        "{log}"
    );
    // The new cluster was asked for producer ids (it gives out the same
    // numbers as the old one: only the cluster id tells them apart), and
    // every record it holds carries one of them.
    let given = new.counters().producer_ids;
    assert!(!given.is_empty(), "ferry asked the new cluster for an id");
    assert!(
        new.log("moved", 0)
            .iter()
            .chain(new.log("moved", 1).iter())
            .all(|r| given.contains(&r.producer_id)),
        "the new cluster only saw producer ids it gave out"
    );
    let s = f.status();
    assert!(s.forward.delivery.starts_with("exactly-once"), "{s:?}");
    assert_eq!(f.terminate().0, Some(0));
}

/// A loss topic the broker does not have: loss markers wait, on their own
/// backoff (not every loop pass), visible in `ferry status` and the log,
/// and the data keeps flowing.
#[test]
fn side_records_for_a_missing_topic_wait_visibly_without_holding_up_data() {
    let model = KafkaModel::start(1);
    model.create_topic("data", 1);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(
        dir.path(),
        &model.bootstrap(),
        "[outbox]\nmax_bytes = 1000\n\n[kafka]\nlinger_ms = 2\nloss_topic = \"ferry-loss\"\n",
    );
    // A backlog over the cap while the broker is away: the oldest are
    // dropped, and loss markers queue for the (missing) loss topic.
    model.set_down(true);
    f.start();
    for round in 0..5 {
        send_keyed(&f.socket(), "data", &format!("old{round}"), 2, 200);
    }
    assert!(f.status().dropped_events > 0);
    let metadata_before = model.counters().metadata_requests;
    model.set_down(false);
    let t0 = Instant::now();
    let acked = send_keyed(&f.socket(), "data", "new", 2, 300);
    f.wait_status(
        Duration::from_secs(30),
        "the newest events delivered",
        |s| s.backlog_events == 0,
    );
    // The data flows: the newest events (never the ones dropped) arrive.
    let got = model.records("data");
    let values = by_value(&got);
    assert!(values.contains_key(acked.last().unwrap()), "data flows");
    std::thread::sleep(Duration::from_secs(3));
    let s = f.status();
    let side = s.forward.side_records.clone().unwrap_or_default();
    assert!(
        side.contains("loss marker") && side.contains("ferry-loss"),
        "status says what waits and why: {s:?}"
    );
    let (_, out, _) = f.cli(&["status"], None);
    assert!(out.contains("side topics:"), "{out}");
    assert!(
        f.log_text().contains("wait for their side topics"),
        "{}",
        f.log_text()
    );
    // Backoff, not a Metadata request per loop pass.
    let asked = model.counters().metadata_requests - metadata_before;
    let secs = t0.elapsed().as_secs_f64();
    assert!(
        (asked as f64) < 10.0 * secs,
        "{asked} Metadata requests in {secs:.1} s"
    );
    assert_eq!(f.terminate().0, Some(0));
}

/// Throttled by a broker: records appended once, ferry waits as told.
#[test]
fn throttled_answers_are_obeyed_and_nothing_is_sent_twice() {
    let model = KafkaModel::start(1);
    model.create_topic("slow", 2);
    model.set_throttle_ms(200);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &model.bootstrap(), "");
    f.start();
    let acked = send_keyed(&f.socket(), "slow", "t", 4, 2_000);
    f.wait_status(Duration::from_secs(60), "delivered", |s| {
        s.backlog_events == 0
    });
    let got = model.records("slow");
    assert_eq!(check_delivery(&acked, &got), 0);
    assert_eq!(got.len(), acked.len());
    assert!(f.status().throttled_s > 0.0);
    let c = model.counters();
    assert_eq!((c.duplicates, c.out_of_order), (0, 0), "{c:?}");
    assert_eq!(f.terminate().0, Some(0));
}

/// Delivery windows whose plans are in the outbox under `dir` now (read
/// beside the running ferry: WAL lets a reader in).
fn stored_plans(dir: &std::path::Path) -> i64 {
    rusqlite::Connection::open(dir.join("data").join("outbox.db"))
        .and_then(|db| db.query_row("SELECT count(*) FROM window_plans", [], |r| r.get(0)))
        .unwrap_or(0)
}

// ---------------------------------------------------------------------
// Seeded fault schedules.
// ---------------------------------------------------------------------

/// What ends a lasting fault (at the next step).
type Undo = Box<dyn FnOnce(&KafkaModel)>;

/// One step of a schedule.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill9,
    Term,
    Reload,
    CutAfterAppend(u32),
    SlowAnswers(u64),
    DropConnections,
    MoveLeader(i32),
    Offline(i32),
    Throttle(i32),
    UplinkDown,
}

fn draw(rng: &mut Rng) -> Fault {
    match rng.below(10) {
        0 => Fault::Kill9,
        1 => Fault::Term,
        2 => Fault::Reload,
        3 => Fault::CutAfterAppend(1 + rng.below(3) as u32),
        4 => Fault::SlowAnswers(5 + rng.below(40)),
        5 => Fault::DropConnections,
        6 => Fault::MoveLeader(rng.below(3) as i32),
        7 => Fault::Offline(rng.below(3) as i32),
        8 => Fault::Throttle(20 + rng.below(150) as i32),
        _ => Fault::UplinkDown,
    }
}

/// Run the schedule of `seed`: ingest into four source topics (two
/// priorities fanned into one topic, one fanned out to two, one plain),
/// ten faults at seeded moments, then the faults cleared: every
/// acknowledged event must be in the model's log exactly once per
/// destination, in per-key order, within a bound.
fn run_schedule(seed: u64) {
    let repro = format!(
        "reproduce with: FERRY_SEED={seed} cargo test --test kafka_rules seeded_fault_schedules -- --nocapture"
    );
    eprintln!("schedule {seed}: {repro}");
    let mut rng = Rng::new(seed);
    let model = KafkaModel::start(2);
    model.create_topic("dest", 3);
    model.create_topic("copy-a", 2);
    model.create_topic("copy-b", 2);
    model.create_topic("plain", 2);
    let dir = tempfile::tempdir().unwrap();
    let batch_events = 20 + rng.below(300);
    let durability = if rng.below(2) == 0 {
        "fsync"
    } else {
        "relaxed"
    };
    let mut f = Ferry::new(
        dir.path(),
        &model.bootstrap(),
        &format!(
            "[outbox]\ndurability = \"{durability}\"\n\n\
             [[route]]\npattern = \"hi\"\nto = [\"dest\"]\npriority = 8\n\
             [[route]]\npattern = \"lo\"\nto = [\"dest\"]\npriority = 2\n\
             [[route]]\npattern = \"fan\"\nto = [\"copy-a\", \"copy-b\"]\n\
             [kafka]\nlinger_ms = 2\nmax_batch_events = {batch_events}\n\
             request_timeout = \"3s\"\n[retry]\nmax = \"1s\"\n\
             [breaker]\nopen_initial = \"1s\"\n"
        ),
    );
    f.start();
    let pause = Duration::from_millis(3 + rng.below(10));
    let loads = [
        (
            "hi",
            Load::start_prefixed(f.socket(), "hi", "h", 5, 50, pause),
        ),
        (
            "lo",
            Load::start_prefixed(f.socket(), "lo", "l", 5, 50, pause),
        ),
        (
            "fan",
            Load::start_prefixed(f.socket(), "fan", "f", 5, 50, pause),
        ),
        (
            "plain",
            Load::start_prefixed(f.socket(), "plain", "p", 5, 50, pause),
        ),
    ];
    let mut steps = Vec::new();
    let mut undo: Vec<Undo> = Vec::new();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(150 + rng.below(600)));
        // A fault lasts until the next step.
        for u in undo.drain(..) {
            u(&model);
        }
        let fault = draw(&mut rng);
        steps.push(fault);
        match fault {
            Fault::Kill9 => {
                f.kill9();
                f.start();
            }
            Fault::Term => {
                assert_eq!(f.terminate().0, Some(0), "{repro}");
                f.start();
            }
            Fault::Reload => f.hangup(),
            Fault::CutAfterAppend(n) => model.cut_after_append(n),
            Fault::SlowAnswers(ms) => {
                model.set_answer_delay(Duration::from_millis(ms));
                undo.push(Box::new(|m| m.set_answer_delay(Duration::ZERO)));
            }
            Fault::DropConnections => model.drop_connections(),
            Fault::MoveLeader(p) => model.move_leader("dest", p, (p + 1) % 2),
            Fault::Offline(p) => {
                model.set_offline("dest", p, true);
                undo.push(Box::new(move |m| m.set_offline("dest", p, false)));
            }
            Fault::Throttle(ms) => {
                model.set_throttle_ms(ms);
                undo.push(Box::new(|m| m.set_throttle_ms(0)));
            }
            Fault::UplinkDown => {
                model.set_down(true);
                undo.push(Box::new(|m| m.set_down(false)));
            }
        }
    }
    for u in undo.drain(..) {
        u(&model);
    }
    model.cut_after_append(0);
    let mut acked: std::collections::HashMap<&str, Vec<String>> = Default::default();
    for (topic, load) in loads {
        acked.insert(topic, load.stop());
    }
    eprintln!("schedule {seed}: {steps:?}, {durability}, batches of {batch_events}");
    // Once the faults clear, the backlog drains within a bound (the
    // breaker's longest open interval here is a few seconds).
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(90);
    loop {
        if let Ok(s) = ferry::client::query_status(&f.socket())
            && s.backlog_events == 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "schedule {seed}: backlog not drained 90 s after the faults cleared; {repro}\n{}",
            f.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut into_dest = acked["hi"].clone();
    into_dest.extend(acked["lo"].iter().cloned());
    let checks = [
        ("dest", into_dest),
        ("copy-a", acked["fan"].clone()),
        ("copy-b", acked["fan"].clone()),
        ("plain", acked["plain"].clone()),
    ];
    let mut total = 0;
    for (topic, expected) in checks {
        let got = model.records(topic);
        let outcome = std::panic::catch_unwind(|| check_delivery(&expected, &got));
        match outcome {
            Ok(0) => {}
            Ok(dups) => panic!(
                "schedule {seed}: {dups} records of {topic} written twice ({steps:?}); {repro}\n{}",
                f.log_text()
            ),
            Err(_) => panic!(
                "schedule {seed}: {topic} lost events or order ({steps:?}); {repro}\n{}",
                f.log_text()
            ),
        }
        // (More than acknowledged: events stored before a kill whose ack
        // never reached the client; never one ferry-id twice, above.)
        assert!(
            got.len() >= expected.len(),
            "schedule {seed}: {topic}; {repro}"
        );
        total += expected.len();
    }
    eprintln!(
        "schedule {seed}: {total} deliveries checked, drained {:?} after the faults; {:?}",
        t0.elapsed(),
        model.counters()
    );
    let _ = f.terminate();
}

/// A fixed set of seeds in every `cargo test` (a few minutes at most);
/// `FERRY_SEED=N` runs one, `FERRY_SEEDS=N` (with `--ignored`) N more.
#[test]
fn seeded_fault_schedules() {
    if let Some(seed) = std::env::var("FERRY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run_schedule(seed);
        return;
    }
    // 100: a new lane overtook the windows put aside for a partition
    // without a leader as its look fell due (per-key order broken; fixed).
    // 1018: within a long retry of the windows put aside, the partition's
    // look fell due again and a later window's lane went before an earlier
    // one put aside again: answered OUT_OF_ORDER, taken as delivered, lost
    // (fixed; it failed about one run in ten before).
    for seed in [1, 2, 3, 4, 100, 1018] {
        run_schedule(seed);
    }
}

/// Many more schedules: `FERRY_SEEDS=1000 cargo test --release --test
/// kafka_rules -- --ignored many_seeded_fault_schedules`.
#[test]
#[ignore]
fn many_seeded_fault_schedules() {
    let n: u64 = std::env::var("FERRY_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let first: u64 = std::env::var("FERRY_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    for seed in first..first + n {
        run_schedule(seed);
    }
}
