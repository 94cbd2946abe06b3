//! RocksDB storage for receiptd's folded state.
//!
//! Every key starts with the Kafka partition it belongs to (4 bytes, big
//! endian), so one partition's state is one contiguous key range: it can be
//! loaded with one scan, dropped with one `delete_range`, and later moved
//! between workers. Within a partition a one-byte kind follows:
//!
//! | kind | key after the kind                      | value                     |
//! |------|-----------------------------------------|---------------------------|
//! | `c`  | (none)                                  | [`Checkpoint`]            |
//! | `g`  | app, group                              | group header              |
//! | `u`  | app, group, ordinal (u32 BE)            | member: user, since epoch |
//! | `m`  | app, message                            | message receipt state     |
//! | `k`  | app, reader, peer                       | conversation read mark    |
//! | `h`  | app, message                            | reads held for it         |
//! | `p`  | app, message, page (u32 BE)             | a page of its readers     |
//!
//! Strings are length-prefixed (one byte; ids are at most 128 bytes). Values
//! are bincode (standard config), but for a reader page, a reader list as a
//! message's value holds it. A message read by as many as
//! [`receiptd_core::PAGE_READERS`] has its readers in pages, written once
//! each, so that a flush does not write all its readers again. The file
//! [`FORMAT_FILE`] in the directory names the values' format
//! ([`STORE_FORMAT`]); a store of another format is refused at open, but
//! for format 2, which is format 3 without pages: it is marked 3 when
//! opened to write.
//!
//! Exactly-once state rests on one rule: the checkpoint, which holds the next
//! Kafka offset to consume, is written in the same write batch as every
//! entity the fold changed up to that offset. After any crash, the store holds
//! a state and the offset it corresponds to, never one without the other.
//! Per-flush writes skip fsync (a killed process loses nothing the OS has);
//! [`Store::sync`] makes them durable against power loss at checkpoints.

#![deny(missing_docs)]

mod batch;
mod keys;

use receiptd_core::{DeltaBuffer, DirtyKey, Entity, GroupMeta, HeldRead, MessageState, PartitionState, SettingsTable};
use rocksdb::{BlockBasedOptions, Cache, Options, WriteBufferManager, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use batch::BatchBuffer;
pub use keys::Kind;

/// Where a partition stands: the next offset to consume and the fold's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The next offset of the partition to consume.
    pub next_offset: i64,
    /// The partition's highest record timestamp folded.
    pub watermark: u64,
}

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB failed.
    #[error("rocksdb at {path}: {source}")]
    Rocks {
        /// The store's directory.
        path: PathBuf,
        /// The error.
        source: rocksdb::Error,
    },
    /// A stored value could not be decoded.
    #[error("corrupt value under key {key:?}: {problem}")]
    Corrupt {
        /// The key, hex.
        key: String,
        /// What failed.
        problem: String,
    },
    /// The store was written in another value format (another receiptd
    /// version); it is refused rather than misread.
    #[error(
        "store at {path} holds format {found} and this build reads format {expected}: it was written by \
         another receiptd version and is not read, to avoid misreading it. Move the directory aside to \
         start from an empty store"
    )]
    Format {
        /// The store's directory.
        path: PathBuf,
        /// The format its marker file names (1: written before there was
        /// one; 0: a marker that names none).
        found: u32,
        /// [`STORE_FORMAT`].
        expected: u32,
    },
    /// The format marker file could not be read or written.
    #[error("store format marker {path}: {source}")]
    Marker {
        /// The marker file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A write refused by the test failpoint [`FAILPOINT_WRITES_ENV`].
    #[error("injected write failure at {path} (failpoint {FAILPOINT_WRITES_ENV})")]
    Injected {
        /// The store's directory.
        path: PathBuf,
    },
}

/// Test failpoint, read when the store opens: with `N` set, every write
/// batch after the first `N` fails, as on a full or broken disk. Unset or
/// empty in production.
pub const FAILPOINT_WRITES_ENV: &str = "RECEIPTD_FAILPOINT_STORE_WRITES";

/// The encoding of the values this build writes, named in the marker file
/// [`FORMAT_FILE`] of every store. 3: a message read by many has its
/// readers in pages of their own, and says how many after its counts (2:
/// a message's readers as one varint byte string, all in its value; 1: a
/// list of bincode read marks).
pub const STORE_FORMAT: u32 = 3;

/// The format this build reads as [`STORE_FORMAT`]: its values are format
/// 3's without pages.
const STORE_FORMAT_WITHOUT_PAGES: u32 = 2;

/// The file in the store's directory that names its [`STORE_FORMAT`].
pub const FORMAT_FILE: &str = "RECEIPTD_FORMAT";

/// Refuses a store of another format. A store without a marker is new if
/// it holds nothing (then `writable` stores get one), and of format 1 if
/// it holds state. One of format 2 is read, and marked 3 if `writable`
/// before anything of format 3 is written to it (which a build of format
/// 2 would misread).
fn check_format(db: &DB, dir: &Path, writable: bool) -> Result<(), StoreError> {
    let marker = dir.join(FORMAT_FILE);
    let found = match std::fs::read_to_string(&marker) {
        // 0: a marker that names no format.
        Ok(text) => text.trim().parse().unwrap_or(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if db.iterator(rocksdb::IteratorMode::Start).next().is_some() {
                1
            } else if writable {
                return write_marker(&marker);
            } else {
                return Ok(());
            }
        }
        Err(source) => return Err(StoreError::Marker { path: marker, source }),
    };
    match found {
        STORE_FORMAT => Ok(()),
        STORE_FORMAT_WITHOUT_PAGES if writable => write_marker(&marker),
        STORE_FORMAT_WITHOUT_PAGES => Ok(()),
        found => Err(StoreError::Format { path: dir.to_owned(), found, expected: STORE_FORMAT }),
    }
}

/// Writes the marker durably: a crash leaves it whole or absent (and an
/// absent one on an empty store is written again).
fn write_marker(marker: &Path) -> Result<(), StoreError> {
    use std::io::Write;
    let err = |source| StoreError::Marker { path: marker.to_owned(), source };
    let partial = marker.with_extension("partial");
    let mut file = std::fs::File::create(&partial).map_err(err)?;
    file.write_all(format!("{STORE_FORMAT}\n").as_bytes()).and_then(|()| file.sync_all()).map_err(err)?;
    std::fs::rename(&partial, marker).map_err(err)?;
    if let Some(dir) = marker.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    Ok(())
}

/// Tuning for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Shared block cache, bytes.
    pub block_cache_bytes: usize,
    /// Total memtable budget across column families, bytes.
    pub write_buffer_bytes: usize,
    /// Whether each write goes into the memtable in key order, each
    /// partition's inserts starting from the last one's place (default
    /// true). False writes batches as staged, as before: for the
    /// `store_write` bench, which compares the two.
    pub sorted_writes: bool,
    /// Level-0 table files that start a compaction into the levels below
    /// (RocksDB's `level0_file_num_compaction_trigger`). Default 8, twice
    /// RocksDB's: each flush's file spans every partition, so every
    /// compaction rewrites the level below whole, and fewer of them cost
    /// less (the worker's `state.level0_compaction_trigger`).
    pub level0_compaction_trigger: i32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            block_cache_bytes: 128 << 20,
            write_buffer_bytes: 128 << 20,
            sorted_writes: true,
            level0_compaction_trigger: 8,
        }
    }
}

/// The RocksDB store.
pub struct Store {
    db: DB,
    path: PathBuf,
    /// See [`StoreOptions::sorted_writes`].
    sorted_writes: bool,
    /// Writes allowed before the failpoint fails them, if set.
    fail_after: Option<u64>,
    /// The failpoint fails one write only, not every later one.
    fail_once: bool,
    writes: std::sync::atomic::AtomicU64,
    /// Runs before each sync, for tests that hold a sync back.
    before_sync: Option<Box<dyn Fn() + Send + Sync>>,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut v = Vec::new();
    encode_into(value, &mut v);
    v
}

/// Encodes into `buf`, replacing what it held, and returns it: one pass, into
/// a buffer the caller reuses (`encode_to_vec` sizes the value first, then
/// allocates).
fn encode_into<'a, T: Serialize>(value: &T, buf: &'a mut Vec<u8>) -> &'a [u8] {
    buf.clear();
    bincode::serde::encode_into_std_write(value, buf, bincode::config::standard())
        .expect("state values are plain data and always encode");
    buf
}

/// Decodes a stored value. Strings are read in place (`&str`), never into
/// a `String`: bincode allocates a `String` of the length the bytes claim
/// before reading them, so a corrupt length aborted the process where it
/// should be an error.
fn decode<'a, T: Deserialize<'a>>(key: &[u8], value: &'a [u8]) -> Result<T, StoreError> {
    bincode::serde::borrow_decode_from_slice(value, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| corrupt(key, e))
}

/// Decodes a stored message: the message, and how many pages of its
/// readers are stored apart (format 3 writes their count after the
/// message when there are any; format 2, never).
fn decode_message(key: &[u8], value: &[u8]) -> Result<(MessageState, u32), StoreError> {
    let config = bincode::config::standard();
    let (message, used) = bincode::serde::borrow_decode_from_slice(value, config).map_err(|e| corrupt(key, e))?;
    let pages = match &value[used..] {
        [] => 0,
        rest => match bincode::decode_from_slice::<u32, _>(rest, config) {
            Ok((pages, read)) if read == rest.len() && pages > 0 => pages,
            _ => return Err(corrupt(key, "bytes after the message that are not its reader pages' count")),
        },
    };
    Ok((message, pages))
}

/// The store's error for a stored value that is wrong, under `key`.
fn corrupt(key: &[u8], problem: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { key: keys::hex(key), problem: problem.to_string() }
}

/// One partition as [`Store::load_partitions`] loaded it.
pub struct LoadedPartition {
    /// The partition.
    pub partition: i32,
    /// Its folded state.
    pub state: PartitionState,
    /// Where it stands; `None` for a partition never seen.
    pub checkpoint: Option<Checkpoint>,
    /// How long its load took.
    pub took: std::time::Duration,
}

/// Puts (or deletes) changed entities of one partition into a write batch,
/// with one key and one value buffer for all: the batch copies each (a
/// message's sealed page of readers too, with the message). A
/// slice of a flush ([`PartitionState::stage_changes`]) stages through one;
/// [`Store::stage`] finishes the flush with the partition's checkpoint.
pub struct EntityWriter<'a> {
    batch: &'a mut BatchBuffer,
    partition: i32,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl<'a> EntityWriter<'a> {
    /// Writes into `batch`, under `partition`'s keys.
    pub fn new(batch: &'a mut BatchBuffer, partition: i32) -> Self {
        EntityWriter { batch, partition, key: Vec::with_capacity(64), value: Vec::with_capacity(256) }
    }

    /// Stages one entity's current value, or its deletion.
    pub fn stage(&mut self, key: &DirtyKey, entity: Entity<'_>) {
        let (k, v, batch) = (&mut self.key, &mut self.value, &mut *self.batch);
        keys::entity_into(self.partition, key, k);
        match entity {
            Entity::Group(meta) => batch.put(&k, encode_into(meta, v)),
            Entity::FreshGroup(meta) => {
                // No slot of a group of the same id before it survives.
                delete_members(batch, self.partition, key);
                batch.put(&k, encode_into(meta, v))
            }
            Entity::Member(user, since) => batch.put(&k, encode_into(&(user, since), v)),
            Entity::Message(m) => {
                v.clear();
                m.encode_stored(v);
                batch.put(&k, &v);
                if m.reader_pages() > 0 {
                    stage_sealed_page(batch, self.partition, key, m, k, v);
                }
            }
            Entity::Mark(t) => batch.put(&k, encode_into(&t, v)),
            Entity::Held(reads) => batch.put(&k, encode_into(&reads, v)),
            Entity::Absent => match key {
                DirtyKey::ReaderPages { app, msg_id } => {
                    let (from, to) = keys::reader_page_range(self.partition, app, msg_id);
                    batch.delete_range(from, to);
                }
                _ => {
                    batch.delete(&k);
                    // A dismissed group takes all its member slots along.
                    delete_members(batch, self.partition, key);
                }
            },
        }
    }
}

/// Puts the page of readers the staging of message `m` (under `key`)
/// sealed, if any. Out of line: few messages have pages, and fewer seal
/// one in a given flush.
#[cold]
#[inline(never)]
fn stage_sealed_page(
    batch: &mut BatchBuffer,
    partition: i32,
    key: &DirtyKey,
    m: &MessageState,
    k: &mut Vec<u8>,
    v: &mut Vec<u8>,
) {
    v.clear();
    if let (Some(page), DirtyKey::Message { app, msg_id }) = (m.encode_sealed_page(v), key) {
        keys::reader_page_into(partition, app, msg_id, page, k);
        // As slices: the put of `&&mut Vec`s staging inlines stays its own.
        batch.put(k.as_slice(), v.as_slice());
    }
}

/// Deletes every member slot of the group `key` names (nothing for other keys).
fn delete_members(batch: &mut BatchBuffer, partition: i32, key: &DirtyKey) {
    if let DirtyKey::Group { app, group_id } = key {
        let (from, to) = keys::member_range(partition, app, group_id);
        batch.delete_range(from, to);
    }
}

/// One memtable insert hint per partition (a key's first 4 bytes).
const MEMTABLE_INSERT_HINT: &str = "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.4";

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        // Each partition's inserts start from the last one's place in the
        // memtable: writes come sorted by key (`BatchBuffer::into_sorted_write_batch`).
        // The C API has no setter for it.
        let mut opts = if options.sorted_writes {
            Options::default()
                .get_options_from_string(MEMTABLE_INSERT_HINT)
                .map_err(|source| StoreError::Rocks { path: dir.to_owned(), source })?
        } else {
            Options::default()
        };
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        let wbm = WriteBufferManager::new_write_buffer_manager_with_cache(options.write_buffer_bytes, false, cache);
        opts.set_write_buffer_manager(&wbm);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        opts.set_level_zero_file_num_compaction_trigger(options.level0_compaction_trigger);
        let db = DB::open(&opts, dir).map_err(|source| StoreError::Rocks { path: dir.to_owned(), source })?;
        check_format(&db, dir, true)?;
        let fail_after = std::env::var(FAILPOINT_WRITES_ENV).ok().and_then(|v| v.trim().parse().ok());
        if let Some(n) = fail_after {
            tracing::warn!(writes = n, "test failpoint {FAILPOINT_WRITES_ENV} set: writes after these will fail");
        }
        Ok(Store {
            db,
            path: dir.to_owned(),
            sorted_writes: options.sorted_writes,
            fail_after,
            fail_once: false,
            writes: Default::default(),
            before_sync: None,
        })
    }

    /// Fails the write after the next `writes`, and only that one: a
    /// transient fault, for tests in one process that check nothing after
    /// a failed write is written even when the store would take it.
    #[doc(hidden)]
    pub fn fail_one_write_after(&mut self, writes: u64) {
        self.fail_after = Some(writes);
        self.fail_once = true;
    }

    /// Calls `hook` at the start of every sync, before the disk is asked:
    /// for tests that hold a sync back (a slow disk) and check what goes on
    /// meanwhile.
    #[doc(hidden)]
    pub fn before_each_sync(&mut self, hook: impl Fn() + Send + Sync + 'static) {
        self.before_sync = Some(Box::new(hook));
    }

    /// Opens an existing store read-only (for inspection while no worker runs).
    pub fn open_read_only(dir: &Path) -> Result<Store, StoreError> {
        let db = DB::open_for_read_only(&Options::default(), dir, false)
            .map_err(|source| StoreError::Rocks { path: dir.to_owned(), source })?;
        check_format(&db, dir, false)?;
        Ok(Store {
            db,
            path: dir.to_owned(),
            sorted_writes: false,
            fail_after: None,
            fail_once: false,
            writes: Default::default(),
            before_sync: None,
        })
    }

    fn rocks(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks { path: self.path.clone(), source }
    }

    /// Loads a partition: its folded state and where it stands. A partition
    /// never seen loads empty, with no checkpoint.
    pub fn load_partition(&self, partition: i32) -> Result<(PartitionState, Option<Checkpoint>), StoreError> {
        let mut state = PartitionState::new();
        let mut checkpoint = None;
        let prefix = keys::partition_prefix(partition);
        let upper = keys::partition_prefix(partition + 1);
        let mut read_opts = rocksdb::ReadOptions::default();
        read_opts.set_iterate_upper_bound(upper);
        let iter = self.db.iterator_opt(rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward), read_opts);
        for item in iter {
            let (key, value) = item.map_err(|e| self.rocks(e))?;
            let parsed = keys::parse(&key).ok_or_else(|| corrupt(&key, "unrecognised key layout"))?;
            match parsed {
                keys::Parsed::Checkpoint => {
                    let c: Checkpoint = decode(&key, &value)?;
                    state.restore_watermark(c.watermark);
                    checkpoint = Some(c);
                }
                keys::Parsed::Group { app, group } => {
                    let meta: GroupMeta = decode(&key, &value)?;
                    state.restore_group(app, group, meta);
                }
                keys::Parsed::Member { app, group, ordinal } => {
                    let (user, since): (&str, u32) = decode(&key, &value)?;
                    state.restore_member(app, group, ordinal, user, since).map_err(|e| corrupt(&key, e))?;
                }
                keys::Parsed::Message { app, msg } => {
                    let (m, pages) = decode_message(&key, &value)?;
                    state.restore_message(app, msg, m, pages);
                }
                // After every message (`p` sorts after `m`), in order.
                keys::Parsed::ReaderPage { app, msg, page } => {
                    state.restore_reader_page(app, msg, page, &value).map_err(|e| corrupt(&key, e))?;
                }
                keys::Parsed::Mark { app, reader, peer } => {
                    let t: u64 = decode(&key, &value)?;
                    state.restore_mark(app, reader, peer, t);
                }
                keys::Parsed::Held { app, msg } => {
                    let reads: Vec<HeldRead> = decode(&key, &value)?;
                    state.restore_held(app, msg, reads);
                }
            }
        }
        state.finish_restore().map_err(|e| {
            let mut key = Vec::new();
            keys::entity_into(partition, &e.key, &mut key);
            corrupt(&key, e)
        })?;
        Ok((state, checkpoint))
    }

    /// Loads several partitions as [`Self::load_partition`] does, side by
    /// side on up to one thread per core: a worker restarting after a kill
    /// spent most of its time to `/readyz` loading its partitions one after
    /// another (about 1.2 µs a stored message, 1.6 to 2.8 s for 1.85 M
    /// messages in four partitions). In the order given, each with the time
    /// its own load took; the first error fails them all.
    pub fn load_partitions(&self, partitions: &[i32]) -> Result<Vec<LoadedPartition>, StoreError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(partitions.len());
        let next = std::sync::atomic::AtomicUsize::new(0);
        let load_some = || {
            let mut loaded = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&partition) = partitions.get(i) else { return loaded };
                let started = std::time::Instant::now();
                let result = self.load_partition(partition).map(|(state, checkpoint)| LoadedPartition {
                    partition,
                    state,
                    checkpoint,
                    took: started.elapsed(),
                });
                loaded.push((i, result));
            }
        };
        let mut slots: Vec<Option<Result<LoadedPartition, StoreError>>> = partitions.iter().map(|_| None).collect();
        std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..threads)
                .map(|_| {
                    std::thread::Builder::new()
                        .name("receiptd-restore".into())
                        .spawn_scoped(scope, load_some)
                        .expect("a restore thread starts")
                })
                .collect();
            // This thread loads too.
            let mine = load_some();
            for (i, result) in
                helpers.into_iter().flat_map(|h| h.join().expect("a partition load panicked")).chain(mine)
            {
                slots[i] = Some(result);
            }
        });
        slots.into_iter().map(|slot| slot.expect("every partition was loaded")).collect()
    }

    /// Reads a partition's checkpoint alone.
    pub fn checkpoint(&self, partition: i32) -> Result<Option<Checkpoint>, StoreError> {
        let key = keys::checkpoint(partition);
        match self.db.get_pinned(&key).map_err(|e| self.rocks(e))? {
            None => Ok(None),
            Some(v) => decode(&key, &v).map(Some),
        }
    }

    /// Stages into `batch` every entity of `state` changed since the last
    /// call, and the partition's checkpoint: one put (or delete) per entity,
    /// however many events touched it. The same pass takes the changed
    /// receipts into `deltas` (see [`PartitionState::flush_changes`]).
    /// Returns how many entities were staged.
    pub fn stage(
        &self,
        batch: &mut BatchBuffer,
        partition: i32,
        state: &mut PartitionState,
        settings: &SettingsTable,
        deltas: &mut DeltaBuffer,
        next_offset: i64,
    ) -> usize {
        let mut entities = EntityWriter::new(batch, partition);
        let staged = state.flush_changes(settings, deltas, |key, entity| entities.stage(key, entity));
        self.stage_checkpoint(batch, partition, state, next_offset);
        staged
    }

    /// Stages the partition's checkpoint: the next offset to fold, and the
    /// state's watermark.
    pub fn stage_checkpoint(&self, batch: &mut BatchBuffer, partition: i32, state: &PartitionState, next_offset: i64) {
        let checkpoint = Checkpoint { next_offset, watermark: state.watermark() };
        batch.put(keys::checkpoint(partition), encode(&checkpoint));
    }

    /// Writes a batch atomically. Not fsynced: see [`Store::sync`].
    pub fn write(&self, batch: BatchBuffer) -> Result<(), StoreError> {
        if let Some(n) = self.fail_after {
            let write = self.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if write == n || (write > n && !self.fail_once) {
                return Err(StoreError::Injected { path: self.path.clone() });
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        let batch = if self.sorted_writes { batch.into_sorted_write_batch() } else { batch.into_write_batch() };
        self.db.write_opt(batch, &opts).map_err(|e| self.rocks(e))
    }

    /// Makes every write so far durable (fsyncs the WAL).
    pub fn sync(&self) -> Result<(), StoreError> {
        if let Some(hook) = &self.before_sync {
            hook();
        }
        self.db.flush_wal(true).map_err(|e| self.rocks(e))
    }

    /// Drops everything of a partition.
    pub fn drop_partition(&self, partition: i32) -> Result<(), StoreError> {
        let mut batch = BatchBuffer::default();
        batch.delete_range(keys::partition_prefix(partition), keys::partition_prefix(partition + 1));
        self.write(batch)
    }

    /// Partitions that have a checkpoint.
    pub fn partitions(&self) -> Result<Vec<i32>, StoreError> {
        let mut out = Vec::new();
        let mut next = 0i32;
        loop {
            let mut it = self
                .db
                .iterator(rocksdb::IteratorMode::From(&keys::partition_prefix(next), rocksdb::Direction::Forward));
            let Some(item) = it.next() else { break };
            let (key, _) = item.map_err(|e| self.rocks(e))?;
            let Some(p) = keys::partition_of(&key) else { break };
            if self.checkpoint(p)?.is_some() {
                out.push(p);
            }
            if p == i32::MAX {
                break;
            }
            next = p + 1;
        }
        Ok(out)
    }

    /// Estimated bytes on disk (SST files plus memtables).
    pub fn size_bytes(&self) -> u64 {
        let prop = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        prop("rocksdb.total-sst-files-size") + prop("rocksdb.cur-size-all-mem-tables")
    }

    /// Flushes the memtables and compacts everything, then returns RocksDB's
    /// own `total-sst-files-size`: the bytes the state takes on disk, for
    /// measurement and maintenance.
    pub fn compact_all(&self) -> Result<u64, StoreError> {
        self.db.flush().map_err(|e| self.rocks(e))?;
        self.db.compact_range::<&[u8], &[u8]>(None, None);
        Ok(self.db.property_int_value("rocksdb.total-sst-files-size").map_err(|e| self.rocks(e))?.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use receiptd_core::{Effects, Limits};
    use receiptd_loadgen::{Traffic, TrafficShape};
    use receiptd_wire::{Event, GroupMembers, Id, MembersOp};

    fn fold(state: &mut PartitionState, events: &[Event]) {
        let (settings, limits, mut fx) = (SettingsTable::default(), Limits::default(), Effects::default());
        for (i, e) in events.iter().enumerate() {
            state.apply(&settings, &limits, e, 1_732_200_000_000 + i as u64, &mut fx);
        }
    }

    fn counts(state: &PartitionState) -> Vec<(String, Option<(u32, u32)>)> {
        let mut v = Vec::new();
        for app in state.app_ids() {
            for m in state.message_ids(app) {
                v.push((format!("{app}/{m}"), state.counts(&SettingsTable::default(), app, &m)));
            }
        }
        v
    }

    /// Group `g` of app `a` with `members`, as a snapshot.
    fn group_g(members: Vec<Id>) -> GroupMembers {
        let (app_id, group_id) = ("a".into(), "g".into());
        GroupMembers { app_id, group_id, op: MembersOp::Snapshot, group_type: None, members, at: 0 }
    }

    /// [`group_g`] as an event.
    fn snapshot_of_g(members: Vec<Id>) -> Event {
        Event::GroupMembers(group_g(members))
    }

    /// The level-0 compaction trigger reaches RocksDB: the options file it
    /// writes at open names the value asked for.
    #[test]
    fn the_level0_compaction_trigger_is_rocksdbs() {
        let written = |options: &StoreOptions| {
            let dir = tempfile::tempdir().unwrap();
            drop(Store::open(dir.path(), options).unwrap());
            let mut found = Vec::new();
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                let path = entry.unwrap().path();
                if path.file_name().unwrap().to_string_lossy().starts_with("OPTIONS-") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    found.extend(
                        text.lines()
                            .filter_map(|l| l.trim().strip_prefix("level0_file_num_compaction_trigger="))
                            .map(|v| v.parse::<i32>().unwrap()),
                    );
                }
            }
            found
        };
        assert_eq!(written(&StoreOptions { level0_compaction_trigger: 3, ..StoreOptions::default() }), vec![3]);
        assert_eq!(written(&StoreOptions::default()), vec![8]);
    }

    /// A message's stored bytes, pinned: a change to how messages are held
    /// in memory must not change them (a store of the same format would be
    /// misread), and a message without reader pages is stored in format 3
    /// as format 2 stored it. One group message read in public, in private
    /// and after a revoke of another, and one C2C message read.
    #[test]
    fn a_message_is_stored_as_format_2_stores_it() {
        use receiptd_wire::{Conversation, MessageRead, MessageRevoked, MessageSent};
        let group = Conversation::Group { group_id: "g".into() };
        let sent = |msg_id: &str, conversation: &Conversation| {
            Event::MessageSent(MessageSent {
                app_id: "a".into(),
                msg_id: msg_id.into(),
                sender: "alice".into(),
                conversation: conversation.clone(),
                need_read_receipt: true,
                sent_at: 1_732_200_000_000,
            })
        };
        let read = |reader: &str, msg_id: &str, conversation: &Conversation, private: bool| {
            Event::MessageRead(MessageRead {
                app_id: "a".into(),
                reader: reader.into(),
                conversation: conversation.clone(),
                msg_ids: vec![msg_id.into()],
                read_at: 1_732_200_000_500,
                private,
            })
        };
        let c2c = Conversation::C2c { peer: "alice".into() };
        let members = ["alice", "bob", "carol", "dave"].map(Id::from).to_vec();
        let mut state = PartitionState::new();
        fold(
            &mut state,
            &[
                snapshot_of_g(members),
                sent("m1", &group),
                read("bob", "m1", &group, false),
                read("carol", "m1", &group, true),
                read("dave", "m1", &group, false),
                sent("m2", &group),
                read("bob", "m2", &group, false),
                Event::MessageRevoked(MessageRevoked {
                    app_id: "a".into(),
                    msg_id: "m2".into(),
                    sender: "alice".into(),
                    conversation: group.clone(),
                    at: 1_732_200_000_600,
                }),
                sent("m3", &Conversation::C2c { peer: "bob".into() }),
                read("bob", "m3", &c2c, false),
            ],
        );
        // As the build before the version was derived wrote them. A revoked
        // message's version is stored as 0 now (its byte after the
        // tracking's 05); a stored one of another value still reads back.
        let stored_before = [
            ("m1", "05616c69636500016701fd006a2a4f930100000002fdf46b2a4f93010000090302e8070100000000020201"),
            ("m2", "05616c69636500016701fd006a2a4f930100000501fdf46b2a4f93010000020000000102"),
            ("m3", "05616c6963650103626f62fd006a2a4f930100000001fdf46b2a4f93010000050100e80700010100"),
        ];
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let unhex = |hex: &str| -> Vec<u8> {
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
        };
        for (msg_id, before) in stored_before {
            let m = state.message("a", msg_id).unwrap();
            let now = hex(&encode(&*m));
            let expected = if msg_id == "m2" { before.replace("0501fd", "0500fd") } else { before.to_owned() };
            assert_eq!(now, expected, "{msg_id} is stored as before");
            let (read_back, pages) = decode_message(msg_id.as_bytes(), &unhex(before)).unwrap();
            assert_eq!(pages, 0);
            assert_eq!(hex(&encode(&read_back)), expected, "{msg_id} stored before reads back as it is now");
            assert_eq!(read_back.version(), m.version());
        }
        assert_eq!(state.message("a", "m1").unwrap().version(), 2, "two revealed reads, one private");
        let m1 = stored_before[0].1;
        for (trailing, problem) in [("00", "not its reader pages' count"), ("0100", "not its reader pages' count")] {
            let err = decode_message(b"m1", &unhex(&format!("{m1}{trailing}"))).unwrap_err();
            assert!(err.to_string().contains(problem), "{err}");
        }
        // m1 with 3 revealed reads counted (its last three bytes are that
        // count and its receipt's): refused at restore, not folded on.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let mut batch = BatchBuffer::default();
        store.stage(&mut batch, 0, &mut state, &SettingsTable::default(), &mut DeltaBuffer::new(), 1);
        store.write(batch).unwrap();
        assert_eq!(counts(&store.load_partition(0).unwrap().0), counts(&state));
        let miscounted = format!("{}03{}", &m1[..m1.len() - 6], &m1[m1.len() - 4..]);
        let key = keys::entity(0, &DirtyKey::Message { app: "a".into(), msg_id: "m1".into() });
        store.db.put(&key, unhex(&miscounted)).unwrap();
        let err = store.load_partition(0).err().expect("a miscounted message is refused");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("3 revealed reads counted for a reader list with 2"), "{err}");
    }

    /// Folds `reads` of message `m` of the 6,000-member group of
    /// [`paged_message_state`], one read an event, from reader `from` on.
    fn read_paged_message(state: &mut PartitionState, from: usize, reads: usize) {
        use receiptd_wire::{Conversation, MessageRead};
        let events: Vec<Event> = (from..from + reads)
            .map(|i| {
                Event::MessageRead(MessageRead {
                    app_id: "a".into(),
                    reader: format!("u{}", (i * 7_919) % 5_999 + 1).into(),
                    conversation: Conversation::Group { group_id: "g".into() },
                    msg_ids: vec!["m".into()],
                    read_at: 1_732_200_000_000 + 1_000 * i as u64,
                    private: i % 10 == 3,
                })
            })
            .collect();
        fold(state, &events);
    }

    /// A 6,000-member group and its message `m`, unread.
    fn paged_message_state() -> PartitionState {
        use receiptd_wire::{Conversation, MessageSent};
        let mut state = PartitionState::new();
        let members = (0..6_000).map(|i| Id::from(format!("u{i}"))).collect();
        let sent = MessageSent {
            app_id: "a".into(),
            msg_id: "m".into(),
            sender: "u0".into(),
            conversation: Conversation::Group { group_id: "g".into() },
            need_read_receipt: true,
            sent_at: 1_732_200_000_000,
        };
        fold(&mut state, &[snapshot_of_g(members), Event::MessageSent(sent)]);
        state
    }

    /// The bytes of the flush's write batch, written.
    fn flush(store: &Store, state: &mut PartitionState, offset: i64) -> usize {
        let mut batch = BatchBuffer::default();
        store.stage(&mut batch, 0, state, &SettingsTable::default(), &mut DeltaBuffer::new(), offset);
        let bytes = batch.size_in_bytes();
        store.write(batch).unwrap();
        bytes
    }

    /// A message read by thousands has its readers written a page at a time,
    /// never all again at each flush; restored, it is what was folded, with
    /// its pages and the readers since the last; folded on and restored
    /// again, the same; revoked, expired or its group dismissed, its pages
    /// are gone.
    #[test]
    fn a_message_read_by_thousands_is_written_a_page_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let mut state = paged_message_state();
        flush(&store, &mut state, 1);
        let (mut read, mut largest) = (0, 0);
        let page_count = |store: &Store| {
            let (from, to) = keys::reader_page_range(0, "a", "m");
            let pages = store.db.iterator(rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward));
            pages.map(|kv| kv.unwrap()).take_while(|(k, _)| **k < *to).count()
        };
        let lists = |state: &PartitionState| state.group_lists(&SettingsTable::default(), "a", "m").unwrap();
        // 5,000 readers, 250 a flush: pages sealed at 1,000 + 250 = 1,250
        // readers, then every 1,250 more (1,024 since the last, rounded up
        // to the flush).
        for offset in 2..22 {
            read_paged_message(&mut state, read, 250);
            read += 250;
            largest = largest.max(flush(&store, &mut state, offset));
            if offset == 12 {
                let (loaded, _) = store.load_partition(0).unwrap();
                assert_eq!(counts(&loaded), counts(&state));
                assert_eq!(lists(&loaded), lists(&state));
                let (live, restored) = (state.message("a", "m").unwrap(), loaded.message("a", "m").unwrap());
                assert_eq!(restored.readers, live.readers);
                drop((live, restored));
                // Folding on from the restored partition stores the same.
                state = loaded;
            }
        }
        assert_eq!(page_count(&store), 4, "pages sealed at 1,250, 2,500, 3,750 and 5,000 readers");
        // All 5,000 readers would be about 5 bytes each: a flush writes
        // about a page at most.
        assert!(largest < 1_300 * 5, "{largest} bytes in one flush");
        let (loaded, _) = store.load_partition(0).unwrap();
        assert_eq!(counts(&loaded), counts(&state));
        assert_eq!(lists(&loaded), lists(&state));
        assert_eq!(loaded.message("a", "m").unwrap().readers.len(), 5_000);

        // A page missing, or one too many: refused at restore.
        let page = |n: u32| {
            let mut k = Vec::new();
            keys::reader_page_into(0, "a", "m", n, &mut k);
            k
        };
        let second = store.db.get(page(1)).unwrap().unwrap();
        store.db.delete(page(1)).unwrap();
        let err = store.load_partition(0).err().expect("a missing page is refused");
        assert!(err.to_string().contains("reader page 2 where page 1 of 4 was due"), "{err}");
        store.db.put(page(1), &second).unwrap();
        store.db.put(page(4), &second).unwrap();
        let err = store.load_partition(0).err().expect("a page too many is refused");
        assert!(err.to_string().contains("reader page 4 where page 4 of 4 was due"), "{err}");
        store.db.delete(page(4)).unwrap();

        // Revoked: the pages go with its readers.
        let revoke = receiptd_wire::MessageRevoked {
            app_id: "a".into(),
            msg_id: "m".into(),
            sender: "u0".into(),
            conversation: receiptd_wire::Conversation::Group { group_id: "g".into() },
            at: 1_732_300_000_000,
        };
        fold(&mut state, &[Event::MessageRevoked(revoke)]);
        flush(&store, &mut state, 30);
        assert_eq!(page_count(&store), 0);
        let (loaded, _) = store.load_partition(0).unwrap();
        assert_eq!(loaded.message("a", "m").unwrap().readers.len(), 0);

        // Its group dismissed, or past retention: the message goes, and
        // its pages with it (a page left behind would fail the restore).
        for going in ["dismissed", "expired"] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let mut state = paged_message_state();
            read_paged_message(&mut state, 0, 2_000);
            flush(&store, &mut state, 1);
            assert_eq!(page_count(&store), 1, "{going}");
            // Restored first, as after a restart: its pages known from the store.
            let (mut state, _) = store.load_partition(0).unwrap();
            let (settings, limits, mut fx) = (SettingsTable::default(), Limits::default(), Effects::default());
            if going == "dismissed" {
                let dismiss = GroupMembers { op: MembersOp::Dismiss, members: vec![], ..group_g(vec![]) };
                state.apply(&settings, &limits, &Event::GroupMembers(dismiss), 1_732_200_000_000, &mut fx);
            } else {
                // A month and more later, by record time.
                let later = 1_732_200_000_000 + 40 * 86_400_000;
                state.apply(&settings, &limits, &snapshot_of_g(vec![]), later, &mut fx);
                state.expire_messages(&settings, &mut fx);
            }
            assert_eq!(state.message_count(), 0, "{going}");
            flush(&store, &mut state, 2);
            assert_eq!(page_count(&store), 0, "{going}");
            let (loaded, _) = store.load_partition(0).expect("restores without the message's pages");
            assert_eq!(loaded.message_count(), 0, "{going}");
        }
    }

    #[test]
    fn staged_state_and_checkpoint_reload_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let shape = TrafficShape { start_ms: 1_732_200_000_000, ..TrafficShape::small("a1", 3) };
        let events = Traffic::new(shape).take(20_000);
        let mut state = PartitionState::new();
        // Flush every 1,000 events, as the worker would.
        for (i, chunk) in events.chunks(1_000).enumerate() {
            fold(&mut state, chunk);
            let mut batch = BatchBuffer::default();
            store.stage(
                &mut batch,
                3,
                &mut state,
                &SettingsTable::default(),
                &mut DeltaBuffer::new(),
                (i as i64 + 1) * 1_000,
            );
            store.write(batch).unwrap();
        }
        store.sync().unwrap();
        let (loaded, checkpoint) = store.load_partition(3).unwrap();
        assert_eq!(checkpoint, Some(Checkpoint { next_offset: 20_000 + 1_000, watermark: state.watermark() }));
        assert!(loaded.message_count() > 1_000);
        assert_eq!(counts(&loaded), counts(&state));
        assert_eq!(loaded.held_count(), state.held_count());
        assert_eq!(store.partitions().unwrap(), vec![3]);
        assert!(store.load_partition(4).unwrap().1.is_none());

        // Dismissing a group removes its header, members and messages.
        let dismiss = Event::GroupMembers(GroupMembers {
            app_id: "a1".into(),
            group_id: "g0".into(),
            op: MembersOp::Dismiss,
            group_type: None,
            members: vec![],
            at: 0,
        });
        fold(&mut state, &[dismiss]);
        let mut batch = BatchBuffer::default();
        store.stage(&mut batch, 3, &mut state, &SettingsTable::default(), &mut DeltaBuffer::new(), 21_001);
        store.write(batch).unwrap();
        let (loaded, _) = store.load_partition(3).unwrap();
        assert_eq!(counts(&loaded), counts(&state));
        assert!(loaded.group_lists(&SettingsTable::default(), "a1", "nonexistent").is_none());

        store.drop_partition(3).unwrap();
        assert!(store.partitions().unwrap().is_empty());
    }

    #[test]
    fn partitions_loaded_side_by_side_load_as_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        for partition in 0..5 {
            let shape = TrafficShape { start_ms: 1_732_200_000_000, ..TrafficShape::small("a1", partition as u64) };
            let mut state = PartitionState::new();
            fold(&mut state, &Traffic::new(shape).take(2_000 + partition as usize * 500));
            let mut batch = BatchBuffer::default();
            let (settings, mut deltas) = (SettingsTable::default(), DeltaBuffer::new());
            store.stage(&mut batch, partition, &mut state, &settings, &mut deltas, 100 + i64::from(partition));
            store.write(batch).unwrap();
        }
        let order = [3, 0, 4, 1, 2, 7];
        let loaded = store.load_partitions(&order).unwrap();
        assert_eq!(loaded.iter().map(|l| l.partition).collect::<Vec<_>>(), order, "in the order asked");
        for l in &loaded {
            let (state, checkpoint) = store.load_partition(l.partition).unwrap();
            assert_eq!(l.checkpoint, checkpoint, "partition {}", l.partition);
            assert_eq!(counts(&l.state), counts(&state), "partition {}", l.partition);
        }
        assert!(loaded[5].checkpoint.is_none() && loaded[5].state.message_count() == 0, "one never seen loads empty");
        assert!(store.load_partitions(&[]).unwrap().is_empty());

        // One corrupt partition fails the lot.
        let mut batch = BatchBuffer::default();
        batch.put(keys::checkpoint(4), [0xff]);
        store.write(batch).unwrap();
        let err = store.load_partitions(&order).err().expect("refused");
        assert!(matches!(&err, StoreError::Corrupt { key, .. } if *key == keys::hex(&keys::checkpoint(4))), "{err}");
    }

    #[test]
    fn a_batch_written_in_key_order_reads_back_as_staged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let key = |p: i32, s: &str| [keys::partition_prefix(p), s.as_bytes().to_vec()].concat();
        let mut batch = BatchBuffer::default();
        for round in 0..3u8 {
            for (p, s) in [(1, "z"), (0, "m"), (1, "a"), (0, "b"), (0, "m")] {
                batch.put(key(p, s), [round]);
            }
            batch.delete(key(0, "b"));
            batch.delete_range(key(1, "a"), key(1, "b"));
            batch.put(key(1, "a"), [round, 9]);
            store.write(std::mem::take(&mut batch)).unwrap();
        }
        let read = |p: i32, s: &str| store.db.get(key(p, s)).unwrap();
        assert_eq!(read(1, "z"), Some(vec![2]));
        assert_eq!(read(0, "m"), Some(vec![2]), "a key's later put wins");
        assert_eq!(read(0, "b"), None, "its delete after its put");
        assert_eq!(read(1, "a"), Some(vec![2, 9]), "a put after a range deletion");
    }

    #[test]
    fn a_store_of_another_format_is_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join(FORMAT_FILE);
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), format!("{STORE_FORMAT}\n"), "a new store is marked");
        let mut batch = BatchBuffer::default();
        batch.put(keys::checkpoint(0), encode(&Checkpoint { next_offset: 1, watermark: 2 }));
        store.write(batch).unwrap();
        drop(store);
        Store::open(dir.path(), &StoreOptions::default()).expect("its own format opens");
        Store::open_read_only(dir.path()).expect("its own format opens read-only");

        let refused = |found: u32| {
            let err = Store::open(dir.path(), &StoreOptions::default()).err().expect("refused");
            assert!(matches!(err, StoreError::Format { found: f, expected: STORE_FORMAT, .. } if f == found), "{err}");
            assert!(err.to_string().contains("another receiptd version"), "{err}");
            let err = Store::open_read_only(dir.path()).err().expect("refused read-only too");
            assert!(matches!(err, StoreError::Format { .. }), "{err}");
        };
        std::fs::write(&marker, "7\n").unwrap();
        refused(7);

        // Format 2 is format 3 without reader pages: read as it is, and
        // marked 3 once opened to write (a format 2 build then refuses it).
        std::fs::write(&marker, "2\n").unwrap();
        let store = Store::open_read_only(dir.path()).expect("format 2 opens read-only");
        assert_eq!(store.checkpoint(0).unwrap(), Some(Checkpoint { next_offset: 1, watermark: 2 }));
        drop(store);
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "2\n", "left as it was read-only");
        drop(Store::open(dir.path(), &StoreOptions::default()).expect("format 2 opens"));
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), format!("{STORE_FORMAT}\n"), "marked 3");

        // State but no marker: written before markers existed.
        std::fs::remove_file(&marker).unwrap();
        refused(1);
        assert!(!marker.exists(), "a refused store is left as it was");
    }

    #[test]
    fn a_group_dismissed_and_created_again_in_one_flush_keeps_no_old_member() {
        use receiptd_wire::{Conversation, MessageSent};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let members = |op, members: &[&str]| {
            Event::GroupMembers(GroupMembers {
                app_id: "a1".into(),
                group_id: "g".into(),
                op,
                group_type: None,
                members: members.iter().map(|m| Id::from(m.to_string())).collect(),
                at: 0,
            })
        };
        let send = |msg_id: &str| {
            Event::MessageSent(MessageSent {
                app_id: "a1".into(),
                msg_id: msg_id.into(),
                sender: "alice".into(),
                conversation: Conversation::Group { group_id: "g".into() },
                need_read_receipt: true,
                sent_at: 1_732_200_000_000,
            })
        };
        let (settings, mut deltas) = (SettingsTable::default(), DeltaBuffer::new());
        let mut state = PartitionState::new();
        fold(&mut state, &[members(MembersOp::Snapshot, &["alice", "bob", "carol", "dave"])]);
        let mut batch = BatchBuffer::default();
        store.stage(&mut batch, 0, &mut state, &settings, &mut deltas, 1);
        store.write(batch).unwrap();

        // One flush window, staged in slices with the fold going on between.
        fold(&mut state, &[members(MembersOp::Dismiss, &[]), members(MembersOp::Snapshot, &["alice"])]);
        let mut batch = BatchBuffer::default();
        let mut slice = EntityWriter::new(&mut batch, 0);
        assert_eq!(state.stage_changes(1, &settings, &mut deltas, |key, entity| slice.stage(key, entity)), 1);
        fold(&mut state, &[members(MembersOp::Join, &["erin"]), send("m1")]);
        store.stage(&mut batch, 0, &mut state, &settings, &mut deltas, 5);
        store.write(batch).unwrap();

        let (loaded, _) = store.load_partition(0).unwrap();
        let unread = |s: &PartitionState| s.group_lists(&settings, "a1", "m1").map(|(_, unread)| unread);
        assert_eq!(unread(&state), Some(vec!["erin".to_string()]));
        assert_eq!(unread(&loaded), unread(&state), "bob, carol and dave left with the dismissed group");
    }

    #[test]
    fn a_store_missing_what_the_fold_wrote_is_refused_naming_the_key() {
        use receiptd_wire::{Conversation, MessageSent};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let snapshot = Event::GroupMembers(GroupMembers {
            app_id: "a1".into(),
            group_id: "g".into(),
            op: MembersOp::Snapshot,
            group_type: None,
            members: ["alice", "bob", "carol"].into_iter().map(Id::from).collect(),
            at: 0,
        });
        let send = Event::MessageSent(MessageSent {
            app_id: "a1".into(),
            msg_id: "m1".into(),
            sender: "alice".into(),
            conversation: Conversation::Group { group_id: "g".into() },
            need_read_receipt: true,
            sent_at: 1_732_200_000_000,
        });
        let mut state = PartitionState::new();
        fold(&mut state, &[snapshot, send]);
        let mut batch = BatchBuffer::default();
        store.stage(&mut batch, 0, &mut state, &SettingsTable::default(), &mut DeltaBuffer::new(), 1);
        store.write(batch).unwrap();
        store.load_partition(0).expect("what the fold wrote loads");

        let (app, group_id) = (Id::from("a1"), Id::from("g"));
        let delete = |key: DirtyKey| {
            let mut batch = BatchBuffer::default();
            batch.delete(keys::entity(0, &key));
            store.write(batch).unwrap();
        };
        let refused = |key: DirtyKey, problem: &str| {
            let err = store.load_partition(0).err().expect("refused");
            let expected = keys::hex(&keys::entity(0, &key));
            assert!(matches!(&err, StoreError::Corrupt { key, .. } if *key == expected), "{err}");
            assert!(err.to_string().ends_with(problem), "{err}");
        };
        // A name claiming 2^56 bytes: an error, where decoding it into a
        // `String` allocated that much first and aborted.
        let slot_1 = DirtyKey::Member { app: app.clone(), group_id: group_id.clone(), ordinal: 1 };
        let mut batch = BatchBuffer::default();
        batch.put(keys::entity(0, &slot_1), [253, 0, 0, 0, 0, 0, 0, 0, 1, 3, b'b', b'o', b'b', 1]);
        store.write(batch).unwrap();
        refused(slot_1.clone(), "");
        delete(slot_1);
        refused(
            DirtyKey::Member { app: app.clone(), group_id: group_id.clone(), ordinal: 2 },
            "member slot 2 where slot 1 comes next",
        );
        delete(DirtyKey::Group { app: app.clone(), group_id: group_id.clone() });
        refused(
            DirtyKey::Member { app: app.clone(), group_id: group_id.clone(), ordinal: 0 },
            "a member slot of a group with no header",
        );
        for ordinal in [0, 2] {
            delete(DirtyKey::Member { app: app.clone(), group_id: group_id.clone(), ordinal });
        }
        refused(
            DirtyKey::Message { app, msg_id: "m1".into() },
            "a tracked message of group \"g\", which is not stored",
        );
    }

    #[test]
    fn a_group_at_any_epoch_restores_and_one_past_the_last_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let header = DirtyKey::Group { app: "a1".into(), group_id: "g".into() };
        let write_header = |epoch: u32| {
            let mut batch = BatchBuffer::default();
            batch.put(keys::entity(0, &header), encode(&GroupMeta { group_type: None, epoch }));
            store.write(batch).unwrap();
        };
        // Restoring once kept a count for every epoch: 32 GiB for this one.
        write_header(receiptd_core::LAST_EPOCH);
        let mut batch = BatchBuffer::default();
        let slot = DirtyKey::Member { app: "a1".into(), group_id: "g".into(), ordinal: 0 };
        batch.put(keys::entity(0, &slot), encode(&("alice", receiptd_core::LAST_EPOCH)));
        store.write(batch).unwrap();
        let (mut state, _) = store.load_partition(0).expect("a group at its last epoch");
        let send = Event::MessageSent(receiptd_wire::MessageSent {
            app_id: "a1".into(),
            msg_id: "m1".into(),
            sender: "bob".into(),
            conversation: receiptd_wire::Conversation::Group { group_id: "g".into() },
            need_read_receipt: true,
            sent_at: 1_732_200_000_000,
        });
        fold(&mut state, &[send]);
        assert_eq!(state.counts(&SettingsTable::default(), "a1", "m1"), Some((0, 1)), "alice is its audience");
        write_header(u32::MAX);
        let err = store.load_partition(0).err().expect("refused");
        assert!(
            matches!(&err, StoreError::Corrupt { key, .. } if *key == keys::hex(&keys::entity(0, &header))),
            "{err}"
        );
        assert!(err.to_string().ends_with("a group at epoch 4294967295, past the last, 4294967294"), "{err}");
    }

    /// Bytes of one message's state, persisted (RocksDB value) and in memory
    /// (struct plus reader vector), for a group of `members` with `readers`.
    fn message_bytes(members: usize, readers: usize) -> (usize, usize) {
        use receiptd_wire::{Conversation, MessageRead, MessageSent};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let users: Vec<String> = (0..members).map(|i| format!("user{i:06}")).collect();
        let mut events: Vec<Event> = users
            .chunks(10_000)
            .enumerate()
            .map(|(i, chunk)| {
                Event::GroupMembers(GroupMembers {
                    app_id: "a1".into(),
                    group_id: "g".into(),
                    op: if i == 0 { MembersOp::Snapshot } else { MembersOp::Join },
                    group_type: Some(receiptd_wire::GroupType::Work),
                    members: chunk.iter().map(|u| Id::from(u.as_str())).collect(),
                    at: 0,
                })
            })
            .collect();
        let group = Conversation::Group { group_id: "g".into() };
        events.push(Event::MessageSent(MessageSent {
            app_id: "a1".into(),
            msg_id: "m".into(),
            sender: users[0].clone().into(),
            conversation: group.clone(),
            need_read_receipt: true,
            sent_at: 1_732_200_000_000,
        }));
        for (i, u) in users[1..=readers].iter().enumerate() {
            events.push(Event::MessageRead(MessageRead {
                app_id: "a1".into(),
                reader: u.clone().into(),
                conversation: group.clone(),
                msg_ids: vec!["m".into()],
                read_at: 1_732_200_000_000 + 1_000 * i as u64,
                private: false,
            }));
        }
        let mut state = PartitionState::new();
        fold(&mut state, &events);
        let mut batch = BatchBuffer::default();
        store.stage(&mut batch, 0, &mut state, &SettingsTable::default(), &mut DeltaBuffer::new(), 1);
        store.write(batch).unwrap();
        let key = keys::entity(0, &DirtyKey::Message { app: "a1".into(), msg_id: "m".into() });
        let (from, to) = keys::reader_page_range(0, "a1", "m");
        let pages = store.db.iterator(rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward));
        let page_bytes: usize =
            pages.map(|kv| kv.unwrap()).take_while(|(k, _)| **k < *to).map(|(_, value)| value.len()).sum();
        let persisted = store.db.get(&key).unwrap().unwrap().len() + page_bytes;
        let m = state.message("a1", "m").unwrap();
        let in_memory = std::mem::size_of::<MessageState>() + m.readers.heap_bytes() + m.sender.len();
        (persisted, in_memory)
    }

    #[test]
    fn message_state_grows_with_readers_not_with_the_group() {
        let small_group = message_bytes(1_000, 10);
        let huge_10 = message_bytes(100_000, 10);
        let huge_10k = message_bytes(100_000, 10_000);
        eprintln!("bytes per message (persisted, in memory): 1k members/10 readers {small_group:?}, 100k members/10 readers {huge_10:?}, 100k members/10k readers {huge_10k:?}");
        // The group's size does not show in a message's state.
        assert!(huge_10.0 <= small_group.0 + 4, "{huge_10:?} vs {small_group:?}");
        assert!(huge_10.0 < 256);
        // Readers do: a bounded number of bytes each.
        assert!(huge_10k.0 < 10_000 * 16, "{huge_10k:?}");
        // In memory a reader is 8 bytes (4 for ordinals below 64), up to
        // twice that while the vector's capacity has doubled past its length.
        assert!(huge_10k.1 < 10_000 * 16 + 512, "{huge_10k:?}");
        // Persisted, consecutive readers a second apart take 4 bytes each.
        assert!(huge_10k.0 < 10_000 * 5, "{huge_10k:?}");
    }
}
