//! One writer thread per temporary file, which also keeps its resume state.
//!
//! Parts arrive on many connections at once, but a filesystem serialises buffered writes to one
//! file (ext4 holds the inode lock for each `pwrite`), so parallel writers only spin on that
//! lock and burn the CPU the downloads need. Parts therefore hand their bytes to the file's
//! single writer through a small bounded channel (back-pressure, not buffering).
//!
//! When a part has handed over its last byte it sends `PartDone`. The writer handles commands
//! in order, so by then every byte of the part is written: only then does it record the part
//! in the resume state (saved at most every [`SAVE_EVERY`] and when the download ends, never
//! from an async task) and tell the in-order MD5 follower. It also starts writeback early
//! (`sync_file_range`), so the fsync before promotion has little left to do.
//!
//! The writer thread only copies bytes into the page cache; with one file it is the busiest
//! thread of the process, so everything that can block or burn CPU beside it runs on two
//! helper threads per file ([`Coalescing`]: the newest request wins, none queue up):
//! - saving the resume state: renaming a state file waits for a journal commit, which on ext4
//!   waits for data being written back, measured up to 0.9 s while a 2 GiB object streamed in;
//!   on the writer thread that stalled every connection of the object;
//! - starting writeback: `sync_file_range` allocates blocks and builds the I/O, about a sixth
//!   of the writer thread's time in a profile; moved off it, one 2 GiB object went from 1.36x
//!   to 1.21x s5cmd's wall time (medians of 15 alternating rounds of `bench/run.py`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::mirror::ResumeState;
use crate::ordered_md5::PartDone;
use crate::verify::PartDigest;

/// Chunks queued per file; each is one network read (up to 512 KiB).
const QUEUE_DEPTH: usize = 8;
/// Start writeback after this many bytes.
const WRITEBACK_EVERY: u64 = 16 << 20;
/// Longest time a finished part waits to be saved in the resume state.
pub const SAVE_EVERY: Duration = Duration::from_millis(500);

enum Command {
    Write { offset: u64, data: Bytes },
    PartDone { index: u64, digest: PartDigest },
}

/// How the writer ended.
pub struct WriterOutcome {
    /// The resume state with every part recorded as done.
    pub state: ResumeState,
    /// The first write error, if any (then the object failed).
    pub failure: Option<String>,
}

/// A handle for sending bytes to a file's writer. Cloned into every part of the object.
#[derive(Clone)]
pub struct FileWriter {
    tx: mpsc::Sender<Command>,
}

impl FileWriter {
    /// Starts the writer of `file` on a blocking thread, with the resume state to extend and
    /// where to save it. It ends, saving the state, when every handle is dropped.
    pub fn start(
        file: Arc<File>,
        state: ResumeState,
        state_path: PathBuf,
        follower: Option<PartDone>,
    ) -> (Self, tokio::task::JoinHandle<WriterOutcome>) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let task = tokio::task::spawn_blocking(move || {
            let writeback_file = file.clone();
            let mut writer = Writer {
                file,
                state,
                saver: Coalescing::start("era5-state", move |state: ResumeState| {
                    if let Err(error) = state.save(&state_path) {
                        // Only resumability suffers: the parts are downloaded again after a crash.
                        tracing::warn!(path = %state_path.display(), %error, "could not save the resume state");
                    }
                }),
                writeback: Coalescing::start("era5-writeback", move |()| {
                    // SAFETY: a plain syscall on a descriptor kept open by the Arc; offset 0
                    // and length 0 mean the whole file. It starts writeback and does not wait
                    // for it.
                    unsafe {
                        libc::sync_file_range(
                            writeback_file.as_raw_fd(),
                            0,
                            0,
                            libc::SYNC_FILE_RANGE_WRITE,
                        );
                    }
                }),
                follower,
                failure: None,
                since_writeback: 0,
                unsaved: false,
                last_save: Instant::now(),
            };
            writer.run(rx);
            WriterOutcome {
                state: writer.state,
                failure: writer.failure,
            }
        });
        (Self { tx }, task)
    }

    /// Queues `data` for `offset`. Fails only if the writer has stopped.
    pub async fn write(&self, offset: u64, data: Bytes) -> Result<(), String> {
        self.send(Command::Write { offset, data }).await
    }

    /// Declares part `index` complete, once all its bytes were queued.
    pub async fn part_done(&self, index: u64, digest: PartDigest) -> Result<(), String> {
        self.send(Command::PartDone { index, digest }).await
    }

    async fn send(&self, command: Command) -> Result<(), String> {
        self.tx
            .send(command)
            .await
            .map_err(|_| "the file writer stopped".to_string())
    }
}

struct Writer {
    file: Arc<File>,
    state: ResumeState,
    saver: Coalescing<ResumeState>,
    writeback: Coalescing<()>,
    follower: Option<PartDone>,
    failure: Option<String>,
    since_writeback: u64,
    unsaved: bool,
    last_save: Instant,
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(command) = rx.blocking_recv() {
            if self.failure.is_some() {
                continue;
            }
            match command {
                Command::Write { offset, data } => self.write(offset, &data),
                Command::PartDone { index, digest } => {
                    self.state.parts.insert(index, digest);
                    self.unsaved = true;
                    if let Some(follower) = &self.follower {
                        follower.send(index);
                    }
                    if self.last_save.elapsed() >= SAVE_EVERY {
                        self.save();
                    }
                }
            }
        }
        // The download finished, failed or was cancelled: keep what is done for a resume.
        if self.unsaved && self.failure.is_none() {
            self.save();
        }
        // Every save is on disk before the outcome is known: the engine may remove the state
        // next, and a late save must not bring it back.
        self.saver.finish();
        self.writeback.finish();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Err(error) = self.file.write_all_at(data, offset) {
            self.failure = Some(format!("writing the temporary file failed: {error}"));
            return;
        }
        self.since_writeback += data.len() as u64;
        if self.since_writeback >= WRITEBACK_EVERY {
            self.since_writeback = 0;
            self.writeback.offer(());
        }
    }

    fn save(&mut self) {
        self.last_save = Instant::now();
        self.unsaved = false;
        self.saver.offer(self.state.clone());
    }
}

/// A helper thread that runs `work` on what it is offered, newest first: an offer replaces
/// one not yet taken, so requests never queue up behind a slow filesystem.
struct Coalescing<T> {
    slot: Arc<(Mutex<Slot<T>>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Slot<T> {
    pending: Option<T>,
    finished: bool,
}

impl<T: Send + 'static> Coalescing<T> {
    fn start(name: &str, mut work: impl FnMut(T) + Send + 'static) -> Self {
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
                        let mut slot = lock.lock().unwrap_or_else(|e| e.into_inner());
                        while slot.pending.is_none() && !slot.finished {
                            slot = wake.wait(slot).unwrap_or_else(|e| e.into_inner());
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
        Self { slot, thread }
    }

    /// Queues `item`, replacing one still waiting.
    fn offer(&self, item: T) {
        let (lock, wake) = &*self.slot;
        lock.lock().unwrap_or_else(|e| e.into_inner()).pending = Some(item);
        wake.notify_one();
    }

    /// Runs what is pending and waits for the thread to end.
    fn finish(&mut self) {
        let (lock, wake) = &*self.slot;
        lock.lock().unwrap_or_else(|e| e.into_inner()).finished = true;
        wake.notify_one();
        if let Some(thread) = self.thread.take() {
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
        let mut helper = Coalescing::start("test", move |item: u32| {
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
        let mut helper = Coalescing::start("test", move |()| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        helper.finish();
        assert!(helper.thread.is_none());
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}
