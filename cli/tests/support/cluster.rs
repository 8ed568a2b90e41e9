//! A test cluster of real processes: a redis-server, `era5 coordinator`s and `era5 worker`s
//! spawned from the built binary, each with its own log file, killed on drop. Readiness is
//! polled with deadlines, and a failed wait shows the tail of every log.
//!
//! The coordinators connect to Redis as the `era5` ACL user of the deployment
//! (`deploy/base/redis-era5-user.acl`), so every cluster test also checks that the ACL allows
//! what the coordinator does. [`Cluster::start_tls`] runs the whole cluster with mTLS (real
//! certificates from [`tests::pki`]) and Redis over TLS.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tests::pki::{CertFiles, TestCa};
use tests::redis_server::{RedisOptions, RedisServer, RedisTls};

use super::{BUCKET, Scratch, era5, era5_via, send_signal};

/// The password of the `era5` Redis user in tests.
pub const REDIS_PASSWORD: &str = "era5-test-password";
/// The password of Redis' default (admin) user in tests.
pub const REDIS_ADMIN_PASSWORD: &str = "admin-test-password";

/// The deployment's ACL rules of the `era5` user, one line (comments dropped).
pub fn era5_acl_rules() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/redis-era5-user.acl");
    let text = std::fs::read_to_string(&path).expect("read the deployment's Redis ACL");
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Options for a Redis with the `era5` ACL user (and the default user behind a password).
pub fn acl_redis_options() -> RedisOptions {
    RedisOptions {
        password: Some(REDIS_ADMIN_PASSWORD.into()),
        users: vec![format!("era5 on >{REDIS_PASSWORD} {}", era5_acl_rules())],
        ..RedisOptions::default()
    }
}

/// The certificates of a TLS cluster.
pub struct ClusterPki {
    /// The cluster's CA.
    pub ca: TestCa,
    /// The coordinators' (and Redis') server certificate.
    pub server: CertFiles,
    /// An operator's certificate, used by every operator command.
    pub operator: CertFiles,
}

impl ClusterPki {
    /// A CA in `scratch`, a server certificate (coordinators and Redis, naming 127.0.0.1) and
    /// an operator's.
    pub fn new(scratch: &Scratch) -> Self {
        let ca = TestCa::new(&scratch.dir.path().join("pki"), "cluster");
        let server = ca.server("server");
        let operator = ca.operator("admin");
        Self {
            ca,
            server,
            operator,
        }
    }

    /// The server certificate as Redis (and Sentinel) take it.
    pub fn redis_tls(&self) -> RedisTls {
        RedisTls {
            cert: self.server.cert.clone(),
            key: self.server.key.clone(),
            ca: self.server.ca.clone(),
        }
    }
}

/// A child process with its log.
pub struct Proc {
    child: Option<Child>,
    /// Combined stdout and stderr.
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut command: Command, log: PathBuf) -> Self {
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

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child.
        send_signal(self.pid() as u32, signal);
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
            assert!(
                Instant::now() <= deadline,
                "process did not exit within {limit:?} of SIGTERM\n{}",
                tail(&self.log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running (not exited, not killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
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
            send_signal(child.id(), libc::SIGCONT);
        }
        self.kill9();
    }
}

pub fn tail(path: &Path) -> String {
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
    /// The URL coordinators use for Redis.
    pub redis_url: String,
    /// Certificates, when the cluster runs with TLS.
    pub pki: Option<ClusterPki>,
    /// Coordinators, with their gRPC ports.
    pub coordinators: Vec<(Proc, u16)>,
    /// Coordinators' HTTP ports (same order).
    pub coordinator_http: Vec<u16>,
    /// Extra flags for every process (e.g. `--log-format json`).
    pub extra_flags: Vec<String>,
    /// Extra flags for coordinators only (caps, retention, keepalive).
    pub coordinator_flags: Vec<String>,
    /// Workers by name.
    pub workers: Vec<(String, Proc)>,
    /// Lease TTL in seconds.
    pub ttl: u64,
    /// The flags naming workers' destination, when not the scratch mirror directory (an
    /// `s3://` destination and its endpoint, say).
    pub worker_dest: Option<Vec<String>>,
    s3_endpoint: String,
}

impl Cluster {
    /// Redis (as the `era5` ACL user) and one coordinator with lease TTL `ttl` seconds,
    /// reading from `s3_endpoint`.
    pub fn start(s3_endpoint: &str, ttl: u64) -> Self {
        Self::start_with_flags(s3_endpoint, ttl, &[])
    }

    /// Like [`Cluster::start`], every process started with `extra_flags`.
    pub fn start_with_flags(s3_endpoint: &str, ttl: u64, extra_flags: &[&str]) -> Self {
        let scratch = Scratch::new();
        let aof = scratch.dir.path().join("redis");
        std::fs::create_dir_all(&aof).unwrap();
        let redis = RedisServer::start_with(RedisOptions {
            aof_dir: Some(aof),
            ..acl_redis_options()
        });
        let url = redis.url_for("era5", REDIS_PASSWORD);
        Self::assemble(scratch, redis, url, None, s3_endpoint, ttl, extra_flags)
    }

    /// Like [`Cluster::start`], its coordinator started with `flags` (caps, retention...).
    pub fn start_with_coordinator_flags(s3_endpoint: &str, ttl: u64, flags: &[&str]) -> Self {
        let scratch = Scratch::new();
        let redis = RedisServer::start_with(acl_redis_options());
        let url = redis.url_for("era5", REDIS_PASSWORD);
        let mut cluster = Self {
            redis,
            redis_url: url,
            pki: None,
            scratch,
            coordinators: Vec::new(),
            coordinator_http: Vec::new(),
            extra_flags: Vec::new(),
            coordinator_flags: flags.iter().map(std::string::ToString::to_string).collect(),
            workers: Vec::new(),
            ttl,
            worker_dest: None,
            s3_endpoint: s3_endpoint.to_string(),
        };
        cluster.add_coordinator(None);
        cluster
    }

    /// The whole cluster with TLS: coordinators require client certificates (workers and
    /// operators get their own, made here), and Redis is reached over `rediss://` as the
    /// `era5` ACL user.
    pub fn start_tls(s3_endpoint: &str, ttl: u64) -> Self {
        let scratch = Scratch::new();
        let pki = ClusterPki::new(&scratch);
        let redis = RedisServer::start_with(RedisOptions {
            tls: Some(pki.redis_tls()),
            ..acl_redis_options()
        });
        let url = redis
            .tls_url_for("era5", REDIS_PASSWORD)
            .expect("redis listens with TLS");
        Self::assemble(scratch, redis, url, Some(pki), s3_endpoint, ttl, &[])
    }

    /// The whole cluster with TLS (certificates from `pki`, made in `scratch`), its
    /// coordinators reaching Redis at `redis_url` (a `rediss+sentinel://` URL, say) with the
    /// cluster's CA; `redis` is the server the cluster holds on to.
    pub fn start_tls_with_redis_url(
        scratch: Scratch,
        pki: ClusterPki,
        redis: RedisServer,
        redis_url: String,
        s3_endpoint: &str,
        ttl: u64,
    ) -> Self {
        Self::assemble(scratch, redis, redis_url, Some(pki), s3_endpoint, ttl, &[])
    }

    /// A cluster over a given Redis (its default user), every process started with
    /// `extra_flags`.
    pub fn start_with(
        scratch: Scratch,
        redis: RedisServer,
        s3_endpoint: &str,
        ttl: u64,
        extra_flags: &[&str],
    ) -> Self {
        let url = redis.url();
        Self::assemble(scratch, redis, url, None, s3_endpoint, ttl, extra_flags)
    }

    /// A cluster whose coordinators reach Redis at `redis_url` (a Sentinel URL, say); `redis`
    /// is the server the cluster holds on to (the first primary).
    pub fn start_with_redis_url(
        redis: RedisServer,
        redis_url: String,
        s3_endpoint: &str,
        ttl: u64,
    ) -> Self {
        Self::assemble(
            Scratch::new(),
            redis,
            redis_url,
            None,
            s3_endpoint,
            ttl,
            &[],
        )
    }

    fn assemble(
        scratch: Scratch,
        redis: RedisServer,
        redis_url: String,
        pki: Option<ClusterPki>,
        s3_endpoint: &str,
        ttl: u64,
        extra_flags: &[&str],
    ) -> Self {
        let mut cluster = Self {
            redis,
            redis_url,
            pki,
            scratch,
            coordinators: Vec::new(),
            coordinator_http: Vec::new(),
            extra_flags: extra_flags
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            coordinator_flags: Vec::new(),
            workers: Vec::new(),
            ttl,
            worker_dest: None,
            s3_endpoint: s3_endpoint.to_string(),
        };
        cluster.add_coordinator(None);
        cluster
    }

    /// The mirror directory the workers share.
    pub fn dest(&self) -> PathBuf {
        self.scratch.dest()
    }

    pub fn log(&self, name: &str) -> PathBuf {
        let logs = self.scratch.dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        // Restarts get a fresh log, numbered.
        (0..10_000)
            .map(|n| logs.join(format!("{name}.{n}.log")))
            .find(|p| !p.exists())
            .expect("fewer than 10 000 restarts")
    }

    /// Starts a coordinator (on `port`, or an ephemeral one) and waits until it serves.
    pub fn add_coordinator(&mut self, port: Option<u16>) -> usize {
        let log = self.log("coordinator");
        let process = Proc::spawn(self.coordinator_command(port.unwrap_or(0)), log.clone());
        let grpc = wait_for_address(&log, "coordinator started", "grpc=");
        self.coordinator_http
            .push(wait_for_address(&log, "coordinator started", "http="));
        self.coordinators.push((process, grpc));
        wait_for_line(&log, "lease store reachable");
        self.coordinators.len() - 1
    }

    fn coordinator_command(&self, port: u16) -> Command {
        let mut command = era5(&self.scratch.home());
        command
            .args(["coordinator", "--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--redis",
                &self.redis_url,
                "--lease-ttl",
                &self.ttl.to_string(),
            ])
            .args(["--http", "127.0.0.1:0"])
            .args(["--endpoint", &self.s3_endpoint, "--bucket", BUCKET])
            .args(&self.extra_flags)
            .args(&self.coordinator_flags)
            .env("RUST_LOG", "info");
        if !self
            .coordinator_flags
            .iter()
            .any(|f| f == "--lease-objects")
        {
            command.args(["--lease-objects", "4"]);
        }
        if let Some(pki) = &self.pki {
            command
                .args(pki.server.flags())
                .arg("--redis-ca")
                .arg(&pki.server.ca);
        }
        command
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS) of coordinator `index`.
    pub fn coordinator_url(&self, index: usize) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.coordinators[index].1)
    }

    /// An operator command (`status`, `submit`...) against coordinator `index`, with the
    /// operator's certificate when the cluster runs TLS.
    pub fn operator(&self, subcommand: &str, index: usize) -> Command {
        let mut command = era5(&self.scratch.home());
        command.args([subcommand, "--coordinator", &self.coordinator_url(index)]);
        if let Some(pki) = &self.pki {
            command.args(pki.operator.flags());
        }
        command
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
        let url = self.coordinator_url(coordinator);
        self.add_worker_via(name, &url, extra);
    }

    /// Starts a worker talking to the coordinator at `url` (through a proxy, say). With TLS it
    /// gets a certificate of its own, which names it.
    pub fn add_worker_via(&mut self, name: &str, url: &str, extra: &[&str]) {
        self.add_worker_with_env(name, url, extra, &[]);
    }

    /// Like [`Cluster::add_worker_via`], with environment variables (libfaketime's, say).
    pub fn add_worker_with_env(
        &mut self,
        name: &str,
        url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) {
        let files = self.pki.as_ref().map(|pki| pki.ca.worker(name));
        self.spawn_worker(name, url, files.as_ref(), extra, env);
    }

    /// Starts a worker talking to the coordinator at `url`, presenting `files` (TLS).
    pub fn add_worker_with(
        &mut self,
        name: &str,
        url: &str,
        files: Option<&tests::pki::CertFiles>,
        extra: &[&str],
    ) {
        self.spawn_worker(name, url, files, extra, &[]);
    }

    fn spawn_worker(
        &mut self,
        name: &str,
        url: &str,
        files: Option<&tests::pki::CertFiles>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) {
        let log = self.log(&format!("worker-{name}"));
        // `ERA5_TEST_WORKER_WRAPPER`, read here because children never see `ERA5_*`: a
        // command the workers are started through (a heap profiler, for a soak).
        let wrapper = std::env::var("ERA5_TEST_WORKER_WRAPPER").ok();
        let mut command = era5_via(&self.scratch.home(), wrapper.as_deref());
        command.envs(env.iter().copied());
        command.args(["worker", "--coordinator", url]);
        if let Some(files) = files {
            command.args(files.flags());
        }
        match &self.worker_dest {
            Some(flags) => command.args(flags),
            None => command.arg("--dest").arg(self.dest()),
        };
        command
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
            .env("RUST_LOG", "info,worker=debug,engine=debug");
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

    /// `era5 submit` of a selection from the coordinator's source (the test S3 bucket);
    /// returns the job id.
    pub fn submit(&self, products: &str, vars: &str, start: &str, end: &str) -> String {
        let mut command = self.operator("submit", 0);
        command.args(["--product", products, "--start", start, "--end", end]);
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
        let child = self
            .operator("submit", 0)
            .arg("--wait")
            .args(["--product", products, "--start", start, "--end", end])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run era5 submit");
        let run = super::wait_with_limit(child, limit);
        // Off a terminal, --wait writes a line when the state or the lease counts changed, not
        // one a second (issue 23 §5): no two consecutive lines say the same of them (the bytes,
        // after the last `|`, alone are written at most every 30 s, longer than these jobs).
        let progress: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("job "))
            .map(|l| l.rsplit_once(" | ").map_or(l, |(counts, _bytes)| counts))
            .collect();
        assert!(
            progress.windows(2).all(|pair| pair[0] != pair[1]),
            "submit --wait repeated itself:\n{}",
            run.stderr
        );
        let job = run
            .stdout
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        (run.code, job)
    }

    /// Coordinator `index`'s metric `series` (from its plain-HTTP port).
    pub fn coordinator_metric(&self, index: usize, series: &str) -> Option<f64> {
        let (_, text) = http_get(self.coordinator_http[index], "/metrics")?;
        metric(&text, series)
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
        let mut command = self.operator("status", coordinator);
        command.arg("--json");
        if let Some(job) = job {
            command.args([job, "--leases"]);
        }
        let output = command.output().expect("run era5 status");
        assert!(
            output.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let status = serde_json::from_slice(&output.stdout).expect("status --json prints JSON");
        super::assert_schema("status", &status);
        status
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

/// A gRPC channel to `url` as the client `identity` presents it (no TLS when `None`). Built
/// with the same code as the real clients, so https ⇔ TLS holds here too.
// Async with no await: `connect_lazy` must run inside a runtime, and this keeps callers there.
#[allow(clippy::unused_async)]
pub async fn grpc_channel(url: &str, identity: Option<&CertFiles>) -> tonic::transport::Channel {
    let tls = identity.map(|files| {
        proto::channel::TlsFiles {
            cert: files.cert.clone(),
            key: files.key.clone(),
            ca: files.ca.clone(),
        }
        .read()
        .expect("test certificates")
    });
    proto::channel::CoordinatorChannel {
        url: url.to_string(),
        tls,
        keepalive: Duration::from_secs(5),
        rpc_timeout: Some(Duration::from_secs(10)),
    }
    .endpoint()
    .expect("a valid endpoint")
    .connect_lazy()
}

/// GET `path` over https on 127.0.0.1:`port`, trusting `ca`: the status code and the body.
pub fn https_get(port: u16, path: &str, ca: &Path) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(std::io::Error::other)? {
        roots
            .add(cert.map_err(std::io::Error::other)?)
            .map_err(std::io::Error::other)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
    let connection =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let socket = std::net::TcpStream::connect(("127.0.0.1", port))?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut stream = rustls::StreamOwned::new(connection, socket);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = Vec::new();
    // A peer that closes without close_notify still sent a whole response.
    let _ = stream.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply).to_string();
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Opens a TLS connection to 127.0.0.1:`port` trusting `server_ca`, presenting `client` (or
/// no certificate), and reads: what the server says, as text. A refused client certificate
/// shows as the server's TLS alert (`CertificateRequired`, `UnknownCA`, `CertificateExpired`).
pub fn tls_alert(port: u16, client: Option<&CertFiles>, server_ca: &Path) -> String {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(server_ca).expect("server CA") {
        roots.add(cert.expect("server CA")).expect("server CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots);
    let mut config = match client {
        Some(files) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
                .expect("client certificate")
                .map(|c| c.expect("client certificate"))
                .collect();
            let key = PrivateKeyDer::from_pem_file(&files.key).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client identity")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    let connection = rustls::ClientConnection::new(Arc::new(config), name).expect("TLS client");
    let socket = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut stream = rustls::StreamOwned::new(connection, socket);
    // The HTTP/2 preface: a server that accepted the client answers with its SETTINGS.
    if let Err(error) = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") {
        return error.to_string();
    }
    let _ = stream.flush();
    let mut buffer = [0u8; 64];
    match stream.read(&mut buffer) {
        Ok(0) => "closed".into(),
        Ok(n) => format!("accepted ({n} bytes)"),
        Err(error) => error.to_string(),
    }
}

/// A plain-HTTP GET on 127.0.0.1:`port`: the status code and the body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
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
    let status = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// [`http_get`] that must answer: the status code and the body.
pub fn get(port: u16, path: &str) -> (u16, String) {
    http_get(port, path).unwrap_or_else(|| panic!("GET {path} on 127.0.0.1:{port} got no answer"))
}

/// The value of a Prometheus series (`name{labels}` or `name`) in a text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Resident memory of process `pid`, KiB.
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Waits until `log` has a line containing `text` (at most 20 s).
fn wait_for_line(log: &Path, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(text)
    {
        assert!(
            Instant::now() < deadline,
            "no `{text}` in the log\n{}",
            tail(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a port from a start-up log line (`field=127.0.0.1:PORT`, text or JSON logs).
pub fn wait_for_address(log: &Path, event: &str, field: &str) -> u16 {
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
