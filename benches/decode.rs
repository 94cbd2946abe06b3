//! Decoding `receipts.events` records: key check and validation included,
//! as the worker runs it per record. The bench mix of the drain and latency
//! benches as JSON, through `decode_event` (the fast path for the usual
//! shape) and through serde_json alone (`decode_event_reference`), in the
//! same run.
//!
//! Also the other way: the delta records the worker writes, as JSON, by
//! `DeltaRecord::write_json` (what the worker uses) and by `serde_json`, in
//! the same run. The records are those the fold of 200,000 events of the
//! same mix produces, receipts taken every 1,000 events.
//!
//! `cargo bench --bench decode`
//!
//! Counted instead of timed: `benches/counted.sh decode` runs this binary
//! under callgrind with `RECEIPTD_DECODE_COUNTED=fast|serde` and reports
//! instructions and simulated cache misses per record; `fast_read_batch`
//! is the fast path on the mix whose group reads name up to ten messages
//! (`TrafficShape::read_batch`).

use criterion::{criterion_group, Criterion, Throughput};
use receiptd_core::{DeltaBuffer, Effects, Id, Limits, PartitionState, SettingsTable};
use receiptd_loadgen::{Traffic, TrafficShape};
use receiptd_wire::{
    conversation_key, decode_event, decode_event_reference, ContentType, DecodeError, DeltaRecord, Event,
};
use std::hint::black_box;

// The binary's allocator, so that the figures are the worker's.
#[global_allocator]
static ALLOCATOR: receiptd_alloc::Allocator = receiptd_alloc::Allocator;

const RECORDS: usize = 100_000;

type Decoder = fn(Option<&[u8]>, Option<&[u8]>, ContentType) -> Result<Event, DecodeError>;

/// The bench mix as (key, JSON payload) records, group reads naming up
/// to `read_batch` messages.
fn records(read_batch: usize) -> Vec<(String, Vec<u8>)> {
    let mut traffic = Traffic::new(TrafficShape { read_batch, ..TrafficShape::bench() });
    (0..RECORDS)
        .map(|_| {
            let e = traffic.next_event();
            (conversation_key(&e), serde_json::to_vec(&e).expect("events serialize"))
        })
        .collect()
}

fn decode_all(records: &[(String, Vec<u8>)], decoder: Decoder) {
    for (key, payload) in records {
        black_box(decoder(Some(key.as_bytes()), Some(payload), ContentType::Json).expect("decodes"));
    }
}

/// What callgrind counts (by this name): every record decoded once.
#[inline(never)]
fn counted_decodes(records: &[(String, Vec<u8>)], decoder: Decoder) {
    decode_all(records, decoder);
}

fn decode(c: &mut Criterion) {
    let records = records(1);
    let bytes: usize = records.iter().map(|(_, p)| p.len()).sum();
    println!("{RECORDS} records, {bytes} payload bytes ({} per record on average)", bytes / RECORDS);
    let mut group = c.benchmark_group("decode_json");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.sample_size(20);
    let decoders: [(&str, Decoder); 2] = [("fast_path", decode_event), ("serde_json_only", decode_event_reference)];
    for (name, decoder) in decoders {
        group.bench_function(name, |b| b.iter(|| decode_all(&records, decoder)));
    }
    group.finish();
}

/// The delta records of folding the bench mix, as the worker's flushes
/// would hand them to the producer.
fn delta_records() -> Vec<DeltaRecord<Id>> {
    let (settings, limits) = (SettingsTable::default(), Limits::default());
    let (mut state, mut fx, mut deltas) = (PartitionState::new(), Effects::default(), DeltaBuffer::new());
    let mut records = Vec::new();
    for (i, e) in Traffic::new(TrafficShape::bench()).take(200_000).iter().enumerate() {
        state.apply(&settings, &limits, e, 2, &mut fx);
        if i % 1_000 == 999 {
            state.take_receipts(&settings, &mut deltas);
            records.extend(deltas.drain());
        }
    }
    records
}

fn encode_deltas(c: &mut Criterion) {
    let records = delta_records();
    let receipts: usize = records.iter().map(|r| r.receipts.len()).sum();
    println!("{} delta records, {receipts} receipts", records.len());
    let mut group = c.benchmark_group("encode_deltas");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.sample_size(20);
    // One buffer reused for every record, as the worker does.
    let mut out = Vec::new();
    group.bench_function("write_json", |b| {
        b.iter(|| {
            for r in &records {
                out.clear();
                r.write_json(&mut out);
                black_box(&out);
            }
        })
    });
    group.bench_function("serde_json", |b| {
        b.iter(|| {
            for r in &records {
                out.clear();
                serde_json::to_writer(&mut out, r).expect("delta records serialize");
                black_box(&out);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, decode, encode_deltas);

fn main() {
    if let Ok(case) = std::env::var("RECEIPTD_DECODE_COUNTED") {
        let (decoder, read_batch): (Decoder, usize) = match case.as_str() {
            "fast" => (decode_event, 1),
            "serde" => (decode_event_reference, 1),
            "fast_read_batch" => (decode_event, 10),
            other => panic!("RECEIPTD_DECODE_COUNTED={other}: expected fast, serde or fast_read_batch"),
        };
        counted_decodes(&records(read_batch), decoder);
        println!("decoded {RECORDS} records ({case})");
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
