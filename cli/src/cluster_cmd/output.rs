//! What the operator commands print: the `status` tables and their `--json` form.
//!
//! Every string that came from the coordinator passes through [`clean`] first: a job id, a
//! worker name or a failure reason is data from the network, and control characters in it
//! (escape sequences, carriage returns, bidirectional overrides) must not reach a terminal.

use std::borrow::Cow;

use common::units::human_bytes;
use proto::v1 as pb;
use serde_json::json;

/// `text` without control characters (C0, DEL, C1) or the invisible format characters that
/// reorder or hide text (bidirectional overrides and isolates, zero-width joiners).
pub fn clean(text: &str) -> Cow<'_, str> {
    let unwanted = |c: char| {
        c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
    };
    if text.chars().any(unwanted) {
        Cow::Owned(text.chars().filter(|c| !unwanted(*c)).collect())
    } else {
        Cow::Borrowed(text)
    }
}

fn eta(seconds: f64) -> String {
    if seconds < 0.0 {
        "-".into()
    } else if seconds < 120.0 {
        format!("{seconds:.0}s")
    } else if seconds < 7200.0 {
        format!("{:.0}m", seconds / 60.0)
    } else {
        format!("{:.1}h", seconds / 3600.0)
    }
}

/// The jobs, one row each, within 100 columns: the four lease counts share a column
/// (pending/leased/done/dead: P/L/D/X), and a standing job's next pass is a UTC time of day (its date is
/// in `era5 status JOB`).
pub fn jobs_table(jobs: &[pb::JobSummary]) -> String {
    let mut out = format!(
        "{:<16} {:<9} {:>14} {:>7} {:>19} {:>11} {:>6} {:>9}\n",
        "JOB", "STATE", "LEASES P/L/D/X", "OBJECTS", "BYTES DONE/TOTAL", "RATE", "ETA", "NEXT PASS"
    );
    for job in jobs {
        let counts = job.leases.unwrap_or_default();
        // A standing job's next pass; `-` for a one-off job.
        let next_pass = job
            .follow
            .as_ref()
            .filter(|f| f.next_check_unix_ms > 0)
            .map_or("-".to_string(), |f| time_of_day(f.next_check_unix_ms));
        let eta = if job.state == "complete" {
            "-".to_string()
        } else {
            eta(job.eta_seconds)
        };
        out.push_str(&format!(
            "{:<16} {:<9} {:>14} {:>7} {:>19} {:>11} {:>6} {:>9}\n",
            clean(&job.job_id),
            clean(&job.state),
            format!(
                "{}/{}/{}/{}",
                counts.pending, counts.leased, counts.done, counts.dead
            ),
            job.objects_total,
            format!(
                "{}/{}",
                human_bytes(job.bytes_done),
                human_bytes(job.bytes_total)
            ),
            format!("{}/s", human_bytes(job.bytes_per_sec as u64)),
            eta,
            next_pass
        ));
    }
    out
}

/// `HH:MM:SSZ` of a Unix time in milliseconds.
fn time_of_day(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map_or_else(|_| "?".into(), |t| t.strftime("%H:%M:%SZ").to_string())
}

/// The header of the lease rows: within 100 columns before the last error (the epoch is in
/// `--json`).
pub fn leases_header() -> String {
    format!(
        "{:<7} {:<23} {:<22} {:>3} {:>9} {:<6} {:<10} {:>3}  {}\n",
        "LEASE", "PRODUCT", "DAYS", "OBJ", "BYTES", "STATE", "HOLDER", "TRY", "ERROR"
    )
}

/// One lease as a row under [`leases_header`].
pub fn lease_row(lease: &pb::LeaseView) -> String {
    format!(
        "{:<7} {:<23} {:<22} {:>3} {:>9} {:<6} {:<10} {:>3}  {}\n",
        clean(&lease.item_id),
        clean(&lease.product),
        format!("{}..{}", clean(&lease.start), clean(&lease.end)),
        lease.objects,
        human_bytes(lease.bytes),
        clean(&lease.state),
        clean(&lease.holder),
        lease.attempts,
        clean(&lease.last_error)
    )
}

pub fn workers_table(workers: &[pb::WorkerView]) -> String {
    let now = lease::model::now_ms();
    let mut out = format!(
        "{:<20} {:>6} {:>12} {:>6} {:>7} {:>8} {:>15} {}\n",
        "WORKER", "LEASES", "THROUGHPUT", "OPEN", "IN USE", "RETRIES", "LAST HEARTBEAT", "DRAINING"
    );
    for worker in workers {
        let metrics = worker.metrics.clone().unwrap_or_default();
        out.push_str(&format!(
            "{:<20} {:>6} {:>12} {:>6} {:>7} {:>8} {:>15} {}\n",
            clean(&worker.name),
            worker.leases_held,
            format!("{}/s", human_bytes(metrics.bytes_per_sec as u64)),
            metrics.open,
            metrics.in_use,
            metrics.retries.values().sum::<u64>(),
            format!(
                "{:.0}s ago",
                (now - worker.last_heartbeat_unix_ms).max(0) as f64 / 1000.0
            ),
            if worker.draining { "yes" } else { "no" }
        ));
    }
    out
}

pub fn job_json(job: &pb::JobSummary) -> serde_json::Value {
    let counts = job.leases.unwrap_or_default();
    json!({
        "job_id": clean(&job.job_id),
        "state": clean(&job.state),
        "leases": {"pending": counts.pending, "leased": counts.leased, "done": counts.done, "dead": counts.dead},
        "objects_total": job.objects_total,
        "bytes_total": job.bytes_total,
        "bytes_done": job.bytes_done,
        "bytes_per_sec": job.bytes_per_sec,
        "eta_seconds": if job.eta_seconds < 0.0 { serde_json::Value::Null } else { json!(job.eta_seconds) },
        "created_unix_ms": job.created_unix_ms,
        "follow": job.follow.as_ref().map(|follow| json!({
            "interval_ms": follow.interval_ms,
            "next_check_unix_ms": follow.next_check_unix_ms,
            "passes": follow.passes,
            "last_success_unix_ms": follow.last_success_unix_ms,
            "last_error": clean(&follow.last_error),
        })),
        "bwlimit": (!job.bwlimit.is_empty()).then(|| clean(&job.bwlimit)),
    })
}

/// A standing job in words: its interval, next check, passes and last success.
pub fn follow_line(follow: &pb::FollowView) -> String {
    let next = if follow.next_check_unix_ms > 0 {
        format!("next pass at {}", utc(follow.next_check_unix_ms))
    } else {
        "no longer following".to_string()
    };
    let error = if follow.last_error.is_empty() {
        String::new()
    } else {
        format!("; last pass failed: {}", clean(&follow.last_error))
    };
    format!(
        "standing job: a pass every {}s, {next}; {}, last success at {}{error}\n",
        follow.interval_ms / 1000,
        common::units::counted(follow.passes, "pass", "passes"),
        utc(follow.last_success_unix_ms)
    )
}

/// Unix milliseconds as an RFC 3339 time to the second (`?` for one out of range).
fn utc(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(
        |_| "?".into(),
        |t| t.round(jiff::Unit::Second).unwrap_or(t).to_string(),
    )
}

pub fn lease_json(lease: &pb::LeaseView) -> serde_json::Value {
    json!({
        "lease": clean(&lease.item_id),
        "product": clean(&lease.product),
        "start": clean(&lease.start),
        "end": clean(&lease.end),
        "objects": lease.objects,
        "bytes": lease.bytes,
        "state": clean(&lease.state),
        "epoch": lease.epoch,
        "holder": clean(&lease.holder),
        "attempts": lease.attempts,
        "expiries": lease.expiries,
        "last_error": clean(&lease.last_error),
        "bytes_done": lease.bytes_done,
    })
}

pub fn worker_json(worker: &pb::WorkerView) -> serde_json::Value {
    let metrics = worker.metrics.clone().unwrap_or_default();
    json!({
        "name": clean(&worker.name),
        "leases_held": worker.leases_held,
        "bytes_per_sec": metrics.bytes_per_sec,
        "open_connections": metrics.open,
        "in_use_connections": metrics.in_use,
        "retries": metrics.retries.values().sum::<u64>(),
        "last_heartbeat_unix_ms": worker.last_heartbeat_unix_ms,
        "draining": worker.draining,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(clean("plain text"), "plain text");
        assert!(matches!(clean("plain"), Cow::Borrowed(_)));
        assert_eq!(
            clean("404\u{1b}[2J\u{1b}]0;pwned\u{7}\r\nfake line\u{202e}txt.exe\u{9b}31m"),
            "404[2J]0;pwnedfake linetxt.exe31m"
        );
        let lease = pb::LeaseView {
            item_id: "000001".into(),
            last_error: "boom\u{1b}[31m\nsecond".into(),
            holder: "w\u{8}x".into(),
            ..Default::default()
        };
        let table = format!("{}{}", leases_header(), lease_row(&lease));
        assert!(!table.contains('\u{1b}') && !table.contains('\u{8}'));
        assert_eq!(
            table.lines().count(),
            2,
            "a newline in a reason cannot add a row"
        );
        assert_eq!(lease_json(&lease)["last_error"], "boom[31msecond");
    }

    #[test]
    fn the_tables_fit_100_columns() {
        let job = pb::JobSummary {
            job_id: "0123456789abcdef".into(),
            state: "cancelled".into(),
            leases: Some(pb::LeaseCounts {
                pending: 1_234,
                leased: 64,
                done: 98_765,
                dead: 12,
            }),
            objects_total: 812_345,
            bytes_total: 312 << 40,
            bytes_done: 187 << 40,
            bytes_per_sec: 1.2e9,
            eta_seconds: 86_400.0,
            follow: Some(pb::FollowView {
                next_check_unix_ms: 1_765_000_000_000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let lease = pb::LeaseView {
            item_id: "f123-000001".into(),
            product: "e5.oper.fc.sfc.meanflux".into(),
            start: "2024-01-01".into(),
            end: "2024-01-31".into(),
            objects: 32,
            bytes: 999 << 30,
            state: "leased".into(),
            holder: "worker-12".into(),
            attempts: 3,
            ..Default::default()
        };
        let worker = pb::WorkerView {
            name: "era5-worker-7f9c6d5b4-xk2lp".into(),
            leases_held: 2,
            ..Default::default()
        };
        for line in jobs_table(&[job])
            .lines()
            .chain(leases_header().lines())
            .chain(lease_row(&lease).lines())
            .chain(workers_table(&[worker]).lines())
        {
            assert!(
                line.trim_end().chars().count() <= 100,
                "{} columns: {line}",
                line.len()
            );
        }
    }
}
