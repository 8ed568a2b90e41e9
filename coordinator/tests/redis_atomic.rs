//! Every state change of the Redis store, and every status read, is one script: another
//! client's change lands before it or after it, never in the middle.
//!
//! The races: a [`Gate`] between the store and redis-server holds the store's requests after
//! `k` round trips, another connection makes its change meanwhile, then the store goes on.
//! Every `k` is tried, from 0 to the whole of the operation, each time on a fresh server, and
//! the outcome must be one that running the two one after the other could give. The shape:
//! MONITOR shows that each operation sends one script and nothing else. The store connects as
//! the deployment's `era5` ACL user, so the scripts call only commands it allows.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinator::RedisStore;
use lease::LeaseStore;
use lease::conformance::{job, policy};
use lease::model::{Ack, JobState, LeaseRef};
use support::{Gate, acl_server, commands_during, era5_url};

type Step<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A race between an operation of the store (`victim`, through the gate) and another
/// client's change (`interfere`, on a connection of its own), after `setup`; `check` judges
/// both outcomes.
struct Race<S, V, I = ()> {
    setup: fn(Arc<RedisStore>) -> Step<S>,
    victim: fn(Arc<RedisStore>, S) -> Step<V>,
    interfere: fn(Arc<RedisStore>, S) -> Step<I>,
    check: fn(Arc<RedisStore>, S, V, I) -> Step<()>,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `race` with the interference after each of the victim's round trips in turn, until
/// the victim finishes without being held. Returns how many round trips the victim made.
fn at_every_step<S, V, I>(race: &Race<S, V, I>) -> usize
where
    S: Clone + Send + 'static,
    V: Send + 'static,
{
    for k in 0..64 {
        let server = acl_server();
        let finished_unheld = runtime().block_on(async {
            let gate = Gate::start(server.port()).await;
            let direct = Arc::new(
                RedisStore::connect(&era5_url(&server), policy(60_000))
                    .await
                    .unwrap(),
            );
            let gated = Arc::new(
                RedisStore::connect(&gate.era5_url(), policy(60_000))
                    .await
                    .unwrap(),
            );
            let state = (race.setup)(direct.clone()).await;
            gate.arm(k);
            let victim = tokio::spawn((race.victim)(gated, state.clone()));
            let deadline = Instant::now() + Duration::from_secs(5);
            while !gate.holding() && !victim.is_finished() {
                assert!(Instant::now() < deadline, "neither held nor finished");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let held = gate.holding();
            let interfered = (race.interfere)(direct.clone(), state.clone()).await;
            gate.release();
            let outcome = victim.await.expect("the victim panicked");
            (race.check)(direct, state, outcome, interfered).await;
            !held
        });
        if finished_unheld {
            return k;
        }
    }
    panic!("the operation was still going after 64 round trips");
}

/// A job of one item, leased to w1: its grant.
fn one_leased_item(store: Arc<RedisStore>) -> Step<LeaseRef> {
    Box::pin(async move {
        store.create_job(&job("j", 1)).await.unwrap();
        store.acquire("w1", 1).await.unwrap().remove(0).lease
    })
}

#[test]
fn a_status_read_never_sees_the_last_item_half_dead() {
    // Before: the counters (done, dead) in one read, pending and leased in the next; the item
    // dying in between made 0 of 0 items done, so `complete`, and `submit --wait` exited 0.
    at_every_step(&Race {
        setup: one_leased_item,
        victim: |store, _| Box::pin(async move { store.job("j").await.unwrap() }),
        interfere: |store, lease| {
            Box::pin(async move {
                let outcome = store.fail(&lease, "w1", "NoSuchKey", true).await.unwrap();
                assert!(outcome.dead);
            })
        },
        check: |_, _, status, ()| {
            Box::pin(async move {
                assert_eq!(status.counts.total(), 1, "{:?}", status.counts);
                assert!(
                    matches!(status.state, JobState::Running | JobState::Failed),
                    "{:?} with {:?}",
                    status.state,
                    status.counts
                );
            })
        },
    });
}

/// The commands one call of `work` sends, after a first call that loads the scripts.
fn commands_of(
    setup: fn(Arc<RedisStore>) -> Step<()>,
    work: fn(Arc<RedisStore>) -> Step<()>,
) -> Vec<support::Command> {
    let server = acl_server();
    runtime().block_on(async {
        let store = Arc::new(
            RedisStore::connect(&era5_url(&server), policy(60_000))
                .await
                .unwrap(),
        );
        setup(store.clone()).await;
        commands_during(&server, work(store))
            .await
            .into_iter()
            .filter(|command| !command.in_script)
            .collect()
    })
}

fn evalsha_once(commands: &[support::Command]) {
    assert!(
        commands.len() == 1 && commands[0].name == "evalsha",
        "{commands:?}"
    );
}

#[test]
fn a_status_read_is_one_script() {
    evalsha_once(&commands_of(
        |store| {
            Box::pin(async move {
                let mut spec = job("j", 3);
                spec.follow = Some(lease::model::FollowSpec {
                    interval_ms: 60_000,
                    end: "latest".into(),
                });
                store.create_job(&spec).await.unwrap();
                let grant = store.acquire("w1", 1).await.unwrap().remove(0);
                store.progress(&grant.lease, "w1", 40).await.unwrap();
                store.job("j").await.unwrap();
            })
        },
        |store| {
            Box::pin(async move {
                let status = store.job("j").await.unwrap();
                assert_eq!((status.counts.leased, status.bytes_done), (1, 40));
                assert!(status.follow.unwrap().next_check_ms > 0);
            })
        },
    ));
}

/// A job of one item, which died: the job is failed, but still in the active set until an
/// acquire or a reap sees it has nothing left to grant.
fn one_dead_item(store: Arc<RedisStore>) -> Step<()> {
    Box::pin(async move {
        let lease = one_leased_item(store.clone()).await;
        assert!(store.fail(&lease, "w1", "gone", true).await.unwrap().dead);
        assert_eq!(store.job("j").await.unwrap().state, JobState::Failed);
    })
}

/// The item brought back (by retry-dead or an extension) is granted: to the victim, or to the
/// next acquire.
fn granted_once(store: Arc<RedisStore>, granted_to_victim: usize) -> Step<()> {
    Box::pin(async move {
        let granted_after = store.acquire("w3", 1).await.unwrap().len();
        assert_eq!(
            granted_to_victim + granted_after,
            1,
            "the item brought back must be granted (victim {granted_to_victim}, after {granted_after})"
        );
        assert_eq!(store.job("j").await.unwrap().state, JobState::Running);
    })
}

#[test]
fn retry_dead_and_an_acquire_retiring_the_job_never_strand_the_retried_items() {
    // Before: the acquire read "nothing pending or leased", retry-dead brought the item back
    // and put the job in the active set, then the acquire took it out: the item was pending
    // in a job no acquire looks at.
    at_every_step(&Race {
        setup: |store| one_dead_item(store),
        victim: |store, ()| Box::pin(async move { store.acquire("w2", 1).await.unwrap().len() }),
        interfere: |store, ()| {
            Box::pin(async move { assert_eq!(store.retry_dead("j").await.unwrap(), 1) })
        },
        check: |store, (), granted, ()| granted_once(store, granted),
    });
}

#[test]
fn retry_dead_and_a_reap_retiring_the_job_never_strand_the_retried_items() {
    at_every_step(&Race {
        setup: |store| one_dead_item(store),
        victim: |store, ()| {
            Box::pin(async move {
                store.reap().await.unwrap();
                0
            })
        },
        interfere: |store, ()| {
            Box::pin(async move { assert_eq!(store.retry_dead("j").await.unwrap(), 1) })
        },
        check: |store, (), granted, ()| granted_once(store, granted),
    });
}

#[test]
fn retry_dead_is_one_script() {
    evalsha_once(&commands_of(
        |store| {
            Box::pin(async move {
                one_dead_item(store.clone()).await;
                assert_eq!(store.retry_dead("j").await.unwrap(), 1);
                let lease = store.acquire("w1", 1).await.unwrap().remove(0).lease;
                assert!(store.fail(&lease, "w1", "gone", true).await.unwrap().dead);
                store.reap().await.unwrap();
                assert_eq!(store.active_jobs().await.unwrap(), 0, "retired");
            })
        },
        |store| {
            Box::pin(async move {
                assert_eq!(store.retry_dead("j").await.unwrap(), 1);
            })
        },
    ));
}

/// A job whose one item is done, a few milliseconds ago: prunable with a short retention.
fn one_done_item(store: Arc<RedisStore>) -> Step<()> {
    Box::pin(async move {
        let lease = one_leased_item(store.clone()).await;
        assert_eq!(store.complete(&lease, "w1").await.unwrap(), Ack::Ok);
        tokio::time::sleep(Duration::from_millis(10)).await;
    })
}

/// After a pruning raced another change: the job is gone, or it is there whole and cancelled;
/// never a remnant (a meta without its spec reads as corrupt).
fn gone_or_cancelled(store: Arc<RedisStore>, known_to_victim: bool) -> Step<()> {
    Box::pin(async move {
        match store.job("j").await {
            Err(lease::Error::UnknownJob(_)) => {}
            Ok(status) => {
                assert!(known_to_victim, "the victim said unknown: {status:?}");
                assert_eq!(status.state, JobState::Cancelled);
            }
            Err(other) => panic!("the job is left half there: {other}"),
        }
        assert!(store.acquire("w3", 5).await.unwrap().is_empty());
        store.jobs().await.unwrap();
    })
}

#[test]
fn a_cancel_racing_the_pruning_of_its_job_leaves_no_remnant() {
    // Before: cancel checked the job existed, then wrote `cancelled` and `ended` into its
    // meta; a pruning in between left a meta of those two fields, which reads as corrupt.
    at_every_step(&Race {
        setup: |store| one_done_item(store),
        victim: |store, ()| {
            Box::pin(async move {
                match store.cancel_job("j").await {
                    Ok(()) => true,
                    Err(lease::Error::UnknownJob(_)) => false,
                    Err(other) => panic!("{other}"),
                }
            })
        },
        interfere: |store, ()| {
            Box::pin(async move {
                store.prune(Duration::from_millis(1)).await.unwrap();
            })
        },
        check: |store, (), known, ()| gone_or_cancelled(store, known),
    });
}

#[test]
fn a_cancel_is_one_script() {
    evalsha_once(&commands_of(
        |store| {
            Box::pin(async move {
                store.create_job(&job("j", 1)).await.unwrap();
                store.create_job(&job("warm-up", 1)).await.unwrap();
                store.cancel_job("warm-up").await.unwrap();
            })
        },
        |store| Box::pin(async move { store.cancel_job("j").await.unwrap() }),
    ));
}

/// A new item for job `j`, after its first ones in plan order.
fn added_item() -> lease::model::ItemSpec {
    let mut item = job("x", 1).items.remove(0);
    item.item_id = "f1-000000".into();
    item.objects[0].key = "k-new".into();
    item
}

#[test]
fn an_extension_and_an_acquire_retiring_the_job_never_strand_the_new_items() {
    at_every_step(&Race {
        setup: |store| one_done_item(store),
        victim: |store, ()| Box::pin(async move { store.acquire("w2", 1).await.unwrap().len() }),
        interfere: |store, ()| {
            Box::pin(async move { store.extend_job("j", &[added_item()]).await.unwrap() })
        },
        check: |store, (), granted, ()| granted_once(store, granted),
    });
}

#[test]
fn an_extension_racing_the_cancel_and_pruning_of_its_job_leaves_nothing_behind() {
    // Before: extend checked the job, then wrote the items and added to its counters and to
    // the active set; with the job pruned in between, that made a meta without a spec in the
    // active set, and every acquire failed on it (corrupt) from then on.
    at_every_step(&Race {
        setup: |store| one_done_item(store),
        victim: |store, ()| {
            Box::pin(async move {
                match store.extend_job("j", &[added_item()]).await {
                    Ok(()) | Err(lease::Error::UnknownJob(_)) => {}
                    Err(other) => panic!("{other}"),
                }
            })
        },
        interfere: |store, ()| {
            Box::pin(async move {
                store.cancel_job("j").await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
                assert_eq!(store.prune(Duration::from_millis(1)).await.unwrap().jobs, 1);
            })
        },
        check: |store, (), (), ()| {
            Box::pin(async move {
                assert!(matches!(
                    store.job("j").await,
                    Err(lease::Error::UnknownJob(_))
                ));
                assert!(store.acquire("w3", 5).await.unwrap().is_empty());
                assert_eq!(store.active_jobs().await.unwrap(), 0);
                assert!(store.job_objects("j").await.is_err());
            })
        },
    });
}

#[test]
fn an_extension_is_one_script() {
    evalsha_once(&commands_of(
        |store| {
            Box::pin(async move {
                one_done_item(store.clone()).await;
                let mut warm_up = added_item();
                warm_up.item_id = "f0-000000".into();
                store.extend_job("j", &[warm_up]).await.unwrap();
            })
        },
        |store| Box::pin(async move { store.extend_job("j", &[added_item()]).await.unwrap() }),
    ));
}

#[test]
fn a_pruning_never_deletes_a_job_that_retry_dead_brought_back() {
    // Before: the pruning read the job as failed and old enough, retry-dead brought its item
    // back (and said so), then the pruning deleted the job anyway.
    at_every_step(&Race {
        setup: |store| {
            Box::pin(async move {
                one_dead_item(store).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            })
        },
        victim: |store, ()| {
            Box::pin(async move { store.prune(Duration::from_millis(1)).await.unwrap().jobs })
        },
        interfere: |store, ()| Box::pin(async move { store.retry_dead("j").await }),
        check: |store, (), pruned, retried| {
            Box::pin(async move {
                match retried {
                    Ok(1) => {
                        assert_eq!(pruned, 0, "the job was retried, so not finished");
                        assert_eq!(store.job("j").await.unwrap().state, JobState::Running);
                        assert_eq!(store.acquire("w3", 1).await.unwrap().len(), 1);
                    }
                    Err(lease::Error::UnknownJob(_)) => {
                        assert_eq!(pruned, 1);
                        assert!(store.job("j").await.is_err());
                    }
                    other => panic!("retry-dead answered {other:?}"),
                }
            })
        },
    });
}

/// Grants made in Redis are never thrown away: when a later job of an acquire fails (here its
/// spec is unreadable), the grants already made in earlier jobs are returned, not dropped in
/// an error (they would only expire, and count towards nothing but delay).
#[test]
fn an_acquire_returns_the_grants_it_made_when_a_later_job_fails() {
    let server = acl_server();
    runtime().block_on(async {
        let store = RedisStore::connect(&era5_url(&server), policy(60_000))
            .await
            .unwrap();
        // Named so that even a tie in creation time orders them: the good job first.
        store.create_job(&job("a-first", 2)).await.unwrap();
        store.create_job(&job("b-broken", 2)).await.unwrap();
        let answer = server.command_as(
            "default",
            "",
            &["HSET", "era5:{b-broken}:meta", "spec", "not json"],
        );
        assert!(answer.starts_with(':'), "{answer}");
        let granted = store
            .acquire("w1", 10)
            .await
            .expect("the grants made so far");
        assert_eq!(granted.len(), 2, "{granted:?}");
        assert!(granted.iter().all(|g| g.lease.job_id == "a-first"));
    });
}
