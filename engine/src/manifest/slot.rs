//! A record in memory: a fixed 80-byte slot, hashes instead of strings (an ETag as the MD5 it
//! states and its part count), and the fields of a line that loading parses to make one.

use serde::Deserialize;

use crate::fast_md5::Md5;
use crate::verify::{EtagForm, VerifyMode};

use super::{FileIdentity, Recorded};

/// An ETag in 20 bytes: the MD5 it states and its part count, or a hash of an opaque one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tag {
    digest: [u8; 16],
    /// Parts of a multipart ETag; 0 for a single MD5; `u32::MAX` for an opaque tag.
    parts: u32,
}

impl Tag {
    pub(super) fn of(etag: &str) -> Self {
        match EtagForm::parse(etag) {
            Some(EtagForm::Single(digest)) => Tag { digest, parts: 0 },
            Some(EtagForm::Multipart { digest, parts }) if parts < u64::from(u32::MAX) => Tag {
                digest,
                parts: parts as u32,
            },
            _ => Tag {
                digest: Md5::digest(etag.as_bytes()),
                parts: u32::MAX,
            },
        }
    }
}

pub(super) fn hash64(text: &str) -> u64 {
    let digest = Md5::digest(text.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
}

/// A Last-Modified as the instant it names, to the second: a listing says
/// `2024-01-01T00:00:00.000Z` where a HEAD's header, and so the record, says
/// `2024-01-01T00:00:00Z`, and both are the same version. Text that is not a timestamp is
/// compared as it is.
pub(super) fn modified_hash(last_modified: &str) -> u64 {
    match last_modified.parse::<jiff::Timestamp>() {
        Ok(instant) => hash64(&instant.as_second().to_string()),
        Err(_) => hash64(last_modified.trim()),
    }
}

pub(super) fn key_hash(key: &str) -> [u8; 16] {
    Md5::digest(key.as_bytes())
}

const HAS_ETAG: u8 = 1;
const HAS_MODIFIED: u8 = 2;
const HAS_FILE: u8 = 4;

/// A record in memory: 80 bytes, whatever its strings.
#[derive(Clone, Copy, Debug)]
pub(super) struct Slot {
    pub(super) key: [u8; 16],
    pub(super) size: u64,
    etag: [u8; 16],
    etag_parts: u32,
    flags: u8,
    verified: VerifyMode,
    /// Which loaded file it came from (for conflicts and compaction).
    pub(super) source: u16,
    modified: u64,
    ino: u64,
    mtime_ns: i64,
    /// Where its line starts in that file.
    pub(super) offset: u64,
}

/// No file: a record made by this process.
pub(super) const NO_SOURCE: u16 = u16::MAX;

impl Slot {
    pub(super) fn new(view: &EntryView<'_>, source: u16, offset: u64) -> Self {
        let mut flags = 0;
        let tag = view.etag.as_deref().map(|etag| {
            flags |= HAS_ETAG;
            Tag::of(etag)
        });
        let modified = view.last_modified.as_deref().map(|m| {
            flags |= HAS_MODIFIED;
            modified_hash(m)
        });
        if view.file.is_some() {
            flags |= HAS_FILE;
        }
        let file = view.file.unwrap_or(FileIdentity {
            ino: 0,
            mtime_ns: 0,
        });
        Slot {
            key: key_hash(&view.key),
            size: view.size,
            etag: tag.map_or([0; 16], |t| t.digest),
            etag_parts: tag.map_or(0, |t| t.parts),
            flags,
            verified: view.verified,
            source,
            modified: modified.unwrap_or(0),
            ino: file.ino,
            mtime_ns: file.mtime_ns,
            offset,
        }
    }

    pub(super) fn recorded(&self) -> Recorded {
        Recorded {
            size: self.size,
            verified: self.verified,
            file: self.file(),
            etag: (self.flags & HAS_ETAG != 0).then_some(Tag {
                digest: self.etag,
                parts: self.etag_parts,
            }),
            modified: (self.flags & HAS_MODIFIED != 0).then_some(self.modified),
        }
    }

    pub(super) fn file(&self) -> Option<FileIdentity> {
        (self.flags & HAS_FILE != 0).then_some(FileIdentity {
            ino: self.ino,
            mtime_ns: self.mtime_ns,
        })
    }
}

/// The fields of a line that memory keeps; the rest is skipped while parsing.
#[derive(Deserialize)]
pub(super) struct EntryView<'a> {
    #[serde(borrow)]
    pub(super) key: std::borrow::Cow<'a, str>,
    pub(super) size: u64,
    #[serde(default, borrow)]
    pub(super) etag: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(super) last_modified: Option<std::borrow::Cow<'a, str>>,
    pub(super) verified: VerifyMode,
    #[serde(default)]
    pub(super) file: Option<FileIdentity>,
}
