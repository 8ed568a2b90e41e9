//! A test cluster of real processes: a redis-server, `era5 coordinator`s and `era5 worker`s
//! spawned from the built binary, each with its own log file, killed on drop. Readiness is
//! polled with deadlines, and a failed wait shows the tail of every log.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tests::redis_server::RedisServer;

use super::{BUCKET, Scratch, era5};

/// A child process with its log.
pub struct Proc {
    child: Option<Child>,
    /// Combined stdout and stderr.
    pub log: PathBuf,
}

impl Proc {
    fn spawn(mut command: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("log file");
        command
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        Self {
            child: Some(command.spawn().expect("spawn era5")),
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP.
    pub fn stop(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT.
    pub fn cont(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGTERM, then waits for the exit code.
    pub fn terminate(&mut self, limit: Duration) -> Option<i32> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                panic!(
                    "process did not exit within {limit:?} of SIGTERM\n{}",
                    tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process must be continued to die of SIGKILL promptly.
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        }
        self.kill9();
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- {} (last lines)\n{}",
        path.display(),
        lines[lines.len().saturating_sub(25)..].join("\n")
    )
}

/// Redis, coordinators and workers of one test.
pub struct Cluster {
    /// The scratch directory (logs, mirror, HOME).
    pub scratch: Scratch,
    /// Redis (with an append-only file, so it can be killed and restarted).
    pub redis: RedisServer,
    /// Coordinators, with their gRPC ports.
    pub coordinators: Vec<(Proc, u16)>,
    /// Coordinators' HTTP ports (same order).
    pub coordinator_http: Vec<u16>,
    /// Extra flags for every process (e.g. `--log-format json`).
    pub extra_flags: Vec<String>,
    /// Workers by name.
    pub workers: Vec<(String, Proc)>,
    /// Lease TTL in seconds.
    pub ttl: u64,
    s3_endpoint: String,
}

impl Cluster {
    /// Redis and one coordinator with lease TTL `ttl` seconds, reading from `s3_endpoint`.
    pub fn start(s3_endpoint: &str, ttl: u64) -> Self {
        let scratch = Scratch::new();
        let aof = scratch.dir.path().join("redis");
        std::fs::create_dir_all(&aof).unwrap();
        let redis = RedisServer::start_with_aof(&aof);
        Self::start_with(scratch, redis, s3_endpoint, ttl, &[])
    }

    /// A cluster over a given Redis, every process started with `extra_flags`.
    pub fn start_with(
        scratch: Scratch,
        redis: RedisServer,
        s3_endpoint: &str,
        ttl: u64,
        extra_flags: &[&str],
    ) -> Self {
        let mut cluster = Self {
            redis,
            scratch,
            coordinators: Vec::new(),
            coordinator_http: Vec::new(),
            extra_flags: extra_flags.iter().map(|f| f.to_string()).collect(),
            workers: Vec::new(),
            ttl,
            s3_endpoint: s3_endpoint.to_string(),
        };
        cluster.add_coordinator(None);
        cluster
    }

    /// The mirror directory the workers share.
    pub fn dest(&self) -> PathBuf {
        self.scratch.dest()
    }

    fn log(&self, name: &str) -> PathBuf {
        let logs = self.scratch.dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        // Restarts get a fresh log, numbered.
        (0..)
            .map(|n| logs.join(format!("{name}.{n}.log")))
            .find(|p| !p.exists())
            .unwrap()
    }

    /// Starts a coordinator (on `port`, or an ephemeral one) and waits until it serves.
    pub fn add_coordinator(&mut self, port: Option<u16>) -> usize {
        let log = self.log("coordinator");
        let process = Proc::spawn(self.coordinator_command(port.unwrap_or(0)), log.clone());
        let grpc = wait_for_address(&log, "coordinator started", "grpc=");
        self.coordinator_http
            .push(wait_for_address(&log, "coordinator started", "http="));
        self.coordinators.push((process, grpc));
        self.coordinators.len() - 1
    }

    fn coordinator_command(&self, port: u16) -> Command {
        let mut command = era5(&self.scratch.home());
        command
            .args(["coordinator", "--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--redis",
                &self.redis.url(),
                "--lease-ttl",
                &self.ttl.to_string(),
            ])
            .args(["--lease-objects", "4", "--http", "127.0.0.1:0"])
            .args(&self.extra_flags)
            .env("RUST_LOG", "info");
        command
    }

    /// `http://127.0.0.1:PORT` of coordinator `index`.
    pub fn coordinator_url(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.coordinators[index].1)
    }

    /// Kills coordinator `index` and starts a new one on the same gRPC port.
    pub fn restart_coordinator(&mut self, index: usize) {
        let port = self.coordinators[index].1;
        self.coordinators[index].0.kill9();
        let log = self.log("coordinator");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // The old socket may linger a moment: retry until the port is ours again.
            let process = Proc::spawn(self.coordinator_command(port), log.clone());
            std::thread::sleep(Duration::from_millis(300));
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("coordinator started")
            {
                self.coordinator_http[index] =
                    wait_for_address(&log, "coordinator started", "http=");
                self.coordinators[index].0 = process;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the coordinator did not restart on port {port}\n{}",
                tail(&log)
            );
            drop(process);
        }
    }

    /// Starts a worker talking to coordinator `coordinator`.
    pub fn add_worker(&mut self, name: &str, coordinator: usize, extra: &[&str]) {
        let log = self.log(&format!("worker-{name}"));
        let mut command = era5(&self.scratch.home());
        command
            .args([
                "worker",
                "--coordinator",
                &self.coordinator_url(coordinator),
            ])
            .arg("--dest")
            .arg(self.dest())
            .args([
                "--name",
                name,
                "--connections",
                "4",
                "--max-leases",
                "2",
                "--retry-base-ms",
                "20",
            ])
            .args(["--http", "127.0.0.1:0"])
            .args(extra)
            .args(&self.extra_flags)
            .env("RUST_LOG", "info,worker=debug");
        self.workers
            .push((name.to_string(), Proc::spawn(command, log)));
    }

    /// The HTTP port of worker `name` (from its start-up log line).
    pub fn worker_http(&self, name: &str) -> u16 {
        let log = &self
            .workers
            .iter()
            .find(|(n, _)| n == name)
            .expect("worker")
            .1
            .log;
        wait_for_address(log, "worker started", "http=")
    }

    /// The worker named `name`.
    pub fn worker(&mut self, name: &str) -> &mut Proc {
        &mut self
            .workers
            .iter_mut()
            .find(|(n, _)| n == name)
            .expect("worker")
            .1
    }

    /// `era5 submit` of a selection from the test S3 bucket; returns the job id.
    pub fn submit(&self, products: &str, vars: &str, start: &str, end: &str) -> String {
        let mut command = era5(&self.scratch.home());
        command
            .args(["submit", "--coordinator", &self.coordinator_url(0)])
            .args(["--product", products, "--start", start, "--end", end])
            .args(["--endpoint", &self.s3_endpoint, "--bucket", BUCKET]);
        if !vars.is_empty() {
            command.args(["--var", vars]);
        }
        let output = command.output().expect("run era5 submit");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "submit failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            stdout
        );
        stdout.lines().last().expect("a job id").trim().to_string()
    }

    /// `era5 submit --wait`: returns the exit code and the job id (the last line of stdout).
    pub fn submit_and_wait(
        &self,
        products: &str,
        start: &str,
        end: &str,
        limit: Duration,
    ) -> (Option<i32>, String) {
        let child = era5(&self.scratch.home())
            .args([
                "submit",
                "--coordinator",
                &self.coordinator_url(0),
                "--wait",
            ])
            .args(["--product", products, "--start", start, "--end", end])
            .args(["--endpoint", &self.s3_endpoint, "--bucket", BUCKET])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run era5 submit");
        let run = super::wait_with_limit(child, limit);
        let job = run
            .stdout
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        (run.code, job)
    }

    /// The HTTP status of `path` on coordinator `index`'s --http port.
    pub fn http_status(port: u16, path: &str) -> Option<u16> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).ok()?;
        reply.split_whitespace().nth(1)?.parse().ok()
    }

    /// `era5 status --json [JOB --leases]` from coordinator `coordinator`: with a job, its
    /// summary and every lease.
    pub fn status(&self, coordinator: usize, job: Option<&str>) -> serde_json::Value {
        let mut command = era5(&self.scratch.home());
        command.args([
            "status",
            "--coordinator",
            &self.coordinator_url(coordinator),
            "--json",
        ]);
        if let Some(job) = job {
            command.args([job, "--leases"]);
        }
        let output = command.output().expect("run era5 status");
        assert!(
            output.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("status --json prints JSON")
    }

    /// Waits until `condition` holds on the job's status, failing with every log's tail.
    pub fn wait_for(
        &self,
        job: &str,
        limit: Duration,
        what: &str,
        condition: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status(0, Some(job));
            if condition(&status) {
                return status;
            }
            if Instant::now() > deadline {
                let mut logs = String::new();
                for (process, _) in &self.coordinators {
                    logs.push_str(&tail(&process.log));
                    logs.push('\n');
                }
                for (_, process) in &self.workers {
                    logs.push_str(&tail(&process.log));
                    logs.push('\n');
                }
                panic!("timed out waiting for {what}\nstatus: {status:#}\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the job is in a final state; returns the status.
    pub fn wait_final(&self, job: &str, limit: Duration) -> serde_json::Value {
        self.wait_for(job, limit, "the job to end", |s| {
            matches!(
                s["jobs"][0]["state"].as_str(),
                Some("complete" | "failed" | "cancelled")
            )
        })
    }
}

/// Reads a port from a start-up log line (`field=127.0.0.1:PORT`, text or JSON logs).
fn wait_for_address(log: &Path, event: &str, field: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let json_field = format!("\"{}\":\"127.0.0.1:", field.trim_end_matches('='));
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(event)) {
            let text_form = line.split_whitespace().find_map(|f| {
                f.strip_prefix(&format!("{field}127.0.0.1:"))
                    .map(str::to_string)
            });
            let json_form = line
                .find(&json_field)
                .map(|at| line[at + json_field.len()..].to_string());
            if let Some(port) = text_form.or(json_form).and_then(|rest| {
                rest.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .ok()
            }) {
                return port;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no `{field}` in the `{event}` line\n{}",
            tail(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
