//! The lease loop: the one code path a lease runs through, for a cluster worker (leases from
//! the coordinator, see `agent`) and for `era5 sync` (leases from the store embedded in the
//! process, see `embedded`).
//!
//! - **Leases.** Up to `max_leases` at once, acquired as earlier ones end. Each is renewed
//!   every third of its TTL; the local deadline is measured on the monotonic clock from the
//!   moment each renewal was sent, and when it passes without a successful renewal the lease's
//!   work stops (self-fencing), because the service may already have granted it to someone
//!   else.
//! - **Completion** only after every object of the lease is verified and promoted. **Promotion
//!   is fenced** (see `engine::fence`): an object is renamed into place only while the lease is
//!   valid by this process's monotonic clock with a margin, never after it fenced itself or
//!   heard that the lease is lost.
//! - **How a lease ends**, in this order: lost (nothing to report); DEST full or failing
//!   (released, no attempt counted: not the lease's fault); every object verified (complete);
//!   an object failed (fail, with the first failure's reason, permanent for 403/404 and
//!   repeated verification failures); stopped (released); cancelled by its job (nothing to
//!   report: the job is gone).
//! - **A full or failing DEST** closes the disk gate. A worker waits until DEST can take data
//!   again, which it notices by itself ([`OnDestFailure::WaitForRoom`]); `era5 sync` stops
//!   taking leases and ends ([`OnDestFailure::Stop`]). A full disk never makes a lease go dead.
//! - **Stopping.** `shutdown` stops taking leases and stops the work: every held lease is
//!   released (its finished objects stay, and in `era5 sync` its temporary files resume next
//!   run). `drain` stops taking leases and starting objects; the objects in flight finish.
//! - **Reporting the end** is retried while the service is unreachable (the calls are
//!   idempotent for a grant), for about a minute, or [`RELEASE_WITHIN`] for a release.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::sync::MutexExt;
use engine::Destination;
use engine::disk::{DiskGate, LocalIoError};
use engine::fence::LeaseFence;
use engine::fetch::{EngineConfig, FetchScope};
use engine::mirror::Mirror;
use engine::progress::Progress;
use engine::sync::{Mirrorer, Outcome};
use lease::model::{LeaseRef, SourceSpec};
use rand::Rng;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use transport::retry::RetryPolicy;
use transport::{BoundedHttpClient, Source, SourceConfig};

use crate::client::{ClientError, Granted, LeaseClient, LeaseEnd};
use crate::keep_alive::{LeaseStop, keep_alive};
use crate::telemetry::Telemetry;

/// Time a stopping holder gives its releases, all together (its leases expire anyway).
pub const RELEASE_WITHIN: Duration = Duration::from_secs(3);
/// Longest wait between acquire calls while nothing ends sooner.
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// Where a lease's temporary files are named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Temps {
    /// Tagged with the lease id: holders sharing DEST never touch each other's, and a lease's
    /// are never seen again once it ends (the cluster).
    PerLease,
    /// Untagged, kept across runs so an interrupted object resumes (`era5 sync`, the only
    /// writer of its locked DEST).
    Resumable,
}

/// What a full or failing DEST does to the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDestFailure {
    /// Take no lease until DEST can take data again, then go on (a worker).
    WaitForRoom,
    /// Take no more leases and end once the held ones have (`era5 sync`).
    Stop,
}

/// Settings of the loop.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// The destination, for disk checks and error messages.
    pub dest: PathBuf,
    /// The holder's name, for logs.
    pub name: String,
    /// Leases held at once.
    pub max_leases: usize,
    /// How temporary files are named.
    pub temps: Temps,
    /// What a full or failing DEST does.
    pub on_dest_failure: OnDestFailure,
    /// End once the service has nothing left and nothing is held (`era5 sync`); a worker runs
    /// until it is stopped.
    pub until_idle: bool,
}

/// Where the mirrorer for a lease's source comes from.
pub enum Mirrorers {
    /// One destination for every lease (`era5 sync`: one source, one DEST, a directory or
    /// another object store).
    One(Arc<dyn Destination>),
    /// One per (bucket, endpoint), made on first use, sharing one HTTP pool (a worker).
    PerSource(Box<SourceMirrorers>),
}

/// A worker's mirrorers, one per source.
pub struct SourceMirrorers {
    /// The process-wide HTTP pool (one connection cap for every source).
    pub http: BoundedHttpClient,
    /// That cap.
    pub connections: usize,
    /// The shared destination.
    pub dest: PathBuf,
    /// The worker's name (its DEST lock and temporary files carry it).
    pub name: String,
    /// Engine settings.
    pub engine: EngineConfig,
    /// Leases held at once: each keeps its own share of objects in flight.
    pub leases: usize,
    /// Counters shared by every mirrorer.
    pub progress: Arc<Progress>,
    /// An `s3://` destination, when the worker copies into an object store instead of DEST.
    pub store: Option<s3dest::Store>,
    /// The destinations made so far, one per source.
    pub made: tokio::sync::Mutex<HashMap<(String, String), Arc<dyn Destination>>>,
    /// Their engines' schedulers, for the telemetry's concurrency gauge.
    pub schedulers: crate::telemetry::Schedulers,
}

impl Mirrorers {
    async fn get(&self, source: &SourceSpec) -> std::io::Result<Arc<dyn Destination>> {
        let by_source = match self {
            Mirrorers::One(mirrorer) => return Ok(mirrorer.clone()),
            Mirrorers::PerSource(by_source) => by_source,
        };
        let key = (source.bucket.clone(), source.endpoint.clone());
        let mut made = by_source.made.lock().await;
        if let Some(existing) = made.get(&key) {
            return Ok(existing.clone());
        }
        let config = SourceConfig {
            bucket: source.bucket.clone(),
            endpoint: (!source.endpoint.is_empty()).then(|| source.endpoint.clone()),
            // The environment's AWS credentials are an object store destination's.
            env_credentials: by_source.store.is_none(),
            ..SourceConfig::era5(by_source.connections)
        };
        let connected = Source::connect_with(&config, by_source.http.clone()).await;
        let destination: Arc<dyn Destination> = if let Some(store) = &by_source.store {
            let mut copier = s3dest::Copier::new(
                connected,
                store.client.clone(),
                store.target.clone(),
                &by_source.engine,
                by_source.connections,
                by_source.progress.clone(),
            );
            // Other workers (and overlapping jobs) write the same bucket.
            copier.fence_versions = true;
            let window = copier.scheduler.max();
            s3dest::S3Mirror::new(copier, window + 2)
        } else {
            let mirror = Mirror::open_shared(&by_source.dest, &by_source.name)
                .map_err(std::io::Error::other)?;
            Mirrorer::with_batches(
                connected,
                mirror,
                by_source.engine.clone(),
                by_source.progress.clone(),
                by_source.leases,
            )?
        };
        made.insert(key, destination.clone());
        by_source
            .schedulers
            .lock_unpoisoned()
            .push(destination.scheduler().clone());
        Ok(destination)
    }

    /// Every mirrorer made so far.
    pub async fn all(&self) -> Vec<Arc<dyn Destination>> {
        match self {
            Mirrorers::One(mirrorer) => vec![mirrorer.clone()],
            Mirrorers::PerSource(by_source) => by_source
                .made
                .lock()
                .await
                .values()
                .map(|mirrorer| mirrorer.clone() as Arc<dyn Destination>)
                .collect(),
        }
    }
}

/// What stops the loop: `shutdown` stops the work, `drain` only the starting of more.
#[derive(Clone, Debug, Default)]
pub struct Stop {
    /// Stop taking leases, stop the work, release what is held.
    pub shutdown: CancellationToken,
    /// Stop taking leases and starting objects; the objects in flight finish.
    pub drain: CancellationToken,
}

/// One held lease, as reports and commands see it.
pub struct Held {
    /// The grant.
    pub lease: LeaseRef,
    /// This lease's own counters.
    pub progress: Arc<Progress>,
    /// Stops this lease's work.
    pub cancel: CancellationToken,
}

/// The lease loop over one service.
pub struct Runner<C> {
    client: C,
    config: RunnerConfig,
    mirrorers: Mirrorers,
    held: Mutex<HashMap<String, Held>>,
    draining: AtomicBool,
    /// Closed while DEST is full or failing: no leases are taken.
    disk: Arc<DiskGate>,
    /// The DEST failure that stopped the loop ([`OnDestFailure::Stop`]).
    stopped_by: Mutex<Option<LocalIoError>>,
    /// Engine-wide counters (a DEST failure is counted there).
    progress: Arc<Progress>,
    telemetry: Option<Arc<Telemetry>>,
}

impl<C: LeaseClient> Runner<C> {
    /// A loop over `client`, mirroring through `mirrorers`. `telemetry`, when given, times
    /// renewals and records contact with the service.
    pub fn new(
        client: C,
        config: RunnerConfig,
        mirrorers: Mirrorers,
        progress: Arc<Progress>,
        disk: Arc<DiskGate>,
        telemetry: Option<Arc<Telemetry>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            client,
            config,
            mirrorers,
            held: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            disk,
            stopped_by: Mutex::new(None),
            progress,
            telemetry,
        })
    }

    /// The service.
    pub fn client(&self) -> &C {
        &self.client
    }

    /// The leases held now.
    pub fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock_unpoisoned()
    }

    /// Takes no more leases (the held ones finish); says whether it was already so.
    pub fn drain(&self) -> bool {
        self.draining.swap(true, Ordering::SeqCst)
    }

    /// The DEST failure that stopped the loop, if one did ([`OnDestFailure::Stop`]).
    pub fn stopped_by(&self) -> Option<LocalIoError> {
        self.stopped_by.lock_unpoisoned().clone()
    }

    /// Makes every buffered manifest record durable.
    pub async fn flush(&self) -> std::io::Result<()> {
        for mirrorer in self.mirrorers.all().await {
            mirrorer.flush().await?;
        }
        Ok(())
    }

    fn contact(&self) {
        if let Some(telemetry) = &self.telemetry {
            telemetry.contact();
        }
    }

    /// Runs leases until `stop.shutdown` (or, with `until_idle`, until nothing is left or
    /// the loop was drained or stopped by DEST), then waits for the held ones to end.
    pub async fn run(self: &Arc<Self>, stop: &Stop) {
        let mut leases = JoinSet::new();
        let mut backoff = RetryPolicy::reconnect().backoff_sequence();
        loop {
            if stop.shutdown.is_cancelled() {
                break;
            }
            if stop.drain.is_cancelled() {
                self.draining.store(true, Ordering::SeqCst);
            }
            let stopped_by_disk = self.config.on_dest_failure == OnDestFailure::Stop
                && self.stopped_by.lock_unpoisoned().is_some();
            let taking = !self.draining.load(Ordering::SeqCst) && !stopped_by_disk;
            if self.config.until_idle && !taking && leases.is_empty() {
                break;
            }
            // Counted by tasks, not by the held map, which a task joins a moment after spawning.
            let free = self.config.max_leases.saturating_sub(leases.len());
            let mut wait = IDLE_WAIT;
            if taking && free > 0 && self.dest_can_take_data().await {
                // Leases granted by this call started no earlier than now: fences count from here.
                let sent = Instant::now();
                match self.client.acquire(free).await {
                    Ok(acquired) => {
                        backoff.reset();
                        self.contact();
                        if acquired.draining && !self.drain() {
                            tracing::info!(
                                "drain requested: finishing held leases, taking no more"
                            );
                        }
                        let none = acquired.grants.is_empty();
                        for grant in acquired.grants {
                            leases.spawn(self.clone().run_lease(grant, stop.clone(), sent));
                        }
                        if self.config.until_idle && none && acquired.exhausted && leases.is_empty()
                        {
                            break;
                        }
                    }
                    Err(error) => {
                        wait = backoff.next_wait();
                        tracing::warn!(%error, ?wait, "lease service unreachable; retrying");
                    }
                }
            }
            let jitter = rand::rng().random_range(0.8..1.2);
            let draining = self.draining.load(Ordering::SeqCst);
            tokio::select! {
                () = stop.shutdown.cancelled() => {}
                () = stop.drain.cancelled(), if !draining => {}
                Some(_) = leases.join_next(), if !leases.is_empty() => {}
                () = tokio::time::sleep(wait.mul_f64(jitter)) => {}
            }
        }
        if stop.shutdown.is_cancelled() {
            tracing::info!(held = self.held().len(), "stopping: releasing held leases");
            for held in self.held().values() {
                held.cancel.cancel();
            }
        }
        while leases.join_next().await.is_some() {}
    }

    /// Whether DEST can take data; reopens the gate (and lets the engines start downloads
    /// again) once space is back after a full disk.
    async fn dest_can_take_data(&self) -> bool {
        if self.disk.closed_because().is_none() {
            return true;
        }
        let (gate, dest) = (self.disk.clone(), self.config.dest.clone());
        let open = tokio::task::spawn_blocking(move || gate.try_reopen(&dest))
            .await
            .unwrap_or(false);
        if open {
            for mirrorer in self.mirrorers.all().await {
                mirrorer.health().clear();
            }
        }
        open
    }

    /// How a lease ended because of DEST, if it did: the disk's error, as the engine that
    /// met it recorded it (with what was needed and free), or as the outcome tells it.
    fn dest_failure(
        &self,
        mirrorer: Option<&Arc<dyn Destination>>,
        outcomes: &std::io::Result<Vec<Outcome>>,
    ) -> Option<LocalIoError> {
        match outcomes {
            Ok(outcomes) => {
                let (reason, kind) = outcomes.iter().find_map(|o| match o {
                    Outcome::Local { reason, kind } => Some((reason.clone(), *kind)),
                    _ => None,
                })?;
                let recorded = mirrorer.and_then(|m| m.health().failure());
                Some(recorded.unwrap_or(LocalIoError {
                    kind,
                    path: self.config.dest.clone(),
                    detail: reason,
                    needed: None,
                    free: None,
                }))
            }
            Err(error) => {
                let local = LocalIoError::from_io(error, &self.config.dest, None);
                local.kind.is_dest_failure().then_some(local)
            }
        }
    }

    /// Works one lease to its end (see the module doc for the order of the rules). `granted`
    /// is when the acquire that granted it was sent.
    async fn run_lease(self: Arc<Self>, grant: Granted, stop: Stop, granted: Instant) {
        let lease = grant.lease;
        let fence = Arc::new(LeaseFence::new(granted, grant.ttl));
        let cancel = stop.shutdown.child_token();
        let progress = Arc::new(Progress::default());
        self.held().insert(
            lease.lease_id.clone(),
            Held {
                lease: lease.clone(),
                progress: progress.clone(),
                cancel: cancel.clone(),
            },
        );
        tracing::info!(job = %lease.job_id, item = %lease.item_id, epoch = lease.epoch, objects = grant.objects.len(), "lease granted");
        // Lease ids name a grant that only its holder may complete: debug level only.
        tracing::debug!(job = %lease.job_id, item = %lease.item_id, lease = %lease.lease_id, epoch = lease.epoch, "lease id");
        let stop_lease = LeaseStop {
            cancel: cancel.clone(),
            fence: fence.clone(),
        };
        let keeper = tokio::spawn({
            let (runner, lease, ttl) = (self.clone(), lease.clone(), grant.ttl);
            async move {
                let telemetry = runner.telemetry.as_deref();
                keep_alive(&runner.client, telemetry, &lease, granted, ttl, &stop_lease).await;
            }
        });
        let scope = FetchScope {
            cancel: cancel.clone(),
            drain: stop.drain.clone(),
            temp_tag: match self.config.temps {
                Temps::PerLease => lease.lease_id.clone(),
                Temps::Resumable => String::new(),
            },
            batch: Some(progress),
            fence: Some(fence.clone()),
        };
        let (mirrorer, outcomes) = match self.mirrorers.get(&grant.source).await {
            Ok(mirrorer) => {
                // A cluster worker's engine events (a promotion, say) name their grant; those
                // of `era5 sync` (`until_idle`), whose leases are its own batches, do not.
                let span = if self.config.until_idle {
                    tracing::Span::none()
                } else {
                    tracing::info_span!("lease", job = %lease.job_id, item = %lease.item_id, epoch = lease.epoch)
                };
                let outcomes = mirrorer
                    .mirror_objects(&grant.objects, &scope)
                    .instrument(span)
                    .await;
                (Some(mirrorer), outcomes)
            }
            Err(error) => (None, Err(error)),
        };
        // Nothing is promoted under this grant from here on; only its report remains.
        tracing::debug!(job = %lease.job_id, item = %lease.item_id, epoch = lease.epoch, "lease work ended");
        keeper.abort();
        self.held().remove(&lease.lease_id);
        if fence.is_lost() {
            tracing::warn!(job = %lease.job_id, item = %lease.item_id, epoch = lease.epoch, "lease lost; its work was stopped");
            return;
        }
        let stopping = stop.shutdown.is_cancelled() || stop.drain.is_cancelled();
        let end = if let Some(local) = self.dest_failure(mirrorer.as_ref(), &outcomes) {
            // DEST is full or failing: not the lease's fault, so no attempt is counted.
            if outcomes.is_err() {
                self.progress.local_io_error(local.kind);
            }
            self.disk.close(&local);
            if self.config.on_dest_failure == OnDestFailure::Stop {
                self.stopped_by.lock_unpoisoned().get_or_insert(local);
            }
            LeaseEnd::Release
        } else {
            match &outcomes {
                Err(_) if stopping => LeaseEnd::Release,
                Err(error) => LeaseEnd::Fail {
                    reason: format!("local i/o error: {error}"),
                    permanent: false,
                },
                Ok(outcomes) if outcomes.iter().all(Outcome::is_verified) => LeaseEnd::Complete,
                Ok(outcomes) => match outcomes.iter().find_map(|o| match o {
                    Outcome::Failed { reason, permanent } => Some((reason.clone(), *permanent)),
                    _ => None,
                }) {
                    Some((reason, permanent)) => LeaseEnd::Fail { reason, permanent },
                    None if stopping => LeaseEnd::Release,
                    // Stopped by a cancel command: the job is gone, nothing to report.
                    None => return,
                },
            }
        };
        let outcomes = outcomes.unwrap_or_default();
        self.finish(&lease, &end, &outcomes).await;
    }

    /// Reports the end of a lease, retrying while the service is unreachable. Gives up after
    /// about a minute, or [`RELEASE_WITHIN`] for a release: the lease then expires and is
    /// granted again.
    async fn finish(&self, lease: &LeaseRef, end: &LeaseEnd, outcomes: &[Outcome]) {
        let mut backoff = RetryPolicy::reconnect().backoff_sequence();
        let deadline = Instant::now()
            + match end {
                LeaseEnd::Release => RELEASE_WITHIN,
                _ => Duration::from_secs(60),
            };
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = tokio::time::timeout(remaining, self.client.finish(lease, end, outcomes))
                .await
                .unwrap_or_else(|_| Err(ClientError::Unavailable("no answer in time".into())));
            match result {
                Ok(ack) => {
                    tracing::info!(job = %lease.job_id, item = %lease.item_id, epoch = lease.epoch, action = end.name(), ?ack, "lease finished");
                    return;
                }
                Err(error) if Instant::now() < deadline => {
                    tracing::warn!(item = %lease.item_id, %error, "could not report the lease; retrying");
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(backoff.next_wait().min(remaining)).await;
                }
                Err(error) => {
                    tracing::error!(item = %lease.item_id, %error, "giving up reporting the lease; it will expire");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "runner_tests.rs"]
mod tests;
