//! How an object is cut into parts and how those parts fill its temporary file: the part size
//! (the object's own upload part size when its multipart ETag reveals it, so part MD5s come
//! in-stream), what a previous run's resume state contributes (only the parts that read back
//! intact), the space the rest needs, and the missing parts spawned as `PartJob`s, a few more
//! than there are connections. Kept apart from the object flow in `mod.rs`, which sees only a
//! complete file and its digests, and from `part`, which knows one range and nothing of the
//! object around it.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use tokio::task::JoinSet;

use super::part::PartJob;
use super::{Engine, FetchError, FetchScope, PartError};
use crate::direct_io::{self, ALIGN};
use crate::disk::LocalIoError;
use crate::mirror::{ResumeState, TempPaths};
use crate::ordered_md5;
use crate::verify::{
    EtagForm, Expected, ExpectedChecksum, PartDigest, StreamPlan, VerifyMode, candidate_part_sizes,
    digest_range,
};
use crate::writer::{DirectSink, FileWriter, ObjectIo};

/// Default part size of ranged GETs. 16 MiB measured faster than 8 MiB (fewer requests, the
/// same parallelism); an object whose multipart ETag must be verified uses its own upload part
/// size instead, so each part's MD5 is computed in-stream.
pub const DEFAULT_PART_SIZE: u64 = 16 << 20;
/// Parts in flight per object beyond the connection cap, so a part is ready when a
/// connection frees up.
const PART_SLACK: usize = 2;

impl Engine {
    pub(super) fn part_size_for(&self, expected: &Expected) -> u64 {
        if let Some(part_size) = self.config.part_size {
            return part_size.max(1);
        }
        const USABLE: std::ops::RangeInclusive<u64> = (1 << 20)..=(256 << 20);
        if self.config.verify == VerifyMode::Size {
            return DEFAULT_PART_SIZE;
        }
        match expected.etag.as_deref().and_then(EtagForm::parse) {
            Some(EtagForm::Multipart { parts, .. }) => candidate_part_sizes(expected.size, parts)
                .into_iter()
                .find(|p| USABLE.contains(p))
                .unwrap_or(DEFAULT_PART_SIZE),
            _ => DEFAULT_PART_SIZE,
        }
    }

    /// Writes every missing part of the object into its temporary file (resuming a previous
    /// run's parts that read back intact) and returns the open file with every part's
    /// digests, in order.
    #[allow(
        clippy::too_many_arguments,
        reason = "one object's download: what it is, where it goes and what it may learn"
    )]
    pub(super) async fn download(
        self: &Arc<Self>,
        key: &str,
        seq: u64,
        expected: &Expected,
        part_size: u64,
        temp: &TempPaths,
        scope: &FetchScope,
        learn_checksum: Option<Arc<OnceLock<Option<ExpectedChecksum>>>>,
    ) -> Result<Downloaded, PartError> {
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
        let plan = StreamPlan::new(expected, self.config.verify, part_size);
        // Direct writes leave nothing in the page cache, so only downloads that are never
        // read back take them: a whole-object MD5 rereads every part while the rest streams.
        let direct = if self.config.direct_io
            && !plan.whole_md5
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
        let follower = plan
            .whole_md5
            .then(|| ordered_md5::follow(file.clone(), part_size, expected.size, Vec::new()));
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
        let mut missing = (0..part_count).filter(move |i| !claimed.contains(i));
        let mut refetch = std::collections::VecDeque::<u64>::new();
        let part = |index: u64| PartJob {
            engine: self.clone(),
            key: key.to_string(),
            etag: expected.etag.clone(),
            index,
            start: index * part_size,
            end: ((index + 1) * part_size).min(expected.size),
            priority: (seq << 24) | index.min((1 << 24) - 1),
            plan,
            writer: writer.clone(),
            cancel: object_cancel.clone(),
            batch: scope.batch.clone(),
            // Only a part that is the whole object can learn the checksum from its GET.
            learn_checksum: learn_checksum.clone().filter(|_| part_count == 1),
        };
        let window = self.scheduler.max() + PART_SLACK;
        let mut tasks = JoinSet::new();
        for index in missing.by_ref().take(window) {
            tasks.spawn(part(index).run());
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
                match missing.next().or_else(|| refetch.pop_front()) {
                    Some(index) => {
                        tasks.spawn(part(index).run());
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
        let whole_md5 = match follower {
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
            whole_md5,
        })
    }
}

/// A complete temporary file and what was computed while it streamed in.
pub(super) struct Downloaded {
    pub(super) file: std::fs::File,
    pub(super) digests: Vec<PartDigest>,
    pub(super) whole_md5: Option<[u8; 16]>,
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
