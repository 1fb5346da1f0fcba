//! Metered and thin uplinks, end to end with the real binary against the
//! mock cluster behind the test proxy (which sees every request): stream
//! priorities after an outage, the bandwidth cap with an alarm in the
//! middle, and zstd batches read back by librdkafka.

mod common;

use common::proxy::Proxy;
use common::{Ferry, FrameClient, Reader, batch_codecs, check_delivery, cluster};
use std::time::{Duration, Instant};

/// Send `n` keyed events to `topic` over one frames connection, values
/// `<topic>-k<key>|<i>`; all acknowledged.
fn send_keyed(
    client: &mut FrameClient,
    topic: &str,
    start: usize,
    n: usize,
    pad: usize,
) -> Vec<String> {
    let padding = "x".repeat(pad);
    let mut values = Vec::with_capacity(n);
    for i in start..start + n {
        let key = format!("{topic}-k{}", i % 10);
        let v = format!("{key}|{i}|{padding}");
        client
            .send_event(topic, Some(key.as_bytes()), &[], v.as_bytes())
            .unwrap();
        values.push(v);
    }
    let (acked, errors) = client.answers_for(n as u32).unwrap();
    assert_eq!((acked as usize, errors.len()), (n, 0), "{errors:?}");
    values
}

/// `<key>|<n>|pad` → `<key>|<n>` as `check_delivery` reads it.
fn strip_pad(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|v| v.rsplit_once('|').unwrap().0.to_string())
        .collect()
}

#[test]
fn a_priority_8_backlog_goes_before_priority_2_and_nothing_is_lost() {
    let topics = [("bulk", 2), ("alarm", 2)];
    let c = cluster(1, &topics);
    let proxy = Proxy::start(&c.bootstrap_servers());
    proxy.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let routes = "[[route]]\npattern = \"alarm\"\npriority = 8\n\n\
                  [[route]]\npattern = \"bulk\"\npriority = 2\n";
    let mut f = Ferry::new(dir.path(), &proxy.bootstrap, routes);
    f.start();
    // The outage: both topics' events arrive interleaved, bulk first.
    let mut client = FrameClient::connect(&f.socket()).unwrap();
    let mut acked = Vec::new();
    for round in 0..20 {
        acked.extend(send_keyed(&mut client, "bulk", round * 1_000, 1_000, 0));
        acked.extend(send_keyed(&mut client, "alarm", round * 1_000, 1_000, 0));
    }
    f.wait_status(Duration::from_secs(20), "backlog of 40,000", |s| {
        s.backlog_events == 40_000
    });
    // The uplink returns.
    proxy.set_down(false);
    let got =
        Reader::start(&c.bootstrap_servers(), &topics).collect(40_000, Duration::from_secs(120));
    let values: Vec<common::Got> = got
        .into_iter()
        .map(|mut g| {
            let v = g.value_str();
            g.value = v.rsplit_once('|').unwrap().0.as_bytes().to_vec();
            g
        })
        .collect();
    assert_eq!(check_delivery(&strip_pad(&acked), &values), 0, "duplicates");
    // What the broker was sent, in order: the whole alarm backlog before
    // (nearly) any of the bulk one.
    let log = proxy.produce_log();
    let last_alarm = log.iter().rposition(|(t, _)| t == "alarm").unwrap();
    let bulk_before: u64 = log[..last_alarm]
        .iter()
        .filter(|(t, _)| t == "bulk")
        .map(|(_, n)| n)
        .sum();
    let bulk_total: u64 = log
        .iter()
        .filter(|(t, _)| t == "bulk")
        .map(|(_, n)| n)
        .sum();
    eprintln!("bulk records sent before the last alarm record: {bulk_before} of {bulk_total}");
    assert!(bulk_total >= 20_000);
    assert!(
        bulk_before * 10 <= 20_000,
        "{bulk_before} bulk records went before the alarm backlog was through"
    );
}

#[test]
fn a_bandwidth_cap_holds_the_uplink_to_its_rate_and_an_alarm_still_goes_first() {
    let topics = [("bulk", 1), ("alarm", 1)];
    let c = cluster(1, &topics);
    let proxy = Proxy::start(&c.bootstrap_servers());
    let dir = tempfile::tempdir().unwrap();
    let config = "[[route]]\npattern = \"alarm\"\npriority = 9\n\n\
                  [kafka]\ncompression = \"none\"\nmax_bytes_per_second = 200000\nlinger_ms = 2\n";
    let mut f = Ferry::new(dir.path(), &proxy.bootstrap, config);
    f.start();
    // A large backlog: about 14 MB, over a minute of the cap.
    let mut client = FrameClient::connect(&f.socket()).unwrap();
    for round in 0..70 {
        send_keyed(&mut client, "bulk", round * 1_000, 1_000, 180);
    }
    std::thread::sleep(Duration::from_secs(3));
    let alarms = Reader::start(&c.bootstrap_servers(), &[("alarm", 1)]);
    let (t0, b0) = (Instant::now(), proxy.bytes_up());
    std::thread::sleep(Duration::from_secs(15));
    // An alarm in the middle of the backlog.
    let sent_at = Instant::now();
    send_keyed(&mut client, "alarm", 0, 1, 0);
    let got = alarms.collect(1, Duration::from_secs(20));
    let latency = sent_at.elapsed();
    assert_eq!(got.len(), 1);
    std::thread::sleep(Duration::from_secs(30).saturating_sub(t0.elapsed()));
    let (seconds, bytes) = (t0.elapsed().as_secs_f64(), proxy.bytes_up() - b0);
    let rate = bytes as f64 / seconds;
    eprintln!(
        "{bytes} bytes in {seconds:.1} s = {rate:.0} B/s under a 200000 B/s cap; alarm after {latency:?}"
    );
    assert!(
        (180_000.0..=220_000.0).contains(&rate),
        "{rate:.0} B/s is not within 10% of the cap"
    );
    assert!(
        latency < Duration::from_secs(3),
        "the priority-9 alarm took {latency:?} behind the backlog"
    );
    let s = f.status();
    assert_eq!(s.max_bytes_per_second, 200_000);
    assert!(
        s.uplink_held_s > 10.0,
        "held back only {} s",
        s.uplink_held_s
    );
    // ferry's own count of bytes on the wire agrees with what crossed.
    let crossed = proxy.bytes_up() as f64;
    let counted = s.uplink_bytes_total as f64;
    assert!(
        (counted - crossed).abs() <= crossed * 0.05,
        "ferry counted {counted} bytes, {crossed} crossed"
    );
    assert_eq!(s.uplink_bytes_today, s.uplink_bytes_total);
}

#[test]
fn zstd_batches_are_read_back_by_librdkafka() {
    let topics = [("zs", 1)];
    let c = cluster(1, &topics);
    let dir = tempfile::tempdir().unwrap();
    let config = "[kafka]\ncompression = \"zstd\"\nzstd_level = 6\nlinger_ms = 2\n";
    let mut f = Ferry::new(dir.path(), &c.bootstrap_servers(), config);
    f.start();
    let values: Vec<String> = (0..500)
        .map(|i| format!("reading {i}: {}", "temperature=21.5 ".repeat(i % 7)))
        .collect();
    let input = values.join("\n") + "\n";
    assert_eq!(f.cli(&["send", "-t", "zs"], Some(input.as_bytes())).0, 0);
    f.wait_status(Duration::from_secs(20), "all sent", |s| s.sent >= 500);
    let codecs = batch_codecs(&c.bootstrap_servers(), "zs", 0);
    assert!(
        !codecs.is_empty() && codecs.iter().all(|&c| c == 4),
        "{codecs:?}"
    );
    // kcat's librdkafka decompresses them (Debian's is built with zstd).
    let out = std::process::Command::new("kcat")
        .args([
            "-C",
            "-b",
            &c.bootstrap_servers(),
            "-t",
            "zs",
            "-o",
            "beginning",
            "-e",
            "-q",
        ])
        .args(["-f", "%s\n"])
        .output()
        .expect("run kcat");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(got, values);
}
