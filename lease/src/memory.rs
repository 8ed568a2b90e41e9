//! The embedded store: the lease state machine in one process, behind a mutex. `era5 sync`
//! runs on it; the conformance tests hold it to the same behaviour as the Redis store.
//!
//! Time is monotonic (an `Instant` at creation plus elapsed time), so a wall-clock jump never
//! expires or revives a lease.

use common::sync::MutexExt;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::Error;
use crate::model::{
    Ack, Contact, Counts, FollowSpec, FollowStatus, Grant, ItemSpec, ItemState, ItemStatus,
    JobSpec, JobStatus, LeasePolicy, LeaseRef, ObjectSpec, SAMPLE_EVERY_MS, SAMPLES_KEPT, Sample,
    WorkerMetrics, WorkerStatus, now_ms, random_id,
};
use crate::store::{FailOutcome, LeaseStore, Pruned, check_distinct_ids, item_already_in_job};

/// The embedded store.
pub struct MemoryStore {
    policy: LeasePolicy,
    origin: Instant,
    origin_ms: i64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    jobs: Vec<JobEntry>,
    /// The grants of each acquire request (worker, request id), until the time given, for
    /// [`LeaseStore::acquire_for_request`].
    requests: HashMap<(String, String), (Vec<LeaseRef>, i64)>,
    /// Each worker's streak of contact, which decides whether its expiries count.
    contact: HashMap<String, Contact>,
    workers: BTreeMap<String, WorkerStatus>,
    draining: HashSet<String>,
    history: BTreeMap<String, VecDeque<Sample>>,
}

struct JobEntry {
    spec: JobSpec,
    items: Vec<ItemEntry>,
    index: HashMap<String, usize>,
    /// Pending items by (ready time, plan position): an acquire takes the first ready ones
    /// without looking at the others, so a sync's thousands of acquires stay linear.
    pending: BTreeSet<(i64, usize)>,
    /// Leased items by (expiry, plan position): a reap looks only at the expired ones.
    leased: BTreeSet<(i64, usize)>,
    created_ms: i64,
    started_ms: i64,
    finished_ms: i64,
    /// Last time an item went dead or the job was cancelled (0: never), for retention.
    ended_ms: i64,
    cancelled: bool,
    /// A standing job's follow state.
    follow: Option<FollowStatus>,
}

#[derive(Clone, Debug)]
struct ItemEntry {
    state: ItemState,
    lease_id: String,
    epoch: u64,
    holder: String,
    expires_ms: i64,
    ready_ms: i64,
    attempts: u32,
    expiries: u32,
    last_error: String,
    done_by: Option<(String, u64)>,
    bytes_done: u64,
}

impl JobEntry {
    /// Takes item `i` out of the index of its state, before its state or times change.
    fn unindex(&mut self, i: usize) {
        let item = &self.items[i];
        match item.state {
            ItemState::Pending => self.pending.remove(&(item.ready_ms, i)),
            ItemState::Leased => self.leased.remove(&(item.expires_ms, i)),
            _ => false,
        };
    }

    /// Puts item `i` in the index of its state, after its state or times changed.
    fn reindex(&mut self, i: usize) {
        let item = &self.items[i];
        match item.state {
            ItemState::Pending => self.pending.insert((item.ready_ms, i)),
            ItemState::Leased => self.leased.insert((item.expires_ms, i)),
            _ => false,
        };
    }

    /// Puts the items back in plan order, their ids' order, where an extension left them
    /// out of it; the indexes follow the new positions.
    fn sort_by_id(&mut self) {
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        order.sort_by(|&a, &b| self.spec.items[a].item_id.cmp(&self.spec.items[b].item_id));
        let mut moved_to = vec![0; order.len()];
        for (new, &old) in order.iter().enumerate() {
            moved_to[old] = new;
        }
        self.spec.items = order.iter().map(|&i| self.spec.items[i].clone()).collect();
        self.items = order.iter().map(|&i| self.items[i].clone()).collect();
        self.index = (self.spec.items.iter().enumerate())
            .map(|(i, item)| (item.item_id.clone(), i))
            .collect();
        self.pending = self
            .pending
            .iter()
            .map(|&(t, i)| (t, moved_to[i]))
            .collect();
        self.leased = self.leased.iter().map(|&(t, i)| (t, moved_to[i])).collect();
    }

    /// Changes item `i` with `change`, keeping the indexes true.
    fn update<T>(&mut self, i: usize, change: impl FnOnce(&mut ItemEntry) -> T) -> T {
        self.unindex(i);
        let result = change(&mut self.items[i]);
        self.reindex(i);
        result
    }
}

impl ItemEntry {
    fn new() -> Self {
        Self {
            state: ItemState::Pending,
            lease_id: String::new(),
            epoch: 0,
            holder: String::new(),
            expires_ms: 0,
            ready_ms: 0,
            attempts: 0,
            expiries: 0,
            last_error: String::new(),
            done_by: None,
            bytes_done: 0,
        }
    }

    /// Whether `lease` is this item's current, unexpired grant.
    fn live_grant(&self, lease: &LeaseRef, now: i64) -> bool {
        self.state == ItemState::Leased
            && self.lease_id == lease.lease_id
            && self.epoch == lease.epoch
            && self.expires_ms > now
    }

    /// Whether the current grant went to `worker`.
    fn held_by(&self, worker: &str) -> bool {
        self.holder == worker
    }
}

impl MemoryStore {
    /// An empty store with these rules.
    pub fn new(policy: LeasePolicy) -> Self {
        Self {
            policy,
            origin: Instant::now(),
            origin_ms: now_ms(),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn now(&self) -> i64 {
        self.origin_ms + self.origin.elapsed().as_millis() as i64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock_unpoisoned()
    }

    /// Notes that `worker` reached the store at `now`.
    fn touch(&self, inner: &mut Inner, worker: &str, now: i64) {
        let ttl = self.policy.ttl.as_millis() as i64;
        let previous = inner.contact.get(worker).copied();
        inner
            .contact
            .insert(worker.to_string(), Contact::touched(previous, now, ttl));
    }

    fn reap_job(&self, job: &mut JobEntry, contact: &HashMap<String, Contact>, now: i64) -> u32 {
        let ttl = self.policy.ttl.as_millis() as i64;
        let mut reaped = 0;
        let mut ended = false;
        let expired: Vec<(i64, usize)> = job.leased.range(..=(now, usize::MAX)).copied().collect();
        for (expired_ms, i) in expired {
            reaped += 1;
            let holder = contact.get(&job.items[i].holder).copied();
            let counted = Contact::expiry_counts(holder, expired_ms, now, ttl);
            ended |= job.update(i, |item| {
                if counted {
                    item.expiries += 1;
                }
                item.holder.clear();
                if counted && item.expiries > self.policy.max_expiries {
                    item.state = ItemState::Dead;
                    item.last_error =
                        format!("lease expired {} times (poison item)", item.expiries);
                    true
                } else {
                    item.state = ItemState::Pending;
                    item.ready_ms = now;
                    false
                }
            });
        }
        if ended {
            job.ended_ms = now_ms();
        }
        reaped
    }

    /// Runs `f` on the item a lease names, if its job exists and is not cancelled.
    fn with_item<T>(
        &self,
        lease: &LeaseRef,
        lost: T,
        f: impl FnOnce(&mut JobEntry, usize, i64) -> T,
    ) -> T {
        let now = self.now();
        let mut inner = self.lock();
        let Some(job) = inner
            .jobs
            .iter_mut()
            .find(|j| j.spec.job_id == lease.job_id)
        else {
            return lost;
        };
        if job.cancelled {
            return lost;
        }
        let Some(&index) = job.index.get(&lease.item_id) else {
            return lost;
        };
        f(job, index, now)
    }

    fn status(job: &JobEntry) -> JobStatus {
        let mut counts = Counts::default();
        let mut bytes_done = 0;
        for (spec, item) in job.spec.items.iter().zip(&job.items) {
            match item.state {
                ItemState::Pending => counts.pending += 1,
                ItemState::Leased => {
                    counts.leased += 1;
                    bytes_done += item.bytes_done.min(spec.bytes());
                }
                ItemState::Done => {
                    counts.done += 1;
                    bytes_done += spec.bytes();
                }
                ItemState::Dead => counts.dead += 1,
            }
        }
        JobStatus {
            job_id: job.spec.job_id.clone(),
            state: counts.job_state(job.cancelled, job.started_ms > 0),
            counts,
            objects_total: job.spec.items.iter().map(|i| i.objects.len() as u64).sum(),
            bytes_total: job
                .spec
                .items
                .iter()
                .map(super::model::ItemSpec::bytes)
                .sum(),
            bytes_done,
            created_ms: job.created_ms,
            started_ms: job.started_ms,
            finished_ms: job.finished_ms,
            selection: job.spec.selection.clone(),
            source: job.spec.source.clone(),
            follow: job.follow.clone(),
            bwlimit: job.spec.bwlimit.clone(),
        }
    }

    /// The live grants `worker` holds: leased to it, unexpired, in jobs not cancelled (a
    /// cancelled job's grants are lost). Settled and expired grants do not count, reaped or
    /// not.
    fn held(inner: &Inner, worker: &str, now: i64) -> usize {
        Self::live_grants(inner, now)
            .filter(|(job, item)| job.items[*item].held_by(worker))
            .count()
    }

    /// Every live grant, as its job and item index: leased, unexpired, in a job not cancelled.
    fn live_grants(inner: &Inner, now: i64) -> impl Iterator<Item = (&JobEntry, usize)> {
        inner
            .jobs
            .iter()
            .filter(|job| !job.cancelled)
            .flat_map(move |job| {
                job.leased
                    .range((now + 1, 0)..)
                    .map(move |&(_, i)| (job, i))
            })
    }

    fn job_mut<'a>(inner: &'a mut Inner, job_id: &str) -> Result<&'a mut JobEntry, Error> {
        inner
            .jobs
            .iter_mut()
            .find(|j| j.spec.job_id == job_id)
            .ok_or_else(|| Error::UnknownJob(job_id.to_string()))
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    fn policy(&self) -> &LeasePolicy {
        &self.policy
    }

    async fn create_job(&self, job: &JobSpec) -> Result<(), Error> {
        let mut inner = self.lock();
        if inner.jobs.iter().any(|j| j.spec.job_id == job.job_id) {
            return Ok(());
        }
        check_distinct_ids(&job.job_id, &job.items)?;
        // Positions follow the plan order, the ids' order (a planned job's ids already
        // ascend): the pending and leased indexes break ties by position.
        let mut job = job.clone();
        job.items.sort_by(|a, b| a.item_id.cmp(&b.item_id));
        inner.jobs.push(JobEntry {
            items: vec![ItemEntry::new(); job.items.len()],
            pending: (0..job.items.len()).map(|i| (0, i)).collect(),
            leased: BTreeSet::new(),
            index: job
                .items
                .iter()
                .enumerate()
                .map(|(i, item)| (item.item_id.clone(), i))
                .collect(),
            created_ms: now_ms(),
            started_ms: 0,
            finished_ms: 0,
            ended_ms: 0,
            cancelled: false,
            follow: job.follow.as_ref().map(|follow| FollowStatus {
                interval_ms: follow.interval_ms,
                next_check_ms: now_ms() + follow.interval_ms as i64,
                passes: 0,
                last_success_ms: now_ms(),
                last_error: String::new(),
            }),
            spec: job,
        });
        Ok(())
    }

    async fn acquire(&self, worker: &str, max: usize) -> Result<Vec<Grant>, Error> {
        let now = self.now();
        let mut inner = self.lock();
        self.touch(&mut inner, worker, now);
        if inner.draining.contains(worker) {
            return Ok(Vec::new());
        }
        // The per-worker cap: what the worker holds live now, over every job, counts first.
        let room = (self.policy.max_leases_per_worker as usize)
            .saturating_sub(Self::held(&inner, worker, now));
        let max = max.min(room);
        let mut grants = Vec::new();
        for index in 0..inner.jobs.len() {
            if grants.len() >= max {
                break;
            }
            let Inner { jobs, contact, .. } = &mut *inner;
            let job = &mut jobs[index];
            if job.cancelled {
                continue;
            }
            self.reap_job(job, contact, now);
            let ready: Vec<usize> = job
                .pending
                .range(..=(now, usize::MAX))
                .map(|&(_, i)| i)
                .take(max - grants.len())
                .collect();
            for i in ready {
                job.update(i, |item| {
                    item.state = ItemState::Leased;
                    item.epoch += 1;
                    item.lease_id = random_id();
                    item.holder = worker.to_string();
                    item.expires_ms = now + self.policy.ttl.as_millis() as i64;
                    item.bytes_done = 0;
                });
                let item = &job.items[i];
                if job.started_ms == 0 {
                    job.started_ms = now_ms();
                }
                grants.push(Grant {
                    lease: LeaseRef {
                        job_id: job.spec.job_id.clone(),
                        item_id: job.spec.items[i].item_id.clone(),
                        lease_id: item.lease_id.clone(),
                        epoch: item.epoch,
                    },
                    item: job.spec.items[i].clone(),
                    source: job.spec.source.clone(),
                    ttl: self.policy.ttl,
                });
            }
        }
        Ok(grants)
    }

    async fn acquire_for_request(
        &self,
        worker: &str,
        max: usize,
        request_id: &str,
    ) -> Result<Vec<Grant>, Error> {
        let key = (worker.to_string(), request_id.to_string());
        let ttl = self.policy.ttl.as_millis() as i64;
        {
            let now = self.now();
            let mut inner = self.lock();
            inner.requests.retain(|_, (_, until)| *until > now);
            if let Some((leases, _)) = inner.requests.get(&key) {
                let leases = leases.clone();
                return Ok(leases
                    .iter()
                    .filter_map(|lease| {
                        let job = inner.jobs.iter().find(|j| j.spec.job_id == lease.job_id)?;
                        let &i = job.index.get(&lease.item_id)?;
                        let item = &job.items[i];
                        let left = item.expires_ms - now;
                        (!job.cancelled
                            && item.live_grant(lease, now)
                            && item.held_by(worker)
                            && left >= ttl / 2)
                            .then(|| Grant {
                                lease: lease.clone(),
                                item: job.spec.items[i].clone(),
                                source: job.spec.source.clone(),
                                ttl: Duration::from_millis(left as u64),
                            })
                    })
                    .collect());
            }
        }
        let grants = self.acquire(worker, max).await?;
        let until = self.now() + 2 * ttl;
        let leases = grants.iter().map(|g| g.lease.clone()).collect();
        self.lock().requests.insert(key, (leases, until));
        Ok(grants)
    }

    async fn renew(&self, lease: &LeaseRef, worker: &str) -> Result<Ack, Error> {
        let ttl = self.policy.ttl.as_millis() as i64;
        {
            let now = self.now();
            self.touch(&mut self.lock(), worker, now);
        }
        Ok(self.with_item(lease, Ack::LeaseLost, |job, i, now| {
            let item = &job.items[i];
            if item.live_grant(lease, now) {
                if !item.held_by(worker) {
                    return Ack::NotHolder;
                }
                job.update(i, |item| item.expires_ms = now + ttl);
                Ack::Ok
            } else if item.state == ItemState::Done {
                Ack::AlreadyDone
            } else {
                Ack::LeaseLost
            }
        }))
    }

    async fn complete(&self, lease: &LeaseRef, worker: &str) -> Result<Ack, Error> {
        Ok(self.with_item(lease, Ack::LeaseLost, |job, i, now| {
            let item = &mut job.items[i];
            if item.state == ItemState::Done {
                return if item.done_by.as_ref() != Some(&(lease.lease_id.clone(), lease.epoch)) {
                    Ack::AlreadyDone
                } else if !item.held_by(worker) {
                    Ack::NotHolder
                } else {
                    Ack::Ok
                };
            }
            if !item.live_grant(lease, now) {
                return Ack::LeaseLost;
            }
            if !item.held_by(worker) {
                return Ack::NotHolder;
            }
            job.update(i, |item| {
                item.state = ItemState::Done;
                item.done_by = Some((lease.lease_id.clone(), lease.epoch));
            });
            job.finished_ms = now_ms();
            Ack::Ok
        }))
    }

    async fn fail(
        &self,
        lease: &LeaseRef,
        worker: &str,
        reason: &str,
        permanent: bool,
    ) -> Result<FailOutcome, Error> {
        let lost = FailOutcome {
            ack: Ack::LeaseLost,
            dead: false,
        };
        Ok(self.with_item(lease, lost, |job, i, now| {
            let item = &mut job.items[i];
            if !item.live_grant(lease, now) {
                return FailOutcome {
                    ack: if item.state == ItemState::Done {
                        Ack::AlreadyDone
                    } else {
                        Ack::LeaseLost
                    },
                    dead: false,
                };
            }
            if !item.held_by(worker) {
                return FailOutcome {
                    ack: Ack::NotHolder,
                    dead: false,
                };
            }
            let dead = job.update(i, |item| {
                item.attempts += 1;
                item.last_error = reason.to_string();
                item.holder.clear();
                let dead = permanent || item.attempts >= self.policy.max_attempts;
                if dead {
                    item.state = ItemState::Dead;
                } else {
                    item.state = ItemState::Pending;
                    item.ready_ms = now + self.policy.backoff(item.attempts).as_millis() as i64;
                }
                dead
            });
            if dead {
                job.ended_ms = now_ms();
            }
            FailOutcome { ack: Ack::Ok, dead }
        }))
    }

    async fn release(&self, lease: &LeaseRef, worker: &str) -> Result<Ack, Error> {
        Ok(self.with_item(lease, Ack::LeaseLost, |job, i, now| {
            let item = &mut job.items[i];
            if !item.live_grant(lease, now) {
                return if item.state == ItemState::Done {
                    Ack::AlreadyDone
                } else {
                    Ack::LeaseLost
                };
            }
            if !item.held_by(worker) {
                return Ack::NotHolder;
            }
            job.update(i, |item| {
                item.state = ItemState::Pending;
                item.ready_ms = now;
                item.holder.clear();
            });
            Ack::Ok
        }))
    }

    async fn reap(&self) -> Result<u32, Error> {
        let now = self.now();
        let mut inner = self.lock();
        let Inner { jobs, contact, .. } = &mut *inner;
        let mut total = 0;
        for job in jobs.iter_mut().filter(|j| !j.cancelled) {
            total += self.reap_job(job, contact, now);
        }
        Ok(total)
    }

    async fn progress(&self, lease: &LeaseRef, worker: &str, bytes_done: u64) -> Result<(), Error> {
        self.with_item(lease, (), |job, i, now| {
            let item = &mut job.items[i];
            if item.live_grant(lease, now) && item.held_by(worker) {
                item.bytes_done = bytes_done;
            }
        });
        Ok(())
    }

    async fn cancel_job(&self, job_id: &str) -> Result<(), Error> {
        let mut inner = self.lock();
        let job = inner
            .jobs
            .iter_mut()
            .find(|j| j.spec.job_id == job_id)
            .ok_or_else(|| Error::UnknownJob(job_id.to_string()))?;
        job.cancelled = true;
        job.ended_ms = now_ms();
        if let Some(follow) = &mut job.follow {
            follow.next_check_ms = 0;
        }
        Ok(())
    }

    async fn claim_due_passes(&self, max: usize) -> Result<Vec<(String, FollowSpec)>, Error> {
        let now = now_ms();
        let mut inner = self.lock();
        let mut claimed = Vec::new();
        for job in inner.jobs.iter_mut().filter(|j| !j.cancelled) {
            if claimed.len() >= max {
                break;
            }
            let (Some(follow), Some(spec)) = (&mut job.follow, &job.spec.follow) else {
                continue;
            };
            if follow.next_check_ms > 0 && follow.next_check_ms <= now {
                follow.next_check_ms = now + follow.interval_ms as i64;
                claimed.push((job.spec.job_id.clone(), spec.clone()));
            }
        }
        Ok(claimed)
    }

    async fn job_objects(&self, job_id: &str) -> Result<Vec<ObjectSpec>, Error> {
        let mut inner = self.lock();
        let job = Self::job_mut(&mut inner, job_id)?;
        Ok(job
            .spec
            .items
            .iter()
            .flat_map(|item| item.objects.iter().cloned())
            .collect())
    }

    async fn extend_job(&self, job_id: &str, items: &[ItemSpec]) -> Result<(), Error> {
        let mut inner = self.lock();
        let job = Self::job_mut(&mut inner, job_id)?;
        check_distinct_ids(job_id, items)?;
        if let Some(known) = items.iter().find(|i| job.index.contains_key(&i.item_id)) {
            return Err(item_already_in_job(job_id, &known.item_id));
        }
        let in_order = match (job.spec.items.last(), items.first()) {
            (Some(last), Some(first)) => last.item_id < first.item_id,
            _ => true,
        };
        for item in items {
            let position = job.items.len();
            job.index.insert(item.item_id.clone(), position);
            job.items.push(ItemEntry::new());
            job.pending.insert((0, position));
            job.spec.items.push(item.clone());
        }
        // A pass's ids come after the job's (a prefix of the time it ran); a coordinator whose
        // clock is behind may make them fall among them, or a caller may add them unsorted.
        if !in_order || !items.is_sorted_by(|a, b| a.item_id < b.item_id) {
            job.sort_by_id();
        }
        Ok(())
    }

    async fn record_pass(&self, job_id: &str, error: Option<&str>) -> Result<(), Error> {
        let mut inner = self.lock();
        let job = Self::job_mut(&mut inner, job_id)?;
        if let Some(follow) = &mut job.follow {
            follow.passes += 1;
            match error {
                None => {
                    follow.last_success_ms = now_ms();
                    follow.last_error.clear();
                }
                Some(error) => follow.last_error = error.to_string(),
            }
        }
        Ok(())
    }

    async fn retry_dead(&self, job_id: &str) -> Result<u32, Error> {
        let now = self.now();
        let mut inner = self.lock();
        let job = inner
            .jobs
            .iter_mut()
            .find(|j| j.spec.job_id == job_id)
            .ok_or_else(|| Error::UnknownJob(job_id.to_string()))?;
        let mut retried = 0;
        let dead: Vec<usize> = (0..job.items.len())
            .filter(|&i| job.items[i].state == ItemState::Dead)
            .collect();
        for i in dead {
            job.update(i, |item| {
                item.state = ItemState::Pending;
                item.ready_ms = now;
                item.attempts = 0;
                item.expiries = 0;
            });
            retried += 1;
        }
        Ok(retried)
    }

    async fn jobs(&self) -> Result<Vec<JobStatus>, Error> {
        Ok(self.lock().jobs.iter().map(Self::status).collect())
    }

    async fn job(&self, job_id: &str) -> Result<JobStatus, Error> {
        self.lock()
            .jobs
            .iter()
            .find(|j| j.spec.job_id == job_id)
            .map(Self::status)
            .ok_or_else(|| Error::UnknownJob(job_id.to_string()))
    }

    async fn items(&self, job_id: &str) -> Result<Vec<ItemStatus>, Error> {
        let inner = self.lock();
        let job = inner
            .jobs
            .iter()
            .find(|j| j.spec.job_id == job_id)
            .ok_or_else(|| Error::UnknownJob(job_id.to_string()))?;
        Ok(job
            .spec
            .items
            .iter()
            .zip(&job.items)
            .map(|(spec, item)| ItemStatus {
                item_id: spec.item_id.clone(),
                product: spec.product.clone(),
                start: spec.start.clone(),
                end: spec.end.clone(),
                objects: spec.objects.len() as u32,
                bytes: spec.bytes(),
                state: item.state,
                epoch: item.epoch,
                holder: item.holder.clone(),
                attempts: item.attempts,
                expiries: item.expiries,
                last_error: item.last_error.clone(),
                bytes_done: match item.state {
                    ItemState::Done => spec.bytes(),
                    ItemState::Leased => item.bytes_done,
                    _ => 0,
                },
            })
            .collect())
    }

    async fn heartbeat(
        &self,
        worker: &str,
        leases_held: u32,
        metrics: &WorkerMetrics,
    ) -> Result<(), Error> {
        let mut inner = self.lock();
        let draining = inner.draining.contains(worker);
        let store_now = self.now();
        self.touch(&mut inner, worker, store_now);
        let now = now_ms();
        let history = inner.history.entry(worker.to_string()).or_default();
        if history
            .back()
            .is_none_or(|last| now - last.at_ms >= SAMPLE_EVERY_MS)
        {
            history.push_back(Sample {
                at_ms: now,
                bytes_per_sec: metrics.bytes_per_sec,
                open: metrics.open,
            });
            if history.len() > SAMPLES_KEPT {
                history.pop_front();
            }
        }
        inner.workers.insert(
            worker.to_string(),
            WorkerStatus {
                name: worker.to_string(),
                leases_held,
                metrics: metrics.clone(),
                last_heartbeat_ms: now_ms(),
                draining,
            },
        );
        Ok(())
    }

    async fn holdings(&self) -> Result<Vec<(String, String)>, Error> {
        let inner = self.lock();
        let now = now_ms();
        let mut held: Vec<(String, String)> = Self::live_grants(&inner, now)
            .map(|(job, i)| (job.items[i].holder.clone(), job.spec.job_id.clone()))
            .collect();
        held.sort();
        held.dedup();
        Ok(held)
    }

    async fn workers(&self) -> Result<Vec<WorkerStatus>, Error> {
        let inner = self.lock();
        Ok(inner
            .workers
            .values()
            .cloned()
            .map(|mut w| {
                w.draining = inner.draining.contains(&w.name);
                w
            })
            .collect())
    }

    async fn history(&self) -> Result<Vec<(String, Vec<Sample>)>, Error> {
        Ok(self
            .lock()
            .history
            .iter()
            .map(|(worker, samples)| (worker.clone(), samples.iter().copied().collect()))
            .collect())
    }

    async fn drain(&self, worker: &str) -> Result<(), Error> {
        self.lock().draining.insert(worker.to_string());
        Ok(())
    }

    async fn is_draining(&self, worker: &str) -> Result<bool, Error> {
        Ok(self.lock().draining.contains(worker))
    }

    async fn ping(&self) -> Result<(), Error> {
        Ok(())
    }

    async fn active_jobs(&self) -> Result<usize, Error> {
        Ok(self
            .lock()
            .jobs
            .iter()
            .filter(|job| !Self::status(job).state.is_final())
            .count())
    }

    async fn prune(&self, retention: Duration) -> Result<Pruned, Error> {
        let cutoff = now_ms() - retention.as_millis() as i64;
        let mut inner = self.lock();
        let before = (inner.jobs.len(), inner.workers.len());
        inner.jobs.retain(|job| {
            let last = job.created_ms.max(job.finished_ms).max(job.ended_ms);
            // A standing job waits between passes, finished; it is not done with.
            let standing = !job.cancelled && job.follow.is_some();
            standing || !(Self::status(job).state.is_final() && last < cutoff)
        });
        let gone: Vec<String> = inner
            .workers
            .values()
            .filter(|w| w.last_heartbeat_ms < cutoff)
            .map(|w| w.name.clone())
            .collect();
        for name in &gone {
            inner.workers.remove(name);
            inner.history.remove(name);
            inner.draining.remove(name);
            inner.contact.remove(name);
        }
        Ok(Pruned {
            jobs: (before.0 - inner.jobs.len()) as u32,
            workers: (before.1 - inner.workers.len()) as u32,
        })
    }
}
