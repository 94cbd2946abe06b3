//! A batch mapped on two threads: the poll loop and one helper.
//!
//! The drain is bound by the poll loop thread, while the machine has part
//! of its second core to spare (the drain bench reports both). Decoding a
//! batch's records needs no engine state, so the poll loop shares it out:
//! the batch is cut into chunks, and the poll loop and the helper each
//! claim the next chunk until none is left. The poll loop never waits for
//! a chunk nobody has started: if the helper is asleep or descheduled, the
//! poll loop decodes the whole batch itself, as before. It waits only for
//! a chunk the helper is decoding, usually a few microseconds. It spins
//! that long, then sleeps until the helper wakes it: a helper preempted
//! inside its chunk waits for a CPU, for milliseconds on a busy machine,
//! and a poll loop spinning (or yielding, which keeps its CPU busy too)
//! would hold its own CPU all that time, where sleeping leaves it to the
//! threads the helper waits behind. The results keep the batch's order,
//! so the fold sees exactly what it saw before.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// Items a chunk holds: about 10 to 20 µs of decoding, so that the two
/// threads come out even and the poll loop's wait for the helper's last
/// chunk stays short.
pub(crate) const CHUNK: usize = 64;

/// Batches this long or longer are shared; shorter ones, as a live load's
/// usually are, are mapped on the calling thread alone.
pub(crate) const SPLIT_FROM: usize = 2 * CHUNK;

/// Spins the calling thread makes for the helper's last chunk before it
/// sleeps until the helper wakes it: some tens of microseconds, more
/// than a chunk's decoding takes.
const SPINS_BEFORE_SLEEP: u32 = 1_000;

/// Maps batches on the calling thread and a helper thread of its own.
pub(crate) struct SplitMap {
    inner: Arc<Inner>,
    helper: Option<JoinHandle<()>>,
}

struct Inner {
    /// The batch being shared out, if any.
    offered: Mutex<Option<Arc<Job>>>,
    wake: Condvar,
    stop: AtomicBool,
}

/// One batch, in chunks. `context` points at the calling thread's
/// [`Context`], which outlives every claimed chunk: the caller does not
/// return before each claimed chunk is done.
struct Job {
    run: unsafe fn(*const (), usize, usize),
    context: *const (),
    len: usize,
    chunks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
    /// The calling thread, and whether it sleeps waiting for the last
    /// chunk: whoever finishes that chunk then wakes it.
    caller: Thread,
    caller_asleep: AtomicBool,
}

// SAFETY: `context` is only dereferenced for a claimed chunk, while the
// calling thread waits for that chunk (see `SplitMap::map`), and each chunk
// touches its own items and result slots only.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// Claims and maps chunks until none is left.
    fn work(&self) {
        loop {
            let chunk = self.next.fetch_add(1, Relaxed);
            if chunk >= self.chunks {
                return;
            }
            let start = chunk * CHUNK;
            let end = (start + CHUNK).min(self.len);
            // SAFETY: the chunk is this thread's alone, and `context` lives
            // until it is counted done.
            let mapped = catch_unwind(AssertUnwindSafe(|| unsafe { (self.run)(self.context, start, end) }));
            if mapped.is_err() {
                self.panicked.store(true, Relaxed);
            }
            // SeqCst with the caller's store of `caller_asleep` then load of
            // `done`: either it sees this chunk done, or this sees it asleep.
            if self.done.fetch_add(1, SeqCst) + 1 == self.chunks && self.caller_asleep.load(SeqCst) {
                self.caller.unpark();
            }
        }
    }

    /// Waits until every chunk is done: spins, then sleeps until woken.
    /// Returns how long it waited.
    fn wait_done(&self) -> Duration {
        if self.done.load(Acquire) >= self.chunks {
            return Duration::ZERO;
        }
        let started = Instant::now();
        let mut spins = 0u32;
        while self.done.load(Acquire) < self.chunks {
            // The helper is inside its last chunk.
            if spins < SPINS_BEFORE_SLEEP {
                spins += 1;
                std::hint::spin_loop();
            } else {
                self.caller_asleep.store(true, SeqCst);
                if self.done.load(SeqCst) < self.chunks {
                    // Returns at the unpark, or spuriously: the loop checks again.
                    std::thread::park();
                }
            }
        }
        started.elapsed()
    }
}

/// What a chunk needs: the input, where its results go, the function.
struct Context<'a, T, R, F> {
    input: &'a [T],
    output: *mut R,
    map: &'a F,
}

/// Maps `input[start..end]` into the same slots of `output`.
///
/// # Safety
/// `context` is a live `Context<T, R, F>` whose output has room for its
/// input, and no other thread touches these items or slots meanwhile.
unsafe fn run_chunk<T, R, F: Fn(&T) -> R>(context: *const (), start: usize, end: usize) {
    let c = &*(context as *const Context<'_, T, R, F>);
    for i in start..end {
        c.output.add(i).write((c.map)(&c.input[i]));
    }
}

impl SplitMap {
    /// Starts the helper thread, named `name`.
    pub(crate) fn start(name: &str) -> std::io::Result<SplitMap> {
        let inner = Arc::new(Inner { offered: Mutex::new(None), wake: Condvar::new(), stop: AtomicBool::new(false) });
        let theirs = inner.clone();
        let helper = std::thread::Builder::new().name(name.into()).spawn(move || helper(&theirs))?;
        Ok(SplitMap { inner, helper: Some(helper) })
    }

    /// `output` cleared, then `map` of each item of `input`, in order.
    /// Batches shorter than [`SPLIT_FROM`] are mapped on this thread alone.
    /// A panic in `map`, on either thread, panics here once the batch is
    /// done with.
    ///
    /// Each item is handed to one thread only (hence `T: Send`, not `Sync`).
    /// Returns how long this thread waited for the helper's last chunk.
    pub(crate) fn map<T: Send, R: Send, F: Fn(&T) -> R + Sync>(
        &self,
        input: &[T],
        map: &F,
        output: &mut Vec<R>,
    ) -> Duration {
        output.clear();
        if input.len() < SPLIT_FROM {
            output.extend(input.iter().map(map));
            return Duration::ZERO;
        }
        output.reserve(input.len());
        let context = Context { input, output: output.as_mut_ptr(), map };
        let job = Arc::new(Job {
            run: run_chunk::<T, R, F>,
            context: &context as *const Context<'_, T, R, F> as *const (),
            len: input.len(),
            chunks: input.len().div_ceil(CHUNK),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            caller: std::thread::current(),
            caller_asleep: AtomicBool::new(false),
        });
        *self.inner.offered.lock().expect("split lock") = Some(job.clone());
        self.inner.wake.notify_one();
        job.work();
        // Every chunk is claimed: a helper waking now finds nothing to do.
        self.inner.offered.lock().expect("split lock").take();
        let waited = job.wait_done();
        assert!(!job.panicked.load(Relaxed), "mapping a batch panicked");
        // SAFETY: every slot below `len` was written, each once, and the
        // Acquire in `wait_done` orders the helper's writes before this.
        unsafe { output.set_len(input.len()) };
        waited
    }
}

fn helper(inner: &Inner) {
    loop {
        let job = {
            let mut offered = inner.offered.lock().expect("split lock");
            loop {
                if inner.stop.load(Relaxed) {
                    return;
                }
                if let Some(job) = offered.take() {
                    break job;
                }
                offered = inner.wake.wait(offered).expect("split lock");
            }
        };
        job.work();
    }
}

impl Drop for SplitMap {
    fn drop(&mut self) {
        {
            let _offered = self.inner.offered.lock().expect("split lock");
            self.inner.stop.store(true, Release);
        }
        self.inner.wake.notify_one();
        if let Some(helper) = self.helper.take() {
            let _ = helper.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any batch size, in order, each item mapped once: against a plain map.
        #[test]
        fn maps_every_item_once_in_order(len in 0usize..2_000, batches in 1usize..4) {
            let split = SplitMap::start("test-split").unwrap();
            let mut out = Vec::new();
            for b in 0..batches {
                let input: Vec<String> = (0..len).map(|i| format!("{b}-{i}")).collect();
                let calls = AtomicUsize::new(0);
                let map = |s: &String| {
                    calls.fetch_add(1, Relaxed);
                    s.len() as u64 * 31 + s.as_bytes()[0] as u64
                };
                split.map(&input, &map, &mut out);
                let expected: Vec<u64> = input.iter().map(|s| s.len() as u64 * 31 + s.as_bytes()[0] as u64).collect();
                prop_assert_eq!(&out, &expected);
                prop_assert_eq!(calls.load(Relaxed), len);
            }
        }
    }

    /// A helper, the calling thread's id, and a batch of sixteen chunks.
    fn sixteen_chunks() -> (SplitMap, std::thread::ThreadId, Vec<u64>) {
        (SplitMap::start("test-split").unwrap(), std::thread::current().id(), (0..CHUNK as u64 * 16).collect())
    }

    /// With work to share, the helper takes some of it.
    #[test]
    fn the_helper_takes_chunks() {
        let (split, here, input) = sixteen_chunks();
        let mut out = Vec::new();
        let mut helped = false;
        for _ in 0..200 {
            split.map(
                &input,
                &|x: &u64| {
                    // Slow enough that the helper wakes before the batch is done.
                    std::thread::sleep(Duration::from_micros(20));
                    (*x, std::thread::current().id() != here)
                },
                &mut out,
            );
            assert!(out.iter().enumerate().all(|(i, &(x, _))| x == i as u64));
            if out.iter().any(|&(_, by_helper)| by_helper) {
                helped = true;
                break;
            }
        }
        assert!(helped, "the helper thread never took a chunk");
    }

    /// A helper held up inside its chunk (as when it is preempted) until
    /// the calling thread has mapped every other chunk and gone on
    /// waiting: the caller sleeps until the helper finishes and wakes it,
    /// then has every item in order, and says how long it waited.
    #[test]
    fn a_helper_held_up_in_its_chunk_wakes_the_caller() {
        let (split, here, input) = sixteen_chunks();
        let mut out = Vec::new();
        let mut waited_for_the_helper = None;
        for _ in 0..200 {
            let (held, mapped_here) = (AtomicBool::new(false), AtomicUsize::new(0));
            let waited = split.map(
                &input,
                &|x: &u64| {
                    if std::thread::current().id() == here {
                        // Slow enough that the helper wakes before the batch is done.
                        std::thread::sleep(Duration::from_micros(20));
                        mapped_here.fetch_add(1, Relaxed);
                    } else if !held.swap(true, Relaxed) {
                        while mapped_here.load(Relaxed) < input.len() - CHUNK {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    *x
                },
                &mut out,
            );
            assert_eq!(out, input);
            if held.load(Relaxed) {
                waited_for_the_helper = Some(waited);
                break;
            }
        }
        let waited = waited_for_the_helper.expect("the helper thread never took a chunk");
        assert!(waited >= Duration::from_millis(15), "returned before the helper's chunk was done: {waited:?}");
        // The next batch is mapped whole, the wake-up's token notwithstanding.
        split.map(&input, &|x: &u64| *x * 2, &mut out);
        assert_eq!(out, input.iter().map(|x| x * 2).collect::<Vec<_>>());
    }

    /// A panic on either thread comes out of `map`; the helper lives on.
    #[test]
    fn a_panic_comes_out_of_map() {
        let split = SplitMap::start("test-split").unwrap();
        let input: Vec<u64> = (0..CHUNK as u64 * 8).collect();
        let mut out = Vec::new();
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            split.map(&input, &|x: &u64| if *x == 300 { panic!("bad item") } else { *x }, &mut out)
        }));
        assert!(panicked.is_err());
        split.map(&input, &|x: &u64| *x + 1, &mut out);
        assert_eq!(out, (1..=input.len() as u64).collect::<Vec<_>>());
    }
}
