//! Runs a coordinator: the gRPC services (with gRPC health), the reaper that returns expired
//! leases, and the HTTP side: `/healthz` (the process is alive, whatever Redis does),
//! `/readyz` (the store answers), `/metrics` (Prometheus) and the status page (`/`, and
//! `/jobs/JOB`).
//!
//! Listeners are bound by the caller and handed over, so tests never race for a port.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use proto::v1::operator_server::OperatorServer;
use proto::v1::worker_server::WorkerServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::metrics::CoordinatorMetrics;
use crate::model::ItemState;
use crate::planner::ItemLimits;
use crate::service::{
    Coordinator, DEFAULT_LEASE_PAGE, OperatorService, RECENT_JOBS, WorkerService,
};
use crate::status_page;
use crate::store::{LeaseStore, StoreError};

/// How often readiness (Redis answering) is re-checked.
const READINESS_EVERY: Duration = Duration::from_secs(1);

/// The coordinator's listeners and store.
pub struct Server {
    /// gRPC listener.
    pub grpc: TcpListener,
    /// HTTP listener for probes (and, later, metrics and the status page).
    pub http: Option<TcpListener>,
    /// The lease store.
    pub store: Arc<dyn LeaseStore>,
    /// Item bounds for new jobs.
    pub limits: ItemLimits,
}

impl Server {
    /// Serves until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let metrics = Arc::new(CoordinatorMetrics::default());
        let coordinator = Arc::new(Coordinator {
            store: self.store.clone(),
            limits: self.limits,
            metrics: metrics.clone(),
        });
        let (health, health_service) = tonic_health::server::health_reporter();
        let tasks = CancellationToken::new();
        tokio::spawn(reap(self.store.clone(), tasks.clone()));
        tokio::spawn(track_readiness(self.store.clone(), health, tasks.clone()));
        tokio::spawn(metrics.clone().refresh(self.store.clone(), tasks.clone()));
        if let Some(listener) = self.http {
            let state = HttpState {
                store: self.store.clone(),
                metrics,
            };
            tokio::spawn(serve_http(listener, state, shutdown.clone()));
        }
        let result = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(OperatorServer::new(OperatorService(coordinator.clone())))
            .add_service(WorkerServer::new(WorkerService(coordinator)))
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.grpc), shutdown.cancelled())
            .await;
        tasks.cancel();
        result.map_err(std::io::Error::other)
    }
}

/// Returns expired leases every third of the TTL. Acquire reaps too; this keeps `status`
/// truthful when no worker is asking.
async fn reap(store: Arc<dyn LeaseStore>, stop: CancellationToken) {
    let mut every = tokio::time::interval((store.policy().ttl / 3).max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        match store.reap().await {
            Ok(0) => {}
            Ok(reaped) => tracing::info!(reaped, "expired leases returned to pending"),
            Err(error) => tracing::debug!(%error, "reaper could not reach the store"),
        }
    }
}

async fn track_readiness(
    store: Arc<dyn LeaseStore>,
    health: tonic_health::server::HealthReporter,
    stop: CancellationToken,
) {
    let mut ready = None;
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
            if now_ready {
                tracing::info!("lease store reachable: ready");
            } else {
                tracing::warn!("lease store unreachable: not ready");
            }
            ready = Some(now_ready);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(READINESS_EVERY) => {}
        }
    }
}

/// What the HTTP handlers share.
#[derive(Clone)]
struct HttpState {
    store: Arc<dyn LeaseStore>,
    metrics: Arc<CoordinatorMetrics>,
}

async fn serve_http(listener: TcpListener, state: HttpState, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/", get(overview))
        .route("/jobs/{job}", get(job_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(%error, "http server failed");
    }
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "lease store unreachable\n"),
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

fn page_error(error: StoreError) -> (StatusCode, String) {
    match error {
        StoreError::UnknownJob(job) => (
            StatusCode::NOT_FOUND,
            format!("no job {}\n", status_page::escape(&job)),
        ),
        other => (StatusCode::SERVICE_UNAVAILABLE, format!("{other}\n")),
    }
}

async fn overview(State(state): State<HttpState>) -> Result<Html<String>, (StatusCode, String)> {
    let listed = state
        .store
        .recent_jobs(RECENT_JOBS)
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
