//! Single-part and multipart ETags, checked against the bytes.
//!
//! S3 gives an unencrypted object uploaded in one request the MD5 of its bytes as ETag, and a
//! multipart upload `md5(concat(part md5s))-N`. The upload part size is not recorded anywhere,
//! so it is inferred from the size and `N` ([`candidate_part_sizes`]), which is also how the
//! engine picks a download part size that lets each part's MD5 be computed in-stream. Kept
//! apart from the additional checksums because an ETag is checked at `--verify etag` already
//! and has its own arithmetic (MD5 only, no combining).

use std::fs::File;

use crate::fast_md5::Md5;

use super::{RangePiece, Streamed, VerifyError, read_ranges};

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

/// The upload part size a multipart ETag of `parts` parts most likely had for `size` bytes:
/// the first candidate of a size the engine will download in (1 MiB to 256 MiB).
pub fn likely_upload_part_size(size: u64, parts: u64) -> Option<u64> {
    const USABLE: std::ops::RangeInclusive<u64> = (1 << 20)..=(256 << 20);
    candidate_part_sizes(size, parts)
        .into_iter()
        .find(|p| USABLE.contains(p))
}

pub(super) fn verify_etag(
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
            let whole = streamed
                .ordered
                .filter(|o| o.boundary >= size && o.md5s.len() == 1)
                .map(|o| o.md5s[0]);
            let got = match (whole, streamed_md5s.as_deref()) {
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
                let ordered = streamed
                    .ordered
                    .filter(|o| o.boundary == candidate && o.md5s.len() as u64 == *count);
                let md5s = match (&streamed_md5s, candidate == part_size, ordered) {
                    (Some(md5s), true, _) if md5s.len() as u64 == *count => md5s.clone(),
                    (_, _, Some(ordered)) => ordered.md5s.clone(),
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

fn hex16(text: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

pub(super) fn md5_of(bytes: &[u8]) -> [u8; 16] {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::tests::{multipart_etag, pattern, temp_with};
    use crate::verify::{Expected, VerifyMode, verify};

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
                    ordered: None
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
                    ordered: None
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
                    ordered: None
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
                    ordered: None
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
                    ordered: None
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
                    ordered: None
                }
            ),
            Err(VerifyError::Size { .. })
        ));
    }
}
