//! An in-memory stand-in for the store: what a flush stages is put or
//! deleted by key, as `receiptd-store` does in RocksDB (a group staged
//! absent takes its member slots along), and a partition is restored from
//! it as the store restores one.

use receiptd_core::{DirtyKey, Entity, GroupMeta, HeldRead, MessageState, PartitionState};
use std::collections::BTreeMap;

/// A persisted entity's value. A message goes through serde as the store's
/// does, which drops what is never persisted (its changed flags, caches).
#[derive(Debug, Clone, PartialEq)]
enum Stored {
    Group(GroupMeta),
    Member(String, u32),
    Message(Vec<u8>),
    Mark(u64),
    Held(Vec<HeldRead>),
}

/// An entity's place in the stand-in, sorted as the store's keys sort
/// where restoring needs it: a group's header before its member slots,
/// and the slots by ordinal (in the key, a big-endian number).
fn sort_key(key: &DirtyKey) -> String {
    match key {
        DirtyKey::Member { app, group_id, ordinal } => format!("Member {app:?} {group_id:?} {ordinal:010}"),
        _ => format!("{key:?}"),
    }
}

/// Entities by key.
#[derive(Debug, Default)]
pub struct Disk {
    entries: BTreeMap<String, (DirtyKey, Stored)>,
}

impl Disk {
    /// Puts (or deletes) one staged entity.
    pub fn stage(&mut self, key: &DirtyKey, entity: Entity<'_>) {
        let id = sort_key(key);
        let value = match entity {
            Entity::Group(g) => Stored::Group(g.clone()),
            Entity::FreshGroup(g) => {
                self.drop_members(key);
                Stored::Group(g.clone())
            }
            Entity::Member(u, s) => Stored::Member(u.to_owned(), s),
            Entity::Message(m) => Stored::Message(serde_json::to_vec(m).expect("a message serializes")),
            Entity::Mark(t) => Stored::Mark(t),
            Entity::Held(r) => Stored::Held(r.to_vec()),
            Entity::Absent => {
                self.entries.remove(&id);
                self.drop_members(key);
                return;
            }
        };
        self.entries.insert(id, (key.clone(), value));
    }

    /// Deletes every member slot of a group `key` names, as the store's
    /// range delete does.
    fn drop_members(&mut self, key: &DirtyKey) {
        if let DirtyKey::Group { app, group_id } = key {
            self.entries.retain(
                |_, (k, _)| !matches!(k, DirtyKey::Member { app: a, group_id: g, .. } if a == app && g == group_id),
            );
        }
    }

    /// A partition restored from what was staged, at `watermark`.
    pub fn restore(&self, watermark: u64) -> PartitionState {
        let mut restored = PartitionState::new();
        restored.restore_watermark(watermark);
        for (key, value) in self.entries.values() {
            match (key, value.clone()) {
                (DirtyKey::Group { app, group_id }, Stored::Group(g)) => restored.restore_group(app, group_id, g),
                (DirtyKey::Member { app, group_id, ordinal }, Stored::Member(u, s)) => {
                    restored.restore_member(app, group_id, *ordinal, &u, s).expect("a slot the fold wrote restores")
                }
                (DirtyKey::Message { app, msg_id }, Stored::Message(m)) => {
                    let m: MessageState = serde_json::from_slice(&m).expect("and reads back");
                    restored.restore_message(app, msg_id, m, 0)
                }
                (DirtyKey::Mark { app, reader, peer }, Stored::Mark(t)) => restored.restore_mark(app, reader, peer, t),
                (DirtyKey::Held { app, msg_id }, Stored::Held(r)) => restored.restore_held(app, msg_id, r),
                other => panic!("a key stored with another kind's value: {other:?}"),
            }
        }
        restored.finish_restore().expect("what the fold wrote restores");
        restored
    }
}
