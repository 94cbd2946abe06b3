//! Output deltas (CONTRACT.md §4). Field names follow `V2TIMMessageReceipt`.

use serde::{Deserialize, Serialize};

/// One record of `receipts.deltas`: every receipt one recipient gets from one
/// flush, keyed `{app_id}/{to}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRecord {
    /// The app (tenant).
    pub app_id: String,
    /// The recipient: the messages' sender, or the peer of a conversation read.
    pub to: String,
    /// The receipts, at most one per message (the latest).
    pub receipts: Vec<Receipt>,
}

/// One receipt. Three shapes share it:
/// group (`group_id`, `read_count`, `unread_count`, `version`),
/// C2C message (`user_id`, `is_peer_read`, `version`), and
/// C2C conversation read (`msg_id` empty, `user_id`, `timestamp` only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Receipt {
    /// The message; empty for a conversation-level receipt.
    pub msg_id: String,
    /// The group, for group messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The peer, for C2C receipts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
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

impl Receipt {
    /// A group message's receipt: absolute counts and version.
    pub fn group(msg_id: String, group_id: String, read: u32, unread: u32, timestamp: u64, version: u64) -> Self {
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
    pub fn c2c(msg_id: String, peer: String, is_peer_read: bool, timestamp: u64, version: u64) -> Self {
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
    pub fn conversation(reader: String, timestamp: u64) -> Self {
        Receipt {
            msg_id: String::new(),
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
