//! Looking a batch's messages up before folding it.
//!
//! Folding a read is a chain of dependent loads: the message's hash
//! bucket, then its state, then its readers. Where that state is cold
//! (reads spread over a million messages, a send's fresh bucket, the
//! messages a flush stages) each step waits for memory, one after the
//! other, and the fold waits with them.
//!
//! [`PartitionState::prefetch`] walks the same chains for one event without
//! changing anything, and without the shards' locks (an atomic operation
//! on x86 waits for the loads before it, which would take the misses one
//! at a time again). Walked for several events in a row, the chains do not
//! depend on each other, so the processor has the loads of all of them in
//! flight at once; the fold of those events then finds their state in
//! cache. A flush walks its changed messages the same way. Results never
//! depend on it: looking up nothing, or the wrong thing, only costs time.
//!
//! A group read's walk also finds the reader's group and ordinal, and
//! hands them to the fold of the same event ([`ReadAhead`],
//! [`PartitionState::apply_ahead`]): the fold then does not look them up
//! again, so the walk costs no lookups of its own. Walking them without
//! handing them over cost about a hundred instructions an event more,
//! which the drain's mix, its groups few and mostly in cache, did not
//! win back.

use crate::fold::ReaderPlace;
use crate::sharded::hash_of;
use crate::state::{DirtyKey, Group, PartitionState};
use receiptd_wire::{Conversation, Event, MessageRead};
use std::ptr::NonNull;

/// What [`PartitionState::prefetch`] found for a group read: the reader's
/// group and ordinal, for [`PartitionState::apply_ahead`] of the same event
/// to take instead of looking them up again. It holds no borrow, so a
/// caller keeps one per event of a run between the two calls. It is taken
/// only for the event it was found for (by address), and only while no
/// group can have moved or an ordinal changed hands since (the state's
/// groups epoch moves on at every membership event, revoke, expiry,
/// staging and restore); otherwise the fold looks up as usual. Pass it
/// only with the event it was found for: another event at the same
/// address would take its place.
#[derive(Clone, Copy, Debug)]
pub struct ReadAhead {
    found: Option<FoundPlace>,
}

#[derive(Clone, Copy, Debug)]
struct FoundPlace {
    event: *const MessageRead,
    groups_epoch: u64,
    group: Option<NonNull<Group>>,
    ordinal: Option<u32>,
}

impl ReadAhead {
    /// Nothing found: the fold looks up.
    pub const NONE: ReadAhead = ReadAhead { found: None };

    /// The place found for `event` in `groups_epoch`, as the fold's
    /// starting point; not looked up yet otherwise.
    ///
    /// # Safety
    /// The caller holds `&mut PartitionState` for the returned place's
    /// life, and `groups_epoch` is that state's now: a group found in the
    /// same epoch has not moved (see `ShardedMap::peek` for the lock).
    pub(crate) unsafe fn place_for<'a>(self, event: &MessageRead, groups_epoch: u64) -> ReaderPlace<'a> {
        match self.found {
            Some(f) if f.groups_epoch == groups_epoch && std::ptr::eq(f.event, event) => ReaderPlace {
                looked_up: true,
                // SAFETY: see the function's contract.
                group: f.group.map(|g| unsafe { g.as_ref() }),
                ordinal: f.ordinal,
            },
            _ => ReaderPlace::default(),
        }
    }
}

/// Events to look up before folding them: enough chains to keep the
/// processor's loads busy, few enough that their lines are still in L1
/// when they are folded (a few lines an event). 4 and 16 did no better
/// on reads spread over a million messages.
pub const PREFETCH_AHEAD: usize = 8;

/// Message ids of one read looked up at most: a client's read of a
/// conversation's unread messages can name 100, which the fold's own
/// loads overlap anyway.
const PREFETCH_IDS: usize = 4;

/// Asks for the cache line at `p` without waiting for it. Never faults:
/// a stale or dangling address only costs the request.
#[inline(always)]
pub(crate) fn prefetch_line<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch has no architectural effect and cannot fault,
    // whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Where a hashbrown table's buckets end (and its control bytes begin),
/// from an entry in bucket `index`: bucket `i` sits at
/// `end - (i + 1) * size_of::<T>()`, below the control bytes.
#[inline(always)]
pub(crate) fn buckets_end<T>(entry: &T, index: usize) -> usize {
    (entry as *const T as usize).wrapping_add((index + 1) * std::mem::size_of::<T>())
}

/// The address of the bucket where a probe for `hash` starts, in a
/// hashbrown table of `buckets` buckets (a power of two) that end at
/// `end` ([`buckets_end`]): hashbrown starts at `hash & (buckets - 1)`.
/// An entry goes into the first free bucket from there, most often that
/// one or one of the next few, at lower addresses.
#[inline(always)]
pub(crate) fn probe_start<T>(end: usize, buckets: usize, hash: u64) -> usize {
    let start = (hash as usize) & buckets.wrapping_sub(1);
    end.wrapping_sub((start + 1) * std::mem::size_of::<T>())
}

/// Where a hashbrown table of `buckets` buckets that end at `end` keeps the
/// control bytes a probe for `hash` reads first: they start at `end`, one
/// byte a bucket.
#[inline(always)]
pub(crate) fn control_bytes(end: usize, buckets: usize, hash: u64) -> usize {
    end.wrapping_add((hash as usize) & buckets.wrapping_sub(1))
}

/// Asks for both lines of a message's state (128 bytes) and the first of
/// its readers.
#[inline(always)]
fn prefetch_message(m: &crate::MessageState) {
    let state: *const u8 = (m as *const crate::MessageState).cast();
    prefetch_line(state);
    prefetch_line(state.wrapping_add(64));
    prefetch_line(m.readers.heap_ptr());
}

impl PartitionState {
    /// Looks up the messages folding `event` reads first (a read's messages
    /// and their readers, its reader's group and ordinal, a send's bucket
    /// and its group, a conversation read's mark or its bucket), changing
    /// nothing. Call it for a few events ([`PREFETCH_AHEAD`]), then
    /// fold them with [`Self::apply_ahead`] and what it returned: see the
    /// module docs. `&mut`: it reads the maps without their locks, which
    /// only the fold may (see `ShardedMap::peek`).
    pub fn prefetch(&mut self, event: &Event) -> ReadAhead {
        let Some(app) = self.apps.get(event.app_id()) else { return ReadAhead::NONE };
        let view = &app.view;
        // SAFETY (each `peek`): `&mut self` holds off every change to the
        // maps while the references live; queries only read.
        match event {
            Event::MessageRead(e) => {
                // The reader's group first (few, mostly in cache), and the
                // first two lines its ordinal's lookup waits for asked for:
                // they come in while the messages' lookups wait for theirs.
                // `None` for a C2C read; `Some(None)` for an unknown group.
                let group = match &e.conversation {
                    Conversation::Group { group_id } => Some(
                        unsafe { view.groups.peek(group_id.as_str()) }
                            .map(|g| (g, hash_of(e.reader.as_str())))
                            .inspect(|(g, reader)| g.users.prefetch_ordinal(*reader)),
                    ),
                    Conversation::C2c { .. } => None,
                };
                for msg_id in e.msg_ids.iter().take(PREFETCH_IDS) {
                    if let Some(m) = unsafe { view.messages.peek(msg_id.as_str()) } {
                        prefetch_message(m);
                    }
                }
                let Some(group) = group else { return ReadAhead::NONE };
                ReadAhead {
                    found: Some(FoundPlace {
                        event: e,
                        groups_epoch: self.groups_epoch,
                        group: group.map(|(g, _)| NonNull::from(g)),
                        ordinal: group.and_then(|(g, reader)| g.users.ordinal_hashed(reader, e.reader.as_str())),
                    }),
                }
            }
            Event::MessageSent(e) => {
                // Its probe's lines, for the insert: none is there as a
                // rule, so they are cold.
                unsafe { view.messages.prefetch_probe(hash_of(e.msg_id.as_str())) };
                // A group send reads its group's epoch and type under the
                // message's shard lock, which takes the misses one at a
                // time (`get_entry`, 3% of the poll loop in a drain).
                if let Conversation::Group { group_id } = &e.conversation {
                    if let Some(group) = unsafe { view.groups.peek(group_id.as_str()) } {
                        prefetch_line(&group.meta);
                    }
                }
                ReadAhead::NONE
            }
            Event::ConversationRead(e) => {
                // The pair's mark, most often new: as a send's bucket.
                if let Conversation::C2c { peer } = &e.conversation {
                    // SAFETY: as `peek`'s above.
                    unsafe { view.marks.prefetch_probe(hash_of(&(e.reader.as_str(), peer.as_str()))) };
                }
                ReadAhead::NONE
            }
            Event::GroupMembers(_) | Event::MessageRevoked(_) => ReadAhead::NONE,
        }
    }

    /// Asks for the lines where a lookup of the changed message `key`
    /// names starts (its probe's control bytes and first buckets), and
    /// waits for none of them: a run ahead of [`Self::prefetch_changed`]
    /// of the same key, which then finds them in cache.
    pub(crate) fn probe_changed(&mut self, key: &DirtyKey) {
        if let DirtyKey::Message { app, msg_id } = key {
            let Some(app) = self.apps.get(app.as_str()) else { return };
            // SAFETY: as in `prefetch`.
            unsafe { app.view.messages.prefetch_probe(hash_of(msg_id.as_str())) };
        }
    }

    /// Looks up the changed entity `key` names, as a flush will (the
    /// messages, most of a flush and cold by then), and asks for its
    /// state, changing nothing.
    pub(crate) fn prefetch_changed(&mut self, key: &DirtyKey) {
        if let DirtyKey::Message { app, msg_id } = key {
            let Some(app) = self.apps.get(app.as_str()) else { return };
            // SAFETY: as in `prefetch`.
            if let Some(m) = unsafe { app.view.messages.peek(msg_id.as_str()) } {
                prefetch_message(m);
            }
        }
    }
}
