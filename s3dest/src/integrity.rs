//! How an upload's parts prove their bytes to the destination, and what the completed object
//! must then report.
//!
//! Two digests, chosen per upload when it is created:
//!
//! - **`Content-MD5`** where the part's MD5 is computed anyway: a multipart source, whose
//!   parts' MD5s are its ETag's check. The destination's ETag of the completed object is then
//!   the multipart digest of those MD5s.
//! - **CRC32C** (`x-amz-checksum-crc32c`, the upload created with that algorithm) where it is
//!   not: a single-part source, whose bytes are already hashed whole, in order, for its ETag,
//!   or a source without an MD5 ETag. An MD5 per part on top would hash every byte twice; a
//!   CRC32C costs a fraction of that (bench/RESULTS.md). The destination checks each part's
//!   CRC32C and keeps S3's COMPOSITE checksum (the CRC32C of the parts' CRC32Cs, `-N`), which
//!   the completed object must report.
//!
//! A store that ignores `x-amz-checksum-*` (it answers a part without echoing the checksum) has
//! not checked it: that part is checked by its MD5 against the ETag the store answered, and
//! the copier goes back to `Content-MD5` for later uploads.

use base64::Engine as _;
use crc_fast::{CrcAlgorithm, checksum};

/// The digest an upload's parts carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartDigest {
    /// `Content-MD5`.
    Md5,
    /// `x-amz-checksum-crc32c`, the upload created with `ChecksumAlgorithm: CRC32C`.
    Crc32c,
}

impl PartDigest {
    /// S3's name for the upload's checksum algorithm, as listings report it.
    pub const CRC32C_NAME: &'static str = "CRC32C";

    /// The digest of an open upload from the algorithm its listing names; `None` for an
    /// algorithm this tool never creates uploads with (not ours to resume).
    pub fn of_upload(algorithm: Option<&str>) -> Option<Self> {
        match algorithm {
            None | Some("") => Some(PartDigest::Md5),
            Some(name) if name.eq_ignore_ascii_case(Self::CRC32C_NAME) => Some(PartDigest::Crc32c),
            Some(_) => None,
        }
    }
}

/// The CRC32C (Castagnoli) of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    // The crate computes a 32-bit CRC in a u64; the value always fits.
    checksum(CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

/// A CRC32C as S3 carries it: base64 of its four big-endian bytes.
pub fn crc32c_header(crc: u32) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// A CRC32C from S3's base64 form; `None` when it is not four bytes.
pub fn parse_crc32c(value: &str) -> Option<u32> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// S3's COMPOSITE CRC32C of an upload whose parts have `crcs`, in part order: the CRC32C of
/// their concatenated big-endian bytes, base64, then `-N`.
pub fn composite_crc32c(crcs: &[u32]) -> String {
    let joined: Vec<u8> = crcs.iter().flat_map(|crc| crc.to_be_bytes()).collect();
    format!("{}-{}", crc32c_header(crc32c(&joined)), crcs.len())
}

/// Whether a composite checksum the store reported is `expected`. Stores report it with its
/// `-N` (S3) or without (some older servers); the value before the dash must match, and a
/// count, when given, too.
pub fn composite_matches(reported: &str, expected: &str) -> bool {
    let (value, count) = reported.split_once('-').unwrap_or((reported, ""));
    let (want_value, want_count) = expected.split_once('-').unwrap_or((expected, ""));
    value == want_value && (count.is_empty() || count == want_count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli() {
        // RFC 3720's check value for "123456789".
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c_header(0xe306_9283), "4waSgw==");
        assert_eq!(parse_crc32c("4waSgw=="), Some(0xe306_9283));
        assert_eq!(parse_crc32c("AAAA"), None, "three bytes");
        assert_eq!(parse_crc32c("not base64!"), None);
    }

    #[test]
    fn the_composite_is_the_crc_of_the_part_crcs_with_their_count() {
        let parts = [crc32c(b"first part"), crc32c(b"second")];
        let mut joined = parts[0].to_be_bytes().to_vec();
        joined.extend_from_slice(&parts[1].to_be_bytes());
        let want = format!("{}-2", crc32c_header(crc32c(&joined)));
        assert_eq!(composite_crc32c(&parts), want);
        assert!(composite_matches(&want, &want));
        assert!(composite_matches(want.split('-').next().unwrap(), &want));
        assert!(!composite_matches(
            &format!("{}-3", crc32c_header(crc32c(&joined))),
            &want
        ));
        assert!(!composite_matches(&composite_crc32c(&parts[..1]), &want));
    }

    #[test]
    fn only_md5_and_crc32c_uploads_are_resumed() {
        assert_eq!(PartDigest::of_upload(None), Some(PartDigest::Md5));
        assert_eq!(
            PartDigest::of_upload(Some("CRC32C")),
            Some(PartDigest::Crc32c)
        );
        assert_eq!(
            PartDigest::of_upload(Some("crc32c")),
            Some(PartDigest::Crc32c)
        );
        assert_eq!(PartDigest::of_upload(Some("SHA256")), None);
    }
}
