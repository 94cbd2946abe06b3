//! Records taken from librdkafka a batch at a time.
//!
//! `BaseConsumer::poll` hands out one record per call, and each call reads
//! the clock three to five times, takes the queue's lock, wraps the record
//! in an event and allocates a reference count for it: about a fifth of the
//! poll loop's time at full drain (perf, 2026-11-23). So the worker forwards
//! every assigned partition's fetch queue to a [`FetchQueue`] of its own and
//! takes up to a batch of records from it with one
//! `rd_kafka_consume_batch_queue` call. The consumer's queue then carries
//! only rebalances, errors, statistics and commit results, still served by
//! `BaseConsumer::poll` every turn of the loop.
//!
//! Rebalances must never reach `rd_kafka_consume_batch_queue`: with
//! rdkafka's event API, librdkafka would serve one there by unassigning
//! every partition. So this queue receives partition fetch queues only,
//! never the consumer's.

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, Timestamp};
use rdkafka::TopicPartitionList;
use std::ffi::{c_int, CStr, CString};
use std::ptr::NonNull;
use std::time::Duration;

/// A reference to one of librdkafka's queues, released when dropped. The
/// client must outlive it.
pub(crate) struct QueueHandle(NonNull<rdsys::rd_kafka_queue_t>);

impl QueueHandle {
    /// Takes over `queue`, a reference librdkafka handed out (never null for
    /// the calls that make one).
    pub(crate) fn new(queue: *mut rdsys::rd_kafka_queue_t, made_by: &str) -> QueueHandle {
        QueueHandle(NonNull::new(queue).unwrap_or_else(|| panic!("{made_by} returns a queue")))
    }

    pub(crate) fn as_ptr(&self) -> *mut rdsys::rd_kafka_queue_t {
        self.0.as_ptr()
    }
}

impl Drop for QueueHandle {
    fn drop(&mut self) {
        // SAFETY: the reference is ours, released once.
        unsafe { rdsys::rd_kafka_queue_destroy(self.0.as_ptr()) }
    }
}

/// The queue every assigned partition's fetched records are forwarded to.
/// Public for the drain bench, which measures a consume-only loop on it
/// beside `BaseConsumer::poll`. Dropping it releases the handle; forwarded
/// partitions keep the queue itself alive until librdkafka drops them.
pub struct FetchQueue {
    queue: QueueHandle,
}

// SAFETY: librdkafka's queues lock internally; the handle may be used from
// any thread (the rebalance callback routes partitions to it).
unsafe impl Send for FetchQueue {}
unsafe impl Sync for FetchQueue {}

impl FetchQueue {
    /// A queue of `consumer`'s, with no partition routed to it yet.
    ///
    /// # Safety
    ///
    /// The queue must be dropped before `consumer` is: librdkafka's client
    /// must outlive its queues. (The worker keeps the only strong reference,
    /// declared after the consumer.)
    pub unsafe fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Self {
        // SAFETY: the client pointer is valid while the consumer lives.
        let queue = unsafe { rdsys::rd_kafka_queue_new(consumer.client().native_ptr()) };
        FetchQueue { queue: QueueHandle::new(queue, "rd_kafka_queue_new") }
    }

    /// Forwards the fetch queues of `partitions` here. Done before they are
    /// assigned, so that no record of theirs reaches the consumer's queue;
    /// idempotent, so it may be repeated to heal a partition whose
    /// forwarding a late fetch stop of an earlier assignment cleared.
    pub fn route<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, partitions: &TopicPartitionList) {
        for element in partitions.elements() {
            let (partition, Ok(topic)) = (element.partition(), CString::new(element.topic())) else { continue };
            // SAFETY: valid client and topic; the partition's handle is
            // released right after forwarding (the forward holds its own
            // reference to this queue).
            unsafe {
                let source =
                    rdsys::rd_kafka_queue_get_partition(consumer.client().native_ptr(), topic.as_ptr(), partition);
                if source.is_null() {
                    tracing::warn!(partition, "no fetch queue for partition; its records stay on the consumer queue");
                    continue;
                }
                rdsys::rd_kafka_queue_forward(source, self.queue.as_ptr());
                rdsys::rd_kafka_queue_destroy(source);
            }
        }
    }

    /// Appends up to `max` records to `out`: waits up to `wait` for the
    /// first, then takes whatever else is already fetched. Returns how many.
    pub fn take(&self, wait: Duration, max: usize, out: &mut Vec<FetchedRecord>) -> usize {
        if max == 0 {
            return 0;
        }
        let wait_ms = c_int::try_from(wait.as_millis()).unwrap_or(c_int::MAX);
        // Asked for a whole batch with a timeout, librdkafka waits until the
        // batch is full: so the wait is for one record only.
        let first = if wait_ms > 0 { self.consume(wait_ms, 1, out) } else { 0 };
        if wait_ms > 0 && first == 0 {
            return 0;
        }
        first + self.consume(0, max - first, out)
    }

    fn consume(&self, timeout_ms: c_int, max: usize, out: &mut Vec<FetchedRecord>) -> usize {
        out.reserve(max);
        let spare = out.spare_capacity_mut();
        // SAFETY: `spare` has room for `max` pointers; `FetchedRecord` is a
        // transparent non-null message pointer, and librdkafka writes only
        // non-null ones, each handed to us to destroy.
        let taken = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                timeout_ms,
                spare.as_mut_ptr().cast::<*mut rdsys::rd_kafka_message_t>(),
                max,
            )
        };
        let taken = usize::try_from(taken).unwrap_or(0).min(max);
        // SAFETY: librdkafka initialised the first `taken` slots.
        unsafe { out.set_len(out.len() + taken) };
        taken
    }
}

/// One record taken from a [`FetchQueue`], destroyed when dropped. It may
/// carry a consumer error instead of data ([`FetchedRecord::error`]).
#[repr(transparent)]
pub struct FetchedRecord(NonNull<rdsys::rd_kafka_message_t>);

impl FetchedRecord {
    fn raw(&self) -> &rdsys::rd_kafka_message_t {
        // SAFETY: valid until dropped.
        unsafe { self.0.as_ref() }
    }

    /// The consumer error this record stands for, if it is not data.
    pub fn error(&self) -> Option<KafkaError> {
        let err = self.raw().err;
        (err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .then(|| KafkaError::MessageConsumption(err.into()))
    }
}

// SAFETY: a librdkafka message is its own object, which any thread may read
// and destroy; the worker hands each record to one thread at a time.
unsafe impl Send for FetchedRecord {}

impl Drop for FetchedRecord {
    fn drop(&mut self) {
        // SAFETY: each record is destroyed once, here.
        unsafe { rdsys::rd_kafka_message_destroy(self.0.as_ptr()) }
    }
}

impl FetchedRecord {
    /// Whether the record, read in place, surely has no headers: then
    /// [`Message::headers`] need not ask librdkafka. Asked, librdkafka
    /// parses a record's headers section even when it holds none (a one-
    /// byte count of zero): it zeroes and frees a buffer of several hundred
    /// bytes for each record, 6% of the poll loop in a drain (perf,
    /// 2026-12-05). False whenever it cannot tell; then librdkafka decides.
    pub fn surely_has_no_headers(&self) -> bool {
        if !reads_headers_in_place() {
            return false;
        }
        // SAFETY: a record handed out by librdkafka's consumer is the first
        // field of its private `rd_kafka_msg_t`, whose start `MsgPrefix`
        // mirrors for the librdkafka version `reads_headers_in_place`
        // admits; the headers section lives in the fetch buffer the record
        // holds a reference to.
        let msg = unsafe { self.0.cast::<MsgPrefix>().as_ref() };
        if msg.message.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            || msg.flags & MSG_F_PRODUCER != 0
            || !msg.parsed_headers.is_null()
        {
            return false;
        }
        match usize::try_from(msg.unparsed_headers.len) {
            // librdkafka finds none in an empty section either.
            Ok(0) => true,
            // The section starts with the header count, a zigzag varint:
            // the byte 0 is a count of zero.
            Ok(_) if !msg.unparsed_headers.data.is_null() => {
                // SAFETY: the section holds `len` > 0 bytes at `data`.
                unsafe { *msg.unparsed_headers.data.cast::<u8>() == 0 }
            }
            _ => false,
        }
    }
}

/// The librdkafka whose private message layout [`MsgPrefix`] mirrors:
/// the one rdkafka-sys builds (Cargo.lock pins it).
const HEADERS_IN_PLACE_VERSION: &str = "2.12.1";

/// Whether the linked librdkafka is the one [`MsgPrefix`] mirrors. Any
/// other leaves every header lookup to librdkafka, and a test fails until
/// the layout is checked against the new version's `rdkafka_msg.h`.
pub fn reads_headers_in_place() -> bool {
    static SAME_VERSION: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SAME_VERSION.get_or_init(|| rdkafka::util::get_rdkafka_version().1 == HEADERS_IN_PLACE_VERSION)
}

/// `RD_KAFKA_MSG_F_PRODUCER` in `rdkafka_msg.h`: a message being produced.
const MSG_F_PRODUCER: c_int = 0x40000;

/// The start of librdkafka 2.12.1's private `rd_kafka_msg_t`
/// (`rdkafka_msg.h`), up to a fetched message's unparsed headers.
#[repr(C)]
struct MsgPrefix {
    message: rdsys::rd_kafka_message_t,
    /// `TAILQ_ENTRY(rd_kafka_msg_s) rkm_link`: next, and previous's next.
    link: [*mut std::ffi::c_void; 2],
    flags: c_int,
    /// `rd_kafka_timestamp_type_t rkm_tstype`.
    timestamp_type: c_int,
    timestamp: i64,
    /// `rkm_headers`: the parsed headers, once asked for.
    parsed_headers: *mut rdsys::rd_kafka_headers_t,
    /// `rd_kafka_msg_status_t rkm_status`.
    status: c_int,
    broker_id: i32,
    /// `rkm_u.consumer.binhdrs`, the union's consumer arm.
    unparsed_headers: KafkaBytes,
}

/// The start of `rd_kafkap_bytes_t` (`rdkafka_proto.h`).
#[repr(C)]
struct KafkaBytes {
    len: i32,
    data: *const std::ffi::c_void,
}

fn bytes<'a>(data: *const std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
    // SAFETY (callers): `data` points at `len` bytes living as long as 'a.
    (!data.is_null()).then(|| unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) })
}

impl Message for FetchedRecord {
    type Headers = FetchedHeaders;

    fn key(&self) -> Option<&[u8]> {
        bytes(self.raw().key, self.raw().key_len)
    }

    fn payload(&self) -> Option<&[u8]> {
        bytes(self.raw().payload, self.raw().len)
    }

    unsafe fn payload_mut(&mut self) -> Option<&mut [u8]> {
        let (data, len) = (self.raw().payload, self.raw().len);
        // SAFETY: as `payload`, and `&mut self` makes the borrow unique.
        (!data.is_null()).then(|| unsafe { std::slice::from_raw_parts_mut(data.cast::<u8>(), len) })
    }

    fn topic(&self) -> &str {
        let rkt = self.raw().rkt;
        if rkt.is_null() {
            return "";
        }
        // SAFETY: the record holds a reference to its topic.
        unsafe { CStr::from_ptr(rdsys::rd_kafka_topic_name(rkt)) }.to_str().unwrap_or("")
    }

    fn partition(&self) -> i32 {
        self.raw().partition
    }

    fn offset(&self) -> i64 {
        self.raw().offset
    }

    fn timestamp(&self) -> Timestamp {
        use rdsys::rd_kafka_timestamp_type_t::*;
        let mut kind = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: valid record.
        let millis = unsafe { rdsys::rd_kafka_message_timestamp(self.0.as_ptr(), &mut kind) };
        match kind {
            _ if millis == -1 => Timestamp::NotAvailable,
            RD_KAFKA_TIMESTAMP_CREATE_TIME => Timestamp::CreateTime(millis),
            RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME => Timestamp::LogAppendTime(millis),
            RD_KAFKA_TIMESTAMP_NOT_AVAILABLE => Timestamp::NotAvailable,
        }
    }

    fn headers(&self) -> Option<&FetchedHeaders> {
        if self.surely_has_no_headers() {
            return None;
        }
        let mut headers = std::ptr::null_mut();
        // SAFETY: valid record; the headers live as long as it does.
        let err = unsafe { rdsys::rd_kafka_message_headers(self.0.as_ptr(), &mut headers) };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
            return None;
        }
        // SAFETY: `FetchedHeaders` is an opaque stand-in for the native
        // headers: a reference to it is the native pointer.
        Some(unsafe { &*headers.cast::<FetchedHeaders>() })
    }
}

/// A [`FetchedRecord`]'s headers, read in place.
pub struct FetchedHeaders {
    _opaque: [u8; 0],
}

impl FetchedHeaders {
    fn native(&self) -> *const rdsys::rd_kafka_headers_t {
        (self as *const Self).cast()
    }
}

impl Headers for FetchedHeaders {
    fn count(&self) -> usize {
        // SAFETY: `self` is the native headers of a live record.
        unsafe { rdsys::rd_kafka_header_cnt(self.native()) }
    }

    fn try_get(&self, idx: usize) -> Option<Header<'_, &[u8]>> {
        let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0);
        // SAFETY: as `count`; out of range is an error, not UB.
        let err = unsafe { rdsys::rd_kafka_header_get_all(self.native(), idx, &mut name, &mut value, &mut size) };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        // SAFETY: librdkafka's header names are NUL-terminated; values live
        // as long as the headers.
        let key = unsafe { CStr::from_ptr(name) }.to_str().ok()?;
        Some(Header { key, value: bytes(value, size) })
    }
}
