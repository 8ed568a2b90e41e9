//! One object streamed from the source into the destination, verified end to end.
//!
//! Each upload part is one ranged GET of the source (with `If-Match` on the source's ETag, so
//! a replaced object is noticed), held in memory, hashed, and sent as `UploadPart` with a
//! digest the destination checks: its `Content-MD5`, or its CRC32C where the MD5 would be a
//! second hash of the bytes (see `integrity`). The source is verified against its ETag as the
//! bytes pass (see `layout`), and what the destination reports at completion (the ETag the
//! parts' MD5s give, the composite CRC32C of the parts') must be what was sent.
//!
//! **An object appears at its key only complete and verified**: it is a multipart upload
//! (one PUT for a small single-part object) completed only after the source check passed; a
//! completion that answers another ETag than expected is deleted at once and fails.
//!
//! **Resumable**: an interrupted copy leaves its upload open. The next attempt finds it (in
//! its batch folder's `ListMultipartUploads`, or the key's), reuses the listed parts whose size
//! fits the plan and whose MD5 the source check can use, and aborts the other open uploads of
//! the key.
//!
//! Bounded: an object's parts take a request slot and their bytes' room in the memory budget
//! *in part order* before they start, so a part waiting to feed the ordered whole-object MD5
//! always has its predecessors running.
//!
//! Here: the copy's plan, its upload and resume. `part` uploads one part, `source` reads the
//! source and checks its ETag, `complete` makes the final write and checks what it reports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use base64::Engine as _;
use engine::Progress;
use engine::bandwidth::Bandwidth;
use engine::fast_md5::Md5;
use engine::fence::LeaseFence;
use engine::memory::{BufferBudget, Reservation};
use engine::scheduler::RequestScheduler;
use engine::verify::etag::EtagForm;
use tokio::task::JoinSet;
use transport::retry::{Failure, RetryPolicy, RetryReason, chain, classify, retrying};
use transport::{RemoteObject, Source};

use crate::S3Target;
use crate::integrity::{PartDigest, parse_crc32c};
use crate::layout::{SourceCheck, UploadLayout};
use crate::uploads::OpenUpload;

mod complete;
mod part;
mod source;
use complete::{Answer, Expected, Written, refused_condition};
use part::PartJob;
use source::{OrderedHash, source_check, whole_md5_check};

/// Parts in flight by default (`--connections` caps it; `--no-autotune` sets it).
pub const COPY_WINDOW: usize = 32;

/// User metadata every copy carries: the source version it holds.
pub const SOURCE_ETAG_META: &str = "era5-source-etag";
/// The source's Last-Modified, RFC 3339.
pub const SOURCE_LAST_MODIFIED_META: &str = "era5-source-last-modified";

/// Why a copy did not happen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    /// Stopped; an open upload stays for the next attempt.
    #[error("cancelled")]
    Cancelled,
    /// Not completed: the lease it was copied under is no longer held (the upload stays open
    /// for whoever holds it now, who resumes it).
    #[error("not completed: {0}")]
    Fenced(String),
    /// Not completed: the key already holds a newer version of the object (an overlapping
    /// job's copy). The upload is aborted; the key is mirrored.
    #[error("a newer version is already at the key")]
    Superseded,
    /// The copy failed.
    #[error("{reason}")]
    Failed {
        /// What went wrong, for people.
        reason: String,
        /// Whether another attempt is pointless.
        permanent: bool,
    },
}

impl CopyError {
    fn retryable(reason: impl Into<String>) -> Self {
        CopyError::Failed {
            reason: reason.into(),
            permanent: false,
        }
    }

    fn permanent(reason: impl Into<String>) -> Self {
        CopyError::Failed {
            reason: reason.into(),
            permanent: true,
        }
    }

    fn gave_up(what: &str, gave_up: &transport::retry::GaveUp) -> Self {
        let reason = format!(
            "{what} failed after {} attempts: {}",
            gave_up.attempts, gave_up.detail
        );
        match gave_up.failure {
            Failure::Permanent { .. } => CopyError::permanent(reason),
            Failure::Retry(_) | Failure::Changed => CopyError::retryable(reason),
        }
    }
}

/// Completes nothing under a lease that is no longer valid.
fn fence_check(fence: Option<&LeaseFence>) -> Result<(), CopyError> {
    match fence {
        Some(fence) => fence.check().map_err(CopyError::Fenced),
        None => Ok(()),
    }
}

/// What copies share: both clients, the request window, the memory budget, the bandwidth cap.
pub struct Copier {
    /// The source (anonymous unless asked).
    pub source: Source,
    /// The destination client (its own credentials).
    pub dest: aws_sdk_s3::Client,
    /// Bucket and prefix.
    pub target: S3Target,
    /// Per-request retries.
    pub retry: RetryPolicy,
    /// Longest wait for a response's headers or next byte.
    pub stall_timeout: Duration,
    /// `--bwlimit`, charged for every source byte.
    pub bandwidth: Arc<Bandwidth>,
    /// Parts in flight (one slot covers a part's GET and its upload), and the memory budget
    /// (`--memory-budget`) their bytes are held in.
    pub scheduler: Arc<RequestScheduler>,
    /// Counters.
    pub progress: Arc<Progress>,
    /// Check, and complete conditionally on, the version at the key before completing (a
    /// cluster worker, where another holder may write the same key; see `version_fence`).
    pub fence_versions: bool,
    /// Set once the store answered a conditional write 501: writes go without conditions.
    pub unconditional: std::sync::atomic::AtomicBool,
    /// Set once the store answered a part without echoing its `x-amz-checksum-crc32c` (it
    /// ignores additional checksums): later uploads carry `Content-MD5`.
    pub part_checksums_ignored: std::sync::atomic::AtomicBool,
}

impl Copier {
    /// A copier from `source` into `target` through `dest`, with the engine's retries, stall
    /// timeout, bandwidth cap and memory budget, `connections` parts in flight.
    pub fn new(
        source: Source,
        dest: aws_sdk_s3::Client,
        target: S3Target,
        engine: &engine::EngineConfig,
        connections: usize,
        progress: Arc<Progress>,
    ) -> Self {
        // With autotune on (the default), `--connections` is a cap, and the copy keeps a
        // fixed window under it: copying is bound by hashing and the destination, and a
        // window of 256 parts only started every object at once (bench/RESULTS.md).
        let window = if engine.autotune {
            connections.min(COPY_WINDOW)
        } else {
            connections
        };
        Self {
            source,
            dest,
            target,
            retry: engine.retry,
            stall_timeout: engine.stall_timeout,
            bandwidth: engine.bandwidth.clone(),
            scheduler: RequestScheduler::new(
                engine::Concurrency {
                    max: window,
                    autotune: false,
                },
                BufferBudget::new(engine.memory_budget),
            ),
            progress,
            fence_versions: false,
            unconditional: std::sync::atomic::AtomicBool::new(false),
            part_checksums_ignored: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The digest a new upload of `layout` gives its parts: `Content-MD5` where the parts'
    /// MD5s are the source's check anyway, CRC32C otherwise (unless the store ignores it).
    fn part_digest_for(&self, layout: &UploadLayout) -> PartDigest {
        let ignored = self
            .part_checksums_ignored
            .load(std::sync::atomic::Ordering::Relaxed);
        if ignored || matches!(layout.check, SourceCheck::Multipart { .. }) {
            PartDigest::Md5
        } else {
            PartDigest::Crc32c
        }
    }

    /// The store answered a part without its CRC32C: said once, and new uploads use MD5s.
    fn note_checksums_ignored(&self) {
        if !self
            .part_checksums_ignored
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                "the destination does not echo x-amz-checksum-crc32c; checking parts by their MD5 from now on"
            );
        }
    }
}

/// One part's result.
#[derive(Clone, Debug)]
struct PartDone {
    /// Its ETag, unquoted, as the store answered it (checked against the part's MD5 wherever
    /// that was computed).
    etag: String,
    /// Its CRC32C, in an upload whose parts carry them.
    crc32c: Option<u32>,
    /// The store echoed the CRC32C, so it checked it (and its composite is worth checking).
    crc_checked: bool,
    /// MD5s of the source parts it holds, in order (for a multipart source check).
    source_md5s: Vec<[u8; 16]>,
}

fn quoted(etag: &str) -> String {
    format!("\"{}\"", etag.trim_matches('"'))
}

fn unquoted(etag: Option<&str>) -> String {
    etag.unwrap_or_default().trim_matches('"').to_string()
}

fn base64_md5(md5: &[u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5)
}

/// An SDK error as the retry loop wants it.
fn failure<E>(
    error: &SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> (Failure, String)
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    (classify(error), chain(error))
}

impl Copier {
    fn key_of(&self, object: &RemoteObject) -> String {
        self.target.key_of(&object.key)
    }

    /// Copies `object` (listed with `etag`, unquoted) to its key in the destination.
    /// `open` is the key's open uploads when the caller listed its folder's (one
    /// `ListMultipartUploads` for a batch); `None` lists the key's own.
    pub async fn copy(
        self: &Arc<Self>,
        object: &RemoteObject,
        etag: Option<&str>,
        priority: u64,
        fence: Option<&LeaseFence>,
        open: Option<Vec<OpenUpload>>,
    ) -> Result<(), CopyError> {
        let layout = UploadLayout::plan(object.size, etag)
            .map_err(|why| CopyError::permanent(format!("cannot copy {}: {why}", object.key)))?;
        if layout.single_put {
            self.put_whole(object, etag, &layout, priority, fence).await
        } else {
            self.upload_in_parts(object, etag, &layout, priority, fence, open)
                .await
        }
    }

    /// One PUT: a small single-part object, or an empty one.
    async fn put_whole(
        self: &Arc<Self>,
        object: &RemoteObject,
        etag: Option<&str>,
        layout: &UploadLayout,
        priority: u64,
        fence: Option<&LeaseFence>,
    ) -> Result<(), CopyError> {
        let (slot, room) = self.admit(priority, layout.size).await;
        let bytes = self.read_source(object, etag, 0, layout.size).await?;
        let digest = Md5::digest(&bytes);
        if let SourceCheck::WholeMd5(expected) = layout.check {
            whole_md5_check(digest, expected)
                .map_err(|mismatch| CopyError::retryable(format!("{}: {mismatch}", object.key)))?;
        }
        let key = self.key_of(object);
        let answered = self
            .fenced(&key, object, fence, |condition| {
                let (key, bytes) = (&key, &bytes);
                async move {
                    let put = retrying(
                        &self.retry,
                        |_| {
                            let request = self
                                .dest
                                .put_object()
                                .bucket(&self.target.bucket)
                                .key(key)
                                .content_md5(base64_md5(&digest))
                                .content_length(bytes.len() as i64)
                                .set_metadata(Some(Self::metadata(object, etag)))
                                .set_if_none_match(condition.if_none_match(self.is_unconditional()))
                                .set_if_match(condition.if_match(self.is_unconditional()))
                                .body(ByteStream::from(bytes.clone()));
                            let length = bytes.len() as u64;
                            let condition = &condition;
                            async move {
                                // The body is protected by its Content-MD5, which the store
                                // checks; a SHA-256 of it for the signature would only hash
                                // it twice more.
                                let send = request.customize().disable_payload_signing().send();
                                match self.bounded(send, length).await? {
                                    Ok(done) => Ok(Answer::etag(unquoted(done.e_tag()))),
                                    Err(error) => Err(refused_condition(self, condition, &error)
                                        .unwrap_or_else(|| failure(&error))),
                                }
                            }
                        },
                        |reason| self.progress.retry(reason),
                    )
                    .await;
                    match put {
                        Ok(answered) => Written::Done(answered),
                        Err(gave_up) => {
                            let error =
                                CopyError::gave_up(&format!("PutObject of {key}"), &gave_up);
                            if gave_up.failure == Failure::Changed {
                                Written::Raced(error)
                            } else {
                                Written::Failed(error)
                            }
                        }
                    }
                }
            })
            .await?;
        drop((slot, room));
        let expected = Expected {
            etag: Some(hex::encode(digest)),
            checksum: None,
        };
        self.check_completed(&key, &answered, &expected).await
    }

    /// A multipart upload, resumed from an open one when there is one.
    async fn upload_in_parts(
        self: &Arc<Self>,
        object: &RemoteObject,
        etag: Option<&str>,
        layout: &UploadLayout,
        priority: u64,
        fence: Option<&LeaseFence>,
        open: Option<Vec<OpenUpload>>,
    ) -> Result<(), CopyError> {
        let key = self.key_of(object);
        let resumed = self.resumable_upload(&key, layout, open).await?;
        let (upload_id, listed, digest) = if let Some(found) = resumed {
            found
        } else {
            let digest = self.part_digest_for(layout);
            let created = self.create_upload(object, etag, &key, digest).await?;
            (created, BTreeMap::new(), digest)
        };
        let ordered = Arc::new(OrderedHash::new());
        let mut done: Vec<Option<PartDone>> = vec![None; layout.parts() as usize];
        let mut running: JoinSet<(u64, Result<PartDone, CopyError>)> = JoinSet::new();
        let mut failed = None;
        for index in 0..layout.parts() {
            if let Some(reused) = listed.get(&index) {
                done[index as usize] = Some(reused.clone());
                continue;
            }
            let (start, end) = layout.range(index);
            // Take this part's resources in part order, settling finished parts meanwhile.
            let admit = self.admit(priority, end - start);
            tokio::pin!(admit);
            let resources = loop {
                tokio::select! {
                    biased;
                    Some(joined) = running.join_next(), if !running.is_empty() => {
                        match joined {
                            Ok((index, Ok(part))) => done[index as usize] = Some(part),
                            Ok((_, Err(error))) => { failed = Some(error); break None; }
                            Err(panicked) => { failed = Some(CopyError::retryable(panicked.to_string())); break None; }
                        }
                    }
                    resources = &mut admit => break Some(resources),
                }
            };
            let Some(resources) = resources else { break };
            let part = PartJob {
                copier: self.clone(),
                object: object.clone(),
                etag: etag.map(str::to_string),
                key: key.clone(),
                upload_id: upload_id.clone(),
                index,
                range: (start, end),
                check: layout.check.clone(),
                digest,
                ordered: ordered.clone(),
            };
            running.spawn(async move {
                let result = part.run().await;
                drop(resources);
                (index, result)
            });
        }
        while failed.is_none()
            && let Some(joined) = running.join_next().await
        {
            match joined {
                Ok((index, Ok(part))) => done[index as usize] = Some(part),
                Ok((_, Err(error))) => failed = Some(error),
                Err(panicked) => failed = Some(CopyError::retryable(panicked.to_string())),
            }
        }
        if let Some(error) = failed {
            // Parts still running stop here; the upload stays open for the next attempt.
            running.abort_all();
            return Err(error);
        }
        let parts: Vec<PartDone> = done.into_iter().flatten().collect();
        if let Err(mismatch) = source_check(&layout.check, &parts, &ordered) {
            self.abort(&key, &upload_id).await;
            return Err(CopyError::retryable(format!(
                "{}: {mismatch}; the upload was aborted",
                object.key
            )));
        }
        let expected = Expected::of(&parts, digest);
        let completed = self
            .fenced(&key, object, fence, |condition| {
                let (key, upload_id, parts, expected) = (&key, &upload_id, &parts, &expected);
                async move {
                    match self
                        .complete(key, upload_id, parts, expected, &condition)
                        .await
                    {
                        Ok(answered) => Written::Done(answered),
                        error @ Err(CopyError::Failed { .. }) if self.fence_versions => {
                            Written::Raced(error.unwrap_err())
                        }
                        Err(error) => Written::Failed(error),
                    }
                }
            })
            .await;
        let answered = match completed {
            Ok(answered) => answered,
            Err(CopyError::Superseded) => {
                self.abort(&key, &upload_id).await;
                return Err(CopyError::Superseded);
            }
            Err(error) => return Err(error),
        };
        self.check_completed(&key, &answered, &expected).await
    }

    /// The object's metadata: the source version it holds.
    fn metadata(
        object: &RemoteObject,
        etag: Option<&str>,
    ) -> std::collections::HashMap<String, String> {
        let mut metadata = std::collections::HashMap::new();
        if let Some(etag) = etag {
            metadata.insert(SOURCE_ETAG_META.to_string(), etag.to_string());
        }
        if let Some(modified) = &object.last_modified {
            metadata.insert(SOURCE_LAST_MODIFIED_META.to_string(), modified.clone());
        }
        metadata
    }

    async fn create_upload(
        &self,
        object: &RemoteObject,
        etag: Option<&str>,
        key: &str,
        digest: PartDigest,
    ) -> Result<String, CopyError> {
        let algorithm = (digest == PartDigest::Crc32c).then_some(ChecksumAlgorithm::Crc32C);
        retrying(
            &self.retry,
            |_| {
                let request = self
                    .dest
                    .create_multipart_upload()
                    .bucket(&self.target.bucket)
                    .key(key)
                    .set_checksum_algorithm(algorithm.clone())
                    .set_metadata(Some(Self::metadata(object, etag)));
                async move {
                    match self.bounded(request.send(), 0).await? {
                        Ok(created) => created.upload_id().map(str::to_string).ok_or((
                            Failure::Retry(RetryReason::BadResponse),
                            "CreateMultipartUpload answered no upload id".to_string(),
                        )),
                        Err(error) => Err(failure(&error)),
                    }
                }
            },
            |reason| self.progress.retry(reason),
        )
        .await
        .map_err(|gave_up| CopyError::gave_up(&format!("CreateMultipartUpload of {key}"), &gave_up))
    }

    /// The newest open upload of `key` (among `open`, or listed now), the digest its parts
    /// carry, and its parts that fit `layout` (by part index); every other open upload of the
    /// key is aborted.
    async fn resumable_upload(
        &self,
        key: &str,
        layout: &UploadLayout,
        open: Option<Vec<OpenUpload>>,
    ) -> Result<Option<(String, BTreeMap<u64, PartDone>, PartDigest)>, CopyError> {
        let mut open = match open {
            Some(open) => open,
            None => crate::uploads::list(&self.dest, &self.target.bucket, key, &self.retry)
                .await
                .map_err(|why| {
                    CopyError::retryable(format!("listing open uploads of {key}: {why}"))
                })?,
        };
        open.retain(|upload| upload.key == key);
        open.sort_by(|a, b| b.initiated.cmp(&a.initiated));
        let Some(newest) = open.first().cloned() else {
            return Ok(None);
        };
        for stale in &open[1..] {
            self.abort(key, &stale.upload_id).await;
        }
        let Some(digest) = PartDigest::of_upload(newest.checksum_algorithm.as_deref()) else {
            // Created with a checksum this tool never uses: not ours to continue.
            self.abort(key, &newest.upload_id).await;
            return Ok(None);
        };
        let listed = match crate::uploads::parts(
            &self.dest,
            &self.target.bucket,
            key,
            &newest.upload_id,
            &self.retry,
        )
        .await
        {
            Ok(listed) => listed,
            // Gone meanwhile (completed or aborted elsewhere): start a new one.
            Err(why) => {
                tracing::info!(key, %why, "open upload not resumable; starting a new one");
                return Ok(None);
            }
        };
        let mut reusable = BTreeMap::new();
        for part in listed {
            let index = u64::from(part.number).saturating_sub(1);
            let Some(EtagForm::Single(md5)) = EtagForm::parse(part.etag.trim_matches('"')) else {
                continue;
            };
            let crc32c = part.checksum_crc32c.as_deref().and_then(parse_crc32c);
            // The completion names every part's checksum in an upload that keeps them.
            if digest == PartDigest::Crc32c && crc32c.is_none() {
                continue;
            }
            if index < layout.parts() && layout.reusable(index, part.size) {
                reusable.insert(
                    index,
                    PartDone {
                        etag: hex::encode(md5),
                        crc32c,
                        // Listed with it: the store keeps (and so checked) its CRC32C.
                        crc_checked: crc32c.is_some(),
                        source_md5s: vec![md5],
                    },
                );
            }
        }
        tracing::info!(key, upload = %newest.upload_id, reused = reusable.len(), parts = layout.parts(), "resuming an open upload");
        Ok(Some((newest.upload_id, reusable, digest)))
    }

    /// Aborts an upload (best effort: an upload that survives is listed by `era5 uploads`).
    async fn abort(&self, key: &str, upload_id: &str) {
        if let Err(why) =
            crate::uploads::abort(&self.dest, &self.target.bucket, key, upload_id, &self.retry)
                .await
        {
            tracing::warn!(key, %why, "could not abort an upload; `era5 uploads --abort` removes it");
        }
    }

    /// A request slot and the room of `bytes` in the memory budget.
    async fn admit(&self, priority: u64, bytes: u64) -> (engine::scheduler::Slot, Reservation) {
        let slot = self.scheduler.acquire(priority).await;
        // A part larger than the budget's half still runs, alone.
        let room = self.scheduler.budget().reserve_chunk(bytes).await;
        (slot, room)
    }

    /// A request bounded in time: the stall timeout, plus the time its body may take at
    /// 64 KiB/s (the slowest an upload may be before it is given up and retried).
    async fn bounded<T>(
        &self,
        request: impl std::future::Future<Output = T>,
        body_bytes: u64,
    ) -> Result<T, (Failure, String)> {
        let within = self.stall_timeout + Duration::from_secs(body_bytes / (64 << 10));
        // Boxed: the SDK's request futures are kilobytes, and every caller would carry them.
        tokio::time::timeout(within, Box::pin(request))
            .await
            .map_err(|_| {
                (
                    Failure::Retry(RetryReason::Stall),
                    format!("no answer within {}s", within.as_secs()),
                )
            })
    }
}
