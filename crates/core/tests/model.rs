//! The fold against a deliberately naive reference model, on random
//! interleavings of every event kind: membership churn, duplicates, reads
//! before sends, privacy toggles, private reads, revocations, dismissal,
//! retention expiry and hold-window expiry.
//!
//! The model copies each group message's whole audience at send time and
//! keeps everything in plain sets and maps; it shares no code with the engine.
//! After every step, every message's counts, read list, unread list and the
//! receipts taken must agree, and `read + unread` must equal the eligible
//! audience (members of the send-time audience still present, plus revealed
//! readers, who count even after leaving). Flushes are staged whole or in
//! slices of a few entities between events; after each whole flush, a
//! partition restored from everything staged must answer as the live one.

mod disk;

use disk::Disk;
use proptest::prelude::*;
use receiptd_core::{DeltaBuffer, DirtyKey, Effects, Limits, PartitionState, SettingsTable};
use receiptd_wire::*;
use std::collections::{BTreeMap, BTreeSet};

const APP: &str = "a1";
const DAY: u64 = 86_400_000;
const HOLD: u64 = 60_000;
const USERS: u8 = 6;

fn user(i: u8) -> String {
    format!("u{}", i % USERS)
}

#[derive(Debug, Clone)]
enum Op {
    Members {
        g: u8,
        op: u8,
        users: u8,
        av: bool,
    },
    Send {
        m: u8,
        sender: u8,
        group: Option<u8>,
        peer: u8,
        need: bool,
        days_back: u8,
    },
    Read {
        reader: u8,
        msgs: Vec<u8>,
        private: bool,
        right_place: bool,
        g: u8,
        peer: u8,
    },
    ConvRead {
        reader: u8,
        peer: u8,
    },
    Revoke {
        m: u8,
        right: bool,
    },
    Toggle {
        user: u8,
    },
    Reciprocal,
    Flush,
    /// A slice of a flush: at most `max` changed entities staged.
    Stage {
        max: u8,
    },
    Tick {
        step: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..2, 0u8..4, any::<u8>(), prop::bool::weighted(0.2))
            .prop_map(|(g, op, users, av)| Op::Members { g, op: if op == 3 && users % 4 != 0 { 1 } else { op }, users, av }),
        4 => (0u8..8, 0u8..USERS, prop::option::weighted(0.7, 0u8..2), 0u8..USERS, prop::bool::weighted(0.85), prop::sample::select(vec![0u8, 0, 0, 0, 2]))
            .prop_map(|(m, sender, group, peer, need, days_back)| Op::Send { m, sender, group, peer, need, days_back }),
        8 => (0u8..USERS, prop::collection::vec(0u8..8, 1..5), prop::bool::weighted(0.15), prop::bool::weighted(0.85), 0u8..2, 0u8..USERS)
            .prop_map(|(reader, msgs, private, right_place, g, peer)| Op::Read { reader, msgs, private, right_place, g, peer }),
        1 => (0u8..USERS, 0u8..USERS).prop_map(|(reader, peer)| Op::ConvRead { reader, peer }),
        1 => (0u8..8, prop::bool::weighted(0.8)).prop_map(|(m, right)| Op::Revoke { m, right }),
        1 => (0u8..USERS).prop_map(|user| Op::Toggle { user }),
        1 => Just(Op::Reciprocal),
        2 => Just(Op::Flush),
        2 => (1u8..4).prop_map(|max| Op::Stage { max }),
        2 => (0u8..4).prop_map(|step| Op::Tick { step }),
    ]
}

#[derive(Debug, Clone)]
struct ModelMsg {
    sender: String,
    group: Option<String>,
    peer: String,
    sent_at: u64,
    /// `None` when tracked; otherwise why not.
    untracked: bool,
    revoked: bool,
    /// Group: the members at send time (minus the sender) with their
    /// membership generation then.
    audience: BTreeMap<String, u64>,
    reads: BTreeMap<String, (u64, bool)>,
    version: u64,
    receipt: (u32, u32),
    pending: bool,
}

#[derive(Debug, Default)]
struct Model {
    /// group -> (type is AV chat room, member -> membership generation)
    groups: BTreeMap<String, (bool, BTreeMap<String, u64>)>,
    generation: u64,
    messages: BTreeMap<String, ModelMsg>,
    held: Vec<(String, MessageRead, u64)>,
    marks: BTreeMap<(String, String), (u64, bool)>,
    off: BTreeSet<String>,
    reciprocal: bool,
    watermark: u64,
}

impl Model {
    fn eligible(&self, m: &ModelMsg, u: &str) -> bool {
        let Some(g) = &m.group else { return *u == m.peer };
        let current = self.groups.get(g).and_then(|(_, members)| members.get(u));
        m.audience.get(u).is_some_and(|gen| Some(gen) == current)
    }

    fn revealed(&self, m: &ModelMsg, u: &str) -> bool {
        m.reads.get(u).is_some_and(|(_, hidden)| !hidden) && !self.off.contains(u)
    }

    /// (read, unread, eligible ∪ revealed)
    fn counts(&self, m: &ModelMsg) -> (u32, u32, u32) {
        if m.untracked || m.revoked {
            return (0, 0, 0);
        }
        let candidates: BTreeSet<&String> = if m.group.is_some() {
            m.audience.keys().chain(m.reads.keys()).collect()
        } else {
            std::iter::once(&m.peer).collect()
        };
        let read = candidates.iter().filter(|u| self.revealed(m, u)).count() as u32;
        let unread = candidates.iter().filter(|u| self.eligible(m, u) && !self.revealed(m, u)).count() as u32;
        let union = candidates.iter().filter(|u| self.eligible(m, u) || self.revealed(m, u)).count() as u32;
        (read, unread, union)
    }

    fn lists(&self, m: &ModelMsg) -> (BTreeSet<String>, BTreeSet<String>) {
        let read = m.reads.keys().filter(|u| self.revealed(m, u)).cloned().collect();
        let unread = m.audience.keys().filter(|u| self.eligible(m, u) && !self.revealed(m, u)).cloned().collect();
        (read, unread)
    }

    fn members(&mut self, e: &GroupMembers) {
        match e.op {
            MembersOp::Dismiss => {
                if self.groups.remove(e.group_id.as_str()).is_some() {
                    self.messages.retain(|_, m| m.group.as_deref() != Some(e.group_id.as_str()));
                }
            }
            MembersOp::Leave => {
                if let Some((_, members)) = self.groups.get_mut(e.group_id.as_str()) {
                    for u in &e.members {
                        members.remove(u.as_str());
                    }
                }
            }
            MembersOp::Join | MembersOp::Snapshot => {
                let (av, members) = self.groups.entry(e.group_id.to_string()).or_insert((false, BTreeMap::new()));
                if e.op == MembersOp::Snapshot {
                    *av = e.group_type == Some(GroupType::AVChatRoom);
                    members.retain(|u, _| e.members.iter().any(|m| m == u));
                }
                for u in &e.members {
                    if !members.contains_key(u.as_str()) {
                        self.generation += 1;
                        members.insert(u.to_string(), self.generation);
                    }
                }
            }
        }
    }

    fn send(&mut self, e: &MessageSent) {
        if self.messages.contains_key(e.msg_id.as_str()) || e.sent_at + DAY < self.watermark {
            return;
        }
        let (group, peer) = match &e.conversation {
            Conversation::Group { group_id } => (Some(group_id.to_string()), String::new()),
            Conversation::C2c { peer } => (None, peer.to_string()),
        };
        let (untracked, audience) = match &group {
            Some(g) => match self.groups.get(g) {
                None => (true, BTreeMap::new()),
                Some((av, members)) => {
                    let mut audience = members.clone();
                    audience.remove(e.sender.as_str());
                    (!e.need_read_receipt || *av, audience)
                }
            },
            None => (!e.need_read_receipt, BTreeMap::new()),
        };
        self.messages.insert(
            e.msg_id.to_string(),
            ModelMsg {
                sender: e.sender.to_string(),
                group,
                peer,
                sent_at: e.sent_at,
                untracked,
                revoked: false,
                audience,
                reads: BTreeMap::new(),
                version: 0,
                receipt: (0, 0),
                pending: false,
            },
        );
        let cutoff = self.watermark.saturating_sub(HOLD);
        let (mine, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.held).into_iter().partition(|(id, _, _)| *id == e.msg_id);
        self.held = rest;
        for (id, read, held_at) in mine {
            if held_at >= cutoff {
                self.read_one(&read, &id);
            }
        }
    }

    fn read_one(&mut self, e: &MessageRead, msg_id: &str) {
        let Some(m) = self.messages.get(msg_id).cloned() else {
            self.held.push((msg_id.to_owned(), e.clone(), self.watermark));
            return;
        };
        let right_place = match (&m.group, &e.conversation) {
            (Some(g), Conversation::Group { group_id }) => g == group_id,
            (None, Conversation::C2c { peer }) => *peer == m.sender && e.reader == m.peer,
            _ => false,
        };
        if e.reader == m.sender
            || !right_place
            || m.untracked
            || m.revoked
            || !self.eligible(&m, &e.reader)
            || m.sent_at + DAY < self.watermark
            || m.reads.contains_key(e.reader.as_str())
        {
            return;
        }
        let hidden = e.private || self.off.contains(e.reader.as_str());
        let mut m = m;
        m.reads.insert(e.reader.to_string(), (e.read_at, hidden));
        if !hidden {
            m.version += 1;
            let (read, unread, _) = self.counts(&m);
            m.receipt = (read, unread);
            m.pending = true;
        }
        self.messages.insert(msg_id.to_owned(), m);
    }

    fn conversation_read(&mut self, e: &ConversationRead) {
        let Conversation::C2c { peer } = &e.conversation else { return };
        let mark = self.marks.entry((e.reader.to_string(), peer.to_string())).or_insert((0, false));
        if e.read_at > mark.0 {
            mark.0 = e.read_at;
            mark.1 |= !self.off.contains(e.reader.as_str());
        }
    }

    fn revoke(&mut self, e: &MessageRevoked) {
        if let Some(m) = self.messages.get_mut(e.msg_id.as_str()) {
            let place = match (&m.group, &e.conversation) {
                (Some(g), Conversation::Group { group_id }) => g == group_id,
                (None, Conversation::C2c { peer }) => *peer == m.peer,
                _ => false,
            };
            if m.sender == e.sender && place && !m.revoked {
                m.revoked = true;
                m.reads.clear();
            }
        }
    }

    fn sweep(&mut self) {
        let cutoff = self.watermark.saturating_sub(HOLD);
        self.held.retain(|(_, _, at)| *at >= cutoff);
        let w = self.watermark;
        self.messages.retain(|_, m| m.sent_at + DAY >= w);
    }

    fn may_receive(&self, u: &str) -> bool {
        !self.reciprocal || !self.off.contains(u)
    }

    /// The receipts a flush should yield, by what each is a receipt of
    /// (recipient and message, or recipient and conversation reader).
    fn take(&mut self, out: &mut Taken) {
        let ids: Vec<String> = self.messages.keys().cloned().collect();
        for id in ids {
            self.take_message(&id, out);
        }
        let marks: Vec<_> = self.marks.keys().cloned().collect();
        for (reader, peer) in marks {
            self.take_mark(&reader, &peer, out);
        }
    }

    /// One message's receipt, if pending: a later one replaces it in `out`.
    fn take_message(&mut self, id: &str, out: &mut Taken) {
        let Some(m) = self.messages.get_mut(id).filter(|m| m.pending) else { return };
        m.pending = false;
        let m = m.clone();
        if m.untracked || m.revoked || !self.may_receive(&m.sender) {
            return;
        }
        let counts = if m.group.is_some() { Some(m.receipt) } else { None };
        out.insert(format!("{} {id}", m.sender), format!("{} {id} v{} {counts:?}", m.sender, m.version));
    }

    /// One conversation mark's receipt, if pending.
    fn take_mark(&mut self, reader: &str, peer: &str, out: &mut Taken) {
        let Some((t, pending)) = self.marks.get_mut(&(reader.to_owned(), peer.to_owned())).filter(|(_, p)| *p) else {
            return;
        };
        *pending = false;
        let t = *t;
        if !self.off.contains(reader) && self.may_receive(peer) {
            out.insert(format!("{peer} conversation {reader}"), format!("{peer} conversation {reader} {t}"));
        }
    }
}

/// Receipts the model expects, by what each is a receipt of.
type Taken = BTreeMap<String, String>;

/// The engine's receipts: by the flush's pass (`flush`, as the worker takes
/// them, staging into `disk`) or taken alone, ahead of a flush; with those
/// its slices since the last took into `buffer`.
fn engine_take(
    state: &mut PartitionState,
    settings: &SettingsTable,
    flush: bool,
    disk: &mut Disk,
    buffer: &mut DeltaBuffer,
) -> BTreeSet<String> {
    if flush {
        state.flush_changes(settings, buffer, |key, entity| disk.stage(key, entity));
    } else {
        state.take_receipts(settings, buffer);
    }
    let mut out = BTreeSet::new();
    for record in buffer.drain() {
        for r in record.receipts {
            if r.msg_id.is_empty() {
                out.insert(format!("{} conversation {} {}", record.to, r.user_id.unwrap(), r.timestamp));
            } else {
                let counts = r.read_count.map(|read| (read, r.unread_count.unwrap()));
                out.insert(format!("{} {} v{} {:?}", record.to, r.msg_id, r.version.unwrap(), counts));
            }
        }
    }
    out
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut state = PartitionState::new();
    let mut settings = SettingsTable::default();
    settings.apply(Setting::AppConfig(AppConfig { retention_days: 1, ..AppConfig::defaults(APP) }));
    let limits = Limits { hold_window_ms: HOLD, max_held_reads: 100_000 };
    let mut fx = Effects::default();
    let mut model = Model { reciprocal: true, ..Model::default() };
    let mut clock = 1_732_200_000_000u64;
    let mut disk = Disk::default();
    // Receipts the slices of the flush under way took, and what the model
    // took for the entities each slice staged, at the same moment.
    let (mut sliced, mut expected_sliced) = (DeltaBuffer::new(), Taken::new());

    for (step, op) in ops.into_iter().enumerate() {
        clock += 1;
        let event = match op {
            Op::Members { g, op, users, av } => {
                let op = [MembersOp::Snapshot, MembersOp::Join, MembersOp::Leave, MembersOp::Dismiss][op as usize];
                let members: Vec<String> = if op == MembersOp::Dismiss {
                    vec![]
                } else {
                    (0..USERS).filter(|i| users & (1 << i) != 0).map(user).collect()
                };
                let group_type =
                    (op == MembersOp::Snapshot).then_some(if av { GroupType::AVChatRoom } else { GroupType::Work });
                Some(Event::GroupMembers(GroupMembers {
                    app_id: APP.into(),
                    group_id: format!("g{g}").into(),
                    op,
                    group_type,
                    members: members.into_iter().map(Id::from).collect(),
                    at: clock,
                }))
            }
            Op::Send { m, sender, group, peer, need, days_back } => {
                let sender_name = user(sender);
                let conversation = match group {
                    Some(g) => Conversation::Group { group_id: format!("g{g}").into() },
                    None if peer % USERS == sender % USERS => Conversation::C2c { peer: user(peer + 1).into() },
                    None => Conversation::C2c { peer: user(peer).into() },
                };
                Some(Event::MessageSent(MessageSent {
                    app_id: APP.into(),
                    msg_id: format!("m{m}").into(),
                    sender: sender_name.into(),
                    conversation,
                    need_read_receipt: need,
                    sent_at: clock - u64::from(days_back) * DAY,
                }))
            }
            Op::Read { reader, msgs, private, right_place, g, peer } => {
                let reader = user(reader);
                let first = format!("m{}", msgs[0]);
                let conversation = match model.messages.get(&first) {
                    Some(m) if right_place => match &m.group {
                        Some(g) => Conversation::Group { group_id: g.clone().into() },
                        None if m.sender != reader => Conversation::C2c { peer: m.sender.clone().into() },
                        None => Conversation::C2c { peer: m.peer.clone().into() },
                    },
                    _ if peer % 2 == 0 => Conversation::Group { group_id: format!("g{g}").into() },
                    _ if user(peer) == reader => Conversation::C2c { peer: user(peer + 1).into() },
                    _ => Conversation::C2c { peer: user(peer).into() },
                };
                Some(Event::MessageRead(MessageRead {
                    app_id: APP.into(),
                    reader: reader.into(),
                    conversation,
                    msg_ids: msgs.iter().map(|m| Id::from(format!("m{m}"))).collect(),
                    read_at: clock,
                    private,
                }))
            }
            Op::ConvRead { reader, peer } => {
                let (reader, peer) =
                    (user(reader), if peer % USERS == reader % USERS { user(peer + 1) } else { user(peer) });
                Some(Event::ConversationRead(ConversationRead {
                    app_id: APP.into(),
                    reader: reader.into(),
                    conversation: Conversation::C2c { peer: peer.into() },
                    read_at: clock,
                }))
            }
            Op::Revoke { m, right } => {
                let msg_id = format!("m{m}");
                let (sender, conversation) = match model.messages.get(&msg_id) {
                    Some(mm) if right => (
                        mm.sender.clone(),
                        match &mm.group {
                            Some(g) => Conversation::Group { group_id: g.clone().into() },
                            None => Conversation::C2c { peer: mm.peer.clone().into() },
                        },
                    ),
                    _ => (user(m), Conversation::Group { group_id: "g0".into() }),
                };
                Some(Event::MessageRevoked(MessageRevoked {
                    app_id: APP.into(),
                    msg_id: msg_id.into(),
                    sender: sender.into(),
                    conversation,
                    at: clock,
                }))
            }
            Op::Toggle { user: u } => {
                let name = user(u);
                let on = model.off.contains(&name);
                if on {
                    model.off.remove(&name);
                } else {
                    model.off.insert(name.clone());
                }
                settings.apply(Setting::UserSettings(UserSettings {
                    app_id: APP.into(),
                    user: name,
                    read_receipts: on,
                    at: 0,
                }));
                None
            }
            Op::Reciprocal => {
                model.reciprocal = !model.reciprocal;
                settings.apply(Setting::AppConfig(AppConfig {
                    retention_days: 1,
                    reciprocal_privacy: model.reciprocal,
                    ..AppConfig::defaults(APP)
                }));
                None
            }
            Op::Flush => {
                let mut expected = std::mem::take(&mut expected_sliced);
                model.take(&mut expected);
                let expected: BTreeSet<String> = expected.into_values().collect();
                // Both ways, mixed: receipts taken alone must not come again
                // with the next flush, and a flush must take them all.
                let flush = step % 2 == 0;
                let actual = engine_take(&mut state, &settings, flush, &mut disk, &mut sliced);
                prop_assert_eq!(actual, expected, "receipts at step {}", step);
                if flush {
                    // Every change is staged now, slices of it included.
                    agree_restored(&disk.restore(state.watermark()), &state, &settings, step)?;
                }
                None
            }
            Op::Stage { max } => {
                let mut staged = Vec::new();
                state.stage_changes(max.into(), &settings, &mut sliced, |key, entity| {
                    disk.stage(key, entity);
                    staged.push(key.clone());
                });
                for key in staged {
                    match key {
                        DirtyKey::Message { msg_id, .. } => model.take_message(&msg_id, &mut expected_sliced),
                        DirtyKey::Mark { reader, peer, .. } => model.take_mark(&reader, &peer, &mut expected_sliced),
                        _ => {}
                    }
                }
                None
            }
            Op::Tick { step } => {
                clock += [1_000, HOLD + 1, DAY / 2, DAY + 1][step as usize];
                None
            }
        };
        if let Some(e) = event {
            model.watermark = model.watermark.max(clock);
            match &e {
                Event::GroupMembers(x) => model.members(x),
                Event::MessageSent(x) => model.send(x),
                Event::MessageRead(x) => {
                    for id in &x.msg_ids {
                        model.read_one(x, id);
                    }
                }
                Event::ConversationRead(x) => model.conversation_read(x),
                Event::MessageRevoked(x) => model.revoke(x),
            }
            state.apply(&settings, &limits, &e, clock, &mut fx);
        }
        // Both sweep after every step.
        model.sweep();
        state.expire_held(&limits, &mut fx);
        state.expire_messages(&settings, &mut fx);

        prop_assert_eq!(state.held_count(), model.held.len(), "held reads at step {}", step);
        let engine_ids: Vec<String> = state.message_ids(APP);
        let model_ids: Vec<String> = model.messages.keys().cloned().collect();
        prop_assert_eq!(&engine_ids, &model_ids, "messages at step {}", step);
        for (id, m) in &model.messages {
            let (read, unread, eligible) = model.counts(m);
            let counts = state.counts(&settings, APP, id).unwrap();
            prop_assert_eq!(counts, (read, unread), "counts of {} at step {}", id, step);
            prop_assert_eq!(
                counts.0 + counts.1,
                eligible,
                "read + unread = eligible audience, {} at step {}",
                id,
                step
            );
            if m.group.is_some() && !m.untracked && !m.revoked {
                let (r, u) = state.group_lists(&settings, APP, id).unwrap();
                let r: BTreeSet<String> = r.into_iter().map(|(u, _)| u).collect();
                let u: BTreeSet<String> = u.into_iter().collect();
                prop_assert_eq!((r, u), model.lists(m), "lists of {} at step {}", id, step);
            }
            // A revoked message's reads are gone, and its version with them
            // (it has no receipts and answers no query).
            let version = if m.revoked { 0 } else { m.version };
            prop_assert_eq!(state.message(APP, id).unwrap().version(), version, "version of {} at step {}", id, step);
        }
        for ((reader, peer), (t, _)) in &model.marks {
            prop_assert_eq!(state.mark(APP, reader, peer), Some(*t));
        }
    }
    Ok(())
}

/// A partition restored from what its flushes staged answers as the live one.
fn agree_restored(
    restored: &PartitionState,
    live: &PartitionState,
    settings: &SettingsTable,
    step: usize,
) -> Result<(), TestCaseError> {
    let ids = live.message_ids(APP);
    prop_assert_eq!(&restored.message_ids(APP), &ids, "restored messages at step {}", step);
    for id in &ids {
        let what = format!("restored {id} at step {step}");
        prop_assert_eq!(restored.counts(settings, APP, id), live.counts(settings, APP, id), "counts of {}", what);
        prop_assert_eq!(
            restored.group_lists(settings, APP, id),
            live.group_lists(settings, APP, id),
            "lists of {}",
            what
        );
        // What is persisted of it (not its flags and caches).
        let persisted = |s: &PartitionState| s.message(APP, id).map(|m| serde_json::to_string(&*m).unwrap());
        prop_assert_eq!(persisted(restored), persisted(live), "{}", what);
    }
    prop_assert_eq!(restored.marks(APP), live.marks(APP), "restored marks at step {}", step);
    prop_assert_eq!(restored.held_count(), live.held_count(), "restored held reads at step {}", step);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, max_shrink_iters: 20_000, ..ProptestConfig::default() })]

    #[test]
    fn the_fold_agrees_with_a_naive_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
