//! The wire contract of receiptd: the types every other crate and every
//! upstream service agree on.
//!
//! This crate holds the contract's input events (`receipts.events`), settings
//! (`receipts.settings`), output deltas (`receipts.deltas`), the codecs that turn
//! Kafka record bytes into those types (JSON by default, bincode 2 when the
//! record carries `content-type: application/bincode`), and the key rules that
//! pin every conversation to one partition.
//!
//! Decoding is strict about meaning and lenient about growth: unknown JSON
//! fields are ignored (so producers can add fields ahead of us), but every id
//! is checked (non-empty, at most 128 bytes), every list is bounded, and a
//! record whose key does not match its payload is rejected with
//! [`DecodeError::KeyMismatch`]. Every rejection carries a stable
//! [`DecodeError::reason`] code, which is what the DLQ header carries.
//!
//! Event JSON of the usual shape is read by a small decoder of its own
//! (`fast_json`), 2.9 times faster than serde_json (it expects each key
//! where serde writes it, and reads any other order too); anything it does
//! not take, errors included, goes through serde_json, so both decode alike.
//!
//! Ids in events are [`Id`]s: inline up to [`INLINE_BYTES`] bytes, so
//! decoding a usual record allocates only its list of message ids, and
//! the state keeps the same type.
//!
//! Nothing here does IO.

#![deny(missing_docs)]

mod codec;
mod delta;
mod event;
mod fast_json;
mod id;
mod keys;

pub use codec::{
    decode_event, decode_event_reference, decode_setting, encode_event_bincode, encode_setting_bincode, ContentType,
    DecodeError, BINCODE_CONTENT_TYPE, CONTENT_TYPE_HEADER,
};
pub use delta::{DeltaRecord, Receipt};
pub use event::{
    AppConfig, Conversation, ConversationRead, Event, GroupMembers, GroupType, MembersOp, MessageRead, MessageRevoked,
    MessageSent, Setting, UserSettings,
};
pub use id::{same_str, Id, INLINE_BYTES};
pub use keys::{conversation_key, delta_key, delta_key_into, is_conversation_key, same_bytes, settings_key};

/// Longest id (app, user, group, message) in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Most messages one `message_read` may name.
pub const MAX_MSG_IDS_PER_READ: usize = 100;
/// Most members one `group_members` record may carry. Larger groups arrive as a
/// snapshot followed by `join` batches.
pub const MAX_MEMBERS_PER_EVENT: usize = 100_000;
/// Largest record payload we try to decode at all; anything larger goes to the
/// DLQ before a single byte is parsed.
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;
