//! Outbox schema and its migrations. `PRAGMA user_version` is the schema
//! version; each migration moves it up by one inside a transaction, so a
//! crash mid-migration leaves the previous version intact.

use super::open_error::SchemaError;
use rusqlite::{Connection, params};

/// Each entry takes the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: blocks of events, quarantine, counters.
    "CREATE TABLE blocks (
         seq_first  INTEGER PRIMARY KEY,
         topic      TEXT NOT NULL,
         count      INTEGER NOT NULL,
         raw_bytes  INTEGER NOT NULL,
         created_ms INTEGER NOT NULL,
         crc        INTEGER NOT NULL,
         payload    BLOB NOT NULL
     );
     CREATE TABLE quarantine (
         seq_first      INTEGER PRIMARY KEY,
         topic          TEXT NOT NULL,
         count          INTEGER NOT NULL,
         raw_bytes      INTEGER NOT NULL,
         created_ms     INTEGER NOT NULL,
         crc            INTEGER NOT NULL,
         payload        BLOB NOT NULL,
         reason         TEXT NOT NULL,
         quarantined_ms INTEGER NOT NULL
     );
     CREATE TABLE dead_letters (
         id               INTEGER PRIMARY KEY AUTOINCREMENT,
         seq              INTEGER NOT NULL,
         topic            TEXT NOT NULL,
         destination      TEXT NOT NULL,
         event            BLOB NOT NULL,
         reason           TEXT NOT NULL,
         error_name       TEXT NOT NULL,
         attempts         INTEGER NOT NULL,
         first_attempt_ms INTEGER NOT NULL,
         last_attempt_ms  INTEGER NOT NULL,
         dlq_sent         INTEGER NOT NULL DEFAULT 0
     );
     CREATE TABLE loss_markers (
         id         INTEGER PRIMARY KEY AUTOINCREMENT,
         created_ms INTEGER NOT NULL,
         body       TEXT NOT NULL
     );
     CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
     INSERT INTO meta (key, value) VALUES
         ('next_seq', 1), ('events', 0), ('stored_bytes', 0), ('raw_bytes', 0),
         ('dropped_events', 0), ('dropped_bytes', 0), ('quarantined_events', 0),
         ('dead_letters', 0);",
    // 1 -> 2: the idempotent producer's state beside the outbox (see
    // `outbox::plan`): each destination partition's producer id, epoch and
    // next sequence, and the plan of each delivery window in flight.
    "CREATE TABLE producer_streams (
         topic         TEXT NOT NULL,
         partition     INTEGER NOT NULL,
         producer_id   INTEGER NOT NULL,
         epoch         INTEGER NOT NULL,
         next_sequence INTEGER NOT NULL,
         PRIMARY KEY (topic, partition)
     ) WITHOUT ROWID;
     CREATE TABLE window_plans (
         id     INTEGER PRIMARY KEY,
         blocks BLOB NOT NULL,
         plan   BLOB NOT NULL
     );",
    // 2 -> 3: each block's priority (from its topic's route), read in
    // order of (priority, sequence) by the index without a scan; and the
    // bytes sent on the uplink, today (UTC day number) and in total.
    "ALTER TABLE blocks ADD COLUMN priority INTEGER NOT NULL DEFAULT 5;
     CREATE INDEX blocks_by_priority ON blocks (priority, seq_first);
     INSERT INTO meta (key, value) VALUES
         ('uplink_day', 0), ('uplink_today', 0), ('uplink_total', 0);",
    // 3 -> 4: each stored plan's place in launch order (a partition's
    // sequences follow launch order, which differs from block order across
    // priorities), the Kafka cluster id its producer ids came from, and
    // when it was first stored (a resend after the broker's producer-state
    // expiry may be written twice: ferry says so).
    "ALTER TABLE window_plans ADD COLUMN launched INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE window_plans ADD COLUMN cluster TEXT;
     ALTER TABLE window_plans ADD COLUMN saved_ms INTEGER NOT NULL DEFAULT 0;",
    // 4 -> 5: the heartbeat's slot (`outbox::heartbeat`): one row at most.
    "CREATE TABLE heartbeat (
         slot    INTEGER PRIMARY KEY CHECK (slot = 1),
         version INTEGER NOT NULL,
         body    TEXT NOT NULL
     );",
    // 5 -> 6: redelivery marks of MQTT messages (`outbox::mqtt_marks`).
    "CREATE TABLE mqtt_marks (
         link      TEXT NOT NULL,
         packet_id INTEGER NOT NULL,
         digest    INTEGER NOT NULL,
         PRIMARY KEY (link, packet_id)
     ) WITHOUT ROWID;",
    // 6 -> 7: a row is a block of events (0) or a record run (1, see
    // `outbox::run`); old rows are blocks and drain as they always did.
    "ALTER TABLE blocks ADD COLUMN format INTEGER NOT NULL DEFAULT 0;",
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub fn migrate(conn: &Connection) -> Result<(), SchemaError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(SchemaError::ReadVersion)?;
    if version > SCHEMA_VERSION {
        return Err(SchemaError::TooNew {
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let to = from + 1;
        conn.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {to}; COMMIT;"
        ))
        .map_err(|source| {
            let _ = conn.execute_batch("ROLLBACK");
            SchemaError::Migration { from, to, source }
        })?;
    }
    Ok(())
}

/// What the writer loads from `meta` at start-up.
#[derive(Debug, Default)]
pub struct Meta {
    pub next_seq: i64,
    pub counters: Counters,
    pub uplink: crate::stats::UplinkUsage,
}

/// The backlog and loss counters, kept in `meta` in the same transactions
/// as the rows they count (so neither the daemon nor `ferry status` scans).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub events: u64,
    pub stored_bytes: u64,
    pub raw_bytes: u64,
    pub dropped_events: u64,
    pub dropped_bytes: u64,
    pub quarantined_events: u64,
    pub dead_letters: u64,
}

/// One `meta` value; the error names it.
fn meta_value(conn: &Connection, key: &str) -> Result<i64, SchemaError> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .map_err(|source| SchemaError::Counter {
            key: key.to_string(),
            source,
        })
}

/// The backlog and loss counters (read-only: `ferry status` reads them
/// beside the daemon or without it).
pub fn load_counters(conn: &Connection) -> Result<Counters, SchemaError> {
    let get = |key: &str| meta_value(conn, key).map(|v| v.max(0) as u64);
    Ok(Counters {
        events: get("events")?,
        stored_bytes: get("stored_bytes")?,
        raw_bytes: get("raw_bytes")?,
        dropped_events: get("dropped_events")?,
        dropped_bytes: get("dropped_bytes")?,
        quarantined_events: get("quarantined_events")?,
        dead_letters: get("dead_letters")?,
    })
}

pub fn load_meta(conn: &Connection) -> Result<Meta, SchemaError> {
    let get = |key: &str| meta_value(conn, key);
    Ok(Meta {
        next_seq: get("next_seq")?,
        counters: load_counters(conn)?,
        uplink: crate::stats::UplinkUsage {
            day: get("uplink_day")?,
            today: get("uplink_today")?.max(0) as u64,
            total: get("uplink_total")?.max(0) as u64,
        },
    })
}

/// Store the uplink's byte counts (absolute values).
pub fn set_uplink(conn: &Connection, u: &crate::stats::UplinkUsage) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("UPDATE meta SET value = ?2 WHERE key = ?1")?;
    stmt.execute(params!["uplink_day", u.day])?;
    stmt.execute(params!["uplink_today", u.today as i64])?;
    stmt.execute(params!["uplink_total", u.total as i64])?;
    Ok(())
}

pub fn add_meta(conn: &Connection, key: &str, delta: i64) -> rusqlite::Result<()> {
    if delta != 0 {
        conn.prepare_cached("UPDATE meta SET value = value + ?2 WHERE key = ?1")?
            .execute(params![key, delta])?;
    }
    Ok(())
}
