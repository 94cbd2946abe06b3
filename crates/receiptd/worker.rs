//! `receiptd run`: wires config, store, worker thread, HTTP and signals.

use crate::config::{Config, FreedMemory, LogConfig, LogFormat};
use anyhow::Context;
use receiptd_core::Limits;
use receiptd_store::{Store, StoreOptions};
use receiptd_stream::{Shared, Topics, WorkerConfig};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Installs the global tracing subscriber (`RUST_LOG` wins over config).
pub fn init_logging(log: &LogConfig) {
    use tracing_subscriber::{filter::FilterExt, fmt, layer::SubscriberExt, util::SubscriberInitExt, Layer};
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    // Colours only on a terminal: in a file or a log collector the escape
    // codes wrapped every field name (`\x1b[3mtook_ms\x1b[0m=`).
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let output = match log.format {
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
        LogFormat::Text => fmt::layer().with_ansi(colours).with_writer(std::io::stderr).boxed(),
    };
    let filter = filter.and(tracing_subscriber::filter::filter_fn(|m| !is_redundant_close_error(m)));
    let _ = tracing_subscriber::registry().with(output.with_filter(filter)).try_init();
}

/// rdkafka's `BaseConsumer` closes its consumer again when dropped and logs
/// an ERROR that it was closed already. The worker always closes it first
/// (within a bound, and warns itself if that fails), so the line is noise;
/// it is the only ERROR that module logs.
fn is_redundant_close_error(m: &tracing::Metadata<'_>) -> bool {
    *m.level() == tracing::Level::ERROR && m.target() == "rdkafka::consumer::base_consumer"
}

/// The stream crate's view of the config.
pub fn worker_config(c: &Config) -> WorkerConfig {
    WorkerConfig {
        brokers: c.kafka.brokers.clone(),
        group_id: c.kafka.group_id.clone(),
        instance_id: c.kafka.instance_id.clone(),
        topics: Topics {
            events: c.topics.events.clone(),
            settings: c.topics.settings.clone(),
            deltas: c.topics.deltas.clone(),
            dlq: c.topics.dlq.clone(),
        },
        flush_interval: Duration::from_millis(c.flush.interval_ms),
        flush_when_caught_up: c.flush.when_caught_up,
        max_flushes_in_flight: c.flush.max_in_flight,
        max_pending_records: c.flush.max_pending_records,
        sync_interval: Duration::from_millis(c.state.sync_interval_ms),
        revoke_timeout: Duration::from_millis(c.flush.revoke_timeout_ms),
        stage_slice: (c.flush.stage_slice_entities > 0).then_some(c.flush.stage_slice_entities),
        session_timeout: Duration::from_millis(c.kafka.session_timeout_ms),
        limits: Limits { hold_window_ms: c.hold.window_ms, max_held_reads: c.hold.max_reads },
        kafka_properties: c.kafka.properties.clone(),
        poll_loop_helpers: c.poll_loop.helper_threads,
        poll_loop_nice: c.poll_loop.nice,
    }
}

/// The store, opened, and how long that took.
pub struct OpenedStore {
    /// The store.
    pub store: Arc<Store>,
    /// Its open's wall time, the write-ahead log replayed
    /// (`receiptd_store_open_seconds`).
    pub took: Duration,
}

/// Opens the store configured.
pub fn open_store(c: &Config) -> anyhow::Result<OpenedStore> {
    std::fs::create_dir_all(&c.state.dir).with_context(|| format!("creating state.dir {}", c.state.dir.display()))?;
    let options = StoreOptions {
        block_cache_bytes: c.state.block_cache_mb << 20,
        write_buffer_bytes: c.state.write_buffer_mb << 20,
        level0_compaction_trigger: c.state.level0_compaction_trigger as i32,
        ..StoreOptions::default()
    };
    let started = Instant::now();
    let store = Arc::new(Store::open(&c.state.dir, &options).context("opening state.dir")?);
    let took = started.elapsed();
    tracing::info!(took_ms = took.as_millis() as u64, state_dir = %c.state.dir.display(), "state store opened");
    Ok(OpenedStore { store, took })
}

/// The worker's live state, as the HTTP server sees it.
pub struct WorkerBackend(pub Arc<Shared>);

impl receiptd_http::Backend for WorkerBackend {
    fn readiness(&self) -> Result<(), &'static str> {
        self.0.readiness()
    }

    fn healthy(&self) -> bool {
        self.0.healthy()
    }

    fn metrics_text(&self) -> String {
        self.0.metrics.render()
    }

    fn view(&self, f: &mut dyn FnMut(&receiptd_core::SettingsTable, &[Arc<receiptd_core::PartitionView>])) -> bool {
        self.0.query(|settings, states| f(settings, states)).is_some()
    }
}

/// A running worker thread.
pub struct RunningWorker {
    pub shared: Arc<Shared>,
    pub stop: Arc<AtomicBool>,
    pub handle: std::thread::JoinHandle<Result<(), receiptd_stream::StreamError>>,
}

/// Starts the worker on its own thread (never on the async runtime).
pub fn spawn_worker(config: WorkerConfig, opened: OpenedStore) -> anyhow::Result<RunningWorker> {
    let OpenedStore { store, took } = opened;
    let shared = Arc::new(Shared::default());
    shared.metrics.store_open_us.store(took.as_micros() as u64, Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (shared.clone(), stop.clone());
    let handle = std::thread::Builder::new()
        .name("receiptd-worker".into())
        .spawn(move || receiptd_stream::run(config, store, s, st))
        .context("spawning the worker thread")?;
    Ok(RunningWorker { shared, stop, handle })
}

/// `receiptd run`.
pub fn run(config: Config) -> anyhow::Result<()> {
    if !config.state.transparent_huge_pages {
        disable_transparent_huge_pages();
    }
    match config.state.freed_memory {
        FreedMemory::Keep => {
            receiptd_alloc::keep_freed_memory();
            tracing::info!("freed memory is kept for reuse, none handed back to the OS (state.freed_memory = keep)");
        }
        FreedMemory::Lazy => {
            receiptd_alloc::purge_lazily();
            tracing::info!("freed memory goes back to the OS with MADV_FREE (state.freed_memory = lazy)");
        }
        FreedMemory::Unmap => {
            tracing::info!("freed memory goes back to the OS with MADV_DONTNEED (state.freed_memory = unmap)")
        }
    }
    let opened = open_store(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("receiptd-http")
        .build()
        .context("starting the async runtime")?;
    let worker = spawn_worker(worker_config(&config), opened)?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(config.http.addr))
        .with_context(|| format!("binding http.addr {}", config.http.addr))?;
    tracing::info!(addr = %config.http.addr, brokers = %config.kafka.brokers, state_dir = %config.state.dir.display(), "receiptd running");
    let tokens = config.apps.iter().map(|(app, a)| (app.clone(), a.token.clone())).collect();
    runtime.spawn(receiptd_http::serve(listener, Arc::new(WorkerBackend(worker.shared.clone())), tokens));
    let stop = worker.stop.clone();
    runtime.spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received; flushing, checkpointing and leaving the group");
        stop.store(true, Relaxed);
    });
    let result = worker.handle.join().map_err(|_| anyhow::anyhow!("the worker thread panicked"))?;
    if result.is_err() && worker.shared.metrics.store_failed.load(Relaxed) {
        // Keep answering /healthz (503) and /metrics, so that the failure is
        // seen where it happened; no offset moved past the last good write.
        tracing::error!("the state store refuses writes; consuming stopped, serving unhealthy until stopped");
        while !worker.stop.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            Ok(())
        }
        Err(e) => Err(e).context("worker failed"),
    }
}

/// Opts this process out of transparent huge pages for every later page
/// fault (the state, RocksDB's and librdkafka's buffers alike): a huge page's
/// first touch zeroes 2 MiB in one fault, a stall of milliseconds in the
/// poll loop while the state grows. The system setting is left alone.
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 {
        tracing::info!("transparent huge pages disabled for this process (state.transparent_huge_pages = false)");
    } else {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not disable transparent huge pages");
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
