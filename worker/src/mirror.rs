//! The destination directory: final paths, temporary files, resume state and atomic promotion.
//!
//! ```text
//! DEST/<key>                          verified objects, at the key's own relative path
//! DEST/.era5/lock                     flock: exclusive for `era5 sync`, shared by cluster workers
//! DEST/.era5/manifest.jsonl           the manifest of `era5 sync` (see `manifest`)
//! DEST/.era5/manifest.<worker>.jsonl  each cluster worker's own manifest journal
//! DEST/.era5/tmp/<name>.<hash>.part  an object being downloaded by `era5 sync`, written in place
//! DEST/.era5/tmp/<name>.<hash>.state which parts of it are done, with digests
//! DEST/.era5/tmp/leases/<name>.<hash>.<lease>.{part,state}   the same, for one cluster grant
//! ```
//!
//! **A file appears at its final path only after it is verified:** it is written under
//! `.era5/tmp/` (same filesystem, so the rename is atomic), fsynced, then renamed into place and
//! the directory fsynced. A crash leaves at most a temporary file, which the next run resumes.
//!
//! Cluster temporaries are named after the grant's lease id, which is never granted again, so a
//! killed worker's are never resumed: they are garbage. **Abandoned lease temporaries are swept**
//! (`Mirror::sweep_abandoned`): by a worker once they are untouched for `ABANDONED_AFTER`, and
//! all of them by `era5 sync`, whose exclusive lock proves no worker is writing.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::paths::{UnsafeKey, final_path};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::verify::PartDigest;

/// The mirror could not be opened.
#[derive(Debug, Error)]
pub enum MirrorError {
    /// DEST exists and is not a directory, or cannot be created.
    #[error("cannot use {path} as the destination: {source}")]
    Dest {
        /// DEST.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another sync (or, for a sync, a cluster worker) holds the lock.
    #[error("another era5 sync or worker is using {0}; wait for it to finish or stop it first")]
    Locked(PathBuf),
}

/// How long a lease's temporary file may sit untouched before a worker deems it abandoned.
/// A live download writes to it at least every stall timeout (30 s by default) or retries; an
/// hour leaves a wide margin. Sweeping a live one by mistake costs that grant a failed attempt
/// (its promotion finds no file), never a wrong file.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// What a sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// An opened destination.
#[derive(Debug)]
pub struct Mirror {
    dest: PathBuf,
    state_dir: PathBuf,
    tmp_dir: PathBuf,
    lease_tmp_dir: PathBuf,
    /// Who writes: `None` for `era5 sync`, the worker's name in the cluster.
    writer: Option<String>,
    /// Held for the life of the mirror; the flock goes with the descriptor.
    _lock: File,
}

impl Mirror {
    /// Opens DEST for `era5 sync`: creates it and its state folders if needed and takes the
    /// lock exclusively (one sync per destination, and none while cluster workers write).
    pub fn open(dest: &Path) -> Result<Self, MirrorError> {
        Self::open_with(dest, None)
    }

    /// Opens a DEST shared by cluster workers (a shared lock; each worker keeps its own
    /// manifest journal and per-lease temporary names, so workers never write the same file).
    pub fn open_shared(dest: &Path, worker: &str) -> Result<Self, MirrorError> {
        Self::open_with(dest, Some(worker.to_string()))
    }

    fn open_with(dest: &Path, writer: Option<String>) -> Result<Self, MirrorError> {
        let dest_error = |source| MirrorError::Dest {
            path: dest.to_path_buf(),
            source,
        };
        let state_dir = dest.join(".era5");
        let tmp_dir = state_dir.join("tmp");
        let lease_tmp_dir = tmp_dir.join("leases");
        std::fs::create_dir_all(&lease_tmp_dir).map_err(dest_error)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(state_dir.join("lock"))
            .map_err(dest_error)?;
        let mode = if writer.is_some() {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), mode | libc::LOCK_NB) } == 0;
        if !locked {
            return Err(MirrorError::Locked(dest.to_path_buf()));
        }
        let mirror = Self {
            dest: dest.to_path_buf(),
            state_dir,
            tmp_dir,
            lease_tmp_dir,
            writer,
            _lock: lock,
        };
        if mirror.writer.is_none() {
            // The exclusive lock proves no worker is writing: every lease temporary is garbage.
            mirror.sweep_abandoned(Duration::ZERO);
        }
        Ok(mirror)
    }

    /// Removes lease temporaries untouched for `older_than` (see the module doc), logging what
    /// it freed. `era5 sync`'s own temporaries are never touched: they are its resume state.
    pub fn sweep_abandoned(&self, older_than: Duration) -> Swept {
        let mut swept = Swept::default();
        let Ok(entries) = std::fs::read_dir(&self.lease_tmp_dir) else {
            return swept;
        };
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let untouched = meta.modified().map_or(true, |modified| modified <= cutoff);
            if meta.is_file() && untouched && std::fs::remove_file(entry.path()).is_ok() {
                swept.files += 1;
                swept.bytes += meta.len();
            }
        }
        if swept.files > 0 {
            tracing::info!(
                files = swept.files,
                bytes = swept.bytes,
                "removed temporary files of abandoned leases"
            );
        }
        swept
    }

    /// The worker writing, if this is a cluster mirror.
    pub fn writer(&self) -> Option<&str> {
        self.writer.as_deref()
    }

    /// DEST.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// `DEST/.era5`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `DEST/<key>`, or why the key cannot be stored.
    pub fn final_path(&self, key: &str) -> Result<PathBuf, UnsafeKey> {
        final_path(&self.dest, key)
    }

    /// The temporary data and state paths of `key`, made unique by `tag` (a lease id in the
    /// cluster, empty for `era5 sync`). Deterministic, so a later run resumes.
    pub fn temp_paths(&self, key: &str, tag: &str) -> TempPaths {
        // A stable hash (not std's, which may change between builds) keeps names valid across
        // upgrades, so an interrupted download is resumed by a newer binary too.
        let digest = <md5::Md5 as md5::Digest>::digest(key.as_bytes());
        let name = key.rsplit('/').next().unwrap_or("object");
        let mut stem = format!("{name}.{}", hex::encode(&digest[..8]));
        let dir = if tag.is_empty() {
            &self.tmp_dir
        } else {
            stem.push('.');
            stem.extend(tag.chars().filter(char::is_ascii_alphanumeric));
            &self.lease_tmp_dir
        };
        TempPaths {
            data: dir.join(format!("{stem}.part")),
            state: dir.join(format!("{stem}.state")),
        }
    }

    /// Makes a verified temporary file durable and moves it to `final_path` atomically.
    pub fn promote(&self, file: &File, temp: &Path, final_path: &Path) -> std::io::Result<()> {
        file.sync_all()?;
        let parent = final_path.parent().unwrap_or(&self.dest);
        std::fs::create_dir_all(parent)?;
        std::fs::rename(temp, final_path)?;
        File::open(parent)?.sync_all()
    }
}

/// Where an object in progress lives.
#[derive(Clone, Debug)]
pub struct TempPaths {
    /// The data, written in place by parts.
    pub data: PathBuf,
    /// The resume state.
    pub state: PathBuf,
}

impl TempPaths {
    /// Removes the data and the state (missing ones are fine).
    pub fn remove(&self) {
        self.remove_state();
        remove_quietly(&self.data);
    }

    /// Removes the resume state, and a half-written one from an interrupted save.
    pub fn remove_state(&self) {
        for path in [&self.state, &self.state.with_extension("state.new")] {
            remove_quietly(path);
        }
    }
}

fn remove_quietly(path: &Path) {
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "could not remove a temporary file");
    }
}

/// Which parts of a temporary file are complete, for which version of the object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeState {
    /// Object key.
    pub key: String,
    /// ETag of the version being written.
    pub etag: Option<String>,
    /// Its size.
    pub size: u64,
    /// The download part size the part indices refer to.
    pub part_size: u64,
    /// Finished parts by index, with their streamed digests.
    pub parts: BTreeMap<u64, PartDigest>,
}

impl ResumeState {
    /// Reads a state file; `None` if missing or unreadable (the download then starts over).
    pub fn load(path: &Path) -> Option<Self> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes the state atomically (temp + rename), so a crash leaves the old or the new one.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let temp = path.with_extension("state.new");
        let mut file = File::create(&temp)?;
        file.write_all(&serde_json::to_vec(self)?)?;
        // Parts are recorded after their bytes were written, so after a process crash the
        // state never claims unwritten data. After a power loss it might; the whole-object
        // verification before promotion catches that.
        std::fs::rename(&temp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_sync_on_the_same_destination_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = Mirror::open(dir.path()).unwrap();
        assert!(matches!(
            Mirror::open(dir.path()),
            Err(MirrorError::Locked(_))
        ));
        drop(first);
        assert!(Mirror::open(dir.path()).is_ok());
    }

    #[test]
    fn temporary_names_are_per_key_and_stay_in_the_tmp_folder() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let a = mirror.temp_paths("p/202201/x.nc", "");
        let b = mirror.temp_paths("p/202202/x.nc", "");
        assert_ne!(a.data, b.data);
        assert!(a.data.starts_with(dir.path().join(".era5/tmp")));
        assert_eq!(a.data, mirror.temp_paths("p/202201/x.nc", "").data);
        assert_ne!(a.data, mirror.temp_paths("p/202201/x.nc", "lease1").data);
        assert_ne!(
            mirror.temp_paths("p/202201/x.nc", "lease2").data,
            mirror.temp_paths("p/202201/x.nc", "lease1").data
        );
    }

    /// Writes a lease temporary last modified `age` ago.
    fn lease_temp(mirror: &Mirror, key: &str, lease: &str, age: Duration) -> TempPaths {
        let temp = mirror.temp_paths(key, lease);
        std::fs::write(&temp.data, b"partial").unwrap();
        let file = File::options().write(true).open(&temp.data).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
        temp
    }

    #[test]
    fn a_worker_sweeps_only_lease_temporaries_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open_shared(dir.path(), "w1").unwrap();
        let abandoned = lease_temp(&mirror, "p/1/a.nc", "dead", Duration::from_secs(7200));
        let live = lease_temp(&mirror, "p/1/b.nc", "live", Duration::from_secs(5));
        let resumable = mirror.temp_paths("p/1/c.nc", "");
        std::fs::write(&resumable.data, b"sync's own").unwrap();
        File::options()
            .write(true)
            .open(&resumable.data)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();

        let swept = mirror.sweep_abandoned(ABANDONED_AFTER);
        assert_eq!(swept, Swept { files: 1, bytes: 7 });
        assert!(!abandoned.data.exists());
        assert!(live.data.exists(), "a live grant's file must stay");
        assert!(
            resumable.data.exists(),
            "sync's resume state is not the worker's to sweep"
        );
    }

    #[test]
    fn a_sync_removes_every_lease_temporary_left_by_workers() {
        let dir = tempfile::tempdir().unwrap();
        let worker = Mirror::open_shared(dir.path(), "w1").unwrap();
        let left = lease_temp(&worker, "p/1/a.nc", "l1", Duration::from_secs(1));
        assert!(Mirror::open(dir.path()).is_err(), "a worker still holds it");
        drop(worker);
        let sync = Mirror::open(dir.path()).unwrap();
        assert!(!left.data.exists());
        assert!(
            sync.temp_paths("p/1/a.nc", "")
                .data
                .starts_with(&sync.tmp_dir)
        );
    }

    #[test]
    fn promotion_moves_the_file_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let temp = mirror.temp_paths("a/b/c.nc", "");
        std::fs::write(&temp.data, b"hello").unwrap();
        let file = File::open(&temp.data).unwrap();
        let target = mirror.final_path("a/b/c.nc").unwrap();
        mirror.promote(&file, &temp.data, &target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"hello");
        assert!(!temp.data.exists());
        assert!(mirror.final_path("../escape").is_err());
    }
}
