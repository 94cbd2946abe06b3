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

use crate::prefetch::{buckets_end, control_bytes, prefetch_line, probe_start};
use hashbrown::hash_table::{Entry, HashTable};
use parking_lot::{MappedRwLockReadGuard, MappedRwLockWriteGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use receiptd_wire::{same_str, Id};
use rustc_hash::FxBuildHasher;
use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

const SHARDS: usize = 256;

/// A map of `K` to `V` in 256 independently locked hash tables. A key is
/// hashed once per call: the same hash picks the shard and the bucket.
#[derive(Debug)]
pub struct ShardedMap<K, V> {
    shards: Box<[RwLock<HashTable<(K, V)>>]>,
    /// Entries, counted as they go in and out under their shard's lock:
    /// summing the shards took 256 locks, at every flush for a gauge.
    len: AtomicUsize,
    /// Where each shard's table keeps its buckets, as the last insert left
    /// them (0: none yet), for [`Self::prefetch_probe`]. Only a lookup
    /// for an insert moves a table's buckets (growing it), and each insert
    /// records where they are. One that grew the table but inserted
    /// nothing leaves a stale address, which only makes a prefetch useless.
    buckets_ends: Box<[AtomicUsize]>,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
            len: AtomicUsize::new(0),
            buckets_ends: (0..SHARDS).map(|_| AtomicUsize::new(0)).collect(),
        }
    }
}

/// How the maps compare a stored key with the key looked up: as `==`, but
/// strings and ids by [`same_str`], without a call to `memcmp` for short
/// ones (every event looks up a message or a group by id).
pub trait KeyEq {
    /// Whether `self` and `other` are the same key.
    fn key_eq(&self, other: &Self) -> bool;
}

impl KeyEq for str {
    #[inline]
    fn key_eq(&self, other: &str) -> bool {
        same_str(self, other)
    }
}

impl KeyEq for String {
    #[inline]
    fn key_eq(&self, other: &String) -> bool {
        same_str(self, other)
    }
}

impl KeyEq for Id {
    #[inline]
    fn key_eq(&self, other: &Id) -> bool {
        self == other
    }
}

impl KeyEq for u32 {
    #[inline]
    fn key_eq(&self, other: &u32) -> bool {
        self == other
    }
}

impl<A: KeyEq, B: KeyEq> KeyEq for (A, B) {
    #[inline]
    fn key_eq(&self, other: &(A, B)) -> bool {
        self.0.key_eq(&other.0) && self.1.key_eq(&other.1)
    }
}

/// The hash every table of the core uses (FxHash), computed once per key.
/// An [`Id`] hashes as its string.
pub(crate) fn hash_of<Q: Hash + ?Sized>(key: &Q) -> u64 {
    FxBuildHasher.hash_one(key)
}

/// The shard of a hash. Bits 24..32: the tables use the low bits for the
/// bucket and the top 7 for their control bytes, which must still vary
/// inside one shard.
fn shard_of(hash: u64) -> usize {
    ((hash >> 24) as usize) & (SHARDS - 1)
}

fn rehash<K: Hash, V>(entry: &(K, V)) -> u64 {
    hash_of(&entry.0)
}

impl<K: Hash + KeyEq, V> ShardedMap<K, V> {
    /// The value of `key`, read-locked until the guard drops.
    pub fn get<Q>(&self, key: &Q) -> Option<MappedRwLockReadGuard<'_, V>>
    where
        K: Borrow<Q>,
        Q: Hash + KeyEq + ?Sized,
    {
        self.get_entry(key).map(|e| MappedRwLockReadGuard::map(e, |(_, v)| v))
    }

    /// The value of `key`, write-locked until the guard drops.
    pub fn get_mut<Q>(&self, key: &Q) -> Option<MappedRwLockWriteGuard<'_, V>>
    where
        K: Borrow<Q>,
        Q: Hash + KeyEq + ?Sized,
    {
        self.get_entry_mut(key).map(|e| MappedRwLockWriteGuard::map(e, |(_, v)| v))
    }

    /// The stored key and its value, read-locked until the guard drops: for a
    /// caller that keeps the key (an id) without building it again.
    pub(crate) fn get_entry<Q>(&self, key: &Q) -> Option<MappedRwLockReadGuard<'_, (K, V)>>
    where
        K: Borrow<Q>,
        Q: Hash + KeyEq + ?Sized,
    {
        let hash = hash_of(key);
        let shard = self.shards[shard_of(hash)].read();
        RwLockReadGuard::try_map(shard, |t| t.find(hash, |(k, _)| k.borrow().key_eq(key))).ok()
    }

    /// The value of `key`, read without taking the shard's lock: a lock
    /// is an atomic read-modify-write, which on x86 waits for every load
    /// before it, so looking several keys up in a row under their locks
    /// takes their cache misses one at a time.
    ///
    /// # Safety
    ///
    /// No thread may change the map while the reference lives. Queries
    /// only read; the fold changes a partition's maps only through
    /// `&mut PartitionState`, so the fold's own thread may peek while it
    /// holds that.
    pub(crate) unsafe fn peek<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + KeyEq + ?Sized,
    {
        let hash = hash_of(key);
        // SAFETY: nothing changes the table meanwhile (the caller's
        // contract); readers holding the lock only read it too.
        let table = unsafe { &*self.shards[shard_of(hash)].data_ptr() };
        table.find(hash, |(k, _)| k.borrow().key_eq(key)).map(|(_, v)| v)
    }

    /// Asks for the lines a lookup or an insert of a key of hash `hash`
    /// reads or writes first, and waits for none of them: the control
    /// bytes where its probe starts, the bucket there, and the line below
    /// it, where the probe's next buckets are (see [`probe_start`]). For a
    /// key most often new (a send's message, a conversation's first mark),
    /// whose lines are cold: a lookup there (as [`Self::peek`]) waited for
    /// the control bytes, and the walk ahead with it (3.8% of the poll
    /// loop in a drain, in the forty-second sitting's profile). No lookup
    /// reads an empty bucket first, so the insert's write would wait for
    /// its line, and so would the next locked instruction (the count's
    /// increment, which waits for every store before it). Asks for
    /// nothing before the shard's first insert.
    ///
    /// # Safety
    ///
    /// As [`Self::peek`].
    #[inline]
    pub(crate) unsafe fn prefetch_probe(&self, hash: u64) {
        // SAFETY: the caller's contract.
        if let Some((control, bucket)) = unsafe { self.probe_guess(hash) } {
            prefetch_line(control as *const u8);
            prefetch_line(bucket as *const u8);
            prefetch_line(bucket.wrapping_sub(64) as *const u8);
        }
    }

    /// Where a probe for a key of hash `hash` starts, as
    /// [`Self::prefetch_probe`] guesses it from where the shard's last
    /// insert left its buckets: the address of its first control bytes and
    /// of its first bucket, where an insert of the key most likely goes.
    /// `None` before the shard's first insert. Safety as [`Self::peek`].
    #[inline(always)]
    unsafe fn probe_guess(&self, hash: u64) -> Option<(usize, usize)> {
        let shard = shard_of(hash);
        let end = self.buckets_ends[shard].load(Relaxed);
        // SAFETY: as in `peek`.
        let buckets = unsafe { &*self.shards[shard].data_ptr() }.num_buckets();
        (end != 0).then(|| (control_bytes(end, buckets, hash), probe_start::<(K, V)>(end, buckets, hash)))
    }

    /// Records where shard `shard`'s buckets are, from the entry just put
    /// in, for [`Self::prefetch_probe`].
    #[inline(always)]
    fn remember_buckets(&self, shard: usize, entry: &hashbrown::hash_table::OccupiedEntry<'_, (K, V)>) {
        self.buckets_ends[shard].store(buckets_end(entry.get(), entry.bucket_index()), Relaxed);
    }

    /// The stored key and its value, write-locked until the guard drops. The
    /// caller must not change the key.
    pub(crate) fn get_entry_mut<Q>(&self, key: &Q) -> Option<MappedRwLockWriteGuard<'_, (K, V)>>
    where
        K: Borrow<Q>,
        Q: Hash + KeyEq + ?Sized,
    {
        let hash = hash_of(key);
        let shard = self.shards[shard_of(hash)].write();
        RwLockWriteGuard::try_map(shard, |t| t.find_mut(hash, |(k, _)| k.borrow().key_eq(key))).ok()
    }

    /// Changes the value of `key` under the shard's write lock, then, with
    /// the lock released, hands the value to `read`, with one lookup. A
    /// slow reader (encoding a large value for storage) holds back no one,
    /// and the value costs two atomic operations, not the three of a
    /// write lock downgraded to a read lock (each waits for every store
    /// before it: 5% of the poll loop thread staging a drain's flushes).
    /// `None` if `key` is absent.
    ///
    /// # Safety
    /// As [`Self::peek`]: nothing else changes the map until `read`
    /// returns (the fold's thread, holding `&mut PartitionState`).
    pub(crate) unsafe fn update_then_peek<Q, R>(
        &self,
        key: &Q,
        update: impl FnOnce(&mut V),
        read: impl FnOnce(&V) -> R,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + KeyEq + ?Sized,
    {
        let hash = hash_of(key);
        let lock = &self.shards[shard_of(hash)];
        let index = {
            let mut shard = lock.write();
            let index = shard.find_bucket_index(hash, |(k, _)| k.borrow().key_eq(key))?;
            update(&mut shard.get_bucket_mut(index).expect("found under this lock").1);
            index
        };
        // SAFETY: nothing changes the table meanwhile (the caller's
        // contract), so the bucket still holds the entry; readers holding
        // the lock only read it too.
        let table = unsafe { &*lock.data_ptr() };
        Some(read(&table.get_bucket(index).expect("unchanged: no other writer").1))
    }

    /// The value of `key`, inserted by `make` if absent; write-locked.
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> MappedRwLockWriteGuard<'_, V> {
        let hash = hash_of(&key);
        let shard = shard_of(hash);
        let table = self.shards[shard].write();
        RwLockWriteGuard::map(table, |t| match t.entry(hash, |(k, _)| k.key_eq(&key), rehash) {
            Entry::Occupied(e) => &mut e.into_mut().1,
            Entry::Vacant(e) => {
                self.len.fetch_add(1, Relaxed);
                let entry = e.insert((key, make()));
                self.remember_buckets(shard, &entry);
                &mut entry.into_mut().1
            }
        })
    }

    /// Inserts the entry `make` returns if `key` is absent, with one lookup
    /// for both; `make` may decline (`None`). Returns `None` if `key` was
    /// present, in which case `make` is not called, else the key's hash
    /// (what an index by hash keeps; see [`Self::remove_by_hash`]). `make`
    /// runs under the shard's write lock: it must not touch this map, and
    /// the key it returns must equal `key`.
    pub(crate) fn insert_if_absent<Q>(&self, key: &Q, make: impl FnOnce() -> Option<(K, V)>) -> Option<u64>
    where
        K: Borrow<Q>,
        Q: Hash + KeyEq + ?Sized,
    {
        let hash = hash_of(key);
        let shard = shard_of(hash);
        let mut table = self.shards[shard].write();
        match table.entry(hash, |(k, _)| k.borrow().key_eq(key), rehash) {
            Entry::Occupied(_) => None,
            Entry::Vacant(vacant) => {
                if let Some(entry) = make() {
                    debug_assert!(entry.0.borrow().key_eq(key), "the entry's key is the key looked up");
                    self.remember_buckets(shard, &vacant.insert(entry));
                    self.len.fetch_add(1, Relaxed);
                }
                Some(hash)
            }
        }
    }

    /// Whether `key` is present.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + KeyEq + ?Sized,
    {
        let hash = hash_of(key);
        self.shards[shard_of(hash)].read().find(hash, |(k, _)| k.borrow().key_eq(key)).is_some()
    }

    /// Grows each shard's table once for the keys whose hashes are given,
    /// about to go in, with a quarter more room. A restore puts a
    /// partition's messages in at once: growing step by step rehashed each
    /// entry about once more, into fresh memory, and a table restored just
    /// full doubled at its next few inserts, in the poll loop (a third of
    /// the shards, after a kill -9 at 10 M events).
    pub fn reserve_for_hashes(&self, hashes: impl IntoIterator<Item = u64>) {
        let mut counts = vec![0usize; SHARDS];
        for hash in hashes {
            counts[shard_of(hash)] += 1;
        }
        for (shard, count) in self.shards.iter().zip(counts) {
            if count > 0 {
                shard.write().reserve(count + count / 4, rehash);
            }
        }
    }

    /// Inserts, returning the value replaced.
    pub fn insert(&self, key: K, value: V) -> Option<V> {
        self.insert_hashed(hash_of(&key), key, value)
    }

    /// [`Self::insert`] for a caller that has hashed the key already (a
    /// restore, which indexed the message by its hash first).
    pub(crate) fn insert_hashed(&self, hash: u64, key: K, value: V) -> Option<V> {
        debug_assert_eq!(hash, hash_of(&key), "the hash given is the key's");
        let shard = shard_of(hash);
        let mut table = self.shards[shard].write();
        match table.entry(hash, |(k, _)| k.key_eq(&key), rehash) {
            Entry::Occupied(mut e) => Some(std::mem::replace(&mut e.get_mut().1, value)),
            Entry::Vacant(e) => {
                self.remember_buckets(shard, &e.insert((key, value)));
                self.len.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + KeyEq + ?Sized,
    {
        let hash = hash_of(key);
        let mut shard = self.shards[shard_of(hash)].write();
        let removed = shard.find_entry(hash, |(k, _)| k.borrow().key_eq(key)).ok().map(|e| e.remove().0 .1);
        if removed.is_some() {
            self.len.fetch_sub(1, Relaxed);
        }
        removed
    }

    /// Removes one entry of hash `hash` (see [`hash_of`]) that `matches`,
    /// for a caller that kept a key's hash instead of the key: an index
    /// 8 bytes an entry instead of an id's 24. Keys of equal hashes are
    /// told apart only by `matches`.
    pub(crate) fn remove_by_hash(&self, hash: u64, mut matches: impl FnMut(&(K, V)) -> bool) -> Option<(K, V)> {
        let mut shard = self.shards[shard_of(hash)].write();
        let removed = shard.find_entry(hash, |entry| matches(entry)).ok().map(|e| e.remove().0);
        if removed.is_some() {
            self.len.fetch_sub(1, Relaxed);
        }
        removed
    }

    /// Whether an entry of hash `hash` `matches`; see [`Self::remove_by_hash`].
    pub(crate) fn any_by_hash(&self, hash: u64, mut matches: impl FnMut(&(K, V)) -> bool) -> bool {
        self.shards[shard_of(hash)].read().find(hash, |entry| matches(entry)).is_some()
    }

    /// Keeps only the entries `keep` says yes to, one shard at a time.
    pub fn retain(&self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            let before = shard.len();
            shard.retain(|(k, v)| keep(k, v));
            self.len.fetch_sub(before - shard.len(), Relaxed);
        }
    }

    /// Entries: exact while no other thread changes the map.
    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// Whether there are none (see [`Self::len`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

impl<K: Hash + KeyEq + Clone, V> ShardedMap<K, V> {
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

    /// A restore's bulk insert grows each table once: room for each
    /// shard's share of the entries and a quarter more, and the entries go
    /// in without any table growing again.
    #[test]
    fn tables_reserved_for_a_restore_hold_it_and_a_quarter_more() {
        let m: ShardedMap<Id, u32> = ShardedMap::default();
        let keys: Vec<Id> = (0..20_000).map(|i| Id::from(format!("m{i}").as_str())).collect();
        let mut counts = vec![0; SHARDS];
        keys.iter().for_each(|k| counts[shard_of(hash_of(k))] += 1);
        m.reserve_for_hashes(keys.iter().map(hash_of));
        let capacities = || m.shards.iter().map(|s| s.read().capacity()).collect::<Vec<_>>();
        let reserved = capacities();
        for (shard, (&room, &count)) in reserved.iter().zip(&counts).enumerate() {
            assert!(room >= count + count / 4, "shard {shard}: room for {room}, {count} entries to restore");
        }
        for (i, key) in keys.iter().enumerate() {
            m.insert(key.clone(), i as u32);
        }
        assert_eq!(capacities(), reserved, "no table grew while the entries went in");
        assert_eq!(m.len(), keys.len());
        assert!(keys.iter().enumerate().all(|(i, k)| m.get(k).is_some_and(|v| *v == i as u32)));
    }

    /// The walk ahead of a conversation read hashes a mark's key from its
    /// two strings, without building the pair of ids the map holds.
    #[test]
    fn a_pair_of_ids_hashes_as_its_two_strings() {
        let long = "x".repeat(receiptd_wire::INLINE_BYTES + 1);
        for (a, b) in [("u1", "u2"), ("", "u2"), (long.as_str(), "u2"), ("u1", long.as_str())] {
            assert_eq!(hash_of(&(Id::from(a), Id::from(b))), hash_of(&(a, b)), "{a:?}, {b:?}");
        }
    }

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
        // SAFETY: this thread is the map's only writer.
        assert_eq!(unsafe { m.update_then_peek("m5", |v| *v += 1, |v| *v * 10) }, Some(40));
        assert_eq!(unsafe { m.update_then_peek("absent", |v| *v += 1, |v| *v) }, None);
        *m.get_mut("m5").unwrap() -= 1;
        assert_eq!(m.get("m5").as_deref(), Some(&3));
        m.retain(|_, v| *v % 2 == 0);
        assert_eq!(m.len(), 5_000);
        let mut visited = 0;
        m.for_each(|_, _| visited += 1);
        assert_eq!(visited, m.keys().len());
        let busiest = m.shards.iter().map(|s| s.read().len()).max().unwrap();
        assert!(busiest < 5_000 / SHARDS * 2, "keys spread over the shards: busiest {busiest}");
    }

    /// The guess `prefetch_probe` asks for holds hashbrown's layout and
    /// probe: most entries land in the guessed bucket's line or the line
    /// below it (66% of these), and their control byte in the first group
    /// of control bytes from the guessed one, which a lookup reads first
    /// (91% of these). If hashbrown changes either, this fails, and the
    /// prefetch would only ask for lines nobody reads or writes.
    #[test]
    fn inserts_land_where_the_prefetch_guesses() {
        let m: ShardedMap<Id, u64> = ShardedMap::default();
        let (mut guessed, mut near, mut in_group) = (0, 0, 0);
        for i in 0..200_000u64 {
            let key = format!("msg-{i}");
            let hash = hash_of(key.as_str());
            // SAFETY: this thread is the map's only user.
            let guess = unsafe { m.probe_guess(hash) };
            assert!(m.insert_if_absent(key.as_str(), || Some((Id::from(key.as_str()), i))).is_some());
            let Some((control_guess, guess)) = guess else { continue };
            guessed += 1;
            // SAFETY: as above.
            let at = unsafe { m.peek(key.as_str()) }.map(|v| v as *const u64 as usize).expect("just inserted");
            let entry = at - std::mem::offset_of!((Id, u64), 1);
            // The guessed line, or the one below it (further buckets).
            let (line, guess_line) = (entry / 64, guess / 64);
            near += usize::from(line == guess_line || line + 1 == guess_line);
            // Bucket `index` has its control byte at `end + index`.
            let end = m.buckets_ends[shard_of(hash)].load(Relaxed);
            let control = end + (end - entry) / std::mem::size_of::<(Id, u64)>() - 1;
            in_group += usize::from((control_guess..control_guess + 16).contains(&control));
        }
        assert!(guessed > 190_000, "every shard has had an insert: {guessed}");
        let share = near as f64 / guessed as f64;
        assert!(share > 0.6, "inserts near the guess: {share:.3}");
        let share = in_group as f64 / guessed as f64;
        assert!(share > 0.8, "control bytes in the guessed group: {share:.3}");
    }

    /// One change to a map, on a key of a small space so that changes hit
    /// present and absent keys alike.
    #[derive(Debug, Clone)]
    enum Change {
        Insert(u32),
        InsertIfAbsent(u32, bool),
        GetOrInsert(u32),
        Remove(u32),
        RemoveByHash(u32),
        RetainEven,
    }

    fn change() -> impl proptest::strategy::Strategy<Value = Change> {
        use proptest::prelude::*;
        let key = 0u32..64;
        prop_oneof![
            key.clone().prop_map(Change::Insert),
            (key.clone(), any::<bool>()).prop_map(|(k, make)| Change::InsertIfAbsent(k, make)),
            key.clone().prop_map(Change::GetOrInsert),
            key.clone().prop_map(Change::Remove),
            key.prop_map(Change::RemoveByHash),
            Just(Change::RetainEven),
        ]
    }

    proptest::proptest! {
        /// The count kept as entries go in and out is the shards' own.
        #[test]
        fn the_kept_count_is_the_entries_in_the_shards(changes in proptest::collection::vec(change(), 0..300)) {
            let m: ShardedMap<u32, u32> = ShardedMap::default();
            let mut model = std::collections::BTreeSet::new();
            for c in changes {
                match c {
                    Change::Insert(k) => {
                        m.insert(k, k);
                        model.insert(k);
                    }
                    Change::InsertIfAbsent(k, make) => {
                        m.insert_if_absent(&k, || make.then_some((k, k)));
                        if make {
                            model.insert(k);
                        }
                    }
                    Change::GetOrInsert(k) => {
                        drop(m.get_or_insert_with(k, || k));
                        model.insert(k);
                    }
                    Change::Remove(k) => {
                        m.remove(&k);
                        model.remove(&k);
                    }
                    Change::RemoveByHash(k) => {
                        m.remove_by_hash(hash_of(&k), |(key, _)| *key == k);
                        model.remove(&k);
                    }
                    Change::RetainEven => {
                        m.retain(|k, _| k % 2 == 0);
                        model.retain(|k| k % 2 == 0);
                    }
                }
                let in_shards: usize = m.shards.iter().map(|s| s.read().len()).sum();
                proptest::prop_assert_eq!(m.len(), in_shards);
                proptest::prop_assert_eq!(m.len(), model.len());
                proptest::prop_assert_eq!(m.is_empty(), model.is_empty());
            }
        }
    }

    #[test]
    fn update_then_peek_lets_readers_of_the_shard_in_while_it_reads() {
        let m: std::sync::Arc<ShardedMap<u32, u32>> = Default::default();
        let a = 0u32;
        let b = (1u32..).find(|k| shard_of(hash_of(k)) == shard_of(hash_of(&a))).unwrap();
        m.insert(a, 1);
        m.insert(b, 2);
        // SAFETY: this thread is the map's only writer; the other reads.
        let read = unsafe {
            m.update_then_peek(
                &a,
                |v| *v += 1,
                |v| {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let reader = m.clone();
                    std::thread::spawn(move || tx.send(*reader.get(&b).unwrap()).unwrap());
                    (*v, rx.recv_timeout(std::time::Duration::from_secs(10)))
                },
            )
        };
        assert_eq!(read, Some((2, Ok(2))), "a reader of the same shard waited while the value was read");
    }

    #[test]
    fn a_reader_of_one_shard_does_not_wait_for_a_writer_of_another() {
        let m: std::sync::Arc<ShardedMap<u32, u32>> = Default::default();
        let a = 0u32;
        let b = (1u32..).find(|k| shard_of(hash_of(k)) != shard_of(hash_of(&a))).unwrap();
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
