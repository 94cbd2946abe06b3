//! Coalescing receipts into delta records: one record per recipient per flush.

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

/// Groups receipts by recipient across partitions, in order of first receipt.
#[derive(Debug, Default)]
pub struct DeltaBuffer {
    /// Indexes into `records`, hashed by (app, recipient). Every id is
    /// shared with the state: nothing is copied until serialization.
    index: HashTable<usize>,
    records: Vec<DeltaRecord<Id>>,
    receipts: usize,
}

fn recipient_hash(app: &str, to: &str) -> u64 {
    FxBuildHasher.hash_one((app, to))
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

    /// Adds one receipt.
    pub fn push(&mut self, change: ReceiptChange) {
        let ReceiptChange { app, to, receipt } = change;
        let DeltaBuffer { index, records, receipts } = self;
        let hash = recipient_hash(&app, &to);
        let same = |&i: &usize| *records[i].app_id == *app && *records[i].to == *to;
        let i = match index.find(hash, same) {
            Some(&i) => i,
            None => {
                let i = records.len();
                index.insert_unique(hash, i, |&j| recipient_hash(&records[j].app_id, &records[j].to));
                records.push(DeltaRecord { app_id: app, to, receipts: Vec::new() });
                i
            }
        };
        // take_receipts yields each message (and each mark) once per call, so
        // appending is enough: no receipt of one message repeats in a flush.
        records[i].receipts.push(receipt);
        *receipts += 1;
    }

    /// Takes every record, in order of first receipt.
    pub fn drain(&mut self) -> Vec<DeltaRecord<Id>> {
        self.index.clear();
        self.receipts = 0;
        crate::state::take_retaining(&mut self.records)
    }
}
