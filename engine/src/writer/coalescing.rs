//! A helper thread that runs the newest request it is offered, so requests never queue up
//! behind a slow filesystem. A file's writer uses two: one saves the resume state (a rename
//! can wait for a journal commit, which stalled every connection of the object when it ran on
//! the writer thread), one starts writeback (`sync_file_range` took about a sixth of the writer
//! thread's time). See the [module](super) documentation for the measurements.

use common::sync::{CondvarExt, MutexExt};
use std::sync::{Arc, Condvar, Mutex};

/// A helper thread that runs `work` on what it is offered, newest first: an offer replaces
/// one not yet taken, so requests never queue up behind a slow filesystem.
pub(super) struct Coalescing<T> {
    slot: Arc<(Mutex<Slot<T>>, Condvar)>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Slot<T> {
    pending: Option<T>,
    finished: bool,
}

impl<T: Send + 'static> Coalescing<T> {
    pub(super) fn start(name: &str, mut work: impl FnMut(T) + Send + 'static) -> Self {
        let slot = Arc::new((
            Mutex::new(Slot {
                pending: None,
                finished: false,
            }),
            Condvar::new(),
        ));
        let shared = slot.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let (lock, wake) = &*shared;
                loop {
                    let next = {
                        let mut slot = lock.lock_unpoisoned();
                        while slot.pending.is_none() && !slot.finished {
                            slot = wake.wait_unpoisoned(slot);
                        }
                        match slot.pending.take() {
                            Some(item) => item,
                            None => return,
                        }
                    };
                    work(next);
                }
            })
            .ok();
        Self {
            slot,
            thread: Mutex::new(thread),
        }
    }

    /// Queues `item`, replacing one still waiting.
    pub(super) fn offer(&self, item: T) {
        let (lock, wake) = &*self.slot;
        lock.lock_unpoisoned().pending = Some(item);
        wake.notify_one();
    }

    /// Runs what is pending and waits for the thread to end.
    pub(super) fn finish(&self) {
        let (lock, wake) = &*self.slot;
        lock.lock_unpoisoned().finished = true;
        wake.notify_one();
        let thread = self.thread.lock_unpoisoned().take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc as std_mpsc;

    #[test]
    fn coalescing_runs_the_newest_offer_and_everything_pending_at_finish() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (entered_tx, entered) = std_mpsc::channel();
        let (release, release_rx) = std_mpsc::channel::<()>();
        let record = seen.clone();
        let helper = Coalescing::start("test", move |item: u32| {
            if item == 1 {
                // Hold the thread inside the first item while more offers arrive.
                entered_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            }
            record.lock().unwrap().push(item);
        });
        helper.offer(1);
        entered.recv().unwrap();
        for item in 2..=4 {
            helper.offer(item);
        }
        release.send(()).unwrap();
        helper.finish();
        // 2 and 3 were replaced before the thread was free; 4 ran before finish returned.
        assert_eq!(*seen.lock().unwrap(), vec![1, 4]);
    }

    #[test]
    fn coalescing_finish_without_offers_runs_nothing_and_ends_the_thread() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = runs.clone();
        let helper = Coalescing::start("test", move |()| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        helper.finish();
        assert!(helper.thread.lock().unwrap().is_none());
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
