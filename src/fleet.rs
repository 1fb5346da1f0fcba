//! `ferry fleet`: the whole fleet's state, read from the heartbeat topic
//! with the configured brokers, TLS and SASL (an operator's laptop runs the
//! same binary). Each gateway's latest heartbeat is kept (what a compacted
//! topic keeps; it says what changed in the last minutes), classified, and printed
//! one line per gateway, the worst first, then a summary. A record that is
//! not a heartbeat of the schema this ferry reads is counted and skipped.

use crate::config::Config;
use crate::exit::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::heartbeat::SCHEMA;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A gateway not heard from for this long (or three of its intervals, if
/// longer) is `silent`.
const SILENT_AFTER_MS: i64 = 5 * 60 * 1000;

/// What `ferry fleet` reads of a heartbeat (the rest is for other tools).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Beat {
    pub schema: String,
    pub node_id: String,
    pub version: String,
    pub boot_id: String,
    pub time_ms: i64,
    /// The gateway's heartbeat interval.
    pub interval_s: i64,
    pub clock: BeatClock,
    pub backlog: BeatBacklog,
    pub uplink: BeatUplink,
    pub recent: crate::heartbeat::Recent,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct BeatClock {
    pub synchronized: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct BeatBacklog {
    pub events: u64,
    pub bytes: u64,
    pub oldest_age_s: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct BeatUplink {
    pub up: bool,
    pub outage: Option<crate::heartbeat::Outage>,
    pub last_outage: Option<crate::heartbeat::Outage>,
}

/// Why a record on the heartbeat topic is not a heartbeat this ferry reads.
#[derive(Debug, thiserror::Error)]
pub enum BeatError {
    #[error("not a heartbeat (JSON: {0})")]
    Json(#[from] serde_json::Error),
    #[error("schema {0:?}, not {SCHEMA} (a newer ferry's? update this one)")]
    Schema(String),
    #[error("a heartbeat without node_id")]
    NoNodeId,
}

/// A heartbeat of this schema, or why not.
pub fn decode(value: &[u8]) -> Result<Beat, BeatError> {
    let beat: Beat = serde_json::from_slice(value)?;
    if beat.schema != SCHEMA {
        return Err(BeatError::Schema(beat.schema));
    }
    if beat.node_id.is_empty() {
        return Err(BeatError::NoNodeId);
    }
    Ok(beat)
}

/// A gateway's state, the worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Policy drops (size or age cap) in the last minutes.
    Dropping,
    /// No heartbeat for [`SILENT_AFTER_MS`].
    Silent,
    UplinkDown,
    BacklogGrowing,
    ClockUnsynchronised,
    Ok,
}

impl Health {
    /// As `--json` writes it.
    pub fn name(self) -> &'static str {
        match self {
            Health::Dropping => "dropping",
            Health::Silent => "silent",
            Health::UplinkDown => "uplink_down",
            Health::BacklogGrowing => "backlog_growing",
            Health::ClockUnsynchronised => "clock_unsynchronised",
            Health::Ok => "ok",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Gateway {
    pub node_id: String,
    pub health: Health,
    /// What the state means, in words (since when, how many).
    pub detail: String,
    pub last_seen_ms: i64,
    pub backlog_events: u64,
    pub backlog_age_s: Option<f64>,
    pub version: String,
}

/// Classify a gateway from its latest heartbeat.
pub fn classify(latest: &Beat, now_ms: i64) -> (Health, String) {
    let recent = latest.recent;
    // Three intervals without a heartbeat, and at least five minutes.
    let silent_after = SILENT_AFTER_MS.max(latest.interval_s.saturating_mul(3_000));
    let silent_ms = now_ms.saturating_sub(latest.time_ms);
    if silent_ms > silent_after {
        return (
            Health::Silent,
            format!("no heartbeat for {}", duration_text(silent_ms / 1000)),
        );
    }
    if recent.dropped_by_policy > 0 {
        return (
            Health::Dropping,
            format!(
                "{} events dropped by policy in the last {}",
                recent.dropped_by_policy,
                duration_text(recent.window_s as i64)
            ),
        );
    }
    if !latest.uplink.up {
        let since = latest
            .uplink
            .outage
            .map(|o| format!("since {}", time_text(o.since_ms)))
            .unwrap_or_else(|| "(not yet connected)".into());
        return (Health::UplinkDown, format!("uplink down {since}"));
    }
    if recent.backlog_events_added > 0 && latest.backlog.oldest_age_s.unwrap_or(0.0) > 60.0 {
        return (
            Health::BacklogGrowing,
            format!(
                "backlog grew by {} events in the last {}",
                recent.backlog_events_added,
                duration_text(recent.window_s as i64)
            ),
        );
    }
    let (health, state) = if latest.clock.synchronized {
        (Health::Ok, "ok")
    } else {
        (Health::ClockUnsynchronised, "clock not synchronised")
    };
    match latest.uplink.last_outage {
        Some(o) => (
            health,
            format!(
                "{state}; the uplink was down {} until {} ({:+} events of backlog meanwhile)",
                duration_text(o.down_s as i64),
                time_text(o.until_ms.unwrap_or(o.since_ms)),
                o.backlog_events_added
            ),
        ),
        None => (health, state.into()),
    }
}

/// The fleet from the records of the heartbeat topic (in offset order per
/// partition): one gateway each, the worst first; and how many records
/// were skipped.
pub fn gateways(records: &[(Option<Vec<u8>>, Vec<u8>)], now_ms: i64) -> (Vec<Gateway>, usize) {
    let mut skipped = 0;
    let mut latest: HashMap<String, Beat> = HashMap::new();
    for (_key, value) in records {
        match decode(value) {
            // In offset order (a node's heartbeats share a key, so a
            // partition): the later one wins, whatever its clock said.
            Ok(beat) => {
                latest.insert(beat.node_id.clone(), beat);
            }
            Err(_) => skipped += 1,
        }
    }
    let mut out: Vec<Gateway> = latest
        .into_values()
        .map(|beat| {
            let (health, detail) = classify(&beat, now_ms);
            Gateway {
                node_id: beat.node_id,
                health,
                detail,
                last_seen_ms: beat.time_ms,
                backlog_events: beat.backlog.events,
                backlog_age_s: beat.backlog.oldest_age_s,
                version: beat.version,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (a.health, std::cmp::Reverse(a.backlog_events), &a.node_id).cmp(&(
            b.health,
            std::cmp::Reverse(b.backlog_events),
            &b.node_id,
        ))
    });
    (out, skipped)
}

fn time_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

fn duration_text(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}

/// The report as text: one line per gateway, then the summary.
pub fn render(gateways: &[Gateway], skipped: usize, now_ms: i64) -> String {
    let mut out = String::new();
    for g in gateways {
        let age = g
            .backlog_age_s
            .map(|a| format!(", oldest {}", duration_text(a as i64)))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<24} {:<21} seen {} ago  backlog {} events{age}  ferry {}  {}\n",
            g.node_id,
            g.health.name(),
            duration_text(now_ms.saturating_sub(g.last_seen_ms).max(0) / 1000),
            g.backlog_events,
            g.version,
            g.detail
        ));
    }
    let healthy = gateways.iter().filter(|g| g.health == Health::Ok).count();
    let backlog: u64 = gateways.iter().map(|g| g.backlog_events).sum();
    out.push_str(&format!(
        "{} gateways, {healthy} healthy, total backlog {backlog} events",
        gateways.len()
    ));
    if skipped > 0 {
        out.push_str(&format!(
            "; {skipped} records skipped (not {SCHEMA} heartbeats)"
        ));
    }
    out.push('\n');
    out
}

/// `ferry fleet`.
pub fn run(config: &Config, topic: Option<String>, json: bool) -> i32 {
    let Some(topic) = topic.or_else(|| config.heartbeat.topic.clone()) else {
        eprintln!(
            "ferry fleet: no heartbeat topic: set [heartbeat] topic in the config or give --topic"
        );
        return EXIT_USAGE;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry fleet: cannot start the runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    let read = runtime.block_on(async {
        let uplink = std::sync::Arc::new(crate::kafka::uplink::Uplink::new(0));
        let conn = crate::forward::security::connection_config(&config.kafka, uplink)?;
        let mut cluster =
            crate::kafka::cluster::Cluster::new(config.kafka.brokers.clone(), conn, false);
        crate::kafka::consumer::read_topic(&mut cluster, &topic).await
    });
    let read = match read {
        Ok(r) => r,
        Err(f) => {
            eprintln!(
                "ferry fleet: cannot read {topic} from {}: {} [{}]",
                config.kafka.brokers.join(","),
                f.message,
                f.name
            );
            return EXIT_FAILURE;
        }
    };
    let records: Vec<(Option<Vec<u8>>, Vec<u8>)> = read
        .records
        .into_iter()
        .map(|r| (r.key, r.value.unwrap_or_default()))
        .collect();
    let now = crate::stats::now_ms();
    let (fleet, skipped) = gateways(&records, now);
    let skipped = skipped + read.skipped_batches;
    if json {
        let healthy = fleet.iter().filter(|g| g.health == Health::Ok).count();
        let doc = serde_json::json!({
            "gateways": fleet,
            "summary": {
                "gateways": fleet.len(),
                "healthy": healthy,
                "backlog_events": fleet.iter().map(|g| g.backlog_events).sum::<u64>(),
                "skipped_records": skipped,
            },
        });
        println!("{doc}");
    } else {
        print!("{}", render(&fleet, skipped, now));
    }
    EXIT_OK
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(node: &str, time_ms: i64, backlog: u64, up: bool) -> Beat {
        Beat {
            schema: SCHEMA.into(),
            node_id: node.into(),
            version: "0.1.0".into(),
            boot_id: "b".into(),
            time_ms,
            interval_s: 60,
            clock: BeatClock { synchronized: true },
            backlog: BeatBacklog {
                events: backlog,
                bytes: 0,
                oldest_age_s: Some(600.0),
            },
            uplink: BeatUplink {
                up,
                outage: None,
                last_outage: None,
            },
            recent: Default::default(),
        }
    }

    #[test]
    fn each_state_is_told_apart() {
        let now = 10_000_000;
        let ok = beat("a", now, 0, true);
        assert_eq!(classify(&ok, now).0, Health::Ok);
        assert_eq!(
            classify(&beat("a", now, 0, false), now).0,
            Health::UplinkDown
        );
        let mut grown = beat("a", now, 500, true);
        grown.recent.backlog_events_added = 400;
        assert_eq!(classify(&grown, now).0, Health::BacklogGrowing);
        let mut dropping = ok.clone();
        dropping.recent.dropped_by_policy = 7;
        assert_eq!(classify(&dropping, now).0, Health::Dropping);
        assert_eq!(classify(&ok, now + SILENT_AFTER_MS + 1).0, Health::Silent);
        let mut unsynced = ok.clone();
        unsynced.clock.synchronized = false;
        assert_eq!(classify(&unsynced, now).0, Health::ClockUnsynchronised);
    }

    #[test]
    fn the_latest_per_gateway_is_kept_the_worst_first_and_garbage_is_counted() {
        let now = 10_000_000;
        let enc = |b: &Beat| {
            serde_json::json!({
                "schema": b.schema, "node_id": b.node_id, "version": b.version,
                "boot_id": b.boot_id, "time_ms": b.time_ms,
                "clock": {"synchronized": b.clock.synchronized},
                "backlog": {"events": b.backlog.events, "oldest_age_s": b.backlog.oldest_age_s},
                "uplink": {"up": b.uplink.up},
            })
            .to_string()
            .into_bytes()
        };
        let records = vec![
            (None, enc(&beat("gw-1", now - 2_000, 9, false))),
            (None, enc(&beat("gw-2", now - 1_000, 0, true))),
            (None, b"{not json".to_vec()),
            (
                None,
                br#"{"schema":"ferry-heartbeat/9","node_id":"x"}"#.to_vec(),
            ),
            (None, enc(&beat("gw-1", now - 500, 0, true))),
            (None, enc(&beat("gw-3", now - 500, 40, false))),
        ];
        let (fleet, skipped) = gateways(&records, now);
        assert_eq!(skipped, 2);
        let order: Vec<(&str, Health)> = fleet
            .iter()
            .map(|g| (g.node_id.as_str(), g.health))
            .collect();
        assert_eq!(
            order,
            vec![
                ("gw-3", Health::UplinkDown),
                ("gw-1", Health::Ok),
                ("gw-2", Health::Ok)
            ]
        );
        let text = render(&fleet, skipped, now);
        assert!(text.ends_with(
            "3 gateways, 2 healthy, total backlog 40 events; 2 records skipped (not ferry-heartbeat/1 heartbeats)\n"
        ), "{text}");
    }
}
