//! The folded state of one partition, and the narrow interface storage uses to
//! persist and restore it (dirty keys out, entities in).

use crate::members_by_since::MembersBySince;
use crate::readers::Readers;
use crate::sharded::hash_of;
use crate::ShardedMap;
use parking_lot::{MappedRwLockReadGuard, RwLock};
use receiptd_wire::GroupType;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// How many keys' room the list of changed keys keeps once a flush has
/// staged them all (about 600 KiB): enough for a usual flush, so the next
/// one seldom grows the list (each growth copies every key), but not what
/// one huge flush needed.
pub(crate) const RETAINED_KEYS: usize = 8 * 1024;

pub use receiptd_wire::Id;

/// `since` of an ordinal that is not a member now.
pub const NOT_A_MEMBER: u32 = u32::MAX;

/// The last epoch a group can reach: the next would be [`NOT_A_MEMBER`]. A
/// group there takes no more membership changes (`epochs_exhausted`), after
/// 4,294,967,294 of them.
pub const LAST_EPOCH: u32 = NOT_A_MEMBER - 1;

/// A group's header: type and membership epoch. Members are stored apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMeta {
    /// The type from the latest snapshot; `None` until one arrives.
    pub group_type: Option<GroupType>,
    /// Advances by one with every membership change.
    pub epoch: u32,
}

/// One ordinal of a group: when its current membership began, and the
/// live messages holding a read by it. Side by side, so that the fold's
/// read finds the count on the cache line it checks membership on.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The epoch the current membership began, or [`NOT_A_MEMBER`].
    pub(crate) since: u32,
    /// Live messages holding a read by this ordinal. Atomic so that the
    /// fold can count a read through the `&Group` it reads without the
    /// lock; only the fold's thread changes it, with plain loads and
    /// stores.
    pub(crate) reads: AtomicU32,
}

impl Slot {
    pub(crate) fn new(since: u32) -> Self {
        Slot { since, reads: AtomicU32::new(0) }
    }
}

/// One group: header plus its member table, indexed by group-local ordinal.
/// Ordinals are handed out on first join. One changes hands only once its
/// member has left and no live message holds a read by it, so a message's
/// read set can name members by ordinal for its whole life, and the table
/// grows with the members and the readers of live messages, not with
/// every user who was ever a member.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) meta: GroupMeta,
    /// Member names by ordinal, and ordinals by name.
    pub(crate) users: crate::members::MemberNames,
    /// ordinal -> its membership and reads.
    pub(crate) slots: Vec<Slot>,
    /// Current members counted by their `since` epoch.
    pub(crate) by_epoch: MembersBySince,
    /// Ordinals free to change hands: their member left and no live
    /// message holds a read by them. The lowest goes first, so a restored
    /// partition hands out what the live one would have.
    pub(crate) reusable: crate::members::FreeOrdinals,
    /// Who left in the recent epochs, to bring cached counts up to date.
    pub(crate) departures: crate::departures::Departures,
    pub(crate) member_count: u32,
    pub(crate) dirty: bool,
    pub(crate) dirty_members: rustc_hash::FxHashSet<u32>,
    /// Created by the fold since its header was last staged: it replaces
    /// whatever storage holds under its id, such as the member slots of a
    /// group of the same id dismissed in the same flush window.
    pub(crate) fresh: bool,
}

impl Group {
    pub(crate) fn new(group_type: Option<GroupType>) -> Self {
        Group {
            meta: GroupMeta { group_type, epoch: 0 },
            users: Default::default(),
            slots: Vec::new(),
            by_epoch: MembersBySince::default(),
            reusable: Default::default(),
            departures: Default::default(),
            member_count: 0,
            dirty: false,
            dirty_members: Default::default(),
            fresh: false,
        }
    }

    /// Whether `ordinal` has been a member continuously since `epoch` or earlier.
    pub(crate) fn member_since(&self, ordinal: u32, epoch: u32) -> bool {
        self.slots.get(ordinal as usize).is_some_and(|s| s.since <= epoch)
    }

    /// Members now present whose membership began at or before `epoch`.
    pub(crate) fn eligible(&self, epoch: u32) -> u32 {
        self.by_epoch.at_or_before(epoch)
    }

    pub(crate) fn ordinal(&self, user: &str) -> Option<u32> {
        self.users.ordinal(user)
    }

    /// Counts a live message's read by `ordinal`. The fold's thread only
    /// (see [`Slot::reads`]).
    #[inline]
    pub(crate) fn count_read(&self, ordinal: u32) {
        let reads = &self.slots[ordinal as usize].reads;
        reads.store(reads.load(Relaxed) + 1, Relaxed);
    }

    /// Uncounts the reads of a message gone or revoked. An ordinal left
    /// with no reads and no member can change hands.
    pub(crate) fn uncount_reads(&mut self, ordinals: impl Iterator<Item = u32>) {
        for ordinal in ordinals {
            let slot = &mut self.slots[ordinal as usize];
            let reads = slot.reads.get_mut();
            *reads -= 1;
            if *reads == 0 && slot.since == NOT_A_MEMBER {
                self.reusable.insert(ordinal);
            }
        }
    }

    /// Frees `ordinal`, whose member just left, to change hands if no live
    /// message holds a read by it.
    pub(crate) fn free_if_unread(&mut self, ordinal: u32) {
        if *self.slots[ordinal as usize].reads.get_mut() == 0 {
            self.reusable.insert(ordinal);
        }
    }
}

/// One reader of a message. For C2C the only ordinal is 0 (the peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMark {
    /// Group-local member ordinal (0 for the C2C peer).
    pub ordinal: u32,
    /// When the read happened, Unix ms.
    pub read_at: u64,
    /// A private read, or one made while the reader's receipts were off: kept,
    /// never revealed.
    pub hidden: bool,
}

/// Where a message lives and who its audience is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageTarget {
    /// A group message; the audience is the members as of `audience_epoch`.
    Group {
        /// The group.
        group_id: Id,
        /// The group's membership epoch at send time.
        audience_epoch: u32,
    },
    /// A C2C message; the audience is the peer.
    C2c {
        /// The peer (the one who may read it).
        peer: Id,
    },
}

/// Whether a known message collects receipts, and if not, why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tracking {
    /// Reads are folded.
    Tracked,
    /// Sent without `need_read_receipt`.
    NoReceiptRequested,
    /// Its group's type has receipts disabled.
    GroupTypeDisabled,
    /// C2C receipts are disabled for the app.
    C2cDisabled,
    /// Sent to a group with no known membership.
    UnknownGroup,
    /// Revoked; its reads are gone.
    Revoked,
}

/// The receipt state of one message.
///
/// 128 bytes, mimalloc's size class of that size: one field more (the
/// version, which the revealed reads already count) made it 136 bytes in
/// a 160-byte block, 32 bytes more of memory for every live message.
/// Stored as format 2 stores it, the version included (see
/// [`MessageState::version`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageState {
    /// Who sent it (the one who gets its receipts).
    pub sender: Id,
    /// Group or C2C, with the audience.
    pub target: MessageTarget,
    /// Send time, Unix ms (retention counts from here).
    pub sent_at: u64,
    /// Whether reads are folded.
    pub tracking: Tracking,
    /// Time of the latest revealed change (`sent_at` before any).
    pub timestamp: u64,
    /// Who read, when, hidden or not (8 bytes a reader; see [`Readers`]).
    /// Read times are kept as offsets from `sent_at`, which therefore never
    /// changes once the message exists.
    pub readers: Readers,
    /// Readers that are revealed (not hidden). Each revealed change is a
    /// reader revealed, so this is also the message's version.
    pub visible_reads: u32,
    /// `(read, unread)` as of the latest revealed change: what the receipt of
    /// the version says, fixed so that a replayed receipt is identical to
    /// the original whatever the flush windows were.
    pub receipt_counts: (u32, u32),
    /// The group's membership epoch and the app's receipt switches that
    /// `receipt_counts` were counted under: while both hold, they are the
    /// counts now, and a new revealed read moves them by one instead of a
    /// recount over every reader (which, while anyone in the app has
    /// receipts off, looks each reader up). Derived, so never persisted.
    pub(crate) counted_under: CountedUnder,
    pub(crate) dirty: bool,
    /// A revealed change not yet taken by `take_receipts`.
    pub(crate) delta_pending: bool,
}

const _: () = assert!(std::mem::size_of::<MessageState>() <= 128, "a message fits mimalloc's 128-byte class");

/// A message as stored (format 2): its persisted fields in their order, the
/// version among them. Serialized from a borrowed [`MessageState`].
#[derive(Serialize)]
#[serde(rename = "MessageState")]
struct StoredMessageRef<'a> {
    sender: &'a Id,
    target: &'a MessageTarget,
    sent_at: u64,
    tracking: Tracking,
    version: u64,
    timestamp: u64,
    readers: &'a Readers,
    visible_reads: u32,
    receipt_counts: (u32, u32),
}

/// A message as stored, read back; see [`StoredMessageRef`].
#[derive(Deserialize)]
#[serde(rename = "MessageState")]
struct StoredMessage {
    sender: Id,
    target: MessageTarget,
    sent_at: u64,
    tracking: Tracking,
    /// Derived from `visible_reads` (equal for every message that collects
    /// receipts); read and dropped.
    #[allow(dead_code)]
    version: u64,
    timestamp: u64,
    readers: Readers,
    visible_reads: u32,
    receipt_counts: (u32, u32),
}

impl Serialize for MessageState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        StoredMessageRef {
            sender: &self.sender,
            target: &self.target,
            sent_at: self.sent_at,
            tracking: self.tracking,
            version: self.version(),
            timestamp: self.timestamp,
            readers: &self.readers,
            visible_reads: self.visible_reads,
            receipt_counts: self.receipt_counts,
        }
        .serialize(serializer)
    }
}

impl MessageState {
    /// The stored form (format 2), appended to `out`: the bytes bincode's
    /// standard configuration writes for the serde form above, written
    /// directly (see `stored_form`). What staging writes for a message.
    pub fn encode_stored(&self, out: &mut Vec<u8>) {
        use crate::stored_form::{put_bytes, put_varint};
        let (MessageTarget::Group { group_id: conversation, .. } | MessageTarget::C2c { peer: conversation }) =
            &self.target;
        // Room for all but the readers (which reserve their own): two
        // strings, and twelve varints (their lengths and ten integers) of
        // at most 9 bytes.
        out.reserve(self.sender.len() + conversation.len() + 12 * 9);
        put_bytes(out, self.sender.as_str().as_bytes());
        match &self.target {
            MessageTarget::Group { group_id, audience_epoch } => {
                put_varint(out, 0);
                put_bytes(out, group_id.as_str().as_bytes());
                put_varint(out, u64::from(*audience_epoch));
            }
            MessageTarget::C2c { peer } => {
                put_varint(out, 1);
                put_bytes(out, peer.as_str().as_bytes());
            }
        }
        put_varint(out, self.sent_at);
        put_varint(out, self.tracking as u64);
        put_varint(out, self.version());
        put_varint(out, self.timestamp);
        self.readers.encode_stored(self.sent_at, out);
        put_varint(out, u64::from(self.visible_reads));
        put_varint(out, u64::from(self.receipt_counts.0));
        put_varint(out, u64::from(self.receipt_counts.1));
        // Format 3: a message whose readers are stored in pages (see
        // `readers`) says how many; one without ends here, as in format 2.
        match self.readers.sealed_pages() {
            0 => {}
            pages => put_varint(out, u64::from(pages)),
        }
    }

    /// Pages of its readers stored apart from it (see
    /// [`crate::PAGE_READERS`]; 0 for most messages).
    #[inline]
    pub fn reader_pages(&self) -> u32 {
        self.readers.sealed_pages()
    }

    /// The page of readers that this staging sealed, if any: its readers
    /// appended to `out` as the page's value, and its number. Written in
    /// the same batch as the message (see `readers`).
    pub fn encode_sealed_page(&self, out: &mut Vec<u8>) -> Option<u32> {
        self.readers.encode_sealed_page(self.sent_at, out)
    }

    /// Why a restored message is not whole, if it is not: a page of its
    /// readers missing, or its revealed reads miscounted.
    fn check_restored(&self) -> Result<(), String> {
        self.readers.check_restored()?;
        // Every revealed reader is counted once, and hidden ones never are
        // (a read stays hidden for good): a count that disagrees is a
        // corrupt value, which the fold would move past u32 or below zero.
        let revealed = self.readers.len() - self.readers.hidden_count();
        if self.visible_reads as usize != revealed {
            return Err(format!("{} revealed reads counted for a reader list with {revealed}", self.visible_reads));
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for MessageState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Its counts are checked once its readers are whole
        // ([`PartitionState::finish_restore`]): some may be in pages.
        let m = StoredMessage::deserialize(deserializer)?;
        let mut state = MessageState::new(m.sender, m.target, m.sent_at, m.tracking);
        state.timestamp = m.timestamp;
        state.readers = m.readers;
        state.visible_reads = m.visible_reads;
        state.receipt_counts = m.receipt_counts;
        Ok(state)
    }
}

/// What a group message's counts were counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CountedUnder {
    /// The group's membership epoch; [`NOT_A_MEMBER`] when not counted.
    epoch: u32,
    /// The app's [`crate::AppSettings::switches`].
    switches: u32,
}

impl Default for CountedUnder {
    fn default() -> Self {
        CountedUnder { epoch: NOT_A_MEMBER, switches: 0 }
    }
}

impl CountedUnder {
    /// Counted under this epoch and these switches (`None`, saturated:
    /// never counts as cached).
    pub(crate) fn new(epoch: u32, switches: Option<u32>) -> Self {
        switches.map_or_else(Self::default, |switches| CountedUnder { epoch, switches })
    }

    /// The epoch and the switches counted under, if counted.
    #[inline]
    pub(crate) fn counted(&self) -> Option<(u32, u32)> {
        (self.epoch != NOT_A_MEMBER).then_some((self.epoch, self.switches))
    }
}

impl MessageState {
    pub(crate) fn new(sender: Id, target: MessageTarget, sent_at: u64, tracking: Tracking) -> Self {
        MessageState {
            sender,
            target,
            sent_at,
            tracking,
            timestamp: sent_at,
            readers: Readers::default(),
            visible_reads: 0,
            receipt_counts: (0, 0),
            counted_under: CountedUnder::default(),
            dirty: false,
            delta_pending: false,
        }
    }

    /// Grows by one with every revealed change: the readers revealed so far
    /// (every revealed change is one). 0 once revoked, when its reads are
    /// gone and it has no receipts.
    pub fn version(&self) -> u64 {
        u64::from(self.visible_reads)
    }

    /// The read mark of `ordinal`, if it read.
    pub fn read_mark(&self, ordinal: u32) -> Option<ReadMark> {
        self.readers.get(ordinal, self.sent_at)
    }

    /// Every reader, hidden ones included, in ordinal order.
    pub fn reads(&self) -> impl Iterator<Item = ReadMark> + '_ {
        self.readers.iter(self.sent_at)
    }
}

/// A read waiting for its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRead {
    /// Who read.
    pub reader: Id,
    /// The read's conversation, relative to the reader.
    pub conversation: receiptd_wire::Conversation,
    /// When, Unix ms.
    pub read_at: u64,
    /// A private read.
    pub private: bool,
    /// The record timestamp it arrived with: the hold window counts from here.
    pub held_at: u64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct HeldList {
    pub(crate) reads: Vec<HeldRead>,
    pub(crate) dirty: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    pub(crate) read_at: u64,
    pub(crate) dirty: bool,
    pub(crate) delta_pending: bool,
}

/// The part of one app's state that queries read while the fold writes:
/// groups, messages and read marks, each in a [`ShardedMap`] whose shards
/// are locked one event at a time.
#[derive(Debug, Default)]
pub(crate) struct AppView {
    pub(crate) groups: ShardedMap<Id, Group>,
    /// Boxed: the shards of a partition grow together, and a growth step
    /// moves (and faults in fresh memory for) 24 bytes per message, not the
    /// whole state.
    pub(crate) messages: ShardedMap<Id, Box<MessageState>>,
    /// (reader, peer) -> the reader's conversation-read mark.
    pub(crate) marks: ShardedMap<(Id, Id), Mark>,
}

/// One shared id per user of an app whose id is too long to sit inline, so
/// that the senders and C2C peers of its messages point at one allocation
/// each instead of holding a copy per message. Only sharing depends on it,
/// never a result: a pruned user seen again gets a new allocation, and
/// messages keep the ones they hold.
#[derive(Debug)]
pub(crate) struct UserIds {
    /// Each id with its hash, in [`USER_ID_TABLES`] tables picked by the
    /// hash: a table that grows moves its entries without reading their
    /// strings again, and only a 64th of them. One table of 60,000 users
    /// stalled the fold for 2 to 5 ms each time it doubled (fresh pages and
    /// moved entries).
    tables: Box<[hashbrown::HashTable<(u64, Id)>]>,
    /// Entries after the last prune; the next waits until there are twice
    /// as many, so pruning costs O(1) per interned id, amortized.
    after_prune: usize,
}

/// Tables the interned user ids are split over.
const USER_ID_TABLES: usize = 64;

impl Default for UserIds {
    fn default() -> Self {
        UserIds { tables: (0..USER_ID_TABLES).map(|_| Default::default()).collect(), after_prune: 0 }
    }
}

impl UserIds {
    /// The id of `user`: inline if short, else one shared id per user, made
    /// on first sight. Only long ids are kept in the tables: a short one
    /// takes no memory beyond its holder's, and making it costs less than
    /// finding it.
    pub(crate) fn intern(&mut self, user: &str) -> Id {
        if user.len() <= crate::INLINE_BYTES {
            return Id::from(user);
        }
        let hash = hash_of(user);
        // Bits the tables' own buckets and control bytes do not use.
        let table = &mut self.tables[(hash >> 32) as usize % USER_ID_TABLES];
        match table.entry(hash, |(_, id)| *id == *user, |(hash, _)| *hash) {
            hashbrown::hash_table::Entry::Occupied(e) => e.get().1.clone(),
            hashbrown::hash_table::Entry::Vacant(e) => e.insert((hash, Id::from(user))).get().1.clone(),
        }
    }

    /// Interned ids, in all tables.
    fn len(&self) -> usize {
        self.tables.iter().map(|t| t.len()).sum()
    }

    /// Drops ids nothing else holds any more, once the set has doubled.
    pub(crate) fn prune(&mut self) {
        if self.len() > (2 * self.after_prune).max(1024) {
            for table in self.tables.iter_mut() {
                table.retain(|(_, id)| id.held_elsewhere());
            }
            self.after_prune = self.len();
        }
    }
}

/// Everything of one app in one partition: the shared view, and what only
/// the fold touches.
#[derive(Debug)]
pub(crate) struct AppState {
    /// The app's id, shared by every key naming it.
    pub(crate) id: Id,
    pub(crate) view: Arc<AppView>,
    pub(crate) held: FxHashMap<Id, HeldList>,
    /// Messages by send time, oldest first: retention pops from the top
    /// instead of scanning. Entries of messages gone already are skipped.
    pub(crate) by_sent_at: SendTimeIndex,
    /// Senders and C2C peers too long to sit inline, shared by the messages
    /// that name them.
    pub(crate) users: UserIds,
    /// Messages restored and not yet in `view.messages`, with their ids'
    /// hashes: they go in together (see [`PartitionState::insert_restored_messages`]).
    restored: Vec<(u64, Id, Box<MessageState>)>,
}

/// Messages by send time, in one-second buckets. A push moves at most one
/// small vector (a binary heap of a million ids is one buffer, and each time
/// it doubles the fold stalls while it is copied); expiry pops whole buckets.
/// An entry is the hash of the message's id in the messages map (8 bytes;
/// the id itself took 24): the map finds the message by it, and the message
/// knows its id and when it was sent.
#[derive(Debug, Default, Clone)]
pub(crate) struct SendTimeIndex {
    buckets: std::collections::BTreeMap<u64, Vec<u64>>,
    /// The bucket pushed to last, kept out of `buckets`: messages arrive in
    /// about send-time order, so most pushes land here without a search of
    /// the tree (which cost more than the rest of a send's bookkeeping).
    open: Option<(u64, Vec<u64>)>,
}

impl SendTimeIndex {
    /// Adds a message sent at `sent_at`, by its id's hash.
    pub(crate) fn push(&mut self, sent_at: u64, id_hash: u64) {
        let second = sent_at / 1000;
        match &mut self.open {
            Some((open, list)) if *open == second => list.push(id_hash),
            _ => {
                self.close();
                let mut list = self.buckets.remove(&second).unwrap_or_default();
                list.push(id_hash);
                self.open = Some((second, list));
            }
        }
    }

    /// Puts the open bucket back in the tree (whose key it never is while open).
    fn close(&mut self) {
        if let Some((second, list)) = self.open.take() {
            self.buckets.insert(second, list);
        }
    }

    /// Expires every message sent before `cutoff`, oldest second first
    /// (within a second, in the order of its first entry there).
    /// `expire(id_hash, second)` removes the messages of that hash sent in
    /// that second before `cutoff`, and says whether one of them, sent at or
    /// after `cutoff`, is left; the entry is dropped if not. So an entry
    /// whose message is gone, or was sent again in another second (an id
    /// used again, which has an entry of its own there), is dropped.
    pub(crate) fn pop_before(&mut self, cutoff: u64, mut expire: impl FnMut(u64, u64) -> bool) {
        self.close();
        while let Some(mut first) = self.buckets.first_entry() {
            let second = *first.key();
            if second.saturating_mul(1000) >= cutoff {
                break;
            }
            // Entries kept: messages of this second not sent before `cutoff`
            // (none unless the bucket straddles it).
            first.get_mut().retain(|&id_hash| expire(id_hash, second));
            if first.get().is_empty() {
                first.remove();
            } else {
                break;
            }
        }
    }
}

/// Stored entities that no fold could have written, found while restoring:
/// the partition is refused rather than served from a state that breaks
/// what the fold and the queries rely on (a count below zero, a reader
/// with no name). The store reports it as corrupt, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem}")]
pub struct RestoreError {
    /// The entity refused.
    pub key: DirtyKey,
    /// What is wrong with it.
    pub problem: String,
}

impl RestoreError {
    fn new(key: DirtyKey, problem: impl Into<String>) -> Self {
        RestoreError { key, problem: problem.into() }
    }
}

/// The first restored entity of `app` that breaks what the fold keeps
/// (see [`PartitionState::finish_restore`]). Each group message that fits
/// has its reads counted on its group's ordinals on the way, in the same
/// pass over the messages.
fn check_restored(app: &AppState) -> Result<(), RestoreError> {
    let mut found = Ok(());
    app.view.groups.for_each(|group_id, g| {
        if g.meta.epoch > LAST_EPOCH && found.is_ok() {
            let key = DirtyKey::Group { app: app.id.clone(), group_id: group_id.clone() };
            found =
                Err(RestoreError::new(key, format!("a group at epoch {}, past the last, {LAST_EPOCH}", g.meta.epoch)));
        }
        let Some(ordinal) = g.slots.iter().position(|s| s.since != NOT_A_MEMBER && s.since > g.meta.epoch) else {
            return;
        };
        if found.is_ok() {
            let (since, epoch) = (g.slots[ordinal].since, g.meta.epoch);
            let key = DirtyKey::Member { app: app.id.clone(), group_id: group_id.clone(), ordinal: ordinal as u32 };
            found = Err(RestoreError::new(key, format!("a member since epoch {since} of a group at epoch {epoch}")));
        }
    });
    app.view.messages.for_each(|msg_id, m| {
        if found.is_ok() {
            found = m.check_restored().and_then(|()| fits_its_group(&app.view.groups, m)).map_err(|problem| {
                RestoreError::new(DirtyKey::Message { app: app.id.clone(), msg_id: msg_id.clone() }, problem)
            });
        }
    });
    found
}

/// Why a restored message does not fit its group, if it does not (see
/// [`PartitionState::finish_restore`]). A group message that fits has its
/// reads counted on the group's ordinals ([`Group::count_read`]).
fn fits_its_group(groups: &ShardedMap<Id, Group>, m: &MessageState) -> Result<(), String> {
    if m.tracking != Tracking::Tracked {
        // Never read, or its reads dropped when it was revoked; never
        // counted or listed, so its group does not matter.
        return match m.readers.len() {
            0 => Ok(()),
            n => Err(format!("an untracked message ({:?}) with {n} readers", m.tracking)),
        };
    }
    let highest_reader = m.readers.highest_ordinal();
    let (group_id, audience_epoch) = match &m.target {
        MessageTarget::C2c { .. } => {
            return match highest_reader {
                Some(o) if o > 0 => Err(format!("a C2C message read by ordinal {o}; only its peer, 0, reads it")),
                _ => Ok(()),
            };
        }
        MessageTarget::Group { group_id, audience_epoch } => (group_id, *audience_epoch),
    };
    let Some(group) = groups.get(&**group_id) else {
        return Err(format!("a tracked message of group {group_id:?}, which is not stored"));
    };
    let (epoch, handed_out) = (group.meta.epoch, group.users.len());
    if audience_epoch > epoch {
        return Err(format!("sent at epoch {audience_epoch} of group {group_id:?}, which is at epoch {epoch}"));
    }
    if let Some(o) = highest_reader.filter(|&o| o as usize >= handed_out) {
        return Err(format!("read by ordinal {o} of group {group_id:?}, which has {handed_out} member slots"));
    }
    match group.ordinal(&m.sender) {
        // The fold ignores a sender's read of their own message; counted,
        // the sender would be taken off the unread twice.
        Some(o) if m.read_mark(o).is_some() => Err(format!("read by its sender, ordinal {o}")),
        _ => {
            m.reads().for_each(|r| group.count_read(r.ordinal));
            Ok(())
        }
    }
}

/// The key of an entity that changed since the last [`PartitionState::flush_changes`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DirtyKey {
    /// A group's header.
    Group {
        /// App.
        app: Id,
        /// Group.
        group_id: Id,
    },
    /// One member slot of a group.
    Member {
        /// App.
        app: Id,
        /// Group.
        group_id: Id,
        /// The member's ordinal.
        ordinal: u32,
    },
    /// A message.
    Message {
        /// App.
        app: Id,
        /// Message.
        msg_id: Id,
    },
    /// Every page of a message's readers stored apart (see
    /// [`MessageState::encode_sealed_page`]): listed only to be deleted,
    /// when a message that had some expires or is revoked.
    ReaderPages {
        /// App.
        app: Id,
        /// Message.
        msg_id: Id,
    },
    /// A C2C conversation read mark.
    Mark {
        /// App.
        app: Id,
        /// Who read.
        reader: Id,
        /// The conversation's other party.
        peer: Id,
    },
    /// The reads held for a message not yet seen.
    Held {
        /// App.
        app: Id,
        /// Message.
        msg_id: Id,
    },
}

/// The current value of a changed entity, as
/// [`PartitionState::flush_changes`] hands it to storage; `Absent` means
/// delete it.
#[derive(Debug, Clone, Copy)]
pub enum Entity<'a> {
    /// A group header.
    Group(&'a GroupMeta),
    /// A group header that replaces whatever is stored under its id, member
    /// slots included: the group was created since, perhaps after a
    /// dismissal in the same flush window.
    FreshGroup(&'a GroupMeta),
    /// A member slot: user id and `since` epoch.
    Member(&'a str, u32),
    /// A message.
    Message(&'a MessageState),
    /// A conversation read mark.
    Mark(u64),
    /// Held reads.
    Held(&'a [HeldRead]),
    /// Gone: delete it from storage.
    Absent,
}

/// A group message's revealed readers with `read_at`, and its unread members,
/// each in ordinal order.
pub type GroupLists = (Vec<(String, u64)>, Vec<String>);

/// What the query API reads of one partition, concurrently with the fold:
/// each app's groups, messages and read marks, and the fold's clock. Cheap
/// to share (`Arc`); an answer locks only the entities it reads, one message
/// (and its group) at a time, so it never waits for more than one event's
/// fold.
#[derive(Debug, Default)]
pub struct PartitionView {
    apps: RwLock<FxHashMap<String, Arc<AppView>>>,
    watermark: AtomicU64,
}

impl PartitionView {
    /// One app's view, if the app has state here.
    pub(crate) fn app(&self, app: &str) -> Option<Arc<AppView>> {
        self.apps.read().get(app).cloned()
    }

    /// The highest record timestamp folded so far.
    pub fn watermark(&self) -> u64 {
        self.watermark.load(Relaxed)
    }

    /// Whether a message (tracked or not) is known here.
    pub fn contains_message(&self, app: &str, msg_id: &str) -> bool {
        self.app(app).is_some_and(|a| a.messages.contains_key(msg_id))
    }

    /// A reader's conversation-read mark towards `peer`.
    pub fn mark(&self, app: &str, reader: &str, peer: &str) -> Option<u64> {
        self.app(app)?.mark(reader, peer)
    }
}

impl AppView {
    pub(crate) fn mark(&self, reader: &str, peer: &str) -> Option<u64> {
        self.marks.get(&(Id::from(reader), Id::from(peer))).map(|m| m.read_at)
    }

    pub(crate) fn counts(&self, settings: &crate::SettingsTable, app: &str, msg_id: &str) -> Option<(u32, u32)> {
        let m = self.messages.get(msg_id)?;
        Some(crate::fold::counts(settings.app(app), &self.groups, &m))
    }

    /// See [`PartitionState::group_lists`].
    pub(crate) fn group_lists(&self, settings: &crate::SettingsTable, app: &str, msg_id: &str) -> Option<GroupLists> {
        let m = self.messages.get(msg_id)?;
        let MessageTarget::Group { group_id, audience_epoch } = &m.target else { return None };
        let group = self.groups.get(group_id)?;
        if m.tracking != Tracking::Tracked {
            return None;
        }
        let settings = settings.app(app);
        let revealed = |r: &ReadMark| !r.hidden && settings.receipts_on(group.users.name(r.ordinal));
        let read =
            m.reads().filter(|r| revealed(r)).map(|r| (group.users.name(r.ordinal).to_owned(), r.read_at)).collect();
        let sender = group.ordinal(&m.sender);
        let unread = (0..group.users.len() as u32)
            .filter(|&o| group.member_since(o, *audience_epoch) && Some(o) != sender)
            .filter(|&o| m.read_mark(o).is_none_or(|r| !revealed(&r)))
            .map(|o| group.users.name(o).to_owned())
            .collect();
        Some((read, unread))
    }
}

/// Everything one partition has folded. The fold owns it (`&mut`); queries
/// read its [`PartitionView`] at the same time.
#[derive(Debug, Default)]
pub struct PartitionState {
    /// Every app with state here, the one found last checked first.
    pub(crate) apps: Apps,
    pub(crate) view: Arc<PartitionView>,
    /// Highest record timestamp folded; the fold's only clock.
    pub(crate) watermark: u64,
    pub(crate) held_count: usize,
    /// Held reads by the record time they were held at: (held_at, app,
    /// msg_id). Expiry pops from the front instead of scanning every held
    /// read, which matters when a flood of reads for messages that never
    /// come keeps the hold buffer at its cap.
    pub(crate) held_by_time: std::collections::BTreeSet<(u64, Id, Id)>,
    /// Every entity changed since the last flush, each listed once (its
    /// `dirty` flag says it is listed). Messages and marks with a receipt
    /// to take are among them: a revealed change marks its entity changed.
    pub(crate) dirty: Vec<DirtyKey>,
    /// How many of `dirty`'s first keys the flush in progress has staged;
    /// the rest wait for its next slice. Kept in the list, not drained
    /// from it, until the last slice: draining a slice moved every key
    /// after it, and a list taken whole started the next flush small.
    staged: usize,
    /// Pages of readers sealed by stagings since [`Self::take_reader_pages_sealed`].
    reader_pages_sealed: u64,
    /// Moves on at every change that may move a group or change who holds
    /// which ordinal: a [`crate::ReadAhead`] found before it is not used.
    pub(crate) groups_epoch: u64,
}

impl PartitionState {
    /// An empty partition.
    pub fn new() -> Self {
        Self::default()
    }

    /// What queries read, concurrently with the fold.
    pub fn view(&self) -> &Arc<PartitionView> {
        &self.view
    }

    /// The highest record timestamp folded so far.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Pages of messages' readers sealed by stagings since the last call
    /// (see [`crate::PAGE_READERS`]), for the worker's metrics.
    pub fn take_reader_pages_sealed(&mut self) -> u64 {
        std::mem::take(&mut self.reader_pages_sealed)
    }

    pub(crate) fn advance_watermark(&mut self, record_time: u64) {
        if record_time > self.watermark {
            self.watermark = record_time;
            self.view.watermark.store(record_time, Relaxed);
        }
    }

    /// Messages known (tracked or not).
    pub fn message_count(&self) -> usize {
        self.apps.iter().map(|a| a.view.messages.len()).sum()
    }

    /// Whether any entity changed since it was last staged.
    pub fn has_dirty(&self) -> bool {
        self.dirty.len() > self.staged
    }

    /// Entities changed and not staged yet.
    pub fn changed_count(&self) -> usize {
        self.dirty.len() - self.staged
    }

    /// Reads waiting for their message.
    pub fn held_count(&self) -> usize {
        self.held_count
    }

    /// A message's state, read-locked until the guard drops.
    pub fn message(&self, app: &str, msg_id: &str) -> Option<MappedRwLockReadGuard<'_, MessageState>> {
        let m = self.apps.get(app)?.view.messages.get(msg_id)?;
        Some(MappedRwLockReadGuard::map(m, |m| &**m))
    }

    /// Read and unread counts of a message: `(read, unread)`. For C2C,
    /// `unread` is 1 until the peer's read is revealed.
    pub fn counts(&self, settings: &crate::SettingsTable, app: &str, msg_id: &str) -> Option<(u32, u32)> {
        self.apps.get(app)?.view.counts(settings, app, msg_id)
    }

    /// Users who read a group message and are revealed, with `read_at`, in
    /// ordinal order; and the members still counted unread, in ordinal order.
    /// A reader whose receipts are off now is listed unread.
    pub fn group_lists(&self, settings: &crate::SettingsTable, app: &str, msg_id: &str) -> Option<GroupLists> {
        self.apps.get(app)?.view.group_lists(settings, app, msg_id)
    }

    /// A reader's conversation-read mark towards `peer`.
    pub fn mark(&self, app: &str, reader: &str, peer: &str) -> Option<u64> {
        self.apps.get(app)?.view.mark(reader, peer)
    }

    /// Every conversation read mark of an app: (reader, peer, read_at), sorted.
    pub fn marks(&self, app: &str) -> Vec<(String, String, u64)> {
        let mut v = Vec::new();
        if let Some(a) = self.apps.get(app) {
            a.view.marks.for_each(|(r, p), m| v.push((str::to_owned(r), str::to_owned(p), m.read_at)));
        }
        v.sort_unstable();
        v
    }

    /// Every app with state here, sorted (for dumps and tests).
    pub fn app_ids(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.apps.iter().map(|a| a.id.as_str()).collect();
        v.sort_unstable();
        v
    }

    /// Every message id of an app, sorted (for dumps and tests).
    pub fn message_ids(&self, app: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .apps
            .get(app)
            .map(|a| a.view.messages.keys())
            .unwrap_or_default()
            .iter()
            .map(|k| str::to_owned(k))
            .collect();
        v.sort_unstable();
        v
    }

    // ---- persistence interface ----

    /// The flush's one pass over every entity changed since the last one,
    /// one lookup each: its changed flags are cleared, its receipt (if it
    /// has a revealed change not taken yet) goes into `deltas`, and its key
    /// and current value go to `stage` (storage writes it). Returns how
    /// many keys were staged.
    pub fn flush_changes(
        &mut self,
        settings: &crate::SettingsTable,
        deltas: &mut crate::DeltaBuffer,
        stage: impl FnMut(&DirtyKey, Entity<'_>),
    ) -> usize {
        self.stage_changes(usize::MAX, settings, deltas, stage)
    }

    /// A slice of a flush: as [`Self::flush_changes`], for at most `max` of
    /// the changed entities, oldest change first. A flush of many entities
    /// is staged in slices between batches of the fold, so that no single
    /// step holds the poll loop for long. What changes again after its
    /// slice is listed again, staged again by a later slice, and its new
    /// receipt replaces the one taken into `deltas` before (which keeps one
    /// receipt per message per flush). Returns how many keys were staged.
    pub fn stage_changes(
        &mut self,
        max: usize,
        settings: &crate::SettingsTable,
        deltas: &mut crate::DeltaBuffer,
        mut stage: impl FnMut(&DirtyKey, Entity<'_>),
    ) -> usize {
        self.groups_epoch += 1;
        let (from, keys) = (self.staged, std::mem::take(&mut self.dirty));
        let to = from + max.min(keys.len() - from);
        deltas.begin_pass();
        self.visit_in_runs(&keys[from..to], |state, key| {
            state.visit_changed(key, true, settings, deltas, |entity| stage(key, entity))
        });
        self.restore_dirty(keys);
        if to == self.dirty.len() {
            self.dirty.clear();
            self.dirty.shrink_to(RETAINED_KEYS);
            self.staged = 0;
        } else {
            self.staged = to;
        }
        to - from
    }

    /// Puts the list of changed keys taken for a visit back, with any key
    /// listed meanwhile after them (a visit lists none).
    fn restore_dirty(&mut self, keys: Vec<DirtyKey>) {
        let listed_meanwhile = std::mem::replace(&mut self.dirty, keys);
        self.dirty.extend(listed_meanwhile);
    }

    /// Takes the receipts of every message and read mark whose revealed
    /// state changed since they were last taken, without flushing: the
    /// entities stay listed as changed for the next
    /// [`Self::flush_changes`], which then takes no receipt twice.
    pub fn take_receipts(&mut self, settings: &crate::SettingsTable, deltas: &mut crate::DeltaBuffer) {
        let keys = std::mem::take(&mut self.dirty);
        deltas.begin_pass();
        self.visit_in_runs(&keys[self.staged..], |state, key| {
            if matches!(key, DirtyKey::Message { .. } | DirtyKey::Mark { .. }) {
                state.visit_changed(key, false, settings, deltas, |_| {});
            }
        });
        self.restore_dirty(keys);
    }

    /// Hands each of `keys` to `visit` in runs of [`crate::PREFETCH_AHEAD`],
    /// each run's lines asked for in two steps ahead of its visits (see
    /// `prefetch`): a flush's changed messages are cold again by then.
    /// While a run is visited, the next run's messages have been looked up
    /// and their state asked for, and the run after that has had its
    /// probes' lines asked for. Looked up just before their visits, with
    /// no lines asked for, the lookups waited for their control bytes
    /// (3.5% of the poll loop in a drain, in the forty-second sitting's
    /// profile).
    fn visit_in_runs(&mut self, keys: &[DirtyKey], mut visit: impl FnMut(&mut Self, &DirtyKey)) {
        // Run `i`, empty past the last (and before the first).
        let run = |i: Option<usize>| i.and_then(|i| keys.chunks(crate::PREFETCH_AHEAD).nth(i)).unwrap_or_default();
        for i in 0..keys.len().div_ceil(crate::PREFETCH_AHEAD) + 2 {
            run(Some(i)).iter().for_each(|key| self.probe_changed(key));
            run(i.checked_sub(1)).iter().for_each(|key| self.prefetch_changed(key));
            run(i.checked_sub(2)).iter().for_each(|key| visit(self, key));
        }
    }

    /// Looks `key`'s entity up once: clears its changed flags if `clear`,
    /// takes its receipt into `deltas` if it has one to take, and hands its
    /// current value to `visit`. A key may outlive its entity (expired,
    /// dismissed) or name a newer one of the same id: the flags decide what
    /// is taken, and the value is always the current one.
    fn visit_changed(
        &mut self,
        key: &DirtyKey,
        clear: bool,
        settings: &crate::SettingsTable,
        deltas: &mut crate::DeltaBuffer,
        visit: impl FnOnce(Entity<'_>),
    ) {
        let app = match key {
            DirtyKey::Group { app, .. }
            | DirtyKey::Member { app, .. }
            | DirtyKey::Message { app, .. }
            | DirtyKey::ReaderPages { app, .. }
            | DirtyKey::Mark { app, .. }
            | DirtyKey::Held { app, .. } => app,
        };
        // Hands over the first value it is given: the entity's, or Absent
        // when there is none.
        let mut visit = Some(visit);
        let mut hand = |entity: Entity<'_>| {
            if let Some(visit) = visit.take() {
                visit(entity)
            }
        };
        let Some(state) = self.apps.get_mut(&**app) else { return hand(Entity::Absent) };
        // Flags and receipts change under the shard's write lock; the value
        // is read (and encoded) with the lock released, so queries of the
        // shard wait only for the change.
        // SAFETY (each `update_then_peek`): `&mut self` holds off every
        // change to the maps but this thread's; queries only read.
        match key {
            DirtyKey::Group { group_id, .. } | DirtyKey::Member { group_id, .. } => {
                // Only this key's flag: the group's other changed keys may
                // still wait for a later slice of the flush.
                let fresh = std::cell::Cell::new(false);
                let clear_group = |g: &mut Group| match (clear, key) {
                    (false, _) => {}
                    (true, DirtyKey::Member { ordinal, .. }) => {
                        g.dirty_members.remove(ordinal);
                    }
                    (true, _) => {
                        g.dirty = false;
                        fresh.set(std::mem::take(&mut g.fresh));
                    }
                };
                let read = |g: &Group| match *key {
                    DirtyKey::Member { ordinal, .. } => {
                        if let Some(since) = g.slots.get(ordinal as usize).map(|s| s.since) {
                            hand(Entity::Member(g.users.name(ordinal), since))
                        }
                    }
                    _ if fresh.get() => hand(Entity::FreshGroup(&g.meta)),
                    _ => hand(Entity::Group(&g.meta)),
                };
                unsafe { state.view.groups.update_then_peek(&**group_id, clear_group, read) };
            }
            DirtyKey::Message { msg_id, .. } => {
                let sealed = std::cell::Cell::new(false);
                let take = |m: &mut Box<MessageState>| {
                    if clear {
                        m.dirty = false;
                        sealed.set(m.readers.seal_full_page());
                    }
                    crate::fold::take_message_receipt(settings, app, msg_id, m, deltas);
                };
                unsafe { state.view.messages.update_then_peek(&**msg_id, take, |m| hand(Entity::Message(&**m))) };
                self.reader_pages_sealed += u64::from(sealed.get());
            }
            // Only ever deleted.
            DirtyKey::ReaderPages { .. } => {}
            DirtyKey::Mark { reader, peer, .. } => {
                let ids = (reader.clone(), peer.clone());
                if let Some(mut mark) = state.view.marks.get_mut(&ids) {
                    if clear {
                        mark.dirty = false;
                    }
                    crate::fold::take_mark_receipt(settings, app, &ids, &mut mark, deltas);
                    hand(Entity::Mark(mark.read_at));
                }
            }
            DirtyKey::Held { msg_id, .. } => {
                if let Some(held) = state.held.get_mut(&**msg_id) {
                    if clear {
                        held.dirty = false;
                    }
                    hand(Entity::Held(&held.reads));
                }
            }
        }
        hand(Entity::Absent)
    }

    /// Restores the watermark (from the checkpoint record).
    pub fn restore_watermark(&mut self, watermark: u64) {
        self.watermark = watermark;
        self.view.watermark.store(watermark, Relaxed);
    }

    /// Restores a group header. Its member slots follow through
    /// [`Self::restore_member`], then [`Self::finish_restore`] rebuilds the
    /// derived indexes.
    pub fn restore_group(&mut self, app: &str, group_id: &str, meta: GroupMeta) {
        self.groups_epoch += 1;
        let mut group = self.app_mut(app).view.groups.get_or_insert_with(Id::from(group_id), || Group::new(None));
        group.departures = crate::departures::Departures::complete_after(meta.epoch);
        group.meta = meta;
    }

    /// Restores one member slot. Slots come after their group's header and
    /// in ordinal order, every ordinal handed out once, as the store's keys
    /// sort and as the fold hands ordinals out; anything else is refused
    /// (a slot far past the last could not even be held in memory). Its
    /// epoch is checked against the group's by [`Self::finish_restore`].
    pub fn restore_member(
        &mut self,
        app: &str,
        group_id: &str,
        ordinal: u32,
        user: &str,
        since: u32,
    ) -> Result<(), RestoreError> {
        self.groups_epoch += 1;
        let view = &self.app_mut(app).view;
        let key = || DirtyKey::Member { app: Id::from(app), group_id: Id::from(group_id), ordinal };
        let Some(mut g) = view.groups.get_mut(group_id) else {
            return Err(RestoreError::new(key(), "a member slot of a group with no header"));
        };
        let next = g.users.len();
        if ordinal as usize != next {
            return Err(RestoreError::new(key(), format!("member slot {ordinal} where slot {next} comes next")));
        }
        if let Some(other) = g.users.ordinal(user) {
            return Err(RestoreError::new(key(), format!("{user:?} holds slot {other} already")));
        }
        g.users.push(user);
        g.slots.push(Slot::new(since));
        Ok(())
    }

    /// Restores a message, with `pages` pages of its readers stored apart
    /// to restore next ([`Self::restore_reader_page`]). It joins its app's
    /// map with the other messages, at the first reader page or
    /// [`Self::finish_restore`].
    pub fn restore_message(&mut self, app: &str, msg_id: &str, mut message: MessageState, pages: u32) {
        message.readers.expect_pages(pages);
        let app = self.app_mut(app);
        message.sender = app.users.intern(&message.sender);
        if let MessageTarget::C2c { peer } = &mut message.target {
            *peer = app.users.intern(peer);
        }
        let hash = hash_of(msg_id);
        app.by_sent_at.push(message.sent_at, hash);
        app.restored.push((hash, Id::from(msg_id), Box::new(message)));
    }

    /// Puts the messages restored so far into their apps' maps, each
    /// shard's table grown once for its share of them (see
    /// [`ShardedMap::reserve_for_hashes`]). Reader pages, which come after
    /// every message, and the checks at the end look messages up.
    fn insert_restored_messages(&mut self) {
        for app in self.apps.iter_mut().filter(|app| !app.restored.is_empty()) {
            let restored = std::mem::take(&mut app.restored);
            app.view.messages.reserve_for_hashes(restored.iter().map(|(hash, ..)| *hash));
            for (hash, msg_id, message) in restored {
                app.view.messages.insert_hashed(hash, msg_id, message);
            }
        }
    }

    /// Restores page `page` of a message's readers (see
    /// [`MessageState::encode_sealed_page`]): the message first, then its
    /// pages in order.
    pub fn restore_reader_page(
        &mut self,
        app: &str,
        msg_id: &str,
        page: u32,
        bytes: &[u8],
    ) -> Result<(), RestoreError> {
        let key = || DirtyKey::Message { app: Id::from(app), msg_id: Id::from(msg_id) };
        self.insert_restored_messages();
        let restored = self.apps.get_mut(app).and_then(|a| a.view.messages.get_mut(msg_id));
        let Some(mut m) = restored else {
            return Err(RestoreError::new(key(), format!("reader page {page} of a message not stored")));
        };
        let sent_at = m.sent_at;
        m.readers.restore_page(page, bytes, sent_at).map_err(|problem| RestoreError::new(key(), problem))
    }

    /// Restores a conversation read mark.
    pub fn restore_mark(&mut self, app: &str, reader: &str, peer: &str, read_at: u64) {
        self.app_mut(app)
            .view
            .marks
            .insert((Id::from(reader), Id::from(peer)), Mark { read_at, dirty: false, delta_pending: false });
    }

    /// Restores the reads held for a message.
    pub fn restore_held(&mut self, app: &str, msg_id: &str, reads: Vec<HeldRead>) {
        self.held_count += reads.len();
        let (app, msg_id) = (Id::from(app), Id::from(msg_id));
        for r in &reads {
            self.held_by_time.insert((r.held_at, app.clone(), msg_id.clone()));
        }
        self.app_mut(&app).held.insert(msg_id, HeldList { reads, dirty: false });
    }

    /// Rebuilds what is derived from restored entities (member counts by
    /// epoch, each ordinal's reads by live messages, the ordinals free to
    /// change hands), after checking what the fold keeps and the queries
    /// and the fold rely on: every member joined at an epoch its group has
    /// reached, which is no later than the last;
    /// only tracked messages read; a tracked group message's group stored,
    /// the message sent at an epoch the group has reached and read only by
    /// ordinals it handed out, never by its sender; a C2C message read only
    /// by its peer.
    pub fn finish_restore(&mut self) -> Result<(), RestoreError> {
        self.insert_restored_messages();
        self.groups_epoch += 1;
        for app in self.apps.iter() {
            check_restored(app)?;
            app.view.groups.for_each_mut(|_, g| {
                g.by_epoch = MembersBySince::from_since(g.slots.iter().map(|s| s.since).filter(|&s| s != NOT_A_MEMBER));
                g.member_count = g.by_epoch.at_or_before(LAST_EPOCH);
                for (o, slot) in g.slots.iter_mut().enumerate() {
                    if slot.since == NOT_A_MEMBER && *slot.reads.get_mut() == 0 {
                        g.reusable.insert(o as u32);
                    }
                }
            });
        }
        Ok(())
    }

    pub(crate) fn app_mut(&mut self, app: &str) -> &mut AppState {
        app_entry(&mut self.apps, &self.view, app)
    }
}

impl crate::by_id::Named for AppState {
    fn name(&self) -> &str {
        self.id.as_str()
    }
}

/// A partition's apps, the one found last checked first.
pub(crate) type Apps = crate::by_id::ById<AppState>;

/// An app's state, created (and shown to queries) on first use. Takes the
/// fields apart so that the fold can borrow the rest of the partition too.
#[inline]
pub(crate) fn app_entry<'a>(apps: &'a mut Apps, view: &PartitionView, app: &str) -> &'a mut AppState {
    apps.get_or_insert_with(app, || {
        let state = AppState {
            id: Id::from(app),
            view: Default::default(),
            held: Default::default(),
            by_sent_at: Default::default(),
            users: Default::default(),
            restored: Vec::new(),
        };
        view.apps.write().insert(app.to_owned(), state.view.clone());
        state
    })
}

#[cfg(test)]
mod apps_tests {
    use super::*;

    #[test]
    fn an_app_is_made_and_shown_to_queries_once() {
        let (mut apps, view) = (Apps::default(), PartitionView::default());
        for name in ["a", "b", "a", "ab", "b"] {
            assert_eq!(app_entry(&mut apps, &view, name).id.as_str(), name);
        }
        assert_eq!(apps.iter().count(), 3);
        assert_eq!(view.apps.read().len(), 3, "each app shown to queries once");
    }
}

#[cfg(test)]
mod user_id_tests {
    use super::*;

    /// A user id too long to sit inline.
    fn long(name: &str) -> String {
        format!("{name}@{}", "x".repeat(crate::INLINE_BYTES))
    }

    #[test]
    fn one_allocation_per_long_user_and_pruning_drops_only_the_unheld() {
        let mut users = UserIds::default();
        let alice = users.intern(&long("alice"));
        assert!(Id::same_memory(&alice, &users.intern(&long("alice"))), "a user seen again shares the first id");
        assert!(!Id::same_memory(&alice, &users.intern(&long("bob"))));
        // Past the threshold, a prune keeps alice (held here) and drops the rest.
        for i in 0..2_000 {
            users.intern(&long(&format!("u{i}")));
        }
        users.prune();
        assert_eq!(users.len(), 1, "only the id still held elsewhere stays");
        assert!(Id::same_memory(&alice, &users.intern(&long("alice"))));
        // A pruned user comes back as an equal id.
        assert_eq!(&*users.intern(&long("bob")), long("bob"));
    }

    #[test]
    fn short_user_ids_are_inline_and_not_kept() {
        let mut users = UserIds::default();
        let bob = users.intern("bob");
        assert_eq!(&*bob, "bob");
        assert!(!bob.is_shared());
        assert_eq!(users.len(), 0, "nothing to share, so nothing kept");
    }

    #[test]
    fn ids_stay_shared_as_the_table_grows() {
        let mut users = UserIds::default();
        let held: Vec<Id> = (0..5_000).map(|i| users.intern(&long(&format!("u{i}")))).collect();
        for (i, id) in held.iter().enumerate() {
            assert!(Id::same_memory(id, &users.intern(&long(&format!("u{i}")))), "u{i} found after the table grew");
        }
        assert_eq!(users.len(), 5_000);
        assert!(users.tables.iter().all(|t| t.len() < 5_000 / USER_ID_TABLES * 2), "ids spread over the tables");
    }
}

#[cfg(test)]
mod stored_form_tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> impl Strategy<Value = Id> {
        // Inline and shared ids, and one too long for a one-byte length.
        prop_oneof![
            "[a-z0-9]{0,22}".prop_map(Id::from),
            "[a-z0-9]{23,40}".prop_map(Id::from),
            "[a-zé]{250,300}".prop_map(Id::from),
        ]
    }

    fn wide_u32() -> impl Strategy<Value = u32> {
        prop_oneof![0u32..300, 60_000u32..70_000, any::<u32>()]
    }

    fn wide_u64() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..300, 1_700_000_000_000u64..1_800_000_000_000, any::<u64>()]
    }

    proptest! {
        /// What staging writes for a message is, byte for byte, what its
        /// serde form writes through bincode, and reads back the same.
        #[test]
        fn the_direct_stored_form_is_the_serde_forms_bytes(
            sender in id(),
            group in prop::option::of((id(), wide_u32())),
            peer in id(),
            sent_at in wide_u64(),
            tracking in 0usize..6,
            timestamp in wide_u64(),
            reads in prop::collection::vec((prop_oneof![0u32..2_000, any::<u32>()], wide_u64(), any::<bool>()), 0..120),
            visible_reads in (prop::bool::weighted(0.9), wide_u32()),
            receipt_counts in (wide_u32(), wide_u32()),
        ) {
            let target = match group {
                Some((group_id, audience_epoch)) => MessageTarget::Group { group_id, audience_epoch },
                None => MessageTarget::C2c { peer },
            };
            let tracking = [
                Tracking::Tracked,
                Tracking::NoReceiptRequested,
                Tracking::GroupTypeDisabled,
                Tracking::C2cDisabled,
                Tracking::UnknownGroup,
                Tracking::Revoked,
            ][tracking];
            let mut m = MessageState::new(sender, target, sent_at, tracking);
            for (ordinal, read_at, hidden) in reads {
                m.readers.insert(ReadMark { ordinal, read_at, hidden }, sent_at);
            }
            // Mostly the count the reads give, which is what the fold keeps.
            let revealed = (m.readers.len() - m.readers.hidden_count()) as u32;
            let visible_reads = if visible_reads.0 { revealed } else { visible_reads.1 };
            (m.timestamp, m.visible_reads, m.receipt_counts) = (timestamp, visible_reads, receipt_counts);
            let reference = bincode::serde::encode_to_vec(&m, bincode::config::standard()).unwrap();
            let mut direct = vec![1, 2, 3];
            m.encode_stored(&mut direct);
            prop_assert_eq!(&direct[..3], &[1, 2, 3], "appended, not replaced");
            prop_assert_eq!(&direct[3..], &reference[..]);
            let back = bincode::serde::decode_from_slice::<MessageState, _>(&direct[3..], bincode::config::standard());
            let (back, used) = back.unwrap();
            if visible_reads != revealed {
                prop_assert!(back.check_restored().is_err(), "a revealed count that disagrees with the reads is refused");
                return Ok(());
            }
            prop_assert_eq!(used, reference.len());
            prop_assert_eq!(back, m);
        }
    }
}

#[cfg(test)]
mod send_time_index_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Sends in about send-time order (steps back included), ids used
        /// again once their message is gone, messages removed (revoked), and
        /// expiries at rising cutoffs: each expiry hands over exactly the live
        /// messages sent before its cutoff, each once, oldest second first.
        /// Entries are ids' hashes; here ids equal mod 8 share one, so
        /// that messages of one hash are told apart as the map does, by
        /// their send time.
        #[test]
        fn expires_what_a_sorted_list_would(
            steps in prop::collection::vec((0u64..3_000, any::<bool>(), 0u64..6_000, 0u64..40), 1..300),
        ) {
            let hash = |id: u64| id % 8;
            let mut index = SendTimeIndex::default();
            // Live messages: id -> sent_at.
            let mut live: std::collections::HashMap<u64, u64> = Default::default();
            let (mut now, mut cutoff) = (10_000u64, 0u64);
            for (step, back, expiry, id) in steps {
                // Mostly forward in time, sometimes back by up to 3 s.
                now = if back { now.saturating_sub(step) } else { now + step };
                if step % 7 == 0 {
                    // A revoke: gone, its entry left behind.
                    live.remove(&id);
                } else if let std::collections::hash_map::Entry::Vacant(new) = live.entry(id) {
                    new.insert(now);
                    index.push(now, hash(id));
                }
                // Now and then an expiry, at a cutoff up to 3 s behind.
                if expiry >= 3_000 {
                    cutoff = cutoff.max(now.saturating_sub(expiry - 3_000));
                    let mut want: Vec<(u64, u64)> =
                        live.iter().filter(|(_, &t)| t < cutoff).map(|(&id, &t)| (t / 1000, id)).collect();
                    want.sort();
                    // As the fold does: removes the messages of the hash
                    // sent in the second before the cutoff, and keeps the
                    // entry while one of the second is left.
                    let mut expired = Vec::new();
                    index.pop_before(cutoff, |id_hash, second| {
                        let in_second = |(&id, &t): (&u64, &u64)| hash(id) == id_hash && t / 1000 == second;
                        live.retain(|id, t| {
                            let gone = in_second((id, t)) && *t < cutoff;
                            if gone {
                                expired.push((*t / 1000, *id));
                            }
                            !gone
                        });
                        live.iter().any(in_second)
                    });
                    prop_assert!(expired.windows(2).all(|w| w[0].0 <= w[1].0), "oldest second first: {:?}", expired);
                    expired.sort();
                    prop_assert_eq!(expired, want, "cutoff {}", cutoff);
                }
            }
        }
    }
}
