//! A group's member names by ordinal: every name in one buffer, and an index
//! from name to ordinal that holds only ordinals.
//!
//! Looking a reader up is the fold's commonest step. With a map of owned
//! strings each probe follows a pointer to a separate heap string, and the
//! tables and strings of a thousand busy groups of 32 outgrow a 2 MiB L2.
//! Here a group's names sit side by side, the index holds 4 bytes per
//! member, and a lookup touches a few adjacent cache lines. By the
//! structures' sizes a member costs about 18 bytes instead of about 90,
//! which matters most for 100,000-member groups.

use crate::sharded::hash_of;
use hashbrown::HashTable;

/// Member names by ordinal, with a name -> ordinal index.
#[derive(Debug, Default)]
pub(crate) struct MemberNames {
    /// Every name, back to back.
    bytes: String,
    /// End of each ordinal's name in `bytes`. 4 bytes suffice: ids are at
    /// most 128 bytes, so 4 GiB of names is over 30 million joins.
    ends: Vec<u32>,
    /// Ordinals, hashed by their name.
    index: HashTable<u32>,
}

/// The name of `ordinal` in a buffer of names and their ends.
fn name_in<'a>(bytes: &'a str, ends: &[u32], ordinal: u32) -> &'a str {
    let i = ordinal as usize;
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    // As bytes, then as the string they are: slicing the `str` itself
    // checks both ends for a character boundary on every lookup, and every
    // end is the end of a whole name pushed as a `str`.
    let name = &bytes.as_bytes()[start..ends[i] as usize];
    // SAFETY: `bytes` is names pushed whole, and `start` and the end are
    // where one began and ended, so the slice is one of them: UTF-8.
    unsafe { std::str::from_utf8_unchecked(name) }
}

impl MemberNames {
    /// Ordinals handed out so far.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The name of `ordinal`; panics if it was never handed out.
    pub(crate) fn name(&self, ordinal: u32) -> &str {
        name_in(&self.bytes, &self.ends, ordinal)
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
        let ordinal = self.ends.len() as u32;
        self.bytes.push_str(name);
        self.ends.push(self.bytes.len() as u32);
        let MemberNames { bytes, ends, index } = self;
        index.insert_unique(hash_of(name), ordinal, |&o| hash_of(name_in(bytes, ends, o)));
        ordinal
    }

    /// Heap bytes held, roughly.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * 4 + self.index.capacity() * 5
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
        assert!(m.heap_bytes() < 1_000 * 24, "names share one buffer: {} bytes", m.heap_bytes());
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
}
