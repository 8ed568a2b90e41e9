//! The coordinator's Prometheus metrics:
//!
//! - `era5_leases{state}`: items by state across the jobs that may still have work and the
//!   latest finished ones (refreshed from the store every few seconds, so a scrape never waits
//!   on Redis, and reading a bounded number of jobs however many ran before);
//! - `era5_lease_renew_seconds`: time to handle a Renew (histogram);
//! - `era5_workers_connected`: worker session streams open on this coordinator.
//!
//! Labels have bounded cardinality: the lease state, never a job, item or lease id.

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::model::Counts;
use crate::store::LeaseStore;

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
    leases: Arc<LeaseCounts>,
}

/// The last lease counts read from the store.
#[derive(Debug, Default)]
struct LeaseCounts(Mutex<Counts>);

impl Collector for LeaseCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = *self.0.lock().unwrap_or_else(|p| p.into_inner());
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
        let leases = Arc::new(LeaseCounts::default());
        registry.register_collector(Box::new(leases.clone()));
        Self {
            registry,
            renew_seconds,
            workers_connected,
            leases,
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

    /// Keeps the lease counts fresh until `stop`.
    pub async fn refresh(self: Arc<Self>, store: Arc<dyn LeaseStore>, stop: CancellationToken) {
        loop {
            if let Ok(listed) = store.recent_jobs(crate::service::RECENT_JOBS).await {
                let mut total = Counts::default();
                for job in listed.jobs {
                    total.pending += job.counts.pending;
                    total.leased += job.counts.leased;
                    total.done += job.counts.done;
                    total.dead += job.counts.dead;
                }
                *self.leases.0.lock().unwrap_or_else(|p| p.into_inner()) = total;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }
}
