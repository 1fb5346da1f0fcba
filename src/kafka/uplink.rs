//! The uplink as one shared pipe: every byte written to any broker is
//! counted here, and with `kafka.max_bytes_per_second` set each request
//! waits for its turn under a token bucket before it is written.
//!
//! The bucket lends: a request takes its bytes at once, even beyond what
//! the bucket holds, and the debt is what the next request waits out. So a
//! request larger than the burst still goes, the average never exceeds the
//! rate, and waiting is first come, first served.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A token bucket on bytes, on a clock given by the caller (ms).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bytes per millisecond.
    rate: f64,
    /// The most the bucket holds: how large a burst may be after a pause.
    burst: f64,
    /// Bytes that may go now; negative when requests have borrowed ahead.
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket for `bytes_per_second`; bursts of a quarter second.
    pub fn new(bytes_per_second: u64, now_ms: u64) -> Self {
        let rate = bytes_per_second.max(1) as f64 / 1000.0;
        let burst = (bytes_per_second as f64 / 4.0).max(1.0);
        Self {
            rate,
            burst,
            tokens: burst,
            last_ms: now_ms,
        }
    }

    /// Take `bytes`; how long (ms) to wait before writing them.
    pub fn reserve(&mut self, bytes: usize, now_ms: u64) -> u64 {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            0
        } else {
            (-self.tokens / self.rate).ceil() as u64
        }
    }
}

/// The shared uplink: counters and the optional cap.
#[derive(Debug)]
pub struct Uplink {
    /// The cap's bucket; `None` without a cap.
    cap: Mutex<Option<TokenBucket>>,
    start: Instant,
    /// Bytes written since the last [`Uplink::take_sent`].
    sent: AtomicU64,
    /// Milliseconds requests waited for the cap since the last
    /// [`Uplink::take_held_ms`].
    held_ms: AtomicU64,
}

impl Uplink {
    /// `max_bytes_per_second` 0 means no cap.
    pub fn new(max_bytes_per_second: u64) -> Self {
        Self {
            cap: Mutex::new(
                (max_bytes_per_second > 0).then(|| TokenBucket::new(max_bytes_per_second, 0)),
            ),
            start: Instant::now(),
            sent: AtomicU64::new(0),
            held_ms: AtomicU64::new(0),
        }
    }

    /// Wait until `bytes` may be written under the cap (at once without one).
    pub async fn admit(&self, bytes: usize) {
        let now = self.start.elapsed().as_millis() as u64;
        let wait = match self.cap.lock() {
            Ok(mut cap) => cap.as_mut().map_or(0, |b| b.reserve(bytes, now)),
            Err(_) => 0,
        };
        if wait > 0 {
            self.held_ms.fetch_add(wait, Relaxed);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }

    /// A new cap (a config reload; 0 lifts it). The bucket starts full.
    pub fn set_cap(&self, max_bytes_per_second: u64) {
        let now = self.start.elapsed().as_millis() as u64;
        if let Ok(mut cap) = self.cap.lock() {
            *cap = (max_bytes_per_second > 0).then(|| TokenBucket::new(max_bytes_per_second, now));
        }
    }

    /// `bytes` were written to a broker.
    pub fn sent(&self, bytes: usize) {
        self.sent.fetch_add(bytes as u64, Relaxed);
    }

    /// Bytes written since the last call.
    pub fn take_sent(&self) -> u64 {
        self.sent.swap(0, Relaxed)
    }

    /// Milliseconds held back by the cap since the last call.
    pub fn take_held_ms(&self) -> u64 {
        self.held_ms.swap(0, Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_paces_at_the_rate() {
        // 100 KB/s: a 25 KB burst goes at once.
        let mut b = TokenBucket::new(100_000, 0);
        assert_eq!(b.reserve(25_000, 0), 0);
        // The next 10 KB waits 100 ms, the one after 200 ms: first come,
        // first served.
        assert_eq!(b.reserve(10_000, 0), 100);
        assert_eq!(b.reserve(10_000, 0), 200);
        // Once the debt is paid, the bucket refills, never beyond the burst.
        assert_eq!(b.reserve(0, 200), 0);
        assert_eq!(b.reserve(25_000, 10_200), 0);
        assert_eq!(b.reserve(1, 10_200), 1);
    }

    #[test]
    fn a_request_larger_than_the_burst_goes_and_is_paid_after() {
        let mut b = TokenBucket::new(1_000, 0);
        assert_eq!(b.reserve(5_000, 0), 4_750);
    }

    #[test]
    fn over_any_long_run_the_average_is_the_rate() {
        // Requests of varied sizes, each sent when its wait is over.
        let mut b = TokenBucket::new(200_000, 0);
        let mut now = 0u64;
        let mut sent = 0u64;
        let mut size = 1_234usize;
        while now < 30_000 {
            now += b.reserve(size, now);
            sent += size as u64;
            size = (size * 7919) % 60_000 + 500;
        }
        let rate = sent as f64 / (now as f64 / 1000.0);
        assert!((rate - 200_000.0).abs() < 200_000.0 * 0.02, "{rate}");
    }
}
