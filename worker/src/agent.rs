//! The cluster worker: takes leases from the coordinator and runs them through the same
//! mirror engine as `era5 sync`, into a destination shared with other workers.
//!
//! - **Leases.** Up to `max_leases` at once. Each is renewed every third of its TTL; the local
//!   deadline is measured on the monotonic clock from the moment each renewal was sent, and
//!   when it passes without a successful renewal the worker stops that lease's work itself
//!   (self-fencing), because the coordinator may already have granted it to someone else.
//! - **Completion** only after every object of the lease is verified and promoted. Temporary
//!   names carry the lease id and final paths are the keys, so a duplicate grant only costs
//!   bandwidth. **Promotion is fenced** (see `fence`): an object is renamed into place only
//!   while the lease is valid by this worker's monotonic clock with a margin, never after it
//!   fenced itself or heard `LEASE_LOST`.
//! - **A full or failing DEST** (see `disk`) releases the lease without counting an attempt,
//!   makes the worker not ready, and stops it taking leases until DEST can take data again,
//!   which it notices by itself. A full disk never makes a lease go dead.
//! - **Failures** are reported with the first failing object's reason; 403/404 and repeated
//!   verification failures are permanent.
//! - **Drain.** SIGTERM (the `shutdown` token) stops taking leases, stops the work and releases
//!   every lease held (no attempt counted), then returns. A drain command from the
//!   coordinator stops taking leases and lets the held ones finish.
//! - **The session stream** carries progress (about every second, latest value wins, never
//!   waited on by the downloads) and metrics up, commands down. It reconnects with jittered
//!   backoff; nothing depends on it being up.
//! - **The channel** ([`connect`]) is built from [`CoordinatorChannel`]: `https://` with the
//!   worker's certificate (whose name is the worker's name) or `http://`, a deadline on every
//!   call, HTTP/2 keepalive so a vanished coordinator is noticed.
//! - **Stopping** is bounded: releases get [`RELEASE_WITHIN`] in all, whether or not the
//!   coordinator answers.

use common::sync::MutexExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::channel::CoordinatorChannel;
use proto::v1 as pb;
use proto::v1::worker_client::WorkerClient;
use rand::Rng;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use transport::guard::BodyGuard;
use transport::retry::{RetryPolicy, RetryReason};
use transport::{
    BoundedHttpClient, ConnectionStats, PoolConfig, RemoteObject, Source, SourceConfig,
};

use crate::telemetry::Telemetry;
use engine::disk::{DiskGate, LocalIoError};
use engine::fence::LeaseFence;
use engine::fetch::{EngineConfig, FetchScope};
use engine::mirror::{ABANDONED_AFTER, Mirror};
use engine::progress::Progress;
use engine::sync::{Mirrorer, Outcome};

/// Time a stopping worker gives its releases, all together (its leases expire anyway).
pub const RELEASE_WITHIN: Duration = Duration::from_secs(3);
/// Largest Acquire response accepted (the coordinator bounds its responses well below).
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Settings of a worker.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// How to reach the coordinator: URL, TLS, deadlines, keepalive.
    pub channel: CoordinatorChannel,
    /// The shared destination.
    pub dest: PathBuf,
    /// This worker's name (unique in the cluster; with TLS, its certificate's).
    pub name: String,
    /// Process-wide cap on S3 connections.
    pub connections: usize,
    /// Leases held at once.
    pub max_leases: usize,
    /// Engine settings.
    pub engine: EngineConfig,
}

/// The worker could not start.
#[derive(Debug, Error)]
pub enum AgentError {
    /// Bad coordinator URL or TLS settings.
    #[error(transparent)]
    Coordinator(#[from] proto::Error),
    /// DEST unusable.
    #[error(transparent)]
    Mirror(#[from] engine::mirror::MirrorError),
    /// Writing the manifest failed.
    #[error("cannot open the manifest: {0}")]
    Manifest(#[from] std::io::Error),
}

/// One held lease, as the reporter sees it.
struct Held {
    lease: pb::LeaseRef,
    progress: Arc<Progress>,
    cancel: CancellationToken,
}

/// What the worker shares between its tasks.
struct Agent {
    config: AgentConfig,
    client: WorkerClient<Channel>,
    http: BoundedHttpClient,
    mirror_dest: PathBuf,
    /// One mirrorer per (bucket, endpoint); they share the HTTP pool (one process-wide cap).
    mirrorers: tokio::sync::Mutex<HashMap<(String, String), Arc<Mirrorer>>>,
    /// Engine-wide counters across every mirrorer.
    progress: Arc<Progress>,
    held: Mutex<HashMap<String, Held>>,
    draining: AtomicBool,
    telemetry: Arc<Telemetry>,
    /// Closed while DEST is full or failing: no leases are taken.
    disk: Arc<DiskGate>,
}

/// Runs the worker until `shutdown` fires (SIGTERM), then releases what it holds. With `http`,
/// serves metrics and probes there.
pub async fn run(
    config: AgentConfig,
    http: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let client = connect(&config.channel)?;
    // Checks DEST and the lock now, so a bad destination fails at start-up.
    drop(Mirror::open_shared(&config.dest, &config.name)?);
    let pool = BoundedHttpClient::new(PoolConfig {
        guard: BodyGuard {
            stall_timeout: config.engine.stall_timeout,
            min_rate: config.engine.min_rate,
        },
        ..PoolConfig::new(config.connections)
    });
    let progress = Arc::new(Progress::default());
    let telemetry = Telemetry::new(progress.clone(), pool.stats());
    let disk = Arc::new(DiskGate::default());
    telemetry.watch_dest(config.dest.clone(), disk.clone());
    let http_addr = http
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map_or("-".to_string(), |a| a.to_string());
    if let Some(listener) = http {
        tokio::spawn(telemetry.clone().serve(listener, shutdown.clone()));
    }
    let agent = Arc::new(Agent {
        http: pool,
        mirror_dest: config.dest.clone(),
        config,
        client,
        mirrorers: tokio::sync::Mutex::new(HashMap::new()),
        progress,
        held: Mutex::new(HashMap::new()),
        draining: AtomicBool::new(false),
        telemetry,
        disk,
    });
    let session_stop = CancellationToken::new();
    tokio::spawn(agent.clone().session(session_stop.clone()));
    tokio::spawn(sweep_abandoned_temps(
        agent.config.dest.clone(),
        agent.config.name.clone(),
        session_stop.clone(),
    ));
    let mut leases = JoinSet::new();
    let mut backoff = RetryPolicy::reconnect().backoff_sequence();
    tracing::info!(worker = %agent.config.name, http = %http_addr, "worker started");
    while !shutdown.is_cancelled() {
        let held = agent.held().len();
        let free = agent.config.max_leases.saturating_sub(held);
        let mut wait = Duration::from_millis(500);
        if free > 0 && !agent.draining.load(Ordering::SeqCst) && agent.dest_can_take_data().await {
            let request = pb::AcquireRequest {
                worker: agent.config.name.clone(),
                max: free as u32,
            };
            // Leases granted by this call started no earlier than now: the fence counts from here.
            let sent = Instant::now();
            match agent.client.clone().acquire(request).await {
                Ok(response) => {
                    backoff.reset();
                    agent.telemetry.contact();
                    let response = response.into_inner();
                    if response.draining && !agent.draining.swap(true, Ordering::SeqCst) {
                        tracing::info!("drain requested: finishing held leases, taking no more");
                    }
                    for lease in response.leases {
                        leases.spawn(agent.clone().run_lease(lease, shutdown.clone(), sent));
                    }
                }
                Err(status) => {
                    wait = backoff.next_wait();
                    tracing::warn!(code = ?status.code(), message = status.message(), ?wait, "coordinator unreachable; retrying");
                }
            }
        }
        let jitter = rand::rng().random_range(0.8..1.2);
        tokio::select! {
            () = shutdown.cancelled() => {}
            Some(_) = leases.join_next(), if !leases.is_empty() => {}
            () = tokio::time::sleep(wait.mul_f64(jitter)) => {}
        }
    }
    tracing::info!(held = agent.held().len(), "draining: releasing held leases");
    for held in agent.held().values() {
        held.cancel.cancel();
    }
    while leases.join_next().await.is_some() {}
    session_stop.cancel();
    for mirrorer in agent.mirrorers.lock().await.values() {
        mirrorer.flush()?;
    }
    Ok(())
}

impl Agent {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock_unpoisoned()
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
            for mirrorer in self.mirrorers.lock().await.values() {
                mirrorer.engine().dest_health().clear();
            }
        }
        open
    }

    /// How a lease ended because of DEST, if it did: the disk's error, as the engine that
    /// met it recorded it (with what was needed and free), or as the outcome tells it.
    fn dest_failure(
        &self,
        mirrorer: Option<&Arc<Mirrorer>>,
        outcomes: &std::io::Result<Vec<Outcome>>,
    ) -> Option<LocalIoError> {
        match outcomes {
            Ok(outcomes) => {
                let (reason, kind) = outcomes.iter().find_map(|o| match o {
                    Outcome::Local { reason, kind } => Some((reason.clone(), *kind)),
                    _ => None,
                })?;
                let recorded = mirrorer.and_then(|m| m.engine().dest_health().failure());
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

    async fn mirrorer(&self, source: &pb::Source) -> std::io::Result<Arc<Mirrorer>> {
        let key = (source.bucket.clone(), source.endpoint.clone());
        let mut mirrorers = self.mirrorers.lock().await;
        if let Some(existing) = mirrorers.get(&key) {
            return Ok(existing.clone());
        }
        let config = SourceConfig {
            bucket: source.bucket.clone(),
            endpoint: (!source.endpoint.is_empty()).then(|| source.endpoint.clone()),
            ..SourceConfig::era5(self.config.connections)
        };
        let source = Source::connect_with(&config, self.http.clone()).await;
        let mirror = Mirror::open_shared(&self.mirror_dest, &self.config.name)
            .map_err(std::io::Error::other)?;
        let mirrorer = Mirrorer::new(
            source,
            mirror,
            self.config.engine.clone(),
            self.progress.clone(),
        )?;
        mirrorers.insert(key, mirrorer.clone());
        Ok(mirrorer)
    }

    /// Works one lease to its end: complete, fail, release (on shutdown or a full disk) or
    /// abandon (lost). `granted` is when the acquire that granted it was sent.
    async fn run_lease(
        self: Arc<Self>,
        lease: pb::Lease,
        shutdown: CancellationToken,
        granted: Instant,
    ) {
        let Some(lease_ref) = lease.lease.clone() else {
            return;
        };
        let ttl = Duration::from_millis(lease.ttl_ms.max(1_000));
        let fence = Arc::new(LeaseFence::new(granted, ttl));
        let cancel = shutdown.child_token();
        let progress = Arc::new(Progress::default());
        self.held().insert(
            lease_ref.lease_id.clone(),
            Held {
                lease: lease_ref.clone(),
                progress: progress.clone(),
                cancel: cancel.clone(),
            },
        );
        tracing::info!(job = %lease_ref.job_id, item = %lease_ref.item_id, epoch = lease_ref.epoch, objects = lease.objects.len(), "lease granted");
        // Lease ids name a grant that only its holder may complete: debug level only.
        tracing::debug!(job = %lease_ref.job_id, item = %lease_ref.item_id, lease = %lease_ref.lease_id, epoch = lease_ref.epoch, "lease id");
        let lost = Arc::new(AtomicBool::new(false));
        let keeper = tokio::spawn(self.clone().keep_alive(
            lease_ref.clone(),
            ttl,
            cancel.clone(),
            lost.clone(),
            fence.clone(),
        ));
        let objects: Vec<RemoteObject> = lease
            .objects
            .iter()
            .map(|o| RemoteObject {
                key: o.key.clone(),
                size: o.size,
                etag: (!o.etag.is_empty()).then(|| o.etag.clone()),
                last_modified: (!o.last_modified.is_empty()).then(|| o.last_modified.clone()),
            })
            .collect();
        let scope = FetchScope {
            cancel: cancel.clone(),
            temp_tag: lease_ref.lease_id.clone(),
            batch: Some(progress),
            fence: Some(fence.clone()),
            ..FetchScope::default()
        };
        let (mirrorer, outcomes) = match self
            .mirrorer(&lease.source.clone().unwrap_or_default())
            .await
        {
            Ok(mirrorer) => {
                let outcomes = mirrorer.mirror_objects(&objects, &scope).await;
                (Some(mirrorer), outcomes)
            }
            Err(error) => (None, Err(error)),
        };
        keeper.abort();
        self.held().remove(&lease_ref.lease_id);
        if lost.load(Ordering::SeqCst) || fence.is_lost() {
            tracing::warn!(item = %lease_ref.item_id, epoch = lease_ref.epoch, "lease lost; its work was stopped");
            return;
        }
        if shutdown.is_cancelled() {
            self.finish(&lease_ref, Finish::Release).await;
            return;
        }
        // DEST is full or failing: not the lease's fault, so no attempt is counted.
        if let Some(local) = self.dest_failure(mirrorer.as_ref(), &outcomes) {
            if outcomes.is_err() {
                self.progress.local_io_error(local.kind);
            }
            self.disk.close(&local);
            self.finish(&lease_ref, Finish::Release).await;
            return;
        }
        let finish = match outcomes {
            Err(error) => Finish::Fail(format!("local i/o error: {error}"), false),
            Ok(outcomes) if outcomes.iter().all(Outcome::is_verified) => Finish::Complete,
            Ok(outcomes) => match outcomes.into_iter().find_map(|o| match o {
                Outcome::Failed { reason, permanent } => Some((reason, permanent)),
                _ => None,
            }) {
                Some((reason, permanent)) => Finish::Fail(reason, permanent),
                // Stopped by a cancel command: the job is gone, nothing to report.
                None => return,
            },
        };
        self.finish(&lease_ref, finish).await;
    }

    /// Renews every third of the TTL until cancelled. A failed attempt (coordinator or Redis
    /// unreachable, a partition) is retried soon, each attempt bounded to a sixth of the TTL,
    /// so a partition shorter than the TTL costs no lease. Fences itself when the lease is lost
    /// (refused, or another worker's) or its local deadline (the last successful renewal's
    /// sending time plus the TTL) passes.
    async fn keep_alive(
        self: Arc<Self>,
        lease: pb::LeaseRef,
        ttl: Duration,
        cancel: CancellationToken,
        lost: Arc<AtomicBool>,
        fence: Arc<LeaseFence>,
    ) {
        // Self-fencing: the fence refuses the promotion, the token stops the parts.
        let stop_work = |why: &str| {
            tracing::warn!(item = %lease.item_id, epoch = lease.epoch, "{why}: stopping the work (self-fencing)");
            fence.lose();
            lost.store(true, Ordering::SeqCst);
            cancel.cancel();
        };
        let attempt_limit = (ttl / 6).max(Duration::from_millis(200));
        let retry_after = (ttl / 15).max(Duration::from_millis(200));
        let mut deadline = Instant::now() + ttl;
        let mut next = Instant::now() + ttl / 3;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep_until(deadline.into()) => {
                    return stop_work("no renewal within the lease time");
                }
                () = tokio::time::sleep_until(next.into()) => {}
            }
            let sent = Instant::now();
            let request = pb::RenewRequest {
                lease: Some(lease.clone()),
                worker: self.config.name.clone(),
            };
            let mut client = self.client.clone();
            let attempt = tokio::time::timeout(attempt_limit, client.renew(request));
            let renewed = tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep_until(deadline.into()) => {
                    return stop_work("no renewal within the lease time");
                }
                renewed = attempt => renewed,
            };
            if let Ok(Ok(_)) = &renewed {
                self.telemetry
                    .renew_seconds
                    .observe(sent.elapsed().as_secs_f64());
                self.telemetry.contact();
            }
            match renewed {
                Ok(Ok(response)) if response.get_ref().status == pb::LeaseStatus::Ok as i32 => {
                    deadline = sent + ttl;
                    fence.renewed(sent, ttl);
                    next = sent + ttl / 3;
                }
                Ok(Ok(_)) => return stop_work("the lease was lost"),
                Ok(Err(status)) if status.code() == tonic::Code::PermissionDenied => {
                    return stop_work("the coordinator says the lease is not ours");
                }
                // The coordinator or Redis is unreachable: keep working, try again soon.
                _ => {
                    next = Instant::now() + retry_after.mul_f64(rand::rng().random_range(0.5..1.0));
                }
            }
        }
    }

    /// Reports the end of a lease, retrying while the coordinator is unreachable (the calls are
    /// idempotent for a grant). Gives up after about a minute, or [`RELEASE_WITHIN`] for a
    /// release while stopping: the lease then expires and is granted again.
    async fn finish(&self, lease: &pb::LeaseRef, finish: Finish) {
        let mut backoff = RetryPolicy::reconnect().backoff_sequence();
        let deadline = Instant::now()
            + match finish {
                Finish::Release => RELEASE_WITHIN,
                _ => Duration::from_secs(60),
            };
        loop {
            let mut client = self.client.clone();
            let worker = self.config.name.clone();
            let call = async {
                match &finish {
                    Finish::Complete => client
                        .complete(pb::CompleteRequest {
                            lease: Some(lease.clone()),
                            worker,
                            bytes: 0,
                        })
                        .await
                        .map(|r| r.into_inner().status),
                    Finish::Fail(reason, permanent) => client
                        .fail(pb::FailRequest {
                            lease: Some(lease.clone()),
                            worker,
                            reason: reason.clone(),
                            permanent: *permanent,
                        })
                        .await
                        .map(|r| r.into_inner().status),
                    Finish::Release => client
                        .release(pb::ReleaseRequest {
                            lease: Some(lease.clone()),
                            worker,
                        })
                        .await
                        .map(|r| r.into_inner().status),
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = tokio::time::timeout(remaining, call)
                .await
                .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in time")));
            match result {
                Ok(status) => {
                    let status =
                        pb::LeaseStatus::try_from(status).unwrap_or(pb::LeaseStatus::LeaseLost);
                    tracing::info!(item = %lease.item_id, epoch = lease.epoch, action = finish.name(), ?status, "lease finished");
                    return;
                }
                Err(error) if Instant::now() < deadline => {
                    tracing::warn!(item = %lease.item_id, code = ?error.code(), "could not report the lease; retrying");
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    tokio::time::sleep(backoff.next_wait().min(remaining)).await;
                }
                Err(error) => {
                    tracing::error!(item = %lease.item_id, code = ?error.code(), "giving up reporting the lease; it will expire");
                    return;
                }
            }
        }
    }

    /// Keeps a session stream open: a report about every second, commands applied as they
    /// come. Reconnects with jittered backoff.
    async fn session(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = RetryPolicy::reconnect().backoff_sequence();
        let connections = self.http.stats();
        while !stop.is_cancelled() {
            let (reports, outbound) = mpsc::channel(4);
            let stream = tokio_stream::wrappers::ReceiverStream::new(outbound);
            let reporter = tokio::spawn(self.clone().report_loop(reports, connections.clone()));
            match self.client.clone().worker_session(stream).await {
                Ok(response) => {
                    backoff.reset();
                    let mut commands = response.into_inner();
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            command = commands.message() => match command {
                                Ok(Some(command)) => self.apply(command),
                                _ => break,
                            },
                        }
                    }
                }
                Err(status) => tracing::debug!(code = ?status.code(), "session stream unavailable"),
            }
            reporter.abort();
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff.next_wait()) => {}
            }
        }
    }

    fn apply(&self, command: pb::WorkerCommand) {
        match command.kind {
            Some(pb::worker_command::Kind::Drain(true)) => {
                let already_draining = self.draining.swap(true, Ordering::SeqCst);
                if !already_draining {
                    tracing::info!("drain requested: finishing held leases, taking no more");
                }
            }
            Some(pb::worker_command::Kind::CancelLease(lease)) => {
                if let Some(held) = self.held().get(&lease.lease_id) {
                    tracing::info!(item = %lease.item_id, "job cancelled: stopping its lease");
                    held.cancel.cancel();
                }
            }
            _ => {}
        }
    }

    /// Sends a report about every second. `try_send`: when the stream is slow, a report is
    /// skipped rather than queued (the next one carries newer values anyway).
    async fn report_loop(
        self: Arc<Self>,
        reports: mpsc::Sender<pb::WorkerReport>,
        connections: Arc<ConnectionStats>,
    ) {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        let mut last = (Instant::now(), 0u64);
        loop {
            every.tick().await;
            let snapshot = self.progress.snapshot();
            let now = Instant::now();
            let rate = (snapshot.bytes_downloaded.saturating_sub(last.1)) as f64
                / now.duration_since(last.0).as_secs_f64().max(0.001);
            last = (now, snapshot.bytes_downloaded);
            let pool = connections.snapshot();
            let retries = RetryReason::ALL
                .iter()
                .filter(|r| snapshot.retries_for(**r) > 0)
                .map(|r| (r.label().to_string(), snapshot.retries_for(*r)))
                .collect();
            let (progress, held) = {
                let held = self.held();
                let progress = held
                    .values()
                    .map(|h| {
                        let p = h.progress.snapshot();
                        pb::LeaseProgress {
                            lease: Some(h.lease.clone()),
                            bytes_done: p.bytes_downloaded,
                            objects_done: p.objects_done as u32,
                        }
                    })
                    .collect();
                (progress, held.len() as u32)
            };
            let report = pb::WorkerReport {
                worker: self.config.name.clone(),
                progress,
                leases_held: held,
                metrics: Some(pb::ConnectionMetrics {
                    open: pool.open as u32,
                    in_use: pool.in_use as u32,
                    idle: pool.idle as u32,
                    connects: pool.connects,
                    resets: snapshot.retries_for(RetryReason::Reset),
                    retries,
                    stall_timeouts: snapshot.retries_for(RetryReason::Stall),
                    bytes_per_sec: rate,
                    bytes_downloaded: snapshot.bytes_downloaded,
                    objects_completed: snapshot.objects_done,
                    verify_failures: snapshot.verify_failures,
                }),
            };
            if let Err(mpsc::error::TrySendError::Closed(_)) = reports.try_send(report) {
                return;
            }
        }
    }
}

/// How a lease ends.
enum Finish {
    Complete,
    Fail(String, bool),
    Release,
}

impl Finish {
    fn name(&self) -> &'static str {
        match self {
            Finish::Complete => "complete",
            Finish::Fail(..) => "fail",
            Finish::Release => "release",
        }
    }
}

/// The coordinator's channel: checked (https ⇔ TLS) and connected lazily, so a coordinator
/// that is down at start is retried like one that goes away later.
pub fn connect(channel: &CoordinatorChannel) -> Result<WorkerClient<Channel>, AgentError> {
    let endpoint = channel.endpoint()?;
    Ok(WorkerClient::new(endpoint.connect_lazy()).max_decoding_message_size(MAX_RESPONSE_BYTES))
}

/// How often a worker looks for abandoned lease temporaries in the shared DEST.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// Removes temporaries of grants whose workers died (see `Mirror::sweep_abandoned`): at start,
/// then every `SWEEP_EVERY`, until `stop`. Each worker sweeps; removing a file twice is harmless.
async fn sweep_abandoned_temps(dest: PathBuf, name: String, stop: CancellationToken) {
    loop {
        let (dest, name) = (dest.clone(), name.clone());
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(mirror) = Mirror::open_shared(&dest, &name) {
                mirror.sweep_abandoned(ABANDONED_AFTER);
            }
        })
        .await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}
