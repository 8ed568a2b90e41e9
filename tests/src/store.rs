//! The in-memory bucket behind the test server: an `s3s::S3` implementation of the operations
//! the mirror (and the benchmark peers) use: ListObjectsV2 with real pagination, HEAD and GET
//! with ranges, `If-Match`/`If-None-Match` and additional checksums, PUT, DELETE and bucket
//! calls. Bodies are served as zero-copy slices of the stored bytes.

use common::sync::MutexExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::StreamExt;
use md5::{Digest, Md5};
use s3s::dto::{
    Bucket, ChecksumMode, ChecksumType, CommonPrefix, DeleteObjectInput, DeleteObjectOutput, ETag,
    ETagCondition, GetBucketLocationInput, GetBucketLocationOutput, GetObjectInput,
    GetObjectOutput, HeadBucketInput, HeadBucketOutput, HeadObjectInput, HeadObjectOutput,
    ListBucketsInput, ListBucketsOutput, ListObjectsV2Input, ListObjectsV2Output, Object,
    ObjectStorageClass, PutObjectInput, PutObjectOutput, StreamingBlob, Timestamp,
};
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};

/// Body chunk size: large enough to cost little CPU per byte.
const CHUNK: usize = 64 << 10;

/// An additional checksum algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumAlgo {
    /// CRC-32.
    Crc32,
    /// CRC-32C.
    Crc32c,
    /// CRC-64/NVME.
    Crc64nvme,
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
}

impl ChecksumAlgo {
    /// The base64 checksum of `data`, as S3 reports it.
    pub fn compute(self, data: &[u8]) -> String {
        BASE64.encode(self.raw(data))
    }

    /// S3's composite checksum of a multipart upload of `data` in `part`-byte parts: the
    /// checksum of the concatenated part checksums, then `-N`.
    pub fn composite(self, data: &[u8], part: usize) -> String {
        let sums: Vec<u8> = data.chunks(part).flat_map(|p| self.raw(p)).collect();
        format!("{}-{}", self.compute(&sums), data.len().div_ceil(part))
    }

    fn raw(self, data: &[u8]) -> Vec<u8> {
        use crc_fast::{CrcAlgorithm, checksum};
        match self {
            ChecksumAlgo::Crc32 => (checksum(CrcAlgorithm::Crc32IsoHdlc, data) as u32)
                .to_be_bytes()
                .to_vec(),
            ChecksumAlgo::Crc32c => (checksum(CrcAlgorithm::Crc32Iscsi, data) as u32)
                .to_be_bytes()
                .to_vec(),
            ChecksumAlgo::Crc64nvme => checksum(CrcAlgorithm::Crc64Nvme, data)
                .to_be_bytes()
                .to_vec(),
            ChecksumAlgo::Sha1 => <sha1::Sha1 as sha1::Digest>::digest(data).to_vec(),
            ChecksumAlgo::Sha256 => <sha2::Sha256 as sha2::Digest>::digest(data).to_vec(),
        }
    }
}

/// One stored object.
#[derive(Clone, Debug)]
pub struct StoredObject {
    /// Contents.
    pub data: Bytes,
    /// ETag with quotes, as sent in headers.
    pub etag: String,
    /// Last-Modified.
    pub last_modified: SystemTime,
    /// Additional whole-object checksum.
    pub checksum: Option<(ChecksumAlgo, String)>,
}

/// How an object is stored.
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    /// Stored as a multipart upload with this part size (multipart ETag).
    pub part_size: Option<usize>,
    /// Keep an additional checksum of this algorithm.
    pub checksum: Option<ChecksumAlgo>,
    /// For a multipart upload, keep the checksum as S3's COMPOSITE type (`value-N`, the
    /// checksum of the part checksums) instead of over the whole object.
    pub composite: bool,
    /// Store this checksum value instead of the real one (to test a wrong checksum).
    pub checksum_override: Option<String>,
    /// Last-Modified to report (now by default).
    pub last_modified: Option<SystemTime>,
    /// With `part_size`, a multipart upload even when the object fits in one part (ETag
    /// `md5(md5(data))-1`, as a client that always uploads in parts gives).
    pub multipart_always: bool,
}

impl StoredObject {
    /// Builds the stored form of `data`.
    pub fn new(data: Bytes, options: &PutOptions) -> Self {
        let multipart = |part: usize| part > 0 && (data.len() > part || options.multipart_always);
        let etag = match options.part_size {
            Some(part) if multipart(part) => {
                let mut outer = Md5::new();
                let parts = data
                    .chunks(part)
                    .inspect(|chunk| outer.update(Md5::digest(chunk)))
                    .count();
                format!("\"{}-{parts}\"", hex::encode(outer.finalize()))
            }
            _ => format!("\"{}\"", hex::encode(Md5::digest(&data))),
        };
        let checksum = options.checksum.map(|algo| {
            let value =
                options
                    .checksum_override
                    .clone()
                    .unwrap_or_else(|| match options.part_size {
                        Some(part) if options.composite && part > 0 && data.len() > part => {
                            algo.composite(&data, part)
                        }
                        _ => algo.compute(&data),
                    });
            (algo, value)
        });
        Self {
            data,
            etag,
            last_modified: options.last_modified.unwrap_or_else(SystemTime::now),
            checksum,
        }
    }
}

/// Settings that shape listings.
#[derive(Debug, Default)]
pub struct ListingQuirks {
    /// Cap on keys per page.
    pub max_keys: Option<usize>,
    /// Leave ETags out of listings.
    pub omit_etag: bool,
    /// Sizes that listings and HEADs claim instead of the real ones.
    pub claimed_sizes: std::collections::HashMap<String, u64>,
}

/// The bucket and its settings, shared with the server handle.
#[derive(Debug, Default)]
pub struct Store {
    /// Bucket name.
    pub bucket: String,
    /// Objects by key.
    pub objects: Mutex<BTreeMap<String, StoredObject>>,
    /// Listing behaviour.
    pub quirks: Mutex<ListingQuirks>,
}

/// The `s3s::S3` implementation over a shared [`Store`].
#[derive(Clone, Debug)]
pub struct MemoryS3 {
    store: Arc<Store>,
}

impl MemoryS3 {
    /// Serves `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    fn check_bucket(&self, bucket: &str) -> S3Result<()> {
        if bucket == self.store.bucket {
            Ok(())
        } else {
            Err(s3_error!(NoSuchBucket))
        }
    }

    fn get(&self, bucket: &str, key: &str) -> S3Result<StoredObject> {
        self.check_bucket(bucket)?;
        let objects = self.store.objects.lock_unpoisoned();
        objects
            .get(key)
            .cloned()
            .ok_or_else(|| s3_error!(NoSuchKey))
    }
}

fn etag_value(quoted: &str) -> ETag {
    ETag::Strong(quoted.trim_matches('"').to_string())
}

fn check_conditions(
    object: &StoredObject,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<()> {
    let current = object.etag.trim_matches('"');
    if let Some(ETagCondition::ETag(wanted)) = if_match
        && wanted.value() != current
    {
        return Err(s3_error!(
            PreconditionFailed,
            "At least one of the pre-conditions you specified did not hold"
        ));
    }
    if let Some(condition) = if_none_match {
        let matches = match condition {
            ETagCondition::Any => true,
            ETagCondition::ETag(etag) => etag.value() == current,
        };
        if matches {
            return Err(s3_error!(NotModified));
        }
    }
    Ok(())
}

struct ChecksumFields {
    crc32: Option<String>,
    crc32c: Option<String>,
    crc64nvme: Option<String>,
    sha1: Option<String>,
    sha256: Option<String>,
    kind: Option<ChecksumType>,
}

fn checksum_fields(object: &StoredObject, wanted: bool) -> ChecksumFields {
    let mut fields = ChecksumFields {
        crc32: None,
        crc32c: None,
        crc64nvme: None,
        sha1: None,
        sha256: None,
        kind: None,
    };
    if let (true, Some((algo, value))) = (wanted, &object.checksum) {
        let value = Some(value.clone());
        match algo {
            ChecksumAlgo::Crc32 => fields.crc32 = value,
            ChecksumAlgo::Crc32c => fields.crc32c = value,
            ChecksumAlgo::Crc64nvme => fields.crc64nvme = value,
            ChecksumAlgo::Sha1 => fields.sha1 = value,
            ChecksumAlgo::Sha256 => fields.sha256 = value,
        }
        fields.kind = Some(ChecksumType::from_static(ChecksumType::FULL_OBJECT));
    }
    fields
}

#[async_trait::async_trait]
impl S3 for MemoryS3 {
    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let quirks_max = self.store.quirks.lock_unpoisoned().max_keys;
        let (omit_etag, claimed_sizes) = {
            let quirks = self.store.quirks.lock_unpoisoned();
            (quirks.omit_etag, quirks.claimed_sizes.clone())
        };
        let requested = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let max_keys = quirks_max
            .map_or(requested, |cap| requested.min(cap))
            .max(1);
        let prefix = input.prefix.clone().unwrap_or_default();
        // The continuation token is the last key of the previous page.
        let after = input
            .continuation_token
            .clone()
            .or_else(|| input.start_after.clone())
            .unwrap_or_default();
        let objects = self.store.objects.lock_unpoisoned();
        let mut contents = Vec::new();
        let mut common_prefixes: Vec<String> = Vec::new();
        let mut last_key = None;
        let mut truncated = false;
        for (key, object) in objects.range::<String, _>((
            std::ops::Bound::Excluded(&after),
            std::ops::Bound::Unbounded,
        )) {
            if !key.starts_with(&prefix) {
                if key.as_str() > prefix.as_str() && !prefix.is_empty() {
                    break;
                }
                continue;
            }
            let common = input
                .delimiter
                .as_deref()
                .filter(|d| !d.is_empty())
                .and_then(|d| {
                    let at = key[prefix.len()..].find(d)?;
                    Some(key[..prefix.len() + at + d.len()].to_string())
                });
            if common.is_some() && common_prefixes.last() == common.as_ref() {
                continue;
            }
            if contents.len() + common_prefixes.len() >= max_keys {
                truncated = true;
                break;
            }
            if let Some(common) = common {
                // Resume after every key under this prefix: no key sorts after `prefix\u{10FFFF}`
                // while still starting with it.
                last_key = Some(format!("{common}\u{10FFFF}"));
                common_prefixes.push(common);
                continue;
            }
            contents.push(Object {
                key: Some(key.clone()),
                size: Some(
                    claimed_sizes
                        .get(key)
                        .map_or(object.data.len() as i64, |s| *s as i64),
                ),
                e_tag: (!omit_etag).then(|| etag_value(&object.etag)),
                last_modified: Some(Timestamp::from(object.last_modified)),
                storage_class: Some(ObjectStorageClass::from_static(
                    ObjectStorageClass::STANDARD,
                )),
                ..Default::default()
            });
            last_key = Some(key.clone());
        }
        let key_count = (contents.len() + common_prefixes.len()) as i32;
        let output = ListObjectsV2Output {
            name: Some(input.bucket.clone()),
            prefix: input.prefix.clone(),
            delimiter: input.delimiter.clone(),
            max_keys: Some(max_keys as i32),
            key_count: Some(key_count),
            continuation_token: input.continuation_token.clone(),
            start_after: input.start_after.clone(),
            is_truncated: Some(truncated),
            next_continuation_token: if truncated { last_key } else { None },
            contents: Some(contents),
            common_prefixes: (!common_prefixes.is_empty()).then(|| {
                common_prefixes
                    .into_iter()
                    .map(|p| CommonPrefix { prefix: Some(p) })
                    .collect()
            }),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let object = self.get(&input.bucket, &input.key)?;
        check_conditions(
            &object,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
        )?;
        let wanted = input
            .checksum_mode
            .as_ref()
            .is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
        let checksums = checksum_fields(&object, wanted);
        let claimed = self
            .store
            .quirks
            .lock_unpoisoned()
            .claimed_sizes
            .get(&input.key)
            .copied();
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(claimed.map_or(object.data.len() as i64, |s| s as i64)),
            e_tag: Some(etag_value(&object.etag)),
            last_modified: Some(Timestamp::from(object.last_modified)),
            accept_ranges: Some("bytes".into()),
            checksum_crc32: checksums.crc32,
            checksum_crc32c: checksums.crc32c,
            checksum_crc64nvme: checksums.crc64nvme,
            checksum_sha1: checksums.sha1,
            checksum_sha256: checksums.sha256,
            checksum_type: checksums.kind,
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let object = self.get(&input.bucket, &input.key)?;
        check_conditions(
            &object,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
        )?;
        let full_length = object.data.len() as u64;
        let (range, content_range) = match &input.range {
            None => (0..full_length, None),
            Some(range) => {
                let checked = range
                    .check(full_length)
                    .map_err(|_| s3_error!(InvalidRange))?;
                let content_range =
                    format!("bytes {}-{}/{full_length}", checked.start, checked.end - 1);
                (checked, Some(content_range))
            }
        };
        let whole = content_range.is_none();
        let wanted = whole
            && input
                .checksum_mode
                .as_ref()
                .is_some_and(|m| m.as_str() == ChecksumMode::ENABLED);
        let checksums = checksum_fields(&object, wanted);
        let body = object.data.slice(range.start as usize..range.end as usize);
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..body.len())
            .step_by(CHUNK)
            .map(|start| Ok(body.slice(start..(start + CHUNK).min(body.len()))))
            .collect();
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(futures_util::stream::iter(chunks))),
            content_length: Some((range.end - range.start) as i64),
            content_range,
            e_tag: Some(etag_value(&object.etag)),
            last_modified: Some(Timestamp::from(object.last_modified)),
            accept_ranges: Some("bytes".into()),
            checksum_crc32: checksums.crc32,
            checksum_crc32c: checksums.crc32c,
            checksum_crc64nvme: checksums.crc64nvme,
            checksum_sha1: checksums.sha1,
            checksum_sha256: checksums.sha256,
            checksum_type: checksums.kind,
            ..Default::default()
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let mut data = Vec::new();
        if let Some(mut body) = input.body {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| s3_error!(IncompleteBody, "{e}"))?;
                data.extend_from_slice(&chunk);
            }
        }
        let checksum = [
            (ChecksumAlgo::Crc32, &input.checksum_crc32),
            (ChecksumAlgo::Crc32c, &input.checksum_crc32c),
            (ChecksumAlgo::Crc64nvme, &input.checksum_crc64nvme),
            (ChecksumAlgo::Sha1, &input.checksum_sha1),
            (ChecksumAlgo::Sha256, &input.checksum_sha256),
        ]
        .into_iter()
        .find_map(|(algo, value)| value.as_ref().map(|_| algo));
        let object = StoredObject::new(
            Bytes::from(data),
            &PutOptions {
                checksum,
                ..PutOptions::default()
            },
        );
        if let (Some(algo), Some((_, computed))) = (checksum, &object.checksum) {
            let sent = [
                &input.checksum_crc32,
                &input.checksum_crc32c,
                &input.checksum_crc64nvme,
                &input.checksum_sha1,
                &input.checksum_sha256,
            ]
            .into_iter()
            .find_map(std::clone::Clone::clone);
            if sent.as_deref() != Some(computed.as_str()) {
                return Err(s3_error!(
                    BadDigest,
                    "{} checksum mismatch",
                    format!("{algo:?}").to_lowercase()
                ));
            }
        }
        let etag = etag_value(&object.etag);
        self.store
            .objects
            .lock_unpoisoned()
            .insert(input.key, object);
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        self.store.objects.lock_unpoisoned().remove(&input.key);
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.check_bucket(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.check_bucket(&req.input.bucket)?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(vec![Bucket {
                name: Some(self.store.bucket.clone()),
                creation_date: Some(Timestamp::from(SystemTime::UNIX_EPOCH)),
                ..Default::default()
            }]),
            ..Default::default()
        }))
    }
}
