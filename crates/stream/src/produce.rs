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

use crate::engine::DeliveryContext;
use crate::metrics::Metrics;
use crate::StreamError;
use rdkafka::bindings as rdsys;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use std::ffi::{c_void, CString};
use std::ptr::NonNull;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// librdkafka's "partition unassigned": its partitioner picks one by key.
const PARTITION_UA: i32 = -1;

/// Records queued with one call, at most: their keys and payloads sit in
/// one buffer until then.
pub(crate) const RUN: usize = 512;

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
    /// the rest again, as `send` does. A record refused for another reason
    /// is counted a delta failure and logged.
    pub(crate) fn queue(&mut self, generation: u64, metrics: &Metrics) {
        let mut from = 0;
        while from < self.ends.len() {
            self.messages.clear();
            let mut start = if from == 0 { 0 } else { self.ends[from - 1].1 };
            for &(key_end, end) in &self.ends[from..] {
                let base = self.bytes.as_mut_ptr();
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
            self.producer.context().sent_many(generation, queued.max(0) as u64);
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
                Some(next) => {
                    from = next;
                    self.producer.poll(Duration::from_millis(10));
                }
                None => break,
            }
        }
        self.bytes.clear();
        self.ends.clear();
    }
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
    use rdkafka::Message;
    use std::collections::HashMap;
    use std::time::Instant;

    /// Queues `records` records over ten keys the way the engine does (a run
    /// at a time, `RUN` at most), on a producer with `properties`, then reads
    /// the topic back: each key's payloads must arrive once each, in order.
    fn queue_and_read_back(properties: &[(&str, &str)], records: usize, runs_of: usize) {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("deltas", 3, 1).unwrap();
        let shared = Arc::new(Shared::default());
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", cluster.bootstrap_servers()).set("message.timeout.ms", "0");
        for (k, v) in properties {
            config.set(*k, *v);
        }
        let producer: Arc<BaseProducer<DeliveryContext>> =
            Arc::new(config.create_with_context(DeliveryContext::new(shared.clone())).unwrap());
        let mut out = RunProducer::open(producer.clone(), "deltas").unwrap();
        for i in 0..records {
            let key = format!("a/user{}", i % 10);
            let len = out.push(key.as_bytes(), |payload| payload.extend_from_slice(format!("{key}:{i}").as_bytes()));
            assert_eq!(len, key.len() + 1 + i.to_string().len());
            if out.waiting() >= runs_of {
                out.queue(7, &shared.metrics);
            }
        }
        out.queue(7, &shared.metrics);
        assert_eq!(out.waiting(), 0);
        producer.flush(Duration::from_secs(10)).unwrap();
        assert_eq!(producer.context().unsettled(), (0, None), "every record queued was counted and confirmed");
        assert_eq!(shared.metrics.delta_failures.load(Relaxed), 0);

        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "read-back")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["deltas"]).unwrap();
        let mut last: HashMap<String, i64> = HashMap::new();
        let (mut seen, deadline) = (0, Instant::now() + Duration::from_secs(20));
        while seen < records && Instant::now() < deadline {
            let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
            let m = m.unwrap();
            let key = std::str::from_utf8(m.key().unwrap()).unwrap().to_owned();
            let payload = std::str::from_utf8(m.payload().unwrap()).unwrap();
            let (payload_key, i) = payload.split_once(':').unwrap();
            assert_eq!(payload_key, key, "a record's key and payload stay together");
            let i: i64 = i.parse().unwrap();
            let before = last.insert(key.clone(), i).unwrap_or(-1);
            assert!(i > before, "{key}: {i} after {before}");
            assert_eq!(i as usize % 10, key["a/user".len()..].parse::<usize>().unwrap());
            seen += 1;
        }
        assert_eq!(seen, records, "every record arrives");
        // The run buffers are kept for the next flush, emptied.
        assert!(out.bytes.is_empty() && out.ends.is_empty());
    }

    #[test]
    fn records_arrive_once_each_in_order_per_key() {
        queue_and_read_back(&[], 3 * RUN + 17, RUN);
    }

    #[test]
    fn a_full_queue_is_waited_out_and_the_rest_queued_in_order() {
        // librdkafka holds 40 records at most: each run of 300 finds the
        // queue full many times, and the rest must follow in order.
        queue_and_read_back(&[("queue.buffering.max.messages", "40"), ("linger.ms", "0")], 1_500, 300);
    }

    #[test]
    fn a_topic_name_librdkafka_refuses_is_an_error() {
        let shared = Arc::new(Shared::default());
        let producer = Arc::new(crate::engine::unreachable_producer(&shared));
        assert!(matches!(RunProducer::open(producer, "nul\0name"), Err(StreamError::TopicHandle(..))));
    }
}
