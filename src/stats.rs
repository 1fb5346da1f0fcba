//! Counters and gauges shared by every stage. Stages only add to them;
//! `ferry status` and the metrics read them. Observing, never steering.

pub use crate::clock::{monotonic_ms, now_ms};
use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A forwarder loop silent this long is taken as wedged.
pub const FORWARD_WEDGED_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Stats {
    /// Events that reached a listener (valid or not).
    pub received: AtomicU64,
    /// Events committed to the outbox.
    pub stored: AtomicU64,
    /// Events refused at the door (bad frame, too large, bad topic, full).
    pub rejected: AtomicU64,
    /// Events dropped from the outbox by policy (size or age cap).
    pub dropped_events: AtomicU64,
    pub dropped_bytes: AtomicU64,
    /// Events quarantined because their stored block was corrupt.
    pub quarantined: AtomicU64,
    /// Records acknowledged by Kafka (one per event per destination topic).
    pub sent: AtomicU64,
    pub produce_errors: AtomicU64,
    /// Milliseconds the brokers asked ferry to hold off (`throttle_time_ms`).
    pub throttle_ms: AtomicU64,
    /// Dead letters stored (all time, kept in the database).
    pub dead_letters: AtomicU64,
    /// Failed delivery attempts that were retried.
    pub retries: AtomicU64,
    /// Breaker state gauge: 0 closed, 1 half-open, 2 open.
    pub breaker_state: AtomicU64,
    /// Breaker and parked topics, as the forwarder last published them.
    pub forward: Mutex<ForwardState>,
    /// Outbox backlog, kept current by the outbox writer.
    pub backlog_events: AtomicU64,
    pub backlog_bytes: AtomicU64,
    pub backlog_raw_bytes: AtomicU64,
    /// Backlog events by priority (index = priority).
    pub backlog_by_priority: [AtomicU64; crate::pattern::PRIORITY_LEVELS],
    pub oldest_ms: AtomicI64,
    pub uplink_up: AtomicBool,
    /// Signalled when `uplink_up` changes (the heartbeat reports an outage
    /// the moment it ends).
    pub uplink_changed: tokio::sync::Notify,
    /// Bytes written to the brokers, today and in total (kept in the
    /// outbox database across restarts).
    pub uplink: Mutex<UplinkUsage>,
    /// Milliseconds requests waited for the bandwidth cap.
    pub uplink_held_ms: AtomicU64,
    /// The bandwidth cap (bytes per second), 0 for none.
    pub uplink_cap: AtomicU64,
    /// Events held by the delivery windows in flight (decompressed), and
    /// the most they held since start: the memory budget at work
    /// (`kafka.max_in_flight_bytes`).
    pub in_flight_bytes: AtomicU64,
    pub in_flight_peak_bytes: AtomicU64,
    /// Produce request latency.
    pub produce_latency: Histogram,
    /// When the forwarder loop last showed it was alive (ms on `monotonic_ms`).
    pub forward_beat_ms: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// One entry per `[[mqtt]]` link, registered when it starts.
    pub mqtt: Mutex<Vec<std::sync::Arc<MqttLinkStats>>>,
}

/// One MQTT link's state and counters (`ferry status`, metrics, health).
#[derive(Debug, Default)]
pub struct MqttLinkStats {
    pub name: String,
    pub broker: String,
    /// The session is up and its subscriptions granted (messages flow).
    pub connected: AtomicBool,
    /// PUBLISH packets received (redeliveries included).
    pub received: AtomicU64,
    /// PUBACKs written (after the commit, or for a refused message).
    pub acknowledged: AtomicU64,
    /// Redeliveries of messages already stored, recognised and not stored again.
    pub redeliveries: AtomicU64,
    /// Messages refused (too large, no Kafka topic for them).
    pub rejected: AtomicU64,
    pub connects: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// A copy of [`MqttLinkStats`], for `ferry status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, Default, PartialEq)]
pub struct MqttLinkSnapshot {
    pub name: String,
    pub broker: String,
    pub connected: bool,
    pub received: u64,
    pub acknowledged: u64,
    pub redeliveries: u64,
    pub rejected: u64,
    pub connects: u64,
    pub last_error: Option<String>,
}

impl MqttLinkStats {
    pub fn snapshot(&self) -> MqttLinkSnapshot {
        MqttLinkSnapshot {
            name: self.name.clone(),
            broker: self.broker.clone(),
            connected: self.connected.load(Relaxed),
            received: self.received.load(Relaxed),
            acknowledged: self.acknowledged.load(Relaxed),
            redeliveries: self.redeliveries.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            connects: self.connects.load(Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }

    pub fn set_error(&self, e: Option<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = e;
        }
    }
}

/// Events sent with a repaired timestamp (recorded before the clock was
/// synchronised, corrected once it was), since start; resends count again.
/// Process-wide: the record writers that repair them are pooled.
pub static TIMESTAMPS_CORRECTED: AtomicU64 = AtomicU64::new(0);

/// Record batches sent as stored (a stored run's records, compressed when
/// they were stored: see `outbox::run`) and their events, since start;
/// resends count again. Process-wide, as [`TIMESTAMPS_CORRECTED`].
pub static STORED_RUN_BATCHES: AtomicU64 = AtomicU64::new(0);
pub static STORED_RUN_EVENTS: AtomicU64 = AtomicU64::new(0);

/// A point-in-time copy, for `ferry status`.
#[derive(Debug, Serialize, serde::Deserialize, Default)]
pub struct Snapshot {
    pub node_id: String,
    pub uplink_up: bool,
    pub received: u64,
    pub stored: u64,
    pub rejected: u64,
    pub dropped_events: u64,
    pub dropped_bytes: u64,
    pub quarantined: u64,
    pub sent: u64,
    pub produce_errors: u64,
    /// Seconds the brokers throttled ferry (quotas), in total.
    #[serde(default)]
    pub throttled_s: f64,
    /// Bytes written to the brokers today (UTC) and since the outbox was
    /// made (Kafka frames, before TLS).
    #[serde(default)]
    pub uplink_bytes_today: u64,
    #[serde(default)]
    pub uplink_bytes_total: u64,
    /// Seconds requests waited for `kafka.max_bytes_per_second`.
    #[serde(default)]
    pub uplink_held_s: f64,
    /// `kafka.max_bytes_per_second`, 0 for no cap.
    #[serde(default)]
    pub max_bytes_per_second: u64,
    /// Events held by the delivery windows in flight (bytes, decompressed),
    /// now and at most since start (within `kafka.max_in_flight_bytes`).
    #[serde(default)]
    pub in_flight_bytes: u64,
    #[serde(default)]
    pub in_flight_peak_bytes: u64,
    pub retries: u64,
    pub dead_letters: u64,
    pub backlog_events: u64,
    pub backlog_bytes: u64,
    pub backlog_raw_bytes: u64,
    /// Age of the oldest stored event in seconds, if any is stored.
    pub oldest_age_s: Option<f64>,
    /// Events sent with a repaired timestamp since start.
    #[serde(default)]
    pub timestamps_corrected: u64,
    /// Record batches sent as stored runs, and their events, since start.
    #[serde(default)]
    pub stored_run_batches: u64,
    #[serde(default)]
    pub stored_run_events: u64,
    /// Backlog events by priority: (priority, events), where any wait.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backlog_by_priority: Vec<(u8, u64)>,
    pub last_error: Option<String>,
    #[serde(flatten)]
    pub forward: ForwardState,
    /// Each MQTT link (`[[mqtt]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mqtt: Vec<MqttLinkSnapshot>,
    /// Heap allocations since start (benchmark builds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocations: Option<u64>,
}

impl Stats {
    pub fn snapshot(&self, node_id: &str, now_ms: i64) -> Snapshot {
        let oldest = self.oldest_ms.load(Relaxed);
        let backlog_events = self.backlog_events.load(Relaxed);
        let uplink = self.uplink.lock().map(|u| *u).unwrap_or_default();
        Snapshot {
            node_id: node_id.to_string(),
            uplink_up: self.uplink_up.load(Relaxed),
            received: self.received.load(Relaxed),
            stored: self.stored.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            dropped_events: self.dropped_events.load(Relaxed),
            dropped_bytes: self.dropped_bytes.load(Relaxed),
            quarantined: self.quarantined.load(Relaxed),
            sent: self.sent.load(Relaxed),
            produce_errors: self.produce_errors.load(Relaxed),
            throttled_s: self.throttle_ms.load(Relaxed) as f64 / 1000.0,
            uplink_bytes_today: uplink.today_at(now_ms),
            uplink_bytes_total: uplink.total,
            uplink_held_s: self.uplink_held_ms.load(Relaxed) as f64 / 1000.0,
            max_bytes_per_second: self.uplink_cap.load(Relaxed),
            in_flight_bytes: self.in_flight_bytes.load(Relaxed),
            in_flight_peak_bytes: self.in_flight_peak_bytes.load(Relaxed),
            retries: self.retries.load(Relaxed),
            dead_letters: self.dead_letters.load(Relaxed),
            backlog_events,
            backlog_bytes: self.backlog_bytes.load(Relaxed),
            backlog_raw_bytes: self.backlog_raw_bytes.load(Relaxed),
            oldest_age_s: (backlog_events > 0 && oldest > 0)
                .then(|| (now_ms - oldest).max(0) as f64 / 1000.0),
            timestamps_corrected: TIMESTAMPS_CORRECTED.load(Relaxed),
            stored_run_batches: STORED_RUN_BATCHES.load(Relaxed),
            stored_run_events: STORED_RUN_EVENTS.load(Relaxed),
            backlog_by_priority: self
                .backlog_by_priority
                .iter()
                .enumerate()
                .map(|(p, n)| (p as u8, n.load(Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
            forward: self.forward.lock().map(|f| f.clone()).unwrap_or_default(),
            mqtt: self
                .mqtt
                .lock()
                .map(|links| links.iter().map(|l| l.snapshot()).collect())
                .unwrap_or_default(),
            allocations: allocations(),
        }
    }

    pub fn beat_forward(&self) {
        self.forward_beat_ms.store(monotonic_ms(), Relaxed);
    }

    /// How long (ms) the forwarder loop has been silent, when that is long
    /// enough (`FORWARD_WEDGED_AFTER`) to take it as wedged; `None` while it
    /// is alive. The systemd watchdog and `/health` both ask this.
    pub fn forward_wedged_for(&self) -> Option<u64> {
        let silent = monotonic_ms().saturating_sub(self.forward_beat_ms.load(Relaxed));
        (silent >= FORWARD_WEDGED_AFTER.as_millis() as u64).then_some(silent)
    }

    /// Record whether the uplink works; a change wakes the heartbeat.
    pub fn set_uplink_up(&self, up: bool) {
        if self.uplink_up.swap(up, Relaxed) != up {
            self.uplink_changed.notify_one();
        }
    }

    pub fn set_last_error(&self, e: Option<String>) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = e;
        }
    }
}

/// The forwarder's view for `ferry status`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ForwardState {
    pub breaker: String,
    pub breaker_transitions: u64,
    /// Seconds until the breaker lets the next attempt through, when open.
    pub next_attempt_in_s: Option<f64>,
    pub last_error_class: Option<String>,
    pub parked_topics: Vec<String>,
    /// "exactly-once" (idempotent producer) or "at-least-once".
    #[serde(default)]
    pub delivery: String,
    /// Partitions without a leader whose events wait (the others go on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for_leader: Vec<String>,
    /// Loss markers or dead letters waiting for their side topics, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side_records: Option<String>,
}

/// Upper bounds (seconds) of the produce latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Produce request latency, lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 11],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// Per-bucket counts (not cumulative), observations, and their sum (µs).
    pub fn read(&self) -> ([u64; 11], u64, u64) {
        (
            std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            self.count.load(Relaxed),
            self.sum_us.load(Relaxed),
        )
    }
}

/// Bytes sent on the uplink: on the current UTC day and in total.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UplinkUsage {
    /// Days since the Unix epoch (UTC) that `today` counts.
    pub day: i64,
    pub today: u64,
    pub total: u64,
}

impl UplinkUsage {
    const DAY_MS: i64 = 86_400_000;

    /// Count `bytes` sent at `now_ms` (wall clock); a new day starts at 0.
    pub fn add(&mut self, bytes: u64, now_ms: i64) {
        let day = now_ms.div_euclid(Self::DAY_MS);
        if day != self.day {
            self.day = day;
            self.today = 0;
        }
        self.today += bytes;
        self.total += bytes;
    }

    /// Bytes sent on the day of `now_ms`.
    pub fn today_at(&self, now_ms: i64) -> u64 {
        if now_ms.div_euclid(Self::DAY_MS) == self.day {
            self.today
        } else {
            0
        }
    }
}

#[cfg(feature = "count-allocs")]
fn allocations() -> Option<u64> {
    Some(crate::alloc_count::allocations())
}

#[cfg(not(feature = "count-allocs"))]
fn allocations() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_usage_starts_each_utc_day_at_zero_and_keeps_the_total() {
        let day = 86_400_000i64;
        let mut u = UplinkUsage::default();
        u.add(100, 20_000 * day + 5);
        u.add(50, 20_000 * day + day - 1);
        assert_eq!((u.today_at(20_000 * day), u.total), (150, 150));
        // Nothing sent yet on the next day: it shows 0 before anything is.
        assert_eq!(u.today_at(20_001 * day), 0);
        u.add(7, 20_001 * day);
        assert_eq!((u.day, u.today, u.total), (20_001, 7, 157));
    }
}
