//! `era5 sync`: list the selection, mirror it with the fetch engine, show progress (a bar on a
//! terminal, log lines otherwise) and close with a summary. Ctrl-C (or SIGTERM) stops cleanly:
//! finished objects stay, interrupted ones keep their temporary file and resume state.
//!
//! A full or failing DEST stops the sync within seconds: no object starts once the disk failed
//! (or that the free space cannot hold), those in flight finish or stop at their first write
//! error with their temporary file removed, and the summary names the disk's error; exit 1.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::source::{ConnectionStats, RemoteObject, Source};
use common::units::human_bytes;
use coordinator::model::{Grant, LeasePolicy, ObjectSpec, SelectionSpec, SourceSpec, random_id};
use coordinator::planner::{ItemLimits, plan_job};
use coordinator::{LeaseStore, MemoryStore};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle as BarStyle};
use tokio_util::sync::CancellationToken;
use worker::sync::{Outcome, SyncReport};
use worker::{Mirror, Progress, ProgressSnapshot};

use crate::config::{ProgressStyle, SyncConfig};
use crate::{ExitCode, Failure};

/// Runs the whole command.
pub async fn run(config: SyncConfig) -> Result<ExitCode, Failure> {
    let source = Source::connect(&config.source).await;
    let listed = common::source::discover(&source, &config.selection, &config.engine.retry)
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    let mirror = Mirror::open(&config.dest).map_err(|e| Failure::Runtime(e.to_string()))?;

    // The same planner and lease state machine as the cluster, on the embedded store: one
    // process holds every lease, for as long as the sync runs.
    let job = plan_job(
        random_id(),
        SelectionSpec::from(&config.selection),
        SourceSpec {
            bucket: config.source.bucket.clone(),
            endpoint: config.source.endpoint.clone().unwrap_or_default(),
        },
        listed,
        ItemLimits::default(),
    );
    let leases = MemoryStore::new(LeasePolicy {
        ttl: Duration::from_secs(365 * 24 * 3600),
        max_attempts: 1,
        ..LeasePolicy::default()
    });
    let store_error = |e: coordinator::StoreError| Failure::Runtime(e.to_string());
    leases.create_job(&job).await.map_err(store_error)?;
    let grants = leases
        .acquire("era5-sync", job.items.len())
        .await
        .map_err(store_error)?;
    let objects: Vec<RemoteObject> = grants
        .iter()
        .flat_map(|grant| grant.item.objects.iter().map(ObjectSpec::to_remote))
        .collect();

    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    let progress = Arc::new(Progress::default());
    let connections = source.connection_stats();
    let reporter = Reporter::start(config.progress, progress.clone(), connections.clone());

    let report = worker::sync::run(
        source,
        objects,
        mirror,
        config.engine.clone(),
        progress.clone(),
        cancel.clone(),
    )
    .await
    .map_err(|e| Failure::Runtime(format!("writing the mirror failed: {e}")))?;
    reporter.stop().await;
    settle_leases(&leases, &grants, &report)
        .await
        .map_err(store_error)?;

    let snapshot = progress.snapshot();
    let mut stdout = std::io::stdout().lock();
    print_summary(
        &mut stdout,
        &report,
        &snapshot,
        connections.snapshot().peak_open,
        &config,
    )
    .map_err(|e| Failure::Runtime(e.to_string()))?;
    if let Some(problem) = report.dest_failure() {
        eprintln!("era5: error: {problem}");
    }
    if let Some(problem) = &report.manifest_error {
        eprintln!(
            "era5: error: the manifest could not be written ({problem}); the files are in place and the next sync verifies them from their bytes"
        );
    }
    Ok(if report.cancelled {
        ExitCode::Interrupted
    } else if report.all_verified() && report.manifest_error.is_none() {
        ExitCode::Success
    } else {
        ExitCode::Failed
    })
}

/// Completes each lease whose objects all verified, releases interrupted ones (and those a
/// full or failing disk stopped: not their fault) and fails the rest, so the embedded store
/// ends in the state the cluster's would.
async fn settle_leases(
    leases: &MemoryStore,
    grants: &[Grant],
    report: &SyncReport,
) -> Result<(), coordinator::StoreError> {
    let mut outcomes = report.results.iter().map(|(_, outcome)| outcome);
    for grant in grants {
        let mine: Vec<&Outcome> = outcomes.by_ref().take(grant.item.objects.len()).collect();
        if mine.iter().all(|o| o.is_verified()) {
            leases.complete(&grant.lease).await?;
        } else if let Some(Outcome::Failed { reason, permanent }) =
            mine.iter().find(|o| matches!(o, Outcome::Failed { .. }))
        {
            leases.fail(&grant.lease, reason, *permanent).await?;
        } else {
            leases.release(&grant.lease).await?;
        }
    }
    Ok(())
}

fn spawn_signal_handler(cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        eprintln!(
            "era5: stopping: finished files are kept, interrupted ones resume next run (interrupt again to quit at once)"
        );
        cancel.cancel();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        std::process::exit(ExitCode::Interrupted as i32);
    });
}

fn print_summary(
    out: &mut impl Write,
    report: &SyncReport,
    snapshot: &ProgressSnapshot,
    peak_connections: usize,
    config: &SyncConfig,
) -> std::io::Result<()> {
    let total = report.results.len();
    let downloaded = report.count(|o| *o == Outcome::Downloaded);
    let present = report.count(|o| *o == Outcome::Present);
    let local = report.count(|o| *o == Outcome::VerifiedLocally);
    let failed = report.count(|o| matches!(o, Outcome::Failed { .. } | Outcome::Local { .. }));
    let cancelled = report.count(|o| *o == Outcome::Cancelled);
    let seconds = report.elapsed.as_secs_f64().max(0.001);
    let headline = if report.all_verified() {
        format!(
            "sync complete: {total} of {total} objects present and verified ({})",
            config.engine.verify
        )
    } else if report.cancelled {
        format!(
            "sync interrupted: {} of {total} objects present and verified",
            downloaded + present + local
        )
    } else {
        format!("sync incomplete: {failed} of {total} objects failed")
    };
    writeln!(out, "{headline} in {}", config.dest.display())?;
    writeln!(
        out,
        "  {downloaded} downloaded, {present} already present, {local} verified locally, {failed} failed, {cancelled} not finished"
    )?;
    writeln!(
        out,
        "  {} received in {:.1} s ({}/s); retries: {}; verification failures: {}; restarts: {}; peak connections: {}",
        human_bytes(snapshot.bytes_downloaded),
        seconds,
        human_bytes((snapshot.bytes_downloaded as f64 / seconds) as u64),
        snapshot.retries_breakdown(),
        snapshot.verify_failures,
        snapshot.restarts,
        peak_connections,
    )?;
    for (key, reason) in report.failures() {
        writeln!(out, "FAILED {key}: {reason}")?;
    }
    Ok(())
}

/// Shows progress until stopped.
struct Reporter {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Reporter {
    fn start(
        style: ProgressStyle,
        progress: Arc<Progress>,
        connections: Arc<ConnectionStats>,
    ) -> Self {
        let stop = CancellationToken::new();
        let task = match style {
            ProgressStyle::Bar => tokio::spawn(show_bar(progress, connections, stop.clone())),
            ProgressStyle::Lines(interval) => {
                tokio::spawn(show_lines(progress, connections, interval, stop.clone()))
            }
        };
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

fn status_message(snapshot: &ProgressSnapshot, connections: &ConnectionStats) -> String {
    let conns = connections.snapshot();
    format!(
        "files {}/{} | connections {} open, {} in use | retries {}",
        snapshot.objects_done,
        snapshot.objects_total,
        conns.open,
        conns.in_use,
        snapshot.retries_total()
    )
}

async fn show_bar(
    progress: Arc<Progress>,
    connections: Arc<ConnectionStats>,
    stop: CancellationToken,
) {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        BarStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} | {msg}",
        )
        .unwrap_or_else(|_| BarStyle::default_bar()),
    );
    loop {
        let snapshot = progress.snapshot();
        bar.set_length(snapshot.bytes_total.max(snapshot.bytes_downloaded));
        bar.set_position(snapshot.bytes_downloaded);
        bar.set_message(status_message(&snapshot, &connections));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    bar.finish_and_clear();
}

async fn show_lines(
    progress: Arc<Progress>,
    connections: Arc<ConnectionStats>,
    interval: Duration,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let mut last_bytes = 0;
    let mut last_time = started;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let snapshot = progress.snapshot();
        let now = Instant::now();
        let rate = (snapshot.bytes_downloaded - last_bytes.min(snapshot.bytes_downloaded)) as f64
            / now.duration_since(last_time).as_secs_f64().max(0.001);
        let percent = if snapshot.bytes_total == 0 {
            100.0
        } else {
            100.0 * snapshot.bytes_downloaded as f64 / snapshot.bytes_total as f64
        };
        eprintln!(
            "progress: {:.0}% {} of {} at {}/s | {}",
            percent.min(100.0),
            human_bytes(snapshot.bytes_downloaded),
            human_bytes(snapshot.bytes_total),
            human_bytes(rate as u64),
            status_message(&snapshot, &connections)
        );
        last_bytes = snapshot.bytes_downloaded;
        last_time = now;
    }
}
