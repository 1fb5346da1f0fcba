//! Bump allocation for the produce lanes: ferry's global allocator.
//!
//! rskafka's owned `Record` forces about a dozen small heap allocations per
//! Kafka record (key, value, the header map's node, header names and
//! values, its header list, its per-record encoding buffer), and they are
//! all freed together when the produce request is answered. With glibc's
//! malloc they cost about a fifth of ferry's CPU while it forwards.
//!
//! So while a [`scoped`] future is being polled (the produce lanes), small
//! allocations are bumped out of 32 KiB chunks owned by the polling thread,
//! which is a few instructions each. A chunk counts the allocations made in
//! it; freeing one (from any thread) counts down, and when the last one is
//! freed and its thread has moved on to another chunk, the chunk goes back
//! to a free list. The chunks lie in one address range reserved at the
//! first use, so telling an arena pointer from a system one is a compare.
//! Everything else, and everything when no chunk can be had, goes to the
//! system allocator, so an allocation never fails because of the arena.
//!
//! Freed chunks stay mapped for the next window; [`release`] hands their
//! pages back to the kernel when ferry goes idle (`memory`). A chunk stays
//! resident as long as anything in it is alive, so only short-lived work
//! runs in a scope.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

/// Chunk size (a power of two): large enough that taking a chunk (a lock)
/// is rare, small enough that a chunk kept alive by a straggler costs
/// little.
const CHUNK: usize = 32 * 1024;
/// The start of each chunk holds its counter, on a cache line of its own.
const HEADER: usize = 64;
/// Larger allocations (request buffers, record vectors) go to the system.
const MAX_SMALL: usize = 4096;
const MAX_ALIGN: usize = HEADER;
/// Address space reserved for chunks (not memory: pages are only used once
/// touched). Smaller on 32-bit targets, where address space is scarce.
#[cfg(target_pointer_width = "64")]
const REGION: usize = 256 << 20;
#[cfg(not(target_pointer_width = "64"))]
const REGION: usize = 32 << 20;
const MAX_CHUNKS: usize = REGION / CHUNK;
/// Added to a chunk's counter while a thread allocates from it, so that
/// frees cannot bring it to zero before the thread has moved on and added
/// its own count of allocations (kept in a thread-local until then).
const IN_USE: usize = 1 << (usize::BITS - 2);

/// Start of the reserved range; 0 until it is reserved.
static BASE: AtomicUsize = AtomicUsize::new(0);

/// The chunks that no thread allocates from and nothing lives in.
struct Pool {
    /// Reservation tried (and `BASE` set if it worked).
    reserved: bool,
    /// Chunks at or above this index have never been used.
    fresh: usize,
    free: [u32; MAX_CHUNKS],
    free_len: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    reserved: false,
    fresh: 0,
    free: [0; MAX_CHUNKS],
    free_len: 0,
});

/// The calling thread's chunk: the next free byte, its end and how many
/// allocations were made in it. Const-initialised with no destructor, so
/// the allocator may use it. (A thread that ends keeps its last chunk
/// alive; only the forwarding workers allocate here, and they live as
/// long as ferry.)
struct Local {
    active: Cell<bool>,
    next: Cell<usize>,
    end: Cell<usize>,
    count: Cell<usize>,
}

thread_local! {
    static LOCAL: Local = const {
        Local {
            active: Cell::new(false),
            next: Cell::new(0),
            end: Cell::new(0),
            count: Cell::new(0),
        }
    };
}

/// ferry's global allocator: the system allocator, with the bump arena
/// inside [`scoped`] futures. (With `count-allocs`, it also counts.)
pub struct Allocator;

/// Poll `future` with small allocations bumped from the arena.
pub fn scoped<F: Future>(future: F) -> Scoped<F> {
    Scoped(future)
}

/// See [`scoped`].
pub struct Scoped<F>(F);

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the inner future is never moved out of `self`: a plain
        // structural projection of a pinned field.
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.0) };
        within(|| inner.poll(cx))
    }
}

/// Run `f` with small allocations on this thread bumped from the arena.
pub fn within<R>(f: impl FnOnce() -> R) -> R {
    let before = LOCAL.with(|l| l.active.replace(true));
    let r = f();
    LOCAL.with(|l| l.active.set(before));
    r
}

/// Give the chunk this thread allocates from back, so that it can become
/// free (done by each forwarding worker as it goes idle).
pub fn retire_local() {
    let _ = LOCAL.try_with(|l| {
        let chunk = l.end.get().wrapping_sub(CHUNK);
        if l.end.get() != 0 {
            let count = l.count.get();
            l.next.set(0);
            l.end.set(0);
            l.count.set(0);
            settle(chunk, IN_USE - count);
        }
    });
}

/// Hand the pages of every free chunk back to the kernel; they stay
/// reserved and come back as zero pages when used again. Returns how many
/// chunks were released.
pub fn release() -> usize {
    let pool = lock();
    let base = BASE.load(Ordering::Acquire);
    for &index in &pool.free[..pool.free_len] {
        // SAFETY: a free chunk inside the reserved range holds nothing
        // alive, and no thread allocates from it while the pool is locked.
        unsafe {
            libc::madvise(
                (base + index as usize * CHUNK) as *mut libc::c_void,
                CHUNK,
                libc::MADV_DONTNEED,
            );
        }
    }
    pool.free_len
}

/// Chunks that are in use (a thread allocates from them or something in
/// them is alive). For the tests: ferry itself needs no such count.
#[cfg(test)]
fn chunks_in_use() -> usize {
    let pool = lock();
    pool.fresh - pool.free_len
}

fn lock() -> std::sync::MutexGuard<'static, Pool> {
    // The pool's state is consistent at every step; a panic elsewhere
    // while it was held (ferry aborts on panic anyway) changes nothing.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

fn in_region(ptr: usize) -> bool {
    let base = BASE.load(Ordering::Acquire);
    base != 0 && ptr.wrapping_sub(base) < REGION
}

fn chunk_of(ptr: usize) -> usize {
    let base = BASE.load(Ordering::Acquire);
    base + (ptr - base) / CHUNK * CHUNK
}

fn counter(chunk: usize) -> &'static AtomicUsize {
    // SAFETY: `chunk` is the start of a committed chunk, whose first bytes
    // hold its counter for as long as the range is reserved (for good).
    unsafe { &*(chunk as *const AtomicUsize) }
}

/// Take `by` off a chunk's counter; the one who brings it to zero puts
/// the chunk on the free list.
fn settle(chunk: usize, by: usize) {
    if counter(chunk).fetch_sub(by, Ordering::AcqRel) == by {
        let mut pool = lock();
        let index = (chunk - BASE.load(Ordering::Acquire)) / CHUNK;
        let len = pool.free_len;
        pool.free[len] = index as u32;
        pool.free_len += 1;
    }
}

/// A chunk for this thread to allocate from: a free one (most recently
/// freed first, as its pages are likely resident), else a fresh one.
fn take_chunk() -> Option<usize> {
    let mut pool = lock();
    if !pool.reserved {
        pool.reserved = true;
        // SAFETY: a new private mapping with no access: address space only.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                REGION,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            BASE.store(p as usize, Ordering::Release);
        }
    }
    let base = BASE.load(Ordering::Acquire);
    if base == 0 {
        return None;
    }
    let chunk = if pool.free_len > 0 {
        pool.free_len -= 1;
        base + pool.free[pool.free_len] as usize * CHUNK
    } else if pool.fresh < MAX_CHUNKS {
        let chunk = base + pool.fresh * CHUNK;
        // SAFETY: a chunk inside our own reservation, not yet in use.
        let ok = unsafe {
            libc::mprotect(
                chunk as *mut libc::c_void,
                CHUNK,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        } == 0;
        if !ok {
            return None;
        }
        pool.fresh += 1;
        chunk
    } else {
        return None;
    };
    counter(chunk).store(IN_USE, Ordering::Relaxed);
    Some(chunk)
}

impl Local {
    /// Bump `layout` out of this thread's chunk, taking a new chunk when it
    /// does not fit. None outside a scope or when no chunk can be had.
    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        if !self.active.get() || layout.size() > MAX_SMALL || layout.align() > MAX_ALIGN {
            return None;
        }
        let align = layout.align() - 1;
        let start = (self.next.get() + align) & !align;
        if self.end.get() != 0 && start + layout.size() <= self.end.get() {
            self.next.set(start + layout.size());
            self.count.set(self.count.get() + 1);
            return Some(start as *mut u8);
        }
        retire_local();
        let chunk = take_chunk()?;
        let start = (chunk + HEADER + align) & !align;
        self.next.set(start + layout.size());
        self.end.set(chunk + CHUNK);
        self.count.set(1);
        Some(start as *mut u8)
    }

    /// Grow or shrink the latest allocation of this thread's chunk where
    /// it lies; any other allocation can shrink where it lies.
    fn resize_in_place(&self, ptr: usize, old: usize, new: usize) -> bool {
        if new > MAX_SMALL {
            return false;
        }
        if ptr + old == self.next.get() && ptr + new <= self.end.get() {
            self.next.set(ptr + new);
            return true;
        }
        new <= old
    }
}

#[cfg(feature = "count-allocs")]
fn count() {
    crate::alloc_count::count();
}

#[cfg(not(feature = "count-allocs"))]
fn count() {}

// Not inlined: with LTO every allocation site in the binary would get its
// own copy (+220 KB of code, which on a gateway is resident memory); a
// call costs nothing measurable here, as glibc's malloc was a call too.
unsafe impl GlobalAlloc for Allocator {
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        match LOCAL.try_with(|l| l.bump(layout)) {
            Ok(Some(p)) => p,
            // SAFETY: forwarded unchanged to the system allocator.
            _ => unsafe { System.alloc(layout) },
        }
    }

    #[inline(never)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        match LOCAL.try_with(|l| l.bump(layout)) {
            Ok(Some(p)) => {
                // SAFETY: `p` points to `layout.size()` bytes just bumped.
                unsafe { p.write_bytes(0, layout.size()) };
                p
            }
            // SAFETY: forwarded unchanged to the system allocator.
            _ => unsafe { System.alloc_zeroed(layout) },
        }
    }

    #[inline(never)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_region(ptr as usize) {
            settle(chunk_of(ptr as usize), 1);
        } else {
            // SAFETY: not an arena pointer, so it came from System.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[inline(never)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !in_region(ptr as usize) {
            count();
            // SAFETY: not an arena pointer, so it came from System.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let in_place = LOCAL
            .try_with(|l| l.resize_in_place(ptr as usize, layout.size(), new_size))
            .unwrap_or(false);
        if in_place {
            count();
            return ptr;
        }
        // SAFETY: the caller guarantees `new_size` with this alignment is a
        // valid layout (GlobalAlloc::realloc's contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a valid, non-zero layout; `alloc` counts it.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live and at least this long; a new
            // block never overlaps a live one.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            // SAFETY: `ptr` is live and was allocated with `layout`.
            unsafe { self.dealloc(ptr, layout) };
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool is shared by the whole process; these tests take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn outside_a_scope_everything_goes_to_the_system() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let a = Allocator;
        unsafe {
            let p = a.alloc(layout(100, 8));
            assert!(!in_region(p as usize));
            p.write_bytes(7, 100);
            a.dealloc(p, layout(100, 8));
        }
    }

    #[test]
    fn small_allocations_are_bumped_and_large_ones_are_not() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let a = Allocator;
        within(|| unsafe {
            let p = a.alloc(layout(24, 8));
            let q = a.alloc(layout(24, 8));
            assert!(in_region(p as usize) && in_region(q as usize));
            // Unless a chunk ended between them, they are neighbours.
            if chunk_of(p as usize) == chunk_of(q as usize) {
                assert_eq!(q as usize, p as usize + 24);
            }
            let aligned = a.alloc(layout(10, 64));
            assert!(in_region(aligned as usize));
            assert_eq!(aligned as usize % 64, 0);
            let big = a.alloc(layout(MAX_SMALL + 1, 8));
            assert!(!in_region(big as usize));
            for (ptr, l) in [
                (p, layout(24, 8)),
                (q, layout(24, 8)),
                (aligned, layout(10, 64)),
                (big, layout(MAX_SMALL + 1, 8)),
            ] {
                ptr.write_bytes(1, l.size());
                a.dealloc(ptr, l);
            }
        });
        retire_local();
    }

    #[test]
    fn a_chunk_is_reused_once_everything_in_it_is_freed_on_any_thread() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        retire_local();
        let before = chunks_in_use();
        let a = Allocator;
        // 200-byte values, each with a 10-byte key: 324 000 bytes with
        // alignment, ten chunks' worth.
        let pointers: Vec<(usize, usize)> = within(|| {
            (0..3000)
                .map(|i| unsafe {
                    let size = if i % 2 == 0 { 200 } else { 10 };
                    let p = a.alloc(layout(size, 8));
                    p.write_bytes((i % 251) as u8, size);
                    (p as usize, size)
                })
                .collect()
        });
        let used = chunks_in_use() - before;
        assert!((10..=11).contains(&used), "{used} chunks");
        for (i, &(p, size)) in pointers.iter().enumerate() {
            let byte = unsafe { *(p as *const u8).add(size - 1) };
            assert_eq!(byte, (i % 251) as u8, "allocation {i} intact");
        }
        // Freed on another thread, as when a lane moves between workers.
        std::thread::spawn(move || {
            for (p, size) in pointers {
                unsafe { Allocator.dealloc(p as *mut u8, layout(size, 8)) };
            }
        })
        .join()
        .unwrap();
        // All but the chunk this thread still allocates from are free.
        assert_eq!(chunks_in_use() - before, 1);
        retire_local();
        assert_eq!(chunks_in_use(), before);
        // And the pages go back to the kernel on release.
        assert!(release() >= used);
        let again = within(|| unsafe { a.alloc(layout(64, 8)) });
        assert!(in_region(again as usize));
        assert_eq!(chunks_in_use(), before + 1, "a free chunk is taken again");
        unsafe { a.dealloc(again, layout(64, 8)) };
        retire_local();
    }

    #[test]
    fn realloc_grows_in_place_at_the_end_and_moves_otherwise() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let a = Allocator;
        within(|| unsafe {
            // A fresh chunk, so the first allocation has room to grow.
            retire_local();
            let p = a.alloc(layout(8, 1));
            p.copy_from_nonoverlapping(b"abcdefgh".as_ptr(), 8);
            let grown = a.realloc(p, layout(8, 1), 300);
            assert_eq!(grown, p, "the latest allocation grows where it is");
            let blocker = a.alloc(layout(16, 8));
            let moved = a.realloc(grown, layout(300, 1), 600);
            assert_ne!(moved, grown);
            assert_eq!(std::slice::from_raw_parts(moved, 8), b"abcdefgh");
            let to_system = a.realloc(moved, layout(600, 1), MAX_SMALL * 2);
            assert!(!in_region(to_system as usize));
            assert_eq!(std::slice::from_raw_parts(to_system, 8), b"abcdefgh");
            a.dealloc(to_system, layout(MAX_SMALL * 2, 1));
            a.dealloc(blocker, layout(16, 8));
        });
        retire_local();
    }

    #[test]
    fn a_scoped_future_allocates_from_the_arena_only_while_polled() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let a = Allocator;
        let (inside, outside) = rt.block_on(async {
            let inside = scoped(async { unsafe { a.alloc(layout(32, 8)) } }).await;
            let outside = unsafe { a.alloc(layout(32, 8)) };
            (inside as usize, outside as usize)
        });
        assert!(in_region(inside));
        assert!(!in_region(outside));
        unsafe {
            a.dealloc(inside as *mut u8, layout(32, 8));
            a.dealloc(outside as *mut u8, layout(32, 8));
        }
        retire_local();
    }
}
