//! A partition restored from any stored entities, as the store restores
//! one at start-up: group headers, member slots, messages (some with
//! pages of readers stored apart), the pages, read marks, held reads and
//! the watermark, each value decoded as the store decodes
//! it, in the order of the store's keys (a key written twice keeps its last
//! value), under keys drawn from a few ids so that entities meet.
//! Restoring must either refuse the entities (a corrupt store is an error
//! at start-up) or give a partition that answers every query and folds
//! every event without a panic, and whose counts agree with its member
//! lists and their pages.
//!
//! Then what the fold's flushes stage is written over the same entities,
//! as the store writes it, and the partition restored again must be the
//! one that was live: a restart at a flush restores what was folded.
//!
//! Input: records (a kind byte, key bytes, the value's bincode bytes),
//! ended by a kind byte past the eight kinds or by the input's end; then
//! four bytes per event folded into the restored partition. Kind 6 is a
//! page of readers (message, page number, its bytes as a bincode byte
//! string); kind 7 a message with pages (message, their count, the
//! message).
#![no_main]

use libfuzzer_sys::fuzz_target;
use receiptd_core::{
    DeltaBuffer, DirtyKey, Effects, Entity, GroupMeta, HeldRead, Limits, MemberFilter, MessageState, PartitionState,
    SettingsTable,
};
use receiptd_wire::{
    Conversation, ConversationRead, Event, GroupMembers, GroupType, MembersOp, MessageRead, MessageRevoked, MessageSent,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const APP: &str = "a1";
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

    /// The next value, decoded as the store decodes one (strings in place),
    /// and its bytes.
    fn value_and_bytes<T: Deserialize<'a>>(&mut self) -> Option<(T, &'a [u8])> {
        let (value, used) = bincode::serde::borrow_decode_from_slice(self.0, bincode::config::standard()).ok()?;
        let (bytes, rest) = self.0.split_at(used);
        self.0 = rest;
        Some((value, bytes))
    }

    /// The next value, decoded.
    fn value<T: Deserialize<'a>>(&mut self) -> Option<T> {
        self.value_and_bytes().map(|(value, _)| value)
    }

    /// The bytes of the next value, which must decode as a `T`.
    fn value_bytes<T: Deserialize<'a>>(&mut self) -> Option<&'a [u8]> {
        self.value_and_bytes::<T>().map(|(_, bytes)| bytes)
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

/// A stored entity's key, ordered as the store's keys are: by kind
/// (`g`roup < `h`eld < mar`k` < `m`essage < reader `p`age < member `u`),
/// then by ids, a member slot by its ordinal, a page by its number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Group(String),
    Held(String),
    Mark(String, String),
    Message(String),
    ReaderPage(String, u32),
    Member(String, u32),
}

/// Stored values by key, and the checkpoint's watermark: what RocksDB
/// holds of one partition.
#[derive(Default)]
struct Disk {
    values: BTreeMap<Key, Vec<u8>>,
    watermark: Option<u64>,
}

fn bincode_of<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("state values encode")
}

fn decoded<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    bincode::serde::borrow_decode_from_slice(bytes, bincode::config::standard()).ok().map(|(v, _)| v)
}

/// A stored message and the count of its reader pages, as the store
/// decodes them: the count follows the message when it is not 0.
fn decoded_message(bytes: &[u8]) -> Option<(MessageState, u32)> {
    let config = bincode::config::standard();
    let (message, used) = bincode::serde::borrow_decode_from_slice(bytes, config).ok()?;
    let pages = match &bytes[used..] {
        [] => 0,
        rest => match bincode::decode_from_slice::<u32, _>(rest, config).ok()? {
            (pages, read) if read == rest.len() && pages > 0 => pages,
            _ => return None,
        },
    };
    Some((message, pages))
}

impl Disk {
    /// The records at the start of the input; `None` where the input ends
    /// inside one or a value does not decode as its kind's. Any epoch is
    /// taken: a group's memory does not grow with it.
    fn read(input: &mut Input<'_>) -> Option<Disk> {
        let mut disk = Disk::default();
        loop {
            let Some(kind) = input.byte() else { break };
            let (key, value) = match kind {
                0 => {
                    let g = group(input.byte()?);
                    (Key::Group(g), input.value_bytes::<GroupMeta>()?)
                }
                1 => {
                    let (g, ordinal) = (group(input.byte()?), u16::from_be_bytes([input.byte()?, input.byte()?]));
                    (Key::Member(g, u32::from(ordinal)), input.value_bytes::<(&str, u32)>()?)
                }
                2 => (Key::Message(msg(input.byte()?)), input.value_bytes::<MessageState>()?),
                6 => {
                    let (m, page) = (msg(input.byte()?), u32::from(input.byte()? % 4));
                    (Key::ReaderPage(m, page), input.value::<&[u8]>()?)
                }
                7 => {
                    let (m, pages) = (msg(input.byte()?), input.byte()? % 4);
                    let mut value = input.value_bytes::<MessageState>()?.to_vec();
                    // Format 3: the count after the message, when not 0.
                    if pages > 0 {
                        value.push(pages);
                    }
                    disk.values.insert(Key::Message(m), value);
                    continue;
                }
                3 => (Key::Mark(user(input.byte()?), user(input.byte()?)), input.value_bytes::<u64>()?),
                4 => (Key::Held(msg(input.byte()?)), input.value_bytes::<Vec<HeldRead>>()?),
                5 => {
                    disk.watermark = Some(input.value()?);
                    continue;
                }
                _ => break,
            };
            disk.values.insert(key, value.to_vec());
        }
        Some(disk)
    }

    /// The partition restored from it as the store restores one, or why
    /// restoring refused the entities.
    fn restore(&self) -> Result<PartitionState, String> {
        let mut state = PartitionState::new();
        if let Some(watermark) = self.watermark {
            state.restore_watermark(watermark);
        }
        for (key, value) in &self.values {
            let undecodable = || format!("{key:?} does not decode");
            match key {
                Key::Group(g) => {
                    state.restore_group(APP, g, decoded(value).ok_or_else(undecodable)?);
                }
                Key::Member(g, ordinal) => {
                    let (name, since): (&str, u32) = decoded(value).ok_or_else(undecodable)?;
                    state.restore_member(APP, g, *ordinal, name, since).map_err(|e| format!("{e:?}"))?;
                }
                Key::Message(m) => {
                    let (message, pages) = decoded_message(value).ok_or_else(undecodable)?;
                    state.restore_message(APP, m, message, pages)
                }
                Key::ReaderPage(m, page) => {
                    state.restore_reader_page(APP, m, *page, value).map_err(|e| format!("{e:?}"))?
                }
                Key::Mark(reader, peer) => {
                    state.restore_mark(APP, reader, peer, decoded(value).ok_or_else(undecodable)?)
                }
                Key::Held(m) => state.restore_held(APP, m, decoded::<Vec<HeldRead>>(value).ok_or_else(undecodable)?),
            }
        }
        state.finish_restore().map_err(|e| format!("{e:?}"))?;
        Ok(state)
    }

    /// Writes one staged entity, as the store's write batch does.
    fn stage(&mut self, key: &DirtyKey, entity: Entity<'_>) {
        if let DirtyKey::ReaderPages { msg_id, .. } = key {
            // Only ever deleted, all of one message's (a range delete).
            self.values.retain(|k, _| !matches!(k, Key::ReaderPage(m, _) if *m == **msg_id));
            return;
        }
        let key = match key {
            DirtyKey::Group { group_id, .. } => Key::Group(group_id.to_string()),
            DirtyKey::Member { group_id, ordinal, .. } => Key::Member(group_id.to_string(), *ordinal),
            DirtyKey::Message { msg_id, .. } => Key::Message(msg_id.to_string()),
            DirtyKey::Mark { reader, peer, .. } => Key::Mark(reader.to_string(), peer.to_string()),
            DirtyKey::Held { msg_id, .. } => Key::Held(msg_id.to_string()),
            DirtyKey::ReaderPages { .. } => unreachable!("deleted above"),
        };
        let value = match entity {
            Entity::Group(meta) => bincode_of(meta),
            Entity::FreshGroup(meta) => {
                self.drop_members(&key);
                bincode_of(meta)
            }
            Entity::Member(name, since) => bincode_of(&(name, since)),
            Entity::Message(m) => {
                let mut page = Vec::new();
                if let (Some(n), Key::Message(id)) = (m.encode_sealed_page(&mut page), &key) {
                    self.values.insert(Key::ReaderPage(id.clone(), n), page);
                }
                let mut out = Vec::new();
                m.encode_stored(&mut out);
                out
            }
            Entity::Mark(read_at) => bincode_of(&read_at),
            Entity::Held(reads) => bincode_of(&reads),
            Entity::Absent => {
                self.values.remove(&key);
                self.drop_members(&key);
                return;
            }
        };
        self.values.insert(key, value);
    }

    /// A group's member slots go with its header (the store's range delete).
    fn drop_members(&mut self, key: &Key) {
        if let Key::Group(g) = key {
            self.values.retain(|k, _| !matches!(k, Key::Member(group, _) if group == g));
        }
    }
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
                let Ok(page) = state.view().member_page(settings, APP, group_id, &id, &sender, filter, after, 3) else {
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

/// What a restart must give back of `live`: the same messages, each the
/// same stored bytes, counts and lists, the same marks and held reads.
fn assert_same(restored: &PartitionState, live: &PartitionState, settings: &SettingsTable) {
    let ids = live.message_ids(APP);
    assert_eq!(restored.message_ids(APP), ids, "messages");
    for id in &ids {
        let stored = |state: &PartitionState| {
            let mut out = Vec::new();
            state.message(APP, id).unwrap().encode_stored(&mut out);
            out
        };
        assert_eq!(stored(restored), stored(live), "{id} stored");
        let pages = |state: &PartitionState| state.message(APP, id).unwrap().reader_pages();
        assert_eq!(pages(restored), pages(live), "{id} reader pages");
        assert_eq!(restored.counts(settings, APP, id), live.counts(settings, APP, id), "{id} counts");
        assert_eq!(restored.group_lists(settings, APP, id), live.group_lists(settings, APP, id), "{id} lists");
    }
    assert_eq!(restored.marks(APP), live.marks(APP), "marks");
    assert_eq!(restored.held_count(), live.held_count(), "held reads");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(mut disk) = Disk::read(&mut input) else { return };
    let Ok(mut state) = disk.restore() else { return };
    let settings = SettingsTable::default();
    ask_everything(&state, &settings);

    let (limits, mut fx, mut deltas) = (Limits::default(), Effects::default(), DeltaBuffer::default());
    for (k, b) in input.0.chunks_exact(4).enumerate() {
        state.apply(&settings, &limits, &event([b[0], b[1], b[2], b[3]]), T0 + k as u64, &mut fx);
        if k % 8 == 7 {
            state.flush_changes(&settings, &mut deltas, |key, entity| disk.stage(key, entity));
        }
    }
    state.flush_changes(&settings, &mut deltas, |key, entity| disk.stage(key, entity));
    ask_everything(&state, &settings);

    disk.watermark = Some(state.watermark());
    let restored = disk.restore().unwrap_or_else(|e| panic!("what the fold wrote over a restored store restores: {e}"));
    assert_same(&restored, &state, &settings);
});
