//! receiptd's global allocator: mimalloc, called the way C calls it.
//!
//! The `mimalloc` crate's `MiMalloc` passes every request to
//! `mi_malloc_aligned`, alignment 1 included. That path checks the
//! alignment against the free block it found and, whenever the size class's
//! free list is empty, takes mimalloc's generic aligned path. Every mimalloc
//! block is aligned to at least 8 bytes (block sizes are whole words and
//! pages start 16-aligned), so a request aligned to 8 or less is served by
//! `mi_malloc`, the plain fast path, with the same guarantee. Larger
//! alignments still go through the aligned entry points.
//!
//! The binary and the benches that measure its hot paths install it:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: receiptd_alloc::Allocator = receiptd_alloc::Allocator;
//! ```
//!
//! By default the worker calls [`keep_freed_memory`]: no memory goes back
//! to the OS, so no thread pays for handing it back (`madvise` and the TLB
//! flush it waits for on every other CPU). Configured to give it back, it
//! calls [`purge_lazily`] (unless configured to unmap):
//! mimalloc hands freed memory back to the OS a second after it was freed,
//! by default with `MADV_DONTNEED`, which unmaps it. Each flush frees and
//! allocates again megabytes (delta records, write batches), so under load
//! the fold and the flush kept faulting in and zeroing pages that had just
//! been given back: runs of 2 to 4 ms in the poll loop (perf:
//! `clear_page_erms` under page faults), and a fifth of its page faults in
//! the drain bench. With `MADV_FREE` the `madvise` call itself (2 to 3 ms,
//! walking the range and shooting down TLB entries; more when the other
//! CPU is slow to answer) remains, hence the default.

#![no_std]
#![deny(missing_docs)]

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::{c_int, c_long, c_void};
use libmimalloc_sys as mi;

/// The largest alignment every mimalloc block has: one machine word.
const WORD_ALIGN: usize = core::mem::size_of::<usize>();

/// mimalloc as the global allocator; see the crate docs.
pub struct Allocator;

/// `mi_option_purge_decommits` in the vendored mimalloc's `mi_option_t`
/// (libmimalloc-sys names no constant for it); a test checks the index.
const PURGE_DECOMMITS: c_int = 5;

/// `mi_option_purge_delay`, likewise.
const PURGE_DELAY: c_int = 15;

// mimalloc's option calls: libmimalloc-sys declares them only with its
// `extended` feature, which needs a crate (`cty`) this build does without.
unsafe extern "C" {
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
    fn mi_option_set(option: c_int, value: c_long);
    fn mi_usable_size(p: *const c_void) -> usize;
}

/// The bytes mimalloc holds for a block it allocated: the request rounded
/// up to its size class (136 bytes take a 160-byte block). What memory
/// accounting counts, where the requested size undercounts.
///
/// # Safety
///
/// `ptr` is a live block from [`Allocator`], or null (0).
pub unsafe fn usable_size(ptr: *const u8) -> usize {
    // SAFETY: the caller's contract; mimalloc answers 0 for null.
    unsafe { mi_usable_size(ptr.cast()) }
}

/// Has mimalloc give freed memory back to the OS with `MADV_FREE` instead
/// of unmapping it (`MADV_DONTNEED`): the kernel still takes such pages
/// whenever it runs short, a container's memory limit included, but a page
/// used again before then is neither faulted in nor zeroed. Memory is still
/// given back a second after it is freed (mimalloc's `purge_delay`). May be
/// called at any time; later purges follow it.
pub fn purge_lazily() {
    // SAFETY: sets an option in range; mimalloc reads it at each purge.
    unsafe { mi_option_set(PURGE_DECOMMITS, 0) }
}

/// Has mimalloc keep the memory it frees for reuse and hand none back to
/// the OS (`purge_delay` -1): the process's RSS stays at its high point.
/// mimalloc purges from whichever thread frees or allocates once the delay
/// is up, and each `madvise` waits for every other CPU to flush its TLB
/// (an IPI): in the drain bench, the most CPU the poll loop took in one gap
/// was 10 to 16 ms with purging, 6 to 8 without. May be called at any time.
pub fn keep_freed_memory() {
    // SAFETY: sets an option in range; mimalloc reads it at each purge.
    unsafe { mi_option_set(PURGE_DELAY, -1) }
}

// SAFETY: every method forwards to mimalloc, which returns null on failure
// and otherwise a block of at least the requested size; blocks from
// `mi_malloc`, `mi_zalloc` and `mi_realloc` are aligned to a word, so those
// entry points serve only layouts aligned to a word or less.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD_ALIGN {
            mi::mi_malloc(layout.size()) as *mut u8
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD_ALIGN {
            mi::mi_zalloc(layout.size()) as *mut u8
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD_ALIGN {
            mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
        } else {
            mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// mimalloc reads its options from the environment when the process
    /// loads, so a child with `MIMALLOC_PURGE_DECOMMITS` and
    /// `MIMALLOC_PURGE_DELAY` set shows which index each option has.
    #[test]
    fn purge_options_are_the_options_at_their_indexes() {
        const CHILD: &str = "RECEIPTD_ALLOC_TEST_CHILD";
        // SAFETY: reads an option in range.
        let value = |option| unsafe { mi_option_get(option) };
        if std::env::var_os(CHILD).is_some() {
            assert_eq!(value(PURGE_DECOMMITS), 7, "the option set in the environment");
            purge_lazily();
            assert_eq!(value(PURGE_DECOMMITS), 0, "purge_lazily sets it");
            assert_eq!(value(PURGE_DELAY), 1234, "the option set in the environment");
            keep_freed_memory();
            assert_eq!(value(PURGE_DELAY), -1, "keep_freed_memory sets it");
            return;
        }
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::purge_options_are_the_options_at_their_indexes", "--nocapture"])
            .env(CHILD, "1")
            .env("MIMALLOC_PURGE_DECOMMITS", "7")
            .env("MIMALLOC_PURGE_DELAY", "1234")
            // Its own test summary would read as another run's; a panic
            // still shows (stderr).
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "the child test failed: {status}");
    }

    /// Every size up to 4 KiB and past a page, at every alignment up to 4
    /// KiB: the block is aligned, writable to its end, and survives growth
    /// and shrinking with its contents.
    #[test]
    fn blocks_are_aligned_and_keep_their_contents_through_realloc() {
        let sizes: Vec<usize> = (1..=256).chain((257..=4096).step_by(61)).chain([65_536, 1 << 20]).collect();
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            let mut held = Vec::new();
            for &size in &sizes {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; each block is freed below with its layout.
                unsafe {
                    let zeroed = Allocator.alloc_zeroed(layout);
                    assert!(!zeroed.is_null() && zeroed as usize % align == 0, "{layout:?}");
                    assert!((0..size).all(|i| *zeroed.add(i) == 0), "{layout:?} zeroed");
                    Allocator.dealloc(zeroed, layout);

                    let p = Allocator.alloc(layout);
                    assert!(!p.is_null() && p as usize % align == 0, "{layout:?}");
                    (0..size).for_each(|i| *p.add(i) = i as u8);
                    let grown = Allocator.realloc(p, layout, size * 3);
                    assert!(!grown.is_null() && grown as usize % align == 0, "{layout:?} grown");
                    assert!((0..size).all(|i| *grown.add(i) == i as u8), "{layout:?} grown keeps its bytes");
                    let grown_layout = Layout::from_size_align(size * 3, align).unwrap();
                    let shrunk = Allocator.realloc(grown, grown_layout, size.div_ceil(2));
                    assert!(!shrunk.is_null() && shrunk as usize % align == 0, "{layout:?} shrunk");
                    assert!(
                        (0..size.div_ceil(2)).all(|i| *shrunk.add(i) == i as u8),
                        "{layout:?} shrunk keeps its bytes"
                    );
                    // Held, so that later blocks come from pages in use.
                    held.push((shrunk, Layout::from_size_align(size.div_ceil(2), align).unwrap()));
                }
            }
            for (p, layout) in held {
                // SAFETY: allocated above with this layout.
                unsafe { Allocator.dealloc(p, layout) };
            }
        }
    }
}
