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

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Batches handed over and not yet destroyed, at most.
const RETIRING_BATCHES: usize = 4;

/// Drops batches of `T` on a thread of its own. Dropping the `Retirer`
/// drops every batch handed over before it returns: the worker drops its
/// retirer before it closes the consumer, since records must be gone
/// before the consumer is.
pub(crate) struct Retirer<T: Send + 'static> {
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
        Ok(Retirer { to_drop: Some(to_drop), emptied, thread: Some(thread) })
    }

    /// Takes `batch`'s items to be dropped, and leaves `batch` empty, with
    /// room for as many.
    pub(crate) fn retire(&self, batch: &mut Vec<T>) {
        if batch.is_empty() {
            return;
        }
        // A recycled batch may be smaller than this one was.
        let mut spare = self.emptied.try_recv().unwrap_or_default();
        spare.reserve(batch.capacity());
        let full = std::mem::replace(batch, spare);
        if let Some(to_drop) = &self.to_drop {
            // Full, or the thread gone: the error hands the batch back, and
            // it is dropped here.
            let _ = to_drop.try_send(full);
        }
    }
}

impl<T: Send + 'static> Drop for Retirer<T> {
    fn drop(&mut self) {
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

    fn batch(n: usize, drops: &Arc<AtomicUsize>, threads: &Arc<Mutex<Vec<ThreadId>>>, slow: bool) -> Vec<Tracked> {
        (0..n).map(|_| Tracked { drops: drops.clone(), threads: threads.clone(), slow }).collect()
    }

    /// Every item handed over is dropped once the retirer is, mostly on
    /// its thread; the batch comes back empty with room for as many.
    #[test]
    fn drops_every_item_by_the_time_it_is_dropped() {
        let (drops, threads) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
        let retirer = Retirer::start("test-retire").unwrap();
        let mut handed = 0;
        for n in [0, 1, 1024, 7, 300] {
            let mut b = batch(n, &drops, &threads, false);
            handed += n;
            retirer.retire(&mut b);
            assert!(b.is_empty(), "the batch comes back empty");
            assert!(b.capacity() >= n, "with room for as many");
            // The thread empties it meanwhile: the next batch gets it back,
            // smaller than itself when it follows a small one.
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(retirer);
        assert_eq!(drops.load(Relaxed), handed, "every item dropped, once");
        let here = std::thread::current().id();
        assert!(threads.lock().unwrap().iter().any(|&t| t != here), "the retirer's thread dropped some");
    }

    /// A retirer backed up never makes the caller wait for it: the caller
    /// drops the batch itself.
    #[test]
    fn a_backed_up_retirer_does_not_block() {
        let (drops, threads) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
        let retirer = Retirer::start("test-retire").unwrap();
        // Each slow batch takes the thread 100 ms; twice the channel's room.
        for _ in 0..2 * RETIRING_BATCHES + 2 {
            let mut b = batch(20, &drops, &threads, true);
            retirer.retire(&mut b);
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
