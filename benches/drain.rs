//! End-to-end drain on a real Kafka broker: the engine's rate (consume,
//! decode, fold, persist, produce deltas, checkpoint) against a minimal
//! consume-only `BaseConsumer` loop over the same topic, in the same run,
//! and against the same loop taking records in batches as the worker does
//! (with the CPU per event of both loops: what per-record polling costs).
//! Then a kill -9 and a restart: time to `/readyz` and the catch-up rate.
//! Also reports write amplification, syncs, the longest gap between busy
//! batches, peak RSS and persisted bytes per message.
//!
//! `cargo bench --bench drain` (10,000,000 events; set RECEIPTD_DRAIN_EVENTS
//! for another size, and RECEIPTD_DRAIN_READ_BATCH=N for group reads that
//! name up to N messages, as `TrafficShape::read_batch`; default 1). Uses
//! RECEIPTD_TEST_BROKERS, or starts a broker with deploy/kafka.sh and stops
//! it after.

#[path = "../tests/support.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use receiptd_loadgen::{Traffic, TrafficShape};
use receiptd_stream::FetchQueue;
use std::time::{Duration, Instant};
use support::*;

const PARTITIONS: i32 = 4;

fn fast_producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .expect("producer")
}

/// Appends `n` events (the setup first when `setup`), returns events/s and
/// the messages their reads name.
fn prefill(traffic: &mut Traffic, topic: &str, n: u64, setup: bool) -> (f64, u64) {
    let producer = fast_producer();
    let started = Instant::now();
    let events = if setup { traffic.setup() } else { Vec::new() };
    let mut message_reads = 0;
    let mut send = |e: &receiptd_wire::Event| {
        if let receiptd_wire::Event::MessageRead(r) = e {
            message_reads += r.msg_ids.len() as u64;
        }
        let payload = serde_json::to_vec(e).unwrap();
        produce_raw(&producer, topic, receiptd_wire::conversation_key(e).as_bytes(), &payload);
    };
    events.iter().for_each(&mut send);
    for _ in 0..n {
        send(&traffic.next_event());
    }
    producer.flush(Duration::from_secs(600)).expect("flush prefill");
    ((events.len() as u64 + n) as f64 / started.elapsed().as_secs_f64(), message_reads)
}

/// How a consume-only loop takes its records.
#[derive(Clone, Copy, PartialEq)]
enum Taking {
    /// `BaseConsumer::poll`, one record per call: the baseline.
    PerRecord,
    /// Up to 1,024 per call from a `FetchQueue`, as the worker takes them.
    Batched,
}

/// The calling thread's CPU time, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec for the call to fill in.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// The baseline: a minimal consume-only loop with the worker's fetch
/// settings that touches every payload byte. Returns events/s from the
/// first record to the last, and the loop thread's CPU µs per event.
fn consume_only(topic: &str, total: u64, taking: Taking) -> (f64, f64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("drain-raw-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("queued.max.messages.kbytes", "32768")
        // As the worker sets it: with the default (1 s) the loop idles once
        // it has drained its prefetch queue, and the baseline runs slow.
        .set("fetch.queue.backoff.ms", "5")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    // SAFETY: declared after the consumer, so dropped before it.
    let fetch = unsafe { FetchQueue::new(&consumer) };
    if taking == Taking::Batched {
        fetch.route(&consumer, &tpl);
    }
    consumer.assign(&tpl).unwrap();
    let (mut seen, mut checksum, mut first) = (0u64, 0u64, None);
    let touch = |c: u64, payload: Option<&[u8]>| {
        payload.unwrap_or(&[]).iter().fold(c, |c, b| c.wrapping_mul(31).wrapping_add(*b as u64))
    };
    let mut batch = Vec::with_capacity(1024);
    while seen < total {
        match taking {
            Taking::PerRecord => {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    first.get_or_insert_with(|| (Instant::now(), thread_cpu_seconds()));
                    checksum = touch(checksum, m.payload());
                    seen += 1;
                }
            }
            Taking::Batched => {
                let _ = consumer.poll(Duration::ZERO);
                if fetch.take(Duration::from_millis(100), 1024, &mut batch) > 0 {
                    first.get_or_insert_with(|| (Instant::now(), thread_cpu_seconds()));
                    // As `poll` above yields `Err` for them: consumer
                    // errors are not records.
                    for m in batch.drain(..).filter(|m| m.error().is_none()) {
                        checksum = touch(checksum, m.payload());
                        seen += 1;
                    }
                }
            }
        }
    }
    std::hint::black_box(checksum);
    let (started, cpu) = first.unwrap();
    // One record's time and CPU before the clocks start: negligible.
    (seen as f64 / started.elapsed().as_secs_f64(), (thread_cpu_seconds() - cpu) * 1e6 / seen as f64)
}

/// Sum of the worker's checkpointed offsets.
fn checkpointed(worker: &Worker) -> f64 {
    worker.metric("receiptd_checkpoint_offset")
}

/// When the worker, just started, first answered `/readyz`, first folded a
/// record, and had checkpointed `end` (the sum of the end offsets); and the
/// CPU seconds it used in between (process, poll loop thread).
struct Drained {
    ready: Instant,
    first: Instant,
    done: Instant,
    cpu: (f64, f64),
}

fn drain(worker: &mut Worker, end: f64) -> Drained {
    let (mut ready, mut first, mut cpu_at_first) = (None, None, (0.0, 0.0));
    loop {
        let now = Instant::now();
        if ready.is_none() && http_get(worker.http, "/readyz").is_ok_and(|(s, _)| s == 200) {
            ready = Some(now);
        }
        if first.is_none()
            && http_get(worker.http, "/metrics").is_ok()
            && worker.metric("receiptd_records_in_total") > 0.0
        {
            first = Some(now);
            cpu_at_first = worker.cpu_seconds();
        }
        if ready.is_some() && first.is_some() && checkpointed(worker) >= end {
            let cpu = worker.cpu_seconds();
            let cpu = (cpu.0 - cpu_at_first.0, cpu.1 - cpu_at_first.1);
            return Drained { ready: ready.unwrap(), first: first.unwrap(), done: now, cpu };
        }
        assert!(worker.child.as_mut().unwrap().try_wait().unwrap().is_none(), "worker died:\n{}", worker.log_tail());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn main() {
    let _broker = BenchBroker::ensure();
    let n: u64 = std::env::var("RECEIPTD_DRAIN_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    let topics = Topics::create("drain");
    let read_batch = std::env::var("RECEIPTD_DRAIN_READ_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut traffic = Traffic::new(TrafficShape { read_batch, ..TrafficShape::bench() });

    let (rate, message_reads) = prefill(&mut traffic, &topics.events, n, true);
    let end: f64 = end_offsets(&topics.events).values().sum::<i64>() as f64;
    println!("prefill: {end} events appended at {rate:.0} events/s");
    if read_batch > 1 {
        println!("reads name up to {read_batch} messages: {message_reads} message reads in the prefill");
    }

    let (raw, raw_cpu) = consume_only(&topics.events, end as u64, Taking::PerRecord);
    println!("consume-only (BaseConsumer, every payload touched): {raw:.0} events/s, {raw_cpu:.3} us CPU per event");
    // The same loop taking records as the worker does: what the per-record
    // calls cost, and the rate the engine could at best approach.
    let (batched, batched_cpu) = consume_only(&topics.events, end as u64, Taking::Batched);
    println!(
        "consume-only, batched as the worker takes records: {batched:.0} events/s, {batched_cpu:.3} us CPU per event \
         ({:.2} x the per-record loop's CPU)",
        batched_cpu / raw_cpu
    );

    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::new(&topics, &format!("{}-g", topics.events), &dir.path().join("state"));
    let launched = Instant::now();
    worker.start();
    let Drained { first, done, cpu, .. } = drain(&mut worker, end);
    let engine = end / done.duration_since(first).as_secs_f64();
    println!(
        "engine drain: {engine:.0} events/s (first fold {:.2} s after launch, caught up {:.2} s after launch)",
        first.duration_since(launched).as_secs_f64(),
        done.duration_since(launched).as_secs_f64()
    );
    if read_batch > 1 {
        println!(
            "engine drain: {:.0} message reads/s",
            message_reads as f64 / done.duration_since(first).as_secs_f64()
        );
    }
    // CPU time, unlike throughput, hardly moves with what else the shared
    // cores run: the figure to compare builds by.
    println!(
        "engine CPU: {:.2} us per event in the worker process, {:.2} us in its poll loop thread",
        cpu.0 * 1e6 / end,
        cpu.1 * 1e6 / end
    );
    println!("engine / consume-only: {:.3} (engine / batched consume-only: {:.3})", engine / raw, engine / batched);

    let m = |name: &str| worker.metric(name);
    let (events, puts, writes, syncs) = (
        m("receiptd_flushed_events_total"),
        m("receiptd_store_puts_total"),
        m("receiptd_store_writes_total"),
        m("receiptd_store_syncs_total"),
    );
    let flushes = m("receiptd_flush_duration_seconds_count");
    println!(
        "write amplification: {puts:.0} entity writes for {events:.0} events = {:.3} per event; {flushes:.0} flushes, {writes:.0} write batches, {syncs:.0} fsyncs ({:.1} s apart on average)",
        puts / events,
        done.duration_since(first).as_secs_f64() / syncs.max(1.0)
    );
    println!(
        "longest gap between busy batch completions: {:.2} ms, {:.2} ms of it on a CPU ({} gaps, mean {:.3} ms, {:.0}% on a CPU)",
        m("receiptd_batch_gap_max_seconds") * 1e3,
        m("receiptd_batch_gap_max_on_cpu_seconds") * 1e3,
        m("receiptd_batch_gap_seconds_count"),
        m("receiptd_batch_gap_seconds_sum") * 1e3 / m("receiptd_batch_gap_seconds_count").max(1.0),
        100.0 * m("receiptd_batch_gap_on_cpu_seconds_total") / m("receiptd_batch_gap_seconds_sum").max(1e-9)
    );
    let phases: Vec<String> = receiptd_stream::LOOP_PHASES
        .iter()
        .map(|p| format!("{p} {:.2}", m(&format!("receiptd_batch_gap_max_phase_seconds{{phase=\"{p}\"}}")) * 1e3))
        .collect();
    println!("longest gap by loop phase, ms: {}", phases.join(", "));
    println!(
        "gaps over 10 ms: {:.0}; over 20 ms: {:.0}",
        m("receiptd_batch_gap_seconds_count") - m("receiptd_batch_gap_seconds_bucket{le=\"0.01\"}"),
        m("receiptd_batch_gap_seconds_count") - m("receiptd_batch_gap_seconds_bucket{le=\"0.02\"}")
    );
    let messages = m("receiptd_messages_tracked");
    println!(
        "state: {messages:.0} messages tracked, RocksDB {:.1} MiB (~{:.0} B per message), worker peak RSS {} MiB",
        m("receiptd_store_bytes") / 1048576.0,
        m("receiptd_store_bytes") / messages.max(1.0),
        worker.peak_rss_mib()
    );

    // Recovery: kill -9 with everything processed, append a fifth more, restart.
    worker.kill9();
    let more = (n / 5).max(1);
    let _ = prefill(&mut traffic, &topics.events, more, false);
    let end2: f64 = end_offsets(&topics.events).values().sum::<i64>() as f64;
    let restarted = Instant::now();
    worker.start();
    let Drained { ready, first, done, cpu } = drain(&mut worker, end2);
    let replayed = worker.metric("receiptd_records_in_total");
    let catch_up = replayed / done.duration_since(first).as_secs_f64();
    println!(
        "recovery after kill -9 at {end} events: /readyz in {:.2} s; caught up {more} new events ({replayed:.0} records read) at {catch_up:.0} events/s = {:.3} x consume-only; {:.2} us CPU per record in the process",
        ready.duration_since(restarted).as_secs_f64(),
        catch_up / raw,
        cpu.0 * 1e6 / replayed.max(1.0)
    );
    assert_eq!(worker.terminate(), 0);
    topics.delete(&[]);
}
