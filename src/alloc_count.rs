//! Heap allocation counting for the benchmark build (`--features
//! count-allocs`): the system allocator, counting each allocation and
//! reallocation. Not in normal builds.
//!
//! The count is spread over padded counters, one per thread (threads share
//! one only when there are more than 16): with a single shared counter,
//! threads that allocate at once fought over its cache line and the
//! counting build forwarded a third slower than the real one.

use std::alloc::{GlobalAlloc, Layout, System};
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

/// The system allocator, counting.
pub struct Counting;

// Not inlined: with LTO every allocation site would get its own copy.
unsafe impl GlobalAlloc for Counting {
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    #[inline(never)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    #[inline(never)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    #[inline(never)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn count() {
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
