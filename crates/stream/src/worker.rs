//! The worker thread: a `BaseConsumer` poll loop, its rebalance handling, and
//! shutdown. Records come in batches from a [`FetchQueue`], rebalances from
//! the consumer's own queue.

use crate::engine::{decode, offset_list, DeliveryContext, Engine, Handover, StoreWriter};
use crate::fetch::{FetchQueue, FetchedRecord};
use crate::metrics::{FlushTrigger, LOOP_PHASES};
use crate::retire::Retirer;
use crate::settings::{settle, SettingsReader};
use crate::split::{SplitMap, SPLIT_FROM};
use crate::{Metrics, StreamError};
use parking_lot::{Mutex as EngineLock, RwLock};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};
use receiptd_core::{Limits, PartitionView, ReadAhead, SettingsTable, PREFETCH_AHEAD};
use receiptd_store::Store;
use receiptd_wire::{DecodeError, Event};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Most records taken from the consumer per loop turn.
const MAX_BATCH: usize = 1024;
/// How often assigned partitions are routed to the fetch queue again.
const REROUTE_EVERY: Duration = Duration::from_secs(5);
/// How long the loop waits for input while a flush's deltas are in flight,
/// so that their confirmations are seen promptly.
const DELIVERY_POLL: Duration = Duration::from_millis(1);
/// A flush unconfirmed for this long marks the worker unready.
const BLOCKED_AFTER: Duration = Duration::from_secs(1);
/// How often a flush still waiting for the broker is reported.
const BLOCKED_REPORT_EVERY: Duration = Duration::from_secs(30);
/// How long records may stay counted unconfirmed while librdkafka holds
/// none before the worker gives up on them.
const ORPHANED_AFTER: Duration = Duration::from_secs(10);

/// Watches a flush that waits for the broker. Warns (and marks the worker
/// unready) once it has waited [`BLOCKED_AFTER`], then reports what is still
/// unconfirmed every [`BLOCKED_REPORT_EVERY`]. Fails the worker when records
/// are counted unconfirmed but librdkafka holds none: no delivery report
/// can settle them, so the flush would wait forever; restarting folds
/// again from the last checkpoint and sends their deltas again.
struct DeliveryWatch {
    /// [`ORPHANED_AFTER`]; shorter in tests.
    orphaned_after: Duration,
    warned: bool,
    next_report: Option<Instant>,
    orphaned_since: Option<Instant>,
}

impl Default for DeliveryWatch {
    fn default() -> Self {
        DeliveryWatch { orphaned_after: ORPHANED_AFTER, warned: false, next_report: None, orphaned_since: None }
    }
}

impl DeliveryWatch {
    fn waiting(
        &mut self,
        since: Instant,
        producer: &BaseProducer<DeliveryContext>,
        shared: &Shared,
    ) -> Result<(), StreamError> {
        let now = Instant::now();
        let waited = now.duration_since(since);
        if waited < BLOCKED_AFTER {
            return Ok(());
        }
        if !self.warned {
            self.warned = true;
            self.next_report = Some(now + BLOCKED_REPORT_EVERY);
            shared.producer_blocked.store(true, Relaxed);
            shared.metrics.flush_errors.fetch_add(1, Relaxed);
            tracing::warn!("waiting for the broker to take deltas; folding continues up to the pending limit");
        }
        let (unconfirmed, oldest_generation) = producer.context().unsettled();
        let queued = producer.in_flight_count();
        shared.metrics.deltas_unconfirmed.store(unconfirmed as i64, Relaxed);
        if self.next_report.is_some_and(|at| now >= at) {
            self.next_report = Some(now + BLOCKED_REPORT_EVERY);
            tracing::warn!(
                waited_s = waited.as_secs(),
                unconfirmed,
                oldest_generation,
                librdkafka_queue = queued,
                "a flush still waits for the broker to confirm its deltas"
            );
        }
        if unconfirmed == 0 || queued > 0 {
            self.orphaned_since = None;
            return Ok(());
        }
        let orphaned_since = *self.orphaned_since.get_or_insert(now);
        if now.duration_since(orphaned_since) < self.orphaned_after {
            return Ok(());
        }
        tracing::error!(
            unconfirmed,
            oldest_generation,
            "records counted unconfirmed, but librdkafka holds none: no delivery report will come; \
             stopping so that a restart folds again from the last checkpoint"
        );
        Err(StreamError::DeliveryLost { unconfirmed })
    }

    /// No flush waits any more. Called every loop turn: does nothing unless
    /// a wait was watched.
    fn settled(&mut self, shared: &Shared) {
        if self.warned {
            *self = DeliveryWatch { orphaned_after: self.orphaned_after, ..DeliveryWatch::default() };
            shared.metrics.deltas_unconfirmed.store(0, Relaxed);
        }
    }
}

/// Topic names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Input events.
    pub events: String,
    /// Input settings (compacted, read in full).
    pub settings: String,
    /// Output deltas.
    pub deltas: String,
    /// Dead letters.
    pub dlq: String,
}

/// Everything a worker needs to know.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// Consumer group.
    pub group_id: String,
    /// Static group membership id; a restarted worker with the same id takes
    /// its partitions back without waiting for a session timeout.
    pub instance_id: Option<String>,
    /// Topic names.
    pub topics: Topics,
    /// How often pending work is flushed while input keeps coming.
    pub flush_interval: Duration,
    /// Also flush as soon as the input is drained and there is room for a
    /// flush in flight, without waiting out `flush_interval`.
    pub flush_when_caught_up: bool,
    /// Most flushes whose deltas the broker has not confirmed yet: the next
    /// one is staged and sent while earlier ones wait, and each is written
    /// in order once confirmed (0 counts as 1).
    pub max_flushes_in_flight: usize,
    /// Flush early once this many records are pending.
    pub max_pending_records: u64,
    /// How often the store is fsynced (a checkpoint boundary).
    pub sync_interval: Duration,
    /// Longest a rebalance callback may spend flushing.
    pub revoke_timeout: Duration,
    /// Changed entities a flush stages per turn of the poll loop, beyond
    /// those the fold changed since its last slice (at most eight times
    /// this many in all; `None`: all at once).
    pub stage_slice: Option<usize>,
    /// Consumer session timeout.
    pub session_timeout: Duration,
    /// Fold limits.
    pub limits: Limits,
    /// Extra librdkafka properties for every client (security, tuning).
    pub kafka_properties: BTreeMap<String, String>,
    /// Two helper threads for the poll loop: one decodes large batches
    /// with it ([`SplitMap`]), the other destroys their records once
    /// folded ([`Retirer`]).
    pub poll_loop_helpers: bool,
    /// The poll loop thread's nice value (0: as the process has it); see
    /// [`set_poll_loop_nice`].
    pub poll_loop_nice: i32,
}

#[cfg(test)]
impl WorkerConfig {
    /// The defaults, group `g`, topics named after their role.
    pub(crate) fn for_tests(brokers: &str) -> WorkerConfig {
        WorkerConfig {
            brokers: brokers.into(),
            group_id: "g".into(),
            instance_id: None,
            topics: Topics {
                events: "events".into(),
                settings: "settings".into(),
                deltas: "deltas".into(),
                dlq: "dlq".into(),
            },
            flush_interval: Duration::from_millis(50),
            flush_when_caught_up: true,
            max_flushes_in_flight: 2,
            max_pending_records: 100_000,
            sync_interval: Duration::from_secs(1),
            revoke_timeout: Duration::from_secs(5),
            stage_slice: None,
            session_timeout: Duration::from_secs(10),
            limits: Default::default(),
            kafka_properties: Default::default(),
            poll_loop_helpers: false,
            poll_loop_nice: 0,
        }
    }
}

/// State shared between the worker, the HTTP server and the demo.
#[derive(Debug, Default)]
pub struct Shared {
    /// Metrics.
    pub metrics: Metrics,
    /// The settings table has been read to its end.
    pub settings_loaded: AtomicBool,
    /// The consumer has received its first assignment and restored it.
    pub assigned: AtomicBool,
    /// The producer could not deliver for a while (broker down).
    pub producer_blocked: AtomicBool,
    /// The consumer's statistics show no broker connection up.
    pub brokers_down: AtomicBool,
    /// The worker has stopped (cleanly or not).
    pub stopped: AtomicBool,
    /// The settings table, as the fold and the queries see it.
    pub(crate) settings: RwLock<SettingsTable>,
    /// What queries read of each owned partition, published on assignment
    /// and revocation.
    pub(crate) views: RwLock<Vec<Arc<PartitionView>>>,
}

impl Shared {
    /// Ready: settings loaded, assigned and restored, broker taking writes,
    /// store healthy.
    pub fn ready(&self) -> bool {
        self.readiness().is_ok()
    }

    /// `Ok` when ready, else what the worker waits for.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if !self.settings_loaded.load(Relaxed) {
            Err("loading the settings table")
        } else if !self.assigned.load(Relaxed) {
            Err("waiting for a partition assignment and state restore")
        } else if self.brokers_down.load(Relaxed) {
            Err("no broker connection is up")
        } else if self.producer_blocked.load(Relaxed) {
            Err("the broker is not taking deltas")
        } else if self.metrics.store_failed.load(Relaxed) || self.stopped.load(Relaxed) {
            Err("the worker stopped or its store refuses writes")
        } else {
            Ok(())
        }
    }

    /// Runs `f` on the settings table and the view of every owned
    /// partition, without stopping the fold (see
    /// [`receiptd_core::PartitionView`]). `None` once the worker has stopped.
    pub fn query<R>(&self, f: impl FnOnce(&SettingsTable, &[Arc<PartitionView>]) -> R) -> Option<R> {
        if self.stopped.load(Relaxed) {
            return None;
        }
        let views = self.views.read().clone();
        let settings = self.settings.read();
        Some(f(&settings, &views))
    }

    /// Healthy: the worker runs and its store accepts writes.
    pub fn healthy(&self) -> bool {
        !self.metrics.store_failed.load(Relaxed) && !self.stopped.load(Relaxed)
    }
}

struct WorkerContext {
    engine: Arc<EngineLock<Option<Engine>>>,
    shared: Arc<Shared>,
    config: Arc<WorkerConfig>,
    fatal: Mutex<Option<StreamError>>,
    /// Where assigned partitions' records go. Weak: the poll loop owns the
    /// queue, which must be destroyed before the consumer is.
    fetch: Mutex<Weak<FetchQueue>>,
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        // Learned brokers have node ids; the bootstrap entries do not.
        let up = statistics.brokers.values().any(|b| b.nodeid >= 0 && b.state == "UP");
        let down = !up;
        if self.shared.brokers_down.swap(down, Relaxed) != down {
            if up {
                tracing::info!("broker connection back up");
            } else {
                tracing::warn!("no broker connection up; not ready until one is");
            }
        }
        if let Some(topic) = statistics.topics.get(&self.config.topics.events) {
            for (p, s) in &topic.partitions {
                if *p >= 0 && s.hi_offset >= 0 {
                    self.shared.metrics.set_high_watermark(*p, s.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for WorkerContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        self.shared.metrics.rebalances.fetch_add(1, Relaxed);
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let mut guard = self.engine.lock();
        let Some(engine) = guard.as_mut() else {
            // Stopping after an error, the engine gone: nothing is flushed on
            // the way out (the next owner folds again from the last
            // checkpoint), but the group still takes the partitions back.
            if matches!(err, RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
                let _ = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
            }
            return;
        };
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = engine.assign(tpl) {
                    tracing::error!(error = %e, "could not restore assigned partitions");
                    *self.fatal.lock().expect("fatal lock") = Some(e);
                    return;
                }
                // Routed before they are assigned, so that no record of
                // theirs is fetched into the consumer's own queue.
                if let Some(fetch) = self.fetch.lock().expect("fetch lock").upgrade() {
                    fetch.route(consumer, tpl);
                }
                let result = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                if let Err(e) = result {
                    tracing::error!(error = %e, "assign failed");
                }
                self.shared.assigned.store(true, Relaxed);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                let lost = consumer.assignment_lost();
                tracing::info!(?partitions, lost, "partitions revoked; flushing before giving them up");
                let deadline = Instant::now() + self.config.revoke_timeout;
                match engine.revoke(&partitions, deadline) {
                    Ok(Some(offsets)) if !lost => {
                        if let Ok(offsets) = offset_list(&self.config.topics.events, &offsets) {
                            let _ = consumer.commit(&offsets, CommitMode::Async);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "flush on revoke failed with partitions still owned; stopping");
                        *self.fatal.lock().expect("fatal lock") = Some(e);
                    }
                }
                let result = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "unassign failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                if !cooperative {
                    let _ = consumer.unassign();
                }
            }
        }
    }
}

/// librdkafka properties the worker decides itself, each with why: the
/// extra properties of its configuration may not name them. The binary
/// refuses such a configuration at load; a library caller that passes one
/// anyway has it overridden where a client sets the property itself (every
/// one here but `transactional.id`, which no client sets).
pub const RESERVED_CLIENT_PROPERTIES: [(&str, &str); 15] = [
    ("bootstrap.servers", "set by kafka.brokers"),
    ("group.id", "set by kafka.group_id"),
    ("group.instance.id", "set by kafka.instance_id"),
    ("session.timeout.ms", "set by kafka.session_timeout_ms"),
    ("heartbeat.interval.ms", "follows kafka.session_timeout_ms"),
    ("enable.auto.commit", "offsets live in the state store, written with the state they produced"),
    ("enable.auto.offset.store", "offsets live in the state store, written with the state they produced"),
    ("auto.offset.reset", "the log is the truth: a partition with no stored offset is read from its start"),
    ("partition.assignment.strategy", "the worker assigns and revokes incrementally (cooperative-sticky)"),
    ("isolation.level", "only committed records are folded"),
    ("enable.partition.eof", "the poll loop takes no end-of-partition events"),
    ("statistics.interval.ms", "the lag metrics read librdkafka's statistics every second"),
    ("enable.idempotence", "deltas are produced idempotently, in order"),
    ("message.timeout.ms", "a flush waits for its deltas, and none is ever dropped"),
    ("transactional.id", "the worker's producer is not transactional: its offsets live in the state store"),
];

/// The producer's tuning defaults, which `kafka_properties` override.
pub(crate) const PRODUCER_TUNING: [(&str, &str); 2] = [("linger.ms", "2"), ("queue.buffering.max.kbytes", "65536")];

/// The events consumer's tuning defaults, which `kafka_properties` override.
/// Once the prefetch queue is full, it looks again after 5 ms: librdkafka's
/// default (1 s) leaves the worker idle once it has drained the queue.
pub(crate) const CONSUMER_TUNING: [(&str, &str); 2] =
    [("queued.max.messages.kbytes", "32768"), ("fetch.queue.backoff.ms", "5")];

/// A client's configuration: the worker's defaults for it, which the
/// configured extra properties override (tuning), then `reserved` (the
/// settings it relies on, see [`RESERVED_CLIENT_PROPERTIES`]) over both.
fn client_config(config: &WorkerConfig, defaults: &[(&str, &str)], reserved: &[(&str, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &config.kafka_properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &config.brokers);
    for (k, v) in reserved {
        c.set(*k, v);
    }
    c
}

/// The delta and DLQ producer's configuration.
fn producer_config(config: &WorkerConfig) -> ClientConfig {
    client_config(
        config,
        &PRODUCER_TUNING,
        &[
            ("enable.idempotence", "true".into()),
            // Never give up on a delta: the flush waits, and offsets stay put.
            ("message.timeout.ms", "0".into()),
        ],
    )
}

/// The events consumer's configuration.
fn consumer_config(config: &WorkerConfig) -> ClientConfig {
    let session_ms = config.session_timeout.as_millis();
    let mut reserved = vec![
        ("group.id", config.group_id.clone()),
        ("enable.auto.commit", "false".into()),
        ("enable.auto.offset.store", "false".into()),
        ("auto.offset.reset", "earliest".into()),
        ("partition.assignment.strategy", "cooperative-sticky".into()),
        ("isolation.level", "read_committed".into()),
        ("session.timeout.ms", session_ms.to_string()),
        ("heartbeat.interval.ms", (session_ms / 3).max(100).to_string()),
        ("statistics.interval.ms", "1000".into()),
        ("enable.partition.eof", "false".into()),
    ];
    if let Some(id) = &config.instance_id {
        reserved.push(("group.instance.id", id.clone()));
    }
    client_config(config, &CONSUMER_TUNING, &reserved)
}

/// The settings reader's configuration: librdkafka wants a group even for
/// manual assignment; this one never subscribes and never commits.
pub(crate) fn settings_reader_config(config: &WorkerConfig) -> ClientConfig {
    client_config(
        config,
        &[],
        &[
            ("group.id", format!("{}.settings-reader", config.group_id)),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
            ("enable.partition.eof", "false".into()),
        ],
    )
}

/// Runs a worker on the calling thread until `stop` is set (then flushes,
/// checkpoints and closes the consumer) or a fatal error occurs.
pub fn run(
    config: WorkerConfig,
    store: Arc<Store>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> Result<(), StreamError> {
    let result = run_inner(config, store, &shared, &stop);
    shared.stopped.store(true, Relaxed);
    result
}

/// Sets the calling thread's nice value to `nice` (0 leaves it) and
/// returns the value in effect. On cores shared with the broker and the
/// worker's other threads, the poll loop, which bounds the drain, waited
/// for a CPU about a quarter of its time; it alone is raised (with the
/// threads it starts later, which restore assigned partitions). Refused (no
/// `CAP_SYS_NICE`, a low `RLIMIT_NICE`), the thread keeps its value, and
/// the refusal is logged: the worker runs as before.
pub(crate) fn set_poll_loop_nice(nice: i32) -> i32 {
    // SAFETY: gettid takes nothing and cannot fail.
    let tid = unsafe { libc::gettid() } as libc::id_t;
    // SAFETY: getpriority reads a value; -1 is a value too, hence errno
    // is not checked (a thread's own is always readable).
    let before = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    if nice == 0 {
        return before;
    }
    // SAFETY: setpriority takes no pointers.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } == 0 {
        tracing::info!(nice, before, "poll loop priority set");
        return nice;
    }
    let error = std::io::Error::last_os_error();
    tracing::info!(
        nice,
        kept = before,
        %error,
        "poll loop priority kept: a nice value below the process's needs CAP_SYS_NICE or an RLIMIT_NICE of 20 minus it"
    );
    before
}

/// A record decoded, or the consumer error it stands for.
fn decode_record(r: &FetchedRecord) -> Result<Result<Event, DecodeError>, KafkaError> {
    match r.error() {
        Some(err) => Err(err),
        None => Ok(decode(r)),
    }
}

fn run_inner(
    config: WorkerConfig,
    store: Arc<Store>,
    shared: &Arc<Shared>,
    stop: &Arc<AtomicBool>,
) -> Result<(), StreamError> {
    let config = Arc::new(config);
    let producer: Arc<BaseProducer<DeliveryContext>> =
        Arc::new(producer_config(&config).create_with_context(DeliveryContext::new(shared.clone()))?);

    let writer = StoreWriter::start(store.clone(), shared.clone()).map_err(StreamError::Spawn)?;
    let mut engine = Engine::new(config.clone(), store.clone(), producer.clone(), shared.clone(), writer)?;
    let mut table = SettingsTable::default();
    let settings = SettingsReader::bootstrap(&config, &mut table, shared, stop, &mut |m, e| engine.dead_letter(m, e))?;
    *shared.settings.write() = table;
    shared.settings_loaded.store(true, Relaxed);

    let engine = Arc::new(EngineLock::new(Some(engine)));
    let context = WorkerContext {
        engine: engine.clone(),
        shared: shared.clone(),
        config: config.clone(),
        fatal: Mutex::new(None),
        fetch: Mutex::new(Weak::new()),
    };
    let consumer: BaseConsumer<WorkerContext> = consumer_config(&config).create_with_context(context)?;
    ensure_topic(&consumer, &config.topics.events)?;
    consumer.subscribe(&[&config.topics.events])?;
    tracing::info!(topic = %config.topics.events, group = %config.group_id, "worker subscribed");
    // SAFETY: declared after the consumer, so dropped before it; the
    // context holds only a weak reference.
    let fetch = Arc::new(unsafe { FetchQueue::new(&consumer) });
    *consumer.context().fetch.lock().expect("fetch lock") = Arc::downgrade(&fetch);

    let mut next_flush = Instant::now() + config.flush_interval;
    let mut next_gauges = Instant::now();
    let mut next_reroute = Instant::now() + REROUTE_EVERY;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut decoded = Vec::with_capacity(MAX_BATCH);
    // Dropped, with every record they hold, before the consumer closes.
    let mut helpers = match config.poll_loop_helpers {
        true => Some((
            SplitMap::start("receiptd-decode").map_err(StreamError::Spawn)?,
            Retirer::start("receiptd-retire").map_err(StreamError::Spawn)?,
        )),
        false => None,
    };
    // Only once every thread of the worker's has started: a thread takes
    // its nice value from the thread that starts it.
    let nice = set_poll_loop_nice(config.poll_loop_nice);
    shared.metrics.poll_loop_nice.store(i64::from(nice), Relaxed);
    let thread_times = ThreadTimes::of_this_thread();
    let mut last_batch_done: Option<(Instant, ThreadTime)> = None;
    // Input held back: the pending limit was reached while flushes wait.
    let mut holding_input = false;
    let mut delivery_watch = DeliveryWatch::default();
    // A confirmed flush is waiting for room in the store writer's queue.
    let mut writer_full = false;
    let mut phases = PhaseClock::new();
    let mut long_gaps = LongGapLog::default();
    let result = loop {
        if stop.load(Relaxed) {
            break Ok(());
        }
        if let Some(e) = consumer.context().fatal.lock().expect("fatal lock").take() {
            break Err(e);
        }
        if shared.metrics.store_failed.load(Relaxed) {
            break Err(StreamError::StoreFailed);
        }
        let (in_flight, busy) = {
            let guard = engine.lock();
            let e = guard.as_ref().expect("engine present while running");
            // Deltas are queued on their own thread: the loop need not turn
            // for them, and waits on the fetch as usual.
            (e.in_flight_since(), e.staging())
        };

        // A batch of records: polled without the lock (the rebalance callback
        // takes it), decoded, then folded. Queries do not take this lock.
        let wait = if busy {
            Duration::ZERO
        } else if in_flight.is_some() {
            DELIVERY_POLL
        } else {
            next_flush.saturating_duration_since(Instant::now()).min(Duration::from_millis(100))
        };
        let polling = phases.lap(LoopPhase::Other);
        // Records wait for the consumer's queue to be served first: a stray
        // record there is older than any of its partition's in the fetch
        // queue, and the fold skips offsets below one it has folded. While
        // waiting for records, a rebalance waits too, at most `wait`.
        let strays_left = serve_consumer_queue(&consumer, &engine, shared);
        let taken = if strays_left {
            0
        } else if holding_input {
            std::thread::sleep(wait);
            0
        } else {
            fetch.take(wait, MAX_BATCH, &mut batch)
        };
        // Fewer than a full batch: nothing more had arrived.
        let caught_up = !strays_left && !holding_input && taken < MAX_BATCH;
        if taken > 0 {
            let input_was_waiting = polling.elapsed() < Duration::from_millis(1);
            phases.lap(LoopPhase::Poll);
            match &helpers {
                Some((split, _)) => {
                    let waited = split.map(&batch, &decode_record, &mut decoded);
                    if !waited.is_zero() {
                        shared.metrics.decode_helper_wait_us.fetch_add(waited.as_micros() as u64, Relaxed);
                    }
                }
                None => {
                    decoded.clear();
                    decoded.extend(batch.iter().map(decode_record));
                }
            }
            phases.lap(LoopPhase::Decode);
            let mut guard = engine.lock();
            phases.lap(LoopPhase::Lock);
            let e = guard.as_mut().expect("engine present while running");
            // Read-locked once per batch: only this thread writes it.
            let settings_now = shared.settings.read();
            // A few events' state looked up, then those events folded: the
            // lookups' cache misses overlap (see receiptd_core::PREFETCH_AHEAD).
            for (records, run) in batch.chunks(PREFETCH_AHEAD).zip(decoded.chunks(PREFETCH_AHEAD)) {
                let mut ahead = [ReadAhead::NONE; PREFETCH_AHEAD];
                for ((record, decoded), ahead) in records.iter().zip(run).zip(&mut ahead) {
                    if let Ok(Ok(event)) = decoded {
                        *ahead = e.prefetch(record, event);
                    }
                }
                for ((record, decoded), ahead) in records.iter().zip(run).zip(ahead) {
                    match decoded {
                        Ok(decoded) => e.ingest(record, decoded, ahead, &settings_now),
                        Err(err) => tracing::warn!(error = %err, "consumer error"),
                    }
                }
            }
            drop(settings_now);
            drop(guard);
            phases.lap(LoopPhase::Fold);
            let records = batch.len();
            match &mut helpers {
                Some((_, retirer)) if records >= SPLIT_FROM => retirer.retire(&mut batch),
                _ => batch.clear(),
            }
            decoded.clear();
            let done = (phases.lap(LoopPhase::Retire), thread_times.now());
            let spent = phases.take();
            if let (true, Some((previous, previous_times))) = (input_was_waiting, last_batch_done) {
                let gap = Gap {
                    seconds: done.0.duration_since(previous).as_secs_f64(),
                    on_cpu: done.1.on_cpu - previous_times.on_cpu,
                    waiting_for_cpu: done.1.waiting_for_cpu - previous_times.waiting_for_cpu,
                    phases: spent,
                    records,
                };
                shared.metrics.batch_gap(gap.seconds, gap.on_cpu, gap.waiting_for_cpu, &gap.phases);
                long_gaps.note(&gap, done.0);
            }
            last_batch_done = Some(done);
        } else {
            phases.lap(LoopPhase::Poll);
            if let Some((_, retirer)) = &mut helpers {
                retirer.hand_over();
            }
            if !strays_left {
                // Nothing came: the loop was idle, not stalled. The next
                // batch's gap starts after it, not at the batch before
                // (a load after an idle minute measured a minute's gap).
                last_batch_done = None;
                phases.take();
            }
        }
        // The delta sender thread serves the producer's delivery reports.

        // Step 3 of the flush in flight, once the broker confirmed its deltas:
        // the store writer thread writes it. Offsets it has written are
        // committed to the group too, at most every second (for lag; the
        // store's copy is the truth).
        let (confirmed, written) = {
            let mut guard = engine.lock();
            let e = guard.as_mut().expect("engine present while running");
            (e.write_confirmed(), e.written_to_commit())
        };
        if let Some(written) = written {
            if let Ok(offsets) = offset_list(&config.topics.events, &written) {
                let _ = consumer.commit(&offsets, CommitMode::Async);
            }
        }
        match confirmed {
            Ok(Handover::AwaitingBroker) => {
                writer_full = false;
                if let Some(since) = in_flight {
                    if let Err(err) = delivery_watch.waiting(since, &producer, shared) {
                        break Err(err);
                    }
                }
            }
            // The disk is slow, not the broker: the flush waits in flight
            // while the loop folds on, and is handed over at a later turn.
            Ok(Handover::WriterFull) => {
                if !std::mem::replace(&mut writer_full, true) {
                    shared.metrics.store_writer_full.fetch_add(1, Relaxed);
                    tracing::debug!("a confirmed flush waits for room in the store writer's queue");
                }
            }
            Ok(Handover::HandedOver) => writer_full = false,
            Err(err) => break Err(err),
        }

        // Step 1 of the next flush: stage the batch (a slice of it per turn
        // if it is large) and take the deltas, then queue them in the
        // producer (also a slice per turn), between batches of the fold.
        let now = phases.lap(LoopPhase::Confirm);
        let mut guard = engine.lock();
        let e = guard.as_mut().expect("engine present while running");
        // Caught up, a flush need not wait out the window: with room for
        // another flush in flight, a change leaves at the next turn instead
        // of waiting for the broker to confirm the flush before it; at
        // `max_flushes_in_flight`, flushes come about that share of a
        // broker round trip apart, and grow with the input under load.
        let trigger = if now >= next_flush {
            Some(FlushTrigger::Window)
        } else if e.pending() >= config.max_pending_records {
            Some(FlushTrigger::Pending)
        } else if config.flush_when_caught_up && caught_up && e.pending() > 0 {
            Some(FlushTrigger::CaughtUp)
        } else {
            None
        };
        if (trigger.is_some() || e.staging()) && e.may_begin_flush() {
            let mut dead = Vec::new();
            settings.follow(shared, &mut |m, err| dead.push((m.detach(), err.clone())));
            for (m, err) in dead {
                e.dead_letter(&m, &err);
            }
            if now >= next_gauges {
                e.refresh_gauges();
                next_gauges = now + Duration::from_secs(5);
            }
            let (starting, pending) = (!e.staging(), e.pending());
            if starting {
                next_flush = now + config.flush_interval;
            }
            let staged_whole = e.flush_begin(config.stage_slice);
            if let (true, Some(trigger)) = (starting && (staged_whole || e.staging()), trigger) {
                shared.metrics.flush_started(trigger);
                tracing::trace!(trigger = trigger.as_str(), pending, "flush started");
            }
        }
        // Backpressure: while the broker (or the disk) lags behind, stop
        // taking records once enough is pending, but keep polling, so the
        // group keeps this member. librdkafka's fetch queue then fills and
        // its fetcher waits. Not `pause`: that drops every record fetched
        // ahead (up to `queued.max.messages.kbytes`) to fetch them again,
        // and waits for librdkafka's main thread twice. Taking resumes once
        // a new flush has the pending records, or none is in flight. A
        // flush may also complete inside a rebalance callback, so the way
        // back (ready) keys on no flush in flight, not on the commit.
        let e = guard.as_mut().expect("engine present while running");
        let flushing = e.in_flight_since().is_some();
        let over = flushing && e.pending() >= config.max_pending_records.saturating_mul(2);
        // A flush begun since took the pending records: input flows again
        // without waiting for every flush in flight to complete.
        let under = e.pending() < config.max_pending_records;
        drop(guard);
        phases.lap(LoopPhase::Stage);
        if now >= next_reroute {
            // A fetch stop of an earlier assignment that librdkafka serves
            // only after the partition was routed again clears the route,
            // and its records would wait unseen: route every owned
            // partition again now and then (a no-op when nothing changed).
            if let Ok(assignment) = consumer.assignment() {
                fetch.route(&consumer, &assignment);
            }
            next_reroute = now + REROUTE_EVERY;
        }
        if !flushing {
            if shared.producer_blocked.swap(false, Relaxed) {
                tracing::info!("broker took the pending deltas; resuming");
            }
            delivery_watch.settled(shared);
        }
        if !flushing || under {
            holding_input = false;
        }
        if over && !holding_input {
            holding_input = true;
            shared.metrics.input_held.fetch_add(1, Relaxed);
            tracing::debug!(
                limit = config.max_pending_records.saturating_mul(2),
                "pending limit reached while flushes wait; holding input"
            );
        }
    };

    // Shutdown: flush and checkpoint what is folded, then leave the group.
    let outcome = match result {
        Ok(()) => {
            let mut guard = engine.lock();
            let e = guard.as_mut().expect("engine present while running");
            let deadline = Instant::now() + config.revoke_timeout;
            let flushed = e.flush(Some(deadline), &|| false).and_then(|offsets| {
                e.sync()?;
                Ok(offsets)
            });
            match flushed {
                Ok(offsets) => {
                    if let Some(Ok(offsets)) = offsets.map(|o| offset_list(&config.topics.events, &o)) {
                        let _ = consumer.commit(&offsets, CommitMode::Sync);
                    }
                    tracing::info!(partitions = ?e.owned(), "final flush and checkpoint done");
                    Ok(())
                }
                Err(err) => Err(err),
            }
        }
        Err(e) => {
            // No flush on the way out of an error: its deltas may be the
            // ones that were lost, or its state the one the store refused.
            // Without the engine the revoke in `close` only gives the
            // partitions back.
            drop(engine.lock().take());
            Err(e)
        }
    };
    // Every record destroyed before the consumer closes.
    drop(helpers);
    close(&consumer);
    outcome
}

/// A phase of the poll loop, in [`LOOP_PHASES`] order.
#[derive(Clone, Copy)]
enum LoopPhase {
    Poll,
    Decode,
    Lock,
    Fold,
    Retire,
    Confirm,
    Stage,
    Other,
}

// One name per phase, the metric's labels in the enum's order.
const _: () = assert!(LoopPhase::Other as usize + 1 == LOOP_PHASES.len());

/// The poll loop's wall time by phase since the last batch completion: a
/// stall reported by the gap metrics then says where it was spent.
struct PhaseClock {
    lap_started: Instant,
    spent: [f64; LOOP_PHASES.len()],
}

impl PhaseClock {
    fn new() -> Self {
        PhaseClock { lap_started: Instant::now(), spent: [0.0; LOOP_PHASES.len()] }
    }

    /// Charges the time since the last lap to `phase`; returns now.
    fn lap(&mut self, phase: LoopPhase) -> Instant {
        let now = Instant::now();
        self.spent[phase as usize] += now.duration_since(self.lap_started).as_secs_f64();
        self.lap_started = now;
        now
    }

    /// The time by phase since the last call.
    fn take(&mut self) -> [f64; LOOP_PHASES.len()] {
        std::mem::replace(&mut self.spent, [0.0; LOOP_PHASES.len()])
    }
}

/// The time between two batch completions while input was waiting.
struct Gap {
    seconds: f64,
    on_cpu: f64,
    waiting_for_cpu: f64,
    /// Wall time by loop phase ([`LOOP_PHASES`]).
    phases: [f64; LOOP_PHASES.len()],
    /// Records in the batch that ended it.
    records: usize,
}

/// A gap at least this long is logged (`receiptd_batch_gap_seconds` counts
/// them all): issue 5's bound on a stall of the poll loop.
const LONG_GAP_SECONDS: f64 = 0.010;

/// Logs long gaps, at most one a second (a loaded machine may have many),
/// each line counting those not logged since the last.
#[derive(Default)]
struct LongGapLog {
    last_logged: Option<Instant>,
    not_logged: u64,
}

impl LongGapLog {
    /// Logs `gap` if it is long and no long gap was logged in the second
    /// before `now`; returns whether it did.
    fn note(&mut self, gap: &Gap, now: Instant) -> bool {
        if gap.seconds < LONG_GAP_SECONDS {
            return false;
        }
        if self.last_logged.is_some_and(|at| now.duration_since(at) < Duration::from_secs(1)) {
            self.not_logged += 1;
            return false;
        }
        // Taken here, not in the macro: its fields are not evaluated when
        // nothing listens at this level.
        let not_logged = std::mem::take(&mut self.not_logged);
        let ms = |s: f64| (s * 1e4).round() / 10.0;
        let phases: Vec<String> =
            LOOP_PHASES.iter().zip(&gap.phases).map(|(name, s)| format!("{name}={}", ms(*s))).collect();
        tracing::info!(
            gap_ms = ms(gap.seconds),
            on_cpu_ms = ms(gap.on_cpu),
            waiting_for_cpu_ms = ms(gap.waiting_for_cpu),
            phases_ms = %phases.join(" "),
            records = gap.records,
            // To find the gap in a profile taken with `perf record -k CLOCK_MONOTONIC`.
            ended_at_monotonic_s = monotonic_seconds(),
            long_gaps_not_logged = not_logged,
            "long gap between batches of the poll loop"
        );
        self.last_logged = Some(now);
        true
    }
}

/// `CLOCK_MONOTONIC` now, in seconds: what perf stamps samples with when
/// asked to (Rust's `Instant` hides it).
fn monotonic_seconds() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    if rc == 0 {
        now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
    } else {
        0.0
    }
}

/// The poll loop thread's time so far: on a CPU, and runnable but waiting
/// for one. What a gap spent neither way, the thread spent blocked (a
/// lock, a poll with nothing to read) or, in a VM, held off its virtual
/// CPU by the host.
///
/// Both come from `/proc/thread-self/schedstat`, which the kernel fills
/// in without a lock. Not the thread's CPU clock
/// (`CLOCK_THREAD_CPUTIME_ID`): to count the slice running now, that call
/// takes the thread's run queue lock, and on the benchmark's 2-vCPU VM it
/// took over 2 ms (up to 13) 173 times in one drain. Read after a batch's
/// end, that time counted neither on a CPU nor waiting for one: it was the
/// time "blocked in the confirm phase" of the longest gaps. The cost: the CPU
/// time counts the running slice only up to its last update (at most a
/// scheduler tick behind), at both ends of a gap.
struct ThreadTimes {
    /// `/proc/thread-self/schedstat`, opened once by the thread it reads:
    /// "on-CPU ns, waiting-for-CPU ns, timeslices". The wait is whole up to
    /// now when the thread reads it (a wait is added as the thread gets its
    /// CPU). Absent off Linux, where both count as 0.
    schedstat: Option<std::fs::File>,
}

/// A reading of [`ThreadTimes`], in seconds.
#[derive(Clone, Copy, Default)]
struct ThreadTime {
    on_cpu: f64,
    waiting_for_cpu: f64,
}

impl ThreadTimes {
    /// Opens the calling thread's counters; read them from that thread only.
    fn of_this_thread() -> Self {
        ThreadTimes { schedstat: std::fs::File::open("/proc/thread-self/schedstat").ok() }
    }

    fn now(&self) -> ThreadTime {
        let (on_cpu_ns, waiting_ns) = self.read().unwrap_or((0, 0));
        ThreadTime { on_cpu: on_cpu_ns as f64 * 1e-9, waiting_for_cpu: waiting_ns as f64 * 1e-9 }
    }

    fn read(&self) -> Option<(u64, u64)> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 64];
        let n = self.schedstat.as_ref()?.read_at(&mut buf, 0).ok()?;
        let mut fields = std::str::from_utf8(&buf[..n]).ok()?.split_ascii_whitespace();
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    }
}

/// Serves the consumer's own queue: rebalances (their callbacks run
/// inside), consumer errors, statistics and commit results. Records come
/// through the [`FetchQueue`]; one that reaches this queue anyway (fetched
/// before its partition was routed) is folded here, alone. Takes at most
/// [`MAX_BATCH`] events, so that the loop goes on serving its flush; returns
/// whether more may be waiting.
fn serve_consumer_queue(
    consumer: &BaseConsumer<WorkerContext>,
    engine: &EngineLock<Option<Engine>>,
    shared: &Shared,
) -> bool {
    for _ in 0..MAX_BATCH {
        match consumer.poll(Duration::ZERO) {
            None => return false,
            Some(Err(err)) => tracing::warn!(error = %err, "consumer error"),
            Some(Ok(record)) => {
                let decoded = decode(&record);
                if let Some(e) = engine.lock().as_mut() {
                    e.ingest(&record, &decoded, ReadAhead::NONE, &shared.settings.read());
                }
            }
        }
    }
    true
}

/// Leaves the group cleanly (the revoke callback runs inside), within a bound.
fn close(consumer: &BaseConsumer<WorkerContext>) {
    if let Err(e) = consumer.close_queue() {
        tracing::warn!(error = %e, "consumer close failed");
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !consumer.closed() && Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(100));
    }
}

fn ensure_topic<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str) -> Result<(), StreamError> {
    let metadata = settle("events topic metadata", || consumer.fetch_metadata(Some(topic), Duration::from_secs(30)))?;
    let exists =
        metadata.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    if exists {
        Ok(())
    } else {
        Err(StreamError::MissingTopic(topic.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::unreachable_producer;
    use rdkafka::producer::BaseRecord;

    /// The nice value is the calling thread's alone; a lower priority is
    /// always granted, and a higher one either granted or refused and the
    /// value kept, never an error.
    #[test]
    fn the_poll_loop_nice_value_is_its_threads_alone() {
        let process = set_poll_loop_nice(0);
        let (lowered, raised, then) = std::thread::spawn(move || {
            let lowered = set_poll_loop_nice((process + 5).min(19));
            let raised = set_poll_loop_nice(lowered - 2);
            (lowered, raised, set_poll_loop_nice(0))
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (process + 5).min(19));
        assert!(raised == lowered - 2 || raised == lowered, "granted or kept: {raised}");
        assert_eq!(then, raised, "0 leaves the value and reads it");
        assert_eq!(set_poll_loop_nice(0), process, "another thread's change stays its own");
    }

    fn watch_for(watch: &mut DeliveryWatch, producer: &BaseProducer<DeliveryContext>, shared: &Shared) -> bool {
        let since = Instant::now() - BLOCKED_AFTER;
        let until = Instant::now() + Duration::from_millis(600);
        while Instant::now() < until {
            // As the worker loop does: librdkafka counts unpolled events
            // (connection errors here) in its queue length too.
            producer.poll(Duration::ZERO);
            if watch.waiting(since, producer, shared).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn config_with(properties: &[(&str, &str)]) -> WorkerConfig {
        WorkerConfig {
            instance_id: Some("pod-0".into()),
            kafka_properties: properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..WorkerConfig::for_tests("k1:9092")
        }
    }

    /// A thread made to share one CPU with a spinning one is seen waiting
    /// for it, and its CPU time and wait only grow.
    #[test]
    fn a_thread_kept_off_its_cpu_is_seen_waiting() {
        let one_cpu = || {
            // SAFETY: a zeroed cpu_set_t is an empty set; CPU 0 added; the
            // call reads it for the calling thread (pid 0).
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(0, &mut set);
                assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0);
            }
        };
        let spinning = Arc::new(AtomicBool::new(true));
        let spinner = {
            let spinning = spinning.clone();
            std::thread::spawn(move || {
                one_cpu();
                while spinning.load(Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let (first, last) = std::thread::spawn(move || {
            one_cpu();
            let times = ThreadTimes::of_this_thread();
            let first = times.now();
            let mut last = first;
            // Until the wait shows, or long past any scheduler slice.
            let until = Instant::now() + Duration::from_secs(5);
            while last.waiting_for_cpu == first.waiting_for_cpu && Instant::now() < until {
                std::hint::spin_loop();
                last = times.now();
            }
            (first, last)
        })
        .join()
        .unwrap();
        spinning.store(false, Relaxed);
        spinner.join().unwrap();
        assert!(last.on_cpu > first.on_cpu, "the thread's CPU time grew");
        assert!(last.waiting_for_cpu > first.waiting_for_cpu, "the thread waited for its one CPU");
    }

    #[test]
    fn extra_properties_override_the_tuning_defaults_but_never_a_reserved_setting() {
        let defaults = config_with(&[]);
        assert_eq!(producer_config(&defaults).get("linger.ms"), Some("2"));
        assert_eq!(consumer_config(&defaults).get("fetch.queue.backoff.ms"), Some("5"));

        let tuned = config_with(&[
            ("linger.ms", "0"),
            ("fetch.queue.backoff.ms", "20"),
            ("security.protocol", "ssl"),
            // Refused at config load; set over anyway if they got here.
            ("enable.auto.commit", "true"),
            ("enable.idempotence", "false"),
            ("group.id", "other"),
        ]);
        let (producer, consumer, reader) =
            (producer_config(&tuned), consumer_config(&tuned), settings_reader_config(&tuned));
        assert_eq!(producer.get("linger.ms"), Some("0"));
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("20"));
        for client in [&producer, &consumer, &reader] {
            assert_eq!(client.get("security.protocol"), Some("ssl"), "security reaches every client");
            assert_eq!(client.get("bootstrap.servers"), Some("k1:9092"));
        }
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("group.id"), Some("g"));
        assert_eq!(consumer.get("group.instance.id"), Some("pod-0"));
        assert_eq!(reader.get("enable.auto.commit"), Some("false"));
        assert_eq!(reader.get("group.id"), Some("g.settings-reader"));
        // Every property a client is given as reserved is in the public list
        // the configuration is checked against.
        let listed: Vec<&str> = RESERVED_CLIENT_PROPERTIES.iter().map(|(k, _)| *k).collect();
        for client in [&producer, &consumer, &reader] {
            for key in client.config_map().keys() {
                let tuning = PRODUCER_TUNING.iter().chain(&CONSUMER_TUNING).any(|(k, _)| k == key);
                assert!(
                    listed.contains(key) || tuning || *key == "security.protocol",
                    "{key} is neither reserved nor tuning"
                );
            }
        }
    }

    #[test]
    fn a_flush_that_no_delivery_report_can_settle_stops_the_worker() {
        let shared = Arc::new(Shared::default());
        let producer = unreachable_producer(&shared);
        let mut watch = DeliveryWatch { orphaned_after: Duration::from_millis(200), ..DeliveryWatch::default() };
        // Counted as sent, but never handed to librdkafka.
        producer.context().sent(3);
        assert!(watch_for(&mut watch, &producer, &shared), "an orphaned record must stop the wait");
        assert!(shared.producer_blocked.load(Relaxed), "the worker reports unready meanwhile");
        assert_eq!(shared.metrics.deltas_unconfirmed.load(Relaxed), 1);
    }

    #[test]
    fn a_flush_waiting_for_a_broker_that_is_down_waits_on() {
        let shared = Arc::new(Shared::default());
        let producer = unreachable_producer(&shared);
        let mut watch = DeliveryWatch { orphaned_after: Duration::from_millis(200), ..DeliveryWatch::default() };
        let record = BaseRecord::with_opaque_to("deltas", 3).key(&b"k"[..]).payload(&b"v"[..]);
        crate::engine::send(&producer, &shared.metrics, record);
        assert!(!watch_for(&mut watch, &producer, &shared), "a record librdkafka still holds will be confirmed");
        assert_eq!(shared.metrics.deltas_unconfirmed.load(Relaxed), 1);
        watch.settled(&shared);
        assert_eq!(shared.metrics.deltas_unconfirmed.load(Relaxed), 0);
        producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    }

    fn gap_of(seconds: f64) -> Gap {
        Gap { seconds, on_cpu: seconds, waiting_for_cpu: 0.0, phases: [0.0; LOOP_PHASES.len()], records: 1024 }
    }

    #[test]
    fn long_gaps_are_logged_at_most_once_a_second_and_counted_between() {
        let mut log = LongGapLog::default();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert!(!log.note(&gap_of(0.009), at(0)), "a gap under 10 ms is not long");
        assert!(log.note(&gap_of(0.012), at(0)));
        assert!(!log.note(&gap_of(0.030), at(500)), "a second has not passed");
        assert!(!log.note(&gap_of(0.011), at(999)));
        assert_eq!(log.not_logged, 2);
        assert!(!log.note(&gap_of(0.005), at(1_500)), "short gaps are not counted");
        assert_eq!(log.not_logged, 2);
        assert!(log.note(&gap_of(0.010), at(1_500)));
        assert_eq!(log.not_logged, 0, "the logged line carries the count");
    }

    #[test]
    fn the_monotonic_clock_is_read() {
        let (a, b) = (monotonic_seconds(), monotonic_seconds());
        assert!(a > 0.0 && b >= a);
    }
}
