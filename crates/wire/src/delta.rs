//! Output deltas (CONTRACT.md §4). Field names follow `V2TIMMessageReceipt`.

use serde::{Deserialize, Serialize};

/// One record of `receipts.deltas`: every receipt one recipient gets from one
/// flush, keyed `{app_id}/{to}`.
///
/// Generic over how it holds its ids (`S`), so that the worker serializes
/// the ids of its state (`receiptd_core::Id`, any `AsRef<str>`) without
/// copying them into `String`s first; the JSON is the same either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(deserialize = "S: Deserialize<'de>"))]
pub struct DeltaRecord<S = String> {
    /// The app (tenant).
    pub app_id: S,
    /// The recipient: the messages' sender, or the peer of a conversation read.
    pub to: S,
    /// The receipts, at most one per message (the latest).
    pub receipts: Vec<Receipt<S>>,
}

/// One receipt. Three shapes share it:
/// group (`group_id`, `read_count`, `unread_count`, `version`),
/// C2C message (`user_id`, `is_peer_read`, `version`), and
/// C2C conversation read (`msg_id` empty, `user_id`, `timestamp` only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(bound(deserialize = "S: Deserialize<'de>"))]
pub struct Receipt<S = String> {
    /// The message; empty for a conversation-level receipt.
    pub msg_id: S,
    /// The group, for group messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<S>,
    /// The peer, for C2C receipts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<S>,
    /// Members who have read (group), absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_count: Option<u32>,
    /// Eligible members who have not read (group), absolute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread_count: Option<u32>,
    /// Whether the peer read the message (C2C).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_peer_read: Option<bool>,
    /// Time of the latest change, Unix ms.
    pub timestamp: u64,
    /// Grows by one with every change of the message's receipt state; absent
    /// on conversation-level receipts, whose timestamp orders them instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

impl<S> Receipt<S> {
    /// A group message's receipt: absolute counts and version.
    pub fn group(msg_id: S, group_id: S, read: u32, unread: u32, timestamp: u64, version: u64) -> Self {
        Receipt {
            msg_id,
            group_id: Some(group_id),
            user_id: None,
            read_count: Some(read),
            unread_count: Some(unread),
            is_peer_read: None,
            timestamp,
            version: Some(version),
        }
    }

    /// A C2C message's receipt: whether the peer read it, and version.
    pub fn c2c(msg_id: S, peer: S, is_peer_read: bool, timestamp: u64, version: u64) -> Self {
        Receipt {
            msg_id,
            group_id: None,
            user_id: Some(peer),
            read_count: None,
            unread_count: None,
            is_peer_read: Some(is_peer_read),
            timestamp,
            version: Some(version),
        }
    }

    /// A C2C conversation-level receipt (`markC2CMessageAsRead`): `msg_id`
    /// empty, the reader and the read mark.
    pub fn conversation(reader: S, timestamp: u64) -> Self
    where
        S: Default,
    {
        Receipt {
            msg_id: S::default(),
            group_id: None,
            user_id: Some(reader),
            read_count: None,
            unread_count: None,
            is_peer_read: None,
            timestamp,
            version: None,
        }
    }
}

impl<S: AsRef<str>> DeltaRecord<S> {
    /// Appends the record's JSON to `out`: byte for byte what `serde_json`
    /// writes (a property test checks it), without its generic machinery.
    /// The worker writes one record per recipient per flush, and serde's
    /// path (each key escaped, a call per field) took about 5% of its poll
    /// loop (`perf` on the drain bench).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"app_id\":");
        json_str(out, self.app_id.as_ref());
        out.extend_from_slice(b",\"to\":");
        json_str(out, self.to.as_ref());
        out.extend_from_slice(b",\"receipts\":[");
        for (i, r) in self.receipts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            r.write_json(out);
        }
        out.extend_from_slice(b"]}");
    }
}

impl<S: AsRef<str>> Receipt<S> {
    /// Appends the receipt's JSON to `out`, as `serde_json` writes it: the
    /// fields in declaration order, absent ones left out. A field added to
    /// `Receipt` goes here too (the property test fails until it does, once
    /// a constructor sets it).
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"msg_id\":");
        json_str(out, self.msg_id.as_ref());
        if let Some(group_id) = &self.group_id {
            out.extend_from_slice(b",\"group_id\":");
            json_str(out, group_id.as_ref());
        }
        if let Some(user_id) = &self.user_id {
            out.extend_from_slice(b",\"user_id\":");
            json_str(out, user_id.as_ref());
        }
        if let Some(n) = self.read_count {
            out.extend_from_slice(b",\"read_count\":");
            json_u64(out, n.into());
        }
        if let Some(n) = self.unread_count {
            out.extend_from_slice(b",\"unread_count\":");
            json_u64(out, n.into());
        }
        if let Some(read) = self.is_peer_read {
            out.extend_from_slice(if read { b",\"is_peer_read\":true" } else { b",\"is_peer_read\":false" });
        }
        out.extend_from_slice(b",\"timestamp\":");
        json_u64(out, self.timestamp);
        if let Some(v) = self.version {
            out.extend_from_slice(b",\"version\":");
            json_u64(out, v);
        }
        out.push(b'}');
    }
}

/// A JSON string as `serde_json` escapes it: quote and backslash escaped,
/// the control characters with a short escape where JSON has one and
/// `\u00xx` (lowercase hex) otherwise; everything else, non-ASCII
/// included, as is.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut plain_from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain_from..i]);
        plain_from = i + 1;
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        } else {
            out.extend_from_slice(escape);
        }
    }
    out.extend_from_slice(&bytes[plain_from..]);
    out.push(b'"');
}

/// An unsigned integer in decimal.
fn json_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn id() -> impl Strategy<Value = String> {
        // Plain ids mostly; quotes, backslashes, every control character,
        // DEL and non-ASCII now and then.
        prop_oneof![4 => "[a-z0-9_./-]{0,12}", 1 => "\\PC{0,6}", 2 => "[\"\\\\\u{0}-\u{1f}\u{7f}é😀a]{1,6}"]
    }

    fn receipt() -> impl Strategy<Value = Receipt> {
        prop_oneof![
            (id(), id(), any::<u32>(), any::<u32>(), any::<u64>(), any::<u64>())
                .prop_map(|(m, g, read, unread, t, v)| Receipt::group(m, g, read, unread, t, v)),
            (id(), id(), any::<bool>(), any::<u64>(), any::<u64>())
                .prop_map(|(m, peer, read, t, v)| Receipt::c2c(m, peer, read, t, v)),
            (id(), any::<u64>()).prop_map(|(reader, t)| Receipt::conversation(reader, t)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// The hand-written JSON is serde_json's, byte for byte.
        #[test]
        fn written_json_is_serde_json(
            app_id in id(),
            to in id(),
            receipts in prop::collection::vec(receipt(), 0..5),
        ) {
            let record = DeltaRecord { app_id, to, receipts };
            let mut out = b"kept".to_vec();
            record.write_json(&mut out);
            prop_assert_eq!(&out[..4], b"kept", "appended, not replaced");
            let want = serde_json::to_vec(&record).unwrap();
            prop_assert_eq!(String::from_utf8_lossy(&out[4..]), String::from_utf8_lossy(&want));
        }
    }

    #[test]
    fn integers_at_their_limits_are_written_whole() {
        for n in [0, 9, 10, 99, 100, u64::from(u32::MAX), u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            json_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    /// The worker serializes records holding shared ids; consumers read
    /// records of `String`s. Both must be the same JSON.
    #[test]
    fn shared_and_owned_ids_serialize_alike() {
        let owned = DeltaRecord {
            app_id: "a1".to_owned(),
            to: "alice".to_owned(),
            receipts: vec![
                Receipt::group("m1".to_owned(), "g1".to_owned(), 3, 29, 1_700_000_000_000, 4),
                Receipt::c2c("m2".to_owned(), "bob".to_owned(), true, 1_700_000_000_001, 1),
                Receipt::conversation("bob".to_owned(), 1_700_000_000_002),
            ],
        };
        let id = |s: &str| -> Arc<str> { Arc::from(s) };
        let shared = DeltaRecord {
            app_id: id("a1"),
            to: id("alice"),
            receipts: vec![
                Receipt::group(id("m1"), id("g1"), 3, 29, 1_700_000_000_000, 4),
                Receipt::c2c(id("m2"), id("bob"), true, 1_700_000_000_001, 1),
                Receipt::conversation(id("bob"), 1_700_000_000_002),
            ],
        };
        let json = serde_json::to_string(&shared).unwrap();
        assert_eq!(json, serde_json::to_string(&owned).unwrap());
        assert_eq!(serde_json::from_str::<DeltaRecord>(&json).unwrap(), owned);
    }
}
