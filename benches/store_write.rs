//! Writing flushes into RocksDB: a write batch in key order, each
//! partition's memtable inserts starting from the last one's place (the
//! store's default), against the batch as staged, in dirtied order
//! (`StoreOptions::sorted_writes` false), in one run.
//!
//! The benchmarks' mix (`TrafficShape::bench`, as the drain bench appends
//! it) is folded into four partitions, a conversation's events in one.
//! Every 35,000 events, about one flush of a drain at its rate on this
//! machine, all four are staged into one batch, as the worker stages them,
//! and the same batch is written to both stores, in turn first. Timed: the calling thread's wall time
//! in `Store::write` (the memtable inserts, and the write-ahead log's
//! write, not synced), per record. 10 M events by default
//! (`RECEIPTD_STORE_WRITE_EVENTS`), about the drain bench's.
//!
//! `cargo bench --bench store_write`

use receiptd_core::{DeltaBuffer, Effects, Limits, PartitionState, SettingsTable};
use receiptd_loadgen::{Traffic, TrafficShape};
use receiptd_store::{BatchBuffer, Store, StoreOptions};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: receiptd_alloc::Allocator = receiptd_alloc::Allocator;

const PARTITIONS: i32 = 4;
const EVENTS_PER_FLUSH: usize = 35_000;
/// Consecutive runs of flushes, each giving a ratio.
const BLOCKS: usize = 5;

fn main() {
    let events: usize =
        std::env::var("RECEIPTD_STORE_WRITE_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    let (sorted_dir, staged_dir) =
        (tempfile::tempdir().expect("a directory"), tempfile::tempdir().expect("a directory"));
    let sorted = Store::open(sorted_dir.path(), &StoreOptions::default()).expect("a store");
    let as_staged = Store::open(staged_dir.path(), &StoreOptions { sorted_writes: false, ..StoreOptions::default() })
        .expect("a store");
    let (settings, limits, mut fx) = (SettingsTable::default(), Limits::default(), Effects::default());
    let mut traffic = Traffic::new(TrafficShape::bench());
    let mut states: Vec<PartitionState> = (0..PARTITIONS).map(|_| PartitionState::new()).collect();
    let mut pending = traffic.setup();
    let mut folded = 0u64;
    let flushes = events.div_ceil(EVENTS_PER_FLUSH);
    let per_block = flushes.div_ceil(BLOCKS);
    // Per block: time in sorted writes, time in writes as staged, records.
    let mut blocks = vec![(Duration::ZERO, Duration::ZERO, 0usize); BLOCKS];
    for flush in 0..flushes {
        pending.extend((0..EVENTS_PER_FLUSH).map(|_| traffic.next_event()));
        for e in pending.drain(..) {
            // A conversation's events on one partition, as the producer keys them.
            let key = receiptd_wire::conversation_key(&e);
            let hash =
                key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
            states[(hash % PARTITIONS as u64) as usize].apply(
                &settings,
                &limits,
                &e,
                1_732_200_000_000 + folded,
                &mut fx,
            );
            folded += 1;
        }
        let mut batch = BatchBuffer::default();
        for (p, state) in states.iter_mut().enumerate() {
            sorted.stage(&mut batch, p as i32, state, &settings, &mut DeltaBuffer::new(), folded as i64);
        }
        let block = &mut blocks[flush / per_block];
        block.2 += batch.len();
        // In turn first: the second write of a flush meets warmer caches.
        let order = if flush % 2 == 0 { [true, false] } else { [false, true] };
        for sorting in order {
            let (store, spent) = if sorting { (&sorted, &mut block.0) } else { (&as_staged, &mut block.1) };
            let batch = batch.clone();
            let started = Instant::now();
            store.write(batch).expect("a write");
            *spent += started.elapsed();
        }
    }
    let ns = |d: Duration, records: usize| d.as_nanos() as f64 / records as f64;
    let mut ratios = Vec::new();
    for (i, (in_order, as_staged, records)) in blocks.iter().enumerate().filter(|(_, b)| b.2 > 0) {
        let ratio = in_order.as_secs_f64() / as_staged.as_secs_f64();
        println!(
            "block {i}: {records} records; in key order {:.0} ns a record, as staged {:.0}; in order / as staged {ratio:.3}",
            ns(*in_order, *records),
            ns(*as_staged, *records)
        );
        ratios.push(ratio);
    }
    let records: usize = blocks.iter().map(|b| b.2).sum();
    let (in_order, staged): (Duration, Duration) = (blocks.iter().map(|b| b.0).sum(), blocks.iter().map(|b| b.1).sum());
    ratios.sort_by(f64::total_cmp);
    println!(
        "store_write: {events} events in {flushes} flushes, {records} records ({:.3} an event); in key order {:.0} ns a record, as staged {:.0}; in order / as staged {:.3} over all, {:.3} the median of {} blocks",
        records as f64 / events as f64,
        ns(in_order, records),
        ns(staged, records),
        in_order.as_secs_f64() / staged.as_secs_f64(),
        ratios[ratios.len() / 2],
        ratios.len()
    );
}
