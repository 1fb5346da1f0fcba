//! Flaky uplinks, with real peers only: librdkafka's mock cluster (error
//! injection, broker down, leader moves) and a fault-injecting TCP proxy
//! in front of it. Nothing inside ferry is mocked.
// librdkafka's mock cluster (the Kafka peer) is built for the host only;
// ARM binaries are tested through FERRY_TEST_BIN/FERRY_TEST_RUNNER.
#![cfg(target_arch = "x86_64")]

mod common;

use common::proxy::Proxy;
use common::*;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::time::{Duration, Instant};

const KEYS: usize = 16;

#[test]
fn uplink_down_30s_under_load_loses_nothing_and_idles() {
    let topics = [("steady", 4)];
    let c = cluster(1, &topics);
    let proxy = Proxy::start(&c.bootstrap_servers());
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &proxy.bootstrap, "");
    f.start();
    let reader = Reader::start(&c.bootstrap_servers(), &topics);
    let load = Load::start(f.socket(), "steady", KEYS, 50, Duration::from_millis(50));
    std::thread::sleep(Duration::from_secs(2));

    let conns_at_down = proxy.connections();
    proxy.set_down(true);
    let pid = f.child.as_ref().unwrap().id();
    // Wait until the breaker has opened, then watch it for the rest of the
    // outage: few connection attempts, little CPU, local events still stored.
    let t0 = Instant::now();
    f.wait_status(Duration::from_secs(30), "breaker open", |s| {
        s.forward.breaker == "open"
    });
    let opened_after = t0.elapsed();
    let conns0 = proxy.connections();
    let cpu0 = cpu_seconds(pid);
    let acked0 = load.acked_so_far();
    let watch = Duration::from_secs(30)
        .saturating_sub(opened_after)
        .max(Duration::from_secs(20));
    std::thread::sleep(watch);
    let conns = proxy.connections() - conns0;
    let conns_outage = proxy.connections() - conns_at_down;
    let cpu = cpu_seconds(pid) - cpu0;
    let stored_meanwhile = load.acked_so_far() - acked0;
    let s = f.status();
    eprintln!(
        "outage: breaker open after {opened_after:?}; then over {watch:?}: {conns} connection attempts, {cpu:.2} CPU s, {stored_meanwhile} events stored; status {:?}",
        s.forward
    );
    // Only ferry's own attempts (one connect each, no retries hidden in
    // the client): backoff until the breaker opens, then its probes at
    // growing intervals (5 s, 10 s, 20 s ...).
    eprintln!(
        "{conns_outage} connection attempts over the {:?} outage",
        t0.elapsed()
    );
    assert!(
        conns_outage <= 10,
        "{conns_outage} connection attempts over the outage ({conns} while the breaker was open)"
    );
    assert!(
        cpu < 0.15 * watch.as_secs_f64(),
        "CPU {cpu:.2} s over {watch:?}: not idle"
    );
    assert!(
        stored_meanwhile > 1000,
        "local events kept being acknowledged"
    );
    assert!(s.backlog_events > 0);
    let (_, out, _) = f.cli(&["status"], None);
    assert!(
        out.contains("breaker:") && out.contains("last error:"),
        "{out}"
    );

    proxy.set_down(false);
    std::thread::sleep(Duration::from_secs(1));
    let acked = load.stop();
    let got = reader.collect_values(&acked, Duration::from_secs(120));
    let dups = check_delivery(&acked, &got);
    eprintln!(
        "{} acknowledged, {} read, {dups} duplicates",
        acked.len(),
        got.len()
    );
    // Closing needs two good probes; with the backlog drained by one there
    // may be nothing left to probe with, so half-open is fine too.
    f.wait_status(
        Duration::from_secs(60),
        "breaker not open, backlog drained",
        |s| s.forward.breaker != "open" && s.backlog_events == 0,
    );
}

#[test]
fn injected_transient_errors_are_retried_in_order() {
    let topics = [("transient", 4)];
    let c = cluster(1, &topics);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &c.bootstrap_servers(), "");
    f.start();
    let reader = Reader::start(&c.bootstrap_servers(), &topics);
    let load = Load::start(
        f.socket(),
        "transient",
        KEYS,
        100,
        Duration::from_millis(20),
    );
    for round in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        let e = if round % 2 == 0 {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION
        } else {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT
        };
        c.request_errors(RDKafkaApiKey::Produce, &[e, e]);
    }
    std::thread::sleep(Duration::from_millis(500));
    let acked = load.stop();
    let got = reader.collect_values(&acked, Duration::from_secs(60));
    check_delivery(&acked, &got);
    let s = f.status();
    assert!(
        s.produce_errors > 0,
        "errors were injected and retried: {s:?}"
    );
    assert_eq!(s.dead_letters, 0, "transient errors never dead-letter");
}

/// A backlog of several delivery windows drains with two windows in
/// flight. Produce errors met on the way stop the pipeline; the windows in
/// flight are then retried one after another: nothing lost, per-key order
/// kept across window boundaries.
#[test]
fn backlog_drains_through_errors_with_windows_in_flight_in_order() {
    let topics = [("backlog", 4)];
    let c = cluster(1, &topics);
    let bootstrap = c.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    // 120 000 events, about ten windows of 12 500.
    let acked = store_backlog(dir.path(), "backlog", 120_000, KEYS, 0);
    use RDKafkaRespErr::{
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION as NOT_LEADER,
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT as TIMED_OUT,
    };
    // The first produce requests (first window, the second one already
    // launched behind it) fail; more fail while the rest drains.
    c.request_errors(RDKafkaApiKey::Produce, &[NOT_LEADER, TIMED_OUT, NOT_LEADER]);
    let reader = Reader::start(&bootstrap, &topics);
    let mut f = Ferry::new(dir.path(), &bootstrap, "");
    f.start();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(40));
        c.request_errors(RDKafkaApiKey::Produce, &[TIMED_OUT, NOT_LEADER]);
    }
    let got = reader.collect_values(&acked, Duration::from_secs(90));
    let dups = check_delivery(&acked, &got);
    f.wait_status(Duration::from_secs(20), "drained", |s| {
        s.backlog_events == 0
    });
    let s = f.status();
    eprintln!(
        "backlog through errors: {} events, {} produce errors, {dups} duplicates",
        acked.len(),
        s.produce_errors
    );
    assert!(s.produce_errors > 0, "errors were met: {s:?}");
    assert_eq!(s.dead_letters, 0, "transient errors never dead-letter");
}

#[test]
fn permanent_errors_dead_letter_the_record_and_replay_works() {
    let topics = [("perm", 1), ("ferry-dlq", 1)];
    let c = cluster(1, &topics);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(
        dir.path(),
        &c.bootstrap_servers(),
        "[kafka]\nlinger_ms = 2\ndead_letter_topic = \"ferry-dlq\"\n",
    );
    f.start();
    let reader = Reader::start(&c.bootstrap_servers(), &topics);
    let send = |v: &str| {
        let (code, _, err) = f.cli(&["send", "-t", "perm", "-k", "k", "-H", "h=1", v], None);
        assert_eq!(code, 0, "{err}");
    };
    let sent = |n: u64| {
        f.wait_status(Duration::from_secs(30), "delivered or dead-lettered", |s| {
            s.sent + s.dead_letters >= n
        })
    };
    send("a-ok");
    sent(1);
    c.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    send("b-too-large");
    sent(2);
    send("c-ok");
    sent(3);
    c.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION],
    );
    send("d-invalid-topic");
    sent(4);
    send("e-ok");
    sent(5);

    let (code, out, err) = f.cli(&["dlq", "list", "--json"], None);
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{out}");
    assert_eq!(list[0]["value_preview"], "b-too-large");
    assert_eq!(list[0]["error_name"], "MESSAGE_TOO_LARGE");
    assert_eq!(list[0]["destination"], "perm");
    assert!(list[0]["attempts"].as_u64().unwrap() >= 1);
    assert!(list[0]["reason"].as_str().unwrap().contains("perm/0"));
    assert_eq!(list[1]["value_preview"], "d-invalid-topic");
    assert_eq!(list[1]["error_name"], "INVALID_TOPIC_EXCEPTION");
    let (_, text, _) = f.cli(&["dlq", "list"], None);
    assert!(
        text.contains("MESSAGE_TOO_LARGE") && text.contains("b-too-large"),
        "{text}"
    );

    // Replay: both go through ferry again and arrive; the DLQ is empty.
    let (code, out, err) = f.cli(&["dlq", "replay"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replayed 2 of 2"), "{out}");
    let got = reader.collect(5 + 2 + 2, Duration::from_secs(30));
    let perm: Vec<String> = got
        .iter()
        .filter(|g| g.topic == "perm")
        .map(Got::value_str)
        .collect();
    for v in ["a-ok", "b-too-large", "c-ok", "d-invalid-topic", "e-ok"] {
        assert_eq!(
            perm.iter().filter(|x| *x == v).count(),
            1,
            "{v} in {perm:?}"
        );
    }
    let order: Vec<&str> = perm.iter().map(String::as_str).collect();
    assert_eq!(
        &order[..3],
        &["a-ok", "c-ok", "e-ok"],
        "the rest went on in order"
    );
    // The DLQ topic got both, with the promised headers.
    let dlq: Vec<&Got> = got.iter().filter(|g| g.topic == "ferry-dlq").collect();
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    assert_eq!(dlq[0].header("original-topic"), Some(&b"perm"[..]));
    assert!(dlq[0].header("dlq-reason").is_some() && dlq[0].header("dlq-timestamp").is_some());
    assert_eq!(dlq[0].header("h"), Some(&b"1"[..]), "producer headers kept");
    let (_, out, _) = f.cli(&["dlq", "list", "--json"], None);
    assert_eq!(out.trim(), "[]");

    // Purge needs a selection.
    assert_eq!(f.cli(&["dlq", "purge"], None).0, 2);
    assert_eq!(f.cli(&["dlq", "purge", "--all"], None).0, 0);
}

#[test]
fn authorization_failure_parks_the_topic_keeps_events_and_logs_sparingly() {
    let topics = [("authz", 2)];
    let c = cluster(1, &topics);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &c.bootstrap_servers(), "");
    f.start();
    let errs = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 10_000];
    c.request_errors(RDKafkaApiKey::Produce, &errs);
    let input: String = (0..300).map(|i| format!("k|{i}\n")).collect();
    let (code, _, err) = f.cli(&["send", "-t", "authz", "-k", "k"], Some(input.as_bytes()));
    assert_eq!(code, 0, "{err}");
    f.wait_status(Duration::from_secs(20), "topic parked", |s| {
        s.forward.parked_topics.contains(&"authz".to_string())
    });
    std::thread::sleep(Duration::from_secs(15));
    let s = f.status();
    assert_eq!(s.backlog_events, 300, "events kept: {s:?}");
    assert_eq!(s.dead_letters, 0);
    assert!(
        s.last_error
            .as_deref()
            .unwrap_or("")
            .contains("TopicAuthorizationFailed")
            || s.last_error
                .as_deref()
                .unwrap_or("")
                .contains("TOPIC_AUTHORIZATION"),
        "{s:?}"
    );
    let log = f.log_text();
    let loud = log
        .lines()
        .filter(|l| l.contains("TOPIC_AUTHORIZATION_FAILED"))
        .count();
    assert!((1..=2).contains(&loud), "{loud} log lines in ~20 s:\n{log}");

    // The operator fixes the ACL: everything goes through.
    c.clear_request_errors(RDKafkaApiKey::Produce);
    let reader = Reader::start(&c.bootstrap_servers(), &topics);
    let acked: Vec<String> = (0..300).map(|i| format!("k|{i}")).collect();
    let got = reader.collect_values(&acked, Duration::from_secs(90));
    check_delivery(&acked, &got);
}

#[test]
fn missing_topic_is_parked_while_other_topics_flow() {
    let topics = [("present", 2)];
    let c = cluster(1, &topics);
    let dir = tempfile::tempdir().unwrap();
    // The mock creates topics a Metadata request names when allowed to.
    let mut f = Ferry::new(
        dir.path(),
        &c.bootstrap_servers(),
        "[kafka]\nlinger_ms = 2\nallow_auto_create_topics = false",
    );
    f.start();
    let reader = Reader::start(&c.bootstrap_servers(), &[("present", 2), ("absent", 1)]);
    let lines: String = (0..100).map(|i| format!("k|{i}\n")).collect();
    assert_eq!(
        f.cli(&["send", "-t", "absent", "-k", "k"], Some(lines.as_bytes()))
            .0,
        0
    );
    for round in 0..5 {
        let lines: String = (round * 100..(round + 1) * 100)
            .map(|i| format!("p|{i}\n"))
            .collect();
        assert_eq!(
            f.cli(
                &["send", "-t", "present", "-k", "p"],
                Some(lines.as_bytes())
            )
            .0,
            0
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    f.wait_status(Duration::from_secs(20), "present delivered", |s| {
        s.backlog_events == 100
    });
    let s = f.status();
    assert_eq!(s.forward.parked_topics, vec!["absent".to_string()]);
    assert!(
        f.log_text().contains("topic absent does not exist"),
        "{}",
        f.log_text()
    );

    c.create_topic("absent", 1, 1).unwrap();
    f.wait_status(
        Duration::from_secs(60),
        "absent delivered after it was created",
        |s| s.backlog_events == 0,
    );
    let mut acked: Vec<String> = (0..100).map(|i| format!("k|{i}")).collect();
    acked.extend((0..500).map(|i| format!("p|{i}")));
    let got = reader.collect_values(&acked, Duration::from_secs(30));
    check_delivery(&acked, &got);
    assert!(f.status().forward.parked_topics.is_empty());
    // Idle again, and idle means idle: no spinning after the recovery.
    let pid = f.child.as_ref().unwrap().id();
    let cpu0 = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(5));
    let cpu = cpu_seconds(pid) - cpu0;
    eprintln!("idle after recovery: {cpu:.3} CPU s in 5 s");
    assert!(cpu < 0.05, "{cpu:.3} CPU s in 5 s while idle");
}

#[test]
fn cluster_authorization_failure_opens_the_breaker_then_recovers() {
    let topics = [("cluster", 1)];
    let c = cluster(1, &topics);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &c.bootstrap_servers(), "");
    f.start();
    let errs = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED; 10_000];
    c.request_errors(RDKafkaApiKey::Produce, &errs);
    assert_eq!(
        f.cli(&["send", "-t", "cluster", "-k", "k", "k|0"], None).0,
        0
    );
    f.wait_status(
        Duration::from_secs(20),
        "breaker open at the first such error",
        |s| s.forward.breaker == "open" && s.produce_errors == 1,
    );
    let (_, out, _) = f.cli(&["status", "--json"], None);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["last_error_class"], "configuration (cluster)");
    assert!(v["next_attempt_in_s"].as_f64().unwrap() > 0.0);
    c.clear_request_errors(RDKafkaApiKey::Produce);
    let reader = Reader::start(&c.bootstrap_servers(), &topics);
    let got = reader.collect(1, Duration::from_secs(60));
    check_delivery(&["k|0".to_string()], &got);
}

#[test]
fn leader_moves_in_a_three_broker_cluster_lose_nothing() {
    let topics = [("moves", 6)];
    let c = cluster(3, &topics);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &c.bootstrap_servers(), "");
    f.start();
    let reader = Reader::start(&c.bootstrap_servers(), &topics);
    let load = Load::start(f.socket(), "moves", KEYS, 100, Duration::from_millis(10));
    for round in 0..12 {
        std::thread::sleep(Duration::from_millis(400));
        for p in 0..6 {
            c.partition_leader("moves", p, Some(1 + (round + p) % 3))
                .unwrap();
        }
    }
    let acked = load.stop();
    f.wait_status(Duration::from_secs(60), "all sent", |s| {
        s.backlog_events == 0
    });
    let got = reader.collect_values(&acked, Duration::from_secs(90));
    let dups = check_delivery(&acked, &got);
    eprintln!(
        "leader moves: {} acknowledged, {dups} duplicates",
        acked.len()
    );
}

#[test]
fn slow_link_that_cuts_connections_loses_and_reorders_nothing() {
    let topics = [("cut", 4)];
    let c = cluster(1, &topics);
    let proxy = Proxy::start(&c.bootstrap_servers());
    proxy.set_delay(Duration::from_millis(20));
    proxy.set_cut_after(300 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &proxy.bootstrap, "");
    f.start();
    let reader = Reader::start(&c.bootstrap_servers(), &topics);
    let load = Load::start(f.socket(), "cut", KEYS, 200, Duration::from_millis(10));
    std::thread::sleep(Duration::from_secs(10));
    let acked = load.stop();
    let got = reader.collect_values(&acked, Duration::from_secs(120));
    let dups = check_delivery(&acked, &got);
    eprintln!(
        "cutting proxy: {} acknowledged, {} connections cut, {dups} duplicates",
        acked.len(),
        proxy.cuts()
    );
    assert!(proxy.cuts() >= 3, "the proxy did cut connections");
}

#[test]
fn twenty_kill_9_cycles_with_uplink_flaps_deliver_every_acknowledged_event() {
    let topics = [("cycles", 4)];
    let c = cluster(1, &topics);
    let proxy = Proxy::start(&c.bootstrap_servers());
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &proxy.bootstrap, "");
    let reader = Reader::start(&c.bootstrap_servers(), &topics);
    f.start();
    let load = Load::start(f.socket(), "cycles", KEYS, 50, Duration::from_millis(5));
    for cycle in 0..20 {
        proxy.set_down(cycle % 3 == 1);
        std::thread::sleep(Duration::from_millis(300));
        f.kill9();
        f.start();
    }
    proxy.set_down(false);
    std::thread::sleep(Duration::from_millis(500));
    let acked = load.stop();
    let got = reader.collect_values(&acked, Duration::from_secs(120));
    let dups = check_delivery(&acked, &got);
    eprintln!(
        "20 kill -9 cycles: {} acknowledged, {} read, {dups} duplicates",
        acked.len(),
        got.len()
    );
    // Duplicates come only from what was in flight at each kill: at most
    // one delivery window per cycle.
    assert!(dups <= 20 * 50_000);
    assert!(dups < acked.len(), "duplicates are the exception");
    f.wait_status(Duration::from_secs(60), "drained", |s| {
        s.backlog_events == 0
    });
}

#[test]
fn policy_drops_are_announced_on_the_loss_topic() {
    let topics = [("lossy", 1), ("ferry-loss", 1)];
    let c = cluster(1, &topics);
    let proxy = Proxy::start(&c.bootstrap_servers());
    proxy.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(
        dir.path(),
        &proxy.bootstrap,
        "[outbox]\nmax_bytes = 1000\n\n[kafka]\nlinger_ms = 2\nloss_topic = \"ferry-loss\"\n",
    );
    f.start();
    for i in 0..60 {
        let v = format!(
            "v{i:03}-{}",
            (0..40)
                .map(|j| ((i * 7 + j * 13) % 26 + 97) as u8 as char)
                .collect::<String>()
        );
        assert_eq!(f.cli(&["send", "-t", "lossy", &v], None).0, 0);
    }
    let s = f.status();
    assert!(s.dropped_events > 0, "{s:?}");
    let reader = Reader::start(&c.bootstrap_servers(), &topics);
    proxy.set_down(false);
    let kept = s.backlog_events as usize;
    f.wait_status(Duration::from_secs(90), "delivered", |s| {
        s.backlog_events == 0
    });
    let got = reader.collect(kept + 1, Duration::from_secs(30));
    let markers: Vec<serde_json::Value> = got
        .iter()
        .filter(|g| g.topic == "ferry-loss")
        .map(|g| serde_json::from_slice(&g.value).unwrap())
        .collect();
    assert!(!markers.is_empty(), "loss markers were produced");
    let mut counted = 0u64;
    let mut ranges = Vec::new();
    for m in &markers {
        assert_eq!(m["node"], "test-node");
        assert_eq!(m["reason"], "max_bytes");
        assert!(m["time_ms"].as_i64().unwrap() > 0);
        let t = &m["topics"]["lossy"];
        counted += t["events"].as_u64().unwrap();
        assert!(t["bytes"].as_u64().unwrap() > 0);
        for r in t["ranges"].as_array().unwrap() {
            ranges.push((r[0].as_i64().unwrap(), r[1].as_i64().unwrap()));
        }
    }
    assert_eq!(counted, s.dropped_events, "every drop announced");
    // The ranges name exactly the ferry-ids that did not arrive.
    let arrived: std::collections::HashSet<i64> = got
        .iter()
        .filter(|g| g.topic == "lossy")
        .map(|g| g.ferry_id().rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    for (a, b) in ranges {
        for seq in a..=b {
            assert!(
                !arrived.contains(&seq),
                "seq {seq} announced lost but arrived: {:?}",
                got.iter()
                    .filter(|g| g.topic == "lossy")
                    .map(|g| (g.ferry_id(), g.value_str()))
                    .take(5)
                    .collect::<Vec<_>>()
            );
        }
    }
    assert_eq!(arrived.len() as u64 + counted, 60);
}
