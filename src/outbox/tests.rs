//! Outbox tests on a real SQLite file in a temp directory.

use super::block::Compressor;
use super::config::{Durability, OutboxConfig, WhenFull};
use super::*;
use crate::event::Event;
use crate::pattern::PRIORITY_LEVELS;
use crate::stats::Stats;
use rusqlite::Connection;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

fn batch(topic: &str, values: &[&str]) -> AppendBatch {
    let mut b = AppendBatch::default();
    for v in values {
        Event {
            topic,
            key: None,
            headers: &[],
            value: v.as_bytes(),
            timestamp_ms: 1,
            clock: None,
        }
        .encode_into(&mut b.data);
        b.count += 1;
    }
    b
}

/// Store one batch and wait for the commit.
async fn append(o: &Outbox, b: AppendBatch) -> Result<(), StoreError> {
    Appender::new(o).store(b).await
}

fn values(blocks: &[Block]) -> Vec<(i64, String)> {
    blocks
        .iter()
        .flat_map(|b| b.events())
        .map(|(seq, _, e)| (seq, String::from_utf8_lossy(e.value).into_owned()))
        .collect()
}

fn open(dir: &Path, config: OutboxConfig) -> (Outbox, std::thread::JoinHandle<()>, Arc<Stats>) {
    let stats = Arc::new(Stats::default());
    let (o, h) = start(
        &config,
        dir.join("outbox.db"),
        stats.clone(),
        Options::default(),
    )
    .unwrap();
    (o, h, stats)
}

fn close(o: Outbox, h: std::thread::JoinHandle<()>) {
    drop(o);
    h.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_delete_and_sequence_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (o, h, stats) = open(dir.path(), OutboxConfig::default());
    append(&o, batch("t", &["a", "b"])).await.unwrap();
    append(&o, batch("t", &["c"])).await.unwrap();
    let blocks = o.read(0, 100, 1 << 20, vec![]).await.unwrap();
    assert_eq!(
        values(&blocks),
        vec![(1, "a".into()), (2, "b".into()), (3, "c".into())]
    );
    assert_eq!(stats.backlog_events.load(Relaxed), 3);
    o.finish(
        blocks.iter().map(|b| b.seq_first).collect(),
        Vec::new(),
        Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(stats.backlog_events.load(Relaxed), 0);
    close(o, h);

    let (o, h, stats) = open(dir.path(), OutboxConfig::default());
    assert_eq!(stats.backlog_events.load(Relaxed), 0);
    append(&o, batch("t", &["d"])).await.unwrap();
    let blocks = o.read(0, 100, 1 << 20, vec![]).await.unwrap();
    assert_eq!(
        values(&blocks),
        vec![(4, "d".into())],
        "sequence must not repeat"
    );
    close(o, h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_survive_restart_without_scan() {
    let dir = tempfile::tempdir().unwrap();
    let (o, h, _) = open(dir.path(), OutboxConfig::default());
    for i in 0..50 {
        append(&o, batch("t", &[&format!("v{i}"), "x"]))
            .await
            .unwrap();
    }
    close(o, h);
    let (o, h, stats) = open(dir.path(), OutboxConfig::default());
    assert_eq!(stats.backlog_events.load(Relaxed), 100);
    assert!(stats.backlog_bytes.load(Relaxed) > 0);
    assert!(stats.oldest_ms.load(Relaxed) > 0);
    close(o, h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_when_full_refuses_with_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        max_bytes: 1,
        when_full: WhenFull::Reject,
        ..OutboxConfig::default()
    };
    let (o, h, stats) = open(dir.path(), config);
    append(&o, batch("t", &["first"])).await.unwrap();
    let e = append(&o, batch("t", &["second"])).await.unwrap_err();
    assert_eq!(e, StoreError::Full { max_bytes: 1 });
    assert!(e.to_string().contains("outbox full"), "{e}");
    assert_eq!(stats.rejected.load(Relaxed), 1);
    assert_eq!(
        values(&o.read(0, 10, 1 << 20, vec![]).await.unwrap()),
        vec![(1, "first".into())]
    );
    close(o, h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_newest_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        max_bytes: 200,
        ..OutboxConfig::default()
    };
    let (o, h, stats) = open(dir.path(), config);
    for i in 0..20 {
        let v = format!("{i:0>60}");
        append(&o, batch("t", &[&v])).await.unwrap();
    }
    let kept = values(&o.read(0, 100, 1 << 20, vec![]).await.unwrap());
    let dropped = stats.dropped_events.load(Relaxed);
    assert!(dropped > 0);
    assert_eq!(kept.len() as u64 + dropped, 20);
    assert_eq!(kept.last().unwrap().0, 20, "the newest event is kept");
    assert!(stats.backlog_bytes.load(Relaxed) <= 200);
    close(o, h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_cap_drops_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        max_age: Duration::from_millis(1),
        ..OutboxConfig::default()
    };
    let (o, h, stats) = open(dir.path(), config);
    append(&o, batch("t", &["old"])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    o.evict_aged().await;
    assert!(o.read(0, 10, 1 << 20, vec![]).await.unwrap().is_empty());
    assert_eq!(stats.dropped_events.load(Relaxed), 1);
    assert_eq!(stats.backlog_events.load(Relaxed), 0);
    close(o, h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_block_is_quarantined_and_does_not_block_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (o, h, _) = open(dir.path(), OutboxConfig::default());
    append(&o, batch("t", &["bad"])).await.unwrap();
    append(&o, batch("t", &["good"])).await.unwrap();
    close(o, h);
    {
        let conn = Connection::open(dir.path().join("outbox.db")).unwrap();
        conn.execute(
            "UPDATE blocks SET payload = x'00112233' WHERE seq_first = 1",
            [],
        )
        .unwrap();
    }
    let (o, h, stats) = open(dir.path(), OutboxConfig::default());
    let blocks = o.read(0, 10, 1 << 20, vec![]).await.unwrap();
    assert_eq!(values(&blocks), vec![(2, "good".into())]);
    assert_eq!(stats.quarantined.load(Relaxed), 1);
    assert_eq!(stats.backlog_events.load(Relaxed), 1);
    close(o, h);
    let conn = Connection::open(dir.path().join("outbox.db")).unwrap();
    let reason: String = conn
        .query_row(
            "SELECT reason FROM quarantine WHERE seq_first = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reason, "checksum mismatch");
}

#[test]
fn newer_schema_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
    }
    let e = open_connection(&path, Durability::Relaxed).err().unwrap();
    assert!(e.to_string().contains("schema version 99"), "{e}");
}

#[test]
fn compressor_reuses_its_table_across_small_and_large_blocks() {
    // Small inputs use 16-bit table entries, large ones 32-bit; a table kept
    // between blocks must give correct blocks both ways and back again.
    let mut c = Compressor::default();
    let small = b"gw-07/sensor-11 {\"t\":21.5} ".repeat(40);
    let large: Vec<u8> = (0..300_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    for raw in [&small[..], &large[..], &small[..], &large[..]] {
        let packed = c.compress(raw).unwrap().to_vec();
        assert!(packed.len() < raw.len(), "compressible input shrinks");
        assert_eq!(
            lz4_flex::block::decompress(&packed, raw.len()).unwrap(),
            raw
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_memory_when_idle_keeps_the_outbox_working() {
    let dir = tempfile::tempdir().unwrap();
    let (o, h, _) = open(dir.path(), OutboxConfig::default());
    append(&o, batch("t", &["a"])).await.unwrap();
    append(&o, batch("u", &["b"])).await.unwrap();
    o.release_memory().await;
    // The writer answers after the release, with its buffers rebuilt.
    assert!(o.ping(Duration::from_secs(5)).await);
    append(&o, batch("t", &["c"])).await.unwrap();
    let blocks = o.read(0, 100, 1 << 20, vec![]).await.unwrap();
    let mut got = values(&blocks);
    got.sort();
    assert_eq!(got, vec![(1, "a".into()), (2, "b".into()), (3, "c".into())]);
    close(o, h);
}

/// Every event of a block is of the block's topic (later passes over the
/// block take the topic from it): one that is not makes the block corrupt.
#[test]
fn an_event_of_another_topic_makes_a_block_corrupt() {
    let mut raw = Vec::new();
    let mut first = 0;
    for topic in ["sensors", "alarms"] {
        first = raw.len().max(first);
        Event {
            topic,
            key: None,
            headers: &[],
            value: b"21.5",
            timestamp_ms: 1,
            clock: None,
        }
        .encode_into(&mut raw);
    }
    let payload = lz4_flex::block::compress(&raw);
    let crc = crc32fast::hash(&payload);
    let e = super::verify_block(&payload, crc, 2, raw.len(), "sensors").unwrap_err();
    assert!(
        e.to_string().contains("event 1 is of topic \"alarms\""),
        "{e}"
    );
    let payload = lz4_flex::block::compress(&raw[..first]);
    let crc = crc32fast::hash(&payload);
    assert!(super::verify_block(&payload, crc, 1, first, "sensors").is_ok());
}

/// A damaged row's declared size must not make ferry allocate it.
#[test]
fn an_impossible_declared_size_is_corruption_not_an_allocation() {
    let payload = lz4_flex::block::compress(b"0123456789");
    let crc = crc32fast::hash(&payload);
    let e = super::verify_block(&payload, crc, 1, usize::MAX / 2, "t").unwrap_err();
    assert!(e.to_string().contains("impossible"), "{e}");
    let e = super::verify_block(&payload, crc, 1, 1 << 30, "t").unwrap_err();
    assert!(e.to_string().contains("impossible"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_stays_within_its_byte_limit_and_strictly_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        priorities: crate::pattern::Priorities(vec![("alarm".into(), 8), ("bulk".into(), 2)]),
        ..Options::default()
    };
    let stats = Arc::new(Stats::default());
    let path = dir.path().join("outbox.db");
    let (o, h) = start(&OutboxConfig::default(), path, stats, options).unwrap();
    // Three blocks of alarms (one per commit), one of bulk.
    for v in ["a1", "a2", "a3"] {
        append(&o, batch("alarm", &[v])).await.unwrap();
    }
    append(&o, batch("bulk", &["b1"])).await.unwrap();
    let highest_first = std::array::from_fn(|i| (PRIORITY_LEVELS - 1 - i) as u8);
    let read = |max_raw_bytes: usize, strict: bool| {
        o.read_by_priority(
            [0; PRIORITY_LEVELS],
            highest_first,
            ReadLimits {
                max_events: 100,
                max_raw_bytes,
                strict_bytes: strict,
                runs_decoded: false,
            },
            vec![],
            Default::default(),
        )
    };
    let one = read(1 << 20, false).await.unwrap().1[0].data.len();
    // Room for two blocks and a half: two come, the third would exceed.
    let (p, blocks) = read(2 * one + one / 2, false).await.unwrap();
    assert_eq!(p, 8);
    assert_eq!(values(&blocks).len(), 2);
    // Room for half a block: the first comes all the same...
    let (_, blocks) = read(one / 2, false).await.unwrap();
    assert_eq!(values(&blocks), vec![(1, "a1".into())]);
    // ...unless strictly: then nothing, and no lower priority instead.
    let (_, blocks) = read(one / 2, true).await.unwrap();
    assert!(blocks.is_empty());
    let (p, blocks) = read(one, true).await.unwrap();
    assert_eq!((p, values(&blocks)), (8, vec![(1, "a1".into())]));
    close(o, h);
}

#[tokio::test]
async fn blocks_are_read_by_priority_in_the_order_asked_and_counted_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig::default();
    let options = Options {
        priorities: crate::pattern::Priorities(vec![("alarm".into(), 8), ("bulk".into(), 2)]),
        ..Options::default()
    };
    let stats = Arc::new(Stats::default());
    let path = dir.path().join("outbox.db");
    let (o, h) = start(&config, path.clone(), stats.clone(), options.clone()).unwrap();
    append(&o, batch("bulk", &["b1", "b2"])).await.unwrap();
    append(&o, batch("alarm", &["a1"])).await.unwrap();
    append(&o, batch("other", &["o1"])).await.unwrap();
    let highest_first = std::array::from_fn(|i| (PRIORITY_LEVELS - 1 - i) as u8);
    let read = |order: [u8; PRIORITY_LEVELS]| {
        o.read_by_priority(
            [0; PRIORITY_LEVELS],
            order,
            ReadLimits {
                max_events: 100,
                max_raw_bytes: 1 << 20,
                strict_bytes: false,
                runs_decoded: false,
            },
            vec![],
            Default::default(),
        )
    };
    let (p, blocks) = read(highest_first).await.unwrap();
    assert_eq!((p, values(&blocks)), (8, vec![(3, "a1".into())]));
    // Asked lowest first: priority 2's blocks, in sequence order.
    let lowest_first = std::array::from_fn(|i| i as u8);
    let (p, blocks) = read(lowest_first).await.unwrap();
    assert_eq!(
        (p, values(&blocks)),
        (2, vec![(1, "b1".into()), (2, "b2".into())])
    );
    // Blocks put aside are left out; the next ones of the priority come.
    let (p, blocks) = o
        .read_by_priority(
            [0; PRIORITY_LEVELS],
            lowest_first,
            ReadLimits {
                max_events: 100,
                max_raw_bytes: 1 << 20,
                strict_bytes: false,
                runs_decoded: false,
            },
            vec![],
            Arc::new(vec![1]),
        )
        .await
        .unwrap();
    assert_eq!((p, values(&blocks)), (5, vec![(4, "o1".into())]));
    // Past a priority's cursor there is nothing of it: the next one goes.
    let mut cursors = [0; PRIORITY_LEVELS];
    cursors[8] = 3;
    let (p, blocks) = o
        .read_by_priority(
            cursors,
            highest_first,
            ReadLimits {
                max_events: 100,
                max_raw_bytes: 1 << 20,
                strict_bytes: false,
                runs_decoded: false,
            },
            vec![],
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!((p, values(&blocks)), (5, vec![(4, "o1".into())]));
    // Delivered: priority 8 is empty and skipped; the count survives a restart.
    let alarm = read(highest_first).await.unwrap().1;
    o.finish(vec![alarm[0].seq_first], Vec::new(), Vec::new())
        .await
        .unwrap();
    assert_eq!(read(highest_first).await.unwrap().0, 5);
    close(o, h);
    let (o, h) = start(&config, path, stats, options).unwrap();
    let (p, blocks) = o
        .read_by_priority(
            [0; PRIORITY_LEVELS],
            highest_first,
            ReadLimits {
                max_events: 100,
                max_raw_bytes: 1 << 20,
                strict_bytes: false,
                runs_decoded: false,
            },
            vec![],
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!((p, values(&blocks)), (5, vec![(4, "o1".into())]));
    close(o, h);
}
