//! Heap allocation counting for the benchmark build (`--features
//! count-allocs`): ferry's allocator (`arena`) counts each allocation
//! here. Not in normal builds.
//!
//! The count is spread over padded counters, one per thread (threads share
//! one only when there are more than 16): with a single shared counter,
//! threads that allocate at once fought over its cache line and the
//! counting build forwarded a third slower than the real one.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

const SHARDS: usize = 16;

/// One counter on a cache line of its own.
#[repr(align(128))]
struct Shard(AtomicU64);

static COUNTERS: [Shard; SHARDS] = [const { Shard(AtomicU64::new(0)) }; SHARDS];
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Const-initialised and without a destructor: reading it never
    // allocates, so the allocator itself may use it.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Heap allocations (and reallocations) so far, over all threads.
pub fn allocations() -> u64 {
    COUNTERS.iter().map(|c| c.0.load(Relaxed)).sum()
}

pub(crate) fn count() {
    let shard = SHARD
        .try_with(|s| {
            if s.get() == usize::MAX {
                s.set(NEXT_SHARD.fetch_add(1, Relaxed) % SHARDS);
            }
            s.get()
        })
        .unwrap_or(0);
    COUNTERS[shard].0.fetch_add(1, Relaxed);
}
