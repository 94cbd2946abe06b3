//! Typed configuration: TOML file, then `RECEIPTD_<SECTION>__<KEY>`
//! environment overrides. Unknown keys and invalid values stop start-up with
//! a message that names the key (and the variable, if it came from one).

use anyhow::{bail, Context};
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Prefix of environment overrides.
const ENV_PREFIX: &str = "RECEIPTD_";

/// The whole configuration. Every field has a default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka connection and consumer group.
    pub kafka: KafkaConfig,
    /// Topic names.
    pub topics: TopicsConfig,
    /// Local state (RocksDB).
    pub state: StateConfig,
    /// The HTTP server (queries and operations).
    pub http: HttpConfig,
    /// How often folded work is flushed.
    pub flush: FlushConfig,
    /// Reads that arrive before their message.
    pub hold: HoldConfig,
    /// The poll loop's helper threads.
    pub poll_loop: PollLoopConfig,
    /// Per-app API access. Default: none (no API access).
    pub apps: BTreeMap<String, AppAccess>,
    /// Logging.
    pub log: LogConfig,
}

/// `[kafka]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers. Default `127.0.0.1:9092`.
    #[serde(deserialize_with = "string")]
    pub brokers: String,
    /// Consumer group. Default `receiptd`.
    #[serde(deserialize_with = "string")]
    pub group_id: String,
    /// Static membership id (e.g. the pod name); lets a restarted worker take
    /// its partitions back at once. Default: none.
    #[serde(deserialize_with = "opt_string")]
    pub instance_id: Option<String>,
    /// Consumer session timeout, ms. Default 10000.
    pub session_timeout_ms: u64,
    /// Extra librdkafka properties for every client (security, tuning).
    /// They override the worker's tuning defaults (`linger.ms` 2 and
    /// `queue.buffering.max.kbytes` 65536 for the producer;
    /// `queued.max.messages.kbytes` 32768 and
    /// `fetch.queue.backoff.ms` 5 for the consumer); naming a property the
    /// worker relies on (`enable.auto.commit`, `isolation.level`, ...: see
    /// `receiptd_stream::RESERVED_CLIENT_PROPERTIES`) is refused. Default:
    /// none.
    #[serde(deserialize_with = "string_map")]
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group_id: "receiptd".into(),
            instance_id: None,
            session_timeout_ms: 10_000,
            properties: BTreeMap::new(),
        }
    }
}

/// `[topics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Input events. Default `receipts.events`.
    #[serde(deserialize_with = "string")]
    pub events: String,
    /// Settings, compacted, read in full. Default `receipts.settings`.
    #[serde(deserialize_with = "string")]
    pub settings: String,
    /// Output deltas. Default `receipts.deltas`.
    #[serde(deserialize_with = "string")]
    pub deltas: String,
    /// Dead letters. Default `receipts.dlq`.
    #[serde(deserialize_with = "string")]
    pub dlq: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            events: "receipts.events".into(),
            settings: "receipts.settings".into(),
            deltas: "receipts.deltas".into(),
            dlq: "receipts.dlq".into(),
        }
    }
}

/// `[state]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// RocksDB directory. Default `./data`.
    pub dir: PathBuf,
    /// Shared RocksDB block cache, MiB. Default 128.
    pub block_cache_mb: usize,
    /// Memtable budget, MiB. Default 128.
    pub write_buffer_mb: usize,
    /// How often the WAL is fsynced (a checkpoint boundary), ms. Default 1000.
    pub sync_interval_ms: u64,
    /// RocksDB table files written from the memtable (level 0) that start
    /// a compaction into the levels below, 1 to 16. Default 8 (RocksDB's
    /// own is 4). Every flush writes all partitions, so each level-0 file
    /// overlaps the whole level below, and each compaction rewrites all of
    /// it: twice as many files a compaction halves how often that is
    /// rewritten. The store is written, read back only at a restore, and
    /// a restore merges at most this many files more. In a 40 M-event
    /// drain compaction took a third less CPU, and a catch-up after a
    /// restart no longer ran the compaction that a fourth file started;
    /// see BENCHMARKS.md, forty-first sitting.
    pub level0_compaction_trigger: u32,
    /// Let the kernel back this process's memory with transparent huge
    /// pages. Default `false`: while the state grows, each first touch of a
    /// huge page zeroes 2 MiB at once (on a VM the host may have to back it
    /// then too), which stalls the poll loop for milliseconds; see BENCHMARKS.md.
    pub transparent_huge_pages: bool,
    /// What the allocator does with memory the worker frees: `keep` it for
    /// reuse, handing none back to the OS, so the RSS stays at its high
    /// point; give it back a second later with `MADV_FREE` (`lazy`: the
    /// kernel takes such pages only when it runs short, a container's
    /// memory limit included, and they count in the RSS until then); or
    /// `unmap` it then (`MADV_DONTNEED`, mimalloc's own default). Default
    /// `keep`: giving memory back runs on whichever thread frees or
    /// allocates when the second is up, the poll loop too, and each call
    /// waits for the other CPUs to drop the pages from their TLBs. In the
    /// drain bench the most CPU the poll loop took in one gap was 10 to 16
    /// ms giving memory back, 6 to 8 keeping it. Unmapped, the memory each flush frees and allocates again is
    /// faulted in and zeroed anew: runs of 2 to 4 ms. See BENCHMARKS.md.
    pub freed_memory: FreedMemory,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: "./data".into(),
            block_cache_mb: 128,
            write_buffer_mb: 128,
            sync_interval_ms: 1000,
            // The store's own default, so that the two cannot drift apart.
            level0_compaction_trigger: receiptd_store::StoreOptions::default().level0_compaction_trigger as u32,
            transparent_huge_pages: false,
            freed_memory: FreedMemory::Keep,
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address. Default `127.0.0.1:8080`.
    pub addr: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { addr: "127.0.0.1:8080".parse().expect("valid literal") }
    }
}

/// `[flush]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlushConfig {
    /// Flush window, ms (1 to 60000): the longest a change waits for its
    /// flush while input keeps coming. Default 50. A shorter window
    /// shortens the tail under load, for more and smaller flushes while
    /// the worker is behind: 5 (with `when_caught_up` false) cut the p99
    /// over a bare produce-consume pipe by 40% at 50% load and 46% at 80%
    /// (medians) on a 2-core VM, for 14% more delta records and 2% more
    /// store writes in a drain (BENCHMARKS.md, twenty-sixth sitting).
    pub interval_ms: u64,
    /// Also start a flush as soon as the input is drained (no record
    /// waiting) and there is room for another flush in flight, instead of
    /// waiting out the window: at low load a change leaves within about a
    /// broker round trip, and under load flushes still grow to the window.
    /// Default true.
    pub when_caught_up: bool,
    /// Most flushes in flight (1 to 16): flushes whose deltas are sent and
    /// not yet confirmed by the broker. With more than one, the next flush
    /// is staged and sent while the broker confirms the earlier ones (each
    /// is written to the store in order, once confirmed), so a change does
    /// not wait for the round trip of the flush before it. Each flush is a
    /// produce request and a store write of its own. Default 2.
    pub max_in_flight: usize,
    /// Flush early once this many records are pending. Default 100000.
    pub max_pending_records: u64,
    /// Longest a rebalance or shutdown may spend flushing, ms. Default 10000.
    pub revoke_timeout_ms: u64,
    /// Changed entities a flush stages between two batches of the fold,
    /// beyond those the fold changed since the last slice (so the backlog
    /// shrinks every turn; at most eight times this many in all); a
    /// larger flush is staged in slices, so that staging never holds the
    /// poll loop for long (its deltas are queued on a thread of their
    /// own). 0 stages a flush in one step. Default 1024.
    pub stage_slice_entities: usize,
}

impl Default for FlushConfig {
    fn default() -> Self {
        FlushConfig {
            interval_ms: 50,
            when_caught_up: true,
            max_in_flight: 2,
            max_pending_records: 100_000,
            revoke_timeout_ms: 10_000,
            stage_slice_entities: 1024,
        }
    }
}

/// `[poll_loop]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollLoopConfig {
    /// Give the poll loop two helper threads: with one it decodes each
    /// batch of 128 records or more, chunk by chunk, and the other destroys
    /// the batch's records once folded. The poll loop never waits for a
    /// chunk the helper has not started, nor for the records to be
    /// destroyed. They pay when the poll loop alone bounds the drain and a
    /// core has time to spare: there a backlog drained about 3% faster
    /// with them, for 2 to 4% more CPU. On 2 cores kept full by the
    /// broker and the worker, the CPU is the bound: a backlog drained 7%
    /// faster without them (six ABBA pairs, every one faster, 8% less CPU
    /// an event; BENCHMARKS.md, forty-second sitting). Smaller batches, as
    /// a live load's usually are, stay on the poll loop either way.
    /// Default false.
    pub helper_threads: bool,
    /// The poll loop thread's nice value, -20 to 19; 0 leaves it as the
    /// process has it. The poll loop bounds the drain, and on cores shared
    /// with the broker and with the worker's own threads it waited for a
    /// CPU about a quarter of its time: at nice -10 a backlog drained 12
    /// to 14% faster (the medians of two sets of six ABBA pairs, every
    /// pair faster, for no more CPU an event; BENCHMARKS.md). Only the poll loop's thread, and the threads it
    /// starts to restore partitions when they are assigned: its helpers,
    /// the store writer, the delta sender, RocksDB's and librdkafka's
    /// threads keep their own.
    /// Raising a priority needs `CAP_SYS_NICE`, or an `RLIMIT_NICE` of at
    /// least 20 minus the value (`ulimit -e`); refused, the worker logs
    /// it and runs at its own (`receiptd_poll_loop_nice` shows the value
    /// in effect). Default -10.
    pub nice: i32,
}

impl Default for PollLoopConfig {
    fn default() -> Self {
        PollLoopConfig { helper_threads: false, nice: -10 }
    }
}

/// `[hold]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HoldConfig {
    /// How long a read waits for its message, ms of record time. Default 600000.
    pub window_ms: u64,
    /// Most reads held per partition; overflow is dropped and counted.
    /// Default 100000.
    pub max_reads: usize,
}

impl Default for HoldConfig {
    fn default() -> Self {
        HoldConfig { window_ms: 600_000, max_reads: 100_000 }
    }
}

/// `[apps.<app_id>]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppAccess {
    /// Bearer token for the app's API calls. Required.
    #[serde(deserialize_with = "string")]
    pub token: String,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Filter, as in `RUST_LOG` (`RUST_LOG` wins when set). Default `info`.
    #[serde(deserialize_with = "string")]
    pub level: String,
    /// `text` or `json`. Default `text`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text }
    }
}

/// What the allocator does with freed memory (`state.freed_memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FreedMemory {
    /// Kept for reuse; none handed back to the OS.
    Keep,
    /// Handed back a second after it is freed, with `MADV_FREE`.
    Lazy,
    /// Handed back a second after it is freed, with `MADV_DONTNEED`.
    Unmap,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable; coloured only when stderr is a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// Accepts a string, or a number or bool (as env overrides parse them).
fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    Ok(match Scalar::deserialize(d)? {
        Scalar::S(s) => s,
        Scalar::I(i) => i.to_string(),
        Scalar::F(f) => f.to_string(),
        Scalar::B(b) => b.to_string(),
    })
}

/// A map of scalars as strings: librdkafka takes every property as one,
/// whether the file or an environment override wrote it as a number or bool.
fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    struct AsString(#[serde(deserialize_with = "string")] String);
    let map = BTreeMap::<String, AsString>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, AsString(v))| (k, v)).collect())
}

fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    string(d).map(Some)
}

impl Config {
    /// Loads `path` (if any), applies environment overrides, validates.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        Self::load_from(path, std::env::vars())
    }

    /// As [`Config::load`], with the environment given.
    pub fn load_from(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Config> {
        let mut root = match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).with_context(|| format!("reading config file {}", p.display()))?;
                text.parse::<toml::Table>().with_context(|| format!("parsing config file {}", p.display()))?
            }
            None => toml::Table::new(),
        };
        let mut from_env: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
            // Only `SECTION__KEY` names are settings; other RECEIPTD_ variables
            // (tools, tests) are not ours to judge.
            if !rest.contains("__") {
                continue;
            }
            let segments: Vec<String> = rest
                .split("__")
                .enumerate()
                .map(|(i, s)| {
                    // App ids are case-sensitive and taken as written.
                    if i == 1 && rest.to_ascii_lowercase().starts_with("apps__") {
                        s.to_owned()
                    } else {
                        s.to_ascii_lowercase()
                    }
                })
                .collect();
            if segments.iter().any(String::is_empty) {
                bail!("environment variable {name}: empty segment in the key path");
            }
            set_path(&mut root, &segments, scalar(&value)).with_context(|| format!("environment variable {name}"))?;
            from_env.insert(segments.join("."), name);
        }
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|e| {
            let path = e.path().to_string();
            let source = from_env
                .iter()
                .find(|(k, _)| path == **k || path.starts_with(&format!("{k}.")) || k.starts_with(&format!("{path}.")))
                .map(|(_, var)| format!(" (from {var})"))
                .unwrap_or_default();
            anyhow::anyhow!("invalid configuration at `{path}`{source}: {}", e.inner())
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let problems: Vec<String> = [
            (self.kafka.brokers.trim().is_empty(), "kafka.brokers: must not be empty"),
            (self.kafka.group_id.trim().is_empty(), "kafka.group_id: must not be empty"),
            (
                self.kafka.instance_id.as_ref().is_some_and(|s| s.is_empty()),
                "kafka.instance_id: must not be empty when set",
            ),
            (
                !(1_000..=600_000).contains(&self.kafka.session_timeout_ms),
                "kafka.session_timeout_ms: must be 1000 to 600000",
            ),
            (!(1..=60_000).contains(&self.flush.interval_ms), "flush.interval_ms: must be 1 to 60000"),
            (self.flush.max_pending_records == 0, "flush.max_pending_records: must be at least 1"),
            (!(1..=16).contains(&self.flush.max_in_flight), "flush.max_in_flight: must be 1 to 16"),
            (self.flush.revoke_timeout_ms == 0, "flush.revoke_timeout_ms: must be at least 1"),
            (self.hold.window_ms == 0, "hold.window_ms: must be at least 1"),
            (self.hold.max_reads == 0, "hold.max_reads: must be at least 1"),
            (self.state.block_cache_mb == 0, "state.block_cache_mb: must be at least 1"),
            (self.state.write_buffer_mb == 0, "state.write_buffer_mb: must be at least 1"),
            (self.state.sync_interval_ms == 0, "state.sync_interval_ms: must be at least 1"),
            (
                !(1..=16).contains(&self.state.level0_compaction_trigger),
                "state.level0_compaction_trigger: must be 1 to 16",
            ),
            (!(-20..=19).contains(&self.poll_loop.nice), "poll_loop.nice: must be -20 to 19"),
        ]
        .into_iter()
        .filter(|(bad, _)| *bad)
        .map(|(_, msg)| msg.to_owned())
        .chain(self.kafka.properties.keys().filter_map(|key| {
            let (_, why) = receiptd_stream::RESERVED_CLIENT_PROPERTIES.iter().find(|(k, _)| k == key)?;
            Some(format!("kafka.properties.{key}: receiptd sets this itself ({why})"))
        }))
        .chain(
            self.apps
                .iter()
                .filter(|(_, a)| a.token.len() < 16)
                .map(|(id, _)| format!("apps.{id}.token: must be at least 16 characters")),
        )
        .chain(
            self.apps
                .keys()
                .filter(|id| id.is_empty() || id.len() > 128)
                .map(|id| format!("apps.{id}: app id must be 1 to 128 bytes")),
        )
        .chain(
            self.topics_in_use()
                .into_iter()
                .filter(|(_, t)| t.trim().is_empty())
                .map(|(k, _)| format!("topics.{k}: must not be empty")),
        )
        .collect();
        let distinct: BTreeSet<&str> = self.topics_in_use().into_iter().map(|(_, t)| t).collect();
        if distinct.len() != 4 {
            bail!("invalid configuration at `topics`: events, settings, deltas and dlq must be four different topics");
        }
        if let Some(first) = problems.first() {
            bail!("invalid configuration at `{}`", first.replacen(": ", "`: ", 1).trim_end_matches('`'));
        }
        Ok(())
    }

    fn topics_in_use(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("events", &self.topics.events),
            ("settings", &self.topics.settings),
            ("deltas", &self.topics.deltas),
            ("dlq", &self.topics.dlq),
        ]
    }
}

/// Parses an environment value: integer, float or bool when it reads as one,
/// otherwise a string.
fn scalar(value: &str) -> toml::Value {
    if let Ok(i) = value.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = value.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(value.to_owned())
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> anyhow::Result<()> {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut cur = table;
    for p in parents {
        let entry = cur.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("`{p}` is a value, not a section"),
        };
    }
    cur.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(c.kafka.group_id, "receiptd");
        assert_eq!(c.topics.events, "receipts.events");
        assert_eq!(c.topics.settings, "receipts.settings");
        assert_eq!(c.topics.deltas, "receipts.deltas");
        assert_eq!(c.topics.dlq, "receipts.dlq");
        assert_eq!(c.state.dir, PathBuf::from("./data"));
        assert_eq!(c.http.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.flush.interval_ms, 50);
        assert!(c.flush.when_caught_up);
        assert_eq!(c.flush.max_in_flight, 2);
        assert!(!c.poll_loop.helper_threads);
        assert_eq!(c.poll_loop.nice, -10);
        assert_eq!(c.state.level0_compaction_trigger, 8);
        assert!(c.apps.is_empty());
    }

    /// The example file the README points to names only settings that
    /// exist, and says the helper threads' and the poll loop's nice
    /// value's defaults; the helpers can be turned on.
    #[test]
    fn the_example_config_loads() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/receiptd.example.toml");
        let c = Config::load_from(Some(&example), env(&[])).unwrap();
        assert_eq!(c.poll_loop.helper_threads, PollLoopConfig::default().helper_threads);
        assert_eq!(c.poll_loop.nice, PollLoopConfig::default().nice);
        let on = Config::load_from(Some(&example), env(&[("RECEIPTD_POLL_LOOP__HELPER_THREADS", "true")])).unwrap();
        assert!(on.poll_loop.helper_threads);
        assert!(crate::worker::worker_config(&on).poll_loop_helpers);
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("receiptd.toml");
        std::fs::write(&file, "[kafka]\nbrokers = \"k1:9092\"\ngroup_id = \"g\"\n[flush]\ninterval_ms = 20\n").unwrap();
        let c = Config::load_from(
            Some(&file),
            env(&[
                ("RECEIPTD_KAFKA__BROKERS", "k2:9092"),
                ("RECEIPTD_FLUSH__INTERVAL_MS", "75"),
                ("RECEIPTD_FLUSH__WHEN_CAUGHT_UP", "false"),
                ("RECEIPTD_FLUSH__MAX_IN_FLIGHT", "1"),
                ("RECEIPTD_KAFKA__PROPERTIES__linger.ms", "0"),
                ("RECEIPTD_KAFKA__GROUP_ID", "123"),
                ("RECEIPTD_APPS__MyApp__TOKEN", "0123456789abcdef"),
                ("RECEIPTD_TEST_BROKERS", "ignored: not a SECTION__KEY"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "k2:9092");
        assert_eq!(c.kafka.group_id, "123");
        assert_eq!(c.flush.interval_ms, 75);
        assert!(!c.flush.when_caught_up);
        assert_eq!(c.flush.max_in_flight, 1);
        assert_eq!(c.kafka.properties["linger.ms"], "0", "a tuning property is accepted");
        assert_eq!(c.apps["MyApp"].token, "0123456789abcdef");
    }

    #[test]
    fn freed_memory_is_kept_unless_configured_otherwise() {
        assert_eq!(Config::load_from(None, env(&[])).unwrap().state.freed_memory, FreedMemory::Keep);
        for (value, mode) in [("keep", FreedMemory::Keep), ("lazy", FreedMemory::Lazy), ("unmap", FreedMemory::Unmap)] {
            let c = Config::load_from(None, env(&[("RECEIPTD_STATE__FREED_MEMORY", value)])).unwrap();
            assert_eq!(c.state.freed_memory, mode);
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_name_themselves() {
        let err = |pairs: &[(&str, &str)]| Config::load_from(None, env(pairs)).unwrap_err().to_string();
        let e = err(&[("RECEIPTD_KAFKA__BROKERZ", "x")]);
        assert!(e.contains("kafka.brokerz") || e.contains("brokerz"), "{e}");
        assert!(e.contains("RECEIPTD_KAFKA__BROKERZ"), "{e}");
        let e = err(&[("RECEIPTD_KAFKA__PROPERTIES__enable.auto.commit", "true")]);
        assert!(e.contains("`kafka.properties.enable.auto.commit`: receiptd sets this itself"), "{e}");
        let e = err(&[("RECEIPTD_FLUSH__INTERVAL_MS", "soon")]);
        assert!(e.contains("flush.interval_ms"), "{e}");
        let e = err(&[("RECEIPTD_FLUSH__INTERVAL_MS", "0")]);
        assert!(e.contains("flush.interval_ms"), "{e}");
        for n in ["0", "17"] {
            let e = err(&[("RECEIPTD_FLUSH__MAX_IN_FLIGHT", n)]);
            assert!(e.contains("flush.max_in_flight") && e.contains("must be 1 to 16"), "{e}");
        }
        let e = err(&[("RECEIPTD_HTTP__ADDR", "not-an-address")]);
        assert!(e.contains("http.addr"), "{e}");
        for n in ["-21", "20"] {
            let e = err(&[("RECEIPTD_POLL_LOOP__NICE", n)]);
            assert!(e.contains("poll_loop.nice") && e.contains("must be -20 to 19"), "{e}");
        }
        for n in ["0", "17"] {
            let e = err(&[("RECEIPTD_STATE__LEVEL0_COMPACTION_TRIGGER", n)]);
            assert!(e.contains("state.level0_compaction_trigger") && e.contains("must be 1 to 16"), "{e}");
        }
        let e = err(&[("RECEIPTD_STATE__FREED_MEMORY", "hoard")]);
        assert!(e.contains("state.freed_memory") && e.contains("keep"), "{e}");
        let e = err(&[("RECEIPTD_APPS__a1__TOKEN", "short")]);
        assert!(e.contains("apps.a1.token"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[stat]\ndir = \"x\"\n").unwrap();
        let e = Config::load_from(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(e.contains("stat"), "{e}");
    }
}
