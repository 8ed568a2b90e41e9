//! The gRPC services over a lease store: `Operator` for people and scripts, `Worker` for the
//! download nodes. The coordinator keeps no state of its own, so any number of replicas can
//! serve the same store.
//!
//! Nothing here checks roles: the authorization layer (`auth`) did, and left the caller's
//! [`Peer`] in the request. Handlers take a worker's name from it, check the sizes and ids a
//! request carries (`limits`), and answer with the crate's one [`Error`] type, which maps to a
//! gRPC code in one place.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::selection::Selection;
use futures_util::{Stream, StreamExt};
use proto::v1 as pb;
use proto::v1::operator_server::Operator;
use proto::v1::worker_server::Worker;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use transport::listing::{ListError, list_prefix};
use transport::retry::RetryPolicy;
use transport::{DEFAULT_ENDPOINT, Discovery, RemoteObject, Source, SourceConfig, coverage};

use crate::auth::{Peer, check_worker_name, peer_of};
use crate::error::{Error, status};
use crate::limits::{Caps, bounded_reason, check_id, check_report, grants_per_acquire};
use lease::LeaseStore;
use lease::model::{
    Ack, FollowSpec, Grant, ItemState, ItemStatus, JobState, JobStatus, LeaseRef, SelectionSpec,
    SourceSpec, WorkerMetrics, WorkerStatus, random_id,
};
use lease::planner::{ItemLimits, plan_items, plan_job};

/// Month folders listed at once for a submitted job (the pool's cap still bounds connections).
const LISTING_CONCURRENCY: usize = 8;
/// How often a worker session checks for commands to send.
const SESSION_TICK: Duration = Duration::from_secs(1);
/// Shortest time between two reports a session stores (workers send one a second); a report
/// that comes sooner waits, and a newer one replaces it, so a flooding worker costs the store
/// no more than a well-behaved one. Reports are cumulative: the newest says everything.
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(500);
/// Cancel commands remembered per session (so each is sent once); older ones are forgotten.
const CANCELS_REMEMBERED: usize = 1024;
/// Follow intervals a standing job may have: from a second to 31 days.
pub const FOLLOW_INTERVALS_MS: std::ops::RangeInclusive<u64> = 1_000..=31 * 24 * 3_600_000;
/// Standing jobs' passes one coordinator runs per tick at most (each lists its selection).
const FOLLOW_PASSES_PER_TICK: usize = 4;

/// Leases per `GetJob` page when the caller does not say.
pub const DEFAULT_LEASE_PAGE: u32 = 500;
/// Most leases per `GetJob` page: with last errors cut to `MAX_ERROR_SHOWN`, a page stays far
/// below gRPC's 4 MiB message limit.
pub const MAX_LEASE_PAGE: u32 = 1_000;
/// Longest last error a lease view carries.
const MAX_ERROR_SHOWN: usize = 1_024;
/// Longest page token accepted (item ids are short).
const MAX_PAGE_TOKEN: usize = 256;
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
    /// The one source this coordinator's jobs use (`--bucket`, `--endpoint`).
    pub source: SourceConfig,
    /// Caps and deadlines.
    pub caps: Arc<Caps>,
    /// One permit per allowed worker session (`--max-workers`).
    pub sessions: Arc<Semaphore>,
    /// One job is listed and planned at a time, so planning memory is that of one job.
    pub planning: Semaphore,
    /// Ends the worker sessions when the coordinator stops.
    pub stopping: CancellationToken,
    /// Fleet-wide bandwidth budgets and the workers' shares of them.
    pub shares: crate::shares::Shares,
}

/// `source` as jobs record it: the endpoint empty when it is the default one.
pub fn source_spec(source: &SourceConfig) -> SourceSpec {
    SourceSpec {
        bucket: source.bucket.clone(),
        endpoint: normalize_endpoint(source.endpoint.as_deref().unwrap_or_default()),
    }
}

/// An endpoint as sources are compared: no trailing `/`, the default one empty.
fn normalize_endpoint(endpoint: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    if endpoint == DEFAULT_ENDPOINT {
        String::new()
    } else {
        endpoint.to_string()
    }
}

/// `s3://bucket at endpoint`, for messages (credentials in the endpoint hidden).
fn describe_source(source: &SourceSpec) -> String {
    let endpoint = if source.endpoint.is_empty() {
        DEFAULT_ENDPOINT.to_string()
    } else {
        common::redact::redact_url(&source.endpoint)
    };
    format!("s3://{} at {endpoint}", source.bucket)
}

fn lease_status(ack: Ack) -> Result<i32, Error> {
    Ok(match ack {
        Ack::Ok => pb::LeaseStatus::Ok as i32,
        Ack::AlreadyDone => pb::LeaseStatus::AlreadyDone as i32,
        Ack::LeaseLost => pb::LeaseStatus::LeaseLost as i32,
        Ack::NotHolder => {
            return Err(Error::PermissionDenied(
                "this lease was granted to another worker".into(),
            ));
        }
    })
}

fn lease_ref(lease: Option<pb::LeaseRef>) -> Result<LeaseRef, Error> {
    let lease = lease.ok_or_else(|| Error::InvalidArgument("missing lease".into()))?;
    check_id("job id", &lease.job_id)?;
    check_id("lease item", &lease.item_id)?;
    check_id("lease id", &lease.lease_id)?;
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
        follow: job.follow.as_ref().map(|follow| pb::FollowView {
            interval_ms: follow.interval_ms,
            next_check_unix_ms: follow.next_check_ms,
            passes: follow.passes,
            last_success_unix_ms: follow.last_success_ms,
            last_error: shorten(follow.last_error.clone(), MAX_ERROR_SHOWN),
        }),
        bwlimit: job.bwlimit.clone().unwrap_or_default(),
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

/// Wire form of a grant. The source is the coordinator's own, whatever the store holds.
fn grant_to_pb(grant: Grant, source: &SourceSpec) -> pb::Lease {
    pb::Lease {
        lease: Some(lease_to_pb(&grant.lease)),
        source: Some(source_to_pb(source)),
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
    /// The coordinator's source, or PERMISSION_DENIED naming both sources when a request
    /// names another one. Empty fields mean "the coordinator's".
    fn check_source(&self, requested: Option<pb::Source>) -> Result<SourceSpec, Error> {
        let own = source_spec(&self.source);
        let requested = requested.unwrap_or_default();
        let asked = SourceSpec {
            bucket: if requested.bucket.is_empty() {
                own.bucket.clone()
            } else {
                requested.bucket
            },
            endpoint: if requested.endpoint.is_empty() {
                own.endpoint.clone()
            } else {
                normalize_endpoint(&requested.endpoint)
            },
        };
        if asked != own {
            return Err(Error::PermissionDenied(format!(
                "the job's source {} is not this coordinator's source {}; a coordinator mirrors only its own source (--bucket, --endpoint)",
                describe_source(&asked),
                describe_source(&own)
            )));
        }
        Ok(own)
    }

    /// Validates, lists and plans a job, then stores it.
    async fn submit(&self, request: pb::SubmitJobRequest) -> Result<pb::SubmitJobResponse, Error> {
        let selection = request.selection.unwrap_or_default();
        let validated = Selection::parse(
            &selection.products,
            &selection.variables,
            &selection.grids,
            &selection.start,
            &selection.end,
            common::dates::today_utc(),
        )
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let follow = match request.follow_interval_ms {
            None => None,
            Some(interval_ms) if FOLLOW_INTERVALS_MS.contains(&interval_ms) => Some(FollowSpec {
                interval_ms,
                end: selection.end.trim().to_string(),
            }),
            Some(interval_ms) => {
                return Err(Error::InvalidArgument(format!(
                    "invalid follow interval {interval_ms} ms: expected 1 s to 31 days"
                )));
            }
        };
        let bwlimit = match request.bwlimit.trim() {
            "" => None,
            text => {
                common::bwlimit::BwLimit::parse(text)
                    .map_err(|e| Error::InvalidArgument(format!("invalid bandwidth budget {e}")))?;
                Some(text.to_string())
            }
        };
        let source = self.check_source(request.source)?;
        let active = self.store.active_jobs().await?;
        if active >= self.caps.max_active_jobs {
            return Err(Error::ResourceExhausted(format!(
                "{active} jobs are active, the limit is {} (--max-active-jobs); wait for one to finish or cancel one",
                self.caps.max_active_jobs
            )));
        }
        // One listing and plan at a time: the memory of a plan is the memory of one job.
        let _planning = self.planning_permit().await?;
        let source_client = Source::connect(&self.source).await;
        let found = self.list_selection(&source_client, &validated).await?;
        // Never silent: requests that matched nothing are warned about, and a job that would
        // select nothing is refused with the reason read from the listing.
        let warnings = coverage::warnings(&validated, &found);
        if found.objects.is_empty() {
            let why = coverage::explain_empty(
                &source_client,
                &validated,
                &found,
                &RetryPolicy::default(),
            )
            .await;
            return Err(Error::EmptySelection(self.scrub(&why)));
        }
        let objects = found.objects;
        let mut job = plan_job(
            random_id(),
            SelectionSpec::from(&validated),
            source,
            objects,
            self.limits,
        );
        job.follow = follow;
        job.bwlimit = bwlimit;
        self.store.create_job(&job).await?;
        tracing::info!(job = %job.job_id, items = job.items.len(), "job submitted");
        Ok(pb::SubmitJobResponse {
            leases: job.items.len() as u32,
            objects: job.items.iter().map(|i| i.objects.len() as u64).sum(),
            bytes: job.items.iter().map(lease::ItemSpec::bytes).sum(),
            job_id: job.job_id,
            warnings,
        })
    }
}

impl Coordinator {
    /// `worker`'s bandwidth share now, after it was granted leases of `granted` (if any):
    /// reads who holds what from the store when due, and the budgets of jobs not seen yet. A
    /// store that does not answer leaves the last holdings, and a budget it cannot give is
    /// asked again next time (the job counts as having none meanwhile).
    pub async fn share_after(&self, worker: &str, granted: &[&str]) -> Option<u64> {
        let shares = &self.shares;
        if !granted.is_empty() {
            shares.learn_grants(worker, granted.iter().copied(), Instant::now());
        }
        if shares.holdings_due(Instant::now()) {
            let _reading = shares.reading.lock().await;
            if shares.holdings_due(Instant::now()) {
                match self.store.holdings().await {
                    Ok(held) => shares.learn_holdings(held, Instant::now()),
                    Err(error) => tracing::debug!(%error, "could not read the holdings"),
                }
            }
        }
        for job in shares.unknown_budgets() {
            match self.store.job(&job).await {
                Ok(status) => shares.learn_budget(&job, status.bwlimit.as_deref()),
                Err(lease::Error::UnknownJob(_)) => shares.learn_budget(&job, None),
                Err(_) => {}
            }
        }
        shares.share_for(worker, Instant::now())
    }

    /// The selection's listing from this coordinator's source, capped in objects and bounded
    /// in time, with any credentials of the endpoint scrubbed from errors.
    async fn list_selection(
        &self,
        source_client: &Source,
        selection: &Selection,
    ) -> Result<Discovery, Error> {
        let listing = list_job(source_client, selection, self.caps.max_job_objects);
        // An SDK error may quote the endpoint, credentials and all.
        let scrub = |error: Error| match error {
            Error::ListingRefused(m) => Error::ListingRefused(self.scrub(&m)),
            Error::ListingFailed(m) => Error::ListingFailed(self.scrub(&m)),
            other => other,
        };
        tokio::time::timeout(self.caps.listing_deadline, listing)
            .await
            .map_err(|_| {
                Error::DeadlineExceeded(format!(
                    "listing the job's objects took longer than {}s",
                    self.caps.listing_deadline.as_secs()
                ))
            })?
            .map_err(scrub)
    }

    /// The one planning permit: one job is listed and planned at a time, so the memory of
    /// planning is the memory of one job.
    async fn planning_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Error> {
        self.planning
            .acquire()
            .await
            .map_err(|_| Error::Unavailable("the coordinator is stopping".into()))
    }

    /// `text` without the source endpoint's credentials.
    fn scrub(&self, text: &str) -> String {
        common::redact::scrub_url_from(text, self.source.endpoint.as_deref().unwrap_or_default())
    }

    /// Runs the passes of standing jobs that are due (at most a few per call). Returns how
    /// many ran.
    pub async fn run_due_passes(&self) -> Result<usize, Error> {
        let due = self.store.claim_due_passes(FOLLOW_PASSES_PER_TICK).await?;
        for (job_id, follow) in &due {
            let result = self.follow_pass(job_id, follow).await;
            let error = result
                .as_ref()
                .err()
                .map(|e| shorten(e.to_string(), MAX_ERROR_SHOWN));
            match &result {
                Ok((pass, added)) => {
                    tracing::info!(job = %job_id, pass, objects_added = added, "follow pass done");
                }
                Err(error) => tracing::warn!(job = %job_id, %error, "follow pass failed"),
            }
            self.metrics.follow_pass(result.is_ok());
            self.store.record_pass(job_id, error.as_deref()).await?;
        }
        Ok(due.len())
    }

    /// One pass of a standing job: lists its selection again (`--end latest` moves) and adds
    /// the objects that are new, or whose size or ETag changed, as new leases. Returns the
    /// pass's number and how many objects were added.
    async fn follow_pass(&self, job_id: &str, follow: &FollowSpec) -> Result<(u64, usize), Error> {
        let job = self.store.job(job_id).await?;
        let pass = job.follow.as_ref().map_or(0, |f| f.passes) + 1;
        let spec = &job.selection;
        let selection = Selection::parse(
            &spec.products,
            &spec.variables,
            &spec.grids,
            &spec.start,
            &follow.end,
            common::dates::today_utc(),
        )
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let _planning = self.planning_permit().await?;
        let source_client = Source::connect(&self.source).await;
        let found = self.list_selection(&source_client, &selection).await?;
        // `job_objects` is in plan order, where a pass's items come after every earlier one:
        // a later item of a key (a replaced object) overwrites the earlier, so the pass
        // compares with the newest version the job holds, never re-adding a replaced object.
        let known: HashMap<String, (u64, String)> = self
            .store
            .job_objects(job_id)
            .await?
            .into_iter()
            .map(|o| (o.key, (o.size, o.etag)))
            .collect();
        let fresh: Vec<RemoteObject> = found
            .objects
            .into_iter()
            .filter(|object| match known.get(&object.key) {
                None => true,
                Some((size, etag)) => {
                    *size != object.size || object.etag.as_deref().is_some_and(|e| e != etag)
                }
            })
            .collect();
        drop(known);
        if fresh.is_empty() {
            return Ok((pass, 0));
        }
        let added = fresh.len();
        // Ids after every earlier one in plan order, and new to the job.
        let prefix = format!("f{}-", lease::model::now_ms());
        let items = plan_items(fresh, self.limits, &prefix);
        self.store.extend_job(job_id, &items).await?;
        Ok((pass, added))
    }
}

/// Every object of the selection, sorted by key, refused as soon as there are more than
/// `max_objects`: the months are listed a few at a time and counted as they arrive, so an
/// oversized job costs at most a few months' listing, not the whole of it.
async fn list_job(
    source: &Source,
    selection: &Selection,
    max_objects: usize,
) -> Result<Discovery, Error> {
    let retry = RetryPolicy::default();
    let mut months = futures_util::stream::iter(selection.list_prefixes())
        .map(|prefix| list_prefix(source, prefix, selection, &retry))
        .buffer_unordered(LISTING_CONCURRENCY);
    let mut discovery = Discovery::new(selection);
    while let Some(month) = months.next().await {
        let month = month.map_err(|e| match e {
            ListError::Refused { .. } => Error::ListingRefused(e.to_string()),
            ListError::Exhausted { .. } => Error::ListingFailed(e.to_string()),
        })?;
        discovery.merge(month);
        if discovery.objects.len() > max_objects {
            return Err(Error::ResourceExhausted(format!(
                "the job selects more than {max_objects} objects (--max-job-objects); split it into smaller jobs"
            )));
        }
    }
    Ok(discovery.finish())
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
            0 => crate::limits::RECENT_JOBS,
            n => n.min(MAX_RECENT_JOBS) as usize,
        };
        let listed = self.0.store.recent_jobs(recent).await.map_err(status)?;
        let workers = self.0.store.workers().await.map_err(status)?;
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
        check_id("job id", &request.job_id)?;
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
        let job = store.job(&request.job_id).await.map_err(status)?;
        let (leases, next_page_token) = if page_size == 0 {
            (Vec::new(), String::new())
        } else {
            let page = store
                .items_page(&request.job_id, state, &request.page_token, page_size)
                .await
                .map_err(status)?;
            (
                page.items.into_iter().map(item_to_pb).collect(),
                page.next.unwrap_or_default(),
            )
        };
        let workers = if request.page_token.is_empty() {
            store.workers().await.map_err(status)?
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
        let job_id = request.into_inner().job_id;
        check_id("job id", &job_id)?;
        // A job that ended complete or failed has nothing to stop: refused, so that its state
        // keeps saying how it ended. A standing job still following is never ended: cancel
        // stops its passes. (One completing between this read and the cancel still turns
        // cancelled; nothing is lost either way.)
        let job = self.0.store.job(&job_id).await.map_err(status)?;
        let following = job.follow.as_ref().is_some_and(|f| f.next_check_ms > 0);
        if matches!(job.state, JobState::Complete | JobState::Failed) && !following {
            return Err(Error::InvalidArgument(format!(
                "job {job_id} is already {}: nothing to cancel",
                job.state.name()
            ))
            .into());
        }
        self.0.store.cancel_job(&job_id).await.map_err(status)?;
        Ok(Response::new(pb::CancelJobResponse {}))
    }

    async fn retry_dead(
        &self,
        request: Request<pb::RetryDeadRequest>,
    ) -> Result<Response<pb::RetryDeadResponse>, Status> {
        let job_id = request.into_inner().job_id;
        check_id("job id", &job_id)?;
        let retried = self.0.store.retry_dead(&job_id).await.map_err(status)?;
        Ok(Response::new(pb::RetryDeadResponse { retried }))
    }

    async fn drain_worker(
        &self,
        request: Request<pb::DrainWorkerRequest>,
    ) -> Result<Response<pb::DrainWorkerResponse>, Status> {
        let worker = request.into_inner().worker;
        if worker.is_empty() {
            return Err(Error::InvalidArgument("missing worker name".into()).into());
        }
        // A drain names a worker identity: the name in its certificate (or --name).
        check_worker_name(&worker)?;
        let known = self.0.store.workers().await.map_err(status)?;
        if !known.iter().any(|w| w.name == worker) {
            // A few names, so that the line stays a line however large the fleet.
            let mut names: Vec<&str> = known.iter().take(8).map(|w| w.name.as_str()).collect();
            if known.len() > names.len() {
                names.push("...");
            }
            return Err(Error::UnknownWorker(format!(
                "no worker named `{worker}` was heard from (known: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ))
            .into());
        }
        self.0.store.drain(&worker).await.map_err(status)?;
        Ok(Response::new(pb::DrainWorkerResponse {}))
    }
}

/// The worker service.
pub struct WorkerService(pub Arc<Coordinator>);

type CommandStream = Pin<Box<dyn Stream<Item = Result<pb::WorkerCommand, Status>> + Send>>;

/// A Worker call on one grant: the worker it claims to come from and the lease it names. The
/// four such calls take one path: caller (the certificate's name, the lease's ids checked),
/// the store, then its answer as a lease status.
trait LeaseCall {
    fn claimed_worker(&self) -> &str;
    fn lease(&self) -> Option<pb::LeaseRef>;
}

macro_rules! lease_call {
    ($($request:ty),+) => {$(
        impl LeaseCall for $request {
            fn claimed_worker(&self) -> &str {
                &self.worker
            }
            fn lease(&self) -> Option<pb::LeaseRef> {
                self.lease.clone()
            }
        }
    )+};
}

lease_call!(
    pb::RenewRequest,
    pb::CompleteRequest,
    pb::FailRequest,
    pb::ReleaseRequest
);

impl WorkerService {
    /// The worker a call acts for, and the lease it names.
    fn caller<T: LeaseCall>(request: &Request<T>) -> Result<(String, LeaseRef), Error> {
        let call = request.get_ref();
        let worker = peer_of(request)?.worker_name(call.claimed_worker())?;
        Ok((worker, lease_ref(call.lease())?))
    }
}

/// The store's answer to a call on a grant, as the call's lease status.
fn ack_status(answer: Result<Ack, lease::Error>) -> Result<i32, Status> {
    Ok(lease_status(answer.map_err(status)?)?)
}

#[tonic::async_trait]
impl Worker for WorkerService {
    async fn acquire(
        &self,
        request: Request<pb::AcquireRequest>,
    ) -> Result<Response<pb::AcquireResponse>, Status> {
        let worker = peer_of(&request)?.worker_name(&request.get_ref().worker)?;
        let max = grants_per_acquire(request.get_ref().max, self.0.limits.max_objects);
        let store = &self.0.store;
        if store.is_draining(&worker).await.map_err(status)? {
            return Ok(Response::new(pb::AcquireResponse {
                leases: Vec::new(),
                draining: true,
                bandwidth: None,
            }));
        }
        let request_id = &request.get_ref().request_id;
        let grants = if request_id.is_empty() {
            store.acquire(&worker, max).await
        } else {
            check_id("request", request_id).map_err(Status::from)?;
            store.acquire_for_request(&worker, max, request_id).await
        }
        .map_err(status)?;
        let jobs: Vec<&str> = grants.iter().map(|g| g.lease.job_id.as_str()).collect();
        let share = self.0.share_after(&worker, &jobs).await;
        let source = source_spec(&self.0.source);
        Ok(Response::new(pb::AcquireResponse {
            leases: grants
                .into_iter()
                .map(|grant| grant_to_pb(grant, &source))
                .collect(),
            draining: false,
            bandwidth: Some(pb::BandwidthShare {
                bytes_per_sec: share,
            }),
        }))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let (worker, lease) = Self::caller(&request)?;
        let started = std::time::Instant::now();
        let renewed = self.0.store.renew(&lease, &worker).await;
        self.0
            .metrics
            .renew_seconds
            .observe(started.elapsed().as_secs_f64());
        let status = ack_status(renewed)?;
        let share = self.0.share_after(&worker, &[]).await;
        Ok(Response::new(pb::RenewResponse {
            status,
            ttl_ms: self.0.store.policy().ttl.as_millis() as u64,
            bandwidth: Some(pb::BandwidthShare {
                bytes_per_sec: share,
            }),
        }))
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let (worker, lease) = Self::caller(&request)?;
        let status = ack_status(self.0.store.complete(&lease, &worker).await)?;
        Ok(Response::new(pb::CompleteResponse { status }))
    }

    async fn fail(
        &self,
        request: Request<pb::FailRequest>,
    ) -> Result<Response<pb::FailResponse>, Status> {
        let (worker, lease) = Self::caller(&request)?;
        let request = request.into_inner();
        // A reason may quote the source's endpoint; it is shown to operators.
        let endpoint = self.0.source.endpoint.clone().unwrap_or_default();
        let reason = common::redact::scrub_url_from(&bounded_reason(&request.reason), &endpoint);
        let outcome = self
            .0
            .store
            .fail(&lease, &worker, &reason, request.permanent)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::FailResponse {
            status: lease_status(outcome.ack)?,
            dead: outcome.dead,
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let (worker, lease) = Self::caller(&request)?;
        let status = ack_status(self.0.store.release(&lease, &worker).await)?;
        Ok(Response::new(pb::ReleaseResponse { status }))
    }

    type WorkerSessionStream = CommandStream;

    async fn worker_session(
        &self,
        request: Request<Streaming<pb::WorkerReport>>,
    ) -> Result<Response<CommandStream>, Status> {
        let peer = peer_of(&request)?;
        let Ok(slot) = self.0.sessions.clone().try_acquire_owned() else {
            return Err(Error::ResourceExhausted(format!(
                "the coordinator serves at most {} worker sessions (--max-workers)",
                self.0.caps.max_workers
            ))
            .into());
        };
        let mut reports = request.into_inner();
        let (commands, outbound) = mpsc::channel(16);
        let store = self.0.store.clone();
        let stopping = self.0.stopping.clone();
        let connected = SessionGauge::enter(self.0.metrics.clone());
        let metrics = self.0.metrics.clone();
        let coordinator = self.0.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _connected = connected;
            let mut worker: Option<String> = None;
            let mut drain_sent = false;
            // The bandwidth share this session last sent (None: none yet).
            let mut share_sent: Option<Option<u64>> = None;
            let mut cancels_sent: HashSet<LeaseRef> = HashSet::new();
            let mut tick = tokio::time::interval(SESSION_TICK);
            // The report waiting for its turn, and when the next may be stored.
            let mut waiting: Option<pb::WorkerReport> = None;
            let mut next_store = tokio::time::Instant::now();
            loop {
                let report = tokio::select! {
                    () = stopping.cancelled() => return,
                    report = reports.message() => {
                        let Ok(Some(report)) = report else { return };
                        let name = match session_worker(&peer, worker.as_deref(), &report) {
                            Ok(name) => name,
                            Err(error) => {
                                let _ = commands.send(Err(error.into())).await;
                                return;
                            }
                        };
                        worker = Some(name);
                        if tokio::time::Instant::now() < next_store {
                            if waiting.replace(report).is_some() {
                                metrics.reports_coalesced.inc();
                            }
                            continue;
                        }
                        report
                    }
                    () = tokio::time::sleep_until(next_store), if waiting.is_some() => {
                        let Some(report) = waiting.take() else { continue };
                        report
                    }
                    _ = tick.tick() => {
                        let Some(name) = &worker else { continue };
                        let share = coordinator.share_after(name, &[]).await;
                        if share_sent != Some(share) {
                            share_sent = Some(share);
                            let command = pb::WorkerCommand {
                                kind: Some(pb::worker_command::Kind::Bandwidth(pb::BandwidthShare { bytes_per_sec: share })),
                            };
                            if commands.send(Ok(command)).await.is_err() {
                                return;
                            }
                        }
                        if !drain_sent && store.is_draining(name).await.unwrap_or(false) {
                            drain_sent = true;
                            let command = pb::WorkerCommand { kind: Some(pb::worker_command::Kind::Drain(true)) };
                            if commands.send(Ok(command)).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                };
                next_store = tokio::time::Instant::now() + MIN_REPORT_INTERVAL;
                let Some(name) = worker.clone() else { continue };
                for lease in record_report(&*store, &name, report).await {
                    if cancels_sent.len() >= CANCELS_REMEMBERED {
                        cancels_sent.clear();
                    }
                    if cancels_sent.insert(lease.clone()) {
                        let command = pb::WorkerCommand {
                            kind: Some(pb::worker_command::Kind::CancelLease(lease_to_pb(&lease))),
                        };
                        if commands.send(Ok(command)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound))))
    }
}

/// The worker a session's report speaks for: the certificate's with TLS; otherwise the
/// first report's name, which later reports must keep. The report's size is checked first.
fn session_worker(
    peer: &Peer,
    known: Option<&str>,
    report: &pb::WorkerReport,
) -> Result<String, Error> {
    check_report(report)?;
    let name = peer.worker_name(&report.worker)?;
    match known {
        Some(known) if known != name => Err(Error::InvalidArgument(format!(
            "a session speaks for one worker: `{known}`, not `{name}`"
        ))),
        _ => Ok(name),
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

/// Stores `worker`'s report. Returns the leases it reported whose job was cancelled, which
/// the worker should stop. Store errors only cost this report (the next one replaces it).
///
/// The store work per progress entry is constant, whatever the number of live leases: one
/// progress transition, and one cancellation lookup per job the report names.
pub async fn record_report(
    store: &dyn LeaseStore,
    worker: &str,
    report: pb::WorkerReport,
) -> Vec<LeaseRef> {
    let metrics = report.metrics.map(metrics_from_pb).unwrap_or_default();
    if let Err(error) = store.heartbeat(worker, report.leases_held, &metrics).await {
        tracing::debug!(%error, "could not record a heartbeat");
    }
    let mut cancelled = Vec::new();
    let mut cancelled_jobs: HashMap<String, bool> = HashMap::new();
    for progress in report.progress {
        let Ok(lease) = lease_ref(progress.lease) else {
            continue;
        };
        let _ = store.progress(&lease, worker, progress.bytes_done).await;
        let job_cancelled = if let Some(known) = cancelled_jobs.get(&lease.job_id) {
            *known
        } else {
            let known = store.job_cancelled(&lease.job_id).await.unwrap_or(false);
            cancelled_jobs.insert(lease.job_id.clone(), known);
            known
        };
        if job_cancelled {
            cancelled.push(lease);
        }
    }
    cancelled
}
