//! kill -9 mid-stream, many times: nothing lost, nothing counted twice.
//!
//! A worker fed a log while it is being written (C2C and groups of 2 to 100
//! members with churn, duplicates, early and private reads, and a few poison
//! records) is killed with SIGKILL ten times at random moments (mid-flush,
//! right after a restart while it restores and joins the group, while reads
//! are held) and stopped once with SIGTERM mid-load, and restarted each time.
//! Its final state must equal an independent oracle computed from the log
//! alone, and (state and last delta of every message) an uninterrupted run.
//! The DLQ holds the poison records and nothing else.

use crate::oracle::assert_state_matches;
use crate::support::*;
use rdkafka::producer::Producer;
use receiptd_loadgen::{Rng, Traffic, TrafficShape};
use receiptd_wire::DeltaRecord;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events in CI; `RECEIPTD_CHAOS_EVENTS=1000000` runs the full size.
const EVENTS: usize = 40_000;
const KILLS: usize = 10;
/// The log is written in this many chunks, 400 ms apart, whatever its size.
const CHUNKS: usize = 50;
const POISON: usize = 5;

/// The newest receipt per (recipient, message or conversation peer).
fn last_receipts(deltas: &[DeltaRecord]) -> BTreeMap<(String, String, String), (Option<u64>, u64, String)> {
    let mut last: BTreeMap<(String, String, String), (Option<u64>, u64, String)> = BTreeMap::new();
    for d in deltas {
        for r in &d.receipts {
            let key = (d.to.clone(), r.msg_id.clone(), r.user_id.clone().unwrap_or_default());
            let value = (r.version, r.timestamp, serde_json::to_string(r).unwrap());
            let newer = last.get(&key).is_none_or(|old| (value.0, value.1) >= (old.0, old.1));
            if newer {
                last.insert(key, value);
            }
        }
    }
    last
}

#[test]
fn kill_9_mid_stream_loses_no_read_and_counts_none_twice() {
    let topics = Topics::create("crash");
    let uninterrupted_topics = topics.with_deltas("uninterrupted");
    let size = std::env::var("RECEIPTD_CHAOS_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(EVENTS);
    let events = Traffic::new(TrafficShape::small("a1", 42)).take(size);
    let chunk = size.div_ceil(CHUNKS);
    let dir = tempfile::tempdir().unwrap();

    let poison: Vec<Vec<u8>> =
        (0..POISON).map(|i| format!("{{\"type\":\"message_read\", poison {i}").into_bytes()).collect();

    // The log is written over about 20 s while the crashing worker runs.
    let writing = Arc::new(AtomicBool::new(true));
    let producer_thread = {
        let (topic, events, writing, poison) = (topics.events.clone(), events.clone(), writing.clone(), poison.clone());
        std::thread::spawn(move || {
            let producer = producer();
            for (i, part) in events.chunks(chunk).enumerate() {
                produce_events(&producer, &topic, part);
                if let Some(p) = poison.get(i / 8).filter(|_| i % 8 == 3) {
                    produce_raw(&producer, &topic, b"a1/group/g0", p);
                }
                std::thread::sleep(Duration::from_millis(400));
            }
            producer.flush(Duration::from_secs(30)).unwrap();
            writing.store(false, Relaxed);
        })
    };

    let mut crashing = Worker::new(&topics, &format!("{}-crashing", topics.events), &dir.path().join("crashing"))
        .env("RECEIPTD_FLUSH__INTERVAL_MS", "20")
        // Flushes staged in slices of a few entities, so that kills land
        // between slices too; the uninterrupted run stages in one step.
        .env("RECEIPTD_FLUSH__STAGE_SLICE_ENTITIES", "16")
        // The poll loop's helper threads, off by default, decode and
        // destroy this run's large batches, killed or not: the
        // uninterrupted run, without them, is the reference.
        .env("RECEIPTD_POLL_LOOP__HELPER_THREADS", "true");
    crashing.start();
    crashing.wait_ready(Duration::from_secs(60));
    let mut rng = Rng::new(std::process::id() as u64);
    let mut kills_mid_stream = 0;
    for k in 0..KILLS {
        if k % 3 == 2 {
            // Mid-restore and mid-join: right after a start, before ready.
            crashing.kill9();
            crashing.start();
            std::thread::sleep(Duration::from_millis(20 + rng.below(300)));
        } else {
            std::thread::sleep(Duration::from_millis(200 + rng.below(700)));
        }
        if writing.load(Relaxed) {
            kills_mid_stream += 1;
        }
        crashing.kill9();
        crashing.start();
        crashing.wait_ready(Duration::from_secs(60));
        if k == KILLS / 2 {
            // SIGTERM under load: flush, checkpoint, leave the group, exit 0.
            assert!(writing.load(Relaxed), "the log was written too fast for a SIGTERM under load");
            std::thread::sleep(Duration::from_millis(300));
            let stopping = Instant::now();
            assert_eq!(crashing.terminate(), 0, "SIGTERM under load exits 0; log:\n{}", crashing.log_tail());
            assert!(stopping.elapsed() < Duration::from_secs(15), "SIGTERM took {:?}", stopping.elapsed());
            assert!(crashing.log_tail().contains("final flush and checkpoint done"));
            crashing.start();
            crashing.wait_ready(Duration::from_secs(60));
        }
    }
    producer_thread.join().unwrap();
    assert!(
        kills_mid_stream >= KILLS - 2,
        "the log was written too fast to kill mid-stream ({kills_mid_stream} kills)"
    );
    crashing.wait_caught_up(&topics.events, Duration::from_secs(120));
    let slices = crashing.metric("receiptd_flush_slices_total");
    let flushes = crashing.metric("receiptd_store_writes_total");
    assert!(slices > flushes, "flushes were staged in slices ({slices} slices for {flushes} flushes)");
    assert_eq!(crashing.terminate(), 0, "SIGTERM exits 0; log:\n{}", crashing.log_tail());

    let started = Instant::now();
    let mut steady =
        Worker::new(&uninterrupted_topics, &format!("{}-steady", topics.events), &dir.path().join("steady"));
    steady.start();
    steady.wait_ready(Duration::from_secs(60));
    steady.wait_caught_up(&topics.events, Duration::from_secs(120));
    assert_eq!(steady.terminate(), 0);
    eprintln!("uninterrupted run folded {} events in {:?}", events.len(), started.elapsed());

    let crashed_state = crashing.inspect();
    let steady_state = steady.inspect();

    // The oracle, from the log alone.
    assert_state_matches(&crashed_state, &events);

    // The DLQ holds the poison records (a replay may repeat them), nothing else.
    // Read until every poison record is seen (replays may repeat some, so a
    // count alone could stop early), or 20 s.
    let dead =
        read_topic(&topics.dlq, Duration::from_secs(20), |r| poison.iter().all(|p| r.iter().any(|d| d.payload == *p)));
    assert!(dead.iter().all(|r| poison.contains(&r.payload)), "unexpected DLQ records");
    assert!(poison.iter().all(|p| dead.iter().any(|r| r.payload == *p)), "a poison record is missing from the DLQ");
    // Record content never reaches the logs (the DLQ log line names the
    // reason and the source offset only).
    let log = std::fs::read_to_string(&crashing.log).unwrap();
    assert!(log.contains("record sent to DLQ") && !log.contains("poison"), "record content in the log");

    let messages = steady_state["messages"].as_array().unwrap();
    assert!(messages.len() > 5_000, "the load should track thousands of messages");
    let most_read = messages.iter().filter_map(|m| m["read_count"].as_u64()).max().unwrap_or(0);
    let unread_left = messages.iter().filter_map(|m| m["unread_count"].as_u64()).max().unwrap_or(0);
    eprintln!("{} messages; most readers of one message: {most_read}; most unread: {unread_left}", messages.len());
    assert!(most_read >= 2 && unread_left >= 10, "the load should have multi-reader group messages");
    assert!(crashed_state == steady_state, "state after kill -9 differs from an uninterrupted run");

    // The last delta of every message is the same; replays only repeat versions.
    let crashed_last = last_receipts(&all_deltas(&topics.deltas));
    let steady_last = last_receipts(&all_deltas(&uninterrupted_topics.deltas));
    assert!(steady_last.len() > 1_000);
    assert_eq!(crashed_last.len(), steady_last.len());
    for (key, value) in &steady_last {
        assert_eq!(crashed_last.get(key), Some(value), "last receipt of {key:?}");
    }
}
