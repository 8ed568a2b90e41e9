//! One sync of a selection into a mirror: decide per object whether it is already there,
//! only needs its local bytes verified, or must be downloaded; then fetch what is missing and
//! record every verified object in the manifest.
//!
//! An object is skipped (no GET) when the manifest has it with the listed size and ETag and
//! the file at the path is the one the record vouches for (same size, inode and mtime). When
//! the listing carries no ETag, Last-Modified stands in for it, and failing that a HEAD. A
//! file present without a record (a lost manifest, or a crash between promotion and the
//! manifest write), or **whose record no longer matches it** (replaced or rewritten since), is
//! verified from its bytes, not downloaded and not trusted.
//!
//! When DEST fills up or fails, objects that have not started are not started (they end
//! `Local`, with the disk's error); those in flight finish or stop at their first write error.

use common::sync::MutexExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use transport::{RemoteObject, Source};

use crate::destination::Destination;
use crate::disk::{DestHealth, LocalIoError, LocalIoKind};
use crate::fetch::{Engine, EngineConfig, FetchError, FetchScope};
use crate::manifest::{Currency, FileIdentity, Manifest, ManifestEntry, Recorded, now_rfc3339};
use crate::mirror::Mirror;
use crate::progress::Progress;
use crate::scheduler::{AdmissionGate, RequestScheduler};
use crate::verify::{Expected, VerifyMode, verify_file};

/// What happened to one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Already in the mirror and recorded as verified: nothing fetched.
    Present,
    /// The file was there; its bytes were verified locally.
    VerifiedLocally,
    /// Downloaded, verified and promoted.
    Downloaded,
    /// Failed, with the reason; `permanent` when retrying cannot help (403/404, repeated
    /// verification failures, an unsafe key).
    Failed {
        /// What went wrong.
        reason: String,
        /// Whether another attempt is pointless.
        permanent: bool,
    },
    /// Not done because DEST is full or failing: not the object's fault, so a cluster lease
    /// is released without counting an attempt.
    Local {
        /// The disk's error, e.g. `no space left on DEST (/data): needs 1.2 GiB more, 0 B free`.
        reason: String,
        /// Which kind of failure.
        kind: LocalIoKind,
    },
    /// Not finished because the sync was stopped (or, in the cluster, the lease was lost).
    Cancelled,
    /// Verified but not promoted: a newer version of the key was already in place (a newer
    /// item for the same key finished first). The key is mirrored; this item has nothing to do.
    Superseded,
}

impl Outcome {
    fn failed(error: &FetchError) -> Self {
        match error {
            FetchError::Local(local) => Outcome::Local {
                reason: local.to_string(),
                kind: local.kind,
            },
            _ => Outcome::Failed {
                reason: error.to_string(),
                permanent: error.is_permanent(),
            },
        }
    }

    /// Whether the object is present and verified.
    pub fn is_verified(&self) -> bool {
        matches!(
            self,
            Outcome::Present | Outcome::VerifiedLocally | Outcome::Downloaded | Outcome::Superseded
        )
    }
}

/// The result of a sync.
#[derive(Debug)]
pub struct SyncReport {
    /// Every selected object and its outcome, in key order.
    pub results: Vec<(RemoteObject, Outcome)>,
    /// Wall time.
    pub elapsed: Duration,
    /// Whether the sync was stopped before the end.
    pub cancelled: bool,
    /// Why the manifest could not be written at the end, if it could not (a full disk): the
    /// files are in place and the next run verifies them from their bytes.
    pub manifest_error: Option<String>,
}

impl SyncReport {
    /// Objects with a given outcome.
    pub fn count(&self, wanted: impl Fn(&Outcome) -> bool) -> usize {
        self.results
            .iter()
            .filter(|(_, outcome)| wanted(outcome))
            .count()
    }

    /// The failures, key and reason (a full or failing disk included).
    pub fn failures(&self) -> impl Iterator<Item = (&str, &str)> {
        self.results
            .iter()
            .filter_map(|(object, outcome)| match outcome {
                Outcome::Failed { reason, .. } | Outcome::Local { reason, .. } => {
                    Some((object.key.as_str(), reason.as_str()))
                }
                _ => None,
            })
    }

    /// Whether every selected object is present and verified.
    pub fn all_verified(&self) -> bool {
        !self.cancelled && self.results.iter().all(|(_, o)| o.is_verified())
    }

    /// The disk failure that stopped the sync, if one did.
    pub fn dest_failure(&self) -> Option<&str> {
        self.results.iter().find_map(|(_, outcome)| match outcome {
            Outcome::Local { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
    }
}

/// What to do with an object, decided before any download.
enum Plan {
    Present,
    VerifyLocal { head_first: bool },
    Fetch,
}

/// Mirrors batches of objects into one destination. The lease loop (`worker::runner`, for
/// `era5 sync` and a cluster worker alike) hands it one lease at a time, several concurrently;
/// `era5 verify --repair` hands it what failed as one batch. Objects of earlier batches go
/// first (a sequence number orders all requests).
pub struct Mirrorer {
    engine: Arc<Engine>,
    mirror: Arc<Mirror>,
    manifest: Mutex<Manifest>,
    progress: Arc<Progress>,
    next_seq: AtomicU64,
    /// Objects being fetched, by every batch together, admitted in request units so those in
    /// flight fill the request window, plus a little slack so verification and promotion
    /// overlap the next downloads; times the batches it is made for
    /// ([`Mirrorer::with_batches`]). Shared, so more leases at once than that hold no more
    /// temporary files, disk reservations and memory.
    in_flight: Arc<AdmissionGate>,
    /// Objects a batch keeps started at once, at most (most wait at the gate).
    in_flight_max: usize,
    /// The caller counts every object and byte into the totals up front
    /// ([`Mirrorer::count_up_front`]); batches then only take the present ones' bytes back out.
    counted_up_front: AtomicBool,
}

impl Mirrorer {
    /// A mirrorer writing into `mirror` (its manifest journal is opened here), whose batches
    /// together keep as many objects in flight as one batch would.
    pub fn new(
        source: Source,
        mirror: Mirror,
        config: EngineConfig,
        progress: Arc<Progress>,
    ) -> std::io::Result<Arc<Self>> {
        Self::with_batches(source, mirror, config, progress, 1)
    }

    /// A mirrorer whose batches together keep as many objects in flight as `batches` separate
    /// batches would (a worker's lease cap: its tiny objects wait on fsyncs more than on the
    /// network, so each lease keeps its own share busy).
    pub fn with_batches(
        source: Source,
        mirror: Mirror,
        config: EngineConfig,
        progress: Arc<Progress>,
        batches: usize,
    ) -> std::io::Result<Arc<Self>> {
        let manifest = Manifest::open(mirror.state_dir(), mirror.writer())?;
        let mirror = Arc::new(mirror);
        let engine = Engine::new(source, mirror.clone(), progress.clone(), config);
        let in_flight_max = engine.scheduler().max() + 2;
        Ok(Arc::new(Self {
            in_flight: AdmissionGate::new(engine.scheduler().clone(), batches),
            engine,
            in_flight_max,
            mirror,
            manifest: Mutex::new(manifest),
            progress,
            next_seq: AtomicU64::new(0),
            counted_up_front: AtomicBool::new(false),
        }))
    }

    /// The engine (its scheduler shows the request window).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The live counters.
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// DEST.
    pub fn mirror(&self) -> &Arc<Mirror> {
        &self.mirror
    }

    fn manifest(&self) -> std::sync::MutexGuard<'_, Manifest> {
        self.manifest.lock_unpoisoned()
    }

    /// Makes every object present and verified, or says why not; outcomes are in the order of
    /// `objects`. Counters grow by this batch.
    pub async fn mirror_objects(
        &self,
        objects: &[RemoteObject],
        scope: &FetchScope,
    ) -> std::io::Result<Vec<Outcome>> {
        let mode = self.engine.config().verify;
        let plans: Vec<Plan> = {
            let manifest = self.manifest();
            objects
                .iter()
                .map(|object| triage(&self.mirror, &manifest, object, mode))
                .collect()
        };
        let (present, to_download) = objects.iter().zip(&plans).fold(
            (0u64, 0u64),
            |(present, to_download), (object, plan)| match plan {
                Plan::Present => (present + object.size, to_download),
                _ => (present, to_download + object.size),
            },
        );
        if self.counted_up_front.load(Ordering::Relaxed) {
            self.progress.discount(present);
        } else {
            self.progress
                .objects_total
                .fetch_add(objects.len() as u64, Ordering::Relaxed);
            self.progress
                .bytes_total
                .fetch_add(to_download, Ordering::Relaxed);
        }

        let mut results: Vec<Option<Outcome>> = vec![None; objects.len()];
        let mut to_fetch = Vec::new();
        let mut to_check = Vec::new();
        for (index, plan) in plans.into_iter().enumerate() {
            match plan {
                Plan::Present => {
                    results[index] =
                        Some(self.settle(scope, &objects[index], Ok(None), Outcome::Present)?);
                }
                Plan::VerifyLocal { head_first } => to_check.push((index, head_first)),
                Plan::Fetch => to_fetch.push(index),
            }
        }

        // Local verification is disk and CPU bound: as many at once as there are cores.
        let hashing = Arc::new(Semaphore::new(
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
        ));
        let checked: Vec<(usize, Result<Option<ManifestEntry>, FetchError>)> =
            stream::iter(to_check)
                .take_until(Box::pin(scope.drain.clone().cancelled_owned()))
                .map(|(index, head_first)| {
                    let hashing = hashing.clone();
                    async move {
                        (
                            index,
                            verify_local(
                                &self.engine,
                                &self.mirror,
                                &hashing,
                                &objects[index],
                                head_first,
                                &scope.cancel,
                            )
                            .await,
                        )
                    }
                })
                .buffer_unordered(self.engine.scheduler().max())
                .collect()
                .await;
        for (index, result) in checked {
            match result {
                Ok(None) => to_fetch.push(index),
                Ok(Some(entry)) => {
                    // A crash may have left this object's temporary files behind after its
                    // promotion; the verified file makes them useless.
                    self.mirror
                        .temp_paths(&objects[index].key, &scope.temp_tag)
                        .remove();
                    self.progress.discount(objects[index].size);
                    results[index] = Some(self.settle(
                        scope,
                        &objects[index],
                        Ok(Some(entry)),
                        Outcome::VerifiedLocally,
                    )?);
                }
                Err(error) => {
                    results[index] = Some(self.settle(
                        scope,
                        &objects[index],
                        Err(error),
                        Outcome::VerifiedLocally,
                    )?);
                }
            }
        }

        // Objects in flight, across every batch at once (see `in_flight`).
        to_fetch.sort_unstable();
        let first_seq = self
            .next_seq
            .fetch_add(to_fetch.len() as u64, Ordering::Relaxed);
        let mut fetched = stream::iter(to_fetch.into_iter().enumerate())
            .take_until(Box::pin(scope.drain.clone().cancelled_owned()))
            .map(|(offset, index)| async move {
                let units = self.engine.requests_for(&objects[index]);
                let permit = tokio::select! {
                    biased;
                    () = scope.cancel.cancelled() => return None,
                    permit = self.in_flight.admit(units) => permit,
                };
                // Drained while waiting: not started, so not done.
                if scope.drain.is_cancelled() {
                    return None;
                }
                let fetched = self
                    .engine
                    .fetch_admitted(
                        &objects[index],
                        first_seq + offset as u64,
                        scope,
                        Some(permit.clone()),
                    )
                    .await;
                drop(permit);
                Some((index, fetched.map(|done| Some(done.entry))))
            })
            .buffer_unordered(self.in_flight_max);
        while let Some(done) = fetched.next().await {
            let Some((index, result)) = done else {
                continue;
            };
            results[index] =
                Some(self.settle(scope, &objects[index], result, Outcome::Downloaded)?);
        }
        drop(fetched);
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or(Outcome::Cancelled))
            .collect())
    }

    /// Counts `objects` into the totals now, so a progress display knows the whole pass before
    /// its batches (an `era5 sync` pass's leases) start: each batch then only takes the bytes
    /// of the objects already present back out.
    pub fn count_up_front(&self, objects: &[RemoteObject]) {
        self.counted_up_front.store(true, Ordering::Relaxed);
        self.progress
            .objects_total
            .fetch_add(objects.len() as u64, Ordering::Relaxed);
        self.progress.bytes_total.fetch_add(
            objects.iter().map(|o| o.size).sum::<u64>(),
            Ordering::Relaxed,
        );
    }

    /// Records how an object ended: its manifest entry (if newly verified) and the counters.
    fn settle(
        &self,
        scope: &FetchScope,
        object: &RemoteObject,
        result: Result<Option<ManifestEntry>, FetchError>,
        success: Outcome,
    ) -> std::io::Result<Outcome> {
        // A newer version was in place: done like any success, with nothing to record.
        let (result, success) = match result {
            Err(FetchError::Superseded(_)) => (Ok(None), Outcome::Superseded),
            result => (result, success),
        };
        let outcome = match result {
            Ok(entry) => {
                if let Some(entry) = entry
                    && let Err(error) = self.manifest().record(entry)
                {
                    // A full disk must not end the run: the record stays buffered for the next
                    // flush, and new downloads stop like after any other write error.
                    let local = LocalIoError::from_io(&error, self.mirror.state_dir(), None);
                    if !local.kind.is_dest_failure() {
                        return Err(error);
                    }
                    tracing::warn!(%local, "could not append to the manifest; will retry");
                    self.engine.dest_health().failed(&local);
                    self.progress.local_io_error(local.kind);
                }
                for progress in std::iter::once(&self.progress).chain(scope.batch.as_ref()) {
                    progress.objects_done.fetch_add(1, Ordering::Relaxed);
                }
                success
            }
            Err(FetchError::Cancelled) => Outcome::Cancelled,
            Err(FetchError::Fenced(reason)) => {
                tracing::warn!(key = %object.key, %reason, "not promoted: the lease is gone");
                Outcome::Cancelled
            }
            Err(error) => {
                self.progress.objects_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %object.key, %error, "object failed");
                Outcome::failed(&error)
            }
        };
        self.progress.object_ended(object, &outcome);
        Ok(outcome)
    }

    /// One batch as `era5 sync` runs it: every object made present and verified (or said why
    /// not), then the manifest made durable. A manifest that a full or failing disk could not
    /// take is reported in the result, not an error: the files are in place.
    pub async fn run_batch(
        &self,
        objects: Vec<RemoteObject>,
        scope: &FetchScope,
    ) -> std::io::Result<SyncReport> {
        let started = Instant::now();
        let outcomes = self.mirror_objects(&objects, scope).await?;
        let manifest_error = self.flush_at_end().await?;
        Ok(SyncReport {
            results: objects.into_iter().zip(outcomes).collect(),
            elapsed: started.elapsed(),
            cancelled: scope.cancel.is_cancelled() || scope.drain.is_cancelled(),
            manifest_error,
        })
    }

    /// The manifest's record of `key`, if any (a copy: the manifest stays locked briefly).
    pub fn recorded(&self, key: &str) -> Option<Recorded> {
        self.manifest().get(key)
    }

    /// Makes every buffered manifest record durable (the journal writer's fsync, awaited
    /// without holding the manifest or a runtime thread).
    pub async fn flush(&self) -> std::io::Result<()> {
        let flushed = self.manifest().flush_soon();
        flushed.await
    }

    /// The flush at the end of a sync: a manifest that a full or failing disk could not take
    /// is reported (`Ok(Some(why))`), not an error, since the files are in place and the next
    /// run verifies them from their bytes.
    pub async fn flush_at_end(&self) -> std::io::Result<Option<String>> {
        match self.flush().await {
            Ok(()) => Ok(None),
            Err(error) => {
                let local = LocalIoError::from_io(&error, self.mirror.state_dir(), None);
                if !local.kind.is_dest_failure() {
                    return Err(error);
                }
                Ok(Some(local.to_string()))
            }
        }
    }
}

/// A directory as the lease loop's destination: each call is the inherent method of the same
/// name, and the manifest's record decides what is already mirrored.
#[async_trait::async_trait]
impl Destination for Mirrorer {
    async fn mirror_objects(
        &self,
        objects: &[RemoteObject],
        scope: &FetchScope,
    ) -> std::io::Result<Vec<Outcome>> {
        Mirrorer::mirror_objects(self, objects, scope).await
    }

    fn count_up_front(&self, objects: &[RemoteObject]) {
        Mirrorer::count_up_front(self, objects);
    }

    fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    fn scheduler(&self) -> &Arc<RequestScheduler> {
        self.engine.scheduler()
    }

    fn health(&self) -> &Arc<DestHealth> {
        self.engine.dest_health()
    }

    fn recorded_version(&self, object: &RemoteObject) -> Option<bool> {
        let record = self.recorded(&object.key)?;
        Some(record.against(object) != Currency::Replaced)
    }

    async fn flush(&self) -> std::io::Result<()> {
        Mirrorer::flush(self).await
    }

    async fn flush_at_end(&self) -> std::io::Result<Option<String>> {
        Mirrorer::flush_at_end(self).await
    }
}

/// Runs a sync of `objects` into `mirror` as one batch and reports every outcome.
pub async fn run(
    source: Source,
    objects: Vec<RemoteObject>,
    mirror: Mirror,
    config: EngineConfig,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> std::io::Result<SyncReport> {
    let mirrorer = Mirrorer::new(source, mirror, config, progress)?;
    let scope = FetchScope {
        cancel,
        ..FetchScope::default()
    };
    mirrorer.run_batch(objects, &scope).await
}

/// Decides from the manifest and the filesystem alone (no request) what an object needs.
fn triage(mirror: &Mirror, manifest: &Manifest, object: &RemoteObject, mode: VerifyMode) -> Plan {
    let Ok(path) = mirror.final_path(&object.key) else {
        // The engine reports the unsafe key as this object's failure.
        return Plan::Fetch;
    };
    let Some(on_disk) = std::fs::metadata(&path)
        .ok()
        .filter(std::fs::Metadata::is_file)
    else {
        return Plan::Fetch;
    };
    if on_disk.len() != object.size {
        return Plan::Fetch;
    }
    let Some(entry) = manifest.get(&object.key) else {
        return Plan::VerifyLocal {
            head_first: object.etag.is_none() || mode == VerifyMode::Full,
        };
    };
    if entry.size != object.size {
        return Plan::Fetch;
    }
    // The record vouches for one file; any other at the path is checked from its bytes.
    if let Some(file) = entry.file
        && file != FileIdentity::of(&on_disk)
    {
        tracing::info!(key = %object.key, "file differs from the one its record vouches for; verifying it");
        return Plan::VerifyLocal {
            head_first: object.etag.is_none() || mode == VerifyMode::Full,
        };
    }
    match entry.against(object) {
        Currency::Replaced => Plan::Fetch,
        Currency::Current if entry.verified >= mode => Plan::Present,
        Currency::Current => Plan::VerifyLocal {
            head_first: mode == VerifyMode::Full,
        },
        // A terse listing: a HEAD decides.
        Currency::Undecided => Plan::VerifyLocal { head_first: true },
    }
}

/// Verifies a file already at its final path. `Ok(None)` means it must be downloaded.
async fn verify_local(
    engine: &Arc<Engine>,
    mirror: &Arc<Mirror>,
    hashing: &Arc<Semaphore>,
    object: &RemoteObject,
    head_first: bool,
    cancel: &CancellationToken,
) -> Result<Option<ManifestEntry>, FetchError> {
    let mode = engine.config().verify;
    let (etag, last_modified, checksum) = if head_first {
        let head = engine.head(&object.key, 0, cancel).await?;
        if head.size != object.size {
            return Ok(None);
        }
        (head.etag, head.last_modified, head.checksum)
    } else {
        (object.etag.clone(), object.last_modified.clone(), None)
    };
    let path = mirror.final_path(&object.key)?;
    let expected = Expected {
        size: object.size,
        etag: etag.clone(),
        checksum,
    };
    let _permit = hashing
        .acquire()
        .await
        .map_err(|e| FetchError::Io(e.to_string()))?;
    // The record names the file that was read: if it changed while being read, nothing is
    // recorded and the next run looks again.
    let checked = tokio::task::spawn_blocking(move || {
        let before = std::fs::metadata(&path).map(|m| FileIdentity::of(&m)).ok();
        let verified = verify_file(&path, &expected, mode);
        let after = std::fs::metadata(&path).map(|m| FileIdentity::of(&m)).ok();
        (verified, before.filter(|b| Some(*b) == after))
    })
    .await
    .map_err(|e| FetchError::Io(e.to_string()))?;
    let checked = match checked {
        (Ok(verified), identity) => {
            engine.contradiction_seen(&object.key, &verified);
            (verified.settle(engine.config().on_contradiction), identity)
        }
        failed => failed,
    };
    match checked {
        (Ok(_), None) => Ok(None),
        (Ok(verified), Some(identity)) => Ok(Some(ManifestEntry {
            key: object.key.clone(),
            size: object.size,
            etag,
            last_modified,
            checksum: verified.checksum,
            verified: verified.level,
            verified_at: now_rfc3339(),
            file: Some(identity),
        })),
        (Err(error), _) => {
            tracing::info!(key = %object.key, %error, "local file does not match upstream; downloading it");
            Ok(None)
        }
    }
}
