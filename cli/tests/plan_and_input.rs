//! `era5 plan` against a real S3 server holding an ERA5-shaped bucket, and the handling of bad
//! input (exit 2, one line naming the value, no request, nothing written).

mod support;

use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

fn plan(
    s3: &TestS3,
    scratch: &Scratch,
    products: &str,
    vars: &str,
    start: &str,
    end: &str,
    json: bool,
) -> Run {
    let mut args: Vec<String> = vec![
        "plan".into(),
        "--product".into(),
        products.into(),
        "--start".into(),
        start.into(),
    ];
    args.extend([
        "--end".into(),
        end.into(),
        "--endpoint".into(),
        s3.endpoint(),
    ]);
    if !vars.is_empty() {
        args.extend(["--var".into(), vars.into()]);
    }
    if json {
        args.push("--json".into());
    }
    run_era5(scratch, &args, LIMIT)
}

fn planned_keys(run: &Run) -> Vec<String> {
    let value: serde_json::Value =
        serde_json::from_str(&run.stdout).expect("plan --json prints JSON");
    value["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn json_plan_lists_exactly_the_selected_objects_with_sizes_and_etags() {
    let (s3, seeded) = seeded_server();
    let scratch = Scratch::new();
    let run = plan(
        &s3,
        &scratch,
        "e5.oper.an.sfc",
        "2t",
        "2024-02",
        "2024-02",
        true,
    );
    run.expect_code(0);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let objects = value["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 1, "{}", run.stdout);
    let expected = seeded
        .iter()
        .find(|o| {
            o.key
                .ends_with("128_167_2t.ll025sc.2024020100_2024022923.nc")
        })
        .unwrap();
    assert_eq!(objects[0]["key"], expected.key.as_str());
    assert_eq!(objects[0]["size"], expected.data.len());
    let stored = s3.object(&expected.key).unwrap();
    assert_eq!(
        objects[0]["etag"].as_str().unwrap(),
        stored.etag.trim_matches('"')
    );
    assert_eq!(value["total_bytes"], expected.data.len());
}

#[test]
fn december_second_half_is_planned_for_a_january_start_and_junk_is_ignored() {
    let (s3, _) = seeded_server();
    let scratch = Scratch::new();
    let run = plan(
        &s3,
        &scratch,
        "e5.oper.fc.sfc.accumu",
        "",
        "2024-01-01",
        "2024-01-20",
        true,
    );
    run.expect_code(0);
    let keys = planned_keys(&run);
    assert_eq!(
        keys,
        [
            "e5.oper.fc.sfc.accumu/202312/e5.oper.fc.sfc.accumu.128_143_cp.ll025sc.2023121606_2024010106.nc",
            "e5.oper.fc.sfc.accumu/202401/e5.oper.fc.sfc.accumu.128_143_cp.ll025sc.2024010106_2024011606.nc",
            "e5.oper.fc.sfc.accumu/202401/e5.oper.fc.sfc.accumu.128_143_cp.ll025sc.2024011606_2024020106.nc",
        ]
    );
    // Only the month folders the selection needs were listed: November was not.
    let mut listed = s3.listed_prefixes();
    listed.sort();
    listed.dedup();
    assert_eq!(
        listed,
        [
            "e5.oper.fc.sfc.accumu/202312/",
            "e5.oper.fc.sfc.accumu/202401/"
        ]
    );
}

#[test]
fn leap_day_pressure_levels_and_invariants_with_several_products() {
    let (s3, _) = seeded_server();
    let scratch = Scratch::new();
    let run = plan(
        &s3,
        &scratch,
        "e5.oper.an.pl,e5.oper.invariant",
        "t,lsm",
        "2024-02-29",
        "2024-02-29",
        true,
    );
    run.expect_code(0);
    assert_eq!(
        planned_keys(&run),
        [
            "e5.oper.an.pl/202402/e5.oper.an.pl.128_130_t.ll025sc.2024022900_2024022923.nc",
            "e5.oper.invariant/197901/e5.oper.invariant.128_172_lsm.ll025sc.1979010100_1979010100.nc",
        ]
    );
}

#[test]
fn small_listing_pages_are_all_followed() {
    let (s3, seeded) = seeded_server();
    s3.set_list_max_keys(Some(2));
    let scratch = Scratch::new();
    let run = plan(
        &s3,
        &scratch,
        "e5.oper.an.pl",
        "",
        "2024-02-01",
        "2024-03-31",
        true,
    );
    run.expect_code(0);
    let expected: Vec<String> = under(&seeded, &["e5.oper.an.pl/"])
        .iter()
        .map(|o| o.key.clone())
        .collect();
    assert_eq!(planned_keys(&run), expected);
    assert!(
        s3.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.key.is_none())
            .count()
            > 4,
        "pages were not small"
    );
}

#[test]
fn table_plan_shows_counts_and_bytes_per_product_and_variable() {
    let (s3, seeded) = seeded_server();
    let scratch = Scratch::new();
    let run = plan(
        &s3,
        &scratch,
        "e5.oper.an.sfc",
        "2t,msl",
        "2023-12",
        "2024-04",
        false,
    );
    run.expect_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("PRODUCT"), "{}", run.stdout);
    let bytes = |short: &str| -> usize {
        seeded
            .iter()
            .filter(|o| {
                o.key.starts_with("e5.oper.an.sfc/") && o.key.contains(&format!("_{short}.ll025"))
            })
            .map(|o| o.data.len())
            .sum()
    };
    let row = |short: &str| {
        lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(short))
            .copied()
            .unwrap()
    };
    let fields: Vec<&str> = row("2t").split_whitespace().collect();
    assert_eq!(fields[2], "4", "{}", run.stdout);
    assert_eq!(fields[3], bytes("2t").to_string());
    let total: Vec<&str> = lines.last().unwrap().split_whitespace().collect();
    assert_eq!(total[0], "TOTAL");
    assert_eq!(total[1], "8");
    assert_eq!(total[2], (bytes("2t") + bytes("msl")).to_string());
}

/// Each bad input: exit 2, one line naming the value, no request to the server, no DEST.
#[test]
fn bad_input_is_rejected_before_anything_happens() {
    let s3 = TestS3::start(BUCKET);
    let scratch = Scratch::new();
    let dest = scratch.dest();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--product",
                "e5.oper.an.sf",
                "--start",
                "2024-01",
                "--end",
                "2024-01",
            ],
            "did you mean `e5.oper.an.sfc`",
        ),
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--var",
                "2tt",
                "--start",
                "2024-01",
                "--end",
                "2024-01",
            ],
            "did you mean `2t`",
        ),
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--var",
                "t",
                "--start",
                "2024-01",
                "--end",
                "2024-01",
            ],
            "`t`",
        ),
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--start",
                "2024-02",
                "--end",
                "2024-01",
            ],
            "before --start",
        ),
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--start",
                "2023-02-29",
                "--end",
                "2023-03",
            ],
            "`2023-02-29`",
        ),
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--start",
                "2024/01/01",
                "--end",
                "2024-01",
            ],
            "`2024/01/01`",
        ),
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--start",
                "1900-01",
                "--end",
                "1900-02",
            ],
            "`1900-01`",
        ),
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--start",
                "2024-01",
                "--end",
                "2999-01",
            ],
            "`2999-01`",
        ),
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--start",
                "2024-01",
                "--end",
                "2024-01",
                "--part-size",
                "8 parsecs",
            ],
            "`8 parsecs`",
        ),
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--start",
                "2024-01",
                "--end",
                "2024-01",
                "--verify",
                "sha",
            ],
            "'sha'",
        ),
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--start",
                "2024-01",
                "--end",
                "2024-01",
                "--connections",
                "0",
            ],
            "'0'",
        ),
        (
            vec!["--product", "e5.oper.an.sfc", "--start", "2024-01"],
            "--end",
        ),
    ];
    for (flags, needle) in cases {
        let mut args: Vec<String> =
            vec!["sync".into(), "--dest".into(), dest.display().to_string()];
        args.extend(["--endpoint".into(), s3.endpoint()]);
        args.extend(flags.iter().map(|f| f.to_string()));
        let run = run_era5(&scratch, &args, LIMIT);
        run.expect_code(2);
        let stderr = run.stderr.trim_end();
        assert_eq!(
            stderr.lines().count(),
            1,
            "not one line for {flags:?}: {stderr}"
        );
        assert!(
            stderr.contains(needle),
            "{flags:?}: {stderr} does not name {needle}"
        );
        assert!(!dest.exists(), "{flags:?} wrote {}", dest.display());
    }
    assert!(
        s3.requests().is_empty(),
        "bad input reached the server: {:?}",
        s3.requests()
    );
}

#[test]
fn env_variables_set_flags() {
    let (s3, _) = seeded_server();
    let scratch = Scratch::new();
    let run = support::era5(&scratch.home())
        .args(["plan", "--json"])
        .env("ERA5_PRODUCT", "e5.oper.invariant")
        .env("ERA5_START", "2024-01-01")
        .env("ERA5_END", "2024-01-01")
        .env("ERA5_ENDPOINT", s3.endpoint())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let value: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(value["objects"].as_array().unwrap().len(), 2);
}
