//! A message's stored form written directly, byte for byte what bincode's
//! standard configuration writes for its serde form. Staging encodes
//! every changed message once per flush; through serde and bincode a
//! message of the drain's mix cost about 820 instructions, most of them
//! in calls per field and per varint. The serde form stays the reference:
//! tests check that both write the same bytes. Other entities, a sixth of
//! a flush's in the drain's mix, still go through serde.

/// Appends `v` as bincode's varint: below 251 one byte; else a marker (251,
/// 252 or 253) and the value as a little-endian `u16`, `u32` or `u64`.
/// The same for every unsigned width, so `u32`s and lengths too. Inline:
/// a message writes eleven, and a call each cost more than the writing.
#[inline(always)]
pub(crate) fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v < 251 {
        out.push(v as u8);
    } else if v <= u64::from(u16::MAX) {
        out.push(251);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if v <= u64::from(u32::MAX) {
        out.push(252);
        out.extend_from_slice(&(v as u32).to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Appends `v` as a LEB128 varint: seven bits a byte, low first, the high
/// bit set on all but the last. A reader list's stored bytes use it, and
/// so does RocksDB's write-batch format (`receiptd_store`'s batch).
#[inline]
pub fn put_leb128(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Why [`take_leb128`] found no number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leb128Error {
    /// The bytes end inside it.
    Truncated,
    /// It does not fit in 64 bits.
    TooLarge,
}

/// Reads a LEB128 varint (as [`put_leb128`] writes it) off the front of
/// `bytes`, moving them past it.
#[inline]
pub fn take_leb128(bytes: &mut &[u8]) -> Result<u64, Leb128Error> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first().ok_or(Leb128Error::Truncated)?;
        *bytes = rest;
        v |= u64::from(b & 0x7f).checked_shl(shift).filter(|_| shift < 63 || b <= 1).ok_or(Leb128Error::TooLarge)?;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Leb128Error::TooLarge)
}

/// Appends a string (or bytes) as bincode does: its length, then the bytes.
#[inline(always)]
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends bytes that `write` appends, prefixed with their length as
/// [`put_bytes`] does, without writing them anywhere else first: one
/// byte is kept for the length, and moved over only when it needs more.
#[inline]
pub(crate) fn put_bytes_with(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.push(0);
    write(out);
    let len = out.len() - at - 1;
    if len < 251 {
        out[at] = len as u8;
    } else {
        let mut prefix = Vec::with_capacity(9);
        put_varint(&mut prefix, len as u64);
        out.splice(at..at + 1, prefix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    #[test]
    fn leb128_reads_back_what_it_writes_and_refuses_the_rest() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut out = vec![];
            put_leb128(&mut out, v);
            out.push(9);
            let mut rest = out.as_slice();
            assert_eq!(take_leb128(&mut rest), Ok(v));
            assert_eq!(rest, [9], "moved past it, and no further");
        }
        assert_eq!(take_leb128(&mut [0x80, 0x80].as_slice()), Err(Leb128Error::Truncated));
        assert_eq!(take_leb128(&mut [].as_slice()), Err(Leb128Error::Truncated));
        let past_64_bits = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(take_leb128(&mut past_64_bits.as_slice()), Err(Leb128Error::TooLarge));
    }

    fn bincode_of<T: serde::Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap()
    }

    #[test]
    fn varints_and_lengths_match_bincode_at_every_boundary() {
        let edges = [0, 1, 250, 251, 252, 253, 255, 256, 65_535, 65_536, u32::MAX as u64 - 1, u32::MAX as u64];
        for v in edges.into_iter().chain([u32::MAX as u64 + 1, u64::MAX - 1, u64::MAX]) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out, bincode_of(&v), "u64 {v}");
            if let Ok(v32) = u32::try_from(v) {
                assert_eq!(out, bincode_of(&v32), "u32 {v}");
            }
        }
        for len in [0, 1, 250, 251, 252, 65_535, 65_536] {
            let bytes = vec![b'x'; len];
            let mut after = Vec::new();
            put_bytes_with(&mut after, |out| out.extend_from_slice(&bytes));
            assert_eq!(after, bincode_of(&serde_bytes_of(&bytes)), "{len} bytes");
        }
    }

    proptest! {
        #[test]
        fn bytes_match_bincode_written_at_once_or_after(
            bytes in prop_oneof![vec(any::<u8>(), 0..300), vec(any::<u8>(), 65_000..70_000)]
        ) {
            let reference = bincode_of(&serde_bytes_of(&bytes));
            let mut at_once = vec![7];
            put_bytes(&mut at_once, &bytes);
            prop_assert_eq!(&at_once[1..], &reference[..]);
            let mut after = vec![7];
            put_bytes_with(&mut after, |out| out.extend_from_slice(&bytes));
            prop_assert_eq!(&after[1..], &reference[..]);
            prop_assert_eq!(after[0], 7);
        }
    }

    /// Bytes serialized as serde bytes (a length and the bytes), as
    /// `serialize_bytes` does, not as a sequence of `u8`.
    fn serde_bytes_of(bytes: &[u8]) -> impl serde::Serialize + '_ {
        struct AsBytes<'a>(&'a [u8]);
        impl serde::Serialize for AsBytes<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        AsBytes(bytes)
    }
}
