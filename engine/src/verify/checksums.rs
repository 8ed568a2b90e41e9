//! S3's additional checksums (CRC32, CRC32C, CRC64NVME, SHA1, SHA256), checked in `full` mode.
//!
//! A full-object checksum covers all the bytes; a composite one (`value-N`) is the checksum of
//! the N upload parts' checksums, with the upload part size inferred as for a multipart ETag.
//! CRCs can be computed per download part while streaming and combined afterwards (for the
//! whole object, or per upload part when download parts tile upload parts), so they usually
//! cost no read; SHAs cannot be combined and need one read of the file. Kept apart from the
//! ETag because the algorithms, their encoding (base64) and the combining are their own.

use std::fs::File;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use crc_fast::CrcAlgorithm;
use serde::{Deserialize, Serialize};

use super::{
    PartDigest, RangePiece, Streamed, VerifyError, candidate_part_sizes, read_all, read_ranges,
};

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

pub(super) fn verify_checksum(
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
            sums.push(std::mem::replace(&mut current, ChecksumHasher::new(algo)).finish());
        }
    })?;
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::etag::md5_of;
    use crate::verify::tests::{pattern, streamed_digests, temp_with};
    use crate::verify::{Expected, StreamPlan, VerifyMode, verify};

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
                            ordered: None
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
                        ordered: None
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
                    ordered: None
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
            ordered: None,
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
            ordered: None,
        };
        assert!(verify(&other_bytes, &expected, VerifyMode::Full, &streamed).is_ok());
        assert!(verify(&other_bytes, &expected, VerifyMode::Full, &read_only).is_err());

        // A wrong composite value fails and says what the bytes give.
        let wrong = expected_for(ChecksumAlgo::Crc32c, "AAAAAA==-3".into());
        match verify(&file, &wrong, VerifyMode::Full, &read_only) {
            Err(VerifyError::Checksum { actual, .. }) => {
                assert!(actual.ends_with("-3 with 8388608-byte parts"), "{actual}");
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
