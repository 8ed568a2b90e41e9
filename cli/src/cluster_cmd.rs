//! The cluster commands: `era5 coordinator` and `era5 worker` (long-running) here, and the
//! operator commands (gRPC clients): `submit` in `submit.rs`; `status`, `jobs`, `cancel`,
//! `retry` and `drain` in `operator.rs`.
//!
//! Every command first turns its flags into a checked configuration, before any runtime
//! starts: bad values, missing or unreadable TLS files, an `https://` URL without them, or a
//! plaintext coordinator on a non-loopback address are exit 2 with one line saying why.
//! Answers from the coordinator map to exit statuses through the coordinator crate's one
//! table (`coordinator::error::exit_status`).

mod operator;
mod output;
pub mod stop;
mod submit;

pub use operator::{cancel, drain, jobs, operator_config, retry, status};
pub use submit::{check_submit, submit};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::error::InputError;
use common::redact::{redact_url, scrub_url_from};
use common::units::parse_size;
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
use tokio_util::sync::CancellationToken;
use transport::{DEFAULT_ENDPOINT, PoolConfig, SourceConfig};
use worker::agent::AgentConfig;

use crate::args::{CoordinatorArgs, TlsArgs, WorkerArgs};
use crate::exit::{ExitCode, Failure};

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
