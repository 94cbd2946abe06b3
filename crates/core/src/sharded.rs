//! A hash map split into shards, each behind its own reader-writer lock.
//!
//! Two reasons. Growing a single map of a million messages moves every entry
//! each time it doubles, which stalls the fold for tens of milliseconds; 256
//! shards make each such step 256 times smaller. And the query API reads
//! while the fold writes: the fold holds one shard for one event (tens of
//! nanoseconds), so a query waits for that at most, never for a whole batch,
//! and never for a fold thread the scheduler has put aside while it held a
//! partition-wide lock.
//!
//! Guards must not nest within one map: a thread that holds a shard and asks
//! for it again (even to read) can deadlock. Take a value, use it, drop it.

use parking_lot::{MappedRwLockReadGuard, MappedRwLockWriteGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use rustc_hash::{FxBuildHasher, FxHashMap};
use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

const SHARDS: usize = 256;

/// A map of `K` to `V` in 256 independently locked hash maps.
#[derive(Debug)]
pub struct ShardedMap<K, V> {
    shards: Box<[RwLock<FxHashMap<K, V>>]>,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap { shards: (0..SHARDS).map(|_| RwLock::new(FxHashMap::default())).collect() }
    }
}

/// The shard of a key. Bits 24..32 of the hash: the inner maps use the low
/// bits for the bucket and the top 7 for their control bytes, which must
/// still vary inside one shard.
fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
    ((FxBuildHasher.hash_one(key) >> 24) as usize) & (SHARDS - 1)
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    fn read_shard<Q: Hash + ?Sized>(&self, key: &Q) -> RwLockReadGuard<'_, FxHashMap<K, V>> {
        self.shards[shard_of(key)].read()
    }

    fn write_shard<Q: Hash + ?Sized>(&self, key: &Q) -> RwLockWriteGuard<'_, FxHashMap<K, V>> {
        self.shards[shard_of(key)].write()
    }

    /// The value of `key`, read-locked until the guard drops.
    pub fn get<Q>(&self, key: &Q) -> Option<MappedRwLockReadGuard<'_, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        RwLockReadGuard::try_map(self.read_shard(key), |shard| shard.get(key)).ok()
    }

    /// The value of `key`, write-locked until the guard drops.
    pub fn get_mut<Q>(&self, key: &Q) -> Option<MappedRwLockWriteGuard<'_, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        RwLockWriteGuard::try_map(self.write_shard(key), |shard| shard.get_mut(key)).ok()
    }

    /// The value of `key`, inserted by `make` if absent; write-locked.
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> MappedRwLockWriteGuard<'_, V> {
        RwLockWriteGuard::map(self.write_shard(&key), |shard| shard.entry(key).or_insert_with(make))
    }

    /// Whether `key` is present.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.read_shard(key).contains_key(key)
    }

    /// Inserts, returning the value replaced.
    pub fn insert(&self, key: K, value: V) -> Option<V> {
        self.write_shard(&key).insert(key, value)
    }

    /// Removes `key`, returning its value.
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.write_shard(key).remove(key)
    }

    /// Keeps only the entries `keep` says yes to, one shard at a time.
    pub fn retain(&self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for shard in self.shards.iter() {
            shard.write().retain(&mut keep);
        }
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.read().is_empty())
    }

    /// Visits every entry, in no particular order, one shard at a time.
    pub fn for_each(&self, mut visit: impl FnMut(&K, &V)) {
        for shard in self.shards.iter() {
            shard.read().iter().for_each(|(k, v)| visit(k, v));
        }
    }

    /// Visits every entry mutably, one shard at a time.
    pub fn for_each_mut(&self, mut visit: impl FnMut(&K, &mut V)) {
        for shard in self.shards.iter() {
            shard.write().iter_mut().for_each(|(k, v)| visit(k, v));
        }
    }
}

impl<K: Hash + Eq + Clone, V> ShardedMap<K, V> {
    /// Every key, cloned, in no particular order.
    pub fn keys(&self) -> Vec<K> {
        let mut keys = Vec::with_capacity(self.len());
        self.for_each(|k, _| keys.push(k.clone()));
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_map_and_spreads_over_shards() {
        let m: ShardedMap<String, u32> = ShardedMap::default();
        for i in 0..10_000u32 {
            assert_eq!(m.insert(format!("m{i}"), i), None);
        }
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.get("m77").as_deref(), Some(&77));
        assert_eq!(*m.get("m9999").unwrap(), 9999);
        *m.get_mut("m5").unwrap() += 1;
        assert_eq!(m.remove("m5"), Some(6));
        assert!(!m.contains_key("m5"));
        *m.get_or_insert_with("m5".into(), || 0) += 3;
        assert_eq!(m.get("m5").as_deref(), Some(&3));
        m.retain(|_, v| *v % 2 == 0);
        assert_eq!(m.len(), 5_000);
        let mut visited = 0;
        m.for_each(|_, _| visited += 1);
        assert_eq!(visited, m.keys().len());
        let busiest = m.shards.iter().map(|s| s.read().len()).max().unwrap();
        assert!(busiest < 5_000 / SHARDS * 2, "keys spread over the shards: busiest {busiest}");
    }

    #[test]
    fn a_reader_of_one_shard_does_not_wait_for_a_writer_of_another() {
        let m: std::sync::Arc<ShardedMap<u32, u32>> = Default::default();
        let a = 0u32;
        let b = (1u32..).find(|k| shard_of(k) != shard_of(&a)).unwrap();
        m.insert(a, 1);
        m.insert(b, 2);
        let held = m.get_mut(&a).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = m.clone();
        std::thread::spawn(move || tx.send(*reader.get(&b).unwrap()).unwrap());
        let read = rx.recv_timeout(std::time::Duration::from_secs(10));
        drop(held);
        assert_eq!(read, Ok(2), "the read of another shard waited for the writer");
    }
}
