//! The largest single allocation a piece of code makes, for the fuzz tests
//! that bound what hostile input may make us allocate. Including this
//! module installs the tracking allocator for the whole test binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    /// The largest single allocation made on this thread while tracking.
    static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
}

struct Tracking;

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| {
            if let Some(max) = l.get() {
                l.set(Some(max.max(layout.size())));
            }
        });
        // SAFETY: same layout, as the caller promised.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: allocated by System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// What `f` returns, and the largest single allocation it made on this
/// thread.
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(Some(0)));
    let result = f();
    (result, LARGEST.with(|l| l.replace(None)).unwrap_or(0))
}
