//! `era5 audit`: is the mirror complete? Lists the selection (no GET), reads the manifest and
//! file sizes (no write, no lock) and reports, against the catalog's cadence and the bucket:
//! gaps in the bucket itself, objects DEST lacks, files not yet verified, records of objects
//! replaced upstream, and files the bucket no longer has. Exit 0 when DEST holds, verified,
//! every object the bucket has for the selection; 1 otherwise.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use common::error::InputError;
use common::selection::Selection;
use engine::audit::{AuditInput, AuditReport, Held, Holdings, LocalHoldings, audit};
use engine::manifest::ManifestEntry;
use s3dest::audit::StoreHoldings;
use s3dest::is_s3_url;
use serde::Serialize;
use transport::RemoteObject;
use transport::retry::RetryPolicy;
use transport::{Source, SourceConfig, coverage, discover_detailed};

use crate::args::AuditArgs;
use crate::config::{DestSpec, check_endpoint, dest_store, existing_mirror, selection};
use crate::exit::{ExitCode, Failure};

/// A directory and the manifest records read from it, as the audit's holdings.
struct OwnedLocal {
    dir: PathBuf,
    records: HashMap<String, ManifestEntry>,
}

impl Holdings for OwnedLocal {
    fn held(&self, object: &RemoteObject) -> Held {
        LocalHoldings {
            dest: &self.dir,
            records: &self.records,
        }
        .held(object)
    }

    fn keys(&self, selection: &Selection) -> Vec<String> {
        LocalHoldings {
            dest: &self.dir,
            records: &self.records,
        }
        .keys(selection)
    }
}

/// Items of each list the text report shows; `--json` has them all.
const SHOWN: usize = 10;

/// `era5 audit`, validated.
#[derive(Debug)]
pub struct AuditConfig {
    /// What should be in the mirror.
    pub selection: Selection,
    /// Where it comes from.
    pub source: SourceConfig,
    /// The mirror.
    pub dest: DestSpec,
    /// JSON output.
    pub json: bool,
    /// `--shard`: only this part of the plan.
    pub shard: Option<common::shard::Shard>,
}

impl TryFrom<&AuditArgs> for AuditConfig {
    type Error = InputError;

    fn try_from(args: &AuditArgs) -> Result<Self, InputError> {
        check_endpoint(&args.source.endpoint)?;
        let selection = selection(&args.selection)?;
        let mut source = crate::config::listing_source(&args.source, &args.listing)?;
        let dest = if is_s3_url(&args.dest) {
            // The environment's AWS credentials are the destination's.
            source.env_credentials = false;
            DestSpec::S3(Box::new(dest_store(&args.dest, &args.dest_store, 8)?))
        } else {
            DestSpec::Local(existing_mirror(std::path::Path::new(&args.dest))?)
        };
        Ok(Self {
            selection,
            source,
            dest,
            json: args.json,
            shard: crate::config::shard(&args.shard)?,
        })
    }
}

#[derive(Serialize)]
struct AuditJson<'a> {
    dest: String,
    bucket: &'a str,
    products: Vec<&'static str>,
    start: String,
    end: String,
    complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    shard: Option<&'a crate::plan_cmd::ShardNote>,
    #[serde(flatten)]
    report: &'a AuditReport,
}

/// Runs the command.
pub async fn run(config: AuditConfig) -> Result<ExitCode, Failure> {
    let source = Source::connect(&config.source).await;
    let retry = RetryPolicy::default();
    let mut found = discover_detailed(&source, &config.selection, &retry)
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    // A shard is audited over its own objects; what DEST holds beyond the bucket is judged
    // against the whole listing (another shard's files are not strays).
    let whole_listing: std::collections::HashSet<String> = match config.shard {
        Some(_) => found.objects.iter().map(|o| o.key.clone()).collect(),
        None => std::collections::HashSet::new(),
    };
    let shard = config
        .shard
        .map(|shard| crate::plan_cmd::ShardNote::take(&mut found.objects, shard));
    let mut latest = HashMap::new();
    for product in &config.selection.products {
        match coverage::month_folders(&source, *product, &retry, Duration::from_secs(60)).await {
            Ok(months) => {
                if let Some(month) = months.last() {
                    latest.insert(*product, *month);
                }
            }
            Err(error) => {
                eprintln!("era5: warning: {error}; expecting every month of the range");
            }
        }
    }
    let holdings: Box<dyn Holdings> = match &config.dest {
        DestSpec::Local(dir) => {
            let records = engine::manifest::read_records(&dir.join(".era5"), |key| {
                common::ObjectKey::parse(key).is_some_and(|k| config.selection.selects(&k))
            })
            .map_err(|e| {
                Failure::Runtime(format!(
                    "reading the manifest in {} failed: {e}",
                    dir.display()
                ))
            })?;
            Box::new(OwnedLocal {
                dir: dir.clone(),
                records,
            })
        }
        DestSpec::S3(dest) => {
            let (client, _http) = crate::uploads_cmd::connect(dest, &retry).await?;
            Box::new(
                StoreHoldings::read(
                    &client,
                    &dest.target,
                    &config.selection,
                    &found.objects,
                    &retry,
                )
                .await
                .map_err(|why| {
                    Failure::Runtime(format!("reading {} failed: {why}", dest.target))
                })?,
            )
        }
    };
    let mut report = audit(AuditInput {
        selection: &config.selection,
        expected: config.selection.expected_keys(|p| latest.get(&p).copied()),
        bucket: &found.objects,
        holdings: holdings.as_ref(),
        latest: &latest,
    });
    if shard.is_some() {
        report
            .not_in_bucket
            .retain(|key| !whole_listing.contains(key));
        // Gaps in the bucket are the whole plan's, not the shard's.
        report
            .missing_upstream
            .retain(|key| !whole_listing.contains(key));
    }
    let mut stdout = std::io::stdout().lock();
    let written = if config.json {
        let document = AuditJson {
            dest: config.dest.to_string(),
            bucket: &source.bucket,
            products: config.selection.products.iter().map(|p| p.name()).collect(),
            start: config.selection.range.start.to_string(),
            end: config.selection.range.end.to_string(),
            complete: report.complete(),
            shard: shard.as_ref(),
            report: &report,
        };
        serde_json::to_writer(&mut stdout, &document)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(stdout))
    } else {
        if let Some(shard) = &shard {
            eprintln!("{shard}");
        }
        write_text(&mut stdout, &config, &source.bucket, &report)
    };
    crate::exit::written(written, "the report")?;
    Ok(if report.complete() {
        ExitCode::Success
    } else {
        ExitCode::Failed
    })
}

fn write_text(
    out: &mut impl Write,
    config: &AuditConfig,
    bucket: &str,
    report: &AuditReport,
) -> std::io::Result<()> {
    let products: Vec<&str> = config.selection.products.iter().map(|p| p.name()).collect();
    // The source in use: the bucket, and the endpoint when it is not AWS's.
    let at = config
        .source
        .endpoint
        .as_deref()
        .map(|endpoint| format!(" at {}", common::redact::redact_url(endpoint)))
        .unwrap_or_default();
    writeln!(
        out,
        "audit of {} against s3://{bucket}{at} for {}, {}",
        config.dest,
        products.join(","),
        config.selection.describe_range()
    )?;
    writeln!(out, "  expected by the catalog: {}", report.expected)?;
    writeln!(out, "  in the bucket:           {}", report.in_bucket)?;
    writeln!(out, "  held verified in DEST:   {}", report.held_verified)?;
    list(
        out,
        "missing upstream (gaps in the bucket)",
        report.missing_upstream.iter().map(String::clone),
    )?;
    list(
        out,
        "missing in DEST",
        report
            .missing_in_dest
            .iter()
            .map(|m| format!("{}: {}", m.key, m.reason)),
    )?;
    list(
        out,
        "in DEST but unrecorded (not verified yet)",
        report.unrecorded.iter().map(String::clone),
    )?;
    list(
        out,
        "changed upstream",
        report.changed_upstream.iter().map(|c| {
            format!(
                "{}: recorded {} bytes, etag {}; the bucket lists {} bytes, etag {}",
                c.key,
                c.recorded_size,
                c.recorded_etag.as_deref().unwrap_or("none"),
                c.bucket_size,
                c.bucket_etag.as_deref().unwrap_or("none")
            )
        }),
    )?;
    list(
        out,
        "in DEST but no longer in the bucket",
        report.not_in_bucket.iter().map(String::clone),
    )?;
    for product in &report.not_yet_published {
        writeln!(
            out,
            "  note: the bucket's latest month of {} is {}; later months are not expected yet",
            product.product, product.latest_month
        )?;
    }
    if report.complete() {
        writeln!(
            out,
            "complete: DEST holds, verified, every object the bucket has for the selection"
        )
    } else {
        let to_fix =
            report.missing_in_dest.len() + report.unrecorded.len() + report.changed_upstream.len();
        writeln!(
            out,
            "incomplete: {to_fix} objects to fetch or verify; `era5 sync` with the same selection does it"
        )
    }
}

/// `  title: N`, then the first [`SHOWN`] items.
fn list(
    out: &mut impl Write,
    title: &str,
    items: impl ExactSizeIterator<Item = String>,
) -> std::io::Result<()> {
    let count = items.len();
    writeln!(out, "  {title}: {count}")?;
    for item in items.take(SHOWN) {
        writeln!(out, "    {item}")?;
    }
    if count > SHOWN {
        writeln!(out, "    ... and {} more (--json lists all)", count - SHOWN)?;
    }
    Ok(())
}
