//! The pure fold on one core: pre-decoded events into a `PartitionState`,
//! receipts taken every 1,000 events (one flush window's worth).
//!
//! `cargo bench --bench fold`

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use receiptd_core::{DeltaBuffer, Effects, Limits, PartitionState, SettingsTable};
use receiptd_loadgen::{Traffic, TrafficShape};

fn fold(c: &mut Criterion) {
    let events = Traffic::new(TrafficShape::demo()).take(200_000);
    let settings = SettingsTable::default();
    let limits = Limits::default();
    let mut group = c.benchmark_group("fold");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(10);
    group.bench_function("demo_mix_200k", |b| {
        b.iter_batched(
            PartitionState::new,
            |mut state| {
                let mut fx = Effects::default();
                let mut deltas = DeltaBuffer::new();
                for (i, e) in events.iter().enumerate() {
                    state.apply(&settings, &limits, e, i as u64, &mut fx);
                    if i % 1_000 == 999 {
                        for r in state.take_receipts(&settings) {
                            deltas.push(r);
                        }
                        std::hint::black_box(deltas.drain());
                        std::hint::black_box(state.take_dirty());
                    }
                }
                state
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, fold);
criterion_main!(benches);
