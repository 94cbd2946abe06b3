//! A batch mapped on two threads: the poll loop and one helper.
//!
//! The drain is bound by the poll loop thread, while the machine has part
//! of its second core to spare (the drain bench reports both). Decoding a
//! batch's records needs no engine state, so the poll loop shares it out:
//! the batch is cut into chunks, which the helper claims in order while
//! the poll loop folds the chunks before them. The poll loop takes each
//! chunk's results as soon as they are there, in the batch's order, so
//! the fold sees exactly what it saw before. It never waits for a chunk
//! nobody has started: one nobody has claimed yet it maps itself (all of
//! them if the helper is asleep or descheduled), and while the helper is
//! inside the chunk it needs, it maps later unclaimed ones. It waits
//! only when every chunk is claimed, for one the helper is mapping, a few
//! microseconds.
//!
//! Before, the batch was mapped whole before the fold began, both threads
//! claiming chunks until none was left: the poll loop mapped about half of
//! every batch itself.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Items a chunk holds: about 10 to 20 µs of decoding, so that the two
/// threads come out even and the poll loop's wait for the helper's last
/// chunk stays short.
pub(crate) const CHUNK: usize = 64;

/// Batches this long or longer are shared; shorter ones, as a live load's
/// usually are, are mapped on the calling thread alone.
pub(crate) const SPLIT_FROM: usize = 2 * CHUNK;

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
    /// The next chunk to claim: chunks below it are claimed.
    next: AtomicUsize,
    /// Each chunk's results written (Release), in chunk order.
    done: Box<[AtomicBool]>,
    panicked: AtomicBool,
}

// SAFETY: `context` is only dereferenced for a claimed chunk, while the
// calling thread waits for that chunk (see `SplitMap::map_each`), and each
// chunk touches its own items and result slots only.
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// The next unclaimed chunk, now this thread's.
    fn claim(&self) -> Option<usize> {
        let chunk = self.next.fetch_add(1, Relaxed);
        (chunk < self.chunks).then_some(chunk)
    }

    /// Maps a chunk this thread claimed, and marks it done.
    fn map_chunk(&self, chunk: usize) {
        let start = chunk * CHUNK;
        let end = (start + CHUNK).min(self.len);
        // SAFETY: the chunk is this thread's alone, and `context` lives
        // until it is marked done.
        let mapped = catch_unwind(AssertUnwindSafe(|| unsafe { (self.run)(self.context, start, end) }));
        if mapped.is_err() {
            self.panicked.store(true, Relaxed);
        }
        self.done[chunk].store(true, Release);
    }

    /// The helper's part: claims and maps chunks until none is left.
    fn work(&self) {
        while let Some(chunk) = self.claim() {
            self.map_chunk(chunk);
        }
    }

    /// The caller's part, with every chunk before `chunk` done: waits until
    /// `chunk` is done, mapping it here if nobody has claimed it, and
    /// mapping later unclaimed chunks while the helper is inside it.
    fn finish(&self, chunk: usize) {
        // Chunks below `chunk` are claimed, so `next` is `chunk` exactly if
        // nobody has claimed it.
        if self.next.compare_exchange(chunk, chunk + 1, Relaxed, Relaxed).is_ok() {
            self.map_chunk(chunk);
            return;
        }
        let mut spins = 0u32;
        while !self.done[chunk].load(Acquire) {
            if let Some(later) = self.claim() {
                self.map_chunk(later);
                continue;
            }
            // The helper is inside it, and nothing is left to claim.
            spins += 1;
            if spins < 1_000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Stops any further claim, then waits for every claimed chunk: after
    /// this, no thread touches the caller's input or output.
    fn settle(&self) {
        let claimed = self.next.fetch_max(self.chunks, Relaxed).min(self.chunks);
        for done in &self.done[..claimed] {
            while !done.load(Acquire) {
                std::thread::yield_now();
            }
        }
    }
}

/// Withdraws a batch's job when the caller is done with it, normally or by
/// a panic in its own code: the helper finds nothing more, and nothing
/// claimed is still being mapped once this drops.
struct Withdraw<'a> {
    inner: &'a Inner,
    job: &'a Job,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        self.inner.offered.lock().expect("split lock").take();
        self.job.settle();
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

    /// `output` cleared, then `map` of each item of `input`, in order; as
    /// results come, hands each run of them to `each`, with where the run
    /// starts in `input`: the runs cover `input` in order, without gaps.
    /// Batches shorter than [`SPLIT_FROM`] are mapped on this thread alone,
    /// and handed over in one run. A panic in `map`, on either thread,
    /// panics here once the batch is done with, before the run holding
    /// it is handed over.
    ///
    /// Each item is handed to one thread only (hence `T: Send`, not `Sync`).
    pub(crate) fn map_each<T: Send, R: Send, F: Fn(&T) -> R + Sync>(
        &self,
        input: &[T],
        map: &F,
        output: &mut Vec<R>,
        mut each: impl FnMut(usize, &[R]),
    ) {
        output.clear();
        if input.len() < SPLIT_FROM {
            output.extend(input.iter().map(map));
            each(0, output);
            return;
        }
        output.reserve(input.len());
        let context = Context { input, output: output.as_mut_ptr(), map };
        let chunks = input.len().div_ceil(CHUNK);
        let job = Arc::new(Job {
            run: run_chunk::<T, R, F>,
            context: &context as *const Context<'_, T, R, F> as *const (),
            len: input.len(),
            chunks,
            next: AtomicUsize::new(0),
            done: (0..chunks).map(|_| AtomicBool::new(false)).collect(),
            panicked: AtomicBool::new(false),
        });
        *self.inner.offered.lock().expect("split lock") = Some(job.clone());
        self.inner.wake.notify_one();
        {
            let _withdraw = Withdraw { inner: &self.inner, job: &job };
            for chunk in 0..chunks {
                job.finish(chunk);
                assert!(!job.panicked.load(Relaxed), "mapping a batch panicked");
                let start = chunk * CHUNK;
                let end = (start + CHUNK).min(input.len());
                // SAFETY: the chunk's slots were written, each once, and
                // the Acquire in `finish` orders that before this; nothing
                // writes them again.
                each(start, unsafe { std::slice::from_raw_parts(context.output.add(start), end - start) });
            }
        }
        // SAFETY: every slot below `len` was written, each once (every
        // chunk was finished above).
        unsafe { output.set_len(input.len()) };
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
                // Each run handed over, copied as it came.
                let mut runs: Vec<(usize, Vec<u64>)> = Vec::new();
                split.map_each(&input, &map, &mut out, |start, run| runs.push((start, run.to_vec())));
                let expected: Vec<u64> = input.iter().map(|s| s.len() as u64 * 31 + s.as_bytes()[0] as u64).collect();
                prop_assert_eq!(&out, &expected);
                prop_assert_eq!(calls.load(Relaxed), len);
                // The runs start where the one before ended, and hold the results.
                let mut next = 0;
                for (start, run) in &runs {
                    prop_assert_eq!(*start, next);
                    prop_assert_eq!(&run[..], &expected[next..next + run.len()]);
                    next += run.len();
                }
                prop_assert_eq!(next, len);
            }
        }
    }

    /// With work to share, the helper takes some of it.
    #[test]
    fn the_helper_takes_chunks() {
        let split = SplitMap::start("test-split").unwrap();
        let here = std::thread::current().id();
        let input: Vec<u64> = (0..CHUNK as u64 * 16).collect();
        let mut out = Vec::new();
        let mut helped = false;
        for _ in 0..200 {
            split.map_each(
                &input,
                &|x: &u64| {
                    // Slow enough that the helper wakes before the batch is done.
                    std::thread::sleep(std::time::Duration::from_micros(20));
                    (*x, std::thread::current().id() != here)
                },
                &mut out,
                |_, _| {},
            );
            assert!(out.iter().enumerate().all(|(i, &(x, _))| x == i as u64));
            if out.iter().any(|&(_, by_helper)| by_helper) {
                helped = true;
                break;
            }
        }
        assert!(helped, "the helper thread never took a chunk");
    }

    /// A panic on either thread comes out of `map`; the helper lives on.
    #[test]
    fn a_panic_comes_out_of_map() {
        let split = SplitMap::start("test-split").unwrap();
        let input: Vec<u64> = (0..CHUNK as u64 * 8).collect();
        let mut out = Vec::new();
        let mut handed = 0;
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            split.map_each(&input, &|x: &u64| if *x == 300 { panic!("bad item") } else { *x }, &mut out, |_, run| {
                handed += run.len()
            })
        }));
        assert!(panicked.is_err());
        assert!(handed <= 300 / CHUNK * CHUNK, "the run holding the panic was handed over ({handed} items)");
        split.map_each(&input, &|x: &u64| *x + 1, &mut out, |_, _| {});
        assert_eq!(out, (1..=input.len() as u64).collect::<Vec<_>>());
    }

    /// A panic in the caller's own code, while the helper maps later chunks,
    /// comes out of `map_each` once nothing touches the batch any more; the
    /// helper lives on.
    #[test]
    fn a_panic_in_each_comes_out_after_the_helper_is_done() {
        let split = SplitMap::start("test-split").unwrap();
        let input: Vec<u64> = (0..CHUNK as u64 * 16).collect();
        let mut out = Vec::new();
        let mapped = AtomicUsize::new(0);
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            split.map_each(
                &input,
                &|x: &u64| {
                    std::thread::sleep(std::time::Duration::from_micros(20));
                    mapped.fetch_add(1, Relaxed);
                    *x
                },
                &mut out,
                |start, _| {
                    if start >= CHUNK * 2 {
                        panic!("the fold failed")
                    }
                },
            )
        }));
        assert!(panicked.is_err());
        // Nothing maps after `map_each` returned: the count holds still.
        let after = mapped.load(Relaxed);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(mapped.load(Relaxed), after, "a chunk was still being mapped after map_each returned");
        split.map_each(&input, &|x: &u64| *x * 2, &mut out, |_, _| {});
        assert_eq!(out, input.iter().map(|x| x * 2).collect::<Vec<_>>());
    }

    /// The caller takes each run while the helper maps later ones: with a
    /// slow caller, the helper maps most of the batch.
    #[test]
    fn the_helper_maps_ahead_of_a_slow_caller() {
        let split = SplitMap::start("test-split").unwrap();
        let here = std::thread::current().id();
        let input: Vec<u64> = (0..CHUNK as u64 * 16).collect();
        let mut out = Vec::new();
        let mut best = 0;
        for _ in 0..20 {
            split.map_each(&input, &|_: &u64| std::thread::current().id() != here, &mut out, |_, _| {
                std::thread::sleep(std::time::Duration::from_millis(1))
            });
            best = best.max(out.iter().filter(|&&by_helper| by_helper).count());
            if best >= input.len() / 2 {
                break;
            }
        }
        assert!(best >= input.len() / 2, "the helper mapped at most {best} of {} items", input.len());
    }
}
