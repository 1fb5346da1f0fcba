//! Dead letters: events Kafka refused for good (too large, invalid topic,
//! corrupt record). They live in the outbox database with the reason, the
//! Kafka error name, attempts and times, until replayed or purged; when a
//! DLQ topic is configured they are also produced there once.

use crate::event::Event;
use rusqlite::{Connection, params};
use serde::Serialize;

/// A dead letter about to be stored.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub seq: i64,
    /// Where the event was being produced.
    pub destination: String,
    /// The event in its at-rest encoding (see [`Event::encode_into`]).
    pub event: Vec<u8>,
    pub reason: String,
    pub error_name: String,
    pub attempts: u32,
    pub first_attempt_ms: i64,
    pub last_attempt_ms: i64,
}

pub fn insert(conn: &Connection, d: &NewDeadLetter) -> rusqlite::Result<()> {
    let topic = Event::decode_from(&d.event)
        .map(|(e, _)| e.topic.to_string())
        .unwrap_or_default();
    conn.prepare_cached(
        "INSERT INTO dead_letters (seq, topic, destination, event, reason, error_name, attempts, first_attempt_ms, last_attempt_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        d.seq,
        topic,
        d.destination,
        d.event,
        d.reason,
        d.error_name,
        d.attempts,
        d.first_attempt_ms,
        d.last_attempt_ms
    ])?;
    Ok(())
}

/// A stored dead letter, as `ferry dlq list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub seq: i64,
    pub topic: String,
    pub destination: String,
    pub key: Option<String>,
    pub value_bytes: usize,
    pub value_preview: String,
    pub reason: String,
    pub error_name: String,
    pub attempts: u32,
    pub first_attempt_ms: i64,
    pub last_attempt_ms: i64,
    #[serde(skip)]
    pub event: Vec<u8>,
}

/// Selection for list/replay/purge.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub topic: Option<String>,
    pub ids: Vec<i64>,
}

pub fn list(conn: &Connection, filter: &Filter) -> rusqlite::Result<Vec<DeadLetter>> {
    let mut stmt = conn.prepare(
        "SELECT id, seq, topic, destination, event, reason, error_name, attempts, first_attempt_ms, last_attempt_ms \
         FROM dead_letters ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        let event: Vec<u8> = r.get(4)?;
        let (key, value_bytes, value_preview) = match Event::decode_from(&event) {
            Ok((e, _)) => (
                e.key.map(|k| String::from_utf8_lossy(k).into_owned()),
                e.value.len(),
                String::from_utf8_lossy(&e.value[..e.value.len().min(80)]).into_owned(),
            ),
            Err(_) => (None, 0, "<undecodable>".into()),
        };
        Ok(DeadLetter {
            id: r.get(0)?,
            seq: r.get(1)?,
            topic: r.get(2)?,
            destination: r.get(3)?,
            key,
            value_bytes,
            value_preview,
            reason: r.get(5)?,
            error_name: r.get(6)?,
            attempts: r.get(7)?,
            first_attempt_ms: r.get(8)?,
            last_attempt_ms: r.get(9)?,
            event,
        })
    })?;
    let mut out = Vec::new();
    for row in rows {
        let d = row?;
        let topic_ok = filter.topic.as_ref().is_none_or(|t| *t == d.topic);
        let id_ok = filter.ids.is_empty() || filter.ids.contains(&d.id);
        if topic_ok && id_ok {
            out.push(d);
        }
    }
    Ok(out)
}

/// Delete the given dead letters; returns how many were deleted. (The
/// `dead_letters` counter in `meta` counts all time and stays.)
pub fn delete(conn: &Connection, ids: &[i64]) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?;
    let mut n = 0;
    for id in ids {
        n += stmt.execute([id])?;
    }
    Ok(n)
}

/// A dead letter not yet produced to the DLQ topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForDlq {
    pub id: i64,
    /// The event, in its at-rest encoding.
    pub event: Vec<u8>,
    pub reason: String,
    /// The topic it was refused by.
    pub destination: String,
    pub last_attempt_ms: i64,
}

pub fn pending_for_dlq(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<ForDlq>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, event, reason, destination, last_attempt_ms FROM dead_letters WHERE dlq_sent = 0 ORDER BY id LIMIT ?1",
    )?;
    stmt.query_map([limit as i64], |r| {
        Ok(ForDlq {
            id: r.get(0)?,
            event: r.get(1)?,
            reason: r.get(2)?,
            destination: r.get(3)?,
            last_attempt_ms: r.get(4)?,
        })
    })?
    .collect()
}

/// `dlq_sent`: 1 once produced to the DLQ topic; 2 when the DLQ topic
/// refused it for good (too large, say): it stays listed, never retried.
pub fn mark_sent_to_dlq(conn: &Connection, ids: &[i64], state: i64) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("UPDATE dead_letters SET dlq_sent = ?2 WHERE id = ?1")?;
    for id in ids {
        stmt.execute([*id, state])?;
    }
    Ok(())
}
