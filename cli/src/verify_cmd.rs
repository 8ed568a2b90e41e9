//! `era5 verify`: is every byte still right? Re-reads every mirrored file in the selection (all
//! of DEST's manifest when no selection is given) and checks it against its manifest record
//! (MD5 or multipart ETag, additional checksum, size), one file per core at a time, with a
//! progress bar. Without `--repair` it never writes into DEST. Exit 0 when everything matches,
//! 1 otherwise.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::error::InputError;
use common::selection::Selection;
use common::units::human_bytes;
use common::{ObjectKey, Product};
use futures_util::{StreamExt, stream};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use worker::Progress;
use worker::manifest::ManifestEntry;
use worker::recheck::{Finding, Problem, recheck};

use crate::args::VerifyArgs;
use crate::config::{ProgressStyle, existing_mirror};
use crate::progress_display::Reporter;
use crate::{ExitCode, Failure};

/// `era5 verify`, validated.
#[derive(Debug)]
pub struct VerifyConfig {
    /// The mirror.
    pub dest: PathBuf,
    /// Which records; `None` checks every record.
    pub selection: Option<Selection>,
    /// Files checked at once.
    pub jobs: usize,
    /// JSON output.
    pub json: bool,
    /// Progress display.
    pub progress: ProgressStyle,
}

impl TryFrom<&VerifyArgs> for VerifyConfig {
    type Error = InputError;

    fn try_from(args: &VerifyArgs) -> Result<Self, InputError> {
        let dest = existing_mirror(&args.dest)?;
        let filtered = !(args.product.is_empty()
            && args.var.is_empty()
            && args.grid.is_empty()
            && args.start.is_none()
            && args.end.is_none());
        let selection = if filtered {
            // Unset parts of the selection are open: every product, the whole archive.
            let products: Vec<String> = if args.product.is_empty() {
                Product::ALL.iter().map(|p| p.name().to_string()).collect()
            } else {
                args.product.clone()
            };
            let today = common::dates::today_utc();
            let start = args.start.clone().unwrap_or_else(|| "1940-01".into());
            let end = args.end.clone().unwrap_or_else(|| today.to_string());
            Some(Selection::parse(
                &products, &args.var, &args.grid, &start, &end, today,
            )?)
        } else {
            None
        };
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let progress = if !args.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr())
        {
            ProgressStyle::Bar
        } else {
            ProgressStyle::Lines(Duration::from_secs(5))
        };
        Ok(Self {
            dest,
            selection,
            jobs: args.jobs.map_or(cores, |n| n as usize),
            json: args.json,
            progress,
        })
    }
}

/// What the run found.
#[derive(Debug, Default, Serialize)]
struct VerifyReport {
    checked: u64,
    ok: u64,
    bytes: u64,
    seconds: f64,
    findings: Vec<Finding>,
    interrupted: bool,
}

/// Runs the command.
pub async fn run(config: VerifyConfig) -> Result<ExitCode, Failure> {
    let in_selection = |key: &str| match &config.selection {
        None => true,
        Some(selection) => ObjectKey::parse(key).is_some_and(|k| selection.selects(&k)),
    };
    let records = worker::manifest::read_records(&config.dest.join(".era5"), in_selection)
        .map_err(|e| {
            Failure::Runtime(format!(
                "reading the manifest in {} failed: {e}",
                config.dest.display()
            ))
        })?;
    let mut records: Vec<ManifestEntry> = records.into_values().collect();
    if records.is_empty() {
        return Err(Failure::Runtime(format!(
            "nothing to verify: no manifest record in {} matches the selection",
            config.dest.display()
        )));
    }
    records.sort_by(|a, b| a.key.cmp(&b.key));

    let progress = Arc::new(Progress::default());
    progress
        .objects_total
        .store(records.len() as u64, Ordering::Relaxed);
    progress
        .bytes_total
        .store(records.iter().map(|r| r.size).sum(), Ordering::Relaxed);
    let reporter = Reporter::start(config.progress, progress.clone(), None);
    let cancel = CancellationToken::new();
    spawn_interrupt(cancel.clone());

    let started = Instant::now();
    let dest = Arc::new(config.dest.clone());
    let mut report = VerifyReport::default();
    // One blocking check per core: each reads its file sequentially in bounded chunks, so
    // memory stays at jobs × the read buffer whatever the files' sizes.
    let mut checks = stream::iter(records)
        .take_until(Box::pin(cancel.clone().cancelled_owned()))
        .map(|record| {
            let dest = dest.clone();
            async move {
                let size = record.size;
                let result = tokio::task::spawn_blocking(move || recheck(&dest, &record)).await;
                (size, result)
            }
        })
        .buffer_unordered(config.jobs.max(1));
    while let Some((size, result)) = checks.next().await {
        report.checked += 1;
        report.bytes += size;
        progress.bytes_downloaded.fetch_add(size, Ordering::Relaxed);
        match result {
            Ok(Ok(())) => {
                report.ok += 1;
                progress.objects_done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(finding)) => {
                progress.objects_failed.fetch_add(1, Ordering::Relaxed);
                report.findings.push(finding);
            }
            Err(join) => {
                return Err(Failure::Runtime(format!(
                    "a verification task failed: {join}"
                )));
            }
        }
    }
    drop(checks);
    reporter.stop().await;
    report.seconds = started.elapsed().as_secs_f64();
    report.interrupted = cancel.is_cancelled();
    report.findings.sort_by(|a, b| a.key.cmp(&b.key));

    let mut stdout = std::io::stdout().lock();
    let written = if config.json {
        serde_json::to_writer(&mut stdout, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(stdout))
    } else {
        write_text(&mut stdout, &report)
    };
    written.map_err(|e| Failure::Runtime(format!("writing the report failed: {e}")))?;
    Ok(if report.interrupted {
        ExitCode::Interrupted
    } else if report.findings.is_empty() {
        ExitCode::Success
    } else {
        ExitCode::Failed
    })
}

fn write_text(out: &mut impl Write, report: &VerifyReport) -> std::io::Result<()> {
    for finding in &report.findings {
        let label = match finding.problem {
            Problem::Missing { .. } => "MISSING",
            Problem::Mismatch { .. } => "MISMATCH",
            Problem::Unreadable { .. } => "UNREADABLE",
        };
        writeln!(
            out,
            "{label} {}: {}",
            finding.path.display(),
            finding.problem
        )?;
    }
    let rate = report.bytes as f64 / report.seconds.max(0.001);
    let verdict = if report.interrupted {
        "interrupted"
    } else if report.findings.is_empty() {
        "all match"
    } else {
        "some do not match"
    };
    writeln!(
        out,
        "verified {} files, {} in {:.1} s ({}/s): {} ok, {} failed; {verdict}",
        report.checked,
        human_bytes(report.bytes),
        report.seconds,
        human_bytes(rate as u64),
        report.ok,
        report.findings.len()
    )
}

/// Ctrl-C or SIGTERM stops starting checks; a second one quits at once. Nothing is written,
/// so stopping anywhere is safe.
fn spawn_interrupt(cancel: CancellationToken) {
    tokio::spawn(async move {
        let Some(mut signals) = crate::signals::StopSignals::listen() else {
            return;
        };
        signals.next().await;
        cancel.cancel();
        signals.next().await;
        std::process::exit(ExitCode::Interrupted as i32);
    });
}
