//! The cluster commands: `era5 coordinator` and `era5 worker` (long-running), and the operator
//! commands `submit`, `status`, `jobs`, `cancel`, `retry` and `drain` (gRPC clients).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::selection::Selection;
use common::units::{human_bytes, parse_size};
use coordinator::model::LeasePolicy;
use coordinator::planner::ItemLimits;
use coordinator::server::Server;
use coordinator::{LeaseStore, RedisStore};
use proto::v1 as pb;
use proto::v1::operator_client::OperatorClient;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use worker::agent::AgentConfig;
use worker::{EngineConfig, VerifyMode};

use crate::args::{
    CoordinatorArgs, CoordinatorUrl, DrainArgs, JobArgs, StatusArgs, SubmitArgs, WorkerArgs,
};
use crate::{ExitCode, Failure};

fn bad(flag: &str, value: &str, reason: impl std::fmt::Display) -> Failure {
    Failure::Input(format!("invalid {flag} `{value}`: {reason}"))
}

fn socket_addr(flag: &str, value: &str) -> Result<SocketAddr, Failure> {
    value.parse().map_err(|_| {
        bad(
            flag,
            value,
            "expected HOST:PORT with an IP address, e.g. 0.0.0.0:50051",
        )
    })
}

fn check_url(flag: &str, value: &str) -> Result<(), Failure> {
    let uri: http::Uri = value.parse().map_err(|_| bad(flag, value, "not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(()),
        _ => Err(bad(flag, value, "expected http://host:port")),
    }
}

/// Stops on SIGTERM or Ctrl-C.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let Ok(mut terminate) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("stopping");
        cancel.cancel();
    });
    token
}

/// Validates `era5 coordinator` flags (before the runtime starts).
pub fn check_coordinator(args: &CoordinatorArgs) -> Result<(), Failure> {
    socket_addr("--listen", &args.listen)?;
    if let Some(http) = &args.http {
        socket_addr("--http", http)?;
    }
    redis::Client::open(args.redis.as_str())
        .map_err(|e| bad("--redis", &common::redact::redact_url(&args.redis), e))?;
    parse_size(&args.lease_bytes).ok_or_else(|| {
        bad(
            "--lease-bytes",
            &args.lease_bytes,
            "expected a size such as 8GiB",
        )
    })?;
    Ok(())
}

/// `era5 coordinator`.
pub async fn coordinator(args: CoordinatorArgs) -> Result<ExitCode, Failure> {
    let runtime_error = |e: std::io::Error| Failure::Runtime(e.to_string());
    let grpc = tokio::net::TcpListener::bind(socket_addr("--listen", &args.listen)?)
        .await
        .map_err(|e| Failure::Runtime(format!("cannot listen on {}: {e}", args.listen)))?;
    let http = match &args.http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(socket_addr("--http", addr)?)
                .await
                .map_err(|e| Failure::Runtime(format!("cannot listen on {addr}: {e}")))?,
        ),
        None => None,
    };
    let policy = LeasePolicy {
        ttl: Duration::from_secs(args.lease_ttl),
        max_attempts: args.lease_attempts,
        ..LeasePolicy::default()
    };
    let store: Arc<dyn LeaseStore> = Arc::new(
        RedisStore::connect_lazily(&args.redis, policy)
            .map_err(|e| Failure::Input(e.to_string()))?,
    );
    let limits = ItemLimits {
        max_bytes: parse_size(&args.lease_bytes).unwrap_or(8 << 30),
        max_objects: args.lease_objects as usize,
    };
    let http_addr = match &http {
        Some(listener) => listener.local_addr().map_err(runtime_error)?.to_string(),
        None => "-".to_string(),
    };
    tracing::info!(
        grpc = %grpc.local_addr().map_err(runtime_error)?,
        http = %http_addr,
        lease_ttl = args.lease_ttl,
        redis = %common::redact::redact_url(&args.redis),
        "coordinator started"
    );
    Server {
        grpc,
        http,
        store,
        limits,
    }
    .run(shutdown_on_signals())
    .await
    .map_err(runtime_error)?;
    Ok(ExitCode::Success)
}

fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
    match (rc, std::str::from_utf8(&buffer[..end])) {
        (0, Ok(name)) if !name.is_empty() => name.to_string(),
        _ => format!("worker-{}", std::process::id()),
    }
}

/// Validates `era5 worker` flags.
pub fn check_worker(args: &WorkerArgs) -> Result<(), Failure> {
    check_url("--coordinator", &args.coordinator)?;
    if let Some(http) = &args.http {
        socket_addr("--http", http)?;
    }
    if args.dest.exists() && !args.dest.is_dir() {
        return Err(bad(
            "--dest",
            &args.dest.display().to_string(),
            "exists and is not a directory",
        ));
    }
    if let Some(name) = &args.name
        && (name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
    {
        return Err(bad("--name", name, "use letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

/// `era5 worker`.
pub async fn worker(args: WorkerArgs) -> Result<ExitCode, Failure> {
    let verify: VerifyMode = args.verify.parse().map_err(Failure::Input)?;
    let min_rate = crate::config::min_rate(&args.min_rate, args.min_rate_window)
        .map_err(|e| Failure::Input(e.to_string()))?;
    let config = AgentConfig {
        coordinator: args.coordinator.clone(),
        dest: args.dest.clone(),
        name: args.name.clone().unwrap_or_else(host_name),
        connections: args.connections as usize,
        max_leases: args.max_leases as usize,
        engine: EngineConfig {
            stall_timeout: Duration::from_secs(args.stall_timeout),
            min_rate,
            verify,
            retry: common::source::retry::RetryPolicy {
                base: Duration::from_millis(args.retry_base_ms),
                ..Default::default()
            },
            ..EngineConfig::default()
        },
    };
    let http = match &args.http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(socket_addr("--http", addr)?)
                .await
                .map_err(|e| Failure::Runtime(format!("cannot listen on {addr}: {e}")))?,
        ),
        None => None,
    };
    worker::agent::run(config, http, shutdown_on_signals())
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    Ok(ExitCode::Success)
}

async fn connect(url: &CoordinatorUrl) -> Result<OperatorClient<Channel>, Failure> {
    check_url("--coordinator", &url.coordinator)?;
    OperatorClient::connect(url.coordinator.clone())
        .await
        .map_err(|e| {
            Failure::Runtime(format!(
                "cannot reach the coordinator at {}: {e}",
                url.coordinator
            ))
        })
}

fn rpc_failure(status: tonic::Status) -> Failure {
    match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::NotFound => {
            Failure::Input(status.message().to_string())
        }
        _ => Failure::Runtime(format!("coordinator: {}", status.message())),
    }
}

/// Validates `era5 submit`'s selection like `era5 sync` does.
pub fn check_submit(args: &SubmitArgs) -> Result<(), Failure> {
    check_url("--coordinator", &args.coordinator.coordinator)?;
    Selection::parse(
        &args.selection.product,
        &args.selection.var,
        &args.selection.start,
        &args.selection.end,
        common::dates::today_utc(),
    )
    .map_err(|e| Failure::Input(e.to_string()))?;
    Ok(())
}

/// `era5 submit`.
pub async fn submit(args: SubmitArgs) -> Result<ExitCode, Failure> {
    let mut client = connect(&args.coordinator).await?;
    let endpoint = if args.source.endpoint == common::source::DEFAULT_ENDPOINT {
        String::new()
    } else {
        args.source.endpoint.clone()
    };
    let response = client
        .submit_job(pb::SubmitJobRequest {
            selection: Some(pb::Selection {
                products: args.selection.product.clone(),
                variables: args.selection.var.clone(),
                start: args.selection.start.clone(),
                end: args.selection.end.clone(),
            }),
            source: Some(pb::Source {
                bucket: args.source.bucket.clone(),
                endpoint,
            }),
        })
        .await
        .map_err(rpc_failure)?
        .into_inner();
    eprintln!(
        "submitted: {} leases, {} objects, {}",
        response.leases,
        response.objects,
        human_bytes(response.bytes)
    );
    if !args.wait {
        println!("{}", response.job_id);
        return Ok(ExitCode::Success);
    }
    let state = follow(&mut client, &response.job_id).await?;
    println!("{}", response.job_id);
    Ok(if state == "complete" {
        ExitCode::Success
    } else {
        ExitCode::Failed
    })
}

/// Polls a job until it is final; returns its final state.
async fn follow(client: &mut OperatorClient<Channel>, job_id: &str) -> Result<String, Failure> {
    loop {
        let detail = match client
            .get_job(pb::GetJobRequest {
                job_id: job_id.to_string(),
            })
            .await
        {
            Ok(detail) => detail.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(status) => return Err(rpc_failure(status)),
        };
        let job = detail.job.unwrap_or_default();
        let counts = job.leases.unwrap_or_default();
        eprintln!(
            "job {}: {} | leases {} pending, {} leased, {} done, {} dead | {} of {}",
            job.job_id,
            job.state,
            counts.pending,
            counts.leased,
            counts.done,
            counts.dead,
            human_bytes(job.bytes_done),
            human_bytes(job.bytes_total)
        );
        if matches!(job.state.as_str(), "complete" | "failed" | "cancelled") {
            for lease in detail.leases.iter().filter(|l| l.state == "dead") {
                eprintln!(
                    "dead lease {} ({} {}..{}): {}",
                    lease.item_id, lease.product, lease.start, lease.end, lease.last_error
                );
            }
            return Ok(job.state);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `era5 status`.
pub async fn status(args: StatusArgs) -> Result<ExitCode, Failure> {
    let mut client = connect(&args.coordinator).await?;
    loop {
        let text = match &args.job {
            Some(job_id) => {
                let detail = client
                    .get_job(pb::GetJobRequest {
                        job_id: job_id.clone(),
                    })
                    .await
                    .map_err(rpc_failure)?
                    .into_inner();
                let job = detail.job.clone().unwrap_or_default();
                if args.json {
                    json!({
                        "jobs": [job_json(&job)],
                        "leases": detail.leases.iter().map(lease_json).collect::<Vec<_>>(),
                        "workers": detail.workers.iter().map(worker_json).collect::<Vec<_>>(),
                    })
                    .to_string()
                } else {
                    format!(
                        "{}\n{}\n{}",
                        jobs_table(&[job]),
                        leases_table(&detail.leases),
                        workers_table(&detail.workers)
                    )
                }
            }
            None => {
                let listing = client
                    .list_jobs(pb::ListJobsRequest {})
                    .await
                    .map_err(rpc_failure)?
                    .into_inner();
                let (jobs, workers) = (listing.jobs, listing.workers);
                if args.json {
                    json!({
                        "jobs": jobs.iter().map(job_json).collect::<Vec<_>>(),
                        "workers": workers.iter().map(worker_json).collect::<Vec<_>>(),
                    })
                    .to_string()
                } else {
                    format!("{}\n{}", jobs_table(&jobs), workers_table(&workers))
                }
            }
        };
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}").map_err(|e| Failure::Runtime(e.to_string()))?;
        drop(stdout);
        if !args.watch {
            return Ok(ExitCode::Success);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// `era5 jobs`.
pub async fn jobs(args: CoordinatorUrl) -> Result<ExitCode, Failure> {
    let mut client = connect(&args).await?;
    let jobs = client
        .list_jobs(pb::ListJobsRequest {})
        .await
        .map_err(rpc_failure)?
        .into_inner()
        .jobs;
    println!("{}", jobs_table(&jobs));
    Ok(ExitCode::Success)
}

/// `era5 cancel`.
pub async fn cancel(args: JobArgs) -> Result<ExitCode, Failure> {
    let mut client = connect(&args.coordinator).await?;
    client
        .cancel_job(pb::CancelJobRequest {
            job_id: args.job.clone(),
        })
        .await
        .map_err(rpc_failure)?;
    println!("cancelled {}", args.job);
    Ok(ExitCode::Success)
}

/// `era5 retry`.
pub async fn retry(args: JobArgs) -> Result<ExitCode, Failure> {
    let mut client = connect(&args.coordinator).await?;
    let retried = client
        .retry_dead(pb::RetryDeadRequest {
            job_id: args.job.clone(),
        })
        .await
        .map_err(rpc_failure)?
        .into_inner()
        .retried;
    println!("{retried} dead leases of {} back to pending", args.job);
    Ok(ExitCode::Success)
}

/// `era5 drain`.
pub async fn drain(args: DrainArgs) -> Result<ExitCode, Failure> {
    let mut client = connect(&args.coordinator).await?;
    client
        .drain_worker(pb::DrainWorkerRequest {
            worker: args.worker.clone(),
        })
        .await
        .map_err(rpc_failure)?;
    println!("draining {}", args.worker);
    Ok(ExitCode::Success)
}

fn eta(seconds: f64) -> String {
    if seconds < 0.0 {
        "-".into()
    } else if seconds < 120.0 {
        format!("{seconds:.0}s")
    } else if seconds < 7200.0 {
        format!("{:.0}m", seconds / 60.0)
    } else {
        format!("{:.1}h", seconds / 3600.0)
    }
}

fn jobs_table(jobs: &[pb::JobSummary]) -> String {
    let mut out = format!(
        "{:<18} {:<10} {:>7} {:>7} {:>7} {:>7} {:>9} {:>22} {:>12} {:>8}\n",
        "JOB",
        "STATE",
        "PENDING",
        "LEASED",
        "DONE",
        "DEAD",
        "OBJECTS",
        "BYTES DONE/TOTAL",
        "RATE",
        "ETA"
    );
    for job in jobs {
        let counts = job.leases.unwrap_or_default();
        out.push_str(&format!(
            "{:<18} {:<10} {:>7} {:>7} {:>7} {:>7} {:>9} {:>22} {:>12} {:>8}\n",
            job.job_id,
            job.state,
            counts.pending,
            counts.leased,
            counts.done,
            counts.dead,
            job.objects_total,
            format!(
                "{}/{}",
                human_bytes(job.bytes_done),
                human_bytes(job.bytes_total)
            ),
            format!("{}/s", human_bytes(job.bytes_per_sec as u64)),
            eta(job.eta_seconds)
        ));
    }
    out
}

fn leases_table(leases: &[pb::LeaseView]) -> String {
    let mut out = format!(
        "{:<7} {:<24} {:<10} {:<10} {:>7} {:>10} {:<7} {:>5} {:<16} {:>8}  {}\n",
        "LEASE",
        "PRODUCT",
        "START",
        "END",
        "OBJECTS",
        "BYTES",
        "STATE",
        "EPOCH",
        "HOLDER",
        "ATTEMPTS",
        "LAST ERROR"
    );
    for lease in leases {
        out.push_str(&format!(
            "{:<7} {:<24} {:<10} {:<10} {:>7} {:>10} {:<7} {:>5} {:<16} {:>8}  {}\n",
            lease.item_id,
            lease.product,
            lease.start,
            lease.end,
            lease.objects,
            human_bytes(lease.bytes),
            lease.state,
            lease.epoch,
            lease.holder,
            lease.attempts,
            lease.last_error
        ));
    }
    out
}

fn workers_table(workers: &[pb::WorkerView]) -> String {
    let now = coordinator::model::now_ms();
    let mut out = format!(
        "{:<20} {:>6} {:>12} {:>6} {:>7} {:>8} {:>15} {}\n",
        "WORKER", "LEASES", "THROUGHPUT", "OPEN", "IN USE", "RETRIES", "LAST HEARTBEAT", "DRAINING"
    );
    for worker in workers {
        let metrics = worker.metrics.clone().unwrap_or_default();
        out.push_str(&format!(
            "{:<20} {:>6} {:>12} {:>6} {:>7} {:>8} {:>15} {}\n",
            worker.name,
            worker.leases_held,
            format!("{}/s", human_bytes(metrics.bytes_per_sec as u64)),
            metrics.open,
            metrics.in_use,
            metrics.retries.values().sum::<u64>(),
            format!(
                "{:.0}s ago",
                (now - worker.last_heartbeat_unix_ms).max(0) as f64 / 1000.0
            ),
            if worker.draining { "yes" } else { "no" }
        ));
    }
    out
}

fn job_json(job: &pb::JobSummary) -> serde_json::Value {
    let counts = job.leases.unwrap_or_default();
    json!({
        "job_id": job.job_id,
        "state": job.state,
        "leases": {"pending": counts.pending, "leased": counts.leased, "done": counts.done, "dead": counts.dead},
        "objects_total": job.objects_total,
        "bytes_total": job.bytes_total,
        "bytes_done": job.bytes_done,
        "bytes_per_sec": job.bytes_per_sec,
        "eta_seconds": if job.eta_seconds < 0.0 { serde_json::Value::Null } else { json!(job.eta_seconds) },
        "created_unix_ms": job.created_unix_ms,
    })
}

fn lease_json(lease: &pb::LeaseView) -> serde_json::Value {
    json!({
        "lease": lease.item_id,
        "product": lease.product,
        "start": lease.start,
        "end": lease.end,
        "objects": lease.objects,
        "bytes": lease.bytes,
        "state": lease.state,
        "epoch": lease.epoch,
        "holder": lease.holder,
        "attempts": lease.attempts,
        "expiries": lease.expiries,
        "last_error": lease.last_error,
        "bytes_done": lease.bytes_done,
    })
}

fn worker_json(worker: &pb::WorkerView) -> serde_json::Value {
    let metrics = worker.metrics.clone().unwrap_or_default();
    json!({
        "name": worker.name,
        "leases_held": worker.leases_held,
        "bytes_per_sec": metrics.bytes_per_sec,
        "open_connections": metrics.open,
        "in_use_connections": metrics.in_use,
        "retries": metrics.retries.values().sum::<u64>(),
        "last_heartbeat_unix_ms": worker.last_heartbeat_unix_ms,
        "draining": worker.draining,
    })
}
