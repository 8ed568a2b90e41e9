//! mTLS with roles, end to end: a whole job through TLS (gRPC and Redis), and every wrong
//! caller refused with the right code. Certificates are made in the test.

use std::time::Duration;

use proto::v1 as pb;
use proto::v1::operator_client::OperatorClient;
use proto::v1::worker_client::WorkerClient;
use tests::pki::{CertFiles, TestCa};

use super::support::cluster::{
    Cluster, REDIS_PASSWORD, grpc_channel, http_get, https_get, tls_alert,
};
use super::support::*;
use super::{LIMIT, leases, serial, state};

/// What a call came back with: its gRPC code, and the message with its sources.
fn outcome<T>(result: Result<tonic::Response<T>, tonic::Status>) -> (tonic::Code, String) {
    match result {
        Ok(_) => (tonic::Code::Ok, String::new()),
        Err(status) => {
            let mut message = status.message().to_string();
            if let Some(source) = std::error::Error::source(&status) {
                message.push_str(": ");
                message.push_str(&common::error::chain(source));
            }
            (status.code(), message)
        }
    }
}

/// Refused at the TLS layer: the call never reaches a service, and the client sees its
/// connection fail (which of these codes depends on when it notices).
fn refused_in_handshake(code: tonic::Code, message: &str, what: &str) {
    assert!(
        matches!(
            code,
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        "{what}: expected the connection to be refused, got {code:?}: {message}"
    );
}

#[test]
fn a_whole_job_runs_through_mtls_and_redis_over_tls_as_the_acl_user() {
    let _serial = serial();
    let (s3, seeded) = seeded_server();
    let mut cluster = Cluster::start_tls(&s3.endpoint(), 10);
    cluster.add_worker("w1", 0, &[]);
    cluster.add_worker("w2", 0, &[]);
    let (code, job) = cluster.submit_and_wait("e5.oper.an.sfc", "2023-12", "2024-04", LIMIT);
    assert_eq!(code, Some(0), "the job completes through TLS");
    let status = cluster.wait_final(&job, LIMIT);
    assert_eq!(state(&status), "complete", "{status:#}");
    assert_mirrored(&cluster.dest(), &under(&seeded, &["e5.oper.an.sfc/"]));
    // Workers are named by their certificates.
    let holders: std::collections::HashSet<String> = leases(&status)
        .iter()
        .map(|l| l["holder"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        holders.iter().all(|h| h == "w1" || h == "w2"),
        "{holders:?}"
    );

    // The HTTP port speaks https with the same certificate, and nothing in clear.
    let pki = cluster.pki.as_ref().unwrap();
    let port = cluster.coordinator_http[0];
    let (code, body) = https_get(port, "/healthz", &pki.server.ca).expect("https");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, _) = https_get(port, "/metrics", &pki.server.ca).expect("https");
    assert_eq!(code, 200);
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), None);

    // The coordinator ran as the deployment's era5 ACL user, which cannot do anything else.
    for forbidden in [
        &["FLUSHALL"][..],
        &["KEYS", "*"],
        &["CONFIG", "GET", "*"],
        &["SET", "not-era5", "x"],
        &["GET", "not-era5"],
        &["EVAL", "return 1", "0"],
    ] {
        let reply = cluster.redis.command_as("era5", REDIS_PASSWORD, forbidden);
        assert!(
            reply.starts_with("-NOPERM"),
            "{forbidden:?} was not refused: {reply}"
        );
    }
    assert_eq!(
        cluster
            .redis
            .command_as("era5", REDIS_PASSWORD, &["EXISTS", "era5:jobs"]),
        ":1"
    );
}

#[test]
fn every_wrong_caller_is_refused_with_the_right_code() {
    let (s3, _) = seeded_server();
    let cluster = Cluster::start_tls(&s3.endpoint(), 30);
    let pki = cluster.pki.as_ref().unwrap();
    let url = cluster.coordinator_url(0);
    let other_ca = TestCa::new(&cluster.scratch.dir.path().join("other-pki"), "other");
    let with_ca = |mut files: CertFiles| {
        // A client still checks the coordinator against the real CA.
        files.ca = pki.server.ca.clone();
        files
    };
    let alien = with_ca(other_ca.operator("admin"));
    let expired = pki.ca.expired_worker("late");
    let anonymous = pki.ca.client_with_uri("anonymous", None);
    let (worker_a, worker_b) = (pki.ca.worker("a"), pki.ca.worker("b"));
    let operator = pki.operator.clone();
    let job = cluster.submit("e5.oper.an.sfc", "2t", "2024-01", "2024-01");

    // A plaintext URL against this TLS coordinator: one line that says "transport error" once
    // and points to https:// (issue 23 §5).
    let plaintext = url.replacen("https://", "http://", 1);
    let output = era5(&cluster.scratch.home())
        .args(["status", "--coordinator", &plaintext])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("use an https:// URL"), "{stderr}");
    assert!(stderr.matches("transport error").count() <= 1, "{stderr}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let list = |identity: Option<CertFiles>, url: String| async move {
            let channel = grpc_channel(&url, identity.as_ref()).await;
            outcome(
                OperatorClient::new(channel)
                    .list_jobs(pb::ListJobsRequest { recent: 0 })
                    .await,
            )
        };
        // The operator may list jobs.
        assert_eq!(
            list(Some(operator.clone()), url.clone()).await.0,
            tonic::Code::Ok
        );

        // No client certificate: the handshake fails.
        let ca_only = tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(std::fs::read(&pki.server.ca).unwrap()),
        );
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .tls_config(ca_only)
            .unwrap()
            .connect_lazy();
        let (code, message) = outcome(
            OperatorClient::new(channel)
                .list_jobs(pb::ListJobsRequest { recent: 0 })
                .await,
        );
        refused_in_handshake(code, &message, "no client certificate");

        // A certificate from another CA, and an expired one: the handshake fails.
        let (code, message) = list(Some(alien.clone()), url.clone()).await;
        refused_in_handshake(code, &message, "a certificate from another CA");
        let (code, message) = list(Some(expired.clone()), url.clone()).await;
        refused_in_handshake(code, &message, "an expired certificate");

        // A certificate without an era5 identity: authenticated by TLS, unknown to era5.
        let (code, message) = list(Some(anonymous), url.clone()).await;
        assert_eq!(code, tonic::Code::Unauthenticated, "{message}");

        // A worker calling the Operator API.
        let (code, message) = list(Some(worker_a.clone()), url.clone()).await;
        assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
        assert!(message.contains("only the Worker service"), "{message}");

        // An operator calling Acquire.
        let channel = grpc_channel(&url, Some(&operator)).await;
        let (code, message) = outcome(
            WorkerClient::new(channel)
                .acquire(pb::AcquireRequest {
                    worker: "a".into(),
                    max: 1,
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(code, tonic::Code::PermissionDenied, "{message}");

        // Worker A takes the lease, claiming in the body to be B: the certificate wins.
        let mut a = WorkerClient::new(grpc_channel(&url, Some(&worker_a)).await);
        let granted = a
            .acquire(pb::AcquireRequest {
                worker: "b".into(),
                max: u32::MAX,
                ..Default::default()
            })
            .await
            .expect("worker a acquires")
            .into_inner()
            .leases;
        assert_eq!(granted.len(), 1);
        let lease = granted[0].lease.clone();

        // Worker B can neither renew nor complete, fail or release A's lease, even naming A.
        let mut b = WorkerClient::new(grpc_channel(&url, Some(&worker_b)).await);
        let complete = b
            .complete(pb::CompleteRequest {
                lease: lease.clone(),
                worker: "a".into(),
                bytes: 0,
            })
            .await;
        let (code, message) = outcome(complete);
        assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
        let renew = b
            .renew(pb::RenewRequest {
                lease: lease.clone(),
                worker: "a".into(),
            })
            .await;
        assert_eq!(outcome(renew).0, tonic::Code::PermissionDenied);
        let release = b
            .release(pb::ReleaseRequest {
                lease: lease.clone(),
                worker: "a".into(),
            })
            .await;
        assert_eq!(outcome(release).0, tonic::Code::PermissionDenied);
        let fail = b
            .fail(pb::FailRequest {
                lease: lease.clone(),
                worker: "a".into(),
                reason: "sabotage".into(),
                permanent: true,
            })
            .await;
        assert_eq!(outcome(fail).0, tonic::Code::PermissionDenied);

        // Health is open to any certified peer.
        let mut health = tonic_health::pb::health_client::HealthClient::new(
            grpc_channel(&url, Some(&worker_b)).await,
        );
        let serving = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(
            serving,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );

        // A plaintext client against the TLS port.
        let plain = url.replace("https://", "http://");
        let (code, message) = list(None, plain).await;
        // Its HTTP/2 preface is not a TLS hello: the TLS layer's alert is not HTTP/2 either.
        assert!(
            matches!(
                code,
                tonic::Code::Internal
                    | tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
            ) && (message.contains("h2 protocol error") || message.contains("transport error")),
            "a plaintext client: got {code:?}: {message}"
        );

        // A is still the holder, nothing changed, and A can release its own lease.
        let released = a
            .release(pb::ReleaseRequest {
                lease,
                worker: String::new(),
            })
            .await
            .expect("a releases")
            .into_inner()
            .status;
        assert_eq!(released, pb::LeaseStatus::Ok as i32);
    });
    // Which TLS alert each refusal is, from a raw handshake.
    let port = cluster.coordinators[0].1;
    let ca = &pki.server.ca;
    for (client, alert) in [
        (None, "CertificateRequired"),
        (Some(&alien), "UnknownCA"),
        (Some(&expired), "CertificateExpired"),
    ] {
        let said = tls_alert(port, client, ca);
        assert!(said.contains(alert), "expected {alert}, got: {said}");
    }
    assert!(
        tls_alert(port, Some(&operator), ca).starts_with("accepted"),
        "a good certificate is accepted"
    );

    let status = cluster.status(0, Some(&job));
    let lease = &leases(&status)[0];
    assert_eq!(
        (lease["state"].as_str(), lease["attempts"].as_u64()),
        (Some("pending"), Some(0)),
        "B's calls changed nothing: {status:#}"
    );

    // The CLI: https without TLS files is bad input; so is http with them; a plaintext
    // client against the TLS port fails to connect.
    let home = cluster.scratch.home();
    let run = |args: &[&str]| {
        let output = era5(&home).args(args).output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let (code, stderr) = run(&["status", "--coordinator", &url]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("https:// needs --tls-ca"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let cert = pki.operator.cert.display().to_string();
    let key = pki.operator.key.display().to_string();
    let (code, stderr) = run(&[
        "jobs",
        "--coordinator",
        &url,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("missing --tls-ca"), "{stderr}");
    let mut flags = pki.operator.flags();
    flags.splice(
        0..0,
        [
            "jobs".into(),
            "--coordinator".into(),
            url.replace("https", "http"),
        ],
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (code, stderr) = run(&flags);
    assert_eq!(code, Some(2), "http with TLS files: {stderr}");
    let (code, stderr) = run(&["jobs", "--coordinator", &url.replace("https://", "http://")]);
    assert_eq!(code, Some(1), "{stderr}");
    // A worker certificate in an operator command: the coordinator refuses, exit 2.
    let mut flags = worker_b.flags();
    flags.splice(0..0, ["jobs".into(), "--coordinator".into(), url.clone()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (code, stderr) = run(&flags);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("only the Worker service"), "{stderr}");
    // An operator certificate cannot run a worker.
    let dest = cluster.dest().display().to_string();
    let mut flags = pki.operator.flags();
    flags.splice(
        0..0,
        [
            "worker".into(),
            "--coordinator".into(),
            url.clone(),
            "--dest".into(),
            dest,
        ],
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (code, stderr) = run(&flags);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not a worker's certificate"), "{stderr}");
}

#[test]
fn plaintext_is_served_only_on_loopback_unless_asked_for() {
    let scratch = Scratch::new();
    let run = |args: &[&str]| {
        let output = era5(&scratch.home()).args(args).output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let redis = ["--redis", "redis://127.0.0.1:1/"];
    let (code, stderr) = run(&[&["coordinator", "--listen", "0.0.0.0:0"][..], &redis].concat());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("--insecure-plaintext"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let (code, stderr) = run(&[
        &[
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "c.pem",
        ][..],
        &redis,
    ]
    .concat());
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("missing --tls-key and --tls-ca"),
        "{stderr}"
    );
    // With --insecure-plaintext it starts (and stops on SIGTERM).
    let log = scratch.dir.path().join("insecure.log");
    let mut command = era5(&scratch.home());
    command
        .args([
            "coordinator",
            "--listen",
            "0.0.0.0:0",
            "--insecure-plaintext",
        ])
        .args(redis)
        .env("RUST_LOG", "info");
    let mut coordinator = super::support::cluster::Proc::spawn(command, log.clone());
    wait_until(Duration::from_secs(20), "the coordinator to start", || {
        coordinator.log_text().contains("coordinator started")
    });
    assert_eq!(coordinator.terminate(Duration::from_secs(10)), Some(0));
}

/// `--trust-domain` pins the identities the coordinator accepts: with another domain pinned,
/// the operator's certificate (spiffe://era5.test/...), though the CA signed it, is refused
/// with PERMISSION_DENIED naming both domains; with its own domain pinned it is served. The
/// flag without TLS, or with a malformed domain, is refused at start.
#[test]
fn a_pinned_trust_domain_refuses_identities_of_any_other() {
    let _serial = serial();
    let (s3, _) = seeded_server();
    let mut cluster = Cluster::start_tls(&s3.endpoint(), 10);
    let status = |cluster: &Cluster| {
        cluster
            .operator("status", 0)
            .output()
            .expect("run era5 status")
    };
    cluster.coordinator_flags = vec!["--trust-domain".into(), "elsewhere.example".into()];
    cluster.restart_coordinator(0);
    let refused = status(&cluster);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "served an identity of another trust domain"
    );
    assert!(
        stderr.contains("era5.test") && stderr.contains("elsewhere.example"),
        "{stderr}"
    );
    cluster.coordinator_flags = vec!["--trust-domain".into(), "era5.test".into()];
    cluster.restart_coordinator(0);
    let served = status(&cluster);
    assert!(
        served.status.success(),
        "{}",
        String::from_utf8_lossy(&served.stderr)
    );

    let scratch = Scratch::new();
    for (flags, why) in [
        (vec!["--trust-domain", "era5.test"], "--tls-cert"),
        (
            vec!["--trust-domain", "Bad Domain"],
            "expected a SPIFFE trust domain",
        ),
    ] {
        let mut args: Vec<String> = vec![
            "coordinator".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--redis".into(),
            cluster.redis_url.clone(),
        ];
        if why != "--tls-cert" {
            let pki = cluster.pki.as_ref().unwrap();
            args.extend(pki.server.flags());
        }
        args.extend(flags.iter().map(ToString::to_string));
        let run = run_era5(&scratch, &args, LIMIT);
        assert_eq!(run.code, Some(2), "{}", run.stderr);
        assert!(
            run.stderr.contains("--trust-domain") && run.stderr.contains(why),
            "{}",
            run.stderr
        );
    }
}

/// A worker whose certificate is renewed on disk (as cert-manager's CSI driver does) uses the
/// new one without a restart: it starts with an expired certificate, which the coordinator
/// refuses, and once valid files replace it the worker connects and completes a job.
#[test]
fn a_renewed_worker_certificate_is_used_without_a_restart() {
    let _serial = serial();
    let (s3, seeded) = seeded_server();
    let mut cluster = Cluster::start_tls(&s3.endpoint(), 10);
    let pki = cluster.pki.as_ref().unwrap();
    let expired = pki.ca.expired_worker("renewed");
    let valid = pki.ca.worker("renewed");
    let dir = cluster.scratch.dir.path().join("worker-tls");
    std::fs::create_dir_all(&dir).unwrap();
    let files = CertFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        ca: dir.join("ca.crt"),
    };
    let install = |from: &CertFiles| {
        // As the CSI driver does: whole files, swapped in.
        for (source, target) in [
            (&from.cert, &files.cert),
            (&from.key, &files.key),
            (&from.ca, &files.ca),
        ] {
            let staged = target.with_extension("new");
            std::fs::copy(source, &staged).unwrap();
            std::fs::rename(&staged, target).unwrap();
        }
    };
    install(&expired);
    let url = cluster.coordinator_url(0);
    cluster.add_worker_with("renewed", &url, Some(&files), &["--tls-reload-every", "1"]);
    let job = cluster.submit("e5.oper.an.sfc", "", "2023-12", "2024-04");
    wait_until(
        Duration::from_secs(20),
        "the expired certificate to be refused",
        || cluster.worker("renewed").log_text().contains("unreachable"),
    );
    assert_eq!(
        cluster.status(0, Some(&job))["jobs"][0]["leases"]["done"].as_u64(),
        Some(0),
        "a worker with an expired certificate was served"
    );
    install(&valid);
    let status = cluster.wait_final(&job, LIMIT);
    assert_eq!(state(&status), "complete", "{status:#}");
    assert_mirrored(&cluster.dest(), &under(&seeded, &["e5.oper.an.sfc/"]));
    assert!(
        cluster
            .worker("renewed")
            .log_text()
            .contains("client certificate renewed")
    );
}
