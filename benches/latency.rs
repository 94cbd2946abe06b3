//! Read-to-delta latency on a real Kafka broker: the time from a read being
//! appended to the events topic to its receipt being visible to a consumer of
//! the deltas topic, against a bare produce→consume pipe on the same broker
//! in the same run.
//!
//! First the worker's drain rate is measured on a prefilled backlog. Then the
//! bench mix is offered at 25%, 50%, 80% and 100% of that rate; one event in 100 is a
//! probe: a read of a C2C message of its own, whose receipt is traced, and a
//! record on a pipe topic, read back by a plain consumer. This runs with the
//! defaults (a 50 ms window, and a flush as soon as the input is drained),
//! then with the window alone at 50 ms and at 5 ms. Every mode drains its
//! own backlog first (so that each worker holds the same state), and all are
//! offered shares of the first mode's drain rate, so that their rows compare.
//!
//! `cargo bench --bench latency`. Uses RECEIPTD_TEST_BROKERS, or starts a
//! broker with deploy/kafka.sh and stops it after.

#[path = "../tests/support.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use receiptd_loadgen::{Traffic, TrafficShape};
use receiptd_wire::{conversation_key, DeltaRecord, Event};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{ev::*, *};

const PROBE_EVERY: u64 = 100;
const SECONDS: u64 = 10;

/// Reads a topic from its end, calling `seen(payload, now)` for each record.
fn tail(topic: &str, partitions: i32, stop: Arc<AtomicBool>, seen: impl Fn(&[u8], Instant) + Send + 'static) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("latency-tail-{topic}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::End).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    // Let the assignment settle before anything is measured.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        consumer.poll(Duration::from_millis(50));
    }
    std::thread::spawn(move || {
        while !stop.load(Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                seen(m.payload().unwrap_or(&[]), Instant::now());
            }
        }
    });
}

fn pct(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)]
}

/// Offers the mix at `rate` for SECONDS with probes; returns (engine, pipe)
/// latencies in ms.
fn run_load(
    worker: &Worker,
    topics: &Topics,
    pipe: &str,
    rate: f64,
    traffic: &mut Traffic,
    probe_base: u64,
) -> (Vec<f64>, Vec<f64>, f64) {
    let total = rate as u64 * SECONDS;
    let probes = total / PROBE_EVERY;
    let producer = producer();
    // The probes' messages exist before their reads.
    let sends: Vec<Event> = (0..probes)
        .map(|i| {
            let p = probe_base + i;
            let e = sent(&format!("p{p}"), &format!("ps{p}"), c2c(&format!("pr{p}")), true, now_ms());
            match e {
                Event::MessageSent(mut s) => {
                    s.app_id = "probe".into();
                    Event::MessageSent(s)
                }
                other => other,
            }
        })
        .collect();
    produce_events(&producer, &topics.events, &sends);
    let payloads: Vec<(String, Vec<u8>)> = (0..total - probes)
        .map(|_| {
            let e = traffic.next_event();
            (conversation_key(&e), serde_json::to_vec(&e).unwrap())
        })
        .collect();

    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let engine: Arc<Mutex<Vec<f64>>> = Arc::default();
    let piped: Arc<Mutex<Vec<f64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (times, engine) = (sent_at.clone(), engine.clone());
        tail(&topics.deltas, 4, stop.clone(), move |payload, now| {
            let Ok(record) = serde_json::from_slice::<DeltaRecord>(payload) else { return };
            if record.app_id != "probe" {
                return;
            }
            for r in record.receipts {
                if let Some(t) = times.lock().unwrap().remove(&r.msg_id) {
                    engine.lock().unwrap().push(now.duration_since(t).as_secs_f64() * 1e3);
                }
            }
        });
        let (times, piped) = (sent_at.clone(), piped.clone());
        tail(pipe, 1, stop.clone(), move |payload, now| {
            let id = String::from_utf8_lossy(payload).into_owned();
            if let Some(t) = times.lock().unwrap().remove(&id) {
                piped.lock().unwrap().push(now.duration_since(t).as_secs_f64() * 1e3);
            }
        });
    }

    let folded_before = worker.metric("receiptd_records_in_total");
    let started = Instant::now();
    let mut load = payloads.iter();
    for n in 0..total {
        if n % PROBE_EVERY == PROBE_EVERY - 1 {
            let p = probe_base + n / PROBE_EVERY;
            let (msg, pipe_id) = (format!("p{p}"), format!("pipe{p}"));
            let read = match read(&format!("pr{p}"), c2c(&format!("ps{p}")), &[&msg], now_ms()) {
                Event::MessageRead(mut r) => {
                    r.app_id = "probe".into();
                    Event::MessageRead(r)
                }
                other => other,
            };
            let payload = serde_json::to_vec(&read).unwrap();
            let now = Instant::now();
            sent_at.lock().unwrap().extend([(msg, now), (pipe_id.clone(), now)]);
            produce_raw(&producer, &topics.events, conversation_key(&read).as_bytes(), &payload);
            produce_raw(&producer, pipe, b"pipe", pipe_id.as_bytes());
        } else if let Some((key, payload)) = load.next() {
            produce_raw(&producer, &topics.events, key.as_bytes(), payload);
        }
        if n % 1_000 == 999 {
            producer.poll(Duration::ZERO);
            let due = Duration::from_secs_f64((n + 1) as f64 / rate);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
    let folded = (worker.metric("receiptd_records_in_total") - folded_before) / started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    // Probes not back 2 s after the load stopped count as 10 s late, so that
    // an engine that falls behind shows in the percentiles instead of hiding.
    let late = sent_at.lock().unwrap().drain().filter(|(id, _)| !id.starts_with("pipe")).count();
    let mut e = std::mem::take(&mut *engine.lock().unwrap());
    e.extend(std::iter::repeat_n(10_000.0, late));
    let p = std::mem::take(&mut *piped.lock().unwrap());
    (e, p, folded)
}

/// The flush modes to run, in order: `RECEIPTD_LATENCY_MODES`, a comma-separated
/// list of windows in ms, each with a `+` to flush when caught up too
/// (default `50+,50,5`). The first mode also warms the broker, so an A/B
/// comparison should run each mode more than once, in both orders
/// (`50,50+,50+,50`).
fn modes() -> Vec<(u64, bool)> {
    let list = std::env::var("RECEIPTD_LATENCY_MODES").unwrap_or_else(|_| "50+,50,5".into());
    list.split(',')
        .map(|m| {
            let m = m.trim();
            let window = m.trim_end_matches('+');
            let ms = window.parse().unwrap_or_else(|_| panic!("RECEIPTD_LATENCY_MODES: {m:?} is not a window in ms"));
            (ms, m.ends_with('+'))
        })
        .collect()
}

/// A mode as the bench's lines and table name it.
fn mode_name(flush_ms: u64, caught_up: bool) -> String {
    if caught_up {
        format!("{flush_ms} ms + when caught up")
    } else {
        format!("{flush_ms} ms window only")
    }
}

fn main() {
    let _broker = BenchBroker::ensure();
    let mut summary = Vec::new();
    let mut offered_base: Option<f64> = None;
    for (flush_ms, caught_up) in modes() {
        let mode = mode_name(flush_ms, caught_up);
        let topics = Topics::create("latency");
        let pipe = format!("{}.pipe", topics.events);
        create_topics(&[(&pipe, 1, false)]);
        let mut traffic = Traffic::new(TrafficShape::bench());

        // The drain rate of a 1,000,000-event backlog.
        let producer = producer();
        let mut backlog = traffic.setup();
        backlog.extend((0..1_000_000).map(|_| traffic.next_event()));
        produce_events(&producer, &topics.events, &backlog);
        let end: f64 = end_offsets(&topics.events).values().sum::<i64>() as f64;
        let dir = tempfile::tempdir().unwrap();
        let mut worker = Worker::new(&topics, &format!("{}-g", topics.events), &dir.path().join("state"))
            .env("RECEIPTD_FLUSH__INTERVAL_MS", &flush_ms.to_string())
            .env("RECEIPTD_FLUSH__WHEN_CAUGHT_UP", &caught_up.to_string());
        worker.start();
        worker.wait_ready(Duration::from_secs(120));
        let began = Instant::now();
        while worker.metric("receiptd_checkpoint_offset") < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        let drain = end / began.elapsed().as_secs_f64();
        let base = *offered_base.get_or_insert(drain);
        println!("flush {mode}: drain rate {drain:.0} events/s; loads are shares of {base:.0}");

        for (i, share) in [0.25, 0.5, 0.8, 1.0].into_iter().enumerate() {
            let (mut e, mut p, folded) =
                run_load(&worker, &topics, &pipe, base * share, &mut traffic, i as u64 * 10_000_000);
            let row = [0.5, 0.99, 0.999].map(|q| (pct(&mut e, q), pct(&mut p, q)));
            println!(
                "flush {mode}, {:.0}% load ({:.0} events/s offered, {folded:.0} folded): engine p50 {:.1} / p99 {:.1} / p99.9 {:.1} ms; pipe p50 {:.1} / p99 {:.1} / p99.9 {:.1} ms; p99 difference {:.1} ms ({} probes)",
                share * 100.0,
                base * share,
                row[0].0,
                row[1].0,
                row[2].0,
                row[0].1,
                row[1].1,
                row[2].1,
                row[1].0 - row[1].1,
                e.len()
            );
            summary.push((flush_ms, caught_up, share, base * share, folded, row));
        }
        let started = |trigger: &str| worker.metric(&format!("receiptd_flush_starts_total{{trigger=\"{trigger}\"}}"));
        println!(
            "flush {mode}: {} flushes ({} by the window, {} by pending records, {} caught up), {} delta receipts, {} store puts",
            worker.metric("receiptd_flush_duration_seconds_count"),
            started("window"),
            started("pending"),
            started("caught_up"),
            worker.metric("receiptd_delta_receipts_total"),
            worker.metric("receiptd_store_puts_total"),
        );
        assert_eq!(worker.terminate(), 0);
        topics.delete(&[&pipe]);
    }
    println!("\n| flush | load | offered / folded events/s | engine p50 / p99 / p99.9 | pipe p50 / p99 / p99.9 | p99 difference |");
    println!("|---|---|---|---|---|---|");
    let mut csv = String::from(
        "flush_ms,caught_up,share,offered,folded,engine_p50,engine_p99,engine_p999,pipe_p50,pipe_p99,pipe_p999\n",
    );
    for (flush_ms, caught_up, share, offered, folded, r) in summary {
        let mode = mode_name(flush_ms, caught_up);
        println!(
            "| {mode} | {:.0}% | {offered:.0} / {folded:.0} | {:.1} / {:.1} / {:.1} ms | {:.1} / {:.1} / {:.1} ms | {:.1} ms |",
            share * 100.0,
            r[0].0,
            r[1].0,
            r[2].0,
            r[0].1,
            r[1].1,
            r[2].1,
            r[1].0 - r[1].1
        );
        csv += &format!(
            "{flush_ms},{caught_up},{share},{offered:.0},{folded:.0},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2}\n",
            r[0].0, r[1].0, r[2].0, r[0].1, r[1].1, r[2].1
        );
    }
    // For benches/plot.py.
    std::fs::create_dir_all("target").expect("create target/");
    std::fs::write("target/latency.csv", csv).expect("write target/latency.csv");
    println!("wrote target/latency.csv (plot it with python3 benches/plot.py)");
}
