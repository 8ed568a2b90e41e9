//! The coordinator's Prometheus metrics:
//!
//! - `era5_leases{state}`: items by state across the jobs that may still have work and the
//!   latest finished ones (refreshed from the store every few seconds, so a scrape never waits
//!   on Redis, and reading a bounded number of jobs however many ran before);
//! - `era5_lease_renew_seconds`: time to handle a Renew (histogram);
//! - `era5_workers_connected`: worker session streams open on this coordinator;
//! - `era5_worker_reports_coalesced_total`: progress reports that came sooner than a
//!   session's report interval and were folded into the next one (a flooding worker);
//! - `era5_follow_passes_total{result}`: standing jobs' passes this coordinator ran (`ok`,
//!   `failed`);
//! - `era5_follow_last_success_timestamp_seconds`: the oldest last successful pass among the
//!   standing jobs (0 when there are none), and `era5_follow_interval_seconds` the longest
//!   interval among them: an alert compares the two (no pass for three intervals).
//!
//! Labels have bounded cardinality: the lease state, never a job, item or lease id.

use common::sync::MutexExt;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use lease::LeaseStore;
use lease::model::Counts;

/// Buckets of renewal latencies, in seconds.
pub const RENEW_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The coordinator's metrics.
#[derive(Debug)]
pub struct CoordinatorMetrics {
    registry: Registry,
    /// Time to handle a Renew.
    pub renew_seconds: Histogram,
    /// Open worker sessions.
    pub workers_connected: Gauge<i64, AtomicI64>,
    /// Reports folded into a later one because they came too soon.
    pub reports_coalesced: Counter,
    leases: Arc<LeaseCounts>,
    follow_passes: Family<PassResult, Counter>,
    follow_last_success: Gauge<f64, AtomicU64>,
    follow_interval: Gauge<f64, AtomicU64>,
}

/// The label of a pass's result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassResult {
    result: &'static str,
}

/// The last lease counts read from the store.
#[derive(Debug, Default)]
struct LeaseCounts(Mutex<Counts>);

impl Collector for LeaseCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = *self.0.lock_unpoisoned();
        let mut family = encoder.encode_descriptor(
            "era5_leases",
            "Lease items by state, across active and recently finished jobs",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (state, value) in [
            ("pending", counts.pending),
            ("leased", counts.leased),
            ("done", counts.done),
            ("dead", counts.dead),
        ] {
            let labels = [("state", state)];
            ConstGauge::new(i64::from(value)).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let renew_seconds = Histogram::new(RENEW_BUCKETS);
        registry.register(
            "era5_lease_renew_seconds",
            "Time to handle a lease renewal",
            renew_seconds.clone(),
        );
        let workers_connected = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "era5_workers_connected",
            "Worker session streams open on this coordinator",
            workers_connected.clone(),
        );
        let reports_coalesced = Counter::default();
        registry.register(
            "era5_worker_reports_coalesced",
            "Worker progress reports folded into a later one because they came too soon",
            reports_coalesced.clone(),
        );
        let leases = Arc::new(LeaseCounts::default());
        registry.register_collector(Box::new(leases.clone()));
        let follow_passes = Family::<PassResult, Counter>::default();
        registry.register(
            "era5_follow_passes",
            "Standing jobs' passes run by this coordinator, by result",
            follow_passes.clone(),
        );
        let follow_last_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "era5_follow_last_success_timestamp_seconds",
            "The oldest last successful pass among the standing jobs (0: none)",
            follow_last_success.clone(),
        );
        let follow_interval = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "era5_follow_interval_seconds",
            "The longest pass interval among the standing jobs (0: none)",
            follow_interval.clone(),
        );
        Self {
            registry,
            renew_seconds,
            workers_connected,
            reports_coalesced,
            leases,
            follow_passes,
            follow_last_success,
            follow_interval,
        }
    }
}

impl CoordinatorMetrics {
    /// The text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    /// Counts a standing job's pass.
    pub fn follow_pass(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.follow_passes
            .get_or_create(&PassResult { result })
            .inc();
    }

    /// Keeps the lease counts and the follow gauges fresh until `stop`.
    pub async fn refresh(self: Arc<Self>, store: Arc<dyn LeaseStore>, stop: CancellationToken) {
        loop {
            if let Ok(listed) = store.recent_jobs(crate::limits::RECENT_JOBS).await {
                let mut total = Counts::default();
                for job in listed.jobs {
                    total.pending += job.counts.pending;
                    total.leased += job.counts.leased;
                    total.done += job.counts.done;
                    total.dead += job.counts.dead;
                }
                *self.leases.0.lock_unpoisoned() = total;
            }
            if let Ok(standing) = store.standing_jobs().await {
                let follows = standing.iter().filter_map(|job| job.follow.as_ref());
                let oldest_success = follows
                    .clone()
                    .map(|f| f.last_success_ms)
                    .min()
                    .unwrap_or(0);
                let longest_interval = follows.map(|f| f.interval_ms).max().unwrap_or(0);
                self.follow_last_success.set(oldest_success as f64 / 1000.0);
                self.follow_interval.set(longest_interval as f64 / 1000.0);
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }
}
