//! Cluster workers on shared storage, where stale holders, skewed clocks and a full disk meet:
//!
//! - **Stale holders cannot win**: a worker paused (SIGSTOP) between verification and rename,
//!   with its clock two hours behind (libfaketime), wakes after its lease was granted again and
//!   the object replaced upstream; it does not promote, the file is the current object, and a
//!   later `era5 sync` agrees without downloading anything.
//! - **Older bytes never replace newer ones**: a holder of an older version's item, frozen
//!   with a valid lease while an overlapping job's newer item completes, wakes and does not
//!   rename its verified older bytes over the newer file (the per-key version stamp).
//! - **A full disk** (a real tmpfs in a mount namespace): the worker releases its lease without
//!   counting an attempt, is not ready, reports `era5_dest_free_bytes` and
//!   `era5_local_io_errors_total{kind}`, takes no lease while the disk is full, and finishes
//!   the job by itself once there is room.
//! - **The sweeper uses the filesystem's clock**: a worker whose clock runs two hours fast
//!   removes an abandoned temporary but nothing of a live download.
//!
//! Workers here are spawned by the test (under libfaketime or nsenter), beside a redis-server
//! and a coordinator from `support::cluster`. Scenarios run one at a time.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};

use support::cluster::{Cluster, get};
use support::*;

const LIMIT: Duration = Duration::from_secs(90);

/// A worker process started by the test, with its log; continued and killed on drop.
struct Worker {
    child: Option<Child>,
    log: PathBuf,
}

impl Worker {
    /// Starts `base` (an era5 command, possibly wrapped) as `era5 worker NAME` of `cluster`.
    fn start(cluster: &Cluster, mut base: Command, name: &str) -> Self {
        let logs = cluster.scratch.dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let log = logs.join(format!("fenced-{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        base.args(["worker", "--coordinator", &cluster.coordinator_url(0)])
            .arg("--dest")
            .arg(cluster.dest())
            .args(["--name", name, "--connections", "4", "--max-leases", "2"])
            .args(["--retry-base-ms", "20", "--http", "127.0.0.1:0"])
            .env("RUST_LOG", "info,worker=debug,engine=debug")
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        Self {
            child: Some(base.spawn().expect("spawn the worker")),
            log,
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child.
        send_signal(self.pid() as u32, signal);
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is stopped (state `T` in /proc).
    fn is_stopped(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .ok()
            .and_then(|stat| {
                // The state follows the command name, which is in parentheses.
                let after = stat.rsplit_once(')')?.1;
                after.split_whitespace().next().map(|s| s == "T")
            })
            .unwrap_or(false)
    }

    /// Waits for a line containing `text` in the log.
    fn wait_for_log(&self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.log_text().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no `{text}` in the worker's log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The worker's --http port, from its start-up line.
    fn http_port(&self) -> u16 {
        self.wait_for_log("worker started", Duration::from_secs(20));
        let text = self.log_text();
        let line = text.lines().find(|l| l.contains("worker started")).unwrap();
        let at = line.find("http=127.0.0.1:").expect("an http address") + 15;
        line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    }

    /// SIGTERM; the exit code.
    fn terminate(&mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take()?;
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "worker did not stop\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child; a stopped one must run to die.
            send_signal(child.id(), libc::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// libfaketime, which shifts the wall clock of a process (not its monotonic clock).
fn libfaketime() -> PathBuf {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
        "/usr/local/lib/faketime/libfaketimeMT.so.1",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("libfaketime is installed (apt install faketime)")
}

/// `era5` whose wall clock is `offset` (`+2h`, `-2h`) away from everyone else's.
fn era5_skewed(home: &Path, offset: &str) -> Command {
    let mut command = era5(home);
    command
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    command
}

fn leases(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status["leases"].as_array().cloned().unwrap_or_default()
}

fn job_state(status: &serde_json::Value) -> String {
    status["jobs"][0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Both workers are gone and left no temporary file, and a later `era5 sync` of the object
/// agrees with the mirror from the manifest alone: nothing is downloaded again.
fn a_later_sync_agrees_without_downloading(s3: &TestS3, cluster: &Cluster) {
    assert!(
        temp_files(&cluster.dest()).is_empty(),
        "{:?}",
        temp_files(&cluster.dest())
    );
    let gets = s3.get_count(LSM);
    let scratch = Scratch::new();
    let args = sync_args(
        &s3.endpoint(),
        &cluster.dest(),
        "e5.oper.invariant",
        "lsm",
        "2024-01",
        "2024-01",
    );
    let run = run_era5(&scratch, &args, LIMIT);
    run.expect_code(0);
    assert!(run.stdout.contains("1 already present"), "{}", run.stdout);
    assert_eq!(
        s3.get_count(LSM),
        gets,
        "the sync downloaded the object again"
    );
}

const LSM: &str =
    "e5.oper.invariant/197901/e5.oper.invariant.128_172_lsm.ll025sc.1979010100_1979010100.nc";

#[test]
fn a_stale_holder_woken_after_the_new_holder_completed_does_not_promote() {
    let _serial = serial();
    let s3 = TestS3::start(BUCKET);
    let size = 600_000;
    let old = tests::fixtures::object_bytes("version one", size);
    let new = tests::fixtures::object_bytes("version two", size);
    s3.put_object(LSM, old.clone());
    let cluster = Cluster::start(&s3.endpoint(), 2);

    // The first holder runs two hours behind and stops itself between verification and
    // rename (the test hook), like a worker frozen by SIGSTOP at the worst moment.
    let mut stale_command = era5_skewed(&cluster.scratch.home(), "-2h");
    stale_command.env("ERA5_TEST_STOP_BEFORE_PROMOTE", "128_172_lsm");
    let mut stale = Worker::start(&cluster, stale_command, "stale");
    let job = cluster.submit("e5.oper.invariant", "lsm", "2024-01", "2024-01");
    wait_until(LIMIT, "the first holder to stop before promoting", || {
        stale.is_stopped()
    });
    assert!(stale.log_text().contains("stopping before promotion"));

    // Upstream replaces the object (same size, other bytes); the lease lapses and is granted
    // again, to a worker on the right time, which completes it.
    s3.put_object(LSM, new.clone());
    let mut fresh = Worker::start(&cluster, era5(&cluster.scratch.home()), "fresh");
    let status = cluster.wait_final(&job, LIMIT);
    assert_eq!(job_state(&status), "complete", "{status:#}");
    assert!(
        leases(&status)
            .iter()
            .any(|l| l["epoch"].as_u64() >= Some(2) && l["holder"] == "fresh"),
        "{status:#}"
    );
    let final_path = cluster.dest().join(LSM);
    assert!(std::fs::read(&final_path).unwrap() == new.as_ref());

    // The stale holder wakes up: its lease lapsed by its own monotonic clock, so it must not
    // rename the older bytes over the newer ones.
    stale.signal(libc::SIGCONT);
    stale.wait_for_log("verified but not promoted", LIMIT);
    assert!(
        std::fs::read(&final_path).unwrap() == new.as_ref(),
        "the stale holder renamed older bytes into place"
    );
    assert_eq!(stale.terminate(), Some(0));
    assert_eq!(fresh.terminate(), Some(0));
    a_later_sync_agrees_without_downloading(&s3, &cluster);
    assert!(std::fs::read(&final_path).unwrap() == new.as_ref());
}

#[test]
fn a_holder_of_an_older_version_with_a_valid_lease_does_not_replace_a_newer_one() {
    let _serial = serial();
    let s3 = TestS3::start(BUCKET);
    let size = 600_000;
    let old = tests::fixtures::object_bytes("version one", size);
    let new = tests::fixtures::object_bytes("version two", size);
    let modified = |seconds| tests::s3_server::PutOptions {
        last_modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)),
        ..Default::default()
    };
    s3.put_object_with(LSM, old.clone(), modified(1_700_000_000));
    // A long TTL: the old holder's lease stays valid through the whole scenario, so only the
    // per-key fence can stop it (the lease fence is the other test's subject).
    let cluster = Cluster::start(&s3.endpoint(), 120);

    let mut stale_command = era5(&cluster.scratch.home());
    stale_command.env("ERA5_TEST_STOP_BEFORE_PROMOTE", "128_172_lsm");
    let mut stale = Worker::start(&cluster, stale_command, "stale");
    let first = cluster.submit("e5.oper.invariant", "lsm", "2024-01", "2024-01");
    wait_until(LIMIT, "the first holder to stop before promoting", || {
        stale.is_stopped()
    });

    // Upstream replaces the object; an overlapping job adds the new version as a new item,
    // which another worker completes while the old holder is frozen with a valid lease.
    s3.put_object_with(LSM, new.clone(), modified(1_700_000_060));
    let second = cluster.submit("e5.oper.invariant", "lsm", "2024-01", "2024-01");
    let mut fresh = Worker::start(&cluster, era5(&cluster.scratch.home()), "fresh");
    let status = cluster.wait_final(&second, LIMIT);
    assert_eq!(job_state(&status), "complete", "{status:#}");
    let final_path = cluster.dest().join(LSM);
    assert!(std::fs::read(&final_path).unwrap() == new.as_ref());

    // The old holder wakes with its lease still valid and verified bytes of the older
    // version: it must not rename them over the newer file, and its item is done.
    stale.signal(libc::SIGCONT);
    let status = cluster.wait_final(&first, LIMIT);
    assert_eq!(job_state(&status), "complete", "{status:#}");
    assert!(
        leases(&status)
            .iter()
            .all(|l| l["epoch"].as_u64() == Some(1)),
        "the old holder's lease lapsed, so this test proved nothing: {status:#}"
    );
    assert!(
        std::fs::read(&final_path).unwrap() == new.as_ref(),
        "the old holder renamed older bytes over the newer version"
    );
    assert!(
        stale.log_text().contains("a newer version is in place"),
        "{}",
        stale.log_text()
    );
    assert_eq!(stale.terminate(), Some(0));
    assert_eq!(fresh.terminate(), Some(0));
    a_later_sync_agrees_without_downloading(&s3, &cluster);
}

#[test]
fn a_full_disk_releases_the_lease_without_an_attempt_and_the_worker_resumes_by_itself() {
    let _serial = serial();
    let (s3, seeded) = seeded_server();
    let objects = under(&seeded, &["e5.oper.an.sfc/202401/"]);
    let cluster = Cluster::start(&s3.endpoint(), 10);
    let dest = cluster.dest();
    let tmpfs = Tmpfs::mount(&dest, "8m");
    let inside = tmpfs.outside(&dest);
    // Something else took nearly all the room: 512 KiB are left.
    std::fs::create_dir_all(inside.join(".era5")).unwrap();
    tmpfs.fill(".era5/filler", 512 << 10);
    let worker = Worker::start(&cluster, tmpfs.era5(&cluster.scratch.home()), "full");
    let port = worker.http_port();
    let job = cluster.submit("e5.oper.an.sfc", "", "2024-01", "2024-01");

    wait_until(LIMIT, "the worker to say DEST is full", || {
        let (status, body) = get(port, "/readyz");
        status == 503 && body.contains("no space left on DEST")
    });
    let (_, metrics) = get(port, "/metrics");
    let value = |name: &str| -> Option<f64> {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    assert!(
        value("era5_local_io_errors_total{kind=\"no_space\"}").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert!(
        value("era5_dest_free_bytes").is_some_and(|free| free < f64::from(1 << 20)),
        "{metrics}"
    );
    // Released, not failed: no attempt counted, nothing dead, and nothing left on the disk.
    let status = cluster.wait_for(&job, LIMIT, "the lease to be released", |s| {
        leases(s).iter().all(|l| l["state"] == "pending")
    });
    for lease in leases(&status) {
        assert_eq!(lease["attempts"].as_u64(), Some(0), "{status:#}");
    }
    assert_eq!(status["jobs"][0]["leases"]["dead"].as_u64(), Some(0));
    assert!(temp_files(&inside).is_empty(), "{:?}", temp_files(&inside));
    // And no lease is taken while the disk stays full.
    std::thread::sleep(Duration::from_secs(2));
    let status = cluster.status(0, Some(&job));
    assert!(
        leases(&status).iter().all(|l| l["state"] == "pending"),
        "{status:#}"
    );

    // Room again: the worker notices by itself and finishes the job.
    std::fs::remove_file(inside.join(".era5/filler")).unwrap();
    let status = cluster.wait_final(&job, LIMIT);
    assert_eq!(
        job_state(&status),
        "complete",
        "{status:#}\n{}",
        worker.log_text()
    );
    assert_mirrored(&inside, &objects);
    assert_eq!(get(port, "/readyz").0, 200);
}

#[test]
fn a_worker_whose_clock_runs_fast_sweeps_nothing_live() {
    let _serial = serial();
    let (s3, seeded) = seeded_server();
    // Slow downloads: the first worker's temporaries stay live for a while.
    slow_bodies(&s3, 256 << 10);
    let cluster = Cluster::start(&s3.endpoint(), 10);
    let mut honest = Worker::start(&cluster, era5(&cluster.scratch.home()), "honest");
    let job = cluster.submit("e5.oper.an.sfc", "", "2024-01", "2024-01");
    let leases_dir = cluster.dest().join(".era5/tmp/leases");
    wait_until(LIMIT, "live lease temporaries", || {
        std::fs::read_dir(&leases_dir).is_ok_and(|d| d.count() >= 2)
    });
    // A dead worker's temporary, untouched for three hours by the filesystem's clock.
    let abandoned = leases_dir.join("lost.0123456789abcdef.deadlease.part");
    std::fs::write(&abandoned, b"partial").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&abandoned)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3 * 3600))
        .unwrap();

    // A worker two hours ahead sweeps when it starts.
    let mut fast = Worker::start(
        &cluster,
        era5_skewed(&cluster.scratch.home(), "+2h"),
        "fast",
    );
    fast.wait_for_log("removed temporary files of abandoned leases", LIMIT);
    assert!(!abandoned.exists(), "the abandoned temporary was kept");

    // Had it swept a live file, that lease's promotion would have failed (an attempt).
    let status = cluster.wait_final(&job, LIMIT);
    assert_eq!(job_state(&status), "complete", "{status:#}");
    for lease in leases(&status) {
        assert_eq!(lease["attempts"].as_u64(), Some(0), "{status:#}");
        assert_eq!(lease["expiries"].as_u64(), Some(0), "{status:#}");
    }
    assert_mirrored(
        &cluster.dest(),
        &under(&seeded, &["e5.oper.an.sfc/202401/"]),
    );
    assert_eq!(honest.terminate(), Some(0));
    assert_eq!(fast.terminate(), Some(0));
}
