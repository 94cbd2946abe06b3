//! Unit tests of the fold, one per rule of the contract it implements.

use crate::*;
use receiptd_wire::*;

#[path = "../tests/disk/mod.rs"]
mod disk;
use disk::Disk;

const APP: &str = "a1";

struct Harness {
    state: PartitionState,
    settings: SettingsTable,
    limits: Limits,
    fx: Effects,
    clock: u64,
}

impl Harness {
    fn new() -> Self {
        Harness {
            state: PartitionState::new(),
            settings: SettingsTable::default(),
            limits: Limits::default(),
            fx: Effects::default(),
            clock: 1_732_200_000_000,
        }
    }

    fn apply(&mut self, e: Event) {
        self.apply_ahead(&e, ReadAhead::NONE);
    }

    fn apply_ahead(&mut self, e: &Event, ahead: ReadAhead) {
        self.clock += 1;
        self.state.apply_ahead(&self.settings, &self.limits, e, ahead, self.clock, &mut self.fx);
    }

    fn members(&mut self, group: &str, op: MembersOp, members: &[&str]) {
        self.apply(Event::GroupMembers(GroupMembers {
            app_id: APP.into(),
            group_id: group.into(),
            op,
            group_type: (op == MembersOp::Snapshot).then_some(GroupType::Work),
            members: members.iter().map(|&m| Id::from(m)).collect(),
            at: self.clock,
        }));
    }

    fn send_group(&mut self, msg: &str, sender: &str, group: &str) {
        self.send(msg, sender, Conversation::Group { group_id: group.into() }, true);
    }

    fn send(&mut self, msg: &str, sender: &str, conversation: Conversation, need: bool) {
        self.send_at(msg, sender, conversation, need, self.clock);
    }

    /// A send whose send time is not the clock's (a late arrival).
    fn send_at(&mut self, msg: &str, sender: &str, conversation: Conversation, need: bool, sent_at: u64) {
        self.apply(Event::MessageSent(MessageSent {
            app_id: APP.into(),
            msg_id: msg.into(),
            sender: sender.into(),
            conversation,
            need_read_receipt: need,
            sent_at,
        }));
    }

    fn read_group(&mut self, reader: &str, group: &str, msgs: &[&str]) {
        self.read(reader, Conversation::Group { group_id: group.into() }, msgs, false);
    }

    fn read(&mut self, reader: &str, conversation: Conversation, msgs: &[&str], private: bool) {
        self.apply(Event::MessageRead(MessageRead {
            app_id: APP.into(),
            reader: reader.into(),
            conversation,
            msg_ids: msgs.iter().map(|&m| Id::from(m)).collect(),
            read_at: self.clock + 5,
            private,
        }));
    }

    /// `reader` marks their 1:1 conversation with `peer` read up to `read_at`.
    fn mark_read(&mut self, reader: &str, peer: &str, read_at: u64) {
        self.apply(Event::ConversationRead(ConversationRead {
            app_id: APP.into(),
            reader: reader.into(),
            conversation: c2c(peer),
            read_at,
        }));
    }

    fn counts(&self, msg: &str) -> (u32, u32) {
        self.state.counts(&self.settings, APP, msg).expect("message known")
    }

    /// The counts a message's last receipt carried, as the message keeps them.
    fn receipt_counts(&self, msg: &str) -> (u32, u32) {
        self.state.message(APP, msg).expect("message known").receipt_counts
    }

    fn ignored(&self, reason: Ignored) -> u64 {
        self.fx.stats.ignored(reason)
    }

    fn receipts(&mut self) -> Vec<DeltaRecord> {
        let mut buffer = DeltaBuffer::new();
        self.state.take_receipts(&self.settings, &mut buffer);
        as_consumers_see(buffer)
    }

    /// Flushes: the keys of every changed entity, each with the value
    /// handed to storage; the receipts taken on the way.
    fn flush(&mut self) -> (Vec<(DirtyKey, String)>, Vec<DeltaRecord>) {
        let mut buffer = DeltaBuffer::new();
        let mut staged = Vec::new();
        self.state.flush_changes(&self.settings, &mut buffer, |key, entity| {
            staged.push((key.clone(), format!("{entity:?}")));
        });
        (staged, as_consumers_see(buffer))
    }

    fn revoke_group(&mut self, msg: &str, sender: &str, group: &str) {
        self.apply(Event::MessageRevoked(MessageRevoked {
            app_id: APP.into(),
            msg_id: msg.into(),
            sender: sender.into(),
            conversation: Conversation::Group { group_id: group.into() },
            at: 1,
        }));
    }

    /// Flushes into `disk`, as storage does.
    fn flush_to(&mut self, disk: &mut Disk) {
        self.state.flush_changes(&self.settings, &mut DeltaBuffer::new(), |key, entity| disk.stage(key, entity));
    }

    /// The keys of every entity changed since the last flush (flushing).
    fn changed(&mut self) -> Vec<DirtyKey> {
        self.flush().0.into_iter().map(|(key, _)| key).collect()
    }
}

/// Delta records as the wire's consumers see them: through JSON, ids as
/// owned strings.
fn as_consumers_see(mut buffer: DeltaBuffer) -> Vec<DeltaRecord> {
    let json = serde_json::to_vec(&buffer.drain()).expect("delta records serialize");
    serde_json::from_slice(&json).expect("and read back")
}

fn c2c(peer: &str) -> Conversation {
    Conversation::C2c { peer: peer.into() }
}

#[test]
fn group_audience_is_send_time_members_minus_sender() {
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob", "carol", "dave"]);
    h.send_group("m1", "alice", "g1");
    assert_eq!(h.counts("m1"), (0, 3));
    h.read_group("bob", "g1", &["m1"]);
    assert_eq!(h.counts("m1"), (1, 2));
}

#[test]
fn a_member_who_joins_later_is_not_in_the_audience() {
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob"]);
    h.send_group("m1", "alice", "g1");
    h.members("g1", MembersOp::Join, &["erin"]);
    assert_eq!(h.counts("m1"), (0, 1));
    h.read_group("erin", "g1", &["m1"]);
    assert_eq!(h.counts("m1"), (0, 1));
    assert_eq!(h.ignored(Ignored::NotInAudience), 1);
    // A message sent after the join does include erin.
    h.send_group("m2", "alice", "g1");
    assert_eq!(h.counts("m2"), (0, 2));
}

#[test]
fn a_member_who_leaves_before_reading_stops_counting_as_unread() {
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob", "carol", "dave"]);
    h.send_group("m1", "alice", "g1");
    h.read_group("bob", "g1", &["m1"]);
    assert_eq!(h.counts("m1"), (1, 2));
    h.members("g1", MembersOp::Leave, &["carol", "bob"]);
    // carol (unread) is gone from the audience; bob's read stays a read.
    assert_eq!(h.counts("m1"), (1, 1));
    // Rejoining later does not put carol back into m1's audience.
    h.members("g1", MembersOp::Join, &["carol"]);
    assert_eq!(h.counts("m1"), (1, 1));
    h.read_group("carol", "g1", &["m1"]);
    assert_eq!(h.counts("m1"), (1, 1));
    h.read_group("dave", "g1", &["m1"]);
    assert_eq!(h.counts("m1"), (2, 0));
}

/// g1 of `n` members u0.., m1 sent by u0 and read by u1; the names.
fn numbered_group(n: usize) -> (Harness, Vec<String>) {
    let mut h = Harness::new();
    let names: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    h.members("g1", MembersOp::Snapshot, &names.iter().map(String::as_str).collect::<Vec<_>>());
    h.send_group("m1", "u0", "g1");
    h.read_group("u1", "g1", &["m1"]);
    (h, names)
}

#[test]
fn a_group_keeps_counts_for_its_members_not_for_its_history() {
    let (mut h, names) = numbered_group(50);
    // Members leave and rejoin, 20,000 changes: each one rejoined is out of
    // m1's audience, and u1's read stays a read.
    for i in 0..10_000 {
        let who = names[1 + i % 49].as_str();
        h.members("g1", MembersOp::Leave, &[who]);
        h.members("g1", MembersOp::Join, &[who]);
    }
    assert_eq!(h.counts("m1"), (1, 0));
    h.send_group("m2", "u0", "g1");
    assert_eq!(h.counts("m2"), (0, 49));
    let app = h.state.view().app(APP).unwrap();
    let group = app.groups.get("g1").unwrap();
    assert_eq!(group.meta.epoch, 20_001);
    let slots = group.by_epoch.slots();
    assert!(slots <= 2 * 50 + 1, "{slots} slots for 50 members after 20,000 changes");
}

#[test]
fn a_group_at_its_last_epoch_takes_no_more_changes_and_says_so() {
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob"]);
    h.send_group("m1", "alice", "g1");
    // As restored from a store whose group has changed 4,294,967,293 times.
    let mut restored = PartitionState::new();
    restored.restore_group(APP, "g1", GroupMeta { group_type: Some(GroupType::Work), epoch: LAST_EPOCH - 1 });
    restored.restore_member(APP, "g1", 0, "alice", 1).unwrap();
    restored.restore_member(APP, "g1", 1, "bob", LAST_EPOCH - 1).unwrap();
    restored.restore_message(APP, "m1", h.state.message(APP, "m1").unwrap().clone(), 0);
    restored.finish_restore().expect("a group one change short of its last epoch");
    h.state = restored;
    assert_eq!(h.counts("m1"), (0, 0), "bob rejoined after m1");
    h.members("g1", MembersOp::Join, &["carol"]);
    h.send_group("m2", "alice", "g1");
    assert_eq!(h.counts("m2"), (0, 2));
    h.members("g1", MembersOp::Leave, &["bob"]);
    assert_eq!(h.ignored(Ignored::EpochsExhausted), 1);
    assert_eq!(h.counts("m2"), (0, 2), "bob's leave was not folded");
    h.members("g1", MembersOp::Dismiss, &[]);
    assert_eq!(h.state.counts(&h.settings, APP, "m2"), None, "a dismiss still drops the group and its messages");
    h.members("g1", MembersOp::Snapshot, &["alice", "bob"]);
    h.send_group("m3", "alice", "g1");
    assert_eq!(h.counts("m3"), (0, 1), "the group of the same id starts over");
}

#[test]
fn snapshot_replaces_the_member_set() {
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob", "carol"]);
    h.members("g1", MembersOp::Snapshot, &["alice", "carol", "zed"]);
    h.send_group("m1", "alice", "g1");
    assert_eq!(h.counts("m1"), (0, 2));
    h.read_group("bob", "g1", &["m1"]);
    assert_eq!(h.ignored(Ignored::NotInAudience), 1);
    let (read, unread) = h.state.group_lists(&h.settings, APP, "m1").unwrap();
    assert!(read.is_empty());
    // In ordinal order: zed took bob's, as bob left having read nothing.
    assert_eq!(unread, vec!["zed".to_string(), "carol".to_string()]);
}

#[test]
fn a_flush_stages_each_changed_entity_and_takes_its_receipt_once() {
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob", "carol"]);
    h.send_group("m1", "alice", "g1");
    h.send_group("m2", "alice", "g1");
    h.changed();
    h.read_group("bob", "g1", &["m1", "m2"]);
    h.read_group("carol", "g1", &["m1"]);
    h.mark_read("bob", "alice", 9);
    let (staged, records) = h.flush();
    let keys: Vec<String> = staged.iter().map(|(key, _)| format!("{key:?}")).collect();
    assert_eq!(keys.len(), 3, "m1, m2 and the mark, each once: {keys:?}");
    // Staged with the value after every read of the window.
    assert!(staged[0].1.contains("visible_reads: 2"), "{}", staged[0].1);
    assert_eq!(records.len(), 1);
    let r = &records[0].receipts;
    let summary: Vec<_> = r.iter().map(|r| (r.msg_id.as_str(), r.read_count, r.unread_count, r.version)).collect();
    assert_eq!(summary, [("m1", Some(2), Some(0), Some(2)), ("m2", Some(1), Some(1), Some(1)), ("", None, None, None)]);
    assert_eq!(h.flush(), (vec![], vec![]), "nothing changed since, nothing to take");

    // Receipts taken ahead of the flush leave the entity changed for it,
    // and are not taken twice.
    h.read_group("carol", "g1", &["m2"]);
    let early = h.receipts();
    assert_eq!(early[0].receipts[0].read_count, Some(2));
    let (staged, records) = h.flush();
    assert_eq!(staged.len(), 1);
    assert!(records.is_empty(), "taken already: {records:?}");
}

#[test]
fn reads_are_idempotent() {
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob", "carol"]);
    h.send_group("m1", "alice", "g1");
    h.read_group("bob", "g1", &["m1"]);
    h.read_group("bob", "g1", &["m1", "m1"]);
    assert_eq!(h.counts("m1"), (1, 1));
    assert_eq!(h.ignored(Ignored::Duplicate), 2);
    assert_eq!(h.state.message(APP, "m1").unwrap().version(), 1);
}

#[test]
fn sender_outsider_and_unrequested_reads_change_nothing_and_are_counted() {
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob"]);
    h.send_group("m1", "alice", "g1");
    h.send("m2", "alice", Conversation::Group { group_id: "g1".into() }, false);
    h.read_group("alice", "g1", &["m1"]);
    h.read_group("mallory", "g1", &["m1"]);
    h.read_group("bob", "g1", &["m2"]);
    assert_eq!(h.counts("m1"), (0, 1));
    assert_eq!(h.ignored(Ignored::Sender), 1);
    assert_eq!(h.ignored(Ignored::NotInAudience), 1);
    assert_eq!(h.ignored(Ignored::NoReceiptRequested), 1);
    assert!(h.receipts().is_empty());
    // A read naming the message under another conversation is not in its audience.
    h.members("g2", MembersOp::Snapshot, &["alice", "bob"]);
    h.read_group("bob", "g2", &["m1"]);
    assert_eq!(h.ignored(Ignored::NotInAudience), 2);
}

#[test]
fn one_read_of_several_messages_judges_each_as_its_own_read() {
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob"]);
    h.members("g2", MembersOp::Snapshot, &["alice", "bob", "carol"]);
    h.send_group("m1", "alice", "g1");
    h.members("g1", MembersOp::Join, &["carol"]);
    h.send_group("m2", "alice", "g1");
    h.send_group("m3", "carol", "g1");
    h.send_group("m4", "alice", "g2");
    // carol joined g1 after m1 and sent m3; m4 is in another group; m9 is
    // not sent yet; m2 is named twice. The reader's group and ordinal are
    // looked up once for the event, and each message still judged alone.
    h.read_group("carol", "g1", &["m9", "m1", "m2", "m3", "m4", "m2"]);
    assert_eq!(h.counts("m1"), (0, 1));
    assert_eq!(h.counts("m2"), (1, 1));
    assert_eq!(h.counts("m3"), (0, 2));
    assert_eq!(h.counts("m4"), (0, 2));
    assert_eq!(h.ignored(Ignored::NotInAudience), 2, "m1 and m4");
    assert_eq!(h.ignored(Ignored::Sender), 1, "m3");
    assert_eq!(h.ignored(Ignored::Duplicate), 1, "m2 again");
    assert_eq!(h.state.held_count(), 1, "m9");
    assert_eq!(h.fx.stats.events[2][Outcome::Applied as usize], 1);
    h.read_group("bob", "g1", &["m9"]);
    h.send_group("m9", "alice", "g1");
    assert_eq!(h.counts("m9"), (2, 0), "both held reads of m9 applied on arrival, each as its reader's");
    // A reader with receipts off: every message of the event hidden.
    receipts_switch(&mut h, "bob", false);
    h.read_group("bob", "g1", &["m2", "m9", "m3"]);
    assert_eq!(h.counts("m2"), (1, 1));
    assert_eq!(h.counts("m3"), (0, 2));
    assert_eq!(h.fx.stats.hidden_reads, 2, "m2 and m3; bob read m9 already");
    // A read of messages of a group not known: each not in the audience.
    h.read_group("bob", "g7", &["m2", "m4"]);
    assert_eq!(h.ignored(Ignored::NotInAudience), 4);
    // The first message unknown, the rest folded after it is held.
    h.read_group("carol", "g2", &["m10", "m4"]);
    assert_eq!(h.counts("m4"), (1, 1));
    assert_eq!(h.state.held_count(), 1, "m10");
}

#[test]
fn a_read_before_its_message_is_held_and_applied_on_arrival() {
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob", "carol"]);
    h.read_group("bob", "g1", &["m1"]);
    assert_eq!(h.state.held_count(), 1);
    assert_eq!(h.fx.stats.events[2][Outcome::Held as usize], 1);
    h.send_group("m1", "alice", "g1");
    assert_eq!(h.state.held_count(), 0);
    assert_eq!(h.counts("m1"), (1, 1));
    let deltas = h.receipts();
    assert_eq!(deltas.len(), 1);
    assert_eq!(deltas[0].receipts[0].version, Some(1));
}

#[test]
fn held_reads_expire_after_the_window_and_the_buffer_is_bounded() {
    let mut h = Harness::new();
    h.limits = Limits { hold_window_ms: 1_000, max_held_reads: 2 };
    h.members("g1", MembersOp::Snapshot, &["alice", "bob", "carol", "dave"]);
    h.read_group("bob", "g1", &["m1"]);
    h.read_group("carol", "g1", &["m2"]);
    h.read_group("dave", "g1", &["m3"]);
    assert_eq!(h.state.held_count(), 2);
    assert_eq!(h.ignored(Ignored::HoldOverflow), 1);
    // Past the window (record time), the held reads no longer apply.
    h.clock += 5_000;
    h.send_group("m1", "alice", "g1");
    assert_eq!(h.counts("m1"), (0, 3));
    assert_eq!(h.ignored(Ignored::HoldExpired), 1);
    // The sweep frees the rest, and room returns.
    h.state.expire_held(&h.limits, &mut h.fx);
    assert_eq!(h.state.held_count(), 0);
    assert_eq!(h.ignored(Ignored::HoldExpired), 2);
    h.read_group("dave", "g1", &["m9"]);
    assert_eq!(h.state.held_count(), 1);
}

#[test]
fn conversation_read_is_a_monotonic_mark_sent_to_the_peer() {
    let mut h = Harness::new();
    h.mark_read("bob", "alice", 2_000);
    h.mark_read("bob", "alice", 1_500);
    assert_eq!(h.state.mark(APP, "bob", "alice"), Some(2_000));
    assert_eq!(h.ignored(Ignored::StaleMark), 1);
    let deltas = h.receipts();
    assert_eq!(deltas.len(), 1);
    assert_eq!(deltas[0].to, "alice");
    assert_eq!(deltas[0].receipts, vec![Receipt::conversation("bob".into(), 2_000)]);
}

#[test]
fn c2c_message_read_by_the_peer() {
    let mut h = Harness::new();
    h.send("m1", "alice", c2c("bob"), true);
    h.read("carol", c2c("alice"), &["m1"], false);
    assert_eq!(h.ignored(Ignored::NotInAudience), 1);
    h.read("bob", c2c("alice"), &["m1"], false);
    assert_eq!(h.counts("m1"), (1, 0));
    let deltas = h.receipts();
    assert_eq!(deltas[0].to, "alice");
    let r = &deltas[0].receipts[0];
    assert_eq!((r.user_id.as_deref(), r.is_peer_read, r.version), (Some("bob"), Some(true), Some(1)));
}

#[test]
fn versions_grow_per_change_and_receipts_coalesce_per_flush() {
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob", "carol", "dave"]);
    h.send_group("m1", "alice", "g1");
    h.send_group("m2", "alice", "g1");
    h.read_group("bob", "g1", &["m1", "m2"]);
    h.read_group("carol", "g1", &["m1"]);
    let deltas = h.receipts();
    // One record for alice, one receipt per message with the latest counts.
    assert_eq!(deltas.len(), 1);
    let r = &deltas[0].receipts;
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0].msg_id.as_str(), r[0].read_count, r[0].unread_count, r[0].version),
        ("m1", Some(2), Some(1), Some(2))
    );
    assert_eq!(
        (r[1].msg_id.as_str(), r[1].read_count, r[1].unread_count, r[1].version),
        ("m2", Some(1), Some(2), Some(1))
    );
    h.read_group("dave", "g1", &["m1"]);
    let next = h.receipts();
    assert_eq!(next[0].receipts[0].version, Some(3));
    assert_eq!(next[0].receipts[0].unread_count, Some(0));
    assert!(h.receipts().is_empty());
}

#[test]
fn apps_are_isolated() {
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob"]);
    h.send_group("m1", "alice", "g1");
    // The same ids in another app are another world.
    h.apply(Event::MessageRead(MessageRead {
        app_id: "a2".into(),
        reader: "bob".into(),
        conversation: Conversation::Group { group_id: "g1".into() },
        msg_ids: vec!["m1".into()],
        read_at: 1,
        private: false,
    }));
    assert_eq!(h.counts("m1"), (0, 1));
    assert_eq!(h.state.held_count(), 1);
    assert!(h.state.counts(&h.settings, "a2", "m1").is_none());
}

#[test]
fn private_reads_are_kept_but_never_revealed() {
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob", "carol"]);
    h.send_group("m1", "alice", "g1");
    h.read("bob", Conversation::Group { group_id: "g1".into() }, &["m1"], true);
    assert_eq!(h.counts("m1"), (0, 2));
    assert!(h.receipts().is_empty());
    assert_eq!(h.fx.stats.hidden_reads, 1);
    // Reading again in public does not reveal it: the read already happened.
    h.read_group("bob", "g1", &["m1"]);
    assert_eq!(h.counts("m1"), (0, 2));
}

#[test]
fn revocation_and_dismissal_do_not_crash_and_drop_state() {
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob"]);
    h.send_group("m1", "alice", "g1");
    h.revoke_group("m1", "alice", "g1");
    h.read_group("bob", "g1", &["m1"]);
    assert_eq!(h.ignored(Ignored::Revoked), 1);
    h.members("g1", MembersOp::Dismiss, &[]);
    assert!(h.state.message(APP, "m1").is_none());
    h.members("g9", MembersOp::Leave, &["x"]);
    assert_eq!(h.ignored(Ignored::UnknownTarget), 1);
}

#[test]
fn reads_of_a_message_to_an_unknown_group_say_so() {
    let mut h = Harness::new();
    h.send_group("m1", "alice", "nowhere");
    h.read_group("bob", "nowhere", &["m1"]);
    assert_eq!(h.ignored(Ignored::UnknownGroup), 1);
    assert_eq!(h.state.held_count(), 0);
}

/// What storage does: persist dirty entities, restore into a fresh state.
#[test]
fn persisted_entities_restore_to_the_same_state() {
    let mut h = Harness::new();
    let mut disk = Disk::default();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob", "carol", "dave"]);
    h.send_group("m1", "alice", "g1");
    h.read_group("bob", "g1", &["m1"]);
    h.flush_to(&mut disk);
    h.members("g1", MembersOp::Leave, &["carol"]);
    h.read_group("dave", "g1", &["m7"]);
    h.mark_read("bob", "alice", 9);
    h.flush_to(&mut disk);

    let restored = disk.restore(h.state.watermark());
    assert_eq!(restored.counts(&h.settings, APP, "m1"), h.state.counts(&h.settings, APP, "m1"));
    assert_eq!(restored.group_lists(&h.settings, APP, "m1"), h.state.group_lists(&h.settings, APP, "m1"));
    assert_eq!(restored.held_count(), 1);
    assert_eq!(restored.mark(APP, "bob", "alice"), Some(9));
    // Folding on from the restored state behaves like the original.
    let mut h2 = Harness { state: restored, ..Harness::new() };
    h2.clock = h.clock;
    h.send_group("m7", "alice", "g1");
    h2.send_group("m7", "alice", "g1");
    assert_eq!(h2.counts("m7"), h.counts("m7"));
    assert_eq!(h2.counts("m7"), (1, 1));
}

/// The ordinal `user` holds in `group`, and how many ordinals it has handed out.
fn ordinal_of(state: &PartitionState, group: &str, user: &str) -> (Option<u32>, usize) {
    let app = state.view().app(APP).unwrap();
    let g = app.groups.get(group).unwrap();
    (g.ordinal(user), g.users.len())
}

#[test]
fn an_ordinal_changes_hands_only_once_no_live_message_holds_a_read_by_it() {
    let mut h = Harness::new();
    let mut disk = Disk::default();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob", "carol"]);
    h.send_group("m1", "alice", "g1");
    h.read_group("bob", "g1", &["m1"]);
    h.members("g1", MembersOp::Leave, &["bob", "carol"]);
    // carol read nothing: dave takes her ordinal. m1 holds bob's read.
    h.members("g1", MembersOp::Join, &["dave", "erin"]);
    assert_eq!(ordinal_of(&h.state, "g1", "dave"), (Some(2), 4));
    assert_eq!(ordinal_of(&h.state, "g1", "carol").0, None);
    assert_eq!(ordinal_of(&h.state, "g1", "erin").0, Some(3));
    let (read, unread) = h.state.group_lists(&h.settings, APP, "m1").unwrap();
    assert_eq!((read.len(), read[0].0.as_str(), unread.len()), (1, "bob", 0), "dave is not m1's audience");
    h.flush_to(&mut disk);

    // Revoked, m1 holds no read: bob's ordinal is free, restored or not.
    h.revoke_group("m1", "alice", "g1");
    h.flush_to(&mut disk);
    let mut restored = Harness { state: disk.restore(h.state.watermark()), ..Harness::new() };
    for h in [&mut h, &mut restored] {
        h.members("g1", MembersOp::Join, &["frank", "gina"]);
        assert_eq!(ordinal_of(&h.state, "g1", "frank"), (Some(1), 5));
        assert_eq!(ordinal_of(&h.state, "g1", "gina").0, Some(4));
        assert_eq!(ordinal_of(&h.state, "g1", "bob").0, None);
        h.send_group("m2", "alice", "g1");
        h.read_group("frank", "g1", &["m2"]);
        assert_eq!(h.counts("m2"), (1, 3));
    }
}

#[test]
fn a_group_whose_members_turn_over_keeps_a_table_for_its_members_and_readers() {
    let (mut h, mut present) = numbered_group(20);
    // 5,000 times a member leaves and a newcomer takes the place.
    for i in 0..5_000 {
        let k = 1 + i % 19;
        h.members("g1", MembersOp::Leave, &[&present[k]]);
        present[k] = format!("new{i}");
        h.members("g1", MembersOp::Join, &[&present[k]]);
    }
    // 20 members, and u1, whose read m1 still holds.
    assert_eq!(ordinal_of(&h.state, "g1", "u0").1, 21);
    assert_eq!(h.counts("m1"), (1, 0));
    let (read, _) = h.state.group_lists(&h.settings, APP, "m1").unwrap();
    assert_eq!(read[0].0, "u1");
}

#[test]
fn restoring_refuses_what_no_fold_could_have_written() {
    // g1 at epoch 1: alice 0, bob 1, carol 2, dave 3; m1 read by bob and dave.
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob", "carol", "dave"]);
    h.send_group("m1", "alice", "g1");
    h.read_group("bob", "g1", &["m1"]);
    h.read_group("dave", "g1", &["m1"]);
    let m1 = h.state.message(APP, "m1").unwrap().clone();
    let meta = |epoch| GroupMeta { group_type: Some(GroupType::Work), epoch };
    let slot = |ordinal| DirtyKey::Member { app: APP.into(), group_id: "g1".into(), ordinal };
    let message_key = DirtyKey::Message { app: APP.into(), msg_id: "m1".into() };
    let names = ["alice", "bob", "carol", "dave"];
    // A group restored with `slots` of its members, then m1 as given.
    let restore = |epoch: u32, slots: usize, m: Option<&MessageState>| -> Result<PartitionState, RestoreError> {
        let mut restored = PartitionState::new();
        restored.restore_group(APP, "g1", meta(epoch));
        for (ordinal, name) in names.iter().enumerate().take(slots) {
            restored.restore_member(APP, "g1", ordinal as u32, name, 0)?;
        }
        if let Some(m) = m {
            restored.restore_message(APP, "m1", m.clone(), 0);
        }
        restored.finish_restore()?;
        Ok(restored)
    };
    let restored = restore(1, 4, Some(&m1)).expect("what the fold holds restores");
    assert_eq!(restored.counts(&h.settings, APP, "m1"), Some((2, 1)));

    let refused = |result: Result<(), RestoreError>, key: &DirtyKey, problem: &str| {
        let e = result.expect_err(problem);
        assert_eq!((&e.key, e.to_string().as_str()), (key, problem));
    };
    let mut state = PartitionState::new();
    refused(state.restore_member(APP, "g1", 0, "alice", 1), &slot(0), "a member slot of a group with no header");
    state.restore_group(APP, "g1", meta(1));
    refused(state.restore_member(APP, "g1", 1, "bob", 1), &slot(1), "member slot 1 where slot 0 comes next");
    state.restore_member(APP, "g1", 0, "alice", NOT_A_MEMBER).expect("a slot of a member who left");
    refused(state.restore_member(APP, "g1", 1, "alice", 1), &slot(1), "\"alice\" holds slot 0 already");
    state.restore_member(APP, "g1", 1, "bob", 2).expect("checked with the group's epoch, at the end");
    refused(state.finish_restore(), &slot(1), "a member since epoch 2 of a group at epoch 1");
    let mut state = PartitionState::new();
    state.restore_group(APP, "g1", meta(NOT_A_MEMBER));
    let header = DirtyKey::Group { app: APP.into(), group_id: "g1".into() };
    refused(state.finish_restore(), &header, "a group at epoch 4294967295, past the last, 4294967294");

    let refused_message = |result: Result<PartitionState, RestoreError>, problem: &str| {
        refused(result.map(drop), &message_key, problem);
    };
    refused_message(restore(0, 4, Some(&m1)), "sent at epoch 1 of group \"g1\", which is at epoch 0");
    refused_message(restore(1, 3, Some(&m1)), "read by ordinal 3 of group \"g1\", which has 3 member slots");
    let mut own = m1.clone();
    own.sender = "bob".into();
    refused_message(restore(1, 4, Some(&own)), "read by its sender, ordinal 1");
    let mut elsewhere = m1.clone();
    elsewhere.target = MessageTarget::Group { group_id: "g2".into(), audience_epoch: 1 };
    refused_message(restore(1, 4, Some(&elsewhere)), "a tracked message of group \"g2\", which is not stored");
    elsewhere.tracking = Tracking::UnknownGroup;
    refused_message(restore(1, 4, Some(&elsewhere)), "an untracked message (UnknownGroup) with 2 readers");
    (elsewhere.readers, elsewhere.visible_reads) = (Readers::default(), 0);
    restore(1, 4, Some(&elsewhere)).expect("an untracked message of a group never known");
    let mut c2c = m1;
    c2c.target = MessageTarget::C2c { peer: "bob".into() };
    refused_message(restore(1, 4, Some(&c2c)), "a C2C message read by ordinal 3; only its peer, 0, reads it");
}

#[test]
fn the_list_of_changed_keys_keeps_a_usual_flush_s_room_and_no_more() {
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob"]);
    let staged_in_slices = |h: &mut Harness, messages: usize| {
        for i in 0..messages {
            h.send_group(&format!("m{messages}-{i}"), "alice", "g1");
        }
        let (mut staged, mut deltas) = (0, DeltaBuffer::new());
        while h.state.has_dirty() {
            staged += h.state.stage_changes(7, &h.settings, &mut deltas, |_, _| {});
        }
        assert!(staged >= messages, "every message staged once, in slices of 7: {staged} of {messages}");
        assert!(h.state.dirty.is_empty());
        h.state.dirty.capacity()
    };
    // Taken a slice at a time, the keys stayed listed until the last: the
    // next flush starts with their room instead of growing into it.
    assert!(staged_in_slices(&mut h, 100) >= 100);
    // One huge flush keeps no more than a usual one's.
    assert!(staged_in_slices(&mut h, crate::state::RETAINED_KEYS + 100) <= crate::state::RETAINED_KEYS);
}

#[test]
fn a_flush_staged_in_slices_persists_every_change_and_takes_one_receipt_per_message() {
    let mut h = Harness::new();
    let mut disk = Disk::default();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob", "carol", "dave"]);
    h.send_group("m1", "alice", "g1");
    h.send_group("m2", "alice", "g1");
    h.read_group("bob", "g1", &["m1", "m2"]);
    h.mark_read("bob", "alice", 9);
    // One entity per slice, with the fold going on between slices: m1 (its
    // receipt taken) and the group change again after their slice.
    let (mut slices, mut deltas) = (0, DeltaBuffer::new());
    let mut changed_again = false;
    while h.state.changed_count() > 1 {
        let mut m1_staged = false;
        slices += h.state.stage_changes(1, &h.settings, &mut deltas, |key, entity| {
            m1_staged = matches!(key, DirtyKey::Message { msg_id, .. } if &**msg_id == "m1");
            disk.stage(key, entity)
        });
        if m1_staged && !changed_again {
            assert_eq!(deltas.len(), 1, "m1's receipt taken by its slice");
            h.read_group("carol", "g1", &["m1"]);
            h.members("g1", MembersOp::Leave, &["dave"]);
            changed_again = true;
        }
    }
    assert!(changed_again && slices > 2, "the flush took several slices");
    h.state.flush_changes(&h.settings, &mut deltas, |key, entity| disk.stage(key, entity));
    assert!(!h.state.has_dirty());

    let records = as_consumers_see(deltas);
    let mut receipts: Vec<_> = records
        .iter()
        .flat_map(|r| &r.receipts)
        .map(|r| (r.msg_id.as_str(), r.read_count, r.unread_count, r.version))
        .collect();
    receipts.sort();
    // The latest of each, once: m1's second read came after its slice (a
    // leave changes what queries count, not the receipt's version).
    assert_eq!(
        receipts,
        [("", None, None, None), ("m1", Some(2), Some(1), Some(2)), ("m2", Some(1), Some(2), Some(1))]
    );
    assert_eq!(h.counts("m1"), (2, 0));

    let restored = disk.restore(h.state.watermark());
    for msg in ["m1", "m2"] {
        assert_eq!(restored.counts(&h.settings, APP, msg), h.state.counts(&h.settings, APP, msg), "{msg}");
        assert_eq!(restored.group_lists(&h.settings, APP, msg), h.state.group_lists(&h.settings, APP, msg));
    }
    assert_eq!(restored.mark(APP, "bob", "alice"), Some(9));
    let (mut deltas, mut disk_after) = (DeltaBuffer::new(), Disk::default());
    assert_eq!(h.state.flush_changes(&h.settings, &mut deltas, |k, e| disk_after.stage(k, e)), 0);
    assert!(deltas.is_empty(), "nothing taken twice");
}

#[test]
fn demo_traffic_releases_its_early_reads() {
    use receiptd_loadgen::{Traffic, TrafficShape};
    let mut traffic = Traffic::new(TrafficShape::demo());
    let mut h = Harness::new();
    for e in traffic.take(200_000) {
        h.apply(e);
    }
    // Only reads whose message the generator has not emitted yet may wait.
    assert!(h.state.held_count() < 20, "held {}", h.state.held_count());
}

#[test]
fn looking_events_up_ahead_changes_nothing() {
    use receiptd_loadgen::{Traffic, TrafficShape};
    let events = Traffic::new(TrafficShape::demo()).take(60_000);
    // Every flush's staged values and receipts, folding with or without
    // each run of events looked up first, as the worker does.
    let run = |prefetch: bool| {
        let (mut h, mut flushes) = (Harness::new(), Vec::new());
        for (i, run) in events.chunks(PREFETCH_AHEAD).enumerate() {
            let mut ahead = [ReadAhead::NONE; PREFETCH_AHEAD];
            if prefetch {
                run.iter().zip(&mut ahead).for_each(|(e, ahead)| *ahead = h.state.prefetch(e));
            }
            run.iter().zip(ahead).for_each(|(e, ahead)| h.apply_ahead(e, ahead));
            if i % 100 == 99 {
                flushes.push(h.flush());
            }
        }
        flushes.push(h.flush());
        flushes
    };
    let (plain, prefetched) = (run(false), run(true));
    assert!(plain.iter().map(|(staged, _)| staged.len()).sum::<usize>() > 10_000, "the mix changes state");
    assert_eq!(plain, prefetched);
}

/// What a read's walk ahead found is not taken once the group changed
/// after it: here the reader leaves between the walk and the fold, a
/// newcomer takes the reader's ordinal and the message is sent, and the
/// read is refused as it is without the walk (taken, it would count as
/// the newcomer's). Nor is it taken for another event, or after a staging.
#[test]
fn a_reader_found_ahead_is_looked_up_again_after_the_group_changed() {
    let read = |reader: &str, msg: &str| {
        Event::MessageRead(MessageRead {
            app_id: APP.into(),
            reader: reader.into(),
            conversation: Conversation::Group { group_id: "g".into() },
            msg_ids: vec![msg.into()],
            read_at: 0,
            private: false,
        })
    };
    let mut h = Harness::new();
    h.members("g", MembersOp::Snapshot, &["a", "b", "c"]);
    let by_b = read("b", "m1");
    let ahead = h.state.prefetch(&by_b);
    h.members("g", MembersOp::Leave, &["b"]);
    h.members("g", MembersOp::Join, &["d"]);
    h.send_group("m1", "a", "g");
    h.apply_ahead(&by_b, ahead);
    assert_eq!(h.ignored(Ignored::NotInAudience), 1, "b left before the fold");

    // Found for one event, handed with another: looked up again.
    let (by_c, by_d) = (read("c", "m1"), read("d", "m1"));
    let ahead = h.state.prefetch(&by_d);
    h.apply_ahead(&by_c, ahead);
    assert_eq!(h.receipt_counts("m1"), (1, 1), "c's read, as c's, and none by d through b's");
    let ahead = h.state.prefetch(&by_d);
    h.apply_ahead(&by_d, ahead);
    assert_eq!(h.receipt_counts("m1"), (2, 0));
    assert_eq!(h.ignored(Ignored::Duplicate), 0);

    // A staging moves the epoch on too; the fold still finds the reader.
    h.send_group("m2", "a", "g");
    let by_d = read("d", "m2");
    let ahead = h.state.prefetch(&by_d);
    h.flush();
    h.apply_ahead(&by_d, ahead);
    assert_eq!(h.receipt_counts("m2"), (1, 1), "d's read; c has not read");
}

#[test]
fn a_receipt_is_fixed_by_its_version_whatever_the_flush_window() {
    // Two runs of the same log, flushed at different points: the receipt of
    // each version is the same, although a member leaves in between.
    let run = |flush_early: bool| {
        let mut h = Harness::new();
        h.members("g1", MembersOp::Snapshot, &["alice", "bob", "carol", "dave"]);
        h.send_group("m1", "alice", "g1");
        h.read_group("bob", "g1", &["m1"]);
        let mut out = if flush_early { h.receipts() } else { Vec::new() };
        h.members("g1", MembersOp::Leave, &["carol"]);
        out.extend(h.receipts());
        assert_eq!(h.counts("m1"), (1, 1), "queries show the current counts");
        out
    };
    assert_eq!(run(true), run(false));
    assert_eq!(run(true)[0].receipts[0].unread_count, Some(2));
}

/// An app keeping messages for a day, and `m1` sent by alice to g1 (alice,
/// bob and carol).
fn one_day_retention_with_m1() -> Harness {
    let mut h = Harness::new();
    h.settings.apply(Setting::AppConfig(AppConfig { retention_days: 1, ..AppConfig::defaults(APP) }));
    h.members("g1", MembersOp::Snapshot, &["alice", "bob", "carol"]);
    h.send_group("m1", "alice", "g1");
    h
}

#[test]
fn retention_drops_old_messages_and_never_tracks_late_ones() {
    let mut h = one_day_retention_with_m1();
    h.clock += 2 * 86_400_000;
    // A read two days later: past retention, changes nothing.
    h.read_group("bob", "g1", &["m1"]);
    assert_eq!(h.ignored(Ignored::Expired), 1);
    // A message arriving with a send time already past retention.
    let late = h.clock - 3 * 86_400_000;
    h.send_at("m2", "alice", Conversation::Group { group_id: "g1".into() }, true, late);
    assert!(h.state.message(APP, "m2").is_none());
    assert_eq!(h.ignored(Ignored::Expired), 2);
    h.send_group("m3", "alice", "g1");
    h.changed();
    h.state.expire_messages(&h.settings, &mut h.fx);
    assert!(h.state.message(APP, "m1").is_none());
    assert!(h.state.message(APP, "m3").is_some());
    assert_eq!(h.fx.stats.expired_messages, 1);
    assert_eq!(h.changed(), vec![DirtyKey::Message { app: APP.into(), msg_id: "m1".into() }]);
}

#[test]
fn messages_of_a_second_the_cutoff_falls_in_expire_each_in_its_turn() {
    let mut h = one_day_retention_with_m1();
    // A second boundary 10 s after m1 was sent.
    let (second, day) = ((h.clock / 1_000 + 10) * 1_000, 86_400_000);
    let g1 = || Conversation::Group { group_id: "g1".into() };
    h.clock = second;
    h.send_at("m2", "alice", g1(), true, second + 100);
    h.send_at("m3", "alice", g1(), true, second + 900);
    // The watermark a day after the middle of that second.
    h.clock = second + 500 + day - 1;
    h.read_group("bob", "g1", &["m3"]);
    h.state.expire_messages(&h.settings, &mut h.fx);
    assert!(h.state.message(APP, "m1").is_none() && h.state.message(APP, "m2").is_none());
    assert!(h.state.message(APP, "m3").is_some(), "sent after the cutoff, in the same second");
    assert_eq!(h.fx.stats.expired_messages, 2);
    // A second later, its turn.
    h.clock += 1_000;
    h.read_group("carol", "g1", &["m1"]);
    h.state.expire_messages(&h.settings, &mut h.fx);
    assert!(h.state.message(APP, "m3").is_none(), "the entry of its second was kept for it");
    assert_eq!(h.fx.stats.expired_messages, 3);
}

#[test]
fn a_message_sent_again_is_a_duplicate_and_the_first_stays() {
    let mut h = one_day_retention_with_m1();
    h.read_group("bob", "g1", &["m1"]);
    h.changed();
    // The same id again, from someone else, and again with a send time
    // past retention: duplicates both, and nothing changes.
    h.send_group("m1", "carol", "g1");
    let late = h.clock - 3 * 86_400_000;
    h.send_at("m1", "carol", Conversation::Group { group_id: "g1".into() }, true, late);
    assert_eq!(h.ignored(Ignored::DuplicateMessage), 2);
    assert_eq!(h.ignored(Ignored::Expired), 0);
    assert_eq!(&*h.state.message(APP, "m1").unwrap().sender, "alice");
    assert_eq!(h.counts("m1"), (1, 1));
    assert!(h.changed().is_empty());
}

fn receipts_switch(h: &mut Harness, user: &str, on: bool) {
    h.settings.apply(Setting::UserSettings(UserSettings {
        app_id: APP.into(),
        user: user.into(),
        read_receipts: on,
        at: 0,
    }));
}

#[test]
fn a_user_with_receipts_off_is_never_revealed_and_such_reads_stay_hidden() {
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob", "carol", "dave"]);
    h.send_group("m1", "alice", "g1");
    h.read_group("carol", "g1", &["m1"]);
    receipts_switch(&mut h, "bob", false);
    h.read_group("bob", "g1", &["m1"]);
    assert_eq!(h.counts("m1"), (1, 2), "bob's read is hidden: he counts as unread");
    let deltas = h.receipts();
    assert_eq!(deltas[0].receipts[0].read_count, Some(1));
    // Turned back on: the read made while off stays hidden.
    receipts_switch(&mut h, "bob", true);
    assert_eq!(h.counts("m1"), (1, 2));
    let (read, unread) = h.state.group_lists(&h.settings, APP, "m1").unwrap();
    assert_eq!(read.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(), ["carol"]);
    assert_eq!(unread, ["bob", "dave"]);
    // A read made in public is hidden while its reader has receipts off.
    receipts_switch(&mut h, "carol", false);
    assert_eq!(h.counts("m1"), (0, 3));
    assert_eq!(h.state.group_lists(&h.settings, APP, "m1").unwrap().0, vec![]);
}

#[test]
fn an_unread_count_taken_while_someone_is_off_does_not_outlive_their_switch() {
    // The model test found this: the unread count cached per membership
    // epoch was also taken while a reader had receipts off, and then served
    // once they turned them back on.
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob", "carol", "dave"]);
    h.send_group("m1", "alice", "g1");
    h.read_group("bob", "g1", &["m1"]);
    h.members("g1", MembersOp::Snapshot, &["alice", "bob", "carol", "dave"]);
    receipts_switch(&mut h, "bob", false);
    h.read_group("carol", "g1", &["m1"]);
    assert_eq!(h.counts("m1"), (1, 2), "bob's read is not revealed while he is off");
    receipts_switch(&mut h, "bob", true);
    assert_eq!(h.counts("m1"), (2, 1), "back on, his read (made in public) counts again");
    let (read, unread) = h.state.group_lists(&h.settings, APP, "m1").unwrap();
    assert_eq!(read.len() as u32, 2);
    assert_eq!(unread, ["dave"]);
}

#[test]
fn with_reciprocal_privacy_a_user_with_receipts_off_gets_no_receipts() {
    let mut h = Harness::new();
    h.members("g1", MembersOp::Snapshot, &["alice", "bob"]);
    h.send_group("m1", "alice", "g1");
    receipts_switch(&mut h, "alice", false);
    h.read_group("bob", "g1", &["m1"]);
    assert!(h.receipts().is_empty());
    // Without reciprocity, she would get them.
    h.settings.apply(Setting::AppConfig(AppConfig { reciprocal_privacy: false, ..AppConfig::defaults(APP) }));
    h.send_group("m2", "alice", "g1");
    h.read_group("bob", "g1", &["m2"]);
    assert_eq!(h.receipts().len(), 1);
}

#[test]
fn group_types_without_receipts_are_not_tracked() {
    let mut h = Harness::new();
    h.apply(Event::GroupMembers(GroupMembers {
        app_id: APP.into(),
        group_id: "room".into(),
        op: MembersOp::Snapshot,
        group_type: Some(GroupType::AVChatRoom),
        members: vec!["alice".into(), "bob".into()],
        at: 0,
    }));
    h.send_group("m1", "alice", "room");
    h.read_group("bob", "room", &["m1"]);
    assert_eq!(h.ignored(Ignored::GroupTypeDisabled), 1);
    assert_eq!(h.counts("m1"), (0, 0));
    // Every type may be enabled.
    h.settings.apply(Setting::AppConfig(AppConfig {
        group_receipt_types: vec![GroupType::AVChatRoom],
        ..AppConfig::defaults(APP)
    }));
    h.send_group("m2", "alice", "room");
    h.read_group("bob", "room", &["m2"]);
    assert_eq!(h.counts("m2"), (1, 0));
}

/// Queries run on other threads while the fold goes on, as in the worker:
/// every answer must be one consistent state. Each revealed read bumps a
/// message's version by one, so a receipt whose read count differs from its
/// version, or whose read + unread differs from the audience, was torn
/// between two folds; a read list shorter than an earlier count went back.
#[test]
fn queries_on_other_threads_see_whole_folds() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;
    const MEMBERS: usize = 10_000;
    const MESSAGES: usize = 8;
    let mut h = Harness::new();
    let users: Vec<String> = (0..MEMBERS).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    h.members("g", MembersOp::Snapshot, &refs);
    let msgs: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    for m in &msgs {
        h.send_group(m, "u0", "g");
    }
    let view = h.state.view().clone();
    let settings = Arc::new(h.settings.clone());
    let done = Arc::new(AtomicBool::new(false));
    let queriers: Vec<_> = (0..2)
        .map(|t| {
            let (view, settings, done, msgs) = (view.clone(), settings.clone(), done.clone(), msgs.clone());
            std::thread::spawn(move || {
                let group = Conversation::Group { group_id: "g".into() };
                let mut last_read = [0u32; MESSAGES];
                let mut answers = 0u64;
                while !done.load(Relaxed) {
                    for (i, m) in msgs.iter().enumerate().skip(t) {
                        let r = view.receipt(&settings, APP, m, "u0", &group).expect("receipt");
                        let (read, unread) = (r.read_count.unwrap(), r.unread_count.unwrap());
                        assert_eq!(u64::from(read), r.version.unwrap(), "count and version torn, {m}");
                        assert_eq!(read + unread, MEMBERS as u32 - 1, "read + unread is the audience, {m}");
                        assert!(read >= last_read[i], "{m}: read count went back");
                        let page = view
                            .member_page(&settings, APP, "g", m, "u0", MemberFilter::Read, None, MEMBERS)
                            .expect("page");
                        assert!(
                            page.members.len() as u32 >= read,
                            "{m}: the read list is shorter than a count before it"
                        );
                        last_read[i] = read;
                        answers += 1;
                    }
                }
                answers
            })
        })
        .collect();
    // Every reader reads all messages in one event; joins of new members
    // move the epoch on, so cached unread counts get recomputed meanwhile.
    for (i, reader) in refs.iter().enumerate().skip(1) {
        let ids: Vec<&str> = msgs.iter().map(String::as_str).collect();
        // Looked up first without the locks, as the worker does, while
        // the queries hold them.
        let read = MessageRead {
            app_id: APP.into(),
            reader: (*reader).into(),
            conversation: Conversation::Group { group_id: "g".into() },
            msg_ids: ids.iter().map(|&m| Id::from(m)).collect(),
            read_at: 0,
            private: false,
        };
        h.state.prefetch(&Event::MessageRead(read));
        h.read_group(reader, "g", &ids);
        if i % 100 == 0 {
            h.members("g", MembersOp::Join, &[&format!("late{i}")]);
        }
    }
    done.store(true, Relaxed);
    let answers: u64 = queriers.into_iter().map(|q| q.join().expect("a query thread failed")).sum();
    assert!(answers > 0);
    let last = h.state.view().receipt(&h.settings, APP, "m0", "u0", &Conversation::Group { group_id: "g".into() });
    assert_eq!(last.unwrap().read_count, Some(MEMBERS as u32 - 1));
}

#[test]
fn a_reader_who_switched_receipts_off_and_left_counts_as_neither_read_nor_unread() {
    let (mut h, _) = numbered_group(64);
    // m1's audience is u1 to u63; numbered_group has u1 read it.
    for reader in ["u2", "u3", "u4", "u5"] {
        h.read_group(reader, "g1", &["m1"]);
    }
    receipts_switch(&mut h, "u1", false);
    // Counted again under the new switches: u1 is no longer revealed.
    h.read_group("u6", "g1", &["m1"]);
    assert_eq!(h.receipt_counts("m1"), (5, 58));
    // Brought up to date by the departure, not counted again: u1 was
    // unread, and is gone.
    h.members("g1", MembersOp::Leave, &["u1"]);
    assert_eq!(h.counts("m1"), (5, 57));
    h.read_group("u7", "g1", &["m1"]);
    assert_eq!(h.receipt_counts("m1"), (6, 56));
}

#[test]
fn a_reader_who_left_and_switched_receipts_counts_as_read_or_not_but_never_as_unread() {
    let (mut h, _) = numbered_group(64);
    // m1's audience is u1 to u63; numbered_group has u1 read it.
    for reader in ["u2", "u3", "u4", "u5"] {
        h.read_group(reader, "g1", &["m1"]);
    }
    h.members("g1", MembersOp::Leave, &["u1"]);
    h.read_group("u6", "g1", &["m1"]);
    assert_eq!(h.receipt_counts("m1"), (6, 57), "u1's read stays a read; u1 is no longer unread");
    // Brought up to date by the switches, not counted again: u1 is not
    // revealed while off, and counts as unread in neither case.
    receipts_switch(&mut h, "u1", false);
    assert_eq!(h.counts("m1"), (5, 57));
    h.read_group("u7", "g1", &["m1"]);
    assert_eq!(h.receipt_counts("m1"), (6, 56));
    receipts_switch(&mut h, "u1", true);
    assert_eq!(h.counts("m1"), (7, 56));
    h.read_group("u8", "g1", &["m1"]);
    assert_eq!(h.receipt_counts("m1"), (8, 55));
    // A member of the audience who read, switched off: unread again.
    receipts_switch(&mut h, "u2", false);
    assert_eq!(h.counts("m1"), (7, 56));
}

#[test]
fn a_reader_who_switched_receipts_off_and_then_left_is_brought_up_to_date_in_that_order() {
    let (mut h, _) = numbered_group(64);
    // m1's audience is u1 to u63; numbered_group has u1 read it.
    for k in 2..=8 {
        h.read_group(&format!("u{k}"), "g1", &["m1"]);
    }
    assert_eq!(h.receipt_counts("m1"), (8, 55));
    // u1 was revealed when counted, so was not unread: leaving takes
    // nothing off the unread count, and switching off one off the reads.
    receipts_switch(&mut h, "u1", false);
    h.members("g1", MembersOp::Leave, &["u1"]);
    assert_eq!(h.counts("m1"), (7, 55));
    h.read_group("u9", "g1", &["m1"]);
    assert_eq!(h.receipt_counts("m1"), (8, 54));
}

#[test]
fn a_first_read_after_switching_receipts_back_on_counts_once() {
    let (mut h, _) = numbered_group(64);
    // m1's audience is u1 to u63; numbered_group has u1 read it.
    receipts_switch(&mut h, "u2", false);
    for reader in ["u3", "u4", "u5"] {
        h.read_group(reader, "g1", &["m1"]);
    }
    assert_eq!(h.receipt_counts("m1"), (4, 59));
    // Brought up to date by the switch (enough readers for that to be
    // cheaper): u2 had not read when counted, so switching on moves
    // nothing; u2's read then moves the counts by one.
    receipts_switch(&mut h, "u2", true);
    h.read_group("u2", "g1", &["m1"]);
    assert_eq!(h.receipt_counts("m1"), (5, 58));
    assert_eq!(h.counts("m1"), (5, 58));
}

/// One step of [`counts_kept_across_membership_changes_match_a_model`]:
/// users by number, messages by the order they were sent.
#[derive(Debug, Clone)]
enum ChurnStep {
    Join(Vec<u8>),
    Leave(Vec<u8>),
    Snapshot(Vec<u8>),
    Send(u8),
    Read {
        reader: u8,
        message: u8,
        private: bool,
    },
    /// A user's receipts switched on or off.
    Switch(u8, bool),
}

fn churn_step() -> impl proptest::strategy::Strategy<Value = ChurnStep> {
    use proptest::prelude::*;
    // A quarter of the users named are among the first eight, whose
    // receipts are switched: so they read, switch and leave in turn.
    let user = || prop_oneof![1 => 0..8u8, 3 => 0..160u8];
    let users = || proptest::collection::vec(user(), 1..4);
    prop_oneof![
        3 => users().prop_map(ChurnStep::Join),
        4 => users().prop_map(ChurnStep::Leave),
        1 => proptest::collection::vec(0..160u8, 60..120).prop_map(ChurnStep::Snapshot),
        // Down to a group too small to keep departures.
        1 => proptest::collection::vec(user(), 1..12).prop_map(ChurnStep::Snapshot),
        2 => user().prop_map(ChurnStep::Send),
        20 => (user(), any::<u8>(), proptest::bool::weighted(0.1))
            .prop_map(|(reader, message, private)| ChurnStep::Read { reader, message, private }),
        3 => (0..8u8, any::<bool>()).prop_map(|(user, on)| ChurnStep::Switch(user, on)),
    ]
}

/// What the model keeps of a message: its audience (member and the change
/// they joined in) and its reads (reader and hidden or not).
struct ModelMessage {
    sender: String,
    audience: std::collections::BTreeMap<String, u32>,
    reads: std::collections::BTreeMap<String, bool>,
}

/// The counts a group message should show now, by the contract's rules
/// taken literally: every read revealed now; every member of the audience
/// still a member since then and not revealed.
fn model_counts(
    m: &ModelMessage,
    members: &std::collections::BTreeMap<String, u32>,
    off: &std::collections::BTreeSet<String>,
) -> (u32, u32) {
    let revealed = |u: &String| m.reads.get(u).is_some_and(|&hidden| !hidden) && !off.contains(u);
    let read = m.reads.keys().filter(|u| revealed(u)).count() as u32;
    let unread = m.audience.iter().filter(|(u, since)| members.get(*u) == Some(since) && !revealed(u)).count() as u32;
    (read, unread)
}

#[test]
fn counts_kept_across_membership_changes_match_a_model() {
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};
    let config = ProptestConfig { cases: 256, ..ProptestConfig::default() };
    proptest!(config, |(steps in proptest::collection::vec(churn_step(), 1..400))| {
        let mut h = Harness::new();
        let name = |u: u8| format!("u{u}");
        // 96 members: a group that keeps a dozen departures.
        let first: Vec<String> = (0..96).map(name).collect();
        h.members("g1", MembersOp::Snapshot, &first.iter().map(String::as_str).collect::<Vec<_>>());
        let (mut change, mut off) = (1u32, BTreeSet::new());
        let mut members: BTreeMap<String, u32> = first.into_iter().map(|u| (u, 1)).collect();
        let mut messages: Vec<ModelMessage> = Vec::new();
        for step in steps {
            match &step {
                ChurnStep::Join(users) | ChurnStep::Leave(users) | ChurnStep::Snapshot(users) => {
                    let op = match &step {
                        ChurnStep::Join(_) => MembersOp::Join,
                        ChurnStep::Leave(_) => MembersOp::Leave,
                        _ => MembersOp::Snapshot,
                    };
                    let names: Vec<String> = users.iter().map(|&u| name(u)).collect();
                    h.members("g1", op, &names.iter().map(String::as_str).collect::<Vec<_>>());
                    change += 1;
                    if op == MembersOp::Snapshot {
                        members.retain(|u, _| names.contains(u));
                    }
                    for u in names {
                        if op == MembersOp::Leave {
                            members.remove(&u);
                        } else {
                            members.entry(u).or_insert(change);
                        }
                    }
                }
                ChurnStep::Send(sender) => {
                    let sender = name(*sender);
                    let msg = format!("m{}", messages.len());
                    h.send_group(&msg, &sender, "g1");
                    let mut audience = members.clone();
                    audience.remove(&sender);
                    messages.push(ModelMessage { sender, audience, reads: BTreeMap::new() });
                }
                ChurnStep::Read { reader, message, private } => {
                    if messages.is_empty() {
                        continue;
                    }
                    let (reader, i) = (name(*reader), *message as usize % messages.len());
                    let msg = format!("m{i}");
                    h.read(&reader, Conversation::Group { group_id: "g1".into() }, &[msg.as_str()], *private);
                    let m = &mut messages[i];
                    let in_audience = m.audience.get(&reader).is_some_and(|since| members.get(&reader) == Some(since));
                    if reader != m.sender && in_audience && !m.reads.contains_key(&reader) {
                        let hidden = *private || off.contains(&reader);
                        m.reads.insert(reader, hidden);
                        if !hidden {
                            // The receipt of this change carries the counts now.
                            let kept = h.receipt_counts(&msg);
                            prop_assert_eq!(kept, model_counts(m, &members, &off), "{}'s receipt", msg);
                        }
                    }
                }
                ChurnStep::Switch(user, on) => {
                    let user = name(*user);
                    receipts_switch(&mut h, &user, *on);
                    if *on { off.remove(&user) } else { off.insert(user) };
                }
            }
            for (i, m) in messages.iter().enumerate() {
                prop_assert_eq!(h.counts(&format!("m{i}")), model_counts(m, &members, &off), "m{}", i);
            }
        }
    });
}
