//! Exponential backoff with full jitter: pure, with its randomness seeded
//! so tests are exact. Jitter spreads a fleet's retries so gateways that
//! lost the uplink together do not come back in lock-step.

use crate::bad_setting::BadSetting;
use crate::units::duration;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The `[retry]` section: the delay between delivery attempts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    #[serde(with = "duration")]
    pub initial: Duration,
    #[serde(with = "duration")]
    pub max: Duration,
    pub multiplier: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    /// The ceiling for the next delay, before jitter.
    ceiling: Duration,
    rng: SplitMix64,
}

impl Backoff {
    pub fn new(config: &RetryConfig, seed: u64) -> Self {
        Self {
            initial: config.initial,
            max: config.max,
            multiplier: config.multiplier,
            ceiling: config.initial,
            rng: SplitMix64(seed),
        }
    }

    /// The next delay: uniform in [initial/2, ceiling], then the ceiling
    /// grows by `multiplier` up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let low = self.initial.as_secs_f64() / 2.0;
        let high = self.ceiling.as_secs_f64().max(low);
        let delay = low + (high - low) * self.rng.next_f64();
        let grown = self.ceiling.as_secs_f64() * self.multiplier;
        self.ceiling = Duration::from_secs_f64(grown.min(self.max.as_secs_f64()));
        Duration::from_secs_f64(delay)
    }

    /// After a success: start again from `initial`.
    pub fn reset(&mut self) {
        self.ceiling = self.initial;
    }
}

/// A tiny, well-known PRNG (SplitMix64); good enough for jitter.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A seed that differs between gateways and between restarts.
pub fn seed_from_environment(node_id: &str) -> u64 {
    let mut h = crc32fast::Hasher::new();
    h.update(node_id.as_bytes());
    h.update(&std::process::id().to_le_bytes());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    ((h.finalize() as u64) << 32) ^ nanos
}

impl RetryConfig {
    /// Semantic checks of `[retry]`; the error names the key.
    pub fn check(&self) -> Result<(), BadSetting> {
        if !(self.multiplier >= 1.0 && self.multiplier <= 100.0) {
            return Err(BadSetting::at(
                "retry.multiplier".into(),
                "must be between 1 and 100".into(),
            ));
        }
        if self.initial.is_zero() || self.max < self.initial {
            return Err(BadSetting::at(
                "retry.initial".into(),
                "must be above zero and not above retry.max".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RetryConfig {
        RetryConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
        }
    }

    #[test]
    fn grows_within_bounds_and_caps() {
        let mut b = Backoff::new(&config(), 7);
        let mut ceiling = 0.1f64;
        for _ in 0..40 {
            let d = b.next_delay().as_secs_f64();
            assert!(d >= 0.05 - 1e-9 && d <= ceiling + 1e-9, "{d} vs {ceiling}");
            ceiling = (ceiling * 2.0).min(30.0);
        }
        // Deep into a long outage the delays reach toward the cap.
        let late: Vec<f64> = (0..50).map(|_| b.next_delay().as_secs_f64()).collect();
        assert!(late.iter().all(|d| *d <= 30.0));
        assert!(late.iter().any(|d| *d > 15.0));
    }

    #[test]
    fn same_seed_same_delays_other_seed_differs() {
        let a: Vec<_> = {
            let mut b = Backoff::new(&config(), 42);
            (0..10).map(|_| b.next_delay()).collect()
        };
        let b: Vec<_> = {
            let mut b = Backoff::new(&config(), 42);
            (0..10).map(|_| b.next_delay()).collect()
        };
        let c: Vec<_> = {
            let mut b = Backoff::new(&config(), 43);
            (0..10).map(|_| b.next_delay()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(&config(), 1);
        for _ in 0..10 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
