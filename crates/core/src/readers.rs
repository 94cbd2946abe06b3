//! A message's readers: 8 bytes each in memory, 2 to 5 on disk.
//!
//! A reader is a group ordinal, a read time and a hidden flag. Kept as a
//! [`ReadMark`] per reader (ordinal, u64 time, flag, padding) that is 16
//! bytes, and readers are most of what a well-read message holds. Here a
//! reader is one `u32` for the ordinal with the flag in its top bit, and one
//! `u32` for the read time as an offset from the message's send time, which
//! covers reads from 24.8 days before the send to 24.8 days after it. A read
//! outside that window (a client clock far off, a message read weeks later),
//! or an ordinal past 2³¹, is kept whole in a side list that is usually
//! absent: nothing is rounded or lost.
//!
//! Persisted, the readers are one byte string of varints: each ordinal as
//! its gap from the previous one (with the flag in the low bit), each offset
//! as its difference from the previous one. A reader then takes 2 bytes
//! when members read in turn within a second of each other, and about 5
//! when random members read at random times within an hour, instead of
//! bincode's 11 to 13.
//!
//! The offsets are relative to a send time the caller passes in (the
//! message's own `sent_at`), which is persisted with the message; the byte
//! string holds the offsets as they are, so encoding needs no send time.

use crate::state::ReadMark;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The hidden flag, in a compact reader's ordinal word.
const HIDDEN: u32 = 1 << 31;
/// Offsets are stored as `read_at - sent_at + OFFSET_BIAS`, modulo 2⁶⁴:
/// the sum is then exact for every time whose offset fits in 32 bits.
const OFFSET_BIAS: u64 = 1 << 31;

/// One reader in 8 bytes: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Compact {
    ordinal_and_hidden: u32,
    offset: u32,
}

impl Compact {
    /// The compact form of `mark`, if its ordinal and time fit.
    fn of(mark: ReadMark, sent_at: u64) -> Option<Compact> {
        if mark.ordinal & HIDDEN != 0 {
            return None;
        }
        let offset = u32::try_from(mark.read_at.wrapping_sub(sent_at).wrapping_add(OFFSET_BIAS)).ok()?;
        let flag = if mark.hidden { HIDDEN } else { 0 };
        Some(Compact { ordinal_and_hidden: mark.ordinal | flag, offset })
    }

    fn ordinal(self) -> u32 {
        self.ordinal_and_hidden & !HIDDEN
    }

    fn hidden(self) -> bool {
        self.ordinal_and_hidden & HIDDEN != 0
    }

    fn mark(self, sent_at: u64) -> ReadMark {
        // Undoes `of` modulo 2⁶⁴, where it is a bijection.
        let read_at = sent_at.wrapping_add(u64::from(self.offset)).wrapping_sub(OFFSET_BIAS);
        ReadMark { ordinal: self.ordinal(), read_at, hidden: self.hidden() }
    }
}

/// Who read a message, when, and whether the read is hidden; by ordinal.
/// The send time every method takes is the message's `sent_at`, the same
/// for the readers' whole life.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readers {
    /// Readers that fit in 8 bytes, sorted by ordinal.
    compact: Vec<Compact>,
    /// The rest, whole, sorted by ordinal; no ordinal is in both lists.
    outliers: Option<Box<Vec<ReadMark>>>,
}

impl Readers {
    /// The readers kept whole (usually none).
    fn outliers(&self) -> &[ReadMark] {
        self.outliers.as_deref().map_or(&[], |o| o.as_slice())
    }

    /// How many read (hidden reads included).
    pub fn len(&self) -> usize {
        self.compact.len() + self.outliers().len()
    }

    /// Whether nobody has read.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many of the reads are hidden.
    pub fn hidden_count(&self) -> usize {
        self.compact.iter().filter(|c| c.hidden()).count() + self.outliers().iter().filter(|r| r.hidden).count()
    }

    /// Bytes the readers hold on the heap (capacity included).
    pub fn heap_bytes(&self) -> usize {
        self.compact.capacity() * std::mem::size_of::<Compact>()
            + self
                .outliers
                .as_ref()
                .map_or(0, |o| std::mem::size_of::<Vec<ReadMark>>() + o.capacity() * std::mem::size_of::<ReadMark>())
    }

    /// Where the readers' heap memory starts (dangling when they have none):
    /// for a prefetch.
    pub(crate) fn heap_ptr(&self) -> *const u8 {
        self.compact.as_ptr().cast()
    }

    /// The read of `ordinal`, if it read.
    pub(crate) fn get(&self, ordinal: u32, sent_at: u64) -> Option<ReadMark> {
        if let Ok(i) = self.compact.binary_search_by_key(&ordinal, |c| c.ordinal()) {
            return Some(self.compact[i].mark(sent_at));
        }
        let outliers = self.outliers();
        outliers.binary_search_by_key(&ordinal, |r| r.ordinal).ok().map(|i| outliers[i])
    }

    /// Adds a read; false (and nothing changes) if its ordinal has read.
    pub(crate) fn insert(&mut self, mark: ReadMark, sent_at: u64) -> bool {
        let at = match self.compact.binary_search_by_key(&mark.ordinal, |c| c.ordinal()) {
            Ok(_) => return false,
            Err(at) => at,
        };
        let outlier_at = match self.outliers.as_ref().map(|o| o.binary_search_by_key(&mark.ordinal, |r| r.ordinal)) {
            Some(Ok(_)) => return false,
            Some(Err(at)) => at,
            None => 0,
        };
        match Compact::of(mark, sent_at) {
            Some(compact) => self.compact.insert(at, compact),
            None => self.outliers.get_or_insert_default().insert(outlier_at, mark),
        }
        true
    }

    /// Every read from ordinal `start` on, in ordinal order.
    pub(crate) fn iter_from(&self, start: u32, sent_at: u64) -> ReadsFrom<'_> {
        let from = self.compact.partition_point(|c| c.ordinal() < start);
        let outliers = self.outliers();
        let outliers_from = outliers.partition_point(|r| r.ordinal < start);
        ReadsFrom { compact: &self.compact[from..], outliers: &outliers[outliers_from..], sent_at }
    }

    /// Every read, in ordinal order.
    pub(crate) fn iter(&self, sent_at: u64) -> ReadsFrom<'_> {
        self.iter_from(0, sent_at)
    }
}

/// Reads in ordinal order: the two sorted lists merged.
pub(crate) struct ReadsFrom<'a> {
    compact: &'a [Compact],
    outliers: &'a [ReadMark],
    sent_at: u64,
}

impl Iterator for ReadsFrom<'_> {
    type Item = ReadMark;

    fn next(&mut self) -> Option<ReadMark> {
        let take_compact = match (self.compact.first(), self.outliers.first()) {
            (None, None) => return None,
            (Some(c), Some(r)) => c.ordinal() < r.ordinal,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if take_compact {
            let (c, rest) = self.compact.split_first()?;
            self.compact = rest;
            Some(c.mark(self.sent_at))
        } else {
            let (r, rest) = self.outliers.split_first()?;
            self.outliers = rest;
            Some(*r)
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.compact.len() + self.outliers.len();
        (n, Some(n))
    }
}

// ---- persisted form ----

use crate::stored_form::put_leb128 as put_varint;

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// Reads the persisted form, refusing anything [`Readers::encode`] could
/// not have written.
struct Decoder<'a> {
    bytes: &'a [u8],
}

impl Decoder<'_> {
    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.bytes.split_first().ok_or("reader list ends inside a number")?;
            self.bytes = rest;
            v |= u64::from(b & 0x7f).checked_shl(shift).filter(|_| shift < 63 || b <= 1).ok_or("number too large")?;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("number too large")
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        u32::try_from(self.varint()?).map_err(|_| "value past u32 in the reader list")
    }

    /// A count, bounded by what the remaining bytes could hold (at least
    /// one byte per entry), so a corrupt count cannot reserve gigabytes.
    fn count(&mut self) -> Result<usize, &'static str> {
        let n = self.varint()?;
        usize::try_from(n).ok().filter(|&n| n <= self.bytes.len()).ok_or("reader count past the list's end")
    }
}

impl Readers {
    /// The persisted form (see the module docs), in a fresh buffer.
    #[cfg(test)]
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// The persisted form, appended to `out`.
    fn encode_into(&self, out: &mut Vec<u8>) {
        let outliers = self.outliers();
        out.reserve(2 + 3 * self.compact.len() + 12 * outliers.len());
        put_varint(out, self.compact.len() as u64);
        let (mut next_ordinal, mut last_offset) = (0u32, OFFSET_BIAS as i64);
        for c in &self.compact {
            let gap = u64::from(c.ordinal() - next_ordinal);
            put_varint(out, gap << 1 | u64::from(c.hidden()));
            put_varint(out, zigzag(i64::from(c.offset) - last_offset));
            next_ordinal = c.ordinal() + 1;
            last_offset = i64::from(c.offset);
        }
        put_varint(out, outliers.len() as u64);
        for r in outliers {
            put_varint(out, u64::from(r.ordinal));
            put_varint(out, r.read_at);
            out.push(u8::from(r.hidden));
        }
    }

    /// The stored form as a message's field, appended to `out`: what the
    /// serde form below writes through bincode, without its scratch copy.
    pub(crate) fn encode_stored(&self, out: &mut Vec<u8>) {
        crate::stored_form::put_bytes_with(out, |out| self.encode_into(out));
    }

    fn decode(bytes: &[u8]) -> Result<Readers, &'static str> {
        let mut d = Decoder { bytes };
        let n = d.count()?;
        let mut compact = Vec::with_capacity(n);
        let (mut next_ordinal, mut last_offset) = (0u64, OFFSET_BIAS as i64);
        for _ in 0..n {
            let word = d.varint()?;
            let ordinal = next_ordinal.checked_add(word >> 1).filter(|&o| o < u64::from(HIDDEN));
            let ordinal = ordinal.ok_or("compact reader's ordinal past 2^31")? as u32;
            let offset = last_offset.checked_add(unzigzag(d.varint()?)).ok_or("read time out of range")?;
            let offset = u32::try_from(offset).map_err(|_| "read time out of range")?;
            let hidden = if word & 1 == 1 { HIDDEN } else { 0 };
            compact.push(Compact { ordinal_and_hidden: ordinal | hidden, offset });
            next_ordinal = u64::from(ordinal) + 1;
            last_offset = i64::from(offset);
        }
        let n = d.count()?;
        let mut outliers = Vec::with_capacity(n);
        for _ in 0..n {
            let ordinal = d.u32()?;
            let read_at = d.varint()?;
            let hidden = match d.bytes.split_first() {
                Some((&flag @ (0 | 1), rest)) => {
                    d.bytes = rest;
                    flag == 1
                }
                _ => return Err("bad hidden flag in the reader list"),
            };
            if outliers.last().is_some_and(|r: &ReadMark| r.ordinal >= ordinal)
                || compact.binary_search_by_key(&ordinal, |c| c.ordinal()).is_ok()
            {
                return Err("reader ordinals out of order or repeated");
            }
            outliers.push(ReadMark { ordinal, read_at, hidden });
        }
        if !d.bytes.is_empty() {
            return Err("bytes after the reader list");
        }
        let outliers = (!outliers.is_empty()).then(|| Box::new(outliers));
        Ok(Readers { compact, outliers })
    }
}

thread_local! {
    /// One encoding buffer per thread: a flush encodes thousands of messages.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Serialize for Readers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SCRATCH.with_borrow_mut(|buf| {
            self.encode_into(buf);
            let result = serializer.serialize_bytes(buf);
            buf.clear();
            buf.shrink_to(4096);
            result
        })
    }
}

impl<'de> Deserialize<'de> for Readers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = Readers;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a reader list as bytes")
            }

            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Readers, E> {
                Readers::decode(bytes).map_err(E::custom)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Readers, A::Error> {
                let mut bytes = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    bytes.push(b);
                }
                Readers::decode(&bytes).map_err(serde::de::Error::custom)
            }
        }
        deserializer.deserialize_bytes(Bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SENT_AT: u64 = 1_732_200_000_000;

    fn mark(ordinal: u32, read_at: u64, hidden: bool) -> ReadMark {
        ReadMark { ordinal, read_at, hidden }
    }

    fn roundtrip(readers: &Readers) -> Readers {
        let bytes = bincode::serde::encode_to_vec(readers, bincode::config::standard()).unwrap();
        let mut direct = vec![9];
        readers.encode_stored(&mut direct);
        assert_eq!(direct[1..], bytes[..], "the direct form is the serde form's bytes");
        let (back, used) = bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(used, bytes.len());
        // A self-describing format hands the bytes back as a sequence.
        let json = serde_json::to_string(readers).unwrap();
        assert_eq!(&serde_json::from_str::<Readers>(&json).unwrap(), readers, "{json}");
        back
    }

    #[test]
    fn reads_far_from_the_send_time_and_huge_ordinals_are_kept_whole() {
        let mut r = Readers::default();
        let reads = [
            mark(5, SENT_AT + 1_500, false),
            mark(2, SENT_AT - 40 * 86_400_000, true),
            mark(HIDDEN + 7, SENT_AT + 3, false),
            mark(9, u64::MAX, false),
            mark(1, 0, true),
            mark(3, SENT_AT + (1 << 31) - 1, false),
            mark(4, SENT_AT - (1 << 31) - 1, false),
        ];
        for m in reads {
            assert!(r.insert(m, SENT_AT));
        }
        assert!(!r.insert(mark(2, SENT_AT, false), SENT_AT), "an outlier's ordinal is a duplicate too");
        assert!(!r.insert(mark(5, 0, false), SENT_AT), "a compact reader's ordinal is a duplicate too");
        let mut sorted = reads.to_vec();
        sorted.sort_by_key(|m| m.ordinal);
        assert_eq!(r.iter(SENT_AT).collect::<Vec<_>>(), sorted);
        assert_eq!(r.iter_from(4, SENT_AT).map(|m| m.ordinal).collect::<Vec<_>>(), [4, 5, 9, HIDDEN + 7]);
        assert_eq!(r.get(2, SENT_AT), Some(reads[1]));
        assert_eq!(r.get(5, SENT_AT), Some(reads[0]));
        assert_eq!(r.get(6, SENT_AT), None);
        assert_eq!((r.len(), r.hidden_count()), (7, 2));
        assert_eq!(r.compact.len(), 2, "only the reads within 2^31 ms of the send time are compact");
        assert_eq!(roundtrip(&r), r);
    }

    #[test]
    fn consecutive_readers_within_seconds_take_a_few_bytes_each() {
        let mut r = Readers::default();
        for o in 1..=100u32 {
            r.insert(mark(o, SENT_AT + 1_000 + u64::from(o) * 700, o % 10 == 0), SENT_AT);
        }
        assert!(r.outliers.is_none());
        let bytes = r.encode();
        assert!(bytes.len() <= 2 + 100 * 3 + 1, "{} bytes for 100 readers", bytes.len());
        assert_eq!(roundtrip(&r), r);
    }

    #[test]
    fn corrupt_bytes_are_refused_not_trusted() {
        let mut r = Readers::default();
        r.insert(mark(1, SENT_AT, false), SENT_AT);
        r.insert(mark(3, u64::MAX, false), SENT_AT);
        let good = r.encode();
        assert_eq!(Readers::decode(&good), Ok(r));
        assert!(Readers::decode(&good[..good.len() - 1]).is_err(), "truncated");
        assert!(Readers::decode(&[good.as_slice(), &[0]].concat()).is_err(), "trailing bytes");
        assert!(Readers::decode(&[0xff; 12]).is_err(), "an endless varint");
        assert!(Readers::decode(&[200, 1]).is_err(), "a count past the end");
        // An outlier repeating a compact ordinal.
        let mut twice = Readers::default();
        twice.insert(mark(1, SENT_AT, false), SENT_AT);
        let mut bytes = twice.encode();
        *bytes.last_mut().unwrap() = 1;
        bytes.extend([1, 5, 0]);
        assert_eq!(Readers::decode(&bytes), Err("reader ordinals out of order or repeated"));
    }

    proptest! {
        /// Against the plain sorted list of 16-byte marks it replaces.
        #[test]
        fn behaves_like_a_sorted_list_of_marks(
            sent_at in prop_oneof![Just(SENT_AT), Just(0u64), Just(u64::MAX)],
            reads in proptest::collection::vec(
                (prop_oneof![0u32..64, any::<u32>()],
                 prop_oneof![SENT_AT - 5_000..SENT_AT + 5_000_000, any::<u64>()],
                 any::<bool>()),
                0..80),
            start in 0u32..70,
        ) {
            let mut readers = Readers::default();
            let mut model: Vec<ReadMark> = Vec::new();
            for (ordinal, read_at, hidden) in reads {
                let m = mark(ordinal, read_at, hidden);
                let fresh = !model.iter().any(|r| r.ordinal == ordinal);
                prop_assert_eq!(readers.insert(m, sent_at), fresh);
                if fresh {
                    model.push(m);
                    model.sort_by_key(|r| r.ordinal);
                }
                prop_assert_eq!(readers.get(ordinal, sent_at), model.iter().find(|r| r.ordinal == ordinal).copied());
            }
            prop_assert_eq!(readers.iter(sent_at).collect::<Vec<_>>(), model.clone());
            let from: Vec<ReadMark> = model.iter().filter(|r| r.ordinal >= start).copied().collect();
            prop_assert_eq!(readers.iter_from(start, sent_at).collect::<Vec<_>>(), from);
            prop_assert_eq!(readers.len(), model.len());
            prop_assert_eq!(readers.hidden_count(), model.iter().filter(|r| r.hidden).count());
            prop_assert_eq!(roundtrip(&readers), readers);
        }
    }
}
