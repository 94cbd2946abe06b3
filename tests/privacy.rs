//! Privacy over a randomized run: users whose receipts are off, and private
//! reads, never show in any delta, member list or count.
//!
//! One user in ten has receipts off from the start (settings topic), one read
//! in ten is private, the rest is `TrafficShape::small` chat. The oracle says
//! which reads may be revealed; every delta, every count and the read lists
//! of group messages over the API must agree with it.

use crate::oracle::assert_state_matches_with;
use crate::support::*;
use rdkafka::producer::Producer;
use receiptd_loadgen::{Traffic, TrafficShape};
use receiptd_wire::{Setting, UserSettings};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const TOKEN: &str = "privacy-token-0123456789";

#[test]
fn receipts_off_and_private_reads_never_show_in_deltas_lists_or_counts() {
    let topics = Topics::create("privacy");
    let shape = TrafficShape { private_percent: 10, ..TrafficShape::small("a1", 99) };
    let users = shape.users;
    let events = Traffic::new(shape).take(20_000);
    let off: BTreeSet<String> = (0..users).filter(|u| u % 10 == 3).map(|u| format!("u{u}")).collect();

    let producer = producer();
    for user in &off {
        let s = Setting::UserSettings(UserSettings {
            app_id: "a1".into(),
            user: user.clone(),
            read_receipts: false,
            at: 0,
        });
        let key = receiptd_wire::settings_key(&s);
        produce_raw(&producer, &topics.settings, key.as_bytes(), &serde_json::to_vec(&s).unwrap());
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    produce_events(&producer, &topics.events, &events);

    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::new(&topics, &format!("{}-g", topics.events), &dir.path().join("state"))
        .env("RECEIPTD_APPS__a1__TOKEN", TOKEN);
    worker.start();
    worker.wait_ready(Duration::from_secs(60));
    worker.wait_caught_up(&topics.events, Duration::from_secs(120));

    // Counts and hidden reads, against the oracle (inspect reads a stopped
    // worker's store; it is started again for the API below).
    assert_eq!(worker.terminate(), 0);
    let state = worker.inspect();
    let oracle = assert_state_matches_with(&state, &events, off.clone());
    worker.start();
    worker.wait_ready(Duration::from_secs(60));

    // Deltas: nobody with receipts off receives any (reciprocal privacy) or is
    // named in one; no count ever exceeds the revealed readers.
    let deltas = all_deltas(&topics.deltas);
    assert!(deltas.len() > 100, "the run should produce deltas");
    for d in &deltas {
        assert!(!off.contains(&d.to), "a user with receipts off received a delta");
        for r in &d.receipts {
            if let Some(user) = &r.user_id {
                assert!(!off.contains(user), "a user with receipts off is named in a receipt");
            }
            if r.msg_id.is_empty() {
                continue; // a conversation mark
            }
            let (_, group, readers) = oracle.revealed(&r.msg_id).expect("receipts only for tracked messages");
            match group {
                Some(_) => assert!(r.read_count.unwrap() as usize <= readers.len(), "count above revealed readers"),
                None => {
                    // A C2C peer-read receipt exists only for a revealed read.
                    assert!(!readers.is_empty(), "peer-read receipt for a hidden read of {}", r.msg_id);
                }
            }
        }
    }

    // Read lists over the API: exactly the revealed readers.
    let mut checked = 0;
    for m in state["messages"].as_array().unwrap() {
        if m["tracking"] != "Tracked" || m["conversation"]["type"] != "group" || m["read_count"] == 0 {
            continue;
        }
        let (id, sender, group) = (
            m["msg_id"].as_str().unwrap(),
            m["sender"].as_str().unwrap(),
            m["conversation"]["group_id"].as_str().unwrap(),
        );
        let path =
            format!("/v1/apps/a1/groups/{group}/messages/{id}/members?filter=read&count=1000&requester={sender}");
        let auth = format!("Bearer {TOKEN}");
        let (status, body) = http_request(worker.http, "GET", &path, &[("Authorization", &auth)], None);
        if off.contains(sender) {
            // Reciprocal privacy: a sender whose receipts are off sees none.
            assert_eq!(status, 403, "{body}");
            assert!(body.contains("receipts_disabled"), "{body}");
            continue;
        }
        assert_eq!(status, 200, "{body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        let listed: BTreeSet<&str> =
            page["members"].as_array().unwrap().iter().map(|u| u["user_id"].as_str().unwrap()).collect();
        let (_, _, readers) = oracle.revealed(id).unwrap();
        assert_eq!(listed, readers, "read list of {id}");
        assert!(listed.iter().all(|u| !off.contains(*u)));
        checked += 1;
    }
    assert!(checked > 50, "enough group messages with readers were checked ({checked})");
    assert_eq!(worker.terminate(), 0);
}
