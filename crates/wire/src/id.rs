//! [`Id`]: an id (app, group, message, user) kept inline when short and
//! shared when long.
//!
//! The fold compares and clones ids on every event: map keys, a message's
//! sender and group, dirty-key lists, receipts. As `Arc<str>`, each compare
//! read a separate allocation (a cache miss: comparing ids was the largest
//! leaf of the drain's poll loop) and each clone or drop was an atomic
//! count on it. Most ids are short (`u1234`, a snowflake number), so an id
//! of at most [`INLINE_BYTES`] bytes is stored in the 24 bytes of the `Id`
//! itself: compared where it sits, copied without touching shared memory,
//! no allocation. Longer ids (the contract allows 128 bytes) stay one
//! shared allocation, as before.
//!
//! The events' ids are `Id`s too, made as they are decoded: a record's
//! short ids cost no allocation (a read's strings were four of its five,
//! and their allocations and frees several percent of the worker's poll
//! loop), and the fold keeps an event's id by copying it, or for a long
//! one by sharing it.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// The longest id kept inline: what fits beside its length and the tag in
/// 24 bytes, the size of a `String`.
pub const INLINE_BYTES: usize = 22;

/// An id: a string, inline up to [`INLINE_BYTES`] bytes, else shared. Equal,
/// ordered, hashed, persisted and serialized exactly as the string it holds,
/// so a map keyed by `Id` is looked up by `&str`.
#[derive(Clone)]
pub struct Id(Repr);

#[derive(Clone)]
enum Repr {
    /// The first `len` bytes of `bytes` are the id, valid UTF-8; the rest
    /// are zero, so two inline ids are equal exactly when both fields are.
    Inline {
        len: u8,
        bytes: [u8; INLINE_BYTES],
    },
    Shared(Arc<str>),
}

// The reason for the type: no larger than the `String` it stands for.
const _: () = assert!(std::mem::size_of::<Id>() == 24);

impl Id {
    /// The id as a string.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => {
                // SAFETY: built only by `From<&str>` from a whole `str` of
                // `len` bytes: valid UTF-8 up to `len`.
                unsafe { std::str::from_utf8_unchecked(bytes.get_unchecked(..*len as usize)) }
            }
            Repr::Shared(s) => s,
        }
    }

    /// Whether the id sits in shared memory (longer than [`INLINE_BYTES`]).
    pub fn is_shared(&self) -> bool {
        matches!(self.0, Repr::Shared(_))
    }

    /// Whether anything but `self` holds this id's shared memory: false for
    /// an inline id, which is nobody's to share.
    pub fn held_elsewhere(&self) -> bool {
        match &self.0 {
            Repr::Inline { .. } => false,
            Repr::Shared(s) => Arc::strong_count(s) > 1,
        }
    }

    /// Whether both are the same shared memory (interning's test).
    #[doc(hidden)]
    pub fn same_memory(a: &Id, b: &Id) -> bool {
        matches!((&a.0, &b.0), (Repr::Shared(a), Repr::Shared(b)) if Arc::ptr_eq(a, b))
    }
}

impl From<&str> for Id {
    #[inline]
    fn from(s: &str) -> Self {
        if s.len() <= INLINE_BYTES {
            Id(Repr::Inline { len: s.len() as u8, bytes: zero_padded(s.as_bytes()) })
        } else {
            Id(Repr::Shared(Arc::from(s)))
        }
    }
}

/// `s` (at most [`INLINE_BYTES`] long) followed by zeros, put together in
/// registers from a few loads of whole words of it (overlapping where its
/// length is not one of theirs). Copied into a zeroed array instead, the
/// bytes were stored one size at a time and the array then read back as
/// words, which must wait for those stores to reach the cache: the
/// largest wait of the poll loop's decoding (a tenth of
/// `fast_json::event`'s samples, on the first load after the copy).
#[inline(always)]
fn zero_padded(s: &[u8]) -> [u8; INLINE_BYTES] {
    let n = s.len();
    debug_assert!(n <= INLINE_BYTES);
    let word = |at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let half = |at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes"));
    // Bytes 0..16 and 16..22. Where two loads overlap, both hold the
    // same bytes, so or-ing them changes nothing.
    let (low, high): (u128, u64) = match n {
        0 => (0, 0),
        1..=3 => (u128::from(s[0]) | u128::from(s[n / 2]) << (8 * (n / 2)) | u128::from(s[n - 1]) << (8 * (n - 1)), 0),
        4..=7 => (u128::from(half(0)) | u128::from(half(n - 4)) << (8 * (n - 4)), 0),
        8..=16 => (u128::from(word(0)) | u128::from(word(n - 8)) << (8 * (n - 8)), 0),
        _ => (u128::from(word(0)) | u128::from(word(8)) << 64, word(n - 8) >> (8 * (24 - n))),
    };
    let mut bytes = [0; INLINE_BYTES];
    bytes[..16].copy_from_slice(&low.to_le_bytes());
    bytes[16..].copy_from_slice(&high.to_le_bytes()[..INLINE_BYTES - 16]);
    bytes
}

/// The empty id (as `String::default()`).
impl Default for Id {
    fn default() -> Self {
        Id::from("")
    }
}

impl From<String> for Id {
    fn from(s: String) -> Self {
        Id::from(s.as_str())
    }
}

impl Deref for Id {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Id {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Id {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// Whether two strings are equal: `a == b` through
/// [`crate::same_bytes`], which compares up to 16 bytes with two
/// loads from each side instead of a call to `memcmp`. Ids are mostly
/// that short, and the fold compares several per event.
#[inline]
pub fn same_str(a: &str, b: &str) -> bool {
    crate::same_bytes(a.as_bytes(), b.as_bytes())
}

impl PartialEq for Id {
    #[inline]
    fn eq(&self, other: &Id) -> bool {
        match (&self.0, &other.0) {
            // Zero past `len` (see `Repr`): the arrays compare as loads.
            (Repr::Inline { len: a, bytes: x }, Repr::Inline { len: b, bytes: y }) => a == b && x == y,
            _ => same_str(self, other),
        }
    }
}

impl Eq for Id {}

/// An id equals a string of the same text, either way round.
macro_rules! equal_to_strings {
    ($($left:ty => $right:ty),+) => {$(
        impl PartialEq<$right> for $left {
            #[inline]
            fn eq(&self, other: &$right) -> bool {
                same_str(self, other)
            }
        }
    )+};
}

equal_to_strings!(Id => str, Id => &str, Id => String, String => Id, str => Id);

impl PartialOrd for Id {
    fn partial_cmp(&self, other: &Id) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Id {
    fn cmp(&self, other: &Id) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// As the string's: a map keyed by `Id` finds keys by `&str`.
impl Hash for Id {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl serde::de::Visitor<'_> for IdVisitor {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Id, E> {
                Ok(Id::from(s))
            }
        }
        deserializer.deserialize_str(IdVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::hash_map::DefaultHasher;

    fn hash(value: &(impl Hash + ?Sized)) -> u64 {
        let mut h = DefaultHasher::new();
        value.hash(&mut h);
        h.finish()
    }

    #[test]
    fn an_inline_id_holds_its_text_then_zeros_at_every_length() {
        let text: Vec<u8> = (1..=INLINE_BYTES as u8).map(|b| b'a' + b).collect();
        for n in 0..=INLINE_BYTES {
            let mut expected = [0; INLINE_BYTES];
            expected[..n].copy_from_slice(&text[..n]);
            assert_eq!(zero_padded(&text[..n]), expected, "{n} bytes");
            let s = std::str::from_utf8(&text[..n]).unwrap();
            assert_eq!(Id::from(s).as_str(), s);
        }
    }

    #[test]
    fn short_ids_are_inline_and_long_ones_shared() {
        assert!(!Id::from("").is_shared());
        assert!(!Id::from("a".repeat(INLINE_BYTES).as_str()).is_shared());
        assert!(Id::from("a".repeat(INLINE_BYTES + 1).as_str()).is_shared());
        let long = Id::from("x".repeat(128));
        assert!(!long.held_elsewhere());
        let copy = long.clone();
        assert!(long.held_elsewhere() && Id::same_memory(&long, &copy), "a long id's clone shares it");
        assert!(!Id::from("u1").held_elsewhere());
    }

    proptest! {
        /// Whatever its length and characters, an id is its string: the same
        /// text, equality, order, hash, and bytes in bincode and JSON.
        #[test]
        fn an_id_behaves_as_its_string(a in "\\PC{0,40}", b in "\\PC{0,40}") {
            let (ia, ib) = (Id::from(a.as_str()), Id::from(b.clone()));
            prop_assert_eq!(ia.as_str(), a.as_str());
            prop_assert_eq!(&*ib, b.as_str());
            prop_assert_eq!(ia == ib, a == b);
            prop_assert_eq!(ia.cmp(&ib), a.cmp(&b));
            prop_assert_eq!(hash(&ia), hash(a.as_str()));
            prop_assert_eq!(format!("{ia:?}"), format!("{a:?}"));
            prop_assert_eq!(ia.to_string(), a.clone());
            let config = bincode::config::standard();
            let encoded = bincode::serde::encode_to_vec(&ia, config).unwrap();
            prop_assert_eq!(&encoded, &bincode::serde::encode_to_vec(&a, config).unwrap());
            let (decoded, _): (Id, usize) = bincode::serde::decode_from_slice(&encoded, config).unwrap();
            prop_assert_eq!(&decoded, &ia);
            let json = serde_json::to_string(&ia).unwrap();
            prop_assert_eq!(&json, &serde_json::to_string(&a).unwrap());
            prop_assert_eq!(serde_json::from_str::<Id>(&json).unwrap(), ia);
        }

        /// Strings that differ in one byte anywhere, or not at all, compare
        /// as `==` does, as strings and as ids (random strings would
        /// almost never be equal, nor differ in the middle only).
        #[test]
        fn same_str_is_string_equality(a in "[ab]{0,40}", at in 0usize..40, other in "[abc]", len_change in 0usize..2) {
            let mut b = a.clone();
            if at < b.len() {
                b.replace_range(at..at + 1, &other);
            }
            if len_change == 1 {
                b.push('a');
            }
            prop_assert_eq!(same_str(&a, &b), a == b);
            prop_assert_eq!(same_str(&b, &a), a == b);
            prop_assert_eq!(Id::from(a.as_str()) == Id::from(b.as_str()), a == b);
            prop_assert_eq!(Id::from(a.as_str()) == *b.as_str(), a == b);
        }
    }
}
