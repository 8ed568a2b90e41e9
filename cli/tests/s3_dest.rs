//! `era5 sync --dest s3://...` (issue 22 §1): a month of the synthetic bucket copied into
//! another object store, the test S3 server and moto's, exactly; resumed after kill -9;
//! faults on the destination; bad input; and `era5 uploads`.
//!
//! Every object is checked by its bytes in the destination, and every fault test checks that
//! nothing partial is at a key.

mod support;

use std::time::Duration;

use support::moto::Moto;
use support::*;
use tests::faults::{Fault, FaultRule};
use tests::fixtures::object_bytes;
use tests::s3_server::{ACCESS_KEY, Operation, PutOptions, SECRET_KEY};

const LIMIT: Duration = Duration::from_secs(120);
const DEST_BUCKET: &str = "era5-copy";
const PREFIX: &str = "mirror/era5";
const PRODUCTS: &str = "e5.oper.an.sfc,e5.oper.an.vinteg,e5.oper.fc.sfc.accumu";
const MIB: usize = 1 << 20;

/// Large objects beside the standard fixture's small ones, in the month copied: a multipart
/// source of three 5 MiB parts (copied in its own parts, so its ETag is reproduced) and a
/// single-part 20 MiB one (copied in 8 MiB parts, its whole MD5 hashed in order).
const MULTIPART_KEY: &str =
    "e5.oper.an.sfc/202401/e5.oper.an.sfc.128_134_sp.ll025sc.2024010100_2024013123.nc";
const SINGLE_KEY: &str =
    "e5.oper.an.sfc/202401/e5.oper.an.sfc.128_164_tcc.ll025sc.2024010100_2024013123.nc";

/// The source: the standard fixture and the two large objects; the objects of the month.
fn source() -> (TestS3, Vec<SeededObject>) {
    let (s3, seeded) = seeded_server();
    let multipart = object_bytes(MULTIPART_KEY, 12 * MIB + 12_345);
    s3.put_object_with(
        MULTIPART_KEY,
        multipart.clone(),
        PutOptions {
            part_size: Some(5 * MIB),
            ..PutOptions::default()
        },
    );
    let single = object_bytes(SINGLE_KEY, 20 * MIB + 7);
    s3.put_object(SINGLE_KEY, single.clone());
    let mut month: Vec<SeededObject> = seeded
        .into_iter()
        // January's objects, and the half-month forecast file that starts in December.
        .filter(|o| {
            PRODUCTS
                .split(',')
                .any(|p| o.key.starts_with(&format!("{p}/")))
                && (o.key.contains("/202401/") || o.key.contains("_202401"))
        })
        .collect();
    month.push(SeededObject {
        key: MULTIPART_KEY.into(),
        data: multipart,
        multipart: true,
    });
    month.push(SeededObject {
        key: SINGLE_KEY.into(),
        data: single,
        multipart: false,
    });
    month.sort_by(|a, b| a.key.cmp(&b.key));
    (s3, month)
}

/// `era5 sync` of the month from `source` into `s3://DEST_BUCKET/PREFIX` at `endpoint`.
fn args(source: &TestS3, endpoint: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "sync",
        "--product",
        PRODUCTS,
        "--start",
        "2024-01",
        "--end",
        "2024-01",
        "--endpoint",
        &source.endpoint(),
        "--dest",
        &format!("s3://{DEST_BUCKET}/{PREFIX}"),
        "--dest-endpoint",
        endpoint,
        "--no-progress",
        "--json",
        "--retry-base-ms",
        "20",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| (*s).to_string()));
    args
}

/// `era5` with the destination's credentials (the test server's keys) in the environment.
fn era5_with_keys(scratch: &Scratch, args: &[String], limit: Duration) -> Run {
    let child = era5(&scratch.home())
        .args(args)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn era5");
    wait_with_limit(child, limit)
}

fn dest_key(key: &str) -> String {
    format!("{PREFIX}/{key}")
}

/// The digest headers `key`'s UploadParts carried, each distinct set once.
fn part_digests(dest: &TestS3, key: &str) -> Vec<String> {
    let mut sets: Vec<String> = dest
        .requests()
        .iter()
        .filter(|r| {
            r.key.as_deref() == Some(&dest_key(key)) && r.operation == Operation::UploadPart
        })
        .map(|r| r.digests.join(","))
        .collect();
    sets.sort();
    sets.dedup();
    sets
}

/// Every object of `month` is at its key in `dest`, byte for byte, and nothing else is.
fn assert_copied(dest: &TestS3, month: &[SeededObject]) {
    for object in month {
        let stored = dest
            .object(&dest_key(&object.key))
            .unwrap_or_else(|| panic!("{} missing in the destination", object.key));
        assert!(stored.data == object.data, "{} differs", object.key);
    }
    let keys = dest.keys();
    assert_eq!(keys.len(), month.len(), "extra objects: {keys:?}");
}

#[test]
fn a_month_copies_into_the_test_server_exactly_and_a_rerun_reads_nothing_from_the_source() {
    let (source, month) = source();
    let dest = TestS3::start(DEST_BUCKET);
    let scratch = Scratch::new();
    let run = era5_with_keys(&scratch, &args(&source, &dest.endpoint(), &[]), LIMIT);
    run.expect_code(0);
    let first = summary(&run);
    assert_eq!(first["objects"]["downloaded"], month.len(), "{first}");
    assert_copied(&dest, &month);
    // The multipart source was copied in its own parts: the same ETag.
    assert_eq!(
        dest.object(&dest_key(MULTIPART_KEY)).unwrap().etag,
        source.object(MULTIPART_KEY).unwrap().etag
    );
    // No upload was left open.
    assert!(dest.uploads().is_empty());
    // A multipart source's parts carry their Content-MD5s (their MD5s are its check); a
    // single-part source's carry CRC32Cs (its bytes are MD5-hashed whole, once), and the
    // copy keeps the composite CRC32C of them.
    assert_eq!(part_digests(&dest, MULTIPART_KEY), ["content-md5"]);
    assert_eq!(part_digests(&dest, SINGLE_KEY), ["x-amz-checksum-crc32c"]);
    let single = dest.object(&dest_key(SINGLE_KEY)).unwrap();
    assert!(
        single.composite_checksum
            && matches!(
                single.checksum,
                Some((tests::s3_server::ChecksumAlgo::Crc32c, _))
            ),
        "{:?}",
        single.checksum
    );
    // Open uploads to resume are looked for once per batch's folder, not once per object.
    assert_eq!(dest.count(Operation::ListMultipartUploads), 1);
    // The cost report counts what the destination received.
    assert_eq!(
        first["requests"]["upload_part"],
        dest.count(Operation::UploadPart),
        "{first}"
    );
    assert_eq!(
        first["requests"]["put"],
        dest.count(Operation::PutObject),
        "{first}"
    );

    source.clear_requests();
    let again = era5_with_keys(&scratch, &args(&source, &dest.endpoint(), &[]), LIMIT);
    again.expect_code(0);
    let second = summary(&again);
    assert_eq!(second["objects"]["present"], month.len(), "{second}");
    assert_eq!(
        source.count(Operation::GetObject),
        0,
        "a re-run over a complete destination read from the source"
    );

    // The audit reads the destination's listing (and a HEAD per copy whose ETag differs).
    let audit = |scratch: &Scratch| {
        let mut audit = args(&source, &dest.endpoint(), &[]);
        audit[0] = "audit".into();
        audit.retain(|a| a != "--no-progress" && a != "--retry-base-ms" && a != "20");
        era5_with_keys(scratch, &audit, LIMIT)
    };
    // Verify reads every copy back: its own ETag, and the source's that it records.
    let verify = |scratch: &Scratch| {
        let args: Vec<String> = [
            "verify",
            "--dest",
            &format!("s3://{DEST_BUCKET}/{PREFIX}"),
            "--dest-endpoint",
            &dest.endpoint(),
            "--no-progress",
            "--json",
        ]
        .map(String::from)
        .to_vec();
        era5_with_keys(scratch, &args, LIMIT)
    };
    let verified = verify(&scratch);
    verified.expect_code(0);
    assert_eq!(summary(&verified)["ok"], month.len());
    dest.add_fault(FaultRule {
        key_contains: Some("128_134_sp".into()),
        operation: Some(Operation::GetObject),
        ..FaultRule::new(Fault::CorruptBody { at: 6 * MIB as u64 })
    });
    let rotten = verify(&scratch);
    rotten.expect_code(1);
    let report = summary(&rotten);
    assert_eq!(report["findings"][0]["key"], MULTIPART_KEY, "{report}");
    assert_eq!(report["findings"][0]["problem"], "mismatch", "{report}");
    dest.clear_faults();

    let complete = audit(&scratch);
    complete.expect_code(0);
    assert_eq!(summary(&complete)["held_verified"], month.len());
    dest.delete_object(&dest_key(SINGLE_KEY));
    let incomplete = audit(&scratch);
    incomplete.expect_code(1);
    let report = summary(&incomplete);
    assert_eq!(report["missing_in_dest"][0]["key"], SINGLE_KEY, "{report}");
    assert_eq!(report["held_verified"], month.len() - 1, "{report}");
}

#[test]
fn a_month_copies_into_moto_exactly() {
    let (source, month) = source();
    let scratch = Scratch::new();
    let moto = Moto::start(&scratch);
    moto.create_bucket(&scratch, DEST_BUCKET);
    let run = era5_with_keys(&scratch, &args(&source, &moto.endpoint(), &[]), LIMIT);
    run.expect_code(0);
    // moto took the single-part source's CRC32C parts, and its composite checksum of the
    // bytes it holds (computed by its own CRC32C) was the one the parts sent give.
    assert!(!run.stderr.contains("does not echo"), "{}", run.stderr);
    let listed = moto.objects(&scratch, DEST_BUCKET);
    assert_eq!(listed.len(), month.len(), "{listed:?}");
    for object in &month {
        let (size, md5) = listed
            .get(&dest_key(&object.key))
            .unwrap_or_else(|| panic!("{} missing in moto", object.key));
        assert_eq!(*size, object.data.len() as u64, "{}", object.key);
        let want: String = engine::fast_md5::Md5::digest(&object.data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(*md5, want, "{}", object.key);
    }
    let again = era5_with_keys(&scratch, &args(&source, &moto.endpoint(), &[]), LIMIT);
    again.expect_code(0);
    assert_eq!(summary(&again)["objects"]["present"], month.len());
}

#[test]
fn a_copy_killed_mid_upload_resumes_its_parts() {
    let (source, month) = source();
    let dest = TestS3::start(DEST_BUCKET);
    // Slow the multipart object's later parts so the kill lands mid-upload.
    source.add_fault(FaultRule {
        key_contains: Some("128_134_sp".into()),
        operation: Some(Operation::GetObject),
        skip: 1,
        ..FaultRule::new(Fault::SlowBody {
            bytes_per_sec: 256 << 10,
        })
    });
    let scratch = Scratch::new();
    let child = era5(&scratch.home())
        .args(args(&source, &dest.endpoint(), &["--connections", "2"]))
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn era5");
    let key = dest_key(MULTIPART_KEY);
    wait_until(LIMIT, "a part of the multipart object uploaded", || {
        dest.uploads()
            .iter()
            .any(|u| u.key == key && !u.parts.is_empty())
    });
    send_signal(child.id(), libc::SIGKILL);
    let _ = wait_with_limit(child, LIMIT);
    assert!(
        dest.object(&key).is_none(),
        "a partial object appeared at its key"
    );
    let uploaded_before: Vec<i32> = dest
        .uploads()
        .iter()
        .find(|u| u.key == key)
        .map(|u| u.parts.iter().map(|p| p.number).collect())
        .unwrap_or_default();
    assert!(!uploaded_before.is_empty());
    // The server records a request once it has answered it, a moment after storing the
    // part: wait for the killed run's records of those parts, so none lands after the clear
    // below and passes for an upload of the resumed run (seen under CI's load).
    let has_part = |query: &str, number: i32| {
        query
            .split('&')
            .any(|p| p == format!("partNumber={number}"))
    };
    wait_until(LIMIT, "the killed run's part uploads recorded", || {
        let recorded: Vec<String> = dest
            .requests()
            .iter()
            .filter(|r| {
                r.key.as_deref() == Some(key.as_str()) && r.operation == Operation::UploadPart
            })
            .filter_map(|r| r.query.clone())
            .collect();
        uploaded_before
            .iter()
            .all(|n| recorded.iter().any(|q| has_part(q, *n)))
    });

    source.clear_faults();
    dest.clear_requests();
    let run = era5_with_keys(&scratch, &args(&source, &dest.endpoint(), &[]), LIMIT);
    run.expect_code(0);
    assert_copied(&dest, &month);
    let sent_again: Vec<String> = dest
        .requests()
        .iter()
        .filter(|r| r.key.as_deref() == Some(key.as_str()) && r.operation == Operation::UploadPart)
        .filter_map(|r| r.query.clone())
        .collect();
    for number in &uploaded_before {
        assert!(
            !sent_again.iter().any(|q| has_part(q, *number)),
            "part {number} was uploaded again: {sent_again:?}"
        );
    }
    assert!(
        sent_again.len() + uploaded_before.len() >= 3,
        "the resume uploaded too few parts: {sent_again:?}"
    );
    assert!(dest.uploads().is_empty(), "an upload was left open");
}

/// Runs the month with `rule` on the destination and returns the run.
fn with_dest_fault(rule: FaultRule) -> (TestS3, Vec<SeededObject>, Run) {
    let (source, month) = source();
    let dest = TestS3::start(DEST_BUCKET);
    dest.add_fault(rule);
    let scratch = Scratch::new();
    let run = era5_with_keys(
        &scratch,
        &args(&source, &dest.endpoint(), &["--retries", "4"]),
        LIMIT,
    );
    drop(source);
    (dest, month, run)
}

fn upload_part_rule(fault: Fault, times: Option<usize>) -> FaultRule {
    FaultRule {
        key_contains: Some("128_134_sp".into()),
        operation: Some(Operation::UploadPart),
        skip: 1,
        times,
        ..FaultRule::new(fault)
    }
}

#[test]
fn transient_upload_faults_are_retried_and_the_copy_is_exact() {
    for fault in [
        Fault::SlowDown,
        Fault::Reset { processed: false },
        Fault::Status {
            status: 400,
            code: "BadDigest".into(),
        },
    ] {
        let (dest, month, run) = with_dest_fault(upload_part_rule(fault.clone(), Some(2)));
        run.expect_code(0);
        assert_copied(&dest, &month);
        assert!(
            dest.uploads().is_empty(),
            "{fault:?}: an upload was left open"
        );
        assert!(
            dest.count(Operation::UploadPart) > 3,
            "{fault:?}: the fault never fired"
        );
    }
}

#[test]
fn a_part_corrupted_on_its_way_is_refused_by_its_crc32c_and_sent_again() {
    let (dest, month, run) = with_dest_fault(FaultRule {
        key_contains: Some("128_164_tcc".into()),
        operation: Some(Operation::UploadPart),
        times: Some(1),
        ..FaultRule::new(Fault::CorruptBody { at: 1_000 })
    });
    run.expect_code(0);
    assert_copied(&dest, &month);
    let refused: Vec<u16> = dest
        .requests()
        .iter()
        .filter(|r| r.fault.as_deref() == Some("corrupt"))
        .map(|r| r.status)
        .collect();
    assert_eq!(refused, [400], "the corrupted part was not refused once");
    assert_eq!(part_digests(&dest, SINGLE_KEY), ["x-amz-checksum-crc32c"]);
}

#[test]
fn a_store_that_ignores_checksums_gets_parts_checked_by_their_md5() {
    let (source, month) = source();
    let dest = TestS3::start(DEST_BUCKET);
    dest.set_ignore_checksums(true);
    let scratch = Scratch::new();
    let run = era5_with_keys(&scratch, &args(&source, &dest.endpoint(), &[]), LIMIT);
    run.expect_code(0);
    assert_copied(&dest, &month);
    assert_eq!(
        run.stderr
            .matches("does not echo x-amz-checksum-crc32c")
            .count(),
        1,
        "{}",
        run.stderr
    );
    // Nothing checked the CRC32Cs: the copy's ETag is the one the parts' MD5s give.
    let copy = dest.object(&dest_key(SINGLE_KEY)).unwrap();
    assert!(
        copy.checksum.is_none() && copy.etag.ends_with("-3\""),
        "{} {:?}",
        copy.etag,
        copy.checksum
    );
}

#[test]
fn a_completion_answering_another_etag_leaves_nothing_at_the_key() {
    let (dest, _month, run) = with_dest_fault(FaultRule {
        key_contains: Some("128_134_sp".into()),
        operation: Some(Operation::CompleteMultipartUpload),
        ..FaultRule::new(Fault::WrongEtag)
    });
    run.expect_code(1);
    assert!(
        dest.object(&dest_key(MULTIPART_KEY)).is_none(),
        "the object stayed at its key"
    );
    assert!(
        run.stderr.contains("not the") && run.stderr.contains(MULTIPART_KEY),
        "{}",
        run.stderr
    );
}

#[test]
fn access_denied_on_put_fails_clearly_and_writes_nothing() {
    let (dest, _month, run) = with_dest_fault(FaultRule {
        method: Some(http::Method::PUT),
        ..FaultRule::new(Fault::Status {
            status: 403,
            code: "AccessDenied".into(),
        })
    });
    run.expect_code(1);
    assert!(dest.keys().is_empty(), "{:?}", dest.keys());
    assert!(run.stderr.contains("AccessDenied"), "{}", run.stderr);
}

#[test]
fn a_destination_bucket_that_does_not_exist_is_named() {
    let (source, _month) = source();
    let dest = TestS3::start("another-bucket");
    let scratch = Scratch::new();
    let run = era5_with_keys(&scratch, &args(&source, &dest.endpoint(), &[]), LIMIT);
    run.expect_code(1);
    assert!(
        run.stderr
            .contains(&format!("bucket `{DEST_BUCKET}` does not exist")),
        "{}",
        run.stderr
    );
    assert_eq!(
        source.count(Operation::GetObject),
        0,
        "the source was read for a destination that cannot take it"
    );
}

#[test]
fn bad_destinations_are_refused_before_anything_is_written() {
    let (source, _month) = source();
    let dest = TestS3::start(DEST_BUCKET);
    let scratch = Scratch::new();
    // No bucket.
    let mut no_bucket = args(&source, &dest.endpoint(), &[]);
    let at = no_bucket.iter().position(|a| a == "--dest").unwrap() + 1;
    no_bucket[at] = "s3://".into();
    let run = era5_with_keys(&scratch, &no_bucket, LIMIT);
    run.expect_code(2);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("s3://") && run.stderr.contains("no bucket"),
        "{}",
        run.stderr
    );
    // No credentials for a destination that needs them (instance metadata off: not on EC2).
    let child = era5(&scratch.home())
        .args(args(&source, &dest.endpoint(), &[]))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn era5");
    let run = wait_with_limit(child, LIMIT);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("no AWS credentials for the destination"),
        "{}",
        run.stderr
    );
    assert!(dest.keys().is_empty() && dest.requests().is_empty());
    assert!(
        source.requests().is_empty(),
        "the source was asked before the destination was checked"
    );
}

#[test]
fn uploads_lists_and_aborts_stale_uploads_of_a_prefix() {
    let dest = TestS3::start(DEST_BUCKET);
    let three_days_ago = std::time::SystemTime::now() - Duration::from_secs(3 * 86_400);
    let old = dest.create_upload(&dest_key(MULTIPART_KEY), Vec::new());
    assert!(dest.set_upload_initiated(&old, three_days_ago));
    let fresh = dest.create_upload(&dest_key(SINGLE_KEY), Vec::new());
    let elsewhere = dest.create_upload("other/prefix/key.nc", Vec::new());
    assert!(dest.set_upload_initiated(&elsewhere, three_days_ago));
    let scratch = Scratch::new();
    let uploads = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "uploads",
            "--dest",
            &format!("s3://{DEST_BUCKET}/{PREFIX}"),
            "--dest-endpoint",
            &dest.endpoint(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| (*s).to_string()));
        era5_with_keys(&scratch, &args, LIMIT)
    };
    let listed = uploads(&[]);
    listed.expect_code(0);
    assert!(
        listed.stdout.contains(&old)
            && !listed.stdout.contains(&fresh)
            && !listed.stdout.contains(&elsewhere),
        "{}",
        listed.stdout
    );
    assert_eq!(dest.uploads().len(), 3, "listing aborted something");

    let aborted = uploads(&["--abort"]);
    aborted.expect_code(0);
    assert!(
        aborted.stdout.contains(&format!("{old}\t")) && aborted.stdout.contains("aborted"),
        "{}",
        aborted.stdout
    );
    let open: Vec<String> = dest.uploads().into_iter().map(|u| u.upload_id).collect();
    assert!(
        !open.contains(&old) && open.contains(&fresh) && open.contains(&elsewhere),
        "{open:?}"
    );
    // With --json, one object per line, each as docs/schemas/uploads.schema.json says.
    let stale = dest.create_upload(&dest_key(MULTIPART_KEY), Vec::new());
    assert!(dest.set_upload_initiated(&stale, three_days_ago));
    for extra in [&["--json"][..], &["--json", "--abort"]] {
        let run = uploads(extra);
        run.expect_code(0);
        let lines: Vec<serde_json::Value> = run
            .stdout
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect();
        assert_eq!(lines.len(), 1, "{}", run.stdout);
        assert_schema("uploads", &lines[0]);
    }
}
