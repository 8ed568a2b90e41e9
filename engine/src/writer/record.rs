//! What a file's writer thread shares with the I/O threads finishing its direct writes and
//! with the thread saving its resume state: the first write error, and the record of which
//! parts are fully written.
//!
//! This is where **a part is recorded as done only after every byte of it is written** (see
//! the [module](super) documentation): a part's `PartDone` waits here for its direct writes
//! still in flight, and recording it is what sends it to the in-order MD5 follower and, at
//! most every `save_every`, offers the resume state to the saver. Kept apart from the writer
//! thread because the I/O threads reach it too ([`WriteDone`]), from outside the writer's
//! queue.

use common::sync::MutexExt;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::direct_io::WriteDone;
use crate::mirror::ResumeState;
use crate::ordered_md5::PartDone;
use crate::verify::PartDigest;

use super::coalescing::Coalescing;

/// The first write error of an object, shared by the writer, the I/O threads and the saver.
pub(super) struct Failed {
    pub(super) error: Mutex<Option<std::io::Error>>,
    pub(super) cancel: CancellationToken,
}

impl Failed {
    pub(super) fn set(&self, error: std::io::Error) {
        let mut slot = self.error.lock_unpoisoned();
        if slot.is_none() {
            tracing::warn!(%error, "writing a temporary file failed: stopping the object");
            *slot = Some(error);
        }
        drop(slot);
        self.cancel.cancel();
    }

    pub(super) fn is_set(&self) -> bool {
        self.error.lock_unpoisoned().is_some()
    }

    pub(super) fn take(&self) -> Option<std::io::Error> {
        self.error.lock_unpoisoned().take()
    }
}

/// What the writer thread and the I/O threads finishing its direct writes share.
pub(super) struct Shared {
    pub(super) record: Mutex<Record>,
    pub(super) failed: Arc<Failed>,
    /// Signalled when no direct write of the file is in flight any more.
    pub(super) drained: Condvar,
    /// Saves the resume state; `None` when the download is never resumed.
    pub(super) saver: Option<Coalescing<ResumeState>>,
    pub(super) follower: Option<PartDone>,
    pub(super) save_every: Duration,
}

pub(super) struct Record {
    pub(super) state: ResumeState,
    /// Parts with direct writes in flight, or whose writes ended before their `PartDone`.
    pub(super) waiting: HashMap<u64, Waiting>,
    pub(super) in_flight: usize,
    pub(super) unsaved: bool,
    pub(super) last_save: Instant,
}

#[derive(Default)]
pub(super) struct Waiting {
    pub(super) writes: usize,
    /// Set by `PartDone`: every byte is handed over.
    pub(super) digest: Option<PartDigest>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Record> {
        self.record.lock_unpoisoned()
    }

    pub(super) fn fail(&self, error: std::io::Error) {
        self.failed.set(error);
    }

    /// Part `index` is fully written.
    pub(super) fn record_part(&self, record: &mut Record, index: u64, digest: PartDigest) {
        if self.failed.is_set() {
            return;
        }
        record.state.parts.insert(index, digest);
        record.unsaved = true;
        if let Some(follower) = &self.follower {
            follower.send(index);
        }
        if record.last_save.elapsed() >= self.save_every {
            self.save(record);
        }
    }

    pub(super) fn save(&self, record: &mut Record) {
        record.last_save = Instant::now();
        record.unsaved = false;
        if let Some(saver) = &self.saver {
            saver.offer(record.state.clone());
        }
    }
}

impl WriteDone for Shared {
    fn write_done(&self, part: u64, result: std::io::Result<()>) {
        if let Err(error) = result {
            self.fail(error);
        }
        let mut record = self.lock();
        record.in_flight -= 1;
        if let Some(waiting) = record.waiting.get_mut(&part) {
            waiting.writes -= 1;
            if waiting.writes == 0 && waiting.digest.is_some() {
                let digest = record.waiting.remove(&part).and_then(|w| w.digest);
                if let Some(digest) = digest {
                    self.record_part(&mut record, part, digest);
                }
            }
        }
        if record.in_flight == 0 {
            self.drained.notify_all();
        }
    }
}
