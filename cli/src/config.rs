//! Validated runtime settings, built from the command line. Every check that can fail on input
//! happens here, before any request is sent or any file is written.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::error::InputError;
use common::selection::Selection;
use common::units::parse_size;
use engine::bandwidth::{Bandwidth, BwLimit};
use engine::{EngineConfig, OnContradiction, VerifyMode};
use transport::cost::Prices;
use transport::guard::{BodyGuard, MinRate};
use transport::retry::RetryPolicy;
use transport::{PoolConfig, ResolveOverride, Resolver, SourceConfig};

use s3dest::{DestConfig, S3Target, is_s3_url};

use crate::args::{
    ConcurrencyArgs, CostArgs, DestStoreArgs, PlanArgs, SelectionArgs, ShardArgs, SourceArgs,
    SyncArgs,
};
use common::shard::Shard;

/// Smallest and largest accepted `--part-size`.
const PART_SIZE_RANGE: std::ops::RangeInclusive<u64> = (64 << 10)..=(5 << 30);

/// `era5 plan`, validated.
#[derive(Debug)]
pub struct PlanConfig {
    /// What to list.
    pub selection: Selection,
    /// Where.
    pub source: SourceConfig,
    /// JSON output.
    pub json: bool,
    /// `--prices`: what the estimate charges.
    pub prices: Prices,
    /// `--shard`: only this part of the plan.
    pub shard: Option<Shard>,
}

/// How `sync` shows progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressStyle {
    /// A live bar (stderr is a terminal).
    Bar,
    /// A log line every interval.
    Lines(Duration),
    /// NDJSON events (`progress_events`), totals every interval.
    Json(Duration),
    /// Nothing.
    Off,
}

/// `era5 sync`, validated.
#[derive(Debug)]
pub struct SyncConfig {
    /// What to mirror.
    pub selection: Selection,
    /// Where from.
    pub source: SourceConfig,
    /// Where objects land.
    pub dest: DestSpec,
    /// Engine tunables.
    pub engine: EngineConfig,
    /// Progress display.
    pub progress: ProgressStyle,
    /// `--follow`: keep mirroring what appears, every interval.
    pub follow: Option<FollowConfig>,
    /// `--json`: the summary as JSON.
    pub json: bool,
    /// `--prices`: what the summary's cost estimate charges.
    pub prices: Prices,
    /// `--max-transfer` and `--max-duration`.
    pub limits: RunLimits,
    /// `--shard`: only this part of the plan, beside other shards in the same DEST.
    pub shard: Option<Shard>,
}

/// Where a sync writes: a directory, or another object store.
#[derive(Clone, Debug)]
pub enum DestSpec {
    /// A directory (the mirror with its manifest).
    Local(PathBuf),
    /// `s3://BUCKET[/PREFIX]` and how to reach it.
    S3(Box<DestConfig>),
}

impl std::fmt::Display for DestSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DestSpec::Local(dir) => write!(f, "{}", dir.display()),
            DestSpec::S3(dest) => write!(f, "{}", dest.target),
        }
    }
}

/// `--shard I/N` or `auto/N` (the index from the scheduler's environment).
pub(crate) fn shard(args: &ShardArgs) -> Result<Option<Shard>, InputError> {
    let Some(text) = &args.shard else {
        return Ok(None);
    };
    Shard::parse(text, |name| std::env::var(name).ok())
        .map(Some)
        .map_err(|reason| InputError::BadValue {
            flag: "--shard",
            value: text.clone(),
            reason,
        })
}

/// `--dest s3://BUCKET[/PREFIX]` with `--dest-endpoint`, `--dest-region` and
/// `--dest-path-style`, checked; the pool gets `connections`.
pub(crate) fn dest_store(
    dest: &str,
    args: &DestStoreArgs,
    connections: usize,
) -> Result<DestConfig, InputError> {
    let target = S3Target::parse(dest).map_err(|reason| InputError::BadValue {
        flag: "--dest",
        value: dest.to_string(),
        reason,
    })?;
    if let Some(endpoint) = &args.dest_endpoint {
        check_url("--dest-endpoint", endpoint)?;
    }
    if args.dest_region.trim().is_empty() {
        return Err(InputError::BadValue {
            flag: "--dest-region",
            value: args.dest_region.clone(),
            reason: "expected a region such as us-east-1".into(),
        });
    }
    Ok(DestConfig {
        target,
        path_style: args.dest_path_style || args.dest_endpoint.is_some(),
        endpoint: args.dest_endpoint.clone(),
        region: args.dest_region.clone(),
        pool: PoolConfig::new(connections),
    })
}

/// Where a sync stops by itself (`--max-transfer`, `--max-duration`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunLimits {
    /// Bytes received.
    pub max_transfer: Option<u64>,
    /// Time since the start.
    pub max_duration: Option<Duration>,
}

/// How a follow-mode sync repeats.
#[derive(Debug)]
pub struct FollowConfig {
    /// Time between passes.
    pub interval: Duration,
    /// The selection as typed, parsed again at every pass (`--end latest` moves).
    pub selection: SelectionArgs,
}

/// Default `--interval`.
pub const DEFAULT_INTERVAL: &str = "6h";

/// Parses `--interval` (`6h`, `30m`, `90s`, `1h30m`): at least a second, at most 31 days.
pub fn parse_interval(text: &str) -> Result<Duration, InputError> {
    parse_duration("--interval", text)
}

/// Parses a duration flag (`6h`, `30m`, `90s`, `1h30m`): at least a second, at most 31 days.
fn parse_duration(flag: &'static str, text: &str) -> Result<Duration, InputError> {
    let bad = |reason: &str| InputError::BadValue {
        flag,
        value: text.to_string(),
        reason: reason.to_string(),
    };
    let duration = common::units::parse_duration(text)
        .ok_or_else(|| bad("expected a duration such as 6h, 30m, 1h30m or 90s"))?;
    if duration < Duration::from_secs(1) || duration > Duration::from_secs(31 * 24 * 3600) {
        return Err(bad("must be from 1s to 31 days (744h)"));
    }
    Ok(duration)
}

pub(crate) fn selection(args: &SelectionArgs) -> Result<Selection, InputError> {
    Selection::parse(
        &args.product,
        &args.var,
        &args.grid,
        &args.start,
        &args.end,
        common::dates::today_utc(),
    )
}

pub(crate) fn source(
    args: &SourceArgs,
    connections: usize,
    idle_timeout: Duration,
) -> Result<SourceConfig, InputError> {
    Ok(SourceConfig {
        bucket: args.bucket.clone(),
        endpoint: Some(args.endpoint.clone()),
        region: args.region.clone(),
        sign: args.sign,
        env_credentials: true,
        pool: PoolConfig {
            idle_timeout,
            resolver: resolver(&args.resolve.overrides)?,
            extra_roots: ca_bundle()?,
            ..PoolConfig::new(connections)
        },
    })
}

/// `source` as a command that only lists reaches it: `--stall-timeout` on every response.
pub(crate) fn listing_source(
    args: &SourceArgs,
    listing: &crate::args::ListingArgs,
) -> Result<SourceConfig, InputError> {
    let mut config = source(args, 8, transport::pool::DEFAULT_IDLE_TIMEOUT)?;
    config.pool.guard.stall_timeout = Duration::from_secs(listing.stall_timeout);
    Ok(config)
}

/// The CA bundle named by `AWS_CA_BUNDLE` (as the AWS CLI and SDKs read it): extra roots for
/// an `https://` endpoint whose certificate chains to a private CA.
pub(crate) fn ca_bundle() -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, InputError> {
    match std::env::var_os("AWS_CA_BUNDLE").filter(|path| !path.is_empty()) {
        None => Ok(Vec::new()),
        Some(path) => {
            transport::pool::load_ca_bundle(std::path::Path::new(&path)).map_err(|reason| {
                InputError::BadValue {
                    flag: "AWS_CA_BUNDLE",
                    value: path.to_string_lossy().into_owned(),
                    reason,
                }
            })
        }
    }
}

/// `--resolve HOST:PORT:ADDR[,ADDR..]`, each.
pub(crate) fn resolver(overrides: &[String]) -> Result<Resolver, InputError> {
    let parsed = overrides
        .iter()
        .filter(|text| !text.trim().is_empty())
        .map(|text| {
            text.trim()
                .parse::<ResolveOverride>()
                .map_err(|reason| InputError::BadValue {
                    flag: "--resolve",
                    value: text.clone(),
                    reason,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Resolver::with_overrides(parsed))
}

/// Smallest accepted `--memory-budget`: room for a few requests and their chunks.
const MIN_MEMORY_BUDGET: u64 = 8 << 20;

/// `--connections`, `--no-autotune`, `--memory-budget`, `--no-hedge` and `--bwlimit`, into
/// the engine's settings; the connection cap is the pool's.
pub(crate) fn concurrency(
    args: &ConcurrencyArgs,
    engine: &mut EngineConfig,
) -> Result<usize, InputError> {
    if let Some(text) = &args.memory_budget {
        engine.memory_budget = parse_size(text)
            .filter(|bytes| *bytes >= MIN_MEMORY_BUDGET)
            .ok_or_else(|| InputError::BadValue {
                flag: "--memory-budget",
                value: text.clone(),
                reason: "expected a size of at least 8MiB, e.g. 512MiB or 2GiB".into(),
            })?;
    }
    engine.autotune = !args.no_autotune;
    engine.hedge = !args.no_hedge;
    if let Some(text) = &args.bwlimit {
        let limit = BwLimit::parse(text).map_err(|error| InputError::BadValue {
            flag: "--bwlimit",
            value: text.clone(),
            reason: error.to_string(),
        })?;
        engine.bandwidth = Arc::new(Bandwidth::new(limit));
    }
    Ok(args.connections as usize)
}

/// `--dest` of a command that only inspects a mirror: it must already be a directory.
pub(crate) fn existing_mirror(dest: &std::path::Path) -> Result<PathBuf, InputError> {
    if dest.is_dir() {
        Ok(dest.to_path_buf())
    } else {
        Err(InputError::BadValue {
            flag: "--dest",
            value: dest.display().to_string(),
            reason: "is not a directory".into(),
        })
    }
}

/// What `--strict-checksums` asks of a server checksum that contradicts a verified ETag.
pub fn on_contradiction(strict_checksums: bool) -> OnContradiction {
    if strict_checksums {
        OnContradiction::Fail
    } else {
        OnContradiction::Keep
    }
}

/// `--min-rate SIZE` over `window` seconds; `0` turns the check off.
pub fn min_rate(text: &str, window: u64) -> Result<MinRate, InputError> {
    let bytes_per_sec = parse_size(text).ok_or_else(|| InputError::BadValue {
        flag: "--min-rate",
        value: text.to_string(),
        reason: "expected bytes per second, e.g. 64KiB, or 0 to turn the check off".into(),
    })?;
    Ok(MinRate {
        bytes_per_sec,
        window: Duration::from_secs(window),
    })
}

pub(crate) fn check_endpoint(endpoint: &str) -> Result<(), InputError> {
    check_url("--endpoint", endpoint)
}

/// An S3 endpoint URL of `flag`: http or https, with a host. The error shows the URL with
/// any credentials in it hidden.
fn check_url(flag: &'static str, endpoint: &str) -> Result<(), InputError> {
    let bad = |reason: &str| InputError::BadValue {
        flag,
        value: common::redact::redact_url(endpoint),
        reason: reason.to_string(),
    };
    let uri: http::Uri = endpoint.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(()),
        _ => Err(bad("expected http://host[:port] or https://host[:port]")),
    }
}

impl TryFrom<&PlanArgs> for PlanConfig {
    type Error = InputError;

    fn try_from(args: &PlanArgs) -> Result<Self, InputError> {
        check_endpoint(&args.source.endpoint)?;
        Ok(Self {
            selection: selection(&args.selection)?,
            source: listing_source(&args.source, &args.listing)?,
            json: args.json,
            prices: prices(&args.cost)?,
            shard: shard(&args.shard)?,
        })
    }
}

/// `--prices`: S3 Standard's prices with the overrides given.
fn prices(args: &CostArgs) -> Result<Prices, InputError> {
    Prices::parse(&args.prices).map_err(|error| InputError::BadValue {
        flag: "--prices",
        value: error.0,
        reason: "expected KIND=DOLLARS (per 1,000 requests of KIND: list, head, get, put, create_upload, upload_part, complete, abort, other; or gb=DOLLARS per GB)".into(),
    })
}

impl TryFrom<&SyncArgs> for SyncConfig {
    type Error = InputError;

    fn try_from(args: &SyncArgs) -> Result<Self, InputError> {
        check_endpoint(&args.source.endpoint)?;
        let selection = selection(&args.selection)?;
        let part_size = match &args.part_size {
            None => None,
            Some(text) => Some(
                parse_size(text)
                    .filter(|size| PART_SIZE_RANGE.contains(size))
                    .ok_or_else(|| InputError::BadValue {
                        flag: "--part-size",
                        value: text.clone(),
                        reason: "expected a size from 64KiB to 5GiB, e.g. 8MiB or 16M".into(),
                    })?,
            ),
        };
        let verify: VerifyMode = args.verify.parse().map_err(|reason| InputError::BadValue {
            flag: "--verify",
            value: args.verify.clone(),
            reason,
        })?;
        let min_rate = min_rate(&args.min_rate, args.min_rate_window)?;
        let stall_timeout = Duration::from_secs(args.stall_timeout);
        let interval = Duration::from_secs(args.progress_interval);
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let progress = match (args.no_progress, args.progress.as_str()) {
            (true, _) | (false, "lines") => ProgressStyle::Lines(interval),
            (false, "bar") => ProgressStyle::Bar,
            (false, "json") => ProgressStyle::Json(interval),
            (false, "none") => ProgressStyle::Off,
            // auto: a bar for people, events for programs.
            _ if terminal => ProgressStyle::Bar,
            _ => ProgressStyle::Json(interval),
        };
        let follow = match (&args.interval, args.follow) {
            (Some(interval), false) => {
                return Err(InputError::BadValue {
                    flag: "--interval",
                    value: interval.clone(),
                    reason: "only applies with --follow".into(),
                });
            }
            (interval, true) => Some(FollowConfig {
                interval: parse_interval(interval.as_deref().unwrap_or(DEFAULT_INTERVAL))?,
                selection: args.selection.clone(),
            }),
            (None, false) => None,
        };
        let mut engine = EngineConfig {
            part_size,
            stall_timeout,
            min_rate,
            save_every: Duration::from_millis(args.save_every_ms),
            verify,
            on_contradiction: on_contradiction(args.strict_checksums),
            retry: RetryPolicy {
                max_attempts: args.retries,
                base: Duration::from_millis(args.retry_base_ms),
                ..RetryPolicy::default()
            },
            ..EngineConfig::default()
        };
        let connections = concurrency(&args.concurrency, &mut engine)?;
        let mut source = source(
            &args.source,
            connections,
            Duration::from_secs(args.idle_timeout),
        )?;
        let dest = if is_s3_url(&args.dest) {
            // The environment's AWS credentials are the destination's.
            source.env_credentials = false;
            DestSpec::S3(Box::new(dest_store(
                &args.dest,
                &args.dest_store,
                connections,
            )?))
        } else {
            let dir = PathBuf::from(&args.dest);
            if dir.exists() && !dir.is_dir() {
                return Err(InputError::BadValue {
                    flag: "--dest",
                    value: args.dest.clone(),
                    reason: "exists and is not a directory".into(),
                });
            }
            DestSpec::Local(dir)
        };
        source.pool.guard = BodyGuard {
            stall_timeout,
            min_rate,
        };
        source.pool.receive_buffer = engine.bandwidth.receive_buffer(connections);
        Ok(Self {
            follow,
            selection,
            source,
            dest,
            engine,
            progress,
            json: args.json,
            prices: prices(&args.cost)?,
            limits: RunLimits {
                max_transfer: args
                    .max_transfer
                    .as_deref()
                    .map(|text| {
                        parse_size(text)
                            .filter(|n| *n > 0)
                            .ok_or_else(|| InputError::BadValue {
                                flag: "--max-transfer",
                                value: text.to_string(),
                                reason: "expected a size above zero, e.g. 500GiB or 2T".into(),
                            })
                    })
                    .transpose()?,
                max_duration: args
                    .max_duration
                    .as_deref()
                    .map(|text| parse_duration("--max-duration", text))
                    .transpose()?,
            },
            shard: shard(&args.shard)?,
        })
    }
}
