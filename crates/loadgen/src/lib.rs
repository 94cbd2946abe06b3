//! Synthetic chat traffic for receiptd: the demo's generator, the tests'
//! load, and the benchmarks' mix.
//!
//! [`Traffic`] is deterministic for a given [`TrafficShape`] (its seed
//! included), so a test can replay exactly the same log. It produces group
//! snapshots first ([`Traffic::setup`]), then an endless mix of sends, reads
//! clustered on recent messages with a long tail, duplicate reads, reads that
//! overtake their message, conversation reads, private reads, and optional
//! membership churn. Every event is valid under the contract.

#![deny(missing_docs)]

use receiptd_wire::{
    Conversation, ConversationRead, Event, GroupMembers, GroupType, Id, MembersOp, MessageRead, MessageSent,
};
use std::collections::VecDeque;

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded; any seed works.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    /// True with the given percent chance.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What the traffic looks like.
#[derive(Debug, Clone)]
pub struct TrafficShape {
    /// The app id.
    pub app_id: String,
    /// Seed; the same shape and seed give the same events.
    pub seed: u64,
    /// Users are `u0..u{users}`.
    pub users: u64,
    /// One group per entry, with that many members.
    pub group_sizes: Vec<usize>,
    /// Percent of events that send a message.
    pub send_percent: u64,
    /// Percent of sends that go to a group (the rest are C2C).
    pub group_percent: u64,
    /// Percent of sends that want receipts.
    pub receipt_percent: u64,
    /// Percent of events that are conversation reads.
    pub conversation_read_percent: u64,
    /// Percent of reads repeated later (duplicates).
    pub duplicate_percent: u64,
    /// Percent of sends whose first read overtakes them.
    pub early_read_percent: u64,
    /// Percent of reads that are private.
    pub private_percent: u64,
    /// Percent of events that change a group's membership.
    pub churn_percent: u64,
    /// Percent of reads that go to any recent message rather than the newest 100.
    pub long_tail_percent: u64,
    /// Recent messages remembered as read targets.
    pub recent: usize,
    /// Most messages one group read names: the target and the group's
    /// messages sent just before it (not the reader's own), oldest first,
    /// as a client reads a chat's unread messages in one call. 1 (every
    /// shape here) or 0: one message a read.
    pub read_batch: usize,
    /// Time of the first event, Unix ms; each event is 1 ms later. Default:
    /// now, so that event times sit near record times (retention is measured
    /// against record time).
    pub start_ms: u64,
}

impl TrafficShape {
    /// The demo's chat: 48 groups of 2 to 1000 members, 10,000 users.
    pub fn demo() -> Self {
        let sizes = [2usize, 3, 5, 8, 12, 20, 32, 50, 100, 200, 500, 1000];
        TrafficShape {
            app_id: "demo".into(),
            seed: 0x5eed,
            users: 10_000,
            group_sizes: (0..48).map(|i| sizes[i % sizes.len()]).collect(),
            send_percent: 20,
            group_percent: 60,
            receipt_percent: 90,
            conversation_read_percent: 3,
            duplicate_percent: 10,
            early_read_percent: 2,
            private_percent: 2,
            churn_percent: 0,
            long_tail_percent: 5,
            recent: 2_000,
            read_batch: 1,
            start_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }
    }

    /// The benchmarks' mix: 100,000 users, 1,600 groups of 2 to 1,024 members
    /// (mean about 33: most are 2 to 40, one in 80 has 1,024), 10% duplicate
    /// reads, reads clustered on the newest 100 messages with a 5% long tail.
    pub fn bench() -> Self {
        TrafficShape {
            app_id: "bench".into(),
            users: 100_000,
            group_sizes: (0..1_600).map(|i| if i % 80 == 79 { 1_024 } else { 2 + (i * 37) % 39 }).collect(),
            ..Self::demo()
        }
    }

    /// A small, busy chat for crash tests: few users, membership churn.
    pub fn small(app_id: &str, seed: u64) -> Self {
        TrafficShape {
            app_id: app_id.into(),
            seed,
            users: 300,
            group_sizes: vec![2, 3, 5, 8, 16, 32, 64, 100, 3, 40],
            churn_percent: 1,
            recent: 500,
            ..Self::demo()
        }
    }
}

/// The generator.
#[derive(Debug, Clone)]
pub struct Traffic {
    shape: TrafficShape,
    /// The shape's app id, made once for every event.
    app_id: Id,
    rng: Rng,
    groups: Vec<Vec<Id>>,
    /// Each group's latest messages with their senders, oldest first, at
    /// most `read_batch` of them (none when it is 1).
    latest: Vec<VecDeque<(Id, Id)>>,
    recent: VecDeque<(Id, Id, Conversation)>,
    early: VecDeque<Event>,
    repeats: VecDeque<Event>,
    next_msg: u64,
    now: u64,
}

impl Traffic {
    /// A generator for `shape`.
    pub fn new(shape: TrafficShape) -> Self {
        let mut rng = Rng::new(shape.seed);
        let groups: Vec<Vec<Id>> = shape
            .group_sizes
            .iter()
            .map(|&size| {
                let size = size.min(shape.users as usize).max(2);
                let start = rng.below(shape.users - size as u64 + 1);
                (0..size as u64).map(|k| Id::from(format!("u{}", start + k))).collect()
            })
            .collect();
        let now = shape.start_ms;
        Traffic {
            app_id: Id::from(shape.app_id.as_str()),
            latest: vec![VecDeque::new(); groups.len()],
            shape,
            rng,
            groups,
            recent: VecDeque::new(),
            early: VecDeque::new(),
            repeats: VecDeque::new(),
            next_msg: 0,
            now,
        }
    }

    /// The membership snapshots that start the chat.
    pub fn setup(&self) -> Vec<Event> {
        self.groups
            .iter()
            .enumerate()
            .map(|(i, members)| {
                Event::GroupMembers(GroupMembers {
                    app_id: self.app_id.clone(),
                    group_id: Id::from(format!("g{i}")),
                    op: MembersOp::Snapshot,
                    group_type: Some(if i % 7 == 6 { GroupType::Meeting } else { GroupType::Work }),
                    members: members.clone(),
                    at: self.now,
                })
            })
            .collect()
    }

    /// The setup followed by `n` events.
    pub fn take(&mut self, n: usize) -> Vec<Event> {
        let mut v = self.setup();
        v.extend((0..n).map(|_| self.next_event()));
        v
    }

    /// The next event.
    pub fn next_event(&mut self) -> Event {
        self.now += 1;
        let roll = self.rng.below(100);
        if roll < 3 {
            if let Some(e) = self.early.pop_front() {
                return e;
            }
        }
        if roll < 3 + self.shape.duplicate_percent / 2 {
            if let Some(e) = self.repeats.pop_front() {
                return e;
            }
        }
        let roll = self.rng.below(100);
        if roll < self.shape.churn_percent {
            return self.churn();
        }
        if roll < self.shape.churn_percent + self.shape.send_percent || self.recent.is_empty() {
            return self.send();
        }
        if roll < self.shape.churn_percent + self.shape.send_percent + self.shape.conversation_read_percent {
            let (a, b) = self.pair();
            return Event::ConversationRead(ConversationRead {
                app_id: self.app_id.clone(),
                reader: a,
                conversation: Conversation::C2c { peer: b },
                read_at: self.now,
            });
        }
        let e = self.read();
        if self.rng.chance(self.shape.duplicate_percent) {
            self.repeats.push_back(e.clone());
        }
        e
    }

    fn pair(&mut self) -> (Id, Id) {
        let a = self.rng.below(self.shape.users);
        let b = (a + 1 + self.rng.below(50.min(self.shape.users - 1))) % self.shape.users;
        (Id::from(format!("u{a}")), Id::from(format!("u{b}")))
    }

    fn churn(&mut self) -> Event {
        let g = self.rng.below(self.groups.len() as u64) as usize;
        let user = Id::from(format!("u{}", self.rng.below(self.shape.users)));
        let members = &mut self.groups[g];
        let op = match members.iter().position(|m| *m == user) {
            Some(i) if members.len() > 2 => {
                members.swap_remove(i);
                MembersOp::Leave
            }
            Some(_) => MembersOp::Join,
            None => {
                members.push(user.clone());
                MembersOp::Join
            }
        };
        Event::GroupMembers(GroupMembers {
            app_id: self.app_id.clone(),
            group_id: Id::from(format!("g{g}")),
            op,
            group_type: None,
            members: vec![user],
            at: self.now,
        })
    }

    fn send(&mut self) -> Event {
        let msg_id = Id::from(format!("m{}", self.next_msg));
        self.next_msg += 1;
        let (sender, conversation, first_reader) = if self.rng.chance(self.shape.group_percent) {
            let g = self.rng.below(self.groups.len() as u64) as usize;
            let members = &self.groups[g];
            let sender = members[self.rng.below(members.len() as u64) as usize].clone();
            let reader = members[self.rng.below(members.len() as u64) as usize].clone();
            if self.shape.read_batch > 1 {
                let latest = &mut self.latest[g];
                latest.push_back((msg_id.clone(), sender.clone()));
                if latest.len() > self.shape.read_batch {
                    latest.pop_front();
                }
            }
            (sender, Conversation::Group { group_id: Id::from(format!("g{g}")) }, reader)
        } else {
            let (a, b) = self.pair();
            (a, Conversation::C2c { peer: b.clone() }, b)
        };
        let event = Event::MessageSent(MessageSent {
            app_id: self.app_id.clone(),
            msg_id: msg_id.clone(),
            sender: sender.clone(),
            conversation: conversation.clone(),
            need_read_receipt: self.rng.chance(self.shape.receipt_percent),
            sent_at: self.now,
        });
        self.recent.push_back((msg_id.clone(), sender.clone(), conversation.clone()));
        if self.recent.len() > self.shape.recent {
            self.recent.pop_front();
        }
        if self.rng.chance(self.shape.early_read_percent) {
            // A read that overtakes its message: held, then applied.
            self.early.push_back(event);
            return self.read_of(&msg_id, &sender, &conversation, first_reader);
        }
        event
    }

    fn read(&mut self) -> Event {
        let n = self.recent.len() as u64;
        let back = if self.rng.chance(100 - self.shape.long_tail_percent) {
            self.rng.below(n.min(100))
        } else {
            self.rng.below(n)
        };
        let (msg_id, sender, conversation) = self.recent[(n - 1 - back) as usize].clone();
        let (reader, group) = match &conversation {
            Conversation::Group { group_id } => {
                let g: usize = group_id[1..].parse().unwrap_or(0);
                let members = &self.groups[g];
                (members[self.rng.below(members.len() as u64) as usize].clone(), Some(g))
            }
            Conversation::C2c { peer } => (peer.clone(), None),
        };
        let mut e = self.read_of(&msg_id, &sender, &conversation, reader);
        if let (Some(g), Event::MessageRead(read), true) = (group, &mut e, self.shape.read_batch > 1) {
            read.msg_ids = self.batch_before(g, &msg_id, &read.reader);
        }
        e
    }

    /// The message ids a group read of `msg_id` names: with `read_batch`
    /// over 1, the group's messages sent just before it too (not `reader`'s
    /// own), oldest first, if it is among the group's latest; else itself.
    fn batch_before(&self, g: usize, msg_id: &Id, reader: &Id) -> Vec<Id> {
        let latest = &self.latest[g];
        let Some(at) = latest.iter().position(|(m, _)| m == msg_id) else { return vec![msg_id.clone()] };
        let mut before: Vec<Id> = latest
            .range(..at)
            .rev()
            .filter(|(_, s)| s != reader)
            .take(self.shape.read_batch - 1)
            .map(|(m, _)| m.clone())
            .collect();
        before.reverse();
        before.push(msg_id.clone());
        before
    }

    fn read_of(&mut self, msg_id: &Id, sender: &Id, conversation: &Conversation, reader: Id) -> Event {
        let conversation = match conversation {
            Conversation::Group { .. } => conversation.clone(),
            Conversation::C2c { .. } => Conversation::C2c { peer: sender.clone() },
        };
        Event::MessageRead(MessageRead {
            app_id: self.app_id.clone(),
            reader,
            conversation,
            msg_ids: vec![msg_id.clone()],
            read_at: self.now,
            private: self.rng.chance(self.shape.private_percent),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `e` as the worker takes it: keyed, as JSON, decoded and validated.
    fn assert_decodes(e: &Event) {
        let key = receiptd_wire::conversation_key(e);
        let json = serde_json::to_vec(e).unwrap();
        receiptd_wire::decode_event(Some(key.as_bytes()), Some(&json), receiptd_wire::ContentType::Json)
            .unwrap_or_else(|err| panic!("{e:?}: {err}"));
    }

    #[test]
    fn group_reads_name_the_messages_before_their_target_when_batched() {
        let shape = TrafficShape { start_ms: 1_732_200_000_000, read_batch: 10, ..TrafficShape::small("a1", 7) };
        let events = Traffic::new(shape).take(20_000);
        let mut sent = std::collections::HashMap::new();
        let (mut reads, mut several) = (0, 0);
        for e in &events {
            assert_decodes(e);
            match e {
                Event::MessageSent(m) => {
                    sent.insert(m.msg_id.clone(), (m.sender.clone(), m.conversation.clone(), m.sent_at));
                }
                Event::MessageRead(r) if matches!(r.conversation, Conversation::Group { .. }) => {
                    reads += 1;
                    assert!((1..=10).contains(&r.msg_ids.len()), "{r:?}");
                    several += usize::from(r.msg_ids.len() > 1);
                    let (before, target) = r.msg_ids.split_at(r.msg_ids.len() - 1);
                    let mut last = 0;
                    for id in before {
                        // A message whose read overtakes it is sent later.
                        let Some((sender, conversation, at)) = sent.get(id) else { continue };
                        assert!(sender != &r.reader && conversation == &r.conversation, "{r:?}");
                        assert!(*at > last, "oldest first: {r:?}");
                        last = *at;
                    }
                    if let Some((_, _, at)) = sent.get(&target[0]) {
                        assert!(*at > last, "the target last: {r:?}");
                    }
                }
                _ => {}
            }
        }
        assert!(several * 4 > reads, "many group reads name several messages: {several} of {reads}");
        let one = TrafficShape { start_ms: 1_732_200_000_000, ..TrafficShape::small("a1", 7) };
        let events_of_one = Traffic::new(one).take(20_000);
        assert!(events_of_one.iter().all(|e| !matches!(e, Event::MessageRead(r) if r.msg_ids.len() > 1)));
    }

    #[test]
    fn same_shape_same_events_and_every_event_is_valid() {
        let shape = TrafficShape { start_ms: 1_732_200_000_000, ..TrafficShape::small("a1", 7) };
        let a = Traffic::new(shape.clone()).take(20_000);
        let b = Traffic::new(shape).take(20_000);
        assert_eq!(a, b);
        a.iter().for_each(assert_decodes);
    }
}
