//! Records that cannot be applied go to the DLQ with their reason; the records
//! after them are still processed.

use crate::support::{ev::*, *};
use receiptd_wire::MembersOp;
use std::time::Duration;

#[test]
fn poison_and_key_mismatched_records_land_in_the_dlq_and_the_rest_is_processed() {
    let topics = Topics::create("dlq");
    let producer = producer();
    let t = now_ms();
    produce_events(
        &producer,
        &topics.events,
        &[members("g1", MembersOp::Snapshot, &["alice", "bob"], t), sent("m1", "alice", group("g1"), true, t)],
    );
    // Not JSON at all.
    produce_raw(&producer, &topics.events, b"a1/group/g1", b"{\"type\":\"message_read\", garbage");
    // A valid event under another conversation's key.
    let misplaced = serde_json::to_vec(&read("bob", group("g1"), &["m1"], t + 1)).unwrap();
    produce_raw(&producer, &topics.events, b"a1/group/g2", &misplaced);
    // Then a good read, which must still be applied.
    produce_events(&producer, &topics.events, &[read("bob", group("g1"), &["m1"], t + 2)]);

    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::new(&topics, &format!("{}-g", topics.events), &dir.path().join("state"));
    worker.start();
    worker.wait_ready(Duration::from_secs(60));
    worker.wait_caught_up(&topics.events, Duration::from_secs(60));

    let dead = read_topic(&topics.dlq, Duration::from_secs(20), |r| r.len() >= 2);
    assert_eq!(dead.len(), 2, "{dead:?}");
    let mut reasons: Vec<&str> = dead.iter().map(|r| r.headers["receiptd-dlq-reason"].as_str()).collect();
    reasons.sort();
    assert_eq!(reasons, ["key_mismatch", "malformed"]);
    for r in &dead {
        assert_eq!(
            r.key.as_deref(),
            Some(if r.headers["receiptd-dlq-reason"] == "malformed" { "a1/group/g1" } else { "a1/group/g2" })
        );
        assert!(r.headers["receiptd-dlq-source"].starts_with(&topics.events), "{:?}", r.headers);
        assert!(!r.headers["receiptd-dlq-detail"].is_empty());
    }
    // The original bytes are kept.
    assert!(dead.iter().any(|r| r.payload == misplaced));

    let deltas = read_deltas(&topics.deltas, 1, Duration::from_secs(20));
    assert_eq!(deltas.len(), 1);
    assert_eq!(deltas[0].receipts[0].read_count, Some(1));
    assert_eq!(worker.metric("receiptd_dlq_records_total"), 2.0);
    assert_eq!(worker.terminate(), 0);
}
