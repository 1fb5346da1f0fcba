//! What is on the wire: the hand-over between consecutive lanes of one
//! partition, the partition's request slots, and what the forwarder's loop
//! watches to decide whether one more window may go.
//!
//! On a distant uplink (a cellular link's round trip is 100–600 ms) a
//! window's requests spend most of their life waiting for answers. So a
//! lane starts sending as soon as the same partition's lane of the window
//! before has *sent* its batches, not when they are acknowledged (a new
//! producer's probe, its first batch to the partition, is waited for until
//! answered), with at most [`SLOTS_PER_PARTITION`] requests of a partition
//! in flight across windows (the idempotent producer keeps order for
//! five). A lane that got
//! an error answer while the lane before it failed was refused because of
//! that gap: it waits to learn how the lane before ended and then gives up
//! (the windows are delivered again one after another) instead of taking
//! the broker's OUT_OF_ORDER_SEQUENCE_NUMBER for lost producer state.
//! This is the idempotent producer's guarantee (Kafka refuses a batch whose
//! sequence leaves a gap), so without a producer id (a broker without
//! idempotence) a lane waits for the one before it to be acknowledged and
//! keeps one request in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

/// Produce requests of one partition in flight at once, over all windows.
pub const SLOTS_PER_PARTITION: usize = 5;

/// How a lane is getting on, as the next lane of its partition sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneProgress {
    Sending,
    /// Every batch is on the wire; answers may still be coming.
    AllSent,
    /// Ended: `true` when every batch was acknowledged.
    Finished(bool),
}

/// Held by a lane: tells the next lane of its partition how it gets on.
/// Dropped without finishing (the task was aborted) it reads as failed.
pub struct HandOver(watch::Sender<LaneProgress>);

/// Held by the next lane: what the lane before it did.
pub struct Predecessor(watch::Receiver<LaneProgress>);

/// A hand-over pair for two consecutive lanes of a partition.
pub fn hand_over() -> (HandOver, Predecessor) {
    let (tx, rx) = watch::channel(LaneProgress::Sending);
    (HandOver(tx), Predecessor(rx))
}

impl HandOver {
    pub fn all_sent(&self) {
        self.0.send_if_modified(|p| {
            let changed = *p == LaneProgress::Sending;
            if changed {
                *p = LaneProgress::AllSent;
            }
            changed
        });
    }

    pub fn finished(&self, all_acked: bool) {
        let _ = self.0.send(LaneProgress::Finished(all_acked));
    }
}

impl Drop for HandOver {
    fn drop(&mut self) {
        self.0.send_if_modified(|p| {
            let open = !matches!(p, LaneProgress::Finished(_));
            if open {
                *p = LaneProgress::Finished(false);
            }
            open
        });
    }
}

impl Predecessor {
    /// Wait until the lane before may be followed: `false` when it ended
    /// without delivering everything (nothing after it can succeed).
    pub async fn sent(&mut self) -> bool {
        match self
            .0
            .wait_for(|p| *p != LaneProgress::Sending)
            .await
            .map(|p| *p)
        {
            Ok(LaneProgress::Finished(ok)) => ok,
            Ok(_) => true,
            Err(_) => false,
        }
    }

    /// Wait until the lane before has ended: whether it delivered all.
    pub async fn finished(&mut self) -> bool {
        match self
            .0
            .wait_for(|p| matches!(p, LaneProgress::Finished(_)))
            .await
            .map(|p| *p)
        {
            Ok(LaneProgress::Finished(ok)) => ok,
            _ => false,
        }
    }
}

/// Each destination partition's request slots, shared by all its lanes.
#[derive(Default)]
pub struct Slots(HashMap<(String, i32), Arc<Semaphore>>);

impl Slots {
    pub fn of(&mut self, topic: &str, partition: i32) -> Arc<Semaphore> {
        if let Some(s) = self.0.get(&(topic.to_string(), partition)) {
            return s.clone();
        }
        let s = Arc::new(Semaphore::new(SLOTS_PER_PARTITION));
        self.0.insert((topic.to_string(), partition), s.clone());
        s
    }

    /// Forget the partitions with nothing in flight (a topic's partitions
    /// may change; an idle ferry need not keep them).
    pub fn trim(&mut self) {
        self.0
            .retain(|_, s| s.available_permits() < SLOTS_PER_PARTITION);
    }
}

/// A slot taken for one request, held until its answer is read.
pub type Slot = OwnedSemaphorePermit;

/// Lanes that have not yet put all their batches on the wire, over all
/// windows, and a wake-up for the forwarder's loop when that or a window's
/// count of running lanes changes.
#[derive(Default)]
pub struct Flight {
    unsent: AtomicUsize,
    changed: Notify,
}

impl Flight {
    pub fn unsent(&self) -> usize {
        self.unsent.load(SeqCst)
    }

    /// Resolves after the next change (or at once if one came unseen).
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// One lane's place in the [`Flight`] and in its window's count of running
/// lanes; dropping it (the lane ended, or was aborted) settles both.
pub struct Ticket {
    flight: Arc<Flight>,
    window_left: Arc<AtomicUsize>,
    sent: bool,
}

impl Ticket {
    pub fn new(flight: &Arc<Flight>, window_left: &Arc<AtomicUsize>) -> Self {
        flight.unsent.fetch_add(1, SeqCst);
        window_left.fetch_add(1, SeqCst);
        Self {
            flight: flight.clone(),
            window_left: window_left.clone(),
            sent: false,
        }
    }

    /// Every batch of the lane is on the wire.
    pub fn all_sent(&mut self) {
        if !self.sent {
            self.sent = true;
            self.flight.unsent.fetch_sub(1, SeqCst);
            self.flight.changed.notify_one();
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.sent {
            self.sent = true;
            self.flight.unsent.fetch_sub(1, SeqCst);
        }
        self.window_left.fetch_sub(1, SeqCst);
        self.flight.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lane_is_followed_once_sent_and_judged_once_finished() {
        let (h, mut p) = hand_over();
        h.all_sent();
        assert!(p.sent().await);
        h.finished(false);
        assert!(!p.finished().await);
    }

    #[tokio::test]
    async fn a_lane_dropped_unfinished_counts_as_failed() {
        let (h, mut p) = hand_over();
        drop(h);
        assert!(!p.sent().await);
        assert!(!p.finished().await);
        // Sent, then aborted before the next lane looked: nothing after it
        // can succeed, so the next lane does not start.
        let (h, mut p) = hand_over();
        h.all_sent();
        drop(h);
        assert!(!p.sent().await);
        assert!(!p.finished().await);
    }

    #[tokio::test]
    async fn tickets_count_unsent_lanes_and_running_lanes() {
        let flight = Arc::new(Flight::default());
        let left = Arc::new(AtomicUsize::new(0));
        let mut a = Ticket::new(&flight, &left);
        let b = Ticket::new(&flight, &left);
        assert_eq!((flight.unsent(), left.load(SeqCst)), (2, 2));
        a.all_sent();
        a.all_sent();
        assert_eq!((flight.unsent(), left.load(SeqCst)), (1, 2));
        drop(a);
        assert_eq!((flight.unsent(), left.load(SeqCst)), (1, 1));
        drop(b);
        assert_eq!((flight.unsent(), left.load(SeqCst)), (0, 0));
        // A change came while nobody waited: the next wait returns at once.
        flight.changed().await;
    }

    #[test]
    fn a_partition_has_five_slots_shared_by_its_lanes() {
        let mut slots = Slots::default();
        let a = slots.of("t", 0);
        let b = slots.of("t", 0);
        assert!(Arc::ptr_eq(&a, &b));
        let held: Vec<_> = (0..SLOTS_PER_PARTITION)
            .map(|_| a.clone().try_acquire_owned().expect("a slot"))
            .collect();
        assert!(b.clone().try_acquire_owned().is_err());
        slots.trim();
        assert!(Arc::ptr_eq(&slots.of("t", 0), &a), "kept while in use");
        drop(held);
        slots.trim();
        assert!(!Arc::ptr_eq(&slots.of("t", 0), &a), "forgotten when idle");
    }
}

/// How long a partition's last acknowledgement vouches for the broker
/// still holding ferry's producer state there. Kafka forgets a producer
/// idle for `producer.id.expiration.ms` (24 h since Kafka 3.4; before, the
/// transactional id expiry, 7 days); a broker may be set lower. Well
/// inside both, and a probe costs one round trip.
pub const STATE_TRUSTED_FOR: Duration = Duration::from_secs(15 * 60);

/// When each partition last acknowledged a batch, and under which
/// producer id. A broker without state for a producer takes any sequence
/// (Kafka 2.5+, KIP-360), so batches pipelined behind a refused first one
/// would be written out of turn: a lane sends its first batch alone until
/// its partition has acknowledged one under that producer recently.
#[derive(Default)]
pub struct Confirmed(HashMap<String, Vec<Option<(i64, Instant)>>>);

impl Confirmed {
    pub fn acknowledged(&mut self, topic: &str, partition: i32, producer_id: i64, now: Instant) {
        let Ok(p) = usize::try_from(partition) else {
            return;
        };
        if !self.0.contains_key(topic) {
            self.0.insert(topic.to_string(), Vec::new());
        }
        if let Some(slots) = self.0.get_mut(topic) {
            if slots.len() <= p {
                slots.resize(p + 1, None);
            }
            slots[p] = Some((producer_id, now));
        }
    }

    /// The partition acknowledged a batch of `producer_id` within
    /// [`STATE_TRUSTED_FOR`].
    pub fn recently(&self, topic: &str, partition: i32, producer_id: i64, now: Instant) -> bool {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.0.get(topic)?.get(p).copied().flatten())
            .is_some_and(|(id, at)| id == producer_id && now.duration_since(at) < STATE_TRUSTED_FOR)
    }
}

#[cfg(test)]
mod confirmed_tests {
    use super::*;

    #[test]
    fn a_partition_is_trusted_for_its_producer_for_a_while() {
        let mut c = Confirmed::default();
        let t0 = Instant::now();
        assert!(!c.recently("t", 3, 7, t0));
        c.acknowledged("t", 3, 7, t0);
        assert!(c.recently("t", 3, 7, t0 + Duration::from_secs(60)));
        // Another producer id, another partition, or too long ago: no.
        assert!(!c.recently("t", 3, 8, t0));
        assert!(!c.recently("t", 2, 7, t0));
        assert!(!c.recently("u", 3, 7, t0));
        assert!(!c.recently("t", 3, 7, t0 + STATE_TRUSTED_FOR));
        assert!(!c.recently("t", -1, 7, t0));
    }
}
