//! A group's recent departures, so that a message's cached counts survive
//! membership changes instead of being counted again over its readers.
//!
//! A message's `(read, unread)` are cached with the group's epoch they were
//! counted at. Every membership change opens an epoch, and a message's
//! first revealed read after one used to count again: O(readers), for
//! every message of a group, after every join or leave. In a group of
//! 100,000 whose members come and go, that is every message's readers
//! walked again between most reads.
//!
//! But a change moves an older message's counts in only one way. A
//! newcomer (or a member back) joined after the message was sent, so is
//! not in its audience: joins move nothing. Reads count every revealed
//! reader, member or not: leaves move no read count. A leave takes one off
//! the unread count exactly when the member who left was in the audience
//! (a member since the send or earlier), is not the sender, and is not a
//! revealed reader of it. So the group lists who left in its recent
//! epochs, and counts cached at epoch `e` are brought up to date by the
//! departures after `e`, each a lookup among the message's readers.
//!
//! The list is bounded by the group's size (an eighth of its members, at
//! most [`MOST_KEPT`]): oldest departures go first, and counts older than
//! the oldest one kept are counted again, as before. A departure is 40
//! bytes (and a copy of a user id too long to sit inline), so the list
//! holds about 5 bytes a member at most, and nothing until a member
//! leaves. A small group keeps none, and its counts still survive
//! every change that is only joins.

use crate::state::Id;

/// Departures kept at most, whatever the group's size.
const MOST_KEPT: usize = 1024;

/// A member who left: who, from which epoch, holding which ordinal.
#[derive(Debug, Clone)]
pub(crate) struct Departure {
    /// The epoch of the change the member left in.
    pub(crate) epoch: u32,
    /// The epoch the membership had begun at.
    pub(crate) since: u32,
    /// The ordinal it held: still its own in any live message it read.
    pub(crate) ordinal: u32,
    /// Who left: the ordinal may change hands later.
    pub(crate) user: Id,
}

const _: () = assert!(std::mem::size_of::<Departure>() == 40, "the module docs count 40 bytes a departure");

/// See the module docs. Most groups never lose a member, so a group
/// holds only a pointer until one does.
#[derive(Debug, Clone, Default)]
pub(crate) struct Departures(Option<Box<Log>>);

/// The departures of a group that has lost a member.
#[derive(Debug, Clone, Default)]
struct Log {
    /// Oldest first, so in epoch order.
    kept: Vec<Departure>,
    /// Every departure in an epoch after this one is in `kept`.
    complete_after: u32,
}

impl Departures {
    /// No departures, none missing after `epoch`: a group restored at
    /// `epoch` (no message's counts are cached from before it).
    pub(crate) fn complete_after(epoch: u32) -> Self {
        Departures((epoch > 0).then(|| Box::new(Log { kept: Vec::new(), complete_after: epoch })))
    }

    /// Lists a departure in the group's latest epoch, dropping the oldest
    /// ones past what a group of `members` keeps.
    pub(crate) fn record(&mut self, departure: Departure, members: u32) {
        let log = self.0.get_or_insert_default();
        debug_assert!(log.kept.last().is_none_or(|d| d.epoch <= departure.epoch));
        let most = (members as usize / 8).min(MOST_KEPT);
        if most == 0 {
            // A small group keeps none: its counts are cheap to take again.
            log.kept = Vec::new();
            log.complete_after = departure.epoch;
            return;
        }
        if log.kept.len() >= most {
            // Half go at once, so that a departure costs O(1) amortized.
            let drop = log.kept.len() - most / 2;
            log.complete_after = log.kept[drop - 1].epoch;
            log.kept.drain(..drop);
        }
        log.kept.push(departure);
    }

    /// The departures in the epochs after `epoch`, if none is missing.
    pub(crate) fn after(&self, epoch: u32) -> Option<&[Departure]> {
        let Some(log) = &self.0 else { return Some(&[]) };
        if epoch < log.complete_after {
            return None;
        }
        Some(&log.kept[log.kept.partition_point(|d| d.epoch <= epoch)..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn left(epoch: u32) -> Departure {
        Departure { epoch, since: 1, ordinal: epoch, user: Id::from(format!("u{epoch}").as_str()) }
    }

    fn epochs(after: Option<&[Departure]>) -> Option<Vec<u32>> {
        after.map(|d| d.iter().map(|d| d.epoch).collect())
    }

    #[test]
    fn a_group_keeps_an_eighth_of_its_members_in_departures_and_knows_what_it_dropped() {
        let mut departures = Departures::default();
        // 32 members keep 4; at the fifth, the oldest three go.
        for epoch in 2..=5 {
            departures.record(left(epoch), 32);
        }
        assert_eq!(epochs(departures.after(1)), Some(vec![2, 3, 4, 5]));
        assert_eq!(epochs(departures.after(3)), Some(vec![4, 5]));
        departures.record(left(6), 32);
        assert_eq!(epochs(departures.after(1)), None);
        assert_eq!(epochs(departures.after(4)), Some(vec![5, 6]));
        assert_eq!(epochs(departures.after(6)), Some(vec![]));
        // A group of 7 keeps none: every departure is missing.
        departures.record(left(7), 7);
        assert_eq!(epochs(departures.after(6)), None);
        assert_eq!(epochs(departures.after(7)), Some(vec![]));
        // Restored at epoch 9: nothing is missing after it, all before.
        let restored = Departures::complete_after(9);
        assert_eq!(epochs(restored.after(8)), None);
        assert_eq!(epochs(restored.after(9)), Some(vec![]));
    }
}
