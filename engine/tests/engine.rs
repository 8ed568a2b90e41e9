//! The engine and the bounded pool in-process, against the real test S3 server: the live
//! connection gauge, idle expiry, and the AIMD reaction to SlowDown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{Engine, EngineConfig, Mirror, Progress};
use tests::faults::{Fault, FaultRule};
use tests::s3_server::{PutOptions, TestS3};
use transport::{PoolConfig, RemoteObject, Source, SourceConfig};

const KEY: &str =
    "e5.oper.an.sfc/202401/e5.oper.an.sfc.128_167_2t.ll025sc.2024010100_2024013123.nc";

async fn source(s3: &TestS3, connections: usize, idle_timeout: Duration) -> Source {
    Source::connect(&SourceConfig {
        bucket: s3.bucket().to_string(),
        endpoint: Some(s3.endpoint()),
        region: "us-east-1".into(),
        sign: false,
        env_credentials: true,
        pool: PoolConfig {
            idle_timeout,
            ..PoolConfig::new(connections)
        },
    })
    .await
}

fn listed(s3: &TestS3) -> RemoteObject {
    let object = s3.object(KEY).unwrap();
    RemoteObject {
        key: KEY.into(),
        size: object.data.len() as u64,
        etag: Some(object.etag.trim_matches('"').to_string()),
        last_modified: None,
    }
}

/// Retries after 5 ms instead of the default backoff, so fault tests stay fast.
fn quick_retries() -> transport::retry::RetryPolicy {
    transport::retry::RetryPolicy {
        base: Duration::from_millis(5),
        ..Default::default()
    }
}

async fn wait_for(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gauge_counts_open_and_in_use_connections_and_idle_ones_expire() {
    let s3 = TestS3::start("bucket");
    s3.put_object(KEY, tests::fixtures::object_bytes(KEY, 3 << 20));
    s3.add_fault(FaultRule {
        method: Some(http::Method::GET),
        key_contains: None,
        object_gets_only: false,
        query_contains: None,
        operation: None,
        skip: 0,
        times: None,
        fault: Fault::SlowBody {
            bytes_per_sec: 1 << 20,
        },
    });
    let source = source(&s3, 3, Duration::from_millis(400)).await;
    let stats = source.connection_stats();

    // Three slow GETs in flight: three connections open and in use, and no more.
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let response = source
            .client
            .get_object()
            .bucket("bucket")
            .key(KEY)
            .send()
            .await
            .unwrap();
        bodies.push(response.body);
    }
    assert_eq!(stats.snapshot().in_use, 3);
    assert_eq!(stats.snapshot().open, 3);
    // A fourth request waits for a permit instead of opening a fourth connection.
    let fourth = tokio::time::timeout(
        Duration::from_millis(200),
        source.client.head_object().bucket("bucket").key(KEY).send(),
    )
    .await;
    assert!(fourth.is_err(), "a fourth request was sent with a cap of 3");

    // Dropping an unread body frees its permit and closes its connection (it cannot be reused).
    drop(bodies.pop());
    wait_for(
        Duration::from_secs(2),
        "the dropped body's connection to close",
        || stats.snapshot().open == 2,
    )
    .await;
    assert_eq!(stats.snapshot().in_use, 2);

    // Reading the others to the end returns their connections to the pool...
    for mut body in bodies {
        while body.next().await.transpose().unwrap().is_some() {}
    }
    assert_eq!(stats.snapshot().in_use, 0);
    assert_eq!(stats.snapshot().open, 2);
    // ...where they expire after the idle timeout.
    wait_for(Duration::from_secs(5), "idle connections to expire", || {
        stats.snapshot().open == 0
    })
    .await;
    assert!(stats.snapshot().peak_open <= 3);
}

#[test]
fn the_default_idle_timeout_is_shorter_than_s3s() {
    assert!(transport::pool::DEFAULT_IDLE_TIMEOUT <= Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowdown_lowers_the_request_window_of_the_whole_process() {
    let s3 = TestS3::start("bucket");
    let data = tests::fixtures::object_bytes(KEY, 4 << 20);
    s3.put_object_with(KEY, data.clone(), PutOptions::default());
    s3.add_fault(FaultRule {
        method: Some(http::Method::GET),
        key_contains: None,
        object_gets_only: true,
        query_contains: None,
        operation: None,
        skip: 0,
        times: Some(12),
        fault: Fault::SlowDown,
    });
    let dir = tempfile::tempdir().unwrap();
    let mirror = Arc::new(Mirror::open(dir.path()).unwrap());
    let progress = Arc::new(Progress::default());
    // A fixed window (--no-autotune): plain AIMD, halved by SlowDown, regrown by successes.
    let config = EngineConfig {
        part_size: Some(64 << 10),
        verify: engine::VerifyMode::Etag,
        retry: quick_retries(),
        autotune: false,
        ..EngineConfig::default()
    };
    let engine = Engine::new(
        source(&s3, 16, Duration::from_secs(5)).await,
        mirror,
        progress.clone(),
        config,
    );
    assert_eq!(engine.scheduler().window(), 16);
    let fetched = engine
        .fetch(&listed(&s3), 0, &engine::FetchScope::default())
        .await
        .unwrap();
    assert_eq!(fetched.entry.size, data.len() as u64);
    assert_eq!(std::fs::read(dir.path().join(KEY)).unwrap(), data.as_ref());
    let snapshot = progress.snapshot();
    assert_eq!(
        snapshot.retries_for(transport::retry::RetryReason::SlowDown),
        12
    );
    // 64 parts succeeded after the throttling: additive increase has not yet brought the
    // window back to the cap.
    let window = engine.scheduler().window();
    assert!(window < 16, "the window did not drop: {window}");
    assert!(window >= 2, "the window did not recover at all: {window}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_buffered_writes_resume_broken_parts_to_the_same_verified_bytes() {
    let s3 = TestS3::start("bucket");
    // Not a whole number of pages: the last bytes take the buffered path even when direct.
    // Every request, retries included, is longer than a fault's offset, so each fault fires.
    let data = tests::fixtures::object_bytes(KEY, (5 << 20) + 900_000);
    // Uploaded in 1 MiB parts: each part's MD5 is checked as it streams, nothing is read back,
    // so the direct engine writes direct.
    s3.put_object_with(
        KEY,
        data.clone(),
        PutOptions {
            part_size: Some(1 << 20),
            ..PutOptions::default()
        },
    );
    for direct_io in [true, false] {
        // Bodies broken off inside a stage; each part continues where it stopped.
        for (skip, fault) in [
            (
                1,
                Fault::ResetMidBody {
                    after_bytes: 100_001,
                },
            ),
            (
                3,
                Fault::TruncateBody {
                    after_bytes: 200_003,
                },
            ),
        ] {
            s3.add_fault(FaultRule {
                method: Some(http::Method::GET),
                key_contains: None,
                object_gets_only: true,
                query_contains: None,
                operation: None,
                skip,
                times: Some(2),
                fault,
            });
        }
        let dir = tempfile::tempdir().unwrap();
        let mirror = Arc::new(Mirror::open(dir.path()).unwrap());
        let progress = Arc::new(Progress::default());
        let config = EngineConfig {
            part_size: Some(1 << 20),
            verify: engine::VerifyMode::Full,
            retry: quick_retries(),
            direct_io,
            ..EngineConfig::default()
        };
        let engine = Engine::new(
            source(&s3, 4, Duration::from_secs(5)).await,
            mirror,
            progress.clone(),
            config,
        );
        let fetched = engine
            .fetch(&listed(&s3), 0, &engine::FetchScope::default())
            .await
            .unwrap();
        assert_eq!(fetched.entry.size, data.len() as u64);
        assert!(
            std::fs::read(dir.path().join(KEY)).unwrap() == data.as_ref(),
            "the promoted file differs (direct: {direct_io})"
        );
        assert_eq!(
            progress.snapshot().retries_total(),
            4,
            "direct: {direct_io}"
        );
    }
}

/// The autotuned window, in-process: 48 objects whose bodies are paced to 1 MiB/s per
/// connection, so goodput grows with every request added. The window climbs above its
/// start; the server never sees more GETs at once than the cap; a burst of SlowDown halves
/// the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autotuned_window_climbs_while_goodput_rises_and_falls_on_slowdown() {
    const CAP: usize = 4 * engine::scheduler::INITIAL_WINDOW;
    let s3 = TestS3::start("bucket");
    let objects: Vec<RemoteObject> = (1..=48)
        .map(|n| {
            let (variable, day) = if n <= 24 { ("128_130_t", n) } else { ("128_131_u", n - 24) };
            let key = format!(
                "e5.oper.an.pl/202401/e5.oper.an.pl.{variable}.ll025sc.202401{day:02}00_202401{day:02}23.nc"
            );
            let data = tests::fixtures::object_bytes(&key, 2 << 20);
            s3.put_object(&key, data.clone());
            let stored = s3.object(&key).unwrap();
            RemoteObject {
                key,
                size: data.len() as u64,
                etag: Some(stored.etag.trim_matches('"').to_string()),
                last_modified: None,
            }
        })
        .collect();
    let paced = FaultRule {
        method: Some(http::Method::GET),
        key_contains: None,
        object_gets_only: true,
        query_contains: None,
        operation: None,
        skip: 0,
        times: None,
        fault: Fault::SlowBody {
            bytes_per_sec: 1 << 20,
        },
    };
    s3.add_fault(paced.clone());
    let dir = tempfile::tempdir().unwrap();
    let progress = Arc::new(Progress::default());
    let engine = Engine::new(
        source(&s3, CAP, Duration::from_secs(5)).await,
        Arc::new(Mirror::open(dir.path()).unwrap()),
        progress.clone(),
        EngineConfig {
            part_size: Some(256 << 10),
            verify: engine::VerifyMode::Etag,
            retry: quick_retries(),
            ..EngineConfig::default()
        },
    );
    let scheduler = engine.scheduler().clone();
    assert_eq!(scheduler.window(), engine::scheduler::INITIAL_WINDOW);
    let fetches = tokio::spawn({
        let engine = engine.clone();
        let objects = objects.clone();
        async move {
            let scope = engine::FetchScope::default();
            futures_util::future::join_all(
                objects
                    .iter()
                    .enumerate()
                    .map(|(seq, object)| engine.fetch(object, seq as u64, &scope)),
            )
            .await
        }
    });
    wait_for(Duration::from_secs(60), "the window to climb", || {
        scheduler.window() > engine::scheduler::INITIAL_WINDOW
    })
    .await;
    let climbed = scheduler.window();
    assert!(climbed <= CAP);
    // The fault rules are tried in order: the SlowDown burst goes ahead of the pacing.
    s3.set_faults(vec![
        FaultRule {
            times: Some(4),
            fault: Fault::SlowDown,
            ..paced.clone()
        },
        paced,
    ]);
    wait_for(Duration::from_secs(60), "a SlowDown to be retried", || {
        progress
            .snapshot()
            .retries_for(transport::retry::RetryReason::SlowDown)
            > 0
    })
    .await;
    wait_for(Duration::from_secs(5), "the window to fall", || {
        scheduler.window() <= climbed / 2 + 1
    })
    .await;
    for fetched in fetches.await.unwrap() {
        fetched.unwrap();
    }
    for object in &objects {
        let data = std::fs::read(dir.path().join(&object.key)).unwrap();
        assert_eq!(data.len() as u64, object.size);
    }
    assert!(
        s3.max_concurrent_gets() <= CAP,
        "{} GETs at once with a cap of {CAP}",
        s3.max_concurrent_gets()
    );
    assert!(scheduler.snapshot().peak >= climbed);
}
