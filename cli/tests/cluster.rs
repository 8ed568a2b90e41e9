//! The cluster end to end, with real processes: redis-server, `era5 coordinator`s and
//! `era5 worker`s from the built binary, and the test S3 server with its fault layer. Every
//! scenario checks the job's final state and a byte-identical mirror.
//!
//! Scenarios run one at a time (they are process-heavy, and lease timing must not depend on
//! how loaded the two cores are).

mod support;

use std::time::Duration;

use proto::v1 as pb;
use proto::v1::worker_client::WorkerClient;
use support::cluster::{Cluster, REDIS_PASSWORD, acl_redis_options};
use support::*;
use tests::faults::{Fault, FaultRule};
use tests::redis_server::{RedisOptions, RedisServer};

const LIMIT: Duration = Duration::from_secs(90);
const PRODUCTS: &str = "e5.oper.an.sfc,e5.oper.an.pl,e5.oper.fc.sfc.accumu";

/// Every object of the standard selection (Dec 2023 to Apr 2024 of three products), by the
/// catalog's own rule.
fn selected(seeded: &[SeededObject]) -> Vec<&SeededObject> {
    selected_from(seeded, PRODUCTS)
}

fn leases(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status["leases"].as_array().cloned().unwrap_or_default()
}

fn state(status: &serde_json::Value) -> String {
    status["jobs"][0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn three_workers_complete_a_job() {
    let _serial = serial();
    let (s3, seeded) = seeded_server();
    // Slow enough that a worker holding its two leases leaves work for the others.
    slow_bodies(&s3, 4 << 20);
    let mut cluster = Cluster::start(&s3.endpoint(), 10);
    for name in ["w1", "w2", "w3"] {
        cluster.add_worker(name, 0, &[]);
    }
    wait_until(Duration::from_secs(20), "three workers heard from", || {
        cluster.status(0, None)["workers"]
            .as_array()
            .map_or(0, Vec::len)
            == 3
    });
    // A healthy start warns of nothing (issue 23 §5: the store's connection being made at
    // start read as two warnings).
    let started = cluster.coordinators[0].0.log_text();
    assert!(
        started.contains("lease store reachable") && !started.contains(" WARN "),
        "{started}"
    );
    let (code, job) = cluster.submit_and_wait(PRODUCTS, "2023-12", "2024-04", LIMIT);
    assert_eq!(
        code,
        Some(0),
        "submit --wait exits 0 when the job completes"
    );
    let status = cluster.wait_final(&job, LIMIT);
    assert_eq!(state(&status), "complete", "{status:#}");
    assert_mirrored(&cluster.dest(), &selected(&seeded));
    assert!(leases(&status).len() >= 3);
    let holders: std::collections::HashSet<String> = leases(&status)
        .iter()
        .map(|l| l["holder"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(holders.len() >= 2, "one worker did everything: {holders:?}");
    // Workers report metrics through their session streams.
    let workers = status["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3);
}

/// Workers with an `s3://` destination copy a job into an object store (issue 22 §1), and a
/// copy of a newer version already at a key is never replaced by an older one: the item that
/// finds it ends superseded and the job completes.
#[test]
fn workers_copy_a_job_into_an_object_store_never_over_a_newer_version() {
    let _serial = serial();
    let (s3, seeded) = seeded_server();
    let dest = TestS3::start("era5-copy");
    let (cluster, _) = copy_into_store(&s3, &dest, &selected(&seeded), PRODUCTS, 2);
    assert!(
        std::fs::read_dir(cluster.dest()).map_or(true, |mut d| d.next().is_none()),
        "a worker with an s3:// destination wrote into the directory"
    );
}

/// A destination without conditional writes (older MinIO, Ceph) answers them 501: the workers
/// say so once, complete without conditions, and the look before each write still keeps the
/// newer copy.
#[test]
fn workers_copy_into_a_store_without_conditional_writes() {
    let _serial = serial();
    let (s3, seeded) = seeded_server();
    let dest = TestS3::start("era5-copy");
    dest.set_refuse_conditional_writes(true);
    let product = "e5.oper.an.sfc";
    let (mut cluster, _) =
        copy_into_store(&s3, &dest, &selected_from(&seeded, product), product, 1);
    let log = cluster.worker("w1").log_text();
    assert_eq!(
        log.matches("does not implement conditional writes").count(),
        1,
        "{log}"
    );
}

/// Workers (`workers` of them) with an `s3://` destination copy `products` into `dest`, where
/// the first of `selected` already has a copy of a newer source version, which must stay.
/// Every other object arrives exact, and no upload is left open.
fn copy_into_store(
    s3: &TestS3,
    dest: &TestS3,
    selected: &[&SeededObject],
    products: &str,
    workers: usize,
) -> (Cluster, String) {
    let newer = &selected[0].key;
    let newer_copy = bytes::Bytes::from_static(b"a copy of a newer version");
    dest.put_object_with(
        &format!("m/{newer}"),
        newer_copy.clone(),
        tests::s3_server::PutOptions {
            metadata: [(
                "era5-source-last-modified".to_string(),
                "2099-01-01T00:00:00Z".to_string(),
            )]
            .into(),
            ..Default::default()
        },
    );
    let mut cluster = Cluster::start(&s3.endpoint(), 10);
    cluster.worker_dest = Some(
        [
            "--dest",
            "s3://era5-copy/m",
            "--dest-endpoint",
            &dest.endpoint(),
        ]
        .map(String::from)
        .to_vec(),
    );
    let url = cluster.coordinator_url(0);
    let keys = [
        ("AWS_ACCESS_KEY_ID", tests::s3_server::ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", tests::s3_server::SECRET_KEY),
    ];
    for name in ["w1", "w2", "w3"].into_iter().take(workers) {
        cluster.add_worker_with_env(name, &url, &[], &keys);
    }
    let (code, job) = cluster.submit_and_wait(products, "2023-12", "2024-04", LIMIT);
    let status = cluster.wait_final(&job, LIMIT);
    assert_eq!(code, Some(0), "{status:#}");
    for object in selected {
        let stored = dest
            .object(&format!("m/{}", object.key))
            .unwrap_or_else(|| panic!("{} missing in the destination", object.key));
        if &object.key == newer {
            assert!(stored.data == newer_copy, "the newer copy was replaced");
        } else {
            assert!(stored.data == object.data, "{} differs", object.key);
        }
    }
    assert_eq!(dest.keys().len(), selected.len(), "{:?}", dest.keys());
    assert!(dest.uploads().is_empty(), "an upload was left open");
    (cluster, job)
}

/// While the workers that did a job still run, `era5 audit` and `era5 verify` see what they
/// verified: their journals are appended by a timer, not only at exit (issue 21 §7).
#[test]
fn audit_and_verify_see_what_live_workers_verified() {
    let _serial = serial();
    let (s3, seeded) = seeded_server();
    let mut cluster = Cluster::start(&s3.endpoint(), 10);
    cluster.add_worker("w1", 0, &[]);
    let (code, job) = cluster.submit_and_wait("e5.oper.an.sfc", "2023-12", "2024-04", LIMIT);
    assert_eq!(code, Some(0));
    assert_eq!(state(&cluster.wait_final(&job, LIMIT)), "complete");
    let done: Vec<_> = seeded
        .iter()
        .filter(|o| o.key.starts_with("e5.oper.an.sfc/"))
        .filter(|o| cluster.dest().join(&o.key).exists())
        .collect();
    assert!(!done.is_empty());
    let scratch = Scratch::new();
    let dest = cluster.dest().display().to_string();
    let audit: Vec<String> = [
        "audit",
        "--product",
        "e5.oper.an.sfc",
        "--start",
        "2023-12",
        "--end",
        "2024-04",
        "--dest",
        &dest,
        "--endpoint",
        &s3.endpoint(),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    // The journal's batch interval is 2 s: well within 10 s every record is there.
    let mut last = String::new();
    wait_until(
        Duration::from_secs(10),
        "audit to pass while the worker runs",
        || {
            let run = run_era5(&scratch, &audit, LIMIT);
            last = format!("{}{}", run.stdout, run.stderr);
            run.code == Some(0)
        },
    );
    let verify: Vec<String> = ["verify", "--dest", &dest]
        .iter()
        .map(ToString::to_string)
        .collect();
    let run = run_era5(&scratch, &verify, LIMIT);
    run.expect_code(0);
    assert!(!run.stdout.contains("nothing to verify"), "{}", run.stdout);
    // The worker was alive throughout: nothing was flushed by its exit.
    assert!(
        cluster.worker("w1").is_running(),
        "the worker had exited: {last}"
    );
}

#[test]
fn a_killed_workers_lease_is_granted_again_after_expiry() {
    let _serial = serial();
    let (s3, seeded) = seeded_server();
    slow_bodies(&s3, 2 << 20);
    let mut cluster = Cluster::start(&s3.endpoint(), 2);
    cluster.add_worker("victim", 0, &[]);
    let job = cluster.submit("e5.oper.an.sfc", "", "2023-12", "2024-04");
    cluster.wait_for(&job, LIMIT, "the victim to hold a lease", |s| {
        leases(s)
            .iter()
            .any(|l| l["state"] == "leased" && l["holder"] == "victim")
    });
    wait_until(LIMIT, "the victim to start writing", || {
        !temp_files(&cluster.dest()).is_empty()
    });
    cluster.worker("victim").kill9();
    cluster.add_worker("rescuer", 0, &[]);
    let status = cluster.wait_final(&job, LIMIT);
    assert_eq!(state(&status), "complete", "{status:#}");
    assert!(
        leases(&status)
            .iter()
            .any(|l| l["epoch"].as_u64() >= Some(2)),
        "no lease was re-granted after expiring: {status:#}"
    );
    // The victim was killed, out of contact when its renewals fell due: its expiries are not
    // held against the items (outages and crashes never make an item poison).
    assert!(
        leases(&status)
            .iter()
            .all(|l| l["expiries"].as_u64() == Some(0)),
        "a killed holder's expiry was counted: {status:#}"
    );
    let surface = under(&seeded, &["e5.oper.an.sfc/"]);
    assert_mirrored(&cluster.dest(), &surface);

    // Hand-over: with the workers gone, `era5 sync` of the same selection takes the DEST. It
    // trusts the workers' verified files (no body is fetched again) and sweeps the victim's
    // abandoned lease temporaries, which no later grant could ever resume.
    assert_eq!(cluster.worker("rescuer").terminate(LIMIT), Some(0));
    let abandoned = temp_files(&cluster.dest());
    assert!(
        !abandoned.is_empty()
            && abandoned
                .iter()
                .all(|p| p.parent().unwrap().ends_with("leases")),
        "the victim's partial files should be left, under tmp/leases: {abandoned:?}"
    );
    let gets = |s3: &tests::s3_server::TestS3| -> Vec<usize> {
        surface.iter().map(|o| s3.get_count(&o.key)).collect()
    };
    let gets_before = gets(&s3);
    let args = sync_args(
        &s3.endpoint(),
        &cluster.dest(),
        "e5.oper.an.sfc",
        "",
        "2023-12",
        "2024-04",
    );
    run_era5(&cluster.scratch, &args, LIMIT).expect_code(0);
    assert_eq!(gets(&s3), gets_before, "the sync fetched objects again");
    assert_eq!(
        temp_files(&cluster.dest()),
        Vec::<std::path::PathBuf>::new()
    );
    assert_mirrored(&cluster.dest(), &surface);
}

#[test]
fn a_stopped_worker_cannot_complete_its_stale_lease() {
    let _serial = serial();
    let (s3, seeded) = seeded_server();
    // The sleeper's first body stalls (far short of its 30 s stall timeout), so it is surely
    // mid-download when stopped; the next GET, the awake worker's, is served normally. A fast
    // sleeper could otherwise finish and promote before the stop, and the test would not test.
    s3.add_fault(FaultRule {
        method: Some(http::Method::GET),
        key_contains: Some("_2t.".into()),
        object_gets_only: false,
        query_contains: None,
        operation: None,
        skip: 0,
        times: Some(1),
        fault: Fault::StallBody { after_bytes: 1024 },
    });
    let mut cluster = Cluster::start(&s3.endpoint(), 2);
    cluster.add_worker("sleeper", 0, &[]);
    // One lease only (a single object).
    let job = cluster.submit("e5.oper.an.sfc", "2t", "2024-01", "2024-01");
    cluster.wait_for(&job, LIMIT, "the sleeper to hold the lease", |s| {
        leases(s).iter().any(|l| l["holder"] == "sleeper")
    });
    let object = under(&seeded, &["e5.oper.an.sfc/202401/"])
        .into_iter()
        .find(|o| o.key.contains("_2t."))
        .unwrap();
    // Its GET is the one that stalls; stopping it before then would stall the awake one.
    wait_until(LIMIT, "the sleeper's GET", || s3.get_count(&object.key) > 0);
    cluster.worker("sleeper").stop();
    std::thread::sleep(Duration::from_secs(3)); // past the 2 s lease: it must expire
    cluster.add_worker("awake", 0, &[]);
    let status = cluster.wait_final(&job, LIMIT);
    assert_eq!(state(&status), "complete");
    let lease = &leases(&status)[0];
    assert_eq!(lease["holder"], "awake", "{status:#}");
    assert!(lease["epoch"].as_u64() >= Some(2));

    // Woken up, the sleeper's grant is stale: its renewal or completion is refused and it
    // stops that work; the one final file is the right one.
    cluster.worker("sleeper").cont();
    let sleeper_log = cluster
        .workers
        .iter()
        .find(|(n, _)| n == "sleeper")
        .unwrap()
        .1
        .log
        .clone();
    wait_until(
        Duration::from_secs(20),
        "the sleeper to notice its lease is lost",
        || {
            let log = std::fs::read_to_string(&sleeper_log).unwrap_or_default();
            // Self-fenced or refused on renewal ("lease lost"), or a refused completion:
            // LeaseLost, or AlreadyDone when the awake worker's grant finished first.
            log.contains("lease lost")
                || log.contains("LeaseLost")
                || log.contains("AlreadyDone")
                || log.contains("self-fencing")
        },
    );
    // Whatever the sleeper does, the coordinator refuses its grant: a Complete or Renew sent
    // now with the sleeper's lease id and epoch is not OK.
    let grant = stale_grant(&std::fs::read_to_string(&sleeper_log).unwrap());
    let url = cluster.coordinator_url(0);
    let (completed, renewed) = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut client = WorkerClient::connect(url).await.unwrap();
        let completed = client
            .complete(pb::CompleteRequest {
                lease: Some(grant.clone()),
                worker: "sleeper".into(),
                bytes: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        let renewed = client
            .renew(pb::RenewRequest {
                lease: Some(grant),
                worker: "sleeper".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        (completed, renewed)
    });
    assert_eq!(completed, pb::LeaseStatus::AlreadyDone as i32);
    assert_ne!(
        renewed,
        pb::LeaseStatus::Ok as i32,
        "a stale grant was renewed"
    );

    assert_mirrored(&cluster.dest(), &[object]);
    assert_eq!(mirrored_keys(&cluster.dest()), vec![object.key.clone()]);
    let status = cluster.status(0, Some(&job));
    assert_eq!(state(&status), "complete");
    assert_eq!(leases(&status)[0]["holder"], "awake");
}

/// The first grant a worker logged (its debug line "lease id": job, item, lease id, epoch).
fn stale_grant(log: &str) -> pb::LeaseRef {
    let line = log
        .lines()
        .find(|l| l.contains("lease id") && l.contains("DEBUG"))
        .expect("no grant in the log");
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .to_string()
    };
    pb::LeaseRef {
        job_id: field("job"),
        item_id: field("item"),
        lease_id: field("lease"),
        epoch: field("epoch").parse().unwrap(),
    }
}

/// Two workers on a job over several products, bodies slowed so that it lasts long enough to
/// break something under it. The server is returned so that it lives as long as the test.
fn two_workers_on_a_slow_job() -> (TestS3, Vec<SeededObject>, Cluster, String) {
    let (s3, seeded) = seeded_server();
    slow_bodies(&s3, 4 << 20);
    let mut cluster = Cluster::start(&s3.endpoint(), 5);
    cluster.add_worker("w1", 0, &[]);
    cluster.add_worker("w2", 0, &[]);
    let job = cluster.submit(PRODUCTS, "", "2023-12", "2024-04");
    (s3, seeded, cluster, job)
}

#[test]
fn a_coordinator_killed_and_restarted_mid_job_does_not_stop_the_workers() {
    let _serial = serial();
    let (_s3, seeded, mut cluster, job) = two_workers_on_a_slow_job();
    cluster.wait_for(&job, LIMIT, "work under way", |s| {
        s["jobs"][0]["leases"]["leased"].as_u64() > Some(0)
    });
    cluster.restart_coordinator(0);
    let status = cluster.wait_final(&job, LIMIT);
    assert_eq!(state(&status), "complete", "{status:#}");
    assert_mirrored(&cluster.dest(), &selected(&seeded));
}

#[test]
fn redis_killed_and_restarted_from_its_aof_mid_job() {
    let _serial = serial();
    let (_s3, seeded, mut cluster, job) = two_workers_on_a_slow_job();
    cluster.wait_for(&job, LIMIT, "some lease done", |s| {
        s["jobs"][0]["leases"]["done"].as_u64() > Some(0)
    });
    cluster.redis.kill();
    std::thread::sleep(Duration::from_millis(500));
    cluster.redis.restart();
    let status = cluster.wait_final(&job, LIMIT);
    assert_eq!(state(&status), "complete", "{status:#}");
    assert_mirrored(&cluster.dest(), &selected(&seeded));
}

/// Copies the files of `from` (not recursively into symlinks) to `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// When each "lease granted" line of `log` was written.
fn grant_times(log: &str) -> Vec<jiff::Timestamp> {
    log.lines()
        .filter(|line| line.contains("lease granted"))
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Redis with `appendfsync everysec` loses the writes it had not yet flushed when it crashes;
/// here it comes back with the state of an AOF copied before the first grant, so it has
/// forgotten the grants its first worker still works on. Nothing of the job is granted for a
/// lease TTL after the restart, so no item has two holders at once: the first worker's
/// renewals are refused and it stops; then the job completes exactly.
#[test]
fn redis_that_comes_back_older_grants_nothing_for_a_ttl() {
    let _serial = serial();
    let (s3, seeded) = seeded_server();
    slow_bodies(&s3, 2 << 20);
    let data = tempfile::tempdir().unwrap();
    let aof = data.path().join("redis");
    std::fs::create_dir_all(&aof).unwrap();
    let redis = RedisServer::start_with(RedisOptions {
        aof_dir: Some(aof.clone()),
        aof_everysec: true,
        ..acl_redis_options()
    });
    let url = redis.url_for("era5", REDIS_PASSWORD);
    let ttl = 6;
    let mut cluster = Cluster::start_with_redis_url(redis, url, &s3.endpoint(), ttl);
    let job = cluster.submit("e5.oper.an.sfc", "", "2023-12", "2024-04");
    // The job is in the AOF (flushed within a second), with every item pending.
    let in_aof = |dir: &std::path::Path| {
        files_under(dir).iter().any(|f| {
            std::fs::read(f).is_ok_and(|bytes| {
                let text = String::from_utf8_lossy(&bytes);
                text.contains(&format!("era5:{{{job}}}:meta")) && text.contains("run_id")
            })
        })
    };
    wait_until(Duration::from_secs(10), "the job to reach the AOF", || {
        in_aof(&aof)
    });
    let older = data.path().join("older");
    copy_dir(&aof, &older);
    cluster.add_worker("first", 0, &[]);
    cluster.wait_for(&job, LIMIT, "the first worker to hold a lease", |s| {
        leases(s)
            .iter()
            .any(|l| l["state"] == "leased" && l["holder"] == "first")
    });
    // The crash, and a Redis that comes back with the older state.
    cluster.redis.kill();
    std::fs::remove_dir_all(&aof).unwrap();
    copy_dir(&older, &aof);
    // Redis starts after this instant: no grant may come within a TTL of it.
    let restarted = jiff::Timestamp::now();
    cluster.redis.restart();
    let http = cluster.coordinator_http[0];
    wait_until(
        Duration::from_secs(10),
        "the coordinator to reach Redis again",
        || Cluster::http_status(http, "/readyz") == Some(200),
    );
    cluster.add_worker("second", 0, &[]);
    let status = cluster.wait_final(&job, LIMIT);
    assert_eq!(state(&status), "complete", "{status:#}");
    assert_mirrored(&cluster.dest(), &under(&seeded, &["e5.oper.an.sfc/"]));
    let first_grant_after = ["first", "second"]
        .iter()
        .flat_map(|name| grant_times(&cluster.worker(name).log_text()))
        .filter(|at| *at > restarted)
        .min()
        .expect("leases were granted after the restart");
    let waited = first_grant_after.duration_since(restarted);
    assert!(
        waited >= jiff::SignedDuration::from_secs(ttl as i64),
        "a lease was granted {waited:?} after Redis came back older, within the TTL"
    );
    assert!(
        cluster.coordinators[0]
            .0
            .log_text()
            .contains("holding new grants"),
        "the coordinator did not say why it held grants"
    );
}

#[test]
fn a_missing_object_kills_its_lease_with_the_reason_and_the_rest_completes() {
    let _serial = serial();
    let (s3, seeded) = seeded_server();
    let missing = under(&seeded, &["e5.oper.an.pl/"])[0].key.clone();
    s3.add_fault(FaultRule {
        method: Some(http::Method::GET),
        key_contains: Some(missing.clone()),
        object_gets_only: false,
        query_contains: None,
        operation: None,
        skip: 0,
        times: None,
        fault: Fault::Status {
            status: 404,
            code: "NoSuchKey".into(),
        },
    });
    let mut cluster = Cluster::start(&s3.endpoint(), 10);
    cluster.add_worker("w1", 0, &[]);
    cluster.add_worker("w2", 0, &[]);
    let (code, job) = cluster.submit_and_wait(PRODUCTS, "2023-12", "2024-04", LIMIT);
    assert_eq!(
        code,
        Some(1),
        "submit --wait exits 1 when a lease ends dead"
    );
    let status = cluster.wait_final(&job, LIMIT);
    assert_eq!(state(&status), "failed", "{status:#}");
    let dead: Vec<serde_json::Value> = leases(&status)
        .into_iter()
        .filter(|l| l["state"] == "dead")
        .collect();
    assert_eq!(dead.len(), 1, "{status:#}");
    let reason = dead[0]["last_error"].as_str().unwrap();
    assert!(reason.contains("404"), "{reason}");
    // Everything outside the dead lease is mirrored, byte for byte.
    let mirrored = mirrored_keys(&cluster.dest());
    let expected = selected(&seeded).len() - dead[0]["objects"].as_u64().unwrap() as usize;
    assert!(
        mirrored.len() >= expected,
        "{} mirrored, {expected} expected",
        mirrored.len()
    );
    let present: Vec<&SeededObject> = seeded
        .iter()
        .filter(|o| mirrored.contains(&o.key))
        .collect();
    assert_eq!(
        present.len(),
        mirrored.len(),
        "unexpected files: {mirrored:?}"
    );
    assert_mirrored(&cluster.dest(), &present);
    assert!(!cluster.dest().join(&missing).exists());
    // `status JOB` is a summary: counts, workers and the first dead leases with their reason,
    // never the whole lease list.
    let status_of = |extra: &[&str]| {
        let output = era5(&cluster.scratch.home())
            .args(["status", "--coordinator", &cluster.coordinator_url(0), &job])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let text = status_of(&[]);
    assert!(
        text.contains("DEAD LEASES") && text.contains("404"),
        "{text}"
    );
    let total_leases = status["jobs"][0]["leases"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum::<u64>();
    assert!(total_leases >= 3);
    let lease_rows = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()) && l.contains("e5.oper"))
            .count() as u64
    };
    assert_eq!(
        lease_rows(&text),
        1,
        "only the dead lease is listed: {text}"
    );
    let summary: serde_json::Value = serde_json::from_str(&status_of(&["--json"])).unwrap();
    assert!(summary.get("leases").is_none(), "{summary:#}");
    assert_eq!(summary["dead_leases"].as_array().unwrap().len(), 1);
    assert_eq!(summary["jobs"][0], status["jobs"][0]);
    // --leases pages through all of them (one per request here) in plan order; --state
    // filters.
    let paged: serde_json::Value =
        serde_json::from_str(&status_of(&["--leases", "--page-size", "1", "--json"])).unwrap();
    assert_eq!(paged["leases"], status["leases"]);
    assert_eq!(
        paged["leases"].as_array().unwrap().len() as u64,
        total_leases
    );
    let only_dead: serde_json::Value = serde_json::from_str(&status_of(&[
        "--state",
        "dead",
        "--page-size",
        "1",
        "--json",
    ]))
    .unwrap();
    assert_eq!(only_dead["leases"], serde_json::json!(dead));
    let text = status_of(&["--leases", "--page-size", "2"]);
    assert_eq!(lease_rows(&text), total_leases, "{text}");
    // Bad filters are refused with the bad value named.
    let bad = era5(&cluster.scratch.home())
        .args(["status", "--coordinator", &cluster.coordinator_url(0), &job])
        .args(["--state", "gone"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("gone"));
}

#[test]
fn sigterm_drains_a_worker_and_releases_without_counting_attempts() {
    let _serial = serial();
    let (s3, seeded) = seeded_server();
    slow_bodies(&s3, 1 << 20);
    let mut cluster = Cluster::start(&s3.endpoint(), 10);
    cluster.add_worker("leaving", 0, &[]);
    let job = cluster.submit("e5.oper.an.sfc", "", "2023-12", "2024-04");
    cluster.wait_for(&job, LIMIT, "the worker to hold leases", |s| {
        leases(s).iter().any(|l| l["holder"] == "leaving")
    });
    let code = cluster.worker("leaving").terminate(Duration::from_secs(20));
    assert_eq!(code, Some(0), "a drained worker exits 0");
    let status = cluster.status(0, Some(&job));
    assert_eq!(
        status["jobs"][0]["leases"]["leased"], 0,
        "leases were not released: {status:#}"
    );
    assert!(
        leases(&status).iter().all(|l| l["attempts"] == 0),
        "a release counted as an attempt: {status:#}"
    );
    cluster.add_worker("staying", 0, &[]);
    let status = cluster.wait_final(&job, LIMIT);
    assert_eq!(state(&status), "complete");
    assert_mirrored(&cluster.dest(), &under(&seeded, &["e5.oper.an.sfc/"]));
}

#[test]
fn two_coordinators_on_one_redis_never_grant_an_item_twice_at_once() {
    let _serial = serial();
    let (s3, seeded) = seeded_server();
    slow_bodies(&s3, 8 << 20);
    let mut cluster = Cluster::start(&s3.endpoint(), 10);
    cluster.add_coordinator(None);
    cluster.add_worker("a", 0, &[]);
    cluster.add_worker("b", 1, &[]);
    cluster.add_worker("c", 1, &[]);
    let job = cluster.submit(PRODUCTS, "", "2023-12", "2024-04");
    // Both coordinators serve the same state while the job runs.
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let (first, second) = (cluster.status(0, Some(&job)), cluster.status(1, Some(&job)));
        let live = |s: &serde_json::Value| {
            leases(s)
                .iter()
                .filter(|l| l["state"] == "leased")
                .map(|l| (l["lease"].to_string(), l["epoch"].to_string()))
                .collect::<Vec<_>>()
        };
        // Sampled one after the other, so only grants that exist in both views are compared.
        for (item, epoch) in live(&first) {
            if let Some((_, other)) = live(&second).into_iter().find(|(i, _)| *i == item) {
                assert!(other >= epoch, "epochs went back between coordinators");
            }
        }
        if state(&second) == "complete" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job did not complete: {second:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every grant (item, epoch) went to exactly one worker.
    let mut grants = std::collections::HashMap::new();
    for (name, process) in &cluster.workers {
        for line in process
            .log_text()
            .lines()
            .filter(|l| l.contains("lease granted"))
        {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix(&format!("{name}=")))
                    .map(str::to_string)
            };
            let key = (field("item"), field("epoch"));
            assert!(
                grants.insert(key.clone(), name.clone()).is_none(),
                "grant {key:?} given twice"
            );
        }
    }
    assert!(!grants.is_empty());
    assert_mirrored(&cluster.dest(), &selected(&seeded));
}

#[test]
fn without_redis_the_coordinator_is_not_ready_and_recovers_by_itself() {
    let _serial = serial();
    let (s3, _) = seeded_server();
    let mut cluster = Cluster::start(&s3.endpoint(), 10);
    // A second coordinator with an HTTP port for the probes.
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = cluster.scratch.dir.path().join("probe-coordinator.log");
    let mut command = era5(&cluster.scratch.home());
    command
        .args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--redis",
            &cluster.redis.url(),
        ])
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
    let mut coordinator = command.spawn().unwrap();
    wait_until(Duration::from_secs(20), "readyz to answer 200", || {
        Cluster::http_status(http_port, "/readyz") == Some(200)
    });

    cluster.redis.kill();
    wait_until(Duration::from_secs(20), "readyz to answer 503", || {
        Cluster::http_status(http_port, "/readyz") == Some(503)
    });
    assert_eq!(
        Cluster::http_status(http_port, "/healthz"),
        Some(200),
        "liveness does not depend on Redis"
    );
    let status = era5(&cluster.scratch.home())
        .args(["status", "--coordinator", &cluster.coordinator_url(0)])
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(
        stderr.contains("unavailable")
            || stderr.contains("Unavailable")
            || stderr.contains("redis"),
        "{stderr}"
    );

    cluster.redis.restart();
    wait_until(Duration::from_secs(30), "readyz to recover", || {
        Cluster::http_status(http_port, "/readyz") == Some(200)
    });
    assert!(
        coordinator.try_wait().unwrap().is_none(),
        "the coordinator died"
    );
    let _ = coordinator.kill();
    let _ = coordinator.wait();
}

/// Submitting is never silent either: an unmatched variable warns, and a selection that matches
/// nothing is refused with the reason read from the listing (exit 1), creating no job.
#[test]
fn submit_warns_about_unmatched_variables_and_refuses_an_empty_selection() {
    let _serial = serial();
    let (s3, _) = seeded_server();
    let cluster = Cluster::start(&s3.endpoint(), 30);
    let submit = |vars: &str, month: &str| {
        era5(&cluster.scratch.home())
            .args(["submit", "--coordinator", &cluster.coordinator_url(0)])
            .args(["--product", "e5.oper.an.sfc", "--var", vars])
            .args(["--start", month, "--end", month])
            .args(["--endpoint", &s3.endpoint(), "--bucket", BUCKET])
            .output()
            .expect("run era5 submit")
    };
    let partial = submit("2t,sp", "2024-01");
    let stderr = String::from_utf8_lossy(&partial.stderr);
    assert!(partial.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "era5: warning: variable sp matches no object of e5.oper.an.sfc in 2024-01-01..2024-01-31"
        ),
        "{stderr}"
    );
    let empty = submit("2t", "2026-01");
    let stderr = String::from_utf8_lossy(&empty.stderr);
    assert_eq!(empty.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("lies after the latest month the bucket holds, 2024-04"),
        "{stderr}"
    );
    let status = cluster.status(0, None);
    assert_eq!(
        status["jobs"].as_array().map(Vec::len),
        Some(1),
        "{status:#}"
    );
}
// Security, limits, partitions and start-up/shutdown scenarios, in this binary so they share
// its build; each file says what it covers.
#[path = "cluster/budget.rs"]
mod budget;
#[path = "cluster/failover.rs"]
mod failover;
#[path = "cluster/lifecycle.rs"]
mod lifecycle;
#[path = "cluster/limits.rs"]
mod limits;
#[path = "cluster/partitions.rs"]
mod partitions;
#[path = "cluster/security.rs"]
mod security;

/// `submit --follow`: a standing job. New and replaced objects are added as leases within two
/// passes and mirrored; the job's state lives in Redis, so it carries on after the coordinator
/// restarts; `cancel` stops it; the follow metrics count its passes.
#[test]
fn a_standing_job_mirrors_what_appears_survives_a_restart_and_stops_when_cancelled() {
    let _serial = serial();
    let (s3, _) = seeded_server();
    let mut cluster = Cluster::start(&s3.endpoint(), 10);
    cluster.add_worker("w1", 0, &[]);
    let output = cluster
        .operator("submit", 0)
        .args(["--product", "e5.oper.an.sfc", "--var", "2t"])
        .args([
            "--start",
            "2024-01",
            "--end",
            "latest",
            "--follow",
            "--interval",
            "1s",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let job = stdout.lines().last().unwrap().trim().to_string();
    let key = |month: &str, last: &str| {
        format!(
            "e5.oper.an.sfc/{month}/e5.oper.an.sfc.128_167_2t.ll025sc.{month}0100_{month}{last}23.nc"
        )
    };
    let dest = cluster.dest();
    let holds = |key: &str, data: &[u8]| std::fs::read(dest.join(key)).is_ok_and(|d| d == data);
    let original = s3.object(&key("202401", "31")).unwrap().data.to_vec();
    wait_until(LIMIT, "the first pass mirrored", || {
        holds(&key("202401", "31"), &original)
    });

    let follow = |cluster: &Cluster| cluster.status(0, Some(&job))["jobs"][0]["follow"].clone();
    let passes_before = follow(&cluster)["passes"].as_u64().unwrap();
    let new_key = key("202403", "31");
    let new_data = tests::fixtures::object_bytes(&new_key, 70_000);
    s3.put_object(&new_key, new_data.clone());
    let replaced = key("202402", "29");
    let replacement = tests::fixtures::object_bytes("final ERA5", 60_000);
    s3.put_object(&replaced, replacement.clone());
    wait_until(LIMIT, "the new and replaced objects mirrored", || {
        holds(&new_key, &new_data) && holds(&replaced, &replacement)
    });
    // The pass that added them, from the coordinator's log: within two passes.
    let log = cluster.coordinators[0].0.log_text();
    let adding_pass: u64 = log
        .lines()
        .filter(|l| l.contains("follow pass done") && l.contains("objects_added=2"))
        .find_map(|l| {
            l.split("pass=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no pass added the two objects:\n{log}"));
    assert!(
        adding_pass <= passes_before + 2,
        "added in pass {adding_pass}, injected after pass {passes_before}"
    );
    // Later passes compare with the newest item of each key: the replaced object is not added
    // again and again (each pass would otherwise see the first version's ETag and re-add it).
    wait_until(LIMIT, "three more passes", || {
        follow(&cluster)["passes"].as_u64().unwrap_or(0) >= adding_pass + 3
    });
    let log = cluster.coordinators[0].0.log_text();
    let pass_of = |line: &str| -> u64 {
        line.split("pass=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let re_added: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("follow pass done") && pass_of(l) > adding_pass)
        .filter(|l| !l.contains("objects_added=0"))
        .collect();
    assert!(
        re_added.is_empty(),
        "later passes added objects again: {re_added:#?}"
    );
    assert!(
        cluster
            .coordinator_metric(0, "era5_follow_passes_total{result=\"ok\"}")
            .unwrap()
            >= 1.0
    );
    wait_until(LIMIT, "the follow gauges", || {
        cluster
            .coordinator_metric(0, "era5_follow_last_success_timestamp_seconds")
            .is_some_and(|v| v > 1.7e9)
            && cluster.coordinator_metric(0, "era5_follow_interval_seconds") == Some(1.0)
    });

    // A restarted coordinator carries on with the standing job.
    cluster.restart_coordinator(0);
    let later = key("202405", "31");
    let later_data = tests::fixtures::object_bytes(&later, 50_000);
    s3.put_object(&later, later_data.clone());
    wait_until(LIMIT, "an object added after the restart mirrored", || {
        holds(&later, &later_data)
    });
    let text = cluster.operator("status", 0).arg(&job).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("standing job: a pass every 1s, next pass at "),
        "{text}"
    );

    let cancelled = cluster.operator("cancel", 0).arg(&job).output().unwrap();
    assert!(cancelled.status.success());
    let follow = follow(&cluster);
    assert_eq!(follow["next_check_unix_ms"], 0, "{follow}");
    let listed = cluster.status(0, None);
    let next = &listed["jobs"][0]["follow"]["next_check_unix_ms"];
    assert_eq!(next, 0, "{listed:#}");
}
