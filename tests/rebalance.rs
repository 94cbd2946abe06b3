//! Partitions that move to another worker and back are folded whole.
//!
//! Worker A folds the first half of a log in a 4-partition topic. Worker B
//! joins A's group and takes some of the partitions (A flushes and
//! checkpoints them on revoke). The second half is written while B owns
//! them. B stops, and A takes its partitions back, restoring each from its
//! own checkpoint: every record written after it has to reach A's fold
//! again, through the fetch queue A routes the returning partitions to.
//! A's final state must equal the oracle over the whole log.

use crate::oracle::assert_state_matches;
use crate::support::*;
use rdkafka::producer::Producer;
use receiptd_loadgen::{Traffic, TrafficShape};
use std::time::Duration;

const EVENTS: usize = 12_000;

#[test]
fn partitions_that_move_away_and_back_are_folded_whole() {
    let topics = Topics::create("rebalance");
    let events = Traffic::new(TrafficShape::small("a1", 7)).take(EVENTS);
    let (first_half, second_half) = events.split_at(EVENTS / 2);
    let dir = tempfile::tempdir().unwrap();
    let group = format!("{}-group", topics.events);
    let producer = producer();

    let mut a = Worker::new(&topics, &group, &dir.path().join("a"));
    a.start();
    a.wait_ready(Duration::from_secs(60));
    produce_events(&producer, &topics.events, first_half);
    producer.flush(Duration::from_secs(30)).unwrap();
    a.wait_caught_up(&topics.events, Duration::from_secs(60));

    let mut b =
        Worker::new(&topics, &group, &dir.path().join("b")).env("RECEIPTD_KAFKA__INSTANCE_ID", &format!("{group}-w2"));
    b.start();
    b.wait_ready(Duration::from_secs(60));
    b.wait_until("B owns some partitions", Duration::from_secs(60), |b| {
        b.metric("receiptd_partitions_assigned") >= 1.0
    });
    a.wait_until("A gave some partitions up", Duration::from_secs(60), |a| {
        a.metric("receiptd_partitions_assigned") < 4.0
    });

    produce_events(&producer, &topics.events, second_half);
    producer.flush(Duration::from_secs(30)).unwrap();
    // B leaves; A gets its partitions back once B's session times out.
    assert_eq!(b.terminate(), 0, "B exits 0; log:\n{}", b.log_tail());
    let end: i64 = end_offsets(&topics.events).values().sum();
    a.wait_until("A owns every partition again and checkpointed the whole log", Duration::from_secs(120), |a| {
        a.metric("receiptd_partitions_assigned") == 4.0 && a.metric("receiptd_checkpoint_offset") as i64 == end
    });
    assert_eq!(a.terminate(), 0, "A exits 0; log:\n{}", a.log_tail());
    assert_state_matches(&a.inspect(), &events);
}
