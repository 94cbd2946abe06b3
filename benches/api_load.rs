//! Query latency over HTTP while the worker folds a load, on a real Kafka
//! broker: a 100-member page of a 100,000-member group's unread and read
//! lists, and a 100-message `receipts/query`, measured idle and under load in
//! the same run, over one keep-alive connection.
//!
//! `cargo bench --bench api_load` (uses RECEIPTD_TEST_BROKERS, or starts a
//! broker with deploy/kafka.sh and stops it after).

#[path = "../tests/support.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use receiptd_loadgen::{Traffic, TrafficShape};
use receiptd_wire::{Event, GroupMembers, GroupType, Id, MembersOp};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{ev::*, *};

const TOKEN: &str = "bench-token-0123456789abcdef";
const OFFERED: u64 = 100_000;
/// Enough for the warm-up and the measurement at OFFERED events/s.
const LOAD_EVENTS: usize = 3_000_000;
/// Rounds of 2,000 requests per operation in each loaded phase.
const ROUNDS: usize = 5;

/// One keep-alive HTTP/1.1 connection.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Client { writer: s.try_clone().unwrap(), reader: BufReader::new(s) }
    }

    fn call(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.writer.write_all(head.as_bytes()).unwrap();
        self.writer.write_all(body).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut length = 0;
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, body)
    }
}

/// Prints p50, p99 and p99.9 in ms, and returns the p99.
fn percentiles(label: &str, mut samples: Vec<u128>) -> f64 {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)] as f64 / 1e6;
    println!(
        "{label:<64} p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms  ({} requests)",
        at(0.5),
        at(0.99),
        at(0.999),
        samples.len()
    );
    at(0.99)
}

/// Operations measured, in the order [`measure`] returns their p99. The last
/// is a control: `/healthz` reads no state, so it shows what the machine
/// alone (scheduling, loopback, HTTP) costs in the same run.
const OPERATIONS: [&str; 4] = [
    "100-member page, unread list, 100k group",
    "100-member page, read list, 100k group",
    "100-message receipts/query",
    "control: /healthz, reads no state",
];

fn measure(client: &mut Client, label: &str, rounds: usize) -> [f64; 4] {
    let receipts_body = serde_json::to_vec(&json!({
        "requester": "user000000",
        "messages": (0..100).map(|m| json!({"msg_id": format!("m{m}"), "conversation": {"type":"group","group_id":"huge"}})).collect::<Vec<_>>(),
    }))
    .unwrap();
    let mut p99 = [0.0; 4];
    for (i, filter) in ["unread", "read"].into_iter().enumerate() {
        let mut samples = Vec::with_capacity(rounds);
        let mut cursor = String::new();
        for _ in 0..rounds {
            let path = format!("/v1/apps/a1/groups/huge/messages/m0/members?filter={filter}&count=100&requester=user000000&cursor={cursor}");
            let t = Instant::now();
            let (status, body) = client.call("GET", &path, b"");
            samples.push(t.elapsed().as_nanos());
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            let page: Value = serde_json::from_slice(&body).unwrap();
            cursor = if page["is_finished"] == json!(true) {
                String::new()
            } else {
                page["next_cursor"].as_str().unwrap().to_owned()
            };
        }
        p99[i] = percentiles(&format!("{label}: {}", OPERATIONS[i]), samples);
    }
    // The same request `rounds` times, each timed and checked.
    let mut repeat = |method: &str, path: &str, body: &[u8]| -> Vec<u128> {
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                let (status, answer) = client.call(method, path, body);
                let took = t.elapsed().as_nanos();
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
                took
            })
            .collect()
    };
    let samples = repeat("POST", "/v1/apps/a1/receipts/query", &receipts_body);
    p99[2] = percentiles(&format!("{label}: {}", OPERATIONS[2]), samples);
    let samples = repeat("GET", "/healthz", b"");
    p99[3] = percentiles(&format!("{label}: {}", OPERATIONS[3]), samples);
    p99
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let _broker = BenchBroker::ensure();
    let topics = Topics::create("apiload");
    let producer = producer();
    let t = now_ms();
    let users: Vec<String> = (0..100_000).map(|i| format!("user{i:06}")).collect();
    let mut events: Vec<Event> = users
        .chunks(10_000)
        .enumerate()
        .map(|(i, chunk)| {
            Event::GroupMembers(GroupMembers {
                app_id: APP.into(),
                group_id: "huge".into(),
                op: if i == 0 { MembersOp::Snapshot } else { MembersOp::Join },
                group_type: (i == 0).then_some(GroupType::Work),
                members: chunk.iter().map(|u| Id::from(u.as_str())).collect(),
                at: t,
            })
        })
        .collect();
    events.extend((0..100).map(|m| sent(&format!("m{m}"), "user000000", group("huge"), true, t)));
    // m0 is read by every 10th member; the others by a few.
    for (i, u) in users.iter().enumerate().skip(1).filter(|(i, _)| i % 10 == 0) {
        let msgs: Vec<String> =
            if i % 1000 == 0 { (0..100).map(|m| format!("m{m}")).collect() } else { vec!["m0".into()] };
        let refs: Vec<&str> = msgs.iter().map(String::as_str).collect();
        events.push(read(u, group("huge"), &refs, t + 1));
    }
    produce_events(&producer, &topics.events, &events);

    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::new(&topics, &format!("{}-g", topics.events), &dir.path().join("state"))
        .env("RECEIPTD_APPS__a1__TOKEN", TOKEN);
    worker.start();
    worker.wait_ready(Duration::from_secs(120));
    worker.wait_caught_up(&topics.events, Duration::from_secs(120));
    let mut client = Client::new(worker.http);
    measure(&mut client, "idle", 2_000);

    // The load: another app's synthetic chat, offered at OFFERED events/s.
    // Serialized up front, so that the generator's own JSON work does not
    // compete with the worker for the 2 cores.
    let mut traffic = Traffic::new(TrafficShape { app_id: "load".into(), ..TrafficShape::demo() });
    let setup = traffic.take(0);
    let payloads: Vec<(String, Vec<u8>)> = (0..LOAD_EVENTS)
        .map(|_| {
            let e = traffic.next_event();
            (receiptd_wire::conversation_key(&e), serde_json::to_vec(&e).unwrap())
        })
        .collect();
    let running = Arc::new(AtomicBool::new(true));
    let flag = running.clone();
    let events_topic = topics.events.clone();
    let load = std::thread::spawn(move || {
        let producer = support::producer();
        produce_events(&producer, &events_topic, &setup);
        let started = Instant::now();
        let mut sent = 0u64;
        for chunk in payloads.chunks(1_000) {
            if !flag.load(Relaxed) {
                break;
            }
            for (key, payload) in chunk {
                produce_raw(&producer, &events_topic, key.as_bytes(), payload);
            }
            producer.poll(Duration::ZERO);
            sent += chunk.len() as u64;
            let due = Duration::from_secs_f64(sent as f64 / OFFERED as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        assert!(!flag.load(Relaxed), "the load ran out before the measurement ended; raise LOAD_EVENTS");
        sent as f64 / started.elapsed().as_secs_f64()
    });
    std::thread::sleep(Duration::from_secs(3));
    let phase = "under load";
    let mut rounds: Vec<[f64; 4]> = Vec::new();
    let folded_before = worker.metric("receiptd_records_in_total");
    let window = Instant::now();
    for round in 1..=ROUNDS {
        rounds.push(measure(&mut client, &format!("{phase}, round {round}"), 2_000));
    }
    let folded = (worker.metric("receiptd_records_in_total") - folded_before) / window.elapsed().as_secs_f64();
    running.store(false, Relaxed);
    let offered = load.join().unwrap();
    println!("\nmedian of {ROUNDS} rounds' p99 {phase}:");
    for (i, op) in OPERATIONS.iter().enumerate() {
        println!("  {op:<44} p99 {:>7.3} ms", median(rounds.iter().map(|r| r[i]).collect()));
    }
    println!("  load: offered {offered:.0} events/s, folded {folded:.0} events/s during the rounds");
    assert_eq!(worker.terminate(), 0);
    topics.delete(&[]);
}
