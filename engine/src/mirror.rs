//! The destination directory: final paths, temporary files, resume state and atomic promotion.
//!
//! ```text
//! DEST/<key>                          verified objects, at the key's own relative path
//! DEST/.era5/lock                     flock: exclusive for `era5 sync`, shared by cluster workers
//! DEST/.era5/manifest.jsonl           the manifest snapshot (see `manifest`)
//! DEST/.era5/journals/<id>.jsonl      one manifest journal per process incarnation
//! DEST/.era5/locks/promote.NN         flock per key stripe around a promotion (`version_stamp`)
//! DEST/.era5/tmp/<name>.<hash>.part   an object being downloaded by `era5 sync`, written in place
//! DEST/.era5/tmp/<name>.<hash>.state  which parts of it are done, with digests
//! DEST/.era5/tmp/leases/<name>.<hash>.<lease>.part   the same for one cluster grant (no state)
//! <volume>/.era5-tmp/...              the same layout, for keys under a folder of DEST that is a
//!                                     symlink to another filesystem
//! ```
//!
//! **A file appears at its final path only after it is verified:** it is written under a
//! temporary name **on the final path's own filesystem** (so the rename is atomic, and a
//! product folder that is a symlink to another volume works), fsynced, then renamed into
//! place and the directory fsynced. A crash leaves at most a temporary file, which the next
//! run resumes.
//!
//! **Temporary names have a bounded length** (at most [`MAX_TEMP_NAME`] bytes, whatever the
//! key): the object's name is cut at 96 bytes, and a hash of the whole key keeps names apart.
//!
//! Cluster temporaries are named after the grant's lease id, which is never granted again, so a
//! killed worker's are never resumed: they are garbage. **Abandoned lease temporaries are swept**
//! (`Mirror::sweep_abandoned`): by a worker once they are untouched for `ABANDONED_AFTER`, and
//! all of them by `era5 sync`, whose exclusive lock proves no worker is writing. **Age is judged
//! by the filesystem's own clock** (the mtime of a probe file just written), never the local
//! one: on shared storage a worker whose clock runs fast must not see live files as old.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::paths::{UnsafeKey, final_path};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::manifest::FileIdentity;
use crate::verify::PartDigest;
use crate::version_stamp::{self, ObjectVersion, PromotionLocks};

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
    /// The filesystem refuses `flock` altogether.
    #[error(
        "{path} does not support file locks (flock: {source}); era5 locks DEST so that two syncs never write the same files: mount it with locking enabled (NFS: without `nolock`, with lockd or NFSv4; NFSv3 written by this machine alone: `local_lock=flock`)"
    )]
    NoLocks {
        /// DEST.
        path: PathBuf,
        /// What flock said.
        source: std::io::Error,
    },
}

/// Turns a failed `flock` on DEST's lock file into the error that names its cause.
fn lock_error(dest: &Path, error: std::io::Error) -> MirrorError {
    match error.raw_os_error() {
        Some(libc::EWOULDBLOCK) => MirrorError::Locked(dest.to_path_buf()),
        _ => MirrorError::NoLocks {
            path: dest.to_path_buf(),
            source: error,
        },
    }
}

/// How long a lease's temporary file may sit untouched before a worker deems it abandoned.
/// A live download writes to it at least every stall timeout (30 s by default) or retries; an
/// hour leaves a wide margin. Sweeping a live one by mistake costs that grant a failed attempt
/// (its promotion finds no file), never a wrong file.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// Longest temporary file name, in bytes (NAME_MAX is 255).
pub const MAX_TEMP_NAME: usize = 200;
/// Bytes of the object's own name kept in its temporary names.
const NAME_PART: usize = 96;
/// Bytes of a lease tag kept in temporary names.
const TAG_PART: usize = 40;
/// The temporary folder at the root of a volume that a symlinked folder of DEST leads to.
pub const VOLUME_TMP: &str = ".era5-tmp";

/// What a sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Why a verified file was not promoted.
#[derive(Debug, Error)]
pub enum PromoteError {
    /// Writing, syncing or renaming failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The holder may no longer write (its lease lapsed or was lost).
    #[error("not promoted: {0}")]
    Fenced(String),
    /// The file in place holds a newer version than these bytes (see `version_stamp`).
    #[error(
        "not promoted: the file in place holds a newer version ({recorded}) than these bytes ({ours})"
    )]
    Superseded {
        /// The version of the verified bytes.
        ours: ObjectVersion,
        /// The version stamped on the file in place.
        recorded: ObjectVersion,
    },
}

/// An opened destination.
#[derive(Debug)]
pub struct Mirror {
    dest: PathBuf,
    state_dir: PathBuf,
    tmp_dir: PathBuf,
    lease_tmp_dir: PathBuf,
    /// The device of `tmp_dir`: keys whose folders lead elsewhere get temporaries there.
    tmp_device: u64,
    /// Who writes: `None` for `era5 sync`, the worker's name in the cluster.
    writer: Option<String>,
    /// One lock per key stripe around "compare with the version in place, then rename".
    promotion_locks: PromotionLocks,
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
        let tmp_device = std::fs::metadata(&tmp_dir).map_err(dest_error)?.dev();
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(state_dir.join("lock"))
            .map_err(dest_error)?;
        let mode = if writer.is_some() {
            rustix::fs::FlockOperation::NonBlockingLockShared
        } else {
            rustix::fs::FlockOperation::NonBlockingLockExclusive
        };
        if let Err(errno) = rustix::fs::flock(&lock, mode) {
            return Err(lock_error(dest, errno.into()));
        }
        let mirror = Self {
            dest: dest.to_path_buf(),
            promotion_locks: PromotionLocks::new(state_dir.join("locks")),
            state_dir,
            tmp_dir,
            lease_tmp_dir,
            tmp_device,
            writer,
            _lock: lock,
        };
        if mirror.writer.is_none() {
            // The exclusive lock proves no worker is writing: every lease temporary is garbage.
            mirror.sweep_abandoned(Duration::ZERO);
        }
        Ok(mirror)
    }

    /// Every folder that holds lease temporaries: DEST's own, and those of other volumes
    /// reached through symlinked folders one or two levels down (a product, or a month).
    fn lease_tmp_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.lease_tmp_dir.clone()];
        let volume = |path: &Path| path.join(VOLUME_TMP).join("leases");
        let Ok(top) = std::fs::read_dir(&self.dest) else {
            return dirs;
        };
        for entry in top.flatten() {
            if entry.file_name() == ".era5" {
                continue;
            }
            let path = entry.path();
            if volume(&path).is_dir() {
                dirs.push(volume(&path));
            }
            let Ok(inner) = std::fs::read_dir(&path) else {
                continue;
            };
            for entry in inner.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_symlink()) && volume(&entry.path()).is_dir()
                {
                    dirs.push(volume(&entry.path()));
                }
            }
        }
        dirs
    }

    /// Removes lease temporaries untouched for `older_than` by the filesystem's own clock (see
    /// the module doc), logging what it freed. `era5 sync`'s own temporaries are never
    /// touched: they are its resume state.
    pub fn sweep_abandoned(&self, older_than: Duration) -> Swept {
        let mut swept = Swept::default();
        for dir in self.lease_tmp_dirs() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let cutoff = if older_than.is_zero() {
                None
            } else {
                match filesystem_now(&dir) {
                    Ok(now) => Some(
                        now.checked_sub(older_than)
                            .unwrap_or(SystemTime::UNIX_EPOCH),
                    ),
                    Err(error) => {
                        tracing::warn!(dir = %dir.display(), %error, "cannot read the filesystem's clock; not sweeping");
                        continue;
                    }
                }
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                let untouched = match cutoff {
                    None => true,
                    Some(cutoff) => meta.modified().is_ok_and(|modified| modified <= cutoff),
                };
                // Another worker's clock probe lives a moment; only `era5 sync` takes stray ones.
                let probe = is_probe(&entry.file_name()) && cutoff.is_some();
                if meta.is_file()
                    && untouched
                    && !probe
                    && std::fs::remove_file(entry.path()).is_ok()
                {
                    swept.files += 1;
                    swept.bytes += meta.len();
                }
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

    /// The folder of DEST where `key`'s path first leaves DEST's filesystem (through a
    /// symlink), if it does.
    fn other_volume(&self, key: &str) -> Option<PathBuf> {
        let mut dir = self.dest.clone();
        let segments: Vec<&str> = key.split('/').collect();
        for segment in &segments[..segments.len().saturating_sub(1)] {
            dir.push(segment);
            let meta = std::fs::metadata(&dir).ok()?;
            if !meta.is_dir() {
                return None;
            }
            if meta.dev() != self.tmp_device {
                return Some(dir);
            }
        }
        None
    }

    /// The temporary data and state paths of `key`, made unique by `tag` (a lease id in the
    /// cluster, empty for `era5 sync`), on the filesystem the key's final path is on.
    /// Deterministic, so a later run resumes.
    pub fn temp_paths(&self, key: &str, tag: &str) -> TempPaths {
        // A stable hash (not std's, which may change between builds) keeps names valid across
        // upgrades, so an interrupted download is resumed by a newer binary too.
        let digest = <md5::Md5 as md5::Digest>::digest(key.as_bytes());
        let name = key.rsplit('/').next().unwrap_or("object");
        let mut stem = format!("{}.{}", cut(name, NAME_PART), hex::encode(&digest[..8]));
        let (tmp_dir, lease_tmp_dir) = match self.other_volume(key) {
            Some(volume) => {
                let tmp = volume.join(VOLUME_TMP);
                let leases = tmp.join("leases");
                (tmp, leases)
            }
            None => (self.tmp_dir.clone(), self.lease_tmp_dir.clone()),
        };
        let dir = if tag.is_empty() {
            tmp_dir
        } else {
            stem.push('.');
            let tag: String = tag.chars().filter(char::is_ascii_alphanumeric).collect();
            stem.push_str(cut(&tag, TAG_PART));
            lease_tmp_dir
        };
        TempPaths {
            data: dir.join(format!("{stem}.part")),
            state: dir.join(format!("{stem}.state")),
        }
    }

    /// Makes a verified temporary file of `key` durable, stamped with its `version`, and
    /// moves it to `final_path` atomically, if `may_promote` still allows it right before the
    /// rename and the file in place is not of a newer version (both checked under the key's
    /// promotion lock). Returns the identity of the file now at the final path, for the
    /// manifest.
    pub fn promote(
        &self,
        key: &str,
        file: &File,
        temp: &Path,
        final_path: &Path,
        version: Option<ObjectVersion>,
        may_promote: impl FnOnce() -> Result<(), String>,
    ) -> Result<FileIdentity, PromoteError> {
        if let Some(version) = version {
            version_stamp::stamp(file, version)?;
        }
        file.sync_all()?;
        let parent = final_path.parent().unwrap_or(&self.dest);
        std::fs::create_dir_all(parent)?;
        let _key_locked = self.promotion_locks.lock(key)?;
        may_promote().map_err(PromoteError::Fenced)?;
        if let (Some(ours), Some(recorded)) = (version, version_stamp::stamped(final_path))
            && recorded > ours
        {
            return Err(PromoteError::Superseded { ours, recorded });
        }
        std::fs::rename(temp, final_path)?;
        File::open(parent)?.sync_all()?;
        Ok(FileIdentity::of(&file.metadata()?))
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

const PROBE_PREFIX: &str = ".era5-clock-probe.";

fn is_probe(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with(PROBE_PREFIX)
}

/// "Now" by the clock of the filesystem holding `dir`: the mtime of a probe file just written
/// there (on NFS the server sets it), so ages compare times of one clock.
pub fn filesystem_now(dir: &Path) -> std::io::Result<SystemTime> {
    let probe = dir.join(format!(
        "{PROBE_PREFIX}{}.{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let written = (|| {
        let mut file = File::create(&probe)?;
        file.write_all(b"t")?;
        file.metadata()?.modified()
    })();
    let _ = std::fs::remove_file(&probe);
    written
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
    /// Creates the folder of the temporary files (a volume's own may not exist yet).
    pub fn ensure_dir(&self) -> std::io::Result<()> {
        match self.data.parent() {
            Some(dir) => std::fs::create_dir_all(dir),
            None => Ok(()),
        }
    }

    /// The folder of the temporary files.
    pub fn dir(&self) -> &Path {
        self.data.parent().unwrap_or(Path::new("."))
    }

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

    /// Writes the state durably and atomically: a temporary file, fsynced, renamed into place.
    /// A crash leaves the old state or the new one, never a torn one. The caller makes the
    /// data the state claims durable first (see `writer`).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let temp = path.with_extension("state.new");
        let mut file = File::create(&temp)?;
        file.write_all(&serde_json::to_vec(self)?)?;
        file.sync_data()?;
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
    fn temporary_names_stay_short_whatever_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        // A final name of 255 bytes (the most a filesystem takes), with multi-byte characters
        // where the cut falls.
        let name = format!("{}{}.nc", "é".repeat(60), "x".repeat(255 - 120 - 3));
        assert_eq!(name.len(), 255);
        let key = format!("p/202401/{name}");
        for tag in ["", "0123456789abcdef0123456789abcdef0123456789abcdef"] {
            let temp = mirror.temp_paths(&key, tag);
            for path in [&temp.data, &temp.state.with_extension("state.new")] {
                let file_name = path.file_name().unwrap().len();
                assert!(file_name <= MAX_TEMP_NAME, "{file_name} bytes: {path:?}");
            }
            temp.ensure_dir().unwrap();
            std::fs::write(&temp.data, b"x").unwrap();
            std::fs::write(temp.state.with_extension("state.new"), b"x").unwrap();
            temp.remove();
        }
        // Keys that share their first 96 bytes of name still get their own files.
        let other = format!("p/202401/{}{}", "é".repeat(60), "y".repeat(132));
        assert_ne!(
            mirror.temp_paths(&key, "").data,
            mirror.temp_paths(&other, "").data
        );
    }

    #[test]
    fn a_filesystem_without_locks_is_named_as_the_cause() {
        let dest = Path::new("/data/era5");
        let busy = lock_error(dest, std::io::Error::from_raw_os_error(libc::EWOULDBLOCK));
        assert!(matches!(busy, MirrorError::Locked(_)));
        for errno in [libc::ENOLCK, libc::EOPNOTSUPP, libc::EINVAL] {
            let message = lock_error(dest, std::io::Error::from_raw_os_error(errno)).to_string();
            assert!(
                message.starts_with("/data/era5 does not support file locks")
                    && message.contains("mount it with locking enabled")
                    && !message.contains("another era5 sync"),
                "{message}"
            );
        }
    }

    #[test]
    fn temporaries_of_a_symlinked_folder_live_on_its_own_filesystem() {
        // A tmpfs is another filesystem than the test's temporary directory (unless that is a
        // tmpfs too, in which case both paths are on one device and the check is moot).
        let other = Path::new("/dev/shm");
        let dir = tempfile::tempdir().unwrap();
        let same_device = std::fs::metadata(other).map(|m| m.dev()).ok()
            == std::fs::metadata(dir.path()).map(|m| m.dev()).ok();
        if !other.is_dir() || same_device {
            eprintln!("no second filesystem at /dev/shm; the layout is checked by the e2e test");
            return;
        }
        let volume = tempfile::tempdir_in(other).unwrap();
        std::os::unix::fs::symlink(volume.path(), dir.path().join("p")).unwrap();
        let mirror = Mirror::open(dir.path()).unwrap();
        let temp = mirror.temp_paths("p/202401/x.nc", "");
        assert!(temp.data.starts_with(dir.path().join("p").join(VOLUME_TMP)));
        temp.ensure_dir().unwrap();
        std::fs::write(&temp.data, b"verified").unwrap();
        let file = File::open(&temp.data).unwrap();
        let target = mirror.final_path("p/202401/x.nc").unwrap();
        mirror
            .promote("p/202401/x.nc", &file, &temp.data, &target, None, || Ok(()))
            .unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"verified");
        // Lease temporaries there are swept too.
        let lease = mirror.temp_paths("p/202401/y.nc", "lease1");
        lease.ensure_dir().unwrap();
        std::fs::write(&lease.data, b"partial").unwrap();
        assert_eq!(mirror.sweep_abandoned(Duration::ZERO).files, 1);
    }

    #[test]
    fn the_filesystem_clock_is_read_from_a_probe() {
        let dir = tempfile::tempdir().unwrap();
        let now = filesystem_now(dir.path()).unwrap();
        let local = SystemTime::now();
        let apart = local.duration_since(now).unwrap_or_else(|e| e.duration());
        assert!(apart < Duration::from_secs(60), "{apart:?}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "probe left behind"
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
        mirror
            .promote("a/b/c.nc", &file, &temp.data, &target, None, || Ok(()))
            .unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"hello");
        assert!(!temp.data.exists());
        assert!(mirror.final_path("../escape").is_err());
    }

    #[test]
    fn older_bytes_never_replace_a_newer_version_and_equal_or_unknown_ones_do() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::open_shared(dir.path(), "w1").unwrap();
        let key = "a/b/c.nc";
        let target = mirror.final_path(key).unwrap();
        let version = |text: &str| ObjectVersion::from_last_modified(Some(text));
        let promote = |bytes: &[u8], version: Option<ObjectVersion>| {
            let temp = mirror.temp_paths(key, "lease");
            std::fs::write(&temp.data, bytes).unwrap();
            let file = File::open(&temp.data).unwrap();
            let promoted = mirror.promote(key, &file, &temp.data, &target, version, || Ok(()));
            temp.remove();
            promoted
        };
        // A file without a stamp (an older era5, or by hand) refuses nothing.
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, b"unstamped").unwrap();
        promote(b"newer", version("2024-02-01T00:00:00Z")).unwrap();
        assert_eq!(
            version_stamp::stamped(&target),
            version("2024-02-01T00:00:00Z")
        );
        let refused = promote(b"older", version("2024-01-01T00:00:00Z")).unwrap_err();
        assert!(
            matches!(refused, PromoteError::Superseded { .. }),
            "{refused}"
        );
        assert!(
            refused.to_string().contains("2024-02-01T00:00:00Z"),
            "{refused}"
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"newer");
        // The same version again (a repair) and bytes of unknown version are promoted.
        promote(b"repaired", version("2024-02-01T00:00:00.000Z")).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"repaired");
        promote(b"unknown", None).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"unknown");
        // The fence's own refusal still comes first.
        let temp = mirror.temp_paths(key, "lease");
        std::fs::write(&temp.data, b"late").unwrap();
        let file = File::open(&temp.data).unwrap();
        let fenced = mirror.promote(key, &file, &temp.data, &target, None, || {
            Err("the lease was lost".into())
        });
        assert!(matches!(fenced, Err(PromoteError::Fenced(_))));
    }
}
