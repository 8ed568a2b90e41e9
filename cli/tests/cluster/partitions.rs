//! Partitions between a worker and the coordinator, through a TCP proxy that drops bytes one
//! way or both without FIN or reset:
//!
//! - shorter than the lease TTL: the lease is kept (its epoch never changes);
//! - longer than the TTL, both ways or only the answers: the worker fences itself, another
//!   worker finishes the object, the stale grant's late Complete is refused, and the object
//!   is mirrored exactly once in effect;
//! - a blackholed session is closed by HTTP/2 keepalive well within a minute;
//! - an acquire whose answer is lost is repeated with its request id and keeps its grant.
//!
//! Short TTLs and keepalive intervals (hidden flags) keep them fast; the defaults are in the
//! operations guide.

use std::time::{Duration, Instant};

use proto::v1 as pb;
use proto::v1::worker_client::WorkerClient;
use tests::faults::{Fault, FaultRule};
use tests::proxy::{Blackhole, CountingProxy};

use super::support::cluster::{Cluster, grpc_channel};
use super::support::*;
use super::{LIMIT, leases, stale_grant, state};

/// The one object of the partition jobs (2 m temperature, January 2024).
fn target(seeded: &[SeededObject]) -> &SeededObject {
    under(seeded, &["e5.oper.an.sfc/202401/"])
        .into_iter()
        .find(|o| o.key.contains("_2t."))
        .expect("the fixture has 2t for January 2024")
}

/// A cluster whose worker `far` reaches the coordinator through a proxy, holding the lease of
/// a one-object job whose first download is slowed to last about `download` (later GETs of
/// the object are fast).
struct Partitioned {
    s3: TestS3,
    seeded: Vec<SeededObject>,
    cluster: Cluster,
    proxy: CountingProxy,
    job: String,
}

impl Partitioned {
    fn start(ttl: u64, download: Duration) -> Self {
        let (s3, seeded) = seeded_server();
        let object = target(&seeded);
        let rate = (object.data.len() as u64 / download.as_secs().max(1)).max(1024);
        s3.add_fault(FaultRule {
            method: Some(http::Method::GET),
            key_contains: Some(object.key.clone()),
            object_gets_only: false,
            query_contains: None,
            operation: None,
            skip: 0,
            times: Some(1),
            fault: Fault::SlowBody {
                bytes_per_sec: rate,
            },
        });
        let mut cluster = Cluster::start_with_coordinator_flags(
            &s3.endpoint(),
            ttl,
            &["--keepalive-interval", "1"],
        );
        let upstream = format!("127.0.0.1:{}", cluster.coordinators[0].1)
            .parse()
            .unwrap();
        let proxy = CountingProxy::start(upstream);
        cluster.add_worker_via(
            "far",
            &proxy.endpoint(),
            &["--keepalive-interval", "1", "--rpc-timeout", "2"],
        );
        let job = cluster.submit("e5.oper.an.sfc", "2t", "2024-01", "2024-01");
        cluster.wait_for(&job, LIMIT, "far to hold the lease", |s| {
            leases(s).iter().any(|l| l["holder"] == "far")
        });
        let key = object.key.clone();
        wait_until(LIMIT, "far's download to start", || s3.get_count(&key) > 0);
        Self {
            s3,
            seeded,
            cluster,
            proxy,
            job,
        }
    }

    fn far_log(&self) -> String {
        self.cluster
            .workers
            .iter()
            .find(|(n, _)| n == "far")
            .unwrap()
            .1
            .log_text()
    }

    /// Far is cut off longer than the TTL (`which` way): it must fence, `near` finishes, far's
    /// late Complete is refused, and the object is in place once, with its exact bytes.
    fn cut_off_past_the_ttl(mut self, which: Blackhole) {
        let object = target(&self.seeded).clone();
        self.proxy.blackhole(which);
        wait_until(Duration::from_secs(60), "far to fence itself", || {
            self.far_log().contains("self-fencing")
        });
        // The coordinator, which may have kept hearing renewals (one-way), lets it expire.
        self.cluster.add_worker("near", 0, &[]);
        let status = self.cluster.wait_final(&self.job, LIMIT);
        assert_eq!(state(&status), "complete", "{status:#}");
        let lease = &leases(&status)[0];
        assert_eq!(lease["holder"], "near", "{status:#}");
        assert!(lease["epoch"].as_u64() >= Some(2), "{status:#}");
        self.proxy.heal();

        // Far's late Complete, through the healed path, is refused.
        let grant = stale_grant(&self.far_log());
        let url = self.proxy.endpoint();
        let completed = tokio::runtime::Runtime::new().unwrap().block_on(async {
            let mut client = WorkerClient::new(grpc_channel(&url, None).await);
            client
                .complete(pb::CompleteRequest {
                    lease: Some(grant),
                    worker: "far".into(),
                    bytes: 0,
                })
                .await
                .expect("the coordinator answers")
                .into_inner()
                .status
        });
        assert_eq!(completed, pb::LeaseStatus::AlreadyDone as i32);
        // Far abandoned the lease without reporting it; the object is mirrored once.
        assert!(
            !self.far_log().contains("lease finished"),
            "{}",
            self.far_log()
        );
        assert_mirrored(&self.cluster.dest(), &[&object]);
        assert_eq!(
            mirrored_keys(&self.cluster.dest()),
            vec![object.key.clone()]
        );
        let status = self.cluster.status(0, Some(&self.job));
        assert_eq!(status["jobs"][0]["leases"]["done"], 1);
        drop(self.s3);
    }
}

#[test]
fn a_partition_shorter_than_the_ttl_regrants_nothing() {
    let partitioned = Partitioned::start(8, Duration::from_secs(10));
    partitioned.proxy.blackhole(Blackhole::Both);
    std::thread::sleep(Duration::from_secs(3));
    partitioned.proxy.heal();
    let status = partitioned.cluster.wait_final(&partitioned.job, LIMIT);
    assert_eq!(state(&status), "complete", "{status:#}");
    let lease = &leases(&status)[0];
    assert_eq!(
        (
            lease["holder"].as_str(),
            lease["epoch"].as_u64(),
            lease["expiries"].as_u64()
        ),
        (Some("far"), Some(1), Some(0)),
        "the lease was granted again: {status:#}"
    );
    assert!(!partitioned.far_log().contains("self-fencing"));
    assert_mirrored(&partitioned.cluster.dest(), &[target(&partitioned.seeded)]);
}

#[test]
fn a_partition_longer_than_the_ttl_fences_the_worker() {
    Partitioned::start(6, Duration::from_secs(30)).cut_off_past_the_ttl(Blackhole::Both);
}

#[test]
fn a_one_way_partition_fences_the_worker_the_same_way() {
    // Renewals reach the coordinator; only the answers are lost.
    Partitioned::start(6, Duration::from_secs(30)).cut_off_past_the_ttl(Blackhole::ToClient);
}

#[test]
fn a_blackholed_session_is_closed_by_keepalive_within_a_minute() {
    let (s3, _) = seeded_server();
    let mut cluster =
        Cluster::start_with_coordinator_flags(&s3.endpoint(), 30, &["--keepalive-interval", "2"]);
    let upstream = format!("127.0.0.1:{}", cluster.coordinators[0].1)
        .parse()
        .unwrap();
    let proxy = CountingProxy::start(upstream);
    cluster.add_worker_via("lonely", &proxy.endpoint(), &["--keepalive-interval", "2"]);
    let connected = |n: f64| cluster.coordinator_metric(0, "era5_workers_connected") == Some(n);
    wait_until(Duration::from_secs(30), "the session to open", || {
        connected(1.0)
    });
    proxy.blackhole(Blackhole::Both);
    let cut = Instant::now();
    wait_until(
        Duration::from_secs(60),
        "keepalive to close the session",
        || connected(0.0),
    );
    assert!(cut.elapsed() < Duration::from_secs(60));
    proxy.heal();
    wait_until(Duration::from_secs(30), "the worker to come back", || {
        connected(1.0)
    });
}

/// An acquire whose answer is lost (the coordinator granted, the answer vanished on the way
/// back) is repeated with its request id, and the coordinator answers the grant it made: the
/// worker works under it (epoch 1), instead of the item staying leased to nobody until the
/// TTL and being granted again.
#[test]
fn an_acquire_whose_answer_is_lost_is_repeated_and_its_grant_kept() {
    let _serial = super::serial();
    let (s3, seeded) = seeded_server();
    let mut cluster = Cluster::start(&s3.endpoint(), 30);
    let upstream = format!("127.0.0.1:{}", cluster.coordinators[0].1)
        .parse()
        .unwrap();
    let proxy = CountingProxy::start(upstream);
    cluster.add_worker_via("far", &proxy.endpoint(), &["--rpc-timeout", "2"]);
    wait_until(Duration::from_secs(20), "far to be heard from", || {
        cluster.status(0, None)["workers"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w["name"] == "far"))
    });
    // Answers to far vanish from now on; its requests still arrive and are acted on.
    proxy.blackhole(Blackhole::ToClient);
    let job = cluster.submit("e5.oper.an.sfc", "2t", "2024-01", "2024-01");
    cluster.wait_for(&job, LIMIT, "the coordinator to grant far the lease", |s| {
        leases(s).iter().any(|l| l["holder"] == "far")
    });
    proxy.heal();
    let status = cluster.wait_final(&job, LIMIT);
    assert_eq!(state(&status), "complete", "{status:#}");
    let lease = &leases(&status)[0];
    assert_eq!(
        (lease["holder"].as_str(), lease["epoch"].as_u64()),
        (Some("far"), Some(1)),
        "the lost grant was not answered again: {status:#}"
    );
    assert_mirrored(&cluster.dest(), &[target(&seeded)]);
}
