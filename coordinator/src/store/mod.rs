//! Where jobs and leases live. One state machine (see `model`), two stores:
//!
//! - [`redis::RedisStore`]: the cluster's store. Every transition is one Lua script, with time
//!   from Redis `TIME`, so any number of coordinators can share it and restart at will.
//! - [`memory::MemoryStore`]: embedded in `era5 sync`, one process, no Redis.
//!
//! The conformance tests in `tests/` run the same scenarios against both.

pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;

pub use crate::error::Error;
use crate::model::{
    Ack, Grant, ItemStatus, JobSpec, JobStatus, LeasePolicy, LeaseRef, Sample, WorkerMetrics,
    WorkerStatus,
};

/// What a pruning pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Finished jobs forgotten.
    pub jobs: u32,
    /// Workers forgotten.
    pub workers: u32,
}

/// What a failure report did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailOutcome {
    /// Whether the report was accepted.
    pub ack: Ack,
    /// Whether the item is now dead.
    pub dead: bool,
}

/// The lease state machine's operations. Every call is atomic.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// The rules in force.
    fn policy(&self) -> &LeasePolicy;

    /// Stores a planned job; all its items start pending.
    async fn create_job(&self, job: &JobSpec) -> Result<(), Error>;

    /// Grants up to `max` ready items to `worker`, oldest job first. Expired leases are reaped
    /// first, so their items can be granted again (with a higher epoch).
    async fn acquire(&self, worker: &str, max: usize) -> Result<Vec<Grant>, Error>;

    /// Extends a live grant. Like every call on a grant below, only `worker`, the worker it
    /// was granted to, may make it: anyone else gets [`Ack::NotHolder`].
    async fn renew(&self, lease: &LeaseRef, worker: &str) -> Result<Ack, Error>;

    /// Marks the item done. Idempotent for the same grant.
    async fn complete(&self, lease: &LeaseRef, worker: &str) -> Result<Ack, Error>;

    /// Reports a failed attempt: the item backs off and returns to pending, or goes dead when
    /// `permanent` or out of attempts.
    async fn fail(
        &self,
        lease: &LeaseRef,
        worker: &str,
        reason: &str,
        permanent: bool,
    ) -> Result<FailOutcome, Error>;

    /// Returns the item to pending without counting an attempt (a draining worker).
    async fn release(&self, lease: &LeaseRef, worker: &str) -> Result<Ack, Error>;

    /// Returns expired leases to pending (or dead, past `max_expiries`). Returns how many.
    async fn reap(&self) -> Result<u32, Error>;

    /// Records a leased item's progress (latest value wins; ignored for stale grants and for
    /// grants held by another worker).
    async fn progress(&self, lease: &LeaseRef, worker: &str, bytes_done: u64) -> Result<(), Error>;

    /// Cancels a job: nothing more is granted and its live grants are lost.
    async fn cancel_job(&self, job_id: &str) -> Result<(), Error>;

    /// Returns a job's dead items to pending with fresh attempt counts. Returns how many.
    async fn retry_dead(&self, job_id: &str) -> Result<u32, Error>;

    /// Every job, oldest first.
    async fn jobs(&self) -> Result<Vec<JobStatus>, Error>;

    /// One job.
    async fn job(&self, job_id: &str) -> Result<JobStatus, Error>;

    /// One job's items, in plan order.
    async fn items(&self, job_id: &str) -> Result<Vec<ItemStatus>, Error>;

    /// Records a worker's report.
    async fn heartbeat(
        &self,
        worker: &str,
        leases_held: u32,
        metrics: &WorkerMetrics,
    ) -> Result<(), Error>;

    /// Every worker heard from.
    async fn workers(&self) -> Result<Vec<WorkerStatus>, Error>;

    /// The last hour of each worker's rate and open connections (a point every
    /// `SAMPLE_EVERY_MS`, recorded by `heartbeat`), oldest point first.
    async fn history(&self) -> Result<Vec<(String, Vec<Sample>)>, Error>;

    /// Asks a worker to drain (it gets no more leases and finishes or releases its own).
    async fn drain(&self, worker: &str) -> Result<(), Error>;

    /// Whether a worker was asked to drain.
    async fn is_draining(&self, worker: &str) -> Result<bool, Error>;

    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), Error>;

    /// Jobs that may still have work to grant (not complete, failed or cancelled), counted
    /// against `--max-active-jobs`.
    async fn active_jobs(&self) -> Result<usize, Error>;

    /// Forgets what is older than `retention`: finished jobs (complete, failed or cancelled)
    /// whose last transition is that old, and workers unseen for that long with their history
    /// and drain flag.
    async fn prune(&self, retention: Duration) -> Result<Pruned, Error>;
}
