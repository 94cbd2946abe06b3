//! Read-to-delta latency on a real Kafka broker: the time from a read being
//! appended to the events topic to its receipt being visible to a consumer of
//! the deltas topic, against a bare produce→consume pipe on the same broker
//! in the same run. The pipe and the load generator run on the worker's
//! allocator (mimalloc, librdkafka's malloc too).
//!
//! First the worker's drain rate is measured on a prefilled backlog of
//! 3,000,000 events, from its first fold until it has caught up, as the
//! drain bench times it. Then the
//! bench mix is offered at 25%, 50%, 80% and 100% of that rate; one event in 100 is a
//! probe: a read of a C2C message of its own, whose receipt is traced, and a
//! record on a pipe topic, read back by a plain consumer. This runs with the
//! defaults (a 50 ms window, and a flush as soon as the input is drained),
//! then with the window alone at 50 ms and at 5 ms. Every mode drains its
//! own backlog first (so that each worker holds the same state), and all are
//! offered shares of the first mode's drain rate, so that their rows compare.
//! Each load also reports the rate the load generator reached (the machine
//! may not carry the one asked for) and where the CPU went meanwhile:
//! worker, load generator, broker, and the machine as a whole.
//!
//! Each load also splits the probes' latency where the worker queued their
//! delta records (the records' create time): the time in the worker (fetch,
//! fold, the wait for a flush) against the crossing after it. It says when
//! the slowest 1% were appended (one stall, or spread over the load), and
//! the worker's longest poll-loop gap and store calls so far.
//!
//! `cargo bench --bench latency`. Uses RECEIPTD_TEST_BROKERS, or starts a
//! broker with deploy/kafka.sh and stops it after. RECEIPTD_LATENCY_MODES and
//! RECEIPTD_LATENCY_LOADS pick the modes and loads (see `modes` and `loads`),
//! RECEIPTD_LATENCY_BASE the rate the loads are shares of (see `base_rate`),
//! RECEIPTD_LATENCY_TRACE=1 prints the worker's counters every 50 ms around
//! each load's slowest probe (see `trace_enabled`). Four unrecorded loads
//! at 25% warm the broker before the first mode's loads
//! (RECEIPTD_LATENCY_WARMUP=N offers N, 0 none; see `warm_up_loads`).

#[path = "../tests/support.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use receiptd_loadgen::{Traffic, TrafficShape};
use receiptd_wire::{conversation_key, DeltaRecord, Event};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{ev::*, *};

// The worker's allocator, with its default setting (freed memory kept):
// the pipe's producer and consumer then run on the same malloc as the
// worker's librdkafka, and the load generator takes less of the 2 cores
// it shares with the broker and the worker. With glibc's malloc,
// librdkafka's mallocs and frees took a fifth of this process's CPU at a
// 25% load (BENCHMARKS.md, forty-sixth sitting).
#[global_allocator]
static ALLOCATOR: receiptd_alloc::Allocator = receiptd_alloc::Allocator;

const PROBE_EVERY: u64 = 100;
const SECONDS: u64 = 10;

/// Reads a topic from its end, calling `seen(key, payload, now, timestamp)`
/// for each record; the timestamp is the record's create time, Unix ms:
/// when its producer queued it.
fn tail(
    topic: &str,
    partitions: i32,
    stop: Arc<AtomicBool>,
    seen: impl Fn(&[u8], &[u8], Instant, Option<i64>) + Send + 'static,
) {
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
                seen(m.key().unwrap_or(&[]), m.payload().unwrap_or(&[]), Instant::now(), m.timestamp().to_millis());
            }
        }
    });
}

fn pct(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)]
}

/// What one load measured.
struct LoadRun {
    /// Read-to-delta latencies, ms (late probes as 10 s).
    engine: Vec<f64>,
    /// Each probe back, split where its delta record was queued.
    engine_split: Vec<ProbeSplit>,
    /// When the load's first record was appended.
    started: Instant,
    /// The bare pipe's latencies, ms.
    pipe: Vec<f64>,
    /// Events folded a second while the load ran.
    folded: f64,
    /// Events folded while the load ran.
    folded_events: f64,
    /// Events the load generator appended a second: below the rate asked
    /// for when the machine cannot produce that much.
    produced: f64,
    /// Where the machine's CPU went while the load ran.
    cores: Cores,
    /// The worker's threads' CPU seconds while the load ran, by name.
    worker_threads: Vec<(String, f64)>,
}

/// One probe's latency in two parts, split where the worker queued its
/// delta record (the record's create time, so to the millisecond).
#[derive(Clone, Copy)]
struct ProbeSplit {
    /// From the read appended until its delta record was queued, ms.
    in_worker_ms: f64,
    /// From then until a consumer of the deltas topic saw it, ms.
    after_ms: f64,
    /// When the read was appended.
    appended: Instant,
}

impl ProbeSplit {
    fn total_ms(&self) -> f64 {
        self.in_worker_ms + self.after_ms
    }
}

/// One load of one mode, for the table and the CSV at the end.
struct SummaryRow {
    mode: String,
    /// The mode's extra settings, as the CSV's column holds them.
    properties: String,
    flush_ms: u64,
    caught_up: bool,
    /// The load, as a share of the base rate.
    share: f64,
    /// Events/s asked of the load generator.
    offered: f64,
    produced: f64,
    folded: f64,
    cores: Cores,
    /// (engine, pipe) latency in ms at p50, p99 and p99.9.
    percentiles: [(f64, f64); 3],
}

/// The load generator's producer: the tests' producer, with delivery
/// reports for failures only. It shares the 2 cores with the broker and
/// the worker, and a report for every record cost it about a quarter of
/// its CPU: at 450,000 events/s it took 0.58 and 0.63 cores with them,
/// 0.42 and 0.42 without (with the two tails, BENCHMARKS.md).
fn load_producer() -> BaseProducer {
    let mut config = producer_config();
    config.set("delivery.report.only.error", "true");
    config.create().expect("load producer")
}

/// The load generator's records to one topic, queued a run at a time with
/// `rd_kafka_produce_batch` on a topic handle opened once, as the worker
/// queues its deltas. `BaseProducer::send` looks the topic up by name under
/// the client's lock for every record: with it, the load generator and its
/// tails took 1.15 and 1.30 µs of CPU an event at a quarter load with the
/// 5 ms window, with runs 1.00 and 1.09 (BENCHMARKS.md, thirty-fifth
/// sitting). At half of a drain rate the load generator, the broker and
/// the worker need more than the machine's two cores either way.
struct RunQueue {
    topic: std::ptr::NonNull<rdkafka::bindings::rd_kafka_topic_t>,
    messages: Vec<rdkafka::bindings::rd_kafka_message_t>,
}

impl RunQueue {
    fn open(producer: &BaseProducer, topic: &str) -> RunQueue {
        use rdkafka::bindings as rdsys;
        let name = std::ffi::CString::new(topic).expect("a topic name without NUL");
        // SAFETY: a live client and a NUL-terminated name; a null
        // configuration means the producer's topic defaults.
        let handle =
            unsafe { rdsys::rd_kafka_topic_new(producer.client().native_ptr(), name.as_ptr(), std::ptr::null_mut()) };
        RunQueue { topic: std::ptr::NonNull::new(handle).expect("rd_kafka_topic_new"), messages: Vec::new() }
    }

    /// Queues `records` (key, payload) in order, each partitioned by its key;
    /// while librdkafka's queue is full, serves the producer and tries the
    /// rest again.
    fn queue(&mut self, producer: &BaseProducer, records: &[(String, Vec<u8>)]) {
        use rdkafka::bindings as rdsys;
        let mut rest = records;
        while !rest.is_empty() {
            self.messages.clear();
            self.messages.extend(rest.iter().map(|(key, payload)| rdsys::rd_kafka_message_t {
                err: rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
                rkt: std::ptr::null_mut(),
                partition: -1,
                payload: payload.as_ptr() as *mut std::ffi::c_void,
                len: payload.len(),
                key: key.as_ptr() as *mut std::ffi::c_void,
                key_len: key.len(),
                offset: 0,
                _private: std::ptr::null_mut(),
            }));
            // SAFETY: an open topic handle, and messages whose keys and
            // payloads outlive the call, which copies them (F_COPY).
            unsafe {
                rdsys::rd_kafka_produce_batch(
                    self.topic.as_ptr(),
                    -1,
                    rdsys::RD_KAFKA_MSG_F_COPY,
                    self.messages.as_mut_ptr(),
                    self.messages.len() as i32,
                )
            };
            // A full queue refuses the record that found it full and all after it.
            let refused =
                self.messages.iter().position(|m| m.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
            match refused {
                None => return,
                Some(i) => {
                    let code = self.messages[i].err;
                    assert_eq!(
                        code,
                        rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__QUEUE_FULL,
                        "produce_batch refused a record"
                    );
                    rest = &rest[i..];
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
}

impl Drop for RunQueue {
    fn drop(&mut self) {
        // SAFETY: the handle opened in `open`, released once; its producer
        // is still alive (the queue is dropped within `run_load`).
        unsafe { rdkafka::bindings::rd_kafka_topic_destroy(self.topic.as_ptr()) };
    }
}

/// Offers the mix at `rate` for SECONDS with probes.
fn run_load(
    worker: &Worker,
    topics: &Topics,
    pipe: &str,
    rate: f64,
    traffic: &mut Traffic,
    probe_base: u64,
) -> LoadRun {
    let total = rate as u64 * SECONDS;
    let probes = total / PROBE_EVERY;
    let producer = load_producer();
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

    // Each probe's append, on the monotonic clock and in Unix ms.
    let sent_at: Arc<Mutex<HashMap<String, (Instant, u64)>>> = Arc::default();
    let engine: Arc<Mutex<Vec<f64>>> = Arc::default();
    let engine_split: Arc<Mutex<Vec<ProbeSplit>>> = Arc::default();
    let piped: Arc<Mutex<Vec<f64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (times, engine, split) = (sent_at.clone(), engine.clone(), engine_split.clone());
        tail(&topics.deltas, 4, stop.clone(), move |key, payload, now, queued_ms| {
            // A delta record's key is `{app_id}/{to}`: only the probes' are
            // parsed. The load's are a fifth of its events, and parsing
            // each took CPU the worker and the broker share.
            if !key.starts_with(b"probe/") {
                return;
            }
            let Ok(record) = serde_json::from_slice::<DeltaRecord>(payload) else { return };
            for r in record.receipts {
                if let Some((t, appended_ms)) = times.lock().unwrap().remove(&r.msg_id) {
                    let total = now.duration_since(t).as_secs_f64() * 1e3;
                    engine.lock().unwrap().push(total);
                    if let Some(queued_ms) = queued_ms {
                        let in_worker_ms = (queued_ms - appended_ms as i64) as f64;
                        split.lock().unwrap().push(ProbeSplit {
                            in_worker_ms,
                            after_ms: total - in_worker_ms,
                            appended: t,
                        });
                    }
                }
            }
        });
        let (times, piped) = (sent_at.clone(), piped.clone());
        tail(pipe, 1, stop.clone(), move |_, payload, now, _| {
            let id = String::from_utf8_lossy(payload).into_owned();
            if let Some((t, _)) = times.lock().unwrap().remove(&id) {
                piped.lock().unwrap().push(now.duration_since(t).as_secs_f64() * 1e3);
            }
        });
    }

    let sampler = trace_enabled().then(|| sample_worker(worker.http, stop.clone()));
    let folded_before = worker.metric("receiptd_records_in_total");
    let broker = broker_pid();
    let cpu_before = CpuSnapshot::take(worker, broker);
    let mut events_queue = RunQueue::open(&producer, &topics.events);
    let started = Instant::now();
    let mut load = payloads.chunks(PROBE_EVERY as usize - 1);
    for n in 0..total {
        if n % PROBE_EVERY == 0 {
            // The records before the next probe, in one call.
            if let Some(run) = load.next() {
                events_queue.queue(&producer, run);
            }
        }
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
            let now = (Instant::now(), now_ms());
            sent_at.lock().unwrap().extend([(msg, now), (pipe_id.clone(), now)]);
            produce_raw(&producer, &topics.events, conversation_key(&read).as_bytes(), &payload);
            produce_raw(&producer, pipe, b"pipe", pipe_id.as_bytes());
        }
        if n % 1_000 == 999 {
            producer.poll(Duration::ZERO);
            let due = Duration::from_secs_f64((n + 1) as f64 / rate);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
    }
    let (cores, worker_cpu) = CpuSnapshot::take(worker, broker).since(&cpu_before);
    let folded_events = worker.metric("receiptd_records_in_total") - folded_before;
    let window = started.elapsed().as_secs_f64();
    let (produced, folded) = (total as f64 / window, folded_events / window);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    // Probes not back 2 s after the load stopped count as 10 s late, so that
    // an engine that falls behind shows in the percentiles instead of hiding.
    let late = sent_at.lock().unwrap().drain().filter(|(id, _)| !id.starts_with("pipe")).count();
    let mut e = std::mem::take(&mut *engine.lock().unwrap());
    e.extend(std::iter::repeat_n(10_000.0, late));
    let p = std::mem::take(&mut *piped.lock().unwrap());
    let engine_split = std::mem::take(&mut *engine_split.lock().unwrap());
    if let Some(sampler) = sampler {
        print_timeline(&sampler.join().unwrap(), &engine_split, started);
    }
    LoadRun {
        engine: e,
        engine_split,
        started,
        pipe: p,
        folded,
        folded_events,
        produced,
        cores,
        worker_threads: worker_cpu.threads,
    }
}

/// Where the probes' time went: in the worker (from the read appended until
/// its delta record was queued) or after it (until a consumer saw the
/// record), for all probes back and for the slowest 1% of them.
fn split_line(mut split: Vec<ProbeSplit>, started: Instant) -> String {
    if split.is_empty() {
        return "no probe's delta record carried a timestamp".into();
    }
    let parts =
        |probes: &[ProbeSplit]| -> (Vec<f64>, Vec<f64>) { probes.iter().map(|p| (p.in_worker_ms, p.after_ms)).unzip() };
    let (mut in_worker, mut after) = parts(&split);
    split.sort_by(|a, b| b.total_ms().total_cmp(&a.total_ms()));
    split.truncate((split.len() / 100).max(1));
    let (mut slow_in_worker, mut slow_after) = parts(&split);
    // Whether the slowest are one stall or spread over the load: the
    // tenths of a second they were appended in.
    let mut tenths: Vec<u64> = split.iter().map(|p| (seconds_since(started, p.appended) * 10.0) as u64).collect();
    tenths.sort_unstable();
    tenths.dedup();
    let spans: Vec<String> = tenths
        .chunk_by(|a, b| b - a == 1)
        .map(|run| format!("{:.1}-{:.1} s", run[0] as f64 / 10.0, (run[run.len() - 1] + 1) as f64 / 10.0))
        .collect();
    format!(
        "read appended to delta record queued p50 {:.1} / p99 {:.1} ms, queued to seen p50 {:.1} / p99 {:.1} ms; the slowest 1% back: median {:.1} ms to queued, {:.1} ms queued to seen, appended at {} into the load",
        pct(&mut in_worker, 0.5),
        pct(&mut in_worker, 0.99),
        pct(&mut after, 0.5),
        pct(&mut after, 0.99),
        pct(&mut slow_in_worker, 0.5),
        pct(&mut slow_after, 0.5),
        spans.join(", "),
    )
}

/// `RECEIPTD_LATENCY_TRACE=1`: sample the worker's counters every 50 ms
/// while a load runs, and print them around its slowest probes (the
/// sampling costs the worker a metrics page each time).
fn trace_enabled() -> bool {
    std::env::var("RECEIPTD_LATENCY_TRACE").is_ok_and(|v| v == "1")
}

/// Counters the timeline shows, by their metric names.
const TRACED: [&str; 7] = [
    "receiptd_records_in_total",
    "receiptd_flush_starts_total",
    "receiptd_flush_duration_seconds_count",
    "receiptd_delta_records_total",
    "receiptd_delta_queue_full_total",
    "receiptd_store_writes_total",
    "receiptd_store_syncs_total",
];

/// Seconds from `start` to `at` (0 if `at` is earlier).
fn seconds_since(start: Instant, at: Instant) -> f64 {
    at.saturating_duration_since(start).as_secs_f64()
}

/// Samples [`TRACED`] every 50 ms until `stop`: (when, values).
fn sample_worker(
    http: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(Instant, [f64; TRACED.len()])>> {
    std::thread::spawn(move || {
        let mut samples = Vec::new();
        while !stop.load(Relaxed) {
            if let Ok((_, body)) = http_get(http, "/metrics") {
                samples.push((Instant::now(), TRACED.map(|name| metric_in(&body, name))));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        samples
    })
}

/// The samples from half a second before the slowest probe's append to
/// a second after, as increments per sample.
fn print_timeline(samples: &[(Instant, [f64; TRACED.len()])], split: &[ProbeSplit], started: Instant) {
    let Some(slowest) = split.iter().max_by(|a, b| a.total_ms().total_cmp(&b.total_ms())) else { return };
    let slowest_at = seconds_since(started, slowest.appended);
    println!("timeline around the slowest probe (appended at {slowest_at:.2} s), increments per sample: {TRACED:?}");
    for pair in samples.windows(2) {
        let ((_, before), (at, now)) = (pair[0], pair[1]);
        let at = seconds_since(started, at);
        if at >= slowest_at - 0.5 && at <= slowest_at + 1.0 {
            let steps: Vec<String> = now.iter().zip(before).map(|(n, b)| format!("{:.0}", n - b)).collect();
            println!("  {at:6.2} s: {}", steps.join(" "));
        }
    }
}

/// One way to run the worker: its flush window, whether it also flushes
/// when caught up, and other settings for it.
struct Mode {
    window_ms: u64,
    caught_up: bool,
    /// Settings by their TOML key (`flush.max_in_flight`,
    /// `kafka.properties.linger.ms`).
    properties: Vec<(String, String)>,
}

impl Mode {
    /// The mode as the bench's lines and table name it.
    fn name(&self) -> String {
        let mut name = if self.caught_up {
            format!("{} ms + when caught up", self.window_ms)
        } else {
            format!("{} ms window only", self.window_ms)
        };
        for (k, v) in &self.properties {
            name += &format!(", {k}={v}");
        }
        name
    }

    /// The settings as the CSV's last column: `;` between them, as commas
    /// part columns.
    fn csv_properties(&self) -> String {
        let pairs: Vec<String> = self.properties.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.join(";")
    }
}

/// The worker's flushes so far: how many, their summed time, and the part
/// of it spent waiting for the broker's confirmations (seconds).
fn flush_totals(worker: &Worker) -> (f64, f64, f64) {
    (
        worker.metric("receiptd_flush_duration_seconds_count"),
        worker.metric("receiptd_flush_duration_seconds_sum"),
        worker.metric("receiptd_flush_confirm_seconds_total"),
    )
}

/// The environment variable that sets a worker setting given by its TOML
/// key: `flush.max_in_flight` is `RECEIPTD_FLUSH__MAX_IN_FLIGHT`, and a
/// librdkafka property keeps its name (`kafka.properties.linger.ms` is
/// `RECEIPTD_KAFKA__PROPERTIES__linger.ms`).
fn setting_variable(key: &str) -> String {
    match key.strip_prefix("kafka.properties.") {
        Some(property) => format!("RECEIPTD_KAFKA__PROPERTIES__{property}"),
        None => format!("RECEIPTD_{}", key.to_uppercase().replace('.', "__")),
    }
}

/// The modes to run, in order: `RECEIPTD_LATENCY_MODES`, a comma-separated
/// list of windows in ms, each with a `+` to flush when caught up too, and
/// optionally `:key=value` worker settings by their TOML key (default
/// `50+,50,5`; `50+:flush.max_in_flight=1` runs the default mode with one
/// flush in flight at a time). The first mode also warms the broker, so an A/B
/// comparison should run each mode more than once, in both orders
/// (`50,50+,50+,50`).
fn modes() -> Vec<Mode> {
    let list = std::env::var("RECEIPTD_LATENCY_MODES").unwrap_or_else(|_| "50+,50,5".into());
    list.split(',')
        .map(|m| {
            let mut parts = m.trim().split(':');
            let flush = parts.next().unwrap_or_default();
            let window = flush.trim_end_matches('+');
            let window_ms =
                window.parse().unwrap_or_else(|_| panic!("RECEIPTD_LATENCY_MODES: {m:?} is not a window in ms"));
            let properties = parts
                .map(|p| match p.split_once('=') {
                    Some((k, v)) if !k.is_empty() => (k.to_owned(), v.to_owned()),
                    _ => panic!("RECEIPTD_LATENCY_MODES: {p:?} in {m:?} is not key=value"),
                })
                .collect();
            Mode { window_ms, caught_up: flush.ends_with('+'), properties }
        })
        .collect()
}

/// The loads to offer in each mode, as shares of the first mode's drain
/// rate: `RECEIPTD_LATENCY_LOADS`, a comma-separated list of percentages
/// (default `25,50,80,100`).
fn loads() -> Vec<f64> {
    let list = std::env::var("RECEIPTD_LATENCY_LOADS").unwrap_or_else(|_| "25,50,80,100".into());
    list.split(',')
        .map(|l| {
            let pct: f64 =
                l.trim().parse().unwrap_or_else(|_| panic!("RECEIPTD_LATENCY_LOADS: {l:?} is not a percentage"));
            assert!(pct > 0.0, "RECEIPTD_LATENCY_LOADS: {pct} is not a positive percentage");
            pct / 100.0
        })
        .collect()
}

/// Probe ids of the warm-up load: past every recorded load's.
const WARM_UP_PROBES: u64 = 1_000_000_000;

/// Events in the backlog whose drain sets the loads' base rate. A second's
/// drain (1,000,000) was timed in 50 ms checkpoint steps, a twentieth of it.
const BASE_BACKLOG: usize = 3_000_000;

/// The share of the base rate the warm-up loads offer. At 50% of a drain
/// rate timed from the first fold, the load generator, the broker and the
/// worker together needed more than the machine's two cores (324k events/s
/// produced of 431k asked), and each warm-up load left a backlog behind.
const WARM_UP_SHARE: f64 = 0.25;

/// How many unrecorded loads at 25% to offer before the first mode's loads:
/// `RECEIPTD_LATENCY_WARMUP` (default 4; 0 skips them). The broker, the
/// load generator and the worker reach their steady state first. The
/// broker started for the run compiles its hot paths over its first
/// minute of engine load: after one warm-up load, the broker took 0.92
/// cores at a quarter load and the p99 difference over the pipe was
/// 53.1 ms; on a broker warmed by earlier runs, 0.48 to 0.57 cores and
/// 14.4 to 22.2 ms (BENCHMARKS.md, thirty-fourth sitting).
fn warm_up_loads() -> u64 {
    std::env::var("RECEIPTD_LATENCY_WARMUP").map_or(4, |v| {
        v.trim().parse().unwrap_or_else(|_| panic!("RECEIPTD_LATENCY_WARMUP: {v:?} is not a number of loads"))
    })
}

/// `RECEIPTD_LATENCY_BASE`, events/s: the rate the loads are shares of,
/// instead of the first mode's measured drain rate, which moves by a third
/// between runs here. For comparing builds or settings at the same load.
fn base_rate() -> Option<f64> {
    let v = std::env::var("RECEIPTD_LATENCY_BASE").ok()?;
    let rate: f64 = v.trim().parse().unwrap_or_else(|_| panic!("RECEIPTD_LATENCY_BASE: {v:?} is not events/s"));
    assert!(rate > 0.0, "RECEIPTD_LATENCY_BASE: {rate} is not a positive rate");
    Some(rate)
}

fn main() {
    receiptd_alloc::keep_freed_memory();
    let _broker = BenchBroker::ensure();
    let mut summary = Vec::new();
    let mut offered_base: Option<f64> = None;
    for (mode_index, mode_spec) in modes().into_iter().enumerate() {
        let (flush_ms, caught_up) = (mode_spec.window_ms, mode_spec.caught_up);
        let mode = mode_spec.name();
        let properties = mode_spec.csv_properties();
        let topics = Topics::create("latency");
        let pipe = format!("{}.pipe", topics.events);
        create_topics(&[(&pipe, 1, false)]);
        let mut traffic = Traffic::new(TrafficShape::bench());

        // The drain rate of a backlog, timed as the drain bench times it:
        // from the worker's first fold (its first checkpoint, here) until
        // it has caught up. Timed from `/readyz` over 1,000,000 events, the
        // worker's start took a third of it: a drain bench's 953k events/s
        // came to 512k here, and every load was a share of that.
        let producer = producer();
        let mut backlog = traffic.setup();
        backlog.extend((0..BASE_BACKLOG).map(|_| traffic.next_event()));
        produce_events(&producer, &topics.events, &backlog);
        let end: f64 = end_offsets(&topics.events).values().sum::<i64>() as f64;
        let dir = tempfile::tempdir().unwrap();
        let mut worker = Worker::new(&topics, &format!("{}-g", topics.events), &dir.path().join("state"))
            .env("RECEIPTD_FLUSH__INTERVAL_MS", &flush_ms.to_string())
            .env("RECEIPTD_FLUSH__WHEN_CAUGHT_UP", &caught_up.to_string());
        for (k, v) in &mode_spec.properties {
            worker = worker.env(&setting_variable(k), v);
        }
        worker.start();
        worker.wait_ready(Duration::from_secs(120));
        let ready = Instant::now();
        let (mut first, mut quarter) = (None, None);
        loop {
            let checkpoint = worker.metric("receiptd_checkpoint_offset");
            let now = Instant::now();
            if checkpoint > 0.0 {
                first.get_or_insert((now, checkpoint));
            }
            // Not at the end: a checkpoint straight past both leaves no
            // span to time.
            if checkpoint >= end / 4.0 && checkpoint < end {
                quarter.get_or_insert((now, checkpoint));
            }
            if checkpoint >= end {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let done = Instant::now();
        let rate_since = |(at, checkpoint): (Instant, f64)| (end - checkpoint) / done.duration_since(at).as_secs_f64();
        let from_ready = end / done.duration_since(ready).as_secs_f64();
        // The first checkpoint seen was the end only if the drain took less
        // than this loop's 20 ms: then only the time from /readyz says much.
        let drain = first.filter(|&(_, c)| c < end).map_or(from_ready, rate_since);
        let base = *offered_base.get_or_insert_with(|| base_rate().unwrap_or(drain));
        println!(
            "flush {mode}: drain rate {drain:.0} events/s from the first checkpoint ({:.2} s after /readyz), {} over the last three quarters, {:.0} from /readyz; loads are shares of {base:.0}",
            first.unwrap().0.duration_since(ready).as_secs_f64(),
            quarter.map_or("(no checkpoint between)".into(), |q| format!("{:.0}", rate_since(q))),
            from_ready,
        );
        for round in 0..if mode_index == 0 { warm_up_loads() } else { 0 } {
            // A broker started for this run compiles its hot paths in its
            // first minute: unwarmed, a first load's p99 over the pipe came
            // to 112 to 560 ms where the same settings' third came to 16 to 73.
            let probe_base = WARM_UP_PROBES * (round + 1);
            let mut warm = run_load(&worker, &topics, &pipe, base * WARM_UP_SHARE, &mut traffic, probe_base);
            println!(
                "flush {mode}: warm-up load {} at {:.0}% (not recorded): engine p99 {:.1} ms, pipe p99 {:.1} ms",
                round + 1,
                WARM_UP_SHARE * 100.0,
                pct(&mut warm.engine, 0.99),
                pct(&mut warm.pipe, 0.99)
            );
        }

        for (i, share) in loads().into_iter().enumerate() {
            let before = flush_totals(&worker);
            let LoadRun {
                engine: mut e,
                engine_split,
                started,
                pipe: mut p,
                folded,
                folded_events,
                produced,
                cores,
                worker_threads,
            } = run_load(&worker, &topics, &pipe, base * share, &mut traffic, i as u64 * 10_000_000);
            let after = flush_totals(&worker);
            // A flush's time: its deltas taken, sent and confirmed, its state written.
            let (count, seconds, confirm) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
            println!(
                "flush {mode}, {:.0}% load: {count:.0} flushes, {:.2} ms each on average, {:.2} ms of it until the broker confirmed its deltas",
                share * 100.0,
                seconds / count.max(1.0) * 1e3,
                confirm / count.max(1.0) * 1e3
            );
            // Whether the machine could carry the load at all: the load
            // generator, the broker and the worker share its cores.
            println!(
                "flush {mode}, {:.0}% load: {produced:.0} events/s produced of {:.0} asked; CPU in cores: worker {:.2}, load generator and tails {:.2}, broker {}; machine busy {:.2} of {}, {:.2} stolen",
                share * 100.0,
                base * share,
                cores.worker,
                cores.bench,
                cores.broker_and_jit_or(BROKER_UNKNOWN),
                cores.busy,
                cpus(),
                cores.stolen
            );
            // As the drain bench splits it: what a live load costs the
            // worker beyond a backlog's drain, thread by thread.
            println!(
                "flush {mode}, {:.0}% load: worker CPU by thread, us per event folded: {}",
                share * 100.0,
                per_thread_line(&worker_threads, folded_events.max(1.0))
            );
            let row = [0.5, 0.99, 0.999].map(|q| (pct(&mut e, q), pct(&mut p, q)));
            println!("flush {mode}, {:.0}% load: {}", share * 100.0, split_line(engine_split, started));
            println!("flush {mode}, {:.0}% load: {}", share * 100.0, worker.longest_stalls());
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
            summary.push(SummaryRow {
                mode: mode.clone(),
                properties: properties.clone(),
                flush_ms,
                caught_up,
                share,
                offered: base * share,
                produced,
                folded,
                cores,
                percentiles: row,
            });
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
    println!("\n| flush | load | offered / produced / folded events/s | engine p50 / p99 / p99.9 | pipe p50 / p99 / p99.9 | p99 difference | cores: worker / load generator / broker / machine busy |");
    println!("|---|---|---|---|---|---|---|");
    let mut csv = String::from(
        "flush_ms,caught_up,share,offered,folded,engine_p50,engine_p99,engine_p999,pipe_p50,pipe_p99,pipe_p999,properties,produced,worker_cores,bench_cores,broker_cores,busy_cores,stolen_cores\n",
    );
    for SummaryRow { mode, properties, flush_ms, caught_up, share, offered, produced, folded, cores, percentiles } in
        summary
    {
        let [(e50, p50), (e99, p99), (e999, p999)] = percentiles;
        let (pct, gap) = (share * 100.0, e99 - p99);
        let (worker, bench, busy, stolen) = (cores.worker, cores.bench, cores.busy, cores.stolen);
        println!(
            "| {mode} | {pct:.0}% | {offered:.0} / {produced:.0} / {folded:.0} | {e50:.1} / {e99:.1} / {e999:.1} ms | {p50:.1} / {p99:.1} / {p999:.1} ms | {gap:.1} ms | {worker:.2} / {bench:.2} / {} / {busy:.2} |",
            cores.broker_or("?")
        );
        csv += &format!(
            "{flush_ms},{caught_up},{share},{offered:.0},{folded:.0},{e50:.2},{e99:.2},{e999:.2},{p50:.2},{p99:.2},{p999:.2},{properties},{produced:.0},{worker:.3},{bench:.3},{},{busy:.3},{stolen:.3}\n",
            cores.broker_or("")
        );
    }
    // For benches/plot.py.
    std::fs::create_dir_all("target").expect("create target/");
    std::fs::write("target/latency.csv", csv).expect("write target/latency.csv");
    println!("wrote target/latency.csv (plot it with python3 benches/plot.py)");
}
