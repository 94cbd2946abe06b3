//! `receiptd demo`: the real engine on rdkafka's in-process MockCluster, fed
//! by a synthetic chat: groups of mixed sizes, C2C pairs, duplicate reads,
//! reads that arrive before their message, and the odd poison record. Prints
//! one line per second.

use crate::config::Config;
use crate::worker::{init_logging, open_store, spawn_worker, worker_config};
use anyhow::Context;
use rdkafka::bindings as rdsys;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::ClientConfig;
use receiptd_loadgen::{Traffic, TrafficShape};
use receiptd_wire::{conversation_key, encode_event_bincode, Event, BINCODE_CONTENT_TYPE, CONTENT_TYPE_HEADER};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `receiptd demo` options.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// Synthetic events per second offered (0 = as fast as possible).
    #[arg(long, default_value_t = 50_000)]
    rate: u64,
    /// Write this many events before the worker starts, then watch it drain
    /// them (the drain rate on the in-process broker). MockCluster keeps only
    /// about the last 5 MB per partition, so stay under ~100,000.
    #[arg(long, default_value_t = 0)]
    prefill: u64,
    /// Serve /healthz, /readyz and /metrics here (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    http_addr: SocketAddr,
}

const PARTITIONS: i32 = 4;

/// The in-process Kafka: librdkafka's mock cluster, held by a client of its
/// own, which librdkafka gives one for `test.mock.num.brokers`.
struct InProcessKafka {
    client: BaseProducer,
}

impl InProcessKafka {
    fn start() -> anyhow::Result<Self> {
        let client: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .create()
            .context("starting the in-process Kafka (librdkafka's mock cluster)")?;
        // SAFETY: a live client; the cluster it returns lives as long.
        let cluster = unsafe { rdsys::rd_kafka_handle_mock_cluster(client.client().native_ptr()) };
        anyhow::ensure!(!cluster.is_null(), "the in-process Kafka did not start");
        // As a broker's `group.initial.rebalance.delay.ms` (3 s in the mock
        // too): a new group waits that long for more members before its
        // first assignment. The demo's one worker would fold nothing for
        // its first 3 s.
        // SAFETY: the cluster checked above, alive while `client` is.
        unsafe { rdsys::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0) };
        Ok(InProcessKafka { client })
    }

    /// The cluster, to create topics on and to ask its address.
    fn cluster(&self) -> anyhow::Result<MockCluster<'_, DefaultProducerContext>> {
        self.client.client().mock_cluster().context("the in-process Kafka is gone")
    }
}

fn produce(producer: &BaseProducer, topic: &str, event: &Event, bincode: bool) {
    let key = conversation_key(event);
    let payload =
        if bincode { encode_event_bincode(event) } else { serde_json::to_vec(event).expect("events serialize") };
    let mut record = BaseRecord::to(topic).key(key.as_bytes()).payload(&payload[..]);
    if bincode {
        record = record.headers(
            OwnedHeaders::new().insert(Header { key: CONTENT_TYPE_HEADER, value: Some(BINCODE_CONTENT_TYPE) }),
        );
    }
    send_retrying(producer, record);
}

fn send_retrying(producer: &BaseProducer, mut record: BaseRecord<'_, [u8], [u8]>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, r)) => {
                record = r;
                producer.poll(Duration::from_millis(5));
            }
        }
    }
}

/// Produces 256 events: every tenth in bincode, and now and then a poison
/// record (the DLQ takes it; nothing stalls).
fn offer(producer: &BaseProducer, topic: &str, traffic: &mut Traffic, sent: &mut u64) {
    for _ in 0..256 {
        let e = traffic.next_event();
        produce(producer, topic, &e, *sent % 10 == 3);
        *sent += 1;
        if *sent % 50_000 == 25_000 {
            let poison =
                BaseRecord::to(topic).key(&b"demo/group/g0"[..]).payload(&b"{\"type\":\"message_read\",oops"[..]);
            send_retrying(producer, poison);
        }
    }
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut config = Config::default();
    init_logging(&config.log);
    let kafka = InProcessKafka::start()?;
    let cluster = kafka.cluster()?;
    for (topic, partitions) in [
        (config.topics.events.as_str(), PARTITIONS),
        (config.topics.deltas.as_str(), PARTITIONS),
        (config.topics.settings.as_str(), 1),
        (config.topics.dlq.as_str(), 1),
    ] {
        cluster.create_topic(topic, partitions, 1).with_context(|| format!("creating topic {topic}"))?;
    }
    let brokers = cluster.bootstrap_servers();
    let state_dir = tempfile::Builder::new().prefix("receiptd-demo-").tempdir().context("creating a state dir")?;
    config.kafka.brokers = brokers.clone();
    config.kafka.group_id = "receiptd-demo".into();
    config.kafka.session_timeout_ms = 6_000;
    config.state.dir = state_dir.path().to_owned();

    println!("receiptd demo: in-process Kafka at {brokers}, state in {}", state_dir.path().display());

    // The traffic: membership snapshots, then the prefill (if any), then a
    // generator thread offering `rate` events per second.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.kbytes", "65536")
        .create()
        .context("creating the demo producer")?;
    let events_topic = config.topics.events.clone();
    let mut traffic = Traffic::new(TrafficShape::demo());
    for e in traffic.setup() {
        produce(&producer, &events_topic, &e, false);
    }
    let mut sent: u64 = 0;
    if args.prefill > 0 {
        let t = Instant::now();
        while sent < args.prefill {
            offer(&producer, &events_topic, &mut traffic, &mut sent);
        }
        producer.flush(Duration::from_secs(60)).context("writing the prefill")?;
        println!("receiptd demo: prefilled {sent} events in {:.1}s; starting the worker", t.elapsed().as_secs_f64());
    }

    let opened = open_store(&config)?;
    let worker = spawn_worker(worker_config(&config), opened)?;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    match runtime.block_on(tokio::net::TcpListener::bind(args.http_addr)) {
        Ok(listener) => {
            println!("receiptd demo: http on http://{}/metrics", listener.local_addr()?);
            let backend = Arc::new(crate::worker::WorkerBackend(worker.shared.clone()));
            runtime.spawn(receiptd_http::serve(listener, backend, Default::default()));
        }
        Err(e) => println!("receiptd demo: no http ({e})"),
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    runtime.spawn(async move {
        crate::worker::wait_for_signal().await;
        flag.store(true, Relaxed);
    });

    let generating = Arc::new(AtomicBool::new(true));
    let gen_flag = generating.clone();
    let rate = args.rate;
    let shared = worker.shared.clone();
    let generator = std::thread::spawn(move || {
        // MockCluster keeps only the newest ~5 MB per partition: offer traffic
        // once the worker consumes, or the oldest records would be gone.
        while !shared.ready() && gen_flag.load(Relaxed) && !shared.stopped.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let started = Instant::now();
        let base = sent;
        while gen_flag.load(Relaxed) {
            offer(&producer, &events_topic, &mut traffic, &mut sent);
            producer.poll(Duration::ZERO);
            if rate > 0 {
                let due = Duration::from_secs_f64((sent - base) as f64 / rate as f64);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(ahead.min(Duration::from_millis(100)));
                }
            }
        }
        let _ = producer.flush(Duration::from_secs(5));
        sent
    });

    let started = Instant::now();
    let m = &worker.shared.metrics;
    let (mut last_in, mut last_deltas, mut last_receipts) = (0, 0, 0);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let records_in = m.records_in.load(Relaxed);
        let deltas = m.delta_records.load(Relaxed);
        let receipts = m.delta_receipts.load(Relaxed);
        println!(
            "t={:>4}s  events/s={:>7}  deltas/s={:>6}  receipts/s={:>6}  messages={:>8}  held={:>4}  lag={:>7}  dlq={}  ready={}",
            started.elapsed().as_secs(),
            records_in - last_in,
            deltas - last_deltas,
            receipts - last_receipts,
            m.messages_tracked.load(Relaxed),
            m.held_reads.load(Relaxed),
            m.lag_total(),
            m.dlq_total(),
            worker.shared.ready(),
        );
        (last_in, last_deltas, last_receipts) = (records_in, deltas, receipts);
        let timed_out = args.seconds.is_some_and(|s| started.elapsed() >= Duration::from_secs(s));
        if timed_out || interrupted.load(Relaxed) || worker.handle.is_finished() {
            break;
        }
    }
    generating.store(false, Relaxed);
    let sent = generator.join().map_err(|_| anyhow::anyhow!("generator panicked"))?;
    worker.stop.store(true, Relaxed);
    let result = worker.handle.join().map_err(|_| anyhow::anyhow!("the worker thread panicked"))?;
    println!(
        "receiptd demo: generated {sent} events, folded {} in {:.1}s ({:.0} events/s), {} delta records",
        m.records_in.load(Relaxed),
        started.elapsed().as_secs_f64(),
        m.records_in.load(Relaxed) as f64 / started.elapsed().as_secs_f64(),
        m.delta_records.load(Relaxed)
    );
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(cluster);
    drop(kafka);
    result.context("worker failed")
}
