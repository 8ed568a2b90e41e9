//! The coordinator's status page: jobs, leases by state, workers, and charts of the last hour
//! of throughput and open connections per worker (kept in the store, no external database).
//!
//! Server-rendered HTML with inline SVG: no front-end build, no JavaScript needed (the tables
//! and charts are plain markup), refreshing itself every few seconds. Figures carry
//! `data-field`/`data-value` attributes with the exact numbers `era5 status --json` reports,
//! so tools and tests can read them without parsing human units.

use std::fmt::Write;

use lease::model::{ItemState, ItemStatus, JobState, JobStatus, Sample, WorkerStatus, now_ms};

/// Seconds between automatic refreshes.
const REFRESH_SECONDS: u32 = 5;
/// Colours of the chart lines, one per worker in turn.
const COLOURS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Percent-encodes everything but unreserved characters, for a query value.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn human(bytes: f64) -> String {
    common::units::human_bytes(bytes.max(0.0) as u64)
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
<title>{title}</title><style>\
body{{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}}\
table{{border-collapse:collapse;margin:.5rem 0 1.5rem}}\
th,td{{padding:.25rem .6rem;border-bottom:1px solid #ddd;text-align:right}}\
th{{background:#f4f4f4}} td:first-child,th:first-child{{text-align:left}}\
.dead{{color:#b00}} .chart{{margin-right:2rem}} h2{{margin-top:1.5rem}}\
</style></head><body><h1>{title}</h1>{body}\
<p><small>Refreshes every {REFRESH_SECONDS} s. Same data: <code>era5 status --json</code>.</small></p>\
</body></html>"
    )
}

/// The overview: the jobs that may still have work and the latest others (`total` jobs in
/// all), every worker, and the charts.
pub fn overview(
    jobs: &[JobStatus],
    total: u64,
    workers: &[WorkerStatus],
    history: &[(String, Vec<Sample>)],
) -> String {
    let mut body = String::new();
    body.push_str("<h2>Jobs</h2>");
    body.push_str(&jobs_table(jobs));
    if total > jobs.len() as u64 {
        let _ = write!(
            body,
            "<p data-field=\"jobs_not_shown\" data-value=\"{hidden}\">{hidden} older finished jobs not shown \
(<code>era5 status</code> lists the same).</p>",
            hidden = total - jobs.len() as u64
        );
    }
    body.push_str("<h2>Workers</h2>");
    body.push_str(&workers_table(workers));
    body.push_str(
        "<h2>Recent throughput (up to an hour)</h2><div style=\"display:flex;flex-wrap:wrap\">",
    );
    body.push_str(&chart(
        "Throughput per worker",
        "throughput",
        history,
        |s| s.bytes_per_sec,
        |v| format!("{}/s", human(v)),
    ));
    body.push_str(&chart(
        "Open S3 connections per worker",
        "connections",
        history,
        |s| f64::from(s.open),
        |v| format!("{v:.0}"),
    ));
    body.push_str("</div>");
    page("era5-mirror", &body)
}

/// One job with one page of its leases (`state`: the filter the page was asked with; `next`:
/// where the following page starts).
pub fn job_page(
    job: &JobStatus,
    items: &[ItemStatus],
    state: Option<ItemState>,
    next: Option<&str>,
    workers: &[WorkerStatus],
) -> String {
    let mut body = jobs_table(std::slice::from_ref(job));
    let id = escape(&job.job_id);
    body.push_str("<h2>Leases</h2><p>");
    for (filter, label) in [
        (None, "all"),
        (Some(ItemState::Pending), "pending"),
        (Some(ItemState::Leased), "leased"),
        (Some(ItemState::Done), "done"),
        (Some(ItemState::Dead), "dead"),
    ] {
        let query = filter.map_or(String::new(), |s| format!("?state={}", s.name()));
        if filter == state {
            let _ = write!(body, "<strong>{label}</strong> ");
        } else {
            let _ = write!(body, "<a href=\"/jobs/{id}{query}\">{label}</a> ");
        }
    }
    body.push_str("</p><table id=\"leases\"><tr><th>lease</th><th>product</th><th>start</th><th>end</th>\
<th>objects</th><th>bytes</th><th>state</th><th>epoch</th><th>holder</th><th>attempts</th><th>last error</th></tr>");
    for item in items {
        let class = if item.state.name() == "dead" {
            " class=\"dead\""
        } else {
            ""
        };
        let _ = write!(
            body,
            "<tr data-lease=\"{id}\"{class}><td>{id}</td><td>{product}</td><td>{start}</td><td>{end}</td><td>{objects}</td>\
<td data-field=\"bytes\" data-value=\"{bytes}\">{bytes_human}</td><td data-field=\"state\">{state}</td><td>{epoch}</td>\
<td>{holder}</td><td>{attempts}</td><td>{error}</td></tr>",
            id = escape(&item.item_id),
            product = escape(&item.product),
            start = escape(&item.start),
            end = escape(&item.end),
            objects = item.objects,
            bytes = item.bytes,
            bytes_human = human(item.bytes as f64),
            state = item.state.name(),
            epoch = item.epoch,
            holder = escape(&item.holder),
            attempts = item.attempts,
            error = escape(&item.last_error),
        );
    }
    body.push_str("</table>");
    if let Some(next) = next {
        let state = state.map_or(String::new(), |s| format!("&amp;state={}", s.name()));
        let _ = write!(
            body,
            "<p><a id=\"next-page\" href=\"/jobs/{id}?after={after}{state}\">next leases</a></p>",
            after = escape(&url_encode(next)),
        );
    }
    body.push_str("<h2>Workers</h2>");
    body.push_str(&workers_table(workers));
    body.push_str("<p><a href=\"/\">all jobs</a></p>");
    page(&format!("era5-mirror job {}", escape(&job.job_id)), &body)
}

fn jobs_table(jobs: &[JobStatus]) -> String {
    let mut out = String::from(
        "<table id=\"jobs\"><tr><th>job</th><th>state</th><th>leases pending</th><th>leased</th><th>done</th><th>dead</th>\
<th>objects</th><th>bytes done</th><th>bytes total</th><th>rate</th><th>ETA</th></tr>",
    );
    for job in jobs {
        let (rate, eta) = job.rate_and_eta();
        let eta_text = if eta < 0.0 || job.state == JobState::Complete {
            "-".to_string()
        } else {
            format!("{eta:.0} s")
        };
        let _ = write!(
            out,
            "<tr data-job=\"{id}\"><td><a href=\"/jobs/{id}\">{id}</a></td><td data-field=\"state\">{state}</td>\
<td data-field=\"pending\" data-value=\"{pending}\">{pending}</td><td data-field=\"leased\" data-value=\"{leased}\">{leased}</td>\
<td data-field=\"done\" data-value=\"{done}\">{done}</td><td data-field=\"dead\" data-value=\"{dead}\">{dead}</td>\
<td data-field=\"objects_total\" data-value=\"{objects}\">{objects}</td>\
<td data-field=\"bytes_done\" data-value=\"{bytes_done}\">{bytes_done_human}</td>\
<td data-field=\"bytes_total\" data-value=\"{bytes_total}\">{bytes_total_human}</td>\
<td data-field=\"bytes_per_sec\" data-value=\"{rate:.0}\">{rate_human}/s</td><td>{eta_text}</td></tr>",
            id = escape(&job.job_id),
            state = job.state.name(),
            pending = job.counts.pending,
            leased = job.counts.leased,
            done = job.counts.done,
            dead = job.counts.dead,
            objects = job.objects_total,
            bytes_done = job.bytes_done,
            bytes_done_human = human(job.bytes_done as f64),
            bytes_total = job.bytes_total,
            bytes_total_human = human(job.bytes_total as f64),
            rate_human = human(rate),
        );
    }
    out.push_str("</table>");
    out
}

fn workers_table(workers: &[WorkerStatus]) -> String {
    let now = now_ms();
    let mut out = String::from(
        "<table id=\"workers\"><tr><th>worker</th><th>leases</th><th>throughput</th><th>open</th><th>in use</th>\
<th>retries</th><th>last heartbeat</th><th>draining</th></tr>",
    );
    for worker in workers {
        let retries: u64 = worker.metrics.retries.values().sum();
        let _ = write!(
            out,
            "<tr data-worker=\"{name}\"><td>{name}</td><td data-field=\"leases_held\" data-value=\"{leases}\">{leases}</td>\
<td data-field=\"bytes_per_sec\" data-value=\"{rate:.0}\">{rate_human}/s</td>\
<td data-field=\"open_connections\" data-value=\"{open}\">{open}</td><td data-field=\"in_use_connections\" data-value=\"{in_use}\">{in_use}</td>\
<td data-field=\"retries\" data-value=\"{retries}\">{retries}</td><td>{ago:.0} s ago</td><td>{draining}</td></tr>",
            name = escape(&worker.name),
            leases = worker.leases_held,
            rate = worker.metrics.bytes_per_sec,
            rate_human = human(worker.metrics.bytes_per_sec),
            open = worker.metrics.open,
            in_use = worker.metrics.in_use,
            ago = (now - worker.last_heartbeat_ms).max(0) as f64 / 1000.0,
            draining = if worker.draining { "yes" } else { "no" },
        );
    }
    out.push_str("</table>");
    out
}

/// A line chart (inline SVG) of one figure per worker over the last hour.
fn chart(
    title: &str,
    id: &str,
    history: &[(String, Vec<Sample>)],
    value: impl Fn(&Sample) -> f64,
    label: impl Fn(f64) -> String,
) -> String {
    const WIDTH: f64 = 560.0;
    const HEIGHT: f64 = 200.0;
    const LEFT: f64 = 70.0;
    const BOTTOM: f64 = 20.0;
    // The window: the last hour, or since the oldest sample when that is more recent (at least
    // five minutes), so that a short job fills the chart instead of being a sliver at its end.
    let now = now_ms();
    let oldest = history
        .iter()
        .flat_map(|(_, samples)| samples.iter().map(|s| s.at_ms))
        .filter(|at| *at >= now - 3_600_000)
        .min()
        .unwrap_or(now);
    let start = oldest.min(now - 300_000).max(now - 3_600_000);
    let span = (now - start) as f64;
    let minutes = ((now - start) as f64 / 60_000.0).round();
    let peak = history
        .iter()
        .flat_map(|(_, samples)| samples.iter().filter(|s| s.at_ms >= start).map(&value))
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let x = |at: i64| LEFT + (at - start) as f64 / span * (WIDTH - LEFT - 10.0);
    let y = |v: f64| (HEIGHT - BOTTOM) - v / peak * (HEIGHT - BOTTOM - 10.0);
    let mut svg = format!(
        "<figure class=\"chart\" id=\"chart-{id}\"><figcaption>{title}</figcaption>\
<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\" aria-label=\"{title}\">\
<line x1=\"{LEFT}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#999\"/><line x1=\"{LEFT}\" y1=\"10\" x2=\"{LEFT}\" y2=\"{b}\" stroke=\"#999\"/>\
<text x=\"{lx}\" y=\"14\" font-size=\"11\" text-anchor=\"end\">{top}</text><text x=\"{lx}\" y=\"{b}\" font-size=\"11\" text-anchor=\"end\">0</text>\
<text x=\"{LEFT}\" y=\"{t}\" font-size=\"11\">-{minutes} min</text><text x=\"{r}\" y=\"{t}\" font-size=\"11\" text-anchor=\"end\">now</text>",
        b = HEIGHT - BOTTOM,
        r = WIDTH - 10.0,
        lx = LEFT - 4.0,
        t = HEIGHT - 4.0,
        top = escape(&label(peak)),
    );
    let mut legend = String::new();
    for (index, (worker, samples)) in history.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let points: Vec<String> = samples
            .iter()
            .filter(|s| s.at_ms >= start)
            .map(|s| format!("{:.1},{:.1}", x(s.at_ms), y(value(s))))
            .collect();
        if !points.is_empty() {
            let _ = write!(
                svg,
                "<polyline data-worker=\"{name}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{points}\"/>",
                name = escape(worker),
                points = points.join(" ")
            );
        }
        let _ = write!(
            legend,
            "<span style=\"color:{colour}\">&#9632; {}</span> ",
            escape(worker)
        );
    }
    svg.push_str("</svg>");
    let _ = write!(svg, "<div>{legend}</div></figure>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use lease::model::{Counts, JobState, SelectionSpec, SourceSpec, WorkerMetrics};

    #[test]
    fn the_page_escapes_names_and_carries_exact_figures() {
        let job = JobStatus {
            job_id: "j<1>".into(),
            state: JobState::Running,
            counts: Counts {
                pending: 1,
                leased: 2,
                done: 3,
                dead: 0,
            },
            objects_total: 24,
            bytes_total: 1_000_000,
            bytes_done: 123_456,
            created_ms: now_ms(),
            started_ms: now_ms() - 10_000,
            finished_ms: 0,
            selection: SelectionSpec::default(),
            source: SourceSpec::default(),
            follow: None,
            bwlimit: None,
        };
        let worker = WorkerStatus {
            name: "w\"1".into(),
            leases_held: 2,
            metrics: WorkerMetrics {
                open: 7,
                bytes_per_sec: 1e6,
                ..Default::default()
            },
            last_heartbeat_ms: now_ms(),
            draining: false,
        };
        let history = vec![(
            "w\"1".to_string(),
            vec![
                Sample {
                    at_ms: now_ms() - 60_000,
                    bytes_per_sec: 5e5,
                    open: 3,
                },
                Sample {
                    at_ms: now_ms(),
                    bytes_per_sec: 1e6,
                    open: 7,
                },
            ],
        )];
        let html = overview(&[job], 3, &[worker], &history);
        assert!(html.contains("data-field=\"jobs_not_shown\" data-value=\"2\""));
        assert!(html.contains("j&lt;1&gt;") && !html.contains("j<1>"));
        assert!(html.contains("data-field=\"bytes_done\" data-value=\"123456\""));
        assert!(html.contains("data-field=\"open_connections\" data-value=\"7\""));
        assert!(html.contains("<polyline data-worker=\"w&quot;1\""));
        assert!(html.contains("http-equiv=\"refresh\""));
        // Issue 23 §5: one heading per figure, a rate on the throughput axis, and a job with
        // a minute of history drawn over five minutes, not as a sliver of an hour.
        assert!(html.contains("<th>leases pending</th>") && html.contains("<th>bytes done</th>"));
        assert!(html.contains("/s</text>"), "the throughput axis is a rate");
        assert!(html.contains(">-5 min</text>"), "{html}");
        assert!(
            !html.contains("<script"),
            "the page must work without JavaScript"
        );
    }
}
