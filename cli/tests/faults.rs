//! Every retry, timeout and verification path of the fetch engine, each with the fault that
//! triggers it injected by the test server: SlowDown, 5xx, RequestTimeout, resets and truncated
//! bodies mid-part, stalled and slow bodies, permanent 403/404, an object replaced
//! mid-download, corrupted bytes and a wrong checksum.

mod support;

use std::time::Duration;

use support::*;
use tests::faults::{Fault, FaultRule};

const LIMIT: Duration = Duration::from_secs(120);

/// A multipart fixture object (several 1 MiB parts) and the sync arguments that select it alone.
fn multipart_target(seeded: &[SeededObject]) -> &SeededObject {
    seeded
        .iter()
        .find(|o| o.multipart && o.key.starts_with("e5.oper.an.pl/") && o.data.len() > (2 << 20))
        .or_else(|| {
            seeded
                .iter()
                .find(|o| o.multipart && o.data.len() > (2 << 20))
        })
        .expect("the fixture has a multipart object of more than two parts")
}

/// Sync arguments selecting the single object `key` (by its product, variable and first day).
fn args_for(s3: &TestS3, scratch: &Scratch, key: &str) -> Vec<String> {
    let parsed = common::ObjectKey::parse(key).unwrap();
    // A half-month window starts at 06:00 on the day the previous one ends: the next day
    // belongs to this object alone.
    let day = match parsed.product.cadence() {
        common::Cadence::HalfMonth => parsed.first.date.tomorrow().unwrap(),
        _ => parsed.first.date,
    }
    .to_string();
    sync_args(
        &s3.endpoint(),
        &scratch.dest(),
        parsed.product.name(),
        &parsed.short,
        &day,
        &day,
    )
}

fn rule(key: &str, fault: Fault, times: Option<usize>) -> FaultRule {
    FaultRule {
        method: Some(http::Method::GET),
        key_contains: Some(key.to_string()),
        ranged_only: false,
        skip: 0,
        times,
        fault,
    }
}

fn get_ranges(s3: &TestS3, key: &str) -> Vec<String> {
    s3.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.key.as_deref() == Some(key))
        .filter_map(|r| r.range.clone())
        .collect()
}

/// Runs a sync of `target` alone and checks it completed with a byte-identical file.
fn sync_ok(s3: &TestS3, scratch: &Scratch, target: &SeededObject, extra: &[&str]) -> Run {
    let mut args = args_for(s3, scratch, &target.key);
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = run_era5(scratch, &args, LIMIT);
    run.expect_code(0);
    assert_mirrored(&scratch.dest(), &[target]);
    assert!(
        temp_files(&scratch.dest()).is_empty(),
        "temporary files left"
    );
    run
}

#[test]
fn slowdown_is_retried_with_backoff_and_reported() {
    let (s3, seeded) = seeded_server();
    let target = multipart_target(&seeded);
    s3.add_fault(rule(&target.key, Fault::SlowDown, Some(5)));
    let scratch = Scratch::new();
    let run = sync_ok(&s3, &scratch, target, &[]);
    assert!(run.stdout.contains("slowdown 5"), "{}", run.stdout);
}

#[test]
fn server_errors_and_request_timeouts_are_retried() {
    let (s3, seeded) = seeded_server();
    let target = multipart_target(&seeded);
    for (status, code) in [
        (500, "InternalError"),
        (502, "BadGateway"),
        (504, "GatewayTimeout"),
        (400, "RequestTimeout"),
    ] {
        s3.add_fault(rule(
            &target.key,
            Fault::Status {
                status,
                code: code.into(),
            },
            Some(1),
        ));
    }
    let scratch = Scratch::new();
    let run = sync_ok(&s3, &scratch, target, &[]);
    assert!(
        run.stdout.contains("server_error 3") && run.stdout.contains("request_timeout 1"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_reset_mid_body_resumes_the_part_from_the_last_byte_received() {
    let (s3, seeded) = seeded_server();
    let target = multipart_target(&seeded);
    s3.add_fault(rule(
        &target.key,
        Fault::ResetMidBody {
            after_bytes: 300_000,
        },
        Some(2),
    ));
    let scratch = Scratch::new();
    let run = sync_ok(&s3, &scratch, target, &[]);
    assert!(
        run.stdout.contains("reset 2") || run.stdout.contains("truncated 2"),
        "{}",
        run.stdout
    );
    // The retries asked only for what was missing: ranges starting inside a part.
    let ranges = get_ranges(&s3, &target.key);
    let part = tests::fixtures::FIXTURE_UPLOAD_PART as u64;
    let starts: Vec<u64> = ranges
        .iter()
        .filter_map(|r| r.strip_prefix("bytes=")?.split('-').next()?.parse().ok())
        .collect();
    assert!(starts.iter().any(|s| s % part == 300_000), "{ranges:?}");
}

#[test]
fn a_truncated_body_is_detected_and_completed() {
    let (s3, seeded) = seeded_server();
    let target = multipart_target(&seeded);
    s3.add_fault(rule(
        &target.key,
        Fault::TruncateBody {
            after_bytes: 200_000,
        },
        Some(3),
    ));
    let scratch = Scratch::new();
    let run = sync_ok(&s3, &scratch, target, &[]);
    assert!(run.stdout.contains("truncated 3"), "{}", run.stdout);
}

#[test]
fn a_stalled_body_is_dropped_after_the_stall_timeout_and_retried() {
    let (s3, seeded) = seeded_server();
    let target = multipart_target(&seeded);
    s3.add_fault(rule(
        &target.key,
        Fault::StallBody { after_bytes: 4096 },
        Some(1),
    ));
    let scratch = Scratch::new();
    let started = std::time::Instant::now();
    let run = sync_ok(&s3, &scratch, target, &["--stall-timeout", "1"]);
    assert!(run.stdout.contains("stall 1"), "{}", run.stdout);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the stall was not cut short"
    );
}

#[test]
fn a_slow_but_flowing_body_is_not_a_stall() {
    let (s3, seeded) = seeded_server();
    let target = multipart_target(&seeded);
    s3.add_fault(rule(
        &target.key,
        Fault::SlowBody {
            bytes_per_sec: 512 << 10,
        },
        None,
    ));
    let scratch = Scratch::new();
    let run = sync_ok(&s3, &scratch, target, &["--stall-timeout", "1"]);
    assert!(run.stdout.contains("retries: none"), "{}", run.stdout);
}

#[test]
fn not_found_and_forbidden_are_permanent_and_reported_without_retry() {
    let (s3, seeded) = seeded_server();
    let surface: Vec<&SeededObject> = under(&seeded, &["e5.oper.an.sfc/202401/"]);
    let (missing, forbidden) = (surface[0], surface[1]);
    s3.add_fault(rule(
        &missing.key,
        Fault::Status {
            status: 404,
            code: "NoSuchKey".into(),
        },
        None,
    ));
    s3.add_fault(rule(
        &forbidden.key,
        Fault::Status {
            status: 403,
            code: "AccessDenied".into(),
        },
        None,
    ));
    let scratch = Scratch::new();
    let args = sync_args(
        &s3.endpoint(),
        &scratch.dest(),
        "e5.oper.an.sfc,e5.oper.invariant",
        "",
        "2024-01",
        "2024-01",
    );
    let run = run_era5(&scratch, &args, LIMIT);
    run.expect_code(1);
    for (object, status) in [(missing, "404"), (forbidden, "403")] {
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with("FAILED") && l.contains(&object.key));
        let line = line.unwrap_or_else(|| panic!("{} not reported:\n{}", object.key, run.stdout));
        assert!(
            line.contains(status) && line.contains("permanent"),
            "{line}"
        );
        let mut ranges = get_ranges(&s3, &object.key);
        let requested = ranges.len();
        ranges.sort();
        ranges.dedup();
        assert!(
            requested >= 1 && ranges.len() == requested,
            "{} was retried: {ranges:?}",
            object.key
        );
        assert!(!scratch.dest().join(&object.key).exists());
    }
    assert!(
        temp_files(&scratch.dest()).is_empty(),
        "refused objects left temporary files"
    );
    // Everything else completed.
    assert_mirrored(&scratch.dest(), &under(&seeded, &["e5.oper.invariant/"]));
}

#[test]
fn an_object_replaced_mid_download_restarts_with_the_new_version() {
    let (s3, seeded) = seeded_server();
    let target = multipart_target(&seeded);
    let new_data = tests::fixtures::object_bytes("a different version", target.data.len() + 12345);
    s3.add_fault(FaultRule {
        ranged_only: true,
        ..rule(
            &target.key,
            Fault::ReplaceAfterResponse {
                data: new_data.clone(),
            },
            Some(1),
        )
    });
    let scratch = Scratch::new();
    let mut args = args_for(&s3, &scratch, &target.key);
    // One connection: the parts go one after another, so the replacement after the first
    // part's response is certain to happen before the next part is asked for.
    args.extend(["--connections".into(), "1".into()]);
    let run = run_era5(&scratch, &args, LIMIT);
    run.expect_code(0);
    assert!(run.stdout.contains("restarts: 1"), "{}", run.stdout);
    assert_eq!(
        std::fs::read(scratch.dest().join(&target.key)).unwrap(),
        new_data.as_ref()
    );
    // The parts after the replacement carried If-Match and were refused with 412.
    assert!(
        s3.requests()
            .iter()
            .any(|r| r.status == 412 && r.if_match.is_some()),
        "{:?}",
        s3.requests()
    );
}

#[test]
fn corrupted_bytes_fail_verification_are_downloaded_again_and_never_promoted() {
    let (s3, seeded) = seeded_server();
    let target = multipart_target(&seeded);
    s3.add_fault(rule(&target.key, Fault::CorruptBody { at: 77 }, Some(1)));
    let scratch = Scratch::new();
    let run = sync_ok(&s3, &scratch, target, &[]);
    assert!(
        run.stdout.contains("verification failures: 1"),
        "{}",
        run.stdout
    );

    // Corrupted every time: reported, and nothing at the final path.
    let (s3, seeded) = seeded_server();
    let single = seeded
        .iter()
        .find(|o| !o.multipart && o.key.starts_with("e5.oper.invariant/"))
        .unwrap_or(target);
    s3.add_fault(rule(&single.key, Fault::CorruptBody { at: 5 }, None));
    let scratch = Scratch::new();
    let run = run_era5(&scratch, &args_for(&s3, &scratch, &single.key), LIMIT);
    run.expect_code(1);
    assert!(
        run.stdout.contains("FAILED") && run.stdout.contains("etag mismatch"),
        "{}",
        run.stdout
    );
    assert!(
        !scratch.dest().join(&single.key).exists(),
        "a corrupt file was promoted"
    );
}

/// The invariant object the checksum tests store themselves.
const LSM_KEY: &str =
    "e5.oper.invariant/197901/e5.oper.invariant.128_172_lsm.ll025sc.1979010100_1979010100.nc";

/// A scratch mirror and the sync that selects [`LSM_KEY`] (and nothing else) from `s3`.
fn lsm_sync(s3: &TestS3) -> (Scratch, Vec<String>) {
    let scratch = Scratch::new();
    let args = sync_args(
        &s3.endpoint(),
        &scratch.dest(),
        "e5.oper.invariant",
        "lsm",
        "2024-01",
        "2024-01",
    );
    (scratch, args)
}

#[test]
fn a_wrong_additional_checksum_fails_full_verification_only() {
    let s3 = TestS3::start(BUCKET);
    let key = LSM_KEY;
    let data = tests::fixtures::object_bytes(key, 200_000);
    s3.put_object_with(
        key,
        data.clone(),
        tests::s3_server::PutOptions {
            checksum: Some(tests::s3_server::ChecksumAlgo::Crc64nvme),
            checksum_override: Some("AAAAAAAAAAA=".into()),
            ..Default::default()
        },
    );
    let (scratch, args) = lsm_sync(&s3);
    let run = run_era5(&scratch, &args, LIMIT);
    run.expect_code(1);
    assert!(
        run.stdout.contains("crc64nvme checksum mismatch"),
        "{}",
        run.stdout
    );
    assert!(!scratch.dest().join(key).exists());

    let mut etag_only = args.clone();
    etag_only.extend(["--verify".into(), "etag".into()]);
    run_era5(&scratch, &etag_only, LIMIT).expect_code(0);
    assert_eq!(
        std::fs::read(scratch.dest().join(key)).unwrap(),
        data.as_ref()
    );
}

#[test]
fn correct_additional_checksums_full_object_and_composite_are_recorded() {
    let (s3, seeded) = seeded_server();
    let scratch = Scratch::new();
    let args = sync_args(
        &s3.endpoint(),
        &scratch.dest(),
        "e5.oper.an.sfc",
        "",
        "2023-12",
        "2024-04",
    );
    run_era5(&scratch, &args, LIMIT).expect_code(0);
    let records = manifest(&scratch.dest());
    let mut composite = 0;
    let mut full_object = 0;
    for object in under(&seeded, &["e5.oper.an.sfc/"]) {
        let Some((_, value)) = s3.object(&object.key).unwrap().checksum else {
            continue;
        };
        // The fixture's layout: composite CRC32C for multipart uploads, CRC64NVME otherwise.
        let algo = if value.contains('-') {
            composite += 1;
            "crc32c"
        } else {
            full_object += 1;
            "crc64nvme"
        };
        let recorded = records[&object.key]["checksum"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(recorded, format!("{algo}:{value}"), "{}", object.key);
    }
    assert!(
        composite > 0 && full_object > 0,
        "the fixture lacks a kind of checksummed surface object: {composite} composite, \
         {full_object} full-object"
    );
}

#[test]
fn a_wrong_composite_checksum_fails_with_the_streamed_and_the_read_layout() {
    let s3 = TestS3::start(BUCKET);
    let key = LSM_KEY;
    let upload_part = tests::fixtures::FIXTURE_UPLOAD_PART;
    let data = tests::fixtures::object_bytes(key, 3 * upload_part + 1000);
    let options = |checksum_override: Option<String>| tests::s3_server::PutOptions {
        part_size: Some(upload_part),
        checksum: Some(tests::s3_server::ChecksumAlgo::Crc32c),
        composite: true,
        checksum_override,
        ..Default::default()
    };
    s3.put_object_with(key, data.clone(), options(Some("AAAAAA==-4".into())));
    let (scratch, args) = lsm_sync(&s3);
    // Download parts equal to the upload parts (streamed CRCs), then larger ones (a re-read).
    for part_size in ["1MiB", "8MiB"] {
        let mut with_parts = args.clone();
        with_parts.extend(["--part-size".into(), part_size.into()]);
        let run = run_era5(&scratch, &with_parts, LIMIT);
        run.expect_code(1);
        assert!(
            run.stdout.contains("crc32c checksum mismatch"),
            "{part_size}: {}",
            run.stdout
        );
        assert!(!scratch.dest().join(key).exists(), "{part_size}");
    }

    s3.put_object_with(key, data.clone(), options(None));
    run_era5(&scratch, &args, LIMIT).expect_code(0);
    assert_eq!(
        std::fs::read(scratch.dest().join(key)).unwrap(),
        data.as_ref()
    );
    let recorded = manifest(&scratch.dest())[key]["checksum"].clone();
    assert!(
        recorded
            .as_str()
            .is_some_and(|c| c.starts_with("crc32c:") && c.ends_with("-4")),
        "{recorded}"
    );
}
