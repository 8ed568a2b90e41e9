//! The worker's HTTP side: Prometheus `/metrics`, `/healthz` (the process is alive, whatever
//! the coordinator does) and `/readyz` (the coordinator answered recently, and DEST can take
//! data: a full or failing DEST makes the worker not ready until it recovers).
//!
//! Metrics are read from the engine's own counters and the pool's gauge at scrape time:
//! `era5_bytes_downloaded_total`, `era5_objects_completed_total`, `era5_s3_connections_open`,
//! `era5_s3_connections_in_use`, `era5_s3_retries_total{reason}`,
//! `era5_s3_stall_timeouts_total`, `era5_verify_failures_total`,
//! `era5_checksum_contradictions_total`, `era5_local_io_errors_total{kind}`, `era5_dest_free_bytes` (statvfs of DEST), the request
//! window `era5_s3_concurrency` (autotuned, see `engine::autotune`) with
//! `era5_s3_requests_in_flight`, the hedging counters `era5_s3_hedged_requests_total`,
//! `era5_s3_hedges_won_total` and `era5_s3_duplicate_bytes_total`, and the histogram
//! `era5_lease_renew_seconds` of renewal round trips, and what the traffic costs:
//! `era5_s3_requests_total{kind}` (as S3 bills them, see `transport::cost`) and
//! `era5_s3_socket_bytes_total{direction}`. The only labels are the retry reason, the kind of
//! local failure, the request kind and the direction, all fixed sets.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use proto::http_port::{HttpPortLimits, serve_http_port};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use transport::ConnectionStats;
use transport::cost::RequestKind;
use transport::retry::RetryReason;

use common::sync::MutexExt;
use engine::disk::{DiskGate, LocalIoKind, free_bytes};
use engine::progress::Progress;
use engine::scheduler::RequestScheduler;

/// A worker is ready while the coordinator has answered within this long.
pub const READY_WITHIN: Duration = Duration::from_secs(30);

/// Buckets of renewal round trips, in seconds.
const RENEW_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// The worker's metrics and readiness.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    /// Renewal round trips.
    pub renew_seconds: Histogram,
    started: Instant,
    /// Milliseconds since `started` of the last successful coordinator call (-1: never).
    last_contact: AtomicI64,
    /// DEST and the gate a full or failing DEST closes, once the worker set them.
    dest: Arc<OnceLock<DestWatch>>,
}

/// What the telemetry knows of DEST.
#[derive(Debug)]
struct DestWatch {
    dest: PathBuf,
    gate: Arc<DiskGate>,
}

/// The request schedulers of a worker's engines (one per source), for their windows.
pub type Schedulers = Arc<Mutex<Vec<Arc<RequestScheduler>>>>;

#[derive(Debug)]
struct EngineCollector {
    progress: Arc<Progress>,
    connections: Arc<ConnectionStats>,
    schedulers: Schedulers,
    dest: Arc<OnceLock<DestWatch>>,
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Counter,
    )?)
}

/// One counter family with one label: `(name, help, label)` and the value of each label value.
fn labelled_counters(
    encoder: &mut DescriptorEncoder,
    (name, help, label): (&str, &str, &str),
    values: impl IntoIterator<Item = (&'static str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, count) in values {
        ConstCounter::new(count).encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: usize,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value as i64).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Gauge,
    )?)
}

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let progress = self.progress.snapshot();
        let pool = self.connections.snapshot();
        counter(
            &mut encoder,
            "era5_bytes_downloaded",
            "Bytes received from S3",
            progress.bytes_downloaded,
        )?;
        counter(
            &mut encoder,
            "era5_objects_completed",
            "Objects present and verified",
            progress.objects_done,
        )?;
        gauge(
            &mut encoder,
            "era5_s3_connections_open",
            "Open S3 connections",
            pool.open,
        )?;
        gauge(
            &mut encoder,
            "era5_s3_connections_in_use",
            "S3 connections carrying a request",
            pool.in_use,
        )?;
        let (window, in_flight) = self
            .schedulers
            .lock_unpoisoned()
            .iter()
            .map(|s| s.snapshot())
            .fold((0, 0), |(w, f), s| (w + s.window, f + s.in_flight));
        gauge(
            &mut encoder,
            "era5_s3_concurrency",
            "Requests the engine admits at once (autotuned below --connections)",
            window,
        )?;
        gauge(
            &mut encoder,
            "era5_s3_requests_in_flight",
            "S3 requests in flight, hedges included",
            in_flight,
        )?;
        counter(
            &mut encoder,
            "era5_s3_hedged_requests",
            "Slow requests asked again on another connection",
            progress.hedged_requests,
        )?;
        counter(
            &mut encoder,
            "era5_s3_hedges_won",
            "Hedged requests whose second copy answered first",
            progress.hedges_won,
        )?;
        counter(
            &mut encoder,
            "era5_s3_duplicate_bytes",
            "Bytes received twice and discarded because of hedging",
            progress.duplicate_bytes,
        )?;
        labelled_counters(
            &mut encoder,
            ("era5_s3_retries", "Retried S3 requests by reason", "reason"),
            RetryReason::ALL.map(|r| (r.label(), progress.retries_for(r))),
        )?;
        labelled_counters(
            &mut encoder,
            (
                "era5_s3_requests",
                "S3 requests sent, by the kind S3 bills them as (retries and hedges included)",
                "kind",
            ),
            RequestKind::ALL.map(|k| (k.label(), pool.traffic.requests(k))),
        )?;
        labelled_counters(
            &mut encoder,
            (
                "era5_s3_socket_bytes",
                "Bytes on the S3 sockets, headers included, by direction",
                "direction",
            ),
            [
                ("in", pool.traffic.bytes_in),
                ("out", pool.traffic.bytes_out),
            ],
        )?;
        counter(
            &mut encoder,
            "era5_s3_stall_timeouts",
            "Reads abandoned after the stall timeout",
            progress.retries_for(RetryReason::Stall),
        )?;
        counter(
            &mut encoder,
            "era5_verify_failures",
            "Downloads that failed verification",
            progress.verify_failures,
        )?;
        counter(
            &mut encoder,
            "era5_checksum_contradictions",
            "Objects whose S3 checksum contradicted the ETag that verified their bytes",
            progress.checksum_contradictions,
        )?;
        labelled_counters(
            &mut encoder,
            (
                "era5_local_io_errors",
                "Local write failures by kind (no_space, quota, read_only, io, other)",
                "kind",
            ),
            LocalIoKind::ALL.map(|k| (k.label(), progress.local_io_errors_for(k))),
        )?;
        if let Some(watch) = self.dest.get()
            && let Some(free) = free_bytes(&watch.dest)
        {
            ConstGauge::new(free as i64).encode(encoder.encode_descriptor(
                "era5_dest_free_bytes",
                "Bytes free on DEST's filesystem (statvfs)",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

impl Telemetry {
    /// Metrics over the engine's counters, the pool's gauge and the engines' windows.
    pub fn new(
        progress: Arc<Progress>,
        connections: Arc<ConnectionStats>,
        schedulers: Schedulers,
    ) -> Arc<Self> {
        let mut registry = Registry::default();
        let dest = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(EngineCollector {
            progress,
            connections,
            schedulers,
            dest: dest.clone(),
        }));
        let renew_seconds = Histogram::new(RENEW_BUCKETS);
        registry.register(
            "era5_lease_renew_seconds",
            "Round trip of a lease renewal",
            renew_seconds.clone(),
        );
        Arc::new(Self {
            registry,
            renew_seconds,
            started: Instant::now(),
            last_contact: AtomicI64::new(-1),
            dest,
        })
    }

    /// Reports DEST's free space, and readiness only while `gate` is open.
    pub fn watch_dest(&self, dest: PathBuf, gate: Arc<DiskGate>) {
        let _ = self.dest.set(DestWatch { dest, gate });
    }

    /// Why DEST cannot take data, if it cannot.
    pub fn dest_problem(&self) -> Option<String> {
        self.dest
            .get()
            .and_then(|watch| watch.gate.closed_because())
    }

    /// The coordinator just answered.
    pub fn contact(&self) {
        self.last_contact
            .store(self.started.elapsed().as_millis() as i64, Ordering::Relaxed);
    }

    /// Whether the coordinator answered within [`READY_WITHIN`].
    pub fn ready(&self) -> bool {
        let last = self.last_contact.load(Ordering::Relaxed);
        last >= 0
            && (self.started.elapsed().as_millis() as i64 - last) < READY_WITHIN.as_millis() as i64
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown`, bounded as the
    /// coordinator's port is ([`HttpPortLimits`]: a connection cap, header and idle deadlines).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self);
        serve_http_port(listener, app, None, HttpPortLimits::default(), shutdown).await;
    }
}

async fn readyz(State(telemetry): State<Arc<Telemetry>>) -> (StatusCode, String) {
    if let Some(problem) = telemetry.dest_problem() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("{problem}\n"))
    } else if telemetry.ready() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "coordinator not reached recently\n".into(),
        )
    }
}

async fn metrics(State(telemetry): State<Arc<Telemetry>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        telemetry.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_the_documented_names() {
        let progress = Arc::new(Progress::default());
        progress.add_downloaded(1234);
        progress.retry(RetryReason::SlowDown);
        progress.retry(RetryReason::Stall);
        let telemetry = Telemetry::new(
            progress,
            Arc::new(ConnectionStats::default()),
            Schedulers::default(),
        );
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(DiskGate::default());
        telemetry.watch_dest(dir.path().to_path_buf(), gate.clone());
        telemetry.renew_seconds.observe(0.003);
        let text = telemetry.render();
        for line in [
            "era5_bytes_downloaded_total 1234",
            "era5_objects_completed_total 0",
            "era5_s3_connections_open 0",
            "era5_s3_connections_in_use 0",
            "era5_s3_retries_total{reason=\"slowdown\"} 1",
            "era5_s3_stall_timeouts_total 1",
            "era5_s3_requests_total{kind=\"get\"} 0",
            "era5_s3_requests_total{kind=\"list\"} 0",
            "era5_s3_socket_bytes_total{direction=\"in\"} 0",
            "era5_verify_failures_total 0",
            "era5_checksum_contradictions_total 0",
            "era5_lease_renew_seconds_count 1",
            "era5_local_io_errors_total{kind=\"no_space\"} 0",
            "era5_dest_free_bytes",
        ] {
            assert!(
                text.lines()
                    .any(|l| l == line || (l.starts_with(line) && line.ends_with("bytes"))),
                "missing `{line}` in\n{text}"
            );
        }
        assert!(!telemetry.ready());
        telemetry.contact();
        assert!(telemetry.ready());
        assert!(telemetry.dest_problem().is_none());
        gate.close(&engine::disk::LocalIoError {
            kind: LocalIoKind::NoSpace,
            path: dir.path().to_path_buf(),
            detail: String::new(),
            needed: Some(1),
            free: Some(0),
        });
        assert!(
            telemetry
                .dest_problem()
                .is_some_and(|p| p.starts_with("no space left on DEST"))
        );
    }
}
