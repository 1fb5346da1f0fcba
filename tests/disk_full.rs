//! A full disk with a backlog stored and the uplink down, then the uplink
//! back: the drain must find the space it needs (a plan stored before
//! sending, deletes after), producers are refused with a clear error
//! meanwhile, the backlog reaches the broker, and the space the drain
//! frees is used again for new events. The outbox lives on a real tmpfs
//! of 16 MiB (mounted by the test: root, as in CI); the peer is the Kafka
//! model (tests/common/kafka_model.rs), which keeps every record (the mock
//! cluster keeps 5 MiB per partition) and judges exactly-once.
#![cfg(target_arch = "x86_64")]

mod common;

use common::kafka_model::KafkaModel;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs to fill (run it as root, as CI does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Values that LZ4 cannot shrink much, so the disk fills in seconds:
/// `<noise>|<n>` (`check_delivery`'s `key|n` form, each its own key).
fn value(n: usize, seed: &mut u64) -> String {
    let mut v = String::new();
    while v.len() < 900 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.push_str(&format!("{:016x}", *seed >> 1));
    }
    format!("{v}|{n}")
}

#[test]
fn a_full_disk_never_stops_the_drain() {
    let model = KafkaModel::start(1);
    model.create_topic("full", 2);
    model.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let _tmpfs = Tmpfs::mount(&dir.path().join("data"), "16m");
    let mut f = Ferry::new(
        dir.path(),
        &model.bootstrap(),
        "[outbox]\ndurability = \"fsync\"\nmax_bytes = 0\n",
    );
    f.start();
    // Fill the disk while the uplink is down: send until refused.
    let mut client = FrameClient::connect(&f.socket()).unwrap();
    let mut acked: Vec<String> = Vec::new();
    let mut seed = 7u64;
    let mut refusal = String::new();
    let mut n = 0;
    let started = Instant::now();
    while refusal.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "disk never filled"
        );
        let group: Vec<String> = (0..50).map(|i| value(n + i, &mut seed)).collect();
        n += group.len();
        for v in &group {
            let key = v.split('|').next().unwrap();
            client
                .send_event("full", Some(key.as_bytes()), &[], v.as_bytes())
                .unwrap();
        }
        // Replies come in order, each for the next `k` events.
        let mut next = 0;
        while next < group.len() {
            match client.answer() {
                Answer::Ack(k) => {
                    acked.extend(group[next..next + k as usize].iter().cloned());
                    next += k as usize;
                }
                Answer::Error(k, message) => {
                    refusal = message;
                    next += k as usize;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    eprintln!("disk full after {} events: {refusal}", acked.len());
    assert!(
        refusal.contains("is full"),
        "producers are told the disk is full: {refusal}"
    );
    assert!(acked.len() > 3_000, "only {} events stored", acked.len());
    // The uplink returns: the whole backlog drains, without the breaker
    // taking the full disk for an uplink failure.
    let log_before = f.log_text().len();
    model.set_down(false);
    let back = Instant::now();
    f.wait_status(Duration::from_secs(90), "backlog drained", |s| {
        s.backlog_events == 0
    });
    eprintln!("drained {} events in {:?}", acked.len(), back.elapsed());
    // Within seconds, not the minutes a breaker opened by local storage
    // failures took; and no breaker trip once the uplink was back.
    assert!(
        back.elapsed() < Duration::from_secs(30),
        "{:?}",
        back.elapsed()
    );
    let log = f.log_text();
    let since = &log[log_before..];
    assert!(
        log.contains("reserved for draining are used now"),
        "the drain's writes found the disk full and used the reserve:\n{log}"
    );
    assert!(
        !since.contains("circuit breaker open"),
        "a full disk is no uplink failure:\n{since}"
    );
    // Space freed by the drain is used again: new events are stored.
    let more = send_keyed(&f.socket(), "full", "after", 4, 1_000);
    f.wait_status(Duration::from_secs(60), "new events delivered", |s| {
        s.backlog_events == 0
    });
    let mut all = acked.clone();
    all.extend(more);
    let got = model.records("full");
    assert_eq!(check_delivery(&all, &got), 0, "a record arrived twice");
    assert_eq!(f.terminate().0, Some(0));
}
