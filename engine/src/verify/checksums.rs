//! S3's additional checksums (CRC32, CRC32C, CRC64NVME, SHA1, SHA256), checked in `full` mode.
//!
//! A full-object checksum covers all the bytes; a composite one (`value-N`) is the checksum of
//! the N upload parts' checksums, with the upload part size inferred as for a multipart ETag.
//! CRCs can be computed per download part while streaming and combined afterwards (for the
//! whole object, or per upload part when download parts tile upload parts), so they usually
//! cost no read; SHAs cannot be combined and need one read of the file. Kept apart from the
//! ETag because the algorithms, their encoding (base64) and the combining are their own.
//!
//! **A checksum is read as its server states it, and only an unstated one is read both ways**
//! ([`readings`]): a `-N` suffix makes it composite over N parts; otherwise
//! `x-amz-checksum-type` says `FULL_OBJECT` (the whole object) or `COMPOSITE` (over the parts
//! the multipart ETag's `-N` gives). With neither (moto answers a HEAD so, and so may other
//! S3-compatible servers), the value verifies if it is the whole object's checksum or the
//! composite one over the upload parts the multipart ETag reveals.

use std::fs::File;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use crc_fast::CrcAlgorithm;
use serde::{Deserialize, Serialize};

use super::{PartDigest, Streamed, VerifyError, candidate_part_sizes, read_all};

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
    pub(super) fn crc(self) -> Option<(CrcAlgorithm, usize)> {
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

/// What a checksum value is over, as the server states it (`x-amz-checksum-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChecksumKind {
    /// Every byte of the object.
    FullObject,
    /// The checksums of the upload parts, concatenated.
    Composite,
}

impl ChecksumKind {
    /// Reads the header's value; `None` for anything but `FULL_OBJECT` and `COMPOSITE`.
    pub fn parse(header: &str) -> Option<Self> {
        match header.trim() {
            "FULL_OBJECT" => Some(Self::FullObject),
            "COMPOSITE" => Some(Self::Composite),
            _ => None,
        }
    }
}

/// A whole-object checksum announced by the server (base64, as S3 sends it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedChecksum {
    /// Algorithm.
    pub algo: ChecksumAlgo,
    /// Base64 value, with `-N` when the server gave a composite checksum's part count.
    pub value: String,
    /// What the value is over, when the server says; `None` when it does not, and then the
    /// value may be read either way (see [`readings`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ChecksumKind>,
}

impl ExpectedChecksum {
    /// Picks the checksum from a HEAD or GET response's fields, full-object (`value`) or
    /// composite (`value-N`), with the checksum type the response states, if any. A value
    /// with a malformed part count is ignored.
    pub fn from_response(
        crc32: Option<&str>,
        crc32c: Option<&str>,
        crc64nvme: Option<&str>,
        sha1: Option<&str>,
        sha256: Option<&str>,
        kind: Option<&str>,
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
                kind: kind.and_then(ChecksumKind::parse),
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

    /// The value without a composite checksum's `-N`: the base64 of the checksum itself.
    fn sum(&self) -> &str {
        self.value
            .split_once('-')
            .map_or(self.value.as_str(), |(sum, _)| sum)
    }

    /// Reads back a [`label`](Self::label) (the type is not recorded: a label is `value-N`
    /// when it was verified as composite); `None` for anything else.
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
            kind: None,
        })
    }
}

/// One way to read a checksum value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reading {
    /// Over every byte.
    Whole,
    /// Over the checksums of this many upload parts.
    Composite(u64),
}

/// The readings of `expected` to try, in order, for an object whose ETag is multipart of
/// `etag_parts` parts (`None` for a single-part or unparsable ETag): the one the server
/// states, or, when it states none, the whole object and then the composite over the ETag's
/// part count. Empty when the server says composite but no part count is known.
pub(super) fn readings(expected: &ExpectedChecksum, etag_parts: Option<u64>) -> Vec<Reading> {
    if let Some(count) = expected.composite_parts() {
        return vec![Reading::Composite(count)];
    }
    match expected.kind {
        Some(ChecksumKind::FullObject) => vec![Reading::Whole],
        Some(ChecksumKind::Composite) => etag_parts.map(Reading::Composite).into_iter().collect(),
        None => std::iter::once(Reading::Whole)
            .chain(etag_parts.map(Reading::Composite))
            .collect(),
    }
}

/// Checks `expected` against the file under each of its [`readings`] until one matches, and
/// returns the label to record: `algo:value`, or `algo:value-N` for a composite checksum the
/// server gave without its part count (so the record says what was verified).
pub(super) fn verify_checksum(
    file: &File,
    expected: &ExpectedChecksum,
    size: u64,
    etag_parts: Option<u64>,
    streamed: &Streamed<'_>,
) -> Result<String, VerifyError> {
    let (algo, sum) = (expected.algo, expected.sum());
    let readings = readings(expected, etag_parts);
    let mut misses = Vec::new();
    for reading in &readings {
        match *reading {
            Reading::Whole => {
                let got = BASE64.encode(whole_checksum(file, algo, streamed.parts)?);
                if got == sum {
                    return Ok(expected.label());
                }
                misses.push(if readings.len() > 1 {
                    format!("{got} over the whole object")
                } else {
                    got
                });
            }
            Reading::Composite(count) => {
                match composite_checksum(file, algo, sum, size, count, streamed)? {
                    None => return Ok(format!("{}:{sum}-{count}", algo.name())),
                    Some(miss) => misses.push(miss),
                }
            }
        }
    }
    if misses.is_empty() {
        misses.push(
            "nothing: a composite checksum with no part count, and no multipart ETag to give one"
                .into(),
        );
    }
    Err(VerifyError::Checksum {
        algo: algo.name(),
        expected: expected.value.clone(),
        actual: misses.join("; "),
    })
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

/// Whether `sum` (base64) is S3's composite checksum of a multipart upload of `count` parts,
/// `algo(concat(part checksums))`, for some candidate upload part size (each distinct
/// layout tried once): `None` when one reproduces it, otherwise a description of what the
/// most likely part size gave, for the error.
///
/// The part checksums come from the streamed CRCs when each upload part is a whole number of
/// download parts; the layouts they cannot give are all computed in one read of the file.
fn composite_checksum(
    file: &File,
    algo: ChecksumAlgo,
    sum: &str,
    size: u64,
    count: u64,
    streamed: &Streamed<'_>,
) -> Result<Option<String>, VerifyError> {
    // Part sizes of `size` or more are all the same single part.
    let mut layouts: Vec<u64> = Vec::new();
    for candidate in candidate_part_sizes(size, count) {
        let part = candidate.min(size);
        if !layouts.contains(&part) {
            layouts.push(part);
        }
    }
    let outer = |part_sums: &[Vec<u8>]| {
        let mut outer = ChecksumHasher::new(algo);
        for part_sum in part_sums {
            outer.update(part_sum);
        }
        (BASE64.encode(outer.finish()), part_sums.len() as u64)
    };
    let mut tried: Vec<(u64, String)> = Vec::new();
    let mut unread = Vec::new();
    for &part in &layouts {
        match streamed_upload_part_crcs(algo, part, streamed) {
            Some(part_sums) => {
                let (got, parts) = outer(&part_sums);
                if got == sum && parts == count {
                    return Ok(None);
                }
                tried.push((part, format!("{got}-{parts} with {part}-byte parts")));
            }
            None => unread.push(part),
        }
    }
    for (part, part_sums) in unread
        .iter()
        .zip(checksums_of_layouts(file, algo, &unread)?)
    {
        let (got, parts) = outer(&part_sums);
        if got == sum && parts == count {
            return Ok(None);
        }
        tried.push((*part, format!("{got}-{parts} with {part}-byte parts")));
    }
    // The most likely layout is the first candidate's.
    Ok(Some(
        layouts
            .first()
            .and_then(|first| tried.iter().find(|(part, _)| part == first))
            .map_or_else(
                || format!("no upload part size gives {count} parts for {size} bytes"),
                |(_, miss)| miss.clone(),
            ),
    ))
}

/// The raw CRC of each `upload_part`-byte range, combined from the streamed download parts
/// when those tile the upload parts exactly (or there is only one upload part).
fn streamed_upload_part_crcs(
    algo: ChecksumAlgo,
    upload_part: u64,
    streamed: &Streamed<'_>,
) -> Option<Vec<Vec<u8>>> {
    let (_, width) = algo.crc()?;
    let download_part = streamed.part_size;
    if streamed.parts.is_empty() || download_part == 0 {
        return None;
    }
    let total: u64 = streamed.parts.iter().map(|p| p.len).sum();
    let per_upload_part = if upload_part >= total {
        // One upload part: the whole object, whatever the download parts.
        streamed.parts.len()
    } else if upload_part.is_multiple_of(download_part) {
        usize::try_from(upload_part / download_part).ok()?
    } else {
        return None;
    };
    streamed
        .parts
        .chunks(per_upload_part)
        .map(|group| combine_part_crcs(algo, group).map(|crc| crc_bytes(crc, width)))
        .collect()
}

/// For each of `chunks`, the raw checksum of each consecutive range of that many bytes of the
/// file: every layout from one read.
fn checksums_of_layouts(
    file: &File,
    algo: ChecksumAlgo,
    chunks: &[u64],
) -> Result<Vec<Vec<Vec<u8>>>, VerifyError> {
    struct Layout {
        chunk: u64,
        filled: u64,
        current: ChecksumHasher,
        sums: Vec<Vec<u8>>,
    }
    if chunks.is_empty() {
        return Ok(Vec::new());
    }
    let mut layouts: Vec<Layout> = chunks
        .iter()
        .map(|&chunk| Layout {
            chunk: chunk.max(1),
            filled: 0,
            current: ChecksumHasher::new(algo),
            sums: Vec::new(),
        })
        .collect();
    read_all(file, |bytes| {
        for layout in &mut layouts {
            let mut rest = bytes;
            while !rest.is_empty() {
                let room = layout.chunk - layout.filled;
                let take = rest.len().min(usize::try_from(room).unwrap_or(usize::MAX));
                layout.current.update(&rest[..take]);
                layout.filled += take as u64;
                rest = &rest[take..];
                if layout.filled == layout.chunk {
                    let done = std::mem::replace(&mut layout.current, ChecksumHasher::new(algo));
                    layout.sums.push(done.finish());
                    layout.filled = 0;
                }
            }
        }
    })?;
    Ok(layouts
        .into_iter()
        .map(|mut layout| {
            if layout.filled > 0 {
                layout.sums.push(layout.current.finish());
            }
            layout.sums
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::etag::md5_of;
    use crate::verify::tests::{multipart_etag, pattern, streamed_digests, temp_with};
    use crate::verify::{Expected, OnContradiction, StreamPlan, Verified, VerifyMode, verify};

    const MIB: usize = 1 << 20;
    const ALL: [ChecksumAlgo; 5] = [
        ChecksumAlgo::Crc32,
        ChecksumAlgo::Crc32c,
        ChecksumAlgo::Crc64nvme,
        ChecksumAlgo::Sha1,
        ChecksumAlgo::Sha256,
    ];

    fn read_only() -> Streamed<'static> {
        Streamed {
            part_size: 8 << 20,
            parts: &[],
            ordered: None,
        }
    }

    fn checksum(algo: ChecksumAlgo, value: impl Into<String>) -> ExpectedChecksum {
        ExpectedChecksum {
            algo,
            value: value.into(),
            kind: None,
        }
    }

    /// The raw checksum of `bytes`, computed independently of the code under test.
    fn raw(algo: ChecksumAlgo, bytes: &[u8]) -> Vec<u8> {
        match algo {
            ChecksumAlgo::Crc32 => (crc_fast::checksum(CrcAlgorithm::Crc32IsoHdlc, bytes) as u32)
                .to_be_bytes()
                .to_vec(),
            ChecksumAlgo::Crc32c => (crc_fast::checksum(CrcAlgorithm::Crc32Iscsi, bytes) as u32)
                .to_be_bytes()
                .to_vec(),
            ChecksumAlgo::Crc64nvme => crc_fast::checksum(CrcAlgorithm::Crc64Nvme, bytes)
                .to_be_bytes()
                .to_vec(),
            ChecksumAlgo::Sha1 => {
                sha1::Digest::finalize(<sha1::Sha1 as sha1::Digest>::new_with_prefix(bytes))
                    .to_vec()
            }
            ChecksumAlgo::Sha256 => {
                sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(bytes))
                    .to_vec()
            }
        }
    }

    /// The whole object's checksum, base64.
    fn whole(algo: ChecksumAlgo, data: &[u8]) -> String {
        BASE64.encode(raw(algo, data))
    }

    /// S3's composite checksum without its `-N` (as moto's HEAD gives it): the checksum of
    /// the concatenated raw checksums of the `upload_part`-byte parts.
    fn bare_composite(algo: ChecksumAlgo, data: &[u8], upload_part: usize) -> String {
        let sums: Vec<u8> = data
            .chunks(upload_part)
            .flat_map(|part| raw(algo, part))
            .collect();
        BASE64.encode(raw(algo, &sums))
    }

    /// S3's composite checksum, `-N` and all.
    fn composite(algo: ChecksumAlgo, data: &[u8], upload_part: usize) -> String {
        format!(
            "{}-{}",
            bare_composite(algo, data, upload_part),
            data.len().div_ceil(upload_part)
        )
    }

    /// An object uploaded in `upload_part`-byte parts (`None`: one PUT) with `checksum`.
    fn uploaded(data: &[u8], upload_part: Option<usize>, checksum: ExpectedChecksum) -> Expected {
        Expected {
            size: data.len() as u64,
            etag: Some(match upload_part {
                Some(part) => multipart_etag(data, part),
                None => hex::encode(md5_of(data)),
            }),
            checksum: Some(checksum),
        }
    }

    fn full(file: &File, expected: &Expected) -> Verified {
        verify(file, expected, VerifyMode::Full, &read_only()).unwrap()
    }

    #[test]
    fn checksum_labels_read_back() {
        let checksum = checksum(ChecksumAlgo::Crc32c, "AAAAAA==-3");
        assert_eq!(
            ExpectedChecksum::parse_label(&checksum.label()),
            Some(checksum)
        );
        assert_eq!(ExpectedChecksum::parse_label("md4:abc"), None);
        assert_eq!(ExpectedChecksum::parse_label("crc32:"), None);
    }

    #[test]
    fn the_checksum_type_is_read_from_the_response() {
        let pick =
            |kind| ExpectedChecksum::from_response(Some("AAAAAA=="), None, None, None, None, kind);
        assert_eq!(pick(None).unwrap().kind, None);
        assert_eq!(
            pick(Some("FULL_OBJECT")).unwrap().kind,
            Some(ChecksumKind::FullObject)
        );
        assert_eq!(
            pick(Some("COMPOSITE")).unwrap().kind,
            Some(ChecksumKind::Composite)
        );
        assert_eq!(pick(Some("SOMETHING_ELSE")).unwrap().kind, None);
    }

    #[test]
    fn a_checksum_is_read_as_stated_and_an_unstated_one_both_ways() {
        use Reading::{Composite, Whole};
        let stated = |value: &str, kind| ExpectedChecksum {
            kind,
            ..checksum(ChecksumAlgo::Crc32, value)
        };
        let full = Some(ChecksumKind::FullObject);
        let composite = Some(ChecksumKind::Composite);
        // A part count in the value decides, whatever else is said.
        for kind in [None, full, composite] {
            assert_eq!(
                readings(&stated("AAAAAA==-3", kind), Some(4)),
                [Composite(3)]
            );
        }
        assert_eq!(readings(&stated("AAAAAA==", full), Some(4)), [Whole]);
        assert_eq!(
            readings(&stated("AAAAAA==", composite), Some(4)),
            [Composite(4)]
        );
        assert_eq!(readings(&stated("AAAAAA==", composite), None), []);
        assert_eq!(
            readings(&stated("AAAAAA==", None), Some(4)),
            [Whole, Composite(4)]
        );
        assert_eq!(readings(&stated("AAAAAA==", None), None), [Whole]);
    }

    #[test]
    fn an_unstated_composite_checksum_verifies_over_the_parts_its_etag_reveals() {
        // boto3's defaults: 8 MiB parts, so 30 MiB is four parts (8, 8, 8, 6).
        let data = pattern(30 * MIB);
        let file = temp_with(&data);
        for algo in ALL {
            let expected = uploaded(
                &data,
                Some(8 * MIB),
                checksum(algo, bare_composite(algo, &data, 8 * MIB)),
            );
            let verified = full(&file, &expected);
            assert_eq!(verified.level, VerifyMode::Full, "{algo:?}");
            assert_eq!(verified.contradiction, None, "{algo:?}");
            // Recorded with the part count it verified with, so a recheck reads it so.
            let label = verified.checksum.unwrap();
            assert_eq!(
                label,
                format!("{}:{}", algo.name(), composite(algo, &data, 8 * MIB)),
                "{algo:?}"
            );
            let recorded = Expected {
                checksum: ExpectedChecksum::parse_label(&label),
                ..expected.clone()
            };
            assert_eq!(full(&file, &recorded).level, VerifyMode::Full, "{algo:?}");
            // The whole object's checksum still verifies as such, multipart ETag or not.
            let whole_sum = uploaded(&data, Some(8 * MIB), checksum(algo, whole(algo, &data)));
            let verified = full(&file, &whole_sum);
            assert_eq!(verified.level, VerifyMode::Full, "{algo:?}");
            assert_eq!(
                verified.checksum.unwrap(),
                format!("{}:{}", algo.name(), whole(algo, &data))
            );
        }
    }

    #[test]
    fn one_part_and_odd_part_layouts_are_found_from_the_etag() {
        // A multipart upload of one part (`-1`): the checksum of the one part's checksum.
        let data = pattern(20 * MIB);
        let file = temp_with(&data);
        for algo in [ChecksumAlgo::Crc32, ChecksumAlgo::Sha256] {
            let bare = bare_composite(algo, &data, 32 * MIB);
            let expected = uploaded(&data, Some(32 * MIB), checksum(algo, bare.clone()));
            let verified = full(&file, &expected);
            assert_eq!(verified.level, VerifyMode::Full, "{algo:?}");
            assert_eq!(
                verified.checksum.unwrap(),
                format!("{}:{bare}-1", algo.name())
            );
        }
        // Parts of no usual size: the object's size over N, rounded up to a MiB (4 parts of
        // 1 MiB for 3 MiB and a bit; 8 MiB parts would make one).
        let data = pattern(3 * MIB + 5);
        let file = temp_with(&data);
        for algo in ALL {
            let expected = uploaded(
                &data,
                Some(MIB),
                checksum(algo, bare_composite(algo, &data, MIB)),
            );
            let verified = full(&file, &expected);
            assert_eq!(verified.level, VerifyMode::Full, "{algo:?}");
            assert!(verified.checksum.unwrap().ends_with("-4"), "{algo:?}");
        }
    }

    #[test]
    fn streamed_crcs_verify_an_unstated_composite_checksum_without_a_read() {
        let data = pattern(30 * MIB);
        let algo = ChecksumAlgo::Crc32;
        let expected = uploaded(
            &data,
            Some(8 * MIB),
            checksum(algo, bare_composite(algo, &data, 8 * MIB)),
        );
        // Download parts aligned to the upload parts, as the engine picks them for a
        // multipart ETag: each part's MD5 and CRC computed as it streamed.
        let plan = StreamPlan::new(&expected, VerifyMode::Full, 8 * MIB as u64);
        assert!(plan.md5 && plan.crc == Some(algo), "{plan:?}");
        let digests = streamed_digests(&data, 8 * MIB, plan);
        let streamed = Streamed {
            part_size: 8 * MIB as u64,
            parts: &digests,
            ordered: None,
        };
        // Shown by verifying them against a file of other bytes: nothing was read.
        let other_bytes = temp_with(&vec![0u8; data.len()]);
        let verified = verify(&other_bytes, &expected, VerifyMode::Full, &streamed).unwrap();
        assert_eq!(verified.level, VerifyMode::Full);
        assert!(verified.checksum.unwrap().ends_with("-4"));
        assert!(verify(&other_bytes, &expected, VerifyMode::Full, &read_only()).is_err());
    }

    #[test]
    fn a_stated_type_is_the_only_reading() {
        let data = pattern(30 * MIB);
        let file = temp_with(&data);
        let algo = ChecksumAlgo::Crc32c;
        let stated = |value: String, kind| {
            uploaded(
                &data,
                Some(8 * MIB),
                ExpectedChecksum {
                    kind: Some(kind),
                    ..checksum(algo, value)
                },
            )
        };
        let bare = bare_composite(algo, &data, 8 * MIB);
        let verified = full(&file, &stated(bare.clone(), ChecksumKind::Composite));
        assert_eq!(verified.level, VerifyMode::Full);
        assert_eq!(verified.checksum.unwrap(), format!("crc32c:{bare}-4"));
        assert_eq!(
            full(&file, &stated(whole(algo, &data), ChecksumKind::FullObject)).level,
            VerifyMode::Full
        );
        // Said to be the other kind: not read as it, so it contradicts the ETag.
        for wrong in [
            stated(bare, ChecksumKind::FullObject),
            stated(whole(algo, &data), ChecksumKind::Composite),
        ] {
            let verified = full(&file, &wrong);
            assert_eq!(verified.level, VerifyMode::Etag);
            assert!(verified.contradiction.is_some());
        }
    }

    #[test]
    fn a_checksum_that_contradicts_a_verified_etag_is_reported_and_the_etag_recorded() {
        let data = pattern(4096);
        let file = temp_with(&data);
        for algo in ALL {
            let expected = uploaded(&data, None, checksum(algo, "AAAAAA=="));
            let verified = full(&file, &expected);
            assert_eq!(
                verified.level,
                VerifyMode::Etag,
                "what was verified is the ETag: {algo:?}"
            );
            assert_eq!(verified.checksum, None, "{algo:?}");
            assert!(
                matches!(verified.contradiction, Some(VerifyError::Checksum { .. })),
                "{algo:?}"
            );
            // Kept by default, failed when asked for strictness.
            assert_eq!(
                verified.clone().settle(OnContradiction::Keep),
                Ok(verified.clone())
            );
            assert!(matches!(
                verified.settle(OnContradiction::Fail),
                Err(VerifyError::Checksum { .. })
            ));
            // `etag` mode never looks at the checksum.
            let etag_mode = verify(&file, &expected, VerifyMode::Etag, &read_only()).unwrap();
            assert_eq!(etag_mode.contradiction, None);
        }
        // Multipart too, and the error says what each reading gave.
        let data = pattern(30 * MIB);
        let file = temp_with(&data);
        let wrong = uploaded(
            &data,
            Some(8 * MIB),
            checksum(ChecksumAlgo::Crc32, "AAAAAA=="),
        );
        match full(&file, &wrong).contradiction {
            Some(VerifyError::Checksum { actual, .. }) => {
                assert!(actual.contains("over the whole object"), "{actual}");
                assert!(actual.ends_with("-4 with 8388608-byte parts"), "{actual}");
            }
            other => panic!("expected a contradiction, got {other:?}"),
        }
    }

    #[test]
    fn a_wrong_checksum_fails_when_no_etag_verified_the_bytes() {
        let data = pattern(4096);
        let file = temp_with(&data);
        for algo in ALL {
            // No ETag, or one that is not an MD5: the checksum is the only content check.
            for etag in [None, Some("opaque-tag".to_string())] {
                let expected = Expected {
                    size: 4096,
                    etag,
                    checksum: Some(checksum(algo, "AAAAAA==")),
                };
                assert!(
                    matches!(
                        verify(&file, &expected, VerifyMode::Full, &read_only()),
                        Err(VerifyError::Checksum { .. })
                    ),
                    "{algo:?}"
                );
            }
            // Bytes that are not the ETag's fail on the ETag, checksum or not.
            let mut corrupt = data.clone();
            corrupt[100] ^= 1;
            let expected = uploaded(&data, None, checksum(algo, whole(algo, &data)));
            assert!(matches!(
                verify(
                    &temp_with(&corrupt),
                    &expected,
                    VerifyMode::Full,
                    &read_only()
                ),
                Err(VerifyError::Etag { .. })
            ));
        }
        let crc32c = whole(ChecksumAlgo::Crc32c, &data);
        let expected = Expected {
            size: 4096,
            etag: None,
            checksum: Some(checksum(ChecksumAlgo::Crc32c, crc32c)),
        };
        assert_eq!(full(&file, &expected).level, VerifyMode::Full);
    }

    #[test]
    fn composite_checksums_are_parsed_and_malformed_ones_ignored() {
        let pick = |value: &str| {
            ExpectedChecksum::from_response(None, Some(value), None, None, None, None)
        };
        assert_eq!(pick("AAAAAA==-3").unwrap().composite_parts(), Some(3));
        assert_eq!(pick("AAAAAA==").unwrap().composite_parts(), None);
        for malformed in ["AAAAAA==-", "AAAAAA==-x", "AAAAAA==-0", "-3", ""] {
            assert_eq!(pick(malformed), None, "{malformed:?}");
        }
    }

    #[test]
    fn composite_checksums_verify_with_the_inferred_upload_part_size() {
        // 3 parts of 10 MiB: 8 MiB parts would also make 3, so the first candidate is wrong
        // and the next one must be tried.
        let upload_part = 10 * MIB;
        let data = pattern(2 * upload_part + 5);
        let file = temp_with(&data);
        let expected_for = |algo, value: String| Expected {
            size: data.len() as u64,
            etag: None,
            checksum: Some(checksum(algo, value)),
        };
        for algo in [ChecksumAlgo::Crc32c, ChecksumAlgo::Sha256] {
            let expected = expected_for(algo, composite(algo, &data, upload_part));
            let verified = full(&file, &expected);
            assert_eq!(verified.level, VerifyMode::Full, "{algo:?}");
            assert!(verified.checksum.unwrap().ends_with("-3"), "{algo:?}");
        }

        // Download parts that tile the upload parts: the streamed CRCs are combined per upload
        // part, with no read. Shown by verifying them against a file of other bytes.
        let download_part = 5 * MIB;
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
            ordered: None,
        };
        assert!(verify(&other_bytes, &expected, VerifyMode::Full, &streamed).is_ok());
        assert!(verify(&other_bytes, &expected, VerifyMode::Full, &read_only()).is_err());

        // A wrong composite value fails and says what the bytes give.
        let wrong = expected_for(ChecksumAlgo::Crc32c, "AAAAAA==-3".into());
        match verify(&file, &wrong, VerifyMode::Full, &read_only()) {
            Err(VerifyError::Checksum { actual, .. }) => {
                assert!(actual.ends_with("-3 with 8388608-byte parts"), "{actual}");
            }
            other => panic!("expected a checksum mismatch, got {other:?}"),
        }
        // So does a part count that no part size can give.
        let impossible = expected_for(ChecksumAlgo::Crc32c, "AAAAAA==-99999999".into());
        assert!(matches!(
            verify(&file, &impossible, VerifyMode::Full, &read_only()),
            Err(VerifyError::Checksum { .. })
        ));
    }

    #[test]
    fn every_layout_comes_from_one_read_as_from_one_read_each() {
        let data = pattern(3 * MIB + 777);
        let file = temp_with(&data);
        let chunks = [MIB as u64, 1_000_000, 5 * MIB as u64, 4099];
        for algo in ALL {
            let layouts = checksums_of_layouts(&file, algo, &chunks).unwrap();
            for (chunk, sums) in chunks.iter().zip(layouts) {
                let expected: Vec<Vec<u8>> = data
                    .chunks(*chunk as usize)
                    .map(|part| raw(algo, part))
                    .collect();
                assert_eq!(sums, expected, "{algo:?} {chunk}");
            }
        }
    }
}
