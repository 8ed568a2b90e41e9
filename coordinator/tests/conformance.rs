//! One state machine, two stores: every scenario of `lease::conformance` runs against the
//! embedded store and against the Redis store on a real redis-server; the Redis store's own
//! bounds (scan budget, constant work per report) are checked here too; `redis_atomic.rs`
//! checks that each of its state changes and status reads is one atomic step.

mod support;

use std::sync::Arc;

use coordinator::RedisStore;
use lease::conformance::{job, policy};
use lease::model::{Ack, ItemState, LeasePolicy};
use lease::{LeaseStore, MemoryStore};
use support::{Command, acl_server, commands_during, era5_url};
use tests::redis_server::RedisServer;

/// Runs the scenario `$name` of `lease::conformance` against both stores, with lease TTL `$ttl`
/// milliseconds.
macro_rules! conformance {
    ($name:ident, $ttl:expr) => {
        mod $name {
            use lease::conformance::policy;

            #[test]
            fn memory() {
                super::run_memory(policy($ttl), lease::conformance::$name);
            }

            #[test]
            fn redis() {
                super::run_redis(policy($ttl), lease::conformance::$name);
            }
        }
    };
}

/// The same, for a scenario that runs with `lease::conformance::capped_policy`.
macro_rules! conformance_capped {
    ($name:ident, $ttl:expr) => {
        mod $name {
            use lease::conformance::capped_policy;

            #[test]
            fn memory() {
                super::run_memory(capped_policy($ttl), lease::conformance::$name);
            }

            #[test]
            fn redis() {
                super::run_redis(capped_policy($ttl), lease::conformance::$name);
            }
        }
    };
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn run_memory<F: std::future::Future<Output = ()>>(
    policy: LeasePolicy,
    scenario: fn(Arc<dyn LeaseStore>) -> F,
) {
    runtime().block_on(scenario(Arc::new(MemoryStore::new(policy))));
}

fn run_redis<F: std::future::Future<Output = ()>>(
    policy: LeasePolicy,
    scenario: fn(Arc<dyn LeaseStore>) -> F,
) {
    // As the deployment's ACL user: a script calling a command it does not allow fails here.
    let server = acl_server();
    runtime().block_on(async {
        let store = RedisStore::connect(&era5_url(&server), policy)
            .await
            .unwrap();
        scenario(Arc::new(store)).await;
    });
}

conformance!(grants_in_plan_order_then_completes_idempotently, 10_000);
conformance!(an_expired_grant_is_never_brought_back, 150);
conformance!(failures_back_off_then_die_with_their_reason, 10_000);
conformance!(release_returns_work_without_an_attempt, 10_000);
conformance!(a_poison_item_dies_after_too_many_expiries, 60);
conformance!(expiries_of_holders_out_of_contact_do_not_count, 60);
conformance!(
    a_repeated_acquire_request_answers_its_grants_and_grants_no_more,
    60_000
);
conformance!(cancel_stops_grants_and_loses_live_leases, 10_000);
conformance!(holdings_are_the_live_grants_by_worker_and_job, 150);
conformance!(jobs_are_served_oldest_first_and_workers_can_drain, 10_000);
conformance!(progress_counts_for_live_grants_only, 10_000);
conformance!(only_the_holder_acts_on_a_grant, 10_000);
conformance!(retention_forgets_finished_jobs_and_silent_workers, 10_000);
conformance!(pages_walk_the_plan_order_and_filter_by_state, 60_000);
conformance!(views_read_active_and_recent_jobs_only, 60_000);
conformance!(
    a_standing_job_is_claimed_once_per_interval_grows_and_stops_when_cancelled,
    10_000
);
conformance!(the_last_item_dying_fails_the_job, 10_000);
conformance!(
    an_unknown_job_is_unknown_to_every_call_and_none_creates_it,
    10_000
);
conformance!(
    retry_dead_grants_the_dead_items_again_and_the_job_is_active_again,
    10_000
);
conformance!(grants_and_listings_follow_the_plan_order, 10_000);
conformance!(an_item_id_twice_in_a_job_is_refused_whole, 10_000);
conformance_capped!(
    a_worker_at_its_lease_cap_gets_nothing_until_one_is_settled,
    10_000
);
conformance_capped!(an_expired_grant_frees_a_slot_of_its_workers_cap, 300);

#[test]
fn a_job_from_before_the_order_index_keeps_every_item_in_view_when_it_grows() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let store = RedisStore::connect(&server.url(), policy(60_000))
            .await
            .unwrap();
        store.create_job(&job("old", 3)).await.unwrap();
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("DEL")
            .arg("era5:{old}:order")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        let mut again = job("x", 1).items.remove(0);
        again.item_id = "000001".into();
        assert!(matches!(
            store.extend_job("old", &[again]).await,
            Err(lease::Error::InvalidArgument(_))
        ));
        let mut added = job("x", 1).items.remove(0);
        added.item_id = "f1-000000".into();
        added.objects[0].key = "k-new".into();
        store.extend_job("old", &[added]).await.unwrap();
        let page = store.items_page("old", None, "", 10).await.unwrap();
        let ids: Vec<&str> = page.items.iter().map(|i| i.item_id.as_str()).collect();
        assert_eq!(ids, ["000000", "000001", "000002", "f1-000000"]);
        let objects: Vec<String> = store
            .job_objects("old")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(objects, ["k0", "k1", "k2", "k-new"]);
    });
}

#[test]
fn a_page_filtered_by_state_stops_at_its_scan_budget_and_resumes() {
    let server = RedisServer::start();
    let items = lease::store::PAGE_SCAN_BUDGET + 2_500;
    runtime().block_on(async {
        let store = RedisStore::connect(&server.url(), policy(60_000))
            .await
            .unwrap();
        store.create_job(&job("big", items)).await.unwrap();
        // Mark two items dead in place, far apart (the page walker reads the state fields).
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        for item in [7, items - 3] {
            redis::cmd("HSET")
                .arg("era5:{big}:st")
                .arg(format!("{item:06}|state"))
                .arg("dead")
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
        }
        let first = store
            .items_page("big", Some(ItemState::Dead), "", 10)
            .await
            .unwrap();
        assert_eq!(first.items.len(), 1);
        let next = first.next.expect("the scan budget ends the first page");
        assert_eq!(next, format!("{:06}", lease::store::PAGE_SCAN_BUDGET - 1));
        let second = store
            .items_page("big", Some(ItemState::Dead), &next, 10)
            .await
            .unwrap();
        assert_eq!(second.items[0].item_id, format!("{:06}", items - 3));
        assert_eq!(second.next, None);
    });
}

/// The Redis commands one worker report with one progress entry costs while `held` leases of
/// the job are live.
fn report_commands(held: usize) -> Vec<Command> {
    let server = RedisServer::start();
    runtime().block_on(async {
        // More live leases than the default cap per worker, to show they cost nothing.
        let policy = LeasePolicy {
            max_leases_per_worker: 1_000,
            ..policy(60_000)
        };
        let store = RedisStore::connect(&server.url(), policy).await.unwrap();
        store.create_job(&job("p", held)).await.unwrap();
        // Acquire grants at most 64 at a time.
        let mut grants = Vec::new();
        while grants.len() < held {
            let more = store.acquire("w1", held - grants.len()).await.unwrap();
            assert!(!more.is_empty(), "nothing more to grant");
            grants.extend(more);
        }
        assert_eq!(grants.len(), held);
        let lease = &grants[held - 1].lease;
        let report = proto::v1::WorkerReport {
            worker: "w1".into(),
            progress: vec![proto::v1::LeaseProgress {
                lease: Some(coordinator::service::lease_to_pb(lease)),
                bytes_done: 42,
                objects_done: 0,
            }],
            metrics: None,
            leases_held: held as u32,
        };
        let commands = commands_during(&server, async {
            let cancelled = coordinator::service::record_report(&store, "w1", report).await;
            assert!(cancelled.is_empty());
        })
        .await;
        let page = store.items_page("p", None, "", held).await.unwrap();
        assert_eq!(
            page.items[held - 1].bytes_done,
            42,
            "the progress was recorded"
        );
        commands
    })
}

#[test]
fn a_progress_report_costs_the_same_redis_work_whatever_the_live_leases() {
    let one = report_commands(1);
    let many = report_commands(300);
    assert!(
        one.iter().any(|command| command.name == "evalsha"),
        "the capture saw no transition: {one:?}"
    );
    assert_eq!(
        one, many,
        "the commands of one report (name, argument count) depend on the live leases"
    );
}

#[test]
fn an_acquire_at_the_lease_cap_runs_one_script_whatever_the_active_jobs() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let store = RedisStore::connect(&server.url(), lease::conformance::capped_policy(60_000))
            .await
            .unwrap();
        for name in ["a", "b", "c", "d", "e"] {
            store.create_job(&job(name, 4)).await.unwrap();
        }
        let cap = lease::conformance::SCENARIO_LEASE_CAP as usize;
        assert_eq!(store.acquire("w1", 10).await.unwrap().len(), cap);
        let commands = commands_during(&server, async {
            assert!(store.acquire("w1", 10).await.unwrap().is_empty());
        })
        .await;
        let scripts = commands.iter().filter(|c| c.name == "evalsha").count();
        assert_eq!(
            scripts, 1,
            "the first job's script says the worker is at its cap: {commands:?}"
        );
    });
}

#[test]
fn grants_from_before_the_lease_ledger_count_from_their_first_renewal() {
    let server = RedisServer::start();
    runtime().block_on(async {
        let store = RedisStore::connect(&server.url(), lease::conformance::capped_policy(60_000))
            .await
            .unwrap();
        store.create_job(&job("old", 10)).await.unwrap();
        let old = store.acquire("w1", 10).await.unwrap();
        // As if granted by a coordinator from before the ledger: no trace in it.
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("DEL")
            .arg("era5:held")
            .arg("era5:held_count")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        let new = store.acquire("w1", 10).await.unwrap();
        assert_eq!(
            new.len(),
            old.len(),
            "the unrecorded grants do not count yet"
        );
        for grant in &old {
            assert_eq!(store.renew(&grant.lease, "w1").await.unwrap(), Ack::Ok);
        }
        assert!(store.acquire("w1", 1).await.unwrap().is_empty());
        for grant in &old {
            assert_eq!(store.complete(&grant.lease, "w1").await.unwrap(), Ack::Ok);
        }
        assert!(
            store.acquire("w1", 1).await.unwrap().is_empty(),
            "renewed, they counted; the later grants still fill the cap"
        );
        assert_eq!(store.complete(&new[0].lease, "w1").await.unwrap(), Ack::Ok);
        assert_eq!(store.acquire("w1", 5).await.unwrap().len(), 1);
    });
}
