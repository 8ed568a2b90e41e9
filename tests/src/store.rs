//! The in-memory bucket behind the test server: an `s3s::S3` implementation of the operations
//! the mirror (and the benchmark peers) use: ListObjectsV2 with real pagination, HEAD and GET
//! with ranges, `If-Match`/`If-None-Match` and additional checksums, DELETE and bucket calls;
//! and, for the mirror as a writer, PutObject and multipart uploads (create, upload part, list
//! parts and uploads, complete, abort) with their digests, user metadata and conditional
//! writes checked as S3 does (see [`crate::uploads`]). Bodies are served as zero-copy slices
//! of the stored bytes.

use common::sync::MutexExt;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use md5::{Digest, Md5};
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, Bucket, ChecksumAlgorithm, ChecksumMode,
    ChecksumType, CommonPrefix, CompleteMultipartUploadInput, CompleteMultipartUploadOutput,
    CreateMultipartUploadInput, CreateMultipartUploadOutput, DeleteObjectInput, DeleteObjectOutput,
    ETag, ETagCondition, GetBucketLocationInput, GetBucketLocationOutput, GetObjectInput,
    GetObjectOutput, HeadBucketInput, HeadBucketOutput, HeadObjectInput, HeadObjectOutput,
    ListBucketsInput, ListBucketsOutput, ListMultipartUploadsInput, ListMultipartUploadsOutput,
    ListObjectsV2Input, ListObjectsV2Output, ListPartsInput, ListPartsOutput, MultipartUpload,
    Object, ObjectStorageClass, Part, PutObjectInput, PutObjectOutput, StorageClass, StreamingBlob,
    Timestamp, UploadPartInput, UploadPartOutput,
};
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};

use crate::uploads::{
    MAX_PART_NUMBER, MIN_PART_SIZE, StoredPart, Upload, check_write_conditions, composite_checksum,
    multipart_etag, new_upload_id, read_body, sent_checksums, verify_digests,
};

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
    /// Every algorithm, in the order of s3s' checksum fields.
    pub const ALL: [ChecksumAlgo; 5] = [
        ChecksumAlgo::Crc32,
        ChecksumAlgo::Crc32c,
        ChecksumAlgo::Crc64nvme,
        ChecksumAlgo::Sha1,
        ChecksumAlgo::Sha256,
    ];

    /// The request and response header that carries this checksum.
    pub fn header(self) -> &'static str {
        match self {
            ChecksumAlgo::Crc32 => "x-amz-checksum-crc32",
            ChecksumAlgo::Crc32c => "x-amz-checksum-crc32c",
            ChecksumAlgo::Crc64nvme => "x-amz-checksum-crc64nvme",
            ChecksumAlgo::Sha1 => "x-amz-checksum-sha1",
            ChecksumAlgo::Sha256 => "x-amz-checksum-sha256",
        }
    }

    /// The name S3 uses in `x-amz-checksum-algorithm` and listings (`CRC32`, `SHA256`...).
    pub fn s3_name(self) -> &'static str {
        match self {
            ChecksumAlgo::Crc32 => "CRC32",
            ChecksumAlgo::Crc32c => "CRC32C",
            ChecksumAlgo::Crc64nvme => "CRC64NVME",
            ChecksumAlgo::Sha1 => "SHA1",
            ChecksumAlgo::Sha256 => "SHA256",
        }
    }

    /// The algorithm S3 calls `name` (any case).
    pub fn from_s3_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|algo| algo.s3_name().eq_ignore_ascii_case(name))
    }

    /// Length of the binary checksum.
    pub fn raw_len(self) -> usize {
        match self {
            ChecksumAlgo::Crc32 | ChecksumAlgo::Crc32c => 4,
            ChecksumAlgo::Crc64nvme => 8,
            ChecksumAlgo::Sha1 => 20,
            ChecksumAlgo::Sha256 => 32,
        }
    }

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
    /// The checksum is S3's COMPOSITE type (`value-N`, over the parts' checksums) and HEAD and
    /// GET say so; set for objects a multipart upload completed with a composite checksum.
    /// (Seeded objects report FULL_OBJECT whatever their value, as before.)
    pub composite_checksum: bool,
    /// User metadata (`x-amz-meta-*`, the prefix left out), sent back by HEAD and GET.
    pub metadata: BTreeMap<String, String>,
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
    /// User metadata (`x-amz-meta-*`, the prefix left out).
    pub metadata: BTreeMap<String, String>,
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
            composite_checksum: false,
            metadata: options.metadata.clone(),
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
///
/// Lock order: `uploads` before `objects`, where both are held.
#[derive(Debug)]
pub struct Store {
    /// Bucket name.
    pub bucket: String,
    /// Objects by key.
    pub objects: Mutex<BTreeMap<String, StoredObject>>,
    /// Listing behaviour.
    pub quirks: Mutex<ListingQuirks>,
    /// Open multipart uploads by upload id.
    pub uploads: Mutex<BTreeMap<String, Upload>>,
    /// Numbers upload ids.
    pub upload_sequence: AtomicU64,
    /// Smallest size of every part but the last at completion (S3: 5 MiB).
    pub min_part_size: AtomicU64,
    /// Answers conditional writes 501 NotImplemented, as stores without them do.
    pub refuse_conditional_writes: std::sync::atomic::AtomicBool,
    /// Multipart uploads ignore additional checksums (`x-amz-checksum-*`, a created upload's
    /// algorithm): neither checked, kept nor echoed, as stores older than S3's checksums do.
    pub ignore_checksums: std::sync::atomic::AtomicBool,
}

impl Store {
    /// 501 for a conditional write when this store plays one without them.
    fn conditions_implemented(&self, conditional: bool) -> S3Result<()> {
        if conditional
            && self
                .refuse_conditional_writes
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(s3_error!(
                NotImplemented,
                "conditional writes are not implemented"
            ));
        }
        Ok(())
    }

    /// An empty bucket named `bucket`, with S3's part-size minimum.
    pub fn new(bucket: &str) -> Self {
        Self {
            bucket: bucket.to_string(),
            objects: Mutex::default(),
            quirks: Mutex::default(),
            uploads: Mutex::default(),
            upload_sequence: AtomicU64::new(0),
            min_part_size: AtomicU64::new(MIN_PART_SIZE),
            refuse_conditional_writes: std::sync::atomic::AtomicBool::new(false),
            ignore_checksums: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Opens an upload of `key` and returns its id.
    pub fn create_upload(&self, key: &str, make: impl FnOnce(&mut Upload)) -> String {
        let sequence = self.upload_sequence.fetch_add(1, Ordering::Relaxed);
        let upload_id = new_upload_id(sequence);
        let mut upload = Upload::new(key.to_string(), upload_id.clone(), SystemTime::now());
        make(&mut upload);
        self.uploads
            .lock_unpoisoned()
            .insert(upload_id.clone(), upload);
        upload_id
    }
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

impl ChecksumFields {
    /// The fields carrying `checksum`, of S3's COMPOSITE or FULL_OBJECT type.
    fn of(checksum: Option<&(ChecksumAlgo, String)>, composite: bool) -> Self {
        let mut fields = ChecksumFields {
            crc32: None,
            crc32c: None,
            crc64nvme: None,
            sha1: None,
            sha256: None,
            kind: None,
        };
        if let Some((algo, value)) = checksum {
            let value = Some(value.clone());
            match algo {
                ChecksumAlgo::Crc32 => fields.crc32 = value,
                ChecksumAlgo::Crc32c => fields.crc32c = value,
                ChecksumAlgo::Crc64nvme => fields.crc64nvme = value,
                ChecksumAlgo::Sha1 => fields.sha1 = value,
                ChecksumAlgo::Sha256 => fields.sha256 = value,
            }
            fields.kind = Some(checksum_type(composite));
        }
        fields
    }
}

fn checksum_type(composite: bool) -> ChecksumType {
    ChecksumType::from_static(if composite {
        ChecksumType::COMPOSITE
    } else {
        ChecksumType::FULL_OBJECT
    })
}

fn checksum_fields(object: &StoredObject, wanted: bool) -> ChecksumFields {
    ChecksumFields::of(
        object.checksum.as_ref().filter(|_| wanted),
        object.composite_checksum,
    )
}

/// User metadata as s3s sends it (None when there is none, so no header is written).
fn metadata_field(metadata: &BTreeMap<String, String>) -> Option<s3s::dto::Metadata> {
    (!metadata.is_empty()).then(|| metadata.clone().into_iter().collect())
}

fn no_such_upload() -> s3s::S3Error {
    s3_error!(
        NoSuchUpload,
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed."
    )
}

fn invalid_part(number: i32) -> s3s::S3Error {
    s3_error!(
        InvalidPart,
        "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag. (part {number})"
    )
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
            metadata: metadata_field(&object.metadata),
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
            metadata: metadata_field(&object.metadata),
            ..Default::default()
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let S3Request {
            input,
            trailing_headers,
            ..
        } = req;
        // The body is read before anything is refused, so the client always gets the answer
        // rather than a broken pipe while it is still sending.
        let data = read_body(input.body).await?;
        self.check_bucket(&input.bucket)?;
        let sent = sent_checksums(
            [
                input.checksum_crc32.as_ref(),
                input.checksum_crc32c.as_ref(),
                input.checksum_crc64nvme.as_ref(),
                input.checksum_sha1.as_ref(),
                input.checksum_sha256.as_ref(),
            ],
            trailing_headers.as_ref(),
        );
        verify_digests(&data, input.content_md5.as_deref(), &sent)?;
        let object = StoredObject::new(
            data,
            &PutOptions {
                checksum: sent.first().map(|(algo, _)| *algo),
                metadata: input.metadata.unwrap_or_default().into_iter().collect(),
                ..PutOptions::default()
            },
        );
        let etag = etag_value(&object.etag);
        let checksums = ChecksumFields::of(object.checksum.as_ref(), false);
        let size = object.data.len() as i64;
        {
            // Conditions and the write under one lock: a concurrent writer cannot slip between.
            let mut objects = self.store.objects.lock_unpoisoned();
            self.store.conditions_implemented(
                input.if_match.is_some() || input.if_none_match.is_some(),
            )?;
            check_write_conditions(
                objects.get(&input.key),
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
            )?;
            objects.insert(input.key, object);
        }
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag),
            size: Some(size),
            checksum_crc32: checksums.crc32,
            checksum_crc32c: checksums.crc32c,
            checksum_crc64nvme: checksums.crc64nvme,
            checksum_sha1: checksums.sha1,
            checksum_sha256: checksums.sha256,
            checksum_type: checksums.kind,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let ignore = self.store.ignore_checksums.load(Ordering::Relaxed);
        let checksum = match &input.checksum_algorithm {
            None => None,
            Some(_) if ignore => None,
            Some(name) => Some(ChecksumAlgo::from_s3_name(name.as_str()).ok_or_else(|| {
                s3_error!(
                    InvalidRequest,
                    "Checksum algorithm {} is not supported",
                    name.as_str()
                )
            })?),
        };
        let full_object = input
            .checksum_type
            .as_ref()
            .is_some_and(|t| t.as_str() == ChecksumType::FULL_OBJECT);
        if full_object
            && !matches!(
                checksum,
                Some(ChecksumAlgo::Crc32 | ChecksumAlgo::Crc32c | ChecksumAlgo::Crc64nvme)
            )
        {
            return Err(s3_error!(
                InvalidRequest,
                "The FULL_OBJECT checksum type needs a CRC checksum algorithm"
            ));
        }
        let metadata: BTreeMap<String, String> =
            input.metadata.unwrap_or_default().into_iter().collect();
        let upload_id = self.store.create_upload(&input.key, |upload| {
            upload.metadata = metadata;
            upload.checksum = checksum;
            upload.full_object = full_object;
        });
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            checksum_algorithm: input.checksum_algorithm,
            checksum_type: checksum.map(|_| checksum_type(!full_object)),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let S3Request {
            input,
            trailing_headers,
            ..
        } = req;
        let data = read_body(input.body).await?;
        self.check_bucket(&input.bucket)?;
        if !(1..=MAX_PART_NUMBER).contains(&input.part_number) {
            return Err(s3_error!(
                InvalidArgument,
                "Part number must be an integer between 1 and 10000, inclusive"
            ));
        }
        let mut sent = sent_checksums(
            [
                input.checksum_crc32.as_ref(),
                input.checksum_crc32c.as_ref(),
                input.checksum_crc64nvme.as_ref(),
                input.checksum_sha1.as_ref(),
                input.checksum_sha256.as_ref(),
            ],
            trailing_headers.as_ref(),
        );
        if self.store.ignore_checksums.load(Ordering::Relaxed) {
            sent.clear();
        }
        verify_digests(&data, input.content_md5.as_deref(), &sent)?;
        let mut uploads = self.store.uploads.lock_unpoisoned();
        let upload = uploads
            .get_mut(&input.upload_id)
            .filter(|u| u.key == input.key)
            .ok_or_else(no_such_upload)?;
        if let Some(expected) = upload.checksum
            && let Some((other, _)) = sent.iter().find(|(algo, _)| *algo != expected)
        {
            return Err(s3_error!(
                InvalidRequest,
                "Checksum Type mismatch occurred, expected checksum Type: {}, actual checksum Type: {}",
                expected.s3_name().to_lowercase(),
                other.s3_name().to_lowercase()
            ));
        }
        let algo = upload.checksum.or(sent.first().map(|(algo, _)| *algo));
        let part = StoredPart::new(data, algo);
        let etag = etag_value(&part.etag);
        let checksums = ChecksumFields::of(part.checksum.as_ref(), false);
        upload.parts.insert(input.part_number, part);
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag),
            checksum_crc32: checksums.crc32,
            checksum_crc32c: checksums.crc32c,
            checksum_crc64nvme: checksums.crc64nvme,
            checksum_sha1: checksums.sha1,
            checksum_sha256: checksums.sha256,
            ..Default::default()
        }))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let max_parts = input.max_parts.unwrap_or(1000).clamp(1, 1000) as usize;
        let marker = input.part_number_marker.unwrap_or(0).max(0);
        let uploads = self.store.uploads.lock_unpoisoned();
        let upload = uploads
            .get(&input.upload_id)
            .filter(|u| u.key == input.key)
            .ok_or_else(no_such_upload)?;
        let mut after = upload.parts.range(marker.saturating_add(1)..);
        let parts: Vec<Part> = after
            .by_ref()
            .take(max_parts)
            .map(|(number, part)| {
                let checksums = ChecksumFields::of(part.checksum.as_ref(), false);
                Part {
                    part_number: Some(*number),
                    e_tag: Some(etag_value(&part.etag)),
                    size: Some(part.data.len() as i64),
                    last_modified: Some(Timestamp::from(part.last_modified)),
                    checksum_crc32: checksums.crc32,
                    checksum_crc32c: checksums.crc32c,
                    checksum_crc64nvme: checksums.crc64nvme,
                    checksum_sha1: checksums.sha1,
                    checksum_sha256: checksums.sha256,
                }
            })
            .collect();
        let truncated = after.next().is_some();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            part_number_marker: Some(marker),
            next_part_number_marker: parts.last().and_then(|p| p.part_number),
            max_parts: Some(max_parts as i32),
            is_truncated: Some(truncated),
            parts: Some(parts),
            checksum_algorithm: upload
                .checksum
                .map(|algo| ChecksumAlgorithm::from_static(algo.s3_name())),
            checksum_type: upload.checksum.map(|_| checksum_type(!upload.full_object)),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let max_uploads = input.max_uploads.unwrap_or(1000).clamp(1, 1000) as usize;
        let prefix = input.prefix.clone().unwrap_or_default();
        let uploads = self.store.uploads.lock_unpoisoned();
        // S3 lists by key, then (with the upload-id-marker semantics) by upload id, which
        // here sorts in creation order.
        let mut open: Vec<&Upload> = uploads
            .values()
            .filter(|u| u.key.starts_with(&prefix))
            .filter(|u| match (&input.key_marker, &input.upload_id_marker) {
                (None, _) => true,
                (Some(key), None) => u.key > *key,
                (Some(key), Some(id)) => u.key > *key || (u.key == *key && u.upload_id > *id),
            })
            .collect();
        open.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
        let truncated = open.len() > max_uploads;
        open.truncate(max_uploads);
        let last = open.last().filter(|_| truncated);
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket.clone()),
            prefix: input.prefix.clone(),
            key_marker: input.key_marker.clone(),
            upload_id_marker: input.upload_id_marker.clone(),
            next_key_marker: last.map(|u| u.key.clone()),
            next_upload_id_marker: last.map(|u| u.upload_id.clone()),
            max_uploads: Some(max_uploads as i32),
            is_truncated: Some(truncated),
            uploads: Some(
                open.iter()
                    .map(|u| MultipartUpload {
                        key: Some(u.key.clone()),
                        upload_id: Some(u.upload_id.clone()),
                        initiated: Some(Timestamp::from(u.initiated)),
                        storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                        checksum_algorithm: u
                            .checksum
                            .map(|algo| ChecksumAlgorithm::from_static(algo.s3_name())),
                        checksum_type: u.checksum.map(|_| checksum_type(!u.full_object)),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let listed = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        if listed.is_empty() {
            return Err(s3_error!(
                MalformedXML,
                "The XML you provided was not well-formed or did not validate against our published schema: no part"
            ));
        }
        let min_part_size = self.store.min_part_size.load(Ordering::Relaxed);
        let mut uploads = self.store.uploads.lock_unpoisoned();
        let upload = uploads
            .get(&input.upload_id)
            .filter(|u| u.key == input.key)
            .ok_or_else(no_such_upload)?;
        let mut previous = 0;
        let mut parts = Vec::with_capacity(listed.len());
        for (index, wanted) in listed.iter().enumerate() {
            let number = wanted.part_number.unwrap_or(0);
            if number <= previous {
                return Err(s3_error!(
                    InvalidPartOrder,
                    "The list of parts was not in ascending order. Parts must be ordered by part number."
                ));
            }
            previous = number;
            let part = upload
                .parts
                .get(&number)
                .ok_or_else(|| invalid_part(number))?;
            let etag_matches = wanted
                .e_tag
                .as_ref()
                .is_some_and(|etag| etag.value() == part.etag.trim_matches('"'));
            if !etag_matches {
                return Err(invalid_part(number));
            }
            let listed_checksum = ChecksumAlgo::ALL
                .into_iter()
                .zip([
                    &wanted.checksum_crc32,
                    &wanted.checksum_crc32c,
                    &wanted.checksum_crc64nvme,
                    &wanted.checksum_sha1,
                    &wanted.checksum_sha256,
                ])
                .find_map(|(algo, value)| Some((algo, value.as_ref()?)));
            if let (Some((algo, value)), Some((stored_algo, stored))) =
                (listed_checksum, &part.checksum)
                && algo == *stored_algo
                && value != stored
            {
                return Err(invalid_part(number));
            }
            if let Some(algo) = upload.checksum
                && !upload.full_object
                && listed_checksum.is_none()
            {
                return Err(s3_error!(
                    InvalidRequest,
                    "The upload was created using a {} checksum. The complete request must include the checksum for each part. It was missing for part {number} in the request.",
                    algo.s3_name().to_lowercase()
                ));
            }
            if index + 1 < listed.len() && (part.data.len() as u64) < min_part_size {
                return Err(s3_error!(
                    EntityTooSmall,
                    "Your proposed upload is smaller than the minimum allowed size (part {number})"
                ));
            }
            parts.push(part);
        }
        let mut data = Vec::with_capacity(parts.iter().map(|p| p.data.len()).sum());
        for part in &parts {
            data.extend_from_slice(&part.data);
        }
        if let Some(size) = input.mpu_object_size
            && size != data.len() as i64
        {
            return Err(s3_error!(
                InvalidRequest,
                "The provided x-amz-mp-object-size {size} does not match the object's size {}",
                data.len()
            ));
        }
        let etag = multipart_etag(parts.iter().map(|p| p.etag.as_str()));
        let checksum = upload.checksum.map(|algo| {
            let value = if upload.full_object {
                algo.compute(&data)
            } else {
                composite_checksum(
                    algo,
                    parts
                        .iter()
                        .filter_map(|p| p.checksum.as_ref().map(|(_, v)| v.as_str())),
                )
            };
            (algo, value)
        });
        let sent = ChecksumAlgo::ALL
            .into_iter()
            .zip([
                &input.checksum_crc32,
                &input.checksum_crc32c,
                &input.checksum_crc64nvme,
                &input.checksum_sha1,
                &input.checksum_sha256,
            ])
            .find_map(|(algo, value)| Some((algo, value.as_ref()?)));
        if let Some((algo, value)) = sent {
            // A composite value may be sent with or without its `-N`.
            let matches = checksum.as_ref().is_some_and(|(ours, computed)| {
                *ours == algo && computed.split('-').next() == value.split('-').next()
            });
            if !matches {
                return Err(s3_error!(
                    BadDigest,
                    "The {} you specified did not match the calculated checksum.",
                    algo.header()
                ));
            }
        }
        let composite = !upload.full_object;
        let object = StoredObject {
            data: Bytes::from(data),
            etag,
            last_modified: SystemTime::now(),
            checksum,
            composite_checksum: composite,
            metadata: upload.metadata.clone(),
        };
        let checksums = ChecksumFields::of(object.checksum.as_ref(), composite);
        let e_tag = etag_value(&object.etag);
        {
            let mut objects = self.store.objects.lock_unpoisoned();
            // A failed condition leaves the upload open, as S3 does: the client may retry.
            self.store.conditions_implemented(
                input.if_match.is_some() || input.if_none_match.is_some(),
            )?;
            check_write_conditions(
                objects.get(&input.key),
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
            )?;
            objects.insert(input.key.clone(), object);
        }
        uploads.remove(&input.upload_id);
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(e_tag),
            checksum_crc32: checksums.crc32,
            checksum_crc32c: checksums.crc32c,
            checksum_crc64nvme: checksums.crc64nvme,
            checksum_sha1: checksums.sha1,
            checksum_sha256: checksums.sha256,
            checksum_type: checksums.kind,
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        self.check_bucket(&input.bucket)?;
        let mut uploads = self.store.uploads.lock_unpoisoned();
        if uploads
            .get(&input.upload_id)
            .is_none_or(|u| u.key != input.key)
        {
            return Err(no_such_upload());
        }
        uploads.remove(&input.upload_id);
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
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
