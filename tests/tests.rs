//! receiptd's integration tests, against a real Apache Kafka broker.
//!
//! The broker's address comes from `RECEIPTD_TEST_BROKERS`; `deploy/test.sh`
//! starts a broker with `deploy/kafka.sh` and sets it. A test that needs the
//! broker and finds none fails, with a message saying how to start one.
//!
//! - `pipeline`: a scripted C2C and group conversation yields exactly the
//!   expected delta records (counts, versions, batching per recipient).
//! - `crash`: the worker, a real child process, is killed with SIGKILL
//!   mid-stream ten times and stopped with SIGTERM under load once; its final
//!   state equals an independent oracle (`oracle`) and, with the last deltas,
//!   an uninterrupted run (the killed worker with the poll loop's helper
//!   threads on, the other with the default, off). The DLQ holds exactly
//!   the poison records.
//! - `dlq`: poison and key-mismatched records land in the DLQ with their
//!   reason; everything after them is processed.
//! - `fetch`: records taken as the worker takes them carry exactly the
//!   headers they were produced with, none, one or several.
//! - `semantics`: privacy, reciprocity, revocation, expiry, group-type gating
//!   and a 100,000-member group, end to end.
//! - `api`: the query API over real HTTP: auth, sender-only access, bad input,
//!   paging a 10,000-member list while reads arrive, operations endpoints.
//! - `config`: bad settings stop start-up, naming the key.
//! - `demo`: `receiptd demo` folds its own traffic on its in-process Kafka
//!   and exits cleanly (no broker needed).
//! - `outage`: the test's own broker stops for 30 s mid-load; the worker
//!   reports unready, recovers in the same process, and loses nothing.
//! - `flood`: reads for messages that never arrive stay within the hold cap;
//!   the overflow is counted and memory stays under a documented bound.
//! - `privacy`: over a randomized run, users with receipts off and private
//!   reads never show in deltas, counts or read lists (against the oracle).
//! - `rebalance`: partitions move to a second worker of the group and back;
//!   the first worker's state, restored from its own checkpoints, equals the
//!   oracle over the whole log.
//! - `storage`: RocksDB refuses writes (failpoint); the worker stops,
//!   unhealthy, with no offset past its last good write; after a restart its
//!   state is exact.

mod oracle;
mod support;

mod api;

mod config;
mod crash;
mod demo;
mod dlq;
mod fetch;
mod flood;
mod outage;
mod pipeline;
mod privacy;
mod rebalance;
mod semantics;
mod storage;
