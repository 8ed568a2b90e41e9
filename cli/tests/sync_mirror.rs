//! `era5 sync` end to end against a real S3 server: byte-identical mirrors, skipping what is
//! verified, refetching what changed upstream, terse listings and a lost manifest.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::*;

const LIMIT: Duration = Duration::from_secs(120);
const SURFACE: &str = "e5.oper.an.sfc";

/// `fault` on every GET of a pressure-level object's bytes.
fn on_pressure_level_gets(s3: &TestS3, fault: tests::faults::Fault) {
    s3.add_fault(tests::faults::FaultRule {
        method: Some(http::Method::GET),
        key_contains: Some("e5.oper.an.pl/".into()),
        object_gets_only: true,
        ..tests::faults::FaultRule::new(fault)
    });
}

/// A sync of five days of pressure levels at four connections of 1 MiB/s each (long enough
/// for progress every second), with `progress` as its only progress flags; it must succeed.
fn slow_pressure_level_sync(s3: &TestS3, scratch: &Scratch, progress: &[&str]) -> Run {
    on_pressure_level_gets(
        s3,
        tests::faults::Fault::SlowBody {
            bytes_per_sec: 1 << 20,
        },
    );
    let mut args = sync_args(
        &s3.endpoint(),
        &scratch.dest(),
        "e5.oper.an.pl",
        "",
        "2024-02-27",
        "2024-03-02",
    );
    args.retain(|a| a != "--no-progress");
    args.extend(progress.iter().map(|s| (*s).to_string()));
    args.extend(["--progress-interval", "1", "--connections", "4"].map(String::from));
    let run = run_era5(scratch, &args, LIMIT);
    run.expect_code(0);
    run
}

fn gets(s3: &TestS3) -> usize {
    s3.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.key.is_some())
        .count()
}

#[test]
fn a_sync_mirrors_the_selection_byte_for_byte_and_a_rerun_downloads_nothing() {
    let (s3, seeded) = seeded_server();
    let scratch = Scratch::new();
    let dest = scratch.dest();
    let args = sync_args(
        &s3.endpoint(),
        &dest,
        "e5.oper.an.sfc,e5.oper.fc.sfc.accumu,e5.oper.invariant",
        "",
        "2023-12-01",
        "2024-02-29",
    );
    let run = run_era5(&scratch, &args, LIMIT);
    run.expect_code(0);
    assert!(run.stdout.contains("sync complete"), "{}", run.stdout);

    let expected: Vec<&SeededObject> = seeded
        .iter()
        .filter(|o| {
            (o.key.starts_with("e5.oper.an.sfc/") && !o.key.starts_with("e5.oper.an.sfc/202404/"))
                || o.key.starts_with("e5.oper.invariant/")
                || (o.key.starts_with("e5.oper.fc.sfc.accumu/") && !o.key.contains("2023110106"))
        })
        .collect();
    assert!(expected.iter().any(|o| o.multipart) && expected.iter().any(|o| !o.multipart));
    assert_mirrored(&dest, &expected);
    let mut expected_keys: Vec<String> = expected.iter().map(|o| o.key.clone()).collect();
    expected_keys.sort();
    assert_eq!(
        mirrored_keys(&dest),
        expected_keys,
        "extra or missing files"
    );
    assert!(
        temp_files(&dest).is_empty(),
        "temporary files left: {:?}",
        temp_files(&dest)
    );
    let records = manifest(&dest);
    assert_eq!(records.len(), expected.len());
    for object in &expected {
        let record = &records[&object.key];
        assert_eq!(record["size"], object.data.len());
        assert_eq!(record["verified"], "full");
    }

    // Second run: everything is verified already; not one GET.
    s3.clear_requests();
    let rerun = run_era5(&scratch, &args, LIMIT);
    rerun.expect_code(0);
    assert_eq!(
        gets(&s3),
        0,
        "a rerun downloaded again: {:?}",
        s3.requests()
    );
    assert!(
        rerun
            .stdout
            .contains(&format!("{} already present", expected.len())),
        "{}",
        rerun.stdout
    );
}

#[test]
fn an_object_replaced_upstream_is_fetched_again_and_only_that_one() {
    let (s3, seeded) = seeded_server();
    let scratch = Scratch::new();
    let dest = scratch.dest();
    let args = sync_args(
        &s3.endpoint(),
        &dest,
        SURFACE,
        "2t,msl",
        "2024-01",
        "2024-02",
    );
    run_era5(&scratch, &args, LIMIT).expect_code(0);

    // ERA5T replaced by final ERA5: same key, same size, new bytes and ETag.
    let changed = under(&seeded, &["e5.oper.an.sfc/202401/"])
        .into_iter()
        .find(|o| o.key.contains("_2t."))
        .unwrap()
        .clone();
    let mut new_bytes = changed.data.to_vec();
    new_bytes[100] ^= 0xff;
    s3.put_object(&changed.key, Bytes::from(new_bytes.clone()));
    s3.clear_requests();

    let run = run_era5(&scratch, &args, LIMIT);
    run.expect_code(0);
    let fetched: Vec<String> = s3
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .filter_map(|r| r.key.clone())
        .collect();
    assert!(
        !fetched.is_empty() && fetched.iter().all(|k| *k == changed.key),
        "fetched {fetched:?}"
    );
    assert_eq!(std::fs::read(dest.join(&changed.key)).unwrap(), new_bytes);
    let stored_etag = s3.object(&changed.key).unwrap().etag;
    assert_eq!(
        manifest(&dest)[&changed.key]["etag"],
        stored_etag.trim_matches('"')
    );
}

#[test]
fn listings_without_etags_do_not_cause_downloads_of_verified_files() {
    let (s3, _) = seeded_server();
    s3.set_list_omits_etag(true);
    let scratch = Scratch::new();
    let dest = scratch.dest();
    let args = sync_args(
        &s3.endpoint(),
        &dest,
        "e5.oper.fc.sfc.accumu",
        "",
        "2024-01",
        "2024-01",
    );
    run_era5(&scratch, &args, LIMIT).expect_code(0);
    s3.clear_requests();
    run_era5(&scratch, &args, LIMIT).expect_code(0);
    assert_eq!(
        gets(&s3),
        0,
        "terse listing caused downloads: {:?}",
        s3.requests()
    );
}

#[test]
fn a_lost_manifest_is_rebuilt_by_verifying_the_files_present() {
    let (s3, seeded) = seeded_server();
    let scratch = Scratch::new();
    let dest = scratch.dest();
    let args = sync_args(&s3.endpoint(), &dest, SURFACE, "", "2024-01", "2024-02");
    run_era5(&scratch, &args, LIMIT).expect_code(0);
    let before = manifest(&dest);
    std::fs::remove_file(dest.join(".era5/manifest.jsonl")).unwrap();

    // One file was damaged while the manifest was gone: it alone must be downloaded again.
    let damaged = under(&seeded, &["e5.oper.an.sfc/202402/"])[0];
    let path = dest.join(&damaged.key);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&path, &bytes).unwrap();

    s3.clear_requests();
    let run = run_era5(&scratch, &args, LIMIT);
    run.expect_code(0);
    let fetched: Vec<String> = s3
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .filter_map(|r| r.key.clone())
        .collect();
    assert!(
        fetched.iter().all(|k| *k == damaged.key) && !fetched.is_empty(),
        "fetched {fetched:?}"
    );
    assert!(
        run.stdout
            .contains(&format!("{} verified locally", before.len() - 1)),
        "{}",
        run.stdout
    );
    assert_eq!(manifest(&dest).len(), before.len());
    assert_mirrored(
        &dest,
        &under(
            &seeded,
            &["e5.oper.an.sfc/202401/", "e5.oper.an.sfc/202402/"],
        ),
    );
}

#[test]
fn size_only_records_are_upgraded_by_a_local_check_not_a_download() {
    let (s3, _) = seeded_server();
    let scratch = Scratch::new();
    let dest = scratch.dest();
    let mut args = sync_args(
        &s3.endpoint(),
        &dest,
        "e5.oper.invariant",
        "",
        "2024-01",
        "2024-01",
    );
    let mut size_args = args.clone();
    size_args.extend(["--verify".into(), "size".into()]);
    run_era5(&scratch, &size_args, LIMIT).expect_code(0);
    assert!(manifest(&dest).values().all(|r| r["verified"] == "size"));
    s3.clear_requests();
    args.extend(["--verify".into(), "etag".into()]);
    run_era5(&scratch, &args, LIMIT).expect_code(0);
    assert_eq!(gets(&s3), 0);
    assert!(manifest(&dest).values().all(|r| r["verified"] == "etag"));
}

#[test]
fn sync_output_without_a_terminal_is_log_lines_and_a_summary() {
    let (s3, _) = seeded_server();
    let run = slow_pressure_level_sync(&s3, &Scratch::new(), &["--no-progress"]);
    let progress_lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("progress: "))
        .collect();
    assert!(
        !progress_lines.is_empty(),
        "no progress lines: {}",
        run.stderr
    );
    assert!(
        progress_lines[0].contains("files ") && progress_lines[0].contains("connections "),
        "{}",
        progress_lines[0]
    );
    assert!(
        run.stdout
            .starts_with("sync complete: 10 of 10 objects present and verified (full)"),
        "{}",
        run.stdout
    );
}

#[test]
fn single_part_etags_are_verified_when_the_object_comes_in_many_parts() {
    let (s3, seeded) = seeded_server();
    let single: Vec<&SeededObject> = under(&seeded, &["e5.oper.an.pl/"])
        .into_iter()
        .filter(|o| !o.multipart)
        .collect();
    assert!(
        single.iter().any(|o| o.data.len() > 512 << 10),
        "the fixture needs a large single-part object"
    );
    // One corrupted byte in the middle of one of them: the in-order MD5 must catch it.
    let victim = single.iter().max_by_key(|o| o.data.len()).unwrap();
    s3.add_fault(tests::faults::FaultRule {
        method: Some(http::Method::GET),
        key_contains: Some(victim.key.clone()),
        object_gets_only: true,
        query_contains: None,
        operation: None,
        skip: 1,
        times: Some(1),
        fault: tests::faults::Fault::CorruptBody { at: 1000 },
    });
    let scratch = Scratch::new();
    let mut args = sync_args(
        &s3.endpoint(),
        &scratch.dest(),
        "e5.oper.an.pl",
        "",
        "2024-02-27",
        "2024-03-02",
    );
    args.extend(["--part-size".into(), "128KiB".into()]);
    let run = run_era5(&scratch, &args, LIMIT);
    run.expect_code(0);
    assert!(
        run.stdout.contains("verification failures: 1"),
        "{}",
        run.stdout
    );
    assert_mirrored(&scratch.dest(), &single);
    assert!(
        manifest(&scratch.dest())
            .values()
            .all(|r| r["verified"] == "full")
    );
}

#[test]
fn a_file_changed_behind_the_manifests_back_is_verified_not_trusted() {
    let (s3, seeded) = seeded_server();
    let scratch = Scratch::new();
    let dest = scratch.dest();
    let args = sync_args(&s3.endpoint(), &dest, SURFACE, "2t", "2024-01", "2024-01");
    run_era5(&scratch, &args, LIMIT).expect_code(0);
    let object = under(
        &seeded,
        &["e5.oper.an.sfc/202401/e5.oper.an.sfc.128_167_2t"],
    )[0];
    let path = dest.join(&object.key);
    // Other bytes of the same size renamed over it (a stale writer, a restore from backup):
    // a size-only check would trust them.
    let other = dest.join("elsewhere");
    let mut garbage = object.data.to_vec();
    garbage.reverse();
    std::fs::write(&other, &garbage).unwrap();
    std::fs::rename(&other, &path).unwrap();

    s3.clear_requests();
    let run = run_era5(&scratch, &args, LIMIT);
    run.expect_code(0);
    assert!(run.stdout.contains("1 downloaded"), "{}", run.stdout);
    assert!(std::fs::read(&path).unwrap() == object.data.as_ref());
    // The new record vouches for the new file: the next run trusts it without a request.
    s3.clear_requests();
    let run = run_era5(&scratch, &args, LIMIT);
    run.expect_code(0);
    assert_eq!(gets(&s3), 0, "{:?}", s3.requests());
}

#[test]
fn a_final_name_of_255_bytes_is_mirrored() {
    let s3 = TestS3::start(BUCKET);
    let head = "e5.oper.invariant.128_172_lsm.";
    let tail = ".1979010100_1979010100.nc";
    let grid = "g".repeat(255 - head.len() - tail.len());
    let name = format!("{head}{grid}{tail}");
    assert_eq!(name.len(), 255);
    let key = format!("e5.oper.invariant/197901/{name}");
    let data = tests::fixtures::object_bytes(&key, 300_000);
    s3.put_object(&key, data.clone());
    let scratch = Scratch::new();
    let args = sync_args(
        &s3.endpoint(),
        &scratch.dest(),
        "e5.oper.invariant",
        "lsm",
        "2024-01",
        "2024-01",
    );
    run_era5(&scratch, &args, LIMIT).expect_code(0);
    assert!(std::fs::read(scratch.dest().join(&key)).unwrap() == data.as_ref());
}

#[test]
fn a_product_folder_symlinked_to_another_filesystem_is_mirrored() {
    let (s3, seeded) = seeded_server();
    let scratch = Scratch::new();
    let dest = scratch.dest();
    // The product folder is a symlink to another volume: a tmpfs of its own.
    let volume = scratch.dir.path().join("volume");
    let tmpfs = Tmpfs::mount(&volume, "64m");
    std::fs::create_dir_all(&dest).unwrap();
    std::os::unix::fs::symlink(&volume, dest.join(SURFACE)).unwrap();
    let args = sync_args(&s3.endpoint(), &dest, SURFACE, "", "2024-01", "2024-01");
    let mut command = tmpfs.era5(&scratch.home());
    command
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let run = wait_with_limit(command.spawn().unwrap(), LIMIT);
    run.expect_code(0);
    let objects = under(&seeded, &["e5.oper.an.sfc/202401/"]);
    let on_volume = tmpfs.outside(&volume);
    for object in &objects {
        let relative = object.key.strip_prefix("e5.oper.an.sfc/").unwrap();
        assert!(
            std::fs::read(on_volume.join(relative)).unwrap() == object.data.as_ref(),
            "{}",
            object.key
        );
    }
    // Its temporaries lived on the volume and are gone.
    let leftovers: Vec<_> = std::fs::read_dir(on_volume.join(".era5-tmp"))
        .map(|d| d.flatten().filter(|e| e.path().is_file()).count())
        .into_iter()
        .collect();
    assert!(leftovers.iter().all(|n| *n == 0), "{leftovers:?}");
}

#[test]
fn a_filesystem_without_file_locks_is_named_as_the_cause() {
    let (s3, _) = seeded_server();
    let scratch = Scratch::new();
    let args = sync_args(
        &s3.endpoint(),
        &scratch.dest(),
        SURFACE,
        "2t",
        "2024-01",
        "2024-01",
    );
    // The flock system call fails as it does on an NFS mount without lock support.
    let mut command = std::process::Command::new("strace");
    command
        .args(["-f", "-o", "/dev/null", "-e", "trace=flock"])
        .args(["-e", "inject=flock:error=ENOLCK"])
        .arg(env!("CARGO_BIN_EXE_era5"))
        .args(&args)
        .env("HOME", scratch.home())
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let run = wait_with_limit(command.spawn().expect("strace is installed"), LIMIT);
    run.expect_code(1);
    assert!(
        run.stderr.contains("does not support file locks")
            && run.stderr.contains("No locks available")
            && run.stderr.contains("local_lock=flock")
            && !run.stderr.contains("another era5 sync"),
        "{}",
        run.stderr
    );
    assert!(mirrored_keys(&scratch.dest()).is_empty());
}

/// The keys `era5 plan --json` lists for `products` over the test range, with `extra` flags.
fn planned_keys(s3: &TestS3, scratch: &Scratch, products: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "plan",
        "--product",
        products,
        "--start",
        "2023-12-01",
        "--end",
        "2024-02-29",
        "--endpoint",
        &s3.endpoint(),
        "--json",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| (*s).to_string()));
    let run = run_era5(scratch, &args, LIMIT);
    run.expect_code(0);
    let plan = summary(&run);
    let mut keys: Vec<String> = plan["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .map(|o| o["key"].as_str().unwrap_or_default().to_string())
        .collect();
    keys.sort();
    keys
}

const SHARDED: &str = "e5.oper.an.sfc,e5.oper.fc.sfc.accumu,e5.oper.invariant";

/// `era5 sync --shard I/4` of [`SHARDED`] into `dest`, started, with `JOB_COMPLETION_INDEX`
/// instead of I for shard 3 (`auto/4`, as a Kubernetes Indexed Job runs it).
fn spawn_shard(s3: &TestS3, scratch: &Scratch, index: u32) -> std::process::Child {
    let mut args = sync_args(
        &s3.endpoint(),
        &scratch.dest(),
        SHARDED,
        "",
        "2023-12-01",
        "2024-02-29",
    );
    let mut command = era5(&scratch.home());
    if index == 3 {
        args.extend(["--shard".into(), "auto/4".into()]);
        command.env("JOB_COMPLETION_INDEX", "3");
    } else {
        args.extend(["--shard".into(), format!("{index}/4")]);
    }
    args.push("--json".into());
    command
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn era5")
}

/// `era5 audit` of [`SHARDED`] in `dest`, with `extra` flags.
fn audit_sharded(s3: &TestS3, scratch: &Scratch, extra: &[&str]) -> Run {
    let mut args: Vec<String> = [
        "audit",
        "--product",
        SHARDED,
        "--start",
        "2023-12-01",
        "--end",
        "2024-02-29",
        "--endpoint",
        &s3.endpoint(),
        "--dest",
        &scratch.dest().display().to_string(),
        "--json",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| (*s).to_string()));
    run_era5(scratch, &args, LIMIT)
}

#[test]
fn four_shards_at_once_mirror_exactly_the_plan_into_one_dest() {
    let (s3, seeded) = seeded_server();
    let scratch = Scratch::new();
    // The shards `plan --shard` previews are disjoint and together the plan.
    let whole = planned_keys(&s3, &scratch, SHARDED, &[]);
    let mut union = Vec::new();
    for index in 0..4 {
        let shard = planned_keys(&s3, &scratch, SHARDED, &["--shard", &format!("{index}/4")]);
        assert!(
            !shard.is_empty(),
            "shard {index} of {} keys is empty",
            whole.len()
        );
        union.extend(shard);
    }
    union.sort();
    assert_eq!(union, whole, "the shards are not exactly the plan");

    let shards: Vec<_> = (0..4).map(|i| spawn_shard(&s3, &scratch, i)).collect();
    let mut downloaded = 0;
    for (index, child) in shards.into_iter().enumerate() {
        let run = wait_with_limit(child, LIMIT);
        run.expect_code(0);
        let report = summary(&run);
        assert_eq!(report["objects"]["failed"], 0, "shard {index}: {report}");
        downloaded += report["objects"]["downloaded"].as_u64().unwrap_or(0);
    }
    assert_eq!(
        downloaded,
        whole.len() as u64,
        "an object was fetched twice or never"
    );
    let expected: Vec<&SeededObject> = seeded.iter().filter(|o| whole.contains(&o.key)).collect();
    assert_mirrored(&scratch.dest(), &expected);
    assert_eq!(
        mirrored_keys(&scratch.dest()),
        whole,
        "extra or missing files"
    );
    assert!(temp_files(&scratch.dest()).is_empty(), "temporaries left");

    // The whole mirror audits complete, and so does each shard, with no stray files.
    let audit = audit_sharded(&s3, &scratch, &[]);
    audit.expect_code(0);
    let one = audit_sharded(&s3, &scratch, &["--shard", "2/4"]);
    one.expect_code(0);
    let report = summary(&one);
    assert_eq!(report["shard"]["shard"], "2/4", "{report}");
    assert_eq!(
        report["not_in_bucket"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
    // The records of all four shards' journals are the manifest: verify reads every file.
    let verify = run_era5(
        &scratch,
        &[
            "verify".into(),
            "--dest".into(),
            scratch.dest().display().to_string(),
            "--json".into(),
            "--no-progress".into(),
        ],
        LIMIT,
    );
    verify.expect_code(0);
    assert_eq!(summary(&verify)["ok"], whole.len(), "{}", verify.stdout);
}

#[test]
fn a_shard_killed_mid_sync_completes_when_run_again() {
    let (s3, seeded) = seeded_server();
    let scratch = Scratch::new();
    // Slow bodies keep every shard transferring when one is killed.
    slow_bodies(&s3, 512 << 10);
    let mut shards: Vec<_> = (0..4).map(|i| spawn_shard(&s3, &scratch, i)).collect();
    wait_until(LIMIT, "shard 1 transferring", || {
        !temp_files(&scratch.dest()).is_empty()
    });
    let killed = shards.remove(1);
    send_signal(killed.id(), libc::SIGKILL);
    let _ = wait_with_limit(killed, LIMIT);
    s3.clear_faults();
    for child in shards {
        wait_with_limit(child, LIMIT).expect_code(0);
    }
    let incomplete = audit_sharded(&s3, &scratch, &["--shard", "1/4"]);
    assert_eq!(
        incomplete.code,
        Some(1),
        "shard 1 was complete before it was killed"
    );

    let again = wait_with_limit(spawn_shard(&s3, &scratch, 1), LIMIT);
    again.expect_code(0);
    audit_sharded(&s3, &scratch, &[]).expect_code(0);
    let whole = planned_keys(&s3, &scratch, SHARDED, &[]);
    let expected: Vec<&SeededObject> = seeded.iter().filter(|o| whole.contains(&o.key)).collect();
    assert_mirrored(&scratch.dest(), &expected);
}

/// `era5 ARGS --json`'s stdout as JSON, after checking its exit code.
fn json_of(scratch: &Scratch, args: &[&str], code: i32) -> serde_json::Value {
    let args: Vec<String> = args.iter().map(|a| (*a).to_string()).collect();
    let run = run_era5(scratch, &args, LIMIT);
    run.expect_code(code);
    summary(&run)
}

#[test]
fn every_json_output_matches_its_schema() {
    let (s3, _) = seeded_server();
    let scratch = Scratch::new();
    let endpoint = s3.endpoint();
    let dest = scratch.dest().display().to_string();
    let selection = [
        "--product",
        SHARDED,
        "--start",
        "2023-12-01",
        "--end",
        "2024-02-29",
        "--endpoint",
        &endpoint,
    ];
    let with = |command: &str, extra: &[&str]| -> Vec<String> {
        let mut args = vec![command.to_string()];
        args.extend(selection.iter().map(|s| (*s).to_string()));
        args.extend(extra.iter().map(|s| (*s).to_string()));
        args
    };
    let json = |args: Vec<String>, code: i32| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        json_of(&scratch, &args, code)
    };
    assert_schema(
        "catalog",
        &json_of(&scratch, &["catalog", "--offline", "--json"], 0),
    );
    assert_schema("plan", &json(with("plan", &["--json"]), 0));
    let shard = json(with("plan", &["--json", "--shard", "1/3"]), 0);
    assert_schema("plan", &shard);
    assert_eq!(shard["shard"]["shard"], "1/3", "{shard}");
    assert_schema(
        "sync",
        &json(
            with("sync", &["--dest", &dest, "--json", "--no-progress"]),
            0,
        ),
    );
    assert_schema(
        "audit",
        &json(with("audit", &["--dest", &dest, "--json"]), 0),
    );
    assert_schema(
        "audit",
        &json(
            with("audit", &["--dest", &dest, "--json", "--shard", "0/3"]),
            0,
        ),
    );
    let verify = ["verify", "--dest", &dest, "--json", "--no-progress"];
    assert_schema("verify", &json_of(&scratch, &verify, 0));
    // Findings of each kind: a file gone, and one with other bytes.
    let files = files_under(&scratch.dest());
    let mut data: Vec<&std::path::PathBuf> = files
        .iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == ".era5"))
        .collect();
    data.sort();
    std::fs::remove_file(data[0]).unwrap();
    let mut bytes = std::fs::read(data[1]).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(data[1], bytes).unwrap();
    let findings = json_of(&scratch, &verify, 1);
    assert_schema("verify", &findings);
    let problems: Vec<&str> = findings["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["problem"].as_str())
        .collect();
    assert!(
        problems.contains(&"missing") && problems.contains(&"mismatch"),
        "{findings}"
    );
    let incomplete = json(with("audit", &["--dest", &dest, "--json"]), 1);
    assert_schema("audit", &incomplete);
    assert_eq!(
        incomplete["missing_in_dest"].as_array().map(Vec::len),
        Some(1),
        "{incomplete}"
    );
}

#[test]
fn progress_off_a_terminal_is_ndjson_events_that_match_their_schema() {
    let (s3, seeded) = seeded_server();
    // No progress flag: off a terminal, the default is events.
    let run = slow_pressure_level_sync(&s3, &Scratch::new(), &[]);
    let events: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|value| value.get("event").is_some())
        .collect();
    for event in &events {
        assert_schema("progress", event);
    }
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    let planned = seeded
        .iter()
        .filter(|o| o.key.starts_with("e5.oper.an.pl/"))
        .filter(|o| {
            ["20240227", "20240228", "20240229", "20240301", "20240302"]
                .iter()
                .any(|d| o.key.contains(d))
        })
        .count();
    assert_eq!(kinds.first(), Some(&"start"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"end"), "{kinds:?}");
    assert!(kinds.contains(&"progress"), "no periodic totals: {kinds:?}");
    assert_eq!(events[0]["objects"], planned, "{}", events[0]);
    let mut keys: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "object")
        .map(|e| {
            assert_eq!(e["outcome"], "downloaded", "{e}");
            e["key"].as_str().unwrap_or_default()
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), planned, "one object event per object");
    let end = events.last().unwrap();
    assert_eq!(end["complete"], true, "{end}");
    assert_eq!(end["done"], planned, "{end}");
    assert!(!run.stderr.contains("progress: "), "log lines with events");

    // A failure carries its class and reason; --progress json asks for events anywhere.
    let failing = Scratch::new();
    s3.clear_faults();
    on_pressure_level_gets(
        &s3,
        tests::faults::Fault::Status {
            status: 403,
            code: "AccessDenied".into(),
        },
    );
    let mut args = sync_args(
        &s3.endpoint(),
        &failing.dest(),
        "e5.oper.an.pl",
        "",
        "2024-02-27",
        "2024-02-27",
    );
    args.retain(|a| a != "--no-progress");
    args.extend(["--progress".into(), "json".into()]);
    let run = run_era5(&failing, &args, LIMIT);
    run.expect_code(1);
    let failed: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|e| e["event"] == "object")
        .collect();
    assert!(!failed.is_empty(), "{}", run.stderr);
    for event in &failed {
        assert_schema("progress", event);
        assert_eq!(event["outcome"], "failed", "{event}");
        assert_eq!(event["reason_class"], "permanent", "{event}");
    }
}
