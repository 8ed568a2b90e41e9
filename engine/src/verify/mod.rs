//! Byte-for-byte verification of a downloaded object.
//!
//! Size is always checked. Then, by mode:
//! - a single-part ETag must equal the MD5 of the file;
//! - a multipart ETag (`md5(concat(part md5s))-N`) is recomputed with the upload part size
//!   inferred from the size and `N`, trying the usual part sizes;
//! - in `full` mode, an S3 additional checksum (CRC32, CRC32C, CRC64NVME, SHA1, SHA256) that
//!   the server sent is checked too: a full-object one over all the bytes, a composite one
//!   (`value-N`, the checksum of the N upload parts' checksums) with the upload part size
//!   inferred as for a multipart ETag. One whose type the server does not state passes as
//!   either (see [`checksums`]).
//!
//! **A server's checksum that contradicts an ETag that verified never fails the object by
//! default**: the bytes are those the ETag's MD5s describe, so a new download would bring
//! them again. [`Verified`] then records the ETag's level and no checksum, and carries the
//! contradiction for the caller to report; [`OnContradiction::Fail`] (`--strict-checksums`)
//! fails it instead. Without an ETag that verified, a checksum mismatch fails as always.
//!
//! Digests are computed while parts stream in whenever the download layout allows it (a part
//! per upload part for multipart ETags; CRCs always, combined afterwards), so verifying usually
//! costs no second read. Otherwise one sequential read of the temporary file computes them.
//!
//! The module is split by concern:
//! - this file: [`VerifyMode`], what the bytes must be ([`Expected`]), the digests computed
//!   while parts stream in ([`StreamPlan`], [`PartHasher`], [`PartDigest`]), the entry points
//!   [`verify`] and [`verify_file`], and the sequential re-read of a file that both kinds of
//!   digest fall back on when the streamed ones do not suffice;
//! - [`etag`]: single-part and multipart ETags (the upload part size inferred from the size
//!   and the part count, the MD5 of the part MD5s);
//! - [`checksums`]: S3's additional checksums, full-object and composite (`value-N`).

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::str::FromStr;

use crate::fast_md5::Md5;
use crate::ordered_md5::OrderedMd5s;
use crc_fast::CrcAlgorithm;
use serde::{Deserialize, Serialize};
use thiserror::Error;

mod checksums;
pub mod etag;

pub use checksums::{ChecksumAlgo, ChecksumKind, ExpectedChecksum};
pub use etag::{EtagForm, candidate_part_sizes, likely_upload_part_size, multipart_digest};

use checksums::verify_checksum;
use etag::verify_etag;

/// How strongly to verify (`--verify`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// Size only (what most tools do; catches truncation only).
    Size,
    /// Size and ETag (MD5 or multipart MD5).
    Etag,
    /// Size, ETag and any additional checksum the server sends.
    Full,
}

impl VerifyMode {
    /// The flag value.
    pub fn name(self) -> &'static str {
        match self {
            VerifyMode::Size => "size",
            VerifyMode::Etag => "etag",
            VerifyMode::Full => "full",
        }
    }
}

impl fmt::Display for VerifyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for VerifyMode {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "size" => Ok(VerifyMode::Size),
            "etag" => Ok(VerifyMode::Etag),
            "full" => Ok(VerifyMode::Full),
            other => Err(format!(
                "invalid --verify `{other}`: expected size, etag or full"
            )),
        }
    }
}

/// Everything known about what the bytes must be.
#[derive(Clone, Debug)]
pub struct Expected {
    /// Exact size.
    pub size: u64,
    /// Unquoted ETag, if known.
    pub etag: Option<String>,
    /// Whole-object checksum, if the server sent one.
    pub checksum: Option<ExpectedChecksum>,
}

/// What each downloaded part computes while it streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamPlan {
    /// MD5 per part: the parts are the upload parts (or the whole object).
    pub md5: bool,
    /// MD5s hashed in order as parts complete, one per this many bytes: the upload part size
    /// of a multipart ETag, or the object size for a single-part ETag, when the download
    /// parts are not the upload parts (see `ordered_md5`).
    pub ordered_md5: Option<u64>,
    /// CRC per part, combined afterwards.
    pub crc: Option<ChecksumAlgo>,
    /// A CRC-64 of each part for no checksum but its own: parts that a resume state claims
    /// are read back and compared with it, so a part that did not survive on disk is fetched
    /// again alone. Only when the part has no MD5 or CRC of its own, and never with
    /// `--verify size`, which trusts the disk as it trusts the network.
    pub check: bool,
}

impl StreamPlan {
    /// The in-stream digests worth computing for `expected` at `mode` when the object is
    /// downloaded in parts of `part_size`.
    pub fn new(expected: &Expected, mode: VerifyMode, part_size: u64) -> Self {
        if mode == VerifyMode::Size {
            return Self::default();
        }
        let size = expected.size;
        let (md5, ordered_md5) = match expected.etag.as_deref().and_then(EtagForm::parse) {
            Some(EtagForm::Single(_)) => (size <= part_size, (size > part_size).then_some(size)),
            Some(EtagForm::Multipart { parts, .. }) => {
                let aligned = candidate_part_sizes(size, parts).contains(&part_size);
                let ordered = if aligned {
                    None
                } else {
                    likely_upload_part_size(size, parts)
                };
                (aligned, ordered)
            }
            None => (false, None),
        };
        let crc = match &expected.checksum {
            Some(c) if mode == VerifyMode::Full && c.algo.crc().is_some() => Some(c.algo),
            _ => None,
        };
        Self {
            md5,
            ordered_md5,
            crc,
            check: !md5 && crc.is_none(),
        }
    }
}

/// Digests of one part, computed as it streamed and kept in the resume state. On resume they
/// are what the part's bytes, read back from the disk, must give again; verification then
/// uses the digests of the bytes read back, never the remembered ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartDigest {
    /// Bytes in the part.
    pub len: u64,
    /// MD5, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// CRC value (not finalised into base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc: Option<u64>,
    /// CRC-64/NVME of the part, when it has no MD5 or CRC of its own ([`StreamPlan::check`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<u64>,
}

impl PartDigest {
    /// Whether the part carries anything to compare its bytes with.
    pub fn has_digest(&self) -> bool {
        self.md5.is_some() || self.crc.is_some() || self.check.is_some()
    }
}

/// The running digests of a part being downloaded.
pub struct PartHasher {
    len: u64,
    md5: Option<Md5>,
    crc: Option<crc_fast::Digest>,
    check: Option<crc_fast::Digest>,
    /// While the object's checksum algorithm is not known yet (its HEAD runs beside the first
    /// ranges): a digest of every CRC S3 may name, one of which [`PartHasher::finish_for`]
    /// keeps. CRCs cost little next to the network; a SHA is never guessed (it needs a read
    /// of the file anyway, see `checksums`).
    undecided: Option<Vec<(ChecksumAlgo, crc_fast::Digest)>>,
}

impl PartHasher {
    /// Starts the digests `plan` asks for.
    pub fn new(plan: StreamPlan) -> Self {
        Self {
            len: 0,
            md5: plan.md5.then(Md5::new),
            crc: plan
                .crc
                .and_then(checksums::ChecksumAlgo::crc)
                .map(|(algo, _)| crc_fast::Digest::new(algo)),
            check: plan
                .check
                .then(|| crc_fast::Digest::new(CrcAlgorithm::Crc64Nvme)),
            undecided: None,
        }
    }

    /// Starts the digests of `plan` whose checksum algorithm is still to learn: its MD5s, and
    /// every CRC the checksum may turn out to be.
    pub fn undecided(plan: StreamPlan) -> Self {
        let undecided = [
            ChecksumAlgo::Crc32,
            ChecksumAlgo::Crc32c,
            ChecksumAlgo::Crc64nvme,
        ]
        .into_iter()
        .filter_map(|algo| Some((algo, crc_fast::Digest::new(algo.crc()?.0))))
        .collect();
        Self {
            len: 0,
            md5: plan.md5.then(Md5::new),
            crc: None,
            check: None,
            undecided: Some(undecided),
        }
    }

    /// Adds the CRC of `algo` (when it is one and none runs yet), learnt from the response
    /// headers before the first byte: only valid while nothing has been hashed.
    pub fn start_crc(&mut self, algo: ChecksumAlgo) {
        debug_assert_eq!(self.len, 0, "a CRC must start with the part's first byte");
        if self.len == 0
            && self.crc.is_none()
            && let Some((crc, _)) = algo.crc()
        {
            self.crc = Some(crc_fast::Digest::new(crc));
        }
    }

    /// Feeds the next bytes of the part.
    pub fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if let Some(md5) = &mut self.md5 {
            md5.update(bytes);
        }
        if let Some(crc) = &mut self.crc {
            crc.update(bytes);
        }
        if let Some(check) = &mut self.check {
            check.update(bytes);
        }
        for (_, crc) in self.undecided.iter_mut().flatten() {
            crc.update(bytes);
        }
    }

    /// The part's digests.
    pub fn finish(self) -> PartDigest {
        PartDigest {
            len: self.len,
            md5: self.md5.map(|m| hex::encode(m.finish())),
            crc: self.crc.map(|c| c.finalize()),
            check: self.check.map(|c| c.finalize()),
        }
    }

    /// The part's digests as `plan` (now known) wants them: for a hasher started undecided,
    /// the CRC the plan names and the check CRC-64 if it wants one.
    pub fn finish_for(self, plan: StreamPlan) -> PartDigest {
        let Some(undecided) = &self.undecided else {
            return self.finish();
        };
        let value = |wanted: ChecksumAlgo| {
            undecided
                .iter()
                .find(|(algo, _)| *algo == wanted)
                .map(|(_, crc)| crc.finalize())
        };
        PartDigest {
            len: self.len,
            crc: plan.crc.and_then(value),
            check: plan.check.then(|| value(ChecksumAlgo::Crc64nvme)).flatten(),
            md5: self.md5.map(|m| hex::encode(m.finish())),
        }
    }
}

/// The digests `plan` asks for of `len` bytes of `file` at `offset`, read back from the disk.
pub fn digest_range(
    file: &File,
    offset: u64,
    len: u64,
    plan: StreamPlan,
) -> std::io::Result<PartDigest> {
    let mut hasher = PartHasher::new(plan);
    let mut buffer = vec![0u8; READ_BLOCK.min(len.max(1) as usize)];
    let mut done = 0u64;
    while done < len {
        let want = buffer.len().min((len - done) as usize);
        let read = file.read_at(&mut buffer[..want], offset + done)?;
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("file ended at {} of {}", offset + done, offset + len),
            ));
        }
        hasher.update(&buffer[..read]);
        done += read as u64;
    }
    Ok(hasher.finish())
}

/// The object failed verification.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// Wrong size (truncated or too long).
    #[error("size mismatch: expected {expected} bytes, found {actual}")]
    Size {
        /// Expected bytes.
        expected: u64,
        /// Bytes found.
        actual: u64,
    },
    /// Content does not match the ETag.
    #[error("etag mismatch: expected {expected}, computed {actual}")]
    Etag {
        /// The server's ETag.
        expected: String,
        /// What the bytes give.
        actual: String,
    },
    /// Content does not match the additional checksum.
    #[error("{algo} checksum mismatch: expected {expected}, computed {actual}")]
    Checksum {
        /// Algorithm name.
        algo: &'static str,
        /// The server's value.
        expected: String,
        /// What the bytes give.
        actual: String,
    },
    /// Reading the file failed.
    #[error("reading the file to verify it failed: {0}")]
    Io(String),
}

/// What verification established, for the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The strongest check that passed.
    pub level: VerifyMode,
    /// The checksum that was checked (`algo:value`, or `algo:value-N` when it verified as the
    /// composite of N parts), if any.
    pub checksum: Option<String>,
    /// The server's checksum, when it contradicted an ETag that verified the bytes: then
    /// `level` is `etag` and `checksum` is `None`, since that is what was verified. The
    /// caller says so (a warning, a counter) and keeps the object, or fails it under
    /// [`OnContradiction::Fail`] (see [`Verified::settle`]).
    pub contradiction: Option<VerifyError>,
}

/// What a server's checksum that contradicts an ETag that verified does to the object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnContradiction {
    /// The object is kept, recorded as verified by its ETag (the default).
    #[default]
    Keep,
    /// The object fails as on a checksum mismatch (`--strict-checksums`).
    Fail,
}

impl Verified {
    /// The outcome under `policy`: the contradiction as the error under
    /// [`OnContradiction::Fail`], otherwise this.
    pub fn settle(self, policy: OnContradiction) -> Result<Self, VerifyError> {
        match (policy, &self.contradiction) {
            (OnContradiction::Fail, Some(error)) => Err(error.clone()),
            _ => Ok(self),
        }
    }
}

/// Digests computed while the object was downloaded.
#[derive(Clone, Copy, Debug, Default)]
pub struct Streamed<'a> {
    /// The download part size the part digests refer to.
    pub part_size: u64,
    /// Each part's digests, in order.
    pub parts: &'a [PartDigest],
    /// MD5s hashed in order during the download (see [`StreamPlan::ordered_md5`]).
    pub ordered: Option<&'a OrderedMd5s>,
}

impl Streamed<'_> {
    /// Nothing was computed while downloading (a file already on disk).
    pub fn none() -> Self {
        Self::default()
    }
}

/// Verifies `file` against `expected` at `mode`, using what was computed while streaming
/// where it suffices and one sequential read of the file otherwise.
pub fn verify(
    file: &File,
    expected: &Expected,
    mode: VerifyMode,
    streamed: &Streamed<'_>,
) -> Result<Verified, VerifyError> {
    let actual = file
        .metadata()
        .map_err(|e| VerifyError::Io(e.to_string()))?
        .len();
    if actual != expected.size {
        return Err(VerifyError::Size {
            expected: expected.size,
            actual,
        });
    }
    if mode == VerifyMode::Size {
        return Ok(Verified {
            level: VerifyMode::Size,
            checksum: None,
            contradiction: None,
        });
    }
    let mut level = VerifyMode::Size;
    let mut etag_verified = false;
    let mut etag_parts = None;
    if let Some(etag) = expected.etag.as_deref() {
        if let Some(form) = EtagForm::parse(etag) {
            verify_etag(file, etag, &form, expected.size, streamed)?;
            level = mode;
            etag_verified = true;
            if let EtagForm::Multipart { parts, .. } = form {
                etag_parts = Some(parts);
            }
        } else {
            tracing::warn!(
                etag,
                "etag is not an md5; only size and checksums can be verified"
            );
        }
    }
    let mut checksum = None;
    let mut contradiction = None;
    if mode == VerifyMode::Full
        && let Some(expected_checksum) = &expected.checksum
    {
        match verify_checksum(file, expected_checksum, expected.size, etag_parts, streamed) {
            Ok(label) => {
                checksum = Some(label);
                level = VerifyMode::Full;
            }
            // The bytes are the ETag's MD5s: the server's checksum disagrees with its own ETag,
            // and downloading again would bring the same bytes. What stands is the ETag.
            Err(error @ VerifyError::Checksum { .. }) if etag_verified => {
                level = VerifyMode::Etag;
                contradiction = Some(error);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(Verified {
        level,
        checksum,
        contradiction,
    })
}

/// Block size of every read-back of a file to hash it (verification here, the in-order MD5s
/// of `ordered_md5`). **Kept under glibc's default mmap threshold (128 KiB)**: these buffers
/// are allocated per object on tokio's blocking threads, each of which takes a malloc arena
/// of its own (up to eight per core). Once one 1 MiB block had been freed, glibc's dynamic
/// mmap threshold rose to 1 MiB (and its trim threshold to 2 MiB), so every later zeroed 1 MiB
/// block was carved from an arena and memset there, and each arena kept a megabyte or two
/// resident after its object was done: a worker's RSS grew about 0.5 MiB a minute while its
/// live heap stayed under 8 MiB. A 64 KiB read costs one syscall per 64 KiB, small beside
/// hashing it, and the block stays in the L2 cache.
pub(crate) const READ_BLOCK: usize = 64 << 10;
const _: () = assert!(
    READ_BLOCK < 128 << 10,
    "keep READ_BLOCK under glibc's mmap threshold"
);

fn read_all(file: &File, mut consume: impl FnMut(&[u8])) -> Result<(), VerifyError> {
    let mut buffer = vec![0u8; READ_BLOCK];
    let mut offset = 0u64;
    loop {
        let read = file
            .read_at(&mut buffer, offset)
            .map_err(|e| VerifyError::Io(e.to_string()))?;
        if read == 0 {
            return Ok(());
        }
        consume(&buffer[..read]);
        offset += read as u64;
    }
}

/// What [`read_ranges`] hands over: the next bytes of the current range, or its end.
enum RangePiece<'a> {
    Bytes(&'a [u8]),
    End,
}

/// Reads the file's first `size` bytes in order, split into consecutive `chunk`-byte ranges.
fn read_ranges(
    file: &File,
    size: u64,
    chunk: u64,
    mut visit: impl FnMut(RangePiece<'_>),
) -> Result<(), VerifyError> {
    let mut in_current = 0u64;
    let mut offset = 0u64;
    let mut buffer = vec![0u8; READ_BLOCK.min(size.max(1) as usize)];
    while offset < size {
        let want = (READ_BLOCK as u64)
            .min(chunk - in_current)
            .min(size - offset) as usize;
        let read = file
            .read_at(&mut buffer[..want], offset)
            .map_err(|e| VerifyError::Io(e.to_string()))?;
        if read == 0 {
            return Err(VerifyError::Io(format!(
                "file ended at {offset} of {size} bytes"
            )));
        }
        visit(RangePiece::Bytes(&buffer[..read]));
        in_current += read as u64;
        offset += read as u64;
        if in_current == chunk || offset == size {
            visit(RangePiece::End);
            in_current = 0;
        }
    }
    Ok(())
}

/// Reads a file once and verifies it (used for files already in the mirror).
pub fn verify_file(
    path: &std::path::Path,
    expected: &Expected,
    mode: VerifyMode,
) -> Result<Verified, VerifyError> {
    let file = File::open(path).map_err(|e| VerifyError::Io(format!("{}: {e}", path.display())))?;
    verify(&file, expected, mode, &Streamed::none())
}

#[cfg(test)]
mod tests {
    use super::etag::md5_of;
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use std::io::Write;

    pub(super) fn temp_with(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    pub(super) fn multipart_etag(data: &[u8], part: usize) -> String {
        let md5s: Vec<[u8; 16]> = data.chunks(part).map(md5_of).collect();
        format!("{}-{}", hex::encode(multipart_digest(&md5s)), md5s.len())
    }

    pub(super) fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// The digests `plan` computes for `data` downloaded in `part`-byte parts.
    pub(super) fn streamed_digests(data: &[u8], part: usize, plan: StreamPlan) -> Vec<PartDigest> {
        data.chunks(part)
            .map(|chunk| {
                let mut hasher = PartHasher::new(plan);
                hasher.update(chunk);
                hasher.finish()
            })
            .collect()
    }

    #[test]
    fn an_undecided_hasher_keeps_the_crc_the_plan_names() {
        let data = pattern(100_000);
        for algo in [
            ChecksumAlgo::Crc32,
            ChecksumAlgo::Crc32c,
            ChecksumAlgo::Crc64nvme,
        ] {
            let plan = StreamPlan {
                crc: Some(algo),
                ..StreamPlan::default()
            };
            let mut undecided = PartHasher::undecided(StreamPlan::default());
            let mut decided = PartHasher::new(plan);
            for chunk in data.chunks(7_000) {
                undecided.update(chunk);
                decided.update(chunk);
            }
            assert_eq!(undecided.finish_for(plan), decided.finish(), "{algo:?}");
        }
        // No checksum after all: only the check CRC-64, as a plan without one asks.
        let plan = StreamPlan {
            check: true,
            ..StreamPlan::default()
        };
        let mut undecided = PartHasher::undecided(StreamPlan::default());
        let mut decided = PartHasher::new(plan);
        undecided.update(&data);
        decided.update(&data);
        assert_eq!(undecided.finish_for(plan), decided.finish());
    }

    #[test]
    fn streamed_part_digests_are_used_when_the_layout_matches() {
        let part = 5 * 1024 * 1024;
        let data = pattern(2 * part + 999);
        let file = temp_with(&data);
        let expected = Expected {
            size: data.len() as u64,
            etag: Some(multipart_etag(&data, part)),
            checksum: Some(ExpectedChecksum {
                kind: None,
                algo: ChecksumAlgo::Crc64nvme,
                value: BASE64
                    .encode(crc_fast::checksum(CrcAlgorithm::Crc64Nvme, &data).to_be_bytes()),
            }),
        };
        let plan = StreamPlan::new(&expected, VerifyMode::Full, part as u64);
        assert!(plan.md5);
        assert_eq!(plan.crc, Some(ChecksumAlgo::Crc64nvme));
        let digests: Vec<PartDigest> = streamed_digests(&data, part, plan);
        let verified = verify(
            &file,
            &expected,
            VerifyMode::Full,
            &Streamed {
                part_size: part as u64,
                parts: &digests,
                ordered: None,
            },
        )
        .unwrap();
        assert_eq!(verified.level, VerifyMode::Full);
        assert!(verified.checksum.unwrap().starts_with("crc64nvme:"));

        // Streamed digests that disagree with the ETag are caught (they are not trusted blindly).
        let mut wrong = digests.clone();
        wrong[1].md5 = Some(hex::encode([0u8; 16]));
        assert!(
            verify(
                &file,
                &expected,
                VerifyMode::Etag,
                &Streamed {
                    part_size: part as u64,
                    parts: &wrong,
                    ordered: None
                }
            )
            .is_err()
        );
    }
}
