//! End to end: the real `ferry` binary, a real SQLite outbox on disk,
//! librdkafka's mock cluster as the broker and a real consumer reading back.
// librdkafka's mock cluster (the Kafka peer) is built for the host only;
// ARM binaries are tested through FERRY_TEST_BIN/FERRY_TEST_RUNNER.
#![cfg(target_arch = "x86_64")]

mod common;

use common::*;
use ferry::kafka::partitioner::partition_for_key;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 8;

/// Check ids unique, partition = murmur2(key) % n, per-key order by value.
fn check_keyed(got: &[Got], expected: usize) {
    assert_eq!(got.len(), expected, "each event arrives exactly once");
    let ids: HashSet<String> = got.iter().map(Got::ferry_id).collect();
    assert_eq!(ids.len(), expected, "ferry-id unique");
    assert!(ids.iter().all(|id| id.starts_with("test-node:")));
    let mut last_per_key: HashMap<Vec<u8>, (i32, i64, u64)> = HashMap::new();
    let mut by_partition: Vec<&Got> = got.iter().collect();
    by_partition.sort_by_key(|g| (g.partition, g.offset));
    for g in by_partition {
        let key = g.key.clone().expect("key");
        assert_eq!(
            g.partition,
            partition_for_key(&key, PARTITIONS),
            "murmur2 partition"
        );
        // value = "<key>|<n>|payload"; n grows per key in send order.
        let n: u64 = g.value_str().split('|').nth(1).unwrap().parse().unwrap();
        if let Some((p, off, prev)) = last_per_key.insert(key, (g.partition, g.offset, n)) {
            assert_eq!(p, g.partition);
            assert!(off < g.offset);
            assert!(prev < n, "per-key order: {prev} then {n}");
        }
    }
}

#[test]
fn frames_100k_arrive_once_keyed_ordered_with_headers_in_lz4() {
    let topics = [("telemetry", PARTITIONS)];
    let c = cluster(1, &topics);
    let bootstrap = c.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &bootstrap, "");
    f.start();
    let reader = Reader::start(&bootstrap, &topics);

    const N: usize = 100_000;
    let mut client = FrameClient::connect(&f.socket()).unwrap();
    let mut counters = [0u64; 32];
    for chunk in 0..N / 1000 {
        for i in 0..1000 {
            let k = (chunk * 1000 + i) % 32;
            let key = format!("sensor-{k}");
            let value = format!("{key}|{}|{{\"temp\":21.5,\"rh\":40}}", counters[k]);
            counters[k] += 1;
            client
                .send_event(
                    "telemetry",
                    Some(key.as_bytes()),
                    &[("unit", b"C"), ("src", key.as_bytes())],
                    value.as_bytes(),
                )
                .unwrap();
        }
        let (acked, errors) = client.answers_for(1000).unwrap();
        assert_eq!((acked, errors.len()), (1000, 0), "{errors:?}");
    }
    let got = reader.collect(N, Duration::from_secs(120));
    check_keyed(&got, N);
    for g in &got {
        assert_eq!(g.header("unit"), Some(&b"C"[..]));
        assert_eq!(g.header("src"), g.key.as_deref());
    }
    f.wait_status(Duration::from_secs(10), "empty backlog", |s| {
        s.backlog_events == 0 && s.sent == N as u64
    });
    // What is on the wire: LZ4 record batches (codec 3).
    let codecs = batch_codecs(&bootstrap, "telemetry", 0);
    assert!(!codecs.is_empty());
    assert!(codecs.iter().all(|&c| c == 3), "codecs {codecs:?}");
}

#[test]
fn lines_100k_over_tcp_arrive_once() {
    let topics = [("lines", PARTITIONS)];
    let c = cluster(1, &topics);
    let bootstrap = c.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut f = Ferry::new(
        dir.path(),
        &bootstrap,
        &format!(
            "[[listener]]\ntype = \"unix\"\n\n[[listener]]\ntype = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nformat = \"lines\"\ntopic = \"lines\"\n"
        ),
    );
    f.start();
    let reader = Reader::start(&bootstrap, &topics);
    const N: usize = 100_000;
    let mut text = String::with_capacity(N * 40);
    for i in 0..N {
        text.push_str(&format!("line {i:06} {{\"v\":{}}}\n", i % 97));
    }
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(text.as_bytes()).unwrap();
    }
    let got = reader.collect(N, Duration::from_secs(120));
    let values = by_value(&got);
    assert_eq!(got.len(), N, "every line once");
    assert_eq!(values.len(), N);
    assert!(values.contains_key("line 000000 {\"v\":0}"));
    assert!(values.contains_key(&format!("line {:06} {{\"v\":{}}}", N - 1, (N - 1) % 97)));
    let ids: HashSet<String> = got.iter().map(Got::ferry_id).collect();
    assert_eq!(ids.len(), N);
    assert!(got.iter().all(|g| g.key.is_none()));
    // Keyless events are spread, not piled onto one partition.
    let parts: HashSet<i32> = got.iter().map(|g| g.partition).collect();
    assert!(parts.len() > 1, "keyless spread over partitions: {parts:?}");
}

#[test]
fn buffers_with_no_broker_then_delivers() {
    let topics = [("late", 2)];
    let c = cluster(1, &topics);
    let bootstrap = c.bootstrap_servers();
    c.broker_down(-1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &bootstrap, "");
    f.start();
    let input: String = (0..2000).map(|i| format!("early-{i}\n")).collect();
    let (code, _, err) = f.cli(&["send", "-t", "late", "-k", "k1"], Some(input.as_bytes()));
    assert_eq!(code, 0, "send acknowledged with no broker: {err}");
    std::thread::sleep(Duration::from_secs(2));
    let s = f.status();
    assert_eq!(s.backlog_events, 2000, "buffered: {s:?}");
    assert!(!s.uplink_up);
    let (code, out, _) = f.cli(&["status"], None);
    assert_eq!(code, 0);
    assert!(out.contains("uplink:      down"), "{out}");
    assert!(out.contains("backlog:     2000 events"), "{out}");

    c.broker_up(-1).unwrap();
    let reader = Reader::start(&bootstrap, &topics);
    let got = reader.collect(2000, Duration::from_secs(90));
    let values = by_value(&got);
    for i in 0..2000 {
        assert!(
            values.contains_key(&format!("early-{i}")),
            "early-{i} missing"
        );
    }
    f.wait_status(Duration::from_secs(10), "drained", |s| {
        s.backlog_events == 0 && s.uplink_up
    });
}

#[test]
fn kill_9_loses_nothing_acknowledged() {
    let topics = [("crash", 4)];
    let c = cluster(1, &topics);
    let bootstrap = c.bootstrap_servers();
    let reader = Reader::start(&bootstrap, &topics);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &bootstrap, "");
    let mut acked: Vec<String> = Vec::new();
    let mut next = 0u64;
    for round in 0..4 {
        f.start();
        let socket = f.socket();
        // A producer streams until ferry dies under it.
        let producer = std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut n = next;
            let Ok(mut client) = FrameClient::connect(&socket) else {
                return (acked, n);
            };
            loop {
                let batch: Vec<String> = (n..n + 200).map(|i| format!("ev-{i}")).collect();
                n += 200;
                for v in &batch {
                    let key = format!("k{}", v.len() % 5);
                    if client
                        .send_event("crash", Some(key.as_bytes()), &[], v.as_bytes())
                        .is_err()
                    {
                        return (acked, n);
                    }
                }
                match client.answers_for(200) {
                    Ok((200, _)) => acked.extend(batch),
                    _ => return (acked, n),
                }
            }
        });
        std::thread::sleep(Duration::from_millis(400 + round * 150));
        f.kill9();
        let (a, n) = producer.join().unwrap();
        assert!(
            !a.is_empty(),
            "round {round}: some events were acknowledged"
        );
        acked.extend(a);
        next = n;
    }
    f.start();
    let got = reader.collect_values(&acked, Duration::from_secs(120));
    let values = by_value(&got);
    let missing: Vec<&String> = acked.iter().filter(|v| !values.contains_key(*v)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let dups: usize = values.values().filter(|&&c| c > 1).count();
    eprintln!(
        "kill -9 x4: {} acknowledged, {} records read, {} values duplicated",
        acked.len(),
        got.len(),
        dups
    );
    // Duplicates come only from in-flight windows at each kill.
    assert!(
        dups <= 4 * 50_000,
        "duplicates bounded by the in-flight windows"
    );
    f.wait_status(Duration::from_secs(30), "drained after restart", |s| {
        s.backlog_events == 0
    });
}

#[test]
fn bad_input_gets_clear_errors_and_harms_nothing_else() {
    let topics = [("good", 2)];
    let c = cluster(1, &topics);
    let bootstrap = c.bootstrap_servers();
    let reader = Reader::start(&bootstrap, &topics);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut f = Ferry::new(
        dir.path(),
        &bootstrap,
        &format!(
            "[ingest]\nmax_event_bytes = 1000\n\n[[listener]]\ntype = \"unix\"\n\n[[listener]]\ntype = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nformat = \"lines\"\ntopic = \"good\"\n"
        ),
    );
    f.start();

    let mut bystander = FrameClient::connect(&f.socket()).unwrap();
    let mut bad = FrameClient::connect(&f.socket()).unwrap();
    bad.send_event("good", None, &[], b"ok-1").unwrap();
    bad.send_event("no spaces allowed", None, &[], b"x")
        .unwrap();
    bad.send_event("..", None, &[], b"x").unwrap();
    bad.send_event(&"t".repeat(250), None, &[], b"x").unwrap();
    bad.send_event("good", None, &[], &vec![b'x'; 1001])
        .unwrap();
    bad.send_event("good", None, &[], b"ok-2").unwrap();
    // A frame far beyond the limit, refused before it all arrives.
    bad.send_event("good", None, &[], &vec![b'y'; 200_000])
        .unwrap();
    // A well-delimited frame with a broken body.
    bad.write_raw(&[0, 0, 0, 5, 1, 1, 0, 0, 40]).unwrap();
    bad.send_event("good", None, &[], b"ok-3").unwrap();
    let mut answers = Vec::new();
    while answers
        .iter()
        .map(|a| match a {
            Answer::Ack(n) | Answer::Error(n, _) => *n,
            _ => 1,
        })
        .sum::<u32>()
        < 9
    {
        let a = bad.answer();
        assert!(!matches!(a, Answer::Closed | Answer::Fatal(_)), "{a:?}");
        answers.push(a);
    }
    let errors: Vec<&String> = answers
        .iter()
        .filter_map(|a| {
            if let Answer::Error(_, m) = a {
                Some(m)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(errors.len(), 6, "{answers:?}");
    assert!(
        errors[0].contains("invalid topic name \"no spaces allowed\""),
        "{}",
        errors[0]
    );
    assert!(errors[1].contains("\"..\""), "{}", errors[1]);
    assert!(errors[2].contains("longer than 249"), "{}", errors[2]);
    assert!(
        errors[3].contains("event of 1001 bytes") && errors[3].contains("max_event_bytes"),
        "{}",
        errors[3]
    );
    assert!(
        errors[4].contains("bytes refused") && errors[4].contains("at most 1000"),
        "{}",
        errors[4]
    );
    assert!(
        errors[5].contains("truncated in the topic"),
        "{}",
        errors[5]
    );

    // Garbage that cannot be delimited closes only that connection.
    bad.write_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    match bad.answer() {
        Answer::Fatal(m) => assert!(m.contains("garbage on the stream"), "{m}"),
        other => panic!("expected fatal, got {other:?}"),
    }
    assert_eq!(bad.answer(), Answer::Closed);

    // The lines listener: an oversized line is dropped and counted, the
    // rest stored.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let long = "z".repeat(5000);
        s.write_all(format!("line-ok-1\n{long}\nline-ok-2\n").as_bytes())
            .unwrap();
    }
    // The other client never noticed.
    bystander
        .send_event("good", Some(b"k"), &[], b"bystander")
        .unwrap();
    assert_eq!(bystander.answers_for(1).unwrap(), (1, vec![]));

    let got = reader.collect(6, Duration::from_secs(60));
    let values = by_value(&got);
    for v in [
        "ok-1",
        "ok-2",
        "ok-3",
        "line-ok-1",
        "line-ok-2",
        "bystander",
    ] {
        assert_eq!(
            values.get(v),
            Some(&1),
            "{v} delivered once; got {values:?}"
        );
    }
    assert_eq!(got.len(), 6, "nothing bad was stored");
    let s = f.status();
    assert_eq!(s.rejected, 7, "6 refused frames + 1 long line: {s:?}");
    assert!(
        f.log_text().contains("longer than 1000 bytes"),
        "{}",
        f.log_text()
    );
}

/// A producer that writes without waiting keeps several batches of its
/// connection waiting for their commits at once; the answers still come
/// back one per frame, in stream order.
#[test]
fn answers_stay_in_stream_order_while_batches_await_commits() {
    use std::io::Write;
    let topics = [("good", 2)];
    let c = cluster(1, &topics);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &c.bootstrap_servers(), "");
    f.start();
    // About 1.3 MB: many reads, so many batches.
    const PAIRS: usize = 20_000;
    let mut stream = Vec::new();
    for i in 0..PAIRS {
        ferry::ingest::frame::encode_event(
            &mut stream,
            "good",
            None,
            &[],
            format!("v{i}").as_bytes(),
            None,
        );
        ferry::ingest::frame::encode_event(&mut stream, "bad topic", None, &[], b"x", None);
    }
    let mut client = FrameClient::connect(&f.socket()).unwrap();
    let mut writer = client.writer().unwrap();
    let writing = std::thread::spawn(move || writer.write_all(&stream));
    for i in 0..PAIRS {
        assert_eq!(client.answer(), Answer::Ack(1), "answer to frame {}", 2 * i);
        match client.answer() {
            Answer::Error(1, m) => assert!(m.contains("invalid topic name"), "{m}"),
            other => panic!("answer to frame {}: {other:?}", 2 * i + 1),
        }
    }
    writing.join().unwrap().unwrap();
    let s = f.status();
    assert_eq!(
        (s.stored, s.rejected),
        (PAIRS as u64, PAIRS as u64),
        "{s:?}"
    );
}

#[test]
fn when_full_reject_refuses_with_clear_error() {
    let c = cluster(1, &[("full", 1)]);
    c.broker_down(-1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(
        dir.path(),
        &c.bootstrap_servers(),
        "[outbox]\nmax_bytes = 2000\nwhen_full = \"reject\"\n",
    );
    f.start();
    let mut refused_at = None;
    for i in 0..200 {
        let value = format!(
            "{i:04}-{}",
            "payload that does not compress well ".repeat(3) + &i.to_string()
        );
        let (code, _, err) = f.cli(&["send", "-t", "full", &value], None);
        if code != 0 {
            assert_eq!(code, 1);
            assert!(
                err.contains("outbox full") && err.contains("reject"),
                "{err}"
            );
            refused_at = Some(i);
            break;
        }
    }
    let i = refused_at.expect("the outbox filled up and refused");
    assert!(i > 0);
    let s = f.status();
    assert_eq!(
        s.backlog_events, i as u64,
        "everything acknowledged is kept"
    );
    assert_eq!(s.rejected, 1);
}

#[test]
fn when_full_drop_oldest_keeps_newest_and_counts() {
    let topics = [("drop", 1)];
    let c = cluster(1, &topics);
    c.broker_down(-1).unwrap();
    let bootstrap = c.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &bootstrap, "[outbox]\nmax_bytes = 1000\n");
    f.start();
    for i in 0..100 {
        let value = format!(
            "v{i:03}-{}",
            (0..40)
                .map(|j| ((i * 7 + j * 13) % 26 + 97) as u8 as char)
                .collect::<String>()
        );
        let (code, _, err) = f.cli(&["send", "-t", "drop", &value], None);
        assert_eq!(code, 0, "{err}");
    }
    let s = f.status();
    assert!(s.dropped_events > 0, "{s:?}");
    assert!(s.backlog_bytes <= 1000, "{s:?}");
    assert_eq!(s.backlog_events + s.dropped_events, 100);
    assert!(f.log_text().contains("dropped"), "drops are logged");
    let kept = s.backlog_events as usize;

    // Let an attempt that may have been under way when the drops happened
    // fail, so the retry sees what is left (a request already on the wire when its
    // events are dropped may still deliver them).
    let errors_before = f.status().produce_errors;
    f.wait_status(Duration::from_secs(30), "a failed attempt", |s| {
        s.produce_errors > errors_before
    });
    c.broker_up(-1).unwrap();
    let reader = Reader::start(&bootstrap, &topics);
    let got = reader.collect(kept, Duration::from_secs(60));
    let values: Vec<String> = got.iter().map(Got::value_str).collect();
    assert_eq!(got.len(), kept, "{values:?}");
    assert!(
        values.iter().any(|v| v.starts_with("v099-")),
        "the newest is kept"
    );
    assert!(
        !values.iter().any(|v| v.starts_with("v000-")),
        "the oldest was dropped"
    );
    // `ferry status` shows the drops.
    let (_, out, _) = f.cli(&["status"], None);
    assert!(
        out.contains(&format!("dropped {} events", s.dropped_events)),
        "{out}"
    );
}

#[test]
fn sigterm_exits_zero_quickly_and_keeps_the_backlog() {
    let c = cluster(1, &[("stop", 1)]);
    c.broker_down(-1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(dir.path(), &c.bootstrap_servers(), "");
    f.start();
    let input: String = (0..500).map(|i| format!("s{i}\n")).collect();
    assert_eq!(f.cli(&["send", "-t", "stop"], Some(input.as_bytes())).0, 0);
    let (code, took) = f.terminate();
    assert_eq!(code, Some(0), "{}", f.log_text());
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
    // Offline status reads the outbox counters.
    let (code, out, _) = f.cli(&["status", "--json"], None);
    assert_eq!(code, 1, "daemon not running");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["backlog_events"], 500);
    assert_eq!(v["running"], false);
}

#[test]
fn routes_fan_out_to_several_topics() {
    let topics = [("all", 2), ("archive", 1)];
    let c = cluster(1, &topics);
    let bootstrap = c.bootstrap_servers();
    let reader = Reader::start(&bootstrap, &topics);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(
        dir.path(),
        &bootstrap,
        "[[route]]\npattern = \"sensors.*\"\nto = [\"all\", \"archive\"]\n",
    );
    f.start();
    let (code, _, err) = f.cli(
        &["send", "-t", "sensors.temp", "-k", "a", "-H", "x=1", "21.5"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let got = reader.collect(2, Duration::from_secs(30));
    let mut dest: Vec<&str> = got.iter().map(|g| g.topic.as_str()).collect();
    dest.sort();
    assert_eq!(dest, vec!["all", "archive"]);
    assert!(
        got.iter()
            .all(|g| g.value == b"21.5" && g.header("x") == Some(&b"1"[..]))
    );
    assert_eq!(got[0].ferry_id(), got[1].ferry_id(), "one event, one id");
}

/// A ferry (broker unreachable, not started) whose systemd notifications
/// go to a socket this test owns.
fn ferry_notifying(
    dir: &std::path::Path,
    read_timeout: Duration,
) -> (Ferry, std::os::unix::net::UnixDatagram) {
    let notify_path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(read_timeout)).unwrap();
    let mut f = Ferry::new(dir, "127.0.0.1:1", "");
    f.env
        .push(("NOTIFY_SOCKET".into(), notify_path.to_str().unwrap().into()));
    (f, notify)
}

#[test]
fn tells_systemd_ready_after_binding_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut f, notify) = ferry_notifying(dir.path(), Duration::from_secs(20));
    f.start();
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    // READY means the socket is bound: a client gets in at once.
    assert!(FrameClient::connect(&f.socket()).is_ok());
    let (code, _) = f.terminate();
    assert_eq!(code, Some(0));
    // STATUS= lines may come in between; STOPPING=1 must come.
    let mut seen = Vec::new();
    loop {
        let n = notify
            .recv(&mut buf)
            .expect("STOPPING=1 before the socket went quiet");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg == "STOPPING=1" {
            break;
        }
        assert!(
            msg.starts_with("STATUS="),
            "unexpected {msg:?} after {seen:?}"
        );
        seen.push(msg);
    }
}

/// Wedge the outbox writer: another process holds the database's write
/// lock, and an event waits for it. Release with `ROLLBACK` on the returned
/// connection; the thread yields the waiting client's answer.
fn wedge_outbox(f: &Ferry) -> (rusqlite::Connection, std::thread::JoinHandle<Answer>) {
    let db = rusqlite::Connection::open(f.dir.join("data/outbox.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let socket = f.socket();
    let sender = std::thread::spawn(move || {
        let mut c = FrameClient::connect(&socket).unwrap();
        c.send_event("t", None, &[], b"waits").unwrap();
        c.answer()
    });
    std::thread::sleep(Duration::from_millis(300));
    (db, sender)
}

#[test]
fn watchdog_is_fed_while_alive_and_stops_while_the_outbox_is_wedged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut f, notify) = ferry_notifying(dir.path(), Duration::from_millis(200));
    f.env.push(("WATCHDOG_USEC".into(), "1000000".into()));
    f.start();
    // Collect notifications for `d`: (seconds since start, message).
    let t0 = std::time::Instant::now();
    let collect = |d: Duration| {
        let until = std::time::Instant::now() + d;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while std::time::Instant::now() < until {
            if let Ok(n) = notify.recv(&mut buf) {
                got.push((
                    t0.elapsed().as_secs_f64(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        }
        got
    };
    let healthy = collect(Duration::from_secs(3));
    let pings = healthy.iter().filter(|(_, m)| m == "WATCHDOG=1").count();
    assert!(pings >= 4, "pinged every 0.5 s while healthy: {healthy:?}");
    let status = healthy
        .iter()
        .find(|(_, m)| m.starts_with("STATUS="))
        .expect("STATUS line");
    assert!(
        status.1.contains("uplink down") && status.1.contains("backlog 0 events"),
        "{status:?}"
    );

    let (db, sender) = wedge_outbox(&f);
    let wedged = collect(Duration::from_secs(3));
    assert!(
        !wedged.iter().any(|(_, m)| m == "WATCHDOG=1"),
        "no watchdog pings while the writer is stuck: {wedged:?}"
    );
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);
    let answer = sender.join().unwrap();
    let after = collect(Duration::from_secs(6));
    assert!(
        after.iter().any(|(_, m)| m == "WATCHDOG=1"),
        "pings resume once the writer is free: {after:?} (answer to the waiting event: {answer:?})"
    );
    assert!(
        f.log_text().contains("not feeding the systemd watchdog"),
        "{}",
        f.log_text()
    );
}

/// Parse the exposition with the Python client's own parser; returns
/// `{family: {sample name: value}}` as JSON.
fn parse_prometheus(text: &str) -> serde_json::Value {
    use std::io::Write;
    let script = [
        "import sys, json",
        "from prometheus_client.parser import text_string_to_metric_families",
        "out = {}",
        "for fam in text_string_to_metric_families(sys.stdin.read()):",
        "    samples = {s.name + json.dumps(s.labels, sort_keys=True): s.value for s in fam.samples}",
        "    out[fam.name] = {'type': fam.type, 'samples': samples}",
        "print(json.dumps(out))",
    ]
    .join("\n");
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejected the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn metrics_and_health_over_http_and_textfile() {
    let c = cluster(1, &[("m", 2)]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let textfile = dir.path().join("ferry.prom");
    let mut f = Ferry::new(
        dir.path(),
        &c.bootstrap_servers(),
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{port}\"\ntextfile = \"{}\"\n",
            textfile.display()
        ),
    );
    f.start();
    let input: String = (0..250).map(|i| format!("m{i}\n")).collect();
    assert_eq!(
        f.cli(&["send", "-t", "m", "-k", "k"], Some(input.as_bytes()))
            .0,
        0
    );
    f.wait_status(Duration::from_secs(30), "sent", |s| s.sent == 250);

    let (code, body) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    let m = parse_prometheus(&body);
    let value = |fam: &str, sample: &str| m[fam]["samples"][sample].as_f64().unwrap_or(-1.0);
    assert_eq!(
        value("ferry_events_stored", "ferry_events_stored_total{}"),
        250.0,
        "{m}"
    );
    assert_eq!(
        value("ferry_records_sent", "ferry_records_sent_total{}"),
        250.0
    );
    assert_eq!(m["ferry_events_stored"]["type"], "counter");
    assert_eq!(m["ferry_backlog_events"]["type"], "gauge");
    assert_eq!(value("ferry_uplink_up", "ferry_uplink_up{}"), 1.0);
    assert_eq!(value("ferry_breaker_state", "ferry_breaker_state{}"), 0.0);
    assert_eq!(m["ferry_produce_latency_seconds"]["type"], "histogram");
    assert!(
        value(
            "ferry_produce_latency_seconds",
            "ferry_produce_latency_seconds_count{}"
        ) >= 1.0,
        "{}",
        m["ferry_produce_latency_seconds"]
    );
    for fam in [
        "ferry_events_received",
        "ferry_events_rejected",
        "ferry_events_dropped",
        "ferry_dead_letters",
        "ferry_backlog_bytes",
        "ferry_backlog_oldest_age_seconds",
        "ferry_retries",
        "ferry_breaker_transitions",
    ] {
        assert!(m.get(fam).is_some(), "{fam} missing in {m}");
    }
    let (code, body) = http_get(port, "/health");
    assert_eq!(code, 200, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(http_get(port, "/nope").0, 404);

    // The textfile is there and parses too.
    let text = std::fs::read_to_string(&textfile).expect("textfile written");
    assert!(
        parse_prometheus(&text)
            .get("ferry_backlog_events")
            .is_some()
    );

    // Storage stuck: /health says so with 503 and why.
    let (db, sender) = wedge_outbox(&f);
    let (code, body) = http_get(port, "/health");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("outbox writer does not answer"), "{body}");
    db.execute_batch("ROLLBACK").unwrap();
    let _ = sender.join();
}

/// With `health_includes_kafka`, /health fails while no broker can be
/// reached, saying why, and recovers once the uplink is up.
#[test]
fn health_can_include_kafka_reachability() {
    let topics = [("hk", 1)];
    let c = cluster(1, &topics);
    let proxy = common::proxy::Proxy::start(&c.bootstrap_servers());
    proxy.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut f = Ferry::new(
        dir.path(),
        &proxy.bootstrap,
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\nhealth_includes_kafka = true\n"),
    );
    f.start();
    assert_eq!(f.cli(&["send", "-t", "hk", "x"], None).0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (code, body) = http_get(port, "/health");
        if code == 503 && body.contains("Kafka is unreachable") {
            break body;
        }
        assert!(Instant::now() < deadline, "{code} {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.contains("\"kafka_checked\":true"), "{body}");
    proxy.set_down(false);
    f.wait_status(Duration::from_secs(60), "sent", |s| s.sent == 1);
    let (code, body) = http_get(port, "/health");
    assert_eq!(code, 200, "{body}");
}

#[test]
fn udp_lines_and_frames_are_stored_and_bad_datagrams_counted() {
    let topics = [("udp-lines", 1), ("udp-frames", 1)];
    let c = cluster(1, &topics);
    let reader = Reader::start(&c.bootstrap_servers(), &topics);
    let dir = tempfile::tempdir().unwrap();
    let (lines_port, frames_port) = (free_port(), free_port());
    let mut f = Ferry::new(
        dir.path(),
        &c.bootstrap_servers(),
        &format!(
            "[[listener]]\ntype = \"unix\"\n\n[[listener]]\ntype = \"udp\"\naddress = \"127.0.0.1:{lines_port}\"\nformat = \"lines\"\ntopic = \"udp-lines\"\n\n[[listener]]\ntype = \"udp\"\naddress = \"127.0.0.1:{frames_port}\"\nformat = \"frames\"\n"
        ),
    );
    f.start();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(b"u1\nu2\n", ("127.0.0.1", lines_port))
        .unwrap();
    let mut datagram = Vec::new();
    ferry::ingest::frame::encode_event(&mut datagram, "udp-frames", Some(b"k"), &[], b"f1", None);
    ferry::ingest::frame::encode_status_request(&mut datagram);
    ferry::ingest::frame::encode_event(&mut datagram, "bad topic", None, &[], b"x", None);
    ferry::ingest::frame::encode_event(&mut datagram, "udp-frames", Some(b"k"), &[], b"f2", None);
    sock.send_to(&datagram, ("127.0.0.1", frames_port)).unwrap();
    let got = reader.collect(4, Duration::from_secs(30));
    let values = by_value(&got);
    for v in ["u1", "u2", "f1", "f2"] {
        assert_eq!(values.get(v), Some(&1), "{v} in {values:?}");
    }
    assert_eq!(got.len(), 4);
    let s = f.status();
    assert_eq!((s.received, s.rejected), (5, 1), "{s:?}");
    assert!(
        f.log_text().contains("invalid topic name"),
        "{}",
        f.log_text()
    );
}
