//! The upgrade to record runs (issue 23, schema 7): an outbox written by
//! the ferry before it (schema 6, blocks of events only) with a backlog
//! and a delivery window planned and in flight when it was killed, drains
//! exactly once under this build, judged by the Kafka model; what is
//! stored after the upgrade goes as stored runs.
//!
//! The fixture (`tests/fixtures/outbox-schema6/`) was written by the
//! release build of commit 2163efb, the last before record runs:
//! `FERRY_TEST_BIN=<that ferry> cargo test --test upgrade -- --ignored
//! write_the_schema6_fixture` writes it again.
// The harness (`mod common`) needs librdkafka's mock cluster: host only.
#![cfg(target_arch = "x86_64")]

mod common;

use common::kafka_model::KafkaModel;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const FIXTURE: &str = "tests/fixtures/outbox-schema6";
/// The outbox as the old ferry left it when killed, its write-ahead log
/// checkpointed into it by SQLite (one file, the same contents).
const FILES: [&str; 1] = ["outbox.db"];
/// Events stored by the old ferry that its broker never took: `h-K|N`.
const HELD: usize = 3_000;
const KEYS: usize = 4;

fn held_values() -> Vec<String> {
    (0..HELD)
        .map(|j| format!("h-{}|{}", j % KEYS, j / KEYS))
        .collect()
}

fn schema_version(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .and_then(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
        .unwrap()
}

#[test]
fn an_outbox_of_the_version_before_runs_drains_exactly_once() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for f in FILES {
        std::fs::copy(fixture.join(f), data.join(f)).unwrap();
    }
    // What the fixture is: schema 6, a stored plan, the held events.
    let old = rusqlite::Connection::open(data.join("outbox.db")).unwrap();
    let (version, plans, events): (i64, i64, i64) = old
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version), \
             (SELECT count(*) FROM window_plans), (SELECT sum(count) FROM blocks)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    drop(old);
    assert_eq!((version, events), (6, HELD as i64), "the fixture changed");
    assert!(plans >= 1, "the fixture has no window in flight");

    let model = KafkaModel::start(1);
    model.create_topic("up", 2);
    let mut f = Ferry::new(dir.path(), &model.bootstrap(), "");
    f.start();
    f.wait_status(Duration::from_secs(60), "old backlog delivered", |s| {
        s.backlog_events == 0
    });
    assert_eq!(schema_version(&data.join("outbox.db")), 7);
    let got = model.records("up");
    let held = held_values();
    assert_eq!(check_delivery(&held, &got), 0, "a record arrived twice");
    assert_eq!(got.len(), HELD);
    // Stored after the upgrade: runs, sent as stored.
    let new = send_keyed(&f.socket(), "up", "n", KEYS, 4_000);
    f.wait_status(Duration::from_secs(60), "new events delivered", |s| {
        s.backlog_events == 0
    });
    let status = f.status();
    let got = model.records("up");
    let all: Vec<String> = held.into_iter().chain(new).collect();
    assert_eq!(check_delivery(&all, &got), 0, "a record arrived twice");
    assert_eq!(got.len(), all.len());
    assert!(
        status.stored_run_events > 0,
        "nothing went as a stored run after the upgrade\n{}",
        f.log_text()
    );
    assert_eq!(f.terminate().0, Some(0));
}

/// Writes the fixture with the ferry in `FERRY_TEST_BIN` (the build before
/// record runs): events delivered, then `HELD` more stored while the
/// broker holds every Produce request, killed with a window in flight.
#[test]
#[ignore = "writes tests/fixtures/outbox-schema6 with the old ferry in FERRY_TEST_BIN"]
fn write_the_schema6_fixture() {
    assert!(
        std::env::var_os("FERRY_TEST_BIN").is_some(),
        "set FERRY_TEST_BIN to the ferry built before record runs"
    );
    let model = KafkaModel::start(1);
    model.create_topic("up", 2);
    let dir = tempfile::tempdir().unwrap();
    let mut f = Ferry::new(
        dir.path(),
        &model.bootstrap(),
        "[outbox]\ndurability = \"fsync\"\n",
    );
    f.start();
    send_keyed(&f.socket(), "up", "d", KEYS, 500);
    f.wait_status(Duration::from_secs(30), "warm-up delivered", |s| {
        s.backlog_events == 0
    });
    model.hold_produce(true);
    let held = send_keyed(&f.socket(), "up", "h", KEYS, HELD);
    assert_eq!(held, held_values());
    let db = dir.path().join("data").join("outbox.db");
    let deadline = Instant::now() + Duration::from_secs(30);
    let plans = || {
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM window_plans", [], |r| r.get(0)))
            .unwrap_or(0i64)
    };
    while plans() == 0 || model.held() == 0 {
        assert!(Instant::now() < deadline, "no window in flight");
        std::thread::sleep(Duration::from_millis(10));
    }
    f.kill9();
    rusqlite::Connection::open(&db)
        .and_then(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)"))
        .unwrap();
    assert_eq!(
        schema_version(&db),
        6,
        "FERRY_TEST_BIN is not the old ferry"
    );
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    std::fs::create_dir_all(&out).unwrap();
    for file in FILES {
        std::fs::copy(dir.path().join("data").join(file), out.join(file)).unwrap();
    }
}
