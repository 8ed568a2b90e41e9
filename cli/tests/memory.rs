//! Memory is bounded by the connection cap and buffer sizes, not by object sizes: a sync of a
//! 256 MiB object peaks far below 256 MiB of resident memory.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;

/// The process's resident high-water mark (VmHWM), in KiB. Read from /proc while it runs:
/// the getrusage figure of a child also counts the test process's pages it held between fork
/// and exec.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn peak_memory_does_not_grow_with_object_size() {
    let s3 = TestS3::start(BUCKET);
    let key = "e5.oper.an.sfc/202401/e5.oper.an.sfc.128_167_2t.ll025sc.2024010100_2024013123.nc";
    let size = 256 << 20;
    let data = tests::fixtures::object_bytes(key, size);
    s3.put_object_with(
        key,
        data.clone(),
        tests::s3_server::PutOptions {
            part_size: Some(8 << 20),
            ..Default::default()
        },
    );
    let scratch = Scratch::new();
    let mut args = sync_args(
        &s3.endpoint(),
        &scratch.dest(),
        "e5.oper.an.sfc",
        "2t",
        "2024-01",
        "2024-01",
    );
    args.extend(["--connections".into(), "16".into()]);
    let mut child = era5(&scratch.home())
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak_kib = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "sync did not finish");
        if let Some(kib) = peak_rss_kib(pid) {
            peak_kib = peak_kib.max(kib);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let run = wait_with_limit(child, Duration::from_secs(5));
    run.expect_code(0);
    assert!(std::fs::read(scratch.dest().join(key)).unwrap() == data.as_ref());
    let peak_mib = peak_kib / 1024;
    assert!(peak_mib > 0, "no memory figure was read");
    assert!(
        peak_mib < 96,
        "era5 sync peaked at {peak_mib} MiB for a 256 MiB object"
    );
    eprintln!("peak RSS {peak_mib} MiB");
}
