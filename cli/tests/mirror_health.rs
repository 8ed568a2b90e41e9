//! Knowing what a mirror holds and keeping it right, against a real S3 server holding an
//! ERA5-shaped bucket: `era5 audit` (listing only, read only), `era5 verify` (every byte
//! against the manifest, `--repair`) and `era5 sync --follow` (the mirror stays current).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use support::*;

const LIMIT: Duration = Duration::from_secs(60);
const SFC: &str = "e5.oper.an.sfc";

/// Every file under `dir` (`.era5` included) with its size and modification time: what a
/// read-only command must leave exactly as it found.
fn tree(dir: &Path) -> BTreeMap<String, (u64, SystemTime)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u64, SystemTime)>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let meta = entry.metadata().unwrap();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            if meta.is_dir() {
                out.insert(format!("{name}/"), (0, meta.modified().unwrap()));
                walk(root, &path, out);
            } else {
                out.insert(name, (meta.len(), meta.modified().unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn audit(s3: &TestS3, scratch: &Scratch, vars: &str, json: bool) -> Run {
    let mut args: Vec<String> = ["audit", "--product", SFC, "--start", "2023-12", "--end"]
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
    args.extend(["2024-04".into(), "--var".into(), vars.into()]);
    args.extend(["--dest".into(), scratch.dest().display().to_string()]);
    args.extend(["--endpoint".into(), s3.endpoint()]);
    if json {
        args.push("--json".into());
    }
    run_era5(scratch, &args, LIMIT)
}

fn sync_sfc(s3: &TestS3, scratch: &Scratch, vars: &str) {
    let args = sync_args(
        &s3.endpoint(),
        &scratch.dest(),
        SFC,
        vars,
        "2023-12",
        "2024-04",
    );
    run_era5(scratch, &args, LIMIT).expect_code(0);
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

fn keys(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().or(v["key"].as_str()).unwrap().to_string())
        .collect()
}

/// The surface fixture has 2023-12, 2024-01, 2024-02 and 2024-04: March is a gap in the bucket.
fn month_key(month: &str, short: &str, last_day: &str) -> String {
    let code = if short == "2t" { "128_167" } else { "128_151" };
    format!("{SFC}/{month}/{SFC}.{code}_{short}.ll025sc.{month}0100_{month}{last_day}23.nc")
}

#[test]
fn audit_of_a_fresh_mirror_exits_0_and_reports_the_buckets_gaps_without_a_get_or_a_write() {
    let (s3, _) = seeded_server();
    let scratch = Scratch::new();
    sync_sfc(&s3, &scratch, "2t,msl");
    let before = tree(&scratch.dest());
    let requests_before = s3.requests().len();

    let run = audit(&s3, &scratch, "2t,msl", true);
    run.expect_code(0);
    let report = json(&run);
    assert_eq!(report["complete"], true);
    assert_eq!(report["expected"], 10);
    assert_eq!(report["in_bucket"], 8);
    assert_eq!(report["held_verified"], 8);
    assert_eq!(
        keys(&report["missing_upstream"]),
        [
            month_key("202403", "msl", "31"),
            month_key("202403", "2t", "31")
        ]
    );
    for list in [
        "missing_in_dest",
        "unrecorded",
        "changed_upstream",
        "not_in_bucket",
    ] {
        assert_eq!(report[list], serde_json::json!([]), "{list}");
    }

    let text = audit(&s3, &scratch, "2t,msl", false);
    text.expect_code(0);
    // The header names the source in use, not the public bucket's AWS address.
    let header = text.stdout.lines().next().unwrap_or_default();
    assert!(
        header.contains(&format!("against s3://{BUCKET} at {}", s3.endpoint())),
        "{header}"
    );
    assert!(
        text.stdout
            .contains("  missing upstream (gaps in the bucket): 2\n"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.ends_with(
        "complete: DEST holds, verified, every object the bucket has for the selection\n"
    ));

    // Listing only: every request was a bucket listing, none named an object.
    let requests = s3.requests();
    assert!(
        requests[requests_before..]
            .iter()
            .all(|r| r.method == "GET" && r.key.is_none()),
        "{:?}",
        &requests[requests_before..]
    );
    assert_eq!(tree(&scratch.dest()), before, "audit changed DEST");
}

#[test]
fn audit_reports_a_deleted_file_a_replaced_object_an_unverified_file_and_a_stale_one() {
    let (s3, seeded) = seeded_server();
    let scratch = Scratch::new();
    sync_sfc(&s3, &scratch, "2t");
    let dest = scratch.dest();
    let deleted = month_key("202401", "2t", "31");
    std::fs::remove_file(dest.join(&deleted)).unwrap();
    let replaced = month_key("202402", "2t", "29");
    s3.put_object(
        &replaced,
        tests::fixtures::object_bytes("another version", 5000),
    );
    let unverified = month_key("202401", "msl", "31");
    let bytes = &seeded.iter().find(|o| o.key == unverified).unwrap().data;
    std::fs::write(dest.join(&unverified), bytes).unwrap();
    let withdrawn = month_key("202404", "2t", "30");
    s3.delete_object(&withdrawn);

    let run = audit(&s3, &scratch, "2t,msl", true);
    run.expect_code(1);
    let report = json(&run);
    assert_eq!(report["complete"], false);
    let missing: Vec<(String, String)> = report["missing_in_dest"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["key"].as_str().unwrap().into(),
                m["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        missing.contains(&(
            deleted.clone(),
            "recorded as verified, but the file is gone".into()
        )),
        "{missing:?}"
    );
    assert!(
        missing
            .iter()
            .any(|(k, r)| k.contains("_msl.") && r == "not in DEST")
    );
    let changed = &report["changed_upstream"][0];
    assert_eq!(changed["key"], replaced.as_str());
    assert_eq!(changed["bucket_size"], 5000);
    assert_eq!(keys(&report["unrecorded"]), [unverified]);
    assert_eq!(
        keys(&report["not_in_bucket"]),
        std::slice::from_ref(&withdrawn)
    );
    assert!(keys(&report["missing_upstream"]).contains(&withdrawn));

    let text = audit(&s3, &scratch, "2t,msl", false);
    text.expect_code(1);
    assert!(text.stdout.contains(&format!(
        "    {deleted}: recorded as verified, but the file is gone\n"
    )));
    assert!(text.stdout.contains("incomplete: "), "{}", text.stdout);

    // A sync of the same selection fixes what the mirror can fix.
    sync_sfc(&s3, &scratch, "2t,msl");
    let after = json(&audit(&s3, &scratch, "2t,msl", true));
    assert_eq!(after["missing_in_dest"], serde_json::json!([]));
    assert_eq!(after["changed_upstream"], serde_json::json!([]));
    assert_eq!(after["unrecorded"], serde_json::json!([]));
    assert_eq!(after["complete"], true);
}

/// A server that lists no ETags: audit and sync agree. A fresh, complete mirror audits
/// complete (exit 0) and a sync downloads nothing; an object replaced by one of another size
/// is found by both, and after the sync the audit is complete again.
#[test]
fn audit_and_sync_agree_when_the_listing_carries_no_etags() {
    let (s3, _) = seeded_server();
    s3.set_list_omits_etag(true);
    let scratch = Scratch::new();
    sync_sfc(&s3, &scratch, "2t");
    let fresh = audit(&s3, &scratch, "2t", true);
    fresh.expect_code(0);
    assert_eq!(json(&fresh)["changed_upstream"], serde_json::json!([]));
    s3.clear_requests();
    sync_sfc(&s3, &scratch, "2t");
    assert!(
        !s3.requests()
            .iter()
            .any(|r| r.method == "GET" && r.key.is_some()),
        "a sync of a complete mirror downloaded: {:?}",
        s3.requests()
    );

    let replaced = month_key("202402", "2t", "29");
    s3.put_object(
        &replaced,
        tests::fixtures::object_bytes("another version", 5000),
    );
    let run = audit(&s3, &scratch, "2t", true);
    run.expect_code(1);
    let report = json(&run);
    assert_eq!(report["changed_upstream"][0]["key"], replaced.as_str());
    assert_eq!(
        report["changed_upstream"][0]["bucket_etag"],
        serde_json::Value::Null
    );
    s3.clear_requests();
    sync_sfc(&s3, &scratch, "2t");
    let fetched: Vec<String> = s3
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .filter_map(|r| r.key.clone())
        .collect();
    assert!(
        !fetched.is_empty() && fetched.iter().all(|k| *k == replaced),
        "fetched {fetched:?}"
    );
    audit(&s3, &scratch, "2t", true).expect_code(0);
}

#[test]
fn audit_refuses_bad_input_with_exit_2() {
    let s3 = TestS3::start(BUCKET);
    let scratch = Scratch::new();
    let run = audit(&s3, &scratch, "2t", false);
    run.expect_code(2);
    assert!(run.stderr.contains("--dest"), "{}", run.stderr);
    std::fs::create_dir_all(scratch.dest()).unwrap();
    let run = audit(&s3, &scratch, "nosuchvar", false);
    run.expect_code(2);
    assert!(run.stderr.contains("`nosuchvar`"), "{}", run.stderr);
    assert!(s3.requests().is_empty());
}

fn verify(scratch: &Scratch, extra: &[&str]) -> Run {
    let mut args: Vec<String> = vec!["verify".into(), "--dest".into()];
    args.push(scratch.dest().display().to_string());
    args.extend(extra.iter().map(std::string::ToString::to_string));
    run_era5(scratch, &args, LIMIT)
}

#[test]
fn verify_finds_a_flipped_byte_and_a_missing_file_and_writes_nothing() {
    let (s3, _) = seeded_server();
    let scratch = Scratch::new();
    sync_sfc(&s3, &scratch, "2t,msl");
    let dest = scratch.dest();
    let clean = verify(&scratch, &[]);
    clean.expect_code(0);
    assert!(
        clean.stdout.starts_with("verified 8 files, "),
        "{}",
        clean.stdout
    );

    let flipped = month_key("202401", "msl", "31");
    let path = dest.join(&flipped);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let gone = month_key("202402", "2t", "29");
    std::fs::remove_file(dest.join(&gone)).unwrap();
    let before = tree(&dest);

    let run = verify(&scratch, &[]);
    run.expect_code(1);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(
        lines[0].starts_with(&format!("MISMATCH {}: mismatch: ", path.display())),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("expected") && lines[0].contains("computed"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&format!(
            "MISSING {}: missing: expected a file of ",
            dest.join(&gone).display()
        )),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("6 ok, 2 failed"), "{}", lines[2]);

    let report = json(&verify(&scratch, &["--json", "--jobs", "1"]));
    assert_eq!(report["checked"], 8);
    assert_eq!(report["findings"][0]["key"], flipped.as_str());
    assert_eq!(report["findings"][0]["problem"], "mismatch");
    assert_eq!(report["findings"][1]["problem"], "missing");

    // A selection narrows the check: only 2t, where one file is missing.
    let narrowed = json(&verify(&scratch, &["--var", "t2m", "--json"]));
    assert_eq!(narrowed["checked"], 4);
    assert_eq!(narrowed["findings"].as_array().unwrap().len(), 1);

    assert_eq!(tree(&dest), before, "verify without --repair changed DEST");
}

#[test]
fn verify_of_an_empty_or_absent_mirror_is_never_silent() {
    let scratch = Scratch::new();
    verify(&scratch, &[]).expect_code(2);
    std::fs::create_dir_all(scratch.dest()).unwrap();
    let run = verify(&scratch, &[]);
    run.expect_code(1);
    assert!(run.stderr.contains("nothing to verify"), "{}", run.stderr);
}

/// `era5 sync --follow` started in the background, its stderr in a file.
struct Follower {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Follower {
    fn start(s3: &TestS3, scratch: &Scratch, vars: &str, start: &str, extra: &[&str]) -> Self {
        let log = scratch.dir.path().join("follow.log");
        let child = era5(&scratch.home())
            .args(sync_args(
                &s3.endpoint(),
                &scratch.dest(),
                SFC,
                vars,
                start,
                "latest",
            ))
            .args(["--follow"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn era5 sync --follow");
        Self { child, log }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The follow lines logged so far: (pass number, the line).
    fn passes(&self) -> Vec<(u64, String)> {
        self.stderr()
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("era5: follow: pass ")?;
                let (number, _) = rest.split_once(':')?;
                Some((number.parse().ok()?, line.to_string()))
            })
            .collect()
    }

    fn terminate(mut self) -> (Option<i32>, String) {
        send_signal(self.child.id(), libc::SIGTERM);
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), self.stderr());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no exit after SIGTERM: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn follow_mirrors_a_new_and_a_replaced_object_within_two_passes_and_stops_with_exit_0() {
    let (s3, _) = seeded_server();
    let scratch = Scratch::new();
    let dest = scratch.dest();
    let follower = Follower::start(&s3, &scratch, "2t", "2024-01", &["--interval", "1s"]);
    wait_until(LIMIT, "the first pass", || !follower.passes().is_empty());
    let first = &follower.passes()[0].1;
    assert!(
        first.contains(": 3 new, 0 changed, 0 unchanged, 0 failed"),
        "{first}"
    );

    let seen = follower.passes().last().unwrap().0;
    let new_key = month_key("202403", "2t", "31");
    let new_bytes = tests::fixtures::object_bytes(&new_key, 90_000);
    s3.put_object(&new_key, new_bytes.clone());
    let replaced = month_key("202402", "2t", "29");
    let replacement = tests::fixtures::object_bytes("the final ERA5 version", 80_000);
    s3.put_object(&replaced, replacement.clone());

    wait_until(LIMIT, "a pass that mirrors both", || {
        follower
            .passes()
            .iter()
            .any(|(_, line)| line.contains(": 1 new, 1 changed, 2 unchanged, 0 failed"))
    });
    let (caught_in, _) = follower
        .passes()
        .into_iter()
        .find(|(_, line)| line.contains(": 1 new, 1 changed"))
        .unwrap();
    assert!(
        caught_in <= seen + 2,
        "mirrored in pass {caught_in}, injected after pass {seen}"
    );
    assert_eq!(
        std::fs::read(dest.join(&new_key)).unwrap(),
        new_bytes.to_vec()
    );
    assert_eq!(
        std::fs::read(dest.join(&replaced)).unwrap(),
        replacement.to_vec()
    );
    // Later passes find nothing to do.
    wait_until(LIMIT, "a quiet pass", || {
        follower.passes().iter().any(|(n, line)| {
            *n > caught_in && line.contains(": 0 new, 0 changed, 4 unchanged, 0 failed")
        })
    });

    let (code, stderr) = follower.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("era5: follow: stopped after "), "{stderr}");
    assert!(temp_files(&dest).is_empty(), "{:?}", temp_files(&dest));
}

#[test]
fn sigterm_during_a_follow_pass_ends_it_after_the_objects_in_flight() {
    let (s3, seeded) = seeded_server();
    slow_bodies(&s3, 512 << 10);
    let scratch = Scratch::new();
    let dest = scratch.dest();
    let follower = Follower::start(&s3, &scratch, "2t,msl", "2023-12", &["--connections", "2"]);
    wait_until(LIMIT, "a first object in place", || {
        !mirrored_keys(&dest).is_empty()
    });
    let (code, stderr) = follower.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("stopping after the objects in flight"),
        "{stderr}"
    );
    assert!(stderr.contains("; stopping"), "{stderr}");
    // What started finished and is right; what had not started was never begun.
    let present = mirrored_keys(&dest);
    let objects: Vec<&SeededObject> = seeded.iter().filter(|o| present.contains(&o.key)).collect();
    assert_eq!(objects.len(), present.len(), "{present:?}");
    assert_mirrored(&dest, &objects);
    assert!(
        present.len() < 8,
        "every object finished: nothing was drained"
    );
    assert!(temp_files(&dest).is_empty(), "{:?}", temp_files(&dest));
}

#[test]
fn verify_repair_refetches_what_fails_and_replaces_a_file_only_with_a_verified_one() {
    let (s3, seeded) = seeded_server();
    let scratch = Scratch::new();
    sync_sfc(&s3, &scratch, "2t,msl");
    let dest = scratch.dest();
    let original = |key: &str| seeded.iter().find(|o| o.key == key).unwrap().data.to_vec();

    let flipped = month_key("202401", "msl", "31");
    let mut bytes = original(&flipped);
    bytes[100] ^= 0x01;
    std::fs::write(dest.join(&flipped), &bytes).unwrap();
    let gone = month_key("202402", "2t", "29");
    std::fs::remove_file(dest.join(&gone)).unwrap();
    // This one fails again on the way in: every body the server sends for it is corrupt.
    let refused = month_key("202404", "msl", "30");
    let mut rotten = original(&refused);
    rotten[7] ^= 0x80;
    std::fs::write(dest.join(&refused), &rotten).unwrap();
    s3.add_fault(tests::faults::FaultRule {
        method: Some(http::Method::GET),
        key_contains: Some(refused.clone()),
        object_gets_only: false,
        query_contains: None,
        operation: None,
        skip: 0,
        times: None,
        fault: tests::faults::Fault::CorruptBody { at: 1000 },
    });

    let endpoint = s3.endpoint();
    let run = verify(&scratch, &["--repair", "--endpoint", &endpoint, "--json"]);
    run.expect_code(1);
    let report = json(&run);
    let repairs = report["repairs"].as_array().unwrap();
    let outcome = |key: &str| repairs.iter().find(|r| r["key"] == key).unwrap().clone();
    assert_eq!(outcome(&flipped)["repaired"], true, "{repairs:?}");
    assert_eq!(outcome(&gone)["repaired"], true, "{repairs:?}");
    assert_eq!(outcome(&refused)["repaired"], false, "{repairs:?}");
    assert_eq!(
        std::fs::read(dest.join(&flipped)).unwrap(),
        original(&flipped)
    );
    assert_eq!(std::fs::read(dest.join(&gone)).unwrap(), original(&gone));
    // Never replaced by an unverified download: the old bytes are still there.
    assert_eq!(std::fs::read(dest.join(&refused)).unwrap(), rotten);
    assert!(temp_files(&dest).is_empty(), "{:?}", temp_files(&dest));

    // Its record is gone (it lied), so audit sees a file not verified yet, and the next sync
    // replaces it once the server sends good bytes; then everything matches again.
    let audited = json(&audit(&s3, &scratch, "2t,msl", true));
    assert_eq!(keys(&audited["unrecorded"]), std::slice::from_ref(&refused));
    s3.clear_faults();
    sync_sfc(&s3, &scratch, "2t,msl");
    assert_eq!(
        std::fs::read(dest.join(&refused)).unwrap(),
        original(&refused)
    );
    verify(&scratch, &[]).expect_code(0);
    audit(&s3, &scratch, "2t,msl", false).expect_code(0);

    // A clean repair run: a new flipped byte, repaired, exit 0.
    let mut bytes = original(&gone);
    bytes[3] ^= 0x10;
    std::fs::write(dest.join(&gone), &bytes).unwrap();
    let run = verify(&scratch, &["--repair", "--endpoint", &endpoint]);
    run.expect_code(0);
    assert!(
        run.stdout.contains(&format!(
            "REPAIRED {}: downloaded",
            dest.join(&gone).display()
        )),
        "{}",
        run.stdout
    );
    assert!(run.stdout.ends_with("repaired 1 of 1\n"), "{}", run.stdout);
    verify(&scratch, &[]).expect_code(0);
}
