//! `era5 sync`: list the selection, mirror it through the cluster's lease loop over a store
//! embedded in the process (each pass is a job, see `pass`), show progress (a bar on a
//! terminal, log lines otherwise) and close with a summary. Ctrl-C (or SIGTERM) stops cleanly:
//! finished objects stay, interrupted ones keep their temporary file and resume state.
//!
//! With `--follow` the sync keeps running: every `--interval` it lists again (`--end latest`
//! grows the range with the archive) and mirrors what is new or changed through the same
//! mirrorer, logging one line per pass. A signal then ends it after the objects in flight, with
//! nothing half-written, and exit 0.
//!
//! A full or failing DEST stops the sync within seconds: no object starts once the disk failed
//! (or that the free space cannot hold), those in flight finish or stop at their first write
//! error with their temporary file removed, and the summary names the disk's error; exit 1.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::selection::Selection;
use common::units::human_bytes;
use engine::disk::DiskGate;
use engine::mirror::ABANDONED_AFTER;
use engine::sync::{Mirrorer, Outcome, SyncReport};
use engine::{Destination, Mirror, Progress};
use lease::model::{SelectionSpec, SourceSpec, random_id};
use lease::planner::{ItemLimits, plan_job};
use tokio_util::sync::CancellationToken;
use transport::{RemoteObject, Source};
use worker::embedded::{Embedded, sync_policy};
use worker::runner::{Mirrorers, OnDestFailure, Runner, RunnerConfig, Temps};

use crate::config::{DestSpec, FollowConfig, ProgressStyle, RunLimits, SyncConfig};
use crate::exit::{ExitCode, Failure};
use crate::progress_display::{Network, Reporter};
use crate::sync_summary::{Figures, Summary};

/// How a signal stops the sync: `drain` stops starting objects (those in flight finish),
/// `abort` stops the objects in flight too (their parts stay for a resume).
#[derive(Clone, Default)]
struct Stop {
    drain: CancellationToken,
    abort: CancellationToken,
}

/// The one holder of every lease of an `era5 sync` (the embedded store checks holders too).
const SYNC_HOLDER: &str = "era5-sync";
/// Leases a sync works at once: enough that one lease's last objects never leave connections
/// idle. What is in flight stays bounded by the mirrorer, whatever this number.
const SYNC_LEASES: usize = 4;

/// Runs the whole command.
pub async fn run(config: SyncConfig) -> Result<ExitCode, Failure> {
    let source = Source::connect(&config.source).await;
    let progress = Arc::new(Progress::default());
    // An object store is reached (credentials, bucket) before anything is listed; a directory
    // is made only once the listing succeeded.
    let s3 = match &config.dest {
        DestSpec::S3(dest) => Some(
            crate::uploads_cmd::open_s3(dest, &source, &config.engine, progress.clone()).await?,
        ),
        DestSpec::Local(_) => None,
    };
    let listed = list(&source, &config.selection, &config).await?;
    let (mirrorer, dest_connections): (Arc<dyn Destination>, _) = match s3 {
        Some((mirror, connections)) => (mirror, Some(connections)),
        None => (open_local(&config, &source, progress.clone())?, None),
    };

    let events = matches!(config.progress, ProgressStyle::Json(_));
    if events {
        crate::progress_events::report_objects(&progress);
    }
    let stop = Stop::default();
    spawn_signal_handler(stop.clone(), config.follow.is_some());
    let limit_reached = watch_limits(config.limits, progress.clone(), stop.clone());
    let connections = source.connection_stats();
    let reporter = Reporter::start(
        config.progress,
        progress.clone(),
        Some(Network {
            connections: connections.clone(),
            scheduler: mirrorer.scheduler().clone(),
        }),
    );
    // Only follow mode's log line needs it, and on the whole archive it is a map of 0.8 M keys.
    let before = if config.follow.is_some() {
        recorded_versions(mirrorer.as_ref(), &listed)
    } else {
        HashMap::new()
    };
    let report = pass(&mirrorer, &config, &config.selection, listed, &stop).await?;
    reporter.stop().await;

    let scheduler = mirrorer.scheduler();
    let figures = Figures {
        progress: progress.snapshot(),
        concurrency: scheduler.snapshot(),
        peak_connections: connections.snapshot().peak_open,
        memory_budget: scheduler.budget().capacity(),
        memory_peak: scheduler.budget().peak(),
        traffic: connections.snapshot().traffic
            + dest_connections
                .map(|c| c.snapshot().traffic)
                .unwrap_or_default(),
        limit_reached: limit_reached.get().is_some(),
    };
    let summary = Summary::new(&report, &figures, &config);
    let mut stdout = std::io::stdout().lock();
    let written = if config.json {
        summary.write_json(&mut stdout)
    } else {
        summary.write_text(&mut stdout, &figures.progress.retries_breakdown())
    };
    crate::exit::written(written, "the summary")?;
    drop(stdout);
    report_local_errors(&report);
    let code = match &config.follow {
        None => Ok(if report.cancelled {
            ExitCode::Interrupted
        } else if report.all_verified() && report.manifest_error.is_none() {
            ExitCode::Success
        } else {
            ExitCode::Failed
        }),
        Some(follow) => {
            log_pass(1, &report, &before, follow.interval);
            follow_passes(&mirrorer, &source, &config, follow, &stop).await
        }
    };
    match limit_reached.get() {
        Some(limit) if code.is_ok() => {
            eprintln!("era5: {limit}");
            Ok(ExitCode::LimitReached)
        }
        _ => code,
    }
}

/// The directory mirror of `config.dest`, its manifest opened.
fn open_local(
    config: &SyncConfig,
    source: &Source,
    progress: Arc<Progress>,
) -> Result<Arc<dyn Destination>, Failure> {
    let DestSpec::Local(dir) = &config.dest else {
        return Err(Failure::Runtime("not a directory destination".into()));
    };
    let mirror = match config.shard {
        // Shards write DEST at once: a shared lock and a manifest journal of their own, as
        // cluster workers have; each clears the abandoned temporaries of killed ones.
        Some(shard) => {
            let name = format!("shard-{}-of-{}", shard.index, shard.count);
            let mirror =
                Mirror::open_shared(dir, &name).map_err(|e| Failure::Runtime(e.to_string()))?;
            mirror.sweep_abandoned(ABANDONED_AFTER);
            mirror
        }
        None => Mirror::open(dir).map_err(|e| Failure::Runtime(e.to_string()))?,
    };
    let mirrorer = Mirrorer::new(source.clone(), mirror, config.engine.clone(), progress)
        .map_err(|e| Failure::Runtime(format!("opening the manifest failed: {e}")))?;
    Ok(mirrorer)
}

/// How often the limits are checked: a loopback transfer overshoots `--max-transfer` by at most
/// what arrives in this long, plus what is in flight when the objects stop.
const LIMIT_CHECK_EVERY: Duration = Duration::from_millis(10);

/// Stops the sync (its objects in flight too, whose parts resume next run) once
/// `--max-transfer` bytes were received or `--max-duration` passed. What stopped it, once
/// something did, is in the cell returned.
fn watch_limits(
    limits: RunLimits,
    progress: Arc<Progress>,
    stop: Stop,
) -> Arc<std::sync::OnceLock<String>> {
    let reached = Arc::new(std::sync::OnceLock::new());
    if limits == RunLimits::default() {
        return reached;
    }
    let cell = reached.clone();
    let started = Instant::now();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.abort.cancelled() => return,
                () = tokio::time::sleep(LIMIT_CHECK_EVERY) => {}
            }
            let received = progress.snapshot().bytes_downloaded;
            let why = match (limits.max_transfer, limits.max_duration) {
                (Some(max), _) if received >= max => format!(
                    "stopped at --max-transfer {} ({} received)",
                    human_bytes(max),
                    human_bytes(received)
                ),
                (_, Some(max)) if started.elapsed() >= max => format!(
                    "stopped at --max-duration {}s ({} received)",
                    max.as_secs(),
                    human_bytes(received)
                ),
                _ => continue,
            };
            let _ = cell.set(format!(
                "{why}: finished files are kept, interrupted ones resume next run (exit 3)"
            ));
            stop.abort.cancel();
            return;
        }
    });
    reached
}

/// What went wrong with DEST itself, after the summary: a full or failing disk, or a manifest
/// that could not be written (the files are in place; the next sync verifies their bytes).
fn report_local_errors(report: &SyncReport) {
    if let Some(problem) = report.dest_failure() {
        eprintln!("era5: error: {problem}");
    }
    if let Some(problem) = &report.manifest_error {
        eprintln!(
            "era5: error: the manifest could not be written ({problem}); the files are in place and the next sync verifies them from their bytes"
        );
    }
}

/// Lists `selection`, warning about requests that matched nothing; a selection that matches
/// nothing at all is a failure that says why. With `--shard`, only the shard's objects.
async fn list(
    source: &Source,
    selection: &Selection,
    config: &SyncConfig,
) -> Result<Vec<RemoteObject>, Failure> {
    let found = transport::discover_detailed(source, selection, &config.engine.retry)
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    crate::discovery::check(source, selection, &found, &config.engine.retry).await?;
    let mut objects = found.objects;
    if let Some(shard) = config.shard {
        let note = crate::plan_cmd::ShardNote::take(&mut objects, shard);
        tracing::info!(
            "{note}: {} ({})",
            common::units::counted(objects.len() as u64, "object", "objects"),
            human_bytes(objects.iter().map(|o| o.size).sum())
        );
    }
    Ok(objects)
}

/// One pass over `listed`, through the cluster's own lease loop (`worker::runner`): the same
/// planner, lease state machine, renewals, fencing and outcome rules, over a store embedded in
/// the process (`worker::embedded`) in which this sync is the one holder.
async fn pass(
    mirrorer: &Arc<dyn Destination>,
    config: &SyncConfig,
    selection: &Selection,
    listed: Vec<RemoteObject>,
    stop: &Stop,
) -> Result<SyncReport, Failure> {
    let started = Instant::now();
    let events = matches!(config.progress, ProgressStyle::Json(_));
    let received_before = mirrorer.progress().downloaded();
    if events {
        crate::progress_events::start(&listed);
    }
    mirrorer.count_up_front(&listed);
    let job = plan_job(
        random_id(),
        SelectionSpec::from(selection),
        SourceSpec {
            bucket: config.source.bucket.clone(),
            endpoint: config.source.endpoint.clone().unwrap_or_default(),
        },
        listed,
        ItemLimits::default(),
    );
    let embedded = Embedded::start(job, sync_policy(), SYNC_HOLDER)
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    let runner = Runner::new(
        embedded,
        RunnerConfig {
            dest: match &config.dest {
                DestSpec::Local(dir) => dir.clone(),
                // No disk to watch: the lease loop only names it in messages.
                DestSpec::S3(dest) => dest.target.to_string().into(),
            },
            name: SYNC_HOLDER.to_string(),
            max_leases: SYNC_LEASES,
            // Shards share DEST: each keeps its temporaries to itself (a killed shard's are
            // swept as abandoned), as cluster workers do.
            temps: if config.shard.is_some() {
                Temps::PerLease
            } else {
                Temps::Resumable
            },
            on_dest_failure: OnDestFailure::Stop,
            until_idle: true,
        },
        Mirrorers::One(mirrorer.clone()),
        mirrorer.progress().clone(),
        Arc::new(DiskGate::default()),
        None,
    );
    runner
        .run(&worker::runner::Stop {
            shutdown: stop.abort.clone(),
            drain: stop.drain.clone(),
        })
        .await;
    let manifest_error = mirrorer
        .flush_at_end()
        .await
        .map_err(|e| Failure::Runtime(format!("writing the mirror failed: {e}")))?;
    let stopped_by = runner.stopped_by();
    let report = SyncReport {
        results: runner.client().take_results(stopped_by.as_ref()),
        elapsed: started.elapsed(),
        cancelled: stop.abort.is_cancelled() || stop.drain.is_cancelled(),
        manifest_error,
    };
    if events {
        let received = mirrorer.progress().downloaded() - received_before;
        crate::progress_events::end(&report, received);
    }
    Ok(report)
}

/// Whether each listed object's version is already recorded (`Some(true)`), recorded in
/// another version (`Some(false)`: replaced upstream) or not recorded (`None`), by key.
fn recorded_versions(mirrorer: &dyn Destination, listed: &[RemoteObject]) -> HashMap<String, bool> {
    listed
        .iter()
        .filter_map(|object| Some((object.key.clone(), mirrorer.recorded_version(object)?)))
        .collect()
}

/// Passes after the first, every `interval`, until a signal.
async fn follow_passes(
    mirrorer: &Arc<dyn Destination>,
    source: &Source,
    config: &SyncConfig,
    follow: &FollowConfig,
    stop: &Stop,
) -> Result<ExitCode, Failure> {
    let mut number = 1;
    loop {
        tokio::select! {
            () = stop.drain.cancelled() => break,
            () = tokio::time::sleep(follow.interval) => {}
        }
        number += 1;
        // Re-read every pass: `--end latest` is today, so the range grows with the archive.
        let listed = match crate::config::selection(&follow.selection) {
            Ok(selection) => list(source, &selection, config)
                .await
                .map(|listed| (selection, listed)),
            Err(error) => Err(Failure::Input(error.to_string())),
        };
        let (selection, listed) = match listed {
            Ok(found) => found,
            Err(Failure::Input(message) | Failure::Runtime(message)) => {
                eprintln!(
                    "era5: follow: pass {number} failed: {message}; next pass at {}",
                    next_pass_at(follow.interval)
                );
                continue;
            }
        };
        let before = recorded_versions(mirrorer.as_ref(), &listed);
        let report = pass(mirrorer, config, &selection, listed, stop).await?;
        report_local_errors(&report);
        log_pass(number, &report, &before, follow.interval);
    }
    if stop.abort.is_cancelled() {
        return Ok(ExitCode::Interrupted);
    }
    eprintln!("era5: follow: stopped after {number} passes");
    Ok(ExitCode::Success)
}

/// `era5: follow: pass N: A new, B changed, C unchanged, D failed in S s; next pass at T`.
fn log_pass(number: u64, report: &SyncReport, before: &HashMap<String, bool>, interval: Duration) {
    let (mut new, mut changed, mut unchanged, mut failed) = (0, 0, 0, 0);
    for (object, outcome) in &report.results {
        match outcome {
            // Superseded: a newer version was already in place, so this pass changed nothing.
            Outcome::Present | Outcome::Superseded => unchanged += 1,
            Outcome::Failed { .. } | Outcome::Local { .. } => failed += 1,
            Outcome::Cancelled => {}
            Outcome::Downloaded | Outcome::VerifiedLocally => match before.get(&object.key) {
                Some(false) => changed += 1,
                _ => new += 1,
            },
        }
    }
    let next = if report.cancelled {
        "stopping".to_string()
    } else {
        format!("next pass at {}", next_pass_at(interval))
    };
    eprintln!(
        "era5: follow: pass {number}: {new} new, {changed} changed, {unchanged} unchanged, {failed} failed in {:.1} s; {next}",
        report.elapsed.as_secs_f64()
    );
}

fn next_pass_at(interval: Duration) -> String {
    let next = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::try_from(interval).unwrap_or_default())
        .unwrap_or_else(|_| jiff::Timestamp::now());
    next.round(jiff::Unit::Second).unwrap_or(next).to_string()
}

/// Non-follow: the first signal aborts (finished files stay, interrupted ones resume next run),
/// the second quits at once. Follow: the first drains (the objects in flight finish), the
/// second aborts, the third quits.
fn spawn_signal_handler(stop: Stop, follow: bool) {
    tokio::spawn(async move {
        let Some(mut signals) = crate::signals::StopSignals::listen() else {
            return;
        };
        signals.next().await;
        if follow {
            eprintln!(
                "era5: stopping after the objects in flight (interrupt again to stop them now)"
            );
            stop.drain.cancel();
            signals.next().await;
        }
        eprintln!(
            "era5: stopping: finished files are kept, interrupted ones resume next run (interrupt again to quit at once)"
        );
        stop.abort.cancel();
        signals.next().await;
        std::process::exit(ExitCode::Interrupted as i32);
    });
}
