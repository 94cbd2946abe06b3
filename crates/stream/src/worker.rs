//! The worker thread: a `BaseConsumer` poll loop, its rebalance handling, and
//! shutdown.

use crate::engine::{await_delivery, DeliveryContext, Engine};
use crate::settings::SettingsReader;
use crate::{Metrics, StreamError};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::producer::BaseProducer;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};
use receiptd_core::{Limits, PartitionState, SettingsTable};
use receiptd_store::Store;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// How often pending work is flushed.
    pub flush_interval: Duration,
    /// Flush early once this many records are pending.
    pub max_pending_records: u64,
    /// How often the store is fsynced (a checkpoint boundary).
    pub sync_interval: Duration,
    /// Longest a rebalance callback may spend flushing.
    pub revoke_timeout: Duration,
    /// Consumer session timeout.
    pub session_timeout: Duration,
    /// Fold limits.
    pub limits: Limits,
    /// Extra librdkafka properties for every client (security, tuning).
    pub kafka_properties: BTreeMap<String, String>,
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
    /// The worker has stopped (cleanly or not).
    pub stopped: AtomicBool,
    engine: EngineSlot,
}

/// The running engine, for read-only queries.
#[derive(Default)]
struct EngineSlot(std::sync::OnceLock<Arc<Mutex<Option<Engine>>>>);

impl std::fmt::Debug for EngineSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "EngineSlot(running)" } else { "EngineSlot(empty)" })
    }
}

impl Shared {
    /// Ready: settings loaded, assigned and restored, broker taking writes,
    /// store healthy.
    pub fn ready(&self) -> bool {
        self.settings_loaded.load(Relaxed)
            && self.assigned.load(Relaxed)
            && !self.producer_blocked.load(Relaxed)
            && !self.metrics.store_failed.load(Relaxed)
            && !self.stopped.load(Relaxed)
    }

    /// Runs `f` on the settings table and the state of every owned partition,
    /// holding the worker still: the answer never sees half a fold. `None`
    /// until the worker has started.
    pub fn query<R>(&self, f: impl FnOnce(&SettingsTable, &[&PartitionState]) -> R) -> Option<R> {
        let engine = self.engine.0.get()?;
        let guard = engine.lock().expect("engine lock");
        let e = guard.as_ref()?;
        let states = e.states();
        Some(f(&e.settings, &states))
    }

    /// Healthy: the worker runs and its store accepts writes.
    pub fn healthy(&self) -> bool {
        !self.metrics.store_failed.load(Relaxed) && !self.stopped.load(Relaxed)
    }
}

struct WorkerContext {
    engine: Arc<Mutex<Option<Engine>>>,
    shared: Arc<Shared>,
    config: Arc<WorkerConfig>,
    fatal: Mutex<Option<StreamError>>,
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
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
        let mut guard = self.engine.lock().expect("engine lock");
        let Some(engine) = guard.as_mut() else { return };
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = engine.assign(tpl) {
                    tracing::error!(error = %e, "could not restore assigned partitions");
                    *self.fatal.lock().expect("fatal lock") = Some(e);
                    return;
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
                if let Some(offsets) = engine.revoke(&partitions, deadline) {
                    if !lost && offsets.count() > 0 {
                        let _ = consumer.commit(&offsets, CommitMode::Async);
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

fn client_config(config: &WorkerConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers);
    for (k, v) in &config.kafka_properties {
        c.set(k, v);
    }
    c
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

fn run_inner(
    config: WorkerConfig,
    store: Arc<Store>,
    shared: &Arc<Shared>,
    stop: &Arc<AtomicBool>,
) -> Result<(), StreamError> {
    let config = Arc::new(config);
    let producer: Arc<BaseProducer<DeliveryContext>> = Arc::new(
        client_config(&config)
            .set("enable.idempotence", "true")
            .set("linger.ms", "2")
            // Never give up on a delta: the flush waits, and offsets stay put.
            .set("message.timeout.ms", "0")
            .set("queue.buffering.max.kbytes", "65536")
            .create_with_context(DeliveryContext { shared: shared.clone() })?,
    );

    let mut engine = Engine::new(config.clone(), store, producer.clone(), SettingsTable::default(), shared.clone());
    let mut table = SettingsTable::default();
    let settings = SettingsReader::bootstrap(&config, &mut table, shared, stop, &mut |m, e| engine.dead_letter(m, e))?;
    engine.settings = table;
    shared.settings_loaded.store(true, Relaxed);

    let engine = Arc::new(Mutex::new(Some(engine)));
    let _ = shared.engine.0.set(engine.clone());
    let context = WorkerContext {
        engine: engine.clone(),
        shared: shared.clone(),
        config: config.clone(),
        fatal: Mutex::new(None),
    };
    let mut consumer_config = client_config(&config);
    consumer_config
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", config.session_timeout.as_millis().to_string())
        .set("heartbeat.interval.ms", (config.session_timeout.as_millis() / 3).max(100).to_string())
        .set("statistics.interval.ms", "1000")
        .set("queued.max.messages.kbytes", "32768")
        .set("enable.partition.eof", "false");
    if let Some(id) = &config.instance_id {
        consumer_config.set("group.instance.id", id);
    }
    let consumer: BaseConsumer<WorkerContext> = consumer_config.create_with_context(context)?;
    ensure_topic(&consumer, &config.topics.events)?;
    consumer.subscribe(&[&config.topics.events])?;
    tracing::info!(topic = %config.topics.events, group = %config.group_id, "worker subscribed");

    let mut next_flush = Instant::now() + config.flush_interval;
    let mut next_gauges = Instant::now();
    let result = loop {
        if stop.load(Relaxed) {
            break Ok(());
        }
        if let Some(e) = consumer.context().fatal.lock().expect("fatal lock").take() {
            break Err(e);
        }
        let now = Instant::now();
        let wait = next_flush.saturating_duration_since(now).min(Duration::from_millis(100));
        let mut due = false;
        if let Some(first) = consumer.poll(wait) {
            let mut guard = engine.lock().expect("engine lock");
            let e = guard.as_mut().expect("engine present while running");
            match first {
                Ok(m) => e.ingest(&m),
                Err(err) => tracing::warn!(error = %err, "consumer error"),
            }
            due = e.pending() >= config.max_pending_records;
        }
        let now = Instant::now();
        if due || now >= next_flush {
            // The flush's three steps; the lock is let go while the broker
            // confirms the deltas, so queries are not held up by the wait.
            let begun = {
                let mut guard = engine.lock().expect("engine lock");
                let e = guard.as_mut().expect("engine present while running");
                let mut dead = Vec::new();
                settings.follow(&mut e.settings, shared, &mut |m, err| dead.push((m.detach(), err.clone())));
                for (m, err) in dead {
                    e.dead_letter(&m, &err);
                }
                if now >= next_gauges {
                    e.refresh_gauges();
                    next_gauges = now + Duration::from_secs(5);
                }
                e.flush_begin()
            };
            if let Some(begun) = begun {
                match await_delivery(&producer, shared, None, &|| stop.load(Relaxed)) {
                    Ok(()) => {}
                    Err(StreamError::Timeout(_)) if stop.load(Relaxed) => break Ok(()),
                    Err(err) => break Err(err),
                }
                let finished =
                    engine.lock().expect("engine lock").as_mut().expect("engine present").flush_finish(begun);
                match finished {
                    Ok(offsets) if offsets.count() > 0 => {
                        let _ = consumer.commit(&offsets, CommitMode::Async);
                    }
                    Ok(_) => {}
                    Err(err) => break Err(err),
                }
            }
            next_flush = Instant::now() + config.flush_interval;
        }
    };

    // Shutdown: flush and checkpoint what is folded, then leave the group.
    let outcome = match result {
        Ok(()) => {
            let mut guard = engine.lock().expect("engine lock");
            let e = guard.as_mut().expect("engine present while running");
            let deadline = Instant::now() + config.revoke_timeout;
            let flushed = e.flush(Some(deadline), &|| false).and_then(|offsets| {
                e.sync()?;
                Ok(offsets)
            });
            match flushed {
                Ok(offsets) => {
                    if let Some(offsets) = offsets.filter(|o| o.count() > 0) {
                        let _ = consumer.commit(&offsets, CommitMode::Sync);
                    }
                    tracing::info!(partitions = ?e.owned(), "final flush and checkpoint done");
                    Ok(())
                }
                Err(err) => Err(err),
            }
        }
        Err(e) => Err(e),
    };
    close(&consumer);
    outcome
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
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let exists =
        metadata.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    if exists {
        Ok(())
    } else {
        Err(StreamError::MissingTopic(topic.to_owned()))
    }
}
