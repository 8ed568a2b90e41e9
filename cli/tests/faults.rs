//! Every retry, timeout and verification path of the fetch engine, each with the fault that
//! triggers it injected by the test server: SlowDown, 429, 5xx, RequestTimeout, resets and
//! truncated bodies mid-part, stalled, trickling and slow bodies, permanent 403/404, an object
//! replaced mid-download, corrupted bytes and a wrong checksum; listings that stall, trickle,
//! never end or are far too large; sizes no object can have; a disk that fills up (a real
//! tmpfs in a mount namespace); and a process out of file descriptors (a real `ulimit -n`). Each hostile case asserts bounded time, and memory where a
//! server could make it grow.

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
        object_gets_only: false,
        query_contains: None,
        operation: None,
        skip: 0,
        times,
        fault,
    }
}

/// The Range header of every GET of `key`; a whole-object GET (none) as `whole`.
fn get_ranges(s3: &TestS3, key: &str) -> Vec<String> {
    s3.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.key.as_deref() == Some(key))
        .map(|r| r.range.clone().unwrap_or_else(|| "whole".into()))
        .collect()
}

/// Runs a sync of `target` alone and checks it completed with a byte-identical file.
fn sync_ok(s3: &TestS3, scratch: &Scratch, target: &SeededObject, extra: &[&str]) -> Run {
    let mut args = args_for(s3, scratch, &target.key);
    args.extend(extra.iter().map(std::string::ToString::to_string));
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

/// The cost report counts what the server received, exactly: listings, HEADs and GETs of a
/// whole month, with SlowDown and 500s on some of them (each retried request is a request
/// billed), priced at the defaults and at `--prices`.
#[test]
fn the_cost_report_counts_exactly_the_requests_the_server_received() {
    let (s3, seeded) = seeded_server();
    let target = multipart_target(&seeded);
    s3.add_fault(rule(&target.key, Fault::SlowDown, Some(3)));
    s3.add_fault(rule(
        &target.key,
        Fault::Status {
            status: 500,
            code: "InternalError".into(),
        },
        Some(2),
    ));
    let scratch = Scratch::new();
    let mut args = sync_args(
        &s3.endpoint(),
        &scratch.dest(),
        "e5.oper.an.sfc,e5.oper.an.pl",
        "",
        "2023-12",
        "2024-04",
    );
    args.extend(["--json", "--prices", "get=1,list=10,head=100,gb=1000"].map(String::from));
    s3.clear_requests();
    let run = run_era5(&scratch, &args, LIMIT);
    run.expect_code(0);
    let summary = summary(&run);
    let received = s3.requests();
    let count = |wanted: &dyn Fn(&tests::s3_server::RequestRecord) -> bool| {
        received.iter().filter(|r| wanted(r)).count() as u64
    };
    let lists = count(&|r| r.method == "GET" && r.key.is_none());
    let gets = count(&|r| r.method == "GET" && r.key.is_some());
    let heads = count(&|r| r.method == "HEAD");
    assert!(lists >= 2 && gets > 10, "{lists} lists, {gets} gets");
    let requests = &summary["requests"];
    assert_eq!(requests["list"].as_u64(), Some(lists), "{summary:#}");
    assert_eq!(requests["get"].as_u64(), Some(gets), "{summary:#}");
    assert_eq!(requests["head"].as_u64(), Some(heads), "{summary:#}");
    for kind in [
        "put",
        "create_upload",
        "upload_part",
        "complete",
        "abort",
        "other",
    ] {
        assert_eq!(requests[kind].as_u64(), Some(0), "{kind}: {summary:#}");
    }
    // The faulted requests are among them: 3 SlowDown and 2 errors, each one more GET.
    assert_eq!(
        count(&|r| r.fault.is_some() && r.key.as_deref() == Some(target.key.as_str())),
        5
    );
    // Bytes on the socket: every body and the responses' headers; requests carry no body.
    let bytes_in = summary["bytes_in"].as_u64().unwrap();
    let bodies = s3.body_bytes_sent();
    let total = lists + gets + heads;
    assert!(
        bytes_in >= bodies && bytes_in < bodies + total * 4096,
        "{bytes_in} bytes in for {bodies} body bytes and {total} responses"
    );
    let bytes_out = summary["bytes_out"].as_u64().unwrap();
    assert!(
        bytes_out > total * 50 && bytes_out < total * 4096,
        "{bytes_out}"
    );
    // Priced per 1,000 requests and per GB, as --prices said.
    let expected_requests = (gets as f64 + 10.0 * lists as f64 + 100.0 * heads as f64) / 1000.0;
    let cost = &summary["cost_usd"];
    assert!(
        (cost["requests"].as_f64().unwrap() - expected_requests).abs() < 1e-9,
        "{cost}"
    );
    let expected_transfer = (bytes_in + bytes_out) as f64 / 1e9 * 1000.0;
    assert!(
        (cost["transfer"].as_f64().unwrap() - expected_transfer).abs() < 1e-9,
        "{cost}"
    );

    // The text summary says the same; a bad --prices is refused before anything is written.
    let text_args: Vec<String> = args.iter().filter(|a| *a != "--json").cloned().collect();
    let run = run_era5(&scratch, &text_args, LIMIT);
    run.expect_code(0);
    assert!(run.stdout.contains("  requests: "), "{}", run.stdout);
    assert!(run.stdout.contains("estimated cost $"), "{}", run.stdout);
    let fresh = Scratch::new();
    let mut bad = sync_args(
        &s3.endpoint(),
        &fresh.dest(),
        "e5.oper.an.sfc",
        "",
        "2024-01",
        "2024-01",
    );
    bad.extend(["--prices", "get=cheap"].map(String::from));
    let run = run_era5(&fresh, &bad, LIMIT);
    run.expect_code(2);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("--prices") && run.stderr.contains("get=cheap"),
        "{}",
        run.stderr
    );
    assert!(!fresh.dest().exists(), "a refused run wrote into DEST");
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
        object_gets_only: true,
        query_contains: None,
        operation: None,
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
    // part's response is certain to happen before the next part is asked for. ETag
    // verification: no HEAD runs beside the ranges, so the ranges' If-Match is what sees the
    // change (under full verification the HEAD may see it first, which restarts it too).
    args.extend([
        "--connections".into(),
        "1".into(),
        "--verify".into(),
        "etag".into(),
    ]);
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

/// A server holding [`LSM_KEY`] alone, 200 kB uploaded in one part with a CRC-64/NVME checksum
/// (`checksum_override` replaces the right value), and its bytes.
fn lsm_with_crc64(checksum_override: Option<&str>) -> (TestS3, bytes::Bytes) {
    let s3 = TestS3::start(BUCKET);
    let data = tests::fixtures::object_bytes(LSM_KEY, 200_000);
    s3.put_object_with(
        LSM_KEY,
        data.clone(),
        tests::s3_server::PutOptions {
            checksum: Some(tests::s3_server::ChecksumAlgo::Crc64nvme),
            checksum_override: checksum_override.map(str::to_string),
            ..Default::default()
        },
    );
    (s3, data)
}

#[test]
fn a_checksum_that_contradicts_a_verified_etag_warns_and_fails_only_when_strict() {
    let (s3, data) = lsm_with_crc64(Some("AAAAAAAAAAA="));
    let key = LSM_KEY;
    // The bytes are the ETag's MD5: kept, with a warning and a count, recorded as verified by
    // the ETag (what was verified), not by the checksum.
    let (scratch, args) = lsm_sync(&s3);
    let run = run_era5(&scratch, &args, LIMIT);
    run.expect_code(0);
    assert!(
        run.stderr
            .contains("contradicts the ETag that verified the bytes")
            && run.stderr.contains("crc64nvme checksum mismatch"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.contains("checksum contradictions: 1"),
        "{}",
        run.stdout
    );
    assert_eq!(
        std::fs::read(scratch.dest().join(key)).unwrap(),
        data.as_ref()
    );
    let record = &manifest(&scratch.dest())[key];
    assert_eq!(record["verified"], "etag", "{record}");
    assert!(record["checksum"].is_null(), "{record}");
    // A rerun checks the file again (full verification was asked for and not reached) and
    // keeps it: never failed for ever.
    let mut json = args.clone();
    json.push("--json".into());
    let rerun = run_era5(&scratch, &json, LIMIT);
    rerun.expect_code(0);
    let figures = summary(&rerun);
    assert_eq!(figures["objects"]["verified_locally"], 1, "{figures}");
    assert_eq!(figures["checksum_contradictions"], 1, "{figures}");

    // --strict-checksums fails it as a mismatch, and nothing is promoted.
    let (strict_scratch, mut strict) = lsm_sync(&s3);
    strict.push("--strict-checksums".into());
    let run = run_era5(&strict_scratch, &strict, LIMIT);
    run.expect_code(1);
    assert!(
        run.stdout.contains("crc64nvme checksum mismatch"),
        "{}",
        run.stdout
    );
    assert!(!strict_scratch.dest().join(key).exists());

    // `--verify etag` never looks at the checksum.
    let (etag_scratch, mut etag_only) = lsm_sync(&s3);
    etag_only.extend(["--verify".into(), "etag".into()]);
    let run = run_era5(&etag_scratch, &etag_only, LIMIT);
    run.expect_code(0);
    assert!(!run.stderr.contains("contradicts"), "{}", run.stderr);
    assert_eq!(
        std::fs::read(etag_scratch.dest().join(key)).unwrap(),
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
fn full_verification_takes_a_single_part_objects_checksum_from_its_one_get() {
    let (s3, data) = lsm_with_crc64(None);
    let key = LSM_KEY;
    let (scratch, args) = lsm_sync(&s3);
    run_era5(&scratch, &args, LIMIT).expect_code(0);
    // One round trip: a whole-object GET, no HEAD (S3 sends checksums with whole reads only).
    let asked: Vec<(String, Option<String>)> = s3
        .requests()
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(key))
        .map(|r| (r.method, r.range))
        .collect();
    assert_eq!(asked, vec![("GET".to_string(), None)]);
    let value = tests::s3_server::ChecksumAlgo::Crc64nvme.compute(&data);
    let record = &manifest(&scratch.dest())[key];
    assert_eq!(record["checksum"], format!("crc64nvme:{value}"));
    assert_eq!(record["verified"], "full");

    // An object fetched in ranges asks a HEAD for its checksum, beside its first ranges
    // (ranges carry none): one HEAD, sent with the first requests, not after the download.
    let upload_part = tests::fixtures::FIXTURE_UPLOAD_PART;
    let big = tests::fixtures::object_bytes(key, 3 * upload_part + 1000);
    s3.put_object_with(
        key,
        big.clone(),
        tests::s3_server::PutOptions {
            part_size: Some(upload_part),
            checksum: Some(tests::s3_server::ChecksumAlgo::Crc32c),
            composite: true,
            ..Default::default()
        },
    );
    s3.clear_requests();
    // Two connections and slow bodies: the four ranges go two by two, each pair for a while,
    // so a HEAD sent with the first ones is answered long before the last range is asked,
    // however the machine schedules the tasks.
    slow_bodies(&s3, 4 << 20);
    let mut two_at_a_time = args.clone();
    two_at_a_time.extend(["--connections", "2"].map(String::from));
    run_era5(&scratch, &two_at_a_time, LIMIT).expect_code(0);
    s3.clear_faults();
    let methods: Vec<String> = s3
        .requests()
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(key))
        .map(|r| r.method)
        .collect();
    assert_eq!(
        methods.iter().filter(|m| *m == "HEAD").count(),
        1,
        "{methods:?}"
    );
    assert_ne!(
        methods.last().map(String::as_str),
        Some("HEAD"),
        "{methods:?}"
    );
    assert!(
        manifest(&scratch.dest())[key]["checksum"]
            .as_str()
            .is_some_and(|c| c.starts_with("crc32c:") && c.ends_with("-4"))
    );
    assert_eq!(
        std::fs::read(scratch.dest().join(key)).unwrap(),
        big.as_ref()
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
    // The ETag verifies, so only --strict-checksums makes the wrong checksum fail the object.
    for part_size in ["1MiB", "8MiB"] {
        let mut with_parts = args.clone();
        with_parts.extend([
            "--part-size".into(),
            part_size.into(),
            "--strict-checksums".into(),
        ]);
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

/// A rule on every GET, listings included (a listing is a GET without a key).
fn any_get(fault: Fault, times: Option<usize>) -> FaultRule {
    FaultRule {
        method: Some(http::Method::GET),
        key_contains: None,
        object_gets_only: false,
        query_contains: None,
        operation: None,
        skip: 0,
        times,
        fault,
    }
}

/// Limit for runs that a hostile server must not be able to stretch.
const BOUNDED: Duration = Duration::from_secs(30);

#[test]
fn too_many_requests_on_listings_and_parts_is_retried_with_backoff() {
    let (s3, seeded) = seeded_server();
    let target = multipart_target(&seeded);
    let status = || Fault::Status {
        status: 429,
        code: "TooManyRequests".into(),
    };
    // The first GETs of a sync are its listings.
    s3.add_fault(any_get(status(), Some(2)));
    s3.add_fault(rule(&target.key, status(), Some(2)));
    let scratch = Scratch::new();
    let run = sync_ok(&s3, &scratch, target, &[]);
    assert!(run.stdout.contains("too_many_requests 2"), "{}", run.stdout);
    assert!(s3.list_count() >= 3, "the listing was not retried");
}

#[test]
fn a_stalled_listing_is_cut_after_the_stall_timeout_and_retried() {
    let (s3, seeded) = seeded_server();
    let target = multipart_target(&seeded);
    s3.add_fault(any_get(Fault::StallBody { after_bytes: 10 }, Some(1)));
    let scratch = Scratch::new();
    let started = std::time::Instant::now();
    sync_ok(&s3, &scratch, target, &["--stall-timeout", "1"]);
    assert!(
        started.elapsed() < BOUNDED,
        "the stalled listing was not cut"
    );
}

#[test]
fn a_trickle_under_the_stall_timeout_is_cut_by_the_minimum_rate() {
    let (s3, seeded) = seeded_server();
    let target = multipart_target(&seeded);
    // One byte a second, under the 2 s stall timeout: the listing first, then a part.
    s3.add_fault(any_get(Fault::SlowBody { bytes_per_sec: 1 }, Some(1)));
    s3.add_fault(rule(
        &target.key,
        Fault::SlowBody { bytes_per_sec: 1 },
        Some(1),
    ));
    let scratch = Scratch::new();
    let started = std::time::Instant::now();
    let run = sync_ok(
        &s3,
        &scratch,
        target,
        &[
            "--stall-timeout",
            "2",
            "--min-rate",
            "16KiB",
            "--min-rate-window",
            "2",
        ],
    );
    assert!(started.elapsed() < BOUNDED, "a trickle held its connection");
    assert!(run.stdout.contains("stall 1"), "{}", run.stdout);
}

#[test]
fn pagination_that_never_ends_is_a_clear_error() {
    let scratch = Scratch::new();
    let plan = |s3: &TestS3| {
        let args: Vec<String> = [
            "plan",
            "--product",
            "e5.oper.invariant",
            "--start",
            "2024-01",
            "--end",
            "2024-01",
            "--endpoint",
            &s3.endpoint(),
        ]
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
        run_era5(&scratch, &args, BOUNDED)
    };
    let (s3, _) = seeded_server();
    s3.add_fault(any_get(Fault::RepeatListingToken, None));
    let run = plan(&s3);
    run.expect_code(1);
    assert!(
        run.stderr.contains("continuation token `again` came back")
            && run.stderr.contains("pagination never ends"),
        "{}",
        run.stderr
    );
    assert_eq!(s3.list_count(), 2, "a repeated token was followed");

    let (s3, _) = seeded_server();
    s3.add_fault(any_get(Fault::EndlessListing, None));
    let run = plan(&s3);
    run.expect_code(1);
    let capacity = transport::listing::prefix_capacity("e5.oper.invariant/197901/");
    assert!(
        run.stderr.contains(&format!(
            "more than {capacity} pages, more than the folder can hold"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(s3.list_count(), capacity);
}

#[test]
fn a_listing_page_over_16_mib_is_refused_with_bounded_memory() {
    for chunked in [false, true] {
        let (s3, _) = seeded_server();
        s3.add_fault(any_get(
            Fault::HugeBody {
                status: 200,
                bytes: 1 << 30,
                chunked,
            },
            None,
        ));
        let (run, peak_mib) = plan_invariant_measuring_peak_rss(&s3);
        run.expect_code(1);
        assert!(
            run.stderr
                .contains("response body larger than 16 MiB refused"),
            "chunked {chunked}: {}",
            run.stderr
        );
        assert_eq!(s3.list_count(), 1, "an oversized page was asked for again");
        assert!(
            peak_mib < 96,
            "chunked {chunked}: era5 plan peaked at {peak_mib} MiB"
        );
        // With a Content-Length, nothing of the body is read at all.
        if !chunked {
            assert!(
                s3.body_bytes_sent() < (64 << 20),
                "{}",
                s3.body_bytes_sent()
            );
        }
    }
}

/// A server that stalls every listing mid-page: `plan` gives up within its listing deadline
/// (8 stall timeouts), whatever the retry policy would still allow, with exit 1 and a line
/// that says why.
#[test]
fn a_listing_that_stalls_every_time_fails_within_its_deadline() {
    let (s3, _) = seeded_server();
    s3.add_fault(any_get(Fault::StallBody { after_bytes: 10 }, None));
    let scratch = Scratch::new();
    let started = std::time::Instant::now();
    let run = run_era5(
        &scratch,
        &[
            "plan".into(),
            "--product".into(),
            "e5.oper.invariant".into(),
            "--start".into(),
            "2024-01".into(),
            "--end".into(),
            "2024-01".into(),
            "--endpoint".into(),
            s3.endpoint(),
            "--stall-timeout".into(),
            "2".into(),
        ],
        BOUNDED,
    );
    run.expect_code(1);
    assert!(run.stderr.contains("stall"), "{}", run.stderr);
    assert!(
        s3.list_count() >= 2,
        "a stalled page was not asked for again"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2 * 8 + 5),
        "plan took {:?}",
        started.elapsed()
    );
}

/// Listing pages full of megabyte-long junk keys: none is kept (S3 keys are at most 1,024
/// bytes), and once the folder's keys pass 64 MiB the listing is refused. `plan` stays small
/// and says why, instead of holding every page.
#[test]
fn a_listing_of_junk_keys_is_dropped_as_it_arrives_and_refused_past_its_cap() {
    let (s3, _) = seeded_server();
    s3.add_fault(any_get(
        Fault::JunkListing {
            keys_per_page: 8,
            key_bytes: 1 << 20,
        },
        None,
    ));
    let (run, peak_mib) = plan_invariant_measuring_peak_rss(&s3);
    run.expect_code(1);
    assert!(
        run.stderr.contains("more than 64 MiB of keys"),
        "{}",
        run.stderr
    );
    assert_eq!(s3.list_count(), 9, "pages listed past the cap");
    assert!(peak_mib < 96, "era5 plan peaked at {peak_mib} MiB");
}

#[test]
fn sizes_no_object_can_have_are_refused_and_bound_nothing() {
    let (s3, seeded) = seeded_server();
    let target = multipart_target(&seeded);
    // A petabyte: refused before any byte is asked for.
    s3.set_claimed_size(&target.key, Some(1 << 50));
    let scratch = Scratch::new();
    let run = run_era5(&scratch, &args_for(&s3, &scratch, &target.key), BOUNDED);
    run.expect_code(1);
    assert!(
        run.stdout.contains("more than S3's 5 TiB maximum") && run.stdout.contains("permanent"),
        "{}",
        run.stdout
    );
    assert!(get_ranges(&s3, &target.key).is_empty());

    // 4 TiB is a possible size, and a DEST of 8 TiB could take it: the download starts, with
    // a few parts in flight, not 262144 of them; the lying server's short ranges fail it.
    s3.set_claimed_size(&target.key, Some(4 << 40));
    let scratch = Scratch::new();
    let tmpfs = Tmpfs::mount(&scratch.dest(), "8t");
    let mut command = tmpfs.era5(&scratch.home());
    command.args(args_for(&s3, &scratch, &target.key));
    command.args(["--retries", "2", "--connections", "4"]);
    let (run, peak_mib) = run_measuring_peak_rss(command, BOUNDED);
    run.expect_code(1);
    assert!(run.stdout.contains("FAILED"), "{}", run.stdout);
    assert!(
        peak_mib < 96,
        "a 4 TiB claim made era5 sync peak at {peak_mib} MiB"
    );
    let asked = get_ranges(&s3, &target.key).len();
    assert!(asked <= 2 * (4 + 2), "{asked} ranges asked for");
}

/// Every object of the standard selection of three products over five months.
/// The products of the standard selection.
const STANDARD_PRODUCTS: &str = "e5.oper.an.sfc,e5.oper.an.pl,e5.oper.fc.sfc.accumu";

fn standard_selection(seeded: &[SeededObject]) -> Vec<&SeededObject> {
    selected_from(seeded, STANDARD_PRODUCTS)
}

/// After a run that stopped early: every file at a final path is a selected object, byte for
/// byte. Returns how many there are.
fn exact_where_present(dest: &std::path::Path, selected: &[&SeededObject]) -> usize {
    let present = mirrored_keys(dest);
    let present_objects: Vec<&SeededObject> = selected
        .iter()
        .copied()
        .filter(|o| present.contains(&o.key))
        .collect();
    assert_eq!(present_objects.len(), present.len(), "{present:?}");
    assert_mirrored(dest, &present_objects);
    present.len()
}

#[test]
fn a_full_disk_stops_the_sync_at_once_and_the_rerun_completes_once_there_is_room() {
    let (s3, seeded) = seeded_server();
    let selected = standard_selection(&seeded);
    let total: u64 = selected.iter().map(|o| o.data.len() as u64).sum();
    let scratch = Scratch::new();
    let dest = scratch.dest();
    // A real filesystem of 4 MiB, for far more than that.
    let tmpfs = Tmpfs::mount(&dest, "4m");
    assert!(total > (16 << 20), "the selection is too small: {total}");
    let args = sync_args(
        &s3.endpoint(),
        &dest,
        STANDARD_PRODUCTS,
        "",
        "2023-12",
        "2024-04",
    );
    let run_in_tmpfs = || {
        let mut command = tmpfs.era5(&scratch.home());
        command
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        wait_with_limit(command.spawn().unwrap(), BOUNDED)
    };
    let run = run_in_tmpfs();
    run.expect_code(1);
    assert!(
        run.stderr.contains(&format!(
            "era5: error: no space left on DEST ({})",
            dest.display()
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("FAILED") && l.contains("no space left on DEST")),
        "{}",
        run.stdout
    );
    let inside = tmpfs.outside(&dest);
    assert!(
        temp_files(&inside).is_empty(),
        "temporary files left on the full disk: {:?}",
        temp_files(&inside)
    );
    // What is at a final path is right, and the rest was not downloaded regardless.
    assert!(exact_where_present(&inside, &selected) < selected.len());
    assert!(
        s3.body_bytes_sent() < total / 2,
        "{} of {total} bytes fetched for a 4 MiB disk",
        s3.body_bytes_sent()
    );

    // Room again: the next run completes, without fetching again what is there.
    tmpfs.resize("256m");
    let run = run_in_tmpfs();
    run.expect_code(0);
    assert_mirrored(&inside, &selected);
    assert!(temp_files(&inside).is_empty());
}

/// Out of file descriptors (a real EMFILE: `ulimit -n` in the child's shell) at every point a
/// run can reach it, from opening the manifest to the temporary files of the objects: each run
/// completes or stops with one clear line naming the cause, never panics, never leaves a wrong
/// or temporary file, and a run with the usual limit completes from there.
#[test]
fn running_out_of_file_descriptors_anywhere_stops_cleanly_and_the_rerun_completes() {
    let (s3, seeded) = seeded_server();
    let selected = under(&seeded, &["e5.oper.an.sfc/202401/"]);
    let scratch = Scratch::new();
    let dest = scratch.dest();
    let args = sync_args(
        &s3.endpoint(),
        &dest,
        "e5.oper.an.sfc",
        "",
        "2024-01",
        "2024-01",
    );
    let under_limit = |limit: u32| {
        let mut command = std::process::Command::new("sh");
        command
            .args(["-c", "ulimit -n \"$0\" && exec \"$@\"", &limit.to_string()])
            .arg(env!("CARGO_BIN_EXE_era5"))
            .args(&args)
            .args(["--connections", "2"])
            .env("HOME", scratch.home())
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        wait_with_limit(command.spawn().unwrap(), BOUNDED)
    };
    let mut resources_at = None;
    for limit in 10..=40 {
        let run = under_limit(limit);
        assert!(
            !run.stderr.contains("panicked"),
            "limit {limit}: {}",
            run.stderr
        );
        if run.code != Some(0) {
            let errors: Vec<&str> = run
                .stderr
                .lines()
                .filter(|l| l.starts_with("era5: error:"))
                .collect();
            assert_eq!(errors.len(), 1, "limit {limit}: {}", run.stderr);
            assert!(
                errors[0].contains("Too many open files"),
                "limit {limit}: {}",
                run.stderr
            );
            if errors[0].contains("out of local resources writing DEST") {
                resources_at.get_or_insert(limit);
            }
        }
        assert!(
            temp_files(&dest).is_empty(),
            "limit {limit}: {:?}",
            temp_files(&dest)
        );
        exact_where_present(&dest, &selected);
        // Start each limit from an empty mirror, so every limit meets the same first files.
        std::fs::remove_dir_all(&dest).unwrap();
    }
    let resources_at = resources_at
        .expect("no limit reached the objects' files: the sweep injected nothing there");
    // Stopped there, then resumed with the usual limit: complete and exact.
    assert_ne!(under_limit(resources_at).code, Some(0));
    run_era5(&scratch, &args, LIMIT).expect_code(0);
    assert_mirrored(&dest, &selected);
}

/// `--max-transfer` and `--max-duration` stop a sync cleanly (exit 3, one line saying which,
/// what is at a final path exact, the summary's outcome `limit_reached`), and the next run
/// without them resumes and completes. Bad values are refused before anything is written.
#[test]
fn max_transfer_and_max_duration_stop_cleanly_with_exit_3_and_the_rerun_completes() {
    let (s3, seeded) = seeded_server();
    // Slow bodies, so that the limits bind long before the selection is done.
    slow_bodies(&s3, 2 << 20);
    let selected = standard_selection(&seeded);
    let total: u64 = selected.iter().map(|o| o.data.len() as u64).sum();
    assert!(total > (16 << 20), "the selection is too small: {total}");
    let scratch = Scratch::new();
    let dest = scratch.dest();
    let args = sync_args(
        &s3.endpoint(),
        &dest,
        STANDARD_PRODUCTS,
        "",
        "2023-12",
        "2024-04",
    );
    let limited = |extra: &[&str]| {
        let mut limited = args.clone();
        limited.extend(["--json", "--connections", "4"].map(String::from));
        limited.extend(extra.iter().map(|a| (*a).to_string()));
        run_era5(&scratch, &limited, LIMIT)
    };
    let check_stopped = |run: &Run, flag: &str| {
        run.expect_code(3);
        let errors: Vec<&str> = run.stderr.lines().filter(|l| l.contains(flag)).collect();
        assert_eq!(errors.len(), 1, "{}", run.stderr);
        assert!(errors[0].contains("resume next run"), "{}", run.stderr);
        let summary = summary(run);
        assert_eq!(summary["outcome"], "limit_reached", "{summary:#}");
        assert!(exact_where_present(&dest, &selected) < selected.len());
        summary["bytes_downloaded"].as_u64().unwrap()
    };

    let run = limited(&["--max-transfer", "3MiB"]);
    let received = check_stopped(&run, "stopped at --max-transfer 3.0 MiB");
    assert!(received >= 3 << 20 && received < total / 2, "{received}");

    let started = std::time::Instant::now();
    let run = limited(&["--max-duration", "2s"]);
    check_stopped(&run, "stopped at --max-duration 2s");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    // Without limits the next run completes; the interrupted parts were resumed, not fetched
    // again whole (at most the parts in flight at each stop are fetched twice).
    s3.clear_faults();
    let before = s3.body_bytes_sent();
    run_era5(&scratch, &args, LIMIT).expect_code(0);
    assert_mirrored(&dest, &selected);
    assert!(temp_files(&dest).is_empty());
    assert!(
        s3.body_bytes_sent() - before < total,
        "everything was fetched again"
    );

    for (flag, value) in [
        ("--max-transfer", "0"),
        ("--max-transfer", "lots"),
        ("--max-duration", "soon"),
        ("--max-duration", "0s"),
    ] {
        let fresh = Scratch::new();
        let mut bad = sync_args(
            &s3.endpoint(),
            &fresh.dest(),
            "e5.oper.an.sfc",
            "",
            "2024-01",
            "2024-01",
        );
        bad.extend([flag.to_string(), value.to_string()]);
        let run = run_era5(&fresh, &bad, LIMIT);
        run.expect_code(2);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(
            run.stderr.contains(flag) && run.stderr.contains(value),
            "{}",
            run.stderr
        );
        assert!(!fresh.dest().exists());
    }
}

#[test]
fn a_write_error_stops_the_object_at_once_and_removes_its_temporary_file() {
    let (s3, seeded) = seeded_server();
    let target = multipart_target(&seeded);
    let size = target.data.len() as u64;
    // Slow enough that the disk fills up mid-download, deterministically.
    s3.add_fault(rule(
        &target.key,
        Fault::SlowBody {
            bytes_per_sec: 128 << 10,
        },
        None,
    ));
    let scratch = Scratch::new();
    let dest = scratch.dest();
    let tmpfs = Tmpfs::mount(&dest, "8m");
    let mut command = tmpfs.era5(&scratch.home());
    command
        .args(args_for(&s3, &scratch, &target.key))
        .args(["--connections", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = command.spawn().unwrap();
    let inside = tmpfs.outside(&dest);
    wait_until(BOUNDED, "the download to start writing", || {
        !temp_files(&inside).is_empty() && s3.body_bytes_sent() > 64 << 10
    });
    // Another writer takes every byte left.
    tmpfs.fill("filler", 0);
    let filled_at = s3.body_bytes_sent();
    let run = wait_with_limit(child, BOUNDED);
    run.expect_code(1);
    assert!(
        run.stderr.contains("no space left on DEST"),
        "{}",
        run.stderr
    );
    assert!(temp_files(&inside).is_empty(), "{:?}", temp_files(&inside));
    assert!(!inside.join(&target.key).exists());
    // Stopped at once: at most what was in flight when the disk filled, not the whole object.
    let after = s3.body_bytes_sent() - filled_at;
    assert!(
        after < size / 2,
        "{after} more bytes of a {size}-byte object were fetched after the disk filled"
    );
}

/// A sync of `target` alone, cut into two ranges, that must complete: the JSON summary.
fn sync_two_ranges(
    s3: &TestS3,
    scratch: &Scratch,
    target: &SeededObject,
    extra: &[&str],
) -> serde_json::Value {
    let half = target.data.len().div_ceil(2).next_multiple_of(64 << 10);
    let mut args = args_for(s3, scratch, &target.key);
    args.extend(extra.iter().map(std::string::ToString::to_string));
    args.extend([
        "--part-size".into(),
        format!("{}", half.max(64 << 10)),
        "--stall-timeout".into(),
        "100".into(),
        "--json".into(),
    ]);
    let run = run_era5(scratch, &args, LIMIT);
    run.expect_code(0);
    summary(&run)
}

/// A response whose first byte never comes (the server sits on it for two minutes, past
/// the test's limit) is overtaken by a hedge on another connection: the object is exact, the
/// hedge is counted as won, and the stall timeout (100 s) never fires.
#[test]
fn a_response_that_never_sends_its_first_byte_is_overtaken_by_a_hedge() {
    let (s3, seeded) = seeded_server();
    let target = multipart_target(&seeded);
    s3.add_fault(FaultRule {
        skip: 1,
        ..rule(
            &target.key,
            Fault::DelayResponse { millis: 120_000 },
            Some(1),
        )
    });
    let scratch = Scratch::new();
    let summary = sync_two_ranges(&s3, &scratch, target, &[]);
    assert_mirrored(&scratch.dest(), &[target]);
    assert_eq!(summary["hedges"]["requests"], 1, "{summary}");
    assert_eq!(summary["hedges"]["won"], 1, "{summary}");
    assert!(
        summary["retries"].get("stall").is_none(),
        "the stall timeout fired: {summary}"
    );
}

/// The object is replaced after its first range was served, while its second range's first
/// byte hangs: the hedge carries `If-Match` with the old ETag, gets 412, and the object
/// starts over with its new version. The file is the new version, never a mix.
#[test]
fn a_hedge_of_a_replaced_object_restarts_it_and_never_mixes_versions() {
    let (s3, seeded) = seeded_server();
    let target = multipart_target(&seeded);
    let replacement = tests::fixtures::object_bytes("a new version", target.data.len());
    s3.set_faults(vec![
        rule(
            &target.key,
            Fault::ReplaceAfterResponse {
                data: replacement.clone(),
            },
            Some(1),
        ),
        rule(
            &target.key,
            Fault::DelayResponse { millis: 120_000 },
            Some(1),
        ),
    ]);
    let scratch = Scratch::new();
    // ETag verification: no HEAD runs beside the ranges, so only the hedge can see the change.
    let summary = sync_two_ranges(&s3, &scratch, target, &["--verify", "etag"]);
    let mirrored = std::fs::read(scratch.dest().join(&target.key)).unwrap();
    assert!(
        mirrored == replacement.as_ref(),
        "the mirrored file is not the new version"
    );
    assert!(
        summary["hedges"]["requests"].as_u64() >= Some(1),
        "no hedge: {summary}"
    );
    assert!(summary["restarts"].as_u64() >= Some(1), "{summary}");
}

/// One range's body crawls (64 KiB/s) while its peers stream at 4 MiB/s: after half a second
/// it is taken over on another connection, whose answer is held back 150 ms (less than the
/// 250 ms after which a late takeover would itself be replaced), during which the crawling
/// body keeps delivering. Those bytes, received twice, are discarded and counted,
/// within 5% of the bytes received; the object is exact.
#[test]
fn a_slow_body_is_taken_over_and_its_duplicate_bytes_are_counted() {
    let (s3, seeded) = seeded_server();
    let target = multipart_target(&seeded);
    let parts = target.data.len().div_ceil(256 << 10);
    s3.set_faults(vec![
        rule(
            &target.key,
            Fault::SlowBody {
                bytes_per_sec: 64 << 10,
            },
            Some(1),
        ),
        // Counts the target's GETs after the crawling one: the takeover comes after every
        // other range.
        FaultRule {
            skip: parts - 1,
            ..rule(&target.key, Fault::DelayResponse { millis: 150 }, Some(1))
        },
    ]);
    slow_bodies(&s3, 4 << 20);
    let scratch = Scratch::new();
    let mut args = args_for(&s3, &scratch, &target.key);
    args.extend([
        "--part-size".into(),
        "256KiB".into(),
        "--stall-timeout".into(),
        "100".into(),
        "--json".into(),
    ]);
    let run = run_era5(&scratch, &args, LIMIT);
    run.expect_code(0);
    assert_mirrored(&scratch.dest(), &[target]);
    let summary = summary(&run);
    let duplicates = summary["duplicate_bytes"].as_u64().unwrap();
    let received = summary["bytes_downloaded"].as_u64().unwrap();
    assert!(summary["hedges"]["won"].as_u64() >= Some(1), "{summary}");
    assert!(duplicates > 0, "no duplicate bytes counted: {summary}");
    assert!(
        duplicates as f64 <= 0.05 * received as f64,
        "{duplicates} duplicate bytes of {received}"
    );
}

/// Whole-object GETs are bounded by the object's own size, not by the 16 MiB cap of listings:
/// a 40 MiB object with a one-part multipart ETag (`-1`) under the default flags, and a 40 MiB
/// plain one fetched in one GET with `--part-size 64MiB`, both mirror exactly.
#[test]
fn objects_over_16_mib_fetched_whole_are_bounded_by_their_own_size() {
    let s3 = TestS3::start(BUCKET);
    let one_part =
        "e5.oper.an.sfc/202401/e5.oper.an.sfc.128_167_2t.ll025sc.2024010100_2024013123.nc";
    let plain = "e5.oper.an.sfc/202402/e5.oper.an.sfc.128_167_2t.ll025sc.2024020100_2024022923.nc";
    let size = 40 << 20;
    let one_part_data = tests::fixtures::object_bytes(one_part, size);
    s3.put_object_with(
        one_part,
        one_part_data.clone(),
        tests::s3_server::PutOptions {
            part_size: Some(64 << 20),
            multipart_always: true,
            ..Default::default()
        },
    );
    assert!(s3.object(one_part).unwrap().etag.ends_with("-1\""));
    let plain_data = tests::fixtures::object_bytes(plain, size);
    s3.put_object(plain, plain_data.clone());

    let scratch = Scratch::new();
    let args = sync_args(
        &s3.endpoint(),
        &scratch.dest(),
        "e5.oper.an.sfc",
        "2t",
        "2024-01",
        "2024-01",
    );
    run_era5(&scratch, &args, LIMIT).expect_code(0);
    assert!(std::fs::read(scratch.dest().join(one_part)).unwrap() == one_part_data.as_ref());

    let scratch = Scratch::new();
    let mut args = sync_args(
        &s3.endpoint(),
        &scratch.dest(),
        "e5.oper.an.sfc",
        "2t",
        "2024-02",
        "2024-02",
    );
    args.extend(["--part-size".into(), "64MiB".into()]);
    run_era5(&scratch, &args, LIMIT).expect_code(0);
    assert!(std::fs::read(scratch.dest().join(plain)).unwrap() == plain_data.as_ref());
    assert_eq!(get_ranges(&s3, plain), vec!["whole".to_string()]);
}

/// A 500 whose body is 768 MiB (a server that answers errors with garbage): the error
/// document is read to 1 MiB and no further, the request is retried as a server error, the
/// object is exact, and the process stays small.
#[test]
fn a_server_error_with_a_huge_body_is_cut_and_retried_with_bounded_memory() {
    let (s3, seeded) = seeded_server();
    let target = multipart_target(&seeded);
    s3.add_fault(rule(
        &target.key,
        Fault::HugeBody {
            status: 500,
            bytes: 768 << 20,
            chunked: false,
        },
        Some(1),
    ));
    let scratch = Scratch::new();
    let mut command = era5(&scratch.home());
    command.args(args_for(&s3, &scratch, &target.key));
    let (run, peak_mib) = run_measuring_peak_rss(command, BOUNDED);
    run.expect_code(0);
    assert_mirrored(&scratch.dest(), &[target]);
    assert!(run.stdout.contains("server_error 1"), "{}", run.stdout);
    assert!(peak_mib < 128, "era5 sync peaked at {peak_mib} MiB");
    assert!(
        s3.body_bytes_sent() < (64 << 20),
        "{} bytes of the error were sent",
        s3.body_bytes_sent()
    );
}

/// `era5 plan` of the invariant fields for January 2024 against `s3`, with its peak RSS (MiB).
fn plan_invariant_measuring_peak_rss(s3: &TestS3) -> (Run, u64) {
    let scratch = Scratch::new();
    let mut command = era5(&scratch.home());
    command.args([
        "plan",
        "--product",
        "e5.oper.invariant",
        "--start",
        "2024-01",
        "--end",
        "2024-01",
        "--endpoint",
        &s3.endpoint(),
    ]);
    run_measuring_peak_rss(command, BOUNDED)
}
