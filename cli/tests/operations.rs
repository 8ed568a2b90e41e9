//! Operations end to end: Prometheus metrics and probes of the coordinator and the workers,
//! the status page in headless Chromium against `era5 status --json`, and secrets kept out of
//! logs, status output, metrics and the page. Also the operator's map: ARCHITECTURE.md names
//! only what exists.

mod support;

use std::process::Command;
use std::time::Duration;

use support::cluster::{Cluster, get, metric};
use support::*;
use tests::faults::{Fault, FaultRule};
use tests::redis_server::RedisServer;

const LIMIT: Duration = Duration::from_secs(90);

#[test]
fn metrics_and_probes_carry_the_documented_names() {
    let _serial = serial();
    let (s3, _) = seeded_server();
    s3.add_fault(FaultRule {
        method: Some(http::Method::GET),
        key_contains: Some("e5.oper".into()),
        object_gets_only: true,
        query_contains: None,
        operation: None,
        skip: 0,
        times: Some(2),
        fault: Fault::SlowDown,
    });
    let mut cluster = Cluster::start(&s3.endpoint(), 10);
    cluster.add_worker("m1", 0, &[]);
    let job = cluster.submit("e5.oper.an.sfc", "", "2023-12", "2024-04");
    let status = cluster.wait_final(&job, LIMIT);
    assert_eq!(status["jobs"][0]["state"], "complete");

    let coordinator = cluster.coordinator_http[0];
    assert_eq!(get(coordinator, "/healthz").0, 200);
    assert_eq!(get(coordinator, "/readyz").0, 200);
    // The lease counts are refreshed every few seconds.
    let done = status["jobs"][0]["leases"]["done"].as_f64().unwrap();
    wait_until(Duration::from_secs(20), "era5_leases to catch up", || {
        metric(
            &get(coordinator, "/metrics").1,
            "era5_leases{state=\"done\"}",
        ) == Some(done)
    });
    let text = get(coordinator, "/metrics").1;
    for series in [
        "era5_leases{state=\"pending\"}",
        "era5_leases{state=\"leased\"}",
        "era5_leases{state=\"dead\"}",
        "era5_workers_connected",
    ] {
        assert!(
            metric(&text, series).is_some(),
            "coordinator lacks {series}:\n{text}"
        );
    }
    assert!(metric(&text, "era5_workers_connected").unwrap() >= 1.0);
    assert!(
        metric(&text, "era5_lease_renew_seconds_count").is_some(),
        "{text}"
    );

    let worker = cluster.worker_http("m1");
    assert_eq!(get(worker, "/healthz").0, 200);
    assert_eq!(get(worker, "/readyz").0, 200);
    let text = get(worker, "/metrics").1;
    assert!(
        metric(&text, "era5_bytes_downloaded_total").unwrap() > 0.0,
        "{text}"
    );
    assert!(metric(&text, "era5_objects_completed_total").unwrap() > 0.0);
    assert_eq!(
        metric(&text, "era5_s3_retries_total{reason=\"slowdown\"}"),
        Some(2.0),
        "{text}"
    );
    // The worker autotunes its window like a sync: the gauge shows it, within the cap.
    let window = metric(&text, "era5_s3_concurrency").expect("era5_s3_concurrency");
    assert!(window >= 1.0, "{text}");
    for series in [
        "era5_s3_connections_open",
        "era5_s3_connections_in_use",
        "era5_s3_requests_in_flight",
        "era5_s3_hedged_requests_total",
        "era5_s3_hedges_won_total",
        "era5_s3_duplicate_bytes_total",
        "era5_s3_stall_timeouts_total",
        "era5_verify_failures_total",
        "era5_checksum_contradictions_total",
        "era5_lease_renew_seconds_count",
    ] {
        assert!(
            metric(&text, series).is_some(),
            "worker lacks {series}:\n{text}"
        );
    }
    // Bounded label cardinality: no key, job or lease id ever appears in a metric.
    for exposition in [get(coordinator, "/metrics").1, text] {
        assert!(
            !exposition.contains("e5.oper") && !exposition.contains(&job),
            "{exposition}"
        );
    }

    // Liveness does not depend on the coordinator; readiness does.
    cluster.coordinators[0].0.kill9();
    assert_eq!(get(worker, "/healthz").0, 200);
}

/// The page as Chromium renders it.
fn render(url: &str) -> String {
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
        ])
        .args([
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            "--virtual-time-budget=3000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            tempfile::tempdir().unwrap().path().display()
        ))
        .args(["--dump-dom", url])
        .output()
        .expect("chromium is needed for this test: apt install chromium");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `data-value` of `data-field="field"` inside the row that starts with `row_attribute`.
fn figure(html: &str, row_attribute: &str, field: &str) -> Option<f64> {
    let row_start = html.find(row_attribute)?;
    let row = &html[row_start..row_start + html[row_start..].find("</tr>")?];
    let needle = format!("data-field=\"{field}\" data-value=\"");
    let at = row.find(&needle)? + needle.len();
    row[at..].split('"').next()?.parse().ok()
}

#[test]
fn the_status_page_shows_what_status_json_says() {
    let _serial = serial();
    let (s3, _) = seeded_server();
    slow_bodies(&s3, 1 << 20);
    let mut cluster = Cluster::start(&s3.endpoint(), 10);
    cluster.add_worker("p1", 0, &[]);
    cluster.add_worker("p2", 0, &[]);
    let job = cluster.submit("e5.oper.an.sfc,e5.oper.an.pl", "", "2023-12", "2024-04");
    cluster.wait_for(&job, LIMIT, "the job to be running", |s| {
        s["jobs"][0]["state"] == "running" && s["jobs"][0]["bytes_done"].as_u64() > Some(0)
    });
    let url = format!("http://127.0.0.1:{}/", cluster.coordinator_http[0]);
    let before = cluster.status(0, Some(&job));
    let html = render(&url);
    let after = cluster.status(0, Some(&job));
    assert!(
        html.contains("<table id=\"jobs\">") && html.contains("<svg"),
        "{html}"
    );
    let row = format!("data-job=\"{job}\"");

    // Fixed figures are equal; moving ones lie between the two JSON reads around the render.
    for field in ["objects_total", "bytes_total"] {
        assert_eq!(
            figure(&html, &row, field),
            before["jobs"][0][field].as_f64(),
            "{field}"
        );
    }
    for field in ["bytes_done", "done"] {
        let json = |s: &serde_json::Value| {
            if field == "done" {
                s["jobs"][0]["leases"]["done"].as_f64()
            } else {
                s["jobs"][0][field].as_f64()
            }
        };
        let shown = figure(&html, &row, field).unwrap_or_else(|| panic!("no {field} in the page"));
        assert!(
            json(&before).unwrap() <= shown && shown <= json(&after).unwrap(),
            "{field}: {shown} outside {before} .. {after}"
        );
    }
    let total_leases: f64 = ["pending", "leased", "done", "dead"]
        .iter()
        .map(|f| figure(&html, &row, f).unwrap())
        .sum();
    let json_total: f64 = ["pending", "leased", "done", "dead"]
        .iter()
        .map(|f| before["jobs"][0]["leases"][f].as_f64().unwrap())
        .sum();
    assert!(
        (total_leases - json_total).abs() < 0.5,
        "{total_leases} vs {json_total}"
    );
    // Every worker of status --json is in the page, with its chart line.
    for worker in before["workers"].as_array().unwrap() {
        let name = worker["name"].as_str().unwrap();
        assert!(
            figure(&html, &format!("data-worker=\"{name}\""), "leases_held").is_some(),
            "{name} missing"
        );
        assert!(
            html.contains(&format!("<polyline data-worker=\"{name}\"")),
            "no chart line for {name}"
        );
    }
    // The job page lists its leases.
    let job_html = render(&format!("{url}jobs/{job}"));
    let leases = before["leases"].as_array().unwrap();
    for lease in leases {
        assert!(job_html.contains(&format!(
            "data-lease=\"{}\"",
            lease["lease"].as_str().unwrap()
        )));
    }
    cluster.wait_final(&job, LIMIT);
}

#[test]
fn secrets_never_reach_logs_status_metrics_or_the_page() {
    let _serial = serial();
    const SECRET: &str = "s3cr3t-Redis-PASSWORD-7f3a";
    let (s3, _) = seeded_server();
    let scratch = Scratch::new();
    let redis = RedisServer::start_with_password(SECRET);
    let mut cluster = Cluster::start_with(
        scratch,
        redis,
        &s3.endpoint(),
        10,
        &["--log-format", "json"],
    );
    cluster.add_worker("s1", 0, &[]);
    let job = cluster.submit("e5.oper.an.sfc", "2t", "2024-01", "2024-02");
    assert_eq!(
        cluster.wait_final(&job, LIMIT)["jobs"][0]["state"],
        "complete"
    );

    let coordinator_http = cluster.coordinator_http[0];
    let mut seen = vec![
        get(coordinator_http, "/metrics").1,
        get(coordinator_http, "/").1,
        get(coordinator_http, &format!("/jobs/{job}")).1,
        get(cluster.worker_http("s1"), "/metrics").1,
        cluster.status(0, None).to_string(),
        cluster.status(0, Some(&job)).to_string(),
    ];
    let text_status = era5(&cluster.scratch.home())
        .args(["status", "--coordinator", &cluster.coordinator_url(0), &job])
        .output()
        .unwrap();
    seen.push(String::from_utf8_lossy(&text_status.stdout).into_owned());
    // A coordinator given a bad Redis URL names the bad value, without its password.
    let bad = era5(&cluster.scratch.home())
        .args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--redis",
            &format!("redis://:{SECRET}@127.0.0.1:notaport/"),
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    seen.push(String::from_utf8_lossy(&bad.stderr).into_owned());
    for (coordinator, _) in &cluster.coordinators {
        seen.push(coordinator.log_text());
    }
    for (_, process) in &cluster.workers {
        seen.push(process.log_text());
    }
    let logs = cluster.coordinators[0].0.log_text();
    assert!(
        logs.lines()
            .any(|l| l.starts_with('{') && l.contains("\"coordinator started\"")),
        "logs are not JSON:\n{logs}"
    );
    assert!(
        logs.contains("redis://:****@"),
        "the redacted URL should be logged:\n{logs}"
    );
    for text in seen {
        assert!(!text.contains(SECRET), "the Redis password leaked:\n{text}");
    }
}

/// `scripts/check-architecture` (its self-test, then ARCHITECTURE.md itself) as a test, so
/// `scripts/test` checks the document as CI does: every path and code name it mentions exists.
#[test]
fn the_architecture_document_names_only_what_exists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for args in [&["--self-test"][..], &[]] {
        let output = Command::new("python3")
            .arg(root.join("scripts/check-architecture"))
            .args(args)
            .output()
            .expect("run python3 scripts/check-architecture");
        assert!(
            output.status.success(),
            "check-architecture {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
