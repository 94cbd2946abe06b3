//! A group's member names by ordinal: every name in one buffer, and an index
//! from name to ordinal that holds each ordinal with where its name starts.
//!
//! Looking a reader up is the fold's commonest step. With a map of owned
//! strings each probe follows a pointer to a separate heap string, and the
//! tables and strings of a thousand busy groups of 32 outgrow a 2 MiB L2.
//! Here a group's names sit side by side, each after its length, and the
//! index holds 8 bytes per member: the ordinal and its name's place. A
//! lookup in a cold group waits for three cache lines one after the other
//! (the index's control bytes, its slot, the name); with the ordinal alone
//! in the slot it waited for a fourth, the ordinal's place in a table of
//! places, and the drain's poll loop spent a tenth of its time there. By
//! the structures' sizes a member costs about 23 bytes instead of about
//! 90, which matters most for 100,000-member groups. The walk ahead of a
//! read asks for the first two lines before it looks the read's messages
//! up, so that they come in meanwhile ([`MemberNames::prefetch_ordinal`]).
//! An ordinal can change hands ([`MemberNames::rename`]); the name it gives
//! up stays in the buffer until such names are half of it.

use crate::prefetch::{buckets_end, control_bytes, prefetch_line, probe_start};
use crate::sharded::hash_of;
use hashbrown::HashTable;

/// Member names by ordinal, with a name -> ordinal index.
#[derive(Debug, Default)]
pub(crate) struct MemberNames {
    /// Every name after a byte of its length (ids are at most 128 bytes),
    /// back to back, and names given up since the last compaction. Only
    /// whole `str`s are pushed after their length.
    bytes: Vec<u8>,
    /// Where each ordinal's length byte is in `bytes`. 4 bytes suffice:
    /// the buffer is compacted once names given up are half of it.
    starts: Vec<u32>,
    /// Bytes of names given up ([`Self::rename`]) still in `bytes`.
    given_up: usize,
    /// Ordinals with their `starts`, hashed by their name: a probe compares
    /// the name without a look at `starts` first.
    index: HashTable<Slot>,
    /// Where `index` keeps its buckets, as its last insert left them (0:
    /// none yet), for [`Self::prefetch_ordinal`]. Only an insert moves
    /// them, and each records where they are.
    index_end: usize,
}

/// An index entry: an ordinal and where its name starts.
#[derive(Debug, Clone, Copy)]
struct Slot {
    ordinal: u32,
    start: u32,
}

/// The name whose length byte is at `start` in a buffer of names.
#[inline(always)]
fn name_at(bytes: &[u8], start: u32) -> &str {
    let start = start as usize;
    let len = bytes[start] as usize;
    let name = &bytes[start + 1..start + 1 + len];
    // SAFETY: only whole `str`s are pushed after their length byte, and
    // `start` is where one of those length bytes is.
    unsafe { std::str::from_utf8_unchecked(name) }
}

impl MemberNames {
    /// Ordinals handed out so far.
    pub(crate) fn len(&self) -> usize {
        self.starts.len()
    }

    /// The name of `ordinal`; panics if it was never handed out.
    pub(crate) fn name(&self, ordinal: u32) -> &str {
        name_at(&self.bytes, self.starts[ordinal as usize])
    }

    /// The ordinal of `name`, if it has one. Inlined where it is called, with
    /// the table's key compare: left to the compiler, that compare became a
    /// call of its own when an unrelated module was added (counted: +26
    /// instructions a hot read).
    #[inline]
    pub(crate) fn ordinal(&self, name: &str) -> Option<u32> {
        self.ordinal_hashed(hash_of(name), name)
    }

    /// [`Self::ordinal`] of `name`, whose hash ([`hash_of`]) is `hash`.
    #[inline]
    pub(crate) fn ordinal_hashed(&self, hash: u64, name: &str) -> Option<u32> {
        let bytes = &self.bytes;
        self.index.find(hash, |slot| receiptd_wire::same_str(name_at(bytes, slot.start), name)).map(|slot| slot.ordinal)
    }

    /// Asks for the first two of the three lines a lookup of the name of
    /// hash `hash` waits for, one after the other: the index's control
    /// bytes where its probe starts, and the slots there (the name's is
    /// most often among them). It does not wait for them.
    #[inline(always)]
    pub(crate) fn prefetch_ordinal(&self, hash: u64) {
        if self.index_end != 0 {
            let buckets = self.index.num_buckets();
            prefetch_line(control_bytes(self.index_end, buckets, hash) as *const u8);
            prefetch_line(probe_start::<Slot>(self.index_end, buckets, hash) as *const u8);
        }
    }

    /// Hands `name` the next ordinal. The caller checks it has none yet.
    pub(crate) fn push(&mut self, name: &str) -> u32 {
        let ordinal = self.starts.len() as u32;
        let start = self.append(name);
        self.starts.push(start);
        self.index_as(Slot { ordinal, start }, name);
        ordinal
    }

    /// Gives `ordinal` to `name`, which holds none, in place of the name
    /// it had: a member who left and whom no live message's reads name.
    pub(crate) fn rename(&mut self, ordinal: u32, name: &str) {
        let old = self.name(ordinal);
        let (old_hash, old_bytes) = (hash_of(old), 1 + old.len());
        if let Ok(entry) = self.index.find_entry(old_hash, |slot| slot.ordinal == ordinal) {
            entry.remove();
        }
        self.given_up += old_bytes;
        let start = self.append(name);
        self.starts[ordinal as usize] = start;
        self.index_as(Slot { ordinal, start }, name);
        if self.given_up > 4096 && 2 * self.given_up > self.bytes.len() {
            self.compact();
        }
    }

    /// Appends `name` after its length; returns where the length is.
    fn append(&mut self, name: &str) -> u32 {
        let start = self.bytes.len() as u32;
        // The wire refuses longer ids; a longer name would not round-trip.
        let len = u8::try_from(name.len()).expect("an id of at most 128 bytes");
        self.bytes.push(len);
        self.bytes.extend_from_slice(name.as_bytes());
        start
    }

    fn index_as(&mut self, slot: Slot, name: &str) {
        let MemberNames { bytes, index, index_end, .. } = self;
        let entry = index.insert_unique(hash_of(name), slot, |s| hash_of(name_at(bytes, s.start)));
        *index_end = buckets_end(entry.get(), entry.bucket_index());
    }

    /// Drops the names given up: the rest, back to back in ordinal order,
    /// and the index told where each now starts.
    fn compact(&mut self) {
        let mut bytes = Vec::with_capacity(self.bytes.len() - self.given_up);
        for start in &mut self.starts {
            let name = name_at(&self.bytes, *start);
            *start = bytes.len() as u32;
            bytes.push(name.len() as u8);
            bytes.extend_from_slice(name.as_bytes());
        }
        self.bytes = bytes;
        self.given_up = 0;
        for slot in self.index.iter_mut() {
            slot.start = self.starts[slot.ordinal as usize];
        }
    }

    /// Heap bytes held, roughly.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.starts.capacity() * 4 + self.index.capacity() * 9
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
        assert!(m.heap_bytes() < 1_000 * 40, "names share one buffer: {} bytes", m.heap_bytes());
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

    /// [`MemberNames::prefetch_ordinal`] asks for the line of the slot
    /// where a name's probe starts: most names are in it.
    #[test]
    fn names_are_found_where_the_prefetch_asks() {
        let mut m = MemberNames::default();
        let (mut asked, mut in_line) = (0, 0);
        for k in 0..20_000u32 {
            m.push(&format!("u{}", 7 * k + 1));
        }
        for k in 0..20_000u32 {
            let name = format!("u{}", 7 * k + 1);
            let hash = hash_of(name.as_str());
            let buckets = m.index.num_buckets();
            let guess = probe_start::<Slot>(m.index_end, buckets, hash);
            let bytes = &m.bytes;
            let slot = m.index.find(hash, |s| name_at(bytes, s.start) == name).expect("pushed");
            assert_eq!(m.ordinal(&name), Some(k));
            asked += 1;
            in_line += usize::from(slot as *const Slot as usize / 64 == guess / 64);
        }
        // 91% when written; it fails if hashbrown's layout or probe change.
        let share = in_line as f64 / asked as f64;
        assert!(share > 0.8, "slots in the line asked for: {share:.3}");
    }

    proptest::proptest! {
        /// Against a list of owned names: names short and long, with zero
        /// bytes, pushed and renamed (most cases compact the buffer), each
        /// found by its ordinal and its ordinal by it; a name given up is
        /// no one's.
        #[test]
        fn ordinals_and_names_match_a_plain_list(
            ops in proptest::collection::vec((0u8..4, 0u32..64, "[a-c\\x00é]{0,24}"), 1..2000)
        ) {
            let mut m = MemberNames::default();
            let mut model: Vec<String> = Vec::new();
            for (op, which, name) in ops {
                if model.contains(&name) {
                    continue;
                }
                if op == 0 || model.is_empty() {
                    proptest::prop_assert_eq!(m.push(&name), model.len() as u32);
                    model.push(name);
                } else {
                    let ordinal = which % model.len() as u32;
                    m.rename(ordinal, &name);
                    model[ordinal as usize] = name;
                }
            }
            for (ordinal, name) in model.iter().enumerate() {
                proptest::prop_assert_eq!(m.name(ordinal as u32), name.as_str());
                proptest::prop_assert_eq!(m.ordinal(name), Some(ordinal as u32));
            }
            for probe in ["", "a", "abcabcabcab", "abcabcabcabc", "é"] {
                proptest::prop_assert_eq!(m.ordinal(probe), model.iter().position(|n| n == probe).map(|o| o as u32));
            }
        }

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
        assert!(m.bytes.len() < 2 * 100 * 15 + 4096, "names given up are dropped: {} bytes", m.bytes.len());
    }
}
