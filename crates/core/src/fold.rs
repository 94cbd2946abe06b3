//! The fold: one event in, state and effects out.

use crate::deltas::{DeltaBuffer, ReceiptChange};
use crate::departures::Departure;
use crate::prefetch::ReadAhead;
use crate::state::{
    app_entry, AppState, AppView, CountedUnder, DirtyKey, Group, HeldList, HeldRead, Id, Mark, MessageState,
    MessageTarget, PartitionState, ReadMark, Slot, Tracking, LAST_EPOCH, NOT_A_MEMBER,
};
use crate::stats::{FoldStats, Ignored, Outcome};
use crate::{same_str, ShardedMap};
use crate::{AppSettings, SettingsTable};
use receiptd_wire::{Conversation, Event, GroupMembers, MembersOp, MessageRead, MessageSent, Receipt};
use rustc_hash::FxHashSet;

/// Bounds the fold keeps; both are deterministic functions of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a read waits for its message, in record time. Default 10 min.
    pub hold_window_ms: u64,
    /// Most reads held per partition; overflow is dropped and counted.
    /// Default 100,000.
    pub max_held_reads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { hold_window_ms: 600_000, max_held_reads: 100_000 }
    }
}

/// What folding produced besides state: counters by outcome and reason.
#[derive(Debug, Default)]
pub struct Effects {
    /// Counters since the caller last reset them.
    pub stats: FoldStats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadResult {
    Revealed,
    Hidden,
    Unknown,
    Ignored(Ignored),
}

impl PartitionState {
    /// Folds one event. `record_time` is the Kafka record timestamp: the fold's
    /// only clock (hold window, retention).
    pub fn apply(
        &mut self,
        settings: &SettingsTable,
        limits: &Limits,
        event: &Event,
        record_time: u64,
        fx: &mut Effects,
    ) {
        self.apply_ahead(settings, limits, event, ReadAhead::NONE, record_time, fx)
    }

    /// As [`Self::apply`], with what [`Self::prefetch`] found for `event`
    /// (see [`ReadAhead`]): the fold then does not look it up again.
    pub fn apply_ahead(
        &mut self,
        settings: &SettingsTable,
        limits: &Limits,
        event: &Event,
        ahead: ReadAhead,
        record_time: u64,
        fx: &mut Effects,
    ) {
        self.advance_watermark(record_time);
        match event {
            Event::GroupMembers(e) => {
                self.groups_epoch += 1;
                let outcome = self.group_members(e, &mut fx.stats);
                fx.stats.event(0, outcome);
            }
            Event::MessageSent(e) => {
                let outcome = self.message_sent(settings, limits, e, &mut fx.stats);
                fx.stats.event(1, outcome);
            }
            Event::MessageRead(e) => {
                let outcome = self.message_read(settings, limits, e, ahead, record_time, &mut fx.stats);
                fx.stats.event(2, outcome);
            }
            Event::ConversationRead(e) => {
                let Conversation::C2c { peer } = &e.conversation else {
                    // The wire crate rejects group conversation reads.
                    fx.stats.event(3, Outcome::Ignored);
                    return;
                };
                let outcome = self.conversation_read(settings, &e.app_id, &e.reader, peer, e.read_at, &mut fx.stats);
                fx.stats.event(3, outcome);
            }
            Event::MessageRevoked(e) => {
                // Reads uncounted may free a departed member's ordinal.
                self.groups_epoch += 1;
                let outcome = self.message_revoked(&e.app_id, &e.msg_id, &e.sender, &e.conversation, &mut fx.stats);
                fx.stats.event(4, outcome);
            }
        }
    }

    /// Drops held reads whose hold window has passed (in record time). Only
    /// frees memory: an expired read is never applied anyway.
    pub fn expire_held(&mut self, limits: &Limits, fx: &mut Effects) {
        let PartitionState { apps, watermark, held_count, dirty, held_by_time, .. } = self;
        let cutoff = watermark.saturating_sub(limits.hold_window_ms);
        while held_by_time.first().is_some_and(|(held_at, _, _)| *held_at < cutoff) {
            let (_, app_id, msg_id) = held_by_time.pop_first().expect("first exists");
            // The list may be gone already (its message came, or an earlier
            // entry of the same list expired it).
            let Some(app) = apps.get_mut(&app_id) else { continue };
            let Some(list) = app.held.get_mut(&msg_id) else { continue };
            let before = list.reads.len();
            list.reads.retain(|h| h.held_at >= cutoff);
            let dropped = before - list.reads.len();
            if dropped > 0 {
                *held_count -= dropped;
                fx.stats.ignored[Ignored::HoldExpired as usize] += dropped as u64;
                if !list.dirty {
                    list.dirty = true;
                    dirty.push(DirtyKey::Held { app: app.id.clone(), msg_id: msg_id.clone() });
                }
            }
            if list.reads.is_empty() {
                app.held.remove(msg_id.as_str());
            }
        }
    }

    /// Drops messages past their app's retention (counted from `sent_at`, in
    /// record time), oldest first, without scanning: each app keeps its
    /// message ids in an index by send time. Storage deletes what this drops.
    pub fn expire_messages(&mut self, settings: &SettingsTable, fx: &mut Effects) {
        self.groups_epoch += 1;
        let PartitionState { apps, watermark, dirty, .. } = self;
        for app in apps.iter_mut() {
            let retention = settings.retention_ms(&app.id);
            // Expired: sent_at + retention < watermark.
            let (messages, groups, id) = (&app.view.messages, &app.view.groups, &app.id);
            let cutoff = watermark.saturating_sub(retention);
            app.by_sent_at.pop_before(cutoff, |id_hash, second| {
                let sent_in_second = |(_, m): &(Id, Box<MessageState>)| m.sent_at / 1000 == second;
                let expired = |entry: &(Id, Box<MessageState>)| sent_in_second(entry) && entry.1.sent_at < cutoff;
                while let Some((msg_id, m)) = messages.remove_by_hash(id_hash, expired) {
                    uncount_reads(groups, &m);
                    fx.stats.expired_messages += 1;
                    drop_reader_pages(dirty, id, &msg_id, &m);
                    dirty.push(DirtyKey::Message { app: id.clone(), msg_id });
                }
                messages.any_by_hash(id_hash, sent_in_second)
            });
            app.users.prune();
        }
    }

    fn group_members(&mut self, e: &GroupMembers, stats: &mut FoldStats) -> Outcome {
        let PartitionState { apps, view, dirty, .. } = self;
        let app_state = app_entry(apps, view, &e.app_id);
        let (app_id, app) = (&app_state.id, &app_state.view);
        let group_id = e.group_id.clone();
        if e.op == MembersOp::Dismiss {
            let Some(group) = app.groups.remove(&*group_id) else {
                stats.ignore(Ignored::UnknownTarget);
                return Outcome::Ignored;
            };
            drop(group);
            // Absent group: storage drops the header and every member slot.
            dirty.push(DirtyKey::Group { app: app_id.clone(), group_id: group_id.clone() });
            app.messages.retain(|msg_id, m| {
                let keep = !matches!(&m.target, MessageTarget::Group { group_id: g, .. } if *g == group_id);
                if !keep {
                    drop_reader_pages(dirty, app_id, msg_id, m);
                    dirty.push(DirtyKey::Message { app: app_id.clone(), msg_id: msg_id.clone() });
                }
                keep
            });
            return Outcome::Applied;
        }
        if e.op == MembersOp::Leave && !app.groups.contains_key(&*group_id) {
            stats.ignore(Ignored::UnknownTarget);
            return Outcome::Ignored;
        }
        let mut group = app.groups.get_or_insert_with(group_id.clone(), || Group { fresh: true, ..Group::new(None) });
        let group = &mut *group;
        if group.meta.epoch >= LAST_EPOCH {
            stats.ignore(Ignored::EpochsExhausted);
            return Outcome::Ignored;
        }
        // Every change opens a new epoch, so messages sent before it keep their
        // audience and cached unread counts know to refresh.
        group.meta.epoch += 1;
        let epoch = group.meta.epoch;
        let mut touched: Vec<u32> = Vec::new();
        match e.op {
            MembersOp::Snapshot => {
                group.meta.group_type = e.group_type;
                let keep: FxHashSet<&str> = e.members.iter().map(Id::as_str).collect();
                for ordinal in 0..group.users.len() as u32 {
                    if group.slots[ordinal as usize].since != NOT_A_MEMBER && !keep.contains(group.users.name(ordinal))
                    {
                        leave(group, ordinal);
                        touched.push(ordinal);
                    }
                }
                for user in &e.members {
                    touched.extend(join(group, user, epoch));
                }
            }
            MembersOp::Join => {
                for user in &e.members {
                    touched.extend(join(group, user, epoch));
                }
            }
            MembersOp::Leave => {
                for user in &e.members {
                    if let Some(ordinal) = group.ordinal(user) {
                        if group.slots[ordinal as usize].since != NOT_A_MEMBER {
                            leave(group, ordinal);
                            touched.push(ordinal);
                        }
                    }
                }
            }
            MembersOp::Dismiss => unreachable!("handled above"),
        }
        if !group.dirty {
            group.dirty = true;
            dirty.push(DirtyKey::Group { app: app_id.clone(), group_id: group_id.clone() });
        }
        for ordinal in touched {
            if group.dirty_members.insert(ordinal) {
                dirty.push(DirtyKey::Member { app: app_id.clone(), group_id: group_id.clone(), ordinal });
            }
        }
        Outcome::Applied
    }

    fn message_sent(
        &mut self,
        settings: &SettingsTable,
        limits: &Limits,
        e: &MessageSent,
        stats: &mut FoldStats,
    ) -> Outcome {
        let watermark = self.watermark;
        let PartitionState { apps, view, dirty, held_count, held_by_time, .. } = self;
        let app = app_entry(apps, view, &e.app_id);
        let app_settings = settings.app(&e.app_id);
        // Already past retention when it arrives: never tracked.
        let expired = e.sent_at.saturating_add(app_settings.retention_ms()) < watermark;
        let mut inserted = None;
        // One lookup finds a duplicate or inserts the new message.
        let id_hash = app.view.messages.insert_if_absent(e.msg_id.as_str(), || {
            if expired {
                return None;
            }
            let (target, tracking) = match &e.conversation {
                Conversation::Group { group_id } => match app.view.groups.get_entry(group_id.as_str()) {
                    None => {
                        (MessageTarget::Group { group_id: group_id.clone(), audience_epoch: 0 }, Tracking::UnknownGroup)
                    }
                    Some(entry) => {
                        // The group's own id, shared rather than copied.
                        let (group_id, g) = &*entry;
                        let tracking = if !e.need_read_receipt {
                            Tracking::NoReceiptRequested
                        } else if g.meta.group_type.is_some_and(|t| !app_settings.group_type_enabled(t)) {
                            Tracking::GroupTypeDisabled
                        } else {
                            Tracking::Tracked
                        };
                        (MessageTarget::Group { group_id: group_id.clone(), audience_epoch: g.meta.epoch }, tracking)
                    }
                },
                Conversation::C2c { peer } => {
                    let tracking = if !e.need_read_receipt {
                        Tracking::NoReceiptRequested
                    } else if !app_settings.c2c_receipts() {
                        Tracking::C2cDisabled
                    } else {
                        Tracking::Tracked
                    };
                    (MessageTarget::C2c { peer: app.users.intern(peer) }, tracking)
                }
            };
            let mut message = MessageState::new(app.users.intern(&e.sender), target, e.sent_at, tracking);
            message.dirty = true;
            let msg_id = e.msg_id.clone();
            inserted = Some(msg_id.clone());
            Some((msg_id, Box::new(message)))
        });
        let Some(id_hash) = id_hash else {
            stats.ignore(Ignored::DuplicateMessage);
            return Outcome::Ignored;
        };
        let Some(msg_id) = inserted else {
            stats.ignore(Ignored::Expired);
            return Outcome::Ignored;
        };
        dirty.push(DirtyKey::Message { app: app.id.clone(), msg_id: msg_id.clone() });
        app.by_sent_at.push(e.sent_at, id_hash);

        // Reads that came first are applied now, in their arrival order.
        if let Some(held) = app.held.remove(e.msg_id.as_str()) {
            *held_count -= held.reads.len();
            for h in &held.reads {
                held_by_time.remove(&(h.held_at, e.app_id.clone(), e.msg_id.clone()));
            }
            dirty.push(DirtyKey::Held { app: app.id.clone(), msg_id });
            let cutoff = watermark.saturating_sub(limits.hold_window_ms);
            for h in held.reads {
                if h.held_at < cutoff {
                    stats.ignore(Ignored::HoldExpired);
                    continue;
                }
                let ctx = ReadCtx { settings: app_settings, app_id: &app.id, watermark, dirty };
                let mut place = ReaderPlace::default();
                match read_one(ctx, &app.view, &mut place, &h.reader, &h.conversation, &e.msg_id, h.read_at, h.private)
                {
                    ReadResult::Ignored(reason) => stats.ignore(reason),
                    ReadResult::Hidden => stats.hidden_reads += 1,
                    ReadResult::Revealed | ReadResult::Unknown => {}
                }
            }
        }
        Outcome::Applied
    }

    fn message_read(
        &mut self,
        settings: &SettingsTable,
        limits: &Limits,
        e: &MessageRead,
        ahead: ReadAhead,
        record_time: u64,
        stats: &mut FoldStats,
    ) -> Outcome {
        let (mut any_applied, mut any_held) = (false, false);
        // Each id read out of its `Id` once, not once per message.
        let (app_id, reader) = (e.app_id.as_str(), e.reader.as_str());
        if e.msg_ids.is_empty() {
            return Outcome::Ignored;
        }
        let app_settings = settings.app(app_id);
        // Reads that overtook their messages, held after the others are
        // folded: holding needs the whole partition state, and neither
        // depends on the other. Allocates only when there is one.
        let mut unknown = Vec::new();
        {
            let (watermark, groups_epoch) = (self.watermark, self.groups_epoch);
            let PartitionState { apps, view, dirty, .. } = self;
            let app: &AppState = app_entry(apps, view, app_id);
            // SAFETY: `ahead` is checked to be this event's, found in this
            // groups epoch, so its group is where it was; see `ReadAhead`.
            let mut place = unsafe { ahead.place_for(e, groups_epoch) };
            for msg_id in &e.msg_ids {
                let ctx = ReadCtx { settings: app_settings, app_id: &app.id, watermark, dirty };
                match read_one(ctx, &app.view, &mut place, reader, &e.conversation, msg_id, e.read_at, e.private) {
                    ReadResult::Revealed => any_applied = true,
                    ReadResult::Hidden => {
                        stats.hidden_reads += 1;
                        any_applied = true;
                    }
                    ReadResult::Ignored(reason) => stats.ignore(reason),
                    ReadResult::Unknown => unknown.push(msg_id),
                }
            }
        }
        for msg_id in unknown {
            any_held |= self.hold(limits, e, msg_id, record_time, stats);
        }
        if any_applied {
            Outcome::Applied
        } else if any_held {
            Outcome::Held
        } else {
            Outcome::Ignored
        }
    }

    fn hold(&mut self, limits: &Limits, e: &MessageRead, msg_id: &Id, record_time: u64, stats: &mut FoldStats) -> bool {
        if self.held_count >= limits.max_held_reads {
            // Free what has expired before refusing: the decision then depends
            // only on live held reads, so a replay decides the same way.
            let mut fx = Effects::default();
            self.expire_held(limits, &mut fx);
            stats.merge(&fx.stats);
            if self.held_count >= limits.max_held_reads {
                stats.ignore(Ignored::HoldOverflow);
                return false;
            }
        }
        let PartitionState { apps, view, dirty, held_count, held_by_time, .. } = self;
        let app = app_entry(apps, view, &e.app_id);
        held_by_time.insert((record_time, e.app_id.clone(), msg_id.clone()));
        let list: &mut HeldList = app.held.entry(msg_id.clone()).or_default();
        list.reads.push(HeldRead {
            reader: e.reader.clone(),
            conversation: e.conversation.clone(),
            read_at: e.read_at,
            private: e.private,
            held_at: record_time,
        });
        *held_count += 1;
        if !list.dirty {
            list.dirty = true;
            dirty.push(DirtyKey::Held { app: app.id.clone(), msg_id: msg_id.clone() });
        }
        true
    }

    fn conversation_read(
        &mut self,
        settings: &SettingsTable,
        app_id: &str,
        reader: &Id,
        peer: &Id,
        read_at: u64,
        stats: &mut FoldStats,
    ) -> Outcome {
        let app_settings = settings.app(app_id);
        if !app_settings.c2c_receipts() {
            stats.ignore(Ignored::C2cDisabled);
            return Outcome::Ignored;
        }
        let PartitionState { apps, view, dirty, .. } = self;
        let app_state = app_entry(apps, view, app_id);
        let app = &app_state.view;
        // The map's key and the changed key share these two ids.
        let (reader_id, peer_id) = (reader.clone(), peer.clone());
        let mut mark = app.marks.get_or_insert_with((reader_id.clone(), peer_id.clone()), || Mark {
            read_at: 0,
            dirty: false,
            delta_pending: false,
        });
        if read_at <= mark.read_at {
            stats.ignore(Ignored::StaleMark);
            return Outcome::Ignored;
        }
        mark.read_at = read_at;
        if !mark.dirty {
            mark.dirty = true;
            dirty.push(DirtyKey::Mark { app: app_state.id.clone(), reader: reader_id.clone(), peer: peer_id.clone() });
        }
        // Its receipt is taken with the flush of the changed key just listed.
        if app_settings.receipts_on(reader) {
            mark.delta_pending = true;
        } else {
            stats.hidden_reads += 1;
        }
        Outcome::Applied
    }

    fn message_revoked(
        &mut self,
        app_id: &str,
        msg_id: &str,
        sender: &str,
        conversation: &Conversation,
        stats: &mut FoldStats,
    ) -> Outcome {
        let PartitionState { apps, view, dirty, .. } = self;
        let app = app_entry(apps, view, app_id);
        let Some(mut entry) = app.view.messages.get_entry_mut(msg_id) else {
            stats.ignore(Ignored::UnknownTarget);
            return Outcome::Ignored;
        };
        let (msg_id, m) = &mut *entry;
        let same_place = match (&m.target, conversation) {
            (MessageTarget::Group { group_id, .. }, Conversation::Group { group_id: g }) => same_str(group_id, g),
            (MessageTarget::C2c { peer }, Conversation::C2c { peer: p }) => same_str(peer, p),
            _ => false,
        };
        if *m.sender != *sender || !same_place || m.tracking == Tracking::Revoked {
            stats.ignore(Ignored::UnknownTarget);
            return Outcome::Ignored;
        }
        m.tracking = Tracking::Revoked;
        uncount_reads(&app.view.groups, m);
        drop_reader_pages(dirty, &app.id, msg_id, m);
        m.readers = Default::default();
        m.visible_reads = 0;
        m.counted_under = CountedUnder::default();
        if !m.dirty {
            m.dirty = true;
            dirty.push(DirtyKey::Message { app: app.id.clone(), msg_id: msg_id.clone() });
        }
        Outcome::Applied
    }
}

/// Adds `user` as a member from `epoch` on; returns its ordinal if it was not
/// a member already.
fn join(group: &mut Group, user: &str, epoch: u32) -> Option<u32> {
    let ordinal = match group.ordinal(user) {
        Some(o) if group.slots[o as usize].since != NOT_A_MEMBER => return None,
        Some(o) => {
            group.reusable.remove(o);
            o
        }
        // A newcomer takes the lowest ordinal free to change hands.
        None => match group.reusable.pop_lowest() {
            Some(o) => {
                group.users.rename(o, user);
                o
            }
            None => {
                let o = group.users.push(user);
                group.slots.push(Slot::new(NOT_A_MEMBER));
                o
            }
        },
    };
    group.slots[ordinal as usize].since = epoch;
    group.by_epoch.join(epoch);
    group.member_count += 1;
    Some(ordinal)
}

fn leave(group: &mut Group, ordinal: u32) {
    let since = std::mem::replace(&mut group.slots[ordinal as usize].since, NOT_A_MEMBER);
    group.by_epoch.leave(since);
    group.member_count -= 1;
    let departure = Departure { epoch: group.meta.epoch, since, ordinal, user: Id::from(group.users.name(ordinal)) };
    group.departures.record(departure, group.member_count);
    group.free_if_unread(ordinal);
}

/// Lists the pages of a message's readers stored apart, if it has any,
/// to be deleted: the message is going (expired, revoked, or its group
/// dismissed), and its pages with it.
fn drop_reader_pages(dirty: &mut Vec<DirtyKey>, app: &Id, msg_id: &Id, m: &MessageState) {
    if m.readers.sealed_pages() > 0 {
        dirty.push(DirtyKey::ReaderPages { app: app.clone(), msg_id: msg_id.clone() });
    }
}

/// Uncounts the reads of a group message gone or revoked (see
/// [`Group::uncount_reads`]).
fn uncount_reads(groups: &ShardedMap<Id, Group>, m: &MessageState) {
    if m.readers.is_empty() {
        return;
    }
    if let MessageTarget::Group { group_id, .. } = &m.target {
        if let Some(mut group) = groups.get_mut(&**group_id) {
            group.uncount_reads(m.reads().map(|r| r.ordinal));
        }
    }
}

/// The reader's group and ordinal, shared by every message of one read
/// event: a client reads a conversation's unread messages in one call,
/// and each message looked them up again (counted: 1,366 instructions a
/// message read ten to an event, 1,103 with them shared). Looked up at the
/// first message that needs them, so an event whose messages are all
/// unknown or ignored looks up none.
///
/// The group is read without its shard's lock (`ShardedMap::peek`): every
/// change to a group goes through `&mut PartitionState`, which the fold
/// holds for the whole event, and queries only read. A read lock cost two
/// atomic operations an event, and each waits for every load before it.
#[derive(Default)]
pub(crate) struct ReaderPlace<'a> {
    /// Whether the group was looked up (it may not exist).
    pub(crate) looked_up: bool,
    /// The group, if it exists.
    pub(crate) group: Option<&'a Group>,
    /// The reader's ordinal in it, if the reader has one.
    pub(crate) ordinal: Option<u32>,
}

impl<'a> ReaderPlace<'a> {
    /// Looks the reader's group and ordinal up, at the first call only.
    /// Every message it is called for is in the event's conversation
    /// (checked before), so in one group.
    #[inline(always)]
    fn look_up_group(&mut self, app: &'a AppView, group_id: &str, reader: &str) {
        if !self.looked_up {
            self.looked_up = true;
            // SAFETY: only the fold changes groups, through `&mut
            // PartitionState`, which every caller of `read_one` holds
            // while its `ReaderPlace` lives; queries only read.
            self.group = unsafe { app.groups.peek(group_id) };
            self.ordinal = self.group.and_then(|group| group.ordinal(reader));
        }
    }
}

/// What one read needs besides the app's state.
struct ReadCtx<'a> {
    /// The app's settings, found once per event.
    settings: AppSettings<'a>,
    app_id: &'a Id,
    watermark: u64,
    dirty: &'a mut Vec<DirtyKey>,
}

/// Folds one reader's read of one message. The caller holds `&mut
/// PartitionState` (see [`ReaderPlace`]).
#[allow(clippy::too_many_arguments)]
fn read_one<'a>(
    ctx: ReadCtx<'_>,
    app: &'a AppView,
    place: &mut ReaderPlace<'a>,
    reader: &str,
    conversation: &Conversation,
    msg_id: &str,
    read_at: u64,
    private: bool,
) -> ReadResult {
    let Some(mut entry) = app.messages.get_entry_mut(msg_id) else { return ReadResult::Unknown };
    let (msg_id, m) = &mut *entry;
    if m.sender == *reader {
        return ReadResult::Ignored(Ignored::Sender);
    }
    let same_conversation = match (&m.target, conversation) {
        (MessageTarget::Group { group_id, .. }, Conversation::Group { group_id: g }) => same_str(group_id, g),
        (MessageTarget::C2c { peer }, Conversation::C2c { peer: p }) => *peer == *reader && m.sender == **p,
        _ => false,
    };
    if !same_conversation {
        return ReadResult::Ignored(Ignored::NotInAudience);
    }
    if let Some(reason) = untracked_reason(m.tracking) {
        return reason;
    }
    let (group, ordinal) = match &m.target {
        MessageTarget::Group { group_id, audience_epoch } => {
            place.look_up_group(app, group_id, reader);
            match (place.group, place.ordinal) {
                (Some(group), Some(o)) if group.member_since(o, *audience_epoch) => (Some(group), o),
                _ => return ReadResult::Ignored(Ignored::NotInAudience),
            }
        }
        MessageTarget::C2c { .. } => (None, 0),
    };
    if m.sent_at.saturating_add(ctx.settings.retention_ms()) < ctx.watermark {
        return ReadResult::Ignored(Ignored::Expired);
    }
    let hidden = private || !ctx.settings.receipts_on(reader);
    if !m.readers.insert(ReadMark { ordinal, read_at, hidden }, m.sent_at) {
        return ReadResult::Ignored(Ignored::Duplicate);
    }
    if let Some(group) = group {
        group.count_read(ordinal);
    }
    if !m.dirty {
        m.dirty = true;
        ctx.dirty.push(DirtyKey::Message { app: ctx.app_id.clone(), msg_id: msg_id.clone() });
    }
    if hidden {
        return ReadResult::Hidden;
    }
    m.visible_reads += 1;
    m.timestamp = m.timestamp.max(read_at);
    m.receipt_counts = match &m.target {
        MessageTarget::Group { .. } => match group {
            Some(group) => {
                // The counts before this read, kept: the new reader was
                // eligible, unread and is revealed now, so they move by one.
                // Otherwise they are counted again, this read included.
                let counts = match counts_kept(ctx.settings, group, m, Some(ordinal)) {
                    Some((read, unread)) => (read + 1, unread.saturating_sub(1)),
                    None => count_group(ctx.settings, group, m),
                };
                m.counted_under = CountedUnder::new(group.meta.epoch, ctx.settings.switches());
                counts
            }
            None => (m.visible_reads, 0),
        },
        MessageTarget::C2c { .. } => (1, 0),
    };
    // Taken with the flush of the changed key listed above.
    m.delta_pending = true;
    ReadResult::Revealed
}

/// Takes a message's receipt into `deltas` if it has a revealed change not
/// taken yet: one per message per flush, with its latest counts. Receipts
/// for a sender who may not receive them (reciprocal privacy) are dropped.
pub(crate) fn take_message_receipt(
    settings: &SettingsTable,
    app: &Id,
    msg_id: &Id,
    m: &mut MessageState,
    deltas: &mut DeltaBuffer,
) {
    if !std::mem::take(&mut m.delta_pending) {
        return;
    }
    if m.tracking != Tracking::Tracked || !settings.may_receive(app, &m.sender) {
        return;
    }
    let (read, unread) = m.receipt_counts;
    let receipt = match &m.target {
        MessageTarget::Group { group_id, .. } => {
            Receipt::group(msg_id.clone(), group_id.clone(), read, unread, m.timestamp, m.version())
        }
        MessageTarget::C2c { peer } => Receipt::c2c(msg_id.clone(), peer.clone(), read > 0, m.timestamp, m.version()),
    };
    deltas.push_in_pass(ReceiptChange { app: app.clone(), to: m.sender.clone(), receipt });
}

/// Takes a conversation read mark's receipt into `deltas` (for `peer`) if it
/// moved since its last receipt, and both sides allow it.
pub(crate) fn take_mark_receipt(
    settings: &SettingsTable,
    app: &Id,
    (reader, peer): &(Id, Id),
    mark: &mut Mark,
    deltas: &mut DeltaBuffer,
) {
    if !std::mem::take(&mut mark.delta_pending) {
        return;
    }
    if !settings.receipts_on(app, reader) || !settings.may_receive(app, peer) {
        return;
    }
    let receipt = Receipt::conversation(reader.clone(), mark.read_at);
    deltas.push_in_pass(ReceiptChange { app: app.clone(), to: peer.clone(), receipt });
}

fn untracked_reason(tracking: Tracking) -> Option<ReadResult> {
    let reason = match tracking {
        Tracking::Tracked => return None,
        Tracking::NoReceiptRequested => Ignored::NoReceiptRequested,
        Tracking::GroupTypeDisabled => Ignored::GroupTypeDisabled,
        Tracking::C2cDisabled => Ignored::C2cDisabled,
        Tracking::UnknownGroup => Ignored::UnknownGroup,
        Tracking::Revoked => Ignored::Revoked,
    };
    Some(ReadResult::Ignored(reason))
}

/// Whether a reader is revealed now: not hidden at read time, and the reader's
/// receipts are on today (a user with receipts off is never revealed).
fn revealed_now(settings: AppSettings<'_>, group: &Group, r: &ReadMark) -> bool {
    !r.hidden && settings.receipts_on(group.users.name(r.ordinal))
}

/// Eligible members not revealed as readers: members since the audience
/// epoch, minus the sender, minus revealed readers still members.
fn compute_unread(settings: AppSettings<'_>, group: &Group, m: &MessageState) -> u32 {
    let MessageTarget::Group { audience_epoch, .. } = &m.target else { return 0 };
    let epoch = *audience_epoch;
    let mut unread = group.eligible(epoch);
    if group.ordinal(&m.sender).is_some_and(|o| group.member_since(o, epoch)) {
        unread -= 1;
    }
    let revealed_present =
        m.reads().filter(|r| group.member_since(r.ordinal, epoch) && revealed_now(settings, group, r)).count() as u32;
    // Never below zero, even for a stored reader list that names the
    // sender (the fold never adds the sender's read; a corrupt store could).
    unread.saturating_sub(revealed_present)
}

/// `(read, unread)` of a message as its sender may see them now.
pub(crate) fn counts(settings: AppSettings<'_>, groups: &ShardedMap<Id, Group>, m: &MessageState) -> (u32, u32) {
    if m.tracking != Tracking::Tracked {
        return (0, 0);
    }
    match &m.target {
        MessageTarget::C2c { peer } => {
            let read = u32::from(m.visible_reads > 0 && settings.receipts_on(peer));
            (read, 1 - read)
        }
        MessageTarget::Group { group_id, .. } => match groups.get(&**group_id) {
            None => (0, 0),
            Some(group) => group_counts(settings, &group, m),
        },
    }
}

/// `(read, unread)` of a group message now: its receipt's counts kept if
/// they can be, else counted.
fn group_counts(settings: AppSettings<'_>, group: &Group, m: &MessageState) -> (u32, u32) {
    counts_kept(settings, group, m, None).unwrap_or_else(|| count_group(settings, group, m))
}

/// The counts of `m`'s latest revealed change (its receipt's), without
/// counting its readers again: as they are if taken at the group's epoch
/// under the app's switches; else brought up to date by what changed
/// since (see [`counts_brought_up`]). `None` when they must be counted
/// again, as a message's first revealed read must. `read_now` is the
/// ordinal of a reader added to `m` since (the read being folded): the
/// counts are those from before it.
#[inline]
fn counts_kept(
    settings: AppSettings<'_>,
    group: &Group,
    m: &MessageState,
    read_now: Option<u32>,
) -> Option<(u32, u32)> {
    let (epoch, switches) = m.counted_under.counted()?;
    let switches_now = settings.switches()?;
    if epoch == group.meta.epoch && switches == switches_now {
        return Some(m.receipt_counts);
    }
    counts_brought_up(settings, group, m, epoch, switches, read_now)
}

/// Counts taken at `epoch` under `switches`, brought up to date by the
/// group's departures since (see [`crate::departures`]), then by the
/// app's receipt switches since, while all are still listed and that is
/// cheaper than counting again: each costs a lookup among the readers (a
/// switch, also a member's by name), about what counting four readers
/// costs. Out of line: reads between such changes never come here.
#[cold]
#[inline(never)]
fn counts_brought_up(
    settings: AppSettings<'_>,
    group: &Group,
    m: &MessageState,
    epoch: u32,
    switches: u32,
    read_now: Option<u32>,
) -> Option<(u32, u32)> {
    let MessageTarget::Group { audience_epoch, .. } = &m.target else { return None };
    let audience_epoch = *audience_epoch;
    let departures = group.departures.after(epoch)?;
    let switched = || settings.switched_after(switches);
    let switch_count = switched()?.len();
    if (departures.len() + switch_count) * 4 > m.readers.len() {
        return None;
    }
    let (mut read, mut unread) = m.receipt_counts;
    // Members left, under the switches the counts were taken under: a
    // leave takes one off the unread count when the member was in the
    // audience, not the sender, and not revealed then.
    for d in departures.iter().filter(|d| d.since <= audience_epoch) {
        if d.user == m.sender {
            // The sender is never in its own unread count, and never its
            // reader (a corrupt store could say otherwise: count again).
            return None;
        }
        // Off then: off now, unless switched an odd number of times since.
        let switched_since = match switch_count {
            0 => 0,
            _ => switched()?.filter(|(user, _)| *user == &*d.user).count(),
        };
        let off_then = !settings.receipts_on(&d.user) ^ (switched_since % 2 == 1);
        let revealed_then = m.readers.get(d.ordinal, m.sent_at).is_some_and(|r| !r.hidden && !off_then);
        if !revealed_then {
            unread = unread.checked_sub(1)?;
        }
    }
    // Users switched receipts, under the members now: one who read before
    // the counts were taken, not hidden, is revealed or no longer, and
    // counts as unread or no longer if a member of the audience. Every
    // other read since was hidden (a revealed one counts again) but the
    // one being folded: its switches moved nothing counted.
    if switch_count == 0 {
        return Some((read, unread));
    }
    for (user, off) in switched()? {
        if *m.sender == *user {
            return None;
        }
        let Some(ordinal) = group.ordinal(user) else { continue };
        if read_now == Some(ordinal) || m.readers.get(ordinal, m.sent_at).is_none_or(|r| r.hidden) {
            continue;
        }
        let in_audience = group.member_since(ordinal, audience_epoch);
        if off {
            read = read.checked_sub(1)?;
            unread += u32::from(in_audience);
        } else {
            read += 1;
            unread = unread.checked_sub(u32::from(in_audience))?;
        }
    }
    Some((read, unread))
}

/// Counts a group message's readers: every revealed read, and the eligible
/// members not revealed as readers.
fn count_group(settings: AppSettings<'_>, group: &Group, m: &MessageState) -> (u32, u32) {
    let read = if settings.anyone_off() {
        m.reads().filter(|r| revealed_now(settings, group, r)).count() as u32
    } else {
        // Nobody is off: every read not hidden when it was made is revealed.
        m.visible_reads
    };
    (read, compute_unread(settings, group, m))
}
