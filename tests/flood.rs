//! A flood of reads for messages that never arrive: the hold buffer stays at
//! its cap, the overflow is dropped and counted, the worker keeps up, and its
//! memory stays bounded.
//!
//! CI floods 300,000 reads; `RECEIPTD_FLOOD_READS=10000000` runs the full
//! size (`cargo test --release --test integration flood -- --nocapture`).

use crate::support::{ev::*, *};
use rdkafka::producer::Producer;
use receiptd_wire::MembersOp;
use std::time::{Duration, Instant};

const CAP: u64 = 10_000;
/// Peak RSS allowed: RocksDB's block cache and memtables (64 + 64 MiB by
/// default), librdkafka's queues (32 MiB in, 64 MiB out) and the held reads.
const RSS_BOUND_MIB: u64 = 512;

#[test]
fn a_flood_of_reads_for_missing_messages_stays_within_the_hold_cap() {
    let reads: u64 = std::env::var("RECEIPTD_FLOOD_READS").ok().and_then(|v| v.parse().ok()).unwrap_or(300_000);
    let topics = Topics::create("flood");
    let producer = producer();
    let t = now_ms();
    produce_events(&producer, &topics.events, &[members("g1", MembersOp::Snapshot, &["alice", "bob"], t)]);
    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::new(&topics, &format!("{}-g", topics.events), &dir.path().join("state"))
        .env("RECEIPTD_HOLD__MAX_READS", &CAP.to_string());
    worker.start();
    worker.wait_ready(Duration::from_secs(60));

    let started = Instant::now();
    for i in 0..reads {
        let payload = format!(
            r#"{{"type":"message_read","app_id":"a1","reader":"bob","conversation":{{"type":"group","group_id":"g1"}},"msg_ids":["never{i}"],"read_at":{t}}}"#
        );
        produce_raw(&producer, &topics.events, b"a1/group/g1", payload.as_bytes());
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(300)).unwrap();
    worker.wait_caught_up(&topics.events, Duration::from_secs(1200));
    let took = started.elapsed();

    assert_eq!(worker.metric("receiptd_held_reads"), CAP as f64, "the hold buffer sits at its cap");
    let overflow = worker.metric("receiptd_ignored_total{reason=\"hold_overflow\"}");
    assert_eq!(overflow, (reads - CAP) as f64, "every read past the cap is dropped and counted");
    let rss = worker.peak_rss_mib();
    eprintln!("{reads} reads for missing messages folded in {took:?}; peak RSS {rss} MiB (bound {RSS_BOUND_MIB} MiB)");
    assert!(rss < RSS_BOUND_MIB, "peak RSS {rss} MiB over the documented bound of {RSS_BOUND_MIB} MiB");
    assert_eq!(worker.terminate(), 0);
}
