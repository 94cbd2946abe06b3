//! The pure core of receiptd: `fold(state, event) -> effects`.
//!
//! A [`PartitionState`] is everything one Kafka partition of `receipts.events`
//! has folded so far: group member tables, per-message read sets, C2C read
//! marks, and reads held until their message arrives. [`PartitionState::apply`]
//! folds one event into it and records the [`Effects`]: which entities changed
//! (so storage writes each touched entity once per flush), which receipts
//! changed (so the [`DeltaBuffer`] can coalesce them into one record per
//! recipient), and counters by outcome and reason.
//!
//! There is no IO here: no Kafka, no RocksDB, no clock. Time is the record
//! timestamp the caller passes in, so replaying the same log always yields the
//! same state and the same receipts. That is what makes exactly-once state
//! possible (the caller persists offsets with the fold) and what lets the fold
//! be tested against a naive model.
//!
//! Group audiences are never copied per message. A group keeps a membership
//! `epoch` that every membership change advances, and each member remembers the
//! epoch since which it has been a member. A message remembers only the epoch
//! at send time: its audience is every member whose membership began at or
//! before that epoch, minus the sender. Per-message state therefore grows with
//! the readers, not with the group. A group counts its members by the epoch
//! they joined at, with a slot only for epochs some member joined at, so a
//! group's own state grows with its members, not with its history.
//!
//! A message caches its `(read, unread)` with the epoch it counted them
//! at, so a read moves them by one instead of counting every reader. A
//! membership change moves an older message's counts only by who left
//! (a newcomer is never in its audience), so a large group lists its
//! recent departures and cached counts are brought up to date by those,
//! instead of counted again over every reader after every change. A user
//! switching receipts moves only the counts of messages they read, so an
//! app lists its recent switches for the same purpose.

#![deny(missing_docs)]

mod by_id;
mod deltas;
mod departures;
mod fold;
mod members;
mod members_by_since;
mod prefetch;
mod query;
mod readers;
mod settings;
mod sharded;
mod state;
mod stats;
mod stored_form;

pub use deltas::{DeltaBuffer, ReceiptChange};
pub use fold::{Effects, Limits};
pub use prefetch::{ReadAhead, PREFETCH_AHEAD};
pub use query::{MemberFilter, MemberPage, QueryRefusal};
pub use readers::{Readers, PAGE_READERS};
pub use receiptd_wire::{same_str, INLINE_BYTES};
pub use settings::{AppSettings, SettingsTable};
pub use sharded::{KeyEq, ShardedMap};
pub use state::{
    DirtyKey, Entity, GroupLists, GroupMeta, HeldRead, Id, MessageState, MessageTarget, PartitionState, PartitionView,
    ReadMark, RestoreError, Tracking, LAST_EPOCH, NOT_A_MEMBER,
};
pub use stats::{FoldStats, Ignored, Outcome, EVENT_KINDS};
pub use stored_form::{put_leb128, take_leb128, Leb128Error};

// The in-memory store the integration tests share names the crate.
#[cfg(test)]
extern crate self as receiptd_core;
#[cfg(test)]
mod tests;
