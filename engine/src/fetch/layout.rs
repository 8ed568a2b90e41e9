//! How an object is cut into parts and how those parts fill its temporary file: the part size,
//! what a previous run's resume state contributes (only the parts that read back intact), the
//! space the rest needs, and the missing parts spawned as `PartJob`s, a few more than there
//! are connections. Kept apart from the object flow in `mod.rs`, which sees only a complete
//! file and its digests, and from `part`, which knows one range and nothing of the object
//! around it.
//!
//! **Parts are sized by time**, not bytes (see `request_stats`): a range streams for a few
//! hundred milliseconds at the rate requests are getting, so a few big objects still fill a
//! wide link and a slow link's last ranges do not drag on. Where a multipart ETag reveals the
//! upload part size, ranges are aligned to it: the upload part itself when it is not much
//! longer than that (each part's MD5 then comes in-stream, and the multipart ETag is the MD5
//! of those), otherwise an exact fraction of it, so ranges tile the upload parts (composite
//! CRCs still combine from them) and the part MD5s are hashed in order as ranges complete
//! (`ordered_md5`). A resumed download keeps the part size its saved parts have.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use tokio::task::JoinSet;

use super::part::{PartJob, PlanSource};
use super::{Engine, FetchError, ObjectJob, PartError};
use crate::direct_io::{self, ALIGN};
use crate::disk::LocalIoError;
use crate::mirror::{ResumeState, TempPaths};
use crate::ordered_md5::{self, OrderedMd5s};
use crate::verify::{
    EtagForm, Expected, ExpectedChecksum, PartDigest, StreamPlan, VerifyMode, digest_range,
    likely_upload_part_size,
};
use crate::writer::{DirectSink, FileWriter, ObjectIo};

/// Part size of `--verify size` downloads when nothing is measured yet, and the historical
/// default of `--part-size`; kept for callers that want a fixed size.
pub const DEFAULT_PART_SIZE: u64 = 16 << 20;
/// Parts in flight per object beyond the connection cap, so a part is ready when a
/// connection frees up.
const PART_SLACK: usize = 2;

impl Engine {
    /// The part size for `expected`: `--part-size`, or what a resumable download of it was
    /// saved with, or a range sized by time and aligned to the upload parts.
    pub(super) fn part_size_for(&self, key: &str, expected: &Expected, temp: &TempPaths) -> u64 {
        if let Some(part_size) = self.config.part_size {
            return part_size.max(1);
        }
        if let Some(saved) = ResumeState::load(&temp.state).filter(|state| {
            state.key == key && state.etag == expected.etag && state.size == expected.size
        }) {
            return saved.part_size.max(1);
        }
        let by_time = self.scheduler.stats().range_size();
        if self.config.verify == VerifyMode::Size {
            return by_time;
        }
        match expected.etag.as_deref().and_then(EtagForm::parse) {
            Some(EtagForm::Multipart { parts, .. }) => {
                match likely_upload_part_size(expected.size, parts) {
                    Some(upload) => aligned_range(upload, by_time),
                    None => by_time,
                }
            }
            _ => by_time,
        }
    }

    /// Writes every missing part of the object into its temporary file (resuming a previous
    /// run's parts that read back intact) and returns the open file with every part's
    /// digests, in order.
    pub(super) async fn download(
        self: &Arc<Self>,
        job: &ObjectJob<'_>,
        parts_plan: PlanSource,
        learn_checksum: Option<Arc<OnceLock<Option<ExpectedChecksum>>>>,
    ) -> Result<Downloaded, PartError> {
        let ObjectJob {
            key,
            seq,
            expected,
            part_size,
            temp,
            scope,
            admitted,
        } = job;
        let (key, seq, expected, part_size, temp) = (*key, *seq, *expected, *part_size, *temp);
        let dir = self.room_dir(temp);
        let local = |e: std::io::Error, needed: u64| {
            PartError::Fatal(FetchError::from_local(LocalIoError::from_io(
                &e,
                &dir,
                Some(needed),
            )))
        };
        temp.ensure_dir().map_err(|e| local(e, expected.size))?;
        let resumable = scope.temp_tag.is_empty();
        let resumed = ResumeState::load(&temp.state).filter(|state| {
            resumable
                && state.key == key
                && state.etag == expected.etag
                && state.size == expected.size
                && state.part_size == part_size
        });
        let on_disk = std::fs::metadata(&temp.data).ok();
        let mut state = match resumed {
            Some(state) if on_disk.as_ref().map(std::fs::Metadata::len) == Some(expected.size) => {
                state
            }
            _ => {
                temp.remove();
                ResumeState {
                    key: key.to_string(),
                    etag: expected.etag.clone(),
                    size: expected.size,
                    part_size,
                    parts: std::collections::BTreeMap::new(),
                }
            }
        };
        // Nothing starts that the disk cannot hold: what the file lacks must fit.
        let allocated = if state.parts.is_empty() {
            0
        } else {
            use std::os::unix::fs::MetadataExt;
            on_disk.map_or(0, |m| (m.blocks() * 512).min(expected.size))
        };
        let reservation = Arc::new(
            self.space
                .reserve(&dir, expected.size - allocated)
                .map_err(|e| PartError::Fatal(FetchError::from_local(e)))?,
        );
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&temp.data)
            .map_err(|e| local(e, expected.size - allocated))?;
        file.set_len(expected.size)
            .map_err(|e| local(e, expected.size - allocated))?;
        // The plan without the checksum a HEAD may still bring: what it says of MD5s (and so
        // of the layout) does not depend on it.
        let plan = StreamPlan::new(expected, self.config.verify, part_size);
        // Direct writes leave nothing in the page cache, so only downloads that are never
        // read back take them: in-order MD5s reread every part while the rest streams.
        let direct = if self.config.direct_io
            && plan.ordered_md5.is_none()
            && part_size.is_multiple_of(ALIGN as u64)
            && self.io_pool().enabled()
        {
            direct_io::open_direct(&temp.data, &file)
        } else {
            None
        };
        if direct.is_some() {
            direct_io::preallocate(&file, expected.size)
                .map_err(|e| local(e, expected.size - allocated))?;
            reservation.all_landed();
        }
        let file = Arc::new(file);

        // The parts the resume state claims are read back and hashed while the missing ones
        // download: a claimed part joins the file's state (and the in-order MD5) once its bytes
        // gave its digests again, and is fetched like a missing one otherwise.
        let part_count = expected.size.div_ceil(part_size);
        let claimed_parts = std::mem::take(&mut state.parts);
        let claimed: BTreeSet<u64> = claimed_parts.keys().copied().collect();
        let mut reading_back = (!claimed_parts.is_empty()).then(|| {
            let (file, verify, key) = (file.clone(), self.config.verify, key.to_string());
            tokio::task::spawn_blocking(move || {
                read_back(&file, claimed_parts, plan, part_size, verify, &key)
            })
        });
        let follower = plan.ordered_md5.map(|boundary| {
            ordered_md5::follow(file.clone(), part_size, expected.size, boundary, Vec::new())
        });
        let direct = direct.map(|direct| DirectSink {
            direct,
            pool: self.io_pool().clone(),
            part_size,
        });
        // Cancelled by the first write error (or with the whole scope): every part stops.
        let object_cancel = scope.cancel.child_token();
        let (writer, writer_task) = FileWriter::start(
            file.clone(),
            direct,
            state,
            ObjectIo {
                state_path: resumable.then(|| temp.state.clone()),
                cancel: object_cancel.clone(),
                reservation: Some(reservation.clone()),
                save_every: self.config.save_every,
            },
            follower.as_ref().map(|(done, _)| done.clone()),
        );
        // Parts are spawned lazily, a few more than there are connections: tasks stay bounded
        // whatever size the object claims. Claimed parts that do not read back intact join
        // the queue when the read-back ends.
        let mut missing = (0..part_count)
            .filter(move |i| !claimed.contains(i))
            .peekable();
        let mut refetch = std::collections::VecDeque::<u64>::new();
        // A request may span several consecutive missing parts when the range the link now
        // calls for is longer than the part size chosen before it was known (never with
        // --part-size, which fixes the request size).
        let parts_per_request = || {
            if self.config.part_size.is_some() {
                1
            } else {
                (self.scheduler.stats().range_size() / part_size).max(1)
            }
        };
        let part = |index: u64, count: u64| PartJob {
            engine: self.clone(),
            key: key.to_string(),
            etag: expected.etag.clone(),
            index,
            part_size,
            start: index * part_size,
            end: ((index + count) * part_size).min(expected.size),
            priority: (seq << 24) | index.min((1 << 24) - 1),
            plan: parts_plan.clone(),
            writer: writer.clone(),
            cancel: object_cancel.clone(),
            batch: scope.batch.clone(),
            // Only a part that is the whole object can learn the checksum from its GET.
            learn_checksum: learn_checksum.clone().filter(|_| part_count == 1),
            admitted: admitted.clone(),
        };
        let window = self.scheduler.max() + PART_SLACK;
        let mut tasks = JoinSet::new();
        // The next run of consecutive missing parts for one request.
        let next_run = |missing: &mut std::iter::Peekable<_>| -> Option<(u64, u64)> {
            let first: u64 = missing.next()?;
            // Judged again for every request: later ones know more of the link.
            let wanted = parts_per_request();
            let mut count = 1;
            while count < wanted && missing.peek() == Some(&(first + count)) {
                missing.next();
                count += 1;
            }
            Some((first, count))
        };
        while tasks.len() < window {
            let Some((first, count)) = next_run(&mut missing) else {
                break;
            };
            tasks.spawn(part(first, count).run());
        }
        let mut failed = None;
        loop {
            let read_back_pending = reading_back.is_some();
            tokio::select! {
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    let result = joined.unwrap_or_else(|e| {
                        Err(PartError::Fatal(FetchError::Io(format!("part task failed: {e}"))))
                    });
                    if let Err(error) = result {
                        failed = Some(error);
                        break;
                    }
                }
                read = async { reading_back.as_mut().expect("guarded").await }, if read_back_pending => {
                    reading_back = None;
                    let (kept, lost) = match read {
                        Ok(Ok(read)) => read,
                        Ok(Err(error)) => {
                            failed = Some(local(error, expected.size - allocated));
                            break;
                        }
                        Err(error) => {
                            failed = Some(PartError::Fatal(FetchError::Io(format!(
                                "read-back failed: {error}"
                            ))));
                            break;
                        }
                    };
                    let resumed_bytes: u64 = kept.values().map(|p| p.len).sum();
                    if resumed_bytes > 0 {
                        tracing::info!(key, resumed_bytes, "resuming an interrupted download");
                        self.progress.discount(resumed_bytes);
                    }
                    for (index, digest) in kept {
                        if writer.adopt(index, digest).await.is_err() {
                            break;
                        }
                    }
                    refetch.extend(lost);
                }
                else => break,
            }
            while tasks.len() < window {
                let next = next_run(&mut missing).or_else(|| refetch.pop_front().map(|i| (i, 1)));
                match next {
                    Some((first, count)) => {
                        tasks.spawn(part(first, count).run());
                    }
                    None => break,
                }
            }
        }
        if failed.is_some() {
            // The other parts stop; finished ones stay in the resume state, which the writer
            // saves when its last handle goes.
            object_cancel.cancel();
            tasks.abort_all();
        }
        if let Some(reading) = reading_back {
            reading.abort();
        }
        drop(tasks);
        drop(writer);
        let written = writer_task
            .await
            .map_err(|e| PartError::Fatal(FetchError::Io(format!("file writer failed: {e}"))))?;
        let ordered = match follower {
            Some((done, task)) => {
                drop(done);
                task.await.ok().flatten()
            }
            None => None,
        };
        // A write error comes first: the parts only stopped because of it.
        if let Some(error) = written.failure {
            let needed = reservation.remaining().max(1);
            return Err(local(error, needed));
        }
        if let Some(error) = failed {
            return Err(error);
        }
        let digests: Vec<PartDigest> = written.state.parts.into_values().collect();
        let file = Arc::try_unwrap(file)
            .map_err(|_| PartError::Fatal(FetchError::Io("temporary file still shared".into())))?;
        Ok(Downloaded {
            file,
            digests,
            ordered,
        })
    }
}

/// A complete temporary file and what was computed while it streamed in.
pub(super) struct Downloaded {
    pub(super) file: std::fs::File,
    pub(super) digests: Vec<PartDigest>,
    pub(super) ordered: Option<OrderedMd5s>,
}

/// A range that tiles `upload`-byte upload parts and streams for about `by_time` bytes: the
/// upload part itself when it is at most twice that, otherwise the power-of-two fraction of it
/// closest to `by_time`, if that fraction is exact and aligned for direct I/O.
fn aligned_range(upload: u64, by_time: u64) -> u64 {
    if upload <= by_time.saturating_mul(2) {
        return upload;
    }
    let pieces = 1u64 << (upload as f64 / by_time.max(1) as f64).log2().round() as u32;
    let range = upload / pieces;
    if upload.is_multiple_of(pieces) && range.is_multiple_of(ALIGN as u64) {
        range
    } else {
        by_time
    }
}

/// Reads back the parts a resume state claims (on up to four threads) and sorts them: those
/// whose bytes on disk give their recorded digests again, with the digests of the bytes read,
/// and those that did not survive (a power loss zeroed them), to fetch again. With
/// `--verify size` there is nothing to compare and the claims stand.
fn read_back(
    file: &std::fs::File,
    parts: std::collections::BTreeMap<u64, PartDigest>,
    plan: StreamPlan,
    part_size: u64,
    verify: VerifyMode,
    key: &str,
) -> std::io::Result<(std::collections::BTreeMap<u64, PartDigest>, Vec<u64>)> {
    if verify == VerifyMode::Size {
        return Ok((parts, Vec::new()));
    }
    let claimed: Vec<u64> = parts.keys().copied().collect();
    let list: Vec<(u64, PartDigest)> = parts.into_iter().collect();
    let threads = std::thread::available_parallelism()
        .map_or(2, std::num::NonZero::get)
        .clamp(1, 4);
    let chunk = list.len().div_ceil(threads).max(1);
    let results: Vec<std::io::Result<Vec<(u64, PartDigest)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = list
            .chunks(chunk)
            .map(|group| {
                scope.spawn(move || {
                    let mut kept = Vec::with_capacity(group.len());
                    for (index, recorded) in group {
                        let fresh = digest_range(file, index * part_size, recorded.len, plan)?;
                        if still_matches(recorded, &fresh) {
                            kept.push((*index, fresh));
                        }
                    }
                    Ok(kept)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("read-back thread panicked")))
            })
            .collect()
    });
    let mut kept = std::collections::BTreeMap::new();
    for group in results {
        kept.extend(group?);
    }
    let lost: Vec<u64> = claimed
        .into_iter()
        .filter(|index| !kept.contains_key(index))
        .collect();
    if !lost.is_empty() {
        tracing::warn!(
            key,
            claimed = kept.len() + lost.len(),
            intact = kept.len(),
            "parts claimed by the resume state did not read back intact; fetching them again"
        );
    }
    Ok((kept, lost))
}

/// Whether the digests of bytes read back agree with every digest recorded for the part.
fn still_matches(recorded: &PartDigest, fresh: &PartDigest) -> bool {
    fn same<T: PartialEq>(recorded: Option<&T>, fresh: Option<&T>) -> bool {
        recorded.is_none() || recorded == fresh
    }
    recorded.len == fresh.len
        && same(recorded.md5.as_ref(), fresh.md5.as_ref())
        && same(recorded.crc.as_ref(), fresh.crc.as_ref())
        && same(recorded.check.as_ref(), fresh.check.as_ref())
}

#[cfg(test)]
mod tests {
    use super::aligned_range;

    #[test]
    fn ranges_tile_upload_parts_or_are_the_upload_parts() {
        const MIB: u64 = 1 << 20;
        // Fast link: the 8 MiB upload part itself (its MD5 in-stream).
        assert_eq!(aligned_range(8 * MIB, 12 * MIB), 8 * MIB);
        assert_eq!(aligned_range(8 * MIB, 4 * MIB), 8 * MIB);
        // Slow link: exact fractions of it.
        assert_eq!(aligned_range(8 * MIB, 512 << 10), 512 << 10);
        assert_eq!(aligned_range(8 * MIB, 700 << 10), 512 << 10);
        assert_eq!(aligned_range(64 * MIB, 3 * MIB), 4 * MIB);
        // An upload part no fraction of which is aligned: the time-based size as it is.
        assert_eq!(aligned_range(5_000_001, MIB), MIB);
    }
}
