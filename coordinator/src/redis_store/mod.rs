//! The cluster's lease store: the state machine in Redis, one Lua script per transition.
//!
//! ```text
//! era5:jobs                 ZSET  job id -> creation time (ms), every job
//! era5:active               ZSET  the same, for jobs that may still have work to grant
//! era5:{JOB}:meta           HASH  spec, created, started, finished, cancelled, done, dead,
//!                                 done_bytes, objects_total, bytes_total, items, ended (last
//!                                 time an item went dead or the job was cancelled)
//! era5:{JOB}:items          HASH  item id -> item spec (JSON: product, days, objects)
//! era5:{JOB}:order          ZSET  item ids, all scored 0: plan order (the ids' order),
//!                                 for paging (jobs created before it existed are paged
//!                                 from HKEYS items until an extension indexes them)
//! era5:{JOB}:st             HASH  "<item>|state|lease|epoch|holder|exp|attempts|expiries|
//!                                 error|done_lease|done_epoch|bytes|bytes_done|brief" -> value
//!                                 (brief: "product<TAB>start<TAB>end<TAB>objects", so a page of
//!                                 leases never reads the object lists)
//! era5:{JOB}:pending        ZSET  item id -> ready time (ms; later after a failure backoff)
//! era5:{JOB}:leased         ZSET  item id -> expiry (ms)
//! era5:standing             ZSET  standing job (`submit --follow`) -> its next pass (ms); the
//!                                 job's meta also holds follow (JSON), follow_passes,
//!                                 follow_success and follow_error
//! era5:workers              HASH  worker -> last report (JSON)
//! era5:drain                SET   workers asked to drain
//! era5:held                 ZSET  "<worker>|<job>|<item>" -> expiry (ms): every live grant,
//!                                 counted against its holder's lease cap until settled,
//!                                 lost with its cancelled job, or expired
//! era5:held_count           HASH  worker -> its members of era5:held
//! era5:history:<worker>     LIST  the last hour of rate and connections (newest first);
//!                                 a `:gate` key (SET NX PX) admits one point per period
//! ```
//!
//! Every key is under `era5:`, so a Redis ACL user restricted to `~era5:*` (see
//! `deploy/base/redis-era5-user.acl`) can run the coordinator.
//!
//! The code is split by concern: this module holds the store, its scripts and the lease
//! transitions (create, acquire, renew, complete, fail, release, reap, progress, cancel,
//! retry); `views` the reads; `standing` the standing jobs' passes; `upkeep` heartbeats and
//! pruning; `keys` the key names; `connection` the checked URL and the connection.
//!
//! **Every state change of a job, and every status read, is one script**: a job's item
//! states, its counters, its entries in `era5:jobs`, `era5:active` and `era5:standing`, and
//! its grants in the lease cap's ledger (`era5:held`, `era5:held_count`) change together, and
//! `status.lua` reads them at one moment, so another coordinator's change lands before or
//! after, never in the middle. (A new job's items are written by pipelines before
//! `create.lua` publishes the job; nothing reads them until then.) Each job script declares
//! the job's keys and those shared keys (with `era5:contact`), which lie outside the job's
//! hash tag `{JOB}`: the store needs one Redis, not Redis Cluster.
//!
//! Time comes from Redis `TIME` inside the scripts, so coordinators need no clock agreement.
//! Scripts are sent by EVALSHA and reloaded on NOSCRIPT (a Redis restart).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::{AsyncCommands, Script};

use lease::Error;
use lease::model::{
    Ack, FollowSpec, Grant, ItemSpec, ItemState, ItemStatus, JobSpec, JobStatus, LeasePolicy,
    LeaseRef, MAX_ACQUIRE, ObjectSpec, Sample, SelectionSpec, SourceSpec, WorkerMetrics,
    WorkerStatus, random_id,
};
use lease::store::{FailOutcome, ItemPage, LeaseStore, Pruned, RecentJobs};

mod connection;
mod keys;
mod standing;
mod upkeep;
mod views;

pub use connection::{RedisTarget, target};
use keys::{ACTIVE, DRAIN, JobKeys, NO_REQUEST, brief, request_key};

/// Items written per pipeline when a job is created (a million-object job has ~30 000).
const CREATE_CHUNK: usize = 2_000;
/// Jobs looked at per pruning pass (the oldest first); the next pass takes the rest.
const PRUNE_BATCH: isize = 500;
/// Item ids read per round trip when a page walks the plan order.
const PAGE_CHUNK: usize = 1_000;

fn script(body: &str) -> Script {
    Script::new(&format!(
        "{}\n{}",
        include_str!("scripts/prelude.lua"),
        body
    ))
}

struct Scripts {
    acquire: Script,
    renew: Script,
    complete: Script,
    fail: Script,
    release: Script,
    reap: Script,
    progress: Script,
    retry_dead: Script,
    cancel: Script,
    extend: Script,
    record_pass: Script,
    create: Script,
    prune: Script,
    claim_pass: Script,
    /// Reads only: a job's status at one moment.
    status: Script,
    /// A worker's heartbeat, as contact with the store.
    contact: Script,
}

impl Scripts {
    fn load() -> Self {
        Self {
            acquire: script(include_str!("scripts/acquire.lua")),
            renew: script(include_str!("scripts/renew.lua")),
            complete: script(include_str!("scripts/complete.lua")),
            fail: script(include_str!("scripts/fail.lua")),
            release: script(include_str!("scripts/release.lua")),
            reap: script(include_str!("scripts/reap.lua")),
            progress: script(include_str!("scripts/progress.lua")),
            retry_dead: script(include_str!("scripts/retry_dead.lua")),
            cancel: script(include_str!("scripts/cancel.lua")),
            extend: script(include_str!("scripts/extend.lua")),
            record_pass: script(include_str!("scripts/record_pass.lua")),
            create: script(include_str!("scripts/create.lua")),
            prune: script(include_str!("scripts/prune.lua")),
            claim_pass: script(include_str!("scripts/claim_pass.lua")),
            status: script(include_str!("scripts/status.lua")),
            contact: script(include_str!("scripts/contact.lua")),
        }
    }
}

/// An item's grant as its state hash holds it: state, lease id, epoch, expiry, holder.
type GrantFields = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

/// Whether an acquire goes on to the next job.
enum JobStep {
    Next,
    Stop,
}

/// The Redis store.
pub struct RedisStore {
    /// Set once the first connection succeeded; the manager then reconnects by itself, and
    /// is replaced when Sentinel elects another primary.
    connection: Arc<connection::Primary>,
    policy: LeasePolicy,
    scripts: Scripts,
    /// When set, only jobs of this source are granted (a coordinator's pinned source).
    source: Option<SourceSpec>,
    /// When a hold on grants was last logged (ms).
    hold_logged: std::sync::atomic::AtomicI64,
}

fn unavailable(error: redis::RedisError) -> Error {
    Error::Unavailable(error.to_string())
}

fn ack(status: &str) -> Ack {
    match status {
        "ok" => Ack::Ok,
        "done" => Ack::AlreadyDone,
        "denied" => Ack::NotHolder,
        _ => Ack::LeaseLost,
    }
}

impl RedisStore {
    /// The jobs that may still have work, oldest first (what acquire and the reaper walk).
    async fn active_job_ids(&self) -> Result<Vec<String>, Error> {
        self.conn()?
            .zrange(ACTIVE, 0, -1)
            .await
            .map_err(unavailable)
    }

    /// Acquire's body: up to `max` grants to `worker`, each job's written under `record` (a
    /// request's key, see `acquire_for_request`) in the script that makes them.
    async fn acquire_recorded(
        &self,
        worker: &str,
        max: usize,
        record: Option<&str>,
    ) -> Result<Vec<Grant>, Error> {
        // Lease ids are made per grant asked for, so the count is bounded here too.
        let max = max.min(MAX_ACQUIRE);
        if max == 0 || self.is_draining(worker).await? {
            return Ok(Vec::new());
        }
        if let Some(left) = self.connection.switched_within(self.policy.ttl) {
            self.log_hold(
                left.as_millis() as u64,
                "the redis primary changed less than a lease TTL ago",
            );
            return Ok(Vec::new());
        }
        let mut grants = Vec::new();
        for job_id in self.active_job_ids().await? {
            if grants.len() >= max {
                break;
            }
            let want = max - grants.len();
            match self
                .acquire_in_job(&job_id, worker, want, record, &mut grants)
                .await
            {
                Ok(JobStep::Next) => {}
                Ok(JobStep::Stop) => break,
                // Grants made in Redis are never thrown away: those made so far are returned,
                // and the caller asks again for the rest.
                Err(error) if !grants.is_empty() => {
                    tracing::warn!(%error, granted = grants.len(), "acquire stopped early; returning the grants made so far");
                    break;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(grants)
    }

    /// What a repeated acquire request answers: the grants its first answer carried that are
    /// still live, held by `worker`, with at least half a TTL left (and that TTL left).
    async fn replay(&self, worker: &str, recorded: &[String]) -> Result<Vec<Grant>, Error> {
        let mut conn = self.conn()?;
        let (seconds, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let now = seconds * 1000 + micros / 1000;
        let ttl = self.policy.ttl.as_millis() as i64;
        let mut grants = Vec::new();
        for entry in recorded {
            let [job_id, item_id, lease_id, epoch] = entry.splitn(4, '|').collect::<Vec<_>>()[..]
            else {
                continue;
            };
            let keys = JobKeys::new(job_id);
            let fields: Vec<String> = ["state", "lease", "epoch", "exp", "holder"]
                .iter()
                .map(|name| format!("{item_id}|{name}"))
                .collect();
            let (state, lease, granted_epoch, expires, holder): GrantFields = redis::cmd("HMGET")
                .arg(&keys.state)
                .arg(&fields)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let (spec, cancelled): (Option<String>, Option<String>) = redis::cmd("HMGET")
                .arg(&keys.meta)
                .arg(&["spec", "cancelled"])
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let live = state.as_deref() == Some("leased")
                && lease.as_deref() == Some(lease_id)
                && granted_epoch.as_deref() == Some(epoch)
                && holder.as_deref() == Some(worker)
                && cancelled.as_deref() != Some("1");
            let left = expires.unwrap_or(0) - now;
            if !live || left < ttl / 2 {
                continue;
            }
            let (_, source): (SelectionSpec, SourceSpec) = spec
                .and_then(|s| serde_json::from_str(&s).ok())
                .ok_or_else(|| Error::Corrupt(format!("job {job_id} has no readable spec")))?;
            let item: String = conn.hget(&keys.items, item_id).await.map_err(unavailable)?;
            let item: ItemSpec =
                serde_json::from_str(&item).map_err(|e| Error::Corrupt(e.to_string()))?;
            grants.push(Grant {
                lease: LeaseRef {
                    job_id: job_id.to_string(),
                    item_id: item_id.to_string(),
                    lease_id: lease_id.to_string(),
                    epoch: epoch.parse().unwrap_or(0),
                },
                item,
                source,
                ttl: Duration::from_millis(left as u64),
            });
        }
        Ok(grants)
    }

    /// One job's part of an acquire: up to `want` grants to `worker`, appended to `grants`.
    /// Whether to go on to the next job.
    async fn acquire_in_job(
        &self,
        job_id: &str,
        worker: &str,
        want: usize,
        record: Option<&str>,
        grants: &mut Vec<Grant>,
    ) -> Result<JobStep, Error> {
        let keys = JobKeys::new(job_id);
        let meta_spec: Option<String> = self
            .conn()?
            .hget(&keys.meta, "spec")
            .await
            .map_err(unavailable)?;
        let (_, source): (SelectionSpec, SourceSpec) = meta_spec
            .and_then(|s| serde_json::from_str(&s).ok())
            .ok_or_else(|| Error::Corrupt(format!("job {job_id} has no readable spec")))?;
        if self.source.as_ref().is_some_and(|pinned| *pinned != source) {
            return Ok(JobStep::Next);
        }
        let mut invocation = keys.invocation(&self.scripts.acquire);
        invocation
            .key(record.unwrap_or(NO_REQUEST))
            .arg(want)
            .arg(self.policy.ttl.as_millis() as u64)
            .arg(self.policy.max_expiries)
            .arg(worker)
            .arg(self.policy.max_leases_per_worker)
            .arg(if record.is_some() { "1" } else { "" });
        for _ in 0..want {
            invocation.arg(random_id());
        }
        let answer: Vec<redis::Value> = invocation
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        if let [status, left] = answer.as_slice()
            && redis::from_redis_value::<String>(status.clone()).is_ok_and(|s| s == "held")
        {
            let left_ms: u64 = redis::from_redis_value(left.clone()).unwrap_or(0);
            self.log_hold(left_ms, "redis started less than a lease TTL ago");
            return Ok(JobStep::Stop);
        }
        let Some((room, granted)) = answer.split_first() else {
            return Err(Error::Corrupt("acquire answered nothing".into()));
        };
        let room: i64 =
            redis::from_redis_value(room.clone()).map_err(|e| Error::Corrupt(e.to_string()))?;
        // The script took the job out of the active set if it has nothing left.
        let mut conn = self.conn()?;
        for triple in granted.chunks(3) {
            let item_id: String = redis::from_redis_value(triple[0].clone())
                .map_err(|e| Error::Corrupt(e.to_string()))?;
            let lease_id: String = redis::from_redis_value(triple[1].clone())
                .map_err(|e| Error::Corrupt(e.to_string()))?;
            let epoch: u64 = redis::from_redis_value(triple[2].clone())
                .map_err(|e| Error::Corrupt(e.to_string()))?;
            let spec: String = conn
                .hget(&keys.items, &item_id)
                .await
                .map_err(unavailable)?;
            let item: ItemSpec =
                serde_json::from_str(&spec).map_err(|e| Error::Corrupt(e.to_string()))?;
            grants.push(Grant {
                lease: LeaseRef {
                    job_id: job_id.to_string(),
                    item_id,
                    lease_id,
                    epoch,
                },
                item,
                source: source.clone(),
                ttl: self.policy.ttl,
            });
        }
        if room == 0 {
            // At its lease cap: no other job would grant it anything either.
            return Ok(JobStep::Stop);
        }
        Ok(JobStep::Next)
    }

    /// Says, at most every few seconds, why no lease is granted for now.
    fn log_hold(&self, left_ms: u64, why: &str) {
        let now = lease::model::now_ms();
        let last = self.hold_logged.load(std::sync::atomic::Ordering::Relaxed);
        if now - last >= 5_000 {
            self.hold_logged
                .store(now, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                left_ms,
                "{why}: holding new grants for a lease TTL, so that grants it may have lost cannot be made twice"
            );
        }
    }

    /// Writes `items` and their pending states, a chunk per round trip.
    async fn write_items(&self, keys: &JobKeys, items: &[ItemSpec]) -> Result<(), Error> {
        let mut conn = self.conn()?;
        for chunk in items.chunks(CREATE_CHUNK) {
            let mut pipe = redis::pipe();
            for item in chunk {
                let spec =
                    serde_json::to_string(item).map_err(|e| Error::Corrupt(e.to_string()))?;
                pipe.hset(&keys.items, &item.item_id, spec).ignore();
                pipe.hset_multiple(
                    &keys.state,
                    &[
                        (format!("{}|state", item.item_id), "pending".to_string()),
                        (format!("{}|epoch", item.item_id), "0".to_string()),
                        (format!("{}|bytes", item.item_id), item.bytes().to_string()),
                        (format!("{}|brief", item.item_id), brief(item)),
                    ],
                )
                .ignore();
                pipe.zadd(&keys.pending, &item.item_id, 0).ignore();
                pipe.zadd(&keys.order, &item.item_id, 0).ignore();
            }
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn transition(
        &self,
        script: &Script,
        lease: &LeaseRef,
        worker: &str,
        extra: &[String],
    ) -> Result<redis::Value, Error> {
        let keys = JobKeys::new(&lease.job_id);
        let mut invocation = keys.invocation(script);
        invocation
            .arg(&lease.item_id)
            .arg(&lease.lease_id)
            .arg(lease.epoch)
            .arg(worker);
        for value in extra {
            invocation.arg(value);
        }
        invocation
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)
    }

    async fn transition_ack(
        &self,
        script: &Script,
        lease: &LeaseRef,
        worker: &str,
        extra: &[String],
    ) -> Result<Ack, Error> {
        let value = self.transition(script, lease, worker, extra).await?;
        let status: String =
            redis::from_redis_value(value).map_err(|e| Error::Corrupt(e.to_string()))?;
        Ok(ack(&status))
    }
}

#[async_trait]
impl LeaseStore for RedisStore {
    fn policy(&self) -> &LeasePolicy {
        &self.policy
    }

    async fn create_job(&self, job: &JobSpec) -> Result<(), Error> {
        let keys = JobKeys::new(&job.job_id);
        let mut conn = self.conn()?;
        let exists: bool = conn.exists(&keys.meta).await.map_err(unavailable)?;
        if exists {
            return Ok(());
        }
        lease::store::check_distinct_ids(&job.job_id, &job.items)?;
        // Items and their states first; the job becomes visible (meta, indexes) last, in one
        // script, so a coordinator dying mid-way leaves nothing half-created that could be
        // granted or read.
        self.write_items(&keys, &job.items).await?;
        let spec = serde_json::to_string(&(&job.selection, &job.source))
            .map_err(|e| Error::Corrupt(e.to_string()))?;
        let follow = match &job.follow {
            Some(follow) => {
                serde_json::to_string(follow).map_err(|e| Error::Corrupt(e.to_string()))?
            }
            None => String::new(),
        };
        keys.invocation(&self.scripts.create)
            .arg(spec)
            .arg(job.items.len())
            .arg(job.items.iter().map(|i| i.objects.len()).sum::<usize>())
            .arg(job.items.iter().map(ItemSpec::bytes).sum::<u64>())
            .arg(follow)
            .arg(job.follow.as_ref().map_or(0, |f| f.interval_ms))
            .arg(job.bwlimit.as_deref().unwrap_or_default())
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn acquire(&self, worker: &str, max: usize) -> Result<Vec<Grant>, Error> {
        self.acquire_recorded(worker, max, None).await
    }

    async fn acquire_for_request(
        &self,
        worker: &str,
        max: usize,
        request_id: &str,
    ) -> Result<Vec<Grant>, Error> {
        let record = request_key(worker, request_id);
        let recorded: Vec<String> = self
            .conn()?
            .lrange(&record, 0, -1)
            .await
            .map_err(unavailable)?;
        if recorded.is_empty() {
            return self.acquire_recorded(worker, max, Some(&record)).await;
        }
        self.replay(worker, &recorded).await
    }

    async fn renew(&self, lease: &LeaseRef, worker: &str) -> Result<Ack, Error> {
        let ttl = (self.policy.ttl.as_millis() as u64).to_string();
        self.transition_ack(&self.scripts.renew, lease, worker, &[ttl])
            .await
    }

    async fn complete(&self, lease: &LeaseRef, worker: &str) -> Result<Ack, Error> {
        self.transition_ack(&self.scripts.complete, lease, worker, &[])
            .await
    }

    async fn fail(
        &self,
        lease: &LeaseRef,
        worker: &str,
        reason: &str,
        permanent: bool,
    ) -> Result<FailOutcome, Error> {
        let jitter: f64 = rand::random();
        let extra = [
            reason.to_string(),
            if permanent { "1" } else { "0" }.to_string(),
            self.policy.max_attempts.to_string(),
            format!("{jitter:.6}"),
            (self.policy.backoff_base.as_millis() as u64).to_string(),
            (self.policy.backoff_cap.as_millis() as u64).to_string(),
        ];
        let value = self
            .transition(&self.scripts.fail, lease, worker, &extra)
            .await?;
        let (status, dead): (String, i64) =
            redis::from_redis_value(value).map_err(|e| Error::Corrupt(e.to_string()))?;
        Ok(FailOutcome {
            ack: ack(&status),
            dead: dead == 1,
        })
    }

    async fn release(&self, lease: &LeaseRef, worker: &str) -> Result<Ack, Error> {
        self.transition_ack(&self.scripts.release, lease, worker, &[])
            .await
    }

    async fn reap(&self) -> Result<u32, Error> {
        let mut total = 0;
        for job_id in self.active_job_ids().await? {
            let keys = JobKeys::new(&job_id);
            let mut invocation = keys.invocation(&self.scripts.reap);
            invocation
                .arg(self.policy.max_expiries)
                .arg(self.policy.ttl.as_millis() as u64);
            let reaped: u32 = invocation
                .invoke_async(&mut self.conn()?)
                .await
                .map_err(unavailable)?;
            // The script also retires a job with nothing left, which keeps the active set
            // (and so `--max-active-jobs`) true when no worker asks.
            total += reaped;
        }
        Ok(total)
    }

    async fn progress(&self, lease: &LeaseRef, worker: &str, bytes_done: u64) -> Result<(), Error> {
        self.transition(
            &self.scripts.progress,
            lease,
            worker,
            &[bytes_done.to_string()],
        )
        .await
        .map(|_| ())
    }

    async fn cancel_job(&self, job_id: &str) -> Result<(), Error> {
        let cancelled: i64 = JobKeys::new(job_id)
            .invocation(&self.scripts.cancel)
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        if cancelled == 1 {
            Ok(())
        } else {
            Err(Error::UnknownJob(job_id.to_string()))
        }
    }

    async fn retry_dead(&self, job_id: &str) -> Result<u32, Error> {
        let retried: i64 = JobKeys::new(job_id)
            .invocation(&self.scripts.retry_dead)
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        u32::try_from(retried).map_err(|_| Error::UnknownJob(job_id.to_string()))
    }

    async fn jobs(&self) -> Result<Vec<JobStatus>, Error> {
        self.jobs_view().await
    }

    async fn job(&self, job_id: &str) -> Result<JobStatus, Error> {
        self.status_of(job_id).await
    }

    async fn items(&self, job_id: &str) -> Result<Vec<ItemStatus>, Error> {
        self.items_view(job_id).await
    }

    async fn items_page(
        &self,
        job_id: &str,
        state: Option<ItemState>,
        after: &str,
        limit: usize,
    ) -> Result<ItemPage, Error> {
        self.items_page_view(job_id, state, after, limit).await
    }

    async fn job_cancelled(&self, job_id: &str) -> Result<bool, Error> {
        let cancelled: Option<String> = self
            .conn()?
            .hget(JobKeys::new(job_id).meta, "cancelled")
            .await
            .map_err(unavailable)?;
        match cancelled {
            Some(flag) => Ok(flag == "1"),
            None => Err(Error::UnknownJob(job_id.to_string())),
        }
    }

    async fn recent_jobs(&self, recent: usize) -> Result<RecentJobs, Error> {
        self.recent_jobs_view(recent).await
    }

    async fn claim_due_passes(&self, max: usize) -> Result<Vec<(String, FollowSpec)>, Error> {
        standing::claim_due_passes(self, max).await
    }

    async fn job_objects(&self, job_id: &str) -> Result<Vec<ObjectSpec>, Error> {
        standing::job_objects(self, job_id).await
    }

    async fn extend_job(&self, job_id: &str, items: &[ItemSpec]) -> Result<(), Error> {
        standing::extend_job(self, job_id, items).await
    }

    async fn standing_jobs(&self) -> Result<Vec<JobStatus>, Error> {
        standing::standing_jobs(self).await
    }

    async fn record_pass(&self, job_id: &str, error: Option<&str>) -> Result<(), Error> {
        standing::record_pass(self, job_id, error).await
    }

    async fn heartbeat(
        &self,
        worker: &str,
        leases_held: u32,
        metrics: &WorkerMetrics,
    ) -> Result<(), Error> {
        upkeep::heartbeat(self, worker, leases_held, metrics).await
    }

    async fn workers(&self) -> Result<Vec<WorkerStatus>, Error> {
        self.workers_view().await
    }

    async fn holdings(&self) -> Result<Vec<(String, String)>, Error> {
        self.holdings_view().await
    }

    async fn history(&self) -> Result<Vec<(String, Vec<Sample>)>, Error> {
        self.history_view().await
    }

    async fn drain(&self, worker: &str) -> Result<(), Error> {
        self.conn()?
            .sadd::<_, _, ()>(DRAIN, worker)
            .await
            .map_err(unavailable)
    }

    async fn is_draining(&self, worker: &str) -> Result<bool, Error> {
        self.conn()?
            .sismember(DRAIN, worker)
            .await
            .map_err(unavailable)
    }

    async fn ping(&self) -> Result<(), Error> {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn()?)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn active_jobs(&self) -> Result<usize, Error> {
        self.conn()?.zcard(ACTIVE).await.map_err(unavailable)
    }

    async fn prune(&self, retention: Duration) -> Result<Pruned, Error> {
        upkeep::prune(self, retention).await
    }
}
