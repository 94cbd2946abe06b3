//! Delta records queued in librdkafka a run at a time.
//!
//! `BaseProducer::send` names its topic by string, so librdkafka looks the
//! topic up under the client's write lock for every record, then takes the
//! topic's lock again to partition it. A flush queues thousands of delta
//! records, and the poll loop that queues them bounds the drain. Here the
//! topic is opened once, and a run of records is queued with one call
//! (`rd_kafka_produce_batch`), which takes the topic's lock once for the
//! run. Partitioning, delivery reports and their opaque (the flush
//! generation) are librdkafka's, as with `send`.
//!
//! Encoding and queueing a flush's records took a tenth of the poll loop
//! thread, which bounds the drain while the machine has part of a core to
//! spare. So a [`DeltaSender`] thread does both: the poll loop hands it a
//! flush's records and goes on folding, and learns later that all of them
//! are queued (a flush is confirmed only then). Records are queued in the
//! order flushes hand them over, so a recipient's deltas keep their order.
//!
//! The same thread serves the producer's delivery reports while it has
//! nothing to queue. Serving them frees each delivered record, under a
//! lock librdkafka shares with the thread queueing records and its own
//! threads; served by the poll loop, that lock held by a thread the
//! scheduler had just preempted put the loop to sleep (traced with
//! `sched_switch`). The poll loop never serves the producer. The thread
//! serves every event waiting, then waits for a batch, at most
//! [`SERVE_EVERY`] while records are in flight (so a delivery report waits
//! at most that long), else [`IDLE_WAIT`]. Not in `BaseProducer::poll`:
//! it returns only once its timeout has passed, so a long poll held every
//! batch (and flush) back that long, and short ones spin (see
//! [`MainQueue`]).

use crate::engine::DeliveryContext;
use crate::fetch::QueueHandle;
use crate::metrics::Metrics;
use crate::worker::Shared;
use crate::StreamError;
use rdkafka::bindings as rdsys;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use receiptd_core::Id;
use receiptd_wire::{delta_key_into, DeltaRecord, Receipt};
use std::ffi::{c_void, CString};
use std::ptr::NonNull;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most receipts in one delta record; a recipient with more in one flush gets
/// several records, so no record nears the broker's size limit.
const MAX_RECEIPTS_PER_RECORD: usize = 500;

/// librdkafka's "partition unassigned": its partitioner picks one by key.
const PARTITION_UA: i32 = -1;

/// Records queued with one call, at most: their keys and payloads sit in
/// one buffer until then. A drain's flush (about 6,000 records) is queued
/// in one call, after all of it is encoded. Queued 512 at a time as they
/// were encoded, a flush took longer to queue than `linger.ms` (2 ms), so
/// each partition's records went out in several produce requests.
const RUN: usize = 16 * 1024;

/// One topic of a producer, opened once, and the records waiting to be
/// queued to it.
pub(crate) struct RunProducer {
    /// Dropped after `topic` (see `Drop`): the handle refers to the client.
    producer: Arc<BaseProducer<DeliveryContext>>,
    topic: NonNull<rdsys::rd_kafka_topic_t>,
    /// Every waiting record's key then payload, back to back.
    bytes: Vec<u8>,
    /// Where each waiting record's key and payload end in `bytes`.
    ends: Vec<(usize, usize)>,
    /// The call's message array, reused.
    messages: Vec<rdsys::rd_kafka_message_t>,
}

// SAFETY: librdkafka's topic handles may be used from any thread; the
// handle is only used through `&mut self`.
unsafe impl Send for RunProducer {}

impl RunProducer {
    /// Opens `topic` on `producer` (with the producer's topic defaults).
    pub(crate) fn open(producer: Arc<BaseProducer<DeliveryContext>>, topic: &str) -> Result<Self, StreamError> {
        let name = CString::new(topic).map_err(|_| StreamError::TopicHandle(topic.into(), "a NUL byte".into()))?;
        // SAFETY: a live client and a NUL-terminated name; a null
        // configuration means the producer's defaults.
        let handle =
            unsafe { rdsys::rd_kafka_topic_new(producer.client().native_ptr(), name.as_ptr(), std::ptr::null_mut()) };
        let Some(topic_handle) = NonNull::new(handle) else {
            // SAFETY: reads this thread's last librdkafka error.
            let code = RDKafkaErrorCode::from(unsafe { rdsys::rd_kafka_last_error() });
            return Err(StreamError::TopicHandle(topic.into(), code.to_string()));
        };
        Ok(RunProducer {
            producer,
            topic: topic_handle,
            bytes: Vec::new(),
            ends: Vec::with_capacity(RUN),
            messages: Vec::with_capacity(RUN),
        })
    }

    /// Records waiting to be queued.
    pub(crate) fn waiting(&self) -> usize {
        self.ends.len()
    }

    /// Adds a record: `key`, and the payload `write` appends to the buffer
    /// it is given. Returns the payload's length. Nothing is queued before
    /// [`RunProducer::queue`].
    pub(crate) fn push(&mut self, key: &[u8], write: impl FnOnce(&mut Vec<u8>)) -> usize {
        self.bytes.extend_from_slice(key);
        let key_end = self.bytes.len();
        write(&mut self.bytes);
        self.ends.push((key_end, self.bytes.len()));
        self.bytes.len() - key_end
    }

    /// Queues every waiting record, in order, with `generation` as its
    /// delivery opaque, and counts each queued one sent for that generation.
    /// While librdkafka's queue is full, serves delivery reports and tries
    /// the rest again, as `send` does, until `stop` is set (the rest are
    /// then dropped uncounted: their flush is never confirmed). A record
    /// refused for another reason is counted a delta failure and logged.
    pub(crate) fn queue(&mut self, generation: u64, metrics: &Metrics, stop: &AtomicBool) {
        let mut from = 0;
        while from < self.ends.len() {
            self.messages.clear();
            let mut start = if from == 0 { 0 } else { self.ends[from - 1].1 };
            let base = self.bytes.as_mut_ptr();
            for &(key_end, end) in &self.ends[from..] {
                // SAFETY: both spans lie within `bytes`, which does not
                // change until the call below has copied them (F_COPY).
                let (key, payload) = unsafe { (base.add(start), base.add(key_end)) };
                self.messages.push(rdsys::rd_kafka_message_t {
                    err: rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
                    rkt: std::ptr::null_mut(),
                    partition: PARTITION_UA,
                    payload: payload as *mut c_void,
                    len: end - key_end,
                    key: key as *mut c_void,
                    key_len: key_end - start,
                    offset: 0,
                    _private: generation as usize as *mut c_void,
                });
                start = end;
            }
            // Counted before they are queued: another thread serving delivery
            // reports may settle one before this call returns.
            let context = self.producer.context();
            context.sent_many(generation, self.messages.len() as u64);
            // SAFETY: an open topic handle, and messages whose keys and
            // payloads are live; librdkafka copies them (F_COPY) and sets
            // each message's `err`.
            let queued = unsafe {
                rdsys::rd_kafka_produce_batch(
                    self.topic.as_ptr(),
                    PARTITION_UA,
                    rdsys::RD_KAFKA_MSG_F_COPY,
                    self.messages.as_mut_ptr(),
                    self.messages.len() as i32,
                )
            };
            context.not_sent(generation, self.messages.len() as u64 - queued.max(0) as u64);
            // A full queue refuses the record that found it full and every
            // one after it: those are tried again, in order.
            let mut retry_from = None;
            for (i, m) in self.messages.iter().enumerate() {
                match RDKafkaErrorCode::from(m.err) {
                    RDKafkaErrorCode::NoError => {}
                    RDKafkaErrorCode::QueueFull => {
                        retry_from = Some(from + i);
                        break;
                    }
                    code => {
                        metrics.delta_failures.fetch_add(1, Relaxed);
                        tracing::error!(error = %code, "record could not be queued");
                    }
                }
            }
            match retry_from {
                Some(next) if !stop.load(Relaxed) => {
                    metrics.delta_queue_full.fetch_add(1, Relaxed);
                    tracing::debug!(generation, left = self.ends.len() - next, "librdkafka's queue is full; waiting");
                    from = next;
                    self.producer.poll(Duration::from_millis(10));
                }
                _ => break,
            }
        }
        self.bytes.clear();
        self.ends.clear();
    }
}

/// A flush's delta records, one per recipient, to be queued in order.
pub(crate) struct DeltaBatch {
    /// The flush's generation: every record's delivery opaque.
    pub(crate) generation: u64,
    /// Ids shared with the state, serialized without being copied.
    pub(crate) records: Vec<DeltaRecord<Id>>,
}

/// A batch's word that every record of it is queued, with the emptied
/// receipt lists of its records, for the delta buffer to reuse.
pub(crate) struct BatchQueued {
    pub(crate) generation: u64,
    pub(crate) lists: Vec<Vec<Receipt<Id>>>,
}

/// While records are in flight, how long the sender thread waits for a
/// batch before it serves their delivery reports again: the longest a
/// delivery report waits to be served.
const SERVE_EVERY: Duration = Duration::from_millis(1);

/// While no record is in flight, how long the sender thread waits for a
/// batch before it serves the producer's queue anyway (logs, errors, and
/// the delivery report of a dead-letter record the poll loop queued).
const IDLE_WAIT: Duration = Duration::from_millis(10);

/// Encodes and queues delta records on a thread of its own, and serves the
/// producer's delivery reports while it has none to queue.
pub(crate) struct DeltaSender {
    batches: Option<Sender<DeltaBatch>>,
    queued: Receiver<BatchQueued>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DeltaSender {
    /// Starts the thread, which queues to `out`.
    pub(crate) fn start(mut out: RunProducer, shared: Arc<Shared>) -> Result<DeltaSender, StreamError> {
        let (batches, to_send) = channel::<DeltaBatch>();
        let (done, queued) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("receiptd-deltas".into())
            .spawn(move || {
                let events = MainQueue::of(&out.producer);
                loop {
                    use std::sync::mpsc::RecvTimeoutError;
                    events.serve(&out.producer);
                    let wait = if out.producer.in_flight_count() > 0 { SERVE_EVERY } else { IDLE_WAIT };
                    let batch = match to_send.recv_timeout(wait) {
                        Ok(batch) => batch,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => return,
                    };
                    let generation = batch.generation;
                    let lists = queue_batch(&mut out, batch, &shared.metrics, &stopped);
                    if stopped.load(Relaxed) || done.send(BatchQueued { generation, lists }).is_err() {
                        return;
                    }
                }
            })
            .map_err(StreamError::Spawn)?;
        Ok(DeltaSender { batches: Some(batches), queued, stop, thread: Some(thread) })
    }

    /// Hands a flush's records over, to be queued after every batch before.
    pub(crate) fn send(&self, batch: DeltaBatch) -> Result<(), StreamError> {
        match &self.batches {
            Some(batches) => batches.send(batch).map_err(|_| StreamError::SenderStopped),
            None => Err(StreamError::SenderStopped),
        }
    }

    /// The next batch all queued, if one is, without waiting; with `wait`,
    /// waits for it (until `deadline`, if any). An error if the thread is
    /// gone, or the deadline passed.
    pub(crate) fn queued(&self, wait: bool, deadline: Option<Instant>) -> Result<Option<BatchQueued>, StreamError> {
        use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
        match (wait, deadline) {
            (false, _) => match self.queued.try_recv() {
                Ok(queued) => Ok(Some(queued)),
                Err(TryRecvError::Empty) => Ok(None),
                Err(TryRecvError::Disconnected) => Err(StreamError::SenderStopped),
            },
            (true, None) => self.queued.recv().map(Some).map_err(|_| StreamError::SenderStopped),
            (true, Some(deadline)) => {
                match self.queued.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(queued) => Ok(Some(queued)),
                    Err(RecvTimeoutError::Timeout) => {
                        Err(StreamError::Timeout("queueing a flush's delta records".into()))
                    }
                    Err(RecvTimeoutError::Disconnected) => Err(StreamError::SenderStopped),
                }
            }
        }
    }
}

impl Drop for DeltaSender {
    fn drop(&mut self) {
        // A batch waiting for room in librdkafka's queue gives up; its
        // flush is never confirmed, and is folded again after a restart.
        self.stop.store(true, Relaxed);
        // Its wait for a batch, or its next look for one, ends.
        self.batches.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The producer's own event queue (delivery reports, errors, logs), to
/// serve what waits in it without waiting: rdkafka's `BaseProducer::poll`
/// serves until its timeout has passed, and one with less than a
/// millisecond left asks librdkafka not to wait at all, so polling in short
/// slices spins. `poll(ZERO)` serves one event; the queue's length says
/// how many wait.
/// Drop it before the producer.
struct MainQueue(QueueHandle);

impl MainQueue {
    fn of(producer: &BaseProducer<DeliveryContext>) -> MainQueue {
        // SAFETY: a live client handle; librdkafka returns a new reference
        // to its main queue.
        let queue = unsafe { rdsys::rd_kafka_queue_get_main(producer.client().native_ptr()) };
        MainQueue(QueueHandle::new(queue, "rd_kafka_queue_get_main"))
    }

    /// Serves every event waiting now (and any that came meanwhile).
    fn serve(&self, producer: &BaseProducer<DeliveryContext>) {
        // SAFETY: a live queue reference, held until dropped.
        while unsafe { rdsys::rd_kafka_queue_length(self.0.as_ptr()) } > 0 {
            producer.poll(Duration::ZERO);
        }
    }
}

/// Encodes and queues one batch's records, one per recipient (several if
/// huge), in runs; returns their receipt lists, emptied.
fn queue_batch(
    out: &mut RunProducer,
    batch: DeltaBatch,
    metrics: &Metrics,
    stop: &AtomicBool,
) -> Vec<Vec<Receipt<Id>>> {
    let DeltaBatch { generation, records } = batch;
    let (mut receipts, mut sent, mut bytes) = (0, 0, 0);
    let mut lists = Vec::with_capacity(records.len());
    // One key buffer for every record: a fresh one per record grew
    // through several reallocations each time.
    let mut key = Vec::new();
    for record in records {
        key.clear();
        delta_key_into(&mut key, &record.app_id, &record.to);
        receipts += record.receipts.len() as u64;
        let mut list = for_each_chunk(record, MAX_RECEIPTS_PER_RECORD, |chunk| {
            bytes += out.push(&key, |payload| chunk.write_json(payload)) as u64;
            sent += 1;
            if out.waiting() >= RUN {
                out.queue(generation, metrics, stop);
            }
        });
        // Its ids dropped here, not on the poll loop.
        list.clear();
        lists.push(list);
    }
    out.queue(generation, metrics, stop);
    metrics.delta_records.fetch_add(sent, Relaxed);
    metrics.delta_receipts.fetch_add(receipts, Relaxed);
    metrics.delta_bytes.fetch_add(bytes, Relaxed);
    lists
}

/// Hands `record` to `each` in records of at most `max` receipts, in order;
/// nothing for a record without receipts. Chunks are split off, not copied,
/// and a usual record is one chunk, handed over as it is. Returns the last
/// chunk's list (a usual record's own), for reuse.
fn for_each_chunk<S>(mut record: DeltaRecord<S>, max: usize, mut each: impl FnMut(&DeltaRecord<S>)) -> Vec<Receipt<S>> {
    let mut rest = std::mem::take(&mut record.receipts);
    while !rest.is_empty() {
        let tail = if rest.len() > max { rest.split_off(max) } else { Vec::new() };
        record.receipts = rest;
        each(&record);
        rest = tail;
    }
    std::mem::take(&mut record.receipts)
}

impl Drop for RunProducer {
    fn drop(&mut self) {
        // SAFETY: opened in `open`, destroyed once, before `producer`
        // (fields drop after this) lets the client go.
        unsafe { rdsys::rd_kafka_topic_destroy(self.topic.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Shared;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;
    use rdkafka::Message;
    use std::collections::HashMap;
    use std::time::Instant;

    /// Queues `records` records over ten keys the way the engine does (a run
    /// at a time, `RUN` at most), on a producer with `properties`, then reads
    /// the topic back: each key's payloads must arrive once each, in order.
    /// Returns how many times the queue was found full.
    fn queue_and_read_back(properties: &[(&str, &str)], records: usize, runs_of: usize) -> u64 {
        let (cluster, shared, producer) = mock_deltas(properties);
        let mut out = RunProducer::open(producer.clone(), "deltas").unwrap();
        for i in 0..records {
            let key = format!("a/user{}", i % 10);
            let len = out.push(key.as_bytes(), |payload| payload.extend_from_slice(format!("{key}:{i}").as_bytes()));
            assert_eq!(len, key.len() + 1 + i.to_string().len());
            if out.waiting() >= runs_of {
                out.queue(7, &shared.metrics, &AtomicBool::new(false));
            }
        }
        out.queue(7, &shared.metrics, &AtomicBool::new(false));
        assert_eq!(out.waiting(), 0);
        producer.flush(Duration::from_secs(10)).unwrap();
        assert_eq!(producer.context().unsettled(), (0, None), "every record queued was counted and confirmed");
        assert_eq!(shared.metrics.delta_failures.load(Relaxed), 0);

        let mut last: HashMap<String, i64> = HashMap::new();
        for (key, payload) in read_back(&cluster.bootstrap_servers(), records) {
            let (payload_key, i) = payload.split_once(':').unwrap();
            assert_eq!(payload_key, key, "a record's key and payload stay together");
            let i: i64 = i.parse().unwrap();
            let before = last.insert(key.clone(), i).unwrap_or(-1);
            assert!(i > before, "{key}: {i} after {before}");
            assert_eq!(i as usize % 10, key["a/user".len()..].parse::<usize>().unwrap());
        }
        // The run buffers are kept for the next flush, emptied.
        assert!(out.bytes.is_empty() && out.ends.is_empty());
        shared.metrics.delta_queue_full.load(Relaxed)
    }

    /// A mock cluster with a "deltas" topic of 3 partitions, and a producer
    /// to it with `properties` (besides the engine's `message.timeout.ms`).
    fn mock_deltas(
        properties: &[(&str, &str)],
    ) -> (MockCluster<'static, DefaultProducerContext>, Arc<Shared>, Arc<BaseProducer<DeliveryContext>>) {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("deltas", 3, 1).unwrap();
        let shared = Arc::new(Shared::default());
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", cluster.bootstrap_servers()).set("message.timeout.ms", "0");
        for (k, v) in properties {
            config.set(*k, *v);
        }
        let producer = Arc::new(config.create_with_context(DeliveryContext::new(shared.clone())).unwrap());
        (cluster, shared, producer)
    }

    /// The topic's records as (key, payload), each partition in order:
    /// `records` of them, or the test fails.
    fn read_back(bootstrap: &str, records: usize) -> Vec<(String, String)> {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "read-back")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["deltas"]).unwrap();
        let (mut seen, deadline) = (Vec::new(), Instant::now() + Duration::from_secs(20));
        while seen.len() < records && Instant::now() < deadline {
            let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
            let m = m.unwrap();
            let text = |bytes: Option<&[u8]>| std::str::from_utf8(bytes.unwrap()).unwrap().to_owned();
            seen.push((text(m.key()), text(m.payload())));
        }
        assert_eq!(seen.len(), records, "every record arrives");
        seen
    }

    #[test]
    fn the_sender_queues_batches_in_order_and_reports_each_with_its_lists_emptied() {
        let (cluster, shared, producer) = mock_deltas(&[]);
        let sender =
            DeltaSender::start(RunProducer::open(producer.clone(), "deltas").unwrap(), shared.clone()).unwrap();
        // Two flushes of 600 records, ten recipients, a receipt each; the
        // receipts' timestamps count up across both.
        let batch = |generation: u64| DeltaBatch {
            generation,
            records: (0..600u64)
                .map(|i| {
                    let n = (generation - 1) * 600 + i;
                    DeltaRecord {
                        app_id: Id::from("a"),
                        to: Id::from(format!("user{}", n % 10).as_str()),
                        receipts: vec![Receipt::conversation(Id::from("peer"), n)],
                    }
                })
                .collect(),
        };
        sender.send(batch(1)).unwrap();
        sender.send(batch(2)).unwrap();
        let deadline = Some(Instant::now() + Duration::from_secs(10));
        for generation in [1, 2] {
            let queued = sender.queued(true, deadline).unwrap().unwrap();
            assert_eq!(queued.generation, generation, "reported in the order handed over");
            assert_eq!(queued.lists.len(), 600, "every record's list back");
            assert!(queued.lists.iter().all(|l| l.is_empty() && l.capacity() >= 1), "emptied, room kept");
        }
        assert!(sender.queued(false, None).unwrap().is_none(), "nothing more");
        producer.flush(Duration::from_secs(10)).unwrap();
        assert_eq!(producer.context().unsettled(), (0, None));
        assert_eq!(shared.metrics.delta_records.load(Relaxed), 1_200);
        let mut last: HashMap<String, i64> = HashMap::new();
        for (key, payload) in read_back(&cluster.bootstrap_servers(), 1_200) {
            let record: serde_json::Value = serde_json::from_str(&payload).unwrap();
            assert_eq!(format!("a/{}", record["to"].as_str().unwrap()), key);
            let n = record["receipts"][0]["timestamp"].as_i64().unwrap();
            let before = last.insert(key.clone(), n).unwrap_or(-1);
            assert!(n > before, "{key}: {n} after {before}: a recipient's deltas keep their order");
        }
        drop(sender);
    }

    #[test]
    fn a_delta_record_is_sent_in_chunks_of_at_most_the_maximum_in_order() {
        let receipt = |i: u64| receiptd_wire::Receipt::conversation(format!("u{i}"), i);
        let record = |n: u64| receiptd_wire::DeltaRecord {
            app_id: "a".into(),
            to: "b".into(),
            receipts: (0..n).map(receipt).collect(),
        };
        let chunks = |n: u64| {
            let mut seen = Vec::new();
            for_each_chunk(record(n), 500, |r| {
                assert_eq!((r.app_id.as_str(), r.to.as_str()), ("a", "b"));
                seen.push(r.receipts.iter().map(|r| r.timestamp).collect::<Vec<_>>());
            });
            seen
        };
        let split = chunks(1_201);
        assert_eq!(split.iter().map(Vec::len).collect::<Vec<_>>(), [500, 500, 201]);
        assert_eq!(split.concat(), (0..1_201).collect::<Vec<_>>(), "every receipt once, in order");
        assert_eq!(chunks(500).iter().map(Vec::len).collect::<Vec<_>>(), [500]);
        assert!(chunks(0).is_empty(), "no record for no receipts");
        let reusable = for_each_chunk(record(3), 500, |_| {});
        assert_eq!(reusable.len(), 3, "a record of one chunk gives its own list back, for reuse");
    }

    #[test]
    fn records_arrive_once_each_in_order_per_key() {
        assert_eq!(queue_and_read_back(&[], 3 * RUN + 17, RUN), 0, "never full");
    }

    #[test]
    fn a_full_queue_is_waited_out_and_the_rest_queued_in_order() {
        // librdkafka holds 40 records at most: each run of 300 finds the
        // queue full many times, and the rest must follow in order.
        let full = queue_and_read_back(&[("queue.buffering.max.messages", "40"), ("linger.ms", "0")], 1_500, 300);
        assert!(full >= 1_500 / 40 - 1, "found full about once per 40 records, and counted: {full}");
    }

    #[test]
    fn a_topic_name_librdkafka_refuses_is_an_error() {
        let shared = Arc::new(Shared::default());
        let producer = Arc::new(crate::engine::unreachable_producer(&shared));
        assert!(matches!(RunProducer::open(producer, "nul\0name"), Err(StreamError::TopicHandle(..))));
    }
}
