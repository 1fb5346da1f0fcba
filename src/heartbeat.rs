//! The fleet heartbeat: gateways sit behind NAT where nobody can scrape
//! their `/metrics`, but Kafka reaches the operator. With `[heartbeat]
//! topic` set, ferry records its state once per interval as one JSON
//! record (key = node id, so a compacted topic keeps each gateway's
//! latest) in a single slot of the outbox, which the forwarder produces
//! between windows, ahead of the data. A heartbeat waiting there is
//! replaced by the next one: a day offline leaves one record, not 1,440.
//! When the uplink comes back a fresh one replaces the waiting one at once
//! and says how long the uplink was down and how much backlog built up.
//!
//! The record is built by a pure function of a [`Reading`] (tested with
//! fixed inputs); [`run`] takes the readings.

use crate::bad_setting::BadSetting;
use crate::stats::{Snapshot, Stats, now_ms};
use crate::units::duration;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// The schema this version writes; a reader skips records of another.
pub const SCHEMA: &str = "ferry-heartbeat/1";

/// How often the uplink's state is looked at between heartbeats, besides
/// when the forwarder signals a change (its return makes a heartbeat at
/// once).
const UPLINK_POLL: Duration = Duration::from_secs(1);
/// What `recent` in a heartbeat covers: changes over this long.
const RECENT_WINDOW_MS: i64 = 5 * 60 * 1000;
/// An uplink not up this long after start is an outage (before, it may
/// just not have connected yet).
const START_GRACE: Duration = Duration::from_secs(10);

/// The `[heartbeat]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// The topic heartbeats go to; none: no heartbeat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// One heartbeat per interval.
    #[serde(with = "duration")]
    pub interval: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            topic: None,
            interval: Duration::from_secs(60),
        }
    }
}

impl HeartbeatConfig {
    /// What is wrong with the section: (key, message).
    pub fn check(&self) -> Result<(), BadSetting> {
        if let Some(t) = &self.topic {
            crate::event::validate_topic(t)
                .map_err(|e| BadSetting::at("heartbeat.topic".to_string(), e.to_string()))?;
        }
        if self.interval < Duration::from_secs(1) {
            return Err(BadSetting::at(
                "heartbeat.interval".into(),
                "must be at least 1s (one record per interval)".into(),
            ));
        }
        Ok(())
    }
}

/// An uplink outage as the heartbeat reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Outage {
    /// When ferry first saw the uplink down (ms since the epoch).
    pub since_ms: i64,
    /// When it came back, for an outage that is over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
    pub down_s: f64,
    /// Backlog events at the start of the outage, and how many more there
    /// were at most during it (what built up meanwhile).
    pub backlog_events_before: u64,
    pub backlog_events_added: i64,
}

/// Everything a heartbeat says, read at one moment.
#[derive(Debug)]
pub struct Reading {
    pub snapshot: Snapshot,
    pub now_ms: i64,
    pub interval_s: u64,
    pub boot_id: String,
    pub uptime_s: f64,
    pub clock_synchronized: bool,
    pub free_bytes: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub cpu_s: Option<f64>,
    /// Each listener: (type, where).
    pub listeners: Vec<(String, String)>,
    /// The outage going on now, if any.
    pub outage: Option<Outage>,
    /// The last one that ended (reported until the next one starts).
    pub last_outage: Option<Outage>,
    pub recent: Recent,
}

/// Changes over the last few minutes, so one heartbeat says whether a
/// gateway is dropping or its backlog growing (a compacted topic keeps
/// only the latest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Recent {
    pub window_s: f64,
    pub dropped_by_policy: u64,
    pub backlog_events_added: i64,
}

/// Samples of (time, dropped, backlog) over [`RECENT_WINDOW_MS`]. Pure.
#[derive(Debug, Default)]
pub struct RecentWindow {
    samples: std::collections::VecDeque<(i64, u64, u64)>,
}

impl RecentWindow {
    /// Add a sample at `now_ms`; the changes since the oldest one kept.
    pub fn sample(&mut self, now_ms: i64, dropped: u64, backlog: u64) -> Recent {
        self.samples.push_back((now_ms, dropped, backlog));
        // The baseline is the newest sample at least the window old (with
        // an interval longer than the window, the one before this).
        while self
            .samples
            .get(1)
            .is_some_and(|s| now_ms.saturating_sub(s.0) >= RECENT_WINDOW_MS)
        {
            self.samples.pop_front();
        }
        let (t0, d0, b0) = self
            .samples
            .front()
            .copied()
            .unwrap_or((now_ms, dropped, backlog));
        Recent {
            window_s: (now_ms - t0).max(0) as f64 / 1000.0,
            dropped_by_policy: dropped.saturating_sub(d0),
            backlog_events_added: backlog as i64 - b0 as i64,
        }
    }
}

/// The heartbeat record's value (schema [`SCHEMA`]; README documents it).
pub fn record(r: &Reading) -> String {
    let s = &r.snapshot;
    let state = if s.forward.breaker.is_empty() {
        "unknown"
    } else {
        s.forward.breaker.as_str()
    };
    let listeners: Vec<serde_json::Value> = r
        .listeners
        .iter()
        .map(|(kind, at)| serde_json::json!({ "type": kind, "at": at, "state": "listening" }))
        .collect();
    let value = serde_json::json!({
        "schema": SCHEMA,
        "node_id": s.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "boot_id": r.boot_id,
        "time_ms": r.now_ms,
        "interval_s": r.interval_s,
        "uptime_s": round1(r.uptime_s),
        "clock": {
            "synchronized": r.clock_synchronized,
            "repaired_events": s.timestamps_corrected,
        },
        "backlog": {
            "events": s.backlog_events,
            "bytes": s.backlog_bytes,
            "oldest_age_s": s.oldest_age_s.map(round1),
            "by_priority": s
                .backlog_by_priority
                .iter()
                .map(|(p, n)| (p.to_string(), serde_json::json!(n)))
                .collect::<serde_json::Map<String, serde_json::Value>>(),
        },
        "uplink": {
            "up": s.uplink_up,
            "bytes_today": s.uplink_bytes_today,
            "outage": r.outage,
            "last_outage": r.last_outage,
        },
        "recent": r.recent,
        "breaker": {
            "state": state,
            "last_error_class": s.forward.last_error_class,
            "last_error": s.last_error,
        },
        "delivery": if s.forward.delivery.is_empty() { "unknown" } else { s.forward.delivery.as_str() },
        "since_start": {
            "received": s.received,
            "stored": s.stored,
            "sent": s.sent,
            "rejected": s.rejected,
        },
        "all_time": {
            "dropped_by_policy": s.dropped_events,
            "quarantined": s.quarantined,
            "dead_letters": s.dead_letters,
            "uplink_bytes": s.uplink_bytes_total,
        },
        "disk_free_bytes": r.free_bytes,
        "process": {
            "rss_bytes": r.rss_bytes,
            "cpu_s": r.cpu_s.map(round1),
        },
        "ingest": listeners,
    });
    value.to_string()
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Follows the uplink's state between heartbeats: the outage going on and
/// the last one that ended. Pure: fed the readings.
#[derive(Debug, Default)]
pub struct OutageTracker {
    current: Option<Outage>,
    last: Option<Outage>,
}

impl OutageTracker {
    /// Note the uplink's state at `now_ms` with `backlog` events stored.
    /// True when an outage just ended (time for a heartbeat).
    pub fn observe(&mut self, up: bool, backlog: u64, now_ms: i64) -> bool {
        match (&mut self.current, up) {
            (None, false) => {
                self.current = Some(Outage {
                    since_ms: now_ms,
                    until_ms: None,
                    down_s: 0.0,
                    backlog_events_before: backlog,
                    backlog_events_added: 0,
                });
                false
            }
            (Some(o), false) => {
                o.down_s = (now_ms - o.since_ms).max(0) as f64 / 1000.0;
                o.backlog_events_added = o
                    .backlog_events_added
                    .max(backlog as i64 - o.backlog_events_before as i64);
                false
            }
            (Some(o), true) => {
                // The backlog now may already be sent: what built up is
                // the most seen while down.
                let mut ended = *o;
                ended.until_ms = Some(now_ms);
                ended.down_s = (now_ms - ended.since_ms).max(0) as f64 / 1000.0;
                self.last = Some(ended);
                self.current = None;
                true
            }
            (None, true) => false,
        }
    }

    pub fn current(&self) -> Option<Outage> {
        self.current
    }

    pub fn last(&self) -> Option<Outage> {
        self.last
    }
}

/// What [`run`] needs besides the config.
pub struct Sources {
    pub node_id: String,
    pub stats: Arc<Stats>,
    pub outbox: crate::outbox::Outbox,
    pub data_dir: PathBuf,
    pub listeners: Vec<(String, String)>,
}

/// Once per interval, and when the uplink comes back: a heartbeat into the
/// outbox's slot (replacing one still waiting). An outage is tracked once
/// the uplink was up in this run, or [`START_GRACE`] after start (ferry
/// may have started during one).
pub async fn run(
    config: HeartbeatConfig,
    sources: Sources,
    mut shutdown: crate::shutdown::Shutdown,
) {
    if config.topic.is_none() {
        return;
    }
    let started = Instant::now();
    let clock = crate::clock::SystemClock::default();
    let boot_id = crate::clock::boot_id();
    let mut outages = OutageTracker::default();
    let mut recent = RecentWindow::default();
    let mut next = Instant::now();
    let mut seen_up = false;
    loop {
        let now = now_ms();
        let up = sources.stats.uplink_up.load(Relaxed);
        // The first heartbeat, built before ferry had connected, says the
        // uplink is not up: the first connection replaces it at once.
        let first_up = up && !seen_up;
        seen_up |= up;
        let backlog = sources.stats.backlog_events.load(Relaxed);
        let tracking = seen_up || started.elapsed() >= START_GRACE;
        let came_back = tracking && outages.observe(up, backlog, now);
        if came_back || first_up || Instant::now() >= next {
            let snapshot = sources.stats.snapshot(&sources.node_id, now);
            let recent = recent.sample(now, snapshot.dropped_events, snapshot.backlog_events);
            let reading = Reading {
                interval_s: config.interval.as_secs(),
                snapshot,
                recent,
                now_ms: now,
                boot_id: boot_id.clone(),
                uptime_s: started.elapsed().as_secs_f64(),
                clock_synchronized: clock.read().synchronized,
                free_bytes: crate::outbox::free_bytes(&sources.data_dir),
                rss_bytes: rss_bytes(),
                cpu_s: cpu_seconds(),
                listeners: sources.listeners.clone(),
                outage: outages.current(),
                last_outage: outages.last(),
            };
            sources.outbox.set_heartbeat(record(&reading)).await;
            next = Instant::now() + config.interval;
        }
        tokio::select! {
            _ = tokio::time::sleep(UPLINK_POLL.min(config.interval)) => {}
            _ = sources.stats.uplink_changed.notified() => {}
            _ = shutdown.recv() => return,
        }
    }
}

/// This process's resident memory, from `/proc/self/status`.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// CPU seconds (user + system) this process used, from `/proc/self/stat`.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading() -> Reading {
        let mut snapshot = Snapshot {
            node_id: "gw-7".into(),
            backlog_events: 120,
            backlog_bytes: 4096,
            oldest_age_s: Some(12.34),
            received: 1000,
            stored: 1000,
            sent: 880,
            ..Default::default()
        };
        snapshot.forward.breaker = "open".into();
        snapshot.forward.delivery = "exactly-once".into();
        snapshot.forward.last_error_class = Some("transient".into());
        snapshot.last_error = Some("connection refused".into());
        Reading {
            snapshot,
            now_ms: 1_700_000_000_000,
            interval_s: 60,
            boot_id: "b00t".into(),
            uptime_s: 61.04,
            clock_synchronized: false,
            free_bytes: Some(1 << 30),
            rss_bytes: Some(9 << 20),
            cpu_s: Some(1.26),
            listeners: vec![("unix".into(), "/run/ferry/ferry.sock".into())],
            outage: None,
            last_outage: None,
            recent: Recent::default(),
        }
    }

    #[test]
    fn recent_changes_cover_the_last_minutes() {
        let mut w = RecentWindow::default();
        assert_eq!(w.sample(0, 0, 10).dropped_by_policy, 0);
        w.sample(60_000, 5, 50);
        let r = w.sample(120_000, 9, 40);
        assert_eq!(
            (r.window_s, r.dropped_by_policy, r.backlog_events_added),
            (120.0, 9, 30)
        );
        // Six minutes on, the baseline is the newest sample at least five
        // minutes old; with an interval longer than that, the one before.
        let r = w.sample(420_000, 9, 40);
        assert_eq!(
            (r.window_s, r.dropped_by_policy, r.backlog_events_added),
            (300.0, 0, 0)
        );
        let r = w.sample(1_500_000, 12, 40);
        assert_eq!(
            (r.window_s, r.dropped_by_policy, r.backlog_events_added),
            (1080.0, 3, 0)
        );
    }

    #[test]
    fn the_record_carries_the_documented_fields() {
        let v: serde_json::Value = serde_json::from_str(&record(&reading())).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["node_id"], "gw-7");
        assert_eq!(v["boot_id"], "b00t");
        assert_eq!(v["uptime_s"], 61.0);
        assert_eq!(v["clock"]["synchronized"], false);
        assert_eq!(v["backlog"]["events"], 120);
        assert_eq!(v["backlog"]["oldest_age_s"], 12.3);
        assert_eq!(v["breaker"]["state"], "open");
        assert_eq!(v["breaker"]["last_error"], "connection refused");
        assert_eq!(v["delivery"], "exactly-once");
        assert_eq!(v["since_start"]["sent"], 880);
        assert_eq!(v["disk_free_bytes"], 1u64 << 30);
        assert_eq!(v["process"]["cpu_s"], 1.3);
        assert_eq!(v["ingest"][0]["type"], "unix");
        assert!(v["uplink"]["outage"].is_null());
    }

    #[test]
    fn an_outage_is_tracked_from_its_start_to_its_end() {
        let mut t = OutageTracker::default();
        assert!(!t.observe(true, 10, 0));
        assert!(!t.observe(false, 10, 1_000));
        assert!(!t.observe(false, 400, 61_000));
        let now = t.current().unwrap();
        assert_eq!((now.down_s, now.backlog_events_added), (60.0, 390));
        assert!(t.observe(true, 500, 3_601_000));
        assert!(t.current().is_none());
        let last = t.last().unwrap();
        assert_eq!(last.since_ms, 1_000);
        assert_eq!(last.until_ms, Some(3_601_000));
        assert_eq!((last.down_s, last.backlog_events_added), (3600.0, 390));
        // Up again: no new outage, the last one is still reported.
        assert!(!t.observe(true, 0, 3_700_000));
        assert_eq!(t.last(), Some(last));
    }

    #[test]
    fn an_interval_under_a_second_or_a_bad_topic_is_refused() {
        let mut c = HeartbeatConfig {
            topic: Some("ferry-heartbeat".into()),
            ..Default::default()
        };
        assert!(c.check().is_ok());
        c.interval = Duration::from_millis(10);
        assert_eq!(c.check().unwrap_err().key, "heartbeat.interval");
        c.interval = Duration::from_secs(5);
        c.topic = Some("bad topic!".into());
        assert_eq!(c.check().unwrap_err().key, "heartbeat.topic");
    }
}
