//! Upkeep of the fleet's records: a worker's heartbeat (its status, and a history point at
//! most every `SAMPLE_EVERY_MS`) and the pruning of finished jobs and silent workers past the
//! retention. Called by the parent module's `LeaseStore` impl; the keys are in `keys`.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;

use lease::Error;
use lease::model::{SAMPLE_EVERY_MS, SAMPLES_KEPT, Sample, WorkerMetrics, WorkerStatus, now_ms};
use lease::store::Pruned;

use super::keys::{CONTACT, DRAIN, JOBS, JobKeys, WORKERS, history_key};
use super::{PRUNE_BATCH, RedisStore, unavailable};

pub(super) async fn heartbeat(
    store: &RedisStore,
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
    let mut conn = store.conn()?;
    conn.hset::<_, _, _, ()>(WORKERS, worker, json)
        .await
        .map_err(unavailable)?;
    store
        .scripts
        .contact
        .key(CONTACT)
        .arg(worker)
        .arg(store.policy.ttl.as_millis() as u64)
        .invoke_async::<i64>(&mut conn)
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

pub(super) async fn prune(store: &RedisStore, retention: Duration) -> Result<Pruned, Error> {
    let mut conn = store.conn()?;
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
        // The check (finished, old enough, not following) and the deletion are one script.
        let forgotten: u32 = JobKeys::new(&job_id)
            .invocation(&store.scripts.prune)
            .arg(cutoff)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        pruned.jobs += forgotten;
    }
    let workers: HashMap<String, String> = conn.hgetall(WORKERS).await.map_err(unavailable)?;
    for (name, json) in workers {
        let seen =
            serde_json::from_str::<WorkerStatus>(&json).map_or(i64::MIN, |w| w.last_heartbeat_ms);
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
            .hdel(CONTACT, &[format!("{name}|since"), format!("{name}|last")])
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)?;
        pruned.workers += 1;
    }
    Ok(pruned)
}
