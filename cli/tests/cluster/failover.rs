//! Redis that fails over: a primary, a replica and three sentinels (real `redis-server` and
//! `redis-server --sentinel` processes); the coordinator follows the primary Sentinel elects.

use std::time::Duration;

use tests::redis_server::{RedisOptions, RedisSentinel, RedisServer};

use super::support::cluster::{Cluster, REDIS_ADMIN_PASSWORD, REDIS_PASSWORD, acl_redis_options};
use super::support::*;
use super::{LIMIT, PRODUCTS, selected, serial, state};

/// The primary is killed (SIGKILL) mid-job: Sentinel promotes the replica, the coordinator
/// follows it, and the job completes exactly with no item dead.
#[test]
fn the_redis_primary_dies_mid_job_and_the_job_completes_on_the_promoted_replica() {
    let _serial = serial();
    let (s3, seeded) = seeded_server();
    slow_bodies(&s3, 4 << 20);
    let primary = RedisServer::start_with(acl_redis_options());
    let replica = RedisServer::start_with(RedisOptions {
        replica_of: Some(primary.port()),
        ..acl_redis_options()
    });
    wait_until(Duration::from_secs(20), "the replica to sync", || {
        replica
            .info("replication")
            .contains("master_link_status:up")
    });
    let sentinels: Vec<RedisSentinel> = (0..3)
        .map(|_| RedisSentinel::start(primary.port(), "era5", Some(REDIS_ADMIN_PASSWORD)))
        .collect();
    wait_until(
        Duration::from_secs(20),
        "the sentinels to know the replica",
        || {
            sentinels
                .iter()
                .all(|s| s.info().contains("slaves=1,sentinels=3"))
        },
    );
    let addresses: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port()))
        .collect();
    let url = format!(
        "redis+sentinel://era5:{REDIS_PASSWORD}@{}/era5",
        addresses.join(",")
    );
    let mut cluster = Cluster::start_with_redis_url(primary, url, &s3.endpoint(), 10);
    cluster.add_worker("w1", 0, &[]);
    cluster.add_worker("w2", 0, &[]);
    let job = cluster.submit(PRODUCTS, "", "2023-12", "2024-04");
    cluster.wait_for(&job, LIMIT, "some lease done", |s| {
        s["jobs"][0]["leases"]["done"].as_u64() > Some(0)
    });
    cluster.redis.kill();
    // Sentinel notices after 1 s and promotes the replica; the coordinator follows it.
    wait_until(
        Duration::from_secs(30),
        "the coordinator to follow the new primary",
        || {
            let log = cluster.coordinators[0].0.log_text();
            log.matches("redis primary (from sentinel)").count() == 2
        },
    );
    let status = cluster.wait_final(&job, LIMIT);
    assert_eq!(state(&status), "complete", "{status:#}");
    assert_eq!(
        status["jobs"][0]["leases"]["dead"].as_u64(),
        Some(0),
        "{status:#}"
    );
    assert_mirrored(&cluster.dest(), &selected(&seeded));
    assert!(
        replica.info("replication").contains("role:master"),
        "the replica was not promoted"
    );
}
