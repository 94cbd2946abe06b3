//! Folded records destroyed on a thread of their own.
//!
//! Destroying a record gives its memory and its references (to the fetch
//! response's buffer, to its partition) back to librdkafka: 6% of the poll
//! loop thread's time in a drain, and the drain's rate is bound by that
//! thread while the machine has part of its second core to spare (the
//! drain bench reports both). Nothing reads a record once it is folded, so
//! the poll loop hands a large batch over and goes on. It never waits for
//! the thread: with batches backed up (or the thread gone), it destroys
//! the batch itself. Measured alone this gained nothing; with decoding
//! shared too ([`crate::split`]) the two gained 2 to 6% (BENCHMARKS.md).
//! Batches gather into a hand-over of several thousand records, since
//! each hand-over wakes the thread; the loop hands over what it has
//! gathered when it finds no input.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Batches handed over and not yet destroyed, at most.
const RETIRING_BATCHES: usize = 4;

/// Items gathered before they are handed over. A hand-over wakes the
/// thread, and waking it cost the poll loop the futex call and, often, its
/// CPU to the thread it woke (about 2% of the loop's samples in a drain,
/// handing over each batch of up to 1,024 records).
const HAND_OVER_AT: usize = 8 * 1024;

/// Drops batches of `T` on a thread of its own. Dropping the `Retirer`
/// drops every batch handed over before it returns: the worker drops its
/// retirer before it closes the consumer, since records must be gone
/// before the consumer is.
pub(crate) struct Retirer<T: Send + 'static> {
    /// Items retired and not yet handed over (dropped with the retirer
    /// if never handed over).
    gathered: Vec<T>,
    to_drop: Option<SyncSender<Vec<T>>>,
    /// Emptied batches, for their capacity.
    emptied: Receiver<Vec<T>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Retirer<T> {
    /// Starts the thread, named `name`.
    pub(crate) fn start(name: &str) -> std::io::Result<Retirer<T>> {
        let (to_drop, batches) = sync_channel::<Vec<T>>(RETIRING_BATCHES);
        let (give_back, emptied) = sync_channel(RETIRING_BATCHES);
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            for mut batch in batches {
                batch.clear();
                // Full: the poll loop has spares enough.
                let _ = give_back.try_send(batch);
            }
        })?;
        Ok(Retirer { gathered: Vec::new(), to_drop: Some(to_drop), emptied, thread: Some(thread) })
    }

    /// Takes `batch`'s items to be dropped, and leaves `batch` empty, its
    /// room kept. They are handed over once [`HAND_OVER_AT`] have gathered
    /// (or at [`Retirer::hand_over`]).
    pub(crate) fn retire(&mut self, batch: &mut Vec<T>) {
        self.gathered.append(batch);
        if self.gathered.len() >= HAND_OVER_AT {
            self.hand_over();
        }
    }

    /// Hands the items gathered over now: for a caller going idle, so that
    /// what they hold (records pin their fetch buffers) is not kept.
    pub(crate) fn hand_over(&mut self) {
        if self.gathered.is_empty() {
            return;
        }
        // A recycled batch may be smaller than this one was.
        let mut spare = self.emptied.try_recv().unwrap_or_default();
        spare.reserve(self.gathered.capacity());
        let full = std::mem::replace(&mut self.gathered, spare);
        if let Some(to_drop) = &self.to_drop {
            // Full, or the thread gone: the error hands the batch back, and
            // it is dropped here.
            let _ = to_drop.try_send(full);
        }
    }
}

impl<T: Send + 'static> Drop for Retirer<T> {
    fn drop(&mut self) {
        self.gathered.clear();
        // The thread drops what it holds, then sees the channel closed.
        self.to_drop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::{Arc, Mutex};
    use std::thread::ThreadId;
    use std::time::Duration;

    /// Counts its drops, and where they happened; slow to drop if asked.
    struct Tracked {
        drops: Arc<AtomicUsize>,
        threads: Arc<Mutex<Vec<ThreadId>>>,
        slow: bool,
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            if self.slow {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.threads.lock().unwrap().push(std::thread::current().id());
            self.drops.fetch_add(1, Relaxed);
        }
    }

    /// Waits until `n` items are dropped (at most a minute: a stalled
    /// machine, not a slow thread, fails it).
    fn wait_for(drops: &AtomicUsize, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while drops.load(Relaxed) < n {
            assert!(std::time::Instant::now() < deadline, "{} of {n} dropped", drops.load(Relaxed));
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn batch(n: usize, drops: &Arc<AtomicUsize>, threads: &Arc<Mutex<Vec<ThreadId>>>, slow: bool) -> Vec<Tracked> {
        (0..n).map(|_| Tracked { drops: drops.clone(), threads: threads.clone(), slow }).collect()
    }

    /// Every item handed over is dropped once the retirer is, mostly on
    /// its thread; the batch comes back empty with room for as many.
    #[test]
    fn drops_every_item_by_the_time_it_is_dropped() {
        let (drops, threads) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
        let mut retirer = Retirer::start("test-retire").unwrap();
        let mut handed = 0;
        for n in [0, 1, HAND_OVER_AT, 7, 300, 2 * HAND_OVER_AT] {
            let mut b = batch(n, &drops, &threads, false);
            handed += n;
            retirer.retire(&mut b);
            assert!(b.is_empty(), "the batch comes back empty");
            assert!(b.capacity() >= n, "its room kept");
            // The thread empties what it was handed meanwhile: the next
            // hand-over gets it back.
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut last = batch(5, &drops, &threads, false);
        retirer.retire(&mut last);
        wait_for(&drops, handed);
        assert_eq!(drops.load(Relaxed), handed, "gathered until enough are");
        retirer.hand_over();
        wait_for(&drops, handed + 5);
        let mut kept = batch(3, &drops, &threads, false);
        retirer.retire(&mut kept);
        drop(retirer);
        assert_eq!(drops.load(Relaxed), handed + 8, "every item dropped, once, gathered ones too");
        let here = std::thread::current().id();
        assert!(threads.lock().unwrap().iter().any(|&t| t != here), "the retirer's thread dropped some");
    }

    /// A retirer backed up never makes the caller wait for it: the caller
    /// drops the batch itself.
    #[test]
    fn a_backed_up_retirer_does_not_block() {
        let (drops, threads) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
        let mut retirer = Retirer::start("test-retire").unwrap();
        // Each slow batch takes the thread 100 ms; twice the channel's room.
        for _ in 0..2 * RETIRING_BATCHES + 2 {
            let mut b = batch(20, &drops, &threads, true);
            retirer.retire(&mut b);
            retirer.hand_over();
        }
        let here = std::thread::current().id();
        assert!(
            threads.lock().unwrap().iter().any(|&t| t == here),
            "batches beyond the channel's room are dropped here"
        );
        drop(retirer);
        assert_eq!(drops.load(Relaxed), 20 * (2 * RETIRING_BATCHES + 2));
    }
}
