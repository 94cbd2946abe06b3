//! A scripted conversation, end to end: exactly the expected delta records.

use crate::support::{ev::*, *};
use receiptd_wire::{DeltaRecord, MembersOp, Receipt};
use std::time::Duration;

fn group_receipt(msg: &str, g: &str, read: u32, unread: u32, timestamp: u64, version: u64) -> Receipt {
    Receipt::group(msg.into(), g.into(), read, unread, timestamp, version)
}

fn sorted(mut r: DeltaRecord) -> DeltaRecord {
    r.receipts.sort_by(|a, b| (&a.msg_id, &a.user_id).cmp(&(&b.msg_id, &b.user_id)));
    r
}

#[test]
fn scripted_conversation_yields_exactly_the_expected_deltas() {
    let topics = Topics::create("pipeline");
    let producer = producer();
    let t = now_ms();
    // Phase 1: nine events, flushed together (max_pending_records = 9).
    produce_events(
        &producer,
        &topics.events,
        &[
            members("g1", MembersOp::Snapshot, &["alice", "bob", "carol", "dave"], t),
            sent("m1", "alice", group("g1"), true, t + 1),
            sent("m2", "alice", c2c("bob"), true, t + 2),
            read("bob", group("g1"), &["m1"], t + 10),
            read("carol", group("g1"), &["m1"], t + 11),
            read("bob", c2c("alice"), &["m2"], t + 12),
            conversation_read("bob", "alice", t + 13),
            read("alice", group("g1"), &["m1"], t + 14), // the sender: ignored
            read("bob", group("g1"), &["m1"], t + 15),   // a duplicate: ignored
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::new(&topics, &format!("{}-g", topics.events), &dir.path().join("state"))
        .env("RECEIPTD_FLUSH__INTERVAL_MS", "60000")
        .env("RECEIPTD_FLUSH__MAX_PENDING_RECORDS", "9")
        .env("RECEIPTD_FLUSH__WHEN_CAUGHT_UP", "false");
    worker.start();
    worker.wait_ready(Duration::from_secs(60));

    let first = read_deltas(&topics.deltas, 1, Duration::from_secs(30));
    assert_eq!(first.len(), 1, "one record for alice: {first:?}");
    let expected = DeltaRecord {
        app_id: "a1".into(),
        to: "alice".into(),
        receipts: vec![
            Receipt::conversation("bob".into(), t + 13),
            group_receipt("m1", "g1", 2, 1, t + 11, 2),
            Receipt::c2c("m2".into(), "bob".into(), true, t + 12, 1),
        ],
    };
    assert_eq!(sorted(first[0].clone()), expected);

    // Phase 2: nine more; only dave's read changes anything revealed.
    produce_events(
        &producer,
        &topics.events,
        &[
            members("g1", MembersOp::Join, &["erin"], t + 20),
            read("erin", group("g1"), &["m1"], t + 21), // joined after m1: not in its audience
            read("dave", group("g1"), &["m1"], t + 22),
            read("bob", group("g1"), &["m1"], t + 23),
            sent("m3", "carol", group("g1"), false, t + 24),
            read("bob", group("g1"), &["m3"], t + 25),  // m3 wants no receipts
            read("erin", group("g1"), &["m9"], t + 26), // held: m9 never arrives
            read("mallory", group("g1"), &["m1"], t + 27), // an outsider
            conversation_read("bob", "alice", t + 5),   // older than the stored mark
        ],
    );
    let all = read_deltas(&topics.deltas, 2, Duration::from_secs(30));
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        all[1],
        DeltaRecord {
            app_id: "a1".into(),
            to: "alice".into(),
            receipts: vec![group_receipt("m1", "g1", 3, 0, t + 22, 3)]
        }
    );
    assert_eq!(worker.metric("receiptd_ignored_total{reason=\"sender\"}"), 1.0);
    assert_eq!(worker.metric("receiptd_ignored_total{reason=\"duplicate\"}"), 2.0);
    assert_eq!(worker.metric("receiptd_ignored_total{reason=\"not_in_audience\"}"), 2.0);
    assert_eq!(worker.metric("receiptd_ignored_total{reason=\"no_receipt_requested\"}"), 1.0);
    assert_eq!(worker.metric("receiptd_ignored_total{reason=\"stale_mark\"}"), 1.0);
    assert_eq!(worker.metric("receiptd_held_reads"), 1.0);
    // The store writer's time in RocksDB is measured, call by call.
    worker.wait_until("a store write", Duration::from_secs(10), |w| w.metric("receiptd_store_writes_total") >= 1.0);
    let (write_total, write_max) = (
        worker.metric("receiptd_store_op_seconds_total{op=\"write\"}"),
        worker.metric("receiptd_store_op_max_seconds{op=\"write\"}"),
    );
    assert!(write_max > 0.0 && write_max <= write_total, "write time {write_total} s, longest {write_max} s");

    assert_eq!(worker.terminate(), 0, "SIGTERM exits 0; log:\n{}", worker.log_tail());
    // Delta records are keyed {app}/{recipient}.
    let keys: Vec<_> = read_topic(&topics.deltas, Duration::from_secs(10), |r| r.len() >= 2)
        .into_iter()
        .map(|r| r.key.unwrap_or_default())
        .collect();
    assert_eq!(keys, vec!["a1/alice", "a1/alice"]);
    let state = worker.inspect();
    let m1 = state["messages"].as_array().unwrap().iter().find(|m| m["msg_id"] == "m1").unwrap();
    assert_eq!(
        (m1["read_count"].as_u64(), m1["unread_count"].as_u64(), m1["version"].as_u64()),
        (Some(3), Some(0), Some(3))
    );
}

/// With the default `flush.when_caught_up`, a worker whose input is drained
/// flushes at once: a read's receipt comes out long before a 60 s window
/// would let it.
#[test]
fn a_drained_input_is_flushed_without_waiting_out_the_window() {
    let topics = Topics::create("caughtup");
    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::new(&topics, &format!("{}-g", topics.events), &dir.path().join("state"))
        .env("RECEIPTD_FLUSH__INTERVAL_MS", "60000");
    worker.start();
    worker.wait_ready(Duration::from_secs(60));
    let t = now_ms();
    produce_events(
        &producer(),
        &topics.events,
        &[
            members("g1", MembersOp::Snapshot, &["alice", "bob", "carol"], t),
            sent("m1", "alice", group("g1"), true, t + 1),
            read("bob", group("g1"), &["m1"], t + 10),
        ],
    );
    let expected = group_receipt("m1", "g1", 1, 1, t + 10, 1);
    let has_read = |records: &[DeltaRecord]| records.iter().any(|r| r.receipts.contains(&expected));
    let records = read_deltas_until(&topics.deltas, Duration::from_secs(20), has_read);
    assert!(has_read(&records), "no receipt within 20 s of a 60 s window: {records:?}\n{}", worker.log_tail());
    assert!(worker.metric("receiptd_flush_starts_total{trigger=\"caught_up\"}") >= 1.0);
    assert_eq!(worker.metric("receiptd_flush_starts_total{trigger=\"window\"}"), 0.0);
    assert_eq!(worker.terminate(), 0);
}

#[test]
fn input_held_at_the_pending_limit_is_taken_later_and_nothing_is_lost() {
    let topics = Topics::create("held");
    let t = now_ms();
    let users: Vec<String> = (0..200).map(|k| format!("u{k}")).collect();
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let messages: Vec<String> = (0..10).map(|k| format!("m{k}")).collect();
    let mut events = vec![members("g1", MembersOp::Snapshot, &names, t)];
    events.extend(messages.iter().map(|m| sent(m, "u0", group("g1"), true, t + 1)));
    // One read an event: 1,990 events, far past the pending limit below.
    for reader in &names[1..] {
        events.extend(messages.iter().map(|m| read(reader, group("g1"), &[m], t + 2)));
    }
    produce_events(&producer(), &topics.events, &events);

    // Input is held once 10 records are pending while the one flush in
    // flight waits for the broker: at once, with the whole input waiting.
    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::new(&topics, &format!("{}-g", topics.events), &dir.path().join("state"))
        .env("RECEIPTD_FLUSH__MAX_PENDING_RECORDS", "5")
        .env("RECEIPTD_FLUSH__MAX_IN_FLIGHT", "1");
    worker.start();
    worker.wait_caught_up(&topics.events, Duration::from_secs(60));

    let all_read = |records: &[DeltaRecord]| {
        messages
            .iter()
            .all(|m| records.iter().flat_map(|r| &r.receipts).any(|r| r.msg_id == *m && r.read_count == Some(199)))
    };
    let records = read_deltas_until(&topics.deltas, Duration::from_secs(30), all_read);
    assert!(all_read(&records), "every message read by all 199 others: {records:?}\n{}", worker.log_tail());
    let receipts = || records.iter().flat_map(|r| &r.receipts);
    assert_eq!(receipts().filter_map(|r| r.read_count).max(), Some(199), "no read counted twice");
    assert!(receipts().filter(|r| r.read_count == Some(199)).all(|r| r.unread_count == Some(0)));
    assert!(worker.metric("receiptd_input_held_total") >= 1.0, "input was never held:\n{}", worker.log_tail());
    assert_eq!(worker.terminate(), 0);
}
