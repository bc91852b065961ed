//! The process's allocator: jemalloc, for what RSS does once users stop being busy.
//!
//! A resident user leaves its actor (~11 KiB, much of it in a few large blocks) when it
//! hibernates, and keeps a publication (~1.5 KiB in small ones) allocated while the actor
//! lived. glibc's allocator could give back almost none of the freed actors' memory while the
//! publications lived among it: 100,000 hibernated users held 150 MB of heap in 990 MB of
//! RSS, and `malloc_trim` changed little (docs/BENCHMARKS.md). jemalloc keeps small
//! allocations in slabs of one size class and large ones in runs of their own pages, and its
//! background threads return pages left free for a few seconds, so RSS follows the heap.

use tikv_jemalloc_ctl::{epoch, stats};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bytes handed out to the process and not yet freed: what its data takes, apart from the
/// free memory the allocator still holds, which RSS also counts. `None` if the allocator's
/// statistics cannot be read.
pub fn heap_in_use() -> Option<u64> {
    // The statistics are a snapshot, refreshed by advancing the epoch.
    epoch::advance().ok()?;
    stats::allocated::read().ok().map(|bytes| bytes as u64)
}

/// Returns every page the allocator holds free to the system now, instead of after its
/// decay time: once many actors have stopped at once. It walks every arena: call it off the
/// runtime's workers. False if the allocator refused.
pub fn give_back_free_pages() -> bool {
    // `arena.<MALLCTL_ARENAS_ALL>.purge` takes and returns nothing.
    const PURGE_ALL: &std::ffi::CStr = c"arena.4096.purge";
    // SAFETY: a valid NUL-terminated control name, and null pointers for a control that
    // neither reads nor writes a value; purging touches only free pages.
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if status != 0 {
        tracing::warn!(status, "the allocator did not purge its free pages");
    }
    status == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_heap_in_use_follows_what_is_allocated() {
        let before = super::heap_in_use().expect("jemalloc's statistics");
        let block = vec![7u8; 64 << 20];
        let during = super::heap_in_use().unwrap();
        assert!(during >= before + (60 << 20), "{before} → {during}");
        drop(block);
        assert!(super::give_back_free_pages(), "purge refused");
        assert!(super::heap_in_use().unwrap() < during);
    }
}
