//! Counters and gauges shared by every stage. Stages only add to them;
//! `ferry status` (and later metrics) read them. Observing, never steering.

use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

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
    /// Dead letters not yet produced to the DLQ topic.
    pub dead_letters_unsent: AtomicU64,
    /// Failed delivery attempts that were retried.
    pub retries: AtomicU64,
    /// Breaker state gauge: 0 closed, 1 half-open, 2 open.
    pub breaker_state: AtomicU64,
    /// Breaker and parked topics, as the forwarder last published them.
    pub forward: Mutex<crate::forward::ForwardState>,
    /// Loss markers waiting to be produced to the loss topic.
    pub loss_markers_pending: AtomicU64,
    /// Outbox backlog, kept current by the outbox writer.
    pub backlog_events: AtomicU64,
    pub backlog_bytes: AtomicU64,
    pub backlog_raw_bytes: AtomicU64,
    pub oldest_ms: AtomicI64,
    pub uplink_up: AtomicBool,
    /// Produce request latency.
    pub produce_latency: crate::metrics::Histogram,
    /// When the forwarder loop last showed it was alive (ms on `monotonic_ms`).
    pub forward_beat_ms: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

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
    pub retries: u64,
    pub dead_letters: u64,
    pub backlog_events: u64,
    pub backlog_bytes: u64,
    pub backlog_raw_bytes: u64,
    /// Age of the oldest stored event in seconds, if any is stored.
    pub oldest_age_s: Option<f64>,
    pub last_error: Option<String>,
    #[serde(flatten)]
    pub forward: crate::forward::ForwardState,
    /// Heap allocations since start (benchmark builds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocations: Option<u64>,
}

impl Stats {
    pub fn snapshot(&self, node_id: &str, now_ms: i64) -> Snapshot {
        let oldest = self.oldest_ms.load(Relaxed);
        let backlog_events = self.backlog_events.load(Relaxed);
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
            retries: self.retries.load(Relaxed),
            dead_letters: self.dead_letters.load(Relaxed),
            backlog_events,
            backlog_bytes: self.backlog_bytes.load(Relaxed),
            backlog_raw_bytes: self.backlog_raw_bytes.load(Relaxed),
            oldest_age_s: (backlog_events > 0 && oldest > 0)
                .then(|| (now_ms - oldest).max(0) as f64 / 1000.0),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
            forward: self.forward.lock().map(|f| f.clone()).unwrap_or_default(),
            allocations: allocations(),
        }
    }

    pub fn beat_forward(&self) {
        self.forward_beat_ms.store(monotonic_ms(), Relaxed);
    }

    pub fn set_last_error(&self, e: Option<String>) {
        if let Ok(mut slot) = self.last_error.lock() {
            *slot = e;
        }
    }
}

/// Milliseconds on a clock that never jumps (since the first call).
pub fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Milliseconds since the Unix epoch by the wall clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(feature = "count-allocs")]
fn allocations() -> Option<u64> {
    Some(crate::alloc_count::allocations())
}

#[cfg(not(feature = "count-allocs"))]
fn allocations() -> Option<u64> {
    None
}
