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
//! Only messages: walking the reader's group and ordinal too (about 120
//! instructions an event more) cost the drain's mix more than it saved,
//! its groups being few and mostly in cache.

use crate::state::{DirtyKey, PartitionState};
use receiptd_wire::Event;

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
fn prefetch_line<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch has no architectural effect and cannot fault,
    // whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
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
    /// and their readers, a send's bucket), changing nothing. Call it for
    /// a few events ([`PREFETCH_AHEAD`]), then fold them: see the module
    /// docs. `&mut`: it reads the maps without their locks, which only the
    /// fold may (see `ShardedMap::peek`).
    pub fn prefetch(&mut self, event: &Event) {
        let Some(app) = self.apps.get(event.app_id()) else { return };
        let view = &app.view;
        // SAFETY (each `peek`): `&mut self` holds off every change to the
        // maps while the references live; queries only read.
        match event {
            Event::MessageRead(e) => {
                for msg_id in e.msg_ids.iter().take(PREFETCH_IDS) {
                    if let Some(m) = unsafe { view.messages.peek(msg_id.as_str()) } {
                        prefetch_message(m);
                    }
                }
            }
            Event::MessageSent(e) => {
                // Its bucket, for the insert; none is there as a rule.
                std::hint::black_box(unsafe { view.messages.peek(e.msg_id.as_str()) }.is_some());
            }
            Event::GroupMembers(_) | Event::ConversationRead(_) | Event::MessageRevoked(_) => {}
        }
    }

    /// Looks up the changed entity `key` names, as a flush will (the
    /// messages, most of a flush and cold by then), changing nothing.
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
