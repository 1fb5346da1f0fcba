//! Windows put aside for partitions without a leader (see [`super::deferral`]):
//! putting one aside once only such lanes are left (its plan stored anew
//! with just those lanes), and trying them again in launch order from
//! their stored plans, as after a restart.

use super::deferral::PutAside;
use super::delivery::{Delivery, until_shutdown};
use super::{Forwarder, Running, Window};
use crate::kafka::errors::{Class, Failure};
use crate::outbox::plan::PlanSave;
use crate::shutdown::Shutdown;
use log::{debug, error, info};
use std::collections::VecDeque;
use std::time::Instant;

impl Forwarder {
    /// A collected window failed: if only lanes of partitions without a
    /// leader are left, put it aside and go on; otherwise recover.
    pub(super) async fn recover_or_put_aside(
        &mut self,
        window: Window,
        running: &mut VecDeque<Running>,
        failure: Failure,
        shutdown: &mut Shutdown,
    ) -> Option<Option<i64>> {
        let window = if window.only_deferred() {
            match self.put_aside(window).await {
                Ok(()) => return Some(None),
                Err(back) => *back,
            }
        } else {
            window
        };
        self.recover(Some(window), None, running, failure, shutdown)
            .await
    }

    /// Mark lane `i` of `window` as waiting for its partition.
    pub(super) fn defer_lane(window: &mut Window, i: usize) {
        if let Some(lane) = window.lanes.as_mut().and_then(|l| l.get_mut(i)) {
            lane.defer();
        }
    }

    /// Put `window` aside: only lanes of partitions without a leader are
    /// left. Its plan is stored anew with just those lanes, its dead
    /// letters are stored, and it leaves memory; its blocks stay in the
    /// outbox, left out of reads (see [`deferral`]). If the plan cannot be
    /// stored, the window comes back, to be retried in place (as before).
    pub(super) async fn put_aside(&mut self, mut window: Window) -> Result<(), Box<Window>> {
        let Some(lanes) = window.lanes.as_ref() else {
            return Err(Box::new(window));
        };
        let mut partitions: Vec<(String, i32)> = Vec::new();
        let mut never_sent: Vec<(String, i32)> = Vec::new();
        let mut events = 0;
        for lane in lanes.iter().filter(|l| !l.settled()) {
            events += lane.items.len() - lane.done();
            let key = (lane.topic.clone(), lane.partition);
            if lane.sent_before <= lane.acked {
                never_sent.push(key.clone());
            }
            if !partitions.contains(&key) {
                partitions.push(key);
            }
        }
        let saved = match self.producer_meta() {
            Some(producer) => {
                let save = PlanSave {
                    window: window.saved_form(lanes, window.cluster.clone()),
                    streams: Vec::new(),
                    producer,
                };
                self.outbox.save_plan(save).await
            }
            None => Err(crate::outbox::OutboxError::Closed),
        };
        if let Err(e) = saved {
            self.log.error(&format!(
                "cannot put a window aside for a partition without a leader ({e}); it is retried in place"
            ));
            return Err(Box::new(window));
        }
        let dead = std::mem::take(&mut window.dead);
        if !dead.is_empty()
            && let Err(e) = self.outbox.finish(Vec::new(), dead, Vec::new()).await
        {
            self.log.error(&format!(
                "cannot store dead letters of a window put aside: {e}"
            ));
        }
        let names: Vec<String> = lanes
            .iter()
            .filter(|l| !l.settled())
            .map(|l| {
                let b = l.batches.get(l.acked);
                format!(
                    "{}/{} from sequence {:?} of {:?}",
                    l.topic,
                    l.partition,
                    b.map(|b| b.base_sequence),
                    l.producer
                )
            })
            .collect();
        debug!(
            "window {} put aside: {events} events wait for {}",
            window.id(),
            names.join(", ")
        );
        self.deferral.put_aside(
            PutAside {
                id: window.id(),
                blocks: window.blocks.iter().map(|b| b.seq_first).collect(),
                partitions,
                never_sent,
            },
            Instant::now(),
        );
        self.publish_state(None);
        Ok(())
    }

    /// Try the windows put aside again, in launch order, once each: each
    /// is loaded from its stored plan (as after a restart), and what is
    /// still waiting for a leader is put aside again. False on shutdown.
    pub(super) async fn retry_put_aside(&mut self, shutdown: &mut Shutdown) -> bool {
        let started = Instant::now();
        // Ask Kafka afresh about the partitions waiting for a leader.
        if let Some(cluster) = self.cluster.as_mut() {
            for (topic, _) in self.deferral.partitions_aside() {
                cluster.forget_topic(&topic);
            }
        }
        let aside = self.deferral.take_windows();
        let saved = match self.outbox.load_plans().await {
            Ok(s) => s,
            Err(e) => {
                self.log
                    .error(&format!("cannot read the plans of windows put aside: {e}"));
                for w in aside {
                    self.deferral.put_aside(w, Instant::now());
                }
                return true;
            }
        };
        let mut pending = aside.into_iter();
        while let Some(w) = pending.next() {
            // Every partition it waits for was found without a leader
            // again in this retry: put aside again as it is, without
            // reading it (a long outage costs no I/O per window).
            let now = Instant::now();
            if w.partitions
                .iter()
                .all(|(t, p)| self.deferral.waits(t, *p, now))
            {
                self.deferral.put_aside(w, now);
                continue;
            }
            let Some(stored) = saved.windows.iter().find(|s| s.id == w.id) else {
                error!(
                    "the stored plan of window {} (put aside) is gone; its events are read again",
                    w.id
                );
                continue;
            };
            let blocks = match self.outbox.read_blocks(stored.blocks.clone()).await {
                Ok(b) => b,
                Err(e) => {
                    self.log.error(&format!(
                        "cannot read the blocks of a window put aside: {e}; retried later"
                    ));
                    self.deferral.put_aside(w, Instant::now());
                    continue;
                }
            };
            if blocks.is_empty() {
                continue;
            }
            let mut window = Window::from_stored(blocks, stored);
            window.lanes = self.restore_lanes(&window.blocks, stored, true, false);
            // Lanes never sent: nothing of them can have been delivered.
            if let Some(lanes) = window.lanes.as_mut() {
                for lane in lanes.iter_mut() {
                    if w.never_sent.contains(&(lane.topic.clone(), lane.partition)) {
                        lane.never_sent();
                    }
                }
            }
            self.breaker.try_acquire(Instant::now());
            let Some(result) = until_shutdown(self.attempt(&mut window), shutdown).await else {
                self.complete_if_settled(window).await;
                for rest in pending {
                    self.deferral.put_aside(rest, Instant::now());
                }
                return false;
            };
            let failure = match result {
                Ok(()) => {
                    self.complete(window).await;
                    continue;
                }
                Err(f) => f,
            };
            if !window.only_deferred() && failure.class != Class::PermanentRecord {
                self.on_failure(&failure);
            }
            if let Err(window) = self.put_aside(window).await {
                // Its progress cannot be stored: delivered in place.
                if matches!(
                    self.deliver(*window, shutdown, true).await,
                    Delivery::Shutdown
                ) {
                    for rest in pending {
                        self.deferral.put_aside(rest, Instant::now());
                    }
                    return false;
                }
            }
        }
        self.deferral.settle(started);
        let left = self.deferral.window_count();
        if left == 0 {
            info!("every window put aside for a partition without a leader is delivered");
        } else {
            debug!("{left} window(s) still put aside for partitions without a leader");
        }
        self.publish_state(None);
        true
    }
}
