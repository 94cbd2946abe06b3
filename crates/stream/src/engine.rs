//! The engine: owned partitions, the fold, and the flush that turns folded
//! state into deltas, a RocksDB batch and committed offsets.

use crate::settings::header;
use crate::worker::Shared;
use crate::{StreamError, WorkerConfig, DLQ_DETAIL_HEADER, DLQ_REASON_HEADER, DLQ_SOURCE_HEADER};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use receiptd_core::{DeltaBuffer, Effects, PartitionState, SettingsTable};
use receiptd_store::Store;
use receiptd_wire::{decode_event, delta_key, ContentType, DecodeError, CONTENT_TYPE_HEADER};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most receipts in one delta record; a recipient with more in one flush gets
/// several records, so no record nears the broker's size limit.
const MAX_RECEIPTS_PER_RECORD: usize = 500;
/// How often held reads past their window, and messages past retention, are swept.
const HELD_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Counts deliveries the broker refused for good.
pub(crate) struct DeliveryContext {
    pub(crate) shared: Arc<Shared>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            self.shared.metrics.delta_failures.fetch_add(1, Relaxed);
            tracing::error!(topic = m.topic(), error = %e, "record not delivered");
        }
    }
}

/// What step 1 of a flush queued, for the metrics of step 3.
pub(crate) struct FlushBegun {
    started: Instant,
    receipts: u64,
    records: u64,
    bytes: u64,
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
    pub(crate) settings: SettingsTable,
    partitions: BTreeMap<i32, Owned>,
    deltas: DeltaBuffer,
    shared: Arc<Shared>,
    fx: Effects,
    last_sweep: Instant,
    last_sync: Instant,
    pending: u64,
}

impl Engine {
    pub(crate) fn new(
        config: Arc<WorkerConfig>,
        store: Arc<Store>,
        producer: Arc<BaseProducer<DeliveryContext>>,
        settings: SettingsTable,
        shared: Arc<Shared>,
    ) -> Self {
        Engine {
            config,
            store,
            producer,
            settings,
            partitions: BTreeMap::new(),
            deltas: DeltaBuffer::new(),
            shared,
            fx: Effects::default(),
            last_sweep: Instant::now(),
            last_sync: Instant::now(),
            pending: 0,
        }
    }

    /// Records folded but not yet flushed, over all partitions.
    pub(crate) fn pending(&self) -> u64 {
        self.pending
    }

    /// Folds one record of the events topic.
    pub(crate) fn ingest(&mut self, m: &BorrowedMessage<'_>) {
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
        let decoded = ContentType::from_header(header(m, CONTENT_TYPE_HEADER))
            .and_then(|ct| decode_event(m.key(), m.payload(), ct));
        match decoded {
            Ok(event) => {
                let record_time = m.timestamp().to_millis().unwrap_or(0).max(0) as u64;
                owned.state.apply(&self.settings, &self.config.limits, &event, record_time, &mut self.fx);
            }
            Err(e) => self.dead_letter(m, &e),
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
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.config.topics.dlq).headers(headers);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        if let Some(p) = m.payload() {
            record = record.payload(p);
        }
        self.send(record);
    }

    fn send(&self, mut record: BaseRecord<'_, [u8], [u8]>) {
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, r)) => {
                    self.shared.metrics.delta_failures.fetch_add(1, Relaxed);
                    tracing::error!(topic = r.topic, error = %e, "record could not be queued");
                    return;
                }
            }
        }
    }

    /// Produces pending deltas, waits for the broker to have them, then
    /// writes state and offsets in one batch. Returns the offsets to commit to
    /// Kafka (for lag), or `None` when there was nothing to flush.
    ///
    /// `deadline` bounds the wait for the broker; past it the flush gives up
    /// without writing, which is safe: the records are folded again after a
    /// restart or by the next owner. The poll loop runs the three steps
    /// itself, so that queries are not held up during the wait.
    pub(crate) fn flush(
        &mut self,
        deadline: Option<Instant>,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<TopicPartitionList>, StreamError> {
        let Some(begun) = self.flush_begin() else { return Ok(None) };
        await_delivery(&self.producer, &self.shared, deadline, stop)?;
        self.flush_finish(begun).map(Some)
    }

    /// Step 1 of a flush: sweeps, then queues the changed receipts, one record
    /// per recipient (chunked if huge). `None` when there is nothing to flush.
    pub(crate) fn flush_begin(&mut self) -> Option<FlushBegun> {
        let started = Instant::now();
        if started.duration_since(self.last_sweep) >= HELD_SWEEP_EVERY {
            self.last_sweep = started;
            for owned in self.partitions.values_mut() {
                owned.state.expire_held(&self.config.limits, &mut self.fx);
                owned.state.expire_messages(&self.settings, &mut self.fx);
            }
        }
        self.shared.metrics.add_fold(&std::mem::take(&mut self.fx).stats);
        if self.pending == 0 && !self.partitions.values().any(|o| o.state.has_dirty()) {
            self.producer.poll(Duration::ZERO);
            return None;
        }
        for owned in self.partitions.values_mut() {
            for change in owned.state.take_receipts(&self.settings) {
                self.deltas.push(change);
            }
        }
        let mut begun = FlushBegun { started, receipts: self.deltas.len() as u64, records: 0, bytes: 0 };
        for mut record in self.deltas.drain() {
            let key = delta_key(&record.app_id, &record.to);
            let all = std::mem::take(&mut record.receipts);
            for chunk in all.chunks(MAX_RECEIPTS_PER_RECORD) {
                record.receipts = chunk.to_vec();
                let payload = serde_json::to_vec(&record).expect("delta records always serialize");
                begun.bytes += payload.len() as u64;
                begun.records += 1;
                self.send(BaseRecord::to(&self.config.topics.deltas).key(key.as_bytes()).payload(&payload[..]));
            }
        }
        Some(begun)
    }

    /// Step 3 of a flush, once the broker has every delta and DLQ record:
    /// state and offsets in one batch, one write per touched entity.
    pub(crate) fn flush_finish(&mut self, begun: FlushBegun) -> Result<TopicPartitionList, StreamError> {
        let FlushBegun { started, receipts, records, bytes } = begun;
        let mut batch = receiptd_store::WriteBatch::default();
        let mut puts = 0usize;
        let mut offsets = TopicPartitionList::new();
        for (&partition, owned) in self.partitions.iter_mut() {
            if owned.unflushed == 0 && !owned.state.has_dirty() {
                continue;
            }
            puts += self.store.stage(&mut batch, partition, &mut owned.state, owned.next_offset);
            offsets.add_partition_offset(&self.config.topics.events, partition, Offset::Offset(owned.next_offset))?;
            self.shared.metrics.set_next_offset(partition, owned.next_offset);
            owned.unflushed = 0;
        }
        if let Err(e) = self.store.write(batch) {
            self.shared.metrics.store_failed.store(true, Relaxed);
            tracing::error!(error = %e, "state write failed; stopping before any offset moves past it");
            return Err(e.into());
        }
        if started.duration_since(self.last_sync) >= self.config.sync_interval {
            self.sync()?;
        }

        let m = &self.shared.metrics;
        m.flushed_events.fetch_add(self.pending, Relaxed);
        m.store_puts.fetch_add(puts as u64, Relaxed);
        m.delta_records.fetch_add(records, Relaxed);
        m.delta_receipts.fetch_add(receipts, Relaxed);
        m.delta_bytes.fetch_add(bytes, Relaxed);
        m.messages_tracked.store(self.partitions.values().map(|o| o.state.message_count() as i64).sum(), Relaxed);
        m.held_reads.store(self.partitions.values().map(|o| o.state.held_count() as i64).sum(), Relaxed);
        m.flush_took(started.elapsed().as_secs_f64(), self.pending);
        tracing::debug!(events = self.pending, puts, records, receipts, "flushed");
        self.pending = 0;
        Ok(offsets)
    }

    /// fsyncs the store: a checkpoint boundary.
    pub(crate) fn sync(&mut self) -> Result<(), StreamError> {
        self.last_sync = Instant::now();
        self.store.sync().map_err(|e| {
            self.shared.metrics.store_failed.store(true, Relaxed);
            e.into()
        })
    }

    /// Takes ownership of newly assigned partitions: loads their state and
    /// points the assignment at the offsets stored with it.
    pub(crate) fn assign(&mut self, tpl: &mut TopicPartitionList) -> Result<(), StreamError> {
        let topic = self.config.topics.events.clone();
        let partitions: Vec<i32> = tpl.elements_for_topic(&topic).iter().map(|e| e.partition()).collect();
        for partition in partitions {
            let loading = Instant::now();
            let (state, checkpoint) = self.store.load_partition(partition)?;
            let (offset, next_offset) = match checkpoint {
                Some(c) => (Offset::Offset(c.next_offset), c.next_offset),
                None => (Offset::Beginning, 0),
            };
            tpl.set_partition_offset(&topic, partition, offset)?;
            tracing::info!(
                partition,
                next_offset,
                messages = state.message_count(),
                took_ms = loading.elapsed().as_millis() as u64,
                "partition assigned; state restored"
            );
            self.shared.metrics.set_next_offset(partition, next_offset);
            self.partitions.insert(partition, Owned { state, next_offset, unflushed: 0 });
        }
        self.publish_assignment();
        Ok(())
    }

    /// Gives up partitions: flushes and checkpoints first, so the next owner
    /// starts exactly where this one stopped.
    pub(crate) fn revoke(&mut self, partitions: &[i32], deadline: Instant) -> Option<TopicPartitionList> {
        let offsets = match self.flush(Some(deadline), &|| false) {
            Ok(offsets) => offsets,
            Err(e) => {
                tracing::warn!(error = %e, "flush on revoke failed; the next owner replays from the last checkpoint");
                None
            }
        };
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
        offsets
    }

    fn publish_assignment(&self) {
        let owned: Vec<i32> = self.partitions.keys().copied().collect();
        self.shared.metrics.partitions_assigned.store(owned.len() as i64, Relaxed);
        self.shared.metrics.retain_partitions(&owned);
        self.shared.metrics.store_bytes.store(self.store.size_bytes() as i64, Relaxed);
    }

    /// The state of every owned partition.
    pub(crate) fn states(&self) -> Vec<&PartitionState> {
        self.partitions.values().map(|o| &o.state).collect()
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
