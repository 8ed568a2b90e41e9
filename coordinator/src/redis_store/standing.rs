//! Standing jobs (`submit --follow`): claiming the passes that are due (one coordinator wins
//! each, by script), a job's objects for a pass to compare with, extending a job with a pass's
//! new items, and recording how a pass ended. Called by the parent module's `LeaseStore`
//! impl; the keys are in `keys`.

use redis::AsyncCommands;

use lease::Error;
use lease::model::{FollowSpec, ItemSpec, JobStatus, ObjectSpec};
use lease::store::{check_distinct_ids, item_already_in_job};

use super::keys::{JobKeys, STANDING, brief};
use super::{PAGE_CHUNK, RedisStore, unavailable};

/// Items per extension script: a few megabytes of specs at most, so Redis is busy with one
/// for milliseconds.
const EXTEND_CHUNK: usize = 500;

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
        // Written once, at creation: read outside the script.
        let follow: Option<String> = conn.hget(&keys.meta, "follow").await.map_err(unavailable)?;
        let follow = follow.and_then(|json| serde_json::from_str::<FollowSpec>(&json).ok());
        let won: i32 = keys
            .invocation(&store.scripts.claim_pass)
            .arg(
                follow
                    .as_ref()
                    .map(|f| f.interval_ms.to_string())
                    .unwrap_or_default(),
            )
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if let (1, Some(follow)) = (won, follow) {
            claimed.push((job_id, follow));
        }
    }
    Ok(claimed)
}

/// A job's objects in plan order: its items walked a chunk at a time (no reply holds the
/// whole job), each chunk's specs in one read.
pub(super) async fn job_objects(
    store: &RedisStore,
    job_id: &str,
) -> Result<Vec<ObjectSpec>, Error> {
    let keys = JobKeys::new(job_id);
    let order = store.order_of(&keys, job_id).await?;
    let mut objects = Vec::new();
    let mut after = String::new();
    loop {
        let ids = store.ids_after(&keys, &order, &after, PAGE_CHUNK).await?;
        let Some(last) = ids.last() else {
            return Ok(objects);
        };
        let specs: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&keys.items)
            .arg(&ids)
            .query_async(&mut store.conn()?)
            .await
            .map_err(unavailable)?;
        for spec in specs.into_iter().flatten() {
            let item: ItemSpec =
                serde_json::from_str(&spec).map_err(|e| Error::Corrupt(e.to_string()))?;
            objects.extend(item.objects);
        }
        if ids.len() < PAGE_CHUNK {
            return Ok(objects);
        }
        after.clone_from(last);
    }
}

/// Adds a pass's items, a chunk per script (`extend.lua`): each chunk's items, the totals they
/// add and the job's return to the active set are one step. The ids are checked here (none
/// twice) and by each script (none the job holds) before the chunk is written; the order
/// index keeps them in plan order, their ids' order. Only a second extension of the same job
/// at the same moment with the same ids (a pass runs on one coordinator, ids name its time)
/// could make a later chunk refuse after an earlier one went in.
pub(super) async fn extend_job(
    store: &RedisStore,
    job_id: &str,
    items: &[ItemSpec],
) -> Result<(), Error> {
    check_distinct_ids(job_id, items)?;
    let keys = JobKeys::new(job_id);
    // An empty pass still asks, so an unknown job is reported as the embedded store does.
    let chunks: Vec<&[ItemSpec]> = if items.is_empty() {
        vec![items]
    } else {
        items.chunks(EXTEND_CHUNK).collect()
    };
    for chunk in chunks {
        let objects: usize = chunk.iter().map(|i| i.objects.len()).sum();
        let bytes: u64 = chunk.iter().map(ItemSpec::bytes).sum();
        let mut invocation = keys.invocation(&store.scripts.extend);
        invocation.arg(chunk.len()).arg(objects).arg(bytes);
        for item in chunk {
            let spec = serde_json::to_string(item).map_err(|e| Error::Corrupt(e.to_string()))?;
            invocation
                .arg(&item.item_id)
                .arg(spec)
                .arg(item.bytes())
                .arg(brief(item));
        }
        let reply: Vec<String> = invocation
            .invoke_async(&mut store.conn()?)
            .await
            .map_err(unavailable)?;
        match reply.as_slice() {
            [ok] if ok == "ok" => {}
            [unknown] if unknown == "unknown" => {
                return Err(Error::UnknownJob(job_id.to_string()));
            }
            [exists, item] if exists == "exists" => {
                return Err(item_already_in_job(job_id, item));
            }
            other => return Err(Error::Corrupt(format!("extend answered {other:?}"))),
        }
    }
    Ok(())
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
