//! Crash and interrupt safety: a sync killed with SIGKILL, or stopped with Ctrl-C (SIGINT),
//! leaves no partial file at any final path, and the next run completes without downloading
//! everything again.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(120);
const PRODUCTS: &str = "e5.oper.an.sfc,e5.oper.an.pl,e5.oper.fc.sfc.accumu";

/// Every file at a final path is byte-identical to its object.
fn assert_no_corrupt_final_file(dest: &std::path::Path, seeded: &[SeededObject]) -> usize {
    let present = mirrored_keys(dest);
    for key in &present {
        let object = seeded
            .iter()
            .find(|o| &o.key == key)
            .unwrap_or_else(|| panic!("unexpected file {key}"));
        assert!(
            std::fs::read(dest.join(key)).unwrap() == object.data.as_ref(),
            "{key} is corrupt at its final path"
        );
    }
    present.len()
}

fn interrupted_then_resumed(signal: libc::c_int) {
    let (s3, seeded) = seeded_server();
    slow_bodies(&s3, 256 << 10);
    let scratch = Scratch::new();
    let dest = scratch.dest();
    let args = sync_args(
        &s3.endpoint(),
        &dest,
        PRODUCTS,
        "",
        "2024-01-01",
        "2024-02-29",
    );
    let selected: Vec<&SeededObject> = seeded
        .iter()
        .filter(|o| {
            let key = common::ObjectKey::parse(&o.key).unwrap();
            key.first.date <= jiff::civil::date(2024, 2, 29)
                && key.last.date >= jiff::civil::date(2024, 1, 1)
                && PRODUCTS.split(',').any(|p| p == key.product.name())
        })
        .collect();
    let total: u64 = selected.iter().map(|o| o.data.len() as u64).sum();

    let child = era5(&scratch.home())
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once a good share of the bytes went out and some objects are in place.
    wait_until(Duration::from_secs(60), "a third of the bytes sent", || {
        s3.body_bytes_sent() > total / 3
    });
    wait_until(Duration::from_secs(60), "a first promoted file", || {
        !mirrored_keys(&dest).is_empty()
    });
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, signal) };
    let run = wait_with_limit(child, LIMIT);
    assert_ne!(run.code, Some(0), "an interrupted sync must not exit 0");
    if signal == libc::SIGINT {
        run.expect_code(130);
        assert!(run.stdout.contains("sync interrupted"), "{}", run.stdout);
    }
    let before = assert_no_corrupt_final_file(&dest, &seeded);
    assert!(
        before < selected.len(),
        "the sync finished before it was interrupted"
    );

    // Resume without faults: completes, and does not fetch everything again.
    s3.clear_faults();
    let sent_before = s3.body_bytes_sent();
    let rerun = run_era5(&scratch, &args, LIMIT);
    rerun.expect_code(0);
    assert_mirrored(&dest, &selected);
    assert!(
        temp_files(&dest).is_empty(),
        "temporary files left: {:?}",
        temp_files(&dest)
    );
    let resent = s3.body_bytes_sent() - sent_before;
    assert!(
        resent < total,
        "the rerun downloaded everything again ({resent} of {total} bytes)"
    );
}

#[test]
fn kill_9_mid_sync_leaves_no_corrupt_file_and_the_rerun_resumes() {
    interrupted_then_resumed(libc::SIGKILL);
}

#[test]
fn ctrl_c_stops_cleanly_with_a_non_zero_status_and_the_rerun_resumes() {
    interrupted_then_resumed(libc::SIGINT);
}
