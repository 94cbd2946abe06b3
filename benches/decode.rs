//! Decoding `receipts.events` records: key check and validation included,
//! as the worker runs it per record. The bench mix of the drain and latency
//! benches as JSON, through `decode_event` (the fast path for the usual
//! shape) and through serde_json alone (`decode_event_reference`), in the
//! same run.
//!
//! `cargo bench --bench decode`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use receiptd_loadgen::{Traffic, TrafficShape};
use receiptd_wire::{conversation_key, decode_event, decode_event_reference, ContentType, DecodeError, Event};
use std::hint::black_box;

// The binary's allocator, so that the figures are the worker's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RECORDS: usize = 100_000;

fn decode(c: &mut Criterion) {
    let mut traffic = Traffic::new(TrafficShape::bench());
    let records: Vec<(String, Vec<u8>)> = (0..RECORDS)
        .map(|_| {
            let e = traffic.next_event();
            (conversation_key(&e), serde_json::to_vec(&e).expect("events serialize"))
        })
        .collect();
    let bytes: usize = records.iter().map(|(_, p)| p.len()).sum();
    println!("{RECORDS} records, {bytes} payload bytes ({} per record on average)", bytes / RECORDS);
    let mut group = c.benchmark_group("decode_json");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.sample_size(20);
    type Decoder = fn(Option<&[u8]>, Option<&[u8]>, ContentType) -> Result<Event, DecodeError>;
    let decoders: [(&str, Decoder); 2] = [("fast_path", decode_event), ("serde_json_only", decode_event_reference)];
    for (name, decoder) in decoders {
        group.bench_function(name, |b| {
            b.iter(|| {
                for (key, payload) in &records {
                    black_box(decoder(Some(key.as_bytes()), Some(payload), ContentType::Json).expect("decodes"));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
