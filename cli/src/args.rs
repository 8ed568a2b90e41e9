//! The command line, exactly as scripts use it. Every flag can also come from an `ERA5_*`
//! environment variable. These structs only carry what was typed; `config` turns them into
//! validated runtime settings.

use std::path::PathBuf;

use clap::builder::FalseyValueParser;
use clap::{ArgAction, Args, Parser, Subcommand};
use transport::{DEFAULT_BUCKET, DEFAULT_ENDPOINT, DEFAULT_REGION};

/// The exit statuses of every command: one stable table, in `--help` and the README (a test
/// holds the two equal), which schedulers' retry policies rely on.
pub const EXIT_STATUS: &str = "Exit status (every command):
  0    done: everything selected is present and verified (audit: complete; verify: all match;
       operator commands: the coordinator did it)
  1    failed: an object failed or differs, the selection matched nothing, or a service could
       not be reached or refused for a limit; running again may succeed
  2    bad input: a flag or value, an unknown job or worker, a request not allowed; nothing
       was written, and running again unchanged will fail the same way
  3    stopped at --max-transfer or --max-duration: finished files are kept, run again to go on
  130  interrupted (Ctrl-C, SIGTERM): run again to resume";

/// Mirror the ERA5 reanalysis from S3 onto a filesystem, verified byte for byte.
#[derive(Debug, Parser)]
#[command(name = "era5", version, about, max_term_width = 100, after_help = EXIT_STATUS)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format: text for people, json for log collectors in a cluster.
    #[arg(long, global = true, env = "ERA5_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], value_name = "FORMAT")]
    pub log_format: String,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the catalog: products (cadence, first and latest month) and their variables.
    Catalog(CatalogArgs),
    /// Show what a selection contains: objects and bytes per product, variable and grid.
    Plan(PlanArgs),
    /// Mirror a selection into a directory or another object store, verified, resumable and
    /// skipping what is done.
    Sync(Box<SyncArgs>),
    /// List (and with --abort, abort) stale multipart uploads under an s3:// destination.
    Uploads(UploadsArgs),
    /// Check that a mirror holds every object the bucket has for a selection (listing only).
    Audit(AuditArgs),
    /// Re-read every mirrored file and check it against its manifest record.
    Verify(VerifyArgs),
    /// Run the cluster coordinator (leases in Redis, gRPC for workers and operators).
    Coordinator(CoordinatorArgs),
    /// Run a cluster worker: take leases and mirror them into a shared directory.
    Worker(WorkerArgs),
    /// Submit a job to the cluster; prints the job id alone on its last line.
    Submit(SubmitArgs),
    /// Show jobs and workers, or one job's summary and (with --leases) its leases.
    Status(StatusArgs),
    /// List jobs.
    Jobs(CoordinatorUrl),
    /// Cancel a job.
    Cancel(JobArgs),
    /// Return a job's dead leases to pending.
    Retry(JobArgs),
    /// Ask a worker to stop taking leases (it finishes those it holds).
    Drain(DrainArgs),
}

/// Which objects: products, variables and days.
#[derive(Clone, Debug, Args)]
pub struct SelectionArgs {
    /// Products, comma separated (e.g. e5.oper.an.sfc,e5.oper.an.pl).
    #[arg(
        long,
        env = "ERA5_PRODUCT",
        value_delimiter = ',',
        required = true,
        value_name = "P[,P..]"
    )]
    pub product: Vec<String>,
    /// Variables, comma separated: short names (2t), ECMWF/CF names (t2m), CDS long names
    /// (2m_temperature) or parameter ids (167, 128.167, 235055); all variables when omitted.
    #[arg(long, env = "ERA5_VAR", value_delimiter = ',', value_name = "V[,V..]")]
    pub var: Vec<String>,
    /// Grids, comma separated (e.g. ll025sc, ll025uv); all grids when omitted.
    #[arg(long, env = "ERA5_GRID", value_delimiter = ',', value_name = "G[,G..]")]
    pub grid: Vec<String>,
    /// First day, YYYY-MM-DD, or YYYY-MM for the first day of that month.
    #[arg(long, env = "ERA5_START", value_name = "DATE")]
    pub start: String,
    /// Last day (inclusive), YYYY-MM-DD, or YYYY-MM for the last day of that month, or
    /// `latest` for whatever the bucket has (with --follow, the range grows with the archive).
    #[arg(long, env = "ERA5_END", value_name = "DATE")]
    pub end: String,
}

/// `--shard I/N`: one of N disjoint parts of the work, for a scheduler's array of tasks.
#[derive(Clone, Debug, Args)]
pub struct ShardArgs {
    /// Only shard I of N (0-based): the plan's keys in order, cut into N runs of about equal
    /// bytes; disjoint, together exactly the plan. auto/N takes I from JOB_COMPLETION_INDEX (a
    /// Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID (a Slurm array). N shards may write one
    /// DEST at once.
    #[arg(long, env = "ERA5_SHARD", value_name = "I/N|auto/N")]
    pub shard: Option<String>,
}

/// Where objects come from.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Bucket to read.
    #[arg(long, env = "ERA5_BUCKET", default_value = DEFAULT_BUCKET)]
    pub bucket: String,
    /// S3 endpoint; any other than the default is an S3-compatible server reached path-style.
    #[arg(long, env = "ERA5_ENDPOINT", default_value = DEFAULT_ENDPOINT, value_name = "URL")]
    pub endpoint: String,
    /// Region for signing.
    #[arg(long, env = "ERA5_REGION", default_value = DEFAULT_REGION, hide = true)]
    pub region: String,
    /// Sign requests with the standard AWS credential chain even if none is configured in the
    /// environment (requests are unsigned by default unless credentials are configured).
    #[arg(long, env = "ERA5_SIGN", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub sign: bool,
    /// Addresses of the endpoint's host.
    #[command(flatten)]
    pub resolve: ResolveArgs,
}

/// `--resolve`, for every command that talks to S3.
#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// Use these addresses for the endpoint's host instead of DNS (as curl's --resolve), e.g.
    /// s3.example:443:10.0.0.1,10.0.0.2; repeatable. Connections are spread over every
    /// address and slow ones get fewer.
    #[arg(
        long = "resolve",
        env = "ERA5_RESOLVE",
        value_delimiter = ' ',
        value_name = "HOST:PORT:ADDR[,ADDR..]"
    )]
    pub overrides: Vec<String>,
}

/// `--stall-timeout` of the commands that only list (plan, audit, catalog).
#[derive(Debug, Args)]
pub struct ListingArgs {
    /// A listing request whose headers or next byte do not come within this many seconds is
    /// retried; a folder's whole listing gives up after 8 of them.
    #[arg(long, env = "ERA5_STALL_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600), value_name = "SECS")]
    pub stall_timeout: u64,
}

/// How many requests are in flight, and the memory they may hold.
#[derive(Debug, Args)]
pub struct ConcurrencyArgs {
    /// Hard cap on concurrent S3 connections. The number of requests in flight is found by
    /// measuring, below this cap, unless --no-autotune.
    #[arg(long, env = "ERA5_CONNECTIONS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1024), value_name = "N")]
    pub connections: u32,
    /// Keep --connections requests in flight instead of finding the number by measuring
    /// (e.g. --connections 16 --no-autotune behaves as era5 did before autotuning).
    #[arg(long, env = "ERA5_NO_AUTOTUNE", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub no_autotune: bool,
    /// Memory for buffers in flight (e.g. 512MiB); each connection needs 1 MiB of it.
    /// Default: an eighth of the machine's (or container's) memory, from 64 MiB to 1 GiB.
    #[arg(long, env = "ERA5_MEMORY_BUDGET", value_name = "SIZE")]
    pub memory_budget: Option<String>,
    /// Do not ask slow requests again on another connection.
    #[arg(long, env = "ERA5_NO_HEDGE", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new(), hide = true)]
    pub no_hedge: bool,
    /// Cap the bytes this process receives per second, across all connections, in rclone's
    /// syntax: 10M, 512K, off, or a timetable such as "08:00,512K 19:00,off" or
    /// "Mon-00:00,1M Sat-00:00,off" (local time). No cap by default.
    #[arg(long, env = "ERA5_BWLIMIT", value_name = "RATE")]
    pub bwlimit: Option<String>,
}

/// `era5 catalog`.
#[derive(Debug, Args)]
pub struct CatalogArgs {
    /// Only these products, comma separated; all when omitted.
    #[arg(
        long,
        env = "ERA5_PRODUCT",
        value_delimiter = ',',
        value_name = "P[,P..]"
    )]
    pub product: Vec<String>,
    /// Where to look up each product's latest month.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Listing timeouts.
    #[command(flatten)]
    pub listing: ListingArgs,
    /// Do not ask the bucket for latest months (print the table only).
    #[arg(long, env = "ERA5_OFFLINE", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub offline: bool,
    /// Print {"products":[{"name","cadence","first_month","latest_month","variables":[...]}]}.
    #[arg(long, env = "ERA5_JSON", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub json: bool,
}

/// `era5 plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Which objects.
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Where from.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Listing timeouts.
    #[command(flatten)]
    pub listing: ListingArgs,
    /// Only one shard of the plan (a preview of what `sync --shard` takes).
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Print {"objects":[{"key","size","etag"}...],"total_bytes":N} instead of the table.
    #[arg(long, env = "ERA5_JSON", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub json: bool,
    /// Prices of the cost estimate.
    #[command(flatten)]
    pub cost: CostArgs,
}

/// What requests and bytes cost, for the estimates of `plan` and `sync`.
#[derive(Debug, Args)]
pub struct CostArgs {
    /// Prices for the cost estimate, overriding S3 Standard's (us-west-2):
    /// KIND=DOLLARS,... with KIND one of list, head, get, put, create_upload, upload_part,
    /// complete, abort, other (dollars per 1,000 requests) or gb (dollars per GB moved, 0 by
    /// default: the ERA5 bucket's requests and transfer are sponsored).
    #[arg(
        long,
        env = "ERA5_PRICES",
        default_value = "",
        hide_default_value = true,
        value_name = "PRICES"
    )]
    pub prices: String,
}

/// `era5 sync`.
#[derive(Debug, Args)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent on/off switches of the command line, each its own flag"
)]
pub struct SyncArgs {
    /// Which objects.
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Where from.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Where objects land: a directory (objects at DIR/<key>), or another object store,
    /// s3://BUCKET[/PREFIX] (objects at PREFIX/<key>, credentials from the standard AWS chain).
    #[arg(long, env = "ERA5_DEST", value_name = "DIR|s3://BUCKET[/PREFIX]")]
    pub dest: String,
    /// How to reach an s3:// destination.
    #[command(flatten)]
    pub dest_store: DestStoreArgs,
    /// Only one shard of the plan, beside the other shards writing the same DEST.
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Connections, requests in flight and their memory.
    #[command(flatten)]
    pub concurrency: ConcurrencyArgs,
    /// Size of the ranged GETs (e.g. 8MiB, 16M); by default sized by time (a few hundred
    /// milliseconds at the measured rate) and aligned to the object's upload parts.
    #[arg(long, env = "ERA5_PART_SIZE", value_name = "SIZE")]
    pub part_size: Option<String>,
    /// A read that delivers no byte for this many seconds is dropped and retried.
    #[arg(long, env = "ERA5_STALL_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600), value_name = "SECS")]
    pub stall_timeout: u64,
    /// A response slower than this per second on average (over 30 s of waiting) is dropped
    /// and retried on another connection, e.g. 64KiB; 0 turns the check off.
    #[arg(
        long,
        env = "ERA5_MIN_RATE",
        default_value = "64KiB",
        value_name = "SIZE"
    )]
    pub min_rate: String,
    /// Seconds of waiting that --min-rate averages over.
    #[arg(long, env = "ERA5_MIN_RATE_WINDOW", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600), hide = true)]
    pub min_rate_window: u64,
    /// Verification: size, etag (size + MD5/multipart ETag) or full (etag + S3 checksums).
    #[arg(long, env = "ERA5_VERIFY", default_value = "full", value_parser = ["size", "etag", "full"], value_name = "MODE")]
    pub verify: String,
    /// Fail an object whose S3 checksum contradicts the ETag that verified its bytes (by
    /// default it is kept, recorded as verified by the ETag, with a warning).
    #[arg(long, env = "ERA5_STRICT_CHECKSUMS", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub strict_checksums: bool,
    /// No progress bar; print periodic log lines instead (--progress lines).
    #[arg(long, env = "ERA5_NO_PROGRESS", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new(), conflicts_with = "progress")]
    pub no_progress: bool,
    /// How progress is shown on stderr: auto (a bar on a terminal, json otherwise), bar,
    /// lines (a log line every few seconds), json (NDJSON events: start, each object, totals,
    /// end; docs/schemas/progress.schema.json) or none.
    #[arg(long, env = "ERA5_PROGRESS", value_name = "MODE", default_value = "auto", value_parser = ["auto", "bar", "lines", "json", "none"])]
    pub progress: String,
    /// Print the summary as one JSON object on stdout instead of text.
    #[arg(long, env = "ERA5_JSON", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub json: bool,
    /// Prices of the cost estimate.
    #[command(flatten)]
    pub cost: CostArgs,
    /// Stop once this many bytes were received (e.g. 500GiB): the objects in flight stop,
    /// finished files are kept, interrupted ones resume next run; exit 3.
    #[arg(long, env = "ERA5_MAX_TRANSFER", value_name = "SIZE")]
    pub max_transfer: Option<String>,
    /// Stop after this long (e.g. 8h, 90m), like --max-transfer; exit 3.
    #[arg(long, env = "ERA5_MAX_DURATION", value_name = "DUR")]
    pub max_duration: Option<String>,
    /// Keep running after the first pass: list again every --interval and mirror what is new
    /// or changed; SIGTERM or Ctrl-C ends it after the objects in flight, with exit 0.
    #[arg(long, env = "ERA5_FOLLOW", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub follow: bool,
    /// Time between follow passes (e.g. 6h, 30m, 90s; default 6h).
    #[arg(long, env = "ERA5_INTERVAL", value_name = "DUR")]
    pub interval: Option<String>,
    /// Attempts per request before an object fails.
    #[arg(long, env = "ERA5_RETRIES", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100), hide = true)]
    pub retries: u32,
    /// First retry backoff ceiling, milliseconds (doubles per attempt, full jitter).
    #[arg(long, env = "ERA5_RETRY_BASE_MS", default_value_t = 200, hide = true)]
    pub retry_base_ms: u64,
    /// Longest wait, in milliseconds, before finished parts are saved in the resume state
    /// (each save syncs the data first).
    #[arg(long, env = "ERA5_SAVE_EVERY_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=600_000), hide = true)]
    pub save_every_ms: u64,
    /// Seconds an idle pooled connection is kept (at most 15, S3 drops idle ones soon after).
    #[arg(long, env = "ERA5_IDLE_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=15), hide = true)]
    pub idle_timeout: u64,
    /// Seconds between progress log lines when there is no progress bar.
    #[arg(long, env = "ERA5_PROGRESS_INTERVAL", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600), hide = true)]
    pub progress_interval: u64,
}

/// How to reach an `s3://` destination: its own endpoint, region and addressing. Its
/// credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID..., AWS_PROFILE, web
/// identity); the source stays anonymous unless --sign.
#[derive(Debug, Args)]
pub struct DestStoreArgs {
    /// S3 endpoint of the destination (default: AWS), e.g. https://minio.example:9000.
    #[arg(long, env = "ERA5_DEST_ENDPOINT", value_name = "URL")]
    pub dest_endpoint: Option<String>,
    /// Region of the destination bucket, for signing.
    #[arg(
        long,
        env = "ERA5_DEST_REGION",
        default_value = "us-east-1",
        value_name = "REGION"
    )]
    pub dest_region: String,
    /// Address the destination path-style (ENDPOINT/BUCKET/KEY), as MinIO and Ceph expect;
    /// the default with --dest-endpoint.
    #[arg(long, env = "ERA5_DEST_PATH_STYLE", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub dest_path_style: bool,
}

/// `era5 uploads`.
#[derive(Debug, Args)]
pub struct UploadsArgs {
    /// The destination whose open multipart uploads to list: s3://BUCKET[/PREFIX].
    #[arg(long, env = "ERA5_DEST", value_name = "s3://BUCKET[/PREFIX]")]
    pub dest: String,
    /// How to reach it.
    #[command(flatten)]
    pub dest_store: DestStoreArgs,
    /// Only uploads started at least this long ago (e.g. 24h, 90m, 0s).
    #[arg(
        long,
        env = "ERA5_OLDER_THAN",
        default_value = "24h",
        value_name = "DUR"
    )]
    pub older_than: String,
    /// Abort them (without it they are only listed).
    #[arg(long, action = ArgAction::SetTrue)]
    pub abort: bool,
    /// Print one JSON object per upload instead of a table.
    #[arg(long, env = "ERA5_JSON", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub json: bool,
}

/// `era5 audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Which objects should be in the mirror.
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Where they come from.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Listing timeouts.
    #[command(flatten)]
    pub listing: ListingArgs,
    /// The mirror to audit (read only: nothing is written or locked): a directory, or
    /// s3://BUCKET[/PREFIX] (its listing, and a HEAD per copy whose ETag differs).
    #[arg(long, env = "ERA5_DEST", value_name = "DIR|s3://BUCKET[/PREFIX]")]
    pub dest: String,
    /// How to reach an s3:// destination.
    #[command(flatten)]
    pub dest_store: DestStoreArgs,
    /// Only one shard of the plan (the objects `sync --shard` with the same I/N mirrors).
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Print the whole report as one JSON document.
    #[arg(long, env = "ERA5_JSON", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub json: bool,
}

/// `era5 verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The mirror to verify: a directory (against its manifest), or s3://BUCKET[/PREFIX]
    /// (each copy read back against its ETag and the source version it records).
    #[arg(long, env = "ERA5_DEST", value_name = "DIR|s3://BUCKET[/PREFIX]")]
    pub dest: String,
    /// How to reach an s3:// destination.
    #[command(flatten)]
    pub dest_store: DestStoreArgs,
    /// Only these products, comma separated (default: every record of the manifest).
    #[arg(
        long,
        env = "ERA5_PRODUCT",
        value_delimiter = ',',
        value_name = "P[,P..]"
    )]
    pub product: Vec<String>,
    /// Only these variables, in any form `sync` accepts.
    #[arg(long, env = "ERA5_VAR", value_delimiter = ',', value_name = "V[,V..]")]
    pub var: Vec<String>,
    /// Only these grids.
    #[arg(long, env = "ERA5_GRID", value_delimiter = ',', value_name = "G[,G..]")]
    pub grid: Vec<String>,
    /// Only objects from this day (YYYY-MM-DD or YYYY-MM) on.
    #[arg(long, env = "ERA5_START", value_name = "DATE")]
    pub start: Option<String>,
    /// Only objects up to this day (inclusive).
    #[arg(long, env = "ERA5_END", value_name = "DATE")]
    pub end: Option<String>,
    /// Only one shard of the records (or copies) verified: their keys in order, cut into N runs
    /// of about equal bytes (verify does not list the bucket, so these are not sync's shards).
    #[command(flatten)]
    pub shard: ShardArgs,
    /// Files checked at once (default: one per core).
    #[arg(long, env = "ERA5_JOBS", value_parser = clap::value_parser!(u32).range(1..=256), value_name = "N")]
    pub jobs: Option<u32>,
    /// Print {"checked","ok","bytes","seconds","findings":[{"key","path","problem",..}],
    /// "repairs":[{"key","path","repaired","detail"}]}.
    #[arg(long, env = "ERA5_JSON", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub json: bool,
    /// No progress bar; print periodic log lines instead.
    #[arg(long, env = "ERA5_NO_PROGRESS", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub no_progress: bool,
    /// Take every failing object out of the manifest and fetch it again through the normal
    /// engine (a file is only ever replaced by a verified one). Needs DEST to itself.
    #[arg(long, env = "ERA5_REPAIR", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub repair: bool,
    /// Where repairs are fetched from (only with --repair).
    #[command(flatten)]
    pub source: SourceArgs,
}

/// TLS for the cluster's gRPC: all three files, or none.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// PEM certificate chain presented to peers (a worker's or operator's must carry the URI
    /// SAN spiffe://<trust-domain>/era5/worker/<name> or .../era5/operator/<name>).
    #[arg(long, env = "ERA5_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "ERA5_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that peers' certificates must chain to.
    #[arg(long, env = "ERA5_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

/// `era5 coordinator`.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// gRPC address to listen on (e.g. 0.0.0.0:50051). Without TLS it must be a loopback
    /// address, unless --insecure-plaintext.
    #[arg(long, env = "ERA5_LISTEN", value_name = "ADDR")]
    pub listen: String,
    /// Redis URL holding all job and lease state (redis://[user:password@]host:port/, or
    /// rediss:// for TLS).
    #[arg(long, env = "ERA5_REDIS", value_name = "URL")]
    pub redis: String,
    /// PEM CA certificate that a rediss:// server's certificate must chain to (default: the
    /// system's roots).
    #[arg(long, env = "ERA5_REDIS_CA", value_name = "FILE")]
    pub redis_ca: Option<PathBuf>,
    /// TLS: client certificates are then required on the gRPC port, and the HTTP port serves
    /// https with the same certificate.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// TLS: accept only identities of this SPIFFE trust domain
    /// (spiffe://<trust-domain>/era5/...), whatever else the CA signed.
    #[arg(long, env = "ERA5_TRUST_DOMAIN", value_name = "DOMAIN")]
    pub trust_domain: Option<String>,
    /// Serve plaintext gRPC on a non-loopback address: anyone who reaches the port can then
    /// take and complete leases, cancel jobs and drain workers.
    #[arg(long, env = "ERA5_INSECURE_PLAINTEXT", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub insecure_plaintext: bool,
    /// The one source of this coordinator's jobs; a job naming another is refused.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Concurrent worker sessions; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "ERA5_MAX_WORKERS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=100_000), value_name = "N")]
    pub max_workers: u32,
    /// Objects in one job; a larger job is refused while it is being listed.
    #[arg(long, env = "ERA5_MAX_JOB_OBJECTS", default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000), value_name = "N")]
    pub max_job_objects: u64,
    /// Jobs not yet finished; more submissions are refused until one finishes.
    #[arg(long, env = "ERA5_MAX_ACTIVE_JOBS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000), value_name = "N")]
    pub max_active_jobs: u32,
    /// Finished jobs (complete, failed, cancelled) and workers unseen for this long are
    /// forgotten (e.g. 30d, 12h, 90m, 45s).
    #[arg(
        long,
        env = "ERA5_JOB_RETENTION",
        default_value = "30d",
        value_name = "DURATION"
    )]
    pub job_retention: String,
    /// HTTP/2 and TCP keepalive interval, seconds: a peer that vanished without a FIN is
    /// dropped after two of them.
    #[arg(long, env = "ERA5_KEEPALIVE_INTERVAL", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=300), hide = true)]
    pub keepalive_interval: u64,
    /// Deadline of each gRPC call but SubmitJob, seconds.
    #[arg(long, env = "ERA5_CALL_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600), hide = true)]
    pub call_timeout: u64,
    /// Deadline of a submitted job's listing, seconds.
    #[arg(long, env = "ERA5_LISTING_TIMEOUT", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400), hide = true)]
    pub listing_timeout: u64,
    /// Seconds a lease lives without renewal; workers renew every third of it.
    #[arg(long, env = "ERA5_LEASE_TTL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600), value_name = "SECS")]
    pub lease_ttl: u64,
    /// HTTP address for /metrics, /healthz, /readyz and the status page.
    #[arg(long, env = "ERA5_HTTP", value_name = "ADDR")]
    pub http: Option<String>,
    /// Most objects in one lease.
    #[arg(long, env = "ERA5_LEASE_OBJECTS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=100_000), hide = true)]
    pub lease_objects: u32,
    /// Largest lease (e.g. 8GiB).
    #[arg(long, env = "ERA5_LEASE_BYTES", default_value = "8GiB", hide = true)]
    pub lease_bytes: String,
    /// Failed attempts before a lease is dead.
    #[arg(long, env = "ERA5_LEASE_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100), hide = true)]
    pub lease_attempts: u32,
    /// Most live leases one worker may hold at once, over every job; at its cap a worker is
    /// granted nothing more until one of its leases ends.
    #[arg(long, env = "ERA5_MAX_LEASES_PER_WORKER", default_value_t = lease::model::DEFAULT_MAX_LEASES_PER_WORKER, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_leases_per_worker: u32,
}

/// `era5 worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Coordinator gRPC URL (http://host:port, or https://host:port with the TLS flags).
    #[arg(long, env = "ERA5_COORDINATOR", value_name = "URL")]
    pub coordinator: String,
    /// TLS: the worker's certificate names it (spiffe://<trust-domain>/era5/worker/<name>).
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The shared destination: a mirror directory, or s3://BUCKET[/PREFIX] (an object store
    /// every worker copies into; credentials from the standard AWS chain).
    #[arg(long, env = "ERA5_DEST", value_name = "DIR|s3://BUCKET[/PREFIX]")]
    pub dest: String,
    /// How to reach an s3:// destination.
    #[command(flatten)]
    pub dest_store: DestStoreArgs,
    /// Worker name, unique in the cluster, at most 63 characters of [a-z0-9._-] (default:
    /// the host name; with TLS, the certificate's name, which this must match if given).
    #[arg(long, env = "ERA5_NAME", value_name = "NAME")]
    pub name: Option<String>,
    /// Connections, requests in flight and their memory, for this process.
    #[command(flatten)]
    pub concurrency: ConcurrencyArgs,
    /// Where S3 endpoints' addresses come from (curl-style overrides).
    #[command(flatten)]
    pub resolve: ResolveArgs,
    /// Leases held at once.
    #[arg(long, env = "ERA5_MAX_LEASES", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256), value_name = "N")]
    pub max_leases: u32,
    /// TLS: how often (seconds) the certificate files are read again; a renewed certificate
    /// is used for every later connection, without a restart.
    #[arg(long, env = "ERA5_TLS_RELOAD_EVERY", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400), hide = true)]
    pub tls_reload_every: u64,
    /// HTTP address for /metrics, /healthz and /readyz.
    #[arg(long, env = "ERA5_HTTP", value_name = "ADDR")]
    pub http: Option<String>,
    /// A read that delivers no byte for this many seconds is dropped and retried.
    #[arg(long, env = "ERA5_STALL_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600), hide = true)]
    pub stall_timeout: u64,
    /// A response slower than this per second on average is dropped and retried; 0: off.
    #[arg(long, env = "ERA5_MIN_RATE", default_value = "64KiB", hide = true)]
    pub min_rate: String,
    /// Seconds of waiting that --min-rate averages over.
    #[arg(long, env = "ERA5_MIN_RATE_WINDOW", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600), hide = true)]
    pub min_rate_window: u64,
    /// Verification: size, etag or full.
    #[arg(long, env = "ERA5_VERIFY", default_value = "full", value_parser = ["size", "etag", "full"], hide = true)]
    pub verify: String,
    /// Fail an object whose S3 checksum contradicts the ETag that verified its bytes.
    #[arg(long, env = "ERA5_STRICT_CHECKSUMS", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new(), hide = true)]
    pub strict_checksums: bool,
    /// First retry backoff ceiling, milliseconds.
    #[arg(long, env = "ERA5_RETRY_BASE_MS", default_value_t = 200, hide = true)]
    pub retry_base_ms: u64,
    /// HTTP/2 and TCP keepalive interval towards the coordinator, seconds.
    #[arg(long, env = "ERA5_KEEPALIVE_INTERVAL", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=300), hide = true)]
    pub keepalive_interval: u64,
    /// Deadline of each call to the coordinator, seconds.
    #[arg(long, env = "ERA5_RPC_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600), hide = true)]
    pub rpc_timeout: u64,
}

/// `--coordinator URL` and TLS, shared by the operator commands.
#[derive(Debug, Args)]
pub struct CoordinatorUrl {
    /// Coordinator gRPC URL (http://host:port, or https://host:port with the TLS flags).
    #[arg(long, env = "ERA5_COORDINATOR", value_name = "URL")]
    pub coordinator: String,
    /// TLS: an operator's certificate (spiffe://<trust-domain>/era5/operator/<name>).
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Deadline of each call to the coordinator but `submit`'s, seconds.
    #[arg(long, env = "ERA5_RPC_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600), hide = true)]
    pub rpc_timeout: u64,
    /// Print the answer as one JSON document (docs/schemas/).
    #[arg(long, env = "ERA5_JSON", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub json: bool,
}

/// Where a submitted job's objects come from: by default, the coordinator's source.
#[derive(Debug, Args)]
pub struct SubmitSourceArgs {
    /// Bucket; when given it must be the coordinator's (default: the coordinator's).
    #[arg(long, env = "ERA5_BUCKET")]
    pub bucket: Option<String>,
    /// S3 endpoint; when given it must be the coordinator's (default: the coordinator's).
    #[arg(long, env = "ERA5_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,
}

/// `era5 submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The coordinator.
    #[command(flatten)]
    pub coordinator: CoordinatorUrl,
    /// Which objects.
    #[command(flatten)]
    pub selection: SelectionArgs,
    /// Where from (the coordinator's source unless given).
    #[command(flatten)]
    pub source: SubmitSourceArgs,
    /// Follow the job; exit 0 when it completes, 1 when anything ends dead.
    #[arg(long, env = "ERA5_WAIT", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub wait: bool,
    /// Make a standing job: the coordinator lists the selection again every --interval and
    /// adds leases for new or changed objects (`--end latest` grows with the archive), until
    /// `era5 cancel`.
    #[arg(long, env = "ERA5_FOLLOW", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub follow: bool,
    /// Time between a standing job's passes (e.g. 6h, 30m, 90s; default 6h).
    #[arg(long, env = "ERA5_INTERVAL", value_name = "DUR")]
    pub interval: Option<String>,
    /// A fleet-wide budget for this job: the coordinator shares RATE among the workers that
    /// hold the job's leases, as they come and go. `--bwlimit`'s syntax, timetables included
    /// (in the coordinator's local time). No budget by default.
    #[arg(long, env = "ERA5_JOB_BWLIMIT", value_name = "RATE")]
    pub bwlimit: Option<String>,
}

/// `era5 status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The coordinator.
    #[command(flatten)]
    pub coordinator: CoordinatorUrl,
    /// One job: its summary, workers and first dead leases; active and recent jobs when omitted.
    #[arg(value_name = "JOB")]
    pub job: Option<String>,
    /// Refresh every two seconds until interrupted.
    #[arg(long, action = ArgAction::SetTrue)]
    pub watch: bool,
    /// List JOB's leases too, fetched page by page.
    #[arg(long, env = "ERA5_LEASES", action = ArgAction::SetTrue, value_parser = FalseyValueParser::new())]
    pub leases: bool,
    /// Only JOB's leases in this state (implies --leases).
    #[arg(long, env = "ERA5_STATE", value_name = "STATE", value_parser = ["pending", "leased", "done", "dead"])]
    pub state: Option<String>,
    /// Leases per request to the coordinator.
    #[arg(long, env = "ERA5_PAGE_SIZE", value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: u32,
    /// Finished jobs listed besides those still running (without JOB).
    #[arg(long, env = "ERA5_RECENT", value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub recent: u32,
}

/// `era5 cancel`, `era5 retry`.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// The coordinator.
    #[command(flatten)]
    pub coordinator: CoordinatorUrl,
    /// Job id.
    #[arg(value_name = "JOB")]
    pub job: String,
}

/// `era5 drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The coordinator.
    #[command(flatten)]
    pub coordinator: CoordinatorUrl,
    /// Worker name (with TLS, the name in the worker's certificate).
    #[arg(value_name = "WORKER")]
    pub worker: String,
}
