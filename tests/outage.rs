//! A broker outage mid-load: the test's own broker stops for 30 s and starts
//! again on the same port and storage. The worker rides it out in the same
//! process: unready during the outage, ready after, and its final state
//! equals the oracle of the log.

use crate::oracle::assert_state_matches;
use crate::support::*;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;
use receiptd_loadgen::{Traffic, TrafficShape};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const OUTAGE: Duration = Duration::from_secs(30);

/// A broker of this test's own, stopped when dropped.
struct OwnBroker(PathBuf);

impl OwnBroker {
    fn kafka_sh(command: &str, dir: &Path) -> String {
        let out = Command::new("deploy/kafka.sh").arg(command).arg(dir).output().expect("run deploy/kafka.sh");
        assert!(out.status.success(), "deploy/kafka.sh {command}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn start(dir: &Path) -> (OwnBroker, String) {
        let address = Self::kafka_sh("start", dir);
        (OwnBroker(dir.to_owned()), address)
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = Command::new("deploy/kafka.sh").arg("stop").arg(&self.0).output();
    }
}

#[test]
fn a_30_s_broker_outage_mid_load_loses_nothing_and_needs_no_restart() {
    let broker_dir = tempfile::tempdir().unwrap();
    let (broker, address) = OwnBroker::start(broker_dir.path());
    use_brokers(&address);
    let topics = Topics::create("outage");
    let events = Traffic::new(TrafficShape::small("a1", 11)).take(30_000);
    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::new(&topics, &format!("{}-g", topics.events), &dir.path().join("state"))
        .env("RECEIPTD_FLUSH__INTERVAL_MS", "20");
    worker.start();
    worker.wait_ready(Duration::from_secs(60));
    let pid = worker.child.as_ref().unwrap().id();

    // The load is written over ~6 s by a producer that waits out the outage.
    let writer = {
        let (events, topic, address) = (events.clone(), topics.events.clone(), address.clone());
        std::thread::spawn(move || {
            let producer: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", &address)
                .set("enable.idempotence", "true")
                .set("message.timeout.ms", "0")
                .create()
                .unwrap();
            for chunk in events.chunks(1_000) {
                for e in chunk {
                    let payload = serde_json::to_vec(e).unwrap();
                    produce_raw(&producer, &topic, receiptd_wire::conversation_key(e).as_bytes(), &payload);
                }
                producer.poll(Duration::ZERO);
                std::thread::sleep(Duration::from_millis(200));
            }
            producer.flush(Duration::from_secs(180)).expect("the load reaches the broker after the outage");
        })
    };
    std::thread::sleep(Duration::from_secs(2));

    OwnBroker::kafka_sh("stop", &broker.0);
    let outage_ends = Instant::now() + OUTAGE;
    let mut unready = 0;
    while Instant::now() < outage_ends {
        if http_get(worker.http, "/readyz").map(|(s, _)| s == 503).unwrap_or(false) {
            unready += 1;
        }
        assert_eq!(http_get(worker.http, "/healthz").map(|(s, _)| s).unwrap_or(0), 200, "healthy throughout");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(unready > 20, "the worker should report unready during the outage ({unready} polls)");
    OwnBroker::kafka_sh("restart", &broker.0);

    worker.wait_ready(Duration::from_secs(120));
    writer.join().unwrap();
    worker.wait_caught_up(&topics.events, Duration::from_secs(180));
    assert_eq!(worker.child.as_ref().unwrap().id(), pid, "the same process throughout");
    assert_eq!(worker.terminate(), 0, "log:\n{}", worker.log_tail());
    assert_state_matches(&worker.inspect(), &events);
}
