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
//! - **The slow tail** is hedged: a late first byte or a crawling body is asked again on
//!   another connection and front-end (see `part`).
//! - **Stalls.** No byte for the stall timeout, or a body under `--min-rate`, drops that
//!   connection (the body is dropped, so hyper closes it) and the part continues on another.
//! - **Bounded whatever the server claims.** A size above S3's 5 TiB maximum is refused, and
//!   parts are spawned lazily, a few more than there are connections, so tasks and memory do
//!   not grow with the size an object claims.
//! - **Resume reads back.** The parts a resume state claims are read back from the disk and
//!   hashed while the missing ones download; a part whose bytes do not give its recorded
//!   digests (a power loss took them) is fetched again alone, and verification uses the
//!   digests of the bytes on disk.
//! - **A full or failing disk** (see `disk`): nothing starts that the free space cannot hold;
//!   the first write error stops the object at once (its parts are cancelled, its temporary
//!   file removed) and marks DEST unhealthy, so no other object starts.
//! - **Verification and promotion** (see `verify`, `mirror`): an object that fails is
//!   downloaded again and never promoted. A cluster grant promotes only while its lease is
//!   valid (see `fence`).
//!
//! The code is split by concern: this module holds the object flow (HEAD when needed, download,
//! verify, promote, and the restarts between them) and the types callers see; `layout` cuts an
//! object into parts and fills its temporary file with them, resume included; `part` is one
//! ranged GET with its retries.

mod layout;
mod part;

use layout::Downloaded;
use part::PlanSource;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_sdk_s3::types::ChecksumMode;
use aws_smithy_types::date_time::Format;
use common::paths::UnsafeKey;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use transport::guard::MinRate;
use transport::listing::unquote_etag;
use transport::retry::{Failure, RetryPolicy, RetryReason, classify};
use transport::{RemoteObject, Source};

use crate::bandwidth::Bandwidth;
use crate::direct_io::IoPool;
use crate::disk::{DestHealth, LocalIoError, SpaceBudget};
use crate::fence::LeaseFence;
use crate::manifest::{ManifestEntry, now_rfc3339};
use crate::memory::BufferBudget;
use crate::mirror::{Mirror, PromoteError, TempPaths};
use crate::progress::Progress;
use crate::scheduler::{Admitted, Concurrency, RequestScheduler};
use crate::verify::{
    Expected, ExpectedChecksum, OnContradiction, StreamPlan, Streamed, VerifyError, VerifyMode,
};
use crate::version_stamp::ObjectVersion;

pub use layout::DEFAULT_PART_SIZE;

/// Default `--stall-timeout`.
pub const DEFAULT_STALL_TIMEOUT: Duration = transport::guard::DEFAULT_STALL_TIMEOUT;
/// The largest object S3 stores; a server claiming more is not believed.
pub const MAX_OBJECT_SIZE: u64 = 5 << 40;
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
    /// What a server's checksum that contradicts an ETag that verified does: keep the object
    /// on its ETag (default) or fail it (`--strict-checksums`).
    pub on_contradiction: OnContradiction,
    /// Per-request retry policy.
    pub retry: RetryPolicy,
    /// Write temporary files with direct I/O where the filesystem suits it (see `direct_io`).
    pub direct_io: bool,
    /// The slowest a body may be (`--min-rate`); enforced by the source's pool, which whoever
    /// builds it configures from here.
    pub min_rate: MinRate,
    /// Longest time a finished part waits to be saved in the resume state (each save syncs
    /// the data; see `writer`).
    pub save_every: Duration,
    /// Find the request window by measuring (`false`: `--no-autotune`, the window stays at
    /// the connection cap).
    pub autotune: bool,
    /// Ask slow requests again elsewhere (see `part`).
    pub hedge: bool,
    /// Bytes of in-flight buffers (`--memory-budget`, see `memory`).
    pub memory_budget: u64,
    /// `--bwlimit`: one cap for every engine made from this configuration (a worker's, one
    /// per source, share it).
    pub bandwidth: Arc<Bandwidth>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            part_size: None,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            verify: VerifyMode::Full,
            on_contradiction: OnContradiction::Keep,
            retry: RetryPolicy::default(),
            direct_io: true,
            min_rate: MinRate::DEFAULT,
            save_every: crate::writer::SAVE_EVERY,
            autotune: true,
            hedge: true,
            memory_budget: crate::memory::default_budget(),
            bandwidth: Arc::new(Bandwidth::unlimited()),
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
    /// Writing to DEST failed: full, over quota, read-only or failing. Not the object's
    /// fault: a cluster lease is released without counting an attempt.
    #[error("{0}")]
    Local(LocalIoError),
    /// Not promoted because the lease that allowed it lapsed or was lost.
    #[error("{0}")]
    Fenced(String),
    /// Verified but not promoted: the file in place holds a newer version of the key (a
    /// newer item for the same key finished first). Nothing to do for this item.
    #[error("{0}")]
    Superseded(String),
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

impl FetchError {
    /// A local write error: [`FetchError::Local`] when the disk itself failed (full, quota,
    /// read-only, EIO), which stops new work and costs a lease no attempt; any other (a
    /// permission, a vanished folder) is the object's own failure.
    pub fn from_local(error: LocalIoError) -> Self {
        if error.kind.is_dest_failure() {
            FetchError::Local(error)
        } else {
            FetchError::Io(error.to_string())
        }
    }

    /// The disk failure behind this error, if that is what it is.
    pub fn local(&self) -> Option<&LocalIoError> {
        match self {
            FetchError::Local(error) => Some(error),
            _ => None,
        }
    }
}

/// Refuses sizes no S3 object can have.
fn check_size(key: &str, size: u64) -> Result<(), FetchError> {
    if size > MAX_OBJECT_SIZE {
        return Err(FetchError::Permanent(format!(
            "{key} claims {size} bytes, more than S3's 5 TiB maximum; refused"
        )));
    }
    Ok(())
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
    /// Room promised to downloads in progress.
    space: Arc<SpaceBudget>,
    /// Whether DEST failed in a way that stops new downloads.
    health: Arc<DestHealth>,
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
    /// For a cluster grant: promotion only while the lease is valid.
    pub fence: Option<Arc<LeaseFence>>,
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
        let scheduler = RequestScheduler::capped(
            Concurrency {
                max: source.pool_config().max_connections,
                autotune: config.autotune,
            },
            BufferBudget::new(config.memory_budget),
            config.bandwidth.clone(),
        );
        Arc::new(Self {
            source,
            mirror,
            scheduler,
            progress,
            config,
            io_pool: std::sync::OnceLock::new(),
            space: Arc::new(SpaceBudget::default()),
            health: Arc::new(DestHealth::default()),
        })
    }

    /// Whether DEST failed in a way that stops new downloads (and lets them start again).
    pub fn dest_health(&self) -> &Arc<DestHealth> {
        &self.health
    }

    /// The folder to name in a disk error about `temp`: DEST, or the volume a symlinked folder
    /// of DEST leads to (same filesystem as the temporary files either way).
    fn room_dir(&self, temp: &TempPaths) -> std::path::PathBuf {
        let dir = temp.dir();
        if dir.starts_with(self.mirror.state_dir()) {
            return self.mirror.dest().to_path_buf();
        }
        dir.ancestors()
            .find(|a| {
                a.file_name()
                    .is_some_and(|n| n == crate::mirror::VOLUME_TMP)
            })
            .and_then(std::path::Path::parent)
            .unwrap_or(dir)
            .to_path_buf()
    }

    /// Counts a local write failure and, if it is the disk's, stops new downloads.
    fn disk_failed(&self, error: &LocalIoError) {
        self.progress.local_io_error(error.kind);
        self.health.failed(error);
    }

    /// Says so when the server's checksum contradicted an ETag that verified `key`'s bytes: a
    /// warning and a count, whatever [`EngineConfig::on_contradiction`] then does.
    pub fn contradiction_seen(&self, key: &str, verified: &crate::verify::Verified) {
        if let Some(contradiction) = &verified.contradiction {
            self.progress
                .checksum_contradictions
                .fetch_add(1, Ordering::Relaxed);
            let outcome = match self.config.on_contradiction {
                OnContradiction::Keep => {
                    "recorded as verified by its ETag (--strict-checksums would fail it)"
                }
                OnContradiction::Fail => "failed (--strict-checksums)",
            };
            tracing::warn!(key, %contradiction, "the server's checksum contradicts the ETag that verified the bytes; {outcome}");
        }
    }

    /// The request scheduler (its window shows the concurrency in use).
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

    /// About how many requests fetching `object` takes: its weight when objects are admitted
    /// (see `scheduler::AdmissionGate`).
    pub fn requests_for(&self, object: &RemoteObject) -> usize {
        let range = self
            .config
            .part_size
            .unwrap_or_else(|| self.scheduler.stats().range_size())
            .max(1);
        usize::try_from(object.size.div_ceil(range))
            .unwrap_or(usize::MAX)
            .max(1)
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
                            head.checksum_type()
                                .map(aws_sdk_s3::types::ChecksumType::as_str),
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
        self.fetch_admitted(object, seq, scope, None).await
    }

    /// [`Engine::fetch`] of an object admitted by an [`AdmissionGate`](crate::scheduler::AdmissionGate),
    /// to which each completed part gives its unit back.
    pub async fn fetch_admitted(
        self: &Arc<Self>,
        object: &RemoteObject,
        seq: u64,
        scope: &FetchScope,
        admitted: Option<Arc<Admitted>>,
    ) -> Result<Fetched, FetchError> {
        // A full or failing DEST starts nothing more.
        if let Some(failure) = self.health.failure() {
            return Err(FetchError::Local(LocalIoError {
                needed: Some(object.size),
                ..failure
            }));
        }
        check_size(&object.key, object.size)?;
        let final_path = self.mirror.final_path(&object.key)?;
        let temp = self.mirror.temp_paths(&object.key, &scope.temp_tag);
        // `era5 sync`'s temporaries resume; a lease's are never seen again once it ends.
        let resumable = scope.temp_tag.is_empty();
        let mut current = HeadInfo {
            size: object.size,
            etag: object.etag.clone(),
            last_modified: object.last_modified.clone(),
            checksum: None,
        };
        // A terse listing needs the ETag, from a HEAD. Full verification also wants S3's
        // additional checksum: an object fetched in one GET learns it from that GET's headers;
        // one fetched in ranges (S3 sends no checksum with a range) HEADs beside its first
        // ranges; one resumed from a previous run's parts HEADs first.
        let full = self.config.verify == VerifyMode::Full;
        let mut need_head = current.etag.is_none();
        let mut headed = false;
        let mut verify_failures = 0;
        let mut restarts = 0;
        loop {
            let mut part_size = self.part_size_for(&object.key, &current.expected(), &temp);
            if need_head || (full && !headed && temp.state.exists()) {
                let head = self.head(&object.key, seq << 24, &scope.cancel).await?;
                if head.size != current.size || head.etag != current.etag {
                    tracing::info!(key = %object.key, "object differs from its listing; fetching the current version");
                }
                current = head;
                headed = true;
                need_head = false;
                check_size(&object.key, current.size)?;
                part_size = self.part_size_for(&object.key, &current.expected(), &temp);
            }
            let mut expected = current.expected();
            let whole = current.size <= part_size && !temp.state.exists();
            let learn_checksum = (full && !headed && whole).then(|| Arc::new(OnceLock::new()));
            let job = ObjectJob {
                key: &object.key,
                seq,
                expected: &expected,
                part_size,
                temp: &temp,
                scope,
                admitted: admitted.clone(),
            };
            let attempted = if full && !headed && !whole {
                Box::pin(self.download_beside_head(&job)).await
            } else {
                let plan = StreamPlan::new(&expected, self.config.verify, part_size);
                let downloaded =
                    Box::pin(self.download(&job, PlanSource::Ready(plan), learn_checksum.clone()))
                        .await;
                match downloaded {
                    Ok(downloaded) => Attempted::Downloaded(downloaded, None),
                    Err(PartError::Changed) => Attempted::Changed(None),
                    Err(PartError::Fatal(error)) => Attempted::Failed(error),
                }
            };
            let downloaded = match attempted {
                Attempted::Downloaded(downloaded, head) => {
                    if let Some(head) = head {
                        expected.checksum.clone_from(&head.checksum);
                        current = head;
                        headed = true;
                    }
                    downloaded
                }
                Attempted::Changed(head) => {
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
                    match head {
                        Some(head) => {
                            current = head;
                            headed = true;
                            check_size(&object.key, current.size)?;
                        }
                        None => need_head = true,
                    }
                    continue;
                }
                Attempted::Failed(error) => {
                    // Interrupted or out of retries: `era5 sync`'s finished parts stay for the
                    // next run. Refused for good, or a disk that cannot hold them: nothing
                    // will resume them, and a full disk needs the room back now.
                    let keep = resumable
                        && !matches!(error, FetchError::Permanent(_) | FetchError::Local(_));
                    if !keep {
                        temp.remove();
                    }
                    if let FetchError::Local(local) = &error {
                        self.disk_failed(local);
                    }
                    return Err(error);
                }
            };
            if let Some(learned) = &learn_checksum {
                if let Some(checksum) = learned.get() {
                    expected.checksum.clone_from(checksum);
                } else {
                    // No whole-object GET answered (a part came from an earlier attempt's
                    // file): the checksum comes from a HEAD, of the same version.
                    let head = self.head(&object.key, seq << 24, &scope.cancel).await?;
                    if head.size != current.size || head.etag != current.etag {
                        tracing::info!(key = %object.key, "object changed upstream during the download; starting over");
                        temp.remove();
                        restarts += 1;
                        self.progress.restarts.fetch_add(1, Ordering::Relaxed);
                        if restarts > MAX_RESTARTS {
                            return Err(FetchError::KeepsChanging(restarts));
                        }
                        need_head = true;
                        continue;
                    }
                    expected.checksum = head.checksum;
                }
            }
            let mode = self.config.verify;
            let checked = {
                let expected = expected.clone();
                tokio::task::spawn_blocking(move || {
                    let streamed = Streamed {
                        part_size,
                        parts: &downloaded.digests,
                        ordered: downloaded.ordered.as_ref(),
                    };
                    let verified =
                        crate::verify::verify(&downloaded.file, &expected, mode, &streamed);
                    (downloaded.file, verified)
                })
                .await
                .map_err(|e| FetchError::Io(e.to_string()))?
            };
            let (file, verified) = checked;
            let verified = verified.and_then(|verified| {
                self.contradiction_seen(&object.key, &verified);
                verified.settle(self.config.on_contradiction)
            });
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
            let identity = self
                .promote(&object.key, file, &temp, &final_path, scope, &current)
                .await?;
            // One line per object: debug. Under a worker's lease span it names the grant.
            tracing::debug!(key = %object.key, etag = current.etag.as_deref().unwrap_or(""), size = current.size, "object promoted");
            return Ok(Fetched {
                entry: ManifestEntry {
                    key: object.key.clone(),
                    size: current.size,
                    etag: current.etag.clone(),
                    last_modified: current.last_modified.clone(),
                    checksum: verified.checksum,
                    verified: verified.level,
                    verified_at: now_rfc3339(),
                    file: Some(identity),
                },
            });
        }
    }

    /// Renames a verified temporary file of version `current` into place, if the lease fence
    /// and the version in place allow.
    async fn promote(
        &self,
        key: &str,
        file: std::fs::File,
        temp: &TempPaths,
        final_path: &std::path::Path,
        scope: &FetchScope,
        current: &HeadInfo,
    ) -> Result<crate::manifest::FileIdentity, FetchError> {
        stop_before_promotion_if_asked(key);
        let (size, version) = (
            current.size,
            ObjectVersion::from_last_modified(current.last_modified.as_deref()),
        );
        // The resume state goes first: a crash after it leaves a temporary file that the
        // next run starts afresh, never a state file that outlives its data.
        temp.remove_state();
        let mirror = self.mirror.clone();
        let fence = scope.fence.clone();
        let (temp_data, target) = (temp.data.clone(), final_path.to_path_buf());
        let owned_key = key.to_string();
        let promoted = tokio::task::spawn_blocking(move || {
            mirror.promote(
                &owned_key,
                &file,
                &temp_data,
                &target,
                version,
                || match &fence {
                    Some(fence) => fence.check(),
                    None => Ok(()),
                },
            )
        })
        .await
        .map_err(|e| FetchError::Io(e.to_string()))?;
        match promoted {
            Ok(identity) => Ok(identity),
            Err(PromoteError::Fenced(reason)) => {
                tracing::warn!(key, %reason, "verified but not promoted: the lease no longer allows it");
                temp.remove();
                Err(FetchError::Fenced(reason))
            }
            Err(superseded @ PromoteError::Superseded { .. }) => {
                tracing::info!(key, reason = %superseded, "verified but not promoted: a newer version is in place");
                temp.remove();
                Err(FetchError::Superseded(superseded.to_string()))
            }
            Err(PromoteError::Io(error)) => {
                temp.remove();
                let local = LocalIoError::from_io(&error, &self.room_dir(temp), Some(size));
                if local.kind.is_dest_failure() {
                    self.disk_failed(&local);
                    return Err(FetchError::Local(local));
                }
                Err(FetchError::Io(format!(
                    "promoting {} failed: {error}",
                    final_path.display()
                )))
            }
        }
    }

    /// Downloads a ranged object while its HEAD (for the S3 checksum) runs beside the first
    /// ranges: they are sent at once, hash every CRC the checksum may be until the HEAD says
    /// which, and wait for its answer only once their bytes are in (see `part::PlanSource`).
    /// A HEAD that shows another version stops the download and restarts the object with
    /// that version.
    async fn download_beside_head(self: &Arc<Self>, job: &ObjectJob<'_>) -> Attempted {
        let (expected, part_size) = (job.expected, job.part_size);
        let (plan_tx, plan_rx) = tokio::sync::watch::channel(None);
        let cancel = job.scope.cancel.child_token();
        let attempt_scope = FetchScope {
            cancel: cancel.clone(),
            ..job.scope.clone()
        };
        let attempt = ObjectJob {
            scope: &attempt_scope,
            admitted: job.admitted.clone(),
            ..*job
        };
        let mut download = Box::pin(self.download(
            &attempt,
            PlanSource::AfterHead {
                base: StreamPlan::new(expected, self.config.verify, part_size),
                answer: plan_rx,
            },
            None,
        ));
        let head = self.head(job.key, job.seq << 24, &cancel);
        tokio::pin!(head);
        let mut answered: Option<HeadInfo> = None;
        loop {
            tokio::select! {
                downloaded = &mut download => {
                    let head = match answered {
                        Some(head) => head,
                        // Only an object with nothing to hash gets here first.
                        None => match (&mut head).await {
                            Ok(head) => head,
                            Err(error) => return Attempted::Failed(error),
                        },
                    };
                    return match downloaded {
                        Ok(_) if head.size != expected.size || head.etag != expected.etag => {
                            Attempted::Changed(Some(head))
                        }
                        Ok(downloaded) => Attempted::Downloaded(downloaded, Some(head)),
                        Err(PartError::Changed) => Attempted::Changed(None),
                        Err(PartError::Fatal(error)) => Attempted::Failed(error),
                    };
                }
                headed = &mut head, if answered.is_none() => match headed {
                    Ok(head) if head.size == expected.size && head.etag == expected.etag => {
                        let with_checksum = Expected {
                            checksum: head.checksum.clone(),
                            ..expected.clone()
                        };
                        let plan = StreamPlan::new(&with_checksum, self.config.verify, part_size);
                        let _ = plan_tx.send(Some(plan));
                        answered = Some(head);
                    }
                    other => {
                        // Another version, or no answer: stop the ranges already sent.
                        cancel.cancel();
                        let _ = (&mut download).await;
                        return match other {
                            Ok(head) => Attempted::Changed(Some(head)),
                            Err(error) => Attempted::Failed(error),
                        };
                    }
                },
            }
        }
    }
}

/// One download of one object: what it is, what its bytes must be, how it is cut, where it
/// goes and whom it belongs to.
pub(super) struct ObjectJob<'a> {
    key: &'a str,
    /// Orders objects: lower goes first.
    seq: u64,
    expected: &'a Expected,
    part_size: u64,
    temp: &'a TempPaths,
    scope: &'a FetchScope,
    /// Its admission, to which each completed part gives a unit back.
    admitted: Option<Arc<Admitted>>,
}

/// How one download of an object ended.
enum Attempted {
    /// Every part is in the file; with the HEAD that ran beside it, if one did.
    Downloaded(Downloaded, Option<HeadInfo>),
    /// The object changed upstream: start over with this version, or HEAD first (`None`).
    Changed(Option<HeadInfo>),
    /// It failed for good (or was stopped).
    Failed(FetchError),
}

impl HeadInfo {
    /// What the bytes must be, as far as this describes them.
    fn expected(&self) -> Expected {
        Expected {
            size: self.size,
            etag: self.etag.clone(),
            checksum: self.checksum.clone(),
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
        () = cancel.cancelled() => Err(FetchError::Cancelled),
        output = future => Ok(output),
    }
}

/// Test-only fault injection, for the fencing test: with `ERA5_TEST_STOP_BEFORE_PROMOTE` set
/// to part of a key, the process stops itself (SIGSTOP) once, after that object is verified
/// and before it is promoted, exactly where a paused worker is dangerous. Unset, it costs one
/// lookup per process.
fn stop_before_promotion_if_asked(key: &str) {
    static PATTERN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    static STOPPED: AtomicBool = AtomicBool::new(false);
    let pattern = PATTERN.get_or_init(|| {
        std::env::var("ERA5_TEST_STOP_BEFORE_PROMOTE")
            .ok()
            .filter(|p| !p.is_empty())
    });
    if let Some(pattern) = pattern
        && key.contains(pattern.as_str())
        && !STOPPED.swap(true, Ordering::SeqCst)
    {
        // Written straight to stderr, not through tracing: the worker's log writer is a
        // background thread, and SIGSTOP would freeze it with this line still queued.
        eprintln!("stopping before promotion (ERA5_TEST_STOP_BEFORE_PROMOTE): {key}");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
    }
}
