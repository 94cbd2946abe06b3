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

    /// A length (LEB128 varint32, as RocksDB's `PutLengthPrefixedSlice`)
    /// and the bytes.
    #[inline]
    fn put_slice(&mut self, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).expect("RocksDB keys and values are under 4 GiB");
        receiptd_core::put_leb128(&mut self.rep, u64::from(len));
        self.rep.extend_from_slice(bytes);
    }
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
}
