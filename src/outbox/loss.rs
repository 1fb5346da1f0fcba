//! Loss markers: when a policy (size or age cap) drops events, a JSON record
//! naming what was dropped is queued in the outbox, in the same transaction
//! as the drop, for the forwarder to produce to the configured loss topic.

use rusqlite::{Connection, params};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Serialize)]
pub struct TopicLoss {
    pub events: u64,
    pub bytes: u64,
    /// Inclusive `[first, last]` sequence ranges (the `ferry-id` numbers).
    pub ranges: Vec<[i64; 2]>,
}

#[derive(Debug, Serialize)]
pub struct LossMarker<'a> {
    pub node: &'a str,
    /// `max_bytes` or `max_age`.
    pub reason: &'a str,
    pub time_ms: i64,
    pub events: u64,
    pub bytes: u64,
    pub topics: BTreeMap<String, TopicLoss>,
}

pub fn queue(conn: &Connection, marker: &LossMarker<'_>) -> rusqlite::Result<()> {
    let body = serde_json::to_string(marker)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    conn.prepare_cached("INSERT INTO loss_markers (created_ms, body) VALUES (?1, ?2)")?
        .execute(params![marker.time_ms, body])?;
    Ok(())
}

/// Queued markers, oldest first: `(id, JSON body)`.
pub fn pending(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<(i64, String)>> {
    let mut stmt = conn.prepare_cached("SELECT id, body FROM loss_markers ORDER BY id LIMIT ?1")?;
    stmt.query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

pub fn delivered(conn: &Connection, ids: &[i64]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("DELETE FROM loss_markers WHERE id = ?1")?;
    for id in ids {
        stmt.execute([id])?;
    }
    Ok(())
}
