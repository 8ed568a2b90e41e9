//! Where jobs and leases live. One state machine (see `model`), two stores:
//!
//! - [`redis::RedisStore`]: the cluster's store. Every transition is one Lua script, with time
//!   from Redis `TIME`, so any number of coordinators can share it and restart at will.
//! - [`memory::MemoryStore`]: embedded in `era5 sync`, one process, no Redis.
//!
//! The conformance tests in `tests/` run the same scenarios against both.

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use thiserror::Error;

use crate::model::{
    Ack, Grant, ItemStatus, JobSpec, JobStatus, LeasePolicy, LeaseRef, Sample, WorkerMetrics,
    WorkerStatus,
};

/// The store could not answer.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Redis is unreachable or failed; the caller answers UNAVAILABLE and tries again later.
    #[error("lease store unavailable: {0}")]
    Unavailable(String),
    /// Stored data did not parse.
    #[error("lease store holds corrupt data: {0}")]
    Corrupt(String),
    /// No such job.
    #[error("no job `{0}`")]
    UnknownJob(String),
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
    async fn create_job(&self, job: &JobSpec) -> Result<(), StoreError>;

    /// Grants up to `max` ready items to `worker`, oldest job first. Expired leases are reaped
    /// first, so their items can be granted again (with a higher epoch).
    async fn acquire(&self, worker: &str, max: usize) -> Result<Vec<Grant>, StoreError>;

    /// Extends a live grant.
    async fn renew(&self, lease: &LeaseRef) -> Result<Ack, StoreError>;

    /// Marks the item done. Idempotent for the same grant.
    async fn complete(&self, lease: &LeaseRef) -> Result<Ack, StoreError>;

    /// Reports a failed attempt: the item backs off and returns to pending, or goes dead when
    /// `permanent` or out of attempts.
    async fn fail(
        &self,
        lease: &LeaseRef,
        reason: &str,
        permanent: bool,
    ) -> Result<FailOutcome, StoreError>;

    /// Returns the item to pending without counting an attempt (a draining worker).
    async fn release(&self, lease: &LeaseRef) -> Result<Ack, StoreError>;

    /// Returns expired leases to pending (or dead, past `max_expiries`). Returns how many.
    async fn reap(&self) -> Result<u32, StoreError>;

    /// Records a leased item's progress (latest value wins; ignored for stale grants).
    async fn progress(&self, lease: &LeaseRef, bytes_done: u64) -> Result<(), StoreError>;

    /// Cancels a job: nothing more is granted and its live grants are lost.
    async fn cancel_job(&self, job_id: &str) -> Result<(), StoreError>;

    /// Returns a job's dead items to pending with fresh attempt counts. Returns how many.
    async fn retry_dead(&self, job_id: &str) -> Result<u32, StoreError>;

    /// Every job, oldest first.
    async fn jobs(&self) -> Result<Vec<JobStatus>, StoreError>;

    /// One job.
    async fn job(&self, job_id: &str) -> Result<JobStatus, StoreError>;

    /// One job's items, in plan order.
    async fn items(&self, job_id: &str) -> Result<Vec<ItemStatus>, StoreError>;

    /// Records a worker's report.
    async fn heartbeat(
        &self,
        worker: &str,
        leases_held: u32,
        metrics: &WorkerMetrics,
    ) -> Result<(), StoreError>;

    /// Every worker heard from.
    async fn workers(&self) -> Result<Vec<WorkerStatus>, StoreError>;

    /// The last hour of each worker's rate and open connections (a point every
    /// `SAMPLE_EVERY_MS`, recorded by `heartbeat`), oldest point first.
    async fn history(&self) -> Result<Vec<(String, Vec<Sample>)>, StoreError>;

    /// Asks a worker to drain (it gets no more leases and finishes or releases its own).
    async fn drain(&self, worker: &str) -> Result<(), StoreError>;

    /// Whether a worker was asked to drain.
    async fn is_draining(&self, worker: &str) -> Result<bool, StoreError>;

    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}
