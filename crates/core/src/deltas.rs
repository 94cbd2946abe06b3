//! Coalescing receipts into delta records: one record per recipient per flush.

use receiptd_wire::{DeltaRecord, Receipt};
use rustc_hash::FxHashMap;

/// One receipt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptChange {
    /// The app.
    pub app: String,
    /// The recipient.
    pub to: String,
    /// The receipt, with absolute counts and the message's version.
    pub receipt: Receipt,
}

/// Groups receipts by recipient across partitions, in order of first receipt.
#[derive(Debug, Default)]
pub struct DeltaBuffer {
    index: FxHashMap<(String, String), usize>,
    records: Vec<DeltaRecord>,
    receipts: usize,
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
        let records = &mut self.records;
        let i = *self.index.entry((app, to)).or_insert_with_key(|(app, to)| {
            records.push(DeltaRecord { app_id: app.clone(), to: to.clone(), receipts: Vec::new() });
            records.len() - 1
        });
        // take_receipts yields each message (and each mark) once per call, so
        // appending is enough: no receipt of one message repeats in a flush.
        self.records[i].receipts.push(receipt);
        self.receipts += 1;
    }

    /// Takes every record, in order of first receipt.
    pub fn drain(&mut self) -> Vec<DeltaRecord> {
        self.index.clear();
        self.receipts = 0;
        std::mem::take(&mut self.records)
    }
}
