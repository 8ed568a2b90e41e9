//! Standing jobs (`submit --follow`): claiming the passes that are due (one coordinator wins
//! each, by script), a job's objects for a pass to compare with, extending a job with a pass's
//! new items, and recording how a pass ended. Called by the parent module's `LeaseStore`
//! impl; the keys are in `keys`.

use redis::AsyncCommands;

use lease::Error;
use lease::model::{FollowSpec, ItemSpec, JobStatus, ObjectSpec};

use super::keys::{ACTIVE, JOBS, JobKeys, STANDING};
use super::{PAGE_CHUNK, RedisStore, unavailable};

pub(super) async fn claim_due_passes(
    store: &RedisStore,
    max: usize,
) -> Result<Vec<(String, FollowSpec)>, Error> {
    let mut conn = store.conn()?;
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
        let won: i32 = store
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

pub(super) async fn job_objects(
    store: &RedisStore,
    job_id: &str,
) -> Result<Vec<ObjectSpec>, Error> {
    let keys = JobKeys::new(job_id);
    let mut conn = store.conn()?;
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

pub(super) async fn extend_job(
    store: &RedisStore,
    job_id: &str,
    items: &[ItemSpec],
) -> Result<(), Error> {
    let keys = JobKeys::new(job_id);
    let mut conn = store.conn()?;
    let created: Option<i64> = conn.zscore(JOBS, job_id).await.map_err(unavailable)?;
    let Some(created) = created else {
        return Err(Error::UnknownJob(job_id.to_string()));
    };
    store.write_items(&keys, items).await?;
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

pub(super) async fn standing_jobs(store: &RedisStore) -> Result<Vec<JobStatus>, Error> {
    let ids: Vec<String> = store
        .conn()?
        .zrange(STANDING, 0, -1)
        .await
        .map_err(unavailable)?;
    let mut jobs = Vec::with_capacity(ids.len());
    for job_id in ids {
        match store.status_of(&job_id).await {
            Ok(job) => jobs.push(job),
            Err(Error::UnknownJob(_)) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(jobs)
}

pub(super) async fn record_pass(
    store: &RedisStore,
    job_id: &str,
    error: Option<&str>,
) -> Result<(), Error> {
    let recorded: i64 = JobKeys::new(job_id)
        .invocation(&store.scripts.record_pass)
        .arg(u8::from(error.is_none()))
        .arg(error.unwrap_or_default())
        .invoke_async(&mut store.conn()?)
        .await
        .map_err(unavailable)?;
    if recorded == 1 {
        Ok(())
    } else {
        Err(Error::UnknownJob(job_id.to_string()))
    }
}
