//! `era5 verify`: is every byte still right? Re-reads every mirrored file in the selection (all
//! of DEST's manifest when no selection is given) and checks it against its manifest record
//! (MD5 or multipart ETag, additional checksum, size), one file per core at a time, with a
//! progress bar. Without `--repair` it never writes into DEST. Exit 0 when everything matches,
//! 1 otherwise.
//!
//! `--repair` then takes DEST exclusively, takes every failing object out of the manifest and
//! fetches it again through the same mirrorer as `era5 sync`: the bad file stays where it is
//! until a verified download is renamed over it. Exit 0 when every failure was repaired.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::error::InputError;
use common::selection::Selection;
use common::units::human_bytes;
use common::{ObjectKey, Product};
use engine::manifest::ManifestEntry;
use engine::recheck::{Finding, Problem, recheck};
use engine::sync::{Mirrorer, Outcome};
use engine::{EngineConfig, FetchScope, Mirror, Progress};
use futures_util::{StreamExt, stream};
use s3dest::{DestConfig, is_s3_url};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use transport::{RemoteObject, Source, SourceConfig};

use crate::args::VerifyArgs;
use crate::config::{DestSpec, ProgressStyle, dest_store, existing_mirror};
use crate::exit::{ExitCode, Failure};
use crate::progress_display::Reporter;

/// `era5 verify`, validated.
#[derive(Debug)]
pub struct VerifyConfig {
    /// The mirror: a directory and its manifest, or an object store's copies.
    pub dest: DestSpec,
    /// Which records; `None` checks every record.
    pub selection: Option<Selection>,
    /// Files checked at once.
    pub jobs: usize,
    /// JSON output.
    pub json: bool,
    /// Progress display.
    pub progress: ProgressStyle,
    /// `--repair`: where to fetch the failing objects again.
    pub repair: Option<SourceConfig>,
    /// `--shard`: only this part of the records (or copies).
    pub shard: Option<common::shard::Shard>,
}

impl TryFrom<&VerifyArgs> for VerifyConfig {
    type Error = InputError;

    fn try_from(args: &VerifyArgs) -> Result<Self, InputError> {
        let dest = if is_s3_url(&args.dest) {
            if args.repair {
                return Err(InputError::BadValue {
                    flag: "--repair",
                    value: args.dest.clone(),
                    reason: "repairs a directory; for an s3:// destination run `era5 sync`, which copies again what is missing or different".into(),
                });
            }
            DestSpec::S3(Box::new(dest_store(&args.dest, &args.dest_store, 8)?))
        } else {
            DestSpec::Local(existing_mirror(std::path::Path::new(&args.dest))?)
        };
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
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let progress = if !args.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr())
        {
            ProgressStyle::Bar
        } else {
            ProgressStyle::Lines(Duration::from_secs(5))
        };
        let repair = if args.repair {
            crate::config::check_endpoint(&args.source.endpoint)?;
            Some(crate::config::source(
                &args.source,
                16,
                transport::pool::DEFAULT_IDLE_TIMEOUT,
            )?)
        } else {
            None
        };
        Ok(Self {
            repair,
            dest,
            selection,
            jobs: args.jobs.map_or(cores, |n| n as usize),
            json: args.json,
            progress,
            shard: crate::config::shard(&args.shard)?,
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
    /// With `--repair`: what became of each finding.
    #[serde(skip_serializing_if = "Option::is_none")]
    repairs: Option<Vec<Repair>>,
}

impl VerifyReport {
    /// The report once every check ran (or the run was interrupted): the display stopped,
    /// the time taken, the findings in key order.
    async fn finished(
        mut self,
        reporter: Reporter,
        started: Instant,
        cancel: &CancellationToken,
    ) -> Self {
        reporter.stop().await;
        self.seconds = started.elapsed().as_secs_f64();
        self.interrupted = cancel.is_cancelled();
        self.findings.sort_by(|a, b| a.key.cmp(&b.key));
        self
    }
}

/// What `--repair` did for one finding.
#[derive(Debug, Serialize)]
struct Repair {
    key: String,
    path: PathBuf,
    repaired: bool,
    /// How it ended: `downloaded`, `verified locally`, or why it could not be repaired.
    detail: String,
}

/// Runs the command.
pub async fn run(config: VerifyConfig) -> Result<ExitCode, Failure> {
    let mut report = match &config.dest {
        DestSpec::Local(dir) => check_files(&config, dir).await?,
        DestSpec::S3(dest) => check_copies(&config, dest).await?,
    };
    if let (Some(source), DestSpec::Local(dir)) = (&config.repair, &config.dest)
        && !report.findings.is_empty()
        && !report.interrupted
    {
        report.repairs = Some(repair(dir, source, &report.findings).await?);
    }

    let mut stdout = std::io::stdout().lock();
    let written = if config.json {
        serde_json::to_writer(&mut stdout, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(stdout))
    } else {
        write_text(&mut stdout, &report)
    };
    crate::exit::written(written, "the report")?;
    let all_repaired = report
        .repairs
        .as_ref()
        .is_some_and(|repairs| repairs.iter().all(|r| r.repaired));
    Ok(if report.interrupted {
        ExitCode::Interrupted
    } else if report.findings.is_empty() || all_repaired {
        ExitCode::Success
    } else {
        ExitCode::Failed
    })
}

/// Whether `key` is in the selection (every key without one).
fn in_selection(config: &VerifyConfig, key: &str) -> bool {
    match &config.selection {
        None => true,
        Some(selection) => ObjectKey::parse(key).is_some_and(|k| selection.selects(&k)),
    }
}

/// Every copy under an `s3://` destination in the selection, read back and checked against
/// its own ETag and the source version it records (`s3dest::recheck`), `--jobs` at once.
async fn check_copies(config: &VerifyConfig, dest: &DestConfig) -> Result<VerifyReport, Failure> {
    let retry = transport::retry::RetryPolicy::default();
    let (client, _http) = crate::uploads_cmd::connect(dest, &retry).await?;
    let folders: Vec<String> = match &config.selection {
        Some(selection) => selection.list_prefixes(),
        None => Product::ALL
            .iter()
            .map(|p| format!("{}/", p.name()))
            .collect(),
    };
    let mut copies = s3dest::listing::list_copies(&client, &dest.target, &folders, &retry)
        .await
        .map_err(|why| Failure::Runtime(format!("listing {} failed: {why}", dest.target)))?;
    copies.retain(|copy| ObjectKey::parse(&copy.key).is_some() && in_selection(config, &copy.key));
    if copies.is_empty() {
        return Err(Failure::Runtime(format!(
            "nothing to verify: no copy under {} matches the selection",
            dest.target
        )));
    }
    if let Some(shard) = config.shard {
        copies = shard.select(copies, |copy| (copy.key.as_str(), copy.size));
    }
    let (progress, reporter, cancel) = start_progress(config, copies.iter().map(|c| c.size));
    let started = Instant::now();
    let mut report = VerifyReport::default();
    let (client, target) = (&client, &dest.target);
    let mut checks = stream::iter(copies)
        .take_until(Box::pin(cancel.clone().cancelled_owned()))
        .map(|copy| async move {
            let checked = s3dest::recheck::recheck_copy(client, target, &copy).await;
            let size = copy.size;
            (
                size,
                checked.map_err(|problem| Finding {
                    path: PathBuf::from(format!("{target}{}", copy.key)),
                    key: copy.key,
                    problem,
                }),
            )
        })
        .buffer_unordered(config.jobs.max(1));
    while let Some((size, checked)) = checks.next().await {
        tally(&mut report, &progress, size, checked);
    }
    drop(checks);
    Ok(report.finished(reporter, started, &cancel).await)
}

/// The totals, the progress display and the interrupt that stops a run.
fn start_progress(
    config: &VerifyConfig,
    sizes: impl Iterator<Item = u64>,
) -> (Arc<Progress>, Reporter, CancellationToken) {
    let progress = Arc::new(Progress::default());
    let (count, bytes) = sizes.fold((0u64, 0u64), |(n, b), size| (n + 1, b + size));
    progress.objects_total.store(count, Ordering::Relaxed);
    progress.bytes_total.store(bytes, Ordering::Relaxed);
    let reporter = Reporter::start(config.progress, progress.clone(), None);
    let cancel = CancellationToken::new();
    spawn_interrupt(cancel.clone());
    (progress, reporter, cancel)
}

/// Counts one checked object into the report and the progress.
fn tally(report: &mut VerifyReport, progress: &Progress, size: u64, checked: Result<(), Finding>) {
    report.checked += 1;
    report.bytes += size;
    progress.bytes_downloaded.fetch_add(size, Ordering::Relaxed);
    match checked {
        Ok(()) => {
            report.ok += 1;
            progress.objects_done.fetch_add(1, Ordering::Relaxed);
        }
        Err(finding) => {
            progress.objects_failed.fetch_add(1, Ordering::Relaxed);
            report.findings.push(finding);
        }
    }
}

/// Every mirrored file of a directory in the selection, checked against its manifest record,
/// one blocking check per `--jobs`.
async fn check_files(
    config: &VerifyConfig,
    dir: &std::path::Path,
) -> Result<VerifyReport, Failure> {
    let records =
        engine::manifest::read_records(&dir.join(".era5"), |key| in_selection(config, key))
            .map_err(|e| {
                Failure::Runtime(format!(
                    "reading the manifest in {} failed: {e}",
                    dir.display()
                ))
            })?;
    let mut records: Vec<ManifestEntry> = records.into_values().collect();
    if records.is_empty() {
        return Err(Failure::Runtime(format!(
            "nothing to verify: no manifest record in {} matches the selection",
            dir.display()
        )));
    }
    records.sort_by(|a, b| a.key.cmp(&b.key));
    if let Some(shard) = config.shard {
        records = shard.select(records, |record| (record.key.as_str(), record.size));
    }
    let (progress, reporter, cancel) = start_progress(config, records.iter().map(|r| r.size));
    let started = Instant::now();
    let dest = Arc::new(dir.to_path_buf());
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
        let checked = result
            .map_err(|join| Failure::Runtime(format!("a verification task failed: {join}")))?;
        tally(&mut report, &progress, size, checked);
    }
    drop(checks);
    Ok(report.finished(reporter, started, &cancel).await)
}

/// Takes the failing objects out of the manifest and fetches them again. DEST is taken
/// exclusively first, as `era5 sync` takes it, so no other writer races the repair.
async fn repair(
    dir: &std::path::Path,
    source: &SourceConfig,
    findings: &[Finding],
) -> Result<Vec<Repair>, Failure> {
    let mirror = Mirror::open(dir).map_err(|e| Failure::Runtime(e.to_string()))?;
    let keys: HashSet<String> = findings.iter().map(|f| f.key.clone()).collect();
    engine::manifest::forget_records(mirror.state_dir(), &keys).map_err(|e| {
        Failure::Runtime(format!(
            "taking the failing records out of the manifest failed: {e}"
        ))
    })?;
    let source = Source::connect(source).await;
    let mirrorer = Mirrorer::new(
        source,
        mirror,
        EngineConfig::default(),
        Arc::new(Progress::default()),
    )
    .map_err(|e| Failure::Runtime(format!("opening the manifest failed: {e}")))?;
    let cancel = CancellationToken::new();
    spawn_interrupt(cancel.clone());
    // What the bucket holds now: the version to fetch, verified against its own ETag.
    let mut objects = Vec::new();
    let mut repairs = Vec::new();
    for finding in findings {
        match mirrorer.engine().head(&finding.key, 0, &cancel).await {
            Ok(head) => objects.push(RemoteObject {
                key: finding.key.clone(),
                size: head.size,
                etag: head.etag,
                last_modified: head.last_modified,
            }),
            Err(error) => repairs.push(Repair {
                key: finding.key.clone(),
                path: finding.path.clone(),
                repaired: false,
                detail: format!("the bucket does not give it: {error}"),
            }),
        }
    }
    let scope = FetchScope {
        cancel,
        ..FetchScope::default()
    };
    let report = mirrorer
        .run_batch(objects, &scope)
        .await
        .map_err(|e| Failure::Runtime(format!("writing the mirror failed: {e}")))?;
    let path_of = |key: &str| {
        findings
            .iter()
            .find(|f| f.key == key)
            .map(|f| f.path.clone())
            .unwrap_or_default()
    };
    for (object, outcome) in report.results {
        let (repaired, detail) = match outcome {
            Outcome::Downloaded => (true, "downloaded".to_string()),
            Outcome::VerifiedLocally => (true, "verified locally".to_string()),
            Outcome::Present => (true, "present".to_string()),
            Outcome::Superseded => (true, "a newer version is in place".to_string()),
            Outcome::Failed { reason, .. } | Outcome::Local { reason, .. } => (false, reason),
            Outcome::Cancelled => (false, "interrupted".to_string()),
        };
        repairs.push(Repair {
            path: path_of(&object.key),
            key: object.key,
            repaired,
            detail,
        });
    }
    if let Some(error) = report.manifest_error {
        return Err(Failure::Runtime(format!(
            "the repaired files are in place but the manifest could not be written: {error}"
        )));
    }
    repairs.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(repairs)
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
    for repair in report.repairs.iter().flatten() {
        if repair.repaired {
            writeln!(out, "REPAIRED {}: {}", repair.path.display(), repair.detail)?;
        } else {
            writeln!(
                out,
                "NOT REPAIRED {}: {}",
                repair.path.display(),
                repair.detail
            )?;
        }
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
        "verified {}, {} in {:.1} s ({}/s): {} ok, {} failed; {verdict}",
        common::units::counted(report.checked, "file", "files"),
        human_bytes(report.bytes),
        report.seconds,
        human_bytes(rate as u64),
        report.ok,
        report.findings.len()
    )?;
    if let Some(repairs) = &report.repairs {
        let done = repairs.iter().filter(|r| r.repaired).count();
        writeln!(out, "repaired {done} of {}", repairs.len())?;
    }
    Ok(())
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
