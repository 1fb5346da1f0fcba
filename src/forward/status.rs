//! What the forwarder tells the rest of ferry: the uplink's byte counts,
//! the memory in flight, successes and failures (breaker, backoff, rate-
//! limited loud logs) and the state `ferry status` and `/metrics` show.

use super::streams::Idempotence;
use super::window::{Running, Window};
use super::{
    Forwarder, LOCAL_STORAGE, LOUD_LOG_INTERVAL, PRODUCER_STATE_EXPIRY, RECONNECT_AFTER_FAILURES,
};
use crate::breaker::State;
use crate::kafka::errors::{Class, Failure};
use crate::log_limit::LogLimiter;
use crate::stats::{ForwardState, now_ms};
use log::{info, warn};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

impl Forwarder {
    /// Move the uplink's byte counts and cap waits into the stats (and so
    /// into the outbox with the next finished window).
    pub(super) fn account_uplink(&self) {
        let sent = self.uplink.take_sent();
        if sent > 0
            && let Ok(mut u) = self.stats.uplink.lock()
        {
            u.add(sent, now_ms());
        }
        self.stats.uplink_held_ms.fetch_add(
            self.uplink.take_held_ms(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The memory the windows in flight hold, for status and metrics.
    pub(super) fn note_in_flight(&self, running: &VecDeque<Running>) {
        let bytes: usize = running.iter().map(|r| r.window.raw_bytes).sum();
        self.stats.in_flight_bytes.store(bytes as u64, Relaxed);
        self.stats
            .in_flight_peak_bytes
            .fetch_max(bytes as u64, Relaxed);
    }

    pub(super) fn on_success(&mut self) {
        if self.failures > 0 {
            info!("uplink to Kafka is working again");
            self.side.uplink_back();
        }
        self.failures = 0;
        self.backoff.reset();
        self.breaker.on_success();
        self.stats.set_uplink_up(true);
        self.publish_state(None);
    }

    pub(super) fn on_failure(&mut self, f: &Failure) {
        if f.name == LOCAL_STORAGE {
            // The outbox, not the uplink, failed: no breaker trip, no
            // reconnect; the backoff alone spaces the retries.
            self.stats.retries.fetch_add(1, Relaxed);
            self.log.error(&format!("{} (retrying)", f.message));
            self.publish_state(Some(f));
            return;
        }
        self.failures += 1;
        self.stats.produce_errors.fetch_add(1, Relaxed);
        self.stats.retries.fetch_add(1, Relaxed);
        self.stats.set_uplink_up(false);
        let before = self.breaker.state(Instant::now());
        self.breaker
            .on_failure(Instant::now(), f.class == Class::ConfigCluster);
        let after = self.breaker.state(Instant::now());
        let message = format!(
            "{} [{}: {}] (attempt {}; events stay in the outbox)",
            f.message,
            f.class.as_str(),
            f.name,
            self.failures
        );
        if f.class == Class::ConfigCluster {
            self.loud(
                "cluster",
                &format!("{message}: fix the broker or credentials; ferry keeps storing events"),
            );
        } else {
            self.log.warn(&message);
        }
        if before != after && after == State::Open {
            let secs = self
                .breaker
                .open_until()
                .map(|u| u.saturating_duration_since(Instant::now()).as_secs_f64())
                .unwrap_or(0.0);
            warn!("circuit breaker open: no produce attempts for {secs:.1} s");
        }
        if self.failures >= RECONNECT_AFTER_FAILURES {
            if let Some(c) = self.cluster.as_mut() {
                c.reset();
            }
        }
        self.publish_state(Some(f));
    }

    /// At most one line a minute per subject, at error level.
    pub(super) fn loud(&mut self, subject: &str, message: &str) {
        self.loud
            .entry(subject.to_string())
            .or_insert_with(|| LogLimiter::new(LOUD_LOG_INTERVAL))
            .error(message);
    }

    pub(super) fn publish_state(&self, failure: Option<&Failure>) {
        let now = Instant::now();
        let state = ForwardState {
            breaker: self.breaker.state(now).as_str().to_string(),
            breaker_transitions: self.breaker.transitions,
            next_attempt_in_s: self
                .breaker
                .open_until()
                .map(|u| u.saturating_duration_since(now).as_secs_f64()),
            last_error_class: failure.map(|f| f.class.as_str().to_string()),
            parked_topics: self.parked.names(),
            waiting_for_leader: self.deferral.summary(),
            side_records: self.side.problem.clone(),
            delivery: match self.streams.idempotence {
                Idempotence::On(_) => match &self.at_least_once {
                    Some(why) => format!("exactly-once; at-least-once this run for {why}"),
                    None => "exactly-once".into(),
                },
                Idempotence::Off => "at-least-once".into(),
                Idempotence::Unknown => "not connected yet".into(),
            },
        };
        self.stats
            .breaker_state
            .store(self.breaker.state(now).gauge() as u64, Relaxed);
        if let Some(f) = failure {
            self.stats.set_last_error(Some(f.message.clone()));
        }
        if let Ok(mut slot) = self.stats.forward.lock() {
            // Keep the last error's class until a newer failure replaces it.
            let class = state
                .last_error_class
                .clone()
                .or_else(|| slot.last_error_class.clone());
            *slot = ForwardState {
                last_error_class: class,
                ..state
            };
        }
    }

    /// Say so when `window` is resent after longer than a broker keeps an
    /// idle producer's state: if its batches reached the broker before,
    /// they may be written again (at least once).
    pub(super) fn note_expiry(&mut self, window: &mut Window) {
        let age_ms = now_ms().saturating_sub(window.first_attempt_ms);
        if window.expiry_said || age_ms < PRODUCER_STATE_EXPIRY.as_millis() as i64 {
            return;
        }
        let resent = window.lanes.as_ref().is_some_and(|lanes| {
            lanes
                .iter()
                .any(|l| !l.settled() && l.sent_before > l.acked)
        });
        if !resent {
            return;
        }
        window.expiry_said = true;
        let hours = age_ms / 3_600_000;
        warn!(
            "a delivery window first sent {hours} h ago is sent again: longer than Kafka keeps an idle producer's state (producer.id.expiration.ms, 24 h by default), so batches the broker had may be written again (at least once; consumers can drop them by the ferry-id header)"
        );
        self.at_least_once = Some(format!(
            "a window resent after {hours} h (producer state may have expired)"
        ));
        self.publish_state(None);
    }
}
