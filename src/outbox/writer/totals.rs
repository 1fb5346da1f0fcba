//! A commit's or a drop's effect on the outbox's totals (events, bytes,
//! sequence range, blocks and events per priority).

use crate::pattern::PRIORITY_LEVELS;
use std::sync::atomic::Ordering::Relaxed;

pub(super) fn sub(a: &std::sync::atomic::AtomicU64, n: u64) {
    let _ = a.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Totals {
    pub(super) events: u64,
    pub(super) stored: u64,
    pub(super) raw: u64,
    pub(super) seq_min: i64,
    pub(super) seq_max: i64,
    /// Blocks and events per priority.
    pub(super) blocks: [u64; PRIORITY_LEVELS],
    pub(super) events_by: [u64; PRIORITY_LEVELS],
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, o: Self) {
        if o.events == 0 {
            return;
        }
        if self.events == 0 {
            self.seq_min = o.seq_min;
        }
        self.events += o.events;
        self.stored += o.stored;
        self.raw += o.raw;
        self.seq_min = self.seq_min.min(o.seq_min);
        self.seq_max = self.seq_max.max(o.seq_max);
        for (mine, theirs) in self.blocks.iter_mut().zip(o.blocks) {
            *mine += theirs;
        }
        for (mine, theirs) in self.events_by.iter_mut().zip(o.events_by) {
            *mine += theirs;
        }
    }
}
