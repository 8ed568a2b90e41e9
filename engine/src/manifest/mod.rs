//! The mirror's manifest: every verified object (key, size, ETag, checksum, verification level,
//! time, and the identity of the file that was verified), one JSON object per line.
//!
//! ```text
//! DEST/.era5/manifest.jsonl                    the snapshot; `era5 sync` appends to it
//! DEST/.era5/journals/<worker>.<id>.jsonl      one journal per worker process incarnation
//! DEST/.era5/compact.lock                      taken to rewrite the snapshot
//! ```
//!
//! - **One journal per process incarnation.** A worker appends only to a journal of its own,
//!   named after its worker name and a random incarnation id, so two writers never share a
//!   file (not `w/1` and `w_1`, not two sources of one worker, not a restarted worker and its
//!   previous life). It holds an exclusive `flock` on it while it lives. `era5 sync`, which
//!   holds DEST exclusively, appends to the snapshot.
//! - **Batched, by a thread of its own.** Records are buffered and appended with one write and
//!   one `fdatasync` per batch ([`BATCH_SIZE`] records, or when the oldest has waited
//!   [`BATCH_INTERVAL`], by a real timer), not once per file, on the journal writer's thread,
//!   never on the async runtime's. A failed append is cut back off the file, so a full disk
//!   never leaves a torn line in the middle.
//! - **Crash-safe.** A crash can only lose the unflushed tail or tear the last line; loading
//!   skips a torn line. A record is written only after its file was promoted.
//! - **A record is tied to the bytes at the path**: it carries the inode and mtime of the file
//!   it vouches for, and triage trusts it only while the file at the path still has them.
//!   **The manifest never vouches for bytes it did not see.**
//! - **Merges do not depend on wall clocks.** Within one file the later line wins (one writer,
//!   in order). When two files disagree about a key, the record whose identity matches the
//!   file at the path wins; if none does, the key is dropped and triage verifies the file.
//! - **Compaction** merges journals whose process is gone (their `flock` is free) into the
//!   snapshot, rewriting it atomically, when they add up to an eighth of it or number
//!   [`COMPACT_FILES`]; `era5 sync` also rewrites a snapshot that superseded lines dominate.
//! - **Bounded memory.** In memory a record is a fixed 80-byte slot (hashes instead of
//!   strings), sorted by the MD5 of its key: a million records take about 80 MiB, and loading
//!   them streams line by line.

use rustix::fs::FlockOperation;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::verify::VerifyMode;

mod merge;
mod read;
mod slot;
mod writer;

pub use read::{forget_records, read_records};
use slot::{Tag, modified_hash};
pub use writer::Manifest;

/// Records per appended batch.
pub const BATCH_SIZE: usize = 64;
/// Longest time a record waits in the buffer.
pub const BATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Dead journals that trigger a compaction whatever their size.
pub const COMPACT_FILES: usize = 16;

const SNAPSHOT: &str = "manifest.jsonl";
const JOURNALS: &str = "journals";
const COMPACT_LOCK: &str = "compact.lock";

/// The file a record vouches for: its inode and modification time (with the size, which the
/// record carries anyway). A rename onto the path, or a write into the file, changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileIdentity {
    /// Inode number.
    pub ino: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
}

impl FileIdentity {
    /// The identity of a file from its metadata.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            ino: meta.ino(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
        }
    }
}

/// One verified object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Object key (also the path under DEST).
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Unquoted ETag of the version verified.
    pub etag: Option<String>,
    /// Last-Modified of that version (RFC 3339), to recognise it in listings without ETags.
    #[serde(default)]
    pub last_modified: Option<String>,
    /// Additional checksum verified (`algo:base64`), if any.
    #[serde(default)]
    pub checksum: Option<String>,
    /// The strongest check that passed.
    pub verified: VerifyMode,
    /// When (RFC 3339, UTC), for people; merges never look at it.
    pub verified_at: String,
    /// The file that was verified. Records written before identities existed have none and
    /// are trusted by size, as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileIdentity>,
}

/// What the manifest remembers of a record, for triage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// Size in bytes.
    pub size: u64,
    /// The strongest check that passed.
    pub verified: VerifyMode,
    /// The file that was verified.
    pub file: Option<FileIdentity>,
    etag: Option<Tag>,
    modified: Option<u64>,
}

impl Recorded {
    /// Whether the record is of the version with this ETag.
    pub fn etag_is(&self, etag: &str) -> bool {
        self.etag == Some(Tag::of(etag))
    }

    /// Whether the record is of the version with this Last-Modified (to the second).
    pub fn modified_is(&self, last_modified: &str) -> bool {
        self.modified == Some(modified_hash(last_modified))
    }

    /// **The one decision of whether a record is of the version a listing entry describes**,
    /// shared by sync, follow passes and audit, so that they never disagree. A size or ETag
    /// that differs is another version. A listing without ETags (some S3-compatible servers
    /// send none) is compared by what it does carry: the same Last-Modified is the same
    /// version; otherwise only a HEAD can tell.
    pub fn against(&self, listed: &common::RemoteObject) -> Currency {
        if self.size != listed.size {
            return Currency::Replaced;
        }
        match (&self.etag, listed.etag.as_deref()) {
            (Some(_), Some(etag)) if self.etag_is(etag) => Currency::Current,
            (Some(_), Some(_)) => Currency::Replaced,
            _ => match listed.last_modified.as_deref() {
                Some(modified) if self.modified_is(modified) => Currency::Current,
                _ => Currency::Undecided,
            },
        }
    }
}

/// How a record stands against a listing entry ([`Recorded::against`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Currency {
    /// The record is of the listed version.
    Current,
    /// The listed object is another version: replaced upstream.
    Replaced,
    /// The listing does not carry what would tell (no ETag on one side, and no matching
    /// Last-Modified): the sizes agree, and a HEAD decides where one may be sent.
    Undecided,
}

impl From<&ManifestEntry> for Recorded {
    fn from(entry: &ManifestEntry) -> Self {
        Self {
            size: entry.size,
            verified: entry.verified,
            file: entry.file,
            etag: entry.etag.as_deref().map(Tag::of),
            modified: entry.last_modified.as_deref().map(modified_hash),
        }
    }
}

/// Now, RFC 3339 UTC, for `verified_at`.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

fn flock(file: &File, operation: FlockOperation) -> std::io::Result<()> {
    rustix::fs::flock(file, operation).map_err(std::io::Error::from)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A journal and its length.
type JournalLen = (PathBuf, u64);

/// Journals nobody writes any more (their `flock` is free), with their sizes, and the legacy
/// journals of older versions (`manifest.<worker>.jsonl`). With `all_dead`, every journal
/// counts as dead without a check (`era5 sync` holds DEST).
fn dead_journals(
    state_dir: &Path,
    all_dead: bool,
) -> std::io::Result<(Vec<JournalLen>, Vec<PathBuf>)> {
    let mut dead = Vec::new();
    for path in journal_files(&state_dir.join(JOURNALS))? {
        let file = File::open(&path)?;
        if all_dead || flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok() {
            let len = file.metadata()?.len();
            dead.push((path, len));
        }
    }
    let mut legacy = Vec::new();
    for entry in std::fs::read_dir(state_dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Our own file names, written in lower case: an exact comparison is the right one.
        #[allow(clippy::case_sensitive_file_extension_comparisons)]
        let legacy_name = name.starts_with("manifest.") && name.ends_with(".jsonl");
        if legacy_name && name != SNAPSHOT {
            legacy.push(path);
        }
    }
    legacy.sort();
    Ok((dead, legacy))
}

/// The journals in `dir`, sorted; none when there is no such folder (a mirror written before
/// journals existed, read by `audit` or `verify`, which create nothing).
fn journal_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// What the tests of every part share.
#[cfg(test)]
mod testing {
    use super::*;

    pub(super) fn entry(key: &str, etag: &str) -> ManifestEntry {
        ManifestEntry {
            key: key.into(),
            size: 10,
            etag: Some(etag.into()),
            last_modified: None,
            checksum: None,
            verified: VerifyMode::Full,
            verified_at: now_rfc3339(),
            file: None,
        }
    }

    /// A DEST with its state folder; returns (dest, state_dir).
    pub(super) fn dest() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(".era5");
        std::fs::create_dir_all(&state).unwrap();
        (dir, state)
    }
}
