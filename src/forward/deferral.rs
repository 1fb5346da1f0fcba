//! Partitions without a leader, and the windows waiting for them.
//!
//! A partition whose leader is gone (offline, an election under way, or a
//! stored lane beyond the topic's partitions today) must not hold up the
//! rest: its lanes are deferred, the other lanes of their windows go on,
//! and such a window, once only deferred lanes are left, is put aside. Its
//! plan stays stored (only the lanes still to go), its blocks stay in the
//! outbox and are left out of reads, and nothing of it is kept in memory:
//! after a growing, jittered delay the put-aside windows are loaded again
//! from their stored plans and tried in the order they were launched, as
//! after a restart. A partition stays deferred until every put-aside lane
//! of it is delivered, so its sequences keep their order. Pure: the caller
//! passes the time and does the I/O.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The first retry of a partition without a leader comes after this long
/// (an election takes a few seconds); each retry that finds none doubles
/// it, up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(30);

/// A window put aside: its id (first block), its blocks, the partitions
/// its lanes left wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutAside {
    pub id: i64,
    pub blocks: Vec<i64>,
    pub partitions: Vec<(String, i32)>,
    /// Those of `partitions` whose lane was never sent: an answer of
    /// OUT_OF_ORDER_SEQUENCE_NUMBER to it cannot mean "delivered before".
    pub never_sent: Vec<(String, i32)>,
}

#[derive(Debug, Clone, Copy)]
struct Waiting {
    due: Instant,
    delay: Duration,
}

pub struct Deferral {
    /// Partitions without a leader (or with lanes put aside), and when to
    /// look for one again.
    partitions: HashMap<(String, i32), Waiting>,
    /// In launch order.
    windows: Vec<PutAside>,
    /// Every block of the put-aside windows, sorted: left out of reads.
    blocks: std::sync::Arc<Vec<i64>>,
    seed: u64,
    /// The windows put aside are being tried again.
    retrying: bool,
    /// Partitions of the windows put aside again in this retry.
    blocked: Vec<(String, i32)>,
}

impl Deferral {
    pub fn new(seed: u64) -> Self {
        Self {
            partitions: HashMap::new(),
            windows: Vec::new(),
            blocks: std::sync::Arc::new(Vec::new()),
            seed: seed | 1,
            retrying: false,
            blocked: Vec::new(),
        }
    }

    /// Whether `(topic, partition)` waits at `now`: its lanes are
    /// deferred (behind the lanes put aside, or until it has a leader).
    /// Only while the windows put aside are tried again (between
    /// [`Deferral::take_windows`] and [`Deferral::settle`]) may the lanes
    /// of a partition whose look is due go: a newer lane never overtakes
    /// one put aside.
    /// Within a retry, a partition of a window put aside again waits for
    /// the rest of that retry, however long it takes: a later window's
    /// lane of it must not go before the earlier one.
    pub fn waits(&self, topic: &str, partition: i32, now: Instant) -> bool {
        // (Lookups by borrowed parts: the map is small and rarely used.)
        if self.partitions.is_empty() {
            return false;
        }
        if self.retrying
            && self
                .blocked
                .iter()
                .any(|(t, p)| *p == partition && t == topic)
        {
            return true;
        }
        self.waiting(topic, partition)
            .is_some_and(|w| !self.retrying || now < w.due)
    }

    /// The wait of `(topic, partition)`, if it waits.
    fn waiting(&self, topic: &str, partition: i32) -> Option<&Waiting> {
        self.partitions
            .iter()
            .find(|((t, p), _)| *p == partition && t == topic)
            .map(|(_, w)| w)
    }

    #[cfg(test)]
    fn known(&self, topic: &str, partition: i32) -> bool {
        self.waiting(topic, partition).is_some()
    }

    /// Partitions with windows put aside.
    pub fn partitions_aside(&self) -> Vec<(String, i32)> {
        let mut out: Vec<(String, i32)> = self
            .windows
            .iter()
            .flat_map(|w| w.partitions.iter().cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// `(topic, partition)` has no leader now: retry after a growing,
    /// jittered delay. The delay of a partition already waiting doubles.
    pub fn no_leader(&mut self, topic: &str, partition: i32, now: Instant) -> Duration {
        let key = (topic.to_string(), partition);
        let delay = match self.partitions.get(&key) {
            Some(w) if now >= w.due => (w.delay * 2).min(MAX_DELAY),
            Some(w) => return w.due.saturating_duration_since(now),
            None => FIRST_DELAY,
        };
        let jittered = self.jitter(delay);
        self.partitions.insert(
            key,
            Waiting {
                due: now + jittered,
                delay,
            },
        );
        jittered
    }

    /// Between 50 and 100 % of `d`, so a fleet does not retry in step.
    fn jitter(&mut self, d: Duration) -> Duration {
        // xorshift64
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let frac = 0.5 + (self.seed % 1000) as f64 / 2000.0;
        d.mul_f64(frac)
    }

    /// Put a window aside (after its other lanes were delivered).
    pub fn put_aside(&mut self, window: PutAside, now: Instant) {
        for (t, p) in &window.partitions {
            // Its next look pushed out (growing) if it is due: a window put
            // aside again for any reason is not retried at once.
            let due = self.waiting(t, *p).is_none_or(|w| now >= w.due);
            if due {
                self.no_leader(t, *p, now);
            }
            if self.retrying && !self.blocked.contains(&(t.clone(), *p)) {
                self.blocked.push((t.clone(), *p));
            }
        }
        let mut blocks: Vec<i64> = self.blocks.as_ref().clone();
        blocks.extend(&window.blocks);
        blocks.sort_unstable();
        blocks.dedup();
        self.blocks = std::sync::Arc::new(blocks);
        self.windows.push(window);
    }

    /// Blocks to leave out of reads.
    pub fn blocks(&self) -> std::sync::Arc<Vec<i64>> {
        self.blocks.clone()
    }

    /// Some put-aside window is due for a retry (its earliest partition).
    pub fn due(&self, now: Instant) -> bool {
        self.windows.iter().any(|w| {
            w.partitions
                .iter()
                .any(|k| self.partitions.get(k).is_none_or(|p| now >= p.due))
        })
    }

    /// When the next retry is due, if any window waits.
    pub fn next_due(&self) -> Option<Instant> {
        self.windows
            .iter()
            .flat_map(|w| w.partitions.iter())
            .filter_map(|k| self.partitions.get(k).map(|p| p.due))
            .min()
    }

    /// Take the put-aside windows, in launch order, to try them again;
    /// each comes back by [`Deferral::put_aside`] or is done.
    pub fn take_windows(&mut self) -> Vec<PutAside> {
        self.retrying = true;
        self.blocks = std::sync::Arc::new(Vec::new());
        std::mem::take(&mut self.windows)
    }

    /// After a retry: partitions no window waits for any more, and that
    /// were not found leaderless again at or after `since`, wait no more.
    pub fn settle(&mut self, since: Instant) {
        self.retrying = false;
        self.blocked.clear();
        let windows = &self.windows;
        self.partitions
            .retain(|k, w| windows.iter().any(|win| win.partitions.contains(k)) || w.due > since);
    }

    /// For `ferry status`: each partition waiting, and the windows put
    /// aside for it.
    pub fn summary(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .partitions
            .keys()
            .map(|k| {
                let n = self
                    .windows
                    .iter()
                    .filter(|w| w.partitions.contains(k))
                    .count();
                format!("{}/{} ({n} window(s) put aside)", k.0, k.1)
            })
            .collect();
        out.sort();
        out
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    pub fn window_count(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aside(id: i64, blocks: &[i64], parts: &[(&str, i32)]) -> PutAside {
        PutAside {
            id,
            blocks: blocks.to_vec(),
            partitions: parts.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
            never_sent: Vec::new(),
        }
    }

    #[test]
    fn a_leaderless_partition_waits_with_a_growing_jittered_delay() {
        let mut d = Deferral::new(7);
        let t0 = Instant::now();
        assert!(!d.waits("t", 1, t0));
        let first = d.no_leader("t", 1, t0);
        assert!(first >= FIRST_DELAY / 2 && first <= FIRST_DELAY);
        assert!(d.waits("t", 1, t0) && !d.waits("t", 0, t0) && !d.waits("u", 1, t0));
        assert!(d.known("t", 1));
        // Asked again before it is due: the same wait, not a longer one.
        assert!(d.no_leader("t", 1, t0) <= first);
        let later = t0 + Duration::from_secs(1);
        let second = d.no_leader("t", 1, later);
        assert!(second >= FIRST_DELAY && second <= 2 * FIRST_DELAY);
        let mut t = later;
        for _ in 0..20 {
            t += Duration::from_secs(60);
            assert!(d.no_leader("t", 1, t) <= MAX_DELAY);
        }
    }

    #[test]
    fn only_the_retry_lets_a_due_partition_go() {
        let mut d = Deferral::new(3);
        let t0 = Instant::now();
        let first = d.no_leader("t", 1, t0);
        d.put_aside(aside(5, &[5], &[("t", 1)]), t0);
        let due = t0 + first;
        // Due, it still waits: a new lane must not overtake the one put
        // aside; only the retry lets lanes of it go (those first).
        assert!(d.due(due) && d.waits("t", 1, due));
        let back = d.take_windows();
        assert!(!d.waits("t", 1, due));
        // Still no leader: it waits again, even within the retry, and
        // however long the retry takes once its window is put aside again.
        d.no_leader("t", 1, due);
        assert!(d.waits("t", 1, due));
        d.put_aside(back[0].clone(), due);
        assert!(d.waits("t", 1, due + MAX_DELAY * 10));
        d.settle(due);
        assert!(d.waits("t", 1, due));
    }

    #[test]
    fn windows_put_aside_come_back_in_launch_order_and_their_blocks_are_left_out() {
        let mut d = Deferral::new(1);
        let t0 = Instant::now();
        d.no_leader("t", 1, t0);
        d.put_aside(aside(30, &[30, 31], &[("t", 1)]), t0);
        d.put_aside(aside(10, &[10, 31], &[("t", 1), ("u", 0)]), t0);
        assert_eq!(d.blocks().as_ref(), &vec![10, 30, 31]);
        assert_eq!(d.window_count(), 2);
        assert!(!d.due(t0));
        // "u"/0 was put aside without a known wait: due at its delay too.
        assert!(d.next_due().is_some_and(|n| n > t0));
        let t1 = t0 + MAX_DELAY * 2;
        assert!(d.due(t1));
        let back = d.take_windows();
        assert_eq!(back.iter().map(|w| w.id).collect::<Vec<_>>(), vec![30, 10]);
        assert!(d.blocks().is_empty() && d.is_empty());
        // The first went; the second is put aside again ("t"/1 still has
        // no leader): "u"/0 is free, "t"/1 still waits.
        d.no_leader("t", 1, t1);
        d.put_aside(aside(10, &[10, 31], &[("t", 1)]), t1);
        d.settle(t1);
        assert!(d.waits("t", 1, t1) && !d.known("u", 0));
        assert_eq!(d.partitions_aside(), vec![("t".to_string(), 1)]);
        // Then it goes too: nothing waits.
        let t2 = t1 + MAX_DELAY * 2;
        assert_eq!(d.take_windows().len(), 1);
        d.settle(t2);
        assert!(!d.known("t", 1));
    }
}
