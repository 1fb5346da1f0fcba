//! The idempotent producer's state kept beside the outbox, so that a batch
//! resent after a crash carries the producer id, epoch and sequence numbers
//! it had before and the broker drops what it already has:
//! - one row per destination partition: the producer id and epoch it is
//!   produced with, and the next sequence number;
//! - one row per delivery window in flight: its blocks and its plan (which
//!   events go to which partition in which batch, with which base
//!   sequence), written before any of it is sent and removed with the
//!   window's blocks once it is delivered. Plans load in the order their
//!   windows were first launched (a partition's sequences follow that
//!   order, not block order: a window of a higher priority may be newer),
//!   each with the id of the cluster its producer ids came from.
//!
//! The plan itself is the forwarder's encoding; here it is opaque bytes.

use rusqlite::{Connection, params};

/// One destination partition's sequence stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub topic: String,
    pub partition: i32,
    pub producer_id: i64,
    pub epoch: i16,
    pub next_sequence: i32,
}

/// A window's plan, stored before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedWindow {
    /// The first block's sequence number.
    pub id: i64,
    /// Its blocks (first sequence numbers), in order.
    pub blocks: Vec<i64>,
    pub plan: Vec<u8>,
    /// The cluster id of the brokers the plan's producer ids came from
    /// (`None`: not known, as in plans stored before schema 4).
    pub cluster: Option<String>,
    /// When it was first stored (ms since the epoch; kept when the window
    /// is planned again; 0 for plans stored before schema 4).
    pub saved_ms: i64,
}

/// Everything written before a window (or a re-planned one) is sent.
#[derive(Debug, Clone)]
pub struct PlanSave {
    pub window: SavedWindow,
    /// The streams the plan advanced (upserted).
    pub streams: Vec<Stream>,
    /// The producer id and epoch new streams start with, and the boot they
    /// were learnt in (see [`ProducerMeta`]).
    pub producer: ProducerMeta,
}

/// The newest producer id, and (a hash of) the boot in which ferry last
/// wrote producer state: under `relaxed` durability a power cut can undo
/// the last commits, so state written in an earlier boot is not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProducerMeta {
    pub producer_id: i64,
    pub epoch: i16,
    pub boot: i64,
}

/// What the forwarder finds at start.
#[derive(Debug, Clone, Default)]
pub struct Saved {
    pub producer: Option<ProducerMeta>,
    pub streams: Vec<Stream>,
    pub windows: Vec<SavedWindow>,
}

pub fn save(conn: &Connection, s: &PlanSave) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    // A re-planned window keeps its place in launch order.
    tx.prepare_cached(
        "INSERT INTO window_plans (id, blocks, plan, cluster, saved_ms, launched) \
         VALUES (?1, ?2, ?3, ?4, ?5, (SELECT COALESCE(MAX(launched), 0) + 1 FROM window_plans)) \
         ON CONFLICT (id) DO UPDATE SET blocks = excluded.blocks, plan = excluded.plan, \
         cluster = excluded.cluster",
    )?
    .execute(params![
        s.window.id,
        encode_ids(&s.window.blocks),
        s.window.plan,
        s.window.cluster,
        s.window.saved_ms
    ])?;
    upsert_streams(&tx, &s.streams)?;
    set_producer(&tx, &s.producer)?;
    tx.commit()
}

fn upsert_streams(tx: &Connection, streams: &[Stream]) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO producer_streams (topic, partition, producer_id, epoch, next_sequence) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for st in streams {
        stmt.execute(params![
            st.topic,
            st.partition,
            st.producer_id,
            st.epoch,
            st.next_sequence
        ])?;
    }
    Ok(())
}

fn set_producer(tx: &Connection, p: &ProducerMeta) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
    stmt.execute(params!["producer_id", p.producer_id])?;
    stmt.execute(params!["producer_epoch", p.epoch])?;
    stmt.execute(params!["producer_boot", p.boot])?;
    Ok(())
}

/// Start afresh: no producer id, no streams (plans stay; they are sent
/// again under new producer ids, at-least-once).
pub fn forget_producer(conn: &Connection) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    tx.execute("DELETE FROM producer_streams", [])?;
    tx.execute(
        "DELETE FROM meta WHERE key IN ('producer_id', 'producer_epoch', 'producer_boot')",
        [],
    )?;
    tx.commit()
}

pub fn load(conn: &Connection) -> rusqlite::Result<Saved> {
    let get = |key: &str| -> rusqlite::Result<Option<i64>> {
        use rusqlite::OptionalExtension;
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
    };
    let producer = match (
        get("producer_id")?,
        get("producer_epoch")?,
        get("producer_boot")?,
    ) {
        (Some(id), Some(epoch), Some(boot)) if id >= 0 => Some(ProducerMeta {
            producer_id: id,
            epoch: epoch as i16,
            boot,
        }),
        _ => None,
    };
    let mut stmt = conn.prepare(
        "SELECT topic, partition, producer_id, epoch, next_sequence FROM producer_streams",
    )?;
    let streams = stmt
        .query_map([], |r| {
            Ok(Stream {
                topic: r.get(0)?,
                partition: r.get(1)?,
                producer_id: r.get(2)?,
                epoch: r.get::<_, i64>(3)? as i16,
                next_sequence: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut stmt = conn.prepare(
        "SELECT id, blocks, plan, cluster, saved_ms FROM window_plans ORDER BY launched, id",
    )?;
    let windows = stmt
        .query_map([], |r| {
            Ok(SavedWindow {
                id: r.get(0)?,
                blocks: decode_ids(&r.get::<_, Vec<u8>>(1)?),
                plan: r.get(2)?,
                cluster: r.get(3)?,
                saved_ms: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Saved {
        producer,
        streams,
        windows,
    })
}

/// Remove delivered windows' plans (inside the caller's transaction).
pub fn delete(tx: &Connection, windows: &[i64]) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached("DELETE FROM window_plans WHERE id = ?1")?;
    for id in windows {
        stmt.execute([id])?;
    }
    Ok(())
}

fn encode_ids(ids: &[i64]) -> Vec<u8> {
    ids.iter().flat_map(|i| i.to_le_bytes()).collect()
}

fn decode_ids(bytes: &[u8]) -> Vec<i64> {
    bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_plans_and_streams_come_back_and_go_when_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::open_connection(
            &dir.path().join("o.db"),
            crate::outbox::config::Durability::Fsync,
        )
        .unwrap();
        assert!(load(&conn).unwrap().producer.is_none());
        let producer = ProducerMeta {
            producer_id: 7,
            epoch: 0,
            boot: 42,
        };
        let stream = Stream {
            topic: "t".into(),
            partition: 1,
            producer_id: 7,
            epoch: 0,
            next_sequence: 500,
        };
        let window = SavedWindow {
            id: 11,
            blocks: vec![11, 40],
            plan: vec![1, 2, 3],
            cluster: Some("c-1".into()),
            saved_ms: 1_000,
        };
        save(
            &conn,
            &PlanSave {
                window: window.clone(),
                streams: vec![stream.clone()],
                producer,
            },
        )
        .unwrap();
        let got = load(&conn).unwrap();
        assert_eq!(got.producer, Some(producer));
        assert_eq!(got.streams, vec![stream]);
        assert_eq!(got.windows, vec![window.clone()]);
        // A window launched later with older blocks (a lower priority's)
        // loads after it; re-planning the first keeps its place.
        let older = SavedWindow {
            id: 3,
            blocks: vec![3],
            plan: vec![9],
            cluster: None,
            saved_ms: 2_000,
        };
        // Planned again later: it keeps its place and its first time.
        let again = SavedWindow {
            plan: vec![4, 5],
            ..window.clone()
        };
        let later = SavedWindow {
            saved_ms: 9_000,
            ..again.clone()
        };
        for w in [&older, &later] {
            save(
                &conn,
                &PlanSave {
                    window: w.clone(),
                    streams: Vec::new(),
                    producer,
                },
            )
            .unwrap();
        }
        let got = load(&conn).unwrap();
        assert_eq!(got.windows, vec![again, older]);
        delete(&conn, &[3]).unwrap();
        delete(&conn, &[11]).unwrap();
        assert!(load(&conn).unwrap().windows.is_empty());
        forget_producer(&conn).unwrap();
        let got = load(&conn).unwrap();
        assert!(got.producer.is_none() && got.streams.is_empty());
    }
}
