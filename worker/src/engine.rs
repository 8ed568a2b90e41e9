//! The fetch engine: one object at a time from the caller's point of view, many ranged GETs in
//! parallel underneath.
//!
//! - **Parts.** An object is fetched as ranged GETs of the part size (by default the object's
//!   own upload part size when its multipart ETag reveals it, so each part's MD5 is computed
//!   in-stream and the ETag check needs no second read). Each part runs in its own task and
//!   writes in place into the temporary file.
//! - **Consistency.** Every part carries `If-Match` with the ETag the object was planned with;
//!   a 412 means the object was replaced, and the object starts over with its new version.
//! - **Retries are per part** and resume from the last byte written: a finished part is never
//!   downloaded again, and neither is the finished prefix of a broken one.
//! - **Stalls.** No byte for the stall timeout drops that connection (the body is dropped, so
//!   hyper closes it) and the part continues on another.
//! - **Verification and promotion** (see `verify`, `mirror`): an object that fails is
//!   downloaded again and never promoted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_s3::types::ChecksumMode;
use aws_smithy_types::date_time::Format;
use common::paths::UnsafeKey;
use common::source::listing::unquote_etag;
use common::source::retry::{Failure, RetryPolicy, RetryReason, chain, classify};
use common::source::{RemoteObject, Source};
use thiserror::Error;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::direct_io::{self, ALIGN, IoPool};
use crate::manifest::{ManifestEntry, now_rfc3339};
use crate::mirror::{Mirror, ResumeState, TempPaths};
use crate::ordered_md5;
use crate::progress::Progress;
use crate::scheduler::RequestScheduler;
use crate::verify::{
    EtagForm, Expected, ExpectedChecksum, PartDigest, PartHasher, StreamPlan, Streamed,
    VerifyError, VerifyMode, candidate_part_sizes,
};
use crate::writer::{DirectSink, FileWriter};

/// Default part size of ranged GETs. 16 MiB measured faster than 8 MiB (fewer requests, the
/// same parallelism); an object whose multipart ETag must be verified uses its own upload part
/// size instead, so each part's MD5 is computed in-stream.
pub const DEFAULT_PART_SIZE: u64 = 16 << 20;
/// Default `--stall-timeout`.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Downloads of one object that may fail verification before it is reported.
const MAX_VERIFY_ATTEMPTS: u32 = 2;
/// Upstream replacements of one object tolerated during one fetch.
const MAX_RESTARTS: u32 = 3;

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Ranged GET size; `None` picks the object's upload part size or [`DEFAULT_PART_SIZE`].
    pub part_size: Option<u64>,
    /// A read delivering no byte for this long is abandoned and retried.
    pub stall_timeout: Duration,
    /// Verification strength.
    pub verify: VerifyMode,
    /// Per-request retry policy.
    pub retry: RetryPolicy,
    /// Write temporary files with direct I/O where the filesystem suits it (see `direct_io`).
    pub direct_io: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            part_size: None,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            verify: VerifyMode::Full,
            retry: RetryPolicy::default(),
            direct_io: true,
        }
    }
}

/// Why an object could not be fetched.
#[derive(Debug, Error, Clone)]
pub enum FetchError {
    /// The server refused for good (403, 404...). Not retried.
    #[error("{0} (permanent, not retried)")]
    Permanent(String),
    /// Transient failures outlasted the retry policy.
    #[error("gave up after {attempts} attempts of a part, last: {reason}: {detail}")]
    Exhausted {
        /// Attempts of the failing part.
        attempts: u32,
        /// The last reason.
        reason: RetryReason,
        /// The last error.
        detail: String,
    },
    /// Every download failed verification.
    #[error("verification failed {MAX_VERIFY_ATTEMPTS} times, last: {0}")]
    Verification(VerifyError),
    /// The object kept changing upstream.
    #[error("object changed upstream {0} times during the download")]
    KeepsChanging(u32),
    /// A local filesystem error.
    #[error("local i/o error: {0}")]
    Io(String),
    /// The key cannot be a path under DEST.
    #[error("{0}")]
    UnsafeKey(#[from] UnsafeKey),
    /// Stopped by Ctrl-C or shutdown.
    #[error("cancelled")]
    Cancelled,
}

impl FetchError {
    /// Whether retrying the object (in another lease attempt) cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            FetchError::Permanent(_) | FetchError::Verification(_) | FetchError::UnsafeKey(_)
        )
    }
}

impl From<std::io::Error> for FetchError {
    fn from(error: std::io::Error) -> Self {
        FetchError::Io(error.to_string())
    }
}

/// What a HEAD tells about the current version of an object.
#[derive(Clone, Debug)]
pub struct HeadInfo {
    /// Size.
    pub size: u64,
    /// Unquoted ETag.
    pub etag: Option<String>,
    /// Last-Modified, RFC 3339.
    pub last_modified: Option<String>,
    /// Whole-object checksum, when asked for and sent.
    pub checksum: Option<ExpectedChecksum>,
}

/// A fetched, verified and promoted object.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// Its manifest record.
    pub entry: ManifestEntry,
}

/// Everything the parts of all objects share.
pub struct Engine {
    source: Source,
    mirror: Arc<Mirror>,
    scheduler: Arc<RequestScheduler>,
    progress: Arc<Progress>,
    config: EngineConfig,
    /// Started by the first download that can write direct, so engines that never do (tmpfs,
    /// whole-MD5 downloads) run no idle I/O threads.
    io_pool: std::sync::OnceLock<Arc<IoPool>>,
}

/// What a fetch belongs to: the token that stops it and the tag that keeps its temporary
/// files apart from other holders of the same object (a lease id in the cluster).
#[derive(Clone, Debug, Default)]
pub struct FetchScope {
    /// Cancelling it stops the fetch; finished parts stay for a resume.
    pub cancel: CancellationToken,
    /// Cancelling it stops a batch from starting more objects; those started finish (a
    /// follow-mode sync ends "after the current object" this way).
    pub drain: CancellationToken,
    /// Added to temporary file names (empty for `era5 sync`).
    pub temp_tag: String,
    /// Counters of this batch alone (a lease's progress), besides the engine's own.
    pub batch: Option<Arc<Progress>>,
}

/// One part's failure, as the object sees it.
enum PartError {
    Changed,
    Fatal(FetchError),
}

impl Engine {
    /// An engine over `source`, writing into `mirror`.
    pub fn new(
        source: Source,
        mirror: Arc<Mirror>,
        progress: Arc<Progress>,
        config: EngineConfig,
    ) -> Arc<Self> {
        let scheduler = RequestScheduler::new(source.pool_config().max_connections);
        Arc::new(Self {
            source,
            mirror,
            scheduler,
            progress,
            config,
            io_pool: std::sync::OnceLock::new(),
        })
    }

    /// The request scheduler (its window shows the AIMD state).
    pub fn scheduler(&self) -> &Arc<RequestScheduler> {
        &self.scheduler
    }

    fn io_pool(&self) -> &Arc<IoPool> {
        self.io_pool.get_or_init(IoPool::start)
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// HEADs an object (with checksums in `full` mode), retrying transient failures.
    pub async fn head(
        &self,
        key: &str,
        priority: u64,
        cancel: &CancellationToken,
    ) -> Result<HeadInfo, FetchError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let slot = until_cancelled(cancel, self.scheduler.acquire(priority)).await?;
            let mut request = self
                .source
                .client
                .head_object()
                .bucket(&self.source.bucket)
                .key(key);
            if self.config.verify == VerifyMode::Full {
                request = request.checksum_mode(ChecksumMode::Enabled);
            }
            let sent = until_cancelled(
                cancel,
                tokio::time::timeout(self.config.stall_timeout, request.send()),
            )
            .await?;
            drop(slot);
            let failure = match sent {
                Err(_elapsed) => Failure::Retry(RetryReason::Stall),
                Ok(Ok(head)) => {
                    self.scheduler.on_success();
                    return Ok(HeadInfo {
                        size: head.content_length().unwrap_or_default().max(0) as u64,
                        etag: head.e_tag().map(unquote_etag),
                        last_modified: head
                            .last_modified()
                            .and_then(|t| t.fmt(Format::DateTime).ok()),
                        checksum: ExpectedChecksum::from_response(
                            head.checksum_crc32(),
                            head.checksum_crc32_c(),
                            head.checksum_crc64_nvme(),
                            head.checksum_sha1(),
                            head.checksum_sha256(),
                        ),
                    });
                }
                Ok(Err(error)) => classify(&error),
            };
            self.backoff_or_fail(failure, attempt, key, cancel)
                .await
                .map_err(|e| match e {
                    PartError::Changed => {
                        FetchError::Permanent("precondition failed on HEAD".into())
                    }
                    PartError::Fatal(e) => e,
                })?;
        }
    }

    /// Downloads, verifies and promotes one object. `seq` orders objects: lower goes first.
    pub async fn fetch(
        self: &Arc<Self>,
        object: &RemoteObject,
        seq: u64,
        scope: &FetchScope,
    ) -> Result<Fetched, FetchError> {
        let final_path = self.mirror.final_path(&object.key)?;
        let temp = self.mirror.temp_paths(&object.key, &scope.temp_tag);
        let mut current = HeadInfo {
            size: object.size,
            etag: object.etag.clone(),
            last_modified: object.last_modified.clone(),
            checksum: None,
        };
        // Full verification wants the checksum, and a terse listing needs the ETag: both come
        // from a HEAD. Otherwise the listing is enough and the HEAD is saved.
        let mut need_head = self.config.verify == VerifyMode::Full || current.etag.is_none();
        let mut verify_failures = 0;
        let mut restarts = 0;
        loop {
            if need_head {
                let head = self.head(&object.key, seq << 24, &scope.cancel).await?;
                if head.size != current.size || head.etag != current.etag {
                    tracing::info!(key = %object.key, "object differs from its listing; fetching the current version");
                }
                current = head;
            }
            let expected = Expected {
                size: current.size,
                etag: current.etag.clone(),
                checksum: current.checksum.clone(),
            };
            let part_size = self.part_size_for(&expected);
            let downloaded = match self
                .download(&object.key, seq, &expected, part_size, &temp, scope)
                .await
            {
                Ok(done) => done,
                Err(PartError::Changed) => {
                    restarts += 1;
                    self.progress.restarts.fetch_add(1, Ordering::Relaxed);
                    self.progress
                        .bytes_total
                        .fetch_add(current.size, Ordering::Relaxed);
                    temp.remove();
                    if restarts > MAX_RESTARTS {
                        return Err(FetchError::KeepsChanging(restarts));
                    }
                    tracing::info!(key = %object.key, "object changed upstream during the download; starting over");
                    need_head = true;
                    continue;
                }
                Err(PartError::Fatal(error)) => {
                    // Interrupted or out of retries: the finished parts stay for the next run.
                    // Refused for good: nothing will ever resume them.
                    if matches!(error, FetchError::Permanent(_)) {
                        temp.remove();
                    }
                    return Err(error);
                }
            };
            let mode = self.config.verify;
            let checked = {
                let expected = expected.clone();
                tokio::task::spawn_blocking(move || {
                    let streamed = Streamed {
                        part_size,
                        parts: &downloaded.digests,
                        whole_md5: downloaded.whole_md5,
                    };
                    let verified =
                        crate::verify::verify(&downloaded.file, &expected, mode, &streamed);
                    (downloaded.file, verified)
                })
                .await
                .map_err(|e| FetchError::Io(e.to_string()))?
            };
            let (file, verified) = checked;
            let verified = match verified {
                Ok(verified) => verified,
                Err(error) => {
                    verify_failures += 1;
                    self.progress
                        .verify_failures
                        .fetch_add(1, Ordering::Relaxed);
                    self.progress
                        .bytes_total
                        .fetch_add(current.size, Ordering::Relaxed);
                    tracing::warn!(key = %object.key, %error, "verification failed; downloading again");
                    temp.remove();
                    if verify_failures >= MAX_VERIFY_ATTEMPTS {
                        return Err(FetchError::Verification(error));
                    }
                    continue;
                }
            };
            // The resume state goes first: a crash after it leaves a temporary file that the
            // next run starts afresh, never a state file that outlives its data.
            temp.remove_state();
            let mirror = self.mirror.clone();
            let (temp_data, target) = (temp.data.clone(), final_path.clone());
            tokio::task::spawn_blocking(move || mirror.promote(&file, &temp_data, &target))
                .await
                .map_err(|e| FetchError::Io(e.to_string()))??;
            return Ok(Fetched {
                entry: ManifestEntry {
                    key: object.key.clone(),
                    size: current.size,
                    etag: current.etag.clone(),
                    last_modified: current.last_modified.clone(),
                    checksum: verified.checksum,
                    verified: verified.level,
                    verified_at: now_rfc3339(),
                },
            });
        }
    }

    fn part_size_for(&self, expected: &Expected) -> u64 {
        if let Some(part_size) = self.config.part_size {
            return part_size.max(1);
        }
        const USABLE: std::ops::RangeInclusive<u64> = (1 << 20)..=(256 << 20);
        if self.config.verify == VerifyMode::Size {
            return DEFAULT_PART_SIZE;
        }
        match expected.etag.as_deref().and_then(EtagForm::parse) {
            Some(EtagForm::Multipart { parts, .. }) => candidate_part_sizes(expected.size, parts)
                .into_iter()
                .find(|p| USABLE.contains(p))
                .unwrap_or(DEFAULT_PART_SIZE),
            _ => DEFAULT_PART_SIZE,
        }
    }

    /// Writes every missing part of the object into its temporary file (resuming a previous
    /// run's parts) and returns the open file with every part's digests, in order.
    async fn download(
        self: &Arc<Self>,
        key: &str,
        seq: u64,
        expected: &Expected,
        part_size: u64,
        temp: &TempPaths,
        scope: &FetchScope,
    ) -> Result<Downloaded, PartError> {
        let fatal = |e: std::io::Error| PartError::Fatal(e.into());
        let resumed = ResumeState::load(&temp.state).filter(|state| {
            state.key == key
                && state.etag == expected.etag
                && state.size == expected.size
                && state.part_size == part_size
        });
        let file_len = std::fs::metadata(&temp.data).map(|m| m.len()).ok();
        let state = match resumed {
            Some(state) if file_len == Some(expected.size) => state,
            _ => {
                temp.remove();
                ResumeState {
                    key: key.to_string(),
                    etag: expected.etag.clone(),
                    size: expected.size,
                    part_size,
                    parts: Default::default(),
                }
            }
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&temp.data)
            .map_err(fatal)?;
        file.set_len(expected.size).map_err(fatal)?;
        let plan = StreamPlan::new(expected, self.config.verify, part_size);
        // Direct writes leave nothing in the page cache, so only downloads that are never
        // read back take them: a whole-object MD5 rereads every part while the rest streams.
        let direct = if self.config.direct_io
            && !plan.whole_md5
            && part_size.is_multiple_of(ALIGN as u64)
            && self.io_pool().enabled()
        {
            direct_io::open_direct(&temp.data, &file)
        } else {
            None
        };
        if direct.is_some() {
            direct_io::preallocate(&file, expected.size);
        }
        let file = Arc::new(file);

        let part_count = expected.size.div_ceil(part_size);
        let resumed_bytes: u64 = state.parts.values().map(|p| p.len).sum();
        if resumed_bytes > 0 {
            tracing::info!(key, resumed_bytes, "resuming an interrupted download");
            self.progress.discount(resumed_bytes);
        }
        let missing: Vec<u64> = (0..part_count)
            .filter(|i| !state.parts.contains_key(i))
            .collect();
        let follower = plan.whole_md5.then(|| {
            let done: Vec<u64> = state.parts.keys().copied().collect();
            ordered_md5::follow(file.clone(), part_size, expected.size, done)
        });
        let direct = direct.map(|direct| DirectSink {
            direct,
            pool: self.io_pool().clone(),
            part_size,
        });
        let (writer, writer_task) = FileWriter::start(
            file.clone(),
            direct,
            state,
            temp.state.clone(),
            follower.as_ref().map(|(done, _)| done.clone()),
        );
        let mut tasks = JoinSet::new();
        for index in missing {
            let part = PartJob {
                engine: self.clone(),
                key: key.to_string(),
                etag: expected.etag.clone(),
                index,
                start: index * part_size,
                end: ((index + 1) * part_size).min(expected.size),
                priority: (seq << 24) | index.min((1 << 24) - 1),
                plan,
                writer: writer.clone(),
                cancel: scope.cancel.clone(),
                batch: scope.batch.clone(),
            };
            tasks.spawn(part.run());
        }
        let mut failed = None;
        while let Some(joined) = tasks.join_next().await {
            let result = joined.unwrap_or_else(|e| {
                Err(PartError::Fatal(FetchError::Io(format!(
                    "part task failed: {e}"
                ))))
            });
            if let Err(error) = result {
                // The other parts stop; finished ones stay in the resume state, which the
                // writer saves when its last handle goes.
                tasks.abort_all();
                failed = Some(error);
                break;
            }
        }
        drop(tasks);
        drop(writer);
        let written = writer_task
            .await
            .map_err(|e| PartError::Fatal(FetchError::Io(format!("file writer failed: {e}"))))?;
        let whole_md5 = match follower {
            Some((done, task)) => {
                drop(done);
                task.await.ok().flatten()
            }
            None => None,
        };
        if let Some(error) = failed {
            return Err(error);
        }
        if let Some(message) = written.failure {
            return Err(PartError::Fatal(FetchError::Io(message)));
        }
        let digests: Vec<PartDigest> = written.state.parts.into_values().collect();
        let file = Arc::try_unwrap(file)
            .map_err(|_| PartError::Fatal(FetchError::Io("temporary file still shared".into())))?;
        Ok(Downloaded {
            file,
            digests,
            whole_md5,
        })
    }

    /// Sleeps before the next attempt, or turns the failure into the final error.
    async fn backoff_or_fail(
        &self,
        failure: Failure,
        attempt: u32,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<(), PartError> {
        match failure {
            Failure::Retry(reason) => {
                self.progress.retry(reason);
                if reason == RetryReason::SlowDown {
                    self.scheduler.on_throttled();
                }
                if attempt >= self.config.retry.max_attempts {
                    return Err(PartError::Fatal(FetchError::Exhausted {
                        attempts: attempt,
                        reason,
                        detail: key.to_string(),
                    }));
                }
                tracing::debug!(key, attempt, %reason, "retrying");
                until_cancelled(
                    cancel,
                    tokio::time::sleep(self.config.retry.backoff(attempt)),
                )
                .await
                .map_err(PartError::Fatal)
            }
            Failure::Changed => Err(PartError::Changed),
            Failure::Permanent { message, .. } => {
                Err(PartError::Fatal(FetchError::Permanent(message)))
            }
        }
    }
}

/// Runs `future` unless `cancel` fires first.
async fn until_cancelled<F: std::future::Future>(
    cancel: &CancellationToken,
    future: F,
) -> Result<F::Output, FetchError> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(FetchError::Cancelled),
        output = future => Ok(output),
    }
}

/// A complete temporary file and what was computed while it streamed in.
struct Downloaded {
    file: std::fs::File,
    digests: Vec<PartDigest>,
    whole_md5: Option<[u8; 16]>,
}

/// One ranged GET of one object, with its retries.
struct PartJob {
    engine: Arc<Engine>,
    key: String,
    etag: Option<String>,
    index: u64,
    start: u64,
    end: u64,
    priority: u64,
    plan: StreamPlan,
    writer: FileWriter,
    cancel: CancellationToken,
    batch: Option<Arc<Progress>>,
}

/// How one attempt of a part ended.
enum Attempt {
    Complete,
    Failed(Failure, String),
}

impl PartJob {
    /// Downloads the part and hands it to the writer as done.
    async fn run(self) -> Result<(), PartError> {
        let engine = self.engine.clone();
        let mut hasher = PartHasher::new(self.plan);
        let mut written = 0u64;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = until_cancelled(&self.cancel, self.attempt(&mut hasher, &mut written))
                .await
                .map_err(PartError::Fatal)?;
            match outcome {
                Attempt::Complete => {
                    engine.scheduler.on_success();
                    return self
                        .writer
                        .part_done(self.index, hasher.finish())
                        .await
                        .map_err(|message| PartError::Fatal(FetchError::Io(message)));
                }
                Attempt::Failed(failure, detail) => {
                    tracing::debug!(key = %self.key, start = self.start + written, detail, "part attempt failed");
                    engine
                        .backoff_or_fail(failure, attempt, &self.key, &self.cancel)
                        .await
                        .map_err(|e| match e {
                            PartError::Fatal(FetchError::Exhausted {
                                attempts, reason, ..
                            }) => PartError::Fatal(FetchError::Exhausted {
                                attempts,
                                reason,
                                detail,
                            }),
                            other => other,
                        })?;
                }
            }
        }
    }

    /// One GET of the part's remaining bytes. Bytes received are kept even if the attempt
    /// fails, so the next one asks only for the rest.
    async fn attempt(&self, hasher: &mut PartHasher, written: &mut u64) -> Attempt {
        let engine = &self.engine;
        let stall = engine.config.stall_timeout;
        let from = self.start + *written;
        let length = self.end - from;
        if length == 0 {
            return Attempt::Complete;
        }
        let _slot = engine.scheduler.acquire(self.priority).await;
        let mut request = engine
            .source
            .client
            .get_object()
            .bucket(&engine.source.bucket)
            .key(&self.key)
            .range(format!("bytes={from}-{}", self.end - 1));
        if let Some(etag) = &self.etag {
            request = request.if_match(format!("\"{etag}\""));
        }
        let response = match tokio::time::timeout(stall, request.send()).await {
            Err(_) => {
                return Attempt::Failed(
                    Failure::Retry(RetryReason::Stall),
                    "no response headers in time".into(),
                );
            }
            Ok(Err(error)) => return Attempt::Failed(classify(&error), chain(&error)),
            Ok(Ok(response)) => response,
        };
        let range_start = response
            .content_range()
            .and_then(|r| r.strip_prefix("bytes "))
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.parse::<u64>().ok());
        if response.content_length() != Some(length as i64)
            || range_start.is_some_and(|s| s != from)
        {
            return Attempt::Failed(
                Failure::Retry(RetryReason::BadResponse),
                format!(
                    "asked for {length} bytes at {from}, got length {:?} range {:?}",
                    response.content_length(),
                    response.content_range()
                ),
            );
        }
        let mut body = response.body;
        loop {
            let chunk = match tokio::time::timeout(stall, body.next()).await {
                Err(_) => {
                    return Attempt::Failed(
                        Failure::Retry(RetryReason::Stall),
                        format!("no byte for {}s", stall.as_secs_f32()),
                    );
                }
                Ok(None) => break,
                Ok(Some(Err(error))) => {
                    let detail = chain(&error);
                    let reason = if detail.to_ascii_lowercase().contains("reset") {
                        RetryReason::Reset
                    } else {
                        RetryReason::Truncated
                    };
                    return Attempt::Failed(Failure::Retry(reason), detail);
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            if *written + chunk.len() as u64 > self.end - self.start {
                return Attempt::Failed(
                    Failure::Retry(RetryReason::BadResponse),
                    "body longer than the range".into(),
                );
            }
            hasher.update(&chunk);
            let length = chunk.len() as u64;
            if let Err(message) = self.writer.write(self.start + *written, chunk).await {
                return Attempt::Failed(
                    Failure::Permanent {
                        status: None,
                        message: message.clone(),
                    },
                    message,
                );
            }
            *written += length;
            engine.progress.add_downloaded(length);
            if let Some(batch) = &self.batch {
                batch.add_downloaded(length);
            }
        }
        if *written < self.end - self.start {
            return Attempt::Failed(
                Failure::Retry(RetryReason::Truncated),
                format!(
                    "body ended after {} of {} bytes",
                    *written,
                    self.end - self.start
                ),
            );
        }
        Attempt::Complete
    }
}
