//! The lease service of `era5 sync`: one pass's job in a [`lease::MemoryStore`] inside the
//! process, held by one holder, so a sync runs every object through the same lease loop
//! (`runner`) as a cluster worker: the same planner, state machine, renewals, fencing and
//! outcome rules.
//!
//! - **The objects stay here.** The store gets the items without their objects: it runs the
//!   state machine, which never looks at them, and a pass over the whole archive then holds
//!   one copy of its 0.8 M objects instead of three (~200 MB each). A grant carries a copy of
//!   its item's objects, for as long as it runs.
//! - **Outcomes are kept** per item as leases end, for the sync's summary: [`Embedded::take_results`]
//!   gives every object's outcome in plan order, with those of items never finished as not
//!   done (or as DEST's failure, when that stopped the pass).
//! - **One attempt per item.** The engine already retries every request with backoff; an item
//!   that fails is dead for this pass and the next run tries again. Leases last ten minutes:
//!   renewals run, and a process stopped (Ctrl-Z) for less than that loses nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use common::sync::MutexExt;
use engine::disk::LocalIoError;
use engine::sync::Outcome;
use lease::model::{Ack, JobSpec, LeasePolicy, LeaseRef, ObjectSpec, SourceSpec};
use lease::{LeaseStore, MemoryStore};
use transport::RemoteObject;

use crate::client::{Acquired, ClientError, Granted, LeaseClient, LeaseEnd};

/// How long a sync's lease lives without renewal.
pub const SYNC_LEASE_TTL: Duration = Duration::from_secs(600);

/// The rules of a sync's store: long leases, one attempt per item.
pub fn sync_policy() -> LeasePolicy {
    LeasePolicy {
        ttl: SYNC_LEASE_TTL,
        max_attempts: 1,
        ..LeasePolicy::default()
    }
}

/// One job in an embedded store, and the one holder that works it.
pub struct Embedded {
    store: MemoryStore,
    holder: String,
    job_id: String,
    source: SourceSpec,
    /// Item ids in plan order.
    order: Vec<String>,
    /// Each item's objects, by item id (taken out by [`Embedded::take_results`]).
    objects: Mutex<HashMap<String, Vec<RemoteObject>>>,
    /// The outcomes of the items that ended, by item id (the latest grant's).
    outcomes: Mutex<HashMap<String, Vec<Outcome>>>,
}

impl Embedded {
    /// Stores `job` (planned by `lease::planner`) in a new store with `policy`, for `holder`.
    pub async fn start(
        mut job: JobSpec,
        policy: LeasePolicy,
        holder: &str,
    ) -> Result<Self, lease::Error> {
        let mut order = Vec::with_capacity(job.items.len());
        let mut objects = HashMap::with_capacity(job.items.len());
        for item in &mut job.items {
            order.push(item.item_id.clone());
            let specs = std::mem::take(&mut item.objects);
            objects.insert(
                item.item_id.clone(),
                specs.into_iter().map(ObjectSpec::into_remote).collect(),
            );
        }
        let store = MemoryStore::new(policy);
        store.create_job(&job).await?;
        Ok(Self {
            store,
            holder: holder.to_string(),
            job_id: job.job_id,
            source: job.source,
            order,
            objects: Mutex::new(objects),
            outcomes: Mutex::new(HashMap::new()),
        })
    }

    /// The store (for tests and views).
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// Every object of the job with its outcome, in plan order, taken out of the client (call
    /// it once the loop ended). An item that never ended counts as not done, or as
    /// `stopped_by` (the DEST failure that ended the pass) when given.
    pub fn take_results(&self, stopped_by: Option<&LocalIoError>) -> Vec<(RemoteObject, Outcome)> {
        let mut outcomes = std::mem::take(&mut *self.outcomes.lock_unpoisoned());
        let mut objects = std::mem::take(&mut *self.objects.lock_unpoisoned());
        let not_done = match stopped_by {
            Some(local) => Outcome::Local {
                reason: local.to_string(),
                kind: local.kind,
            },
            None => Outcome::Cancelled,
        };
        let mut results = Vec::new();
        for item in &self.order {
            let mine = objects.remove(item).unwrap_or_default();
            let mut ended = outcomes.remove(item).unwrap_or_default().into_iter();
            results.extend(
                mine.into_iter()
                    .map(|object| (object, ended.next().unwrap_or_else(|| not_done.clone()))),
            );
        }
        results
    }
}

/// The embedded store cannot be unreachable; its errors are bugs of ours or a job it lost.
fn unavailable(error: lease::Error) -> ClientError {
    ClientError::Unavailable(error.to_string())
}

impl LeaseClient for Embedded {
    async fn acquire(&self, max: usize) -> Result<Acquired, ClientError> {
        let grants = self
            .store
            .acquire(&self.holder, max)
            .await
            .map_err(unavailable)?;
        // Only asked when nothing was granted: a job's counts cost a pass over its items.
        let exhausted = grants.is_empty()
            && self
                .store
                .job(&self.job_id)
                .await
                .map_err(unavailable)?
                .counts
                .pending
                == 0;
        let grants = grants
            .into_iter()
            .map(|grant| Granted {
                objects: self
                    .objects
                    .lock_unpoisoned()
                    .get(&grant.item.item_id)
                    .cloned()
                    .unwrap_or_default(),
                source: self.source.clone(),
                ttl: grant.ttl,
                lease: grant.lease,
            })
            .collect();
        Ok(Acquired {
            grants,
            draining: false,
            exhausted,
        })
    }

    async fn renew(&self, lease: &LeaseRef) -> Result<Ack, ClientError> {
        self.store
            .renew(lease, &self.holder)
            .await
            .map_err(unavailable)
    }

    async fn finish(
        &self,
        lease: &LeaseRef,
        end: &LeaseEnd,
        outcomes: &[Outcome],
    ) -> Result<Ack, ClientError> {
        let ack = match end {
            LeaseEnd::Complete => self.store.complete(lease, &self.holder).await,
            LeaseEnd::Fail { reason, permanent } => self
                .store
                .fail(lease, &self.holder, reason, *permanent)
                .await
                .map(|outcome| outcome.ack),
            LeaseEnd::Release => self.store.release(lease, &self.holder).await,
        }
        .map_err(unavailable)?;
        if ack == Ack::Ok {
            self.outcomes
                .lock_unpoisoned()
                .insert(lease.item_id.clone(), outcomes.to_vec());
        }
        Ok(ack)
    }
}
