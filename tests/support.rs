//! Test support: topics on the real broker, the worker as a child process,
//! producing events, reading topics back.

#![allow(dead_code)]

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use receiptd_wire::{conversation_key, DeltaRecord, Event};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

thread_local! {
    /// A test's own broker, for the thread that set it (see [`use_brokers`]).
    static OWN_BROKERS: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Makes this thread's helpers talk to another broker than the shared one
/// (a test that stops its broker must not stop everyone's).
pub fn use_brokers(address: &str) {
    OWN_BROKERS.with(|b| *b.borrow_mut() = Some(address.to_owned()));
}

/// The real broker's address. Panics with instructions when unset.
pub fn brokers() -> String {
    if let Some(own) = OWN_BROKERS.with(|b| b.borrow().clone()) {
        return own;
    }
    match std::env::var("RECEIPTD_TEST_BROKERS") {
        Ok(b) if !b.trim().is_empty() => b,
        _ => panic!(
            "RECEIPTD_TEST_BROKERS is not set: these tests need a real Kafka broker. \
             Run the suite with deploy/test.sh, or start one with \
             `deploy/kafka.sh start DIR` and export RECEIPTD_TEST_BROKERS=<the address it prints>."
        ),
    }
}

/// For benches: uses RECEIPTD_TEST_BROKERS, or starts a broker with
/// deploy/kafka.sh (and stops it and deletes its files when dropped: a
/// drain run leaves 2.6 GB of them).
pub struct BenchBroker(Option<PathBuf>);

impl BenchBroker {
    pub fn ensure() -> BenchBroker {
        if std::env::var("RECEIPTD_TEST_BROKERS").is_ok_and(|b| !b.trim().is_empty()) {
            return BenchBroker(None);
        }
        let dir = tempfile::tempdir().unwrap().keep();
        let out = Command::new("deploy/kafka.sh").arg("start").arg(&dir).output().expect("run deploy/kafka.sh");
        assert!(out.status.success(), "deploy/kafka.sh start failed: {}", String::from_utf8_lossy(&out.stderr));
        std::env::set_var("RECEIPTD_TEST_BROKERS", String::from_utf8_lossy(&out.stdout).trim());
        BenchBroker(Some(dir))
    }
}

impl Drop for BenchBroker {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = Command::new("deploy/kafka.sh").arg("stop").arg(dir).status();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// One test's own topics.
#[derive(Clone, Debug)]
pub struct Topics {
    pub events: String,
    pub settings: String,
    pub deltas: String,
    pub dlq: String,
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("t{}-{}-{}", std::process::id(), nanos % 1_000_000_000, name)
}

impl Topics {
    /// Creates events (4 partitions), settings (1, compacted), deltas (4), dlq (1).
    pub fn create(name: &str) -> Topics {
        let base = unique(name);
        let t = Topics {
            events: format!("{base}.events"),
            settings: format!("{base}.settings"),
            deltas: format!("{base}.deltas"),
            dlq: format!("{base}.dlq"),
        };
        create_topics(&[(&t.events, 4, false), (&t.settings, 1, true), (&t.deltas, 4, false), (&t.dlq, 1, false)]);
        t
    }

    /// Deletes the four topics and `extra` ones: a bench's topics hold
    /// gigabytes (a 10 M-event drain run several), which a broker kept
    /// for many runs would fill its disk with.
    pub fn delete(&self, extra: &[&str]) {
        let mut names = vec![&*self.events, &*self.settings, &*self.deltas, &*self.dlq];
        names.extend_from_slice(extra);
        delete_topics(&names);
    }

    /// Another deltas topic (for a second, independent run).
    pub fn with_deltas(&self, suffix: &str) -> Topics {
        let deltas = format!("{}-{suffix}", self.deltas);
        create_topics(&[(&deltas, 4, false)]);
        Topics { deltas, ..self.clone() }
    }
}

pub fn create_topics(topics: &[(&str, i32, bool)]) {
    let with: Vec<(&str, i32, Vec<(&str, &str)>)> = topics
        .iter()
        .map(|&(name, partitions, compacted)| {
            (name, partitions, if compacted { vec![("cleanup.policy", "compact")] } else { vec![] })
        })
        .collect();
    create_topics_with(&with);
}

/// Creates topics with per-topic configs.
pub fn create_topics_with(topics: &[(&str, i32, Vec<(&str, &str)>)]) {
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions, configs)| {
            configs.iter().fold(NewTopic::new(name, *partitions, TopicReplication::Fixed(1)), |t, (k, v)| t.set(k, v))
        })
        .collect();
    let Admin { client, runtime, options } = Admin::new();
    check_topics("creating", runtime.block_on(client.create_topics(&new, &options)));
}

/// Deletes topics of the test broker.
pub fn delete_topics(names: &[&str]) {
    let Admin { client, runtime, options } = Admin::new();
    check_topics("deleting", runtime.block_on(client.delete_topics(names, &options)));
}

/// An admin client of the test broker, a runtime to wait for its answers,
/// and the options every request here uses.
struct Admin {
    client: AdminClient<DefaultClientContext>,
    runtime: tokio::runtime::Runtime,
    options: AdminOptions,
}

impl Admin {
    fn new() -> Admin {
        Admin {
            client: ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("admin client"),
            runtime: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            options: AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        }
    }
}

/// Panics, naming the topic, unless every topic's request succeeded.
fn check_topics(doing: &str, results: rdkafka::error::KafkaResult<Vec<rdkafka::admin::TopicResult>>) {
    for r in results.unwrap_or_else(|e| panic!("{doing} topics: {e}")) {
        r.unwrap_or_else(|(t, e)| panic!("{doing} topic {t}: {e}"));
    }
}

pub fn producer() -> BaseProducer {
    producer_config().create().expect("producer")
}

/// The configuration of [`producer`]: idempotent, 5 ms linger.
pub fn producer_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers()).set("enable.idempotence", "true").set("linger.ms", "5");
    config
}

/// Produces events as JSON, each under its conversation key, and waits for them.
pub fn produce_events(producer: &BaseProducer, topic: &str, events: &[Event]) {
    for e in events {
        let payload = serde_json::to_vec(e).unwrap();
        produce_raw(producer, topic, conversation_key(e).as_bytes(), &payload);
    }
    producer.flush(Duration::from_secs(30)).expect("flush events");
}

pub fn produce_raw(producer: &BaseProducer, topic: &str, key: &[u8], payload: &[u8]) {
    send(producer, BaseRecord::to(topic).key(key).payload(payload));
}

/// Appends one record with a `content-type` header.
pub fn produce_typed(producer: &BaseProducer, topic: &str, key: &[u8], payload: &[u8], content_type: &str) {
    let headers =
        OwnedHeaders::new().insert(Header { key: receiptd_wire::CONTENT_TYPE_HEADER, value: Some(content_type) });
    send(producer, BaseRecord::to(topic).key(key).payload(payload).headers(headers));
}

/// Queues `record`, serving delivery reports while the queue is full.
fn send(producer: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, r)) => {
                record = r;
                producer.poll(Duration::from_millis(10));
            }
        }
    }
}

/// A record read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub partition: i32,
    pub offset: i64,
}

/// Reads every record of `topic` from the beginning until `done` says so or
/// `timeout` passes (then returns what it has).
pub fn read_topic(topic: &str, timeout: Duration, done: impl Fn(&[Record]) -> bool) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("{topic}.reader")) // librdkafka wants one even to assign
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && !done(&out) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let mut headers = BTreeMap::new();
            if let Some(h) = m.headers() {
                for h in h.iter() {
                    headers.insert(h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned());
                }
            }
            out.push(Record {
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
                partition: m.partition(),
                offset: m.offset(),
            });
        }
    }
    out
}

/// Reads delta records until `count` have arrived (or the timeout).
pub fn read_deltas(topic: &str, count: usize, timeout: Duration) -> Vec<DeltaRecord> {
    parse_deltas(&read_topic(topic, timeout, |r| r.len() >= count))
}

/// Delta records of a topic, read until `done` holds of them or `timeout`.
pub fn read_deltas_until(topic: &str, timeout: Duration, done: impl Fn(&[DeltaRecord]) -> bool) -> Vec<DeltaRecord> {
    parse_deltas(&read_topic(topic, timeout, |r| done(&parse_deltas(r))))
}

fn parse_deltas(records: &[Record]) -> Vec<DeltaRecord> {
    records.iter().map(|r| serde_json::from_slice(&r.payload).expect("delta records are JSON")).collect()
}

/// Every delta record of a topic, up to its current end.
pub fn all_deltas(topic: &str) -> Vec<DeltaRecord> {
    let total: i64 = end_offsets(topic).values().sum();
    parse_deltas(&read_topic(topic, Duration::from_secs(60), |r| r.len() as i64 >= total))
}

/// The high watermark of each partition of a topic.
pub fn end_offsets(topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| (p.id(), consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).unwrap().1))
        .collect()
}

/// Offsets a group has committed on a topic.
pub fn committed(group: &str, topic: &str, partitions: &BTreeMap<i32, i64>) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers()).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in partitions.keys() {
        tpl.add_partition(topic, *p);
    }
    let c = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    c.elements()
        .iter()
        .map(|e| {
            (
                e.partition(),
                match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                },
            )
        })
        .collect()
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A [`Worker::env`] variable naming a receiptd binary to start instead of
/// this build's; the worker is not given it.
pub const WORKER_BINARY_VAR: &str = "RECEIPTD_WORKER_BINARY";

/// The worker binary, as a child process.
pub struct Worker {
    pub child: Option<Child>,
    pub http: SocketAddr,
    pub state_dir: PathBuf,
    pub group: String,
    env: Vec<(String, String)>,
    pub log: PathBuf,
}

impl Worker {
    pub fn new(topics: &Topics, group: &str, state_dir: &Path) -> Worker {
        let env = vec![
            ("RECEIPTD_KAFKA__BROKERS".into(), brokers()),
            ("RECEIPTD_KAFKA__GROUP_ID".into(), group.into()),
            ("RECEIPTD_KAFKA__INSTANCE_ID".into(), format!("{group}-w1")),
            ("RECEIPTD_KAFKA__SESSION_TIMEOUT_MS".into(), "6000".into()),
            ("RECEIPTD_TOPICS__EVENTS".into(), topics.events.clone()),
            ("RECEIPTD_TOPICS__SETTINGS".into(), topics.settings.clone()),
            ("RECEIPTD_TOPICS__DELTAS".into(), topics.deltas.clone()),
            ("RECEIPTD_TOPICS__DLQ".into(), topics.dlq.clone()),
            ("RECEIPTD_STATE__DIR".into(), state_dir.display().to_string()),
        ];
        Worker {
            child: None,
            http: free_addr(),
            state_dir: state_dir.to_owned(),
            group: group.into(),
            env,
            log: state_dir.with_extension("log"),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Worker {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    /// Waits until `check` holds, or fails naming `what` with the log.
    pub fn wait_until(&self, what: &str, timeout: Duration, check: impl Fn(&Worker) -> bool) {
        let deadline = Instant::now() + timeout;
        while !check(self) {
            assert!(Instant::now() < deadline, "{what}: not after {timeout:?}; log:\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the process (appending its stderr to `self.log`), the binary
    /// [`WORKER_BINARY_VAR`] names if set, else this build's.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.http = free_addr();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        // A build of receiptd to run instead of this one: compares two
        // builds in the drain bench's ABBA mode.
        let program = self.env.iter().find(|(k, _)| k == WORKER_BINARY_VAR).map(|(_, v)| v.as_str());
        let child = Command::new(program.unwrap_or(env!("CARGO_BIN_EXE_receiptd")))
            .arg("run")
            .envs(self.env.iter().filter(|(k, _)| k != WORKER_BINARY_VAR).cloned())
            .env("RECEIPTD_HTTP__ADDR", self.http.to_string())
            .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn receiptd");
        self.child = Some(child);
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("receiptd exited with {status} before ready; log:\n{}", self.log_tail());
            }
            let answer = http_get(self.http, "/readyz");
            if answer.as_ref().is_ok_and(|(s, _)| *s == 200) {
                return;
            }
            if Instant::now() > deadline {
                // The body names what the worker still waits for.
                let readyz = answer.map_or_else(|e| e.to_string(), |(_, body)| body);
                panic!("receiptd not ready after {timeout:?}: /readyz says {readyz}; log:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    /// SIGTERM, then the exit code.
    pub fn terminate(&mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("receiptd ignored SIGTERM for 60s; log:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the group has committed every offset up to the topic's end.
    pub fn wait_caught_up(&mut self, topic: &str, timeout: Duration) {
        let end = end_offsets(topic);
        let deadline = Instant::now() + timeout;
        loop {
            if committed(&self.group, topic, &end) == end {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("receiptd exited with {status}; log:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                panic!(
                    "not caught up after {timeout:?}: end {end:?}, committed {:?}; log:\n{}",
                    committed(&self.group, topic, &end),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The worker's `/metrics` value for a series (summed over labels).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = http_get(self.http, "/metrics").expect("metrics");
        metric_in(&body, name)
    }

    /// The worker's longest stalls since it started, as a line: the longest
    /// gap between two busy batches of its poll loop, by phase, and its
    /// store writer's and syncer's longest calls into RocksDB (a full
    /// writer queue holds the poll loop).
    pub fn longest_stalls(&self) -> String {
        let (_, body) = http_get(self.http, "/metrics").expect("metrics");
        let ms = |name: &str| metric_in(&body, name) * 1e3;
        let phases: Vec<String> = receiptd_stream::LOOP_PHASES
            .iter()
            .map(|p| format!("{p} {:.1}", ms(&format!("receiptd_batch_gap_max_phase_seconds{{phase=\"{p}\"}}"))))
            .collect();
        let store: Vec<String> = receiptd_stream::STORE_OPS
            .iter()
            .map(|op| format!("{op} {:.1}", ms(&format!("receiptd_store_op_max_seconds{{op=\"{op}\"}}"))))
            .collect();
        let value = |name: &str| metric_in(&body, name);
        format!(
            "longest since start: poll loop gap {:.1} ms ({:.1} on a CPU, {:.1} waiting for one; {}; the most CPU in any gap {:.1}), store call {} ms; {:.0} gaps over 10 ms; the poll loop waited {:.1} ms in all for the decode helper's last chunks",
            ms("receiptd_batch_gap_max_seconds"),
            ms("receiptd_batch_gap_max_on_cpu_seconds"),
            ms("receiptd_batch_gap_max_waiting_for_cpu_seconds"),
            phases.join(", "),
            ms("receiptd_batch_gap_most_cpu_seconds"),
            store.join(", "),
            value("receiptd_batch_gap_seconds_count") - value("receiptd_batch_gap_seconds_bucket{le=\"0.01\"}"),
            ms("receiptd_decode_helper_wait_seconds_total"),
        )
    }

    /// The CPU the worker process and each of its live threads have used
    /// so far: one read of `/proc`, for [`WorkerCpu::since`].
    pub fn cpu(&self) -> WorkerCpu {
        let pid = self.child.as_ref().expect("running").id();
        let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| {
                let tid = t.file_name().to_str()?.parse().ok()?;
                let name = std::fs::read_to_string(t.path().join("comm")).ok()?.trim().to_owned();
                // A thread may end between the listing and the read.
                let seconds = stat_cpu_seconds(t.path().join("stat").to_str()?)?;
                // Its time runnable but waiting for a CPU, in ns (the
                // second field), where the kernel tells it.
                let waiting = std::fs::read_to_string(t.path().join("schedstat"))
                    .ok()
                    .and_then(|s| s.split_ascii_whitespace().nth(1)?.parse::<f64>().ok())
                    .map_or(0.0, |ns| ns * 1e-9);
                Some((tid, (name, seconds, waiting)))
            })
            .collect();
        WorkerCpu { process: process_cpu_seconds(pid).expect("read /proc/PID/stat"), threads }
    }

    /// The process's peak resident set (VmHWM), MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        let vm_hwm = proc_status_field(self.child.as_ref().expect("running").id(), "VmHWM");
        let kb: u64 = vm_hwm.trim_end_matches("kB").trim().parse().expect("VmHWM in kB");
        kb / 1024
    }

    /// Everything the worker has logged, across its starts.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The folded state as `receiptd inspect` prints it (worker stopped).
    pub fn inspect(&self) -> Value {
        inspect(&self.state_dir)
    }
}

/// CPU seconds (user and system) a worker had used at one moment: the
/// whole process, and each live thread by id, with its name.
pub struct WorkerCpu {
    process: f64,
    /// By thread id: name, CPU seconds, seconds runnable but waiting for a CPU.
    threads: BTreeMap<u32, (String, f64, f64)>,
}

impl WorkerCpu {
    /// What was used from `before` to `self`.
    pub fn since(&self, before: &WorkerCpu) -> CpuUsed {
        // Each thread's name and one of its two times.
        type Times = BTreeMap<u32, (String, f64, f64)>;
        let column = |m: &Times, waiting: bool| -> BTreeMap<u32, (String, f64)> {
            m.iter()
                .map(|(tid, (name, cpu, wait))| (*tid, (name.clone(), if waiting { *wait } else { *cpu })))
                .collect()
        };
        let between = |waiting| thread_cpu_between(&column(&before.threads, waiting), &column(&self.threads, waiting));
        CpuUsed { process: self.process - before.process, threads: between(false), waiting_for_cpu: between(true) }
    }
}

/// CPU seconds a worker used over a stretch of time (see [`WorkerCpu`]).
pub struct CpuUsed {
    /// The whole process, threads that ended included.
    pub process: f64,
    /// Each thread's, by name, largest first (see [`per_thread_line`]).
    pub threads: Vec<(String, f64)>,
    /// Each thread's time runnable but waiting for a CPU, the same way
    /// (0 where the kernel does not tell).
    pub waiting_for_cpu: Vec<(String, f64)>,
}

impl CpuUsed {
    /// The threads named `name`, together.
    pub fn thread_named(&self, name: &str) -> f64 {
        named(&self.threads, name)
    }

    /// The time the threads named `name` waited for a CPU, together.
    pub fn waiting_for_cpu_named(&self, name: &str) -> f64 {
        named(&self.waiting_for_cpu, name)
    }
}

fn named(threads: &[(String, f64)], name: &str) -> f64 {
    threads.iter().filter(|(n, _)| n == name).map(|(_, s)| s).sum()
}

/// Each thread's CPU seconds from `before` to `after`, by name, largest
/// first; a thread born in between counts from zero, one that ended is lost.
fn thread_cpu_between(
    before: &BTreeMap<u32, (String, f64)>,
    after: &BTreeMap<u32, (String, f64)>,
) -> Vec<(String, f64)> {
    let mut used: Vec<(String, f64)> = after
        .iter()
        .map(|(tid, (name, seconds))| (name.clone(), seconds - before.get(tid).map_or(0.0, |(_, s)| *s)))
        .collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used
}

/// "name 0.123, ..." in microseconds per event, largest first, threads of
/// one name together ("rdk:broker1 0.300 + 0.080"), those under 0.005 as
/// "other".
pub fn per_thread_line(threads: &[(String, f64)], events: f64) -> String {
    let us = |s: f64| s * 1e6 / events;
    let mut names: Vec<(&str, Vec<f64>)> = Vec::new();
    let mut other = 0.0;
    for (name, seconds) in threads {
        if us(*seconds) < 0.005 {
            other += us(*seconds);
        } else if let Some((_, list)) = names.iter_mut().find(|(n, _)| n == name) {
            list.push(us(*seconds));
        } else {
            names.push((name, vec![us(*seconds)]));
        }
    }
    let mut parts: Vec<String> = names
        .iter()
        .map(|(name, list)| {
            let each: Vec<String> = list.iter().map(|u| format!("{u:.3}")).collect();
            format!("{name} {}", each.join(" + "))
        })
        .collect();
    parts.push(format!("other {other:.3}"));
    parts.join(", ")
}

/// CPU time of `clock` (this thread's or this process's), in seconds.
pub fn clock_cpu_seconds(clock: libc::clockid_t) -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec for the call to fill in.
    unsafe { libc::clock_gettime(clock, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// What the benches print for the broker's CPU when [`broker_pid`] finds
/// none to measure.
pub const BROKER_UNKNOWN: &str = "unknown (not exactly one kafka.Kafka process)";

/// The Kafka broker's process id, if exactly one broker (`kafka.Kafka`)
/// runs on this machine.
pub fn broker_pid() -> Option<u32> {
    let brokers: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // The command line's arguments are NUL-separated.
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == b"kafka.Kafka"))
        })
        .collect();
    match brokers[..] {
        [pid] => Some(pid),
        _ => None,
    }
}

/// CPU seconds the process `pid` has used so far (user and system).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// Seconds the machine's CPUs have spent idle (waiting for IO included)
/// and stolen by the hypervisor, every CPU summed, so far.
pub fn machine_cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    // "cpu  user nice system idle iowait irq softirq steal guest guest_nice",
    // in clock ticks.
    let ticks: Vec<f64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).map(|t| t.parse().unwrap_or(0.0)).collect();
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0.0);
    let tick = clock_ticks_per_second();
    ((at(3) + at(4)) / tick, at(7) / tick)
}

/// The unit of `/proc`'s CPU times.
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// CPU seconds so far of a JVM's JIT compiler threads (HotSpot names them
/// `C1 CompilerThread<n>` and `C2 CompilerThread<n>`, cut to 15 bytes).
pub fn jit_cpu_seconds(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        tasks
            .flatten()
            .filter(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.starts_with("C1 Compiler") || comm.starts_with("C2 Compiler"))
            })
            .filter_map(|task| stat_cpu_seconds(task.path().join("stat").to_str()?))
            .sum(),
    )
}

/// The user and system CPU seconds in a `/proc/.../stat` file.
fn stat_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // utime and stime: fields 14 and 15, counted after the `(comm)`.
    let after_comm = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    Some((ticks(11) + ticks(12)) / clock_ticks_per_second())
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn inspect(state_dir: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_receiptd"))
        .args(["inspect", "--state-dir"])
        .arg(state_dir)
        .output()
        .expect("run receiptd inspect");
    assert!(out.status.success(), "inspect failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("inspect prints JSON")
}

/// The sum of a metric's series in a `/metrics` page: `name` alone, or
/// with its labels (`name{op="write"}`) for one series.
pub fn metric_in(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A minimal HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// Now, Unix ms: event times near the record times, as in production (the
/// fold measures retention against record time).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Event builders for app `a1`.
pub mod ev {
    use receiptd_wire::*;

    pub const APP: &str = "a1";

    pub fn group(g: &str) -> Conversation {
        Conversation::Group { group_id: g.into() }
    }
    pub fn c2c(peer: &str) -> Conversation {
        Conversation::C2c { peer: peer.into() }
    }
    pub fn members(g: &str, op: MembersOp, users: &[&str], at: u64) -> Event {
        Event::GroupMembers(GroupMembers {
            app_id: APP.into(),
            group_id: g.into(),
            op,
            group_type: (op == MembersOp::Snapshot).then_some(GroupType::Work),
            members: users.iter().map(|u| Id::from(u.to_string())).collect(),
            at,
        })
    }
    pub fn sent(msg: &str, sender: &str, conversation: Conversation, need: bool, at: u64) -> Event {
        Event::MessageSent(MessageSent {
            app_id: APP.into(),
            msg_id: msg.into(),
            sender: sender.into(),
            conversation,
            need_read_receipt: need,
            sent_at: at,
        })
    }
    pub fn read(reader: &str, conversation: Conversation, msgs: &[&str], at: u64) -> Event {
        Event::MessageRead(MessageRead {
            app_id: APP.into(),
            reader: reader.into(),
            conversation,
            msg_ids: msgs.iter().map(|m| Id::from(m.to_string())).collect(),
            read_at: at,
            private: false,
        })
    }
    pub fn conversation_read(reader: &str, peer: &str, at: u64) -> Event {
        Event::ConversationRead(ConversationRead {
            app_id: APP.into(),
            reader: reader.into(),
            conversation: c2c(peer),
            read_at: at,
        })
    }
}

/// A minimal HTTP/1.1 request: (status, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    // The server may answer (413) before reading a large body; a reset then is fine.
    let _ = s.write_all(&bytes);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// One field of /proc/PID/status (`self` for this process), its value trimmed.
pub fn proc_status_field(pid: impl std::fmt::Display, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// CPU in use over a stretch of wall time, in cores (CPU seconds a second).
#[derive(Clone, Copy)]
pub struct Cores {
    /// The worker process.
    pub worker: f64,
    /// This process: the bench (the latency bench's load generator and
    /// its two tails).
    pub bench: f64,
    /// The broker, if exactly one runs here.
    pub broker: Option<f64>,
    /// The broker's JIT compiler threads, of `broker`: a broker started
    /// for the run still compiles while it is measured.
    pub broker_jit: Option<f64>,
    /// The whole machine, busy.
    pub busy: f64,
    /// Taken by the hypervisor for other guests.
    pub stolen: f64,
}

impl Cores {
    /// The broker's cores to two places, or `missing`.
    pub fn broker_or(&self, missing: &str) -> String {
        self.broker.map_or(missing.to_owned(), |b| format!("{b:.2}"))
    }

    /// The broker's cores and its JIT compilers' share of them, or `missing`.
    pub fn broker_and_jit_or(&self, missing: &str) -> String {
        match (self.broker, self.broker_jit) {
            (Some(b), Some(jit)) => format!("{b:.2} ({jit:.2} of them its JIT compilers)"),
            _ => self.broker_or(missing),
        }
    }
}

/// Cumulative CPU seconds at one moment (see [`Cores`]).
pub struct CpuSnapshot {
    at: Instant,
    worker: WorkerCpu,
    bench: f64,
    broker: Option<f64>,
    broker_jit: Option<f64>,
    idle: f64,
    stolen: f64,
}

impl CpuSnapshot {
    pub fn take(worker: &Worker, broker: Option<u32>) -> CpuSnapshot {
        let (idle, stolen) = machine_cpu_seconds();
        CpuSnapshot {
            at: Instant::now(),
            worker: worker.cpu(),
            bench: clock_cpu_seconds(libc::CLOCK_PROCESS_CPUTIME_ID),
            broker: broker.and_then(process_cpu_seconds),
            broker_jit: broker.and_then(jit_cpu_seconds),
            idle,
            stolen,
        }
    }

    /// The cores in use from `before` to `self`, and what the worker's
    /// threads used meanwhile.
    pub fn since(&self, before: &CpuSnapshot) -> (Cores, CpuUsed) {
        let wall = self.at.duration_since(before.at).as_secs_f64().max(1e-9);
        let worker = self.worker.since(&before.worker);
        let cores = Cores {
            worker: worker.process / wall,
            bench: (self.bench - before.bench) / wall,
            broker: self.broker.zip(before.broker).map(|(a, b)| (a - b) / wall),
            broker_jit: self.broker_jit.zip(before.broker_jit).map(|(a, b)| (a - b) / wall),
            // What was neither idle nor stolen: the kernel measures idle
            // time exactly, where it samples busy time at each tick.
            busy: cpus() as f64 - (self.idle - before.idle + self.stolen - before.stolen) / wall,
            stolen: (self.stolen - before.stolen) / wall,
        };
        (cores, worker)
    }
}

/// The machine's CPUs.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
