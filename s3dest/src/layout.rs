//! How an object is cut into upload parts, and how its source bytes are checked on the way.
//!
//! **Where the source's ETag allows it, the copy reproduces it**: a multipart source is
//! uploaded in its own part size, so the destination's ETag equals the source's and a later
//! listing verifies the copy with no request. The source is verified as the bytes stream
//! through, by the same digest its ETag is:
//!
//! - a multipart ETag: the MD5 of each source part, combined (upload parts are whole source
//!   parts; several when the source's parts are under S3's 5 MiB minimum);
//! - a single-part ETag: the whole object's MD5 (a small object goes up in one PUT whose
//!   Content-MD5 is that ETag; a large one is hashed in order while its parts upload);
//! - no ETag, or one that is not an MD5: the size only.

use engine::verify::etag::{EtagForm, candidate_part_sizes};

/// S3's smallest upload part (all but the last).
pub const MIN_UPLOAD_PART: u64 = 5 << 20;
/// Most parts of one upload.
pub const MAX_PARTS: u64 = 10_000;
/// Upload part size when the source's cannot be followed.
pub const DEFAULT_UPLOAD_PART: u64 = 8 << 20;
/// Largest part held in memory: a source uploaded in larger parts is refused, not buffered.
pub const MAX_BUFFERED_PART: u64 = 512 << 20;
/// Objects up to this size with a single-part ETag go up in one PUT.
pub const SINGLE_PUT_MAX: u64 = 16 << 20;

/// What the streamed source bytes must give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceCheck {
    /// The multipart digest over source parts of `part_size`.
    Multipart {
        /// The ETag's outer MD5.
        digest: [u8; 16],
        /// Source part size.
        part_size: u64,
    },
    /// The whole object's MD5.
    WholeMd5([u8; 16]),
    /// Only the size (no ETag that is an MD5).
    SizeOnly,
}

/// The upload plan of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadLayout {
    /// Object size.
    pub size: u64,
    /// Upload part size (the last part may be smaller).
    pub part_size: u64,
    /// One PUT rather than a multipart upload.
    pub single_put: bool,
    /// How the source is verified.
    pub check: SourceCheck,
}

impl UploadLayout {
    /// The plan for an object of `size` bytes whose source ETag is `etag` (unquoted).
    pub fn plan(size: u64, etag: Option<&str>) -> Result<Self, String> {
        let form = etag.and_then(EtagForm::parse);
        let spread = || {
            // Parts of the default size, or larger when the object needs more than 10,000.
            let least = size.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
            DEFAULT_UPLOAD_PART.max(least)
        };
        // One PUT up to SINGLE_PUT_MAX, parts of the spread size above.
        let whole_or_spread = |check| Self {
            size,
            part_size: if size <= SINGLE_PUT_MAX {
                size.max(1)
            } else {
                spread()
            },
            single_put: size <= SINGLE_PUT_MAX,
            check,
        };
        let layout = match form {
            Some(EtagForm::Single(md5)) => whole_or_spread(SourceCheck::WholeMd5(md5)),
            Some(EtagForm::Multipart { digest, parts }) => {
                let source_part = candidate_part_sizes(size, parts)
                    .into_iter()
                    .next()
                    .ok_or_else(|| {
                        format!(
                            "its ETag `{}` says {parts} parts, which {size} bytes cannot have",
                            etag.unwrap_or_default()
                        )
                    })?;
                // Whole source parts per upload part, so each upload part's MD5s are the
                // source's part MD5s.
                let per_upload = MIN_UPLOAD_PART.div_ceil(source_part).max(1);
                let part_size = source_part * per_upload;
                Self {
                    size,
                    part_size,
                    single_put: false,
                    check: SourceCheck::Multipart {
                        digest,
                        part_size: source_part,
                    },
                }
            }
            None => whole_or_spread(SourceCheck::SizeOnly),
        };
        if layout.part_size > MAX_BUFFERED_PART {
            return Err(format!(
                "its upload parts would be {} MiB, above the {} MiB a part may hold in memory",
                layout.part_size >> 20,
                MAX_BUFFERED_PART >> 20
            ));
        }
        if layout.parts() > MAX_PARTS {
            return Err(format!(
                "it would need {} upload parts, more than S3's {MAX_PARTS}",
                layout.parts()
            ));
        }
        Ok(layout)
    }

    /// Number of upload parts (1 for an empty object).
    pub fn parts(&self) -> u64 {
        self.size.div_ceil(self.part_size).max(1)
    }

    /// Byte range `[start, end)` of upload part `index` (0-based).
    pub fn range(&self, index: u64) -> (u64, u64) {
        let start = index * self.part_size;
        (start, (start + self.part_size).min(self.size))
    }

    /// Whether a part listed by the destination can stand for part `index`: its size is the
    /// plan's, and its MD5 is what the source check needs, so parts of an earlier version of
    /// the object fail that check (only a multipart source copied in its own part size: not
    /// when the whole object's MD5 must be hashed in order, one upload part holds several
    /// source parts, or the source has no MD5 ETag).
    pub fn reusable(&self, index: u64, listed_size: u64) -> bool {
        let (start, end) = self.range(index);
        // Without a multipart digest nothing would catch listed parts of an earlier version of
        // the same size, and the whole object's MD5 needs every byte read in order anyway.
        let whole_source_parts = matches!(
            &self.check,
            SourceCheck::Multipart { part_size, .. } if *part_size == self.part_size
        );
        !self.single_put && whole_source_parts && listed_size == end - start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_multipart_source_is_uploaded_in_its_own_parts() {
        // 20 MiB + 1 in 8 MiB parts: 3 parts.
        let layout =
            UploadLayout::plan(20 * MIB + 1, Some("0123456789abcdef0123456789abcdef-3")).unwrap();
        assert_eq!(layout.part_size, 8 * MIB);
        assert_eq!(layout.parts(), 3);
        assert_eq!(layout.range(2), (16 * MIB, 20 * MIB + 1));
        assert!(layout.reusable(0, 8 * MIB));
        assert!(!layout.reusable(0, 8 * MIB - 1));
    }

    #[test]
    fn source_parts_under_the_minimum_are_grouped() {
        // 1 MiB source parts: five per upload part.
        let layout =
            UploadLayout::plan(12 * MIB, Some("0123456789abcdef0123456789abcdef-12")).unwrap();
        assert_eq!(
            layout.check,
            SourceCheck::Multipart {
                digest: [
                    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89,
                    0xab, 0xcd, 0xef
                ],
                part_size: MIB
            }
        );
        assert_eq!(layout.part_size, 5 * MIB);
        assert_eq!(layout.parts(), 3);
        assert!(
            !layout.reusable(0, 5 * MIB),
            "grouped parts' MD5s are not the source's"
        );
    }

    #[test]
    fn single_part_sources_use_one_put_or_ordered_hashing() {
        let small = UploadLayout::plan(3 * MIB, Some("0123456789abcdef0123456789abcdef")).unwrap();
        assert!(small.single_put);
        assert_eq!(small.parts(), 1);
        let large =
            UploadLayout::plan(100 * MIB, Some("0123456789abcdef0123456789abcdef")).unwrap();
        assert!(!large.single_put);
        assert_eq!(large.part_size, 8 * MIB);
        assert!(
            !large.reusable(0, 8 * MIB),
            "the whole MD5 needs every byte in order"
        );
        let empty = UploadLayout::plan(0, Some("d41d8cd98f00b204e9800998ecf8427e")).unwrap();
        assert!(empty.single_put);
        assert_eq!(empty.range(0), (0, 0));
    }

    #[test]
    fn parts_of_a_source_without_an_md5_etag_are_never_reused() {
        let layout = UploadLayout::plan(40 * MIB, Some("opaque-etag-of-another-store")).unwrap();
        assert_eq!(layout.check, SourceCheck::SizeOnly);
        assert!(!layout.reusable(0, layout.part_size));
    }

    #[test]
    fn impossible_or_oversized_layouts_are_refused() {
        assert!(UploadLayout::plan(10, Some("0123456789abcdef0123456789abcdef-9")).is_err());
        // One source part of 1 GiB: above what a part may buffer.
        let huge = UploadLayout::plan(2 << 30, Some("0123456789abcdef0123456789abcdef-2"));
        assert!(huge.unwrap_err().contains("in memory"));
    }
}
