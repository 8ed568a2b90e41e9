//! Redis that fails over: a primary, a replica and three sentinels (real `redis-server` and
//! `redis-server --sentinel` processes); the coordinator follows the primary Sentinel elects,
//! in plaintext and over TLS (certificates made in the test, the `era5` ACL user).

use std::time::Duration;

use tests::redis_server::{RedisOptions, RedisSentinel, RedisServer};

use super::support::cluster::{
    Cluster, ClusterPki, REDIS_ADMIN_PASSWORD, REDIS_PASSWORD, acl_redis_options,
};
use super::support::*;
use super::{LIMIT, PRODUCTS, selected, serial, state};

/// The primary is killed (SIGKILL) mid-job: Sentinel promotes the replica, the coordinator
/// follows it, and the job completes exactly with no item dead.
#[test]
fn the_redis_primary_dies_mid_job_and_the_job_completes_on_the_promoted_replica() {
    fail_over_mid_job(false);
}

/// The same over TLS everywhere: the coordinator asks the sentinels over TLS
/// (`rediss+sentinel://`), checks every certificate against the cluster's CA (`--redis-ca`),
/// and reaches the primary, then the promoted replica, over TLS as the `era5` ACL user.
#[test]
fn over_tls_the_coordinator_follows_sentinel_to_the_promoted_replica() {
    fail_over_mid_job(true);
}

fn fail_over_mid_job(tls: bool) {
    let _serial = serial();
    let (s3, seeded) = seeded_server();
    slow_bodies(&s3, 4 << 20);
    let scratch = Scratch::new();
    let pki = tls.then(|| ClusterPki::new(&scratch));
    let with_tls = |options: RedisOptions| RedisOptions {
        tls: pki.as_ref().map(ClusterPki::redis_tls),
        tls_replication: tls,
        ..options
    };
    let primary = RedisServer::start_with(with_tls(acl_redis_options()));
    // Over TLS, servers and sentinels talk to each other on their TLS ports only.
    let primary_port = if tls {
        primary.tls_port().expect("a TLS port")
    } else {
        primary.port()
    };
    let replica = RedisServer::start_with(with_tls(RedisOptions {
        replica_of: Some(primary_port),
        ..acl_redis_options()
    }));
    wait_until(Duration::from_secs(20), "the replica to sync", || {
        replica
            .info("replication")
            .contains("master_link_status:up")
    });
    let redis_tls = pki.as_ref().map(ClusterPki::redis_tls);
    let sentinels: Vec<RedisSentinel> = (0..3)
        .map(|_| {
            RedisSentinel::start_with(
                primary_port,
                "era5",
                Some(REDIS_ADMIN_PASSWORD),
                redis_tls.as_ref(),
            )
        })
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
        .map(|s| {
            let port = if tls { s.tls_port() } else { Some(s.port()) };
            format!("127.0.0.1:{}", port.expect("a TLS port"))
        })
        .collect();
    let scheme = if tls { "rediss" } else { "redis" };
    let url = format!(
        "{scheme}+sentinel://era5:{REDIS_PASSWORD}@{}/era5",
        addresses.join(",")
    );
    let mut cluster = match pki {
        Some(pki) => {
            Cluster::start_tls_with_redis_url(scratch, pki, primary, url, &s3.endpoint(), 10)
        }
        None => Cluster::start_with_redis_url(primary, url, &s3.endpoint(), 10),
    };
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
    // The address followed is the replica's own port: its TLS one when the test runs TLS.
    let followed = match replica.tls_port() {
        Some(port) if tls => port,
        _ => replica.port(),
    };
    let log = cluster.coordinators[0].0.log_text();
    assert!(
        log.contains(&format!("primary=127.0.0.1:{followed}")),
        "{log}"
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
