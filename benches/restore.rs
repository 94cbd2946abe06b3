//! Restoring partitions from the store, as a worker does when they are
//! assigned to it (at start-up, and after a kill -9 most of its time to
//! `/readyz`): messages restored a second, the partitions one after
//! another (`Store::load_partition` each) and side by side
//! (`Store::load_partitions`), in alternating rounds.
//!
//! The store holds four partitions, each the fold of its own stream of the
//! benchmarks' mix (`TrafficShape::bench`, another seed each), flushed
//! every 50,000 events as the worker flushes, then closed and opened again
//! as a restarted worker opens it. 2,500,000 events a partition by default
//! (`RECEIPTD_RESTORE_EVENTS`), about the drain bench's 10 M in all.
//!
//! `cargo bench --bench restore`

use receiptd_core::{DeltaBuffer, Effects, Limits, PartitionState, SettingsTable};
use receiptd_loadgen::{Traffic, TrafficShape};
use receiptd_store::{BatchBuffer, Store, StoreOptions};
use std::time::Instant;

#[global_allocator]
static ALLOC: receiptd_alloc::Allocator = receiptd_alloc::Allocator;

const PARTITIONS: [i32; 4] = [0, 1, 2, 3];
const FLUSH_EVERY: usize = 50_000;
const ROUNDS: usize = 5;

fn fill(store: &Store, partition: i32, events: usize) -> usize {
    let mut traffic = Traffic::new(TrafficShape { seed: 1 + partition as u64, ..TrafficShape::bench() });
    let (settings, limits, mut fx, mut deltas) =
        (SettingsTable::default(), Limits::default(), Effects::default(), DeltaBuffer::new());
    let mut state = PartitionState::new();
    let mut folded = 0;
    while folded < events {
        let chunk = traffic.take(FLUSH_EVERY.min(events - folded));
        for (i, e) in chunk.iter().enumerate() {
            state.apply(&settings, &limits, e, 1_732_200_000_000 + (folded + i) as u64, &mut fx);
        }
        folded += chunk.len();
        let mut batch = BatchBuffer::default();
        store.stage(&mut batch, partition, &mut state, &settings, &mut deltas, folded as i64);
        store.write(batch).expect("a write");
        deltas = DeltaBuffer::new();
    }
    state.message_count()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let events: usize = std::env::var("RECEIPTD_RESTORE_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_500_000);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let messages: usize = {
        let store = Store::open(dir.path(), &StoreOptions::default()).expect("a store");
        let messages = PARTITIONS.iter().map(|&p| fill(&store, p, events)).sum();
        store.sync().expect("a sync");
        messages
    };
    let store = Store::open(dir.path(), &StoreOptions::default()).expect("the store again");
    println!(
        "restore: {} partitions of {events} events each, {messages} messages; {} threads side by side",
        PARTITIONS.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get()).min(PARTITIONS.len())
    );
    let (mut one_by_one, mut side_by_side) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Alternate which goes first: the first load of a round meets a
        // colder block cache.
        for side in if round % 2 == 0 { [false, true] } else { [true, false] } {
            let started = Instant::now();
            let restored: usize = if side {
                store.load_partitions(&PARTITIONS).expect("a load").iter().map(|l| l.state.message_count()).sum()
            } else {
                PARTITIONS.iter().map(|&p| store.load_partition(p).expect("a load").0.message_count()).sum()
            };
            let seconds = started.elapsed().as_secs_f64();
            assert_eq!(restored, messages, "every message restored");
            println!(
                "round {round}: {}: {:.0} ms, {:.2} M messages/s",
                if side { "side by side" } else { "one by one" },
                seconds * 1e3,
                messages as f64 / seconds / 1e6
            );
            if side { &mut side_by_side } else { &mut one_by_one }.push(seconds);
        }
    }
    let ratios: Vec<f64> = one_by_one.iter().zip(&side_by_side).map(|(one, side)| side / one).collect();
    let (one, side) = (median(one_by_one), median(side_by_side));
    println!(
        "medians of {ROUNDS} rounds: one by one {:.0} ms ({:.2} M messages/s, {:.2} us a message), side by side {:.0} ms ({:.2} M messages/s); side by side / one by one: {:.3} (median of the rounds' ratios)",
        one * 1e3,
        messages as f64 / one / 1e6,
        one * 1e6 / messages as f64,
        side * 1e3,
        messages as f64 / side / 1e6,
        median(ratios)
    );
}
