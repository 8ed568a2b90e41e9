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
    let config = AgentConfig {
        coordinator: args.coordinator.clone(),
        dest: args.dest.clone(),
        name: args.name.clone().unwrap_or_else(host_name),
        connections: args.connections as usize,
        max_leases: args.max_leases as usize,
        engine: EngineConfig {
            stall_timeout: Duration::from_secs(args.stall_timeout),
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
        &args.selection.grid,
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
                grids: args.selection.grid.clone(),
            }),
            source: Some(pb::Source {
                bucket: args.source.bucket.clone(),
                endpoint,
            }),
        })
        .await
        .map_err(rpc_failure)?
        .into_inner();
    for warning in &response.warnings {
        eprintln!("era5: warning: {warning}");
    }
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

/// Dead leases `submit --wait` and the status summary print before pointing to `--state dead`.
const DEAD_SHOWN: u32 = 10;

/// One `GetJob` call: the summary, and `page_size` leases (0: none) from `page_token`.
async fn get_job(
    client: &mut OperatorClient<Channel>,
    job_id: &str,
    page_size: u32,
    state: Option<&str>,
    page_token: String,
) -> Result<pb::GetJobResponse, tonic::Status> {
    client
        .get_job(pb::GetJobRequest {
            job_id: job_id.to_string(),
            page_size: Some(page_size),
            page_token,
            state: state.unwrap_or_default().to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Up to `limit` of a job's leases in `state`, page by page, and whether more exist.
async fn first_leases(
    client: &mut OperatorClient<Channel>,
    job_id: &str,
    state: &str,
    limit: u32,
) -> Result<(Vec<pb::LeaseView>, bool), Failure> {
    let mut leases = Vec::new();
    let mut token = String::new();
    loop {
        let page = get_job(client, job_id, limit, Some(state), token)
            .await
            .map_err(rpc_failure)?;
        leases.extend(page.leases);
        if leases.len() >= limit as usize || page.next_page_token.is_empty() {
            let more = leases.len() > limit as usize || !page.next_page_token.is_empty();
            leases.truncate(limit as usize);
            return Ok((leases, more));
        }
        token = page.next_page_token;
    }
}

/// Polls a job's summary (never its leases) until it is final; returns its final state.
async fn follow(client: &mut OperatorClient<Channel>, job_id: &str) -> Result<String, Failure> {
    loop {
        let detail = match get_job(client, job_id, 0, None, String::new()).await {
            Ok(detail) => detail,
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
            if counts.dead > 0 {
                let (dead, more) = first_leases(client, job_id, "dead", DEAD_SHOWN).await?;
                for lease in &dead {
                    eprintln!(
                        "dead lease {} ({} {}..{}): {}",
                        lease.item_id, lease.product, lease.start, lease.end, lease.last_error
                    );
                }
                if more {
                    eprintln!(
                        "... {} dead leases in all: era5 status {job_id} --state dead",
                        counts.dead
                    );
                }
            }
            return Ok(job.state);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `era5 status`.
pub async fn status(args: StatusArgs) -> Result<ExitCode, Failure> {
    if args.job.is_none() && (args.leases || args.state.is_some()) {
        return Err(Failure::Input(
            "--leases and --state list one job's leases: give the JOB".into(),
        ));
    }
    let mut client = connect(&args.coordinator).await?;
    loop {
        match &args.job {
            Some(job_id) if args.leases || args.state.is_some() => {
                job_with_leases(&mut client, &args, job_id).await?;
            }
            Some(job_id) => {
                let text = job_summary(&mut client, &args, job_id).await?;
                write_out(&text)?;
            }
            None => {
                let listing = client
                    .list_jobs(pb::ListJobsRequest {
                        recent: args.recent,
                    })
                    .await
                    .map_err(rpc_failure)?
                    .into_inner();
                let (jobs, workers) = (&listing.jobs, &listing.workers);
                let text = if args.json {
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
                write_out(&text)?;
            }
        }
        if !args.watch {
            return Ok(ExitCode::Success);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn write_out(text: &str) -> Result<(), Failure> {
    writeln!(std::io::stdout().lock(), "{text}").map_err(|e| Failure::Runtime(e.to_string()))
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
    client: &mut OperatorClient<Channel>,
    args: &StatusArgs,
    job_id: &str,
) -> Result<String, Failure> {
    let detail = get_job(client, job_id, 0, None, String::new())
        .await
        .map_err(rpc_failure)?;
    let job = detail.job.clone().unwrap_or_default();
    let counts = job.leases.unwrap_or_default();
    let (dead, more_dead) = if counts.dead > 0 {
        first_leases(client, job_id, "dead", DEAD_SHOWN).await?
    } else {
        (Vec::new(), false)
    };
    Ok(if args.json {
        json!({
            "jobs": [job_json(&job)],
            "dead_leases": dead.iter().map(lease_json).collect::<Vec<_>>(),
            "workers": detail.workers.iter().map(worker_json).collect::<Vec<_>>(),
        })
        .to_string()
    } else {
        let mut text = jobs_table(std::slice::from_ref(&job));
        text.push_str(&format!(
            "({} leases: --leases lists them, --state STATE only those in one state)\n",
            counts.pending + counts.leased + counts.done + counts.dead
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
    client: &mut OperatorClient<Channel>,
    args: &StatusArgs,
    job_id: &str,
) -> Result<(), Failure> {
    let write_error = |e: std::io::Error| Failure::Runtime(e.to_string());
    let mut token = String::new();
    let mut first: Option<pb::GetJobResponse> = None;
    let mut leases = Vec::new();
    loop {
        let mut page = get_job(client, job_id, args.page_size, args.state.as_deref(), token)
            .await
            .map_err(rpc_failure)?;
        let mut stdout = std::io::stdout().lock();
        if first.is_none() && !args.json {
            let job = page.job.clone().unwrap_or_default();
            write!(stdout, "{}\n{}", jobs_table(&[job]), leases_header()).map_err(write_error)?;
        }
        if args.json {
            leases.append(&mut page.leases);
        } else {
            for lease in &page.leases {
                stdout
                    .write_all(lease_row(lease).as_bytes())
                    .map_err(write_error)?;
            }
        }
        token = std::mem::take(&mut page.next_page_token);
        first.get_or_insert(page);
        if token.is_empty() {
            break;
        }
    }
    let first = first.unwrap_or_default();
    let text = if args.json {
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
    write_out(&text)
}

/// `era5 jobs`.
pub async fn jobs(args: CoordinatorUrl) -> Result<ExitCode, Failure> {
    let mut client = connect(&args).await?;
    let listing = client
        .list_jobs(pb::ListJobsRequest { recent: 0 })
        .await
        .map_err(rpc_failure)?
        .into_inner();
    println!(
        "{}{}",
        jobs_table(&listing.jobs),
        jobs_not_shown(listing.jobs.len(), listing.jobs_total)
    );
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

fn leases_header() -> String {
    format!(
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
    )
}

fn lease_row(lease: &pb::LeaseView) -> String {
    format!(
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
    )
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
