//! A delivery window: blocks read from the outbox together, their plan
//! and progress, and how much of the memory budget
//! (`kafka.max_in_flight_bytes`) the next one may take.

use super::WINDOW_RAW_BYTES;
use super::lane_outcome::LaneOutcome;
use super::plan::{self, Lane};
use crate::outbox::Block;
use crate::outbox::dead_letter::NewDeadLetter;
use crate::outbox::plan::SavedWindow;
use crate::stats::now_ms;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;
use tokio::task::JoinSet;

/// A window read from the outbox, with its delivery progress.
pub(super) struct Window {
    /// The cursor it was read after (to read it again if it never started).
    pub(super) after: i64,
    pub(super) blocks: Arc<Vec<Block>>,
    /// Its events' bytes, decompressed (a run's as stored, unless
    /// `runs_whole` is off): what it holds of the memory budget
    /// (`kafka.max_in_flight_bytes`).
    pub(super) raw_bytes: usize,
    /// Its stored runs that fit go whole, as stored (`outbox::run`); off
    /// on a distant link, where they are decoded and cut into batches as
    /// large as the limits allow: a partition takes five batches per
    /// round trip, and a run holds only one commit's events of its
    /// partition (about 100 at full speed), so there the round trip, not
    /// the CPU, bounds the rate.
    pub(super) runs_whole: bool,
    /// Planned on its first attempt.
    pub(super) lanes: Option<Vec<Lane>>,
    /// Its plan is in the outbox (removed with its blocks).
    pub(super) saved: bool,
    pub(super) dead: Vec<NewDeadLetter>,
    pub(super) first_attempt_ms: i64,
    /// The cluster id its plan's producer ids belong to (`None`: not
    /// planned yet, or stored by a ferry that did not record it).
    pub(super) cluster: Option<String>,
    /// Said once: it was first sent longer ago than a broker keeps an
    /// idle producer's state (see [`PRODUCER_STATE_EXPIRY`]).
    pub(super) expiry_said: bool,
}

impl Window {
    /// Every lane not yet settled waits for a partition without a leader
    /// (and there is one): the window can be put aside.
    pub(super) fn only_deferred(&self) -> bool {
        self.lanes.as_ref().is_some_and(|lanes| {
            let mut left = lanes.iter().filter(|l| !l.settled()).peekable();
            left.peek().is_some() && left.all(|l| l.deferred)
        })
    }

    pub(super) fn new(after: i64, blocks: Vec<Block>, runs_whole: bool) -> Self {
        Self {
            after,
            raw_bytes: blocks
                .iter()
                .map(|b| b.held_bytes_decoded(!runs_whole))
                .sum(),
            runs_whole,
            blocks: Arc::new(blocks),
            lanes: None,
            saved: false,
            dead: Vec::new(),
            first_attempt_ms: now_ms(),
            cluster: None,
            expiry_said: false,
        }
    }

    /// The cursor after this window.
    pub(super) fn last(&self) -> i64 {
        self.blocks.last().map_or(self.after, |b| b.seq_first)
    }

    /// Its id in the outbox's plans: its first block.
    pub(super) fn id(&self) -> i64 {
        self.blocks.first().map_or(self.after, |b| b.seq_first)
    }

    /// A window rebuilt from its stored plan's `blocks` (not empty), as
    /// stored: its cluster and when it was first stored (lanes apart).
    pub(super) fn from_stored(blocks: Vec<Block>, stored: &SavedWindow) -> Self {
        // (Its batches were cut when it was planned: a run cut whole
        // then goes as stored again.)
        let mut window = Window::new(blocks[0].seq_first - 1, blocks, true);
        window.saved = true;
        window.cluster = stored.cluster.clone();
        if stored.saved_ms > 0 {
            window.first_attempt_ms = stored.saved_ms;
        }
        window
    }

    /// Its plan as stored: the lanes with events left, and `cluster`.
    pub(super) fn saved_form(&self, lanes: &[Lane], cluster: Option<String>) -> SavedWindow {
        SavedWindow {
            id: self.id(),
            blocks: self.blocks.iter().map(|b| b.seq_first).collect(),
            plan: plan::encode(lanes),
            cluster,
            saved_ms: self.first_attempt_ms,
        }
    }
}

/// A window whose lane jobs are running.
pub(super) struct Running {
    pub(super) window: Window,
    pub(super) tasks: JoinSet<(usize, LaneOutcome)>,
    pub(super) launched: Instant,
    /// Its lanes still running.
    pub(super) left: Arc<AtomicUsize>,
}

/// Raw bytes per window under a cap of `cap` bytes per second (0: none).
pub(super) fn window_raw_bytes(cap: u64) -> usize {
    match cap {
        0 => WINDOW_RAW_BYTES,
        cap => ((cap / 2) as usize).clamp(16 * 1024, WINDOW_RAW_BYTES),
    }
}

/// The smallest window worth reading while others are in flight.
pub(super) const MIN_WINDOW_RAW_BYTES: usize = 64 * 1024;

/// The raw bytes the next window may hold: `wanted`, within what the
/// memory budget `budget` leaves beside the `in_flight` bytes of the
/// windows running; `None` (wait for one to finish) when that is under a
/// useful window. With none running a window always goes.
pub(super) fn window_allowance(
    wanted: usize,
    in_flight: usize,
    budget: usize,
    any_running: bool,
) -> Option<usize> {
    if !any_running {
        return Some(wanted.min(budget));
    }
    let left = budget.saturating_sub(in_flight);
    (left >= wanted.min(MIN_WINDOW_RAW_BYTES)).then_some(wanted.min(left))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn the_first_window_always_goes_within_the_budget() {
        assert_eq!(window_allowance(3 * MIB, 0, 8 * MIB, false), Some(3 * MIB));
        // A budget below one window: the window shrinks to it.
        assert_eq!(window_allowance(3 * MIB, 0, MIB, false), Some(MIB));
    }

    #[test]
    fn windows_in_flight_share_the_budget_and_the_last_one_is_cut_to_fit() {
        let budget = 8 * MIB;
        assert_eq!(
            window_allowance(3 * MIB, 3 * MIB, budget, true),
            Some(3 * MIB)
        );
        assert_eq!(
            window_allowance(3 * MIB, 6 * MIB, budget, true),
            Some(2 * MIB)
        );
        // What is left is under a useful window: wait for one to finish.
        let almost = budget - MIN_WINDOW_RAW_BYTES + 1;
        assert_eq!(window_allowance(3 * MIB, almost, budget, true), None);
        assert_eq!(window_allowance(3 * MIB, budget + MIB, budget, true), None);
    }

    #[test]
    fn small_windows_under_a_bandwidth_cap_use_what_is_left() {
        let small = 16 * 1024;
        assert_eq!(window_allowance(small, MIB - small, MIB, true), Some(small));
        assert_eq!(window_allowance(small, MIB - small + 1, MIB, true), None);
    }
}
