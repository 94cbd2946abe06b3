//! Coalescing receipts into delta records: one record per recipient per flush.

use crate::prefetch::prefetch_line;
use crate::state::Id;
use hashbrown::HashTable;
use receiptd_wire::{DeltaRecord, Receipt};
use rustc_hash::FxBuildHasher;
use std::hash::BuildHasher;

/// One receipt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptChange {
    /// The app.
    pub app: Id,
    /// The recipient.
    pub to: Id,
    /// The receipt, with absolute counts and the message's version.
    pub receipt: Receipt<Id>,
}

/// Groups receipts by recipient across partitions, in order of first
/// receipt, and keeps one receipt per message (or per conversation peer)
/// and recipient: a later one replaces the earlier, so that a message
/// taken again within one flush (staged in slices) is sent once, as it is
/// now.
///
/// The state takes receipts in passes over its changed entities (a slice
/// of a flush, or receipts taken between flushes), and one pass takes at
/// most one receipt per message and per read mark. So the receipts are
/// indexed for replacement only once a second pass adds to the buffer
/// before it is drained: most flushes are one pass, and indexing every
/// receipt was 3.5% of the fold bench's instructions on the drain's mix
/// (8% with reads spread over a million messages).
#[derive(Debug, Default)]
pub struct DeltaBuffer {
    /// Indexes into `records`, hashed by recipient. Every id is
    /// shared with the state: nothing is copied until serialization.
    index: HashTable<usize>,
    /// (record, position) of each receipt, hashed by record and receipt,
    /// while `indexed`.
    placed: HashTable<(u32, u32)>,
    /// Whether `placed` holds every receipt: from a pass begun with
    /// receipts buffered, or the first public [`DeltaBuffer::push`], until
    /// the next drain.
    indexed: bool,
    /// Receipts buffered.
    receipts: usize,
    records: Vec<DeltaRecord<Id>>,
    /// The record the last receipt went to (none if past the end).
    last: usize,
    /// Emptied receipt lists of records already sent, for the next records:
    /// a list per recipient per flush, allocated anew, was 3% of the fold's
    /// instructions and faulted fresh pages in while a flush was staged.
    spare: Vec<Vec<Receipt<Id>>>,
    /// Receipts the lists in `spare` have room for, all together.
    spare_room: usize,
}

/// Most receipts a kept list may have room for (one huge record must not
/// pin its list's memory), and the most room all kept lists may have
/// together: 7 MiB of 112-byte receipts. That is 16,384 lists of the
/// usual 4 receipts' room, where a flush of the drain bench has about
/// 8,600 records. With at most 1,024 lists kept, the rest of a flush's
/// records allocated theirs: 11% of staging's instructions.
const SPARE_LIST_RECEIPTS: usize = 64;
const SPARE_RECEIPTS: usize = 65_536;

/// Most records of spare room the record list keeps after a drain (1.1 MiB
/// of 72-byte records): room for a usual flush's records, so that the next
/// one does not grow the list step by step, copying it at each.
const RETAINED_RECORDS: usize = 16_384;

/// By recipient only, and the app compared when found: every receipt paid
/// for hashing the app as well, and a user id in two apps is rare.
fn recipient_hash(to: &str) -> u64 {
    FxBuildHasher.hash_one(to)
}

/// What makes a receipt one recipient's receipt of one thing: the message,
/// or for a conversation receipt (no message) the reader. Not the peer of
/// a message receipt: a message id names one message at a time, and if
/// its message expired and the id came back as a message of another kind
/// (a group message after a C2C one) within one flush staged in slices,
/// the later receipt replaces the earlier one.
fn receipt_hash(record: usize, r: &Receipt<Id>) -> u64 {
    let reader = if r.msg_id.is_empty() { r.user_id.as_deref() } else { None };
    FxBuildHasher.hash_one((record, &*r.msg_id, reader))
}

fn same_receipt(a: &Receipt<Id>, b: &Receipt<Id>) -> bool {
    a.msg_id == b.msg_id && (!a.msg_id.is_empty() || a.user_id == b.user_id)
}

/// Asks for the start of the receipt list the next new record will take,
/// to write its first receipt into. Spare lists come back a flush's worth
/// at a time (thousands of lists, megabytes), so the one on top is out of
/// the caches by the time it is taken: asked for a recipient ahead, the
/// staging of a 50,000-event window took 11% less time (`cargo bench
/// --bench fold -- stage/`, thirty-sixth sitting). The record's own slot,
/// asked for the same way, gained 2% more, within the noise.
#[inline(always)]
fn prefetch_next_list(spare: &[Vec<Receipt<Id>>]) {
    if let Some(list) = spare.last() {
        let list: *const u8 = list.as_ptr().cast();
        prefetch_line(list);
        prefetch_line(list.wrapping_add(64));
    }
}

impl DeltaBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Receipts buffered.
    pub fn len(&self) -> usize {
        self.receipts
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.receipts == 0
    }

    /// Adds one receipt, or replaces the recipient's receipt of the same
    /// message (taken earlier in the flush, so older).
    pub fn push(&mut self, change: ReceiptChange) {
        self.index_receipts();
        self.push_in_pass(change);
    }

    /// Starts a pass of the state's over its changed entities, whose
    /// receipts then come through [`DeltaBuffer::push_in_pass`]. Receipts
    /// buffered already came from earlier passes, and may be taken again.
    pub(crate) fn begin_pass(&mut self) {
        if self.receipts > 0 {
            self.index_receipts();
        }
    }

    /// Indexes every buffered receipt, if they are not yet: pushes from now
    /// until the drain find the receipt they replace.
    fn index_receipts(&mut self) {
        if std::mem::replace(&mut self.indexed, true) {
            return;
        }
        let DeltaBuffer { placed, records, .. } = self;
        for (r, record) in records.iter().enumerate() {
            for (p, receipt) in record.receipts.iter().enumerate() {
                placed.insert_unique(receipt_hash(r, receipt), (r as u32, p as u32), |&(r, p)| {
                    receipt_hash(r as usize, &records[r as usize].receipts[p as usize])
                });
            }
        }
    }

    /// Adds a receipt taken in a pass (at most one per message and per read
    /// mark in it); while indexed, replaces the recipient's receipt of the
    /// same message from an earlier pass.
    pub(crate) fn push_in_pass(&mut self, change: ReceiptChange) {
        let ReceiptChange { app, to, receipt } = change;
        let DeltaBuffer { index, placed, records, spare, spare_room, indexed, receipts, last } = self;
        let same = |&i: &usize| *records[i].app_id == *app && *records[i].to == *to;
        // The recipient of the receipt before, compared first: a sender's
        // messages changed together (one read of several) come in a run.
        // As ids here and as strings in the table: one predicate for both
        // counted 4 to 8 instructions more an event, either way.
        let i = if records.get(*last).is_some_and(|r| r.to == to && r.app_id == app) {
            *last
        } else {
            let hash = recipient_hash(&to);
            let i = match index.find(hash, same) {
                Some(&i) => i,
                None => {
                    let i = records.len();
                    index.insert_unique(hash, i, |&j| recipient_hash(&records[j].to));
                    let receipts = spare.pop().inspect(|list| *spare_room -= list.capacity()).unwrap_or_default();
                    records.push(DeltaRecord { app_id: app, to, receipts });
                    prefetch_next_list(spare);
                    i
                }
            };
            *last = i;
            i
        };
        if !*indexed {
            records[i].receipts.push(receipt);
            *receipts += 1;
            return;
        }
        let hash = receipt_hash(i, &receipt);
        let at = |&(r, p): &(u32, u32)| &records[r as usize].receipts[p as usize];
        if let Some(&(r, p)) = placed.find(hash, |place| same_receipt(at(place), &receipt)) {
            records[r as usize].receipts[p as usize] = receipt;
            return;
        }
        let place = (i as u32, records[i].receipts.len() as u32);
        records[i].receipts.push(receipt);
        *receipts += 1;
        placed
            .insert_unique(hash, place, |&(r, p)| receipt_hash(r as usize, &records[r as usize].receipts[p as usize]));
    }

    /// Takes every record, in order of first receipt.
    pub fn drain(&mut self) -> Vec<DeltaRecord<Id>> {
        self.index.clear();
        self.placed.clear();
        (self.indexed, self.receipts) = (false, 0);
        let next = Vec::with_capacity(self.records.len().min(RETAINED_RECORDS));
        std::mem::replace(&mut self.records, next)
    }

    /// Takes back a drained record's receipt list once the record is sent,
    /// emptied, to hold a later record's receipts.
    pub fn recycle(&mut self, mut receipts: Vec<Receipt<Id>>) {
        let room = receipts.capacity();
        if room <= SPARE_LIST_RECEIPTS && self.spare_room + room <= SPARE_RECEIPTS {
            receipts.clear();
            self.spare_room += room;
            self.spare.push(receipts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(to: &str, msg_id: &str, version: u64) -> ReceiptChange {
        let receipt = Receipt::group(Id::from(msg_id), Id::from("g"), 1, 0, 0, version);
        ReceiptChange { app: Id::from("a"), to: Id::from(to), receipt }
    }

    #[test]
    fn receipts_are_indexed_from_a_second_pass_on_and_replace_earlier_ones() {
        let mut deltas = DeltaBuffer::new();
        deltas.begin_pass();
        deltas.push_in_pass(change("alice", "m1", 1));
        deltas.push_in_pass(change("alice", "m2", 1));
        assert!(deltas.placed.is_empty(), "one pass takes each message once: nothing to index");
        deltas.begin_pass();
        deltas.push_in_pass(change("alice", "m1", 2));
        deltas.push_in_pass(change("bob", "m1", 2));
        assert_eq!(deltas.len(), 3);
        let records = deltas.drain();
        let taken: Vec<Vec<(&str, Option<u64>)>> =
            records.iter().map(|r| r.receipts.iter().map(|c| (&*c.msg_id, c.version)).collect()).collect();
        assert_eq!(
            taken,
            [vec![("m1", Some(2)), ("m2", Some(1))], vec![("m1", Some(2))]],
            "the later m1 replaced the earlier, in place"
        );

        deltas.begin_pass();
        deltas.push_in_pass(change("carol", "m3", 1));
        assert!(deltas.placed.is_empty() && deltas.len() == 1, "a drain starts over unindexed");
    }

    #[test]
    fn each_recipient_of_each_app_gets_one_record_in_order_of_first_receipt() {
        let mut deltas = DeltaBuffer::new();
        let in_app = |app: &str, to: &str, msg_id: &str| ReceiptChange { app: Id::from(app), ..change(to, msg_id, 1) };
        // Runs of one recipient (taken from the last record), a recipient
        // seen before (found by hash), and one user id in two apps.
        for (app, to, msg_id) in
            [("a", "alice", "m1"), ("a", "alice", "m2"), ("a", "bob", "m3"), ("b", "alice", "m4"), ("a", "alice", "m5")]
        {
            deltas.push_in_pass(in_app(app, to, msg_id));
        }
        deltas.push_in_pass(in_app("b", "alice", "m6"));
        deltas.push_in_pass(in_app("b", "alice", "m7"));
        let records = deltas.drain();
        let taken: Vec<(&str, &str, Vec<&str>)> =
            records.iter().map(|r| (&*r.app_id, &*r.to, r.receipts.iter().map(|c| &*c.msg_id).collect())).collect();
        assert_eq!(
            taken,
            [("a", "alice", vec!["m1", "m2", "m5"]), ("a", "bob", vec!["m3"]), ("b", "alice", vec!["m4", "m6", "m7"]),]
        );
        deltas.push_in_pass(in_app("b", "alice", "m8"));
        let [record]: [DeltaRecord<Id>; 1] = deltas.drain().try_into().unwrap();
        assert_eq!((&*record.app_id, record.receipts.len()), ("b", 1), "a drained record is no hint");
    }

    #[test]
    fn a_recycled_list_comes_back_empty_and_a_huge_one_is_not_kept() {
        let mut deltas = DeltaBuffer::new();
        deltas.push(change("alice", "m1", 1));
        deltas.push(change("alice", "m2", 1));
        let [sent]: [DeltaRecord<Id>; 1] = deltas.drain().try_into().unwrap();
        let list = sent.receipts.as_ptr();
        deltas.recycle(sent.receipts);

        deltas.push(change("bob", "m3", 1));
        let [record]: [DeltaRecord<Id>; 1] = deltas.drain().try_into().unwrap();
        assert_eq!(record.receipts.as_ptr(), list, "the sent record's list holds the next record's receipts");
        assert_eq!(&*record.to, "bob");
        assert_eq!(record.receipts.iter().map(|r| &*r.msg_id).collect::<Vec<_>>(), ["m3"], "and nothing of before");

        deltas.recycle(Vec::with_capacity(SPARE_LIST_RECEIPTS + 1));
        assert!(deltas.spare.is_empty(), "a list with room for a huge record is dropped");

        // Kept lists have room for SPARE_RECEIPTS receipts at most, all
        // together; a list taken makes room for another.
        for _ in 0..SPARE_RECEIPTS / SPARE_LIST_RECEIPTS + 1 {
            deltas.recycle(Vec::with_capacity(SPARE_LIST_RECEIPTS));
        }
        assert_eq!(deltas.spare.len(), SPARE_RECEIPTS / SPARE_LIST_RECEIPTS, "the room of all kept lists is bounded");
        deltas.push(change("carol", "m4", 1));
        deltas.recycle(Vec::with_capacity(SPARE_LIST_RECEIPTS));
        assert_eq!(deltas.spare.len(), SPARE_RECEIPTS / SPARE_LIST_RECEIPTS, "a list taken makes room for one");
        assert_eq!(deltas.spare_room, SPARE_RECEIPTS);
    }
}
