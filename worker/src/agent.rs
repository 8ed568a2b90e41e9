//! The cluster worker: takes leases from the coordinator and runs them through the lease loop
//! (`runner`) that `era5 sync` runs its own through, into a destination shared with other
//! workers. What is the worker's alone lives here:
//!
//! - **The coordinator** is the lease service (`grpc`); lease temporaries carry the lease id,
//!   so a duplicate grant only costs bandwidth; a full or failing DEST makes the worker not
//!   ready and stops it taking leases until DEST can take data again, which it notices by
//!   itself.
//! - **Drain.** SIGTERM (the `shutdown` token) stops taking leases, stops the work and releases
//!   every lease held (no attempt counted), then returns. A drain command from the
//!   coordinator stops taking leases and lets the held ones finish.
//! - **The session stream** carries progress (about every second, latest value wins, never
//!   waited on by the downloads) and metrics up, commands down. It reconnects with jittered
//!   backoff; nothing depends on it being up.
//! - **Abandoned temporaries** of grants whose workers died are swept from the shared DEST.
//! - **Stopping** is bounded: releases get `runner::RELEASE_WITHIN` in all, whether or not the
//!   coordinator answers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::channel::CoordinatorChannel;
use proto::v1 as pb;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use transport::guard::BodyGuard;
use transport::retry::{RetryPolicy, RetryReason};
use transport::{BoundedHttpClient, ConnectionStats, PoolConfig};

use crate::grpc::{Coordinator, connect};
use crate::runner::{Mirrorers, OnDestFailure, Runner, RunnerConfig, SourceMirrorers, Stop, Temps};
use crate::telemetry::Telemetry;
use engine::disk::DiskGate;
use engine::fetch::EngineConfig;
use engine::mirror::{ABANDONED_AFTER, Mirror};
use engine::progress::Progress;

/// Settings of a worker.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// How to reach the coordinator: URL, TLS, deadlines, keepalive.
    pub channel: CoordinatorChannel,
    /// The shared destination directory (unused with `store`).
    pub dest: PathBuf,
    /// An `s3://` destination instead of the directory.
    pub store: Option<s3dest::DestConfig>,
    /// This worker's name (unique in the cluster; with TLS, its certificate's).
    pub name: String,
    /// Process-wide cap on S3 connections.
    pub connections: usize,
    /// Where S3 endpoints' addresses come from (`--resolve` overrides).
    pub resolver: transport::Resolver,
    /// Root certificates trusted besides the public ones (`AWS_CA_BUNDLE`).
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Leases held at once.
    pub max_leases: usize,
    /// How often the TLS files are read again (a renewed certificate is then used).
    pub tls_reload_every: Duration,
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
    #[error("cannot write the manifest: {0}")]
    Manifest(#[from] std::io::Error),
    /// The `s3://` destination cannot be used (credentials, bucket, permissions).
    #[error(transparent)]
    Store(#[from] s3dest::ConnectError),
}

/// What the worker shares between its tasks.
struct Agent {
    config: AgentConfig,
    runner: Arc<Runner<Coordinator>>,
    http: BoundedHttpClient,
    /// Engine-wide counters across every mirrorer.
    progress: Arc<Progress>,
}

/// Runs the worker until `shutdown` fires (SIGTERM), then releases what it holds. With `http`,
/// serves metrics and probes there.
pub async fn run(
    config: AgentConfig,
    http: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let coordinator = Coordinator::new(
        connect(&config.channel)?,
        &config.name,
        config.engine.bandwidth.clone(),
    );
    if config.channel.tls.is_some() {
        tokio::spawn(coordinator.clone().follow_certificate_renewals(
            config.channel.clone(),
            config.tls_reload_every,
            shutdown.clone(),
        ));
    }
    // Checks DEST and the lock (or the object store's credentials and bucket) now, so a bad
    // destination fails at start-up.
    let store = if let Some(dest) = &config.store {
        let (client, _pool) = s3dest::connect(dest, &config.engine.retry).await?;
        Some(s3dest::Store {
            client,
            target: dest.target.clone(),
        })
    } else {
        drop(Mirror::open_shared(&config.dest, &config.name)?);
        None
    };
    let pool = BoundedHttpClient::new(PoolConfig {
        guard: BodyGuard {
            stall_timeout: config.engine.stall_timeout,
            min_rate: config.engine.min_rate,
        },
        resolver: config.resolver.clone(),
        extra_roots: config.extra_roots.clone(),
        receive_buffer: config.engine.bandwidth.receive_buffer(config.connections),
        ..PoolConfig::new(config.connections)
    });
    let progress = Arc::new(Progress::default());
    let schedulers = crate::telemetry::Schedulers::default();
    let telemetry = Telemetry::new(progress.clone(), pool.stats(), schedulers.clone());
    let disk = Arc::new(DiskGate::default());
    if store.is_none() {
        telemetry.watch_dest(config.dest.clone(), disk.clone());
    }
    let http_addr = http
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map_or("-".to_string(), |a| a.to_string());
    if let Some(listener) = http {
        tokio::spawn(telemetry.clone().serve(listener, shutdown.clone()));
    }
    let mirrorers = Mirrorers::PerSource(Box::new(SourceMirrorers {
        http: pool.clone(),
        connections: config.connections,
        dest: config.dest.clone(),
        name: config.name.clone(),
        engine: config.engine.clone(),
        leases: config.max_leases,
        progress: progress.clone(),
        store: store.clone(),
        made: tokio::sync::Mutex::new(HashMap::new()),
        schedulers,
    }));
    let runner = Runner::new(
        coordinator,
        RunnerConfig {
            dest: config.dest.clone(),
            name: config.name.clone(),
            max_leases: config.max_leases,
            temps: Temps::PerLease,
            on_dest_failure: OnDestFailure::WaitForRoom,
            until_idle: false,
        },
        mirrorers,
        progress.clone(),
        disk,
        Some(telemetry),
    );
    let agent = Arc::new(Agent {
        http: pool,
        config,
        runner: runner.clone(),
        progress,
    });
    let session_stop = CancellationToken::new();
    tokio::spawn(agent.clone().session(session_stop.clone()));
    if store.is_none() {
        tokio::spawn(sweep_abandoned_temps(
            agent.config.dest.clone(),
            agent.config.name.clone(),
            session_stop.clone(),
        ));
    }
    tracing::info!(worker = %agent.config.name, http = %http_addr, "worker started");
    runner
        .run(&Stop {
            shutdown,
            drain: CancellationToken::new(),
        })
        .await;
    session_stop.cancel();
    runner.flush().await?;
    Ok(())
}

impl Agent {
    /// Keeps a session stream open: a report about every second, commands applied as they
    /// come. Reconnects with jittered backoff.
    async fn session(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = RetryPolicy::reconnect().backoff_sequence();
        let connections = self.http.stats();
        while !stop.is_cancelled() {
            let (reports, outbound) = mpsc::channel(4);
            let stream = tokio_stream::wrappers::ReceiverStream::new(outbound);
            let reporter = tokio::spawn(self.clone().report_loop(reports, connections.clone()));
            match self.runner.client().grpc().worker_session(stream).await {
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
                let already_draining = self.runner.drain();
                if !already_draining {
                    tracing::info!("drain requested: finishing held leases, taking no more");
                }
            }
            Some(pb::worker_command::Kind::Bandwidth(share)) => {
                self.runner.client().apply_share(Some(&share));
            }
            Some(pb::worker_command::Kind::CancelLease(lease)) => {
                if let Some(held) = self.runner.held().get(&lease.lease_id) {
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
                let held = self.runner.held();
                let progress = held
                    .values()
                    .map(|h| {
                        let p = h.progress.snapshot();
                        pb::LeaseProgress {
                            lease: Some(pb::LeaseRef {
                                job_id: h.lease.job_id.clone(),
                                item_id: h.lease.item_id.clone(),
                                lease_id: h.lease.lease_id.clone(),
                                epoch: h.lease.epoch,
                            }),
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
