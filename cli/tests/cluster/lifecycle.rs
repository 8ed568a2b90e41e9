//! Start-up and shutdown in every state: Redis down at start (not ready, no panic, ready by
//! itself), SIGTERM within 10 s while waiting for Redis, with stderr closed by its reader or
//! full, with worker sessions open, and a worker that cannot reach its coordinator or holds
//! leases behind a partition. Also the README's TLS quick start with the dev CA script.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proto::v1 as pb;
use proto::v1::worker_client::WorkerClient;
use tests::proxy::{Blackhole, CountingProxy};
use tests::redis_server::{RedisOptions, RedisServer};
use tokio_stream::wrappers::ReceiverStream;

use super::support::cluster::{
    Cluster, Proc, REDIS_PASSWORD, acl_redis_options, grpc_channel, http_get, tail,
    wait_for_address,
};
use super::support::*;
use super::{LIMIT, leases};

/// Everything stops within this of SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// SIGTERM, then the exit code, failing unless the process is gone within [`STOP_WITHIN`].
fn stop(child: &mut std::process::Child, what: &str) -> Option<i32> {
    // SAFETY: signalling our own child.
    send_signal(child.id(), libc::SIGTERM);
    let sent = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if sent.elapsed() > STOP_WITHIN {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not stop within {STOP_WITHIN:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn health(url: &str) -> Option<i32> {
    let url = url.to_string();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let mut client =
                tonic_health::pb::health_client::HealthClient::new(grpc_channel(&url, None).await);
            client
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "era5.v1.Worker".into(),
                })
                .await
                .ok()
                .map(|r| r.into_inner().status)
        })
}

#[test]
fn redis_down_at_start_means_not_ready_until_it_comes_up_by_itself() {
    let scratch = Scratch::new();
    let redis_port = free_port();
    let log = scratch.dir.path().join("coordinator.log");
    let mut command = era5(&scratch.home());
    command
        .args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ])
        .args([
            "--redis",
            &format!("redis://era5:{REDIS_PASSWORD}@127.0.0.1:{redis_port}/"),
        ])
        .env("RUST_LOG", "info");
    let mut coordinator = Proc::spawn(command, log.clone());
    let grpc = wait_for_address(&log, "coordinator started", "grpc=");
    let http = wait_for_address(&log, "coordinator started", "http=");
    let url = format!("http://127.0.0.1:{grpc}");
    wait_until(Duration::from_secs(20), "readyz to say not ready", || {
        http_get(http, "/readyz").map(|r| r.0) == Some(503)
    });
    assert_eq!(http_get(http, "/healthz").map(|r| r.0), Some(200));
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    assert_eq!(health(&url), Some(not_serving));

    let _redis = RedisServer::start_with(RedisOptions {
        port: Some(redis_port),
        ..acl_redis_options()
    });
    wait_until(Duration::from_secs(30), "readyz to recover", || {
        http_get(http, "/readyz").map(|r| r.0) == Some(200)
    });
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    wait_until(
        Duration::from_secs(10),
        "gRPC health to say serving",
        || health(&url) == Some(serving),
    );
    assert!(
        !coordinator.log_text().contains("panicked"),
        "{}",
        tail(&log)
    );

    // With a worker session open, SIGTERM still stops it within the bound, cleanly.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _session = runtime.block_on(async {
        let mut client = WorkerClient::new(grpc_channel(&url, None).await);
        let (reports, outbound) = tokio::sync::mpsc::channel(1);
        reports
            .send(pb::WorkerReport {
                worker: "present".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let session = client
            .worker_session(ReceiverStream::new(outbound))
            .await
            .unwrap();
        (session, reports)
    });
    assert_eq!(coordinator.terminate(STOP_WITHIN), Some(0));
}

#[test]
fn sigterm_stops_a_coordinator_waiting_for_redis_whose_stderr_was_closed() {
    // era5 coordinator ... 2>&1 | head -5
    let scratch = Scratch::new();
    let (reader, writer) = std::io::pipe().unwrap();
    let mut coordinator = era5(&scratch.home())
        .args(["coordinator", "--listen", "127.0.0.1:0"])
        .args(["--redis", "redis://127.0.0.1:1/"])
        .env("RUST_LOG", "debug")
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .spawn()
        .unwrap();
    let mut head = Command::new("head")
        .arg("-5")
        .stdin(reader)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while head.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "head never got five lines");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Logging on into the closed pipe for a while must not break anything.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(stop(&mut coordinator, "the coordinator"), Some(0));
}

#[test]
fn sigterm_stops_a_coordinator_whose_stderr_is_full() {
    let scratch = Scratch::new();
    let (mut reader, mut writer) = std::io::pipe().unwrap();
    // Fill the pipe, so the coordinator's first write to stderr would block forever.
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    let flags = fcntl_getfl(&writer).unwrap();
    fcntl_setfl(&writer, flags | OFlags::NONBLOCK).unwrap();
    while writer.write(&[b'x'; 4096]).is_ok() {}
    fcntl_setfl(&writer, flags).unwrap();
    let mut coordinator = era5(&scratch.home())
        .args(["coordinator", "--listen", "127.0.0.1:0"])
        .args(["--redis", "redis://127.0.0.1:1/"])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(writer)
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(coordinator.try_wait().unwrap().is_none(), "it died");
    assert_eq!(stop(&mut coordinator, "the coordinator"), Some(0));
    let mut drained = Vec::new();
    let _ = reader.read_to_end(&mut drained);
}

#[test]
fn a_worker_stops_within_the_bound_whatever_its_coordinator_does() {
    let _serial = super::serial();
    let (s3, seeded) = seeded_server();
    slow_bodies(&s3, 256 << 10);
    let mut cluster = Cluster::start(&s3.endpoint(), 30);
    let upstream = format!("127.0.0.1:{}", cluster.coordinators[0].1)
        .parse()
        .unwrap();

    // A worker whose coordinator is blackholed from the start, its stderr read by `head -3`.
    let unreachable = CountingProxy::start(upstream);
    unreachable.blackhole(Blackhole::Both);
    let (reader, writer) = std::io::pipe().unwrap();
    let mut isolated = era5(&cluster.scratch.home())
        .args(["worker", "--coordinator", &unreachable.endpoint()])
        .arg("--dest")
        .arg(cluster.dest())
        .args(["--name", "isolated"])
        .env("RUST_LOG", "debug")
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .spawn()
        .unwrap();
    let mut head = Command::new("head")
        .arg("-3")
        .stdin(reader)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while head.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "head never got three lines");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stop(&mut isolated, "the isolated worker"), Some(0));

    // A worker holding leases when its coordinator vanishes: it tries to release them, but
    // not for longer than the bound.
    let partition = CountingProxy::start(upstream);
    cluster.add_worker_via("holder", &partition.endpoint(), &[]);
    let job = cluster.submit("e5.oper.an.sfc", "", "2023-12", "2024-04");
    cluster.wait_for(&job, LIMIT, "the holder to hold leases", |s| {
        leases(s).iter().any(|l| l["holder"] == "holder")
    });
    partition.blackhole(Blackhole::Both);
    let sent = Instant::now();
    assert_eq!(cluster.worker("holder").terminate(STOP_WITHIN), Some(0));
    assert!(sent.elapsed() < STOP_WITHIN);
    drop(seeded);
}

#[test]
fn the_readme_tls_quick_start_works_with_the_dev_certificate_script() {
    let scratch = Scratch::new();
    let certs = scratch.dir.path().join("certs");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dev-certs.sh");
    let made = Command::new(script).arg(&certs).arg("w1").output().unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let file = |name: &str| certs.join(name).display().to_string();
    let redis = RedisServer::start_with(acl_redis_options());
    let log = scratch.dir.path().join("coordinator.log");
    let mut command = era5(&scratch.home());
    command
        .args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ])
        .args(["--redis", &redis.url_for("era5", REDIS_PASSWORD)])
        .args([
            "--tls-cert",
            &file("coordinator.crt"),
            "--tls-key",
            &file("coordinator.key"),
        ])
        .args(["--tls-ca", &file("ca.crt")])
        .env("RUST_LOG", "info");
    let mut coordinator = Proc::spawn(command, log.clone());
    let url = format!(
        "https://127.0.0.1:{}",
        wait_for_address(&log, "coordinator started", "grpc=")
    );
    let mut command = era5(&scratch.home());
    command
        .args(["worker", "--coordinator", &url])
        .arg("--dest")
        .arg(scratch.dest())
        .args([
            "--tls-cert",
            &file("worker-w1.crt"),
            "--tls-key",
            &file("worker-w1.key"),
        ])
        .args(["--tls-ca", &file("ca.crt")])
        .env("RUST_LOG", "info");
    let mut worker = Proc::spawn(command, scratch.dir.path().join("worker.log"));
    let operator = [
        "--tls-cert",
        &file("operator.crt"),
        "--tls-key",
        &file("operator.key"),
        "--tls-ca",
        &file("ca.crt"),
    ];
    wait_until(Duration::from_secs(30), "the worker to report", || {
        let output = era5(&scratch.home())
            .args(["status", "--coordinator", &url, "--json"])
            .args(operator)
            .output()
            .unwrap();
        output.status.success()
            && serde_json::from_slice::<serde_json::Value>(&output.stdout)
                .is_ok_and(|s| s["workers"][0]["name"] == "w1")
    });
    assert_eq!(worker.terminate(STOP_WITHIN), Some(0));
    assert_eq!(coordinator.terminate(STOP_WITHIN), Some(0));
}

#[test]
fn credentials_in_urls_never_reach_errors() {
    let scratch = Scratch::new();
    const PASSWORD: &str = "p/a?s#s@w:o%2Frd-密";
    let output = era5(&scratch.home())
        .args(["coordinator", "--listen", "127.0.0.1:0"])
        .args([
            "--redis",
            &format!("redis://era5:{PASSWORD}@127.0.0.1:notaport/"),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("redis://era5:****@"), "{stderr}");
    for piece in [PASSWORD, "p/a", "o%2Frd", "o/rd"] {
        assert!(!stderr.contains(piece), "{piece} leaked: {stderr}");
    }
    let output = era5(&scratch.home())
        .args([
            "jobs",
            "--coordinator",
            &format!("http://admin:{PASSWORD}@127.0.0.1:1"),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("p/a?s"), "{stderr}");
}

#[test]
fn operator_commands_answer_json_that_matches_their_schemas() {
    let (s3, _) = seeded_server();
    let mut cluster = Cluster::start(&s3.endpoint(), 30);
    cluster.add_worker("w1", 0, &[]);
    let json = |args: &[&str]| -> serde_json::Value {
        let output = cluster
            .operator(args[0], 0)
            .args(&args[1..])
            .arg("--json")
            .output()
            .expect("run era5");
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {output:?}"))
    };
    let selection = [
        "--product",
        "e5.oper.an.sfc",
        "--var",
        "2t",
        "--start",
        "2024-01",
        "--end",
        "2024-01",
    ];
    let mut submit = vec!["submit", "--wait"];
    submit.extend(selection);
    let submitted = json(&submit);
    assert_schema("submit", &submitted);
    assert_eq!(submitted["state"], "complete", "{submitted}");
    let job = submitted["job"].as_str().expect("a job id").to_string();
    assert_schema("jobs", &json(&["jobs"]));
    for args in [
        vec!["status"],
        vec!["status", &job],
        vec!["status", &job, "--leases"],
    ] {
        assert_schema("status", &json(&args));
    }
    let retried = json(&["retry", &job]);
    assert_schema("retry", &retried);
    assert_eq!(retried["retried"], 0, "{retried}");
    assert_schema("drain", &json(&["drain", "w1"]));
    let mut standing = vec!["submit", "--follow"];
    standing.extend(selection);
    let standing = json(&standing);
    assert_schema("submit", &standing);
    let cancelled = json(&["cancel", standing["job"].as_str().expect("a job id")]);
    assert_schema("cancel", &cancelled);
}
