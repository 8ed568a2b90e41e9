//! Crash and interrupt safety: a sync killed with SIGKILL, or stopped with Ctrl-C (SIGINT),
//! leaves no partial file at any final path, and the next run completes without downloading
//! everything again. A power loss, simulated by zeroing ranges a resume state claims (writeback
//! that never reached the disk), never leads to a wrong file at a final path: the next run
//! reads the claimed parts back, fetches again only those that are wrong, and verifies the
//! bytes on disk.

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
    send_signal(child.id(), signal);
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

/// A part a resume state claims.
struct Claimed {
    key: String,
    start: u64,
    end: u64,
}

/// The parts each resume state under `dest` claims, and the data file they are in.
fn claimed_parts(dest: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<Claimed>)> {
    let mut found = Vec::new();
    for state_path in temp_files(dest)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "state"))
    {
        let Ok(text) = std::fs::read_to_string(&state_path) else {
            continue;
        };
        let state: serde_json::Value = serde_json::from_str(&text).unwrap();
        let key = state["key"].as_str().unwrap().to_string();
        let part_size = state["part_size"].as_u64().unwrap();
        let parts: Vec<Claimed> = state["parts"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(index, digest)| {
                let start = index.parse::<u64>().unwrap() * part_size;
                Claimed {
                    key: key.clone(),
                    start,
                    end: start + digest["len"].as_u64().unwrap(),
                }
            })
            .collect();
        let data = state_path.with_extension("part");
        if !parts.is_empty() && data.exists() {
            found.push((data, parts));
        }
    }
    found
}

fn power_loss_then_rerun(extra: &[&str]) {
    let (s3, seeded) = seeded_server();
    slow_bodies(&s3, 256 << 10);
    let scratch = Scratch::new();
    let dest = scratch.dest();
    let mut args = sync_args(
        &s3.endpoint(),
        &dest,
        PRODUCTS,
        "",
        "2024-01-01",
        "2024-02-29",
    );
    args.extend(extra.iter().map(std::string::ToString::to_string));
    // Saves every 100 ms: parts finish seconds apart here, and states must claim some.
    args.extend(["--save-every-ms".to_string(), "100".to_string()]);
    let child = era5(&scratch.home())
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed once several partial downloads have durable parts on record.
    wait_until(
        Duration::from_secs(60),
        "resume states claiming parts",
        || claimed_parts(&dest).len() >= 3,
    );
    let mut killed = child;
    killed.kill().unwrap();
    let _ = killed.wait();

    // The power loss: in every partial file, the claimed parts in its second half never
    // reached the disk (zeroed), and the others did.
    let mut damaged: Vec<Claimed> = Vec::new();
    let mut intact: Vec<Claimed> = Vec::new();
    for (data, parts) in claimed_parts(&dest) {
        let size = std::fs::metadata(&data).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
        let mut any = false;
        let last = parts.iter().map(|p| p.start).max().unwrap();
        for part in parts {
            if part.start >= size / 2 || (!any && part.start == last) {
                std::os::unix::fs::FileExt::write_all_at(
                    &file,
                    &vec![0u8; (part.end - part.start) as usize],
                    part.start,
                )
                .unwrap();
                any = true;
                damaged.push(part);
            } else {
                intact.push(part);
            }
        }
    }
    assert!(!damaged.is_empty());
    let before = assert_no_corrupt_final_file(&dest, &seeded);

    s3.clear_faults();
    s3.clear_requests();
    let rerun = run_era5(&scratch, &args, LIMIT);
    rerun.expect_code(0);
    let present = assert_no_corrupt_final_file(&dest, &seeded);
    assert!(present > before);
    assert!(temp_files(&dest).is_empty(), "{:?}", temp_files(&dest));
    // Only what was wrong was fetched again: every damaged part, and no intact claimed one.
    for part in &damaged {
        let ranges = s3.get_ranges(&part.key);
        assert!(
            ranges
                .iter()
                .any(|(start, end)| *start <= part.start && *end + 1 >= part.end),
            "{} [{}, {}) was not fetched again: {ranges:?}",
            part.key,
            part.start,
            part.end
        );
    }
    for part in &intact {
        let ranges = s3.get_ranges(&part.key);
        assert!(
            !ranges
                .iter()
                .any(|(start, end)| *start < part.end && *end >= part.start),
            "{} [{}, {}) read back intact but was fetched again: {ranges:?}",
            part.key,
            part.start,
            part.end
        );
    }
}

#[test]
fn a_power_loss_never_promotes_zeroed_parts_and_only_they_are_fetched_again() {
    // Multipart objects in their own upload parts: each part's MD5 is what is read back.
    power_loss_then_rerun(&[]);
}

#[test]
fn a_power_loss_is_repaired_part_by_part_for_whole_object_md5s_too() {
    // Parts smaller than the objects: single-part ETags hash the whole object, so each part
    // carries a CRC-64 of its own for the read-back.
    power_loss_then_rerun(&["--part-size", "256KiB"]);
}
