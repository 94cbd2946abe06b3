//! The query API over real HTTP, against a worker on the real broker.

use crate::support::{ev::*, *};
use receiptd_wire::{Event, GroupMembers, GroupType, Id, MembersOp};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

const TOKEN_A1: &str = "token-for-app-a1-0123456789";
const TOKEN_A2: &str = "token-for-app-a2-0123456789";

fn call(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: Option<&[u8]>) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let (status, text) = http_request(addr, method, path, &headers, body);
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: {status} not JSON: {text:?}"));
    (status, value)
}

fn assert_error(status: u16, body: &Value, expected: u16, what: &str) {
    assert_eq!(status, expected, "{what}: {body}");
    assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{what}: {body}");
}

fn query_body(requester: &str, msgs: &[(&str, Value)]) -> Vec<u8> {
    let messages: Vec<Value> = msgs.iter().map(|(m, c)| json!({"msg_id": m, "conversation": c})).collect();
    serde_json::to_vec(&json!({"requester": requester, "messages": messages})).unwrap()
}

#[test]
fn query_api_auth_access_bad_input_paging_and_ops() {
    let topics = Topics::create("api");
    let producer = producer();
    let t = now_ms();
    let members: Vec<String> =
        std::iter::once("alice".to_string()).chain((0..10_000).map(|i| format!("m{i:05}"))).collect();
    produce_events(
        &producer,
        &topics.events,
        &[
            Event::GroupMembers(GroupMembers {
                app_id: APP.into(),
                group_id: "g1".into(),
                op: MembersOp::Snapshot,
                group_type: Some(GroupType::Work),
                members: members.iter().map(|u| Id::from(u.as_str())).collect(),
                at: t,
            }),
            sent("big", "alice", group("g1"), true, t + 1),
            read("m00003", group("g1"), &["big"], t + 2),
            sent("c1", "alice", c2c("bob"), true, t + 3),
            read("bob", c2c("alice"), &["c1"], t + 4),
            conversation_read("bob", "alice", t + 5),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::new(&topics, &format!("{}-g", topics.events), &dir.path().join("state"))
        .env("RECEIPTD_APPS__a1__TOKEN", TOKEN_A1)
        .env("RECEIPTD_APPS__a2__TOKEN", TOKEN_A2);
    worker.start();
    worker.wait_ready(Duration::from_secs(60));
    worker.wait_caught_up(&topics.events, Duration::from_secs(60));
    let addr = worker.http;
    let q = "/v1/apps/a1/receipts/query";
    let good = query_body(
        "alice",
        &[
            ("big", json!({"type":"group","group_id":"g1"})),
            ("c1", json!({"type":"c2c","peer":"bob"})),
            ("nope", json!({"type":"group","group_id":"g1"})),
        ],
    );

    // Auth matrix.
    assert_error(
        call(addr, "POST", q, None, Some(&good)).0,
        &call(addr, "POST", q, None, Some(&good)).1,
        401,
        "no token",
    );
    let (s, b) = call(addr, "POST", q, Some("wrong-token-0123456789"), Some(&good));
    assert_error(s, &b, 401, "wrong token");
    let (s, b) = call(addr, "POST", q, Some(TOKEN_A2), Some(&good));
    assert_error(s, &b, 403, "another app's token");
    let (s, b) = call(addr, "POST", "/v1/apps/a2/receipts/query", Some(TOKEN_A1), Some(&good));
    assert_error(s, &b, 403, "a1's token on a2");
    let (s, b) = call(addr, "POST", q, Some(TOKEN_A1), Some(&good));
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["receipts"][0],
        json!({"msg_id":"big","group_id":"g1","read_count":1,"unread_count":9_999,"timestamp":t + 2,"version":1})
    );
    assert_eq!(
        b["receipts"][1],
        json!({"msg_id":"c1","user_id":"bob","is_peer_read":true,"timestamp":t + 4,"version":1})
    );
    assert_eq!(b["errors"], json!([{"msg_id":"nope","code":"not_found"}]));

    // Only the sender sees receipts and lists.
    let (s, b) = call(
        addr,
        "POST",
        q,
        Some(TOKEN_A1),
        Some(&query_body("m00003", &[("big", json!({"type":"group","group_id":"g1"}))])),
    );
    assert_eq!((s, &b["errors"][0]["code"]), (200, &json!("forbidden")));
    let members_path = |extra: &str| format!("/v1/apps/a1/groups/g1/messages/big/members?{extra}");
    let (s, b) = call(addr, "GET", &members_path("filter=read&requester=m00003"), Some(TOKEN_A1), None);
    assert_error(s, &b, 403, "a member asking for the sender's list");

    // Bad input: always a 4xx with the JSON error body.
    let long_id = "x".repeat(129);
    let too_many =
        query_body("alice", &(0..101).map(|_| ("big", json!({"type":"group","group_id":"g1"}))).collect::<Vec<_>>());
    let oversized = vec![b' '; 200 * 1024];
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("malformed JSON", b"{\"requester\": ".to_vec()),
        ("truncated JSON", good[..good.len() / 2].to_vec()),
        ("missing body", Vec::new()),
        ("unknown field", br#"{"requester":"alice","messages":[],"extra":1}"#.to_vec()),
        ("empty requester", query_body("", &[("big", json!({"type":"group","group_id":"g1"}))])),
        ("requester over 128 bytes", query_body(&long_id, &[("big", json!({"type":"group","group_id":"g1"}))])),
        ("msg id over 128 bytes", query_body("alice", &[(long_id.as_str(), json!({"type":"group","group_id":"g1"}))])),
        ("no messages", query_body("alice", &[])),
        ("101 messages", too_many),
        ("bad conversation", query_body("alice", &[("big", json!({"type":"channel"}))])),
        ("oversized body", oversized),
    ];
    for (what, body) in &bodies {
        let (s, b) = call(addr, "POST", q, Some(TOKEN_A1), Some(body));
        assert!((400..500).contains(&s), "{what}: {s} {b}");
        assert_error(s, &b, s, what);
    }
    for (what, extra) in [
        ("unknown filter", "filter=maybe&requester=alice"),
        ("missing filter", "requester=alice"),
        ("missing requester", "filter=read"),
        ("count 0", "filter=read&requester=alice&count=0"),
        ("count 1001", "filter=read&requester=alice&count=1001"),
        ("count not a number", "filter=read&requester=alice&count=lots"),
        ("forged cursor", "filter=unread&requester=alice&cursor=0000000100000000"),
        ("garbage cursor", "filter=unread&requester=alice&cursor=%FF%FE"),
        ("unknown parameter", "filter=read&requester=alice&colour=blue"),
    ] {
        let (s, b) = call(addr, "GET", &members_path(extra), Some(TOKEN_A1), None);
        assert_error(s, &b, 400, what);
    }
    let (s, b) = call(addr, "GET", "/v1/apps/a1/nowhere", Some(TOKEN_A1), None);
    assert_error(s, &b, 404, "unknown path");
    let (s, b) = call(addr, "DELETE", q, Some(TOKEN_A1), None);
    assert_error(s, &b, 405, "wrong method");

    // Paging the unread list of a 10,000-member group to the end while reads arrive.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut read_meanwhile = BTreeSet::new();
    let mut page = 0;
    loop {
        let (s, b) = call(
            addr,
            "GET",
            &members_path(&format!("filter=unread&requester=alice&count=100&cursor={cursor}")),
            Some(TOKEN_A1),
            None,
        );
        assert_eq!(s, 200, "{b}");
        seen.extend(b["members"].as_array().unwrap().iter().map(|m| m["user_id"].as_str().unwrap().to_owned()));
        if b["is_finished"] == json!(true) {
            break;
        }
        cursor = b["next_cursor"].as_str().unwrap().to_owned();
        // Readers all over the list, ahead of and behind the cursor.
        let readers: Vec<String> = (0..5).map(|k| format!("m{:05}", (page * 977 + k * 2_003) % 10_000)).collect();
        let events: Vec<Event> = readers.iter().map(|r| read(r, group("g1"), &["big"], t + 10)).collect();
        produce_events(&producer, &topics.events, &events);
        read_meanwhile.extend(readers);
        page += 1;
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no member is listed twice");
    for m in &members[1..] {
        let never_read = *m != "m00003" && !read_meanwhile.contains(m);
        if never_read {
            assert!(unique.contains(m), "{m} stayed unread but was missed");
        }
    }
    assert!(!unique.contains(&"alice".to_string()) && !unique.contains(&"m00003".to_string()));
    assert!(page >= 90, "the list spanned {page} pages");

    // The read list agrees with the count once the reads are in.
    worker.wait_caught_up(&topics.events, Duration::from_secs(60));
    let (_, b) = call(addr, "GET", &members_path("filter=read&requester=alice&count=1000"), Some(TOKEN_A1), None);
    let readers = b["members"].as_array().unwrap();
    assert!(readers.iter().all(|m| m["read_at"].is_u64()));
    let (_, r) = call(
        addr,
        "POST",
        q,
        Some(TOKEN_A1),
        Some(&query_body("alice", &[("big", json!({"type":"group","group_id":"g1"}))])),
    );
    assert_eq!(r["receipts"][0]["read_count"].as_u64(), Some(readers.len() as u64));
    assert_eq!(
        r["receipts"][0]["read_count"].as_u64().unwrap() + r["receipts"][0]["unread_count"].as_u64().unwrap(),
        10_000
    );

    // The peer's conversation read mark.
    let (s, b) = call(addr, "GET", "/v1/apps/a1/c2c/alice/peers/bob/read?requester=alice", Some(TOKEN_A1), None);
    assert_eq!((s, b), (200, json!({"peer":"bob","timestamp":t + 5})));
    let (s, b) = call(addr, "GET", "/v1/apps/a1/c2c/alice/peers/bob/read?requester=bob", Some(TOKEN_A1), None);
    assert_error(s, &b, 403, "someone else's read mark");

    // Operations.
    assert_eq!(http_get(addr, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(addr, "/readyz").unwrap().0, 200);
    let metrics = http_get(addr, "/metrics").unwrap().1;
    for series in [
        "receiptd_events_total",
        "receiptd_ignored_total",
        "receiptd_dlq_records_total",
        "receiptd_flush_duration_seconds_bucket",
        "receiptd_flush_confirm_seconds_total",
        "receiptd_restore_seconds_total",
        "receiptd_decode_helper_wait_seconds_total",
        "receiptd_consumer_lag",
        "receiptd_delta_bytes_total",
        "receiptd_store_bytes",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
    assert!(metric_in(&metrics, "receiptd_store_open_seconds") > 0.0, "the store's open time is recorded");
    let (s, doc) = http_get(addr, "/openapi.json").unwrap();
    assert_eq!(s, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert!(doc["paths"]["/v1/apps/{app_id}/receipts/query"]["post"].is_object(), "{doc}");
    // Tokens never reach the logs.
    assert_eq!(worker.terminate(), 0);
    let log = std::fs::read_to_string(&worker.log).unwrap();
    assert!(!log.contains(TOKEN_A1) && !log.contains(TOKEN_A2));
}
