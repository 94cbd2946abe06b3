//! The settings topic as a global table: every worker assigns itself all of
//! its partitions (no consumer group), reads them to the end before folding
//! any event, then follows them live.

use crate::{Shared, StreamError, WorkerConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use receiptd_core::SettingsTable;
use receiptd_wire::{decode_setting, ContentType, DecodeError, CONTENT_TYPE_HEADER};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Retries a metadata call while the cluster settles (a topic just created,
/// a leader being elected, a broker starting up), for up to a minute; any
/// other error, or one that outlasts that, is returned.
pub(crate) fn settle<T>(what: &str, mut call: impl FnMut() -> Result<T, KafkaError>) -> Result<T, KafkaError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut warned = false;
    loop {
        match call() {
            Err(e) if transient(&e) && Instant::now() < deadline => {
                if !warned {
                    tracing::warn!(error = %e, what, "the cluster is not settled yet; retrying");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            result => return result,
        }
    }
}

fn transient(e: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(
            NotLeaderForPartition
                | LeaderNotAvailable
                | UnknownTopicOrPartition
                | BrokerTransportFailure
                | AllBrokersDown
                | OperationTimedOut
                | RequestTimedOut
                | NotCoordinator
                | CoordinatorNotAvailable
                | CoordinatorLoadInProgress
        )
    )
}

pub(crate) struct SettingsReader {
    consumer: BaseConsumer,
    topic: String,
}

impl SettingsReader {
    /// Reads the whole settings topic into `table`.
    pub(crate) fn bootstrap(
        config: &WorkerConfig,
        table: &mut SettingsTable,
        shared: &Shared,
        stop: &std::sync::atomic::AtomicBool,
        dead_letter: &mut dyn FnMut(&BorrowedMessage<'_>, &DecodeError),
    ) -> Result<Self, StreamError> {
        let consumer: BaseConsumer = crate::worker::settings_reader_config(config).create()?;
        let topic = config.topics.settings.clone();
        let metadata =
            settle("settings topic metadata", || consumer.fetch_metadata(Some(&topic), Duration::from_secs(30)))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            return Err(StreamError::MissingTopic(topic));
        }
        let mut tpl = TopicPartitionList::new();
        let mut remaining = Vec::new();
        for &p in &partitions {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
            let (low, high) =
                settle("settings topic offsets", || consumer.fetch_watermarks(&topic, p, Duration::from_secs(30)))?;
            if high > low {
                remaining.push((p, high));
            }
        }
        consumer.assign(&tpl)?;
        let reader = SettingsReader { consumer, topic };
        let started = Instant::now();
        while !remaining.is_empty() && !stop.load(Relaxed) {
            match reader.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    apply(table, &m, shared, dead_letter);
                    let (p, o) = (m.partition(), m.offset());
                    remaining.retain(|(rp, high)| !(*rp == p && o + 1 >= *high));
                }
                Some(Err(e)) => tracing::warn!(error = %e, "settings topic read failed; retrying"),
                None => {}
            }
            if started.elapsed() > Duration::from_secs(600) {
                return Err(StreamError::Timeout(format!("reading settings topic `{}` to its end", reader.topic)));
            }
        }
        tracing::info!(topic = %reader.topic, records = shared.metrics.settings_records.load(Relaxed), "settings table loaded");
        Ok(reader)
    }

    /// Applies whatever settings arrived since the last call, to the table
    /// in `shared` (write-locked one record at a time, so queries barely wait).
    pub(crate) fn follow(&self, shared: &Shared, dead_letter: &mut dyn FnMut(&BorrowedMessage<'_>, &DecodeError)) {
        while let Some(result) = self.consumer.poll(Duration::ZERO) {
            match result {
                Ok(m) => apply(&mut shared.settings.write(), &m, shared, dead_letter),
                Err(e) => tracing::warn!(error = %e, "settings topic read failed"),
            }
        }
    }
}

fn apply(
    table: &mut SettingsTable,
    m: &BorrowedMessage<'_>,
    shared: &Shared,
    dead_letter: &mut dyn FnMut(&BorrowedMessage<'_>, &DecodeError),
) {
    let content_type = header(m, CONTENT_TYPE_HEADER);
    match ContentType::from_header(content_type).and_then(|ct| decode_setting(m.key(), m.payload(), ct)) {
        Ok(setting) => {
            table.apply(setting);
            shared.metrics.settings_records.fetch_add(1, Relaxed);
        }
        Err(e) => dead_letter(m, &e),
    }
}

pub(crate) fn header<'a, M: Message>(m: &'a M, name: &str) -> Option<&'a [u8]> {
    let headers = m.headers()?;
    headers.iter().find(|h| h.key.eq_ignore_ascii_case(name)).and_then(|h| h.value)
}
