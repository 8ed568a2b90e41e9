//! Byte-for-byte verification of a downloaded object.
//!
//! Size is always checked. Then, by mode:
//! - a single-part ETag must equal the MD5 of the file;
//! - a multipart ETag (`md5(concat(part md5s))-N`) is recomputed with the upload part size
//!   inferred from the size and `N`, trying the usual part sizes;
//! - in `full` mode, an S3 additional checksum (CRC32, CRC32C, CRC64NVME, SHA1, SHA256) that
//!   the server sent is checked too: a full-object one over all the bytes, a composite one
//!   (`value-N`, the checksum of the N upload parts' checksums) with the upload part size
//!   inferred as for a multipart ETag.
//!
//! Digests are computed while parts stream in whenever the download layout allows it (a part
//! per upload part for multipart ETags; CRCs always, combined afterwards), so verifying usually
//! costs no second read. Otherwise one sequential read of the temporary file computes them.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::str::FromStr;

use crate::fast_md5::Md5;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use crc_fast::CrcAlgorithm;
use serde::{Deserialize, Serialize};
use thiserror::Error;

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

/// An ETag in one of the forms S3 gives to unencrypted objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EtagForm {
    /// MD5 of the whole object.
    Single([u8; 16]),
    /// MD5 of the concatenated part MD5s, and the number of parts.
    Multipart {
        /// The outer digest.
        digest: [u8; 16],
        /// Number of upload parts.
        parts: u64,
    },
}

impl EtagForm {
    /// Parses an unquoted ETag; `None` for forms that are not an MD5 (e.g. SSE-KMS objects or
    /// other servers' opaque tags), which cannot be checked against the bytes.
    pub fn parse(etag: &str) -> Option<Self> {
        let (hex_part, parts) = match etag.split_once('-') {
            Some((hex_part, count)) => (
                hex_part,
                Some(count.parse::<u64>().ok().filter(|n| *n >= 1)?),
            ),
            None => (etag, None),
        };
        let mut digest = [0u8; 16];
        hex::decode_to_slice(hex_part, &mut digest).ok()?;
        Some(match parts {
            Some(parts) => EtagForm::Multipart { digest, parts },
            None => EtagForm::Single(digest),
        })
    }
}

/// Upload part sizes that could have produced `parts` parts for `size` bytes, most likely
/// first: the defaults of common uploaders, then the exact sizes the arithmetic allows.
pub fn candidate_part_sizes(size: u64, parts: u64) -> Vec<u64> {
    const MIB: u64 = 1 << 20;
    const USUAL: [u64; 16] = [
        8 * MIB,
        16 * MIB,
        5 * MIB,
        50 * MIB,
        64 * MIB,
        100 * MIB,
        10 * MIB,
        15 * MIB,
        32 * MIB,
        128 * MIB,
        256 * MIB,
        512 * MIB,
        1024 * MIB,
        5_000_000,
        8_000_000,
        100_000_000,
    ];
    if parts == 0 || size == 0 {
        return Vec::new();
    }
    let fits = |part: u64| part > 0 && size.div_ceil(part) == parts;
    let exact = size.div_ceil(parts);
    let mut candidates: Vec<u64> = USUAL
        .into_iter()
        .chain([exact.div_ceil(MIB) * MIB, exact])
        .filter(|p| fits(*p))
        .collect();
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|p| seen.insert(*p));
    candidates
}

/// A checksum algorithm S3 may return with `x-amz-checksum-mode: ENABLED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumAlgo {
    /// CRC-32 (ISO-HDLC).
    Crc32,
    /// CRC-32C (Castagnoli).
    Crc32c,
    /// CRC-64/NVME.
    Crc64nvme,
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
}

impl ChecksumAlgo {
    /// Lowercase name as in the header `x-amz-checksum-<name>`.
    pub fn name(self) -> &'static str {
        match self {
            ChecksumAlgo::Crc32 => "crc32",
            ChecksumAlgo::Crc32c => "crc32c",
            ChecksumAlgo::Crc64nvme => "crc64nvme",
            ChecksumAlgo::Sha1 => "sha1",
            ChecksumAlgo::Sha256 => "sha256",
        }
    }

    /// The CRC flavour and its width in bytes, when this is a CRC (those can be computed per
    /// part and combined).
    fn crc(self) -> Option<(CrcAlgorithm, usize)> {
        match self {
            ChecksumAlgo::Crc32 => Some((CrcAlgorithm::Crc32IsoHdlc, 4)),
            ChecksumAlgo::Crc32c => Some((CrcAlgorithm::Crc32Iscsi, 4)),
            ChecksumAlgo::Crc64nvme => Some((CrcAlgorithm::Crc64Nvme, 8)),
            ChecksumAlgo::Sha1 | ChecksumAlgo::Sha256 => None,
        }
    }
}

/// A running checksum of one [`ChecksumAlgo`], giving the raw bytes S3 encodes in base64.
enum ChecksumHasher {
    Crc(crc_fast::Digest, usize),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl ChecksumHasher {
    fn new(algo: ChecksumAlgo) -> Self {
        match algo.crc() {
            Some((crc, width)) => Self::Crc(crc_fast::Digest::new(crc), width),
            None if algo == ChecksumAlgo::Sha1 => Self::Sha1(sha1::Digest::new()),
            None => Self::Sha256(sha2::Digest::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Crc(digest, _) => digest.update(bytes),
            Self::Sha1(hasher) => sha1::Digest::update(hasher, bytes),
            Self::Sha256(hasher) => sha2::Digest::update(hasher, bytes),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Self::Crc(digest, width) => crc_bytes(digest.finalize(), width),
            Self::Sha1(hasher) => sha1::Digest::finalize(hasher).to_vec(),
            Self::Sha256(hasher) => sha2::Digest::finalize(hasher).to_vec(),
        }
    }
}

/// A CRC value as the big-endian bytes of its width.
fn crc_bytes(crc: u64, width: usize) -> Vec<u8> {
    crc.to_be_bytes()[8 - width..].to_vec()
}

/// A whole-object checksum announced by the server (base64, as S3 sends it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedChecksum {
    /// Algorithm.
    pub algo: ChecksumAlgo,
    /// Base64 value.
    pub value: String,
}

impl ExpectedChecksum {
    /// Picks the checksum from a HEAD or GET response's fields, full-object (`value`) or
    /// composite (`value-N`). A value with a malformed part count is ignored.
    pub fn from_response(
        crc32: Option<&str>,
        crc32c: Option<&str>,
        crc64nvme: Option<&str>,
        sha1: Option<&str>,
        sha256: Option<&str>,
    ) -> Option<Self> {
        [
            (ChecksumAlgo::Crc64nvme, crc64nvme),
            (ChecksumAlgo::Crc32c, crc32c),
            (ChecksumAlgo::Crc32, crc32),
            (ChecksumAlgo::Sha256, sha256),
            (ChecksumAlgo::Sha1, sha1),
        ]
        .into_iter()
        .find_map(|(algo, value)| {
            let value = value?.trim();
            let well_formed = match value.split_once('-') {
                None => !value.is_empty(),
                Some((sum, count)) => !sum.is_empty() && count.parse::<u64>().is_ok_and(|n| n >= 1),
            };
            well_formed.then(|| ExpectedChecksum {
                algo,
                value: value.to_string(),
            })
        })
    }

    /// The number of upload parts of a composite checksum (`value-N`); `None` for a
    /// full-object checksum. Base64 has no `-`, so the suffix is unambiguous.
    pub fn composite_parts(&self) -> Option<u64> {
        let (_, count) = self.value.split_once('-')?;
        count.parse().ok()
    }

    /// `algo:value`, as recorded in the manifest.
    pub fn label(&self) -> String {
        format!("{}:{}", self.algo.name(), self.value)
    }

    /// Reads back a [`label`](Self::label); `None` for anything else.
    pub fn parse_label(label: &str) -> Option<Self> {
        let (name, value) = label.split_once(':')?;
        let algo = [
            ChecksumAlgo::Crc32,
            ChecksumAlgo::Crc32c,
            ChecksumAlgo::Crc64nvme,
            ChecksumAlgo::Sha1,
            ChecksumAlgo::Sha256,
        ]
        .into_iter()
        .find(|a| a.name() == name)?;
        (!value.is_empty()).then(|| Self {
            algo,
            value: value.to_string(),
        })
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
    /// MD5 of the whole object, hashed in order as parts complete (a single-part ETag on an
    /// object downloaded in several parts).
    pub whole_md5: bool,
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
        let form = expected.etag.as_deref().and_then(EtagForm::parse);
        let md5 = match form {
            Some(EtagForm::Single(_)) => expected.size <= part_size,
            Some(EtagForm::Multipart { parts, .. }) => {
                candidate_part_sizes(expected.size, parts).contains(&part_size)
            }
            None => false,
        };
        let whole_md5 = matches!(form, Some(EtagForm::Single(_))) && expected.size > part_size;
        let crc = match &expected.checksum {
            Some(c) if mode == VerifyMode::Full && c.algo.crc().is_some() => Some(c.algo),
            _ => None,
        };
        Self {
            md5,
            whole_md5,
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
}

impl PartHasher {
    /// Starts the digests `plan` asks for.
    pub fn new(plan: StreamPlan) -> Self {
        Self {
            len: 0,
            md5: plan.md5.then(Md5::new),
            crc: plan
                .crc
                .and_then(|a| a.crc())
                .map(|(algo, _)| crc_fast::Digest::new(algo)),
            check: plan
                .check
                .then(|| crc_fast::Digest::new(CrcAlgorithm::Crc64Nvme)),
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
    /// The checksum that was checked (`algo:value`), if any.
    pub checksum: Option<String>,
}

/// Digests computed while the object was downloaded.
#[derive(Clone, Copy, Debug, Default)]
pub struct Streamed<'a> {
    /// The download part size the part digests refer to.
    pub part_size: u64,
    /// Each part's digests, in order.
    pub parts: &'a [PartDigest],
    /// MD5 of the whole object, when it was hashed in order during the download.
    pub whole_md5: Option<[u8; 16]>,
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
        });
    }
    let mut level = VerifyMode::Size;
    if let Some(etag) = expected.etag.as_deref() {
        if let Some(form) = EtagForm::parse(etag) {
            verify_etag(file, etag, &form, expected.size, streamed)?;
            level = mode;
        } else {
            tracing::warn!(
                etag,
                "etag is not an md5; only size and checksums can be verified"
            );
        }
    }
    let mut checksum = None;
    if mode == VerifyMode::Full
        && let Some(expected_checksum) = &expected.checksum
    {
        verify_checksum(file, expected_checksum, expected.size, streamed)?;
        checksum = Some(expected_checksum.label());
        level = VerifyMode::Full;
    }
    Ok(Verified { level, checksum })
}

fn verify_etag(
    file: &File,
    etag: &str,
    form: &EtagForm,
    size: u64,
    streamed: &Streamed<'_>,
) -> Result<(), VerifyError> {
    let (part_size, parts) = (streamed.part_size, streamed.parts);
    let streamed_md5s: Option<Vec<[u8; 16]>> = parts
        .iter()
        .map(|p| p.md5.as_deref().and_then(hex16))
        .collect();
    let mismatch = |actual: String| VerifyError::Etag {
        expected: etag.to_string(),
        actual,
    };
    match form {
        EtagForm::Single(want) => {
            let got = match (streamed.whole_md5, streamed_md5s.as_deref()) {
                (Some(whole), _) => whole,
                (None, Some([only])) => *only,
                _ if size == 0 => md5_of(&[]),
                _ => md5_of_ranges(file, size, size)?
                    .first()
                    .copied()
                    .unwrap_or_else(|| md5_of(&[])),
            };
            if got != *want {
                return Err(mismatch(hex::encode(got)));
            }
            Ok(())
        }
        EtagForm::Multipart {
            digest,
            parts: count,
        } => {
            let candidates = candidate_part_sizes(size, *count);
            let mut last_actual =
                format!("no upload part size gives {count} parts for {size} bytes");
            for candidate in candidates {
                let md5s = match (&streamed_md5s, candidate == part_size) {
                    (Some(md5s), true) if md5s.len() as u64 == *count => md5s.clone(),
                    _ => md5_of_ranges(file, size, candidate)?,
                };
                let got = multipart_digest(&md5s);
                if got == *digest {
                    return Ok(());
                }
                last_actual = format!("{}-{count} with {candidate}-byte parts", hex::encode(got));
            }
            Err(mismatch(last_actual))
        }
    }
}

fn verify_checksum(
    file: &File,
    expected: &ExpectedChecksum,
    size: u64,
    streamed: &Streamed<'_>,
) -> Result<(), VerifyError> {
    let actual = match expected.composite_parts() {
        None => BASE64.encode(whole_checksum(file, expected.algo, streamed.parts)?),
        Some(count) => composite_checksum(file, expected, size, count, streamed)?,
    };
    if actual != expected.value {
        return Err(VerifyError::Checksum {
            algo: expected.algo.name(),
            expected: expected.value.clone(),
            actual,
        });
    }
    Ok(())
}

/// The raw checksum of the whole file: CRCs combined from the streamed parts when every part
/// has one, otherwise one read of the file.
fn whole_checksum(
    file: &File,
    algo: ChecksumAlgo,
    parts: &[PartDigest],
) -> Result<Vec<u8>, VerifyError> {
    if let (Some((_, width)), Some(combined)) = (algo.crc(), combine_part_crcs(algo, parts)) {
        return Ok(crc_bytes(combined, width));
    }
    let mut hasher = ChecksumHasher::new(algo);
    read_all(file, |bytes| hasher.update(bytes))?;
    Ok(hasher.finish())
}

/// The CRC of consecutive parts, combined from theirs; `None` if a part has none (or there
/// are no parts, or `algo` is not a CRC).
fn combine_part_crcs(algo: ChecksumAlgo, parts: &[PartDigest]) -> Option<u64> {
    let (crc, _) = algo.crc()?;
    parts
        .iter()
        .map(|p| p.crc.map(|c| (c, p.len)))
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .reduce(|(a, _), (b, len)| (crc_fast::checksum_combine(crc, a, b, len), len))
        .map(|(combined, _)| combined)
}

/// S3's composite checksum of a multipart upload, `base64(algo(concat(part checksums)))-N`,
/// for the first candidate upload part size that reproduces `expected`; otherwise a
/// description of what the most likely part size gave, for the error.
///
/// The part checksums come from the streamed CRCs when each upload part is a whole number of
/// download parts, and from one read of the file per candidate otherwise.
fn composite_checksum(
    file: &File,
    expected: &ExpectedChecksum,
    size: u64,
    count: u64,
    streamed: &Streamed<'_>,
) -> Result<String, VerifyError> {
    let mut first_miss = None;
    for candidate in candidate_part_sizes(size, count) {
        let part_sums = match streamed_upload_part_crcs(expected.algo, candidate, streamed) {
            Some(sums) => sums,
            None => checksums_of_ranges(file, expected.algo, size, candidate)?,
        };
        let mut outer = ChecksumHasher::new(expected.algo);
        for sum in &part_sums {
            outer.update(sum);
        }
        let got = format!("{}-{}", BASE64.encode(outer.finish()), part_sums.len());
        if got == expected.value {
            return Ok(got);
        }
        first_miss.get_or_insert_with(|| format!("{got} with {candidate}-byte parts"));
    }
    Ok(first_miss
        .unwrap_or_else(|| format!("no upload part size gives {count} parts for {size} bytes")))
}

/// The raw CRC of each `upload_part`-byte range, combined from the streamed download parts
/// when those tile the upload parts exactly.
fn streamed_upload_part_crcs(
    algo: ChecksumAlgo,
    upload_part: u64,
    streamed: &Streamed<'_>,
) -> Option<Vec<Vec<u8>>> {
    let (_, width) = algo.crc()?;
    let download_part = streamed.part_size;
    if streamed.parts.is_empty() || download_part == 0 || !upload_part.is_multiple_of(download_part)
    {
        return None;
    }
    streamed
        .parts
        .chunks((upload_part / download_part) as usize)
        .map(|group| combine_part_crcs(algo, group).map(|crc| crc_bytes(crc, width)))
        .collect()
}

/// The raw checksum of each consecutive `chunk`-byte range of the file's first `size` bytes.
fn checksums_of_ranges(
    file: &File,
    algo: ChecksumAlgo,
    size: u64,
    chunk: u64,
) -> Result<Vec<Vec<u8>>, VerifyError> {
    let mut sums = Vec::new();
    let mut current = ChecksumHasher::new(algo);
    read_ranges(file, size, chunk, |piece| match piece {
        RangePiece::Bytes(bytes) => current.update(bytes),
        RangePiece::End => {
            sums.push(std::mem::replace(&mut current, ChecksumHasher::new(algo)).finish())
        }
    })?;
    Ok(sums)
}

fn hex16(text: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

fn md5_of(bytes: &[u8]) -> [u8; 16] {
    Md5::digest(bytes)
}

/// `md5(concat(part md5s))`.
pub fn multipart_digest(part_md5s: &[[u8; 16]]) -> [u8; 16] {
    let mut outer = Md5::new();
    for md5 in part_md5s {
        outer.update(md5);
    }
    outer.finish()
}

/// Block size of the verification read.
const READ_BLOCK: usize = 1 << 20;

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
    let mut buffer = vec![0u8; READ_BLOCK];
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

/// MD5 of each consecutive `chunk`-byte range of the file's first `size` bytes.
fn md5_of_ranges(file: &File, size: u64, chunk: u64) -> Result<Vec<[u8; 16]>, VerifyError> {
    let mut digests = Vec::new();
    let mut current = Md5::new();
    read_ranges(file, size, chunk, |piece| match piece {
        RangePiece::Bytes(bytes) => current.update(bytes),
        RangePiece::End => digests.push(std::mem::take(&mut current).finish()),
    })?;
    Ok(digests)
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
    use super::*;
    use std::io::Write;

    fn temp_with(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    fn multipart_etag(data: &[u8], part: usize) -> String {
        let md5s: Vec<[u8; 16]> = data.chunks(part).map(md5_of).collect();
        format!("{}-{}", hex::encode(multipart_digest(&md5s)), md5s.len())
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// The digests `plan` computes for `data` downloaded in `part`-byte parts.
    fn streamed_digests(data: &[u8], part: usize, plan: StreamPlan) -> Vec<PartDigest> {
        data.chunks(part)
            .map(|chunk| {
                let mut hasher = PartHasher::new(plan);
                hasher.update(chunk);
                hasher.finish()
            })
            .collect()
    }

    #[test]
    fn checksum_labels_read_back() {
        let checksum = ExpectedChecksum {
            algo: ChecksumAlgo::Crc32c,
            value: "AAAAAA==-3".into(),
        };
        assert_eq!(
            ExpectedChecksum::parse_label(&checksum.label()),
            Some(checksum)
        );
        assert_eq!(ExpectedChecksum::parse_label("md4:abc"), None);
        assert_eq!(ExpectedChecksum::parse_label("crc32:"), None);
    }

    #[test]
    fn etag_forms_parse() {
        assert!(matches!(
            EtagForm::parse("d41d8cd98f00b204e9800998ecf8427e"),
            Some(EtagForm::Single(_))
        ));
        assert!(matches!(
            EtagForm::parse("d41d8cd98f00b204e9800998ecf8427e-12"),
            Some(EtagForm::Multipart { parts: 12, .. })
        ));
        assert_eq!(EtagForm::parse("opaque-tag"), None);
        assert_eq!(EtagForm::parse("d41d8cd98f00b204e9800998ecf8427e-0"), None);
    }

    #[test]
    fn candidate_part_sizes_fit_the_part_count() {
        let mib = 1u64 << 20;
        let size = 100 * mib + 17;
        let candidates = candidate_part_sizes(size, 13);
        assert_eq!(candidates[0], 8 * mib);
        for c in &candidates {
            assert_eq!(size.div_ceil(*c), 13);
        }
        // An odd uploader part size is still found through the exact arithmetic.
        let odd = 7 * mib + 12345;
        let size = odd * 3 + 10;
        assert!(
            candidate_part_sizes(size, 4)
                .iter()
                .any(|c| size.div_ceil(*c) == 4)
        );
    }

    #[test]
    fn single_and_multipart_etags_verify_with_and_without_streamed_digests() {
        let data = pattern(3 * 1024 * 1024 + 77);
        let file = temp_with(&data);
        let single = Expected {
            size: data.len() as u64,
            etag: Some(hex::encode(md5_of(&data))),
            checksum: None,
        };
        assert_eq!(
            verify(
                &file,
                &single,
                VerifyMode::Etag,
                &Streamed {
                    part_size: 1 << 20,
                    parts: &[],
                    whole_md5: None
                }
            )
            .unwrap()
            .level,
            VerifyMode::Etag
        );

        // Uploaded with 1 MiB parts: the candidate search must find an exact part size.
        let multi = Expected {
            size: data.len() as u64,
            etag: Some(multipart_etag(&data, 5 * 1024 * 1024)),
            checksum: None,
        };
        assert!(
            verify(
                &file,
                &multi,
                VerifyMode::Etag,
                &Streamed {
                    part_size: 8 << 20,
                    parts: &[],
                    whole_md5: None
                }
            )
            .is_ok()
        );

        let corrupt = {
            let mut bad = data.clone();
            bad[1_000_000] ^= 1;
            temp_with(&bad)
        };
        assert!(matches!(
            verify(
                &corrupt,
                &single,
                VerifyMode::Etag,
                &Streamed {
                    part_size: 1 << 20,
                    parts: &[],
                    whole_md5: None
                }
            ),
            Err(VerifyError::Etag { .. })
        ));
        assert!(matches!(
            verify(
                &corrupt,
                &multi,
                VerifyMode::Etag,
                &Streamed {
                    part_size: 1 << 20,
                    parts: &[],
                    whole_md5: None
                }
            ),
            Err(VerifyError::Etag { .. })
        ));
        // Size mode does not read content.
        assert!(
            verify(
                &corrupt,
                &single,
                VerifyMode::Size,
                &Streamed {
                    part_size: 1 << 20,
                    parts: &[],
                    whole_md5: None
                }
            )
            .is_ok()
        );
        let short = temp_with(&data[..100]);
        assert!(matches!(
            verify(
                &short,
                &single,
                VerifyMode::Size,
                &Streamed {
                    part_size: 1 << 20,
                    parts: &[],
                    whole_md5: None
                }
            ),
            Err(VerifyError::Size { .. })
        ));
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
                whole_md5: None,
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
                    whole_md5: None
                }
            )
            .is_err()
        );
    }

    #[test]
    fn wrong_checksums_fail_only_in_full_mode() {
        let data = pattern(4096);
        let file = temp_with(&data);
        for algo in [
            ChecksumAlgo::Crc32,
            ChecksumAlgo::Crc32c,
            ChecksumAlgo::Crc64nvme,
            ChecksumAlgo::Sha1,
            ChecksumAlgo::Sha256,
        ] {
            let expected = Expected {
                size: 4096,
                etag: Some(hex::encode(md5_of(&data))),
                checksum: Some(ExpectedChecksum {
                    algo,
                    value: "AAAAAA==".into(),
                }),
            };
            assert!(
                matches!(
                    verify(
                        &file,
                        &expected,
                        VerifyMode::Full,
                        &Streamed {
                            part_size: 1 << 20,
                            parts: &[],
                            whole_md5: None
                        }
                    ),
                    Err(VerifyError::Checksum { .. })
                ),
                "{algo:?}"
            );
            assert!(
                verify(
                    &file,
                    &expected,
                    VerifyMode::Etag,
                    &Streamed {
                        part_size: 1 << 20,
                        parts: &[],
                        whole_md5: None
                    }
                )
                .is_ok()
            );
        }
        let crc32c = BASE64
            .encode((crc_fast::checksum(CrcAlgorithm::Crc32Iscsi, &data) as u32).to_be_bytes());
        let expected = Expected {
            size: 4096,
            etag: None,
            checksum: Some(ExpectedChecksum {
                algo: ChecksumAlgo::Crc32c,
                value: crc32c,
            }),
        };
        assert_eq!(
            verify(
                &file,
                &expected,
                VerifyMode::Full,
                &Streamed {
                    part_size: 1 << 20,
                    parts: &[],
                    whole_md5: None
                }
            )
            .unwrap()
            .level,
            VerifyMode::Full
        );
    }

    /// S3's composite checksum, computed independently of the code under test.
    fn composite(algo: ChecksumAlgo, data: &[u8], upload_part: usize) -> String {
        let raw = |bytes: &[u8]| -> Vec<u8> {
            match algo {
                ChecksumAlgo::Crc32c => (crc_fast::checksum(CrcAlgorithm::Crc32Iscsi, bytes)
                    as u32)
                    .to_be_bytes()
                    .to_vec(),
                ChecksumAlgo::Sha256 => {
                    sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(bytes))
                        .to_vec()
                }
                other => unreachable!("not used here: {other:?}"),
            }
        };
        let sums: Vec<u8> = data.chunks(upload_part).flat_map(raw).collect();
        format!(
            "{}-{}",
            BASE64.encode(raw(&sums)),
            data.len().div_ceil(upload_part)
        )
    }

    #[test]
    fn composite_checksums_are_parsed_and_malformed_ones_ignored() {
        let pick =
            |value: &str| ExpectedChecksum::from_response(None, Some(value), None, None, None);
        assert_eq!(pick("AAAAAA==-3").unwrap().composite_parts(), Some(3));
        assert_eq!(pick("AAAAAA==").unwrap().composite_parts(), None);
        for malformed in ["AAAAAA==-", "AAAAAA==-x", "AAAAAA==-0", "-3", ""] {
            assert_eq!(pick(malformed), None, "{malformed:?}");
        }
    }

    #[test]
    fn composite_checksums_verify_with_the_inferred_upload_part_size() {
        let mib = 1 << 20;
        // 3 parts of 10 MiB: 8 MiB parts would also make 3, so the first candidate is wrong
        // and the next one must be tried.
        let upload_part = 10 * mib;
        let data = pattern(2 * upload_part + 5);
        let file = temp_with(&data);
        let expected_for = |algo, value: String| Expected {
            size: data.len() as u64,
            etag: None,
            checksum: Some(ExpectedChecksum { algo, value }),
        };
        let read_only = Streamed {
            part_size: 8 * mib as u64,
            parts: &[],
            whole_md5: None,
        };
        for algo in [ChecksumAlgo::Crc32c, ChecksumAlgo::Sha256] {
            let expected = expected_for(algo, composite(algo, &data, upload_part));
            let verified = verify(&file, &expected, VerifyMode::Full, &read_only).unwrap();
            assert_eq!(verified.level, VerifyMode::Full, "{algo:?}");
            assert!(verified.checksum.unwrap().ends_with("-3"), "{algo:?}");
        }

        // Download parts that tile the upload parts: the streamed CRCs are combined per upload
        // part, with no read. Shown by verifying them against a file of other bytes.
        let download_part = 5 * mib;
        let expected = expected_for(
            ChecksumAlgo::Crc32c,
            composite(ChecksumAlgo::Crc32c, &data, upload_part),
        );
        let plan = StreamPlan::new(&expected, VerifyMode::Full, download_part as u64);
        let digests: Vec<PartDigest> = streamed_digests(&data, download_part, plan);
        let other_bytes = temp_with(&vec![0u8; data.len()]);
        let streamed = Streamed {
            part_size: download_part as u64,
            parts: &digests,
            whole_md5: None,
        };
        assert!(verify(&other_bytes, &expected, VerifyMode::Full, &streamed).is_ok());
        assert!(verify(&other_bytes, &expected, VerifyMode::Full, &read_only).is_err());

        // A wrong composite value fails and says what the bytes give.
        let wrong = expected_for(ChecksumAlgo::Crc32c, "AAAAAA==-3".into());
        match verify(&file, &wrong, VerifyMode::Full, &read_only) {
            Err(VerifyError::Checksum { actual, .. }) => {
                assert!(actual.ends_with("-3 with 8388608-byte parts"), "{actual}")
            }
            other => panic!("expected a checksum mismatch, got {other:?}"),
        }
        // So does a part count that no part size can give.
        let impossible = expected_for(ChecksumAlgo::Crc32c, "AAAAAA==-99999999".into());
        assert!(matches!(
            verify(&file, &impossible, VerifyMode::Full, &read_only),
            Err(VerifyError::Checksum { .. })
        ));
    }
}
