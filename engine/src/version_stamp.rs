//! The per-key promotion fence: **a file is never replaced by bytes of an older version than
//! the one it holds.**
//!
//! The lease fence (`fence`) stops a holder whose lease lapsed. It cannot stop a holder whose
//! lease is still valid but whose *item* is stale: a follow pass or an overlapping job adds a
//! changed object as a new item while the old item may still be leased, so two valid holders
//! may hold two versions of one key. If the old holder is slowed between verification and
//! rename, it would rename older bytes over the newer ones, and both items would end `done`.
//!
//! So every promoted file is stamped with the version of its bytes (the object's
//! Last-Modified, an extended attribute written before the file is made durable), and the
//! check "is what is at the final path newer than mine?" and the rename happen under one
//! lock per key stripe: an in-process mutex (flock is per open file description, so threads
//! of one process would share it) and a `flock` on `DEST/.era5/locks/promote.NN`, which
//! workers sharing DEST over NFSv4 or a local filesystem all see. S3 gives every upload a
//! Last-Modified no earlier than the one it replaces, so "older" is well defined; equal times
//! cannot be ordered and do not refuse.
//!
//! A file without a stamp (written by an older era5, by hand, or on a filesystem without
//! user extended attributes) refuses nothing: the fence only ever holds back bytes that are
//! provably older.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use common::sync::MutexExt;
use jiff::Timestamp;

/// The extended attribute holding the Last-Modified of a promoted file's bytes (RFC 3339).
pub const VERSION_ATTR: &str = "user.era5.last_modified";
/// Lock stripes: enough that unrelated keys rarely wait on each other, few enough to keep
/// open for the life of the mirror.
const STRIPES: usize = 64;
/// Longest stamp read back; anything longer is not ours and refuses nothing.
const MAX_STAMP: usize = 64;

/// The version of an object's bytes, by its Last-Modified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectVersion(Timestamp);

impl ObjectVersion {
    /// The version a listing or HEAD's Last-Modified names, if it parses, **to the whole
    /// second**: a HEAD's Last-Modified is an HTTP date (seconds) while a listing may carry
    /// milliseconds, and the same upload must never look older than itself.
    pub fn from_last_modified(last_modified: Option<&str>) -> Option<Self> {
        let time = last_modified?.parse::<Timestamp>().ok()?;
        Timestamp::from_second(time.as_second()).ok().map(Self)
    }

    fn text(self) -> String {
        self.0.to_string()
    }
}

impl std::fmt::Display for ObjectVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "last modified {}", self.0)
    }
}

/// Stamps `file` (a verified temporary, before it is made durable) with `version`. A
/// filesystem without user extended attributes is told once and otherwise ignored: the lease
/// fence still holds there.
pub fn stamp(file: &File, version: ObjectVersion) -> std::io::Result<()> {
    static TOLD: AtomicBool = AtomicBool::new(false);
    match rustix::fs::fsetxattr(
        file,
        VERSION_ATTR,
        version.text().as_bytes(),
        rustix::fs::XattrFlags::empty(),
    ) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOTSUP) => {
            if !TOLD.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "DEST does not keep user extended attributes: promotions are fenced by their lease only, not by the version already in place"
                );
            }
            Ok(())
        }
        Err(errno) => Err(errno.into()),
    }
}

/// The version stamped on the file at `path`, if there is a file and it carries our stamp.
pub fn stamped(path: &Path) -> Option<ObjectVersion> {
    let mut buffer = [0u8; MAX_STAMP];
    let length = rustix::fs::getxattr(path, VERSION_ATTR, &mut buffer[..]).ok()?;
    let text = std::str::from_utf8(&buffer[..length]).ok()?;
    ObjectVersion::from_last_modified(Some(text))
}

/// The locks that make "check what is in place, then rename" one step per key.
#[derive(Debug)]
pub struct PromotionLocks {
    dir: PathBuf,
    stripes: Vec<Mutex<Option<File>>>,
}

/// One key's stripe, held: dropped after the rename.
pub struct PromotionGuard<'a> {
    held: MutexGuard<'a, Option<File>>,
}

impl Drop for PromotionGuard<'_> {
    fn drop(&mut self) {
        if let Some(file) = self.held.as_ref() {
            let _ = rustix::fs::flock(file, rustix::fs::FlockOperation::Unlock);
        }
    }
}

impl PromotionLocks {
    /// Locks kept in `dir` (`DEST/.era5/locks`), created on first use.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            stripes: (0..STRIPES).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Takes `key`'s stripe, in this process and across processes sharing DEST. Blocks: call
    /// it off the async runtime.
    pub fn lock(&self, key: &str) -> std::io::Result<PromotionGuard<'_>> {
        let digest = <md5::Md5 as md5::Digest>::digest(key.as_bytes());
        let index = usize::from(digest[0]) % STRIPES;
        let mut held = self.stripes[index].lock_unpoisoned();
        if held.is_none() {
            std::fs::create_dir_all(&self.dir)?;
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(self.dir.join(format!("promote.{index:02}")))?;
            *held = Some(file);
        }
        if let Some(file) = held.as_ref() {
            rustix::fs::flock(file, rustix::fs::FlockOperation::LockExclusive)?;
        }
        Ok(PromotionGuard { held })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(text: &str) -> ObjectVersion {
        ObjectVersion::from_last_modified(Some(text)).unwrap()
    }

    #[test]
    fn versions_order_by_the_second_whatever_the_precision_written() {
        assert!(version("2024-01-01T00:00:00Z") < version("2024-01-01T00:00:01Z"));
        // A listing's milliseconds against a HEAD's HTTP date of the same upload.
        assert_eq!(
            version("2024-01-01T00:00:00Z"),
            version("2024-01-01T00:00:00.678Z")
        );
        assert_eq!(ObjectVersion::from_last_modified(Some("yesterday")), None);
        assert_eq!(ObjectVersion::from_last_modified(None), None);
    }

    #[test]
    fn a_stamp_reads_back_and_a_foreign_or_missing_one_refuses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        assert_eq!(stamped(&path), None);
        let v = version("2024-03-01T12:00:00Z");
        stamp(&file, v).unwrap();
        assert_eq!(stamped(&path), Some(v));
        rustix::fs::setxattr(
            &path,
            VERSION_ATTR,
            b"not a time",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        assert_eq!(stamped(&path), None);
        assert_eq!(stamped(&dir.path().join("missing")), None);
    }

    #[test]
    fn a_stripe_excludes_another_process_holding_it() {
        let dir = tempfile::tempdir().unwrap();
        let locks = PromotionLocks::new(dir.path().join("locks"));
        let guard = locks.lock("some/key").unwrap();
        // Another open file description (another process, in effect) cannot take it.
        let digest = <md5::Md5 as md5::Digest>::digest(b"some/key");
        let other = File::open(
            dir.path()
                .join("locks")
                .join(format!("promote.{:02}", usize::from(digest[0]) % STRIPES)),
        )
        .unwrap();
        assert!(
            rustix::fs::flock(&other, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .is_err()
        );
        drop(guard);
        rustix::fs::flock(&other, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    }
}
