//! One writer thread per temporary file, which also keeps its resume state.
//!
//! Parts arrive on many connections at once, but a filesystem serialises buffered writes to one
//! file (ext4 holds the inode lock for each `pwrite`), so parallel writers only spin on that
//! lock and burn the CPU the downloads need. Parts therefore hand their bytes to the file's
//! single writer through a small bounded channel (back-pressure, not buffering).
//!
//! Two ways to the disk:
//! - **Direct** (see [`crate::direct_io`]), where the filesystem supports it: the writer only
//!   copies bytes into aligned stages; the engine's I/O threads write full stages.
//! - **Buffered** elsewhere: the writer copies into the page cache and starts writeback early
//!   (`sync_file_range`), so the fsync before promotion has little left to do.
//!
//! When a part has handed over its last byte it sends `PartDone`. **A part is recorded as done
//! (in the resume state and to the in-order MD5 follower) only after every byte of it is
//! written**: at once when buffered, when its last direct write ends otherwise. The resume
//! state is saved at most every [`SAVE_EVERY`] and when the download ends, never from an async
//! task.
//!
//! **A resume state never claims bytes that are not durable**: each save first makes the data
//! file durable (`fdatasync`), then writes the state to a temporary file, makes that durable
//! and renames it into place. The parts a save claims were all written before its
//! `fdatasync` began, so after a power loss the state on disk (the new one or the old one)
//! claims only bytes that reached the disk. The cost is one `fdatasync` per save, on a helper
//! thread, at most every [`SAVE_EVERY`]; downloads that are never resumed (a cluster lease's)
//! save nothing, and neither does a download at its end (it is verified and promoted next).
//!
//! **The first write error stops the object**: it is recorded, the object's cancellation
//! token fires (its parts stop at once, no more bytes are fetched), and nothing more is
//! written.
//!
//! What can block or burn CPU beside the writer thread runs on two helper threads per file
//! ([`Coalescing`]: the newest request wins, none queue up):
//! - saving the resume state: renaming a state file waits for a journal commit, which on ext4
//!   waits for data being written back, measured up to 0.9 s while a 2 GiB object streamed in;
//!   on the writer thread that stalled every connection of the object;
//! - starting writeback (buffered only): `sync_file_range` allocates blocks and builds the
//!   I/O, about a sixth of the writer thread's time in a profile; moved off it, one 2 GiB
//!   object went from 1.36x to 1.21x s5cmd's wall time (medians of 15 alternating rounds of
//!   `bench/run.py`).
//!
//! The module is split by concern:
//! - this file: the handle parts send through ([`FileWriter`]), the writer thread, and its
//!   two ways to the disk (direct stages and buffered writes with early writeback);
//! - [`record`]: what the writer thread and the I/O threads share: the first write error, and
//!   the record of which parts are fully written, which decides when the resume state is saved;
//! - [`coalescing`]: the helper threads (saving the resume state, starting writeback) on which
//!   the newest request wins.

use common::sync::CondvarExt;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::direct_io::{ALIGN, DirectFile, IoPool, STAGE, Stage};
use crate::disk::Reservation;
use crate::mirror::ResumeState;
use crate::ordered_md5::PartDone;
use crate::verify::PartDigest;

mod coalescing;
mod record;

use coalescing::Coalescing;
use record::{Failed, Record, Shared};

/// Chunks queued per file; each is one network read (up to 512 KiB).
const QUEUE_DEPTH: usize = 8;
/// Start writeback after this many buffered bytes.
const WRITEBACK_EVERY: u64 = 16 << 20;
/// Default longest time a finished part waits to be saved in the resume state
/// ([`ObjectIo::save_every`]). Each save costs an
/// `fdatasync` of the data (that is what makes the claim true), so saves are coalesced: a
/// crash loses at most this much progress, and a download shorter than this saves nothing.
/// At 1 s, full verification of the month workload measured up to 5-9% slower than without
/// saves on a busy machine; at 2 s half as many syncs remain.
pub const SAVE_EVERY: Duration = Duration::from_secs(2);

enum Command {
    Write {
        offset: u64,
        data: Bytes,
        /// The chunk's room in the memory budget, given back once it is written.
        room: Option<crate::memory::Reservation>,
    },
    PartDone {
        index: u64,
        digest: PartDigest,
    },
    /// A part already in the file (a resumed one that read back intact).
    Adopt {
        index: u64,
        digest: PartDigest,
    },
}

/// How the writer ended.
pub struct WriterOutcome {
    /// The resume state with every part recorded as done.
    pub state: ResumeState,
    /// The first write error, if any (then the object failed).
    pub failure: Option<std::io::Error>,
}

/// What the writer of one object needs besides its file.
pub struct ObjectIo {
    /// Where the resume state is saved; `None` for a download that is never resumed.
    pub state_path: Option<PathBuf>,
    /// Fired at the first write error: the object's parts stop.
    pub cancel: CancellationToken,
    /// The room promised to the object, given back as bytes land.
    pub reservation: Option<Arc<Reservation>>,
    /// Longest time a finished part waits to be saved ([`SAVE_EVERY`] by default).
    pub save_every: Duration,
}

/// What direct writes of one file need.
pub struct DirectSink {
    /// The file opened with `O_DIRECT`.
    pub direct: File,
    /// The threads that write stages.
    pub pool: Arc<IoPool>,
    /// The download's part size, a multiple of [`ALIGN`]; parts start at its multiples.
    pub part_size: u64,
}

/// A handle for sending bytes to a file's writer. Cloned into every part of the object.
#[derive(Clone)]
pub struct FileWriter {
    tx: mpsc::Sender<Command>,
}

impl FileWriter {
    /// Starts the writer of `file` on a blocking thread, with the resume state to extend and
    /// where to save it; with `direct`, aligned bytes go through direct I/O. It ends, saving
    /// the state, when every handle is dropped.
    pub fn start(
        file: Arc<File>,
        direct: Option<DirectSink>,
        state: ResumeState,
        io: ObjectIo,
        follower: Option<PartDone>,
    ) -> (Self, tokio::task::JoinHandle<WriterOutcome>) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let task = tokio::task::spawn_blocking(move || {
            let failed = Arc::new(Failed {
                error: Mutex::new(None),
                cancel: io.cancel,
            });
            let saver = io.state_path.map(|state_path| {
                let (data, failed) = (file.clone(), failed.clone());
                Coalescing::start("era5-state", move |state: ResumeState| {
                    // The data first: the state may claim only bytes already on the disk.
                    if let Err(error) = data.sync_data() {
                        failed.set(error);
                        return;
                    }
                    if let Err(error) = state.save(&state_path) {
                        // Only resumability suffers: the parts are downloaded again after a crash.
                        tracing::warn!(path = %state_path.display(), %error, "could not save the resume state");
                    }
                })
            });
            let shared = Arc::new(Shared {
                record: Mutex::new(Record {
                    state,
                    waiting: HashMap::new(),
                    in_flight: 0,
                    unsaved: false,
                    last_save: Instant::now(),
                }),
                failed,
                drained: Condvar::new(),
                saver,
                follower,
                save_every: io.save_every,
            });
            let writeback_file = file.clone();
            let direct = direct.map(|sink| Direct {
                file: Arc::new(DirectFile {
                    direct: sink.direct,
                    buffered: file.clone(),
                    done: shared.clone(),
                }),
                pool: sink.pool,
                part_size: sink.part_size,
                stages: HashMap::new(),
            });
            let mut writer = Writer {
                file,
                shared,
                direct,
                reservation: io.reservation,
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
                since_writeback: 0,
            };
            writer.run(rx)
        });
        (Self { tx }, task)
    }

    /// Queues `data` for `offset`, holding `room` in the memory budget until it is written.
    /// Fails only if the writer has stopped.
    pub async fn write(
        &self,
        offset: u64,
        data: Bytes,
        room: Option<crate::memory::Reservation>,
    ) -> Result<(), String> {
        self.send(Command::Write { offset, data, room }).await
    }

    /// Declares part `index` complete, once all its bytes were queued.
    pub async fn part_done(&self, index: u64, digest: PartDigest) -> Result<(), String> {
        self.send(Command::PartDone { index, digest }).await
    }

    /// Records part `index` as complete without writing: its bytes are in the file already
    /// and were read back intact (a resumed download).
    pub async fn adopt(&self, index: u64, digest: PartDigest) -> Result<(), String> {
        self.send(Command::Adopt { index, digest }).await
    }

    async fn send(&self, command: Command) -> Result<(), String> {
        self.tx
            .send(command)
            .await
            .map_err(|_| "the file writer stopped".to_string())
    }
}

/// The direct path of one file.
struct Direct {
    file: Arc<DirectFile>,
    pool: Arc<IoPool>,
    part_size: u64,
    /// The stage being filled, per part.
    stages: HashMap<u64, Stage>,
}

struct Writer {
    file: Arc<File>,
    shared: Arc<Shared>,
    direct: Option<Direct>,
    reservation: Option<Arc<Reservation>>,
    writeback: Coalescing<()>,
    since_writeback: u64,
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<Command>) -> WriterOutcome {
        while let Some(command) = rx.blocking_recv() {
            if self.shared.failed.is_set() {
                // Nothing more is written; the parts were told to stop.
                continue;
            }
            match command {
                Command::Write { offset, data, room } => {
                    self.write(offset, &data);
                    drop(room);
                }
                Command::PartDone { index, digest } => self.part_done(index, digest),
                Command::Adopt { index, digest } => {
                    let mut record = self.shared.lock();
                    self.shared.record_part(&mut record, index, digest);
                }
            }
        }
        // The download finished, failed or was cancelled. Stages still filling belong to
        // unfinished parts, which a resume downloads again.
        if let Some(direct) = &mut self.direct {
            for (_, stage) in direct.stages.drain() {
                direct.pool.recycle(stage.buf);
            }
        }
        let mut record = self.shared.lock();
        while record.in_flight > 0 {
            record = self.shared.drained.wait_unpoisoned(record);
        }
        // Keep what is done for a resume. A complete download is verified and promoted next,
        // which makes it durable anyway: saving it now would only cost an fdatasync.
        let parts = record.state.size.div_ceil(record.state.part_size.max(1));
        let complete = record.state.parts.len() as u64 == parts;
        if record.unsaved && !complete && !self.shared.failed.is_set() {
            self.shared.save(&mut record);
        }
        let state = record.state.clone();
        drop(record);
        // Every save is on disk before the outcome is known: the engine may remove the state
        // next, and a late save must not bring it back.
        if let Some(saver) = &self.shared.saver {
            saver.finish();
        }
        self.writeback.finish();
        WriterOutcome {
            state,
            failure: self.shared.failed.take(),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(direct) = &mut self.direct else {
            return self.write_buffered(offset, data);
        };
        let part = offset / direct.part_size;
        let mut stage = match direct.stages.remove(&part) {
            Some(stage) if stage.next_offset() == offset => Some(stage),
            stale => {
                // A part's bytes always continue where they stopped; anything else is a new
                // stream, and what was staged before it is written as it is.
                if let Some(stale) = stale {
                    self.flush(stale);
                }
                None
            }
        };
        let Some(direct) = &mut self.direct else {
            return;
        };
        if stage.is_none() && !offset.is_multiple_of(ALIGN as u64) {
            return self.write_buffered(offset, data);
        }
        let (mut rest, mut next) = (data, offset);
        while !rest.is_empty() {
            let mut filling = match stage.take() {
                Some(stage) => stage,
                None => match direct.pool.try_buffer() {
                    Some(buf) => Stage {
                        part,
                        start: next,
                        len: 0,
                        buf,
                    },
                    // Every stage is taken: these bytes go buffered.
                    None => return self.write_buffered(next, rest),
                },
            };
            let taken = filling.fill(rest);
            rest = &rest[taken..];
            next = filling.next_offset();
            if filling.is_full() {
                submit(&self.shared, direct, filling, STAGE);
            } else {
                stage = Some(filling);
            }
        }
        if let Some(stage) = stage {
            direct.stages.insert(part, stage);
        }
    }

    /// Writes what `stage` holds: its aligned bytes direct, the rest (only at the end of the
    /// object) buffered.
    fn flush(&mut self, stage: Stage) {
        let aligned = stage.len / ALIGN * ALIGN;
        if aligned < stage.len {
            let tail = stage.buf.as_slice()[aligned..stage.len].to_vec();
            self.write_buffered(stage.start + aligned as u64, &tail);
        }
        let Some(direct) = &self.direct else {
            return;
        };
        if aligned > 0 {
            submit(&self.shared, direct, stage, aligned);
        } else {
            direct.pool.recycle(stage.buf);
        }
    }

    fn write_buffered(&mut self, offset: u64, data: &[u8]) {
        if let Err(error) = self.file.write_all_at(data, offset) {
            self.shared.fail(error);
            return;
        }
        if let Some(reservation) = &self.reservation {
            reservation.landed(data.len() as u64);
        }
        self.since_writeback += data.len() as u64;
        if self.since_writeback >= WRITEBACK_EVERY {
            self.since_writeback = 0;
            self.writeback.offer(());
        }
    }

    fn part_done(&mut self, index: u64, digest: PartDigest) {
        let stage = self
            .direct
            .as_mut()
            .and_then(|direct| direct.stages.remove(&index));
        if let Some(stage) = stage {
            self.flush(stage);
        }
        let mut record = self.shared.lock();
        match record.waiting.get_mut(&index) {
            Some(waiting) if waiting.writes > 0 => waiting.digest = Some(digest),
            _ => {
                record.waiting.remove(&index);
                self.shared.record_part(&mut record, index, digest);
            }
        }
    }
}

/// Hands `len` bytes of `stage` to the I/O threads, counting the write against its part first
/// so its end can never be seen before its start.
fn submit(shared: &Shared, direct: &Direct, stage: Stage, len: usize) {
    {
        let mut record = shared.lock();
        record.in_flight += 1;
        record.waiting.entry(stage.part).or_default().writes += 1;
    }
    direct.pool.submit(&direct.file, stage, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::direct_io::{open_direct, suits_direct_io};

    /// Sends `bytes` of part `index` (starting at `start`) in chunks of odd sizes, then
    /// declares it done unless `finish` is false.
    async fn send_part(writer: FileWriter, index: u64, start: u64, bytes: Vec<u8>, finish: bool) {
        let mut offset = 0;
        for (n, size) in [100_003usize, 524_288, 7, 300_000]
            .iter()
            .cycle()
            .enumerate()
        {
            if offset == bytes.len() {
                break;
            }
            let end = (offset + size).min(bytes.len());
            let chunk = Bytes::copy_from_slice(&bytes[offset..end]);
            writer
                .write(start + offset as u64, chunk, None)
                .await
                .unwrap();
            offset = end;
            if n % 3 == 0 {
                tokio::task::yield_now().await;
            }
        }
        if finish {
            let digest = PartDigest {
                len: bytes.len() as u64,
                ..PartDigest::default()
            };
            writer.part_done(index, digest).await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_paths_put_every_byte_in_place_and_record_only_finished_parts() {
        for use_direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("data");
            // Three stages and two pages per part; the last part is short and unaligned.
            let part_size = 3 * STAGE as u64 + 8192;
            let size = 3 * part_size + 5_000;
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            file.set_len(size).unwrap();
            let sink = if use_direct {
                let direct = open_direct(&path, &file);
                // Where the filesystem suits direct I/O, it must really be used.
                assert_eq!(direct.is_some(), suits_direct_io(&file));
                direct.map(|direct| DirectSink {
                    direct,
                    pool: IoPool::start(),
                    part_size,
                })
            } else {
                None
            };
            let state = ResumeState {
                key: "k".into(),
                etag: None,
                size,
                part_size,
                parts: std::collections::BTreeMap::new(),
            };
            let io = ObjectIo {
                state_path: Some(dir.path().join("state")),
                cancel: CancellationToken::new(),
                reservation: None,
                save_every: SAVE_EVERY,
            };
            let (writer, task) = FileWriter::start(Arc::new(file), sink, state, io, None);
            let part = |i: u64| {
                let (start, end) = (i * part_size, ((i + 1) * part_size).min(size));
                (start, data[start as usize..end as usize].to_vec())
            };
            // Parts 3, 0 and 2 finish, interleaved; part 1 stops halfway (a failed part).
            let mut sends = Vec::new();
            for (index, finish) in [(3, true), (0, true), (1, false), (2, true)] {
                let (start, mut bytes) = part(index);
                if !finish {
                    bytes.truncate(bytes.len() / 2 + 1);
                }
                sends.push(tokio::spawn(send_part(
                    writer.clone(),
                    index,
                    start,
                    bytes,
                    finish,
                )));
            }
            for send in sends {
                send.await.unwrap();
            }
            drop(writer);
            let outcome = task.await.unwrap();
            assert!(outcome.failure.is_none(), "{:?}", outcome.failure);
            let recorded: Vec<u64> = outcome.state.parts.keys().copied().collect();
            assert_eq!(recorded, [0, 2, 3], "direct: {use_direct}");
            let saved = ResumeState::load(&dir.path().join("state")).unwrap();
            assert_eq!(saved.parts.keys().copied().collect::<Vec<_>>(), [0, 2, 3]);
            let written = std::fs::read(&path).unwrap();
            assert_eq!(written.len() as u64, size);
            for index in [0, 2, 3] {
                let (start, bytes) = part(index);
                let range = start as usize..start as usize + bytes.len();
                assert!(
                    written[range] == bytes[..],
                    "part {index} differs (direct: {use_direct})"
                );
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_write_error_cancels_the_object_and_nothing_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        // Opened read-only: every write fails, as on a full disk.
        let file = File::open(&path).unwrap();
        let state = ResumeState {
            key: "k".into(),
            etag: None,
            size: 1 << 20,
            part_size: 1 << 19,
            parts: std::collections::BTreeMap::new(),
        };
        let cancel = CancellationToken::new();
        let io = ObjectIo {
            state_path: Some(dir.path().join("state")),
            cancel: cancel.clone(),
            reservation: None,
            save_every: SAVE_EVERY,
        };
        let (writer, task) = FileWriter::start(Arc::new(file), None, state, io, None);
        writer
            .write(0, Bytes::from(vec![1u8; 1 << 19]), None)
            .await
            .unwrap();
        let _ = writer
            .part_done(
                0,
                PartDigest {
                    len: 1 << 19,
                    ..PartDigest::default()
                },
            )
            .await;
        tokio::time::timeout(Duration::from_secs(5), cancel.cancelled())
            .await
            .expect("the object was not cancelled");
        drop(writer);
        let outcome = task.await.unwrap();
        assert!(outcome.failure.is_some());
        assert!(
            outcome.state.parts.is_empty(),
            "a part of a failed write was recorded"
        );
        assert!(ResumeState::load(&dir.path().join("state")).is_none());
    }
}
