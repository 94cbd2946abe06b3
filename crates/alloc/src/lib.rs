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

#![no_std]
#![deny(missing_docs)]

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;
use libmimalloc_sys as mi;

/// The largest alignment every mimalloc block has: one machine word.
const WORD_ALIGN: usize = core::mem::size_of::<usize>();

/// mimalloc as the global allocator; see the crate docs.
pub struct Allocator;

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
