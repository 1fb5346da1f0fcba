//! Circuit breaker: pure, with the clock passed in. Closed → open after
//! `failures` consecutive failures; open for a jittered interval that grows
//! with each trip; then half-open, where one probe at a time may go; closed
//! again after `successes` successful probes. While open, ferry makes no
//! produce attempts (and keeps storing local events).

use crate::backoff::SplitMix64;
use crate::bad_setting::BadSetting;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failures: u32,
    /// Successful probes in half-open that close it.
    pub successes: u32,
    /// First open interval; doubles with each trip up to `open_max`.
    #[serde(with = "crate::units::duration")]
    pub open_initial: Duration,
    #[serde(with = "crate::units::duration")]
    pub open_max: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            successes: 2,
            open_initial: Duration::from_secs(5),
            open_max: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// Gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> u8 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    consecutive_failures: u32,
    half_open_successes: u32,
    probe_in_flight: bool,
    open_until: Option<Instant>,
    /// Trips since the breaker last closed: each one opens it longer.
    trips: u32,
    /// State changes since start.
    pub transitions: u64,
    rng: SplitMix64,
}

impl Breaker {
    pub fn new(config: BreakerConfig, seed: u64) -> Self {
        Self {
            config,
            state: State::Closed,
            consecutive_failures: 0,
            half_open_successes: 0,
            probe_in_flight: false,
            open_until: None,
            trips: 0,
            transitions: 0,
            rng: SplitMix64(seed),
        }
    }

    /// New settings (a config reload); the state and its timers stay.
    pub fn reconfigure(&mut self, config: BreakerConfig) {
        self.config = config;
    }

    /// The state as of `now` (an expired open interval reads as half-open).
    pub fn state(&self, now: Instant) -> State {
        match (self.state, self.open_until) {
            (State::Open, Some(until)) if now >= until => State::HalfOpen,
            (s, _) => s,
        }
    }

    /// When the breaker will let the next attempt through, if it is open.
    pub fn open_until(&self) -> Option<Instant> {
        (self.state == State::Open)
            .then_some(self.open_until)
            .flatten()
    }

    /// May an attempt go now? In half-open, only one probe at a time.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        if self.state(now) == State::HalfOpen && self.state == State::Open {
            self.set(State::HalfOpen);
            self.half_open_successes = 0;
            self.probe_in_flight = false;
        }
        match self.state {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => {
                if self.probe_in_flight {
                    false
                } else {
                    self.probe_in_flight = true;
                    true
                }
            }
        }
    }

    pub fn on_success(&mut self) {
        self.consecutive_failures = 0;
        if self.state == State::HalfOpen {
            self.probe_in_flight = false;
            self.half_open_successes += 1;
            if self.half_open_successes >= self.config.successes {
                self.set(State::Closed);
                self.trips = 0;
                self.open_until = None;
            }
        }
    }

    /// A side record (heartbeat, loss marker, dead letter) went through
    /// while the breaker was half-open (or its open interval was over): a
    /// successful probe, unless a data probe is in flight (its answer
    /// decides). True if the state changed.
    pub fn on_side_success(&mut self, now: Instant) -> bool {
        if self.state(now) != State::HalfOpen || self.probe_in_flight {
            return false;
        }
        if self.state == State::Open {
            self.set(State::HalfOpen);
            self.half_open_successes = 0;
        }
        self.on_success();
        true
    }

    /// A failed attempt; `trip_now` for failures that retrying soon cannot
    /// fix (authentication, authorization).
    pub fn on_failure(&mut self, now: Instant, trip_now: bool) {
        self.consecutive_failures += 1;
        let trip = match self.state {
            State::HalfOpen => true,
            State::Closed => trip_now || self.consecutive_failures >= self.config.failures,
            State::Open => false,
        };
        if trip {
            self.open(now);
        }
    }

    fn open(&mut self, now: Instant) {
        // Interval: open_initial * 2^trips, capped, then jittered to 50–100 %
        // so a fleet that lost its uplink together does not return together.
        let base = self.config.open_initial.as_secs_f64() * 2f64.powi(self.trips.min(30) as i32);
        let ceiling = base.min(self.config.open_max.as_secs_f64());
        let interval = ceiling * (0.5 + 0.5 * self.rng.next_f64());
        self.trips += 1;
        self.probe_in_flight = false;
        self.open_until = Some(now + Duration::from_secs_f64(interval));
        self.set(State::Open);
    }

    fn set(&mut self, s: State) {
        if self.state != s {
            self.state = s;
            self.transitions += 1;
        }
    }
}

impl BreakerConfig {
    /// Semantic checks of `[breaker]`; the error names the key.
    pub fn check(&self) -> Result<(), BadSetting> {
        let b = self;
        if b.failures == 0 || b.successes == 0 {
            return Err(BadSetting::at(
                "breaker.failures".into(),
                "breaker.failures and breaker.successes must be at least 1".into(),
            ));
        }
        if b.open_initial.is_zero() || b.open_max < b.open_initial {
            return Err(BadSetting::at(
                "breaker.open_initial".into(),
                "must be above zero and not above breaker.open_max".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig::default(), 9)
    }

    #[test]
    fn opens_after_n_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..4 {
            assert!(b.try_acquire(t0));
            b.on_failure(t0, false);
            assert_eq!(b.state(t0), State::Closed);
        }
        b.on_success();
        for _ in 0..4 {
            b.on_failure(t0, false);
        }
        assert_eq!(b.state(t0), State::Closed, "a success resets the count");
        b.on_failure(t0, false);
        assert_eq!(b.state(t0), State::Open);
        assert!(!b.try_acquire(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn side_records_count_as_probes_only_when_no_data_probe_is_out() {
        let t0 = Instant::now();
        let mut b = breaker();
        b.on_failure(t0, true);
        assert!(!b.on_side_success(t0), "still open");
        let later = b.open_until().unwrap();
        // Open interval over, nothing sent yet: two side records close it.
        assert!(b.on_side_success(later));
        assert_eq!(b.state(later), State::HalfOpen);
        assert!(b.on_side_success(later));
        assert_eq!(b.state(later), State::Closed);
        // A data probe in flight decides, not a side record.
        b.on_failure(later, true);
        let again = b.open_until().unwrap();
        assert!(b.try_acquire(again));
        assert!(!b.on_side_success(again));
        assert_eq!(b.state(again), State::HalfOpen);
    }

    #[test]
    fn open_interval_is_jittered_and_grows() {
        let t0 = Instant::now();
        let mut b = breaker();
        b.on_failure(t0, true);
        let first = b.open_until().unwrap() - t0;
        assert!(
            first >= Duration::from_millis(2500) && first <= Duration::from_secs(5),
            "{first:?}"
        );
        // Probe fails: open again, longer.
        let t1 = t0 + first;
        assert!(b.try_acquire(t1));
        b.on_failure(t1, false);
        let second = b.open_until().unwrap() - t1;
        assert!(
            second >= Duration::from_secs(5) && second <= Duration::from_secs(10),
            "{second:?}"
        );
        // Capped.
        let mut t = t1 + second;
        for _ in 0..20 {
            assert!(b.try_acquire(t));
            b.on_failure(t, false);
            let d = b.open_until().unwrap() - t;
            assert!(d <= Duration::from_secs(300));
            t += d;
        }
        assert!(b.open_until().unwrap() - t0 > Duration::from_secs(600));
    }

    #[test]
    fn half_open_lets_one_probe_and_closes_after_two_successes() {
        let t0 = Instant::now();
        let mut b = breaker();
        b.on_failure(t0, true);
        let t1 = b.open_until().unwrap();
        assert!(!b.try_acquire(t1 - Duration::from_millis(1)));
        assert!(b.try_acquire(t1));
        assert_eq!(b.state(t1), State::HalfOpen);
        assert!(!b.try_acquire(t1), "one probe at a time");
        b.on_success();
        assert_eq!(b.state(t1), State::HalfOpen);
        assert!(b.try_acquire(t1));
        b.on_success();
        assert_eq!(b.state(t1), State::Closed);
        assert!(b.try_acquire(t1) && b.try_acquire(t1));
        // Closed -> Open -> HalfOpen -> Closed.
        assert_eq!(b.transitions, 3);
    }

    #[test]
    fn same_seed_same_intervals() {
        let t0 = Instant::now();
        let run = |seed| {
            let mut b = Breaker::new(BreakerConfig::default(), seed);
            b.on_failure(t0, true);
            b.open_until().unwrap()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }
}
