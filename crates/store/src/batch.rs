//! A RocksDB write batch built in Rust, in RocksDB's own byte format.
//!
//! Staging puts every changed entity of a flush into one batch. Through the
//! C API each put cost about 490 instructions (a call across the FFI, a
//! save point, the count rewritten in the header, a `std::string` that
//! grows by copying), a fifth of what staging a message cost. Here a put
//! appends to a `Vec<u8>`, and the whole batch crosses into RocksDB once,
//! on the store's writer thread ([`BatchBuffer::into_write_batch`]).
//!
//! The format is the write-ahead log's, which RocksDB keeps stable: a
//! 12-byte header (a sequence number RocksDB fills at write, and the
//! record count, both little-endian), then per record a type byte and
//! length-prefixed (LEB128 varint32) keys and values. A test checks every
//! operation used here against the batch the C API builds.

use rocksdb::WriteBatch;

/// Bytes before the first record: sequence (8) and count (4).
const HEADER: usize = 12;
/// Record types of the default column family (`db/dbformat.h`).
const TYPE_DELETION: u8 = 0x0;
const TYPE_VALUE: u8 = 0x1;
const TYPE_RANGE_DELETION: u8 = 0xF;

/// Puts, deletes and range deletes for one atomic write, in RocksDB's
/// write-batch format. [`crate::Store::write`] writes it.
#[derive(Clone)]
pub struct BatchBuffer {
    rep: Vec<u8>,
    count: u32,
}

/// Its size, not its bytes: a flush's batch is megabytes.
impl std::fmt::Debug for BatchBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchBuffer").field("records", &self.count).field("bytes", &self.rep.len()).finish()
    }
}

impl Default for BatchBuffer {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl BatchBuffer {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `bytes` of records without growing.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut rep = Vec::with_capacity(HEADER + bytes);
        rep.resize(HEADER, 0);
        BatchBuffer { rep, count: 0 }
    }

    /// Sets `key` to `value`.
    #[inline]
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.rep.reserve(1 + 5 + key.len() + 5 + value.len());
        self.rep.push(TYPE_VALUE);
        self.put_slice(key);
        self.put_slice(value);
        self.count += 1;
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) {
        self.rep.push(TYPE_DELETION);
        self.put_slice(key.as_ref());
        self.count += 1;
    }

    /// Deletes every key in `from..to`.
    pub fn delete_range(&mut self, from: impl AsRef<[u8]>, to: impl AsRef<[u8]>) {
        self.rep.push(TYPE_RANGE_DELETION);
        self.put_slice(from.as_ref());
        self.put_slice(to.as_ref());
        self.count += 1;
    }

    /// Records (puts and deletes) so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Its size in RocksDB's format, header included (what
    /// `WriteBatch::size_in_bytes` says of the same batch).
    pub fn size_in_bytes(&self) -> usize {
        self.rep.len()
    }

    /// Empties it, keeping its room.
    pub fn clear(&mut self) {
        self.rep.truncate(HEADER);
        self.count = 0;
    }

    /// The batch as RocksDB takes it, the count in its header (one copy
    /// of the bytes).
    pub fn into_write_batch(mut self) -> WriteBatch {
        self.rep[8..HEADER].copy_from_slice(&self.count.to_le_bytes());
        WriteBatch::from_data(&self.rep)
    }

    /// [`BatchBuffer::into_write_batch`], its records in key order first.
    ///
    /// RocksDB's memtable is a skiplist, and a flush's keys come in the
    /// order their entities were dirtied: each insert searched the list
    /// from its head, missing the cache on the way down (5% of the worker
    /// process's CPU in a drain). In key order, with the insert hint
    /// [`crate::Store::open`] sets, each insert starts near the one before
    /// (`cargo bench --bench store_write`: 0.76 of the time a record).
    /// Records of one key keep their order, and none moves across a range
    /// deletion, so the batch applies as it would unsorted.
    pub(crate) fn into_sorted_write_batch(self) -> WriteBatch {
        SORTING.with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return self.into_write_batch();
            };
            let Sorting { records, sorted } = &mut *scratch;
            let Some(()) = self.sort_into(records, sorted) else {
                // Not a batch this builder wrote: written as it is, where
                // RocksDB's own parse reports it.
                return self.into_write_batch();
            };
            let batch = WriteBatch::from_data(sorted);
            // One huge batch (a snapshot of a 100,000-member group) must
            // not keep its room here for good.
            if sorted.capacity() > KEPT_SORTING_BYTES {
                *scratch = Sorting::default();
            }
            batch
        })
    }

    /// Writes the batch, header with count first, its records in key order
    /// between range deletions, into `sorted`. `None` if a record does not
    /// parse.
    fn sort_into(&self, records: &mut Vec<RecordSpan>, sorted: &mut Vec<u8>) -> Option<()> {
        records.clear();
        let rep = self.rep.as_slice();
        u32::try_from(rep.len()).ok()?;
        let mut at = HEADER;
        while at < rep.len() {
            let start = at;
            let kind = rep[at];
            at += 1;
            let key = read_slice(rep, &mut at)?;
            match kind {
                TYPE_VALUE | TYPE_RANGE_DELETION => {
                    read_slice(rep, &mut at)?;
                }
                TYPE_DELETION => {}
                _ => return None,
            }
            let span = RecordSpan {
                start: start as u32,
                key_start: key.start as u32,
                key_end: key.end as u32,
                end: at as u32,
            };
            if kind == TYPE_RANGE_DELETION {
                records.extend([RecordSpan::BARRIER, span, RecordSpan::BARRIER]);
            } else {
                records.push(span);
            }
        }
        sorted.clear();
        sorted.reserve(rep.len());
        sorted.extend_from_slice(&rep[..8]);
        sorted.extend_from_slice(&self.count.to_le_bytes());
        let key = |r: &RecordSpan| &rep[r.key_start as usize..r.key_end as usize];
        for run in records.split_mut(|r| *r == RecordSpan::BARRIER) {
            // Ties by place: a key's records stay in order.
            run.sort_unstable_by(|a, b| key(a).cmp(key(b)).then(a.start.cmp(&b.start)));
            for r in run.iter() {
                sorted.extend_from_slice(&rep[r.start as usize..r.end as usize]);
            }
        }
        Some(())
    }

    /// A length (LEB128 varint32, as RocksDB's `PutLengthPrefixedSlice`)
    /// and the bytes.
    #[inline]
    fn put_slice(&mut self, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).expect("RocksDB keys and values are under 4 GiB");
        receiptd_core::put_leb128(&mut self.rep, u64::from(len));
        self.rep.extend_from_slice(bytes);
    }
}

/// Where a record lies in a batch's bytes, and its key.
#[derive(Clone, Copy, PartialEq, Eq)]
struct RecordSpan {
    start: u32,
    key_start: u32,
    key_end: u32,
    end: u32,
}

impl RecordSpan {
    /// Around a range deletion: no record moves across it.
    const BARRIER: RecordSpan = RecordSpan { start: u32::MAX, key_start: 0, key_end: 0, end: 0 };
}

/// The store writer's room for sorting, kept between batches: a flush's
/// batch is megabytes, and fresh room each time is fresh pages.
#[derive(Default)]
struct Sorting {
    records: Vec<RecordSpan>,
    sorted: Vec<u8>,
}

/// Most bytes of sorted batch kept for the next batch.
const KEPT_SORTING_BYTES: usize = 16 << 20;

thread_local! {
    static SORTING: std::cell::RefCell<Sorting> = std::cell::RefCell::default();
}

/// The bytes of a length-prefixed slice at `at`, moving `at` past them.
fn read_slice(rep: &[u8], at: &mut usize) -> Option<std::ops::Range<usize>> {
    let mut rest = rep.get(*at..)?;
    let len = usize::try_from(receiptd_core::take_leb128(&mut rest).ok()?).ok()?;
    let start = rep.len() - rest.len();
    *at = start.checked_add(len).filter(|end| *end <= rep.len())?;
    Some(start..*at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_bytes_rocksdbs_own_batch_builds() {
        let (mut ours, mut theirs) = (BatchBuffer::new(), WriteBatch::default());
        assert_eq!(ours.clone().into_write_batch().data(), theirs.data(), "empty");
        // Lengths at the varint's steps (1, 2 and 3 bytes).
        for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            let (key, value) = (vec![b'k'; len.min(1_000)], vec![len as u8; len]);
            ours.put(&key, &value);
            theirs.put(&key, &value);
            ours.delete(&value);
            theirs.delete(&value);
            ours.delete_range(&key, &value);
            theirs.delete_range(&key, &value);
        }
        assert_eq!((ours.len(), ours.size_in_bytes()), (theirs.len(), theirs.size_in_bytes()));
        assert_eq!(ours.clone().into_write_batch().data(), theirs.data());
        ours.clear();
        theirs.clear();
        ours.put(b"a", b"b");
        theirs.put(b"a", b"b");
        assert_eq!(ours.into_write_batch().data(), theirs.data(), "cleared, then used again");
    }

    #[test]
    fn sorts_by_key_between_range_deletions_keeping_each_keys_order() {
        let mut staged = BatchBuffer::new();
        staged.put(b"c", b"1");
        staged.put(b"a", b"2");
        staged.delete(b"bb");
        staged.put(b"a", b"3");
        staged.put(b"ab", vec![7; 300]);
        staged.delete_range(b"a", b"b");
        staged.put(b"b", b"4");
        staged.delete(b"a");
        staged.put(b"a", b"5");
        let mut expected = BatchBuffer::new();
        expected.put(b"a", b"2");
        expected.put(b"a", b"3");
        expected.put(b"ab", vec![7; 300]);
        expected.delete(b"bb");
        expected.put(b"c", b"1");
        expected.delete_range(b"a", b"b");
        expected.delete(b"a");
        expected.put(b"a", b"5");
        expected.put(b"b", b"4");
        assert_eq!(staged.clone().into_sorted_write_batch().data(), expected.clone().into_write_batch().data());
        assert_eq!(staged.into_sorted_write_batch().data(), expected.into_write_batch().data(), "its room used again");
        let empty = BatchBuffer::new();
        assert_eq!(empty.clone().into_sorted_write_batch().data(), empty.into_write_batch().data());
    }

    #[test]
    fn a_huge_batch_does_not_keep_its_room_for_sorting() {
        let kept = || SORTING.with(|s| s.borrow().sorted.capacity());
        let mut small = BatchBuffer::new();
        small.put(b"b", b"1");
        small.put(b"a", b"2");
        small.into_sorted_write_batch();
        assert!(kept() > 0 && kept() <= KEPT_SORTING_BYTES, "a usual batch's room is kept: {}", kept());
        let mut huge = BatchBuffer::new();
        huge.put(b"b", vec![1; KEPT_SORTING_BYTES]);
        huge.put(b"a", b"2");
        let written = huge.into_sorted_write_batch();
        assert_eq!(written.len(), 2);
        assert_eq!(kept(), 0, "a huge batch's is not");
    }

    #[test]
    fn a_batch_that_does_not_parse_is_written_as_it_is() {
        let mut cut = BatchBuffer::new();
        cut.put(b"b", b"1");
        cut.put(b"a", b"2");
        cut.rep.pop();
        assert_eq!(cut.clone().into_sorted_write_batch().data(), cut.into_write_batch().data(), "a value cut short");
        let mut unknown = BatchBuffer::new();
        unknown.put(b"b", b"1");
        unknown.rep.push(0x7e);
        unknown.put(b"a", b"2");
        let data = unknown.clone().into_write_batch().data().to_vec();
        assert_eq!(unknown.into_sorted_write_batch().data(), data, "a record type it does not write");
    }
}
