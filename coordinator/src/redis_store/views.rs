//! The job views: job statuses, a job's items whole or a page at a time (in plan order,
//! filtered by state), the recent jobs, and the workers with their history. They only read;
//! the transitions in the parent module write.

use std::collections::HashMap;

use redis::AsyncCommands;

use lease::Error;
use lease::model::{
    Counts, FollowSpec, FollowStatus, ItemSpec, ItemState, ItemStatus, JobStatus, Sample,
    SelectionSpec, SourceSpec, WorkerStatus,
};
use lease::store::{ItemPage, PAGE_SCAN_BUDGET, RecentJobs};

use super::keys::{ACTIVE, DRAIN, HELD, JOBS, JobKeys, WORKERS, history_key};
use super::{PAGE_CHUNK, RedisStore, unavailable};

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

/// How a job's items are walked in plan order.
pub(super) enum Order {
    /// The job's `order` index.
    Index,
    /// Every id, sorted (a job created before the index existed).
    Loaded(Vec<String>),
}

impl RedisStore {
    async fn job_ids(&self) -> Result<Vec<String>, Error> {
        self.conn()?.zrange(JOBS, 0, -1).await.map_err(unavailable)
    }

    /// A job's status, from one script: the counters, the pending and leased sets and the
    /// progress of leased items all at one moment, so an item changing state meanwhile is
    /// counted once, before or after (two reads once showed a job whose last item died
    /// between them as 0 of 0 items done: complete).
    pub(super) async fn status_of(&self, job_id: &str) -> Result<JobStatus, Error> {
        let keys = JobKeys::new(job_id);
        type Status = (HashMap<String, String>, u32, u32, u64, Option<i64>);
        let (meta, pending, leased, leased_progress, next_check): Status = keys
            .invocation(&self.scripts.status)
            .invoke_async(&mut self.conn()?)
            .await
            .map_err(unavailable)?;
        if meta.is_empty() {
            return Err(Error::UnknownJob(job_id.to_string()));
        }
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
            leased,
            done: number("done") as u32,
            dead: number("dead") as u32,
        };
        let started = number("started");
        let follow = match meta.get("follow") {
            None => None,
            Some(json) => {
                let spec: FollowSpec = serde_json::from_str(json)
                    .map_err(|e| Error::Corrupt(format!("job {job_id}: follow: {e}")))?;
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
            bwlimit: meta.get("bwlimit").cloned(),
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

    /// How to walk `job_id`'s items in plan order; `UnknownJob` if there is no such job.
    pub(super) async fn order_of(&self, keys: &JobKeys, job_id: &str) -> Result<Order, Error> {
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
    pub(super) async fn ids_after(
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

    pub(super) async fn jobs_view(&self) -> Result<Vec<JobStatus>, Error> {
        let mut jobs = Vec::new();
        for job_id in self.job_ids().await? {
            jobs.push(self.status_of(&job_id).await?);
        }
        Ok(jobs)
    }

    pub(super) async fn items_view(&self, job_id: &str) -> Result<Vec<ItemStatus>, Error> {
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

    pub(super) async fn items_page_view(
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
            let (product, start, end, objects) = if let Some(brief) = &v[8] {
                let mut parts = brief.split('\t');
                let mut next = || parts.next().unwrap_or_default().to_string();
                let (product, start, end) = (next(), next(), next());
                (product, start, end, next().parse().unwrap_or(0))
            } else {
                let spec: ItemSpec = specs
                    .get(&id)
                    .and_then(|s| serde_json::from_str(s).ok())
                    .ok_or_else(|| {
                        Error::Corrupt(format!("item {id} of job {job_id} has no readable spec"))
                    })?;
                let objects = spec.objects.len() as u32;
                (spec.product, spec.start, spec.end, objects)
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

    pub(super) async fn recent_jobs_view(&self, recent: usize) -> Result<RecentJobs, Error> {
        let mut conn = self.conn()?;
        let mut pipe = redis::pipe();
        pipe.zrange_withscores(ACTIVE, 0, -1).zcard(JOBS);
        if recent > 0 {
            pipe.zrevrange_withscores(JOBS, 0, recent as isize - 1);
        } else {
            pipe.zrevrange_withscores(JOBS, 1, 0);
        }
        // A sorted set's members with their scores (creation times).
        type Scored = Vec<(String, f64)>;
        let (active, total, newest): (Scored, u64, Scored) =
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

    /// Every live grant's (worker, job), once, from `HELD` (`<worker>|<job>|<item>` scored by
    /// expiry in store time): one read of the live grants, whatever the jobs.
    pub(super) async fn holdings_view(&self) -> Result<Vec<(String, String)>, Error> {
        let mut conn = self.conn()?;
        let ((seconds, micros), members): ((i64, i64), Vec<(String, i64)>) = redis::pipe()
            .cmd("TIME")
            .zrange_withscores(HELD, 0, -1)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let now_ms = seconds * 1000 + micros / 1000;
        let mut held: Vec<(String, String)> = members
            .into_iter()
            .filter(|(_, expires)| *expires > now_ms)
            .filter_map(|(member, _)| {
                // Job and item ids hold no `|`; a worker's name is checked likewise, but it
                // is taken as the rest all the same.
                let mut parts = member.rsplitn(3, '|');
                let (_item, job, worker) = (parts.next()?, parts.next()?, parts.next()?);
                Some((worker.to_string(), job.to_string()))
            })
            .collect();
        held.sort();
        held.dedup();
        Ok(held)
    }

    pub(super) async fn workers_view(&self) -> Result<Vec<WorkerStatus>, Error> {
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

    pub(super) async fn history_view(&self) -> Result<Vec<(String, Vec<Sample>)>, Error> {
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
}
