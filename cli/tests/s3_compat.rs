//! `era5 sync` against another S3 implementation than the test server: moto's real server,
//! with objects uploaded by boto3's defaults, as a new user would try it (issue 21 §1).
//!
//! boto3 adds a CRC32 to every upload; moto answers a HEAD of a multipart object with the
//! composite CRC32 (the CRC of the parts' CRCs) without its `-N` suffix and without a checksum
//! type. Default flags must still mirror single-part, one-part multipart and many-part
//! multipart objects exactly, and verify them fully.
//!
//! moto and boto3 come from PyPI: `scripts/test` installs them. Without them this test fails
//! (it never skips), saying so.

mod support;

use std::time::Duration;

use support::moto::{Moto, python};
use support::*;

const LIMIT: Duration = Duration::from_secs(120);
const UPLOADER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/s3_compat/upload_boto3.py"
);

#[test]
fn default_flags_mirror_boto3_uploads_to_moto_exactly() {
    let scratch = Scratch::new();
    let moto = Moto::start(&scratch);
    let uploaded = scratch.dir.path().join("uploaded");
    std::fs::create_dir(&uploaded).expect("upload dir");
    let upload = python(&scratch)
        .arg(UPLOADER)
        .arg(moto.endpoint())
        .arg(BUCKET)
        .arg(&uploaded)
        .output()
        .expect("run the boto3 uploader");
    let described = String::from_utf8_lossy(&upload.stdout).into_owned();
    assert!(
        upload.status.success(),
        "the boto3 upload failed:\n{described}\n{}\n--- moto\n{}",
        String::from_utf8_lossy(&upload.stderr),
        moto.log_text()
    );
    let objects: Vec<serde_json::Value> = described
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line per object"))
        .collect();
    // What the server does that this test is about: ETags of 1 part (single PUT), `-1` and
    // `-4`, and a HEAD whose composite CRC32 has neither a `-N` nor a checksum type.
    let etag_parts: Vec<&str> = objects
        .iter()
        .map(|o| {
            let etag = o["etag"].as_str().unwrap_or_default();
            etag.split_once('-').map_or("single", |(_, n)| n)
        })
        .collect();
    assert_eq!(etag_parts, ["single", "1", "4"], "{described}");
    for object in &objects[1..] {
        let head = &object["head"];
        let crc = head["x-amz-checksum-crc32"].as_str();
        assert!(
            crc.is_some_and(|c| !c.contains('-')) && head["x-amz-checksum-type"].is_null(),
            "moto no longer reports a composite checksum without its suffix and type on HEAD, \
             so this test no longer shows what it is about: {described}"
        );
    }

    let dest = scratch.dest();
    let args: Vec<String> = [
        "sync",
        "--product",
        "e5.oper.an.sfc",
        "--start",
        "2024-01",
        "--end",
        "2024-01",
        "--dest",
        &dest.display().to_string(),
        "--endpoint",
        &moto.endpoint(),
        "--no-progress",
        "--json",
    ]
    .map(String::from)
    .to_vec();
    let run = run_era5(&scratch, &args, LIMIT);
    run.expect_code(0);
    let summary = summary(&run);
    assert_eq!(summary["objects"]["downloaded"], 3, "{summary}");
    assert_eq!(summary["verification_failures"], 0, "{summary}");
    assert_eq!(summary["checksum_contradictions"], 0, "{summary}");

    let expected = mirrored_keys(&uploaded);
    assert_eq!(expected.len(), 3);
    assert_eq!(mirrored_keys(&dest), expected, "extra or missing files");
    for key in &expected {
        let want = std::fs::read(uploaded.join(key)).expect("uploaded bytes");
        let got = std::fs::read(dest.join(key)).expect("mirrored file");
        assert!(got == want, "{key} differs from what boto3 uploaded");
    }
    // Fully verified, each multipart object through its composite checksum over the parts
    // that its ETag's part count gives, and recorded with that count.
    let records = manifest(&dest);
    for (object, parts) in objects.iter().zip(["", "-1", "-4"]) {
        let record = &records[object["key"].as_str().expect("key")];
        assert_eq!(record["verified"], "full", "{record}");
        let checksum = record["checksum"].as_str().unwrap_or_default();
        assert!(checksum.starts_with("crc32:"), "{record}");
        assert_eq!(
            checksum.split_once('-').map_or("", |(_, n)| n),
            parts.trim_start_matches('-'),
            "{record}"
        );
    }

    // And what was recorded checks out when the files are read again.
    let verify = run_era5(
        &scratch,
        &["verify".into(), "--dest".into(), dest.display().to_string()],
        LIMIT,
    );
    verify.expect_code(0);
}
