//! Helpers shared by the `era5` integration tests: run the real binary as a child process
//! against a real test S3 server, in a clean environment.

#![allow(dead_code)]

pub mod cluster;
pub mod moto;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use tests::fixtures::{SeededObject, SizeRange, seed_standard};
pub use tests::s3_server::TestS3;

/// Throttles every ranged GET body of an ERA5 object to `bytes_per_sec`, so that syncs and
/// leases last long enough to be interrupted or interfered with.
pub fn slow_bodies(s3: &TestS3, bytes_per_sec: u64) {
    s3.add_fault(tests::faults::FaultRule {
        method: Some(http::Method::GET),
        key_contains: Some("e5.oper".into()),
        object_gets_only: true,
        query_contains: None,
        operation: None,
        skip: 0,
        times: None,
        fault: tests::faults::Fault::SlowBody { bytes_per_sec },
    });
}

/// The bucket name used by every test server.
pub const BUCKET: &str = "nsf-ncar-era5";

/// A test server holding the standard fixture.
pub fn seeded_server() -> (TestS3, Vec<SeededObject>) {
    let s3 = TestS3::start(BUCKET);
    let seeded = seed_standard(&s3, SizeRange::SMALL);
    (s3, seeded)
}

/// `era5` with an environment that cannot leak the developer's settings into the test: no
/// `ERA5_*` or `AWS_*` variables and an empty HOME (no credential files).
pub fn era5(home: &Path) -> Command {
    era5_via(home, None)
}

/// [`era5`] started through `wrapper` when given: its words come first and the binary is its
/// last argument (a profiler such as `heaptrack`, or a script that `exec`s the binary so that
/// it keeps the child's pid and the tests' signals reach it). The wrapper comes from the
/// harness's own environment, since the child's is scrubbed.
pub fn era5_via(home: &Path, wrapper: Option<&str>) -> Command {
    let binary = env!("CARGO_BIN_EXE_era5");
    let words: Vec<&str> = wrapper.map_or_else(Vec::new, |w| w.split_whitespace().collect());
    let mut command = match words.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().to_string();
        if name.starts_with("ERA5_") || name.starts_with("AWS_") || name == "RUST_LOG" {
            command.env_remove(&name);
        }
    }
    command.env("HOME", home).stdin(Stdio::null());
    command
}

/// A finished run.
#[derive(Debug)]
pub struct Run {
    /// Exit code (None if killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from_output(output: Output) -> Self {
        Self {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "unexpected exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// A scratch directory with a mirror destination and a HOME inside.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("home")).expect("home dir");
        Self { dir }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn dest(&self) -> PathBuf {
        self.dir.path().join("mirror")
    }
}

/// The arguments of a sync of `products`/`vars` over `start..end` from `s3` into `dest`,
/// with fast retries so fault tests stay quick.
pub fn sync_args(
    s3_endpoint: &str,
    dest: &Path,
    products: &str,
    vars: &str,
    start: &str,
    end: &str,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "sync".into(),
        "--product".into(),
        products.into(),
        "--start".into(),
        start.into(),
        "--end".into(),
        end.into(),
        "--dest".into(),
        dest.display().to_string(),
        "--endpoint".into(),
        s3_endpoint.into(),
        "--no-progress".into(),
        "--retry-base-ms".into(),
        "20".into(),
    ];
    if !vars.is_empty() {
        args.push("--var".into());
        args.push(vars.into());
    }
    args
}

/// Runs `era5 args..` to completion, failing the test if it takes longer than `limit`.
pub fn run_era5(scratch: &Scratch, args: &[String], limit: Duration) -> Run {
    let child = era5(&scratch.home())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn era5");
    wait_with_limit(child, limit)
}

/// Waits for a child, killing it (and failing) past `limit`.
pub fn wait_with_limit(mut child: Child, limit: Duration) -> Run {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => return Run::from_output(child.wait_with_output().expect("output")),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let run = Run::from_output(child.wait_with_output().expect("output"));
                panic!(
                    "era5 did not finish within {limit:?}\n--- stdout\n{}\n--- stderr\n{}",
                    run.stdout, run.stderr
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The `--json` summary a sync printed (`sync_summary.rs`).
pub fn summary(run: &Run) -> serde_json::Value {
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the summary is not JSON ({e}):\n{}\n--- stderr\n{}",
            run.stdout, run.stderr
        )
    })
}

/// Fails unless `value` matches `docs/schemas/NAME.schema.json`, naming every mismatch: the
/// schemas are the JSON outputs' contract, and the tests hold the real outputs to them.
pub fn assert_schema(name: &str, value: &serde_json::Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/schemas")
        .join(format!("{name}.schema.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let schema: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{} is not a valid schema: {e}", path.display()));
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|error| format!("{error} (at {})", error.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "the {name} output does not match docs/schemas/{name}.schema.json:\n{}\n{value}",
        errors.join("\n")
    );
}

/// One test of this binary at a time (those that measure timing or start many processes).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    common::sync::MutexExt::lock_unpoisoned(&ONE_AT_A_TIME)
}

/// Polls `condition` until it holds, failing after `limit` with `what`.
pub fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Objects of `seeded` whose key starts with any of `prefixes`.
pub fn under<'a>(seeded: &'a [SeededObject], prefixes: &[&str]) -> Vec<&'a SeededObject> {
    seeded
        .iter()
        .filter(|o| prefixes.iter().any(|p| o.key.starts_with(p)))
        .collect()
}

/// Asserts every object is at `dest/<key>` with exactly its bytes.
pub fn assert_mirrored(dest: &Path, objects: &[&SeededObject]) {
    for object in objects {
        let path = dest.join(&object.key);
        let data =
            std::fs::read(&path).unwrap_or_else(|e| panic!("{} missing: {e}", path.display()));
        assert!(
            data == object.data.as_ref(),
            "{} differs from the bucket",
            object.key
        );
    }
}

/// Every regular file under `dest` outside `.era5`, as keys.
pub fn mirrored_keys(dest: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == ".era5") {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut keys = Vec::new();
    walk(dest, dest, &mut keys);
    keys.sort();
    keys
}

/// Files under `dir`, at any depth.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&entry.path(), found);
            } else {
                found.push(entry.path());
            }
        }
    }
    let mut found = Vec::new();
    walk(dir, &mut found);
    found
}

/// Files under `dest/.era5/tmp`, at any depth.
pub fn temp_files(dest: &Path) -> Vec<PathBuf> {
    files_under(&dest.join(".era5/tmp"))
}

/// The manifest's records, by key.
pub fn manifest(dest: &Path) -> std::collections::HashMap<String, serde_json::Value> {
    let text = std::fs::read_to_string(dest.join(".era5/manifest.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|v| (v["key"].as_str().unwrap_or_default().to_string(), v))
        .collect()
}

/// Runs `command` (an era5 process) to completion within `limit`, sampling its peak resident
/// memory (VmHWM, in MiB) from /proc while it runs.
pub fn run_measuring_peak_rss(mut command: Command, limit: Duration) -> (Run, u64) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn era5");
    let pid = child.id();
    let deadline = Instant::now() + limit;
    let mut peak_kib = 0;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let run = Run::from_output(child.wait_with_output().expect("output"));
            panic!(
                "era5 did not finish within {limit:?}\n--- stdout\n{}\n--- stderr\n{}",
                run.stdout, run.stderr
            );
        }
        if let Some(kib) = peak_rss_kib(pid) {
            peak_kib = peak_kib.max(kib);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (
        Run::from_output(child.wait_with_output().expect("output")),
        peak_kib / 1024,
    )
}

/// A process's resident high-water mark (VmHWM), in KiB; for a process run through `nsenter`,
/// that of its (exec'd) self.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A real, small filesystem for tests of a full disk: a tmpfs of a given size mounted at a
/// directory inside a mount namespace of its own (`unshare -m`), held open by a child process.
/// era5 runs inside it through `nsenter`; the test sees its files through `/proc/PID/root`.
/// Dropping it kills the holder, which unmounts the tmpfs; nothing is mounted on the host.
pub struct Tmpfs {
    holder: Child,
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`4m`, `8t`...) at `dir` (created here) in a new namespace.
    pub fn mount(dir: &Path, size: &str) -> Self {
        use std::io::BufRead;
        std::fs::create_dir_all(dir).expect("mount point");
        let mut holder = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o "size=$1" tmpfs "$0" && echo mounted && exec sleep 100000"#)
            .arg(dir)
            .arg(size)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn unshare (util-linux)");
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.take().expect("holder stdout"))
            .read_line(&mut line)
            .expect("read from the holder");
        assert_eq!(
            line.trim(),
            "mounted",
            "could not mount a tmpfs in a mount namespace (needs root or user namespaces)"
        );
        Self {
            holder,
            dir: dir.to_path_buf(),
        }
    }

    /// The mount point, as processes inside the namespace see it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `path` (inside the namespace) as the test sees it.
    pub fn outside(&self, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.holder.id())).join(relative)
    }

    /// `era5` inside the namespace, with the same clean environment as [`era5`].
    pub fn era5(&self, home: &Path) -> Command {
        let mut command = Command::new("nsenter");
        command
            .args(["-t", &self.holder.id().to_string(), "-m", "--"])
            .arg(env!("CARGO_BIN_EXE_era5"));
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().to_string();
            if name.starts_with("ERA5_") || name.starts_with("AWS_") || name == "RUST_LOG" {
                command.env_remove(&name);
            }
        }
        command.env("HOME", home).stdin(Stdio::null());
        command
    }

    /// Changes the size of the filesystem (a full disk gets room again).
    pub fn resize(&self, size: &str) {
        let status = Command::new("nsenter")
            .args(["-t", &self.holder.id().to_string(), "-m", "--"])
            .args(["mount", "-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "remounting the tmpfs failed");
    }

    /// Fills the filesystem with a file named `name` until `leave` bytes are free, or until
    /// it is full (others may be writing to it at the same time).
    pub fn fill(&self, name: &str, leave: u64) {
        use std::io::Write;
        let path = self.outside(&self.dir.join(name));
        let mut size = free_bytes(&self.outside(&self.dir)).saturating_sub(leave);
        let mut file = std::fs::File::create(&path).expect("create the filler");
        let chunk = vec![0xa5u8; 1 << 20];
        while size > 0 {
            let take = size.min(chunk.len() as u64) as usize;
            match file.write_all(&chunk[..take]) {
                Ok(()) => size -= take as u64,
                Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(error) => panic!("filling the tmpfs failed: {error}"),
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Bytes free on the filesystem holding `path` (statvfs).
pub fn free_bytes(path: &Path) -> u64 {
    let stats = rustix::fs::statvfs(path).unwrap();
    stats.f_bavail * stats.f_frsize
}

/// Sends `signal` (a `libc::SIG*` number) to the process `pid`.
pub fn send_signal(pid: u32, signal: i32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a live child has a pid");
    let signal = rustix::process::Signal::from_named_raw(signal).expect("a named signal");
    // The process may have exited already; the caller's assertions tell.
    let _ = rustix::process::kill_process(pid, signal);
}

/// The objects of `seeded` that `products` select from December 2023 to April 2024 (the
/// standard selection of the cluster scenarios), by the catalog's own rule.
pub fn selected_from<'a>(seeded: &'a [SeededObject], products: &str) -> Vec<&'a SeededObject> {
    let products: Vec<String> = products.split(',').map(str::to_string).collect();
    let selection = common::Selection::parse(
        &products,
        &[],
        &[],
        "2023-12",
        "2024-04",
        jiff::civil::date(2026, 1, 1),
    )
    .unwrap();
    seeded
        .iter()
        .filter(|o| common::ObjectKey::parse(&o.key).is_some_and(|k| selection.selects(&k)))
        .collect()
}
