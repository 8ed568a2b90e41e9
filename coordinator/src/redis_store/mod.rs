//! The cluster's lease store: the state machine in Redis, one Lua script per transition.
//!
//! ```text
//! era5:jobs                 ZSET  job id -> creation time (ms), every job
//! era5:active               ZSET  the same, for jobs that may still have work to grant
//! era5:{JOB}:meta           HASH  spec, created, started, finished, cancelled, done, dead,
//!                                 done_bytes, objects_total, bytes_total, items, ended (last
//!                                 time an item went dead or the job was cancelled)
//! era5:{JOB}:items          HASH  item id -> item spec (JSON: product, days, objects)
//! era5:{JOB}:order          ZSET  item ids, all scored 0: plan order, for paging (jobs
//!                                 created before it existed are paged from HKEYS items)
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
//! era5:history:<worker>     LIST  the last hour of rate and connections (newest first);
//!                                 a `:gate` key (SET NX PX) admits one point per period
//! ```
//!
//! Every key is under `era5:`, so a Redis ACL user restricted to `~era5:*` (see
//! `deploy/base/redis/era5-user.acl`) can run the coordinator.
//!
//! Time comes from Redis `TIME` inside the scripts, so coordinators need no clock agreement.
//! All of a job's keys share the hash tag `{JOB}`, so each script touches one slot (Redis
//! Cluster). Scripts are sent by EVALSHA and reloaded on NOSCRIPT (a Redis restart).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use lease::Error;
use lease::model::{
    Ack, Counts, FollowSpec, FollowStatus, Grant, ItemSpec, ItemState, ItemStatus, JobSpec,
    JobStatus, LeasePolicy, LeaseRef, MAX_ACQUIRE, ObjectSpec, SAMPLE_EVERY_MS, SAMPLES_KEPT,
    Sample, SelectionSpec, SourceSpec, WorkerMetrics, WorkerStatus, now_ms, random_id,
};
use lease::store::{FailOutcome, ItemPage, LeaseStore, PAGE_SCAN_BUDGET, Pruned, RecentJobs};

const JOBS: &str = "era5:jobs";
/// Jobs that may still have work to grant; acquire walks only these.
const ACTIVE: &str = "era5:active";
const WORKERS: &str = "era5:workers";
/// Standing jobs by next pass (ms).
const STANDING: &str = "era5:standing";
/// Per worker: a list of samples (newest first) and a gate key that lets one in per period.
fn history_key(worker: &str) -> String {
    format!("era5:history:{worker}")
}
const DRAIN: &str = "era5:drain";
/// Items written per pipeline when a job is created (a million-object job has ~30 000).
const CREATE_CHUNK: usize = 2_000;
/// Jobs looked at per pruning pass (the oldest first); the next pass takes the rest.
const PRUNE_BATCH: isize = 500;
/// Item ids read per round trip when a page walks the plan order.
const PAGE_CHUNK: usize = 1_000;
/// The per-item fields a page of leases shows, in the order `items_page` reads them.
const PAGE_FIELDS: [&str; 9] = [
    "state",
    "epoch",
    "holder",
    "attempts",
    "expiries",
    "error",
    "bytes_done",
    "bytes",
    "brief",
];

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
    /// On the standing set alone (no job keys), so without the prelude.
    claim_pass: Script,
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
            claim_pass: Script::new(include_str!("scripts/claim_pass.lua")),
        }
    }
}

/// The keys of one job.
struct JobKeys {
    meta: String,
    state: String,
    pending: String,
    leased: String,
    items: String,
    order: String,
}

impl JobKeys {
    fn new(job_id: &str) -> Self {
        let tag = format!("era5:{{{job_id}}}");
        Self {
            meta: format!("{tag}:meta"),
            state: format!("{tag}:st"),
            pending: format!("{tag}:pending"),
            leased: format!("{tag}:leased"),
            items: format!("{tag}:items"),
            order: format!("{tag}:order"),
        }
    }

    /// Prepares `script` with the five keys every transition declares.
    fn invocation<'a>(&self, script: &'a Script) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.key(&self.meta);
        invocation
            .key(&self.state)
            .key(&self.pending)
            .key(&self.leased)
            .key(&self.items);
        invocation
    }
}

/// The Redis store.
pub struct RedisStore {
    /// Set once the first connection succeeded; the manager then reconnects by itself.
    connection: Arc<tokio::sync::OnceCell<ConnectionManager>>,
    policy: LeasePolicy,
    scripts: Scripts,
    /// When set, only jobs of this source are granted (a coordinator's pinned source).
    source: Option<SourceSpec>,
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

/// Where the store's Redis is, checked: a parsed `redis://` or `rediss://` URL with its TLS
/// roots. Callers (the `era5 coordinator` flags) get one without naming the `redis` crate.
#[derive(Clone)]
pub struct RedisTarget(redis::Client);

/// The Redis at `url` (`redis://` or `rediss://`). With `ca_pem`, a `rediss://` server must
/// present a certificate that chains to it (otherwise to the system's roots). A bad URL is an
/// `InvalidArgument` naming it, with any password redacted.
pub fn target(url: &str, ca_pem: Option<&[u8]>) -> Result<RedisTarget, Error> {
    client(url, ca_pem).map(RedisTarget)
}

fn client(url: &str, ca_pem: Option<&[u8]>) -> Result<redis::Client, Error> {
    let bad = |e: redis::RedisError| {
        Error::InvalidArgument(common::redact::scrub_url_from(
            &format!("invalid --redis `{}`: {e}", common::redact::redact_url(url)),
            url,
        ))
    };
    match ca_pem {
        None => redis::Client::open(url).map_err(bad),
        Some(ca) => {
            if !url.starts_with("rediss://") {
                return Err(Error::InvalidArgument(format!(
                    "--redis-ca is given but --redis `{}` is not a rediss:// URL",
                    common::redact::redact_url(url)
                )));
            }
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.to_vec()),
                },
            )
            .map_err(bad)
        }
    }
}

/// What a page of leases shows of an item spec, without its object list.
fn brief(item: &ItemSpec) -> String {
    format!(
        "{}\t{}\t{}\t{}",
        item.product,
        item.start,
        item.end,
        item.objects.len()
    )
}

/// How a job's items are walked in plan order.
enum Order {
    /// The job's `order` index.
    Index,
    /// Every id, sorted (a job created before the index existed).
    Loaded(Vec<String>),
}

impl RedisStore {
    /// A store for `url` that connects in the background: until Redis answers, every call
    /// fails with `Unavailable` (the coordinator reports not ready) instead of blocking or
    /// failing start-up. Once connected, the connection manager reconnects by itself.
    pub fn connect_lazily(url: &str, policy: LeasePolicy) -> Result<Self, Error> {
        Ok(Self::with_target(target(url, None)?, policy))
    }

    /// Like [`RedisStore::connect_lazily`], over a prepared client (TLS with a private CA).
    pub fn with_target(RedisTarget(client): RedisTarget, policy: LeasePolicy) -> Self {
        let connection = Arc::new(tokio::sync::OnceCell::new());
        let cell = connection.clone();
        tokio::spawn(async move {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(5)))
                .set_number_of_retries(2);
            // The one backoff of the code base (full jitter), as for S3 and the workers' calls.
            let mut backoff = transport::retry::RetryPolicy::reconnect().backoff_sequence();
            loop {
                match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                    Ok(manager) => {
                        let _ = cell.set(manager);
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "redis is not reachable yet; retrying");
                        tokio::time::sleep(backoff.next_wait()).await;
                    }
                }
            }
        });
        Self {
            connection,
            policy,
            scripts: Scripts::load(),
            source: None,
        }
    }

    /// Grants only jobs of `source`: a coordinator hands out work from its own source and
    /// nobody else's, whatever another coordinator wrote into the same Redis.
    pub fn pinned_to(mut self, source: SourceSpec) -> Self {
        self.source = Some(source);
        self
    }

    /// Connects and waits until Redis answers (at most 10 s).
    pub async fn connect(url: &str, policy: LeasePolicy) -> Result<Self, Error> {
        let store = Self::connect_lazily(url, policy)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.connection.get().is_none() {
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Unavailable(format!(
                    "no answer from {}",
                    transport::redact_url(url)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(store)
    }

    fn conn(&self) -> Result<ConnectionManager, Error> {
        self.connection
            .get()
            .cloned()
            .ok_or_else(|| Error::Unavailable("not connected to redis yet".into()))
    }

    async fn job_ids(&self) -> Result<Vec<String>, Error> {
        self.conn()?.zrange(JOBS, 0, -1).await.map_err(unavailable)
    }

    async fn status_of(&self, job_id: &str) -> Result<JobStatus, Error> {
        let keys = JobKeys::new(job_id);
        let mut conn = self.conn()?;
        let meta: HashMap<String, String> = conn.hgetall(&keys.meta).await.map_err(unavailable)?;
        if meta.is_empty() {
            return Err(Error::UnknownJob(job_id.to_string()));
        }
        let (pending, leased_items): (u32, Vec<String>) = redis::pipe()
            .zcard(&keys.pending)
            .zrange(&keys.leased, 0, -1)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let leased_progress: u64 = if leased_items.is_empty() {
            0
        } else {
            let fields: Vec<String> = leased_items
                .iter()
                .map(|i| format!("{i}|bytes_done"))
                .collect();
            let values: Vec<Option<u64>> = redis::cmd("HMGET")
                .arg(&keys.state)
                .arg(fields)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            values.into_iter().flatten().sum()
        };
        let number = |name: &str| {
            meta.get(name)
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
        };
        let spec: (SelectionSpec, SourceSpec) = meta
            .get("spec")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| Error::Corrupt(format!("job {job_id} has no readable spec")))?;
        let counts = Counts {
            pending,
            leased: leased_items.len() as u32,
            done: number("done") as u32,
            dead: number("dead") as u32,
        };
        let started = number("started");
        let follow = match meta.get("follow") {
            None => None,
            Some(json) => {
                let spec: FollowSpec = serde_json::from_str(json)
                    .map_err(|e| Error::Corrupt(format!("job {job_id}: follow: {e}")))?;
                let next_check: Option<i64> =
                    conn.zscore(STANDING, job_id).await.map_err(unavailable)?;
                Some(FollowStatus {
                    interval_ms: spec.interval_ms,
                    next_check_ms: next_check.unwrap_or(0),
                    passes: number("follow_passes") as u64,
                    last_success_ms: number("follow_success"),
                    last_error: meta.get("follow_error").cloned().unwrap_or_default(),
                })
            }
        };
        Ok(JobStatus {
            follow,
            job_id: job_id.to_string(),
            state: counts.job_state(number("cancelled") == 1, started > 0),
            counts,
            objects_total: number("objects_total") as u64,
            bytes_total: number("bytes_total") as u64,
            bytes_done: number("done_bytes") as u64 + leased_progress,
            created_ms: number("created"),
            started_ms: started,
            finished_ms: number("finished"),
            selection: spec.0,
            source: spec.1,
        })
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

    /// Drops a job from the active set once nothing of it is pending or leased (done, dead or
    /// cancelled), so acquire stays fast however many jobs ran before.
    async fn retire_if_final(&self, job_id: &str) -> Result<(), Error> {
        let keys = JobKeys::new(job_id);
        let mut conn = self.conn()?;
        let (pending, leased, cancelled): (u64, u64, Option<String>) = redis::pipe()
            .zcard(&keys.pending)
            .zcard(&keys.leased)
            .hget(&keys.meta, "cancelled")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if (pending == 0 && leased == 0) || cancelled.as_deref() == Some("1") {
            conn.zrem::<_, _, ()>(ACTIVE, job_id)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// How to walk `job_id`'s items in plan order; `UnknownJob` if there is no such job.
    async fn order_of(&self, keys: &JobKeys, job_id: &str) -> Result<Order, Error> {
        let mut conn = self.conn()?;
        let (exists, indexed): (bool, u64) = redis::pipe()
            .exists(&keys.meta)
            .zcard(&keys.order)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if !exists {
            return Err(Error::UnknownJob(job_id.to_string()));
        }
        if indexed > 0 {
            return Ok(Order::Index);
        }
        let mut ids: Vec<String> = conn.hkeys(&keys.items).await.map_err(unavailable)?;
        ids.sort_unstable();
        Ok(Order::Loaded(ids))
    }

    /// Up to `count` item ids after `after` in plan order.
    async fn ids_after(
        &self,
        keys: &JobKeys,
        order: &Order,
        after: &str,
        count: usize,
    ) -> Result<Vec<String>, Error> {
        match order {
            Order::Index => {
                let from = if after.is_empty() {
                    "-".to_string()
                } else {
                    format!("({after}")
                };
                redis::cmd("ZRANGEBYLEX")
                    .arg(&keys.order)
                    .arg(from)
                    .arg("+")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(count)
                    .query_async(&mut self.conn()?)
                    .await
                    .map_err(unavailable)
            }
            Order::Loaded(ids) => {
                let start = ids.partition_point(|id| id.as_str() <= after);
                Ok(ids[start..(start + count).min(ids.len())].to_vec())
            }
        }
    }

    /// The ids of one page: plan order after `after`, filtered by state, within the scan
    /// budget; and where the next page starts.
    async fn page_ids(
        &self,
        keys: &JobKeys,
        job_id: &str,
        state: Option<ItemState>,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<String>, Option<String>), Error> {
        let order = self.order_of(keys, job_id).await?;
        let Some(wanted) = state else {
            let mut ids = self.ids_after(keys, &order, after, limit + 1).await?;
            let next = (ids.len() > limit).then(|| ids[limit - 1].clone());
            ids.truncate(limit);
            return Ok((ids, next));
        };
        if matches!(wanted, ItemState::Pending | ItemState::Leased) {
            // Both states have their own set; the leased one is small.
            let set = if wanted == ItemState::Leased {
                &keys.leased
            } else {
                &keys.pending
            };
            let mut ids: Vec<String> =
                self.conn()?.zrange(set, 0, -1).await.map_err(unavailable)?;
            ids.retain(|id| id.as_str() > after);
            ids.sort_unstable();
            let next = (ids.len() > limit).then(|| ids[limit - 1].clone());
            ids.truncate(limit);
            return Ok((ids, next));
        }
        let mut picked = Vec::new();
        let mut cursor = after.to_string();
        let mut scanned = 0;
        loop {
            let batch = self.ids_after(keys, &order, &cursor, PAGE_CHUNK).await?;
            let Some(last) = batch.last() else {
                return Ok((picked, None));
            };
            let fields: Vec<String> = batch.iter().map(|id| format!("{id}|state")).collect();
            let states: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(&keys.state)
                .arg(fields)
                .query_async(&mut self.conn()?)
                .await
                .map_err(unavailable)?;
            for (id, item_state) in batch.iter().zip(states) {
                if picked.len() == limit {
                    // A full page, and more items follow it.
                    return Ok((picked, Some(cursor)));
                }
                cursor.clone_from(id);
                if item_state.as_deref().and_then(ItemState::parse) == Some(wanted) {
                    picked.push(id.clone());
                }
            }
            scanned += batch.len();
            if batch.len() < PAGE_CHUNK {
                return Ok((picked, None));
            }
            if scanned >= PAGE_SCAN_BUDGET {
                cursor.clone_from(last);
                return Ok((picked, Some(cursor)));
            }
        }
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
        // Items and their states first; the job becomes visible (meta, index) last, so a
        // coordinator dying mid-way leaves nothing half-created that could be granted.
        self.write_items(&keys, &job.items).await?;
        let spec = serde_json::to_string(&(&job.selection, &job.source))
            .map_err(|e| Error::Corrupt(e.to_string()))?;
        let created = now_ms();
        let mut pipe = redis::pipe();
        if let Some(follow) = &job.follow {
            let follow_json =
                serde_json::to_string(follow).map_err(|e| Error::Corrupt(e.to_string()))?;
            pipe.hset_multiple(
                &keys.meta,
                &[
                    ("follow", follow_json),
                    ("follow_passes", "0".to_string()),
                    ("follow_success", created.to_string()),
                    ("follow_error", String::new()),
                ],
            )
            .ignore()
            .zadd(STANDING, &job.job_id, created + follow.interval_ms as i64)
            .ignore();
        }
        pipe.hset_multiple(
            &keys.meta,
            &[
                ("spec", spec),
                ("created", created.to_string()),
                ("cancelled", "0".to_string()),
                ("done", "0".to_string()),
                ("dead", "0".to_string()),
                ("done_bytes", "0".to_string()),
                ("items", job.items.len().to_string()),
                (
                    "objects_total",
                    job.items
                        .iter()
                        .map(|i| i.objects.len())
                        .sum::<usize>()
                        .to_string(),
                ),
                (
                    "bytes_total",
                    job.items
                        .iter()
                        .map(ItemSpec::bytes)
                        .sum::<u64>()
                        .to_string(),
                ),
            ],
        )
        .ignore()
        .zadd(JOBS, &job.job_id, created)
        .ignore()
        .zadd(ACTIVE, &job.job_id, created)
        .ignore()
        .query_async::<()>(&mut conn)
        .await
        .map_err(unavailable)
    }

    async fn acquire(&self, worker: &str, max: usize) -> Result<Vec<Grant>, Error> {
        // Lease ids are made per grant asked for, so the count is bounded here too.
        let max = max.min(MAX_ACQUIRE);
        if max == 0 || self.is_draining(worker).await? {
            return Ok(Vec::new());
        }
        let mut grants = Vec::new();
        let active: Vec<String> = self
            .conn()?
            .zrange(ACTIVE, 0, -1)
            .await
            .map_err(unavailable)?;
        for job_id in active {
            if grants.len() >= max {
                break;
            }
            let want = max - grants.len();
            let keys = JobKeys::new(&job_id);
            let meta_spec: Option<String> = self
                .conn()?
                .hget(&keys.meta, "spec")
                .await
                .map_err(unavailable)?;
            let (_, source): (SelectionSpec, SourceSpec) = meta_spec
                .and_then(|s| serde_json::from_str(&s).ok())
                .ok_or_else(|| Error::Corrupt(format!("job {job_id} has no readable spec")))?;
            if self.source.as_ref().is_some_and(|pinned| *pinned != source) {
                continue;
            }
            let mut invocation = keys.invocation(&self.scripts.acquire);
            invocation
                .arg(want)
                .arg(self.policy.ttl.as_millis() as u64)
                .arg(self.policy.max_expiries)
                .arg(worker);
            for _ in 0..want {
                invocation.arg(random_id());
            }
            let granted: Vec<redis::Value> = invocation
                .invoke_async(&mut self.conn()?)
                .await
                .map_err(unavailable)?;
            if granted.is_empty() {
                self.retire_if_final(&job_id).await?;
                continue;
            }
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
                        job_id: job_id.clone(),
                        item_id,
                        lease_id,
                        epoch,
                    },
                    item,
                    source: source.clone(),
                    ttl: self.policy.ttl,
                });
            }
        }
        Ok(grants)
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
        let active: Vec<String> = self
            .conn()?
            .zrange(ACTIVE, 0, -1)
            .await
            .map_err(unavailable)?;
        for job_id in active {
            let keys = JobKeys::new(&job_id);
            let mut invocation = keys.invocation(&self.scripts.reap);
            invocation.arg(self.policy.max_expiries);
            let reaped: u32 = invocation
                .invoke_async(&mut self.conn()?)
                .await
                .map_err(unavailable)?;
            total += reaped;
            // Keeps the active set (and so `--max-active-jobs`) true when no worker asks.
            self.retire_if_final(&job_id).await?;
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
        let keys = JobKeys::new(job_id);
        let mut conn = self.conn()?;
        let exists: bool = conn.exists(&keys.meta).await.map_err(unavailable)?;
        if !exists {
            return Err(Error::UnknownJob(job_id.to_string()));
        }
        redis::pipe()
            .hset(&keys.meta, "cancelled", "1")
            .ignore()
            .hset(&keys.meta, "ended", now_ms())
            .ignore()
            .zrem(ACTIVE, job_id)
            .ignore()
            .zrem(STANDING, job_id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn retry_dead(&self, job_id: &str) -> Result<u32, Error> {
        let keys = JobKeys::new(job_id);
        let exists: bool = self.conn()?.exists(&keys.meta).await.map_err(unavailable)?;
        if !exists {
            return Err(Error::UnknownJob(job_id.to_string()));
        }
        let retried: u32 = keys
            .invocation(&self.scripts.retry_dead)
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        let created: Option<i64> = self
            .conn()?
            .zscore(JOBS, job_id)
            .await
            .map_err(unavailable)?;
        if retried > 0 {
            self.conn()?
                .zadd::<_, _, _, ()>(ACTIVE, job_id, created.unwrap_or(0))
                .await
                .map_err(unavailable)?;
        }
        Ok(retried)
    }

    async fn jobs(&self) -> Result<Vec<JobStatus>, Error> {
        let mut jobs = Vec::new();
        for job_id in self.job_ids().await? {
            jobs.push(self.status_of(&job_id).await?);
        }
        Ok(jobs)
    }

    async fn job(&self, job_id: &str) -> Result<JobStatus, Error> {
        self.status_of(job_id).await
    }

    async fn items(&self, job_id: &str) -> Result<Vec<ItemStatus>, Error> {
        let keys = JobKeys::new(job_id);
        let mut conn = self.conn()?;
        let specs: HashMap<String, String> =
            conn.hgetall(&keys.items).await.map_err(unavailable)?;
        if specs.is_empty() {
            self.status_of(job_id).await?;
        }
        let state: HashMap<String, String> =
            conn.hgetall(&keys.state).await.map_err(unavailable)?;
        let field = |item: &str, name: &str| {
            state
                .get(&format!("{item}|{name}"))
                .cloned()
                .unwrap_or_default()
        };
        let number = |item: &str, name: &str| field(item, name).parse::<u64>().unwrap_or(0);
        let mut items: Vec<ItemStatus> = Vec::with_capacity(specs.len());
        for (item_id, spec) in specs {
            let spec: ItemSpec =
                serde_json::from_str(&spec).map_err(|e| Error::Corrupt(e.to_string()))?;
            let item_state =
                ItemState::parse(&field(&item_id, "state")).unwrap_or(ItemState::Pending);
            items.push(ItemStatus {
                product: spec.product.clone(),
                start: spec.start.clone(),
                end: spec.end.clone(),
                objects: spec.objects.len() as u32,
                bytes: spec.bytes(),
                state: item_state,
                epoch: number(&item_id, "epoch"),
                holder: field(&item_id, "holder"),
                attempts: number(&item_id, "attempts") as u32,
                expiries: number(&item_id, "expiries") as u32,
                last_error: field(&item_id, "error"),
                bytes_done: match item_state {
                    ItemState::Done => spec.bytes(),
                    ItemState::Leased => number(&item_id, "bytes_done"),
                    _ => 0,
                },
                item_id,
            });
        }
        items.sort_by(|a, b| a.item_id.cmp(&b.item_id));
        Ok(items)
    }

    async fn items_page(
        &self,
        job_id: &str,
        state: Option<ItemState>,
        after: &str,
        limit: usize,
    ) -> Result<ItemPage, Error> {
        let keys = JobKeys::new(job_id);
        let (ids, next) = self
            .page_ids(&keys, job_id, state, after, limit.max(1))
            .await?;
        if ids.is_empty() {
            return Ok(ItemPage {
                items: Vec::new(),
                next,
            });
        }
        let fields: Vec<String> = ids
            .iter()
            .flat_map(|id| PAGE_FIELDS.iter().map(move |f| format!("{id}|{f}")))
            .collect();
        let mut conn = self.conn()?;
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&keys.state)
            .arg(fields)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        // Jobs created before briefs existed: read those items' specs instead.
        let unbriefed: Vec<&String> = ids
            .iter()
            .zip(values.chunks(PAGE_FIELDS.len()))
            .filter(|(_, v)| v[8].is_none())
            .map(|(id, _)| id)
            .collect();
        let mut specs: HashMap<String, String> = HashMap::new();
        if !unbriefed.is_empty() {
            let found: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(&keys.items)
                .arg(&unbriefed)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            for (id, spec) in unbriefed.into_iter().zip(found) {
                if let Some(spec) = spec {
                    specs.insert(id.clone(), spec);
                }
            }
        }
        let mut items = Vec::with_capacity(ids.len());
        for (id, v) in ids.into_iter().zip(values.chunks(PAGE_FIELDS.len())) {
            let text = |i: usize| v[i].clone().unwrap_or_default();
            let number = |i: usize| {
                v[i].as_deref()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let (product, start, end, objects) = match &v[8] {
                Some(brief) => {
                    let mut parts = brief.split('\t');
                    let mut next = || parts.next().unwrap_or_default().to_string();
                    let (product, start, end) = (next(), next(), next());
                    (product, start, end, next().parse().unwrap_or(0))
                }
                None => {
                    let spec: ItemSpec = specs
                        .get(&id)
                        .and_then(|s| serde_json::from_str(s).ok())
                        .ok_or_else(|| {
                            Error::Corrupt(format!(
                                "item {id} of job {job_id} has no readable spec"
                            ))
                        })?;
                    let objects = spec.objects.len() as u32;
                    (spec.product, spec.start, spec.end, objects)
                }
            };
            let item_state = ItemState::parse(&text(0)).unwrap_or(ItemState::Pending);
            let bytes = number(7);
            items.push(ItemStatus {
                item_id: id,
                product,
                start,
                end,
                objects,
                bytes,
                state: item_state,
                epoch: number(1),
                holder: text(2),
                attempts: number(3) as u32,
                expiries: number(4) as u32,
                last_error: text(5),
                bytes_done: match item_state {
                    ItemState::Done => bytes,
                    ItemState::Leased => number(6),
                    _ => 0,
                },
            });
        }
        Ok(ItemPage { items, next })
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
        let mut conn = self.conn()?;
        let mut pipe = redis::pipe();
        pipe.zrange_withscores(ACTIVE, 0, -1).zcard(JOBS);
        if recent > 0 {
            pipe.zrevrange_withscores(JOBS, 0, recent as isize - 1);
        } else {
            pipe.zrevrange_withscores(JOBS, 1, 0);
        }
        let (active, total, newest): (Vec<(String, f64)>, u64, Vec<(String, f64)>) =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;
        let mut ids: Vec<(f64, String)> = active
            .into_iter()
            .chain(newest)
            .map(|(id, created)| (created, id))
            .collect();
        ids.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        ids.dedup_by(|a, b| a.1 == b.1);
        let mut jobs = Vec::with_capacity(ids.len());
        for (_, job_id) in ids {
            match self.status_of(&job_id).await {
                Ok(job) => jobs.push(job),
                // Deleted between the two reads (retention): not worth failing the view.
                Err(Error::UnknownJob(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(RecentJobs { jobs, total })
    }

    async fn claim_due_passes(&self, max: usize) -> Result<Vec<(String, FollowSpec)>, Error> {
        let mut conn = self.conn()?;
        let (seconds, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let now = seconds * 1000 + micros / 1000;
        let due: Vec<String> = conn
            .zrangebyscore_limit(STANDING, "-inf", now, 0, max as isize)
            .await
            .map_err(unavailable)?;
        let mut claimed = Vec::new();
        for job_id in due {
            let keys = JobKeys::new(&job_id);
            let (follow, cancelled): (Option<String>, Option<String>) = redis::pipe()
                .hget(&keys.meta, "follow")
                .hget(&keys.meta, "cancelled")
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let follow = follow.and_then(|json| serde_json::from_str::<FollowSpec>(&json).ok());
            let Some(follow) = follow.filter(|_| cancelled.as_deref() != Some("1")) else {
                // Cancelled, or gone: it follows no more.
                conn.zrem::<_, _, ()>(STANDING, &job_id)
                    .await
                    .map_err(unavailable)?;
                continue;
            };
            let won: i32 = self
                .scripts
                .claim_pass
                .key(STANDING)
                .arg(&job_id)
                .arg(follow.interval_ms)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if won == 1 {
                claimed.push((job_id, follow));
            }
        }
        Ok(claimed)
    }

    async fn job_objects(&self, job_id: &str) -> Result<Vec<ObjectSpec>, Error> {
        let keys = JobKeys::new(job_id);
        let mut conn = self.conn()?;
        let exists: bool = conn.exists(&keys.meta).await.map_err(unavailable)?;
        if !exists {
            return Err(Error::UnknownJob(job_id.to_string()));
        }
        // A cursor a thousand items at a time: no reply holds the whole job.
        let mut objects = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, fields): (u64, Vec<String>) = redis::cmd("HSCAN")
                .arg(&keys.items)
                .arg(cursor)
                .arg("COUNT")
                .arg(PAGE_CHUNK)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            for spec in fields.chunks(2).filter_map(|pair| pair.get(1)) {
                let item: ItemSpec =
                    serde_json::from_str(spec).map_err(|e| Error::Corrupt(e.to_string()))?;
                objects.extend(item.objects);
            }
            if next == 0 {
                return Ok(objects);
            }
            cursor = next;
        }
    }

    async fn extend_job(&self, job_id: &str, items: &[ItemSpec]) -> Result<(), Error> {
        let keys = JobKeys::new(job_id);
        let mut conn = self.conn()?;
        let created: Option<i64> = conn.zscore(JOBS, job_id).await.map_err(unavailable)?;
        let Some(created) = created else {
            return Err(Error::UnknownJob(job_id.to_string()));
        };
        self.write_items(&keys, items).await?;
        let objects: usize = items.iter().map(|i| i.objects.len()).sum();
        let bytes: u64 = items.iter().map(ItemSpec::bytes).sum();
        redis::pipe()
            .hincr(&keys.meta, "items", items.len())
            .ignore()
            .hincr(&keys.meta, "objects_total", objects)
            .ignore()
            .hincr(&keys.meta, "bytes_total", bytes)
            .ignore()
            .zadd(ACTIVE, job_id, created)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn standing_jobs(&self) -> Result<Vec<JobStatus>, Error> {
        let ids: Vec<String> = self
            .conn()?
            .zrange(STANDING, 0, -1)
            .await
            .map_err(unavailable)?;
        let mut jobs = Vec::with_capacity(ids.len());
        for job_id in ids {
            match self.status_of(&job_id).await {
                Ok(job) => jobs.push(job),
                Err(Error::UnknownJob(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(jobs)
    }

    async fn record_pass(&self, job_id: &str, error: Option<&str>) -> Result<(), Error> {
        let keys = JobKeys::new(job_id);
        let mut pipe = redis::pipe();
        pipe.hincr(&keys.meta, "follow_passes", 1).ignore();
        match error {
            None => pipe
                .hset(&keys.meta, "follow_success", now_ms())
                .ignore()
                .hset(&keys.meta, "follow_error", "")
                .ignore(),
            Some(error) => pipe.hset(&keys.meta, "follow_error", error).ignore(),
        };
        pipe.query_async::<()>(&mut self.conn()?)
            .await
            .map_err(unavailable)
    }

    async fn heartbeat(
        &self,
        worker: &str,
        leases_held: u32,
        metrics: &WorkerMetrics,
    ) -> Result<(), Error> {
        let status = WorkerStatus {
            name: worker.to_string(),
            leases_held,
            metrics: metrics.clone(),
            last_heartbeat_ms: now_ms(),
            draining: false,
        };
        let json = serde_json::to_string(&status).map_err(|e| Error::Corrupt(e.to_string()))?;
        let mut conn = self.conn()?;
        conn.hset::<_, _, _, ()>(WORKERS, worker, json)
            .await
            .map_err(unavailable)?;
        let key = history_key(worker);
        let admitted: Option<String> = redis::cmd("SET")
            .arg(format!("{key}:gate"))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(SAMPLE_EVERY_MS)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if admitted.is_some() {
            let sample = Sample {
                at_ms: status.last_heartbeat_ms,
                bytes_per_sec: metrics.bytes_per_sec,
                open: metrics.open,
            };
            let json = serde_json::to_string(&sample).map_err(|e| Error::Corrupt(e.to_string()))?;
            redis::pipe()
                .lpush(&key, json)
                .ignore()
                .ltrim(&key, 0, SAMPLES_KEPT as isize - 1)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerStatus>, Error> {
        let mut conn = self.conn()?;
        let (all, draining): (HashMap<String, String>, Vec<String>) = redis::pipe()
            .hgetall(WORKERS)
            .smembers(DRAIN)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut workers: Vec<WorkerStatus> = all
            .values()
            .filter_map(|json| serde_json::from_str::<WorkerStatus>(json).ok())
            .map(|mut w| {
                w.draining = draining.contains(&w.name);
                w
            })
            .collect();
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(workers)
    }

    async fn history(&self) -> Result<Vec<(String, Vec<Sample>)>, Error> {
        let mut conn = self.conn()?;
        let names: Vec<String> = conn.hkeys(WORKERS).await.map_err(unavailable)?;
        let mut history = Vec::new();
        for name in names {
            let points: Vec<String> = conn
                .lrange(history_key(&name), 0, -1)
                .await
                .map_err(unavailable)?;
            let mut samples: Vec<Sample> = points
                .iter()
                .filter_map(|p| serde_json::from_str(p).ok())
                .collect();
            samples.reverse();
            history.push((name, samples));
        }
        history.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(history)
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
        let mut conn = self.conn()?;
        let (seconds, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let cutoff = seconds * 1000 + micros / 1000 - retention.as_millis() as i64;
        let mut pruned = Pruned::default();
        // A job finished before the cutoff was also created before it.
        let old: Vec<String> = conn
            .zrangebyscore_limit(JOBS, "-inf", cutoff, 0, PRUNE_BATCH)
            .await
            .map_err(unavailable)?;
        for job_id in old {
            let keys = JobKeys::new(&job_id);
            // A standing job waits between passes, finished; it is not done with.
            let standing: Option<i64> =
                conn.zscore(STANDING, &job_id).await.map_err(unavailable)?;
            if standing.is_some() {
                continue;
            }
            let last = match self.status_of(&job_id).await {
                Ok(status) if status.state.is_final() => {
                    let ended: Option<i64> =
                        conn.hget(&keys.meta, "ended").await.map_err(unavailable)?;
                    status
                        .created_ms
                        .max(status.finished_ms)
                        .max(ended.unwrap_or(0))
                }
                Ok(_) => continue,
                // Indexed but without its meta (a half-created job): nothing to keep.
                Err(Error::UnknownJob(_)) => i64::MIN,
                Err(other) => return Err(other),
            };
            if last >= cutoff {
                continue;
            }
            redis::pipe()
                .del(&[
                    &keys.meta,
                    &keys.state,
                    &keys.pending,
                    &keys.leased,
                    &keys.items,
                    &keys.order,
                ])
                .ignore()
                .zrem(JOBS, &job_id)
                .ignore()
                .zrem(ACTIVE, &job_id)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .map_err(unavailable)?;
            pruned.jobs += 1;
        }
        let workers: HashMap<String, String> = conn.hgetall(WORKERS).await.map_err(unavailable)?;
        for (name, json) in workers {
            let seen = serde_json::from_str::<WorkerStatus>(&json)
                .map_or(i64::MIN, |w| w.last_heartbeat_ms);
            if seen >= cutoff {
                continue;
            }
            let history = history_key(&name);
            redis::pipe()
                .hdel(WORKERS, &name)
                .ignore()
                .del(&[history.clone(), format!("{history}:gate")])
                .ignore()
                .srem(DRAIN, &name)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .map_err(unavailable)?;
            pruned.workers += 1;
        }
        Ok(pruned)
    }
}
