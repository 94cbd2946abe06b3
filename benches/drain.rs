//! End-to-end drain on a real Kafka broker: the engine's rate (consume,
//! decode, fold, persist, produce deltas, checkpoint) against a minimal
//! consume-only `BaseConsumer` loop over the same topic, in the same run
//! and on the worker's allocator (mimalloc, librdkafka's malloc too),
//! once before the engine and once after it (the ratio is to their mean),
//! and against the same loop taking records in batches as the worker does
//! (with the CPU per event of both loops: what per-record polling costs).
//! Then a kill -9 and a restart: time to `/readyz` and the catch-up rate,
//! against the consume-only loop over the same records. Before anything
//! is timed, an engine drains the topic unrecorded, to warm the broker it
//! shares (`RECEIPTD_DRAIN_WARMUP=N` folds N records instead, 0 none; see
//! `WARM_UP_DEFAULT`).
//! Also reports the CPU per event of each of the worker's threads (drain
//! and catch-up), write amplification, syncs, the longest gap between busy
//! batches, peak RSS and persisted bytes per message.
//!
//! `cargo bench --bench drain` (10,000,000 events; set RECEIPTD_DRAIN_EVENTS
//! for another size, and RECEIPTD_DRAIN_READ_BATCH=N for group reads that
//! name up to N messages, as `TrafficShape::read_batch`; default 1). Uses
//! RECEIPTD_TEST_BROKERS, or starts a broker with deploy/kafka.sh and stops
//! it after.
//!
//! `RECEIPTD_DRAIN_COMPARE='NAME=A|NAME=B'` compares two settings of the
//! worker instead (environment variables it is started with, such as
//! `RECEIPTD_FLUSH__INTERVAL_MS=50|RECEIPTD_FLUSH__INTERVAL_MS=100`;
//! several per side separated by spaces): the same prefilled topic is
//! drained by a fresh worker with each, in ABBA order,
//! `RECEIPTD_DRAIN_ROUNDS` times (default 5), and each pair's ratios are
//! printed with their medians. Drains seconds apart, on one topic, vary
//! far less than separate runs of this bench on these machines. Two
//! builds compare the same way: `RECEIPTD_WORKER_BINARY=/path/to/a|...=/path/to/b`
//! (copies of `target/release/receiptd`).

#[path = "../tests/support.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use receiptd_loadgen::{Traffic, TrafficShape};
use receiptd_stream::FetchQueue;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::*;

// The worker's allocator, with its default setting (freed memory kept),
// so that the consume-only loops run on the same malloc as the worker's
// librdkafka: each record is allocated by librdkafka's fetch thread and
// freed by the loop, and with glibc's malloc that hand-off alone held the
// per-record loop to about two thirds of its rate (BENCHMARKS.md,
// forty-sixth sitting).
#[global_allocator]
static ALLOCATOR: receiptd_alloc::Allocator = receiptd_alloc::Allocator;

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

/// The worker's, the broker's and the machine's cores.
fn machine_line(cores: &Cores) -> String {
    format!(
        "worker {:.2}, broker {}; machine busy {:.2} of {}, {:.2} stolen",
        cores.worker,
        cores.broker_and_jit_or(BROKER_UNKNOWN),
        cores.busy,
        cpus(),
        cores.stolen
    )
}

/// How a consume-only loop takes its records.
#[derive(Clone, Copy, PartialEq)]
enum Taking {
    /// `BaseConsumer::poll`, one record per call: the baseline.
    PerRecord,
    /// Up to 1,024 per call from a `FetchQueue`, as the worker takes them.
    Batched,
}

/// The broker's CPU seconds so far, if exactly one runs here.
fn broker_cpu() -> Option<f64> {
    broker_pid().and_then(process_cpu_seconds)
}

/// The calling thread's and the whole bench process's CPU seconds (the
/// process runs nothing but the consume-only loop and its librdkafka
/// threads while one runs).
fn thread_and_process_cpu() -> (f64, f64) {
    (clock_cpu_seconds(libc::CLOCK_THREAD_CPUTIME_ID), clock_cpu_seconds(libc::CLOCK_PROCESS_CPUTIME_ID))
}

/// What one consume-only run measured.
struct ConsumeOnly {
    /// Events per second, first record to last.
    rate: f64,
    /// CPU µs per event of the loop's thread.
    loop_cpu_us: f64,
    /// CPU µs per event of the process: the loop and librdkafka's threads.
    process_cpu_us: f64,
    /// CPU µs per event of the broker serving it, if exactly one runs here.
    broker_cpu_us: Option<f64>,
}

/// The broker's CPU µs per event, or why not.
fn broker_us(us: Option<f64>) -> String {
    us.map_or(BROKER_UNKNOWN.into(), |us| format!("{us:.3}"))
}

/// The baseline: a minimal consume-only loop with the worker's fetch
/// settings that touches every payload byte, reading `total` records from
/// each partition's offset in `from` (`None`: from the start).
fn consume_only(topic: &str, from: Option<&BTreeMap<i32, i64>>, total: u64, taking: Taking) -> ConsumeOnly {
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
        let offset = from.map_or(Offset::Beginning, |from| Offset::Offset(from[&p]));
        tpl.add_partition_offset(topic, p, offset).unwrap();
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
                    first.get_or_insert_with(|| (Instant::now(), thread_and_process_cpu(), broker_cpu()));
                    checksum = touch(checksum, m.payload());
                    seen += 1;
                }
            }
            Taking::Batched => {
                let _ = consumer.poll(Duration::ZERO);
                if fetch.take(Duration::from_millis(100), 1024, &mut batch) > 0 {
                    first.get_or_insert_with(|| (Instant::now(), thread_and_process_cpu(), broker_cpu()));
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
    let (started, (thread_cpu, process_cpu), broker_at_first) = first.unwrap();
    let (thread_now, process_now) = thread_and_process_cpu();
    // One record's time and CPU before the clocks start: negligible.
    ConsumeOnly {
        rate: seen as f64 / started.elapsed().as_secs_f64(),
        loop_cpu_us: (thread_now - thread_cpu) * 1e6 / seen as f64,
        process_cpu_us: (process_now - process_cpu) * 1e6 / seen as f64,
        broker_cpu_us: broker_cpu().zip(broker_at_first).map(|(now, then)| (now - then) * 1e6 / seen as f64),
    }
}

/// When the worker, just started, first answered `/readyz`, first folded a
/// record, and had checkpointed `end` (the sum of the end offsets); and the
/// CPU it used in between.
struct Drained {
    ready: Instant,
    first: Instant,
    done: Instant,
    cpu: CpuUsed,
    /// The machine's cores meanwhile: whether the drain had the second
    /// core to spare, or shared it with the broker to the full.
    cores: Cores,
}

fn drain(worker: &mut Worker, end: f64) -> Drained {
    let (mut ready, mut first) = (None, None);
    let broker = broker_pid();
    loop {
        let now = Instant::now();
        if ready.is_none() && http_get(worker.http, "/readyz").is_ok_and(|(s, _)| s == 200) {
            ready = Some(now);
        }
        if first.is_none()
            && http_get(worker.http, "/metrics")
                .is_ok_and(|(_, body)| metric_in(&body, "receiptd_records_in_total") > 0.0)
        {
            first = Some((now, CpuSnapshot::take(worker, broker)));
        }
        if let (Some(ready), Some((first, cpu_at_first))) = (ready, &first) {
            let (_, body) = http_get(worker.http, "/metrics").expect("metrics");
            if metric_in(&body, "receiptd_checkpoint_offset") >= end {
                // The write that reached the end, as the worker timed it:
                // the bench polls it only every `DRAIN_POLL`. Builds
                // without that gauge (a comparison's) are timed here.
                let written = metric_in(&body, "receiptd_checkpoint_written_timestamp_seconds");
                let done = if written > 0.0 { instant_of_unix(written).clamp(*first, now) } else { now };
                let (cores, cpu) = CpuSnapshot::take(worker, broker).since(cpu_at_first);
                return Drained { ready, first: *first, done, cpu, cores };
            }
        }
        assert!(worker.child.as_mut().unwrap().try_wait().unwrap().is_none(), "worker died:\n{}", worker.log_tail());
        // Fine-grained until the drain starts (its start is timed here);
        // then rarely: each poll costs the worker and this process a
        // `/metrics` page, CPU the consume-only loop is not charged.
        std::thread::sleep(if first.is_some() && ready.is_some() { DRAIN_POLL } else { Duration::from_millis(10) });
    }
}

/// Why an engine drains the topic, unrecorded, before anything here is
/// timed (`RECEIPTD_DRAIN_WARMUP=N` folds N records instead, 0 none): the
/// bench starts its own broker, and the broker's JIT compiles what serves
/// an engine (its deltas produced, its offsets committed) only once one
/// runs. On a fresh broker its compiler threads took two fifths of the
/// broker's CPU during the drain (`perf record -p` on the broker); over
/// eight drains in a row the broker's compile time (`jstat -compiler`)
/// grew 10 s in the first two, 4.5 s in the next two, then 1.7 and 1.6 s,
/// and the drains ran at 743k and 767k, then 792k to 859k events/s. A
/// broker in service runs warm.
const WARM_UP_DEFAULT: &str = "the whole topic";

/// Runs an engine over the topic, with a group of its own, until it has
/// folded `end` records (or `RECEIPTD_DRAIN_WARMUP`), then kills it: see
/// [`WARM_UP_DEFAULT`].
fn warm_up_broker(topics: &Topics, end: f64) {
    let records = std::env::var("RECEIPTD_DRAIN_WARMUP").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(end as u64);
    if records == 0 {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::new(topics, &format!("{}-warm-up", topics.events), &dir.path().join("state"));
    worker.start();
    let folded = |w: &Worker| {
        http_get(w.http, "/metrics").map_or(0.0, |(_, body)| metric_in(&body, "receiptd_records_in_total"))
    };
    worker.wait_until("the warm-up's first record", Duration::from_secs(120), |w| folded(w) > 0.0);
    let (started, broker_at_start, at_start) = (Instant::now(), broker_cpu(), folded(&worker));
    worker.wait_until("the warm-up's records", Duration::from_secs(600), |w| folded(w) >= records as f64);
    let (seconds, done) = (started.elapsed().as_secs_f64(), folded(&worker) - at_start);
    let broker = broker_cpu().zip(broker_at_start).map(|(now, then)| (now - then) * 1e6 / done);
    worker.kill9();
    println!(
        "broker warm-up (not recorded; by default {WARM_UP_DEFAULT}): an engine folded {records} records, {:.0} records/s, the broker {} us CPU a record",
        done / seconds,
        broker_us(broker)
    );
}

/// How often [`drain`] asks the worker whether it is done, once it started.
const DRAIN_POLL: Duration = Duration::from_millis(200);

/// The [`Instant`] of a Unix time in seconds, by this machine's clocks now
/// (now, if it is too far back for an `Instant`).
fn instant_of_unix(unix_seconds: f64) -> Instant {
    let now_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let now = Instant::now();
    now.checked_sub(Duration::from_secs_f64((now_unix - unix_seconds).max(0.0))).unwrap_or(now)
}

/// What the worker's log says of the partitions it restored: how many, their
/// messages, the wall time, and the milliseconds their loads took summed
/// and at most.
fn restore_summary(log: &str) -> String {
    let field = |line: &str, name: &str| -> u64 {
        let at = line.find(&format!("{name}=")).map(|i| i + name.len() + 1);
        at.map(|i| line[i..].chars().take_while(char::is_ascii_digit).collect::<String>())
            .and_then(|digits| digits.parse().ok())
            .unwrap_or(0)
    };
    // Without colour codes, which builds before `with_ansi` wrote to files.
    let mut plain = String::with_capacity(log.len());
    let mut rest = log;
    while let Some(at) = rest.find('\u{1b}') {
        plain.push_str(&rest[..at]);
        rest = rest[at..].find('m').map_or("", |end| &rest[at + end + 1..]);
    }
    plain.push_str(rest);
    let loads: Vec<(u64, u64)> = plain
        .lines()
        .filter(|line| line.contains("state restored"))
        .map(|line| (field(line, "messages"), field(line, "took_ms")))
        .collect();
    // Builds that load partitions side by side also log each assignment's
    // wall time.
    let walls: Vec<u64> = plain
        .lines()
        .filter(|line| line.contains("assigned partitions restored"))
        .map(|l| field(l, "took_ms"))
        .collect();
    let wall = if walls.is_empty() { "not logged".to_owned() } else { format!("{} ms", walls.iter().sum::<u64>()) };
    format!(
        "{} partitions, {} messages; wall time {wall}, the loads {} ms summed, {} ms the longest",
        loads.len(),
        loads.iter().map(|l| l.0).sum::<u64>(),
        loads.iter().map(|l| l.1).sum::<u64>(),
        loads.iter().map(|l| l.1).max().unwrap_or(0)
    )
}

/// One side of a comparison: its environment variables.
fn parse_side(side: &str) -> Vec<(String, String)> {
    side.split_whitespace()
        .map(|kv| {
            let (k, v) =
                kv.split_once('=').unwrap_or_else(|| panic!("RECEIPTD_DRAIN_COMPARE: `{kv}` is not NAME=VALUE"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// One drain of the whole topic by a fresh worker with `env`: events/s,
/// and the poll loop's, the process's and the broker's CPU per event in µs
/// (the broker's NaN if unknown).
fn drain_with(topics: &Topics, end: f64, env: &[(String, String)], run: usize) -> [f64; 4] {
    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::new(topics, &format!("{}-c{run}", topics.events), &dir.path().join("state"));
    for (k, v) in env {
        worker = worker.env(k, v);
    }
    worker.start();
    let Drained { first, done, cpu, cores, .. } = drain(&mut worker, end);
    println!("drain {run}: {}", worker.longest_stalls());
    worker.kill9();
    let rate = end / done.duration_since(first).as_secs_f64();
    [
        rate,
        cpu.thread_named("receiptd-worker") * 1e6 / end,
        cpu.process * 1e6 / end,
        cores.broker.map_or(f64::NAN, |b| b * 1e6 / rate),
    ]
}

/// Drains the topic with each side's settings in ABBA order, and prints
/// each pair's B / A ratios of rate and CPU, and their medians.
fn compare_settings(topics: &Topics, end: f64, compare: &str) {
    let (a, b) = compare.split_once('|').expect("RECEIPTD_DRAIN_COMPARE: two sides, separated by |");
    let (a, b) = (parse_side(a), parse_side(b));
    let rounds: usize = std::env::var("RECEIPTD_DRAIN_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    println!("comparing A ({a:?}) with B ({b:?}), {rounds} rounds of ABBA");
    let (mut rate, mut poll_loop, mut process, mut broker) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut run = 0;
    for round in 0..rounds {
        for b_first in [false, true] {
            let mut pair = [[0.0; 4]; 2];
            for side in if b_first { [1, 0] } else { [0, 1] } {
                run += 1;
                pair[side] = drain_with(topics, end, if side == 0 { &a } else { &b }, run);
            }
            let [[ra, la, pa, ba], [rb, lb, pb, bb]] = pair;
            println!(
                "round {round}, {}: A {ra:.0} events/s, {la:.3} / {pa:.3} / {ba:.3} us; B {rb:.0} events/s, {lb:.3} / {pb:.3} / {bb:.3} us (poll loop / process / broker CPU an event); B / A: rate {:.3}, poll loop CPU {:.3}, process CPU {:.3}, broker CPU {:.3}",
                if b_first { "BA" } else { "AB" },
                rb / ra,
                lb / la,
                pb / pa,
                bb / ba
            );
            rate.push(rb / ra);
            poll_loop.push(lb / la);
            process.push(pb / pa);
            broker.push(bb / ba);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        if v.len() % 2 == 0 {
            (v[m - 1] + v[m]) / 2.0
        } else {
            v[m]
        }
    };
    let wins = rate.iter().filter(|&&r| r > 1.0).count();
    println!(
        "B / A over {} pairs, medians: rate {:.3} (B faster in {wins}), poll loop CPU an event {:.3}, process CPU an event {:.3}, broker CPU an event {:.3}",
        rate.len(),
        median(&mut rate),
        median(&mut poll_loop),
        median(&mut process),
        median(&mut broker)
    );
}

fn main() {
    receiptd_alloc::keep_freed_memory();
    let _broker = BenchBroker::ensure();
    let n: u64 = std::env::var("RECEIPTD_DRAIN_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    let topics = Topics::create("drain");
    let read_batch = std::env::var("RECEIPTD_DRAIN_READ_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut traffic = Traffic::new(TrafficShape { read_batch, ..TrafficShape::bench() });

    let compare = std::env::var("RECEIPTD_DRAIN_COMPARE").ok().filter(|c| !c.trim().is_empty());
    let (rate, message_reads) = prefill(&mut traffic, &topics.events, n, true);
    let end_offsets_at_first = end_offsets(&topics.events);
    let end: f64 = end_offsets_at_first.values().sum::<i64>() as f64;
    println!("prefill: {end} events appended at {rate:.0} events/s");
    if read_batch > 1 {
        println!("reads name up to {read_batch} messages: {message_reads} message reads in the prefill");
    }

    warm_up_broker(&topics, end);

    if let Some(compare) = compare {
        compare_settings(&topics, end, &compare);
        topics.delete(&[]);
        return;
    }

    let before = consume_only(&topics.events, None, end as u64, Taking::PerRecord);
    println!(
        "consume-only (BaseConsumer, every payload touched): {:.0} events/s, {:.3} us CPU per event in its loop, {:.3} in the process, {} in the broker",
        before.rate,
        before.loop_cpu_us,
        before.process_cpu_us,
        broker_us(before.broker_cpu_us)
    );
    // The same loop taking records as the worker does: what the per-record
    // calls cost, and the rate the engine could at best approach.
    let batched = consume_only(&topics.events, None, end as u64, Taking::Batched);
    println!(
        "consume-only, batched as the worker takes records: {:.0} events/s, {:.3} us CPU per event in its loop \
         ({:.2} x the per-record loop's CPU), {:.3} in the process, {} in the broker",
        batched.rate,
        batched.loop_cpu_us,
        batched.loop_cpu_us / before.loop_cpu_us,
        batched.process_cpu_us,
        broker_us(batched.broker_cpu_us)
    );

    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::new(&topics, &format!("{}-g", topics.events), &dir.path().join("state"));
    let launched = Instant::now();
    worker.start();
    let Drained { first, done, cpu, cores, .. } = drain(&mut worker, end);
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
        "engine CPU: {:.2} us per event in the worker process, {:.2} us in its poll loop thread ({:.2} us more waiting for a CPU)",
        cpu.process * 1e6 / end,
        cpu.thread_named("receiptd-worker") * 1e6 / end,
        cpu.waiting_for_cpu_named("receiptd-worker") * 1e6 / end
    );
    // Where the process's CPU went, without a profiler: librdkafka names
    // both clients' broker threads `rdk:broker<id>` (the events consumer's
    // fetches and the deltas producer's sends), RocksDB its memtable
    // flushes `rocksdb:high` and compactions `rocksdb:low`.
    println!("engine CPU by thread, us per event: {}", per_thread_line(&cpu.threads, end));
    // Runnable but not running: what the shared cores took from each.
    println!("engine threads waiting for a CPU, us per event: {}", per_thread_line(&cpu.waiting_for_cpu, end));
    // Whether the poll loop thread or the machine bounds the rate: a
    // machine with a core to spare leaves the poll loop the bound.
    println!(
        "engine drain, CPU in cores: {}; the broker {} us CPU per event",
        machine_line(&cores),
        broker_us(cores.broker.map(|b| b * 1e6 / engine))
    );
    // The yardstick again, right after the engine: the same loop over the
    // same records swung by up to 75% between runs of this bench, and
    // within one (the broker and the shared cores), while the engine's
    // drains stayed within a few percent. The engine's run is compared with
    // the mean of the two runs around it, and with each; and by CPU per
    // event, which moves far less with the machine: the loop's process
    // CPU over the engine's is the rate ratio both would reach if each had
    // the cores to itself.
    let after = consume_only(&topics.events, None, end as u64, Taking::PerRecord);
    let raw = (before.rate + after.rate) / 2.0;
    let raw_cpu = (before.process_cpu_us + after.process_cpu_us) / 2.0;
    println!(
        "consume-only again, after the engine's drain: {:.0} events/s, {:.3} us CPU per event in its loop, {:.3} in the process, {} in the broker",
        after.rate,
        after.loop_cpu_us,
        after.process_cpu_us,
        broker_us(after.broker_cpu_us)
    );
    println!(
        "engine / consume-only: {:.3} against the mean of the runs before and after ({raw:.0} events/s); {:.3} against the run before, {:.3} against the run after (engine / batched consume-only: {:.3})",
        engine / raw,
        engine / before.rate,
        engine / after.rate,
        engine / batched.rate
    );
    println!(
        "consume-only CPU / engine CPU, per event in the process: {:.3} ({raw_cpu:.3} us against {:.3} us)",
        raw_cpu / (cpu.process * 1e6 / end),
        cpu.process * 1e6 / end
    );

    let m = |name: &str| worker.metric(name);
    let (events, puts, writes, syncs) = (
        m("receiptd_flushed_events_total"),
        m("receiptd_store_puts_total"),
        m("receiptd_store_writes_total"),
        m("receiptd_store_syncs_total"),
    );
    let flushes = m("receiptd_flush_duration_seconds_count");
    let (delta_records, delta_receipts) = (m("receiptd_delta_records_total"), m("receiptd_delta_receipts_total"));
    println!(
        "deltas: {delta_records:.0} records holding {delta_receipts:.0} receipts ({:.3} records and {:.3} receipts per event)",
        delta_records / events,
        delta_receipts / events
    );
    println!(
        "write amplification: {puts:.0} entity writes for {events:.0} events = {:.3} per event; {flushes:.0} flushes, {writes:.0} write batches, {syncs:.0} fsyncs ({:.1} s apart on average)",
        puts / events,
        done.duration_since(first).as_secs_f64() / syncs.max(1.0)
    );
    // Waiting for a CPU is the machine's share of a gap; the rest off a
    // CPU, the thread blocked.
    let gap_sum = m("receiptd_batch_gap_seconds_sum").max(1e-9);
    println!(
        "longest gap between busy batch completions: {:.2} ms, {:.2} ms of it on a CPU, {:.2} ms waiting for one ({} gaps, mean {:.3} ms, {:.0}% on a CPU, {:.0}% waiting for one)",
        m("receiptd_batch_gap_max_seconds") * 1e3,
        m("receiptd_batch_gap_max_on_cpu_seconds") * 1e3,
        m("receiptd_batch_gap_max_waiting_for_cpu_seconds") * 1e3,
        m("receiptd_batch_gap_seconds_count"),
        m("receiptd_batch_gap_seconds_sum") * 1e3 / m("receiptd_batch_gap_seconds_count").max(1.0),
        100.0 * m("receiptd_batch_gap_on_cpu_seconds_total") / gap_sum,
        100.0 * m("receiptd_batch_gap_waiting_for_cpu_seconds_total") / gap_sum
    );
    let phases: Vec<String> = receiptd_stream::LOOP_PHASES
        .iter()
        .map(|p| format!("{p} {:.2}", m(&format!("receiptd_batch_gap_max_phase_seconds{{phase=\"{p}\"}}")) * 1e3))
        .collect();
    println!("longest gap by loop phase, ms: {}", phases.join(", "));
    // The engine's own share: a gap spent waiting for a CPU is the machine's.
    println!(
        "the most CPU the poll loop took in any one gap: {:.2} ms",
        m("receiptd_batch_gap_most_cpu_seconds") * 1e3
    );
    // A confirmed flush the store writer had no room for waited in flight
    // (the poll loop does not wait for the writer).
    let ops: Vec<String> = [("write", writes), ("sync", syncs)]
        .iter()
        .map(|(op, calls)| {
            format!(
                "{op} {:.2} ms on average, {:.2} at most",
                m(&format!("receiptd_store_op_seconds_total{{op=\"{op}\"}}")) * 1e3 / calls.max(1.0),
                m(&format!("receiptd_store_op_max_seconds{{op=\"{op}\"}}")) * 1e3
            )
        })
        .collect();
    println!(
        "store writer's calls into RocksDB: {}; its queue found full {:.0} times; input held at the pending limit {:.0} times",
        ops.join("; "),
        m("receiptd_store_writer_full_total"),
        m("receiptd_input_held_total")
    );
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
    let (restarted, log_before) = (Instant::now(), worker.log_text().len());
    worker.start();
    let Drained { ready, first, done, cpu, cores } = drain(&mut worker, end2);
    let restored = restore_summary(worker.log_text().get(log_before..).unwrap_or_default());
    let replayed = worker.metric("receiptd_records_in_total");
    let store_open = worker.metric("receiptd_store_open_seconds");
    let catch_up = replayed / done.duration_since(first).as_secs_f64();
    assert_eq!(worker.terminate(), 0);
    // The yardstick for the catch-up: the same loop over the same records
    // (those appended after the kill), read just as fresh.
    let same = consume_only(&topics.events, Some(&end_offsets_at_first), more, Taking::PerRecord);
    let catch_up_cpu = cpu.process * 1e6 / replayed.max(1.0);
    println!(
        "recovery after kill -9 at {end} events: /readyz in {:.2} s; caught up {more} new events ({replayed:.0} records read) at {catch_up:.0} events/s = {:.3} x consume-only of the same records ({:.0} events/s), {:.3} x the whole topic's; {catch_up_cpu:.2} us CPU per record in the process, {:.3} us in the consume-only loop's (CPU ratio {:.3})",
        ready.duration_since(restarted).as_secs_f64(),
        catch_up / same.rate,
        same.rate,
        catch_up / raw,
        same.process_cpu_us,
        same.process_cpu_us / catch_up_cpu
    );
    println!("state restored at the restart: {restored}; the store opened first, in {:.0} ms", store_open * 1e3);
    println!("catch-up CPU by thread, us per record: {}", per_thread_line(&cpu.threads, replayed.max(1.0)));
    println!(
        "catch-up threads waiting for a CPU, us per record: {}",
        per_thread_line(&cpu.waiting_for_cpu, replayed.max(1.0))
    );
    println!("catch-up, CPU in cores: {}", machine_line(&cores));
    topics.delete(&[]);
}
