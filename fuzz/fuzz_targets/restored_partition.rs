//! A partition restored from any stored entities, as the store restores
//! one at start-up: group headers, member slots, messages, read marks,
//! held reads and the watermark, each value decoded from the input as the
//! store decodes it, under keys drawn from a few ids so that entities meet.
//! Restoring must either refuse the entities (a corrupt store is an error
//! at start-up) or give a partition that answers every query and folds
//! every event without a panic, and whose counts agree with its member
//! lists and their pages.
//!
//! Input: records (a kind byte, key bytes, the value's bincode bytes),
//! ended by a kind byte past the six kinds or by the input's end; then
//! four bytes per event folded into the restored partition.
#![no_main]

use libfuzzer_sys::fuzz_target;
use receiptd_core::{
    DeltaBuffer, Effects, GroupMeta, HeldRead, Limits, MemberFilter, MessageState, PartitionState, SettingsTable,
};
use receiptd_wire::{
    Conversation, ConversationRead, Event, GroupMembers, GroupType, MembersOp, MessageRead, MessageRevoked,
    MessageSent,
};
use serde::Deserialize;

const APP: &str = "a1";
/// Epochs above this are not restored: a group keeps 8 bytes a membership
/// epoch, in the fold as after a restore, and the fuzzer's memory is small.
const MAX_EPOCH: u32 = 1 << 16;
/// Send and read times cluster here, so that retention and the readers'
/// time window are met as well as missed.
const T0: u64 = 1_732_200_000_000;

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// The next value, decoded as the store decodes one (strings in place).
    fn value<T: Deserialize<'a>>(&mut self) -> Option<T> {
        let (value, used) = bincode::serde::borrow_decode_from_slice(self.0, bincode::config::standard()).ok()?;
        self.0 = &self.0[used..];
        Some(value)
    }
}

fn group(b: u8) -> String {
    format!("g{}", b % 3)
}

fn user(b: u8) -> String {
    format!("u{}", b % 12)
}

fn msg(b: u8) -> String {
    format!("m{}", b % 6)
}

/// Restores the records at the start of the input; `None` where the input
/// ends inside one, or restoring refused them.
fn restore(input: &mut Input<'_>) -> Option<PartitionState> {
    let mut state = PartitionState::new();
    loop {
        let Some(kind) = input.byte() else { break };
        match kind {
            0 => {
                let g = group(input.byte()?);
                let meta: GroupMeta = input.value()?;
                if meta.epoch > MAX_EPOCH {
                    return None;
                }
                state.restore_group(APP, &g, meta);
            }
            1 => {
                let g = group(input.byte()?);
                let ordinal = u32::from(u16::from_be_bytes([input.byte()?, input.byte()?]));
                let (name, since): (&str, u32) = input.value()?;
                state.restore_member(APP, &g, ordinal, name, since).ok()?;
            }
            2 => {
                let m = msg(input.byte()?);
                let message: MessageState = input.value()?;
                state.restore_message(APP, &m, message);
            }
            3 => {
                let (reader, peer) = (user(input.byte()?), user(input.byte()?));
                let read_at: u64 = input.value()?;
                state.restore_mark(APP, &reader, &peer, read_at);
            }
            4 => {
                let m = msg(input.byte()?);
                let reads: Vec<HeldRead> = input.value()?;
                state.restore_held(APP, &m, reads);
            }
            5 => {
                let watermark: u64 = input.value()?;
                state.restore_watermark(watermark);
            }
            _ => break,
        }
    }
    state.finish_restore().ok()?;
    Some(state)
}

/// Every question the query API asks, of every message; a count must
/// agree with the list it summarizes, and paging must visit that list.
fn ask_everything(state: &PartitionState, settings: &SettingsTable) {
    for id in state.message_ids(APP) {
        let counts = state.counts(settings, APP, &id);
        let Some(m) = state.message(APP, &id) else { continue };
        let (sender, target) = (m.sender.as_str().to_owned(), m.target.clone());
        drop(m);
        let conversation = match &target {
            receiptd_core::MessageTarget::Group { group_id, .. } => Conversation::Group { group_id: group_id.clone() },
            receiptd_core::MessageTarget::C2c { peer } => Conversation::C2c { peer: peer.clone() },
        };
        let receipt = state.view().receipt(settings, APP, &id, &sender, &conversation);
        let Some((read, unread)) = state.group_lists(settings, APP, &id) else { continue };
        let (read_count, unread_count) = counts.expect("a listed message has counts");
        assert_eq!((read.len(), unread.len()), (read_count as usize, unread_count as usize), "counts of {id}");
        let Conversation::Group { group_id } = &conversation else { unreachable!("lists are of group messages") };
        for (filter, listed) in [
            (MemberFilter::Read, read.iter().map(|(u, t)| (u.clone(), Some(*t))).collect::<Vec<_>>()),
            (MemberFilter::Unread, unread.iter().map(|u| (u.clone(), None)).collect()),
        ] {
            let mut paged = Vec::new();
            let mut after = None;
            loop {
                let Ok(page) = state.view().member_page(settings, APP, group_id, &id, &sender, filter, after, 3)
                else {
                    assert!(receipt.is_err(), "{id}: pages refused, its receipt given");
                    break;
                };
                paged.extend(page.members);
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            if receipt.is_ok() {
                assert_eq!(paged, listed, "{id}: {filter:?} pages");
            }
        }
    }
    let _ = state.marks(APP);
}

/// One event from four bytes, among the ids the records use.
fn event(b: [u8; 4]) -> Event {
    let app_id = APP.into();
    let conversation = |b: u8| match b % 3 {
        0 => Conversation::C2c { peer: user(b / 3).into() },
        _ => Conversation::Group { group_id: group(b / 3).into() },
    };
    match b[0] % 6 {
        0 => Event::MessageRead(MessageRead {
            app_id,
            reader: user(b[1]).into(),
            conversation: conversation(b[2]),
            msg_ids: (0..1 + b[3] % 3).map(|k| msg(b[1].wrapping_add(k)).into()).collect(),
            read_at: T0 + u64::from(b[3]) * 60_000,
            private: b[3] & 0x80 != 0,
        }),
        1 => Event::MessageSent(MessageSent {
            app_id,
            msg_id: msg(b[1]).into(),
            sender: user(b[2]).into(),
            conversation: conversation(b[3]),
            need_read_receipt: b[1] & 0x80 == 0,
            sent_at: T0,
        }),
        2 => Event::GroupMembers(GroupMembers {
            app_id,
            group_id: group(b[1]).into(),
            op: [MembersOp::Snapshot, MembersOp::Join, MembersOp::Leave, MembersOp::Dismiss][usize::from(b[2] % 4)],
            group_type: Some(GroupType::Work),
            members: (0..b[3] % 5).map(|k| user(b[3].wrapping_add(k)).into()).collect(),
            at: T0,
        }),
        3 => Event::ConversationRead(ConversationRead {
            app_id,
            reader: user(b[1]).into(),
            conversation: Conversation::C2c { peer: user(b[2]).into() },
            read_at: T0 + u64::from(b[3]),
        }),
        4 => Event::MessageRevoked(MessageRevoked {
            app_id,
            msg_id: msg(b[1]).into(),
            sender: user(b[2]).into(),
            conversation: conversation(b[3]),
            at: T0,
        }),
        _ => Event::MessageRead(MessageRead {
            app_id,
            reader: user(b[1]).into(),
            conversation: Conversation::Group { group_id: group(b[2]).into() },
            msg_ids: vec![msg(b[3]).into()],
            read_at: T0 - 1,
            private: false,
        }),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(mut state) = restore(&mut input) else { return };
    let settings = SettingsTable::default();
    ask_everything(&state, &settings);

    let (limits, mut fx, mut deltas) = (Limits::default(), Effects::default(), DeltaBuffer::default());
    for (k, b) in input.0.chunks_exact(4).enumerate() {
        state.apply(&settings, &limits, &event([b[0], b[1], b[2], b[3]]), T0 + k as u64, &mut fx);
        if k % 8 == 7 {
            state.flush_changes(&settings, &mut deltas, |_, _| {});
        }
    }
    state.flush_changes(&settings, &mut deltas, |_, _| {});
    ask_everything(&state, &settings);
});
