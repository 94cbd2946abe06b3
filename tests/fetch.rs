//! Records taken as the worker takes them (`FetchQueue`) carry exactly the
//! headers they were produced with, whether librdkafka parses them or the
//! worker finds none in place (`FetchedRecord::surely_has_no_headers`).

use crate::support::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use receiptd_stream::{reads_headers_in_place, FetchQueue};
use std::time::{Duration, Instant};

/// A record's headers as produced: name and value (`None`: a null value).
type Produced = Vec<(&'static str, Option<&'static [u8]>)>;

#[test]
fn fetched_records_carry_exactly_their_headers() {
    assert!(
        reads_headers_in_place(),
        "the linked librdkafka ({}) is not the one whose message layout fetch.rs mirrors: check `MsgPrefix` against \
         its rdkafka_msg.h, then update HEADERS_IN_PLACE_VERSION",
        rdkafka::util::get_rdkafka_version().1
    );
    let topic = format!("fetch-headers-{}", std::process::id());
    create_topics(&[(&topic, 1, false)]);
    let cases: Vec<Produced> = vec![
        vec![],
        vec![("content-type", Some(b"application/bincode"))],
        vec![],
        vec![("trace", Some(b"")), ("content-type", Some(b"text/plain"))],
        vec![("nothing", None)],
        vec![],
    ];
    let producer = producer();
    for (i, headers) in cases.iter().enumerate() {
        let payload = format!("record {i}");
        let mut record = BaseRecord::<[u8], [u8]>::to(&topic).key(b"k").payload(payload.as_bytes());
        if !headers.is_empty() {
            let owned = headers.iter().fold(OwnedHeaders::new(), |h, &(key, value)| h.insert(Header { key, value }));
            record = record.headers(owned);
        }
        producer.send(record).map_err(|(e, _)| e).expect("queue a record");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("{topic}-g"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    // SAFETY: `fetch` is dropped before `consumer` (declared after it).
    let fetch = unsafe { FetchQueue::new(&consumer) };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning).unwrap();
    fetch.route(&consumer, &tpl);
    consumer.assign(&tpl).expect("assign");

    let (mut records, deadline) = (Vec::new(), Instant::now() + Duration::from_secs(30));
    while records.len() < cases.len() {
        assert!(Instant::now() < deadline, "only {} of {} records came back", records.len(), cases.len());
        let _ = consumer.poll(Duration::ZERO);
        fetch.take(Duration::from_millis(100), 64, &mut records);
        records.retain(|r| r.error().is_none());
    }
    for (i, (record, produced)) in records.iter().zip(&cases).enumerate() {
        assert_eq!(record.payload(), Some(format!("record {i}").as_bytes()), "records come back in order");
        assert_eq!(record.surely_has_no_headers(), produced.is_empty(), "record {i}: {produced:?}");
        let fetched: Vec<(String, Option<Vec<u8>>)> = record
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect())
            .unwrap_or_default();
        let expected: Vec<(String, Option<Vec<u8>>)> =
            produced.iter().map(|&(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec))).collect();
        assert_eq!(fetched, expected, "record {i}");
    }
    drop(records);
    drop(fetch);
    delete_topics(&[&topic]);
}
