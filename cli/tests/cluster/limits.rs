//! Bounded in every dimension: Acquire, sessions, names, reports, objects per job, active
//! jobs, a foreign source, retention, and what `status` prints of server-supplied strings.

use std::time::{Duration, Instant};

use proto::v1 as pb;
use proto::v1::worker_client::WorkerClient;
use tokio_stream::wrappers::ReceiverStream;

use super::support::cluster::{Cluster, grpc_channel, rss_kib};
use super::support::*;
use super::{LIMIT, PRODUCTS, leases, serial, state};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn code_of<T>(result: Result<tonic::Response<T>, tonic::Status>) -> tonic::Code {
    result.map_or_else(|status| status.code(), |_| tonic::Code::Ok)
}

#[test]
fn acquire_names_and_reports_are_bounded() {
    let _serial = serial();
    let (s3, _) = seeded_server();
    // Small leases and several jobs: more leases than one Acquire may grant.
    let cluster =
        Cluster::start_with_coordinator_flags(&s3.endpoint(), 30, &["--lease-objects", "1"]);
    let mut items = 0;
    while items <= 64 {
        let job = cluster.submit(PRODUCTS, "", "2023-12", "2024-04");
        items += leases(&cluster.status(0, Some(&job))).len();
    }
    let url = cluster.coordinator_url(0);
    let pid = cluster.coordinators[0].0.pid();
    runtime().block_on(async {
        let mut client = WorkerClient::new(grpc_channel(&url, None).await);
        let before = rss_kib(pid);
        let mut granted = 0;
        let mut full_answers = 0;
        for call in 0..20 {
            let started = Instant::now();
            let leases = client
                .acquire(pb::AcquireRequest {
                    worker: format!("greedy-{call}"),
                    max: u32::MAX,
                    ..Default::default()
                })
                .await
                .expect("acquire")
                .into_inner()
                .leases;
            assert!(leases.len() <= 64, "{} leases in one answer", leases.len());
            let objects: usize = leases.iter().map(|l| l.objects.len()).sum();
            assert!(objects <= 4096, "{objects} objects in one answer");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "acquire took long"
            );
            full_answers += usize::from(leases.len() == 64);
            granted += leases.len();
        }
        assert!(full_answers >= 1, "no answer reached the cap of 64");
        assert_eq!(
            granted, items,
            "every item was granted, 64 at a time at most"
        );
        let growth = rss_kib(pid).saturating_sub(before);
        assert!(
            growth < 64 << 10,
            "the coordinator grew by {growth} KiB answering Acquire{{max: u32::MAX}}"
        );

        // Worker names: at most 63 characters of [a-z0-9._-].
        let named = |worker: String| {
            let mut client = client.clone();
            async move {
                code_of(
                    client
                        .acquire(pb::AcquireRequest {
                            worker,
                            max: 1,
                            ..Default::default()
                        })
                        .await,
                )
            }
        };
        assert_eq!(named("a".repeat(64)).await, tonic::Code::ResourceExhausted);
        assert_eq!(named("a".repeat(63)).await, tonic::Code::Ok);
        assert_eq!(named("Upper".into()).await, tonic::Code::InvalidArgument);
        assert_eq!(
            named("w\u{1b}[31m".into()).await,
            tonic::Code::InvalidArgument
        );

        // Ids are checked before they reach Redis keys.
        let bad = client
            .complete(pb::CompleteRequest {
                lease: Some(pb::LeaseRef {
                    job_id: "x}:meta".into(),
                    item_id: "0".into(),
                    lease_id: "l".into(),
                    epoch: 1,
                }),
                worker: "w".into(),
                bytes: 0,
            })
            .await;
        assert_eq!(code_of(bad), tonic::Code::InvalidArgument);

        // A progress report past its bounds ends the session with RESOURCE_EXHAUSTED.
        let (reports, outbound) = tokio::sync::mpsc::channel(1);
        let report = pb::WorkerReport {
            worker: "chatty".into(),
            progress: vec![pb::LeaseProgress::default(); 257],
            ..Default::default()
        };
        reports.send(report).await.unwrap();
        let mut commands = client
            .worker_session(ReceiverStream::new(outbound))
            .await
            .expect("the session opens")
            .into_inner();
        let ended = tokio::time::timeout(Duration::from_secs(10), commands.message())
            .await
            .expect("the session answers");
        assert_eq!(
            ended.expect_err("an oversized report is refused").code(),
            tonic::Code::ResourceExhausted
        );
    });
}

#[test]
fn a_thousand_sessions_are_served_or_refused_never_left_hanging() {
    let _serial = serial();
    let (s3, _) = seeded_server();
    let cluster =
        Cluster::start_with_coordinator_flags(&s3.endpoint(), 30, &["--max-workers", "300"]);
    let url = cluster.coordinator_url(0);
    let pid = cluster.coordinators[0].0.pid();
    let before = rss_kib(pid);
    let runtime = runtime();
    let (open, served, refused) = runtime.block_on(async {
        // 25 connections of 40 sessions each: 1000 sessions in flight at once.
        let mut channels = Vec::new();
        for _ in 0..25 {
            channels.push(grpc_channel(&url, None).await);
        }
        let mut attempts = tokio::task::JoinSet::new();
        for session in 0..1000 {
            let mut client = WorkerClient::new(channels[session % 25].clone());
            attempts.spawn(async move {
                let (reports, outbound) = tokio::sync::mpsc::channel(1);
                let report = pb::WorkerReport {
                    worker: format!("s-{session}"),
                    ..Default::default()
                };
                reports.send(report).await.unwrap();
                let answer = tokio::time::timeout(
                    Duration::from_secs(60),
                    client.worker_session(ReceiverStream::new(outbound)),
                )
                .await
                .expect("every session is answered, none hangs");
                // Keep served sessions open (their report stream too) until the end.
                answer.map(|response| (response.into_inner(), reports))
            });
        }
        let (mut open, mut served, mut refused) = (Vec::new(), 0, 0);
        while let Some(answer) = attempts.join_next().await {
            match answer.unwrap() {
                Ok(session) => {
                    served += 1;
                    open.push(session);
                }
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                    assert!(status.message().contains("--max-workers"), "{status:?}");
                    refused += 1;
                }
            }
        }
        (open, served, refused)
    });
    assert_eq!((served, refused), (300, 700));
    wait_until(Duration::from_secs(20), "300 sessions counted", || {
        cluster.coordinator_metric(0, "era5_workers_connected") == Some(300.0)
    });
    let growth = rss_kib(pid).saturating_sub(before);
    assert!(
        growth < 128 << 10,
        "1000 session attempts grew the coordinator by {growth} KiB"
    );
    drop(open);
    drop(runtime);
    wait_until(Duration::from_secs(20), "the sessions to close", || {
        cluster.coordinator_metric(0, "era5_workers_connected") == Some(0.0)
    });
}

#[test]
fn jobs_are_capped_in_objects_and_number_and_bound_to_the_coordinators_source() {
    let _serial = serial();
    let (s3, _) = seeded_server();
    let cluster = Cluster::start_with_coordinator_flags(
        &s3.endpoint(),
        30,
        &["--max-job-objects", "3", "--max-active-jobs", "2"],
    );
    let submit = |extra: &[&str], products: &str, vars: &str| {
        let mut command = cluster.operator("submit", 0);
        command.args([
            "--product",
            products,
            "--start",
            "2024-01",
            "--end",
            "2024-01",
        ]);
        if !vars.is_empty() {
            command.args(["--var", vars]);
        }
        let output = command.args(extra).output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    // More objects than --max-job-objects: refused while listing.
    let (code, _, stderr) = submit(&[], PRODUCTS, "");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("more than 3 objects"), "{stderr}");

    // Another source: PERMISSION_DENIED, exit 2, both sources named.
    let (code, _, stderr) = submit(&["--bucket", "someone-elses"], "e5.oper.an.sfc", "2t");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("s3://someone-elses") && stderr.contains("s3://nsf-ncar-era5"),
        "{stderr}"
    );
    let (code, _, stderr) = submit(
        &["--endpoint", "http://user:hunter2@127.0.0.1:9"],
        "e5.oper.an.sfc",
        "2t",
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("127.0.0.1:9") && stderr.contains(&s3.endpoint()),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");

    // The coordinator's own source, named or not, is fine; a third active job is not.
    let (code, first, stderr) = submit(&["--endpoint", &s3.endpoint()], "e5.oper.an.sfc", "2t");
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = submit(&[], "e5.oper.an.sfc", "msl");
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = submit(&[], "e5.oper.an.vinteg", "viwve");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--max-active-jobs"), "{stderr}");
    let output = cluster
        .operator("cancel", 0)
        .arg(first.lines().last().unwrap())
        .output()
        .unwrap();
    assert!(output.status.success());
    let (code, _, stderr) = submit(&[], "e5.oper.an.vinteg", "viwve");
    assert_eq!(code, Some(0), "a cancelled job frees its place: {stderr}");
}

#[test]
fn finished_jobs_and_silent_workers_are_forgotten_after_the_retention() {
    let _serial = serial();
    let (s3, _) = seeded_server();
    let mut cluster =
        Cluster::start_with_coordinator_flags(&s3.endpoint(), 10, &["--job-retention", "3s"]);
    cluster.add_worker("short-lived", 0, &[]);
    let job = cluster.submit("e5.oper.an.sfc", "2t", "2024-01", "2024-01");
    assert_eq!(state(&cluster.wait_final(&job, LIMIT)), "complete");
    // A complete job has nothing to cancel, and an unknown worker nothing to drain (issue 23
    // §5): both are bad input, in one line, and change nothing.
    for (args, named) in [
        (["cancel", job.as_str()], "already complete"),
        (["drain", "w9"], "w9"),
    ] {
        let output = cluster.operator(args[0], 0).arg(args[1]).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(named), "{stderr}");
    }
    assert_eq!(state(&cluster.status(0, Some(&job))), "complete");
    assert_eq!(cluster.worker("short-lived").terminate(LIMIT), Some(0));
    wait_until(
        Duration::from_secs(30),
        "the job and the worker to be forgotten",
        || {
            let status = cluster.status(0, None);
            status["jobs"].as_array().is_some_and(Vec::is_empty)
                && status["workers"].as_array().is_some_and(Vec::is_empty)
        },
    );
    let output = cluster.operator("status", 0).arg(&job).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "an unknown job is bad input");
}

#[test]
fn status_strips_control_characters_from_what_the_server_says() {
    let (s3, _) = seeded_server();
    let cluster = Cluster::start(&s3.endpoint(), 30);
    let job = cluster.submit("e5.oper.an.sfc", "2t", "2024-01", "2024-01");
    let url = cluster.coordinator_url(0);
    const HOSTILE: &str = "boom\u{1b}[2J\u{1b}]0;owned\u{7}\r\nFAKE-LINE\u{202e}gnp.exe\u{9b}1m";
    runtime().block_on(async {
        let mut client = WorkerClient::new(grpc_channel(&url, None).await);
        let lease = client
            .acquire(pb::AcquireRequest {
                worker: "w1".into(),
                max: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .leases
            .remove(0)
            .lease;
        let failed = client
            .fail(pb::FailRequest {
                lease,
                worker: "w1".into(),
                reason: HOSTILE.into(),
                permanent: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(failed.dead);
    });
    let text = cluster.operator("status", 0).arg(&job).output().unwrap();
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("boom[2J]0;owned"), "{stdout}");
    for bad in ['\u{1b}', '\r', '\u{7}', '\u{202e}', '\u{9b}'] {
        assert!(
            !stdout.contains(bad),
            "{bad:?} reached the terminal: {stdout:?}"
        );
    }
    assert!(
        !stdout.lines().any(|l| l.starts_with("FAKE-LINE")),
        "a reason forged a line: {stdout}"
    );
    let status = cluster.status(0, Some(&job));
    let reason = leases(&status)[0]["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.chars().all(|c| !c.is_control()), "{reason:?}");
}

/// Opens `count` TCP connections to `port` from `local` (a loopback address of its own), which
/// then say nothing.
async fn silent_connections(
    local: std::net::Ipv4Addr,
    port: u16,
    count: usize,
) -> Vec<tokio::net::TcpStream> {
    let mut streams = Vec::new();
    for _ in 0..count {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((local, 0).into()).unwrap();
        streams.push(socket.connect(([127, 0, 0, 1], port).into()).await.unwrap());
    }
    streams
}

/// How many of `streams` the server has closed (EOF or reset) within `wait`.
async fn closed_by_server(streams: &mut [tokio::net::TcpStream], wait: Duration) -> usize {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + wait;
    let mut closed = 0;
    for stream in streams {
        let mut sink = Vec::new();
        if tokio::time::timeout_at(deadline, stream.read_to_end(&mut sink))
            .await
            .is_ok()
        {
            closed += 1;
        }
    }
    closed
}

/// Peers that connect to the gRPC port and say nothing: one address holds at most 64 slots
/// (the rest are closed as they arrive), every other client is still served, `/healthz`
/// answers throughout, and the silent ones lose their slots at the first-byte deadline.
#[test]
fn silent_grpc_peers_hold_few_slots_and_lose_them() {
    let _serial = serial();
    let (s3, _) = seeded_server();
    let cluster = Cluster::start(&s3.endpoint(), 30);
    let url = cluster.coordinator_url(0);
    let grpc_port = cluster.coordinators[0].1;
    let http_port = cluster.coordinator_http[0];
    let runtime = runtime();
    runtime.block_on(async {
        let started = Instant::now();
        // 300 from one address, 250 from each of two more: past the coordinator's 264 slots.
        let mut one = silent_connections([127, 0, 0, 2].into(), grpc_port, 300).await;
        let mut two = silent_connections([127, 0, 0, 3].into(), grpc_port, 250).await;
        let mut three = silent_connections([127, 0, 0, 4].into(), grpc_port, 250).await;
        // Those past the per-address cap are closed at once.
        let quick = Duration::from_secs(2);
        let mut closed = closed_by_server(&mut one[64..], quick).await;
        closed += closed_by_server(&mut two[64..], quick).await;
        closed += closed_by_server(&mut three[64..], quick).await;
        assert_eq!(
            closed,
            236 + 186 + 186,
            "connections past 64 per address were kept"
        );
        // Another client is served, and probes answer.
        let mut health =
            tonic_health::pb::health_client::HealthClient::new(grpc_channel(&url, None).await);
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "era5.v1.Worker".into(),
            })
            .await;
        assert!(answer.is_ok(), "a client was locked out: {answer:?}");
        assert_eq!(Cluster::http_status(http_port, "/healthz"), Some(200));
        // The silent ones are closed at the first-byte deadline (10 s), not kept for ever.
        let mut kept: Vec<_> = one
            .drain(..64)
            .chain(two.drain(..64))
            .chain(three.drain(..64))
            .collect();
        let closed = closed_by_server(&mut kept, Duration::from_secs(20)).await;
        assert_eq!(closed, 192, "silent connections kept their slots");
        assert!(
            started.elapsed() >= Duration::from_secs(9),
            "closed before their deadline"
        );
    });
}

/// The worker's HTTP port is bounded like the coordinator's: 1,200 sockets that say nothing
/// get at most its 256 slots (the rest are closed at once), lose them at the header deadline,
/// and the liveness probe answers again.
#[test]
fn the_workers_http_port_closes_silent_sockets() {
    let _serial = serial();
    let (s3, _) = seeded_server();
    let mut cluster = Cluster::start(&s3.endpoint(), 30);
    cluster.add_worker("w1", 0, &[]);
    let port = cluster.worker_http("w1");
    let runtime = runtime();
    runtime.block_on(async {
        let mut silent = silent_connections([127, 0, 0, 5].into(), port, 1200).await;
        let closed_at_once = closed_by_server(&mut silent[256..], Duration::from_secs(3)).await;
        assert_eq!(closed_at_once, 1200 - 256, "sockets past the cap were kept");
        let closed_later = closed_by_server(&mut silent[..256], Duration::from_secs(40)).await;
        assert_eq!(closed_later, 256, "silent sockets kept their slots");
    });
    assert_eq!(Cluster::http_status(port, "/healthz"), Some(200));
}

/// A worker that floods its session with progress reports costs the store no more than one
/// that reports every second: reports that come sooner than the session's interval are folded
/// into the next, and the newest one still wins.
#[test]
fn a_flood_of_progress_reports_is_folded_and_the_newest_wins() {
    let _serial = serial();
    let (s3, _) = seeded_server();
    let cluster = Cluster::start(&s3.endpoint(), 30);
    let url = cluster.coordinator_url(0);
    let runtime = runtime();
    runtime.block_on(async {
        let mut client = WorkerClient::new(grpc_channel(&url, None).await);
        let (reports, outbound) = tokio::sync::mpsc::channel(512);
        let report = |held: u32| pb::WorkerReport {
            worker: "flooder".into(),
            leases_held: held,
            ..Default::default()
        };
        reports.send(report(0)).await.unwrap();
        let _session = client
            .worker_session(ReceiverStream::new(outbound))
            .await
            .unwrap();
        let started = Instant::now();
        for held in 1..=400 {
            reports.send(report(held % 250)).await.unwrap();
        }
        let sent_in = started.elapsed();
        // The newest report (400 % 250 = 150) is stored within the interval.
        wait_until(
            Duration::from_secs(5),
            "the newest report to be stored",
            || {
                cluster.status(0, None)["workers"]
                    .as_array()
                    .and_then(|workers| workers.iter().find(|w| w["name"] == "flooder"))
                    .is_some_and(|w| w["leases_held"] == 150)
            },
        );
        let folded = cluster
            .coordinator_metric(0, "era5_worker_reports_coalesced_total")
            .unwrap_or(0.0);
        // At most one report stored per 500 ms while they came, plus the first and the last.
        let stored_at_most = 3.0 + (sent_in.as_millis() / 500) as f64;
        assert!(
            folded >= 400.0 - stored_at_most,
            "{folded} of 400 reports folded in {sent_in:?}"
        );
        drop(reports);
    });
}

/// `--max-leases-per-worker` bounds what one worker holds, whatever it asks for: at the cap an
/// Acquire answers nothing (not an error) for that worker, another worker is still served, and
/// a completion frees a slot.
#[test]
fn a_worker_is_granted_no_more_than_the_coordinators_lease_cap() {
    let _serial = serial();
    let (s3, _) = seeded_server();
    let cluster = Cluster::start_with_coordinator_flags(
        &s3.endpoint(),
        30,
        &["--lease-objects", "1", "--max-leases-per-worker", "3"],
    );
    cluster.submit(PRODUCTS, "", "2023-12", "2024-04");
    let url = cluster.coordinator_url(0);
    runtime().block_on(async {
        let mut client = WorkerClient::new(grpc_channel(&url, None).await);
        let mut acquire = async |worker: &str| {
            client
                .acquire(pb::AcquireRequest {
                    worker: worker.into(),
                    max: 64,
                    ..Default::default()
                })
                .await
                .expect("acquire")
                .into_inner()
                .leases
        };
        let first = acquire("greedy").await;
        assert_eq!(first.len(), 3, "granted past the cap");
        assert!(acquire("greedy").await.is_empty(), "granted past the cap");
        assert_eq!(
            acquire("other").await.len(),
            3,
            "another worker was not served"
        );
        let lease = first[0].lease.clone();
        let mut worker = WorkerClient::new(grpc_channel(&url, None).await);
        worker
            .complete(pb::CompleteRequest {
                worker: "greedy".into(),
                lease,
                ..Default::default()
            })
            .await
            .expect("complete");
        assert_eq!(
            acquire("greedy").await.len(),
            1,
            "a completion freed no slot"
        );
    });
}
