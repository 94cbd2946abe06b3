//! Records that cannot be applied go to the DLQ with their reason; the records
//! after them are still processed.

use crate::support::{ev::*, *};
use receiptd_wire::{encode_event_bincode, MembersOp, BINCODE_CONTENT_TYPE, CONTENT_TYPE_HEADER};
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
    // A content type nobody decodes.
    produce_typed(&producer, &topics.events, b"a1/group/g1", b"bob read m1", "text/plain");
    // Then a good read, which must still be applied: in bincode, which only
    // its content-type header tells from JSON.
    let good = encode_event_bincode(&read("bob", group("g1"), &["m1"], t + 2));
    produce_typed(&producer, &topics.events, b"a1/group/g1", &good, BINCODE_CONTENT_TYPE);

    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::new(&topics, &format!("{}-g", topics.events), &dir.path().join("state"));
    worker.start();
    worker.wait_ready(Duration::from_secs(60));
    worker.wait_caught_up(&topics.events, Duration::from_secs(60));

    let dead = read_topic(&topics.dlq, Duration::from_secs(20), |r| r.len() >= 3);
    assert_eq!(dead.len(), 3, "{dead:?}");
    let mut reasons: Vec<&str> = dead.iter().map(|r| r.headers["receiptd-dlq-reason"].as_str()).collect();
    reasons.sort();
    assert_eq!(reasons, ["key_mismatch", "malformed", "unsupported_content_type"]);
    for r in &dead {
        assert_eq!(
            r.key.as_deref(),
            Some(if r.headers["receiptd-dlq-reason"] == "key_mismatch" { "a1/group/g2" } else { "a1/group/g1" })
        );
        assert!(r.headers["receiptd-dlq-source"].starts_with(&topics.events), "{:?}", r.headers);
        assert!(!r.headers["receiptd-dlq-detail"].is_empty());
    }
    // The original bytes are kept, and the content type with them.
    assert!(dead.iter().any(|r| r.payload == misplaced));
    let untyped = dead.iter().find(|r| r.headers["receiptd-dlq-reason"] == "unsupported_content_type").unwrap();
    assert_eq!(untyped.headers.get(CONTENT_TYPE_HEADER).map(String::as_str), Some("text/plain"), "{untyped:?}");

    let deltas = read_deltas(&topics.deltas, 1, Duration::from_secs(20));
    assert_eq!(deltas.len(), 1);
    assert_eq!(deltas[0].receipts[0].read_count, Some(1));
    assert_eq!(worker.metric("receiptd_dlq_records_total"), 3.0);
    assert_eq!(worker.terminate(), 0);
}

/// Absurd records: each goes to the DLQ with its reason, none takes the
/// worker down, and the read after them is applied. Payloads too big for the
/// DLQ topic are cut, with the original size in a header.
#[test]
fn absurd_records_land_in_the_dlq_without_harm() {
    let topics = Topics::create("hostile");
    // The events topic takes records up to 8 MiB, as a misconfigured
    // producer might send.
    let events = format!("{}-big", topics.events);
    create_topics_with(&[(&events, 1, vec![("max.message.bytes", "8388608")])]);
    let topics = Topics { events, ..topics };
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("message.max.bytes", "9000000")
        .create()
        .unwrap();
    let t = now_ms();
    produce_events(
        &producer,
        &topics.events,
        &[members("g1", MembersOp::Snapshot, &["alice", "bob"], t), sent("m1", "alice", group("g1"), true, t)],
    );
    let key = b"a1/group/g1";
    let ids: Vec<String> = (0..100_000).map(|i| format!("m{i}")).collect();
    let many_ids = serde_json::json!({"type":"message_read","app_id":"a1","reader":"bob",
        "conversation":{"type":"group","group_id":"g1"},"msg_ids":ids,"read_at":t});
    let huge_id = serde_json::json!({"type":"message_read","app_id":"a1","reader":"x".repeat(1 << 20),
        "conversation":{"type":"group","group_id":"g1"},"msg_ids":["m1"],"read_at":t});
    let users: Vec<String> = (0..200_000).map(|i| format!("user{i}")).collect();
    let huge_snapshot = serde_json::json!({"type":"group_members","app_id":"a1","group_id":"g1",
        "op":"snapshot","group_type":"Work","members":users,"at":t});
    let over_limit = vec![b' '; 5 << 20];
    let absurd: Vec<(&str, Vec<u8>)> = vec![
        ("invalid_field", serde_json::to_vec(&many_ids).unwrap()),
        ("invalid_field", serde_json::to_vec(&huge_id).unwrap()),
        ("invalid_field", serde_json::to_vec(&huge_snapshot).unwrap()),
        ("too_large", over_limit),
    ];
    for (_, payload) in &absurd {
        produce_raw(&producer, &topics.events, key, payload);
    }
    produce_events(&producer, &topics.events, &[read("bob", group("g1"), &["m1"], t + 1)]);

    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::new(&topics, &format!("{}-g", topics.events), &dir.path().join("state"));
    worker.start();
    worker.wait_ready(Duration::from_secs(60));
    worker.wait_caught_up(&topics.events, Duration::from_secs(60));

    let dead = read_topic(&topics.dlq, Duration::from_secs(20), |r| r.len() >= absurd.len());
    assert_eq!(dead.len(), absurd.len(), "{:?}", dead.iter().map(|r| &r.headers).collect::<Vec<_>>());
    for (r, (reason, original)) in dead.iter().zip(&absurd) {
        assert_eq!(r.headers["receiptd-dlq-reason"], *reason, "{:?}", r.headers);
        if original.len() > 900 * 1024 {
            assert_eq!(r.headers["receiptd-dlq-truncated-from"], original.len().to_string());
            assert_eq!(r.payload[..], original[..900 * 1024]);
        } else {
            assert_eq!(&r.payload, original);
        }
    }
    let deltas = read_deltas(&topics.deltas, 1, Duration::from_secs(20));
    assert_eq!(deltas[0].receipts[0].read_count, Some(1));
    assert_eq!(http_get(worker.http, "/healthz").unwrap().0, 200);
    assert_eq!(worker.terminate(), 0);
}
