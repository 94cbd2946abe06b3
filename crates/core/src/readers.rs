//! A message's readers: 4 bytes each in memory in a small group, 8 in a
//! large one, 2 to 5 on disk.
//!
//! A reader is a group ordinal, a read time and a hidden flag. Kept as a
//! [`ReadMark`] per reader (ordinal, u64 time, flag, padding) that is 16
//! bytes, and readers are most of what a well-read message holds.
//!
//! Ordinals below 64 (every member of a group that has had at most 64, the
//! usual chat group) are bits of one word, and each such reader keeps one
//! `u32`: its read time as an offset from the message's send time (31 bits:
//! 12.4 days either side of the send), with the hidden flag in the top bit.
//! The bits say who read; a reader's word is found by its rank among them.
//! Any other reader is two `u32`s: the ordinal with the flag in its top
//! bit, and the offset (32 bits: 24.8 days either side). A read outside
//! its window (a client clock far off, a message read weeks later), or an
//! ordinal past 2³¹, is kept whole in a side list that is usually absent:
//! nothing is rounded or lost.
//!
//! Persisted, the readers are one byte string of varints: each ordinal as
//! its gap from the previous one (with the flag in the low bit), each offset
//! as its difference from the previous one. A reader then takes 2 bytes
//! when members read in turn within a second of each other, and about 5
//! when random members read at random times within an hour, instead of
//! bincode's 11 to 13.
//!
//! A message read by tens of thousands would move half its compact
//! readers for every new one if they were kept in one sorted run: about
//! 2 µs a read while four messages gathered 50,000 readers each. So past
//! [`TAIL_FROM`] compact readers, new ones go into a short sorted tail
//! after the run, merged into it once the tail outgrows the square root of
//! twice the run: a read then moves O(√readers) words, amortized, not
//! O(readers) (0.46 µs a read there; `benches/fold.rs`, `big_messages`).
//!
//! A flush writes a changed message whole, and a message read by tens of
//! thousands would have all its readers written again at every flush
//! that saw one more (about 150 KB at 50,000). So once a message has
//! [`PAGE_READERS`] readers when staged, they are sealed into a page of
//! their own, stored under a key of its own and never written again
//! while the message lives; the message's own value then holds only the
//! readers since its last page, sealed in turn once they are as many. A
//! flush writes at most about [`PAGE_READERS`] readers of a message,
//! however many it has. In memory the readers stay one list; a paged
//! message also lists the ordinals read since its last page.
//!
//! The offsets are relative to a send time the caller passes in (the
//! message's own `sent_at`), which is persisted with the message; the byte
//! string holds the offsets as they are, so encoding needs no send time.

use crate::state::ReadMark;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::ptr::NonNull;

/// The hidden flag, in a compact reader's ordinal word and in a low
/// reader's word.
const HIDDEN: u32 = 1 << 31;
/// Offsets are stored as `read_at - sent_at + OFFSET_BIAS`, modulo 2⁶⁴:
/// the sum is then exact for every time whose offset fits in 32 bits.
const OFFSET_BIAS: u64 = 1 << 31;
/// A low reader's offset is `read_at - sent_at + LOW_OFFSET_BIAS` in 31
/// bits: its compact offset less 2³⁰.
const LOW_OFFSET_BIAS: u64 = 1 << 30;
/// Ordinals kept as bits.
const LOW_ORDINALS: u32 = 64;
/// Compact readers from which new ones go to the tail: a move of half of
/// this many (1 KB) costs about what a tail's upkeep does.
const TAIL_FROM: usize = 256;
/// A tail is merged once past this many readers, or the square root of
/// twice the run's if that is more.
const TAIL_MIN: usize = 32;

/// Readers that fill a page: a message has its readers stored in pages
/// once it has this many when staged (see the module docs). 1,024 keeps
/// a page at 2 to 5 KB, what a flush writes of a message at most.
pub const PAGE_READERS: usize = 1024;

/// One reader in 8 bytes: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Compact {
    ordinal_and_hidden: u32,
    offset: u32,
}

impl Compact {
    /// The compact form of `mark`, if its ordinal and time fit.
    fn of(mark: ReadMark, sent_at: u64) -> Option<Compact> {
        if mark.ordinal & HIDDEN != 0 {
            return None;
        }
        let offset = u32::try_from(mark.read_at.wrapping_sub(sent_at).wrapping_add(OFFSET_BIAS)).ok()?;
        let flag = if mark.hidden { HIDDEN } else { 0 };
        Some(Compact { ordinal_and_hidden: mark.ordinal | flag, offset })
    }

    fn ordinal(self) -> u32 {
        self.ordinal_and_hidden & !HIDDEN
    }

    fn hidden(self) -> bool {
        self.ordinal_and_hidden & HIDDEN != 0
    }

    fn mark(self, sent_at: u64) -> ReadMark {
        // Undoes `of` modulo 2⁶⁴, where it is a bijection.
        let read_at = sent_at.wrapping_add(u64::from(self.offset)).wrapping_sub(OFFSET_BIAS);
        ReadMark { ordinal: self.ordinal(), read_at, hidden: self.hidden() }
    }

    /// Its two words in [`Readers::words`].
    fn words(self) -> [u32; 2] {
        [self.ordinal_and_hidden, self.offset]
    }

    fn from_words(words: &[u32]) -> Compact {
        Compact { ordinal_and_hidden: words[0], offset: words[1] }
    }

    /// The low reader's word of this reader, if its ordinal and time fit.
    fn low_word(self) -> Option<u32> {
        let offset = self.offset.checked_sub(LOW_OFFSET_BIAS as u32).filter(|&o| o & HIDDEN == 0)?;
        (self.ordinal() < LOW_ORDINALS).then_some(offset | (self.ordinal_and_hidden & HIDDEN))
    }

    /// The reader of ordinal `ordinal` whose low reader's word is `word`.
    fn of_low_word(ordinal: u32, word: u32) -> Compact {
        Compact { ordinal_and_hidden: ordinal | (word & HIDDEN), offset: (word & !HIDDEN) + LOW_OFFSET_BIAS as u32 }
    }
}

/// A `Vec<u32>` in 16 bytes instead of 24 (a `u32` length and capacity):
/// with the low readers' bits beside it, a message's readers still take
/// the 32 bytes of its state they took as a `Vec` and a side list.
struct Words {
    ptr: NonNull<u32>,
    len: u32,
    cap: u32,
}

// SAFETY: `Words` owns its buffer, as a `Vec<u32>` does.
unsafe impl Send for Words {}
// SAFETY: as above; `&Words` only reads.
unsafe impl Sync for Words {}

impl Words {
    const fn new() -> Words {
        Words { ptr: NonNull::dangling(), len: 0, cap: 0 }
    }

    fn layout(cap: u32) -> std::alloc::Layout {
        std::alloc::Layout::array::<u32>(cap as usize).expect("a reader list's words fit a layout")
    }

    fn len(&self) -> usize {
        self.len as usize
    }

    fn as_slice(&self) -> &[u32] {
        // SAFETY: the first `len` words are initialized; `ptr` is dangling
        // and aligned when `len` is 0.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len as usize) }
    }

    fn as_mut_slice(&mut self) -> &mut [u32] {
        // SAFETY: as `as_slice`, and `&mut self` borrows the buffer.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len as usize) }
    }

    /// Room for `more` words past `len`: the capacity doubles, from 4.
    #[inline]
    fn reserve(&mut self, more: usize) {
        if self.len as usize + more > self.cap as usize {
            self.grow(more);
        }
    }

    #[inline(never)]
    fn grow(&mut self, more: usize) {
        let needed = u32::try_from(self.len as usize + more).expect("a message's readers fit 2³² words");
        let cap = needed.max(self.cap.saturating_mul(2)).max(4);
        let new = Words::layout(cap);
        // SAFETY: `new` has a non-zero size; the old block, if any, was
        // allocated with the old capacity's layout.
        let ptr = unsafe {
            if self.cap == 0 {
                std::alloc::alloc(new)
            } else {
                std::alloc::realloc(self.ptr.as_ptr().cast(), Words::layout(self.cap), new.size())
            }
        };
        self.ptr = NonNull::new(ptr.cast()).unwrap_or_else(|| std::alloc::handle_alloc_error(new));
        self.cap = cap;
    }

    /// Puts `words` at `at`, moving the words from `at` on after them.
    fn insert(&mut self, at: usize, words: &[u32]) {
        assert!(at <= self.len(), "insert past the end");
        self.reserve(words.len());
        // SAFETY: room for `len + words.len()` words was reserved; `at`
        // is within the initialized words, which move up by `words.len()`.
        unsafe {
            let p = self.ptr.as_ptr().add(at);
            std::ptr::copy(p, p.add(words.len()), self.len() - at);
            std::ptr::copy_nonoverlapping(words.as_ptr(), p, words.len());
        }
        self.len += words.len() as u32;
    }

    fn extend_from_slice(&mut self, words: &[u32]) {
        self.insert(self.len(), words);
    }

    fn heap_bytes(&self) -> usize {
        self.cap as usize * std::mem::size_of::<u32>()
    }
}

impl Drop for Words {
    fn drop(&mut self) {
        if self.cap > 0 {
            // SAFETY: allocated with this capacity's layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), Words::layout(self.cap)) }
        }
    }
}

impl Clone for Words {
    fn clone(&self) -> Words {
        let mut copy = Words::new();
        copy.extend_from_slice(self.as_slice());
        copy
    }
}

impl PartialEq for Words {
    fn eq(&self, other: &Words) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Words {}

impl std::fmt::Debug for Words {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

/// Who read a message, when, and whether the read is hidden; by ordinal.
/// The send time every method takes is the message's `sent_at`, the same
/// for the readers' whole life. Each reader is kept in one form only,
/// the first that fits: a low reader, a compact one, an outlier; so two
/// lists of the same reads are equal (as reads: where the compact
/// readers' run ends and their tail begins depends on the order they came
/// in).
#[derive(Debug, Clone)]
pub struct Readers {
    /// Bit `o` set: ordinal `o` read, as a low reader.
    low: u64,
    /// The low readers' words, in ordinal order; then the compact readers,
    /// two words each: their run, sorted by ordinal, then their tail (see
    /// [`Side::tail`]), sorted by ordinal.
    words: Words,
    /// Outliers and the tail's length: absent in most messages.
    side: Option<Box<Side>>,
}

/// What few messages' readers have.
#[derive(Debug, Clone, Default)]
struct Side {
    /// Readers kept whole, sorted by ordinal; no ordinal is in two forms.
    outliers: Vec<ReadMark>,
    /// Compact readers in the tail, after the run (see the module docs).
    tail: usize,
    /// Where the readers are stored, once in pages.
    pages: Option<Box<Pages>>,
}

/// How a paged message's readers are stored (see the module docs).
#[derive(Debug, Clone, Default)]
struct Pages {
    /// Pages stored, numbered from 0.
    sealed: u32,
    /// Ordinals read since the last page was sealed, in the order read:
    /// stored in the message's own value.
    open: Vec<u32>,
    /// Ordinals of the page the staging in progress sealed, to write with
    /// it; the next staging drops them.
    sealing: Vec<u32>,
    /// The staging in progress sealed the first page: every reader.
    sealing_all: bool,
    /// Pages restored so far, while the message is restored.
    restored: u32,
    /// The restored pages' readers, merged with the rest once the last
    /// is in: one sort, where inserting each cost O(√readers) moves.
    restoring: Vec<ReadMark>,
}

impl Default for Readers {
    fn default() -> Readers {
        Readers { low: 0, words: Words::new(), side: None }
    }
}

impl PartialEq for Readers {
    fn eq(&self, other: &Readers) -> bool {
        self.low == other.low
            && self.outliers() == other.outliers()
            && self.compact_in_order().map(Compact::words).eq(other.compact_in_order().map(Compact::words))
    }
}

impl Eq for Readers {}

/// Where `ordinal` is, or would go, among compact readers' words (two a
/// reader, sorted by ordinal).
fn search_pairs(words: &[u32], ordinal: u32) -> Result<usize, usize> {
    let (mut lo, mut hi) = (0, words.len() / 2);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match (words[2 * mid] & !HIDDEN).cmp(&ordinal) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Ok(mid),
        }
    }
    Err(lo)
}

/// Bits of `low` below ordinal `o`.
fn below(o: u32) -> u64 {
    (1u64 << o) - 1
}

impl Readers {
    /// The readers kept whole (usually none).
    fn outliers(&self) -> &[ReadMark] {
        self.side.as_deref().map_or(&[], |s| s.outliers.as_slice())
    }

    /// Compact readers in the tail.
    fn tail(&self) -> usize {
        self.side.as_deref().map_or(0, |s| s.tail)
    }

    fn low_count(&self) -> usize {
        self.low.count_ones() as usize
    }

    /// The low readers' words, in ordinal order.
    fn low_words(&self) -> &[u32] {
        &self.words.as_slice()[..self.low_count()]
    }

    /// The compact readers' words, two a reader: the run's, then the
    /// tail's.
    fn compact_words(&self) -> &[u32] {
        &self.words.as_slice()[self.low_count()..]
    }

    /// The compact readers' words: the run's and the tail's, each sorted
    /// by ordinal.
    fn run_and_tail(&self) -> (&[u32], &[u32]) {
        let compact = self.compact_words();
        compact.split_at(compact.len() - 2 * self.tail())
    }

    /// Merges the tail into the run, from the back, through a copy of the
    /// tail: O(run + tail).
    #[inline(never)]
    fn merge_tail(&mut self) {
        let (low, tail) = (self.low_count(), self.tail());
        let compact = &mut self.words.as_mut_slice()[low..];
        let run_end = compact.len() - 2 * tail;
        let tail_words = compact[run_end..].to_vec();
        let (mut run, mut tail, mut to) = (run_end, tail_words.len(), compact.len());
        while tail > 0 {
            to -= 2;
            if run > 0 && compact[run - 2] & !HIDDEN > tail_words[tail - 2] & !HIDDEN {
                compact.copy_within(run - 2..run, to);
                run -= 2;
            } else {
                compact[to..to + 2].copy_from_slice(&tail_words[tail - 2..tail]);
                tail -= 2;
            }
        }
        if let Some(side) = self.side.as_deref_mut() {
            side.tail = 0;
        }
    }

    /// How many read (hidden reads included).
    pub fn len(&self) -> usize {
        self.words.len() - self.compact_words().len() / 2 + self.outliers().len()
    }

    /// The highest ordinal that read, without walking the readers: each
    /// form keeps its own sorted (a restore checks every message's).
    pub fn highest_ordinal(&self) -> Option<u32> {
        let low = (self.low != 0).then(|| 63 - self.low.leading_zeros());
        let (run, tail) = self.run_and_tail();
        let last = |words: &[u32]| words.chunks_exact(2).last().map(|w| w[0] & !HIDDEN);
        let outlier = self.outliers().last().map(|r| r.ordinal);
        low.max(last(run)).max(last(tail)).max(outlier)
    }

    /// Whether nobody has read.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many of the reads are hidden.
    pub fn hidden_count(&self) -> usize {
        let low = self.low_words().iter().filter(|&&w| w & HIDDEN != 0).count();
        let compact = self.compact_words().iter().step_by(2).filter(|&&w| w & HIDDEN != 0).count();
        low + compact + self.outliers().iter().filter(|r| r.hidden).count()
    }

    /// Bytes the readers hold on the heap (capacity included).
    pub fn heap_bytes(&self) -> usize {
        self.words.heap_bytes()
            + self.side.as_ref().map_or(0, |s| {
                std::mem::size_of::<Side>()
                    + s.outliers.capacity() * std::mem::size_of::<ReadMark>()
                    + s.pages
                        .as_ref()
                        .map_or(0, |p| std::mem::size_of::<Pages>() + 4 * (p.open.capacity() + p.sealing.capacity()))
            })
    }

    /// Where the readers' heap memory starts (dangling when they have none):
    /// for a prefetch.
    pub(crate) fn heap_ptr(&self) -> *const u8 {
        self.words.ptr.as_ptr().cast()
    }

    /// The read of `ordinal`, if it read.
    pub(crate) fn get(&self, ordinal: u32, sent_at: u64) -> Option<ReadMark> {
        if ordinal < LOW_ORDINALS && self.low & (1 << ordinal) != 0 {
            let word = self.words.as_slice()[(self.low & below(ordinal)).count_ones() as usize];
            return Some(Compact::of_low_word(ordinal, word).mark(sent_at));
        }
        let (run, tail) = self.run_and_tail();
        for words in [run, tail] {
            if let Ok(i) = search_pairs(words, ordinal) {
                return Some(Compact::from_words(&words[2 * i..]).mark(sent_at));
            }
        }
        let outliers = self.outliers();
        outliers.binary_search_by_key(&ordinal, |r| r.ordinal).ok().map(|i| outliers[i])
    }

    /// Adds a read; false (and nothing changes) if its ordinal has read.
    pub(crate) fn insert(&mut self, mark: ReadMark, sent_at: u64) -> bool {
        let o = mark.ordinal;
        if o < LOW_ORDINALS && self.low & (1 << o) != 0 {
            return false;
        }
        let low_count = self.low_count();
        // Where it would go among the compact readers: in the run, or in
        // the tail once the run has `TAIL_FROM`. Searched only if there
        // are any (in a small group, usually none).
        let (compact_at, into_tail) = if self.words.len() > low_count {
            let (run, tail) = self.run_and_tail();
            let Err(in_run) = search_pairs(run, o) else { return false };
            if tail.is_empty() && run.len() / 2 < TAIL_FROM {
                (in_run, false)
            } else {
                match search_pairs(tail, o) {
                    Ok(_) => return false,
                    Err(at) => (run.len() / 2 + at, true),
                }
            }
        } else {
            (0, false)
        };
        if self.outliers().binary_search_by_key(&o, |r| r.ordinal).is_ok() {
            return false;
        }
        match Compact::of(mark, sent_at) {
            Some(c) => match c.low_word() {
                Some(word) => {
                    self.words.insert((self.low & below(o)).count_ones() as usize, &[word]);
                    self.low |= 1 << o;
                }
                None => {
                    self.words.insert(low_count + 2 * compact_at, &c.words());
                    if into_tail {
                        let side = self.side.get_or_insert_default();
                        side.tail += 1;
                        let run = (self.words.len() - low_count) / 2 - side.tail;
                        if side.tail > TAIL_MIN.max((2 * run).isqrt()) {
                            self.merge_tail();
                        }
                    }
                }
            },
            None => {
                let side = self.side.get_or_insert_default();
                side.outliers.insert(side.outliers.partition_point(|r| r.ordinal < o), mark);
            }
        }
        // Most messages have no side list, and few of those that do, pages.
        if let Some(side) = self.side.as_deref_mut() {
            if let Some(pages) = side.pages.as_deref_mut() {
                pages.open.push(o);
            }
        }
        true
    }

    /// Every read from ordinal `start` on, in ordinal order.
    pub(crate) fn iter_from(&self, start: u32, sent_at: u64) -> ReadsFrom<'_> {
        let (low, low_words) = if start < LOW_ORDINALS {
            let skipped = (self.low & below(start)).count_ones() as usize;
            (self.low & !below(start), &self.low_words()[skipped..])
        } else {
            (0, &[][..])
        };
        let (run, tail) = self.run_and_tail();
        let from = |words: &[u32]| match search_pairs(words, start) {
            Ok(i) | Err(i) => 2 * i,
        };
        let outliers = self.outliers();
        let outliers_from = outliers.partition_point(|r| r.ordinal < start);
        ReadsFrom {
            low,
            low_words,
            compact: &run[from(run)..],
            tail: &tail[from(tail)..],
            outliers: &outliers[outliers_from..],
            sent_at,
        }
    }

    /// Every read, in ordinal order.
    pub(crate) fn iter(&self, sent_at: u64) -> ReadsFrom<'_> {
        // `iter_from(0)` without its searches: a recount walks every read.
        let low_words = self.low_words();
        let (compact, tail) = self.run_and_tail();
        ReadsFrom { low: self.low, low_words, compact, tail, outliers: self.outliers(), sent_at }
    }

    /// Every low and compact reader, in ordinal order, compact: what the
    /// persisted form's first list holds.
    fn compact_in_order(&self) -> impl Iterator<Item = Compact> + '_ {
        let mut reads = self.iter(0);
        reads.outliers = &[];
        std::iter::from_fn(move || reads.next_compact())
    }

    #[inline]
    fn pages(&self) -> Option<&Pages> {
        self.side.as_deref()?.pages.as_deref()
    }

    /// Pages the readers are stored in besides the message (0: none, all
    /// are stored with it).
    #[inline]
    pub(crate) fn sealed_pages(&self) -> u32 {
        self.pages().map_or(0, |p| p.sealed)
    }

    /// At a flush's staging: drops the page the last staging sealed (it is
    /// written), and seals the readers since the last page into one once
    /// they fill it (the first time, all of them); whether it sealed one.
    /// Inline, out of line past the check most messages stop at: no side
    /// list, too few words.
    #[inline(always)]
    pub(crate) fn seal_full_page(&mut self) -> bool {
        (self.side.is_some() || self.words.len() >= PAGE_READERS) && self.seal_full_page_checked()
    }

    #[inline(never)]
    fn seal_full_page_checked(&mut self) -> bool {
        if let Some(pages) = self.side.as_deref_mut().and_then(|s| s.pages.as_deref_mut()) {
            pages.sealing.clear();
            pages.sealing_all = false;
            if pages.open.len() < PAGE_READERS {
                return false;
            }
            // The emptied buffer takes the next page's ordinals.
            std::mem::swap(&mut pages.open, &mut pages.sealing);
            pages.sealed += 1;
        } else if self.len() >= PAGE_READERS {
            let pages = Pages { sealed: 1, sealing_all: true, ..Pages::default() };
            self.side.get_or_insert_default().pages = Some(Box::new(pages));
        } else {
            return false;
        }
        true
    }

    /// The readers a message's value holds, as its field: those since its
    /// last page, or all if it has none.
    pub(crate) fn encode_stored(&self, sent_at: u64, out: &mut Vec<u8>) {
        match self.pages() {
            None => crate::stored_form::put_bytes_with(out, |out| self.encode_into(out)),
            Some(pages) => crate::stored_form::put_bytes_with(out, |out| self.encode_some(&pages.open, sent_at, out)),
        }
    }

    /// The page the staging in progress sealed, if any: its readers
    /// appended to `out` as a reader list, and its number.
    #[inline]
    pub(crate) fn encode_sealed_page(&self, sent_at: u64, out: &mut Vec<u8>) -> Option<u32> {
        self.encode_page(self.pages()?, sent_at, out)
    }

    #[inline(never)]
    fn encode_page(&self, pages: &Pages, sent_at: u64, out: &mut Vec<u8>) -> Option<u32> {
        match (pages.sealing_all, pages.sealing.is_empty()) {
            // Nothing is read between a seal and its page's encoding.
            (true, _) => self.encode_into(out),
            (false, false) => self.encode_some(&pages.sealing, sent_at, out),
            (false, true) => return None,
        }
        Some(pages.sealed - 1)
    }

    /// The reads of `ordinals` (each has read) as a reader list.
    fn encode_some(&self, ordinals: &[u32], sent_at: u64, out: &mut Vec<u8>) {
        let mut sorted = ordinals.to_vec();
        sorted.sort_unstable();
        let (mut compact, mut outliers) = (Vec::with_capacity(sorted.len()), Vec::new());
        for o in sorted {
            let mark = self.get(o, sent_at).expect("a page's ordinals have read");
            match Compact::of(mark, sent_at) {
                Some(c) => compact.push(c),
                None => outliers.push(mark),
            }
        }
        encode_list(compact.len(), compact.into_iter(), &outliers, out);
    }

    /// A restored message's readers, stored with it, when `pages` more
    /// pages of them are stored apart (restored by [`Self::restore_page`]).
    pub(crate) fn expect_pages(&mut self, pages: u32) {
        if pages > 0 {
            let open = self.iter(0).map(|r| r.ordinal).collect();
            let pages = Pages { sealed: pages, open, ..Pages::default() };
            self.side.get_or_insert_default().pages = Some(Box::new(pages));
        }
    }

    /// Adds the readers of stored page `page`, the next due.
    pub(crate) fn restore_page(&mut self, page: u32, bytes: &[u8], sent_at: u64) -> Result<(), String> {
        let Some(pages) = self.side.as_deref_mut().and_then(|s| s.pages.as_deref_mut()) else {
            return Err(format!("reader page {page} of a message stored with none"));
        };
        if page != pages.restored || page >= pages.sealed {
            return Err(format!("reader page {page} where page {} of {} was due", pages.restored, pages.sealed));
        }
        pages.restoring.extend(Readers::decode(bytes)?.iter(sent_at));
        pages.restored += 1;
        if pages.restored < pages.sealed {
            return Ok(());
        }
        // The last page: every reader in one list, sorted.
        let mut marks = std::mem::take(&mut pages.restoring);
        marks.extend(self.iter(sent_at));
        marks.sort_unstable_by_key(|r| r.ordinal);
        if let Some(twice) = marks.windows(2).find(|w| w[0].ordinal == w[1].ordinal) {
            return Err(format!("ordinal {} read twice in the message and its reader pages", twice[0].ordinal));
        }
        let (mut compact, mut outliers) = (Vec::with_capacity(marks.len()), Vec::new());
        for mark in marks {
            match Compact::of(mark, sent_at) {
                Some(c) => compact.push(c),
                None => outliers.push(mark),
            }
        }
        let pages = self.side.as_deref_mut().and_then(|s| s.pages.take());
        *self = Readers::from_sorted(&compact, outliers);
        self.side.get_or_insert_default().pages = pages;
        Ok(())
    }

    /// Why the readers are not whole, if they are not: a stored page not
    /// restored.
    pub(crate) fn check_restored(&self) -> Result<(), String> {
        match self.pages() {
            Some(p) if p.restored < p.sealed => Err(format!("{} of {} reader pages stored", p.restored, p.sealed)),
            _ => Ok(()),
        }
    }
}

/// Reads in ordinal order: the three forms (and the compact readers' run
/// and tail) merged.
pub(crate) struct ReadsFrom<'a> {
    /// Low readers not yet returned, and their words.
    low: u64,
    low_words: &'a [u32],
    /// Compact readers' words not yet returned: the run's and the tail's.
    compact: &'a [u32],
    tail: &'a [u32],
    outliers: &'a [ReadMark],
    sent_at: u64,
}

impl ReadsFrom<'_> {
    /// The next low or compact reader, if it comes before the next outlier.
    #[inline(always)]
    fn next_compact(&mut self) -> Option<Compact> {
        if self.low != 0 {
            let o = self.low.trailing_zeros();
            // Usually the only form left: then this is next.
            let before = |words: &[u32]| words.first().is_none_or(|&w| o < w & !HIDDEN);
            let first =
                before(self.compact) && before(self.tail) && self.outliers.first().is_none_or(|r| o < r.ordinal);
            if first {
                let (&word, rest) = self.low_words.split_first()?;
                self.low &= self.low - 1;
                self.low_words = rest;
                return Some(Compact::of_low_word(o, word));
            }
        }
        // The next compact reader is the run's first or the tail's (which
        // is usually empty).
        let from_tail = match (self.compact.first(), self.tail.first()) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(&run), Some(&tail)) => tail & !HIDDEN < run & !HIDDEN,
        };
        let next = if from_tail { self.tail } else { self.compact };
        let &w = next.first()?;
        if self.outliers.first().is_some_and(|r| r.ordinal < w & !HIDDEN) {
            return None;
        }
        let c = Compact::from_words(next);
        match from_tail {
            true => self.tail = &self.tail[2..],
            false => self.compact = &self.compact[2..],
        }
        Some(c)
    }
}

impl Iterator for ReadsFrom<'_> {
    type Item = ReadMark;

    // Always: a recount's loop over a few readers is mostly this.
    #[inline(always)]
    fn next(&mut self) -> Option<ReadMark> {
        if let Some(c) = self.next_compact() {
            return Some(c.mark(self.sent_at));
        }
        let (r, rest) = self.outliers.split_first()?;
        self.outliers = rest;
        Some(*r)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.low.count_ones() as usize + (self.compact.len() + self.tail.len()) / 2 + self.outliers.len();
        (n, Some(n))
    }
}

// ---- persisted form ----

use crate::stored_form::{put_leb128 as put_varint, take_leb128, Leb128Error};

/// Appends a reader list in the persisted form: the `compact_count`
/// compact readers, sorted by ordinal, then the outliers, sorted by
/// ordinal. Inline: each caller's iterator then loops as a hand-written one.
#[inline(always)]
fn encode_list(compact_count: usize, compact: impl Iterator<Item = Compact>, outliers: &[ReadMark], out: &mut Vec<u8>) {
    out.reserve(2 + 3 * compact_count + 12 * outliers.len());
    put_varint(out, compact_count as u64);
    let (mut next_ordinal, mut last_offset) = (0u32, OFFSET_BIAS as i64);
    for c in compact {
        let gap = u64::from(c.ordinal() - next_ordinal);
        put_varint(out, gap << 1 | u64::from(c.hidden()));
        put_varint(out, zigzag(i64::from(c.offset) - last_offset));
        next_ordinal = c.ordinal() + 1;
        last_offset = i64::from(c.offset);
    }
    put_varint(out, outliers.len() as u64);
    for r in outliers {
        put_varint(out, u64::from(r.ordinal));
        put_varint(out, r.read_at);
        out.push(u8::from(r.hidden));
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// Reads the persisted form, refusing anything [`Readers::encode`] could
/// not have written.
struct Decoder<'a> {
    bytes: &'a [u8],
}

impl Decoder<'_> {
    fn varint(&mut self) -> Result<u64, &'static str> {
        take_leb128(&mut self.bytes).map_err(|e| match e {
            Leb128Error::Truncated => "reader list ends inside a number",
            Leb128Error::TooLarge => "number too large",
        })
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        u32::try_from(self.varint()?).map_err(|_| "value past u32 in the reader list")
    }

    /// A count, bounded by what the remaining bytes could hold (at least
    /// one byte per entry), so a corrupt count cannot reserve gigabytes.
    fn count(&mut self) -> Result<usize, &'static str> {
        let n = self.varint()?;
        usize::try_from(n).ok().filter(|&n| n <= self.bytes.len()).ok_or("reader count past the list's end")
    }
}

impl Readers {
    /// The persisted form (see the module docs), in a fresh buffer.
    #[cfg(test)]
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// The persisted form, appended to `out`.
    fn encode_into(&self, out: &mut Vec<u8>) {
        let compact_count = self.words.len() - self.compact_words().len() / 2;
        encode_list(compact_count, self.compact_in_order(), self.outliers(), out);
    }

    fn decode(bytes: &[u8]) -> Result<Readers, &'static str> {
        let mut d = Decoder { bytes };
        let n = d.count()?;
        let mut compact = Vec::with_capacity(n);
        let (mut next_ordinal, mut last_offset) = (0u64, OFFSET_BIAS as i64);
        for _ in 0..n {
            let word = d.varint()?;
            let ordinal = next_ordinal.checked_add(word >> 1).filter(|&o| o < u64::from(HIDDEN));
            let ordinal = ordinal.ok_or("compact reader's ordinal past 2^31")? as u32;
            let offset = last_offset.checked_add(unzigzag(d.varint()?)).ok_or("read time out of range")?;
            let offset = u32::try_from(offset).map_err(|_| "read time out of range")?;
            let hidden = if word & 1 == 1 { HIDDEN } else { 0 };
            compact.push(Compact { ordinal_and_hidden: ordinal | hidden, offset });
            next_ordinal = u64::from(ordinal) + 1;
            last_offset = i64::from(offset);
        }
        let n = d.count()?;
        let mut outliers = Vec::with_capacity(n);
        for _ in 0..n {
            let ordinal = d.u32()?;
            let read_at = d.varint()?;
            let hidden = match d.bytes.split_first() {
                Some((&flag @ (0 | 1), rest)) => {
                    d.bytes = rest;
                    flag == 1
                }
                _ => return Err("bad hidden flag in the reader list"),
            };
            if outliers.last().is_some_and(|r: &ReadMark| r.ordinal >= ordinal)
                || compact.binary_search_by_key(&ordinal, |c| c.ordinal()).is_ok()
            {
                return Err("reader ordinals out of order or repeated");
            }
            outliers.push(ReadMark { ordinal, read_at, hidden });
        }
        if !d.bytes.is_empty() {
            return Err("bytes after the reader list");
        }
        Ok(Readers::from_sorted(&compact, outliers))
    }

    /// The readers `compact` and `outliers`, each sorted by ordinal, no
    /// ordinal in both.
    fn from_sorted(compact: &[Compact], outliers: Vec<ReadMark>) -> Readers {
        // Each compact reader as a low one where it fits: the low ones'
        // words first, then the rest's, each in ordinal order.
        let low_count = compact.iter().filter(|c| c.low_word().is_some()).count();
        let (mut low, mut words) = (0u64, Words::new());
        words.reserve(low_count + 2 * (compact.len() - low_count));
        for c in compact {
            if let Some(word) = c.low_word() {
                low |= 1 << c.ordinal();
                words.extend_from_slice(&[word]);
            }
        }
        for c in compact.iter().filter(|c| c.low_word().is_none()) {
            words.extend_from_slice(&c.words());
        }
        let side = (!outliers.is_empty()).then(|| Box::new(Side { outliers, ..Side::default() }));
        Readers { low, words, side }
    }
}

thread_local! {
    /// One encoding buffer per thread: a flush encodes thousands of messages.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Serialize for Readers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SCRATCH.with_borrow_mut(|buf| {
            self.encode_into(buf);
            let result = serializer.serialize_bytes(buf);
            buf.clear();
            buf.shrink_to(4096);
            result
        })
    }
}

impl<'de> Deserialize<'de> for Readers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = Readers;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a reader list as bytes")
            }

            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Readers, E> {
                Readers::decode(bytes).map_err(E::custom)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Readers, A::Error> {
                let mut bytes = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    bytes.push(b);
                }
                Readers::decode(&bytes).map_err(serde::de::Error::custom)
            }
        }
        deserializer.deserialize_bytes(Bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SENT_AT: u64 = 1_732_200_000_000;

    fn mark(ordinal: u32, read_at: u64, hidden: bool) -> ReadMark {
        ReadMark { ordinal, read_at, hidden }
    }

    fn roundtrip(readers: &Readers) -> Readers {
        let bytes = bincode::serde::encode_to_vec(readers, bincode::config::standard()).unwrap();
        let mut direct = vec![9];
        readers.encode_stored(SENT_AT, &mut direct);
        assert_eq!(direct[1..], bytes[..], "the direct form is the serde form's bytes");
        let (back, used) = bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(used, bytes.len());
        // A self-describing format hands the bytes back as a sequence.
        let json = serde_json::to_string(readers).unwrap();
        assert_eq!(&serde_json::from_str::<Readers>(&json).unwrap(), readers, "{json}");
        back
    }

    #[test]
    fn reads_far_from_the_send_time_and_huge_ordinals_are_kept_whole() {
        let mut r = Readers::default();
        let reads = [
            mark(5, SENT_AT + 1_500, false),
            mark(2, SENT_AT - 40 * 86_400_000, true),
            mark(HIDDEN + 7, SENT_AT + 3, false),
            mark(9, u64::MAX, false),
            mark(1, 0, true),
            mark(3, SENT_AT + (1 << 31) - 1, false),
            mark(4, SENT_AT - (1 << 31) - 1, false),
        ];
        for m in reads {
            assert!(r.insert(m, SENT_AT));
        }
        assert!(!r.insert(mark(2, SENT_AT, false), SENT_AT), "an outlier's ordinal is a duplicate too");
        assert!(!r.insert(mark(5, 0, false), SENT_AT), "a compact reader's ordinal is a duplicate too");
        let mut sorted = reads.to_vec();
        sorted.sort_by_key(|m| m.ordinal);
        assert_eq!(r.iter(SENT_AT).collect::<Vec<_>>(), sorted);
        assert_eq!(r.iter_from(4, SENT_AT).map(|m| m.ordinal).collect::<Vec<_>>(), [4, 5, 9, HIDDEN + 7]);
        assert_eq!(r.get(2, SENT_AT), Some(reads[1]));
        assert_eq!(r.get(5, SENT_AT), Some(reads[0]));
        assert_eq!(r.get(6, SENT_AT), None);
        assert_eq!((r.len(), r.hidden_count()), (7, 2));
        assert_eq!(r.outliers().len(), 5, "only the reads within 2^31 ms of the send time are compact");
        assert_eq!((r.low_count(), r.compact_words().len()), (1, 2), "within 2^30 ms, a low ordinal is a bit");
        assert_eq!(roundtrip(&r), r);
    }

    #[test]
    fn consecutive_readers_within_seconds_take_a_few_bytes_each() {
        let mut r = Readers::default();
        for o in 1..=100u32 {
            r.insert(mark(o, SENT_AT + 1_000 + u64::from(o) * 700, o % 10 == 0), SENT_AT);
        }
        assert!(r.side.is_none());
        let bytes = r.encode();
        assert!(bytes.len() <= 2 + 100 * 3 + 1, "{} bytes for 100 readers", bytes.len());
        assert_eq!(roundtrip(&r), r);
    }

    #[test]
    fn a_small_groups_readers_take_four_bytes_each() {
        let mut r = Readers::default();
        for o in [9, 1, 30, 2, 17, 5, 31, 12] {
            assert!(r.insert(mark(o, SENT_AT + 60_000 * u64::from(o), o == 5), SENT_AT));
        }
        assert_eq!(r.heap_bytes(), 8 * 4);
        assert_eq!((r.len(), r.hidden_count()), (8, 1));
        assert_eq!(r.get(5, SENT_AT), Some(mark(5, SENT_AT + 300_000, true)));
        assert_eq!(r.iter_from(12, SENT_AT).map(|m| m.ordinal).collect::<Vec<_>>(), [12, 17, 30, 31]);
        // A member who joined late, past the bits.
        assert!(r.insert(mark(64, SENT_AT + 1, false), SENT_AT));
        assert_eq!(r.heap_bytes(), 16 * 4, "two words for a reader past the bits, and room to grow");
        assert_eq!(r.iter_from(31, SENT_AT).map(|m| m.ordinal).collect::<Vec<_>>(), [31, 64]);
        assert_eq!(roundtrip(&r), r);
    }

    #[test]
    fn corrupt_bytes_are_refused_not_trusted() {
        let mut r = Readers::default();
        r.insert(mark(1, SENT_AT, false), SENT_AT);
        r.insert(mark(3, u64::MAX, false), SENT_AT);
        let good = r.encode();
        assert_eq!(Readers::decode(&good), Ok(r));
        assert!(Readers::decode(&good[..good.len() - 1]).is_err(), "truncated");
        assert!(Readers::decode(&[good.as_slice(), &[0]].concat()).is_err(), "trailing bytes");
        assert!(Readers::decode(&[0xff; 12]).is_err(), "an endless varint");
        assert!(Readers::decode(&[200, 1]).is_err(), "a count past the end");
        // An outlier repeating a compact ordinal.
        let mut twice = Readers::default();
        twice.insert(mark(1, SENT_AT, false), SENT_AT);
        let mut bytes = twice.encode();
        *bytes.last_mut().unwrap() = 1;
        bytes.extend([1, 5, 0]);
        assert_eq!(Readers::decode(&bytes), Err("reader ordinals out of order or repeated"));
    }

    proptest! {
        /// Against the plain sorted list of 16-byte marks it replaces.
        #[test]
        fn behaves_like_a_sorted_list_of_marks(
            sent_at in prop_oneof![Just(SENT_AT), Just(0u64), Just(u64::MAX)],
            reads in proptest::collection::vec(
                (prop_oneof![0u32..64, 60u32..70, any::<u32>()],
                 prop_oneof![
                    SENT_AT - 5_000..SENT_AT + 5_000_000,
                    // The edges of the low readers' window.
                    SENT_AT - (1 << 30) - 2..SENT_AT - (1 << 30) + 2,
                    SENT_AT + (1 << 30) - 2..SENT_AT + (1 << 30) + 2,
                    any::<u64>(),
                 ],
                 any::<bool>()),
                0..80),
            start in 0u32..70,
        ) {
            let mut readers = Readers::default();
            let mut model: Vec<ReadMark> = Vec::new();
            for (ordinal, read_at, hidden) in reads {
                let m = mark(ordinal, read_at, hidden);
                let fresh = !model.iter().any(|r| r.ordinal == ordinal);
                prop_assert_eq!(readers.insert(m, sent_at), fresh);
                if fresh {
                    model.push(m);
                    model.sort_by_key(|r| r.ordinal);
                }
                prop_assert_eq!(readers.get(ordinal, sent_at), model.iter().find(|r| r.ordinal == ordinal).copied());
            }
            prop_assert_eq!(readers.iter(sent_at).collect::<Vec<_>>(), model.clone());
            let from: Vec<ReadMark> = model.iter().filter(|r| r.ordinal >= start).copied().collect();
            prop_assert_eq!(readers.iter_from(start, sent_at).collect::<Vec<_>>(), from);
            prop_assert_eq!(readers.len(), model.len());
            prop_assert_eq!(readers.highest_ordinal(), model.last().map(|r| r.ordinal));
            prop_assert_eq!(readers.hidden_count(), model.iter().filter(|r| r.hidden).count());
            prop_assert_eq!(roundtrip(&readers), readers.clone());
            // One form per set of reads, whatever the order they came in.
            let mut backwards = Readers::default();
            for m in model.iter().rev() {
                prop_assert!(backwards.insert(*m, sent_at));
            }
            prop_assert_eq!(backwards, readers);
        }

        /// A message with up to 1,500 readers past the low ordinals: the
        /// run, the tail and their merges, against a map.
        #[test]
        fn many_readers_behave_like_a_map_of_marks(
            reads in proptest::collection::vec(
                (prop_oneof![64u32..3_000, 0u32..64, 64u32..100_000],
                 prop_oneof![9 => SENT_AT..SENT_AT + 3_600_000, 1 => any::<u64>()],
                 proptest::bool::weighted(0.1)),
                0..1_500),
            start in 0u32..3_000,
        ) {
            let mut readers = Readers::default();
            let mut model = std::collections::BTreeMap::new();
            for (ordinal, read_at, hidden) in reads {
                let m = mark(ordinal, read_at, hidden);
                let fresh = !model.contains_key(&ordinal);
                prop_assert_eq!(readers.insert(m, SENT_AT), fresh);
                model.entry(ordinal).or_insert(m);
                prop_assert_eq!(readers.get(ordinal, SENT_AT), Some(model[&ordinal]));
                prop_assert_eq!(readers.get(ordinal + 1, SENT_AT), model.get(&(ordinal + 1)).copied());
            }
            let all: Vec<ReadMark> = model.values().copied().collect();
            prop_assert_eq!(readers.iter(SENT_AT).collect::<Vec<_>>(), all.clone());
            let from: Vec<ReadMark> = model.range(start..).map(|(_, m)| *m).collect();
            prop_assert_eq!(readers.iter_from(start, SENT_AT).collect::<Vec<_>>(), from);
            prop_assert_eq!(readers.len(), model.len());
            prop_assert_eq!(readers.highest_ordinal(), model.keys().last().copied());
            prop_assert_eq!(readers.hidden_count(), all.iter().filter(|r| r.hidden).count());
            let run = readers.compact_words().len() / 2 - readers.tail();
            prop_assert!(readers.tail() <= TAIL_MIN.max((2 * run).isqrt()));
            prop_assert_eq!(roundtrip(&readers), readers.clone());
            let mut in_order = Readers::default();
            for m in &all {
                prop_assert!(in_order.insert(*m, SENT_AT));
            }
            prop_assert_eq!(in_order, readers);
        }
    }

    #[test]
    fn readers_past_the_run_go_to_a_tail_merged_once_it_outgrows_the_root_of_the_run() {
        let mut r = Readers::default();
        // Backwards, so that each would go first in one sorted run.
        for o in (100..100 + TAIL_FROM as u32).rev() {
            r.insert(mark(o, SENT_AT, false), SENT_AT);
        }
        assert_eq!(r.tail(), 0, "up to {TAIL_FROM} compact readers, one run");
        let limit = TAIL_MIN.max((2 * TAIL_FROM).isqrt());
        for k in 0..limit as u32 {
            r.insert(mark(99 - k, SENT_AT, false), SENT_AT);
            assert_eq!(r.tail(), k as usize + 1);
        }
        r.insert(mark(99 - limit as u32, SENT_AT, false), SENT_AT);
        assert_eq!(r.tail(), 0, "merged");
        let ordinals: Vec<u32> = r.iter(SENT_AT).map(|m| m.ordinal).collect();
        assert_eq!(ordinals, (99 - limit as u32..100 + TAIL_FROM as u32).collect::<Vec<_>>());
    }

    /// What a store holds of `readers` after a staging: its value's reader
    /// list, and a page if the staging sealed one.
    fn stage(readers: &mut Readers) -> (Vec<u8>, Option<(u32, Vec<u8>)>) {
        readers.seal_full_page();
        let (mut value, mut page) = (Vec::new(), Vec::new());
        readers.encode_stored(SENT_AT, &mut value);
        let sealed = readers.encode_sealed_page(SENT_AT, &mut page).map(|n| (n, page));
        (value, sealed)
    }

    proptest! {
        /// Readers staged a flush at a time, some flushes sealing a page,
        /// restored from the last value and the pages as a store restores
        /// them, are the live readers; and both seal the same next page.
        #[test]
        fn readers_stored_in_pages_restore_to_the_same_list(
            reads in proptest::collection::vec((0..5_000u32, any::<u16>(), any::<bool>(), 0..4u8), 0..4_000),
            flush_every in 1..700usize,
        ) {
            let read_at = |t: u16, kind: u8| match kind {
                0 => SENT_AT + u64::from(t),
                1 => SENT_AT - u64::from(t) * 1_000,
                // Outside a compact reader's window: kept whole.
                2 => u64::MAX - u64::from(t),
                _ => SENT_AT + (u64::from(t) << 20),
            };
            let (mut live, mut pages) = (Readers::default(), Vec::new());
            // What a message nobody read stores, until a flush stores more.
            let (mut value, _) = stage(&mut live);
            for chunk in reads.chunks(flush_every) {
                for &(o, t, hidden, kind) in chunk {
                    live.insert(mark(o, read_at(t, kind), hidden), SENT_AT);
                }
                let (staged, page) = stage(&mut live);
                value = staged;
                if let Some((n, page)) = page {
                    prop_assert_eq!(n as usize, pages.len(), "pages numbered in turn");
                    pages.push(page);
                }
            }
            prop_assert_eq!(pages.len() as u32, live.sealed_pages());
            prop_assert_eq!(pages.is_empty(), live.len() < PAGE_READERS);
            let (mut restored, _): (Readers, usize) =
                bincode::serde::decode_from_slice(&value, bincode::config::standard()).unwrap();
            restored.expect_pages(pages.len() as u32);
            for (n, page) in pages.iter().enumerate() {
                prop_assert!(restored.check_restored().is_err(), "pages missing");
                restored.restore_page(n as u32, page, SENT_AT).unwrap();
            }
            restored.check_restored().unwrap();
            prop_assert_eq!(&restored, &live);
            prop_assert_eq!(restored.iter(SENT_AT).collect::<Vec<_>>(), live.iter(SENT_AT).collect::<Vec<_>>());
            // Read on by as many as fill a page: each stores the same.
            for o in 5_000..5_000 + PAGE_READERS as u32 {
                live.insert(mark(o, SENT_AT + u64::from(o), o % 7 == 0), SENT_AT);
                restored.insert(mark(o, SENT_AT + u64::from(o), o % 7 == 0), SENT_AT);
            }
            let (live_value, live_page) = stage(&mut live);
            let (restored_value, restored_page) = stage(&mut restored);
            prop_assert_eq!(live_value, restored_value);
            prop_assert_eq!(live_page.clone(), restored_page);
            prop_assert!(live_page.is_some(), "a page's worth since the last");
        }
    }

    #[test]
    fn a_page_that_repeats_a_reader_or_comes_out_of_turn_is_refused() {
        let mut live = Readers::default();
        for o in 0..PAGE_READERS as u32 {
            live.insert(mark(o, SENT_AT, false), SENT_AT);
        }
        let (_, page) = stage(&mut live);
        let (n, page) = page.expect("a page's worth");
        assert_eq!(n, 0);
        let restore = |pages: u32, restored: &[(u32, &[u8])]| {
            let mut r = Readers::default();
            r.insert(mark(3, SENT_AT, false), SENT_AT);
            r.expect_pages(pages);
            restored
                .iter()
                .try_for_each(|&(n, bytes)| r.restore_page(n, bytes, SENT_AT))
                .and_then(|()| r.check_restored())
        };
        let err = restore(1, &[(0, &page)]).unwrap_err();
        assert!(err.contains("ordinal 3 read twice"), "{err}");
        let err = restore(2, &[(1, &page)]).unwrap_err();
        assert!(err.contains("reader page 1 where page 0 of 2 was due"), "{err}");
        let err = restore(2, &[]).unwrap_err();
        assert!(err.contains("0 of 2 reader pages stored"), "{err}");
        let mut unpaged = Readers::default();
        let err = unpaged.restore_page(0, &page, SENT_AT).unwrap_err();
        assert!(err.contains("of a message stored with none"), "{err}");
    }
}
