//! The gRPC services over a lease store: `Operator` for people and scripts, `Worker` for the
//! download nodes. The coordinator keeps no state of its own, so any number of replicas can
//! serve the same store. Store errors map to gRPC codes in one place ([`status_of`]).

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use common::selection::Selection;
use common::source::retry::RetryPolicy;
use common::source::{
    DEFAULT_BUCKET, DEFAULT_REGION, PoolConfig, Source, SourceConfig, coverage, discover_detailed,
};
use futures_util::Stream;
use proto::v1 as pb;
use proto::v1::operator_server::Operator;
use proto::v1::worker_server::Worker;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::model::{
    Ack, Grant, ItemState, ItemStatus, JobStatus, LeaseRef, SelectionSpec, SourceSpec,
    WorkerMetrics, WorkerStatus, random_id,
};
use crate::planner::{ItemLimits, plan_job};
use crate::store::{LeaseStore, StoreError};

/// Connections used to list a submitted job's objects.
const LISTING_CONNECTIONS: usize = 8;
/// How often a worker session checks for commands to send.
const SESSION_TICK: Duration = Duration::from_secs(1);
/// Leases per `GetJob` page when the caller does not say.
pub const DEFAULT_LEASE_PAGE: u32 = 500;
/// Most leases per `GetJob` page: with last errors cut to `MAX_ERROR_SHOWN`, a page stays far
/// below gRPC's 4 MiB message limit.
pub const MAX_LEASE_PAGE: u32 = 1_000;
/// Longest last error a lease view carries.
const MAX_ERROR_SHOWN: usize = 1_024;
/// Longest page token accepted (item ids are short).
const MAX_PAGE_TOKEN: usize = 256;
/// Finished jobs `ListJobs`, the status page and the metrics read besides the active ones.
pub const RECENT_JOBS: usize = 20;
/// Most finished jobs a `ListJobs` caller may ask for.
const MAX_RECENT_JOBS: u32 = 1_000;

/// What both services share.
pub struct Coordinator {
    /// The lease store.
    pub store: Arc<dyn LeaseStore>,
    /// Item bounds for new jobs.
    pub limits: ItemLimits,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::CoordinatorMetrics>,
}

/// The one mapping of store errors to gRPC codes.
pub fn status_of(error: StoreError) -> Status {
    match error {
        StoreError::Unavailable(message) => {
            Status::unavailable(format!("lease store unavailable: {message}"))
        }
        StoreError::UnknownJob(job) => Status::not_found(format!("no job `{job}`")),
        StoreError::Corrupt(message) => Status::internal(message),
    }
}

fn lease_status(ack: Ack) -> i32 {
    match ack {
        Ack::Ok => pb::LeaseStatus::Ok as i32,
        Ack::AlreadyDone => pb::LeaseStatus::AlreadyDone as i32,
        Ack::LeaseLost => pb::LeaseStatus::LeaseLost as i32,
    }
}

fn lease_ref(lease: Option<pb::LeaseRef>) -> Result<LeaseRef, Status> {
    let lease = lease.ok_or_else(|| Status::invalid_argument("missing lease"))?;
    Ok(LeaseRef {
        job_id: lease.job_id,
        item_id: lease.item_id,
        lease_id: lease.lease_id,
        epoch: lease.epoch,
    })
}

/// Wire form of a lease reference.
pub fn lease_to_pb(lease: &LeaseRef) -> pb::LeaseRef {
    pb::LeaseRef {
        job_id: lease.job_id.clone(),
        item_id: lease.item_id.clone(),
        lease_id: lease.lease_id.clone(),
        epoch: lease.epoch,
    }
}

fn selection_to_pb(selection: &SelectionSpec) -> pb::Selection {
    pb::Selection {
        products: selection.products.clone(),
        variables: selection.variables.clone(),
        start: selection.start.clone(),
        end: selection.end.clone(),
        grids: selection.grids.clone(),
    }
}

fn source_to_pb(source: &SourceSpec) -> pb::Source {
    pb::Source {
        bucket: source.bucket.clone(),
        endpoint: source.endpoint.clone(),
    }
}

/// A job's figures as the operator API reports them.
fn summary(job: &JobStatus) -> pb::JobSummary {
    let (rate, eta) = job.rate_and_eta();
    pb::JobSummary {
        job_id: job.job_id.clone(),
        state: job.state.name().to_string(),
        leases: Some(pb::LeaseCounts {
            pending: job.counts.pending,
            leased: job.counts.leased,
            done: job.counts.done,
            dead: job.counts.dead,
        }),
        objects_total: job.objects_total,
        bytes_total: job.bytes_total,
        bytes_done: job.bytes_done,
        bytes_per_sec: rate,
        eta_seconds: eta,
        created_unix_ms: job.created_ms,
        selection: Some(selection_to_pb(&job.selection)),
        source: Some(source_to_pb(&job.source)),
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn shorten(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn item_to_pb(item: ItemStatus) -> pb::LeaseView {
    pb::LeaseView {
        item_id: item.item_id,
        product: item.product,
        start: item.start,
        end: item.end,
        objects: item.objects,
        bytes: item.bytes,
        state: item.state.name().to_string(),
        epoch: item.epoch,
        holder: item.holder,
        attempts: item.attempts,
        expiries: item.expiries,
        last_error: shorten(item.last_error, MAX_ERROR_SHOWN),
        bytes_done: item.bytes_done,
    }
}

/// Wire form of a worker's metrics.
pub fn metrics_to_pb(metrics: &WorkerMetrics) -> pb::ConnectionMetrics {
    pb::ConnectionMetrics {
        open: metrics.open,
        in_use: metrics.in_use,
        idle: metrics.idle,
        connects: metrics.connects,
        resets: metrics.resets,
        retries: metrics.retries.clone().into_iter().collect(),
        stall_timeouts: metrics.stall_timeouts,
        bytes_per_sec: metrics.bytes_per_sec,
        bytes_downloaded: metrics.bytes_downloaded,
        objects_completed: metrics.objects_completed,
        verify_failures: metrics.verify_failures,
    }
}

fn metrics_from_pb(metrics: pb::ConnectionMetrics) -> WorkerMetrics {
    WorkerMetrics {
        open: metrics.open,
        in_use: metrics.in_use,
        idle: metrics.idle,
        connects: metrics.connects,
        resets: metrics.resets,
        retries: metrics.retries.into_iter().collect(),
        stall_timeouts: metrics.stall_timeouts,
        bytes_per_sec: metrics.bytes_per_sec,
        bytes_downloaded: metrics.bytes_downloaded,
        objects_completed: metrics.objects_completed,
        verify_failures: metrics.verify_failures,
    }
}

fn worker_to_pb(worker: WorkerStatus) -> pb::WorkerView {
    pb::WorkerView {
        metrics: Some(metrics_to_pb(&worker.metrics)),
        name: worker.name,
        leases_held: worker.leases_held,
        last_heartbeat_unix_ms: worker.last_heartbeat_ms,
        draining: worker.draining,
    }
}

fn grant_to_pb(grant: Grant) -> pb::Lease {
    pb::Lease {
        lease: Some(lease_to_pb(&grant.lease)),
        source: Some(source_to_pb(&grant.source)),
        product: grant.item.product,
        start: grant.item.start,
        end: grant.item.end,
        objects: grant
            .item
            .objects
            .into_iter()
            .map(|o| pb::ObjectRef {
                key: o.key,
                size: o.size,
                etag: o.etag,
                last_modified: o.last_modified,
            })
            .collect(),
        ttl_ms: grant.ttl.as_millis() as u64,
    }
}

impl Coordinator {
    /// Validates, lists and plans a job, then stores it.
    async fn submit(&self, request: pb::SubmitJobRequest) -> Result<pb::SubmitJobResponse, Status> {
        let selection = request.selection.unwrap_or_default();
        let validated = Selection::parse(
            &selection.products,
            &selection.variables,
            &selection.grids,
            &selection.start,
            &selection.end,
            common::dates::today_utc(),
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let source = request.source.unwrap_or_default();
        let bucket = if source.bucket.is_empty() {
            DEFAULT_BUCKET.to_string()
        } else {
            source.bucket.clone()
        };
        let config = SourceConfig {
            bucket: bucket.clone(),
            endpoint: (!source.endpoint.is_empty()).then(|| source.endpoint.clone()),
            region: DEFAULT_REGION.to_string(),
            sign: false,
            pool: PoolConfig::new(LISTING_CONNECTIONS),
        };
        let listing_source = Source::connect(&config).await;
        let found = discover_detailed(&listing_source, &validated, &RetryPolicy::default())
            .await
            .map_err(|e| match e {
                common::source::listing::ListError::Refused { .. } => {
                    Status::failed_precondition(e.to_string())
                }
                common::source::listing::ListError::Exhausted { .. } => {
                    Status::unavailable(e.to_string())
                }
            })?;
        let warnings = coverage::warnings(&validated, &found);
        if found.objects.is_empty() {
            let why = coverage::explain_empty(
                &listing_source,
                &validated,
                &found,
                &RetryPolicy::default(),
            )
            .await;
            return Err(Status::failed_precondition(why));
        }
        let objects = found.objects;
        let job = plan_job(
            random_id(),
            SelectionSpec::from(&validated),
            SourceSpec {
                bucket,
                endpoint: source.endpoint,
            },
            objects,
            self.limits,
        );
        self.store.create_job(&job).await.map_err(status_of)?;
        tracing::info!(job = %job.job_id, items = job.items.len(), "job submitted");
        Ok(pb::SubmitJobResponse {
            leases: job.items.len() as u32,
            objects: job.items.iter().map(|i| i.objects.len() as u64).sum(),
            bytes: job.items.iter().map(|i| i.bytes()).sum(),
            job_id: job.job_id,
            warnings,
        })
    }
}

/// The operator service.
pub struct OperatorService(pub Arc<Coordinator>);

#[tonic::async_trait]
impl Operator for OperatorService {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        Ok(Response::new(self.0.submit(request.into_inner()).await?))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let recent = match request.into_inner().recent {
            0 => RECENT_JOBS,
            n => n.min(MAX_RECENT_JOBS) as usize,
        };
        let listed = self.0.store.recent_jobs(recent).await.map_err(status_of)?;
        let workers = self.0.store.workers().await.map_err(status_of)?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: listed.jobs.iter().map(summary).collect(),
            workers: workers.into_iter().map(worker_to_pb).collect(),
            jobs_total: listed.total,
        }))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let request = request.into_inner();
        let page_size = request
            .page_size
            .unwrap_or(DEFAULT_LEASE_PAGE)
            .min(MAX_LEASE_PAGE) as usize;
        let state = match request.state.as_str() {
            "" => None,
            name => Some(ItemState::parse(name).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "invalid state `{}`: expected pending, leased, done or dead",
                    shorten(name.to_string(), 64)
                ))
            })?),
        };
        if request.page_token.len() > MAX_PAGE_TOKEN {
            return Err(Status::invalid_argument(format!(
                "invalid page token: longer than {MAX_PAGE_TOKEN} bytes"
            )));
        }
        let store = &self.0.store;
        let job = store.job(&request.job_id).await.map_err(status_of)?;
        let (leases, next_page_token) = if page_size == 0 {
            (Vec::new(), String::new())
        } else {
            let page = store
                .items_page(&request.job_id, state, &request.page_token, page_size)
                .await
                .map_err(status_of)?;
            (
                page.items.into_iter().map(item_to_pb).collect(),
                page.next.unwrap_or_default(),
            )
        };
        let workers = if request.page_token.is_empty() {
            store.workers().await.map_err(status_of)?
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::GetJobResponse {
            job: Some(summary(&job)),
            leases,
            workers: workers.into_iter().map(worker_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        self.0
            .store
            .cancel_job(&request.into_inner().job_id)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::CancelJobResponse {}))
    }

    async fn retry_dead(
        &self,
        request: Request<pb::RetryDeadRequest>,
    ) -> Result<Response<pb::RetryDeadResponse>, Status> {
        let retried = self
            .0
            .store
            .retry_dead(&request.into_inner().job_id)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::RetryDeadResponse { retried }))
    }

    async fn drain_worker(
        &self,
        request: Request<pb::DrainWorkerRequest>,
    ) -> Result<Response<pb::DrainWorkerResponse>, Status> {
        let worker = request.into_inner().worker;
        if worker.is_empty() {
            return Err(Status::invalid_argument("missing worker name"));
        }
        self.0.store.drain(&worker).await.map_err(status_of)?;
        Ok(Response::new(pb::DrainWorkerResponse {}))
    }
}

/// The worker service.
pub struct WorkerService(pub Arc<Coordinator>);

type CommandStream = Pin<Box<dyn Stream<Item = Result<pb::WorkerCommand, Status>> + Send>>;

#[tonic::async_trait]
impl Worker for WorkerService {
    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let request = request.into_inner();
        let store = &self.0.store;
        if store
            .is_draining(&request.worker)
            .await
            .map_err(status_of)?
        {
            return Ok(Response::new(pb::AcquireResponse {
                leases: Vec::new(),
                draining: true,
            }));
        }
        let grants = store
            .acquire(&request.worker, request.max as usize)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::AcquireResponse {
            leases: grants.into_iter().map(grant_to_pb).collect(),
            draining: false,
        }))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let lease = lease_ref(request.into_inner().lease)?;
        let started = std::time::Instant::now();
        let renewed = self.0.store.renew(&lease).await;
        self.0
            .metrics
            .renew_seconds
            .observe(started.elapsed().as_secs_f64());
        let ack = renewed.map_err(status_of)?;
        Ok(Response::new(pb::RenewResponse {
            status: lease_status(ack),
            ttl_ms: self.0.store.policy().ttl.as_millis() as u64,
        }))
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let lease = lease_ref(request.into_inner().lease)?;
        let ack = self.0.store.complete(&lease).await.map_err(status_of)?;
        Ok(Response::new(pb::CompleteResponse {
            status: lease_status(ack),
        }))
    }

    async fn fail(
        &self,
        request: Request<pb::FailRequest>,
    ) -> Result<Response<pb::FailResponse>, Status> {
        let request = request.into_inner();
        let lease = lease_ref(request.lease)?;
        let outcome = self
            .0
            .store
            .fail(&lease, &request.reason, request.permanent)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::FailResponse {
            status: lease_status(outcome.ack),
            dead: outcome.dead,
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let lease = lease_ref(request.into_inner().lease)?;
        let ack = self.0.store.release(&lease).await.map_err(status_of)?;
        Ok(Response::new(pb::ReleaseResponse {
            status: lease_status(ack),
        }))
    }

    type WorkerSessionStream = CommandStream;

    async fn worker_session(
        &self,
        request: Request<Streaming<pb::WorkerReport>>,
    ) -> Result<Response<CommandStream>, Status> {
        let mut reports = request.into_inner();
        let (commands, outbound) = mpsc::channel(16);
        let store = self.0.store.clone();
        let connected = SessionGauge::enter(self.0.metrics.clone());
        tokio::spawn(async move {
            let _connected = connected;
            let mut worker: Option<String> = None;
            let mut drain_sent = false;
            let mut cancels_sent: HashSet<LeaseRef> = HashSet::new();
            let mut tick = tokio::time::interval(SESSION_TICK);
            loop {
                tokio::select! {
                    report = reports.message() => {
                        let Ok(Some(report)) = report else { break };
                        worker = Some(report.worker.clone());
                        for lease in record_report(&*store, report).await {
                            if cancels_sent.insert(lease.clone()) {
                                let command = pb::WorkerCommand { kind: Some(pb::worker_command::Kind::CancelLease(lease_to_pb(&lease))) };
                                if commands.send(Ok(command)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    _ = tick.tick() => {
                        let Some(name) = &worker else { continue };
                        if !drain_sent && store.is_draining(name).await.unwrap_or(false) {
                            drain_sent = true;
                            let command = pb::WorkerCommand { kind: Some(pb::worker_command::Kind::Drain(true)) };
                            if commands.send(Ok(command)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound))))
    }
}

/// Counts an open worker session for as long as it lives.
struct SessionGauge(Arc<crate::metrics::CoordinatorMetrics>);

impl SessionGauge {
    fn enter(metrics: Arc<crate::metrics::CoordinatorMetrics>) -> Self {
        metrics.workers_connected.inc();
        Self(metrics)
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.0.workers_connected.dec();
    }
}

/// Stores a worker's report. Returns the leases it reported whose job was cancelled, which the
/// worker should stop. Store errors only cost this report (the next one replaces it).
///
/// The store work per progress entry is constant, whatever the number of live leases: one
/// progress transition, and one cancellation lookup per job the report names.
pub async fn record_report(store: &dyn LeaseStore, report: pb::WorkerReport) -> Vec<LeaseRef> {
    let metrics = report.metrics.map(metrics_from_pb).unwrap_or_default();
    if let Err(error) = store
        .heartbeat(&report.worker, report.leases_held, &metrics)
        .await
    {
        tracing::debug!(%error, "could not record a heartbeat");
    }
    let mut cancelled = Vec::new();
    let mut cancelled_jobs: HashMap<String, bool> = HashMap::new();
    for progress in report.progress {
        let Ok(lease) = lease_ref(progress.lease) else {
            continue;
        };
        let _ = store.progress(&lease, progress.bytes_done).await;
        let job_cancelled = match cancelled_jobs.get(&lease.job_id) {
            Some(known) => *known,
            None => {
                let known = store.job_cancelled(&lease.job_id).await.unwrap_or(false);
                cancelled_jobs.insert(lease.job_id.clone(), known);
                known
            }
        };
        if job_cancelled {
            cancelled.push(lease);
        }
    }
    cancelled
}
