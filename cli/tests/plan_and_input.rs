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
    // The cost: exactly the listings the server answered, and one GET per object at least.
    let lists = s3
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.key.is_none())
        .count();
    assert!(lists >= 1);
    assert_eq!(value["cost"]["list"], lists, "{}", run.stdout);
    assert_eq!(value["cost"]["get_at_least"], 1, "{}", run.stdout);
    let expected_cost = (lists as f64 * 0.005 + 0.0004) / 1000.0;
    let cost = value["cost"]["cost_usd_at_least"].as_f64().unwrap();
    assert!((cost - expected_cost).abs() < 1e-12, "{}", run.stdout);
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
    assert_eq!(fields[2], "ll025sc", "{}", run.stdout);
    assert_eq!(fields[3], "4", "{}", run.stdout);
    assert_eq!(fields[4], bytes("2t").to_string());
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
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--grid",
                "ll025uv",
                "--start",
                "2024-01",
                "--end",
                "2024-01",
            ],
            "unknown grid `ll025uv` for e5.oper.an.sfc",
        ),
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--start",
                "2024-01",
                "--end",
                "2024-01",
                "--interval",
                "1h",
            ],
            "--interval `1h`: only applies with --follow",
        ),
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--start",
                "2024-01",
                "--end",
                "latest",
                "--follow",
                "--interval",
                "0s",
            ],
            "--interval `0s`",
        ),
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--start",
                "latest",
                "--end",
                "2024-01",
            ],
            "--start `latest`",
        ),
        (
            vec![
                "--product",
                "e5.oper.fc.sfc.meanflux",
                "--var",
                "mgws",
                "--start",
                "2024-01",
                "--end",
                "2024-01",
            ],
            "unknown variable `mgws`",
        ),
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--start",
                "2024-01",
                "--end",
                "2024-01",
                "--resolve",
                "s3.example:443:10.0.0.300",
            ],
            "--resolve `s3.example:443:10.0.0.300`",
        ),
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--start",
                "2024-01",
                "--end",
                "2024-01",
                "--resolve",
                "s3.example",
            ],
            "--resolve `s3.example`",
        ),
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--start",
                "2024-01",
                "--end",
                "2024-01",
                "--memory-budget",
                "1KiB",
            ],
            "--memory-budget `1KiB`",
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
                "2000",
            ],
            "'2000'",
        ),
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--start",
                "2024-01",
                "--end",
                "2024-01",
                "--shard",
                "4/4",
            ],
            "--shard `4/4`",
        ),
        (
            vec![
                "--product",
                "e5.oper.an.sfc",
                "--start",
                "2024-01",
                "--end",
                "2024-01",
                "--shard",
                "auto/4",
            ],
            "JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID",
        ),
    ];
    for (flags, needle) in cases {
        let mut args: Vec<String> =
            vec!["sync".into(), "--dest".into(), dest.display().to_string()];
        args.extend(["--endpoint".into(), s3.endpoint()]);
        args.extend(flags.iter().map(std::string::ToString::to_string));
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

fn plan_args(s3: &TestS3, products: &str, start: &str, end: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "plan",
        "--product",
        products,
        "--start",
        start,
        "--end",
        end,
    ]
    .iter()
    .map(std::string::ToString::to_string)
    .collect();
    args.extend(["--endpoint".into(), s3.endpoint()]);
    args.extend(extra.iter().map(std::string::ToString::to_string));
    args
}

#[test]
fn every_alias_form_plans_the_same_objects_under_the_canonical_name() {
    let (s3, _) = seeded_server();
    let scratch = Scratch::new();
    let canonical = plan(
        &s3,
        &scratch,
        "e5.oper.an.sfc",
        "2t",
        "2024-01",
        "2024-02",
        true,
    );
    canonical.expect_code(0);
    let expected = planned_keys(&canonical);
    assert_eq!(expected.len(), 2, "{}", canonical.stdout);
    for alias in [
        "t2m",
        "2m_temperature",
        "167",
        "128.167",
        "167.128",
        "128_167",
    ] {
        let run = plan(
            &s3,
            &scratch,
            "e5.oper.an.sfc",
            alias,
            "2024-01",
            "2024-02",
            true,
        );
        run.expect_code(0);
        assert_eq!(planned_keys(&run), expected, "--var {alias}");
        assert!(run.stderr.is_empty(), "--var {alias}: {}", run.stderr);
    }
    let table = plan(
        &s3,
        &scratch,
        "e5.oper.an.sfc",
        "2m_temperature",
        "2024-01",
        "2024-02",
        false,
    );
    table.expect_code(0);
    let row = table.stdout.lines().nth(1).unwrap();
    assert_eq!(
        row.split_whitespace().take(4).collect::<Vec<_>>(),
        ["e5.oper.an.sfc", "2t", "ll025sc", "2"],
        "{}",
        table.stdout
    );
}

#[test]
fn a_requested_variable_without_objects_warns_and_the_rest_is_planned() {
    let (s3, _) = seeded_server();
    let scratch = Scratch::new();
    let run = plan(
        &s3,
        &scratch,
        "e5.oper.an.sfc",
        "2t,surface_pressure",
        "2024-01",
        "2024-01",
        true,
    );
    run.expect_code(0);
    assert_eq!(planned_keys(&run).len(), 1, "{}", run.stdout);
    assert_eq!(
        run.stderr.trim_end(),
        "era5: warning: variable surface_pressure (sp) matches no object of e5.oper.an.sfc in 2024-01-01..2024-01-31"
    );
}

/// A selection that matches nothing is never silent: plan and sync exit 1 and say why, read
/// from the listing; sync writes nothing.
#[test]
fn a_selection_that_matches_nothing_exits_1_and_says_why() {
    let (s3, _) = seeded_server();
    let scratch = Scratch::new();
    let cases: [(&str, &str, &str, &str); 4] = [
        (
            "e5.oper.an.sfc",
            "2t",
            "2026-01",
            "e5.oper.an.sfc: the range 2026-01-01..2026-01-31 lies after the latest month the bucket holds, 2024-04",
        ),
        (
            "e5.oper.an.sfc",
            "",
            "2024-03",
            "e5.oper.an.sfc: the bucket has no object in 2024-03-01..2024-03-31, a gap in the archive; the nearest months it holds are 2024-02 and 2024-04",
        ),
        (
            "e5.oper.an.sfc",
            "sp",
            "2024-01",
            "e5.oper.an.sfc: the bucket has 2 objects in 2024-01-01..2024-01-31 but none of the requested variables (sp)",
        ),
        (
            "e5.oper.fc.sfc.meanflux",
            "mtpr",
            "2024-01",
            "e5.oper.fc.sfc.meanflux: the bucket holds no e5.oper.fc.sfc.meanflux folder at all (check --bucket and --endpoint)",
        ),
    ];
    for (product, var, month, reason) in cases {
        let mut extra = vec![];
        if !var.is_empty() {
            extra.extend(["--var", var]);
        }
        let run = run_era5(
            &scratch,
            &plan_args(&s3, product, month, month, &extra),
            LIMIT,
        );
        run.expect_code(1);
        let last = run.stderr.lines().last().unwrap_or_default();
        assert_eq!(
            last,
            format!("era5: error: the selection matches no object: {reason}"),
            "{product} {var} {month}"
        );
        assert!(run.stdout.is_empty(), "{}", run.stdout);
    }
    let dest = scratch.dest();
    let args = sync_args(
        &s3.endpoint(),
        &dest,
        "e5.oper.an.sfc",
        "2t",
        "2026-01",
        "2026-02",
    );
    let run = run_era5(&scratch, &args, LIMIT);
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("lies after the latest month the bucket holds, 2024-04"),
        "{}",
        run.stderr
    );
    assert!(!dest.exists(), "an empty sync created {}", dest.display());
}

#[test]
fn keys_the_catalog_does_not_know_are_counted_and_mirrored_without_var() {
    let (s3, _) = seeded_server();
    let unknown = [
        "e5.oper.an.sfc/202401/e5.oper.an.sfc.0_5_0_0_0_t.regn320sc.2024010100_2024013123.nc",
        "e5.oper.an.sfc/202401/e5.oper.an.sfc.128_999_newvar.ll025sc.2024010100_2024013123.nc",
    ];
    for key in unknown {
        s3.put_object(key, tests::fixtures::object_bytes(key, 70_000));
    }
    let scratch = Scratch::new();
    let all = plan(
        &s3,
        &scratch,
        "e5.oper.an.sfc",
        "",
        "2024-01",
        "2024-01",
        true,
    );
    all.expect_code(0);
    let keys = planned_keys(&all);
    assert!(
        unknown.iter().all(|k| keys.contains(&k.to_string())),
        "{keys:?}"
    );
    let value: serde_json::Value = serde_json::from_str(&all.stdout).unwrap();
    assert_eq!(value["unknown_keys"]["count"], 2);
    assert_eq!(value["unknown_keys"]["sample"], serde_json::json!(unknown));
    let table = plan(
        &s3,
        &scratch,
        "e5.oper.an.sfc",
        "",
        "2024-01",
        "2024-01",
        false,
    );
    table.expect_code(0);
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains(" t* ") && l.contains(" regn320sc ")),
        "{}",
        table.stdout
    );
    assert!(
        table
            .stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("* 2 keys in the range are not in the catalog"),
        "{}",
        table.stdout
    );
    // With --var they are not selected, and still reported.
    let some = plan(
        &s3,
        &scratch,
        "e5.oper.an.sfc",
        "2t",
        "2024-01",
        "2024-01",
        true,
    );
    some.expect_code(0);
    assert_eq!(planned_keys(&some).len(), 1);
    let value: serde_json::Value = serde_json::from_str(&some.stdout).unwrap();
    assert_eq!(value["unknown_keys"]["count"], 2);
    // A sync without --var mirrors them like any other object.
    let dest = scratch.dest();
    let run = run_era5(
        &scratch,
        &sync_args(
            &s3.endpoint(),
            &dest,
            "e5.oper.an.sfc",
            "",
            "2024-01",
            "2024-01",
        ),
        LIMIT,
    );
    run.expect_code(0);
    for key in unknown {
        assert_eq!(
            std::fs::read(dest.join(key)).unwrap(),
            tests::fixtures::object_bytes(key, 70_000).to_vec()
        );
    }
}

#[test]
fn grid_selects_by_grid() {
    let (s3, _) = seeded_server();
    let scratch = Scratch::new();
    let run = run_era5(
        &scratch,
        &plan_args(
            &s3,
            "e5.oper.an.pl",
            "2024-02-28",
            "2024-02-28",
            &["--grid", "ll025uv", "--json"],
        ),
        LIMIT,
    );
    run.expect_code(0);
    assert_eq!(
        planned_keys(&run),
        ["e5.oper.an.pl/202402/e5.oper.an.pl.128_131_u.ll025uv.2024022800_2024022823.nc"]
    );
}

#[test]
fn catalog_lists_products_variables_and_the_buckets_latest_months() {
    let (s3, _) = seeded_server();
    let scratch = Scratch::new();
    let run = run_era5(
        &scratch,
        &[
            "catalog".into(),
            "--json".into(),
            "--endpoint".into(),
            s3.endpoint(),
        ],
        LIMIT,
    );
    run.expect_code(0);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let products = value["products"].as_array().unwrap();
    assert_eq!(products.len(), 8);
    let product = |name: &str| products.iter().find(|p| p["name"] == name).unwrap();
    assert_eq!(product("e5.oper.an.sfc")["latest_month"], "2024-04");
    assert_eq!(product("e5.oper.an.pl")["latest_month"], "2024-03");
    assert_eq!(product("e5.oper.an.pl")["cadence"], "daily");
    assert_eq!(product("e5.oper.an.pl")["first_month"], "1940-01");
    assert_eq!(product("e5.oper.invariant")["first_month"], "1979-01");
    assert!(product("e5.oper.fc.sfc.meanflux")["latest_month"].is_null());
    let meanflux = product("e5.oper.fc.sfc.meanflux")["variables"]
        .as_array()
        .unwrap();
    assert_eq!(meanflux.len(), 39);
    let msdrswrf = meanflux.iter().find(|v| v["short"] == "msdrswrf").unwrap();
    assert_eq!(
        msdrswrf,
        &serde_json::json!({
            "code": "235_058", "param_id": 235_058, "short": "msdrswrf",
            "long_name": "mean_surface_direct_short_wave_radiation_flux", "units": "W m-2",
            "grid": "ll025sc", "aliases": [], "confirmed": true
        })
    );

    let text = run_era5(
        &scratch,
        &[
            "catalog".into(),
            "--product".into(),
            "e5.oper.an.sfc".into(),
            "--offline".into(),
        ],
        LIMIT,
    );
    text.expect_code(0);
    assert!(
        text.stdout.starts_with(
            "e5.oper.an.sfc: one object per month\n  first month 1940-01, latest month unknown\n"
        ),
        "{}",
        text.stdout
    );
    let row = text
        .stdout
        .lines()
        .find(|l| l.contains(" 2m_temperature"))
        .unwrap();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        [
            "128_167",
            "2t",
            "ll025sc",
            "K",
            "2m_temperature",
            "(also",
            "t2m)"
        ]
    );
    let requests_before = s3.requests().len();
    let offline = run_era5(
        &scratch,
        &["catalog".into(), "--offline".into(), "--json".into()],
        LIMIT,
    );
    offline.expect_code(0);
    assert_eq!(s3.requests().len(), requests_before);

    let bad = run_era5(
        &scratch,
        &["catalog".into(), "--product".into(), "e5.oper.an.sf".into()],
        LIMIT,
    );
    bad.expect_code(2);
    assert!(
        bad.stderr.contains("did you mean `e5.oper.an.sfc`"),
        "{}",
        bad.stderr
    );
}

/// Opt-in (`ERA5_LIVE=1`): one month of each product in the real bucket, diffed against the
/// catalog. Every real key must be in the table, and every entry the table marks as seen must
/// be in the bucket; unconfirmed entries found in the bucket are reported.
#[test]
fn live_bucket_matches_the_catalog() {
    if std::env::var("ERA5_LIVE").as_deref() != Ok("1") {
        eprintln!("skipped: set ERA5_LIVE=1 to check the catalog against the real bucket");
        return;
    }
    let scratch = Scratch::new();
    let catalog = run_era5(&scratch, &["catalog".into(), "--json".into()], LIMIT);
    catalog.expect_code(0);
    let catalog: serde_json::Value = serde_json::from_str(&catalog.stdout).unwrap();
    let mut problems = Vec::new();
    for product in catalog["products"].as_array().unwrap() {
        let name = product["name"].as_str().unwrap();
        let month = product["latest_month"]
            .as_str()
            .unwrap_or("2024-01")
            .to_string();
        let args: Vec<String> = [
            "plan",
            "--json",
            "--product",
            name,
            "--start",
            &month,
            "--end",
            &month,
        ]
        .iter()
        .map(std::string::ToString::to_string)
        .collect();
        let run = run_era5(&scratch, &args, Duration::from_secs(300));
        run.expect_code(0);
        let listed: std::collections::BTreeSet<(String, String, String)> = planned_keys(&run)
            .iter()
            .filter_map(|k| common::ObjectKey::parse(k))
            .map(|k| (k.code, k.short, k.grid))
            .collect();
        let table: Vec<(String, String, String, bool)> = product["variables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["code"].as_str().unwrap().to_string(),
                    v["short"].as_str().unwrap().to_string(),
                    v["grid"].as_str().unwrap().to_string(),
                    v["confirmed"].as_bool().unwrap(),
                )
            })
            .collect();
        for (code, short, grid) in &listed {
            if !table
                .iter()
                .any(|(c, s, g, _)| c == code && s == short && g == grid)
            {
                problems.push(format!(
                    "{name} {month}: {code}_{short}.{grid} is not in the table"
                ));
            }
        }
        for (code, short, grid, confirmed) in &table {
            let present = listed.contains(&(code.clone(), short.clone(), grid.clone()));
            match (present, confirmed) {
                (false, true) => problems.push(format!(
                    "{name} {month}: {code}_{short}.{grid} is not in the bucket"
                )),
                (true, false) => {
                    eprintln!("{name}: unconfirmed {code}_{short}.{grid} is in the bucket");
                }
                _ => {}
            }
        }
    }
    assert!(
        problems.is_empty(),
        "catalog differs from the bucket:\n{}",
        problems.join("\n")
    );
}

/// `--help` names each flag's environment variable but never shows its value: `ERA5_REDIS`
/// may hold the Redis password, an endpoint URL credentials.
#[test]
fn help_never_shows_the_values_of_environment_variables() {
    let scratch = Scratch::new();
    for (command, variable, value) in [
        (
            "coordinator",
            "ERA5_REDIS",
            "redis://era5:s3cr3t-pw@redis:6379/",
        ),
        ("sync", "ERA5_ENDPOINT", "https://user:s3cr3t-pw@s3.example"),
        (
            "worker",
            "ERA5_COORDINATOR",
            "https://user:s3cr3t-pw@coordinator:50051",
        ),
    ] {
        let output = era5(&scratch.home())
            .args([command, "--help"])
            .env(variable, value)
            .output()
            .unwrap();
        assert!(output.status.success());
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(
            help.contains(variable),
            "{command} --help does not name {variable}"
        );
        assert!(
            !help.contains("s3cr3t-pw"),
            "{command} --help shows {variable}'s value:\n{help}"
        );
    }
}

/// `era5 catalog | head` (issue 23 §5): a closed stdout ends the output quietly, as in other
/// Unix tools, with the command's own exit status and nothing on stderr. The pipe's reading end
/// is closed before `era5` writes, so every write meets EPIPE.
#[test]
fn a_closed_stdout_ends_the_output_quietly() {
    let scratch = Scratch::new();
    for json in [true, false] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut command = era5(&scratch.home());
        command.args(["catalog", "--offline"]);
        if json {
            command.arg("--json");
        }
        let output = command
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "json {json}: {stderr}");
        assert!(stderr.is_empty(), "json {json}: {stderr}");
    }
}

/// The exit-status table is one (issue 23 §3): `era5 --help` prints it, and the README carries
/// the same lines, which schedulers' retry policies are written from.
#[test]
fn the_exit_status_table_is_the_same_in_help_and_readme() {
    let scratch = Scratch::new();
    let help = run_era5(&scratch, &["--help".into()], LIMIT);
    help.expect_code(0);
    let table = help
        .stdout
        .split_once("Exit status (every command):\n")
        .expect("the table in --help")
        .1;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for line in table.lines().filter(|l| !l.trim().is_empty()) {
        assert!(readme.contains(line), "README lacks `{line}`");
    }
    for code in ["  0 ", "  1 ", "  2 ", "  3 ", "  130 "] {
        assert!(table.contains(code), "{table}");
    }
}

/// A source whose name does not resolve (no network, no DNS) ends the command with one line
/// after three attempts rather than ten silent ones (issue 23 §5). `.invalid` never resolves
/// (RFC 6761).
#[test]
fn an_unresolvable_source_fails_in_one_line_after_three_attempts() {
    let scratch = Scratch::new();
    let run = run_era5(
        &scratch,
        &[
            "plan".into(),
            "--product".into(),
            "e5.oper.an.sfc".into(),
            "--start".into(),
            "2024-01".into(),
            "--end".into(),
            "2024-01".into(),
            "--endpoint".into(),
            "http://era5-test.invalid:9000".into(),
        ],
        LIMIT,
    );
    run.expect_code(1);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("3 attempts: is the network or DNS up?"),
        "{}",
        run.stderr
    );
}
