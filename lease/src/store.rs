//! Where jobs and leases live: the [`LeaseStore`] trait, one method per transition of the
//! state machine (see `model`), and the reads the views use. Two stores implement it:
//!
//! - [`crate::MemoryStore`]: embedded in `era5 sync`, one process, no Redis.
//! - the coordinator's `RedisStore`: the cluster's store. Every transition is one Lua script,
//!   with time from Redis `TIME`, so any number of coordinators can share it.
//!
//! The scenarios of [`crate::conformance`] (feature `conformance`) hold both to the same
//! behaviour.

use std::time::Duration;

use async_trait::async_trait;

pub use crate::error::Error;
use crate::model::{
    Ack, FollowSpec, Grant, ItemSpec, ItemState, ItemStatus, JobSpec, JobState, JobStatus,
    LeasePolicy, LeaseRef, ObjectSpec, Sample, WorkerMetrics, WorkerStatus,
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

/// One page of a job's items, in plan order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ItemPage {
    /// The items.
    pub items: Vec<ItemStatus>,
    /// Where the next page starts (pass it as `after`); `None` when nothing follows.
    pub next: Option<String>,
}

/// The jobs worth showing: those that may still have work, plus the newest of the others.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecentJobs {
    /// The jobs, oldest first.
    pub jobs: Vec<JobStatus>,
    /// How many jobs the store holds in all.
    pub total: u64,
}

/// Most items a filtered page looks at before it returns (possibly with fewer items than asked
/// for, and a `next`): a page costs a bounded amount of store work however rare the state.
pub const PAGE_SCAN_BUDGET: usize = 20_000;

/// Checks that the ids of `items`, about to be stored in job `job_id`, differ from each other:
/// an item is named by its id (grants, pages), so a job never holds an id twice. A job's plan
/// order is its item ids' order (the planner makes them ascend); both stores grant ready items
/// and list them in that order, whatever order `items` come in.
pub fn check_distinct_ids(job_id: &str, items: &[ItemSpec]) -> Result<(), Error> {
    let mut ids: Vec<&str> = items.iter().map(|item| item.item_id.as_str()).collect();
    ids.sort_unstable();
    match ids.windows(2).find(|pair| pair[0] == pair[1]) {
        Some(pair) => Err(Error::InvalidArgument(format!(
            "item `{}` is twice in the items for job `{job_id}`",
            pair[0]
        ))),
        None => Ok(()),
    }
}

/// The error for adding item `item_id` to job `job_id`, which holds it already.
pub fn item_already_in_job(job_id: &str, item_id: &str) -> Error {
    Error::InvalidArgument(format!("item `{item_id}` is already in job `{job_id}`"))
}

/// The lease state machine's operations. Every call is atomic.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// The rules in force.
    fn policy(&self) -> &LeasePolicy;

    /// Stores a planned job; all its items start pending. Its item ids must differ (see
    /// [`check_distinct_ids`]); otherwise nothing is stored.
    async fn create_job(&self, job: &JobSpec) -> Result<(), Error>;

    /// Grants up to `max` ready items to `worker`, oldest job first. Expired leases are reaped
    /// first, so their items can be granted again (with a higher epoch).
    async fn acquire(&self, worker: &str, max: usize) -> Result<Vec<Grant>, Error>;

    /// Like [`LeaseStore::acquire`], idempotent by `request_id` (a worker repeats a request
    /// whose answer it never got: lost to a timeout or to its deadline). **A repeated request
    /// grants nothing new**: it answers the grants the first one made that are still live and
    /// held by `worker` with at least half a TTL left (their TTL is what is left of it), so no
    /// grant is lost to a lost answer. A request id is remembered for two TTLs.
    async fn acquire_for_request(
        &self,
        worker: &str,
        max: usize,
        request_id: &str,
    ) -> Result<Vec<Grant>, Error>;

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

    /// Up to `limit` of a job's items that come after item `after` in plan order (`""`: from
    /// the start), only those in `state` when given. Costs the page, not the job: a filtered
    /// page looks at no more than [`PAGE_SCAN_BUDGET`] items, so it may hold fewer than `limit`
    /// and still have a `next`.
    async fn items_page(
        &self,
        job_id: &str,
        state: Option<ItemState>,
        after: &str,
        limit: usize,
    ) -> Result<ItemPage, Error> {
        let limit = limit.max(1);
        let mut items: Vec<ItemStatus> = self
            .items(job_id)
            .await?
            .into_iter()
            .filter(|i| i.item_id.as_str() > after && state.is_none_or(|s| i.state == s))
            .collect();
        let next = (items.len() > limit).then(|| items[limit - 1].item_id.clone());
        items.truncate(limit);
        Ok(ItemPage { items, next })
    }

    /// Whether a job was cancelled; one lookup, whatever the job's size (every progress report
    /// asks it).
    async fn job_cancelled(&self, job_id: &str) -> Result<bool, Error> {
        Ok(self.job(job_id).await?.state == JobState::Cancelled)
    }

    /// The jobs that may still have work plus the `recent` newest others, oldest first, and how
    /// many jobs there are in all: what status views read, however many jobs ran before.
    async fn recent_jobs(&self, recent: usize) -> Result<RecentJobs, Error> {
        let all = self.jobs().await?;
        let total = all.len() as u64;
        let finished = all.iter().filter(|j| j.state.is_final()).count();
        let mut skip = finished.saturating_sub(recent);
        let jobs = all
            .into_iter()
            .filter(|job| {
                if job.state.is_final() && skip > 0 {
                    skip -= 1;
                    return false;
                }
                true
            })
            .collect();
        Ok(RecentJobs { jobs, total })
    }

    /// Standing jobs (`submit --follow`) whose next pass is due, claimed: each one's next check
    /// moves on by its interval in the same atomic step, so a pass runs once however many
    /// coordinators share the store. At most `max`; a cancelled job is never claimed.
    async fn claim_due_passes(&self, max: usize) -> Result<Vec<(String, FollowSpec)>, Error>;

    /// Every object of a job's items (a standing job's pass tells new and changed objects from
    /// known ones with them).
    async fn job_objects(&self, job_id: &str) -> Result<Vec<ObjectSpec>, Error>;

    /// Adds pending items to a job (a standing job's pass): its totals grow and it is active
    /// again. Item ids must differ from each other and be new to the job (see
    /// [`check_distinct_ids`], [`item_already_in_job`]); otherwise nothing is added.
    async fn extend_job(&self, job_id: &str, items: &[ItemSpec]) -> Result<(), Error>;

    /// Records the end of a standing job's pass: counted, and a success (`error: None`) dated.
    async fn record_pass(&self, job_id: &str, error: Option<&str>) -> Result<(), Error>;

    /// The standing jobs that still follow (not cancelled), for the follow metrics.
    async fn standing_jobs(&self) -> Result<Vec<JobStatus>, Error> {
        Ok(self
            .jobs()
            .await?
            .into_iter()
            .filter(|job| job.follow.as_ref().is_some_and(|f| f.next_check_ms > 0))
            .collect())
    }

    /// Records a worker's report.
    async fn heartbeat(
        &self,
        worker: &str,
        leases_held: u32,
        metrics: &WorkerMetrics,
    ) -> Result<(), Error>;

    /// Every worker heard from.
    async fn workers(&self) -> Result<Vec<WorkerStatus>, Error>;

    /// Who holds leases of which job now: each (worker, job) with a live grant, once. Costs
    /// the live grants (bounded by the lease cap per worker), not the jobs; the coordinators
    /// share a job's bandwidth budget among these holders.
    async fn holdings(&self) -> Result<Vec<(String, String)>, Error>;

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
