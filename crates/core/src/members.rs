//! A group's member names by ordinal: every name in one buffer, and an index
//! from name to ordinal that holds only ordinals.
//!
//! Looking a reader up is the fold's commonest step. With a map of owned
//! strings each probe follows a pointer to a separate heap string, and the
//! tables and strings of a thousand busy groups of 32 outgrow a 2 MiB L2.
//! Here a group's names sit side by side, the index holds 4 bytes per
//! member, and a lookup touches a few adjacent cache lines. By the
//! structures' sizes a member costs about 22 bytes instead of about 90,
//! which matters most for 100,000-member groups. An ordinal can change
//! hands ([`MemberNames::rename`]); the name it gives up stays in the
//! buffer until such names are half of it.

use crate::sharded::hash_of;
use hashbrown::HashTable;

/// Member names by ordinal, with a name -> ordinal index.
#[derive(Debug, Default)]
pub(crate) struct MemberNames {
    /// Every name, back to back, and names given up since the last
    /// compaction.
    bytes: String,
    /// Start and end of each ordinal's name in `bytes`. 4 bytes suffice:
    /// ids are at most 128 bytes, and the buffer is compacted once names
    /// given up are half of it.
    spans: Vec<[u32; 2]>,
    /// Bytes of names given up ([`Self::rename`]) still in `bytes`.
    given_up: usize,
    /// Ordinals, hashed by their name.
    index: HashTable<u32>,
}

/// The name of `ordinal` in a buffer of names and their spans.
#[inline(always)]
fn name_in<'a>(bytes: &'a str, spans: &[[u32; 2]], ordinal: u32) -> &'a str {
    let [start, end] = spans[ordinal as usize];
    // As bytes, then as the string they are: slicing the `str` itself
    // checks both ends for a character boundary on every lookup, and every
    // span is that of a whole name pushed as a `str`.
    let name = &bytes.as_bytes()[start as usize..end as usize];
    // SAFETY: `bytes` is names pushed whole, and a span is where one began
    // and ended, so the slice is one of them: UTF-8.
    unsafe { std::str::from_utf8_unchecked(name) }
}

impl MemberNames {
    /// Ordinals handed out so far.
    pub(crate) fn len(&self) -> usize {
        self.spans.len()
    }

    /// The name of `ordinal`; panics if it was never handed out.
    pub(crate) fn name(&self, ordinal: u32) -> &str {
        name_in(&self.bytes, &self.spans, ordinal)
    }

    /// The ordinal of `name`, if it has one. Inlined where it is called, with
    /// the table's key compare: left to the compiler, that compare became a
    /// call of its own when an unrelated module was added (counted: +26
    /// instructions a hot read).
    #[inline]
    pub(crate) fn ordinal(&self, name: &str) -> Option<u32> {
        self.index.find(hash_of(name), |&o| receiptd_wire::same_str(self.name(o), name)).copied()
    }

    /// Hands `name` the next ordinal. The caller checks it has none yet.
    pub(crate) fn push(&mut self, name: &str) -> u32 {
        let ordinal = self.spans.len() as u32;
        let span = self.append(name);
        self.spans.push(span);
        self.index_as(ordinal, name);
        ordinal
    }

    /// Gives `ordinal` to `name`, which holds none, in place of the name
    /// it had: a member who left and whom no live message's reads name.
    pub(crate) fn rename(&mut self, ordinal: u32, name: &str) {
        let old = self.name(ordinal);
        let (old_hash, old_len) = (hash_of(old), old.len());
        if let Ok(entry) = self.index.find_entry(old_hash, |&o| o == ordinal) {
            entry.remove();
        }
        self.given_up += old_len;
        let span = self.append(name);
        self.spans[ordinal as usize] = span;
        self.index_as(ordinal, name);
        if self.given_up > 4096 && 2 * self.given_up > self.bytes.len() {
            self.compact();
        }
    }

    fn append(&mut self, name: &str) -> [u32; 2] {
        let start = self.bytes.len() as u32;
        self.bytes.push_str(name);
        [start, self.bytes.len() as u32]
    }

    fn index_as(&mut self, ordinal: u32, name: &str) {
        let MemberNames { bytes, spans, index, .. } = self;
        index.insert_unique(hash_of(name), ordinal, |&o| hash_of(name_in(bytes, spans, o)));
    }

    /// Drops the names given up: the rest, back to back in ordinal order.
    fn compact(&mut self) {
        let mut bytes = String::with_capacity(self.bytes.len() - self.given_up);
        for span in &mut self.spans {
            let start = bytes.len() as u32;
            bytes.push_str(&self.bytes[span[0] as usize..span[1] as usize]);
            *span = [start, bytes.len() as u32];
        }
        self.bytes = bytes;
        self.given_up = 0;
    }

    /// Heap bytes held, roughly.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.spans.capacity() * 8 + self.index.capacity() * 5
    }
}

/// Ordinals free to change hands, as bits: taking the lowest, freeing one
/// and taking one back each cost a few instructions (with a `BTreeSet`, a
/// member leaving and rejoining cost about 45 ns more a change). A bit per
/// ordinal handed out.
#[derive(Debug, Default)]
pub(crate) struct FreeOrdinals {
    words: Vec<u64>,
    /// Bits set.
    count: u32,
    /// No bit is set in the words before this one (a `u32`, as word
    /// indexes of `u32` ordinals are, so that a group stays 232 bytes).
    first: u32,
}

impl FreeOrdinals {
    pub(crate) fn insert(&mut self, ordinal: u32) {
        let (word, bit) = (ordinal as usize / 64, 1u64 << (ordinal % 64));
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        if self.words[word] & bit == 0 {
            self.words[word] |= bit;
            self.count += 1;
            self.first = self.first.min(word as u32);
        }
    }

    pub(crate) fn remove(&mut self, ordinal: u32) {
        let (word, bit) = (ordinal as usize / 64, 1u64 << (ordinal % 64));
        if let Some(w) = self.words.get_mut(word) {
            if *w & bit != 0 {
                *w &= !bit;
                self.count -= 1;
            }
        }
    }

    /// Takes the lowest free ordinal.
    pub(crate) fn pop_lowest(&mut self) -> Option<u32> {
        if self.count == 0 {
            return None;
        }
        while self.words[self.first as usize] == 0 {
            self.first += 1;
        }
        let w = &mut self.words[self.first as usize];
        let bit = w.trailing_zeros();
        *w &= *w - 1;
        self.count -= 1;
        Some(self.first * 64 + bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ordinals_round_trip() {
        let mut m = MemberNames::default();
        for k in 0..1_000u32 {
            assert_eq!(m.push(&format!("user-{k}")), k);
        }
        for k in 0..1_000u32 {
            assert_eq!(m.name(k), format!("user-{k}"));
            assert_eq!(m.ordinal(&format!("user-{k}")), Some(k));
        }
        assert_eq!(m.ordinal("user-1000"), None);
        assert_eq!(m.ordinal("user-1"), Some(1), "a prefix of another name is not that name");
        assert!(m.heap_bytes() < 1_000 * 32, "names share one buffer: {} bytes", m.heap_bytes());
    }

    #[test]
    fn names_of_several_bytes_a_character_come_back_whole() {
        let mut m = MemberNames::default();
        let names = ["é", "ünïcødé", "", "😀😀", "a"];
        for (k, name) in names.iter().enumerate() {
            assert_eq!(m.push(name), k as u32);
        }
        for (k, name) in names.iter().enumerate() {
            assert_eq!(m.name(k as u32), *name);
            assert_eq!(m.ordinal(name), Some(k as u32));
        }
        assert_eq!(m.ordinal("😀"), None, "half of a name is not a name");
    }

    proptest::proptest! {
        /// Against a `BTreeSet`: the same ordinals, the lowest taken first.
        #[test]
        fn free_ordinals_are_a_set_taken_lowest_first(ops in proptest::collection::vec((0u8..3, 0u32..300), 0..300)) {
            let (mut bits, mut set) = (FreeOrdinals::default(), std::collections::BTreeSet::new());
            for (op, ordinal) in ops {
                match op {
                    0 => {
                        bits.insert(ordinal);
                        set.insert(ordinal);
                    }
                    1 => {
                        bits.remove(ordinal);
                        set.remove(&ordinal);
                    }
                    _ => proptest::prop_assert_eq!(bits.pop_lowest(), set.pop_first()),
                }
                proptest::prop_assert_eq!(bits.count as usize, set.len());
            }
        }
    }

    #[test]
    fn a_renamed_ordinal_answers_to_its_new_name_only() {
        let mut m = MemberNames::default();
        for k in 0..100u32 {
            m.push(&format!("user-{k}"));
        }
        // Enough renames to compact the buffer several times.
        for round in 0..200u32 {
            for k in (0..100u32).step_by(3) {
                m.rename(k, &format!("user-{k}-{round}"));
            }
        }
        for k in 0..100u32 {
            let name = if k % 3 == 0 { format!("user-{k}-199") } else { format!("user-{k}") };
            assert_eq!((m.name(k), m.ordinal(&name)), (name.as_str(), Some(k)));
            assert_eq!(m.ordinal(&format!("user-{k}-198")), None, "a name given up is no one's");
        }
        assert_eq!(m.len(), 100);
        assert!(m.bytes.len() < 2 * 100 * 14 + 4096, "names given up are dropped: {} bytes", m.bytes.len());
    }
}
