//! The Kafka side of receiptd: consume events, fold them, persist state and
//! offsets together, produce deltas.
//!
//! One worker is one thread running a `BaseConsumer` poll loop; nothing here
//! touches the async runtime. Each turn of the loop serves the consumer's
//! queue (rebalances, errors, statistics), takes up to 1,024 records in one
//! call from a fetch queue that every assigned partition is forwarded to
//! (not one `poll` per record), decodes them, and folds them into the
//! owned partitions' [`receiptd_core::PartitionState`]s. Where the drain
//! is bound by the poll loop thread while another core has time to spare,
//! two helper threads can take work off it (`poll_loop.helper_threads`,
//! off by default: on 2 cores kept full by the broker and the worker, the
//! hand-offs cost more CPU than they save): a batch of 128 records or more
//! is decoded by the poll loop and one helper together, chunk by chunk,
//! and once folded its records are destroyed by the other. A record's
//! `content-type` header is
//! looked for only when it has headers: for the librdkafka version it was
//! written against, the worker tells a headerless record in place
//! ([`FetchedRecord::surely_has_no_headers`]) instead of having librdkafka
//! parse an empty headers section per record. Queries do not stop the fold: they
//! read each partition's [`receiptd_core::PartitionView`], locking one
//! message (and its group) at a time, as the fold does per event. As soon
//! as the input is drained and there is room for another flush in flight
//! (`flush.when_caught_up`, `flush.max_in_flight`), and at least every
//! flush interval (50 ms by default) while input keeps coming, the worker:
//!
//! 1. takes the receipts that changed, coalesced and grouped per recipient,
//!    and stages each touched entity once, plus each partition's next offset,
//!    in one RocksDB write batch; then produces the deltas. A flush of more
//!    than `flush.stage_slice_entities` entities is staged in slices, one
//!    per turn of the loop between batches of the fold: that many, plus
//!    what the fold changed since the last slice (up to eight times that
//!    many in all), so that the backlog shrinks every turn and staging
//!    never holds the loop for long. Its last slice stages what is left
//!    and what changed again meanwhile, so the batch still holds every
//!    change up to its offsets (a receipt taken again replaces the earlier
//!    one: still one per message per flush). Its delta records go to the
//!    delta sender, a thread of its own, which encodes them and queues
//!    them in the producer a run at a time on the deltas topic opened once
//!    (`rd_kafka_produce_batch`); the flush cannot be confirmed before the
//!    sender reports the last queued;
//! 2. keeps folding while the broker confirms them (and every earlier DLQ
//!    record), tracked per flush generation;
//! 3. once they are all confirmed, hands the staged batch to the store
//!    writer, a thread of its own, which writes batches in order and fsyncs
//!    at checkpoint boundaries (every second by default), so neither a large
//!    memtable insert nor an fsync stalls the poll loop; after a failed
//!    write it writes nothing more. The writer queues two batches at most;
//!    a confirmed flush it has no room for stays in flight, and the loop
//!    folds on meanwhile (so a slow disk holds back the next flush, not
//!    the loop);
//! 4. commits the offsets written to Kafka, only so that lag shows in tools.
//!
//! Up to `flush.max_in_flight` flushes (2 by default) are in flight at a
//! time: the next is staged and queued while the broker confirms the earlier
//! ones, so a change does not wait out the round trip of the flush before
//! it; each is handed to the writer, in order, once its deltas and every
//! earlier record are confirmed. If the broker stops confirming, or the
//! store writer falls behind, the worker folds on until twice
//! `max_pending_records` are waiting, then stops taking records and keeps
//! polling, so that it stays in the group (librdkafka's fetch queue
//! fills, and its fetcher waits; pausing the partitions would drop what
//! was fetched ahead, to fetch it again).
//!
//! A crash between 2 and 3 replays the deltas with the same versions (the
//! gateway drops them); a crash anywhere else replays nothing twice. On
//! assignment the consumer starts each partition at the offset stored in
//! RocksDB, not at Kafka's committed offset. On revocation the worker
//! completes the flushes in flight, flushes the rest and checkpoints before the
//! rebalance callback returns; it first waits for the store writer, and so
//! does an assignment before it reads a partition back.
//!
//! The settings topic is a global table: every worker reads all of it before
//! it folds any event, then follows it live.

#![deny(missing_docs)]

mod engine;
mod fetch;
mod metrics;
mod produce;
mod retire;
mod settings;
mod split;
mod worker;

pub use fetch::{reads_headers_in_place, FetchQueue, FetchedHeaders, FetchedRecord};
pub use metrics::{FlushTrigger, Metrics, StoreOp, DLQ_REASONS, FLUSH_TRIGGERS, LOOP_PHASES, STORE_OPS};
pub use worker::{run, Shared, Topics, WorkerConfig, RESERVED_CLIENT_PROPERTIES};

/// DLQ header naming why a record was not applied.
pub const DLQ_REASON_HEADER: &str = "receiptd-dlq-reason";
/// DLQ header with a human-readable detail.
pub const DLQ_DETAIL_HEADER: &str = "receiptd-dlq-detail";
/// DLQ header: where the record came from (`topic/partition/offset`).
pub const DLQ_SOURCE_HEADER: &str = "receiptd-dlq-source";
/// DLQ header, set when the payload was cut to fit the DLQ topic: the
/// original's size in bytes (the whole record stays at its source).
pub const DLQ_TRUNCATED_HEADER: &str = "receiptd-dlq-truncated-from";
/// Most payload bytes copied into a DLQ record: under the broker's default
/// record limit (1 MiB), so that no dead letter is itself refused.
pub const DLQ_MAX_PAYLOAD: usize = 900 * 1024;

/// Errors that stop a worker.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A Kafka client call failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The state store failed; the worker stops so that no offset advances
    /// past state that was not written.
    #[error("state store: {0}")]
    Store(#[from] receiptd_store::StoreError),
    /// A thread of the worker could not be started.
    #[error("starting a thread: {0}")]
    Spawn(std::io::Error),
    /// The state store failed earlier (logged where it happened).
    #[error("the state store failed; see the log")]
    StoreFailed,
    /// A configured topic does not exist.
    #[error("topic `{0}` does not exist on the cluster (create it, e.g. with deploy/kafka.sh topics)")]
    MissingTopic(String),
    /// Produced records were counted unconfirmed with none left in
    /// librdkafka to confirm them; the worker stops rather than wait forever.
    #[error(
        "{unconfirmed} produced records can no longer be confirmed; restart to fold again from the last checkpoint"
    )]
    DeliveryLost {
        /// Records counted unconfirmed.
        unconfirmed: u64,
    },
    /// A topic could not be opened for producing.
    #[error("opening topic `{0}` for producing: {1}")]
    TopicHandle(String, String),
    /// The thread that queues delta records stopped.
    #[error("the delta sender thread stopped; restart to fold again from the last checkpoint")]
    SenderStopped,
    /// The broker could not be reached in time.
    #[error("timed out: {0}")]
    Timeout(String),
}
