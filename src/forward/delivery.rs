//! A window's delivery from launch to its end: the attempts, the waits
//! between them (breaker, backoff, idle), recovery after a failure,
//! completion (blocks deleted, dead letters stored) and what may still
//! finish at shutdown.

use super::lane_outcome::LaneOutcome;
use super::plan::Lane;
use super::window::{Running, Window};
use super::{Forwarder, HEARTBEAT, SHUTDOWN_GRACE};
use crate::kafka::errors::{Class, Failure};
use crate::shutdown::Shutdown;
use crate::stats::now_ms;
use log::debug;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

impl Forwarder {
    /// One delivery attempt of what is left of `window`.
    pub(super) async fn attempt(&mut self, window: &mut Window) -> Result<(), Failure> {
        self.note_expiry(window);
        let (tasks, _) = self.launch(window, None).await?;
        self.collect(window, tasks).await
    }

    /// At shutdown: let a running window's lanes finish for a moment, and
    /// if that delivered all of it, record it.
    pub(super) async fn settle_at_shutdown(&mut self, r: Running) {
        let Running {
            mut window, tasks, ..
        } = r;
        let collected =
            tokio::time::timeout(SHUTDOWN_GRACE, self.collect(&mut window, tasks)).await;
        if matches!(collected, Ok(Ok(()))) {
            self.complete(window).await;
        }
    }

    /// A window cut short by shutdown: record it if everything in it was
    /// delivered anyway.
    pub(super) async fn complete_if_settled(&mut self, window: Window) {
        if window
            .lanes
            .as_ref()
            .is_some_and(|lanes| lanes.iter().all(Lane::settled))
        {
            self.complete(window).await;
        }
    }

    /// `collect`, unless shutdown comes first (see [`until_shutdown`]).
    pub(super) async fn collect_until_shutdown(
        &mut self,
        window: &mut Window,
        tasks: JoinSet<(usize, LaneOutcome)>,
        shutdown: &mut Shutdown,
    ) -> Option<Result<(), Failure>> {
        until_shutdown(self.collect(window, tasks), shutdown).await
    }

    /// Something failed with windows in flight: count the failure once
    /// (a refused record is not a failure of the uplink), let every running
    /// lane come to a stop (lanes behind a failed one give up at once), then
    /// deliver the windows one after another in the order they were
    /// launched — `collected`, the oldest, whose failure this is, first;
    /// `newest`, one that failed to launch, last — retrying with backoff.
    /// `None` on shutdown; `Some(Some(cursor))` when the outbox must be
    /// read again from `cursor`.
    pub(super) async fn recover(
        &mut self,
        collected: Option<Window>,
        newest: Option<Window>,
        running: &mut VecDeque<Running>,
        failure: Failure,
        shutdown: &mut Shutdown,
    ) -> Option<Option<i64>> {
        let counted = failure.class != Class::PermanentRecord;
        if counted {
            self.on_failure(&failure);
        }
        let mut windows: Vec<Window> = collected.into_iter().collect();
        for Running {
            mut window, tasks, ..
        } in running.drain(..)
        {
            // Their own failures are retried below; what they finished counts.
            let _ = self
                .collect_until_shutdown(&mut window, tasks, shutdown)
                .await?;
            windows.push(window);
        }
        windows.extend(newest);
        if windows.is_empty() && counted && !self.pause(shutdown).await {
            return None;
        }
        let mut failed = counted;
        for window in windows {
            let after = window.after;
            match self.deliver(window, shutdown, failed).await {
                Delivery::Done => failed = false,
                // It and the windows after it are read again.
                Delivery::Reread => return Some(Some(after)),
                Delivery::Shutdown => return None,
            }
        }
        Some(None)
    }

    /// Nothing to send: wait for new events, a parked topic's retry time, or
    /// shutdown; then linger so a burst fills batches. After a quiet second
    /// the outbox is asked to release memory (once, `released`). False on
    /// shutdown.
    pub(super) async fn idle(&mut self, shutdown: &mut Shutdown, released: &mut bool) -> bool {
        let next_unpark = match (self.parked.next_due(), self.deferral.next_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let until_unpark = next_unpark
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        let wake = Instant::now() + until_unpark;
        // Wake every second to show the loop is alive (systemd watchdog).
        loop {
            self.stats.beat_forward();
            let nap = wake
                .saturating_duration_since(Instant::now())
                .min(HEARTBEAT);
            if nap.is_zero() {
                break;
            }
            tokio::select! {
                _ = self.outbox.committed.notified() => break,
                _ = tokio::time::sleep(nap) => {}
                _ = shutdown.recv() => return false,
            }
            // A quiet heartbeat: an idle gateway keeps a small footprint.
            // Not at every catch-up with a busy producer, where the buffers
            // would be needed again at once.
            if !*released {
                self.writers.release();
                crate::memory::request_release();
                self.outbox.release_memory().await;
                *released = true;
            }
        }
        if self.config.linger_ms > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(self.config.linger_ms)) => {}
                _ = shutdown.recv() => return false,
            }
        }
        true
    }

    /// While the breaker is open, wait (no attempts at all). False on shutdown.
    pub(super) async fn wait_for_breaker(&mut self, shutdown: &mut Shutdown) -> bool {
        while let Some(until) = self.breaker.open_until() {
            let now = Instant::now();
            if now >= until {
                break;
            }
            self.publish_state(None);
            self.stats.beat_forward();
            tokio::select! {
                _ = tokio::time::sleep((until - now).min(HEARTBEAT)) => {}
                _ = shutdown.recv() => return false,
            }
        }
        true
    }

    /// Sleep the next backoff delay; false if shutdown came first.
    pub(super) async fn pause(&mut self, shutdown: &mut Shutdown) -> bool {
        let until = Instant::now() + self.backoff.next_delay();
        loop {
            self.stats.beat_forward();
            let nap = until
                .saturating_duration_since(Instant::now())
                .min(HEARTBEAT);
            if nap.is_zero() {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = shutdown.recv() => return false,
            }
        }
    }

    /// Deliver every event of `window` not held back for a parked topic,
    /// retrying until done. `failed`: the last attempt failed (already
    /// counted), so wait out the backoff first.
    pub(super) async fn deliver(
        &mut self,
        mut window: Window,
        shutdown: &mut Shutdown,
        mut failed: bool,
    ) -> Delivery {
        loop {
            if failed {
                if !self.pause(shutdown).await {
                    return Delivery::Shutdown;
                }
                if window.lanes.is_none() && !window.saved {
                    // Nothing sent yet: read the window afresh, which
                    // also leaves out what was dropped or parked meanwhile.
                    return Delivery::Reread;
                }
            }
            if shutdown.is_shutdown() || !self.wait_for_breaker(shutdown).await {
                return Delivery::Shutdown;
            }
            // Half-open lets one probe at a time (one window at a time here).
            self.breaker.try_acquire(Instant::now());
            let Some(result) = until_shutdown(self.attempt(&mut window), shutdown).await else {
                self.complete_if_settled(window).await;
                return Delivery::Shutdown;
            };
            match result {
                Ok(()) => {
                    self.complete(window).await;
                    return Delivery::Done;
                }
                // Only lanes of partitions without a leader are left: they
                // wait aside, the rest goes on.
                Err(f) if window.only_deferred() => match self.put_aside(window).await {
                    Ok(()) => return Delivery::Done,
                    Err(back) => {
                        window = *back;
                        self.on_failure(&f);
                        failed = true;
                    }
                },
                // A refused record is dead-lettered and its lane sent
                // again at once: not a failure of the uplink.
                Err(f) if f.class == Class::PermanentRecord => failed = false,
                Err(f) => {
                    self.on_failure(&f);
                    failed = true;
                }
            }
        }
    }

    /// Every event of `window` is acknowledged, dead-lettered or held for a
    /// parked topic: remove its blocks (but the held ones) and its plan, and
    /// store its dead letters.
    pub(super) async fn complete(&mut self, mut window: Window) {
        debug!(
            "window of {} blocks delivered {} ms after its first attempt",
            window.blocks.len(),
            now_ms() - window.first_attempt_ms
        );
        self.on_success();
        self.account_uplink();
        let held = self.held_blocks(&window.blocks, window.lanes.as_deref().unwrap_or(&[]));
        let finished: Vec<i64> = window
            .blocks
            .iter()
            .map(|b| b.seq_first)
            .filter(|s| !held.contains(s))
            .collect();
        let plans = if window.saved {
            vec![window.id()]
        } else {
            Vec::new()
        };
        if let Err(e) = self
            .outbox
            .finish(finished, std::mem::take(&mut window.dead), plans)
            .await
        {
            // Delivered but still stored: they go again after a restart,
            // with their stored plan, and the broker drops them.
            self.log.error(&format!(
                "cannot remove delivered events from the outbox: {e}"
            ));
        }
    }
}

/// What one window's delivery came to.
pub(super) enum Delivery {
    /// Finished: these blocks can go (the others are held for parked topics).
    Done,
    /// Not started; read the window again.
    Reread,
    Shutdown,
}

/// `work`, unless shutdown comes first: then requests already on the wire
/// may finish for a moment (what does not is sent again after a restart,
/// with its stored plan) and the answer is `None`.
pub(super) async fn until_shutdown<T>(
    work: impl std::future::Future<Output = T>,
    shutdown: &mut Shutdown,
) -> Option<T> {
    tokio::pin!(work);
    tokio::select! {
        r = &mut work => Some(r),
        _ = shutdown.recv() => {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, work).await;
            None
        }
    }
}
