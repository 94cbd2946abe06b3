//! The engine: owned partitions, the fold, and the flush that turns folded
//! state into deltas, a RocksDB batch and committed offsets.

use crate::metrics::StoreOp;
use crate::produce::{DeltaBatch, DeltaSender, RunProducer};
use crate::settings::header;
use crate::worker::Shared;
use crate::{
    Metrics, StreamError, WorkerConfig, DLQ_DETAIL_HEADER, DLQ_MAX_PAYLOAD, DLQ_REASON_HEADER, DLQ_SOURCE_HEADER,
    DLQ_TRUNCATED_HEADER,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use receiptd_core::{DeltaBuffer, Effects, PartitionState, ReadAhead, SettingsTable};
use receiptd_store::Store;
use receiptd_wire::{decode_event, ContentType, DecodeError, Event, CONTENT_TYPE_HEADER};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often held reads past their window, and messages past retention, are swept.
const HELD_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Tracks which produced records the broker has confirmed, by flush
/// generation, and counts the ones it refused for good.
pub(crate) struct DeliveryContext {
    pub(crate) shared: Arc<Shared>,
    /// Records not yet confirmed, per generation.
    outstanding: Mutex<BTreeMap<u64, u64>>,
    /// `outstanding`'s first generation (`u64::MAX` when it is empty), set
    /// under its lock: the poll loop asks it without the lock, which the
    /// thread serving delivery reports takes for each, and which that
    /// thread preempted while holding it kept the loop waiting.
    oldest_unsettled: AtomicU64,
}

impl DeliveryContext {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        DeliveryContext { shared, outstanding: Mutex::new(BTreeMap::new()), oldest_unsettled: AtomicU64::new(u64::MAX) }
    }

    /// Notes `outstanding`'s first generation after a change to it.
    fn note_oldest(&self, outstanding: &BTreeMap<u64, u64>) {
        self.oldest_unsettled.store(outstanding.keys().next().copied().unwrap_or(u64::MAX), Release);
    }

    pub(crate) fn sent(&self, generation: u64) {
        self.sent_many(generation, 1);
    }

    /// Counts `records` queued for `generation` at once.
    pub(crate) fn sent_many(&self, generation: u64, records: u64) {
        if records > 0 {
            let mut outstanding = self.outstanding.lock().expect("delivery lock");
            *outstanding.entry(generation).or_default() += records;
            self.note_oldest(&outstanding);
        }
    }

    /// Takes back `records` counted sent for `generation` that librdkafka
    /// refused to queue.
    pub(crate) fn not_sent(&self, generation: u64, records: u64) {
        if records > 0 {
            self.uncount(generation, records);
        }
    }

    fn settled(&self, generation: u64) {
        self.uncount(generation, 1);
    }

    fn uncount(&self, generation: u64, records: u64) {
        let mut outstanding = self.outstanding.lock().expect("delivery lock");
        if let Some(n) = outstanding.get_mut(&generation) {
            *n = n.saturating_sub(records);
            if *n == 0 {
                outstanding.remove(&generation);
                self.note_oldest(&outstanding);
            }
        }
    }

    /// Records not yet settled, and the oldest generation among them.
    pub(crate) fn unsettled(&self) -> (u64, Option<u64>) {
        let outstanding = self.outstanding.lock().expect("delivery lock");
        (outstanding.values().sum(), outstanding.keys().next().copied())
    }

    /// Every record of `generation` and earlier is settled. Without the
    /// lock: a record counted sent before this call (by this thread, or by
    /// the sender before it said its batch was queued) is seen.
    fn settled_through(&self, generation: u64) -> bool {
        self.oldest_unsettled.load(Acquire) > generation
    }
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    /// The flush generation the record belongs to.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, generation: usize) {
        if let Err((e, m)) = result {
            self.shared.metrics.delta_failures.fetch_add(1, Relaxed);
            tracing::error!(topic = m.topic(), error = %e, "record not delivered");
        }
        self.settled(generation as u64);
    }
}

/// A store writer's call into RocksDB longer than this is logged: while it
/// lasts, a full writer queue holds back the next flush (see `StoreWriter`).
const SLOW_STORE_OP: Duration = Duration::from_millis(100);

/// Runs `call`, counting its time under `op`, and warns when it was slow.
fn timed<T>(metrics: &Metrics, op: StoreOp, call: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = call();
    let took = started.elapsed();
    metrics.store_op_took(op, took.as_secs_f64());
    if took >= SLOW_STORE_OP {
        tracing::warn!(
            op = op.as_str(),
            ms = took.as_millis() as u64,
            "slow store call; the next flush may wait for it"
        );
    }
    result
}

/// A flush whose deltas are on their way to the broker: the state and
/// offsets it will write once they are all confirmed, staged at the moment
/// the deltas were taken. Folding goes on meanwhile; what it changes is
/// staged by the next flush.
pub(crate) struct StagedFlush {
    generation: u64,
    batch: receiptd_store::BatchBuffer,
    /// (partition, next offset) written in `batch`.
    offsets: Vec<(i32, i64)>,
    sync: bool,
    started: Instant,
    events: u64,
    puts: u64,
    /// Loop turns its staging took.
    slices: u32,
    /// The broker's confirmation was counted: a confirmed flush may wait in
    /// flight for room in the store writer's queue, and is counted once.
    confirmed: bool,
}

impl StagedFlush {
    /// Counts the broker's confirmation of this flush, once however often
    /// it is seen.
    fn note_confirmed(&mut self, metrics: &Metrics) {
        if !std::mem::replace(&mut self.confirmed, true) {
            metrics.flush_confirmed(self.started.elapsed().as_secs_f64());
        }
    }

    /// Step 3 of a flush, once the broker has every delta and DLQ record it
    /// depends on: state and offsets in one batch, fsynced at checkpoint
    /// boundaries, by `syncer` if given (the write returns without waiting
    /// for the disk), else before it returns. Needs no engine lock. Returns
    /// the offsets written.
    pub(crate) fn commit(
        self,
        store: &Store,
        metrics: &Metrics,
        syncer: Option<&StoreSyncer>,
    ) -> Result<Vec<(i32, i64)>, StreamError> {
        timed(metrics, StoreOp::Write, || store.write(self.batch)).map_err(|e| store_failed(metrics, e))?;
        metrics.store_writes.fetch_add(1, Relaxed);
        if self.sync {
            match syncer {
                Some(syncer) => syncer.request(),
                None => sync_store(store, metrics)?,
            }
        }
        let mut moved = false;
        for &(partition, next) in &self.offsets {
            moved |= metrics.set_next_offset(partition, next);
        }
        if moved {
            metrics.checkpoint_written();
        }
        metrics.flushed_events.fetch_add(self.events, Relaxed);
        metrics.store_puts.fetch_add(self.puts, Relaxed);
        metrics.flush_slices.fetch_add(self.slices.into(), Relaxed);
        metrics.flush_took(self.started.elapsed().as_secs_f64(), self.events);
        tracing::debug!(events = self.events, puts = self.puts, slices = self.slices, "flushed");
        Ok(self.offsets)
    }

    /// When its deltas were taken.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }
}

/// Marks the store failed (the poll loop stops) and logs why.
fn store_failed(metrics: &Metrics, e: receiptd_store::StoreError) -> StreamError {
    metrics.store_failed.store(true, Relaxed);
    tracing::error!(error = %e, "state store failed; stopping before any offset moves past it");
    StreamError::from(e)
}

/// fsyncs the store, timed and counted: a checkpoint boundary.
fn sync_store(store: &Store, metrics: &Metrics) -> Result<(), StreamError> {
    timed(metrics, StoreOp::Sync, || store.sync()).map_err(|e| store_failed(metrics, e))?;
    metrics.store_syncs.fetch_add(1, Relaxed);
    Ok(())
}

/// fsyncs the store on a thread of its own, when the store writer asks
/// after writing a checkpoint. The writer goes on writing meanwhile:
/// RocksDB syncs its log while writes append to it, and a crash recovers
/// a prefix of what was written either way, each batch with its offsets.
/// In line, a 332 ms fsync on a busy disk (2026-12-05) filled the
/// writer's queue and held the poll loop for 177 ms. Requests made while
/// a sync runs make one more sync.
pub(crate) struct StoreSyncer {
    state: Arc<(Mutex<SyncRequests>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct SyncRequests {
    /// A sync was asked for since the last one began.
    requested: bool,
    /// The syncer is to finish (after a sync asked for).
    closing: bool,
}

impl StoreSyncer {
    fn start(store: Arc<Store>, shared: Arc<Shared>) -> std::io::Result<StoreSyncer> {
        let state: Arc<(Mutex<SyncRequests>, std::sync::Condvar)> = Arc::default();
        let requests = state.clone();
        let thread = std::thread::Builder::new().name("receiptd-sync".into()).spawn(move || {
            let (lock, asked) = &*requests;
            loop {
                let mut r = lock.lock().expect("sync lock");
                while !r.requested && !r.closing {
                    r = asked.wait(r).expect("sync lock");
                }
                if !std::mem::take(&mut r.requested) {
                    return;
                }
                drop(r);
                if sync_store(&store, &shared.metrics).is_err() {
                    // The poll loop stops on the flag `sync_store` set.
                    return;
                }
            }
        })?;
        Ok(StoreSyncer { state, thread: Some(thread) })
    }

    /// Asks for a sync of everything written so far; does not wait for it.
    fn request(&self) {
        let (lock, asked) = &*self.state;
        lock.lock().expect("sync lock").requested = true;
        asked.notify_one();
    }
}

impl Drop for StoreSyncer {
    fn drop(&mut self) {
        let (lock, asked) = &*self.state;
        lock.lock().expect("sync lock").closing = true;
        asked.notify_one();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the store sync thread panicked");
            }
        }
    }
}

/// Most confirmed flushes waiting for the store writer. Past it a confirmed
/// flush stays in flight, so no new flush begins and the fold runs on up to
/// the pending limit, where the loop stops taking records: a slow disk
/// slows the fold instead of filling memory, without stalling the loop.
const WRITER_QUEUE: usize = 2;

/// What [`Engine::write_confirmed`] did with the flushes in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handover {
    /// Handed at least one over to the store writer.
    HandedOver,
    /// Handed none over: the oldest is confirmed, but the store writer's
    /// queue is full. It waits for the disk, not for the broker.
    WriterFull,
    /// Handed none over: the oldest flush, if any, waits for the broker.
    AwaitingBroker,
}

/// Writes confirmed flushes to RocksDB on a thread of its own, in the order
/// they were confirmed, so that neither the memtable insert of a large batch
/// nor an fsync at a checkpoint boundary stalls the poll loop. After a
/// failed write it writes nothing more: a later batch carries later offsets.
pub(crate) struct StoreWriter {
    /// `None` once dropped: closing the channel is what ends the thread.
    jobs: Option<std::sync::mpsc::SyncSender<StagedFlush>>,
    /// Joined on drop, so that the thread's handle on the store is gone when
    /// the engine is: a store still closing on a thread nobody waits for
    /// races the process's exit (RocksDB then aborts on a destroyed mutex,
    /// "pthread lock: Invalid argument", seen once in CI).
    thread: Option<std::thread::JoinHandle<()>>,
    written: std::sync::mpsc::Receiver<Vec<(i32, i64)>>,
    queue: Arc<WriterQueue>,
    /// Tests hold the thread before each write, as a slow disk would.
    #[cfg(test)]
    held: Arc<(Mutex<WriterHold>, std::sync::Condvar)>,
}

#[cfg(test)]
#[derive(Default)]
struct WriterHold {
    /// The thread is to wait before its next write.
    hold: bool,
    /// The thread is waiting, a flush in its hand.
    holding: bool,
}

/// The store writer's progress, shared with the poll loop. The loop hands
/// flushes over without a lock: the writer thread, preempted while holding
/// one the loop also takes, would keep the loop off its CPU until the
/// scheduler ran the writer again.
#[derive(Default)]
struct WriterQueue {
    /// Flushes handed over and not yet written.
    queued: AtomicUsize,
    /// A write failed; the thread has stopped.
    failed: AtomicBool,
    /// Taken only by [`StoreWriter::wait_idle`] and to wake it.
    idle: Mutex<()>,
    one_written: std::sync::Condvar,
}

impl StoreWriter {
    pub(crate) fn start(store: Arc<Store>, shared: Arc<Shared>) -> std::io::Result<StoreWriter> {
        let (jobs, incoming) = std::sync::mpsc::sync_channel::<StagedFlush>(WRITER_QUEUE);
        let (done, written) = std::sync::mpsc::channel();
        let queue: Arc<WriterQueue> = Arc::default();
        let state = queue.clone();
        let syncer = StoreSyncer::start(store.clone(), shared.clone())?;
        #[cfg(test)]
        let (held, hold) = {
            let held: Arc<(Mutex<WriterHold>, std::sync::Condvar)> = Arc::default();
            (held.clone(), held)
        };
        let thread = std::thread::Builder::new().name("receiptd-store".into()).spawn(move || {
            while let Ok(staged) = incoming.recv() {
                // At most 10 s, so that a test of code that waits for the
                // writer fails instead of hanging.
                #[cfg(test)]
                {
                    let (lock, released) = &*hold;
                    let mut held = lock.lock().expect("hold lock");
                    held.holding = held.hold;
                    let (mut held, _) = released
                        .wait_timeout_while(held, Duration::from_secs(10), |held| held.hold)
                        .expect("hold lock");
                    held.holding = false;
                }
                // A failed sync stops the writing too.
                let result = if shared.metrics.store_failed.load(Relaxed) {
                    Err(StreamError::StoreFailed)
                } else {
                    staged.commit(&store, &shared.metrics, Some(&syncer))
                };
                // The offsets are sent before the count falls: a wait that
                // sees it at zero then finds every one of them.
                let failed = match result {
                    Ok(offsets) => {
                        let _ = done.send(offsets);
                        false
                    }
                    Err(_) => {
                        state.failed.store(true, Release);
                        true
                    }
                };
                state.queued.fetch_sub(1, Release);
                // Taken between the count and the wake: a wait that saw the
                // count before it fell is already waiting.
                drop(state.idle.lock().expect("writer idle lock"));
                state.one_written.notify_all();
                if failed {
                    return;
                }
            }
        })?;
        Ok(StoreWriter {
            jobs: Some(jobs),
            written,
            queue,
            thread: Some(thread),
            #[cfg(test)]
            held,
        })
    }

    /// Hands a confirmed flush over, or gives it back at once if the queue
    /// is full.
    pub(crate) fn try_submit(&self, staged: StagedFlush) -> Result<Option<StagedFlush>, StreamError> {
        if self.queue.failed.load(Acquire) {
            return Err(StreamError::StoreFailed);
        }
        // Counted before it is sent, so that the thread never counts below
        // zero; only the poll loop's thread submits.
        self.queue.queued.fetch_add(1, Relaxed);
        let jobs = self.jobs.as_ref().expect("jobs is taken only on drop");
        match jobs.try_send(staged) {
            Ok(()) => Ok(None),
            Err(std::sync::mpsc::TrySendError::Full(staged)) => {
                self.queue.queued.fetch_sub(1, Relaxed);
                Ok(Some(staged))
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => Err(StreamError::StoreFailed),
        }
    }

    /// Holds the thread before its next write (`true`) or lets it go on.
    #[cfg(test)]
    fn hold(&self, hold: bool) {
        let (lock, released) = &*self.held;
        lock.lock().expect("hold lock").hold = hold;
        released.notify_all();
    }

    /// Whether the thread is held with a flush in its hand.
    #[cfg(test)]
    fn holding(&self) -> bool {
        self.held.0.lock().expect("hold lock").holding
    }

    /// Offsets of the flushes written since the last call, oldest first.
    pub(crate) fn take_written(&self) -> Vec<Vec<(i32, i64)>> {
        self.written.try_iter().collect()
    }

    /// Waits until every flush handed over is written: before anything else
    /// writes the store or reads a partition back from it.
    pub(crate) fn wait_idle(&self) -> Result<(), StreamError> {
        let q = &*self.queue;
        let mut idle = q.idle.lock().expect("writer idle lock");
        while q.queued.load(Acquire) > 0 && !q.failed.load(Acquire) {
            idle = q.one_written.wait(idle).expect("writer idle lock");
        }
        drop(idle);
        if q.failed.load(Acquire) {
            Err(StreamError::StoreFailed)
        } else {
            Ok(())
        }
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        // The thread writes what it was handed, then sees the channel closed.
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the store writer thread panicked");
            }
        }
    }
}

/// Offsets as a list for `commit` to Kafka.
pub(crate) fn offset_list(topic: &str, offsets: &[(i32, i64)]) -> Result<TopicPartitionList, StreamError> {
    let mut tpl = TopicPartitionList::new();
    for &(partition, next) in offsets {
        tpl.add_partition_offset(topic, partition, Offset::Offset(next))?;
    }
    Ok(tpl)
}

/// Decodes one record of the events topic (no engine state needed, so the
/// worker does it outside the engine lock).
pub(crate) fn decode<M: Message>(m: &M) -> Result<Event, DecodeError> {
    ContentType::from_header(header(m, CONTENT_TYPE_HEADER)).and_then(|ct| decode_event(m.key(), m.payload(), ct))
}

/// Step 2 of a flush: waits until the broker has every queued delta and DLQ
/// record, so that the offsets which produced them may be stored. Needs no
/// engine lock.
pub(crate) fn await_delivery(
    producer: &BaseProducer<DeliveryContext>,
    shared: &Shared,
    deadline: Option<Instant>,
    stop: &dyn Fn() -> bool,
) -> Result<(), StreamError> {
    let mut waited = false;
    loop {
        match producer.flush(Duration::from_millis(500)) {
            Ok(()) => break,
            Err(e) => {
                if !waited {
                    tracing::warn!(error = %e, "waiting for the broker to take deltas");
                    waited = true;
                }
                shared.producer_blocked.store(true, Relaxed);
                shared.metrics.flush_errors.fetch_add(1, Relaxed);
                if stop() || deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(StreamError::Timeout("delivering deltas to the broker".into()));
                }
            }
        }
    }
    if waited {
        tracing::info!("broker took the pending deltas; resuming");
    }
    shared.producer_blocked.store(false, Relaxed);
    Ok(())
}

/// Queues one record, waiting while librdkafka's queue is full. The record's
/// opaque is its flush generation. It is counted sent before it is queued:
/// the delta sender thread may serve its delivery report before `send`
/// returns.
pub(crate) fn send(
    producer: &BaseProducer<DeliveryContext>,
    metrics: &Metrics,
    mut record: BaseRecord<'_, [u8], [u8], usize>,
) {
    let generation = record.delivery_opaque as u64;
    let context = producer.context();
    loop {
        context.sent(generation);
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                context.not_sent(generation, 1);
                record = r;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, r)) => {
                context.not_sent(generation, 1);
                metrics.delta_failures.fetch_add(1, Relaxed);
                tracing::error!(topic = r.topic, error = %e, "record could not be queued");
                return;
            }
        }
    }
}

/// A partition this worker owns.
struct Owned {
    state: PartitionState,
    next_offset: i64,
    /// Records folded since the last flush.
    unflushed: u64,
}

pub(crate) struct Engine {
    config: Arc<WorkerConfig>,
    store: Arc<Store>,
    producer: Arc<BaseProducer<DeliveryContext>>,
    /// Queues each flush's delta records, on a thread of its own.
    sender: DeltaSender,
    partitions: BTreeMap<i32, Owned>,
    deltas: DeltaBuffer,
    shared: Arc<Shared>,
    fx: Effects,
    last_sweep: Instant,
    last_sync: Instant,
    pending: u64,
    /// Generation of the records sent now; a flush takes it and moves it on.
    generation: u64,
    /// Flushes whose deltas are on their way, oldest first, at most
    /// `max_flushes_in_flight`: each is written once the broker has
    /// confirmed its deltas and everything sent before them.
    in_flight: VecDeque<StagedFlush>,
    /// The newest in-flight flush's delta records not yet queued.
    /// The generation of the newest flush while its records are not all
    /// queued (at most one: a flush begins only once they are).
    unsent: Option<u64>,
    /// A flush being staged in slices, not yet in flight.
    staging: Option<Staging>,
    /// Bytes of the last flush's write batch: the next one reserves as much
    /// (up to [`MAX_BATCH_RESERVE`]), so that it is not grown by doubling,
    /// copying and faulting in fresh pages at each step.
    last_batch_bytes: usize,
    writer: StoreWriter,
    /// Offsets written and not yet committed to the group, the latest per
    /// partition (see [`Engine::written_to_commit`]).
    uncommitted: BTreeMap<i32, i64>,
    /// When the offsets written are next committed to the group.
    next_commit: Instant,
}

/// How often, at most, the offsets written are committed to the group.
/// They are for lag tooling only (the store's copy is the truth), and each
/// commit is a write for the broker's group coordinator: committing every
/// flush, 20 a second, its thread took 7 to 9% of the broker's CPU in a
/// drain (`perf record -p` on the broker).
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// Most bytes a write batch reserves up front: one huge flush (a snapshot
/// of a 100,000-member group) must not make every later batch as large.
const MAX_BATCH_RESERVE: usize = 16 << 20;

/// The entities a flush has staged so far, slice by slice (their receipts
/// are in the engine's delta buffer). Nothing of it is sent or written
/// before the flush finishes: its last slice stages what is left (and what
/// changed again meanwhile) and the checkpoints, so that the batch holds
/// every change up to its offsets.
struct Staging {
    batch: receiptd_store::BatchBuffer,
    puts: u64,
    slices: u32,
    /// Slices after which it finishes whatever is left: those its changes
    /// at the start fill, plus [`EXTRA_STAGE_SLICES`].
    max_slices: u32,
    /// Changed entities left after the last slice (at the start, all).
    left: usize,
    sync: bool,
}

/// How many changed entities the next slice of a flush stages: a slice's
/// worth, plus what the fold changed since the last slice, up to
/// [`MAX_SLICE_GROWTH`] slices' worth. The backlog then shrinks by a slice
/// every turn unless the fold changes more than that per turn, and the
/// last slice stages about a slice's worth. With a fixed budget, a fold
/// that outran the slices (fresh groups' member slots, at the start of the
/// drain bench) left its backlog to the last slice: 31,000 entities staged
/// in one step, 8 ms of the poll loop. The cap spreads a burst (a snapshot
/// of a 100,000-member group) over several turns instead.
fn slice_budget(slice: usize, changed: usize, left_after_last_slice: usize) -> usize {
    let added = changed.saturating_sub(left_after_last_slice);
    slice.saturating_add(added).min(slice.saturating_mul(MAX_SLICE_GROWTH))
}

/// Most slices' worth one slice stages (see [`slice_budget`]).
const MAX_SLICE_GROWTH: usize = 8;

/// Slices a flush may take beyond those its changes at the start fill, for
/// what the fold changes meanwhile: a fold that changes entities as fast as
/// slices stage them must not keep a flush open.
const EXTRA_STAGE_SLICES: usize = 16;

impl Engine {
    pub(crate) fn new(
        config: Arc<WorkerConfig>,
        store: Arc<Store>,
        producer: Arc<BaseProducer<DeliveryContext>>,
        shared: Arc<Shared>,
        writer: StoreWriter,
    ) -> Result<Self, StreamError> {
        let sender = DeltaSender::start(RunProducer::open(producer.clone(), &config.topics.deltas)?, shared.clone())?;
        Ok(Engine {
            config,
            store,
            producer,
            sender,
            partitions: BTreeMap::new(),
            deltas: DeltaBuffer::new(),
            shared,
            fx: Effects::default(),
            last_sweep: Instant::now(),
            last_sync: Instant::now(),
            pending: 0,
            generation: 0,
            in_flight: VecDeque::new(),
            unsent: None,
            staging: None,
            last_batch_bytes: 0,
            writer,
            uncommitted: BTreeMap::new(),
            next_commit: Instant::now(),
        })
    }

    /// Records folded but not yet flushed, over all partitions.
    pub(crate) fn pending(&self) -> u64 {
        self.pending
    }

    /// Looks up the state that folding `event` (record `m`'s) will read,
    /// changing nothing, and returns what the fold of it may take instead
    /// of looking up again: see [`receiptd_core::PREFETCH_AHEAD`].
    pub(crate) fn prefetch<M: Message>(&mut self, m: &M, event: &Event) -> ReadAhead {
        match self.partitions.get_mut(&m.partition()) {
            Some(owned) => owned.state.prefetch(event),
            None => ReadAhead::NONE,
        }
    }

    /// Folds one record of the events topic, decoded by [`decode`], with
    /// what [`Self::prefetch`] returned for it ([`ReadAhead::NONE`] if not
    /// looked up).
    pub(crate) fn ingest<M: Message>(
        &mut self,
        m: &M,
        decoded: &Result<Event, DecodeError>,
        ahead: ReadAhead,
        settings: &SettingsTable,
    ) {
        self.shared.metrics.records_in.fetch_add(1, Relaxed);
        let partition = m.partition();
        let offset = m.offset();
        let Some(owned) = self.partitions.get_mut(&partition) else {
            // librdkafka may still hand out records of a partition just revoked.
            self.shared.metrics.records_skipped.fetch_add(1, Relaxed);
            return;
        };
        if offset < owned.next_offset {
            self.shared.metrics.records_skipped.fetch_add(1, Relaxed);
            return;
        }
        // Folded or dead-lettered, the record is consumed either way.
        owned.next_offset = offset + 1;
        owned.unflushed += 1;
        self.pending += 1;
        match decoded {
            Ok(event) => {
                let record_time = m.timestamp().to_millis().unwrap_or(0).max(0) as u64;
                owned.state.apply_ahead(settings, &self.config.limits, event, ahead, record_time, &mut self.fx);
            }
            Err(e) => self.dead_letter(m, e),
        }
    }

    /// Sends a record that cannot be applied to the DLQ, with the reason in a
    /// header. It is flushed with the deltas, before the offset is stored.
    pub(crate) fn dead_letter<M: Message>(&mut self, m: &M, e: &DecodeError) {
        let reason = e.reason();
        let detail: String = e.to_string().chars().take(1024).collect();
        let source = format!("{}/{}/{}", m.topic(), m.partition(), m.offset());
        tracing::warn!(reason, source = %source, "record sent to DLQ");
        self.shared.metrics.dlq(reason);
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: DLQ_REASON_HEADER, value: Some(reason) })
            .insert(Header { key: DLQ_DETAIL_HEADER, value: Some(&detail) })
            .insert(Header { key: DLQ_SOURCE_HEADER, value: Some(&source) });
        if let Some(ct) = header(m, CONTENT_TYPE_HEADER) {
            headers = headers.insert(Header { key: CONTENT_TYPE_HEADER, value: Some(ct) });
        }
        let mut payload = m.payload();
        let original = payload.map_or(0, <[u8]>::len);
        if original > DLQ_MAX_PAYLOAD {
            payload = payload.map(|p| &p[..DLQ_MAX_PAYLOAD]);
            headers = headers.insert(Header { key: DLQ_TRUNCATED_HEADER, value: Some(&original.to_string()) });
        }
        let mut record: BaseRecord<'_, [u8], [u8], usize> =
            BaseRecord::with_opaque_to(&self.config.topics.dlq, self.generation as usize).headers(headers);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        self.send(record);
    }

    fn send(&self, record: BaseRecord<'_, [u8], [u8], usize>) {
        send(&self.producer, &self.shared.metrics, record);
    }

    /// Completes the flushes in flight, if any, then flushes everything
    /// folded since, waiting for the broker each time. Returns the offsets
    /// written, or `None` when there was nothing to flush.
    ///
    /// `deadline` bounds each wait for the broker; past it the flush gives
    /// up without writing, which is safe for partitions about to be given up
    /// or a process about to exit: their records are folded again from the
    /// last checkpoint. The poll loop runs the steps itself, without waiting.
    pub(crate) fn flush(
        &mut self,
        deadline: Option<Instant>,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Vec<(i32, i64)>>, StreamError> {
        // Flushes already confirmed go first, and their offsets with these.
        self.writer.wait_idle()?;
        let mut written: BTreeMap<i32, i64> = self.take_written().into_iter().collect();
        // Each round starts a flush of what changed, if there is room for
        // one (a flush being staged is finished), and writes every flush in
        // flight once the broker has them all. Nothing is folded meanwhile,
        // so a second round flushes only what the first had no room for,
        // and a third finds nothing.
        for _ in 0..3 {
            if self.may_begin_flush() {
                self.flush_begin(None);
            }
            self.collect_queued(true, deadline)?;
            if self.in_flight.is_empty() {
                break;
            }
            let delivered = await_delivery(&self.producer, &self.shared, deadline, stop);
            // Dropped unwritten if the wait failed.
            let in_flight = std::mem::take(&mut self.in_flight);
            delivered?;
            for mut staged in in_flight {
                // librdkafka holds nothing now, every report served: a record
                // of this flush still counted unconfirmed will never be
                // confirmed, and writing would checkpoint past its delta.
                if !self.producer.context().settled_through(staged.generation) {
                    let (unconfirmed, _) = self.producer.context().unsettled();
                    return Err(StreamError::DeliveryLost { unconfirmed });
                }
                staged.note_confirmed(&self.shared.metrics);
                written.extend(staged.commit(&self.store, &self.shared.metrics, None)?);
            }
        }
        Ok((!written.is_empty()).then(|| written.into_iter().collect()))
    }

    /// Whether [`Engine::flush_begin`] may be called: a flush is being
    /// staged, or there is room for one more in flight and every record of
    /// the newest one is queued (a flush's generation is settled only once
    /// all of its records are counted).
    pub(crate) fn may_begin_flush(&self) -> bool {
        self.staging.is_some()
            || (self.in_flight.len() < self.config.max_flushes_in_flight.max(1) && self.unsent.is_none())
    }

    /// Step 1 of a flush: sweeps; stages every touched entity, each
    /// partition's receipts and next offset in one batch; sets the flush in
    /// flight with its deltas, which the sender thread queues (see
    /// [`Engine::collect_queued`]). With
    /// `slice`, stages at most that many entities per call and returns
    /// false until a call finishes the flush (see [`Engine::staging`]).
    /// False also when nothing changed, or while no other flush may be in
    /// flight (see [`Engine::may_begin_flush`]).
    pub(crate) fn flush_begin(&mut self, slice: Option<usize>) -> bool {
        if !self.may_begin_flush() {
            return false;
        }
        let now = Instant::now();
        if self.staging.is_none() {
            if now.duration_since(self.last_sweep) >= HELD_SWEEP_EVERY {
                self.last_sweep = now;
                let settings = self.shared.settings.read();
                for owned in self.partitions.values_mut() {
                    owned.state.expire_held(&self.config.limits, &mut self.fx);
                    owned.state.expire_messages(&settings, &mut self.fx);
                }
            }
            self.shared.metrics.add_fold(&std::mem::take(&mut self.fx).stats);
            if self.pending == 0 && !self.partitions.values().any(|o| o.state.has_dirty()) {
                return false;
            }
            let sync = now.duration_since(self.last_sync) >= self.config.sync_interval;
            if sync {
                self.last_sync = now;
            }
            let changed: usize = self.partitions.values().map(|o| o.state.changed_count()).sum();
            let max_slices = slice.map_or(1, |n| changed.div_ceil(n.max(1)) + EXTRA_STAGE_SLICES);
            let max_slices = u32::try_from(max_slices).unwrap_or(u32::MAX);
            let batch = receiptd_store::BatchBuffer::with_capacity(self.last_batch_bytes.min(MAX_BATCH_RESERVE));
            self.staging = Some(Staging { batch, puts: 0, slices: 0, max_slices, left: changed, sync });
        }
        let staging = self.staging.as_mut().expect("set above");
        staging.slices += 1;
        let changed: usize = self.partitions.values().map(|o| o.state.changed_count()).sum();
        let budget = slice.map(|n| slice_budget(n, changed, staging.left));
        if let Some(mut budget) = budget.filter(|&b| changed > b && staging.slices < staging.max_slices) {
            staging.left = changed - budget;
            let settings = self.shared.settings.read();
            for (&partition, owned) in self.partitions.iter_mut() {
                let mut slice = receiptd_store::EntityWriter::new(&mut staging.batch, partition);
                let staged = owned
                    .state
                    .stage_changes(budget, &settings, &mut self.deltas, |key, entity| slice.stage(key, entity));
                staging.puts += staged as u64;
                budget -= staged;
                if budget == 0 {
                    break;
                }
            }
            return false;
        }
        let Staging { mut batch, mut puts, sync, slices, .. } = self.staging.take().expect("set above");
        let mut offsets = Vec::new();
        let settings = self.shared.settings.read();
        for (&partition, owned) in self.partitions.iter_mut() {
            // A partition with a receipt to take has a changed entity too.
            if owned.unflushed > 0 || owned.state.has_dirty() {
                let (state, deltas) = (&mut owned.state, &mut self.deltas);
                puts += self.store.stage(&mut batch, partition, state, &settings, deltas, owned.next_offset) as u64;
                offsets.push((partition, owned.next_offset));
                owned.unflushed = 0;
            }
        }
        drop(settings);
        self.last_batch_bytes = batch.size_in_bytes();
        let m = &self.shared.metrics;
        let sealed: u64 = self.partitions.values_mut().map(|o| o.state.take_reader_pages_sealed()).sum();
        if sealed > 0 {
            m.reader_pages_sealed.fetch_add(sealed, Relaxed);
            tracing::debug!(pages = sealed, generation = self.generation, "reader pages sealed");
        }
        m.messages_tracked.store(self.partitions.values().map(|o| o.state.message_count() as i64).sum(), Relaxed);
        m.held_reads.store(self.partitions.values().map(|o| o.state.held_count() as i64).sum(), Relaxed);
        let generation = self.generation;
        self.generation += 1;
        let events = std::mem::take(&mut self.pending);
        let flush =
            StagedFlush { generation, batch, offsets, sync, started: now, events, puts, slices, confirmed: false };
        self.in_flight.push_back(flush);
        // A sender gone is reported by `collect_queued`, which then finds
        // this flush never queued.
        let _ = self.sender.send(DeltaBatch { generation, records: self.deltas.drain() });
        self.unsent = Some(generation);
        true
    }

    /// Step 1b: learns from the sender thread whether the newest flush's
    /// delta records are all queued in the producer (`wait`: waits until
    /// they are, or until `deadline`), and takes their receipt lists back for reuse. An error if
    /// the sender thread is gone.
    pub(crate) fn collect_queued(&mut self, wait: bool, deadline: Option<Instant>) -> Result<(), StreamError> {
        while let Some(unsent) = self.unsent {
            let Some(queued) = self.sender.queued(wait, deadline)? else { break };
            for list in queued.lists {
                self.deltas.recycle(list);
            }
            if queued.generation == unsent {
                self.unsent = None;
            }
        }
        Ok(())
    }

    /// Whether the newest flush has delta records the sender thread has not
    /// queued yet.
    #[cfg(test)]
    pub(crate) fn sending(&self) -> bool {
        self.unsent.is_some()
    }

    /// Whether a flush is being staged in slices: the poll loop goes on
    /// staging it every turn, without waiting for input.
    pub(crate) fn staging(&self) -> bool {
        self.staging.is_some()
    }

    /// Hands the flushes in flight to the store writer, oldest first, each
    /// once the broker has settled every record it depends on (its deltas
    /// and every earlier delta and DLQ record), and, for the newest, once
    /// the sender has queued all its records ([`Engine::collect_queued`],
    /// which this also takes their receipt lists back with). Never waits: a
    /// confirmed flush the writer has no room for stays in flight.
    pub(crate) fn write_confirmed(&mut self) -> Result<Handover, StreamError> {
        self.collect_queued(false, None)?;
        let mut handover = Handover::AwaitingBroker;
        loop {
            // The unsent records are the newest flush's.
            let all_queued = self.unsent.is_none() || self.in_flight.len() > 1;
            let Some(oldest) = self.in_flight.front_mut() else { break };
            if !all_queued || !self.producer.context().settled_through(oldest.generation) {
                break;
            }
            oldest.note_confirmed(&self.shared.metrics);
            let staged = self.in_flight.pop_front().expect("checked above");
            if let Some(staged) = self.writer.try_submit(staged)? {
                self.in_flight.push_front(staged);
                if handover == Handover::AwaitingBroker {
                    handover = Handover::WriterFull;
                }
                break;
            }
            handover = Handover::HandedOver;
        }
        Ok(handover)
    }

    /// Offsets the store writer has written and the group has not been
    /// given, merged (the latest per partition), for the consumer's own
    /// commit.
    pub(crate) fn take_written(&mut self) -> Vec<(i32, i64)> {
        self.uncommitted.extend(self.writer.take_written().into_iter().flatten());
        std::mem::take(&mut self.uncommitted).into_iter().collect()
    }

    /// [`Engine::take_written`] if some were written and [`COMMIT_EVERY`]
    /// has passed since it last gave any; else keeps them for later. A
    /// flush (on revoke, at shutdown) takes them all, so none is committed
    /// after a partition is given up.
    pub(crate) fn written_to_commit(&mut self) -> Option<Vec<(i32, i64)>> {
        let now = Instant::now();
        if now < self.next_commit {
            return None;
        }
        let written = self.take_written();
        if written.is_empty() {
            return None;
        }
        self.next_commit = now + COMMIT_EVERY;
        Some(written)
    }

    /// When the oldest flush in flight took its deltas, if one is in flight.
    pub(crate) fn in_flight_since(&self) -> Option<Instant> {
        self.in_flight.front().map(StagedFlush::started)
    }

    /// fsyncs the store: a checkpoint boundary.
    pub(crate) fn sync(&mut self) -> Result<(), StreamError> {
        self.last_sync = Instant::now();
        self.store.sync().map_err(|e| {
            self.shared.metrics.store_failed.store(true, Relaxed);
            StreamError::from(e)
        })?;
        self.shared.metrics.store_syncs.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Takes ownership of newly assigned partitions: loads their state and
    /// points the assignment at the offsets stored with it.
    pub(crate) fn assign(&mut self, tpl: &mut TopicPartitionList) -> Result<(), StreamError> {
        let topic = self.config.topics.events.clone();
        let partitions: Vec<i32> = tpl.elements_for_topic(&topic).iter().map(|e| e.partition()).collect();
        // What the writer still holds may be this very partition's state.
        self.writer.wait_idle()?;
        let loading = Instant::now();
        let loaded = self.store.load_partitions(&partitions)?;
        for receiptd_store::LoadedPartition { partition, state, checkpoint, took } in loaded {
            let (offset, next_offset) = match checkpoint {
                Some(c) => (Offset::Offset(c.next_offset), c.next_offset),
                None => (Offset::Beginning, 0),
            };
            tpl.set_partition_offset(&topic, partition, offset)?;
            tracing::info!(
                partition,
                next_offset,
                messages = state.message_count(),
                took_ms = took.as_millis() as u64,
                "partition assigned; state restored"
            );
            self.shared.metrics.set_next_offset(partition, next_offset);
            self.partitions.insert(partition, Owned { state, next_offset, unflushed: 0 });
        }
        if !partitions.is_empty() {
            let took = loading.elapsed();
            self.shared.metrics.restore_us.fetch_add(took.as_micros() as u64, Relaxed);
            tracing::info!(
                partitions = partitions.len(),
                took_ms = took.as_millis() as u64,
                "assigned partitions restored"
            );
        }
        self.publish_assignment();
        Ok(())
    }

    /// Gives up partitions: flushes and checkpoints first, so the next owner
    /// starts exactly where this one stopped. Fails only when the flush
    /// failed while other partitions stay owned: their staged state was not
    /// written, so the worker must restart from its checkpoint.
    pub(crate) fn revoke(
        &mut self,
        partitions: &[i32],
        deadline: Instant,
    ) -> Result<Option<Vec<(i32, i64)>>, StreamError> {
        let flushed = self.flush(Some(deadline), &|| false);
        // A flush that failed before it finished staging leaves its slices
        // and the receipts they took behind; they hold entities of
        // partitions given up now, so they must never be written or sent
        // (what stays owned is replayed on restart).
        if self.staging.take().is_some() {
            self.deltas.drain();
        }
        self.unsent = None;
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "sync on revoke failed");
        }
        for p in partitions {
            if let Some(owned) = self.partitions.remove(p) {
                self.pending -= owned.unflushed;
            }
            tracing::info!(partition = p, "partition revoked");
        }
        self.publish_assignment();
        match flushed {
            Ok(offsets) => Ok(offsets),
            Err(e) if self.partitions.is_empty() => {
                tracing::warn!(error = %e, "flush on revoke failed; the next owner replays from the last checkpoint");
                self.pending = 0;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn publish_assignment(&self) {
        *self.shared.views.write() = self.partitions.values().map(|o| o.state.view().clone()).collect();
        let owned: Vec<i32> = self.partitions.keys().copied().collect();
        self.shared.metrics.partitions_assigned.store(owned.len() as i64, Relaxed);
        self.shared.metrics.retain_partitions(&owned);
        self.shared.metrics.store_bytes.store(self.store.size_bytes() as i64, Relaxed);
    }

    /// Owned partitions.
    pub(crate) fn owned(&self) -> Vec<i32> {
        self.partitions.keys().copied().collect()
    }

    /// Fills in store size and message counts for the metrics.
    pub(crate) fn refresh_gauges(&self) {
        self.shared.metrics.store_bytes.store(self.store.size_bytes() as i64, Relaxed);
    }
}

/// A producer whose broker never answers: what it queues stays queued.
#[cfg(test)]
pub(crate) fn unreachable_producer(shared: &Arc<Shared>) -> BaseProducer<DeliveryContext> {
    unreachable_producer_with(shared, &[])
}

/// [`unreachable_producer`], with `properties` too.
#[cfg(test)]
pub(crate) fn unreachable_producer_with(
    shared: &Arc<Shared>,
    properties: &[(&str, &str)],
) -> BaseProducer<DeliveryContext> {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", "127.0.0.1:9").set("message.timeout.ms", "0");
    for (k, v) in properties {
        config.set(*k, *v);
    }
    config.create_with_context(DeliveryContext::new(shared.clone())).expect("a producer needs no broker to be created")
}

#[cfg(test)]
mod tests {
    use super::*;
    use receiptd_store::StoreOptions;

    /// A flush of partition 0 that moves its checkpoint to `next_offset`.
    fn staged(store: &Store, next_offset: i64) -> StagedFlush {
        let mut batch = receiptd_store::BatchBuffer::default();
        let (settings, mut deltas) = (SettingsTable::default(), DeltaBuffer::new());
        store.stage(&mut batch, 0, &mut PartitionState::new(), &settings, &mut deltas, next_offset);
        StagedFlush {
            generation: next_offset as u64,
            batch,
            offsets: vec![(0, next_offset)],
            sync: next_offset % 2 == 0,
            started: Instant::now(),
            events: 1,
            puts: 0,
            slices: 1,
            confirmed: true,
        }
    }

    /// Hands `staged` to `writer`, waiting for room as long as it takes.
    fn submit(writer: &StoreWriter, mut staged: StagedFlush) -> Result<(), StreamError> {
        while let Some(back) = writer.try_submit(staged)? {
            staged = back;
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Waits up to 10 s for `check` to hold.
    fn until(what: &str, check: &mut dyn FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn checkpoint(store: &Store) -> Option<i64> {
        store.load_partition(0).expect("load").1.map(|c| c.next_offset)
    }

    /// An engine owning partition 0 of "events", with a store in a fresh
    /// directory and a producer that never reaches a broker (nothing it
    /// queues is confirmed but by hand).
    fn test_engine() -> (tempfile::TempDir, Arc<Store>, Arc<BaseProducer<DeliveryContext>>, Engine) {
        test_engine_with(&[])
    }

    /// [`test_engine`], its producer given `properties` too.
    fn test_engine_with(
        properties: &[(&str, &str)],
    ) -> (tempfile::TempDir, Arc<Store>, Arc<BaseProducer<DeliveryContext>>, Engine) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), &StoreOptions::default()).unwrap());
        let shared = Arc::new(Shared::default());
        let producer = Arc::new(unreachable_producer_with(&shared, properties));
        let config = Arc::new(WorkerConfig::for_tests("127.0.0.1:9"));
        let writer = StoreWriter::start(store.clone(), shared.clone()).unwrap();
        let mut engine = Engine::new(config, store.clone(), producer.clone(), shared, writer).unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition("events", 0);
        engine.assign(&mut assignment).unwrap();
        (dir, store, producer, engine)
    }

    /// The checkpoint stored once the store writer has written everything
    /// handed to it.
    fn written_checkpoint(engine: &Engine, store: &Store) -> Option<i64> {
        engine.writer.wait_idle().unwrap();
        checkpoint(store)
    }

    /// `reader` marked the C2C conversation with `peer` read: one changed
    /// read mark, and one delta record to `peer`.
    fn conversation_read(reader: &str, peer: &str) -> Event {
        Event::ConversationRead(receiptd_wire::ConversationRead {
            app_id: "a".into(),
            reader: reader.into(),
            conversation: receiptd_wire::Conversation::C2c { peer: peer.into() },
            read_at: 1,
        })
    }

    /// Folds `event` as the record at `offset` of partition 0.
    fn ingest(engine: &mut Engine, event: Event, offset: i64) {
        let key = receiptd_wire::conversation_key(&event);
        let record = rdkafka::message::OwnedMessage::new(
            Some(serde_json::to_vec(&event).unwrap()),
            Some(key.into_bytes()),
            "events".into(),
            rdkafka::Timestamp::CreateTime(1),
            0,
            offset,
            None,
        );
        engine.ingest(&record, &Ok(event), ReadAhead::NONE, &SettingsTable::default());
    }

    #[test]
    fn a_flush_with_a_record_that_can_no_longer_be_confirmed_writes_nothing() {
        // Never reached: nothing below is queued in librdkafka.
        let (_dir, store, producer, mut engine) = test_engine();
        // A read of a message not seen yet: held, so the flush has state to write.
        let read = Event::MessageRead(receiptd_wire::MessageRead {
            app_id: "a".into(),
            reader: "bob".into(),
            conversation: receiptd_wire::Conversation::C2c { peer: "alice".into() },
            msg_ids: vec!["m1".into()],
            read_at: 1,
            private: false,
        });
        ingest(&mut engine, read, 5);
        // Counted as sent in the flush's generation, but librdkafka never had it.
        producer.context().sent(0);
        let flushed = engine.flush(Some(Instant::now() + Duration::from_secs(5)), &|| false);
        assert!(matches!(flushed, Err(StreamError::DeliveryLost { unconfirmed: 1 })), "{flushed:?}");
        assert_eq!(written_checkpoint(&engine, &store), None, "nothing checkpointed past a delta never confirmed");
    }

    #[test]
    fn flushes_in_flight_are_written_in_order_each_once_it_and_every_earlier_one_is_confirmed() {
        let (_dir, store, producer, mut engine) = test_engine();
        assert_eq!(engine.config.max_flushes_in_flight, 2);
        // One conversation read (one delta record) per flush.
        let read = |reader: &str| conversation_read(reader, "alice");
        let begin = |engine: &mut Engine| {
            let begun = engine.flush_begin(None);
            engine.collect_queued(true, None).unwrap();
            begun
        };
        ingest(&mut engine, read("bob"), 0);
        assert!(begin(&mut engine), "the first flush starts");
        ingest(&mut engine, read("carol"), 1);
        assert!(engine.may_begin_flush(), "room for a second flush while the first waits");
        assert!(begin(&mut engine), "the second flush starts before the first is confirmed");
        ingest(&mut engine, read("dave"), 2);
        assert!(!engine.may_begin_flush(), "no room for a third");
        assert!(!begin(&mut engine), "a third waits for the first to be written");
        let generations: Vec<u64> = engine.in_flight.iter().map(|f| f.generation).collect();
        assert_eq!(generations, [0, 1]);

        // The broker confirms the second flush first: neither is written.
        producer.context().settled(1);
        assert_eq!(engine.write_confirmed().unwrap(), Handover::AwaitingBroker, "the second waits for the first");
        assert_eq!(written_checkpoint(&engine, &store), None);
        // Then the first: both are written, in order.
        producer.context().settled(0);
        assert_eq!(engine.write_confirmed().unwrap(), Handover::HandedOver);
        assert!(engine.in_flight.is_empty());
        assert_eq!(
            written_checkpoint(&engine, &store),
            Some(2),
            "the second flush's offset, written after the first's"
        );

        // The third read goes out with the next flush.
        assert!(begin(&mut engine));
        producer.context().settled(2);
        assert_eq!(engine.write_confirmed().unwrap(), Handover::HandedOver);
        assert_eq!(written_checkpoint(&engine, &store), Some(3));
        producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    }

    #[test]
    fn a_generation_is_settled_through_once_it_and_every_earlier_one_has_no_record_left() {
        let context = DeliveryContext::new(Arc::new(Shared::default()));
        assert!(context.settled_through(u64::MAX - 1), "nothing sent, everything settled");
        context.sent_many(3, 2);
        context.sent_many(5, 1);
        assert!(context.settled_through(2));
        assert!(!context.settled_through(3) && !context.settled_through(4));
        context.settled(3);
        assert!(!context.settled_through(3), "one record of 3 left");
        context.not_sent(3, 1);
        assert!(context.settled_through(4), "the other never queued");
        assert!(!context.settled_through(5));
        context.sent(7);
        context.settled(5);
        assert!(context.settled_through(6) && !context.settled_through(7));
        context.settled(7);
        assert!(context.settled_through(100));
        assert_eq!(context.unsettled(), (0, None));
    }

    #[test]
    fn a_confirmed_flush_the_store_writer_has_no_room_for_stays_in_flight_and_the_loop_does_not_wait() {
        let (_dir, store, producer, mut engine) = test_engine();
        // A slow disk: the writer holds its next batch, and earlier batches
        // fill its queue (one in its hand, the rest queued).
        engine.writer.hold(true);
        submit(&engine.writer, staged(&store, 1)).unwrap();
        until("the writer holding the first batch", &mut || engine.writer.holding());
        for next in 2..=WRITER_QUEUE as i64 + 1 {
            assert!(engine.writer.try_submit(staged(&store, next)).unwrap().is_none(), "room for batch {next}");
        }
        assert!(engine.writer.try_submit(staged(&store, 9)).unwrap().is_some(), "no room for more");

        ingest(&mut engine, conversation_read("bob", "alice"), 10);
        assert!(engine.flush_begin(None));
        engine.collect_queued(true, None).unwrap();
        producer.context().settled(engine.in_flight.front().unwrap().generation);
        // A writer that made the loop wait would write once the hold ends
        // (10 s at most) and report the flush handed over.
        assert_eq!(engine.write_confirmed().unwrap(), Handover::WriterFull);
        assert_eq!(engine.write_confirmed().unwrap(), Handover::WriterFull, "asked again, still no room");
        assert_eq!(engine.in_flight.len(), 1, "the confirmed flush stays in flight");
        assert_eq!(checkpoint(&store), None, "nothing written while the writer is held");

        engine.writer.hold(false);
        until("the flush handed over", &mut || engine.write_confirmed().unwrap() == Handover::HandedOver);
        assert!(engine.in_flight.is_empty());
        assert_eq!(written_checkpoint(&engine, &store), Some(11), "written after every earlier batch");
        producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    }

    #[test]
    fn a_flush_on_revoke_writes_every_flush_in_flight_and_what_was_folded_since() {
        let (_dir, store, producer, mut engine) = test_engine();
        let read = |reader: &str| conversation_read(reader, "alice");
        for (offset, reader) in ["bob", "carol"].into_iter().enumerate() {
            ingest(&mut engine, read(reader), offset as i64);
            assert!(engine.flush_begin(None));
            engine.collect_queued(true, None).unwrap();
        }
        ingest(&mut engine, read("dave"), 2);
        assert!(!engine.may_begin_flush(), "two in flight, one more change waiting");
        // The producer reaches no broker: settle every record it holds
        // while the flush waits (purged records are reported, as failures,
        // and settled like any other).
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let purging = {
            let (producer, done) = (producer.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Relaxed) {
                    producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        let written = engine.flush(Some(Instant::now() + Duration::from_secs(5)), &|| false).unwrap();
        assert_eq!(written, Some(vec![(0, 3)]), "all three reads written: the two in flight, then the third");
        assert!(engine.in_flight.is_empty());
        assert_eq!(checkpoint(&store), Some(3));
        done.store(true, Relaxed);
        purging.join().unwrap();
    }

    #[test]
    fn a_flush_is_not_confirmed_before_the_sender_has_queued_its_last_record() {
        // librdkafka holds one record at most, and no broker takes any: the
        // sender thread queues the first of three records and waits for room.
        let (_dir, store, producer, mut engine) = test_engine_with(&[("queue.buffering.max.messages", "1")]);
        // Three readers of three peers: one delta record each.
        for (offset, (reader, peer)) in [("bob", "alice"), ("carol", "dave"), ("erin", "frank")].into_iter().enumerate()
        {
            ingest(&mut engine, conversation_read(reader, peer), offset as i64);
        }
        assert!(engine.flush_begin(None), "a flush with changes starts");
        let generation = engine.in_flight.front().unwrap().generation;
        until("the first record queued", &mut || producer.in_flight_count() == 1);
        // Every record queued so far confirmed at once (the broker outpacing
        // the sender): the flush still waits for the other two.
        for _ in 0..20 {
            while producer.context().unsettled().0 > 0 {
                producer.context().settled(generation);
            }
            assert_eq!(
                engine.write_confirmed().unwrap(),
                Handover::AwaitingBroker,
                "confirmed with records still unqueued"
            );
            assert!(engine.sending());
            std::thread::sleep(Duration::from_millis(5));
        }
        // Room again, a record at a time: each purged (its failed delivery
        // report, served by the waiting sender, frees the room).
        until("the last record queued", &mut || {
            producer.purge(rdkafka::producer::PurgeConfig::default().queue());
            engine.collect_queued(false, None).unwrap();
            !engine.sending()
        });
        while producer.context().unsettled().0 > 0 {
            producer.context().settled(generation);
        }
        assert_eq!(
            engine.write_confirmed().unwrap(),
            Handover::HandedOver,
            "confirmed once every record is queued and settled"
        );
        assert_eq!(written_checkpoint(&engine, &store), Some(3));
        producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    }

    #[test]
    fn a_fold_that_outruns_the_slices_leaves_the_last_slice_no_backlog() {
        let (_dir, _store, producer, mut engine) = test_engine();
        // One changed entity (a read mark) per event.
        let mut offset = 0;
        let mut fold = |engine: &mut Engine, n: usize| {
            for _ in 0..n {
                ingest(engine, conversation_read(&format!("u{offset}"), "p"), offset);
                offset += 1;
            }
        };
        let (slice, backlog, per_turn) = (10, 100, 40);
        fold(&mut engine, backlog);
        let puts = |engine: &Engine| match (&engine.staging, engine.in_flight.front()) {
            (Some(staging), _) => staging.puts,
            (None, Some(flush)) => flush.puts,
            (None, None) => 0,
        };
        let mut staged_per_turn = Vec::new();
        while engine.in_flight.is_empty() {
            let before = puts(&engine);
            engine.flush_begin(Some(slice));
            staged_per_turn.push(puts(&engine) - before);
            // The fold changes more entities every turn than a slice stages.
            fold(&mut engine, per_turn);
        }
        let flush = engine.in_flight.front().unwrap();
        assert_eq!(flush.slices as usize, staged_per_turn.len());
        assert!(
            staged_per_turn.len() <= backlog / slice + 1,
            "the backlog shrank by a slice every turn: {staged_per_turn:?}"
        );
        let most = *staged_per_turn.iter().max().unwrap() as usize;
        assert!(most <= slice + per_turn, "no slice staged a backlog: {staged_per_turn:?}");
        assert_eq!(flush.puts as usize, backlog + per_turn * (staged_per_turn.len() - 1), "every change staged once");
        producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    }

    #[test]
    fn a_slice_stages_a_slice_and_what_was_added_up_to_a_cap() {
        assert_eq!(slice_budget(10, 100, 100), 10, "nothing added: a slice's worth");
        assert_eq!(slice_budget(10, 130, 100), 40, "a slice's worth and what was added");
        assert_eq!(slice_budget(10, 600, 100), 10 * MAX_SLICE_GROWTH, "a burst: capped");
        assert_eq!(slice_budget(10, 50, 100), 10, "fewer than before (restaged elsewhere): a slice's worth");
    }

    #[test]
    fn the_store_writer_writes_flushes_in_order_and_reports_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), &StoreOptions::default()).unwrap());
        let shared = Arc::new(Shared::default());
        let writer = StoreWriter::start(store.clone(), shared.clone()).unwrap();
        for next in 1..=20 {
            submit(&writer, staged(&store, next)).unwrap();
        }
        writer.wait_idle().unwrap();
        assert_eq!(checkpoint(&store), Some(20), "the last flush handed over is the one on disk");
        let written: Vec<i64> = writer.take_written().into_iter().flatten().map(|(_, next)| next).collect();
        assert_eq!(written, (1..=20).collect::<Vec<_>>(), "every flush written, in order");
        assert_eq!(shared.metrics.store_writes.load(Relaxed), 20);
        drop(writer);
        // Ten flushes asked for a sync; the syncer thread runs one for
        // those asked while it was syncing, and the last before it is gone.
        let syncs = shared.metrics.store_syncs.load(Relaxed);
        assert!((1..=10).contains(&syncs), "synced where the flushes asked, at most once each: {syncs}");
        assert!(!shared.metrics.store_failed.load(Relaxed));
        assert_eq!(Arc::strong_count(&store), 1, "a dropped writer (and its syncer) has let go of the store");
    }

    #[test]
    fn a_sync_held_back_holds_back_no_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        // Every sync tells it began, then waits until `release` is dropped:
        // a disk that takes as long as the test likes.
        let (began, sync_began) = std::sync::mpsc::channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (began, released) = (Mutex::new(began), Mutex::new(released));
        store.before_each_sync(move || {
            let _ = began.lock().unwrap().send(());
            let _ = released.lock().unwrap().recv();
        });
        let store = Arc::new(store);
        let shared = Arc::new(Shared::default());
        let writer = StoreWriter::start(store.clone(), shared.clone()).unwrap();
        // Flush 2 asks for a sync (even offsets do).
        submit(&writer, staged(&store, 2)).unwrap();
        sync_began.recv_timeout(Duration::from_secs(60)).expect("the checkpoint's sync began");
        // More flushes than the writer's queue holds, three asking for a
        // sync: a writer that synced in line would still be in flush 2,
        // and the fourth submit would wait for ever.
        let (done, all_written) = std::sync::mpsc::channel();
        let s = store.clone();
        std::thread::spawn(move || {
            let result =
                (3..=8).try_for_each(|next| submit(&writer, staged(&s, next))).and_then(|()| writer.wait_idle());
            let _ = done.send((result, writer));
        });
        let (result, writer) = all_written
            .recv_timeout(Duration::from_secs(60))
            .expect("the writer wrote every flush while a sync was held back");
        result.unwrap();
        assert_eq!(checkpoint(&store), Some(8), "written, if not yet synced");
        assert_eq!(shared.metrics.store_syncs.load(Relaxed), 0, "the held sync has not finished");
        drop(release);
        drop(writer);
        // The held sync, then one for the three flushes that asked meanwhile.
        assert_eq!(shared.metrics.store_syncs.load(Relaxed), 2);
        assert!(!shared.metrics.store_failed.load(Relaxed));
    }

    #[test]
    fn after_a_failed_write_the_store_writer_writes_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        // Only the third write fails: the store would take the later ones.
        store.fail_one_write_after(2);
        let store = Arc::new(store);
        let shared = Arc::new(Shared::default());
        let writer = StoreWriter::start(store.clone(), shared.clone()).unwrap();
        for next in 1..=6 {
            // Refused once the writer has seen the failure: either is fine.
            let _ = submit(&writer, staged(&store, next));
        }
        assert!(matches!(writer.wait_idle(), Err(StreamError::StoreFailed)));
        assert!(submit(&writer, staged(&store, 7)).is_err(), "a failed writer takes no more work");
        // Time for a writer that wrongly went on to write what it held.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(checkpoint(&store), Some(2), "nothing after the failed write reached the store");
        assert!(shared.metrics.store_failed.load(Relaxed));
        let written: Vec<i64> = writer.take_written().into_iter().flatten().map(|(_, next)| next).collect();
        assert_eq!(written, vec![1, 2]);
    }
}
