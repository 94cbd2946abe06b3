//! [`ById`]: a few entries found by a string id, the one found last first.
//!
//! A partition's apps and the settings table's apps are found by app id on
//! every event. Events come in runs of one app (most deployments have a
//! single app), so the entry found last is compared first: a compare of
//! two short ids instead of a hash and a probe. Looking the app up was 9%
//! of the fold's instructions, and the settings' two maps 14% more once an
//! app had its config.

use crate::sharded::hash_of;
use hashbrown::HashTable;
use receiptd_wire::same_str;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// What a [`ById`] finds an entry by.
pub(crate) trait Named {
    /// The entry's id.
    fn name(&self) -> &str;
}

/// Entries in a list with a hash index by id, and the one found last kept
/// as a hint. Entries are never removed.
#[derive(Debug)]
pub(crate) struct ById<T> {
    entries: Vec<T>,
    /// Indexes into `entries`, hashed by id.
    index: HashTable<u32>,
    /// The entry found last. Only a hint, and found through `&self` (the
    /// settings table is read by queries too, each moving it), so an atomic
    /// read and written relaxed: a plain load and store.
    last: AtomicU32,
}

impl<T> Default for ById<T> {
    fn default() -> Self {
        ById { entries: Vec::new(), index: HashTable::new(), last: AtomicU32::new(0) }
    }
}

impl<T: Clone> Clone for ById<T> {
    fn clone(&self) -> Self {
        let last = AtomicU32::new(self.last.load(Relaxed));
        ById { entries: self.entries.clone(), index: self.index.clone(), last }
    }
}

impl<T: Named> ById<T> {
    /// The index of `id`'s entry: the last one found if it is that one, else
    /// by the id's hash.
    #[inline]
    fn find(&self, id: &str) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let last = self.last.load(Relaxed) as usize;
        if self.entries.get(last).is_some_and(|e| same_str(e.name(), id)) {
            return Some(last);
        }
        self.find_by_hash(id)
    }

    #[inline(never)]
    fn find_by_hash(&self, id: &str) -> Option<usize> {
        let entries = &self.entries;
        let i = *self.index.find(hash_of(id), |&i| same_str(entries[i as usize].name(), id))?;
        self.last.store(i, Relaxed);
        Some(i as usize)
    }

    pub(crate) fn get(&self, id: &str) -> Option<&T> {
        self.find(id).map(|i| &self.entries[i])
    }

    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        self.find(id).map(|i| &mut self.entries[i])
    }

    /// `id`'s entry, made by `make` if it has none. Inlined down to the
    /// compare with the entry found last: out of line it took 55
    /// instructions an event (the app of every event), inline 40.
    #[inline(always)]
    pub(crate) fn get_or_insert_with(&mut self, id: &str, make: impl FnOnce() -> T) -> &mut T {
        let i = match self.find(id) {
            Some(i) => i,
            None => self.insert(make),
        };
        &mut self.entries[i]
    }

    /// Adds the entry `make` makes, whose id has none yet. Out of line, so
    /// that a lookup inlines down to the compare.
    #[cold]
    #[inline(never)]
    fn insert(&mut self, make: impl FnOnce() -> T) -> usize {
        let entry = make();
        let ById { entries, index, last } = self;
        let i = entries.len();
        index.insert_unique(hash_of(entry.name()), i as u32, |&j| hash_of(entries[j as usize].name()));
        entries.push(entry);
        *last.get_mut() = i as u32;
        i
    }

    pub(crate) fn iter(&self) -> std::slice::Iter<'_, T> {
        self.entries.iter()
    }

    pub(crate) fn iter_mut(&mut self) -> std::slice::IterMut<'_, T> {
        self.entries.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Named for String {
        fn name(&self) -> &str {
            self
        }
    }

    #[test]
    fn the_entry_found_last_is_not_taken_for_another() {
        let mut by_id = ById::<String>::default();
        let long = format!("app-{}", "x".repeat(crate::INLINE_BYTES));
        let names = ["a", "ab", "b", long.as_str(), "app-"];
        assert!(by_id.get("a").is_none() && by_id.get_mut("a").is_none(), "nothing before the first entry");
        // Interleaved, so that each lookup follows one of another entry.
        for round in 0..3 {
            for (k, name) in names.iter().enumerate() {
                assert_eq!(by_id.get_or_insert_with(name, || name.to_string()), name);
                for other in names {
                    let there = round > 0 || names[..=k].contains(&other);
                    assert_eq!(by_id.get(other).map(String::as_str), there.then_some(other));
                    assert_eq!(by_id.get_mut(other).map(|e| e.as_str()), there.then_some(other));
                }
            }
        }
        assert_eq!(by_id.iter().count(), names.len(), "each entry made once");
        assert!(by_id.get("abc").is_none() && by_id.get("").is_none() && by_id.get("x").is_none());
    }
}
