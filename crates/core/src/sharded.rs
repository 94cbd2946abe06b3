//! A hash map split into shards, so that growing it rehashes one small shard
//! at a time. A single map of a million messages moves every entry each time
//! it doubles, which stalls the fold (and every query waiting on it) for tens
//! of milliseconds; 256 shards make each such step 256 times smaller.

use rustc_hash::{FxBuildHasher, FxHashMap};
use std::borrow::Borrow;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, Hash};

const SHARDS: usize = 256;

/// A map of `K` to `V` in [`SHARDS`] independent hash maps.
#[derive(Debug, Clone)]
pub struct ShardedMap<K, V> {
    shards: Box<[FxHashMap<K, V>]>,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap { shards: (0..SHARDS).map(|_| FxHashMap::default()).collect() }
    }
}

/// The shard of a key. Bits 24..32 of the hash: the inner maps use the low
/// bits for the bucket and the top 7 for their control bytes, which must
/// still vary inside one shard.
fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
    ((FxBuildHasher.hash_one(key) >> 24) as usize) & (SHARDS - 1)
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    /// The value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[shard_of(key)].get(key)
    }

    /// The value of `key`, mutably.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[shard_of(key)].get_mut(key)
    }

    /// Whether `key` is present.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[shard_of(key)].contains_key(key)
    }

    /// Inserts, returning the value replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.shards[shard_of(&key)].insert(key, value)
    }

    /// Removes `key`, returning its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[shard_of(key)].remove(key)
    }

    /// The entry of `key`.
    pub fn entry(&mut self, key: K) -> Entry<'_, K, V> {
        self.shards[shard_of(&key)].entry(key)
    }

    /// Keeps only the entries `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for shard in self.shards.iter_mut() {
            shard.retain(&mut keep);
        }
    }

    /// Entries, in no particular order.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| s.is_empty())
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Every key, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.shards.iter().flat_map(|s| s.keys())
    }
}

impl<K, V, Q> std::ops::Index<&Q> for ShardedMap<K, V>
where
    K: Hash + Eq + Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    type Output = V;

    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("key present in ShardedMap")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_a_map_and_spreads_over_shards() {
        let mut m: ShardedMap<String, u32> = ShardedMap::default();
        for i in 0..10_000u32 {
            assert_eq!(m.insert(format!("m{i}"), i), None);
        }
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.get("m77"), Some(&77));
        assert_eq!(m["m9999"], 9999);
        *m.get_mut("m5").unwrap() += 1;
        assert_eq!(m.remove("m5"), Some(6));
        assert!(!m.contains_key("m5"));
        *m.entry("m5".into()).or_insert(0) += 3;
        assert_eq!(m.get("m5"), Some(&3));
        m.retain(|_, v| *v % 2 == 0);
        assert_eq!(m.len(), 5_000);
        assert_eq!(m.iter().count(), m.keys().count());
        let busiest = m.shards.iter().map(|s| s.len()).max().unwrap();
        assert!(busiest < 5_000 / SHARDS * 2, "keys spread over the shards: busiest {busiest}");
    }
}
