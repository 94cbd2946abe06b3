//! The worker's metrics: plain atomics, rendered as Prometheus text. Each
//! internal event bumps a counter here and writes a log line where it happens.

use receiptd_core::{FoldStats, Ignored, EVENT_KINDS};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Stable DLQ reasons, in metric order.
pub const DLQ_REASONS: [&str; 6] =
    ["empty_payload", "too_large", "unsupported_content_type", "malformed", "invalid_field", "key_mismatch"];

const OUTCOMES: [&str; 3] = ["applied", "held", "ignored"];

/// Upper bounds (seconds) of the flush-duration histogram.
const FLUSH_BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Upper bounds (seconds) of the histogram of gaps between busy batches.
const GAP_BUCKETS: [f64; 9] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 1.0];

/// The parts of the poll loop a gap between batches is made of
/// (`receiptd_batch_gap_max_phase_seconds`): polling and decoding a batch,
/// waiting for the engine's lock (a query's or a rebalance's), folding the
/// batch, letting its records go (their memory is librdkafka's), then a
/// flush's steps (confirming one, staging the next), and the rest of a
/// turn. (Sending deltas was a phase of its own until the
/// delta sender thread took it over.)
pub const LOOP_PHASES: [&str; 8] = ["poll", "decode", "lock", "fold", "retire", "confirm", "stage", "other"];

/// What started a flush (`receiptd_flush_starts_total`): the window ran out,
/// `max_pending_records` were waiting, or the input was drained
/// (`flush.when_caught_up`). [`FlushTrigger`] indexes it.
pub const FLUSH_TRIGGERS: [&str; 3] = ["window", "pending", "caught_up"];

/// What started a flush, in [`FLUSH_TRIGGERS`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushTrigger {
    /// The flush window ran out.
    Window,
    /// `max_pending_records` records were waiting.
    Pending,
    /// The input was drained, with room for another flush in flight.
    CaughtUp,
}

impl FlushTrigger {
    /// Its label in [`FLUSH_TRIGGERS`].
    pub fn as_str(self) -> &'static str {
        FLUSH_TRIGGERS[self as usize]
    }
}

/// What the store writer thread asks of RocksDB
/// (`receiptd_store_op_seconds_total`, `receiptd_store_op_max_seconds`):
/// applying a flush's write batch, and an fsync at a checkpoint boundary.
/// [`StoreOp`] indexes it.
pub const STORE_OPS: [&str; 2] = ["write", "sync"];

/// A store writer's call into RocksDB, in [`STORE_OPS`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// A flush's write batch applied.
    Write,
    /// The WAL fsynced.
    Sync,
}

impl StoreOp {
    /// Its label in [`STORE_OPS`].
    pub fn as_str(self) -> &'static str {
        STORE_OPS[self as usize]
    }
}

/// Upper bounds (records) of the flush-size histogram.
const FLUSH_SIZE_BUCKETS: [u64; 8] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000];

/// Counters and gauges shared by the worker, the HTTP server and the demo.
#[derive(Debug, Default)]
pub struct Metrics {
    events: [[AtomicU64; 3]; 5],
    ignored: [AtomicU64; 15],
    hidden_reads: AtomicU64,
    expired_messages: AtomicU64,
    dlq: [AtomicU64; 6],
    /// Pages of messages' readers sealed, each written once (see
    /// `receiptd_core::PAGE_READERS`).
    pub reader_pages_sealed: AtomicU64,
    /// Records read from the events topic.
    pub records_in: AtomicU64,
    /// Records dropped because their partition was already revoked, or they
    /// were below the stored offset (already folded).
    pub records_skipped: AtomicU64,
    /// Delta records produced.
    pub delta_records: AtomicU64,
    /// Receipts inside those records.
    pub delta_receipts: AtomicU64,
    /// Delta payload bytes.
    pub delta_bytes: AtomicU64,
    /// Deltas the broker refused for good (logged with the reason).
    pub delta_failures: AtomicU64,
    /// Flushes completed.
    pub flushes: AtomicU64,
    flush_starts: [AtomicU64; FLUSH_TRIGGERS.len()],
    flush_buckets: [AtomicU64; 10],
    flush_seconds_sum_us: AtomicU64,
    /// Microseconds from each flush's deltas taken to the broker confirming
    /// all of them, summed: the part of a flush spent on the broker.
    flush_confirm_sum_us: AtomicU64,
    flush_size_buckets: [AtomicU64; 8],
    gap_buckets: [AtomicU64; 9],
    gaps: AtomicU64,
    gap_sum_us: AtomicU64,
    gap_max_us: AtomicU64,
    /// The loop thread's own CPU time in all gaps, and in the longest.
    gap_on_cpu_sum_us: AtomicU64,
    gap_max_on_cpu_us: AtomicU64,
    /// The most CPU time the loop thread took in any one gap: the longest
    /// the engine's own work held a batch back, whatever else the machine
    /// ran meanwhile.
    gap_most_cpu_us: AtomicU64,
    /// The loop thread's time runnable but waiting for a CPU (preempted, or
    /// woken and not yet run) in all gaps, and in the longest.
    gap_waiting_for_cpu_sum_us: AtomicU64,
    gap_max_waiting_for_cpu_us: AtomicU64,
    /// The longest gap's wall time by loop phase ([`LOOP_PHASES`]).
    gap_max_phases_us: [AtomicU64; LOOP_PHASES.len()],
    /// Microseconds the store took to open at start-up, its write-ahead
    /// log replayed: with the restores, what a restart waits for.
    pub store_open_us: AtomicU64,
    /// Microseconds spent restoring assigned partitions from the store
    /// (wall time of each assignment's loads, which run side by side).
    pub restore_us: AtomicU64,
    /// Microseconds the poll loop waited for the decode helper to finish
    /// the last chunk of a batch it had taken, summed.
    pub decode_helper_wait_us: AtomicU64,
    /// Entities written to RocksDB.
    pub store_puts: AtomicU64,
    /// Write batches applied to RocksDB.
    pub store_writes: AtomicU64,
    /// fsyncs of the store (checkpoint boundaries).
    pub store_syncs: AtomicU64,
    /// Microseconds the store writer spent in each [`StoreOp`], summed, and
    /// the longest single call: a flush waits for the writer when its
    /// queue is full, so a slow call shows as a stall of the poll loop.
    store_op_sum_us: [AtomicU64; STORE_OPS.len()],
    store_op_max_us: [AtomicU64; STORE_OPS.len()],
    /// Events folded into those writes.
    pub flushed_events: AtomicU64,
    /// Slices those flushes were staged in (one each unless large).
    pub flush_slices: AtomicU64,
    /// Times the delta sender found librdkafka's queue full and waited
    /// for room (10 ms, serving delivery reports) before queueing the rest.
    pub delta_queue_full: AtomicU64,
    /// Times the poll loop held input back: the pending limit reached while
    /// flushes waited for the broker or the store writer.
    pub input_held: AtomicU64,
    /// Times a confirmed flush found the store writer's queue full and
    /// stayed in flight (the poll loop folds on meanwhile).
    pub store_writer_full: AtomicU64,
    /// Flushes that failed and will be retried.
    pub flush_errors: AtomicU64,
    /// Settings records applied.
    pub settings_records: AtomicU64,
    /// Rebalance callbacks (assign, revoke, error) the worker handled.
    pub rebalances: AtomicU64,
    /// Messages in owned partitions.
    pub messages_tracked: AtomicI64,
    /// Reads waiting for their message.
    pub held_reads: AtomicI64,
    /// Produced delta and DLQ records not yet confirmed by the broker, while a flush waits for them.
    pub deltas_unconfirmed: AtomicI64,
    /// Partitions owned.
    pub partitions_assigned: AtomicI64,
    /// RocksDB size estimate, bytes.
    pub store_bytes: AtomicI64,
    /// The poll loop thread's nice value, as in effect once it started.
    pub poll_loop_nice: AtomicI64,
    /// Set while the store refuses writes; the worker stops advancing.
    pub store_failed: AtomicBool,
    /// partition -> (high watermark from librdkafka statistics, next offset to fold).
    positions: Mutex<BTreeMap<i32, (i64, i64)>>,
    /// Unix time, µs, of the latest write of state with offsets that moved
    /// (0 before any).
    checkpoint_written_unix_us: AtomicU64,
}

impl Metrics {
    /// Adds a fold's counters.
    pub fn add_fold(&self, stats: &FoldStats) {
        for (kind, row) in stats.events.iter().enumerate() {
            for (outcome, n) in row.iter().enumerate() {
                if *n > 0 {
                    self.events[kind][outcome].fetch_add(*n, Relaxed);
                }
            }
        }
        for (i, n) in stats.ignored.iter().enumerate() {
            if *n > 0 {
                self.ignored[i].fetch_add(*n, Relaxed);
            }
        }
        self.hidden_reads.fetch_add(stats.hidden_reads, Relaxed);
        self.expired_messages.fetch_add(stats.expired_messages, Relaxed);
    }

    /// Counts one DLQ record.
    pub fn dlq(&self, reason: &str) {
        if let Some(i) = DLQ_REASONS.iter().position(|r| *r == reason) {
            self.dlq[i].fetch_add(1, Relaxed);
        }
    }

    /// DLQ records so far, all reasons.
    pub fn dlq_total(&self) -> u64 {
        self.dlq.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Ignored reads or events for one reason.
    pub fn ignored(&self, reason: Ignored) -> u64 {
        self.ignored[reason as usize].load(Relaxed)
    }

    /// Events folded, all kinds and outcomes.
    pub fn events_total(&self) -> u64 {
        self.events.iter().flatten().map(|c| c.load(Relaxed)).sum()
    }

    /// Counts a flush started, by what started it.
    pub fn flush_started(&self, trigger: FlushTrigger) {
        self.flush_starts[trigger as usize].fetch_add(1, Relaxed);
    }

    /// Records one flush's duration and how many records it covered.
    pub fn flush_took(&self, seconds: f64, records: u64) {
        for (i, le) in FLUSH_SIZE_BUCKETS.iter().enumerate() {
            if records <= *le {
                self.flush_size_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.flushes.fetch_add(1, Relaxed);
        self.flush_seconds_sum_us.fetch_add((seconds * 1e6) as u64, Relaxed);
        for (i, le) in FLUSH_BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.flush_buckets[i].fetch_add(1, Relaxed);
            }
        }
    }

    /// Records one call of the store writer into RocksDB.
    pub fn store_op_took(&self, op: StoreOp, seconds: f64) {
        let us = (seconds * 1e6) as u64;
        self.store_op_sum_us[op as usize].fetch_add(us, Relaxed);
        self.store_op_max_us[op as usize].fetch_max(us, Relaxed);
    }

    /// Records how long the broker took to confirm one flush's deltas,
    /// counted from when the flush took them.
    pub fn flush_confirmed(&self, seconds: f64) {
        self.flush_confirm_sum_us.fetch_add((seconds * 1e6) as u64, Relaxed);
    }

    /// Records the time between two consecutive batch completions while input
    /// was waiting (a gap with an idle input is not a stall, and is not given),
    /// and how much of it the loop thread spent on a CPU: a gap far longer
    /// than its CPU time is the thread waiting for a core, not working.
    /// `phases_seconds` splits the gap by the loop phase it was spent in
    /// ([`LOOP_PHASES`]), kept for the longest gap so that a stall names its
    /// cause. Called by the loop thread alone.
    pub fn batch_gap(
        &self,
        seconds: f64,
        on_cpu_seconds: f64,
        waiting_for_cpu_seconds: f64,
        phases_seconds: &[f64; LOOP_PHASES.len()],
    ) {
        let us = (seconds * 1e6) as u64;
        let on_cpu_us = (on_cpu_seconds * 1e6) as u64;
        let waiting_us = (waiting_for_cpu_seconds * 1e6) as u64;
        self.gaps.fetch_add(1, Relaxed);
        self.gap_sum_us.fetch_add(us, Relaxed);
        self.gap_on_cpu_sum_us.fetch_add(on_cpu_us, Relaxed);
        self.gap_waiting_for_cpu_sum_us.fetch_add(waiting_us, Relaxed);
        self.gap_most_cpu_us.fetch_max(on_cpu_us, Relaxed);
        // One writer: the longest gap and its split are stored together.
        if us > self.gap_max_us.load(Relaxed) {
            self.gap_max_us.store(us, Relaxed);
            self.gap_max_on_cpu_us.store(on_cpu_us, Relaxed);
            self.gap_max_waiting_for_cpu_us.store(waiting_us, Relaxed);
            for (kept, phase) in self.gap_max_phases_us.iter().zip(phases_seconds) {
                kept.store((phase * 1e6) as u64, Relaxed);
            }
        }
        for (i, le) in GAP_BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.gap_buckets[i].fetch_add(1, Relaxed);
            }
        }
    }

    /// Records a partition's high watermark (from librdkafka statistics).
    pub fn set_high_watermark(&self, partition: i32, high: i64) {
        if let Some(p) = self.positions.lock().expect("metrics lock").get_mut(&partition) {
            p.0 = p.0.max(high);
        }
    }

    /// Records the next offset the worker will fold for an owned partition;
    /// returns whether it moved.
    pub fn set_next_offset(&self, partition: i32, next: i64) -> bool {
        let mut positions = self.positions.lock().expect("metrics lock");
        let before = positions.get(&partition).map(|p| p.1);
        let p = positions.entry(partition).or_insert((next, next));
        p.1 = next;
        p.0 = p.0.max(next);
        before != Some(next)
    }

    /// Notes that the store has just taken state with offsets that moved.
    pub fn checkpoint_written(&self) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.checkpoint_written_unix_us.store(now.as_micros() as u64, Relaxed);
    }

    /// Forgets partitions no longer owned.
    pub fn retain_partitions(&self, owned: &[i32]) {
        self.positions.lock().expect("metrics lock").retain(|p, _| owned.contains(p));
    }

    /// Records behind the end of each owned partition.
    pub fn lag(&self) -> BTreeMap<i32, i64> {
        self.positions
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|(p, (high, next))| (*p, (high - next).max(0)))
            .collect()
    }

    /// Total lag over owned partitions.
    pub fn lag_total(&self) -> i64 {
        self.lag().values().sum()
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        let gauge = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        };
        // A series kept in microseconds, shown in seconds.
        let seconds = |out: &mut String, kind: &str, name: &str, help: &str, us: &AtomicU64| {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}", us.load(Relaxed) as f64 / 1e6);
        };
        counter(&mut out, "receiptd_events_total", "Events folded, by type and outcome.");
        for (k, kind) in EVENT_KINDS.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "receiptd_events_total{{type=\"{kind}\",outcome=\"{outcome}\"}} {}",
                    self.events[k][o].load(Relaxed)
                );
            }
        }
        counter(&mut out, "receiptd_ignored_total", "Reads and events that changed nothing, by reason.");
        for reason in Ignored::ALL {
            let _ = writeln!(out, "receiptd_ignored_total{{reason=\"{}\"}} {}", reason.as_str(), self.ignored(reason));
        }
        counter(
            &mut out,
            "receiptd_hidden_reads_total",
            "Reads recorded but never revealed (private, or receipts off).",
        );
        let _ = writeln!(out, "receiptd_hidden_reads_total {}", self.hidden_reads.load(Relaxed));
        counter(&mut out, "receiptd_expired_messages_total", "Messages dropped by retention.");
        let _ = writeln!(out, "receiptd_expired_messages_total {}", self.expired_messages.load(Relaxed));
        counter(
            &mut out,
            "receiptd_reader_pages_sealed_total",
            "Pages of a message's readers sealed and written apart (a page per 1,024 readers of a message).",
        );
        let _ = writeln!(out, "receiptd_reader_pages_sealed_total {}", self.reader_pages_sealed.load(Relaxed));
        counter(&mut out, "receiptd_dlq_records_total", "Records sent to the DLQ, by reason.");
        for (i, reason) in DLQ_REASONS.iter().enumerate() {
            let _ = writeln!(out, "receiptd_dlq_records_total{{reason=\"{reason}\"}} {}", self.dlq[i].load(Relaxed));
        }
        for (name, help, c) in [
            ("receiptd_records_in_total", "Records read from the events topic.", &self.records_in),
            (
                "receiptd_records_skipped_total",
                "Records of revoked partitions or below the stored offset.",
                &self.records_skipped,
            ),
            ("receiptd_delta_records_total", "Delta records produced.", &self.delta_records),
            ("receiptd_delta_receipts_total", "Receipts inside delta records.", &self.delta_receipts),
            ("receiptd_delta_bytes_total", "Delta payload bytes produced.", &self.delta_bytes),
            ("receiptd_delta_failures_total", "Delta records the broker refused for good.", &self.delta_failures),
            (
                "receiptd_delta_queue_full_total",
                "Times the delta sender found the producer's queue full and waited for room.",
                &self.delta_queue_full,
            ),
            (
                "receiptd_input_held_total",
                "Times the poll loop stopped taking records: the pending limit reached while flushes waited.",
                &self.input_held,
            ),
            (
                "receiptd_store_writer_full_total",
                "Times a confirmed flush found the store writer's queue full and stayed in flight.",
                &self.store_writer_full,
            ),
            ("receiptd_store_puts_total", "Entities written to RocksDB.", &self.store_puts),
            ("receiptd_store_writes_total", "Write batches applied to RocksDB.", &self.store_writes),
            ("receiptd_store_syncs_total", "fsyncs of the store (checkpoint boundaries only).", &self.store_syncs),
            ("receiptd_flushed_events_total", "Events covered by completed flushes.", &self.flushed_events),
            (
                "receiptd_flush_slices_total",
                "Slices completed flushes were staged in, between batches of the fold.",
                &self.flush_slices,
            ),
            ("receiptd_flush_errors_total", "Flushes that failed and were retried.", &self.flush_errors),
            ("receiptd_settings_records_total", "Settings records applied.", &self.settings_records),
            ("receiptd_rebalances_total", "Rebalance callbacks handled (assign, revoke, error).", &self.rebalances),
        ] {
            counter(&mut out, name, help);
            let _ = writeln!(out, "{name} {}", c.load(Relaxed));
        }
        counter(&mut out, "receiptd_flush_starts_total", "Flushes started, by what started them.");
        for (i, trigger) in FLUSH_TRIGGERS.iter().enumerate() {
            let _ = writeln!(
                out,
                "receiptd_flush_starts_total{{trigger=\"{trigger}\"}} {}",
                self.flush_starts[i].load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP receiptd_flush_duration_seconds Time to produce deltas and commit one flush.\n# TYPE receiptd_flush_duration_seconds histogram");
        for (i, le) in FLUSH_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "receiptd_flush_duration_seconds_bucket{{le=\"{le}\"}} {}",
                self.flush_buckets[i].load(Relaxed)
            );
        }
        let flushes = self.flushes.load(Relaxed);
        let _ = writeln!(out, "receiptd_flush_duration_seconds_bucket{{le=\"+Inf\"}} {flushes}");
        let _ = writeln!(
            out,
            "receiptd_flush_duration_seconds_sum {}",
            self.flush_seconds_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "receiptd_flush_duration_seconds_count {flushes}");
        for (name, help, kind, micros) in [
            (
                "receiptd_store_op_seconds_total",
                "Time the store writer spent in RocksDB, by call (label op: write, sync).",
                "counter",
                &self.store_op_sum_us,
            ),
            (
                "receiptd_store_op_max_seconds",
                "The store writer's longest single call into RocksDB since start, by call.",
                "gauge",
                &self.store_op_max_us,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (op, us) in STORE_OPS.iter().zip(micros) {
                let _ = writeln!(out, "{name}{{op=\"{op}\"}} {}", us.load(Relaxed) as f64 / 1e6);
            }
        }
        seconds(
            &mut out,
            "gauge",
            "receiptd_store_open_seconds",
            "Time the state store took to open at start-up, its write-ahead log replayed.",
            &self.store_open_us,
        );
        seconds(
            &mut out,
            "counter",
            "receiptd_restore_seconds_total",
            "Time spent restoring assigned partitions' state from the store, summed over assignments.",
            &self.restore_us,
        );
        seconds(
            &mut out,
            "counter",
            "receiptd_decode_helper_wait_seconds_total",
            "Time the poll loop waited for the decode helper to finish a batch's last chunk, summed.",
            &self.decode_helper_wait_us,
        );
        seconds(
            &mut out,
            "counter",
            "receiptd_flush_confirm_seconds_total",
            "Time from each flush's deltas taken to the broker confirming them all, summed.",
            &self.flush_confirm_sum_us,
        );
        let _ = writeln!(
            out,
            "# HELP receiptd_flush_records Records covered by one flush.\n# TYPE receiptd_flush_records histogram"
        );
        for (i, le) in FLUSH_SIZE_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "receiptd_flush_records_bucket{{le=\"{le}\"}} {}",
                self.flush_size_buckets[i].load(Relaxed)
            );
        }
        let _ = writeln!(out, "receiptd_flush_records_bucket{{le=\"+Inf\"}} {flushes}");
        let _ = writeln!(out, "receiptd_flush_records_sum {}", self.flushed_events.load(Relaxed));
        let _ = writeln!(out, "receiptd_flush_records_count {flushes}");
        for (name, help, g) in [
            ("receiptd_messages_tracked", "Messages with receipt state in owned partitions.", &self.messages_tracked),
            ("receiptd_held_reads", "Reads waiting for their message.", &self.held_reads),
            (
                "receiptd_deltas_unconfirmed",
                "Produced records a waiting flush still needs the broker to confirm.",
                &self.deltas_unconfirmed,
            ),
            ("receiptd_partitions_assigned", "Partitions this worker owns.", &self.partitions_assigned),
            ("receiptd_store_bytes", "RocksDB size estimate (SST files plus memtables).", &self.store_bytes),
            (
                "receiptd_poll_loop_nice",
                "The poll loop thread's nice value in effect (poll_loop.nice, unless the system refused it).",
                &self.poll_loop_nice,
            ),
        ] {
            gauge(&mut out, name, help);
            let _ = writeln!(out, "{name} {}", g.load(Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP receiptd_batch_gap_seconds Time between consecutive batch completions with input waiting (a turn that found no input starts over).\n# TYPE receiptd_batch_gap_seconds histogram"
        );
        for (i, le) in GAP_BUCKETS.iter().enumerate() {
            let _ =
                writeln!(out, "receiptd_batch_gap_seconds_bucket{{le=\"{le}\"}} {}", self.gap_buckets[i].load(Relaxed));
        }
        let gaps = self.gaps.load(Relaxed);
        let _ = writeln!(out, "receiptd_batch_gap_seconds_bucket{{le=\"+Inf\"}} {gaps}");
        let _ = writeln!(out, "receiptd_batch_gap_seconds_sum {}", self.gap_sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "receiptd_batch_gap_seconds_count {gaps}");
        seconds(
            &mut out,
            "gauge",
            "receiptd_batch_gap_max_seconds",
            "Longest gap between busy batch completions since start.",
            &self.gap_max_us,
        );
        seconds(
            &mut out,
            "gauge",
            "receiptd_batch_gap_max_on_cpu_seconds",
            "The loop thread's CPU time during the longest gap (as the kernel last updated it: up to a scheduler tick behind at either end).",
            &self.gap_max_on_cpu_us,
        );
        seconds(
            &mut out,
            "gauge",
            "receiptd_batch_gap_most_cpu_seconds",
            "The most CPU time the loop thread took in any one gap since start: the engine's own share of its stalls (on a VM, time the host held the virtual CPU counts too).",
            &self.gap_most_cpu_us,
        );
        seconds(
            &mut out,
            "gauge",
            "receiptd_batch_gap_max_waiting_for_cpu_seconds",
            "The loop thread's time runnable but waiting for a CPU during the longest gap (0 where the kernel does not tell).",
            &self.gap_max_waiting_for_cpu_us,
        );
        gauge(
            &mut out,
            "receiptd_batch_gap_max_phase_seconds",
            "The longest gap's wall time by poll-loop phase (label phase).",
        );
        for (phase, us) in LOOP_PHASES.iter().zip(&self.gap_max_phases_us) {
            let _ = writeln!(
                out,
                "receiptd_batch_gap_max_phase_seconds{{phase=\"{phase}\"}} {}",
                us.load(Relaxed) as f64 / 1e6
            );
        }
        seconds(
            &mut out,
            "counter",
            "receiptd_batch_gap_on_cpu_seconds_total",
            "The loop thread's CPU time in all gaps.",
            &self.gap_on_cpu_sum_us,
        );
        seconds(
            &mut out,
            "counter",
            "receiptd_batch_gap_waiting_for_cpu_seconds_total",
            "The loop thread's time runnable but waiting for a CPU in all gaps.",
            &self.gap_waiting_for_cpu_sum_us,
        );
        gauge(&mut out, "receiptd_store_failed", "1 while the store refuses writes.");
        let _ = writeln!(out, "receiptd_store_failed {}", self.store_failed.load(Relaxed) as u8);
        gauge(&mut out, "receiptd_consumer_lag", "Records behind the partition's end, per owned partition.");
        for (p, lag) in self.lag() {
            let _ = writeln!(out, "receiptd_consumer_lag{{partition=\"{p}\"}} {lag}");
        }
        gauge(&mut out, "receiptd_checkpoint_offset", "Next offset stored with the state, per owned partition.");
        for (p, (_, next)) in self.positions.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "receiptd_checkpoint_offset{{partition=\"{p}\"}} {next}");
        }
        gauge(
            &mut out,
            "receiptd_checkpoint_written_timestamp_seconds",
            "Unix time the store last took state with offsets that moved (0 before any): how old the point a restart resumes from is.",
        );
        let _ = writeln!(
            out,
            "receiptd_checkpoint_written_timestamp_seconds {}",
            self.checkpoint_written_unix_us.load(Relaxed) as f64 / 1e6
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(body: &str, name: &str) -> f64 {
        let line = body.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' ')).expect(name);
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn the_most_cpu_in_a_gap_is_kept_apart_from_the_longest_gaps_split() {
        let metrics = Metrics::default();
        let phases = [0.0; LOOP_PHASES.len()];
        // A long gap spent mostly waiting for a CPU, then a shorter one on it.
        metrics.batch_gap(0.020, 0.002, 0.018, &phases);
        metrics.batch_gap(0.008, 0.007, 0.001, &phases);
        let body = metrics.render();
        assert_eq!(value(&body, "receiptd_batch_gap_max_seconds"), 0.020);
        assert_eq!(value(&body, "receiptd_batch_gap_max_on_cpu_seconds"), 0.002);
        assert_eq!(value(&body, "receiptd_batch_gap_most_cpu_seconds"), 0.007);
    }
}
