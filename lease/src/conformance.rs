//! The scenarios every [`LeaseStore`] must pass, so the embedded store and the cluster's Redis
//! store cannot drift apart: each one drives a store through transitions and checks the
//! answers and the counts. A store's test suite runs each scenario on a fresh store whose
//! policy is [`policy`] with the lease TTL the scenario asks for (see the coordinator's
//! `tests/conformance.rs`, which runs them against both stores).
//!
//! Behind the `conformance` feature: test code, compiled only for the stores' tests.

use std::sync::Arc;
use std::time::Duration;

use crate::LeaseStore;
use crate::model::{
    Ack, FollowSpec, ItemSpec, ItemState, JobSpec, JobState, LeasePolicy, ObjectSpec,
    SelectionSpec, SourceSpec, WorkerMetrics,
};

/// The lease policy of a scenario's store: TTL `ttl_ms`, three attempts, two expiries, and a
/// millisecond of backoff so that failure scenarios run fast.
pub fn policy(ttl_ms: u64) -> LeasePolicy {
    LeasePolicy {
        ttl: Duration::from_millis(ttl_ms),
        max_attempts: 3,
        max_expiries: 2,
        backoff_base: Duration::from_millis(1),
        backoff_cap: Duration::from_millis(2),
        max_leases_per_worker: crate::model::DEFAULT_MAX_LEASES_PER_WORKER,
    }
}

/// The lease cap per worker of the scenarios that say they run with a cap
/// ([`capped_policy`]).
pub const SCENARIO_LEASE_CAP: u32 = 3;

/// [`policy`] with the lease cap per worker at [`SCENARIO_LEASE_CAP`].
pub fn capped_policy(ttl_ms: u64) -> LeasePolicy {
    LeasePolicy {
        max_leases_per_worker: SCENARIO_LEASE_CAP,
        ..policy(ttl_ms)
    }
}

/// A job of `items` items of one small object each, in plan order.
pub fn job(id: &str, items: usize) -> JobSpec {
    JobSpec {
        job_id: id.to_string(),
        selection: SelectionSpec {
            products: vec!["e5.oper.an.sfc".into()],
            variables: vec![],
            grids: vec![],
            start: "2024-01".into(),
            end: "2024-01".into(),
        },
        source: SourceSpec {
            bucket: "b".into(),
            endpoint: "http://x".into(),
        },
        items: (0..items)
            .map(|i| ItemSpec {
                item_id: format!("{i:06}"),
                product: "e5.oper.an.sfc".into(),
                start: "2024-01-01".into(),
                end: "2024-01-31".into(),
                objects: vec![ObjectSpec {
                    key: format!("k{i}"),
                    size: 100,
                    etag: "e".into(),
                    last_modified: String::new(),
                }],
            })
            .collect(),
        follow: None,
        bwlimit: None,
    }
}

async fn counts_sum(store: &dyn LeaseStore, job_id: &str, total: u32) {
    let status = store.job(job_id).await.unwrap();
    assert_eq!(status.counts.total(), total, "{:?}", status.counts);
}

/// A conformance scenario. A job's fleet bandwidth budget is kept as submitted.
pub async fn grants_in_plan_order_then_completes_idempotently(store: Arc<dyn LeaseStore>) {
    store.create_job(&job("j1", 3)).await.unwrap();
    assert_eq!(store.job("j1").await.unwrap().state, JobState::Pending);
    assert_eq!(store.job("j1").await.unwrap().bwlimit, None);
    let budgeted = JobSpec {
        bwlimit: Some("08:00,512K 19:00,off".into()),
        ..job("j0", 1)
    };
    store.create_job(&budgeted).await.unwrap();
    assert_eq!(
        store.job("j0").await.unwrap().bwlimit.as_deref(),
        Some("08:00,512K 19:00,off")
    );
    store.cancel_job("j0").await.unwrap();
    let grants = store.acquire("w1", 2).await.unwrap();
    assert_eq!(
        grants
            .iter()
            .map(|g| g.item.item_id.as_str())
            .collect::<Vec<_>>(),
        ["000000", "000001"]
    );
    assert!(
        grants
            .iter()
            .all(|g| g.lease.epoch == 1 && g.source.bucket == "b")
    );
    assert_eq!(store.job("j1").await.unwrap().state, JobState::Running);
    counts_sum(&*store, "j1", 3).await;

    let lease = &grants[0].lease;
    assert_eq!(store.renew(lease, "w1").await.unwrap(), Ack::Ok);
    assert_eq!(store.complete(lease, "w1").await.unwrap(), Ack::Ok);
    assert_eq!(
        store.complete(lease, "w1").await.unwrap(),
        Ack::Ok,
        "a retried complete of the same grant"
    );
    let mut other = lease.clone();
    other.lease_id = "someone-else".into();
    assert_eq!(
        store.complete(&other, "w1").await.unwrap(),
        Ack::AlreadyDone
    );
    assert_eq!(store.renew(lease, "w1").await.unwrap(), Ack::AlreadyDone);

    let rest = store.acquire("w2", 5).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].item.item_id, "000002");
    for (grant, holder) in [(&grants[1], "w1"), (&rest[0], "w2")] {
        assert_eq!(store.complete(&grant.lease, holder).await.unwrap(), Ack::Ok);
    }
    let status = store.job("j1").await.unwrap();
    assert_eq!(status.state, JobState::Complete);
    assert_eq!(status.counts.done, 3);
    assert_eq!(status.bytes_done, 300);
    assert!(store.acquire("w1", 5).await.unwrap().is_empty());
}

/// A conformance scenario.
pub async fn an_expired_grant_is_never_brought_back(store: Arc<dyn LeaseStore>) {
    store.create_job(&job("j2", 1)).await.unwrap();
    let first = store.acquire("w1", 1).await.unwrap().remove(0);
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Not reaped yet, but expired by the store's clock: refused.
    assert_eq!(
        store.renew(&first.lease, "w1").await.unwrap(),
        Ack::LeaseLost
    );
    assert_eq!(
        store.complete(&first.lease, "w1").await.unwrap(),
        Ack::LeaseLost
    );
    let second = store.acquire("w2", 1).await.unwrap().remove(0);
    assert_eq!(second.item.item_id, first.item.item_id);
    assert!(
        second.lease.epoch > first.lease.epoch,
        "epochs only increase"
    );
    assert_ne!(second.lease.lease_id, first.lease.lease_id);
    assert_eq!(
        store.complete(&first.lease, "w1").await.unwrap(),
        Ack::LeaseLost,
        "a stale complete is rejected"
    );
    assert_eq!(store.complete(&second.lease, "w2").await.unwrap(), Ack::Ok);
    let items = store.items("j2").await.unwrap();
    assert_eq!(items[0].state, ItemState::Done);
    // The holder was silent from its grant until after the expiry: not counted.
    assert_eq!(items[0].expiries, 0);
}

/// A conformance scenario.
pub async fn failures_back_off_then_die_with_their_reason(store: Arc<dyn LeaseStore>) {
    store.create_job(&job("j3", 2)).await.unwrap();
    let mut epoch = 0;
    for attempt in 1..=3 {
        // Item 0 backs off after each failure, so item 1 may come first: hand it back.
        let grant = loop {
            let granted = store.acquire("w1", 2).await.unwrap();
            let (wanted, others): (Vec<_>, Vec<_>) = granted
                .into_iter()
                .partition(|g| g.item.item_id == "000000");
            for other in others {
                assert_eq!(store.release(&other.lease, "w1").await.unwrap(), Ack::Ok);
            }
            if let Some(grant) = wanted.into_iter().next() {
                break grant;
            }
            tokio::time::sleep(Duration::from_millis(5)).await; // the backoff (at most 2 ms)
        };
        assert_eq!(grant.item.item_id, "000000");
        assert!(grant.lease.epoch > epoch);
        epoch = grant.lease.epoch;
        let outcome = store
            .fail(&grant.lease, "w1", &format!("boom {attempt}"), false)
            .await
            .unwrap();
        assert_eq!(outcome.ack, Ack::Ok);
        assert_eq!(outcome.dead, attempt == 3);
        assert_eq!(
            store
                .fail(&grant.lease, "w1", "again", false)
                .await
                .unwrap()
                .ack,
            Ack::LeaseLost,
            "fail is per grant"
        );
        counts_sum(&*store, "j3", 2).await;
    }
    let items = store.items("j3").await.unwrap();
    assert_eq!(items[0].state, ItemState::Dead);
    assert_eq!(items[0].attempts, 3);
    assert_eq!(items[0].last_error, "boom 3");

    // A permanent failure dies at once.
    let grant = store.acquire("w1", 1).await.unwrap().remove(0);
    let outcome = store
        .fail(&grant.lease, "w1", "404 NoSuchKey", true)
        .await
        .unwrap();
    assert!(outcome.dead);
    let status = store.job("j3").await.unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert_eq!(status.counts.dead, 2);

    // Retry-dead brings both back with fresh counts.
    assert_eq!(store.retry_dead("j3").await.unwrap(), 2);
    let status = store.job("j3").await.unwrap();
    assert_eq!((status.counts.pending, status.counts.dead), (2, 0));
    assert!(
        store
            .items("j3")
            .await
            .unwrap()
            .iter()
            .all(|i| i.attempts == 0)
    );
}

/// A conformance scenario.
pub async fn release_returns_work_without_an_attempt(store: Arc<dyn LeaseStore>) {
    store.create_job(&job("j4", 1)).await.unwrap();
    let grant = store.acquire("w1", 1).await.unwrap().remove(0);
    assert_eq!(store.release(&grant.lease, "w1").await.unwrap(), Ack::Ok);
    assert_eq!(
        store.release(&grant.lease, "w1").await.unwrap(),
        Ack::LeaseLost
    );
    let items = store.items("j4").await.unwrap();
    assert_eq!((items[0].state, items[0].attempts), (ItemState::Pending, 0));
    let again = store.acquire("w2", 1).await.unwrap().remove(0);
    assert_eq!(again.lease.epoch, grant.lease.epoch + 1);
}

/// Keeps `worker` in contact with the store (a heartbeat every 10 ms) for `ms`.
async fn stay_in_contact(store: &Arc<dyn LeaseStore>, worker: &str, ms: u64) {
    let until = tokio::time::Instant::now() + Duration::from_millis(ms);
    while tokio::time::Instant::now() < until {
        store
            .heartbeat(worker, 1, &WorkerMetrics::default())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A conformance scenario (TTL 60 ms): a holder that stays in contact with the store but does
/// not renew (it hangs on the item) lets its lease expire; past `max_expiries` such expiries
/// the item is dead.
pub async fn a_poison_item_dies_after_too_many_expiries(store: Arc<dyn LeaseStore>) {
    store.create_job(&job("j5", 1)).await.unwrap();
    for _ in 0..3 {
        let granted = store.acquire("w1", 1).await.unwrap();
        assert_eq!(granted.len(), 1);
        stay_in_contact(&store, "w1", 90).await;
        store.reap().await.unwrap();
    }
    let items = store.items("j5").await.unwrap();
    assert_eq!(items[0].state, ItemState::Dead);
    assert!(
        items[0].last_error.contains("poison"),
        "{}",
        items[0].last_error
    );
    assert!(store.acquire("w1", 1).await.unwrap().is_empty());
}

/// A conformance scenario.
pub async fn cancel_stops_grants_and_loses_live_leases(store: Arc<dyn LeaseStore>) {
    store.create_job(&job("j6", 2)).await.unwrap();
    let grant = store.acquire("w1", 1).await.unwrap().remove(0);
    store.cancel_job("j6").await.unwrap();
    assert_eq!(store.job("j6").await.unwrap().state, JobState::Cancelled);
    assert!(store.acquire("w1", 5).await.unwrap().is_empty());
    assert_eq!(
        store.renew(&grant.lease, "w1").await.unwrap(),
        Ack::LeaseLost
    );
    assert!(store.cancel_job("nope").await.is_err());
}

/// A conformance scenario.
pub async fn jobs_are_served_oldest_first_and_workers_can_drain(store: Arc<dyn LeaseStore>) {
    store.create_job(&job("older", 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.create_job(&job("newer", 1)).await.unwrap();
    let grants = store.acquire("w1", 2).await.unwrap();
    assert_eq!(
        grants
            .iter()
            .map(|g| g.lease.job_id.as_str())
            .collect::<Vec<_>>(),
        ["older", "newer"]
    );
    assert_eq!(
        store
            .jobs()
            .await
            .unwrap()
            .iter()
            .map(|j| j.job_id.as_str())
            .collect::<Vec<_>>(),
        ["older", "newer"]
    );

    store.drain("w9").await.unwrap();
    assert!(store.is_draining("w9").await.unwrap());
    store.retry_dead("older").await.unwrap();
    store.create_job(&job("third", 1)).await.unwrap();
    assert!(
        store.acquire("w9", 1).await.unwrap().is_empty(),
        "a draining worker gets nothing"
    );
    assert_eq!(store.acquire("w1", 1).await.unwrap().len(), 1);

    let metrics = WorkerMetrics {
        open: 3,
        bytes_per_sec: 12.5,
        ..Default::default()
    };
    store.heartbeat("w1", 2, &metrics).await.unwrap();
    store
        .heartbeat("w9", 0, &WorkerMetrics::default())
        .await
        .unwrap();
    let workers = store.workers().await.unwrap();
    assert_eq!(workers.len(), 2);
    assert_eq!(
        (
            workers[0].name.as_str(),
            workers[0].leases_held,
            workers[0].metrics.open
        ),
        ("w1", 2, 3)
    );
    assert!(workers[1].draining);
}

/// A conformance scenario.
pub async fn progress_counts_for_live_grants_only(store: Arc<dyn LeaseStore>) {
    store.create_job(&job("j8", 2)).await.unwrap();
    let grant = store.acquire("w1", 1).await.unwrap().remove(0);
    store.progress(&grant.lease, "w1", 40).await.unwrap();
    assert_eq!(store.job("j8").await.unwrap().bytes_done, 40);
    let mut stale = grant.lease.clone();
    stale.epoch += 7;
    store.progress(&stale, "w1", 90).await.unwrap();
    assert_eq!(store.items("j8").await.unwrap()[0].bytes_done, 40);
    store.complete(&grant.lease, "w1").await.unwrap();
    assert_eq!(store.job("j8").await.unwrap().bytes_done, 100);
    // A report past the item's size counts as the item's size.
    let second = store.acquire("w1", 1).await.unwrap().remove(0);
    store.progress(&second.lease, "w1", 150).await.unwrap();
    assert_eq!(store.job("j8").await.unwrap().bytes_done, 200);
}

/// A conformance scenario.
pub async fn only_the_holder_acts_on_a_grant(store: Arc<dyn LeaseStore>) {
    store.create_job(&job("j9", 1)).await.unwrap();
    let grant = store.acquire("w1", 1).await.unwrap().remove(0);
    let lease = &grant.lease;
    assert_eq!(store.renew(lease, "w2").await.unwrap(), Ack::NotHolder);
    assert_eq!(store.release(lease, "w2").await.unwrap(), Ack::NotHolder);
    assert_eq!(
        store.fail(lease, "w2", "sabotage", true).await.unwrap().ack,
        Ack::NotHolder
    );
    store.progress(lease, "w2", 99).await.unwrap();
    assert_eq!(store.items("j9").await.unwrap()[0].bytes_done, 0);
    assert_eq!(store.complete(lease, "w2").await.unwrap(), Ack::NotHolder);
    let items = store.items("j9").await.unwrap();
    assert_eq!(
        (items[0].state, items[0].attempts, items[0].holder.as_str()),
        (ItemState::Leased, 0, "w1"),
        "another worker's calls changed nothing"
    );
    assert_eq!(store.complete(lease, "w1").await.unwrap(), Ack::Ok);
    assert_eq!(
        store.complete(lease, "w2").await.unwrap(),
        Ack::NotHolder,
        "not even a retried complete of someone else's grant"
    );
    assert_eq!(store.complete(lease, "w1").await.unwrap(), Ack::Ok);
}

/// A conformance scenario.
pub async fn retention_forgets_finished_jobs_and_silent_workers(store: Arc<dyn LeaseStore>) {
    store.create_job(&job("done-job", 1)).await.unwrap();
    store.create_job(&job("live-job", 1)).await.unwrap();
    store.create_job(&job("gone-job", 1)).await.unwrap();
    let grants = store.acquire("w1", 1).await.unwrap();
    assert_eq!(grants[0].lease.job_id, "done-job");
    store.complete(&grants[0].lease, "w1").await.unwrap();
    store.cancel_job("gone-job").await.unwrap();
    store.reap().await.unwrap();
    assert_eq!(
        store.active_jobs().await.unwrap(),
        1,
        "only live-job is active"
    );
    store
        .heartbeat("w1", 0, &WorkerMetrics::default())
        .await
        .unwrap();
    store.drain("w1").await.unwrap();

    let pruned = store.prune(Duration::from_secs(3600)).await.unwrap();
    assert_eq!((pruned.jobs, pruned.workers), (0, 0), "nothing is that old");
    tokio::time::sleep(Duration::from_millis(60)).await;
    let pruned = store.prune(Duration::from_millis(20)).await.unwrap();
    assert_eq!((pruned.jobs, pruned.workers), (2, 1));
    let jobs: Vec<String> = store
        .jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(jobs, ["live-job"], "an unfinished job is never pruned");
    assert!(store.job("done-job").await.is_err());
    assert!(store.workers().await.unwrap().is_empty());
    assert!(store.history().await.unwrap().is_empty());
    assert!(!store.is_draining("w1").await.unwrap());
}

/// Every item of a job, walked page by page.
async fn walk(
    store: &dyn LeaseStore,
    job_id: &str,
    state: Option<ItemState>,
    limit: usize,
) -> Vec<crate::model::ItemStatus> {
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let page = store
            .items_page(job_id, state, &after, limit)
            .await
            .unwrap();
        assert!(page.items.len() <= limit);
        all.extend(page.items);
        match page.next {
            Some(next) => after = next,
            None => return all,
        }
    }
}

/// A conformance scenario.
pub async fn pages_walk_the_plan_order_and_filter_by_state(store: Arc<dyn LeaseStore>) {
    // More items than one page reads per round trip, so pages cross those boundaries.
    store.create_job(&job("j9", 2_345)).await.unwrap();
    let grants = store.acquire("w1", 3).await.unwrap();
    store.complete(&grants[0].lease, "w1").await.unwrap();
    store
        .fail(&grants[1].lease, "w1", "NoSuchKey", true)
        .await
        .unwrap();
    store.progress(&grants[2].lease, "w1", 60).await.unwrap();

    let all = walk(&*store, "j9", None, 700).await;
    assert_eq!(all.len(), 2_345);
    assert!(all.windows(2).all(|w| w[0].item_id < w[1].item_id));
    assert_eq!(all, store.items("j9").await.unwrap());
    let third = &all[2];
    assert_eq!(
        (
            third.state,
            third.holder.as_str(),
            third.bytes_done,
            third.product.as_str(),
            third.start.as_str(),
            third.end.as_str(),
            third.objects,
            third.bytes
        ),
        (
            ItemState::Leased,
            "w1",
            60,
            "e5.oper.an.sfc",
            "2024-01-01",
            "2024-01-31",
            1,
            100
        )
    );

    let dead = walk(&*store, "j9", Some(ItemState::Dead), 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].item_id.as_str(), dead[0].last_error.as_str()),
        ("000001", "NoSuchKey")
    );
    let done = walk(&*store, "j9", Some(ItemState::Done), 5).await;
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].bytes_done, 100);
    let leased = walk(&*store, "j9", Some(ItemState::Leased), 5).await;
    assert_eq!(leased.len(), 1);
    let pending = walk(&*store, "j9", Some(ItemState::Pending), 1_000).await;
    assert_eq!(pending.len(), 2_342);
    assert_eq!(pending[0].item_id, "000003");

    // The last page says there is nothing after it; a page after the end is empty.
    let last = store.items_page("j9", None, "002340", 10).await.unwrap();
    assert_eq!(last.items.len(), 4);
    assert_eq!(last.next, None);
    assert!(
        store
            .items_page("j9", None, "002344", 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(matches!(
        store.items_page("nope", None, "", 10).await,
        Err(crate::Error::UnknownJob(_))
    ));
}

/// A conformance scenario.
pub async fn views_read_active_and_recent_jobs_only(store: Arc<dyn LeaseStore>) {
    for index in 0..5 {
        let id = format!("r{index}");
        store.create_job(&job(&id, 1)).await.unwrap();
        // Distinct creation times keep "newest" well defined.
        tokio::time::sleep(Duration::from_millis(3)).await;
        if index < 3 {
            let grant = store.acquire("w1", 1).await.unwrap().remove(0);
            assert_eq!(grant.lease.job_id, id);
            store.complete(&grant.lease, "w1").await.unwrap();
        }
    }
    // Finished: r0, r1, r2 (the newest of them). Still pending: r3, r4.
    let listed = store.recent_jobs(1).await.unwrap();
    assert_eq!(listed.total, 5);
    let ids: Vec<&str> = listed.jobs.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(ids, ["r2", "r3", "r4"]);
    assert!(!store.job_cancelled("r3").await.unwrap());
    store.cancel_job("r3").await.unwrap();
    assert!(store.job_cancelled("r3").await.unwrap());
    assert!(store.job_cancelled("nope").await.is_err());
}

/// A conformance scenario.
pub async fn a_standing_job_is_claimed_once_per_interval_grows_and_stops_when_cancelled(
    store: Arc<dyn LeaseStore>,
) {
    let mut spec = job("standing", 2);
    spec.follow = Some(FollowSpec {
        interval_ms: 80,
        end: "latest".into(),
    });
    store.create_job(&spec).await.unwrap();
    store.create_job(&job("one-off", 1)).await.unwrap();
    assert!(
        store.claim_due_passes(8).await.unwrap().is_empty(),
        "the submit was the first pass; the next is an interval away"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let claimed = store.claim_due_passes(8).await.unwrap();
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!(claimed[0].0, "standing");
    assert_eq!(claimed[0].1.end, "latest");
    assert!(
        store.claim_due_passes(8).await.unwrap().is_empty(),
        "a due pass is claimed once, whoever asks"
    );

    let mut keys: Vec<String> = store
        .job_objects("standing")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    keys.sort();
    assert_eq!(keys, ["k0", "k1"]);
    let mut added = job("x", 1).items.remove(0);
    added.item_id = "f1-000000".into();
    added.objects[0].key = "k-new".into();
    store.extend_job("standing", &[added]).await.unwrap();
    let grown = store.job("standing").await.unwrap();
    assert_eq!((grown.counts.pending, grown.objects_total), (3, 3));
    assert_eq!(store.job_objects("standing").await.unwrap().len(), 3);

    store.record_pass("standing", None).await.unwrap();
    store
        .record_pass("standing", Some("listing failed"))
        .await
        .unwrap();
    let follow = store.job("standing").await.unwrap().follow.unwrap();
    assert_eq!(follow.passes, 2);
    assert_eq!(follow.last_error, "listing failed");
    assert!(follow.next_check_ms > 0 && follow.last_success_ms > 0);
    assert!(store.job("one-off").await.unwrap().follow.is_none());
    assert_eq!(store.standing_jobs().await.unwrap().len(), 1);

    // Finished and idle between passes, a standing job is never pruned.
    for grant in store.acquire("w1", 8).await.unwrap() {
        store.complete(&grant.lease, "w1").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    store.prune(Duration::from_millis(1)).await.unwrap();
    assert!(store.job("standing").await.is_ok());
    assert!(store.job("one-off").await.is_err());

    store.cancel_job("standing").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(store.claim_due_passes(8).await.unwrap().is_empty());
    assert_eq!(
        store
            .job("standing")
            .await
            .unwrap()
            .follow
            .unwrap()
            .next_check_ms,
        0
    );
    assert!(store.standing_jobs().await.unwrap().is_empty());
}

fn unknown<T: std::fmt::Debug>(result: Result<T, crate::Error>) -> bool {
    matches!(result, Err(crate::Error::UnknownJob(_)))
}

fn invalid<T: std::fmt::Debug>(result: Result<T, crate::Error>) -> bool {
    matches!(result, Err(crate::Error::InvalidArgument(_)))
}

/// A conformance scenario.
pub async fn the_last_item_dying_fails_the_job(store: Arc<dyn LeaseStore>) {
    store.create_job(&job("jd", 2)).await.unwrap();
    let grants = store.acquire("w1", 2).await.unwrap();
    assert_eq!(
        store.complete(&grants[0].lease, "w1").await.unwrap(),
        Ack::Ok
    );
    let outcome = store
        .fail(&grants[1].lease, "w1", "NoSuchKey", true)
        .await
        .unwrap();
    assert!(outcome.dead);
    let status = store.job("jd").await.unwrap();
    assert_eq!(
        status.state,
        JobState::Failed,
        "not complete: {:?}",
        status.counts
    );
    assert_eq!(
        (
            status.counts.pending,
            status.counts.leased,
            status.counts.done,
            status.counts.dead
        ),
        (0, 0, 1, 1)
    );
    assert_eq!(status.bytes_done, 100);
    store.reap().await.unwrap();
    assert_eq!(
        store.active_jobs().await.unwrap(),
        0,
        "nothing left to grant"
    );
    assert!(store.acquire("w1", 5).await.unwrap().is_empty());
}

/// A conformance scenario.
pub async fn an_unknown_job_is_unknown_to_every_call_and_none_creates_it(
    store: Arc<dyn LeaseStore>,
) {
    let item = job("x", 1).items.remove(0);
    assert!(unknown(store.cancel_job("nope").await));
    assert!(unknown(store.retry_dead("nope").await));
    assert!(unknown(store.extend_job("nope", &[item]).await));
    assert!(unknown(store.extend_job("nope", &[]).await));
    assert!(unknown(store.record_pass("nope", None).await));
    assert!(unknown(
        store.record_pass("nope", Some("listing failed")).await
    ));
    assert!(unknown(store.job_objects("nope").await));
    assert!(unknown(store.job_cancelled("nope").await));
    assert!(unknown(store.items("nope").await));
    assert!(unknown(store.job("nope").await), "none of them made it");
    assert!(store.jobs().await.unwrap().is_empty());
    assert_eq!(store.recent_jobs(10).await.unwrap().total, 0);
    assert_eq!(store.active_jobs().await.unwrap(), 0);
    assert!(store.acquire("w1", 5).await.unwrap().is_empty());

    // A known job may be cancelled twice.
    store.create_job(&job("jc", 1)).await.unwrap();
    store.cancel_job("jc").await.unwrap();
    store.cancel_job("jc").await.unwrap();
    assert_eq!(store.job("jc").await.unwrap().state, JobState::Cancelled);
    assert_eq!(store.active_jobs().await.unwrap(), 0);
}

/// A conformance scenario.
pub async fn retry_dead_grants_the_dead_items_again_and_the_job_is_active_again(
    store: Arc<dyn LeaseStore>,
) {
    store.create_job(&job("jr", 3)).await.unwrap();
    let grants = store.acquire("w1", 3).await.unwrap();
    assert_eq!(
        store.complete(&grants[1].lease, "w1").await.unwrap(),
        Ack::Ok
    );
    for grant in [&grants[0], &grants[2]] {
        assert!(
            store
                .fail(&grant.lease, "w1", "gone", true)
                .await
                .unwrap()
                .dead
        );
    }
    store.reap().await.unwrap();
    assert_eq!(store.job("jr").await.unwrap().state, JobState::Failed);
    assert_eq!(store.active_jobs().await.unwrap(), 0);

    assert_eq!(store.retry_dead("jr").await.unwrap(), 2);
    let status = store.job("jr").await.unwrap();
    assert_eq!(status.state, JobState::Running);
    assert_eq!((status.counts.pending, status.counts.dead), (2, 0));
    assert_eq!(store.active_jobs().await.unwrap(), 1, "active again");

    let again = store.acquire("w2", 5).await.unwrap();
    let ids: Vec<&str> = again.iter().map(|g| g.item.item_id.as_str()).collect();
    assert_eq!(ids, ["000000", "000002"], "the dead items, in plan order");
    assert!(again.iter().all(|g| g.lease.epoch == 2));
    let items = store.items("jr").await.unwrap();
    assert!(
        items
            .iter()
            .all(|i| i.attempts == 0 && i.last_error == "gone" || i.state == ItemState::Done)
    );
    for grant in &again {
        assert_eq!(store.complete(&grant.lease, "w2").await.unwrap(), Ack::Ok);
    }
    assert_eq!(store.job("jr").await.unwrap().state, JobState::Complete);
    assert_eq!(store.retry_dead("jr").await.unwrap(), 0);
    store.reap().await.unwrap();
    assert_eq!(store.active_jobs().await.unwrap(), 0);
}

/// A conformance scenario.
pub async fn grants_and_listings_follow_the_plan_order(store: Arc<dyn LeaseStore>) {
    store.create_job(&job("jo", 5)).await.unwrap();
    let ids = |grants: &[crate::model::Grant]| -> Vec<String> {
        grants.iter().map(|g| g.item.item_id.clone()).collect()
    };
    let first = store.acquire("w1", 2).await.unwrap();
    assert_eq!(ids(&first), ["000000", "000001"]);
    // Handed back: ready again, but after the items that were ready before it.
    assert_eq!(store.release(&first[0].lease, "w1").await.unwrap(), Ack::Ok);
    let mut added = Vec::new();
    for n in 0..2 {
        let mut item = job("x", 1).items.remove(0);
        item.item_id = format!("f1-{n:06}");
        item.objects[0].key = format!("k-new{n}");
        added.push(item);
    }
    store.extend_job("jo", &added).await.unwrap();
    let rest = store.acquire("w1", 10).await.unwrap();
    assert_eq!(
        ids(&rest),
        [
            "000002",
            "000003",
            "000004",
            "f1-000000",
            "f1-000001",
            "000000"
        ]
    );

    let listed: Vec<String> = store
        .items("jo")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.item_id)
        .collect();
    let plan = [
        "000000",
        "000001",
        "000002",
        "000003",
        "000004",
        "f1-000000",
        "f1-000001",
    ];
    assert_eq!(listed, plan);
    let paged: Vec<String> = walk(&*store, "jo", None, 3)
        .await
        .into_iter()
        .map(|i| i.item_id)
        .collect();
    assert_eq!(paged, plan);
    let objects: Vec<String> = store
        .job_objects("jo")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(objects, ["k0", "k1", "k2", "k3", "k4", "k-new0", "k-new1"]);

    // Ids that come out of order are granted and listed in their order all the same: a pass
    // whose ids fall among the job's (the coordinator that ran it had a clock behind) and come
    // unsorted, and a job created with its items reversed.
    let mut among = Vec::new();
    for id in ["000003b", "000003a"] {
        let mut item = job("x", 1).items.remove(0);
        item.objects[0].key = format!("k-{id}");
        item.item_id = id.into();
        among.push(item);
    }
    store.extend_job("jo", &among).await.unwrap();
    // Distinct creation times keep "oldest job first" well defined.
    tokio::time::sleep(Duration::from_millis(3)).await;
    let mut backwards = job("jb", 2);
    backwards.items.reverse();
    store.create_job(&backwards).await.unwrap();
    let granted: Vec<(String, String)> = store
        .acquire("w1", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|g| (g.lease.job_id, g.item.item_id))
        .collect();
    let pair = |job: &str, item: &str| (job.to_string(), item.to_string());
    assert_eq!(
        granted,
        [
            pair("jo", "000003a"),
            pair("jo", "000003b"),
            pair("jb", "000000"),
            pair("jb", "000001")
        ]
    );
    let plan = [
        "000000",
        "000001",
        "000002",
        "000003",
        "000003a",
        "000003b",
        "000004",
        "f1-000000",
        "f1-000001",
    ];
    let listed: Vec<String> = store
        .items("jo")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.item_id)
        .collect();
    assert_eq!(listed, plan);
    let paged: Vec<String> = walk(&*store, "jo", None, 4)
        .await
        .into_iter()
        .map(|i| i.item_id)
        .collect();
    assert_eq!(paged, plan);
    let objects: Vec<String> = store
        .job_objects("jo")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        objects,
        [
            "k0",
            "k1",
            "k2",
            "k3",
            "k-000003a",
            "k-000003b",
            "k4",
            "k-new0",
            "k-new1"
        ]
    );
    let listed: Vec<String> = store
        .items("jb")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.item_id)
        .collect();
    assert_eq!(listed, ["000000", "000001"]);

    // The grants made before the items moved still name theirs.
    for grant in &rest {
        assert_eq!(store.complete(&grant.lease, "w1").await.unwrap(), Ack::Ok);
    }
    let states: Vec<(String, ItemState)> = store
        .items("jo")
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.item_id, i.state))
        .collect();
    let leased = |id: &str| (id.to_string(), ItemState::Leased);
    let done = |id: &str| (id.to_string(), ItemState::Done);
    assert_eq!(
        states,
        [
            done("000000"),
            leased("000001"),
            done("000002"),
            done("000003"),
            leased("000003a"),
            leased("000003b"),
            done("000004"),
            done("f1-000000"),
            done("f1-000001"),
        ]
    );
}

/// A conformance scenario.
pub async fn an_item_id_twice_in_a_job_is_refused_whole(store: Arc<dyn LeaseStore>) {
    let mut twice = job("jt", 3);
    twice.items[2].item_id = "000001".into();
    assert!(invalid(store.create_job(&twice).await));
    assert!(unknown(store.job("jt").await), "nothing of it was stored");
    assert!(store.acquire("w1", 5).await.unwrap().is_empty());

    store.create_job(&job("jt", 2)).await.unwrap();
    let before = store.job("jt").await.unwrap();
    let mut again = job("x", 1).items.remove(0);
    again.item_id = "000001".into();
    again.objects[0].key = "k-other".into();
    assert!(invalid(store.extend_job("jt", &[again]).await));
    let mut new = job("x", 1).items.remove(0);
    new.item_id = "f1-000000".into();
    assert!(invalid(
        store.extend_job("jt", &[new.clone(), new.clone()]).await
    ));
    let after = store.job("jt").await.unwrap();
    assert_eq!(
        (after.counts, after.objects_total, after.bytes_total),
        (before.counts, before.objects_total, before.bytes_total),
        "a refused extension adds nothing"
    );
    let objects: Vec<String> = store
        .job_objects("jt")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(objects, ["k0", "k1"]);
    let grants = store.acquire("w1", 5).await.unwrap();
    assert_eq!(grants.len(), 2);
    assert_eq!(
        grants[1].item.objects[0].key, "k1",
        "the item spec is the first one"
    );

    // The same item added once is fine, and only once.
    store.extend_job("jt", &[new.clone()]).await.unwrap();
    assert!(invalid(store.extend_job("jt", &[new]).await));
    assert_eq!(store.job("jt").await.unwrap().counts.total(), 3);
}

/// A conformance scenario (TTL 60 ms): expiries that do not show the holder alive and
/// reaching the store when it should have renewed never count, however many: a holder that
/// went silent (killed, partitioned, or its coordinator down), one heard from only after the
/// expiry (a store that came back), and an expiry reaped long after it (no reaper ran).
pub async fn expiries_of_holders_out_of_contact_do_not_count(store: Arc<dyn LeaseStore>) {
    store.create_job(&job("j-contact", 1)).await.unwrap();
    for round in 0..6 {
        let granted = store.acquire("w1", 1).await.unwrap();
        assert_eq!(
            granted.len(),
            1,
            "round {round}: the item was not granted again"
        );
        match round % 3 {
            0 => tokio::time::sleep(Duration::from_millis(90)).await,
            1 => {
                tokio::time::sleep(Duration::from_millis(80)).await;
                stay_in_contact(&store, "w1", 15).await;
            }
            _ => stay_in_contact(&store, "w1", 200).await,
        }
        store.reap().await.unwrap();
    }
    let items = store.items("j-contact").await.unwrap();
    assert_eq!(items[0].state, ItemState::Pending, "{:?}", items[0]);
    assert!(!items[0].last_error.contains("poison"), "{:?}", items[0]);
}

/// A conformance scenario (lease cap [`SCENARIO_LEASE_CAP`], see [`capped_policy`]): a worker
/// holds at most the cap over every job; at it, an acquire grants nothing (no error) until one
/// of its grants is completed, released, failed or lost with its cancelled job; a renewal
/// changes nothing; another worker is not affected.
pub async fn a_worker_at_its_lease_cap_gets_nothing_until_one_is_settled(
    store: Arc<dyn LeaseStore>,
) {
    let cap = SCENARIO_LEASE_CAP as usize;
    store.create_job(&job("cap", 10)).await.unwrap();
    let held = store.acquire("w1", 5).await.unwrap();
    assert_eq!(held.len(), cap, "one acquire grants up to the cap");
    assert!(store.acquire("w1", 5).await.unwrap().is_empty());
    assert_eq!(
        store.acquire("w2", 2).await.unwrap().len(),
        2,
        "another worker has its own cap"
    );
    assert_eq!(store.renew(&held[0].lease, "w1").await.unwrap(), Ack::Ok);
    assert!(
        store.acquire("w1", 1).await.unwrap().is_empty(),
        "a renewal frees nothing"
    );
    assert_eq!(
        store.complete(&held[1].lease, "w2").await.unwrap(),
        Ack::NotHolder
    );
    assert!(
        store.acquire("w1", 1).await.unwrap().is_empty(),
        "a refused call frees nothing"
    );

    assert_eq!(store.complete(&held[0].lease, "w1").await.unwrap(), Ack::Ok);
    let after_complete = store.acquire("w1", 5).await.unwrap();
    assert_eq!(after_complete.len(), 1, "a completion frees one slot");
    assert_eq!(
        store.complete(&held[0].lease, "w1").await.unwrap(),
        Ack::Ok,
        "a retried completion"
    );
    assert!(
        store.acquire("w1", 5).await.unwrap().is_empty(),
        "a retried completion frees nothing more"
    );
    assert_eq!(store.release(&held[1].lease, "w1").await.unwrap(), Ack::Ok);
    let after_release = store.acquire("w1", 5).await.unwrap();
    assert_eq!(after_release.len(), 1, "a release frees one slot");
    let failed = store
        .fail(&held[2].lease, "w1", "boom", false)
        .await
        .unwrap();
    assert_eq!(failed.ack, Ack::Ok);
    assert_eq!(
        store.acquire("w1", 5).await.unwrap().len(),
        1,
        "a failure frees one slot"
    );
    assert!(store.acquire("w1", 5).await.unwrap().is_empty());

    // The cap is over every job: a new job grants w1 nothing while it holds the cap elsewhere,
    // until the job of its grants is cancelled (they are lost, so they stop counting).
    store.create_job(&job("cap-b", 5)).await.unwrap();
    assert!(store.acquire("w1", 5).await.unwrap().is_empty());
    store.cancel_job("cap").await.unwrap();
    let elsewhere = store.acquire("w1", 5).await.unwrap();
    assert_eq!(
        elsewhere.len(),
        cap,
        "a cancelled job's grants stop counting"
    );
    assert!(elsewhere.iter().all(|g| g.lease.job_id == "cap-b"));
    counts_sum(&*store, "cap-b", 5).await;
}

/// A conformance scenario (TTL 300 ms, lease cap [`SCENARIO_LEASE_CAP`]): a grant that expires
/// stops counting against its worker's cap at once, reaped or not, while its worker's live
/// grants in other jobs go on counting.
pub async fn an_expired_grant_frees_a_slot_of_its_workers_cap(store: Arc<dyn LeaseStore>) {
    let cap = SCENARIO_LEASE_CAP as usize;
    store.create_job(&job("exp-a", 2)).await.unwrap();
    let early = store.acquire("w1", 2).await.unwrap();
    assert_eq!(early.len(), 2);
    tokio::time::sleep(Duration::from_millis(150)).await;
    store.create_job(&job("exp-b", 5)).await.unwrap();
    let late = store.acquire("w1", 5).await.unwrap();
    assert_eq!(late.len(), cap - 2, "up to the cap");
    assert!(late.iter().all(|g| g.lease.job_id == "exp-b"));
    assert!(store.acquire("w1", 5).await.unwrap().is_empty());
    // Past the early grants' expiry (300 ms), before the late one's (about 450 ms).
    tokio::time::sleep(Duration::from_millis(190)).await;
    assert_eq!(
        store.renew(&early[0].lease, "w1").await.unwrap(),
        Ack::LeaseLost
    );
    let again = store.acquire("w1", 5).await.unwrap();
    assert_eq!(
        again.len(),
        2,
        "the two expired grants free two slots; the live one still counts"
    );
    assert_eq!(store.renew(&late[0].lease, "w1").await.unwrap(), Ack::Ok);
    assert!(store.acquire("w1", 5).await.unwrap().is_empty());
}

/// A conformance scenario (TTL 60 s): an acquire request repeated with its id (its answer
/// was lost) answers the grants it made, still live, and grants nothing more; a grant that
/// ended since is not answered again; the same id from another worker is another request.
pub async fn a_repeated_acquire_request_answers_its_grants_and_grants_no_more(
    store: Arc<dyn LeaseStore>,
) {
    let ids = |grants: &[crate::model::Grant]| -> Vec<String> {
        let mut ids: Vec<String> = grants.iter().map(|g| g.lease.lease_id.clone()).collect();
        ids.sort();
        ids
    };
    store.create_job(&job("j-request", 5)).await.unwrap();
    let first = store.acquire_for_request("w1", 2, "r1").await.unwrap();
    assert_eq!(first.len(), 2);
    let again = store.acquire_for_request("w1", 2, "r1").await.unwrap();
    assert_eq!(ids(&again), ids(&first), "a repeat granted something else");
    let ttl = store.policy().ttl;
    assert!(again.iter().all(|g| g.ttl <= ttl && g.ttl >= ttl / 2));
    assert_eq!(store.job("j-request").await.unwrap().counts.leased, 2);
    assert_eq!(
        store.complete(&first[0].lease, "w1").await.unwrap(),
        Ack::Ok
    );
    let after = store.acquire_for_request("w1", 2, "r1").await.unwrap();
    assert_eq!(
        ids(&after),
        vec![first[1].lease.lease_id.clone()],
        "a completed grant was answered again"
    );
    let other = store.acquire_for_request("w2", 2, "r1").await.unwrap();
    assert_eq!(
        other.len(),
        2,
        "another worker's request was taken for a repeat"
    );
    let fresh = store.acquire_for_request("w1", 5, "r2").await.unwrap();
    assert_eq!(fresh.len(), 1, "a new request did not grant what was left");
    assert_eq!(store.job("j-request").await.unwrap().counts.leased, 4);
}

/// A conformance scenario (TTL 150 ms): the holdings are each live grant's (worker, job),
/// once; a completed, released, expired or cancelled grant holds nothing.
pub async fn holdings_are_the_live_grants_by_worker_and_job(store: Arc<dyn LeaseStore>) {
    store.create_job(&job("ja", 4)).await.unwrap();
    store.create_job(&job("jb", 1)).await.unwrap();
    assert!(store.holdings().await.unwrap().is_empty());
    let first = store.acquire("w1", 2).await.unwrap();
    let second = store.acquire("w2", 3).await.unwrap();
    assert_eq!(second.len(), 3, "two of ja, one of jb");
    let pair = |w: &str, j: &str| (w.to_string(), j.to_string());
    assert_eq!(
        store.holdings().await.unwrap(),
        [pair("w1", "ja"), pair("w2", "ja"), pair("w2", "jb")]
    );
    for grant in &first {
        assert_eq!(store.complete(&grant.lease, "w1").await.unwrap(), Ack::Ok);
    }
    let of_jb = second.iter().find(|g| g.lease.job_id == "jb").unwrap();
    assert_eq!(store.release(&of_jb.lease, "w2").await.unwrap(), Ack::Ok);
    assert_eq!(store.holdings().await.unwrap(), [pair("w2", "ja")]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        store.holdings().await.unwrap().is_empty(),
        "expired grants hold nothing, reaped or not"
    );
    let again = store.acquire("w3", 1).await.unwrap();
    assert_eq!(again.len(), 1);
    store.cancel_job(&again[0].lease.job_id).await.unwrap();
    assert!(store.holdings().await.unwrap().is_empty(), "cancelled");
}
