//! The cluster commands: `era5 coordinator` and `era5 worker` (long-running), and the operator
//! commands `submit`, `status`, `jobs`, `cancel`, `retry` and `drain` (gRPC clients).
//!
//! Every command first turns its flags into a checked configuration, before any runtime
//! starts: bad values, missing or unreadable TLS files, an `https://` URL without them, or a
//! plaintext coordinator on a non-loopback address are exit 2 with one line saying why.
//! Answers from the coordinator map to exit statuses through the coordinator crate's one
//! table (`coordinator::error::exit_status`).

mod output;
pub mod stop;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::error::InputError;
use common::redact::{redact_url, scrub_url_from};
use common::selection::Selection;
use common::units::{counted, human_bytes, parse_size};
use coordinator::RedisStore;
use coordinator::limits::Caps;
use coordinator::server::{Server, Settings};
use coordinator::tls::ServerTls;
use engine::{EngineConfig, VerifyMode};
use lease::LeaseStore;
use lease::model::LeasePolicy;
use lease::planner::ItemLimits;
use proto::channel::{CoordinatorChannel, TlsFiles, TlsMaterial};
use proto::identity::Role;
use proto::v1 as pb;
use proto::v1::operator_client::OperatorClient;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use transport::{DEFAULT_ENDPOINT, PoolConfig, SourceConfig};
use worker::agent::AgentConfig;

use self::output::{
    clean, follow_line, job_json, jobs_table, lease_json, lease_row, leases_header, worker_json,
    workers_table,
};
use crate::args::{
    CoordinatorArgs, CoordinatorUrl, DrainArgs, JobArgs, StatusArgs, SubmitArgs, TlsArgs,
    WorkerArgs,
};
use crate::exit::{ExitCode, Failure};

/// Deadline of `submit`'s call: the coordinator lists the bucket within its own listing
/// deadline (10 minutes by default) and plans within two more.
const SUBMIT_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// A bad flag value, as every command says it (`InputError::BadValue`).
fn bad(flag: &'static str, value: &str, reason: impl std::fmt::Display) -> Failure {
    input(InputError::BadValue {
        flag,
        value: value.to_string(),
        reason: reason.to_string(),
    })
}

/// Bad input: exit 2, with the error's one line.
fn input(error: InputError) -> Failure {
    Failure::Input(error.to_string())
}

fn socket_addr(flag: &'static str, value: &str) -> Result<SocketAddr, Failure> {
    value.parse().map_err(|_| {
        bad(
            flag,
            value,
            "expected HOST:PORT with an IP address, e.g. 0.0.0.0:50051",
        )
    })
}

/// A channel error as one line, with any credentials in `url` hidden.
fn channel_failure(error: proto::Error, url: &str) -> Failure {
    Failure::Input(scrub_url_from(&error.to_string(), url))
}

/// The TLS files of a command, read and checked (`None` without TLS flags).
fn tls_material(args: &TlsArgs) -> Result<Option<TlsMaterial>, Failure> {
    let files = TlsFiles::from_flags(
        args.tls_cert.as_deref(),
        args.tls_key.as_deref(),
        args.tls_ca.as_deref(),
    )
    .map_err(|e| Failure::Input(e.to_string()))?;
    files
        .map(|files| files.read().map_err(|e| Failure::Input(e.to_string())))
        .transpose()
}

/// Everything `era5 coordinator` needs, checked.
pub struct CoordinatorConfig {
    listen: SocketAddr,
    http: Option<SocketAddr>,
    redis: coordinator::redis_store::RedisTarget,
    redis_shown: String,
    policy: LeasePolicy,
    settings: Settings,
}

/// Checks `era5 coordinator`'s flags and reads its files (before the runtime starts).
pub fn coordinator_config(args: &CoordinatorArgs) -> Result<CoordinatorConfig, Failure> {
    let listen = socket_addr("--listen", &args.listen)?;
    let http = args
        .http
        .as_deref()
        .map(|http| socket_addr("--http", http))
        .transpose()?;
    let tls = tls_material(&args.tls)?;
    match (&tls, args.insecure_plaintext) {
        (Some(_), true) => {
            return Err(Failure::Input(
                "--insecure-plaintext contradicts --tls-cert, --tls-key and --tls-ca: choose one"
                    .into(),
            ));
        }
        (None, false) if !listen.ip().is_loopback() => {
            return Err(Failure::Input(format!(
                "refusing to serve plaintext gRPC on {listen}, which is not a loopback address: give --tls-cert, --tls-key and --tls-ca, or --insecure-plaintext to let anyone who reaches the port take leases, cancel jobs and drain workers"
            )));
        }
        _ => {}
    }
    let trust_domain = match (&args.trust_domain, &tls) {
        (None, _) => None,
        (Some(domain), None) => {
            return Err(bad(
                "--trust-domain",
                domain,
                "it pins the identities of client certificates: give --tls-cert, --tls-key and --tls-ca too",
            ));
        }
        (Some(domain), Some(_)) => {
            let valid = !domain.is_empty()
                && domain.len() <= 255
                && domain
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c));
            if !valid {
                return Err(bad(
                    "--trust-domain",
                    domain,
                    "expected a SPIFFE trust domain such as era5.example.org (lowercase letters, digits, '.', '-', '_')",
                ));
            }
            Some(domain.clone())
        }
    };
    let server_tls = tls
        .as_ref()
        .map(ServerTls::new)
        .transpose()
        .map_err(|e| Failure::Input(e.to_string()))?;
    let redis_ca = args
        .redis_ca
        .as_deref()
        .map(|path| {
            std::fs::read(path).map_err(|e| bad("--redis-ca", &path.display().to_string(), e))
        })
        .transpose()?;
    let redis = coordinator::redis_store::target(&args.redis, redis_ca.as_deref())
        .map_err(|e| Failure::Input(scrub_url_from(&e.to_string(), &args.redis)))?;
    let lease_bytes = parse_size(&args.lease_bytes).ok_or_else(|| {
        bad(
            "--lease-bytes",
            &args.lease_bytes,
            "expected a size such as 8GiB",
        )
    })?;
    let job_retention = common::units::parse_duration(&args.job_retention)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            bad(
                "--job-retention",
                &args.job_retention,
                "expected a duration such as 30d, 12h, 1h30m or 45s",
            )
        })?;
    crate::config::check_endpoint(&args.source.endpoint).map_err(input)?;
    let source = SourceConfig {
        bucket: args.source.bucket.clone(),
        endpoint: Some(args.source.endpoint.clone()),
        region: args.source.region.clone(),
        sign: args.source.sign,
        env_credentials: true,
        pool: PoolConfig {
            resolver: crate::config::resolver(&args.source.resolve.overrides)
                .map_err(|e| Failure::Input(e.to_string()))?,
            extra_roots: crate::config::ca_bundle().map_err(|e| Failure::Input(e.to_string()))?,
            ..PoolConfig::new(8)
        },
    };
    Ok(CoordinatorConfig {
        listen,
        http,
        redis,
        redis_shown: redact_url(&args.redis),
        policy: LeasePolicy {
            ttl: Duration::from_secs(args.lease_ttl),
            max_attempts: args.lease_attempts,
            max_leases_per_worker: args.max_leases_per_worker,
            ..LeasePolicy::default()
        },
        settings: Settings {
            limits: ItemLimits {
                max_bytes: lease_bytes,
                max_objects: args.lease_objects as usize,
            },
            source,
            caps: Caps {
                max_workers: args.max_workers as usize,
                max_job_objects: args.max_job_objects as usize,
                max_active_jobs: args.max_active_jobs as usize,
                job_retention,
                call_deadline: Duration::from_secs(args.call_timeout),
                listing_deadline: Duration::from_secs(args.listing_timeout),
                ..Caps::default()
            },
            keepalive: Duration::from_secs(args.keepalive_interval),
            tls: server_tls,
            trust_domain,
        },
    })
}

/// `era5 coordinator`: serves until `stop` fires.
pub async fn coordinator(
    config: CoordinatorConfig,
    stop: CancellationToken,
) -> Result<ExitCode, Failure> {
    let listen_failed = |addr: SocketAddr, e: std::io::Error| {
        Failure::Runtime(format!("cannot listen on {addr}: {e}"))
    };
    let grpc = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| listen_failed(config.listen, e))?;
    let http = match config.http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| listen_failed(addr, e))?,
        ),
        None => None,
    };
    let source = coordinator::service::source_spec(&config.settings.source);
    let store: Arc<dyn LeaseStore> = Arc::new(
        RedisStore::with_target(config.redis, config.policy.clone()).pinned_to(source.clone()),
    );
    let local = |listener: &tokio::net::TcpListener| {
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    };
    let http_addr = http.as_ref().map_or("-".to_string(), local);
    tracing::info!(
        grpc = %local(&grpc),
        http = %http_addr,
        tls = config.settings.tls.is_some(),
        lease_ttl = config.policy.ttl.as_secs(),
        redis = %config.redis_shown,
        bucket = %source.bucket,
        endpoint = %redact_url(config.settings.source.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT)),
        "coordinator started"
    );
    Server {
        grpc,
        http,
        store,
        settings: config.settings,
    }
    .run(stop)
    .await
    .map_err(|e| Failure::Runtime(e.to_string()))?;
    Ok(ExitCode::Success)
}

fn host_name() -> String {
    let uname = rustix::system::uname();
    match uname.nodename().to_str() {
        Ok(name) if !name.is_empty() => name.to_ascii_lowercase(),
        _ => format!("worker-{}", std::process::id()),
    }
}

/// A coordinator channel from `--coordinator` and the TLS flags, checked (https ⇔ TLS).
fn channel(
    url: &str,
    tls: &TlsArgs,
    keepalive: Duration,
    rpc_timeout: Option<Duration>,
) -> Result<CoordinatorChannel, Failure> {
    let channel = CoordinatorChannel {
        url: url.to_string(),
        tls: tls_material(tls)?,
        keepalive,
        rpc_timeout,
    };
    channel.endpoint().map_err(|e| channel_failure(e, url))?;
    Ok(channel)
}

/// Checks `era5 worker`'s flags: the channel, and the worker's name (with TLS, its
/// certificate's).
pub fn worker_config(args: &WorkerArgs) -> Result<AgentConfig, Failure> {
    let channel = channel(
        &args.coordinator,
        &args.tls,
        Duration::from_secs(args.keepalive_interval),
        Some(Duration::from_secs(args.rpc_timeout)),
    )?;
    let name = if let Some(tls) = &channel.tls {
        let identity = tls.identity().map_err(|e| Failure::Input(e.to_string()))?;
        if identity.role != Role::Worker {
            return Err(Failure::Input(format!(
                "--tls-cert `{}` is {identity}, not a worker's certificate (spiffe://<trust-domain>/era5/worker/<name>)",
                tls.files.cert.display()
            )));
        }
        if let Some(name) = &args.name
            && *name != identity.name
        {
            return Err(bad(
                "--name",
                name,
                format!(
                    "with TLS the worker's name is its certificate's, `{}`",
                    identity.name
                ),
            ));
        }
        identity.name
    } else {
        let name = args.name.clone().unwrap_or_else(host_name);
        proto::identity::check_name(&name).map_err(|e| {
            Failure::Input(format!(
                "invalid --name: {e} (the default is the host name)"
            ))
        })?;
        name
    };
    if let Some(http) = &args.http {
        socket_addr("--http", http)?;
    }
    let store = if s3dest::is_s3_url(&args.dest) {
        Some(
            crate::config::dest_store(
                &args.dest,
                &args.dest_store,
                args.concurrency.connections as usize,
            )
            .map_err(|e| Failure::Input(e.to_string()))?,
        )
    } else {
        let dir = std::path::Path::new(&args.dest);
        if dir.exists() && !dir.is_dir() {
            return Err(bad("--dest", &args.dest, "exists and is not a directory"));
        }
        None
    };
    let verify: VerifyMode = args.verify.parse().map_err(Failure::Input)?;
    let min_rate = crate::config::min_rate(&args.min_rate, args.min_rate_window)
        .map_err(|e| Failure::Input(e.to_string()))?;
    let mut engine = EngineConfig {
        stall_timeout: Duration::from_secs(args.stall_timeout),
        min_rate,
        verify,
        on_contradiction: crate::config::on_contradiction(args.strict_checksums),
        retry: transport::retry::RetryPolicy {
            base: Duration::from_millis(args.retry_base_ms),
            ..Default::default()
        },
        ..EngineConfig::default()
    };
    let connections = crate::config::concurrency(&args.concurrency, &mut engine)
        .map_err(|e| Failure::Input(e.to_string()))?;
    let resolver = crate::config::resolver(&args.resolve.overrides)
        .map_err(|e| Failure::Input(e.to_string()))?;
    let extra_roots = crate::config::ca_bundle().map_err(|e| Failure::Input(e.to_string()))?;
    Ok(AgentConfig {
        channel,
        dest: args.dest.clone().into(),
        store,
        name,
        connections,
        resolver,
        extra_roots,
        max_leases: args.max_leases as usize,
        tls_reload_every: Duration::from_secs(args.tls_reload_every),
        engine,
    })
}

/// `era5 worker`: works until `stop` fires, then releases what it holds.
pub async fn worker(
    config: AgentConfig,
    http: Option<String>,
    stop: CancellationToken,
) -> Result<ExitCode, Failure> {
    let http = match &http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(socket_addr("--http", addr)?)
                .await
                .map_err(|e| Failure::Runtime(format!("cannot listen on {addr}: {e}")))?,
        ),
        None => None,
    };
    worker::agent::run(config, http, stop)
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    Ok(ExitCode::Success)
}

/// An operator command's connection to the coordinator.
pub struct Operator {
    client: OperatorClient<Channel>,
    url: String,
    rpc_timeout: Duration,
}

/// Checks an operator command's `--coordinator` and TLS flags (before the runtime starts).
pub fn operator_config(args: &CoordinatorUrl) -> Result<CoordinatorChannel, Failure> {
    channel(
        &args.coordinator,
        &args.tls,
        proto::channel::DEFAULT_KEEPALIVE,
        None,
    )
}

impl Operator {
    /// Connects (lazily: the first call reports an unreachable coordinator).
    fn connect(channel: &CoordinatorChannel, rpc_timeout: u64) -> Result<Self, Failure> {
        let endpoint = channel
            .endpoint()
            .map_err(|e| channel_failure(e, &channel.url))?;
        Ok(Self {
            client: OperatorClient::new(endpoint.connect_lazy()),
            url: channel.url.clone(),
            rpc_timeout: Duration::from_secs(rpc_timeout),
        })
    }

    /// `message` as a request with the command's deadline.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.rpc_timeout);
        request
    }

    /// A refused or failed call as a failure: the exit status from the code (2 when the
    /// request was wrong, 1 otherwise), the coordinator's message cleaned for the terminal.
    fn failure(&self, status: tonic::Status) -> Failure {
        let mut message = clean(status.message()).into_owned();
        if let Some(source) = std::error::Error::source(&status) {
            let chain = common::error::chain(source);
            if !message.contains(&chain) {
                message = format!("{message}: {chain}");
            }
        }
        // tonic says "transport error" at each level of the chain; once is enough.
        while message.contains("transport error: transport error") {
            message = message.replacen("transport error: transport error", "transport error", 1);
        }
        let mut message = scrub_url_from(&message, &self.url);
        // A plaintext client meeting a TLS coordinator sees only a broken connection (closed,
        // or the call cancelled under it, whichever hyper notices first).
        if self.url.starts_with("http://")
            && matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::Cancelled
            )
            && message.contains("transport error")
        {
            message.push_str(
                "; if the coordinator serves TLS, use an https:// URL with --tls-cert, --tls-key and --tls-ca",
            );
        }
        match coordinator::error::exit_status(status.code()) {
            2 => Failure::Input(message),
            _ => Failure::Runtime(format!(
                "coordinator at {}: {message}",
                redact_url(&self.url)
            )),
        }
    }
}

/// Validates `era5 submit`'s selection like `era5 sync` does.
pub fn check_submit(args: &SubmitArgs) -> Result<CoordinatorChannel, Failure> {
    Selection::parse(
        &args.selection.product,
        &args.selection.var,
        &args.selection.grid,
        &args.selection.start,
        &args.selection.end,
        common::dates::today_utc(),
    )
    .map_err(|e| Failure::Input(e.to_string()))?;
    if let Some(endpoint) = &args.source.endpoint {
        crate::config::check_endpoint(endpoint).map_err(input)?;
    }
    follow_interval(args)?;
    operator_config(&args.coordinator)
}

/// `--follow [--interval DUR]` as milliseconds; `None` for a one-off job.
fn follow_interval(args: &SubmitArgs) -> Result<Option<u64>, Failure> {
    match (&args.interval, args.follow) {
        (Some(interval), false) => Err(bad("--interval", interval, "only applies with --follow")),
        (_, true) if args.wait => Err(Failure::Input(
            "--wait cannot be combined with --follow: a standing job never ends (era5 status shows it)"
                .into(),
        )),
        (interval, true) => {
            let text = interval
                .as_deref()
                .unwrap_or(crate::config::DEFAULT_INTERVAL);
            let interval = crate::config::parse_interval(text).map_err(input)?;
            Ok(Some(interval.as_millis() as u64))
        }
        (None, false) => Ok(None),
    }
}

/// `submit --bwlimit`, checked here so that a bad one is a bad-input exit before any call;
/// empty when there is none.
fn job_budget(text: Option<&str>) -> Result<String, Failure> {
    let Some(text) = text else {
        return Ok(String::new());
    };
    common::bwlimit::BwLimit::parse(text).map_err(|error| bad("--bwlimit", text, error))?;
    Ok(text.trim().to_string())
}

/// Writes `text` and a newline to stdout; a closed stdout ends the command quietly (`| head`).
fn print_line(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    crate::exit::written(
        writeln!(stdout, "{text}").and_then(|()| stdout.flush()),
        "to stdout",
    )
}

/// Writes a line to stderr, ignoring a closed stderr.
fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// `era5 submit`.
pub async fn submit(args: SubmitArgs, channel: CoordinatorChannel) -> Result<ExitCode, Failure> {
    let mut operator = Operator::connect(&channel, args.coordinator.rpc_timeout)?;
    let mut request = tonic::Request::new(pb::SubmitJobRequest {
        selection: Some(pb::Selection {
            products: args.selection.product.clone(),
            variables: args.selection.var.clone(),
            start: args.selection.start.clone(),
            end: args.selection.end.clone(),
            grids: args.selection.grid.clone(),
        }),
        // Empty fields: the coordinator's own source.
        source: Some(pb::Source {
            bucket: args.source.bucket.clone().unwrap_or_default(),
            endpoint: args.source.endpoint.clone().unwrap_or_default(),
        }),
        follow_interval_ms: follow_interval(&args)?,
        bwlimit: job_budget(args.bwlimit.as_deref())?,
    });
    request.set_timeout(SUBMIT_DEADLINE);
    let response = operator
        .client
        .submit_job(request)
        .await
        .map_err(|status| operator.failure(status))?
        .into_inner();
    // Warnings come from the coordinator: printed only once cleaned of control characters.
    for warning in &response.warnings {
        note(&format!("era5: warning: {}", clean(warning)));
    }
    note(&format!(
        "submitted: {}, {}, {}",
        counted(u64::from(response.leases), "lease", "leases"),
        counted(response.objects, "object", "objects"),
        human_bytes(response.bytes)
    ));
    let job_id = clean(&response.job_id).into_owned();
    // The job id alone (a script's `JOB=$(era5 submit ...)`), or the submission as JSON.
    let answer = |state: Option<&str>| {
        if args.coordinator.json {
            let mut answer = json!({
                "job": job_id,
                "leases": response.leases,
                "objects": response.objects,
                "bytes": response.bytes,
                "warnings": response.warnings.iter().map(|w| clean(w)).collect::<Vec<_>>(),
            });
            if let Some(state) = state {
                answer["state"] = json!(state);
            }
            answer.to_string()
        } else {
            job_id.clone()
        }
    };
    if !args.wait {
        print_line(&answer(None))?;
        return Ok(ExitCode::Success);
    }
    let state = follow(&mut operator, &job_id).await?;
    print_line(&answer(Some(&state)))?;
    Ok(if state == "complete" {
        ExitCode::Success
    } else {
        ExitCode::Failed
    })
}

/// Longest `submit --wait` stays silent off a terminal while only the bytes move.
const QUIET_PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// Dead leases `submit --wait` and the status summary print before pointing to `--state dead`.
const DEAD_SHOWN: u32 = 10;

impl Operator {
    /// One `GetJob` call: the summary, and `page_size` leases (0: none) from `page_token`.
    async fn get_job(
        &mut self,
        job_id: &str,
        page_size: u32,
        state: Option<&str>,
        page_token: String,
    ) -> Result<pb::GetJobResponse, tonic::Status> {
        let request = self.request(pb::GetJobRequest {
            job_id: job_id.to_string(),
            page_size: Some(page_size),
            page_token,
            state: state.unwrap_or_default().to_string(),
        });
        self.client
            .get_job(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Up to `limit` of a job's leases in `state`, page by page, and whether more exist.
    async fn first_leases(
        &mut self,
        job_id: &str,
        state: &str,
        limit: u32,
    ) -> Result<(Vec<pb::LeaseView>, bool), Failure> {
        let mut leases = Vec::new();
        let mut token = String::new();
        loop {
            let page = match self.get_job(job_id, limit, Some(state), token).await {
                Ok(page) => page,
                Err(status) => return Err(self.failure(status)),
            };
            leases.extend(page.leases);
            if leases.len() >= limit as usize || page.next_page_token.is_empty() {
                let more = leases.len() > limit as usize || !page.next_page_token.is_empty();
                leases.truncate(limit as usize);
                return Ok((leases, more));
            }
            token = page.next_page_token;
        }
    }
}

/// Polls a job's summary (never its leases) until it is final; returns its final state.
async fn follow(operator: &mut Operator, job_id: &str) -> Result<String, Failure> {
    // On a terminal the line is updated in place every second; elsewhere (a log, a CI job) a
    // line is written when the state or the lease counts change, and at most every
    // `QUIET_PROGRESS_EVERY` for the bytes alone.
    let terminal = std::io::stderr().is_terminal();
    let mut last: Option<(String, [u32; 4])> = None;
    let mut last_written = tokio::time::Instant::now();
    loop {
        let detail = match operator.get_job(job_id, 0, None, String::new()).await {
            Ok(detail) => detail,
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) =>
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(status) => return Err(operator.failure(status)),
        };
        let job = detail.job.unwrap_or_default();
        let counts = job.leases.unwrap_or_default();
        let line = format!(
            "job {}: {} | leases {} pending, {} leased, {} done, {} dead | {} of {}",
            clean(&job.job_id),
            clean(&job.state),
            counts.pending,
            counts.leased,
            counts.done,
            counts.dead,
            human_bytes(job.bytes_done),
            human_bytes(job.bytes_total)
        );
        let finished = matches!(job.state.as_str(), "complete" | "failed" | "cancelled");
        let key = (
            job.state.clone(),
            [counts.pending, counts.leased, counts.done, counts.dead],
        );
        if terminal {
            let end = if finished { "\n" } else { "" };
            let _ = write!(std::io::stderr(), "\r\x1b[K{line}{end}");
        } else if last.as_ref() != Some(&key)
            || finished
            || last_written.elapsed() >= QUIET_PROGRESS_EVERY
        {
            note(&line);
            last_written = tokio::time::Instant::now();
        }
        last = Some(key);
        if finished {
            if counts.dead > 0 {
                let (dead, more) = operator.first_leases(job_id, "dead", DEAD_SHOWN).await?;
                for lease in &dead {
                    note(&format!(
                        "dead lease {} ({} {}..{}): {}",
                        clean(&lease.item_id),
                        clean(&lease.product),
                        clean(&lease.start),
                        clean(&lease.end),
                        clean(&lease.last_error)
                    ));
                }
                if more {
                    note(&format!(
                        "... {} dead leases in all: era5 status {} --state dead",
                        counts.dead,
                        clean(job_id)
                    ));
                }
            }
            return Ok(job.state);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `era5 status`.
pub async fn status(args: StatusArgs, channel: CoordinatorChannel) -> Result<ExitCode, Failure> {
    if args.job.is_none() && (args.leases || args.state.is_some()) {
        return Err(Failure::Input(
            "--leases and --state list one job's leases: give the JOB".into(),
        ));
    }
    let mut operator = Operator::connect(&channel, args.coordinator.rpc_timeout)?;
    loop {
        match &args.job {
            Some(job_id) if args.leases || args.state.is_some() => {
                job_with_leases(&mut operator, &args, job_id).await?;
            }
            Some(job_id) => {
                let text = job_summary(&mut operator, &args, job_id).await?;
                print_line(&text)?;
            }
            None => {
                let request = operator.request(pb::ListJobsRequest {
                    recent: args.recent,
                });
                let listing = operator
                    .client
                    .list_jobs(request)
                    .await
                    .map_err(|status| operator.failure(status))?
                    .into_inner();
                let (jobs, workers) = (&listing.jobs, &listing.workers);
                let text = if args.coordinator.json {
                    json!({
                        "jobs": jobs.iter().map(job_json).collect::<Vec<_>>(),
                        "jobs_total": listing.jobs_total,
                        "workers": workers.iter().map(worker_json).collect::<Vec<_>>(),
                    })
                    .to_string()
                } else {
                    format!(
                        "{}{}\n{}",
                        jobs_table(jobs),
                        jobs_not_shown(jobs.len(), listing.jobs_total),
                        workers_table(workers)
                    )
                };
                print_line(&text)?;
            }
        }
        if !args.watch {
            return Ok(ExitCode::Success);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// `(N older finished jobs not shown; --recent N)` when the listing left some out.
fn jobs_not_shown(shown: usize, total: u64) -> String {
    match total.saturating_sub(shown as u64) {
        0 => String::new(),
        hidden => format!("({hidden} older finished jobs not shown; --recent N shows more)\n"),
    }
}

/// `era5 status JOB`: the summary, workers, and the first dead leases (one small read).
async fn job_summary(
    operator: &mut Operator,
    args: &StatusArgs,
    job_id: &str,
) -> Result<String, Failure> {
    let detail = match operator.get_job(job_id, 0, None, String::new()).await {
        Ok(detail) => detail,
        Err(status) => return Err(operator.failure(status)),
    };
    let job = detail.job.clone().unwrap_or_default();
    let counts = job.leases.unwrap_or_default();
    let (dead, more_dead) = if counts.dead > 0 {
        operator.first_leases(job_id, "dead", DEAD_SHOWN).await?
    } else {
        (Vec::new(), false)
    };
    Ok(if args.coordinator.json {
        json!({
            "jobs": [job_json(&job)],
            "dead_leases": dead.iter().map(lease_json).collect::<Vec<_>>(),
            "workers": detail.workers.iter().map(worker_json).collect::<Vec<_>>(),
        })
        .to_string()
    } else {
        let mut text = jobs_table(std::slice::from_ref(&job));
        if let Some(follow) = &job.follow {
            text.push_str(&follow_line(follow));
        }
        if !job.bwlimit.is_empty() {
            text.push_str(&format!(
                "fleet bandwidth budget: {}, shared among the workers holding its leases\n",
                clean(&job.bwlimit)
            ));
        }
        text.push_str(&format!(
            "({}: --leases lists them, --state STATE only those in one state)\n",
            counted(
                u64::from(counts.pending + counts.leased + counts.done + counts.dead),
                "lease",
                "leases"
            )
        ));
        if !dead.is_empty() {
            text.push_str(&format!(
                "\nDEAD LEASES{}\n",
                if more_dead {
                    format!(
                        " (first {DEAD_SHOWN} of {}; --state dead lists all)",
                        counts.dead
                    )
                } else {
                    String::new()
                }
            ));
            text.push_str(&leases_header());
            for lease in &dead {
                text.push_str(&lease_row(lease));
            }
        }
        format!("{text}\n{}", workers_table(&detail.workers))
    })
}

/// `era5 status JOB --leases [--state S]`: every lease, a page per request. Text goes out as
/// the pages arrive; JSON is printed whole at the end, in the shape of the summary plus
/// `"leases"`.
async fn job_with_leases(
    operator: &mut Operator,
    args: &StatusArgs,
    job_id: &str,
) -> Result<(), Failure> {
    let mut token = String::new();
    let mut first: Option<pb::GetJobResponse> = None;
    let mut leases = Vec::new();
    loop {
        let mut page = match operator
            .get_job(job_id, args.page_size, args.state.as_deref(), token)
            .await
        {
            Ok(page) => page,
            Err(status) => return Err(operator.failure(status)),
        };
        let mut stdout = std::io::stdout().lock();
        if first.is_none() && !args.coordinator.json {
            let job = page.job.clone().unwrap_or_default();
            crate::exit::written(
                write!(stdout, "{}\n{}", jobs_table(&[job]), leases_header()),
                "the leases",
            )?;
        }
        if args.coordinator.json {
            leases.append(&mut page.leases);
        } else {
            for lease in &page.leases {
                crate::exit::written(stdout.write_all(lease_row(lease).as_bytes()), "the leases")?;
            }
        }
        token = std::mem::take(&mut page.next_page_token);
        first.get_or_insert(page);
        if token.is_empty() {
            break;
        }
    }
    let first = first.unwrap_or_default();
    let text = if args.coordinator.json {
        let job = first.job.clone().unwrap_or_default();
        json!({
            "jobs": [job_json(&job)],
            "leases": leases.iter().map(lease_json).collect::<Vec<_>>(),
            "workers": first.workers.iter().map(worker_json).collect::<Vec<_>>(),
        })
        .to_string()
    } else {
        format!("\n{}", workers_table(&first.workers))
    };
    print_line(&text)
}

/// `era5 jobs`.
pub async fn jobs(args: CoordinatorUrl, channel: CoordinatorChannel) -> Result<ExitCode, Failure> {
    let mut operator = Operator::connect(&channel, args.rpc_timeout)?;
    let request = operator.request(pb::ListJobsRequest { recent: 0 });
    let listing = operator
        .client
        .list_jobs(request)
        .await
        .map_err(|status| operator.failure(status))?
        .into_inner();
    let text = if args.json {
        json!({
            "jobs": listing.jobs.iter().map(job_json).collect::<Vec<_>>(),
            "jobs_total": listing.jobs_total,
        })
        .to_string()
    } else {
        format!(
            "{}{}",
            jobs_table(&listing.jobs),
            jobs_not_shown(listing.jobs.len(), listing.jobs_total)
        )
    };
    print_line(&text)?;
    Ok(ExitCode::Success)
}

/// `era5 cancel`.
pub async fn cancel(args: JobArgs, channel: CoordinatorChannel) -> Result<ExitCode, Failure> {
    let mut operator = Operator::connect(&channel, args.coordinator.rpc_timeout)?;
    let request = operator.request(pb::CancelJobRequest {
        job_id: args.job.clone(),
    });
    operator
        .client
        .cancel_job(request)
        .await
        .map_err(|status| operator.failure(status))?;
    print_line(&if args.coordinator.json {
        json!({ "cancelled": clean(&args.job) }).to_string()
    } else {
        format!("cancelled {}", clean(&args.job))
    })?;
    Ok(ExitCode::Success)
}

/// `era5 retry`.
pub async fn retry(args: JobArgs, channel: CoordinatorChannel) -> Result<ExitCode, Failure> {
    let mut operator = Operator::connect(&channel, args.coordinator.rpc_timeout)?;
    let request = operator.request(pb::RetryDeadRequest {
        job_id: args.job.clone(),
    });
    let retried = operator
        .client
        .retry_dead(request)
        .await
        .map_err(|status| operator.failure(status))?
        .into_inner()
        .retried;
    print_line(&if args.coordinator.json {
        json!({ "job": clean(&args.job), "retried": retried }).to_string()
    } else {
        format!(
            "{retried} dead leases of {} back to pending",
            clean(&args.job)
        )
    })?;
    Ok(ExitCode::Success)
}

/// `era5 drain`.
pub async fn drain(args: DrainArgs, channel: CoordinatorChannel) -> Result<ExitCode, Failure> {
    let mut operator = Operator::connect(&channel, args.coordinator.rpc_timeout)?;
    let request = operator.request(pb::DrainWorkerRequest {
        worker: args.worker.clone(),
    });
    operator
        .client
        .drain_worker(request)
        .await
        .map_err(|status| operator.failure(status))?;
    print_line(&if args.coordinator.json {
        json!({ "draining": clean(&args.worker) }).to_string()
    } else {
        format!("draining {}", clean(&args.worker))
    })?;
    Ok(ExitCode::Success)
}
