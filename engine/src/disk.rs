//! The local disk as the engine sees it: what kind of failure a write error is, how much room
//! is left, and the state that stops new downloads once DEST is full or failing.
//!
//! - **Classification by type.** [`LocalIoKind::of`] reads the error number (ENOSPC, EDQUOT,
//!   EROFS, EIO), never the message.
//! - **Nothing starts that cannot fit.** [`SpaceBudget::reserve`] compares an object's missing
//!   bytes with the free space (statvfs) of the filesystem it will be written to, minus what
//!   downloads already running there still have to write. A [`Reservation`] shrinks as its
//!   bytes land and is returned when the download ends.
//! - **A full or failing disk stops new work.** The first local write error marks the DEST
//!   unhealthy ([`DestHealth`]); `era5 sync` then starts no more objects, and a cluster worker
//!   releases its lease and takes none until space returns (see `agent`).

use common::sync::MutexExt;
use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::units::human_bytes;

/// What kind of local failure an I/O error is; a bounded set, so it can label metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LocalIoKind {
    /// ENOSPC: the filesystem is full.
    NoSpace,
    /// EDQUOT: the user's quota is used up.
    Quota,
    /// EROFS: the filesystem turned read-only (often after errors).
    ReadOnly,
    /// EIO: the device failed.
    Io,
    /// EMFILE, ENFILE, ENOMEM: the process or the machine ran out of file descriptors or
    /// memory. A local resource failure, not the object's: its lease is released.
    Resources,
    /// Anything else (permissions, a vanished directory...).
    Other,
}

impl LocalIoKind {
    /// Every kind, for reports.
    pub const ALL: [LocalIoKind; 6] = [
        LocalIoKind::NoSpace,
        LocalIoKind::Quota,
        LocalIoKind::ReadOnly,
        LocalIoKind::Io,
        LocalIoKind::Resources,
        LocalIoKind::Other,
    ];

    /// The kind of `error`, from its error number.
    pub fn of(error: &std::io::Error) -> Self {
        match error.raw_os_error() {
            Some(libc::ENOSPC) => LocalIoKind::NoSpace,
            Some(libc::EDQUOT) => LocalIoKind::Quota,
            Some(libc::EROFS) => LocalIoKind::ReadOnly,
            Some(libc::EIO) => LocalIoKind::Io,
            Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM) => LocalIoKind::Resources,
            _ => match error.kind() {
                std::io::ErrorKind::StorageFull => LocalIoKind::NoSpace,
                std::io::ErrorKind::QuotaExceeded => LocalIoKind::Quota,
                std::io::ErrorKind::ReadOnlyFilesystem => LocalIoKind::ReadOnly,
                std::io::ErrorKind::OutOfMemory => LocalIoKind::Resources,
                _ => LocalIoKind::Other,
            },
        }
    }

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            LocalIoKind::NoSpace => "no_space",
            LocalIoKind::Quota => "quota",
            LocalIoKind::ReadOnly => "read_only",
            LocalIoKind::Io => "io",
            LocalIoKind::Resources => "resources",
            LocalIoKind::Other => "other",
        }
    }

    /// Index into [`LocalIoKind::ALL`].
    pub fn index(self) -> usize {
        LocalIoKind::ALL
            .iter()
            .position(|k| *k == self)
            .unwrap_or(0)
    }

    /// Whether DEST or the machine is the problem (full, over quota, read-only, failing, out
    /// of file descriptors or memory), so that other objects would fail the same way: new
    /// work stops and no lease is blamed.
    pub fn is_dest_failure(self) -> bool {
        self != LocalIoKind::Other
    }

    /// Whether waiting for free space can cure it.
    pub fn wants_space(self) -> bool {
        matches!(self, LocalIoKind::NoSpace | LocalIoKind::Quota)
    }
}

/// A local write failed, with what is known about room on the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalIoError {
    /// What kind of failure.
    pub kind: LocalIoKind,
    /// The directory being written (DEST, or the volume a symlinked folder leads to).
    pub path: PathBuf,
    /// The system's message.
    pub detail: String,
    /// Bytes the object still needed, when known.
    pub needed: Option<u64>,
    /// Bytes free for it, when known.
    pub free: Option<u64>,
}

impl LocalIoError {
    /// `error` while writing under `path`, with free space read now.
    pub fn from_io(error: &std::io::Error, path: &Path, needed: Option<u64>) -> Self {
        let kind = LocalIoKind::of(error);
        Self {
            kind,
            path: path.to_path_buf(),
            detail: error.to_string(),
            needed,
            free: kind.wants_space().then(|| free_bytes(path)).flatten(),
        }
    }
}

impl fmt::Display for LocalIoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        let room = |f: &mut fmt::Formatter<'_>| match (self.needed, self.free) {
            (Some(needed), Some(free)) => write!(
                f,
                ": needs {} more, {} free",
                human_bytes(needed),
                human_bytes(free)
            ),
            (Some(needed), None) => write!(f, ": needs {} more", human_bytes(needed)),
            (None, Some(free)) => write!(f, ": {} free", human_bytes(free)),
            (None, None) => Ok(()),
        };
        match self.kind {
            LocalIoKind::NoSpace => {
                write!(f, "no space left on DEST ({path})")?;
                room(f)
            }
            LocalIoKind::Quota => {
                write!(f, "disk quota exceeded on DEST ({path})")?;
                room(f)
            }
            LocalIoKind::ReadOnly => write!(f, "DEST ({path}) is read-only: {}", self.detail),
            LocalIoKind::Io => write!(f, "i/o error writing DEST ({path}): {}", self.detail),
            LocalIoKind::Resources => write!(
                f,
                "out of local resources writing DEST ({path}): {} (raise `ulimit -n`, or free memory)",
                self.detail
            ),
            LocalIoKind::Other => write!(f, "writing DEST ({path}) failed: {}", self.detail),
        }
    }
}

impl std::error::Error for LocalIoError {}

/// Bytes an unprivileged writer may still use on the filesystem holding `path` (statvfs).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let stats = rustix::fs::statvfs(path).ok()?;
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// The room promised to downloads in progress, per filesystem.
#[derive(Debug, Default)]
pub struct SpaceBudget {
    /// Bytes still to be written by running downloads, by device.
    outstanding: Mutex<HashMap<u64, u64>>,
}

impl SpaceBudget {
    /// Promises `needed` bytes in `dir` if the filesystem has them beyond what running
    /// downloads still need; otherwise says how much is missing.
    pub fn reserve(self: &Arc<Self>, dir: &Path, needed: u64) -> Result<Reservation, LocalIoError> {
        let device = std::fs::metadata(dir)
            .map(|m| m.dev())
            .map_err(|e| LocalIoError::from_io(&e, dir, Some(needed)))?;
        let free = free_bytes(dir);
        let mut outstanding = self.outstanding.lock_unpoisoned();
        let promised = outstanding.entry(device).or_default();
        if let Some(free) = free {
            let available = free.saturating_sub(*promised);
            if needed > available {
                return Err(LocalIoError {
                    kind: LocalIoKind::NoSpace,
                    path: dir.to_path_buf(),
                    detail: "not enough free space to start".into(),
                    needed: Some(needed - available),
                    free: Some(available),
                });
            }
        }
        *promised += needed;
        Ok(Reservation {
            budget: self.clone(),
            device,
            remaining: AtomicU64::new(needed),
        })
    }

    fn give_back(&self, device: u64, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut outstanding = self.outstanding.lock_unpoisoned();
        if let Some(promised) = outstanding.get_mut(&device) {
            *promised = promised.saturating_sub(bytes);
        }
    }
}

/// Room promised to one download; what it has not written yet goes back when it is dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<SpaceBudget>,
    device: u64,
    remaining: AtomicU64,
}

impl Reservation {
    /// `bytes` of the download are now on the disk (or allocated there).
    pub fn landed(&self, bytes: u64) {
        let taken = self
            .remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                Some(left.saturating_sub(bytes))
            })
            .map_or(0, |left| left.min(bytes));
        self.budget.give_back(self.device, taken);
    }

    /// Bytes promised and not yet landed.
    pub fn remaining(&self) -> u64 {
        self.remaining.load(Ordering::Relaxed)
    }

    /// Everything is allocated at once (a preallocated file).
    pub fn all_landed(&self) {
        let left = self.remaining.swap(0, Ordering::Relaxed);
        self.budget.give_back(self.device, left);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let left = self.remaining.swap(0, Ordering::Relaxed);
        self.budget.give_back(self.device, left);
    }
}

/// Whether DEST took a write error that would fail other objects too, and which.
#[derive(Debug, Default)]
pub struct DestHealth {
    failure: Mutex<Option<LocalIoError>>,
}

impl DestHealth {
    /// Records a failure of the disk (the first one is kept).
    pub fn failed(&self, error: &LocalIoError) {
        if error.kind.is_dest_failure() {
            self.failure
                .lock_unpoisoned()
                .get_or_insert_with(|| error.clone());
        }
    }

    /// The failure that stops new work, if any.
    pub fn failure(&self) -> Option<LocalIoError> {
        self.failure.lock_unpoisoned().clone()
    }

    /// Lets new work start again (the worker saw space return).
    pub fn clear(&self) {
        *self.failure.lock_unpoisoned() = None;
    }
}

/// A cluster worker's gate on taking leases: closed by a full or failing DEST, reopened by
/// itself once there is room again (or, for a failing disk, once a probe write succeeds).
#[derive(Debug, Default)]
pub struct DiskGate {
    closed: Mutex<Option<Closed>>,
}

#[derive(Clone, Debug)]
struct Closed {
    reason: String,
    kind: LocalIoKind,
    /// Free bytes that reopen it.
    wanted: u64,
}

/// Room that reopens the gate at least: a full disk with a few bytes free is still full.
const MIN_FREE_TO_REOPEN: u64 = 1 << 20;

impl DiskGate {
    /// Closes the gate because of `error`.
    pub fn close(&self, error: &LocalIoError) {
        let wanted = (error.free.unwrap_or(0) + error.needed.unwrap_or(0)).max(MIN_FREE_TO_REOPEN);
        let mut closed = self.closed.lock_unpoisoned();
        if closed.is_none() {
            tracing::warn!(%error, "DEST cannot take more data: releasing work and taking no leases until it can");
        }
        *closed = Some(Closed {
            reason: error.to_string(),
            kind: error.kind,
            wanted,
        });
    }

    /// Why it is closed, if it is.
    pub fn closed_because(&self) -> Option<String> {
        self.closed
            .lock_unpoisoned()
            .as_ref()
            .map(|c| c.reason.clone())
    }

    /// Reopens the gate if `dest` can take data again: enough free space for a full disk,
    /// a successful durable probe write otherwise. Returns whether it is open.
    pub fn try_reopen(&self, dest: &Path) -> bool {
        let Some(closed) = self.closed.lock_unpoisoned().clone() else {
            return true;
        };
        let healthy = if closed.kind.wants_space() {
            free_bytes(dest).is_some_and(|free| free >= closed.wanted)
        } else {
            probe_write(dest).is_ok()
        };
        if healthy {
            tracing::info!(dest = %dest.display(), "DEST can take data again: taking leases");
            *self.closed.lock_unpoisoned() = None;
        }
        healthy
    }
}

/// Writes, syncs and removes a small file in `dir`.
fn probe_write(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(format!(".era5-probe.{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&[0u8; 4096])?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_errors_are_classified_by_their_number() {
        let of = |errno| LocalIoKind::of(&std::io::Error::from_raw_os_error(errno));
        assert_eq!(of(libc::ENOSPC), LocalIoKind::NoSpace);
        assert_eq!(of(libc::EDQUOT), LocalIoKind::Quota);
        assert_eq!(of(libc::EROFS), LocalIoKind::ReadOnly);
        assert_eq!(of(libc::EIO), LocalIoKind::Io);
        assert_eq!(of(libc::EACCES), LocalIoKind::Other);
        // Out of descriptors or memory: the machine's failure, never the lease's.
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOMEM] {
            assert_eq!(of(errno), LocalIoKind::Resources);
            assert!(of(errno).is_dest_failure());
        }
        // The message is never read.
        let lying = std::io::Error::other("No space left on device");
        assert_eq!(LocalIoKind::of(&lying), LocalIoKind::Other);
    }

    #[test]
    fn the_message_says_what_is_missing() {
        let error = LocalIoError {
            kind: LocalIoKind::NoSpace,
            path: PathBuf::from("/data/era5"),
            detail: String::new(),
            needed: Some(1_288_490_189),
            free: Some(300 << 20),
        };
        assert_eq!(
            error.to_string(),
            "no space left on DEST (/data/era5): needs 1.2 GiB more, 300.0 MiB free"
        );
    }

    #[test]
    fn reservations_count_against_free_space_until_they_land() {
        let dir = tempfile::tempdir().unwrap();
        let budget = Arc::new(SpaceBudget::default());
        let free = free_bytes(dir.path()).unwrap();
        let half = budget.reserve(dir.path(), free / 2 + 1).unwrap();
        let refused = budget.reserve(dir.path(), free / 2 + 1).unwrap_err();
        assert_eq!(refused.kind, LocalIoKind::NoSpace);
        half.landed(free / 2 + 1);
        // What landed is no longer promised (the filesystem's own figure would now show it).
        assert!(budget.reserve(dir.path(), free / 2).is_ok());
        drop(half);
    }

    #[test]
    fn the_gate_reopens_once_the_room_wanted_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let gate = DiskGate::default();
        assert!(gate.try_reopen(dir.path()));
        let free = free_bytes(dir.path()).unwrap();
        gate.close(&LocalIoError {
            kind: LocalIoKind::NoSpace,
            path: dir.path().to_path_buf(),
            detail: String::new(),
            needed: Some(free),
            free: Some(free),
        });
        assert!(gate.closed_because().is_some());
        assert!(
            !gate.try_reopen(dir.path()),
            "twice the free space is not there"
        );
        gate.close(&LocalIoError {
            kind: LocalIoKind::NoSpace,
            path: dir.path().to_path_buf(),
            detail: String::new(),
            needed: Some(1),
            free: Some(0),
        });
        assert!(gate.try_reopen(dir.path()));
        assert!(gate.closed_because().is_none());
    }
}
