//! Runs a coordinator: the gRPC services (with gRPC health) behind the limits and
//! authorization layers, the reaper that returns expired leases and prunes old jobs, and the
//! HTTP side: `/healthz` (the process is alive, whatever Redis does), `/readyz` (the store
//! answers), `/metrics` (Prometheus) and the status page (`/`, and `/jobs/JOB`), over https
//! when TLS is configured.
//!
//! Listeners are bound by the caller and handed over, so tests never race for a port.
//!
//! Stopping never waits for peers: the worker sessions are ended, in-flight calls get
//! [`STOP_GRACE`] to finish, then every connection is dropped.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use proto::http_port::{HttpPortLimits, serve_http_port};
use proto::v1::operator_server::OperatorServer;
use proto::v1::worker_server::WorkerServer;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use transport::SourceConfig;

use crate::auth::AuthorizeLayer;
use crate::error::Error;
use crate::limits::{
    Caps, LimitsLayer, MAX_CALLS_PER_CONNECTION, MAX_REQUEST_BYTES, MAX_STREAMS_PER_CONNECTION,
    SPARE_CONNECTIONS, limited_incoming,
};
use crate::metrics::CoordinatorMetrics;
use crate::service::{Coordinator, DEFAULT_LEASE_PAGE, OperatorService, WorkerService};
use crate::status_page;
use crate::tls::ServerTls;
use lease::LeaseStore;
use lease::model::ItemState;
use lease::planner::ItemLimits;

/// How often readiness (Redis answering) is re-checked.
const READINESS_EVERY: Duration = Duration::from_secs(1);
/// Time in-flight calls get to finish once the coordinator is asked to stop.
pub const STOP_GRACE: Duration = Duration::from_secs(4);
/// Largest encoded Acquire response (the grant count is bounded before this matters).
const MAX_WORKER_RESPONSE_BYTES: usize = 8 << 20;

/// How a coordinator runs, beyond its listeners and store.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Item bounds for new jobs.
    pub limits: ItemLimits,
    /// The one source of this coordinator's jobs.
    pub source: SourceConfig,
    /// Caps and deadlines.
    pub caps: Caps,
    /// HTTP/2 and TCP keepalive interval (and timeout).
    pub keepalive: Duration,
    /// TLS for both ports; `None` serves plaintext (the caller checked that it may).
    pub tls: Option<ServerTls>,
    /// The only SPIFFE trust domain whose identities are accepted (with TLS), when pinned.
    pub trust_domain: Option<String>,
}

/// The coordinator's listeners and store.
pub struct Server {
    /// gRPC listener.
    pub grpc: TcpListener,
    /// HTTP listener for probes, metrics and the status page.
    pub http: Option<TcpListener>,
    /// The lease store.
    pub store: Arc<dyn LeaseStore>,
    /// Everything else.
    pub settings: Settings,
}

impl Server {
    /// Serves until `shutdown` fires, then stops within [`STOP_GRACE`] and a little.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let settings = self.settings;
        let caps = Arc::new(settings.caps.clone());
        let metrics = Arc::new(CoordinatorMetrics::default());
        let coordinator = Arc::new(Coordinator {
            store: self.store.clone(),
            limits: settings.limits,
            metrics: metrics.clone(),
            source: settings.source.clone(),
            sessions: Arc::new(Semaphore::new(caps.max_workers)),
            caps: caps.clone(),
            planning: Semaphore::new(1),
            stopping: shutdown.clone(),
            shares: crate::shares::Shares::default(),
        });
        let (health, health_service) = tonic_health::server::health_reporter();
        let tasks = CancellationToken::new();
        tokio::spawn(reap(self.store.clone(), caps.job_retention, tasks.clone()));
        tokio::spawn(track_readiness(self.store.clone(), health, tasks.clone()));
        tokio::spawn(metrics.clone().refresh(self.store.clone(), tasks.clone()));
        tokio::spawn(follow_standing_jobs(coordinator.clone(), tasks.clone()));
        if let Some(listener) = self.http {
            let state = HttpState {
                store: self.store.clone(),
                metrics,
            };
            let tls = settings
                .tls
                .as_ref()
                .map(|tls| tokio_rustls::TlsAcceptor::from(tls.https.clone()));
            tokio::spawn(serve_http(listener, state, tls, shutdown.clone()));
        }
        let mut builder = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .http2_keepalive_interval(Some(settings.keepalive))
            .http2_keepalive_timeout(Some(settings.keepalive))
            .http2_max_pending_accept_reset_streams(Some(64))
            .http2_max_header_list_size(16 << 10);
        if let Some(tls) = &settings.tls {
            builder = builder
                .tls_config(tls.grpc.clone())
                .map_err(|e| Error::InvalidArgument(format!("invalid TLS settings: {e}")))?;
        }
        let incoming = limited_incoming(
            self.grpc,
            caps.max_workers + SPARE_CONNECTIONS,
            settings.keepalive,
        );
        let serve = builder
            .layer(LimitsLayer::new(caps.clone()))
            .layer(AuthorizeLayer {
                tls: settings.tls.is_some(),
                trust_domain: settings.trust_domain.as_deref().map(Into::into),
            })
            .add_service(health_service)
            .add_service(
                OperatorServer::new(OperatorService(coordinator.clone()))
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(
                WorkerServer::new(WorkerService(coordinator))
                    .max_decoding_message_size(MAX_REQUEST_BYTES)
                    .max_encoding_message_size(MAX_WORKER_RESPONSE_BYTES),
            )
            .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
        let result = tokio::select! {
            result = serve => result.map_err(|e| Error::Unavailable(format!("grpc server failed: {e}"))),
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(STOP_GRACE).await;
            } => {
                tracing::warn!("calls still open after the grace period: closing their connections");
                Ok(())
            }
        };
        tasks.cancel();
        result
    }
}

/// Returns expired leases every third of the TTL (acquire reaps too; this keeps `status`
/// truthful when no worker is asking), and forgets what is older than `retention`.
async fn reap(store: Arc<dyn LeaseStore>, retention: Duration, stop: CancellationToken) {
    let mut every = tokio::time::interval((store.policy().ttl / 3).max(Duration::from_millis(100)));
    // Pruning is cheap but need not run often; short retentions (tests) prune sooner.
    let prune_every = (retention / 4).clamp(Duration::from_millis(500), Duration::from_secs(60));
    let mut prune = tokio::time::interval(prune_every);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {
                match store.reap().await {
                    Ok(0) => {}
                    Ok(reaped) => tracing::info!(reaped, "expired leases returned to pending"),
                    Err(error) => tracing::debug!(%error, "reaper could not reach the store"),
                }
            }
            _ = prune.tick() => {
                match store.prune(retention).await {
                    Ok(pruned) if pruned.jobs + pruned.workers > 0 => tracing::info!(
                        jobs = pruned.jobs,
                        workers = pruned.workers,
                        retention_secs = retention.as_secs(),
                        "forgot finished jobs and silent workers past the retention"
                    ),
                    Ok(_) => {}
                    Err(error) => tracing::debug!(%error, "pruning could not reach the store"),
                }
            }
        }
    }
}

async fn track_readiness(
    store: Arc<dyn LeaseStore>,
    health: tonic_health::server::HealthReporter,
    stop: CancellationToken,
) {
    let mut ready = None;
    let started = tokio::time::Instant::now();
    let mut warned_at_start = false;
    let mut ever_ready = false;
    loop {
        let now_ready = store.ping().await.is_ok();
        if ready != Some(now_ready) {
            let status = if now_ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            health.set_service_status("era5.v1.Operator", status).await;
            health.set_service_status("era5.v1.Worker", status).await;
            match (ready, now_ready) {
                (_, true) => tracing::info!("lease store reachable: ready"),
                // At start the store's connection is still being made: not a warning until
                // it has taken longer than `CONNECT_GRACE` (below).
                (None, false) => tracing::info!("lease store not reachable yet: not ready"),
                (Some(_), false) => tracing::warn!("lease store unreachable: not ready"),
            }
            ready = Some(now_ready);
        }
        ever_ready |= now_ready;
        if !ever_ready && !warned_at_start && started.elapsed() >= CONNECT_GRACE {
            tracing::warn!("lease store unreachable since start: not ready");
            warned_at_start = true;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(READINESS_EVERY) => {}
        }
    }
}

/// What the HTTP handlers share.
#[derive(Clone)]
struct HttpState {
    store: Arc<dyn LeaseStore>,
    metrics: Arc<CoordinatorMetrics>,
}

/// Serves the HTTP port (https with `tls`) until `shutdown`, within the default
/// [`HttpPortLimits`] (a connection cap, header and idle deadlines).
async fn serve_http(
    listener: TcpListener,
    state: HttpState,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/", get(overview))
        .route("/jobs/{job}", get(job_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    serve_http_port(listener, app, tls, HttpPortLimits::default(), shutdown).await;
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "lease store unreachable\n"),
    }
}

/// How long a coordinator waits for its first connection to the store before it warns.
const CONNECT_GRACE: Duration = Duration::from_secs(10);

/// How often the store is asked which standing jobs' passes are due: one cheap range read.
const FOLLOW_TICK: Duration = Duration::from_secs(1);

/// Runs standing jobs' passes as they fall due, until `stop`. Every coordinator runs this; the
/// store's claim makes each pass run on one of them.
async fn follow_standing_jobs(coordinator: Arc<Coordinator>, stop: CancellationToken) {
    // Failures in a row: the first after a success is worth a warning, and so is a store that
    // has not answered for `CONNECT_GRACE` (at start its connection is still being made).
    let mut failures: u32 = 0;
    let mut answered_once = false;
    let grace_ticks = (CONNECT_GRACE.as_secs() / FOLLOW_TICK.as_secs()).max(1) as u32;
    loop {
        match coordinator.run_due_passes().await {
            Ok(_) => {
                failures = 0;
                answered_once = true;
            }
            Err(error) => {
                failures += 1;
                if (failures == 1 && answered_once) || failures % (grace_ticks * 6) == grace_ticks {
                    tracing::warn!(%error, failures, "standing jobs could not be checked; trying again");
                } else {
                    tracing::debug!(%error, "standing jobs could not be checked; trying again");
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(FOLLOW_TICK) => {}
        }
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// A page's error: the status from the crate's one table, the message escaped.
fn page_error(error: impl Into<Error>) -> (StatusCode, String) {
    let error: Error = error.into();
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        format!("{}\n", status_page::escape(&error.to_string())),
    )
}

async fn overview(State(state): State<HttpState>) -> Result<Html<String>, (StatusCode, String)> {
    let listed = state
        .store
        .recent_jobs(crate::limits::RECENT_JOBS)
        .await
        .map_err(page_error)?;
    let workers = state.store.workers().await.map_err(page_error)?;
    let history = state.store.history().await.map_err(page_error)?;
    Ok(Html(status_page::overview(
        &listed.jobs,
        listed.total,
        &workers,
        &history,
    )))
}

/// `?after=ITEM&state=STATE` of a job page.
#[derive(serde::Deserialize)]
struct PageQuery {
    #[serde(default)]
    after: String,
    #[serde(default)]
    state: String,
}

async fn job_page(
    State(state): State<HttpState>,
    Path(job): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Html<String>, (StatusCode, String)> {
    crate::limits::check_id("job id", &job).map_err(page_error)?;
    let filter = match query.state.as_str() {
        "" => None,
        name => Some(ItemState::parse(name).ok_or_else(|| {
            (
                StatusCode::BAD_REQUEST,
                "state must be pending, leased, done or dead\n".to_string(),
            )
        })?),
    };
    let status = state.store.job(&job).await.map_err(page_error)?;
    let page = state
        .store
        .items_page(&job, filter, &query.after, DEFAULT_LEASE_PAGE as usize)
        .await
        .map_err(page_error)?;
    let workers = state.store.workers().await.map_err(page_error)?;
    Ok(Html(status_page::job_page(
        &status,
        &page.items,
        filter,
        page.next.as_deref(),
        &workers,
    )))
}
