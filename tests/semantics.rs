//! The contract's semantics end to end, on the real broker: privacy (a read
//! made while receipts were off stays hidden after they are turned back on),
//! reciprocity, revocation, expiry, group-type gating, and a 100,000-member
//! group's exact counts.

use crate::support::{ev::*, *};
use receiptd_wire::{AppConfig, Event, GroupMembers, GroupType, Id, MembersOp, MessageRevoked, Setting, UserSettings};
use std::time::{Duration, Instant};

fn produce_settings(producer: &rdkafka::producer::BaseProducer, topic: &str, settings: &[Setting]) {
    use rdkafka::producer::Producer;
    for s in settings {
        produce_raw(producer, topic, receiptd_wire::settings_key(s).as_bytes(), &serde_json::to_vec(s).unwrap());
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

fn receipts_switch(user: &str, on: bool) -> Setting {
    Setting::UserSettings(UserSettings { app_id: APP.into(), user: user.into(), read_receipts: on, at: 0 })
}

fn snapshot(g: &str, group_type: GroupType, members: &[&str], at: u64) -> Event {
    Event::GroupMembers(GroupMembers {
        app_id: APP.into(),
        group_id: g.into(),
        op: MembersOp::Snapshot,
        group_type: Some(group_type),
        members: members.iter().map(|m| Id::from(m.to_string())).collect(),
        at,
    })
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn privacy_reciprocity_revocation_expiry_and_group_type_gating() {
    let topics = Topics::create("semantics");
    let producer = producer();
    produce_settings(
        &producer,
        &topics.settings,
        &[
            Setting::AppConfig(AppConfig { retention_days: 1, ..AppConfig::defaults(APP) }),
            receipts_switch("dave", false),
            receipts_switch("frank", false),
        ],
    );
    let t = now_ms();
    produce_events(
        &producer,
        &topics.events,
        &[
            snapshot("g1", GroupType::Work, &["alice", "bob", "carol", "dave", "erin", "frank"], t),
            snapshot("room", GroupType::AVChatRoom, &["alice", "bob"], t),
            sent("m1", "alice", group("g1"), true, t + 1),
            read("dave", group("g1"), &["m1"], t + 2), // receipts off: hidden
            Event::MessageRead(receiptd_wire::MessageRead {
                private: true, // a private read: hidden
                ..match read("bob", group("g1"), &["m1"], t + 3) {
                    Event::MessageRead(r) => r,
                    _ => unreachable!(),
                }
            }),
            read("carol", group("g1"), &["m1"], t + 4),
            sent("m2", "alice", group("room"), true, t + 5), // AVChatRoom: receipts disabled by default
            read("bob", group("room"), &["m2"], t + 6),
            sent("m3", "alice", group("g1"), true, t + 7),
            read("bob", group("g1"), &["m3"], t + 8),
            Event::MessageRevoked(MessageRevoked {
                app_id: APP.into(),
                msg_id: "m3".into(),
                sender: "alice".into(),
                conversation: group("g1"),
                at: t + 9,
            }),
            read("erin", group("g1"), &["m3"], t + 10), // after revocation: nothing
            sent("m4", "alice", group("g1"), true, t - 3 * 86_400_000), // already past retention
            sent("m5", "frank", group("g1"), true, t + 11), // frank has receipts off
            read("bob", group("g1"), &["m5"], t + 12),  // reciprocity: frank gets nothing
        ],
    );

    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::new(&topics, &format!("{}-g", topics.events), &dir.path().join("state"));
    worker.start();
    worker.wait_ready(Duration::from_secs(60));
    worker.wait_caught_up(&topics.events, Duration::from_secs(60));
    assert_eq!(worker.metric("receiptd_settings_records_total"), 3.0);
    assert_eq!(worker.metric("receiptd_ignored_total{reason=\"group_type_disabled\"}"), 1.0);
    assert_eq!(worker.metric("receiptd_ignored_total{reason=\"revoked\"}"), 1.0);
    assert_eq!(worker.metric("receiptd_ignored_total{reason=\"expired\"}"), 1.0);
    assert_eq!(worker.metric("receiptd_hidden_reads_total"), 2.0);

    // dave turns receipts back on; his earlier read must stay hidden.
    produce_settings(&producer, &topics.settings, &[receipts_switch("dave", true)]);
    wait_for("the settings change", Duration::from_secs(30), || {
        worker.metric("receiptd_settings_records_total") == 4.0
    });
    produce_events(&producer, &topics.events, &[read("erin", group("g1"), &["m1"], t + 20)]);
    worker.wait_caught_up(&topics.events, Duration::from_secs(60));
    assert_eq!(worker.terminate(), 0);

    let deltas = all_deltas(&topics.deltas);
    assert!(deltas.iter().all(|d| d.to == "alice"), "only alice gets receipts (frank's are off): {deltas:?}");
    let m1: Vec<_> = deltas.iter().flat_map(|d| &d.receipts).filter(|r| r.msg_id == "m1").collect();
    let counts: Vec<_> =
        m1.iter().map(|r| (r.read_count.unwrap(), r.unread_count.unwrap(), r.version.unwrap())).collect();
    // carol's read: 1 read, bob (private), dave (off) and erin unread; frank too.
    // erin's read: 2 read; dave's read stays hidden after re-enabling.
    assert_eq!(counts, vec![(1, 4, 1), (2, 3, 2)]);
    assert!(deltas.iter().flat_map(|d| &d.receipts).all(|r| r.msg_id != "m2" && r.msg_id != "m4" && r.msg_id != "m5"));

    let state = worker.inspect();
    let find = |id: &str| state["messages"].as_array().unwrap().iter().find(|m| m["msg_id"] == id).cloned();
    assert!(find("m4").is_none(), "a message past retention on arrival is never tracked");
    let m3 = find("m3").unwrap();
    assert_eq!((m3["tracking"].as_str(), m3["read_count"].as_u64()), (Some("Revoked"), Some(0)));
    assert_eq!(find("m2").unwrap()["tracking"], "GroupTypeDisabled");
    assert_eq!(find("m1").unwrap()["hidden_reads"], 2);
}

#[test]
fn a_100k_member_group_has_exact_counts() {
    let topics = Topics::create("huge");
    let producer = producer();
    let t = now_ms();
    let users: Vec<String> = (0..100_000).map(|i| format!("user{i:06}")).collect();
    let mut events = Vec::new();
    for (i, chunk) in users.chunks(10_000).enumerate() {
        events.push(Event::GroupMembers(GroupMembers {
            app_id: APP.into(),
            group_id: "huge".into(),
            op: if i == 0 { MembersOp::Snapshot } else { MembersOp::Join },
            group_type: (i == 0).then_some(GroupType::Community),
            members: chunk.iter().map(|u| Id::from(u.as_str())).collect(),
            at: t,
        }));
    }
    // Community groups need receipts enabled by the app.
    produce_settings(
        &producer,
        &topics.settings,
        &[Setting::AppConfig(AppConfig {
            group_receipt_types: vec![GroupType::Work, GroupType::Community],
            ..AppConfig::defaults(APP)
        })],
    );
    events.push(sent("big", "user000000", group("huge"), true, t + 1));
    // Read by 3,000 members in two runs, with a kill -9 between: past 1,024
    // readers a message's readers are stored in pages of their own, which
    // the restarted worker restores and folds on from.
    let reads = |members: &[String]| -> Vec<Event> {
        members.iter().map(|u| read(u, group("huge"), &["big"], t + 2)).collect()
    };
    events.extend(reads(&users[1..=1_500]));
    produce_events(&producer, &topics.events, &events);

    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::new(&topics, &format!("{}-g", topics.events), &dir.path().join("state"));
    worker.start();
    worker.wait_ready(Duration::from_secs(60));
    worker.wait_caught_up(&topics.events, Duration::from_secs(120));
    worker.kill9();

    let mut events = reads(&users[1_501..=3_000]);
    // 500 members who never read leave; a later joiner reads (not in the audience).
    events.push(Event::GroupMembers(GroupMembers {
        app_id: APP.into(),
        group_id: "huge".into(),
        op: MembersOp::Leave,
        group_type: None,
        members: users[50_000..50_500].iter().map(|u| Id::from(u.as_str())).collect(),
        at: t + 3,
    }));
    events.push(members("huge", MembersOp::Join, &["latecomer"], t + 3));
    events.push(read("latecomer", group("huge"), &["big"], t + 4));
    events.push(read(&users[3_001], group("huge"), &["big"], t + 5));
    produce_events(&producer, &topics.events, &events);
    worker.start();
    worker.wait_ready(Duration::from_secs(60));
    worker.wait_caught_up(&topics.events, Duration::from_secs(120));
    // At least one page since the restart: 1,024 readers since the last.
    assert!(worker.metric("receiptd_reader_pages_sealed_total") >= 1.0, "no reader page sealed");
    assert_eq!(worker.terminate(), 0);

    let deltas = all_deltas(&topics.deltas);
    let last = deltas.iter().flat_map(|d| &d.receipts).max_by_key(|r| r.version).unwrap();
    // 99,999 in the audience; 3,001 read; 500 non-readers left.
    assert_eq!(
        (last.read_count, last.unread_count, last.version),
        (Some(3_001), Some(99_999 - 3_001 - 500), Some(3_001))
    );
    let state = worker.inspect();
    let big = &state["messages"][0];
    assert_eq!((big["read_count"].as_u64(), big["unread_count"].as_u64()), (Some(3_001), Some(96_498)));
    // A page sealed in each run at least (1,024 readers since the last).
    assert!(big["reader_pages"].as_u64() >= Some(2), "{}", big["reader_pages"]);
}
