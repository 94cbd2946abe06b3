//! An independent oracle: the final receipt state computed from the event log
//! alone, with sets and maps, for logs without settings, revocations,
//! dismissals or expiry (what `TrafficShape::small` writes). It shares no code
//! with the fold.

use receiptd_wire::{Conversation, Event, GroupType, MembersOp};
use std::collections::{BTreeMap, BTreeSet};

/// What the oracle expects of one tracked message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub read_count: u64,
    /// Group messages only.
    pub unread_count: Option<u64>,
    pub hidden_reads: u64,
}

struct Msg {
    sender: String,
    /// Group id, or the C2C peer.
    group: Option<String>,
    peer: String,
    tracked: bool,
    /// Group audience at send time: member -> membership generation.
    audience: BTreeMap<String, u64>,
    /// reader -> hidden
    reads: BTreeMap<String, bool>,
}

#[derive(Default)]
pub struct Oracle {
    /// Users whose receipts are off for the whole log.
    pub off: BTreeSet<String>,
    groups: BTreeMap<String, (bool, BTreeMap<String, u64>)>,
    generation: u64,
    messages: BTreeMap<String, Msg>,
    held: Vec<(String, Event)>,
}

impl Oracle {
    /// Applies the log in order (per conversation, the order the engine sees).
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::GroupMembers(e) => {
                let (av, members) = self.groups.entry(e.group_id.to_string()).or_default();
                match e.op {
                    MembersOp::Leave => e.members.iter().for_each(|u| {
                        members.remove(u.as_str());
                    }),
                    MembersOp::Join | MembersOp::Snapshot => {
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
                    MembersOp::Dismiss => unreachable!("the oracle's logs dismiss nothing"),
                }
            }
            Event::MessageSent(e) => {
                if self.messages.contains_key(e.msg_id.as_str()) {
                    return;
                }
                let (group, peer) = match &e.conversation {
                    Conversation::Group { group_id } => (Some(group_id.to_string()), String::new()),
                    Conversation::C2c { peer } => (None, peer.to_string()),
                };
                let (tracked, audience) = match &group {
                    Some(g) => match self.groups.get(g) {
                        Some((av, members)) => {
                            let mut audience = members.clone();
                            audience.remove(e.sender.as_str());
                            (e.need_read_receipt && !av, audience)
                        }
                        None => (false, BTreeMap::new()),
                    },
                    None => (e.need_read_receipt, BTreeMap::new()),
                };
                let msg = Msg { sender: e.sender.to_string(), group, peer, tracked, audience, reads: BTreeMap::new() };
                self.messages.insert(e.msg_id.to_string(), msg);
                let (mine, rest) = std::mem::take(&mut self.held).into_iter().partition(|(id, _)| *id == e.msg_id);
                self.held = rest;
                for (id, read) in mine {
                    self.read_one(&read, &id);
                }
            }
            Event::MessageRead(e) => {
                for id in &e.msg_ids {
                    self.read_one(event, id);
                }
                let _ = e;
            }
            Event::ConversationRead(_) => {}
            Event::MessageRevoked(_) => unreachable!("the oracle's logs revoke nothing"),
        }
    }

    fn eligible(&self, m: &Msg, user: &str) -> bool {
        match &m.group {
            Some(g) => {
                let current = self.groups.get(g).and_then(|(_, members)| members.get(user));
                current.is_some() && m.audience.get(user) == current
            }
            None => user == m.peer,
        }
    }

    fn read_one(&mut self, event: &Event, msg_id: &str) {
        let Event::MessageRead(e) = event else { return };
        let Some(m) = self.messages.get(msg_id) else {
            self.held.push((msg_id.to_owned(), event.clone()));
            return;
        };
        let right_place = match (&m.group, &e.conversation) {
            (Some(g), Conversation::Group { group_id }) => g == group_id,
            (None, Conversation::C2c { peer }) => *peer == m.sender,
            _ => false,
        };
        if e.reader == m.sender || !right_place || !m.tracked || m.reads.contains_key(e.reader.as_str()) {
            return;
        }
        if !self.eligible(m, &e.reader) {
            return;
        }
        let hidden = e.private || self.off.contains(e.reader.as_str());
        self.messages.get_mut(msg_id).expect("present").reads.insert(e.reader.to_string(), hidden);
    }

    /// A tracked message's sender, group (None for C2C) and revealed readers.
    pub fn revealed(&self, msg_id: &str) -> Option<(&str, Option<&str>, BTreeSet<&str>)> {
        let m = self.messages.get(msg_id).filter(|m| m.tracked)?;
        let readers = m.reads.iter().filter(|(_, hidden)| !**hidden).map(|(u, _)| u.as_str()).collect();
        Some((m.sender.as_str(), m.group.as_deref(), readers))
    }

    /// Every tracked message's expected state, and the reads still held.
    pub fn expected(&self) -> (BTreeMap<String, Expected>, usize) {
        let out = self
            .messages
            .iter()
            .filter(|(_, m)| m.tracked)
            .map(|(id, m)| {
                let revealed: BTreeSet<&String> =
                    m.reads.iter().filter(|(_, hidden)| !**hidden).map(|(u, _)| u).collect();
                let unread = m
                    .group
                    .as_ref()
                    .map(|_| m.audience.keys().filter(|u| self.eligible(m, u) && !revealed.contains(u)).count() as u64);
                let hidden = m.reads.values().filter(|h| **h).count() as u64;
                (id.clone(), Expected { read_count: revealed.len() as u64, unread_count: unread, hidden_reads: hidden })
            })
            .collect();
        (out, self.held.len())
    }
}

/// Asserts that a worker's final state (as `receiptd inspect` prints it)
/// equals the oracle of `events`: every tracked message's counts and hidden
/// reads, and the reads still held.
pub fn assert_state_matches(state: &serde_json::Value, events: &[Event]) {
    assert_state_matches_with(state, events, BTreeSet::new());
}

/// [`assert_state_matches`], with users whose receipts are off throughout.
pub fn assert_state_matches_with(state: &serde_json::Value, events: &[Event], off: BTreeSet<String>) -> Oracle {
    let mut oracle = Oracle { off, ..Oracle::default() };
    events.iter().for_each(|e| oracle.apply(e));
    let (expected, held) = oracle.expected();
    let tracked: Vec<&serde_json::Value> =
        state["messages"].as_array().unwrap().iter().filter(|m| m["tracking"] == "Tracked").collect();
    assert_eq!(tracked.len(), expected.len(), "tracked messages");
    for m in tracked {
        let id = m["msg_id"].as_str().unwrap();
        let want = &expected[id];
        let group = m["conversation"]["type"] == "group";
        let got =
            (m["read_count"].as_u64(), group.then(|| m["unread_count"].as_u64().unwrap()), m["hidden_reads"].as_u64());
        assert_eq!(got, (Some(want.read_count), want.unread_count, Some(want.hidden_reads)), "message {id}");
    }
    let held_now: u64 = state["partitions"].as_array().unwrap().iter().map(|p| p["held_reads"].as_u64().unwrap()).sum();
    assert_eq!(held_now as usize, held, "reads still waiting for their message");
    oracle
}
