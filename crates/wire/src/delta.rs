//! Output deltas (CONTRACT.md §4). Field names follow `V2TIMMessageReceipt`.

use serde::{Deserialize, Serialize};

/// One record of `receipts.deltas`: every receipt one recipient gets from one
/// flush, keyed `{app_id}/{to}`.
///
/// Generic over how it holds its ids (`S`), so that the worker serializes
/// ids it shares with its state (`Arc<str>`) without copying them into
/// `String`s first; the JSON is the same either way.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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
