//! A history checker (issue 21 §6): a randomized run of a real cluster (redis-server, one
//! coordinator, three workers) that records every lease transition and every promotion from
//! the processes' JSON logs, injects faults at seeded random times, and checks invariants over
//! the whole history afterwards.
//!
//! Faults: kill -9 of a worker (restarted as a new incarnation), of the coordinator (restarted
//! on its port), of Redis (restarted from its append-only file); a partition of one worker from
//! the coordinator through its proxy (both directions blackholed, shorter or longer than the
//! lease TTL); an object replaced in the bucket mid-run. Work comes in rounds: each round
//! replaces some objects, submits a job over the whole selection and injects faults until the
//! job ends; a last round without faults settles the mirror.
//!
//! Checked over the history:
//! - every grant (job, item, epoch) is logged by one worker incarnation only, and an item's
//!   epochs grow with time;
//! - at most one holder per item at a time: two incarnations' holding intervals of one item
//!   (grant received until its work ended, it was lost or self-fenced, or the process was
//!   killed) overlap by no more than [`GRACE`]; a holder cut off while reporting its
//!   completion holds nothing it can act on, so its interval ends with its work;
//! - every promotion happened under a grant its incarnation held at that time, never after a
//!   later epoch of the item was granted, and with an ETag the bucket served for that key;
//! - no completion acknowledged for a non-holder: a `complete` acked `Ok` comes from an
//!   incarnation that was granted that epoch and had not lost it, and one item is completed
//!   under one epoch only;
//! - a job is `complete` only with every item done, and every round's job completes;
//! - at the end every selected object is mirrored with the newest version's bytes, and nothing
//!   else is in the mirror (no object lost, none extra);
//! - GET bodies in progress at the S3 server never exceed the workers' connection caps.
//!
//! `ERA5_HISTORY_SEED` picks the seed (printed at the start and on failure),
//! `ERA5_HISTORY_SECS` the length of the faulty part (default 75 s, about 90 s in all;
//! `scripts/soak` runs an hour), `ERA5_HISTORY_FAULT_MS` the most milliseconds between two
//! faults (default 2500), and `ERA5_HISTORY_LOGS=DIR` keeps every process's log there. One
//! worker's wall clock is skewed by minutes (libfaketime, when installed); the checker takes
//! the known offset off its log timestamps.
//!
//! Not checked yet: partitions between workers and S3 or Redis; more than one coordinator;
//! each worker's connection cap on its own (the server sees them together); the coordinator's
//! own record (its logs, the completion ledger in Redis) against the workers'; the manifest.
//! The history is the workers' logs: lines a process buffered when it was killed -9 are lost,
//! which can hide a violation but not invent one (a killed holding ends at its kill).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::Timestamp;
use support::cluster::{Cluster, tail};
use support::*;
use tests::proxy::{Blackhole, CountingProxy};

const PRODUCTS: &str = "e5.oper.an.sfc,e5.oper.an.pl,e5.oper.fc.sfc.accumu";
const WORKERS: [&str; 3] = ["w1", "w2", "w3"];
/// The worker whose wall clock is skewed (libfaketime), by a seeded offset; its monotonic
/// clock, which leases use, is not. The checker takes the offset off its log timestamps.
const SKEWED: &str = "w3";
/// `--connections` of every worker (the cluster's default).
const CONNECTIONS: usize = 4;
/// Lease TTL, seconds.
const TTL: u64 = 4;
/// How long two holders' intervals may overlap in the logs: log lines are written a little
/// after the instant they describe (a fence is checked by the clock, its log line follows).
const GRACE: Duration = Duration::from_millis(1500);
/// Longest a round's job may take.
const ROUND_LIMIT: Duration = Duration::from_secs(180);
const DEFAULT_SEED: u64 = 0x5eed_2026;
const DEFAULT_SECS: u64 = 75;

/// splitmix64: small, seeded, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

/// libfaketime, when installed (`scripts/test` installs it).
fn libfaketime() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
        "/usr/local/lib/faketime/libfaketimeMT.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |v| {
        let v = v.trim();
        v.strip_prefix("0x")
            .map_or_else(|| v.parse(), |hex| u64::from_str_radix(hex, 16))
            .unwrap_or_else(|e| panic!("{name}={v}: {e}"))
    })
}

/// Every selected object of the standard fixture, by the catalog's own rule.
fn selected(seeded: &[SeededObject]) -> Vec<SeededObject> {
    selected_from(seeded, PRODUCTS)
        .into_iter()
        .cloned()
        .collect()
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_string()
}

/// What the test did, with when.
#[derive(Default)]
struct Faults {
    /// (when, what), in order.
    log: Vec<(Timestamp, String)>,
    /// Kill time of every worker incarnation killed, by its log file.
    killed: HashMap<PathBuf, Timestamp>,
    counts: BTreeMap<&'static str, usize>,
}

impl Faults {
    fn note(&mut self, kind: &'static str, what: String) {
        *self.counts.entry(kind).or_default() += 1;
        eprintln!("history: {kind}: {what}");
        self.log.push((Timestamp::now(), what));
    }
}

/// The run: the bucket, the cluster, a proxy per worker in front of the coordinator.
struct Run {
    s3: TestS3,
    cluster: Cluster,
    proxies: HashMap<&'static str, CountingProxy>,
    /// Every version the bucket held, per selected key: (ETag, bytes), oldest first; only the
    /// newest keeps its bytes.
    versions: BTreeMap<String, Vec<(String, Bytes)>>,
    faults: Faults,
    rng: Rng,
    /// libfaketime and the offset of [`SKEWED`]'s wall clock, seconds.
    skew: Option<(PathBuf, i64)>,
    /// Most milliseconds between two faults (`ERA5_HISTORY_FAULT_MS`).
    fault_gap_ms: u64,
}

impl Run {
    fn start_worker(&mut self, name: &'static str) {
        let url = self.proxies[name].endpoint();
        match (&self.skew, name == SKEWED) {
            (Some((library, seconds)), true) => {
                let library = library.display().to_string();
                let offset = format!("{seconds:+}");
                let env = [
                    ("LD_PRELOAD", library.as_str()),
                    ("FAKETIME", offset.as_str()),
                    ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
                ];
                self.cluster.add_worker_with_env(name, &url, &[], &env);
            }
            _ => self.cluster.add_worker_via(name, &url, &[]),
        }
    }

    fn kill_worker(&mut self, name: &'static str) {
        let at = self
            .cluster
            .workers
            .iter()
            .position(|(n, _)| n == name)
            .expect("a running worker");
        let (_, mut process) = self.cluster.workers.remove(at);
        process.kill9();
        self.faults
            .killed
            .insert(process.log.clone(), Timestamp::now());
    }

    /// Stores new bytes for `key`: a version the bucket has not served before.
    fn replace(&mut self, key: &str) {
        let versions = self.versions.get_mut(key).expect("a selected key");
        let n = versions.len() as u8;
        let mut data = versions.last().expect("a version").1.to_vec();
        // Same length or a little longer, different bytes everywhere it matters.
        for (i, byte) in data.iter_mut().enumerate().skip(64).step_by(997) {
            *byte ^= n.wrapping_add(i as u8) | 1;
        }
        data.extend(std::iter::repeat_n(n, usize::from(n % 3) * 512));
        let data = Bytes::from(data);
        self.s3.put_object(key, data.clone());
        let etag = unquote(&self.s3.object(key).expect("just put").etag);
        // Older versions keep their ETag only: an hour's soak replaces thousands.
        if let Some(last) = versions.last_mut() {
            last.1 = Bytes::new();
        }
        versions.push((etag, data));
    }

    fn random_key(&mut self) -> String {
        let keys: Vec<&String> = self.versions.keys().collect();
        keys[self.rng.below(keys.len() as u64) as usize].clone()
    }

    /// One fault, picked at random, done and undone.
    fn inject(&mut self) {
        match self.rng.below(5) {
            0 => {
                let name = WORKERS[self.rng.below(3) as usize];
                self.kill_worker(name);
                let down = self.rng.millis(0, 2000);
                self.faults.note(
                    "kill -9 worker",
                    format!("{name}, restarted after {down:?}"),
                );
                std::thread::sleep(down);
                self.start_worker(name);
            }
            1 => {
                self.faults.note("kill -9 coordinator", "restarted".into());
                self.cluster.restart_coordinator(0);
            }
            2 => {
                let down = self.rng.millis(100, 1500);
                self.faults.note(
                    "kill -9 redis",
                    format!("restarted from its AOF after {down:?}"),
                );
                self.cluster.redis.kill();
                std::thread::sleep(down);
                self.cluster.redis.restart();
            }
            3 => {
                let name = WORKERS[self.rng.below(3) as usize];
                // Shorter or longer than the TTL: renewals survive it, or the worker fences.
                let span = self.rng.millis(500, 2500 * TTL);
                self.faults.note(
                    "partition",
                    format!("{name} from the coordinator for {span:?}"),
                );
                self.proxies[name].blackhole(Blackhole::Both);
                std::thread::sleep(span);
                self.proxies[name].heal();
            }
            _ => {
                let key = self.random_key();
                self.faults
                    .note("object replaced", format!("{key} mid-run"));
                self.replace(&key);
            }
        }
    }

    /// `status --json JOB --leases`, or None while the coordinator cannot answer.
    fn status(&self, job: &str) -> Option<serde_json::Value> {
        let output = self
            .cluster
            .operator("status", 0)
            .args(["--json", job, "--leases"])
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        serde_json::from_slice(&output.stdout).ok()
    }

    /// Submits a job, retrying while the coordinator or Redis comes back.
    fn submit(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = self
                .cluster
                .operator("submit", 0)
                .args([
                    "--product",
                    PRODUCTS,
                    "--start",
                    "2023-12",
                    "--end",
                    "2024-04",
                ])
                .output()
                .expect("run era5 submit");
            if output.status.success() {
                return String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .last()
                    .expect("a job id")
                    .trim()
                    .to_string();
            }
            assert!(
                Instant::now() < deadline,
                "submit failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs one job to its end, injecting faults (when `faulty`) at random times; checks that
    /// it completed with every item done. Returns the final status.
    fn round(&mut self, faulty: bool) -> serde_json::Value {
        let job = self.submit();
        let deadline = Instant::now() + ROUND_LIMIT;
        let mut next_fault = Instant::now() + self.rng.millis(300, self.fault_gap_ms);
        loop {
            if let Some(status) = self.status(&job) {
                let state = status["jobs"][0]["state"].as_str().unwrap_or_default();
                if matches!(state, "complete" | "failed" | "cancelled") {
                    check_job(&status);
                    return status;
                }
            }
            assert!(
                Instant::now() < deadline,
                "job {job} did not end within {ROUND_LIMIT:?}\n{}",
                self.tails()
            );
            if faulty && Instant::now() >= next_fault {
                self.inject();
                next_fault = Instant::now() + self.rng.millis(300, self.fault_gap_ms);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn tails(&self) -> String {
        let mut text = String::new();
        for (process, _) in &self.cluster.coordinators {
            text.push_str(&tail(&process.log));
            text.push('\n');
        }
        for (_, process) in &self.cluster.workers {
            text.push_str(&tail(&process.log));
            text.push('\n');
        }
        text
    }
}

/// A job is `complete` only if every item is done.
fn check_job(status: &serde_json::Value) {
    let job = &status["jobs"][0];
    assert_eq!(
        job["state"], "complete",
        "a round's job did not complete: {status:#}"
    );
    let leases = &job["leases"];
    let done = leases["done"].as_u64().unwrap_or(0);
    let total: u64 = leases.as_object().map_or(0, |o| {
        o.values().filter_map(serde_json::Value::as_u64).sum()
    });
    assert!(
        done > 0 && done == total,
        "job complete with items not done: {leases}"
    );
}

/// One holding of a grant by one worker incarnation.
#[derive(Debug, Clone)]
struct Holding {
    incarnation: String,
    epoch: u64,
    start: Timestamp,
    /// Finished, lost, self-fenced, or killed; None: held to the end of the run.
    end: Option<Timestamp>,
    /// Ended by a loss (lost, self-fenced) rather than a report.
    lost_at: Option<Timestamp>,
}

#[derive(Debug)]
struct Promotion {
    incarnation: String,
    at: Timestamp,
    key: String,
    etag: String,
    grant: Option<(String, String, u64)>,
}

#[derive(Debug)]
struct Completion {
    incarnation: String,
    at: Timestamp,
    grant: (String, String, u64),
}

/// The history the logs recorded.
#[derive(Default)]
struct History {
    /// (job, item) -> holdings.
    holdings: BTreeMap<(String, String), Vec<Holding>>,
    promotions: Vec<Promotion>,
    completions: Vec<Completion>,
    fenced: usize,
    self_fenced: usize,
    lost: usize,
    finished: BTreeMap<String, usize>,
    lines: usize,
    unparsed: usize,
}

fn field(value: &serde_json::Value, name: &str) -> Option<String> {
    match &value[name] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn grant_of(value: &serde_json::Value) -> Option<(String, String, u64)> {
    Some((
        field(value, "job")?,
        field(value, "item")?,
        field(value, "epoch")?.parse().ok()?,
    ))
}

/// The grant of the `lease` span an engine event was logged under.
fn lease_span(value: &serde_json::Value) -> Option<(String, String, u64)> {
    value["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == "lease")
        .and_then(grant_of)
}

impl History {
    fn read(logs: &Path, killed: &HashMap<PathBuf, Timestamp>, skewed: i64) -> Self {
        let mut history = Self::default();
        let mut files: Vec<PathBuf> = std::fs::read_dir(logs)
            .expect("the logs")
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("worker-"))
            })
            .collect();
        files.sort();
        for file in files {
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            let skew = if name.starts_with(&format!("worker-{SKEWED}.")) {
                skewed
            } else {
                0
            };
            history.read_worker(&file, killed.get(&file).copied(), skew);
        }
        history
    }

    /// `skew`: seconds the worker's wall clock was ahead (taken off its timestamps).
    fn read_worker(&mut self, file: &Path, killed: Option<Timestamp>, skew: i64) {
        let incarnation = file.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(file).unwrap_or_default();
        // Open holdings of this incarnation: grant -> index in `holdings`.
        let mut open: HashMap<(String, String, u64), usize> = HashMap::new();
        for line in text.lines() {
            self.lines += 1;
            let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                self.unparsed += 1;
                continue;
            };
            let Some(at) = value["timestamp"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .map(|t| t - jiff::SignedDuration::from_secs(skew))
            else {
                self.unparsed += 1;
                continue;
            };
            let message = value["message"].as_str().unwrap_or_default();
            let grant = grant_of(&value);
            let mut end = |lost: bool, history: &mut Self| {
                let Some(grant) = &grant else { return };
                if let Some(index) = open.remove(grant) {
                    let holding = history
                        .holdings
                        .get_mut(&(grant.0.clone(), grant.1.clone()))
                        .and_then(|h| h.get_mut(index))
                        .expect("an open holding");
                    holding.end = Some(at);
                    if lost {
                        holding.lost_at = Some(at);
                    }
                }
            };
            if message == "lease granted" {
                let grant = grant.clone().expect("a grant has job, item and epoch");
                let holdings = self
                    .holdings
                    .entry((grant.0.clone(), grant.1.clone()))
                    .or_default();
                holdings.push(Holding {
                    incarnation: incarnation.clone(),
                    epoch: grant.2,
                    start: at,
                    end: None,
                    lost_at: None,
                });
                open.insert(grant, holdings.len() - 1);
            } else if message.contains("(self-fencing)") || message.starts_with("lease lost") {
                if message.contains("(self-fencing)") {
                    self.self_fenced += 1;
                } else {
                    self.lost += 1;
                }
                end(true, self);
            } else if message == "lease work ended" {
                // Its work is over (a report may follow, late if partitioned): it holds
                // nothing it can act on any more.
                end(false, self);
            } else if message == "lease finished" {
                let action = field(&value, "action").unwrap_or_default();
                let ack = field(&value, "ack").unwrap_or_default();
                *self.finished.entry(format!("{action}: {ack}")).or_default() += 1;
                if action == "complete"
                    && ack == "Ok"
                    && let Some(grant) = &grant
                {
                    self.completions.push(Completion {
                        incarnation: incarnation.clone(),
                        at,
                        grant: grant.clone(),
                    });
                }
                end(false, self);
            } else if message == "object promoted" {
                self.promotions.push(Promotion {
                    incarnation: incarnation.clone(),
                    at,
                    key: field(&value, "key").unwrap_or_default(),
                    etag: unquote(&field(&value, "etag").unwrap_or_default()),
                    grant: lease_span(&value),
                });
            } else if message.starts_with("verified but not promoted") {
                self.fenced += 1;
            }
        }
        // A killed incarnation held what it still held until its kill.
        for (grant, index) in open {
            if let Some(holding) = self
                .holdings
                .get_mut(&(grant.0, grant.1))
                .and_then(|h| h.get_mut(index))
            {
                holding.end = killed;
            }
        }
    }

    fn holding(&self, job: &str, item: &str, epoch: u64, incarnation: &str) -> Option<&Holding> {
        self.holdings
            .get(&(job.to_string(), item.to_string()))?
            .iter()
            .find(|h| h.epoch == epoch && h.incarnation == incarnation)
    }

    /// Every invariant over the history; returns the violations and the largest overlap seen.
    fn check(
        &self,
        versions: &BTreeMap<String, Vec<(String, Bytes)>>,
        run_end: Timestamp,
    ) -> (Vec<String>, Duration) {
        let mut violations = Vec::new();
        let mut widest = Duration::ZERO;
        let grace = jiff::SignedDuration::try_from(GRACE).unwrap();
        for ((job, item), holdings) in &self.holdings {
            // One incarnation per grant; epochs grow with time.
            let mut epochs = HashSet::new();
            let mut by_start = holdings.clone();
            by_start.sort_by_key(|h| h.start);
            for h in &by_start {
                if !epochs.insert(h.epoch) {
                    violations.push(format!("{job}/{item}: epoch {} granted twice", h.epoch));
                }
            }
            for pair in by_start.windows(2) {
                if pair[1].epoch <= pair[0].epoch {
                    violations.push(format!(
                        "{job}/{item}: epoch {} granted after epoch {}",
                        pair[1].epoch, pair[0].epoch
                    ));
                }
            }
            // At most one holder at a time.
            for (i, a) in by_start.iter().enumerate() {
                for b in &by_start[i + 1..] {
                    let a_end = a.end.unwrap_or(run_end);
                    let b_end = b.end.unwrap_or(run_end);
                    let overlap = a_end.min(b_end).duration_since(a.start.max(b.start));
                    if overlap > jiff::SignedDuration::ZERO {
                        widest = widest.max(Duration::try_from(overlap).unwrap_or_default());
                    }
                    if overlap > grace {
                        violations.push(format!(
                            "{job}/{item}: {} (epoch {}) and {} (epoch {}) held it together \
                             for {overlap:#}",
                            a.incarnation, a.epoch, b.incarnation, b.epoch
                        ));
                    }
                }
            }
        }
        for p in &self.promotions {
            let served: Vec<&String> = versions
                .get(&p.key)
                .map(|v| v.iter().map(|(etag, _)| etag).collect())
                .unwrap_or_default();
            if !served.contains(&&p.etag) {
                violations.push(format!(
                    "{} promoted {} with ETag {}, never served (served: {served:?})",
                    p.incarnation, p.key, p.etag
                ));
            }
            let Some((job, item, epoch)) = &p.grant else {
                violations.push(format!(
                    "{} promoted {} outside any lease",
                    p.incarnation, p.key
                ));
                continue;
            };
            match self.holding(job, item, *epoch, &p.incarnation) {
                None => violations.push(format!(
                    "{} promoted {} under {job}/{item} epoch {epoch}, never granted to it",
                    p.incarnation, p.key
                )),
                Some(h) if p.at < h.start || h.lost_at.is_some_and(|lost| p.at > lost + grace) => {
                    violations.push(format!(
                        "{} promoted {} at {} outside its holding {h:?}",
                        p.incarnation, p.key, p.at
                    ));
                }
                Some(_) => {}
            }
            // Never after a later epoch of the item was granted.
            for later in self
                .holdings
                .get(&(job.clone(), item.clone()))
                .into_iter()
                .flatten()
                .filter(|h| h.epoch > *epoch)
            {
                if p.at > later.start + grace {
                    violations.push(format!(
                        "{} promoted {} under epoch {epoch} at {}, after epoch {} was granted \
                         to {} at {}",
                        p.incarnation, p.key, p.at, later.epoch, later.incarnation, later.start
                    ));
                }
            }
        }
        let mut completed: HashMap<(String, String), u64> = HashMap::new();
        for c in &self.completions {
            let (job, item, epoch) = &c.grant;
            match self.holding(job, item, *epoch, &c.incarnation) {
                None => violations.push(format!(
                    "{} completed {job}/{item} epoch {epoch}, never granted to it",
                    c.incarnation
                )),
                Some(h) if h.lost_at.is_some_and(|lost| lost < c.at) => violations.push(format!(
                    "{} completed {job}/{item} epoch {epoch} after losing it",
                    c.incarnation
                )),
                Some(_) => {}
            }
            if let Some(other) = completed.insert((job.clone(), item.clone()), *epoch)
                && other != *epoch
            {
                violations.push(format!(
                    "{job}/{item} completed under epochs {other} and {epoch}"
                ));
            }
        }
        (violations, widest)
    }
}

#[test]
fn a_randomized_history_with_faults_keeps_every_invariant() {
    let seed = env_u64("ERA5_HISTORY_SEED", DEFAULT_SEED);
    let secs = env_u64("ERA5_HISTORY_SECS", DEFAULT_SECS);
    eprintln!("history: seed={seed:#x} secs={secs} (ERA5_HISTORY_SEED, ERA5_HISTORY_SECS)");
    let outcome = std::panic::catch_unwind(|| run(seed, secs));
    if let Err(panic) = outcome {
        eprintln!("history: FAILED with ERA5_HISTORY_SEED={seed:#x} ERA5_HISTORY_SECS={secs}");
        std::panic::resume_unwind(panic);
    }
}

fn run(seed: u64, secs: u64) {
    let started = Instant::now();
    let s3 = TestS3::start(BUCKET);
    let seeded = seed_standard(&s3, SizeRange::SMALL);
    // Slow enough that leases last a few seconds and faults land on work in flight.
    slow_bodies(&s3, 512 << 10);
    let selected = selected(&seeded);
    let versions = selected
        .iter()
        .map(|o| {
            let etag = unquote(&s3.object(&o.key).expect("seeded").etag);
            (o.key.clone(), vec![(etag, o.data.clone())])
        })
        .collect();
    let cluster = Cluster::start_with_flags(&s3.endpoint(), TTL, &["--log-format", "json"]);
    let coordinator = std::net::SocketAddr::from(([127, 0, 0, 1], cluster.coordinators[0].1));
    let proxies = WORKERS
        .iter()
        .map(|&name| (name, CountingProxy::start(coordinator)))
        .collect();
    let mut run = Run {
        s3,
        cluster,
        proxies,
        versions,
        faults: Faults::default(),
        rng: Rng(seed),
        skew: None,
        fault_gap_ms: env_u64("ERA5_HISTORY_FAULT_MS", 2500).max(300),
    };
    // Minutes ahead or behind, seeded.
    let seconds = 30 + run.rng.below(600) as i64;
    let seconds = if run.rng.below(2) == 0 {
        seconds
    } else {
        -seconds
    };
    run.skew = libfaketime().map(|library| (library, seconds));
    match &run.skew {
        Some(_) => run.faults.note(
            "skewed clock",
            format!("{SKEWED}'s wall clock {seconds:+} s"),
        ),
        None => eprintln!("history: libfaketime not installed: no skewed clock"),
    }
    for name in WORKERS {
        run.start_worker(name);
    }
    let mut rounds = 0;
    let faulty_until = Instant::now() + Duration::from_secs(secs);
    while rounds == 0 || Instant::now() < faulty_until {
        rounds += 1;
        if rounds > 1 {
            // New versions of a few objects: the next job downloads them again.
            let keys = run.versions.len() as u64;
            for _ in 0..keys / 3 + run.rng.below(keys / 3 + 1) {
                let key = run.random_key();
                run.replace(&key);
            }
        }
        run.round(true);
        // The server's record of every request grows without bound over a soak; unused here.
        run.s3.clear_requests();
        eprintln!(
            "history: round {rounds} complete after {:?}",
            started.elapsed()
        );
    }
    // A last round without faults: whatever changed mid-run is mirrored at its newest.
    run.round(false);
    let run_end = Timestamp::now();
    // Stop the processes so their logs are whole.
    for (_, process) in &mut run.cluster.workers {
        process.terminate(Duration::from_secs(30));
    }

    let dest = run.cluster.dest();
    let logs = run.cluster.scratch.dir.path().join("logs");
    if let Ok(keep) = std::env::var("ERA5_HISTORY_LOGS") {
        // Every process's log, kept for a look after the run.
        std::fs::create_dir_all(&keep).expect("ERA5_HISTORY_LOGS is a directory");
        for entry in std::fs::read_dir(&logs).expect("the logs").flatten() {
            std::fs::copy(entry.path(), Path::new(&keep).join(entry.file_name()))
                .expect("copy a log");
        }
    }
    let skewed = run.skew.as_ref().map_or(0, |(_, seconds)| *seconds);
    let history = History::read(&logs, &run.faults.killed, skewed);
    let (mut violations, widest) = history.check(&run.versions, run_end);

    // The mirror: every selected key at its newest version, nothing else.
    let newest: Vec<SeededObject> = run
        .versions
        .iter()
        .map(|(key, v)| SeededObject {
            key: key.clone(),
            data: v.last().expect("a version").1.clone(),
            multipart: false,
        })
        .collect();
    for object in &newest {
        match std::fs::read(dest.join(&object.key)) {
            Ok(data) if data == object.data.as_ref() => {}
            Ok(data) => violations.push(format!(
                "{} is not the newest of its {} versions at the end ({} bytes, the newest {})",
                object.key,
                run.versions[&object.key].len(),
                data.len(),
                object.data.len()
            )),
            Err(error) => violations.push(format!("{} lost: {error}", object.key)),
        }
    }
    let expected: Vec<String> = newest.iter().map(|o| o.key.clone()).collect();
    let mirrored = mirrored_keys(&dest);
    for key in mirrored.iter().filter(|k| !expected.contains(k)) {
        violations.push(format!("{key} is in the mirror but not selected"));
    }
    let cap = WORKERS.len() * CONNECTIONS;
    let peak = run.s3.max_concurrent_gets();
    if peak > cap {
        violations.push(format!(
            "{peak} GET bodies in progress at once, above the workers' caps ({cap})"
        ));
    }

    let holdings: usize = history.holdings.values().map(Vec::len).sum();
    let replaced = run.versions.values().map(|v| v.len() - 1).sum::<usize>();
    eprintln!(
        "history: seed={seed:#x} {rounds} faulty rounds + 1 settling, {:?}\n\
         history: faults {:?}\n\
         history: {} log lines ({} not JSON), {holdings} grants of {} items, lease ends {:?}, \
         {} self-fenced, {} stopped as lost, {} promotions, {} refused by the fence, {} completions acked; {replaced} object \
         versions replaced; {} MiB served by S3; widest overlap {widest:?}; peak GET bodies \
         {peak}/{cap}",
        started.elapsed(),
        run.faults.counts,
        history.lines,
        history.unparsed,
        history.holdings.len(),
        history.finished,
        history.self_fenced,
        history.lost,
        history.promotions.len(),
        history.fenced,
        history.completions.len(),
        run.s3.body_bytes_sent() >> 20,
    );
    assert!(holdings > 0, "no grant in the logs");
    assert!(
        !history.promotions.is_empty(),
        "no promotion in the logs (is engine=debug on?)"
    );
    assert!(
        violations.is_empty(),
        "{} violations:\n{}\nfaults:\n{}",
        violations.len(),
        violations.join("\n"),
        run.faults
            .log
            .iter()
            .map(|(at, what)| format!("{at} {what}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The checker is not vacuous: a history with two holders at once, a promotion after a later
/// epoch was granted, a version never served and a completion by a non-holder is refused.
#[test]
fn the_checker_finds_violations_in_a_bad_history() {
    let t = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
    let grant = |epoch| ("job".to_string(), "item".to_string(), epoch);
    let mut history = History::default();
    history.holdings.insert(
        ("job".into(), "item".into()),
        vec![
            Holding {
                incarnation: "a".into(),
                epoch: 1,
                start: t(0),
                end: Some(t(20)),
                lost_at: None,
            },
            Holding {
                incarnation: "b".into(),
                epoch: 2,
                start: t(10),
                end: Some(t(30)),
                lost_at: None,
            },
        ],
    );
    history.promotions.push(Promotion {
        incarnation: "a".into(),
        at: t(15),
        key: "k".into(),
        etag: "never".into(),
        grant: Some(grant(1)),
    });
    history.completions.push(Completion {
        incarnation: "c".into(),
        at: t(25),
        grant: grant(2),
    });
    let versions = BTreeMap::from([("k".to_string(), vec![("e1".to_string(), Bytes::new())])]);
    let (violations, widest) = history.check(&versions, t(40));
    let all = violations.join("\n");
    assert_eq!(widest, Duration::from_secs(10), "{all}");
    for expected in [
        "held it together",
        "never served",
        "after epoch 2 was granted",
        "never granted to it",
    ] {
        assert!(all.contains(expected), "no `{expected}` in:\n{all}");
    }
}
