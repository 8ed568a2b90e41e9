//! The upload side of the in-memory bucket: open multipart uploads and their parts, the body
//! digests a writer sends (`Content-MD5`, `x-amz-checksum-*` as headers or aws-chunked
//! trailers) and how they are checked, the conditional-write checks (`If-None-Match: *`,
//! `If-Match`), and the multipart ETag. Errors carry S3's codes, so a client under test sees
//! what AWS would answer.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::StreamExt;
use md5::{Digest, Md5};
use s3s::dto::{ETagCondition, StreamingBlob};
use s3s::{S3Error, S3Result, TrailingHeaders, s3_error};

use crate::store::{ChecksumAlgo, StoredObject};

/// S3's smallest part, for every part of a multipart upload but the last.
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's highest part number.
pub const MAX_PART_NUMBER: i32 = 10_000;

/// One uploaded part of an open multipart upload.
#[derive(Clone, Debug)]
pub struct StoredPart {
    /// Contents.
    pub data: Bytes,
    /// Quoted hex MD5 of the contents, as UploadPart answers it.
    pub etag: String,
    /// When it was uploaded.
    pub last_modified: SystemTime,
    /// The part's checksum in the upload's algorithm (or the one the part was sent with).
    pub checksum: Option<(ChecksumAlgo, String)>,
}

/// An open multipart upload: created, not yet completed or aborted.
#[derive(Clone, Debug)]
pub struct Upload {
    /// The key the object will have.
    pub key: String,
    /// The id CreateMultipartUpload gave.
    pub upload_id: String,
    /// When it was created (tests move it into the past to make an upload stale).
    pub initiated: SystemTime,
    /// User metadata (`x-amz-meta-*`) the completed object gets.
    pub metadata: BTreeMap<String, String>,
    /// The checksum algorithm CreateMultipartUpload named, if any.
    pub checksum: Option<ChecksumAlgo>,
    /// With `checksum`: S3's FULL_OBJECT type (over the whole object) instead of COMPOSITE.
    pub full_object: bool,
    /// Parts by number.
    pub parts: BTreeMap<i32, StoredPart>,
}

/// What a test sees of an open upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadInfo {
    /// The key the object will have.
    pub key: String,
    /// Its upload id.
    pub upload_id: String,
    /// When it was created.
    pub initiated: SystemTime,
    /// Its parts, by ascending number.
    pub parts: Vec<PartInfo>,
}

/// One part of an open upload, as a test sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartInfo {
    /// Part number.
    pub number: i32,
    /// Size in bytes.
    pub size: u64,
    /// Quoted hex MD5.
    pub etag: String,
}

impl Upload {
    /// A new, empty upload of `key`.
    pub(crate) fn new(key: String, upload_id: String, initiated: SystemTime) -> Self {
        Self {
            key,
            upload_id,
            initiated,
            metadata: BTreeMap::new(),
            checksum: None,
            full_object: false,
            parts: BTreeMap::new(),
        }
    }

    /// The test's view of this upload.
    pub(crate) fn info(&self) -> UploadInfo {
        UploadInfo {
            key: self.key.clone(),
            upload_id: self.upload_id.clone(),
            initiated: self.initiated,
            parts: self
                .parts
                .iter()
                .map(|(number, part)| PartInfo {
                    number: *number,
                    size: part.data.len() as u64,
                    etag: part.etag.clone(),
                })
                .collect(),
        }
    }
}

impl StoredPart {
    /// Stores `data` as a part, with its checksum in `algo`.
    pub(crate) fn new(data: Bytes, algo: Option<ChecksumAlgo>) -> Self {
        let etag = quoted_md5(&data);
        let checksum = algo.map(|algo| (algo, algo.compute(&data)));
        Self {
            data,
            etag,
            last_modified: SystemTime::now(),
            checksum,
        }
    }
}

/// The quoted hex MD5 of `data`: a single-part ETag.
pub(crate) fn quoted_md5(data: &[u8]) -> String {
    format!("\"{}\"", hex::encode(Md5::digest(data)))
}

/// A fresh upload id: a sequence number (so ids sort in creation order, as ListMultipartUploads
/// lists uploads of one key) and 128 bits no client can guess.
pub(crate) fn new_upload_id(sequence: u64) -> String {
    // Each RandomState has secret keys of its own, so the two hashes are unpredictable.
    let (a, b) = (RandomState::new(), RandomState::new());
    format!(
        "{sequence:08x}{:016x}{:016x}",
        a.hash_one(sequence),
        b.hash_one(sequence)
    )
}

/// Reads a request body to the end.
pub(crate) async fn read_body(body: Option<StreamingBlob>) -> S3Result<Bytes> {
    let mut data = Vec::new();
    if let Some(mut body) = body {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| s3_error!(IncompleteBody, "{e}"))?;
            data.extend_from_slice(&chunk);
        }
    }
    Ok(Bytes::from(data))
}

/// Every additional checksum a request sent: the `x-amz-checksum-*` headers (as s3s parsed
/// them, in [`ChecksumAlgo::ALL`] order) and the aws-chunked trailers, which are only known
/// once the body has been read.
pub(crate) fn sent_checksums(
    headers: [Option<&String>; 5],
    trailers: Option<&TrailingHeaders>,
) -> Vec<(ChecksumAlgo, String)> {
    let mut sent: Vec<(ChecksumAlgo, String)> = ChecksumAlgo::ALL
        .into_iter()
        .zip(headers)
        .filter_map(|(algo, value)| Some((algo, value?.clone())))
        .collect();
    if let Some(trailers) = trailers {
        trailers.read(|map| {
            for algo in ChecksumAlgo::ALL {
                if let Some(value) = map.get(algo.header()).and_then(|v| v.to_str().ok()) {
                    sent.push((algo, value.to_string()));
                }
            }
        });
    }
    sent
}

/// Checks `data` against the `Content-MD5` and checksums a writer sent, with S3's answers:
/// `InvalidDigest` for a Content-MD5 that is not 16 bytes of base64, `InvalidRequest` for a
/// checksum value of the wrong shape, `BadDigest` for any mismatch.
pub(crate) fn verify_digests(
    data: &[u8],
    content_md5: Option<&str>,
    checksums: &[(ChecksumAlgo, String)],
) -> S3Result<()> {
    if let Some(sent) = content_md5 {
        let decoded = BASE64
            .decode(sent.trim())
            .ok()
            .filter(|d| d.len() == 16)
            .ok_or_else(|| {
                s3_error!(InvalidDigest, "The Content-MD5 you specified was invalid.")
            })?;
        if decoded.as_slice() != Md5::digest(data).as_slice() {
            return Err(s3_error!(
                BadDigest,
                "The Content-MD5 you specified did not match what we received."
            ));
        }
    }
    for (algo, sent) in checksums {
        let well_formed = BASE64
            .decode(sent.trim())
            .is_ok_and(|d| d.len() == algo.raw_len());
        if !well_formed {
            return Err(s3_error!(
                InvalidRequest,
                "Value for {} header is invalid.",
                algo.header()
            ));
        }
        if algo.compute(data) != sent.trim() {
            return Err(s3_error!(
                BadDigest,
                "The {} you specified did not match the calculated checksum.",
                algo.header()
            ));
        }
    }
    Ok(())
}

fn precondition_failed() -> S3Error {
    s3_error!(
        PreconditionFailed,
        "At least one of the pre-conditions you specified did not hold"
    )
}

/// The conditions of a write (PutObject, CompleteMultipartUpload) against the object it would
/// replace: `If-None-Match: *` fails when the key exists, `If-Match` when the key is absent or
/// has another ETag (412 both). S3 accepts only `*` in If-None-Match on writes.
pub(crate) fn check_write_conditions(
    existing: Option<&StoredObject>,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<()> {
    match if_none_match {
        Some(ETagCondition::Any) if existing.is_some() => return Err(precondition_failed()),
        Some(ETagCondition::ETag(_)) => {
            return Err(s3_error!(
                NotImplemented,
                "If-None-Match on a write accepts only *"
            ));
        }
        _ => {}
    }
    if let Some(condition) = if_match {
        let holds = match (condition, existing) {
            (_, None) => false,
            (ETagCondition::Any, Some(_)) => true,
            (ETagCondition::ETag(wanted), Some(object)) => {
                wanted.value() == object.etag.trim_matches('"')
            }
        };
        if !holds {
            return Err(precondition_failed());
        }
    }
    Ok(())
}

/// The ETag of an object assembled from parts with these (quoted hex MD5) ETags: the MD5 of
/// the concatenated binary part MD5s, then `-N`.
pub(crate) fn multipart_etag<'a>(part_etags: impl Iterator<Item = &'a str>) -> String {
    let mut outer = Md5::new();
    let mut count = 0;
    for etag in part_etags {
        // Part ETags are made here from an MD5, so they always decode.
        outer.update(hex::decode(etag.trim_matches('"')).unwrap_or_default());
        count += 1;
    }
    format!("\"{}-{count}\"", hex::encode(outer.finalize()))
}

/// S3's COMPOSITE checksum of parts with these (base64) checksums: the checksum of their
/// concatenated binary values, then `-N`.
pub(crate) fn composite_checksum<'a>(
    algo: ChecksumAlgo,
    part_checksums: impl Iterator<Item = &'a str>,
) -> String {
    let mut raw = Vec::new();
    let mut count = 0;
    for value in part_checksums {
        raw.extend(BASE64.decode(value).unwrap_or_default());
        count += 1;
    }
    format!("{}-{count}", algo.compute(&raw))
}

/// Replaces the first 32-hex-digit run of `etag` (an MD5, quoted or XML-escaped, with or
/// without `-N`) by another one of the same length: the ETag a lying server would report.
pub(crate) fn wrong_etag(etag: &str) -> String {
    let bytes = etag.as_bytes();
    let start = (0..bytes.len().saturating_sub(31))
        .find(|&i| bytes[i..i + 32].iter().all(u8::is_ascii_hexdigit));
    match start {
        Some(start) => {
            let other = hex::encode(Md5::digest(&bytes[start..start + 32]));
            format!("{}{other}{}", &etag[..start], &etag[start + 32..])
        }
        None => format!("{etag}0"),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn a_wrong_etag_keeps_its_shape_and_differs() {
        let real = "\"9e107d9d372bb6826bd81d3542a419d6-3\"";
        let wrong = wrong_etag(real);
        assert_ne!(wrong, real);
        assert_eq!(wrong.len(), real.len());
        assert!(wrong.starts_with('"') && wrong.ends_with("-3\""));
        let escaped = "&quot;9e107d9d372bb6826bd81d3542a419d6&quot;";
        assert_eq!(
            wrong_etag(escaped),
            format!("&quot;{}&quot;", &wrong[1..33])
        );
    }

    #[test]
    fn upload_ids_differ_and_sort_by_creation() {
        let (a, b) = (new_upload_id(1), new_upload_id(2));
        assert_ne!(a[8..], b[8..]);
        assert!(a < b);
        assert_eq!(a.len(), 40);
    }
}
