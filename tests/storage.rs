//! A storage failure: RocksDB refuses writes (the store's test failpoint,
//! as a full or broken disk would). The worker stops consuming, moves no
//! offset past its last good write, and reports unhealthy; after the fault
//! clears and it restarts, its state equals the oracle of the log.

use crate::oracle::assert_state_matches;
use crate::support::*;
use receiptd_loadgen::{Traffic, TrafficShape};
use std::time::{Duration, Instant};

const FAILPOINT: &str = "RECEIPTD_FAILPOINT_STORE_WRITES";

#[test]
fn a_failing_store_stops_the_worker_unhealthy_and_loses_nothing() {
    let topics = Topics::create("storage");
    let events = Traffic::new(TrafficShape::small("a1", 5)).take(20_000);
    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::new(&topics, &format!("{}-g", topics.events), &dir.path().join("state"))
        .env("RECEIPTD_FLUSH__INTERVAL_MS", "20")
        .env(FAILPOINT, "8");
    worker.start();
    worker.wait_ready(Duration::from_secs(60));
    let writer = {
        let (topic, events) = (topics.events.clone(), events.clone());
        std::thread::spawn(move || {
            let producer = producer();
            for chunk in events.chunks(1_000) {
                produce_events(&producer, &topic, chunk);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // The 9th write fails: the worker goes unhealthy and stays up.
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(worker.http, "/healthz").map(|(s, _)| s).unwrap_or(0) != 503 {
        assert!(
            Instant::now() < deadline,
            "never unhealthy: {} records in, {} store writes; log:\n{}",
            worker.metric("receiptd_records_in_total"),
            worker.metric("receiptd_store_writes_total"),
            worker.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http_get(worker.http, "/readyz").unwrap().0, 503);
    assert_eq!(worker.metric("receiptd_store_failed"), 1.0);
    let end = end_offsets(&topics.events);
    let committed_then = committed(&worker.group, &topics.events, &end);
    writer.join().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let end = end_offsets(&topics.events);
    assert_eq!(committed(&worker.group, &topics.events, &end), committed_then, "no offset moves after the failure");
    assert_ne!(worker.terminate(), 0, "a worker whose store failed exits non-zero");
    let log = worker.log_text();
    assert!(log.contains("injected write failure"), "the log names the failure:\n{log}");
    assert!(!log.contains('\u{1b}'), "a log written to a file has no colour codes:\n{log}");
    let stored: i64 =
        worker.inspect()["partitions"].as_array().unwrap().iter().map(|p| p["next_offset"].as_i64().unwrap_or(0)).sum();
    assert!(stored < end.values().sum::<i64>(), "the failure came before the end of the log");
    assert!(committed_then.values().sum::<i64>() <= stored, "Kafka's offsets never pass the stored ones");

    // The fault clears; a restart folds from the last good checkpoint.
    let mut worker = worker.env(FAILPOINT, "");
    worker.start();
    worker.wait_ready(Duration::from_secs(60));
    worker.wait_caught_up(&topics.events, Duration::from_secs(120));
    assert_eq!(worker.terminate(), 0);
    assert_state_matches(&worker.inspect(), &events);
}
