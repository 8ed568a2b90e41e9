//! The summary `era5 sync` prints at the end: a few lines of text, or with `--json` one JSON
//! object on stdout. Both come from one [`Summary`], so they never disagree.
//!
//! The JSON object (`era5 sync --json`):
//!
//! ```text
//! {"outcome": "complete" | "incomplete" | "interrupted" | "limit_reached", "dest", "verify",
//!  "objects": {"total", "downloaded", "present", "verified_locally", "failed", "not_finished"},
//!  "bytes_downloaded", "seconds", "bytes_per_second",
//!  "retries": {"<reason>": n, ...}, "verification_failures", "checksum_contradictions",
//!  "restarts",
//!  "peak_connections",
//!  "concurrency": {"autotune", "final", "peak", "max"},
//!  "hedges": {"requests", "won"}, "duplicate_bytes",
//!  "memory": {"budget", "peak"},
//!  "requests": {"list", "head", "get", "put", "create_upload", "upload_part", "complete",
//!               "abort", "other"},
//!  "bytes_in", "bytes_out",
//!  "cost_usd": {"requests", "transfer", "total"},
//!  "failures": [{"key", "reason"}, ...]}
//! ```
//!
//! `requests` counts every request written to a connection, retries and hedges included (what
//! the server received); `bytes_in`/`bytes_out` are the bytes on the sockets; `cost_usd` prices
//! them with `--prices` (S3 Standard's request prices by default; see `transport::cost`).

use std::collections::BTreeMap;
use std::io::Write;

use common::units::human_bytes;
use engine::sync::{Outcome, SyncReport};
use engine::{ConcurrencySnapshot, ProgressSnapshot};
use serde::Serialize;
use transport::cost::{Cost, RequestKind, Traffic};
use transport::retry::RetryReason;

use crate::config::SyncConfig;

/// Everything the summary says.
#[derive(Debug, Serialize)]
pub struct Summary<'a> {
    outcome: &'static str,
    dest: String,
    verify: &'static str,
    objects: Objects,
    bytes_downloaded: u64,
    seconds: f64,
    bytes_per_second: u64,
    retries: BTreeMap<&'static str, u64>,
    verification_failures: u64,
    checksum_contradictions: u64,
    restarts: u64,
    peak_connections: usize,
    concurrency: Concurrency,
    hedges: Hedges,
    duplicate_bytes: u64,
    memory: Memory,
    requests: BTreeMap<&'static str, u64>,
    bytes_in: u64,
    bytes_out: u64,
    cost_usd: Cost,
    failures: Vec<Failed<'a>>,
}

#[derive(Debug, Serialize)]
struct Objects {
    total: usize,
    downloaded: usize,
    present: usize,
    verified_locally: usize,
    failed: usize,
    not_finished: usize,
}

#[derive(Debug, Serialize)]
struct Concurrency {
    autotune: bool,
    #[serde(rename = "final")]
    last: usize,
    peak: usize,
    max: usize,
}

#[derive(Debug, Serialize)]
struct Hedges {
    requests: u64,
    won: u64,
}

#[derive(Debug, Serialize)]
struct Memory {
    budget: u64,
    peak: u64,
}

#[derive(Debug, Serialize)]
struct Failed<'a> {
    key: &'a str,
    reason: &'a str,
}

/// What the engine's figures were at the end.
pub struct Figures {
    /// The counters.
    pub progress: ProgressSnapshot,
    /// The request window.
    pub concurrency: ConcurrencySnapshot,
    /// Most connections open at once.
    pub peak_connections: usize,
    /// The memory budget and its peak use.
    pub memory_budget: u64,
    /// ... its peak use.
    pub memory_peak: u64,
    /// Requests by kind and bytes on the sockets.
    pub traffic: Traffic,
    /// Stopped at `--max-transfer` or `--max-duration`.
    pub limit_reached: bool,
}

impl<'a> Summary<'a> {
    /// The summary of one pass.
    pub fn new(report: &'a SyncReport, figures: &Figures, config: &SyncConfig) -> Self {
        let snapshot = &figures.progress;
        let objects = Objects {
            total: report.results.len(),
            downloaded: report.count(|o| *o == Outcome::Downloaded),
            // Superseded: a newer version of the key was in place before this one could be.
            present: report.count(|o| matches!(o, Outcome::Present | Outcome::Superseded)),
            verified_locally: report.count(|o| *o == Outcome::VerifiedLocally),
            failed: report.count(|o| matches!(o, Outcome::Failed { .. } | Outcome::Local { .. })),
            not_finished: report.count(|o| *o == Outcome::Cancelled),
        };
        let seconds = report.elapsed.as_secs_f64().max(0.001);
        let outcome = if report.all_verified() {
            "complete"
        } else if figures.limit_reached {
            "limit_reached"
        } else if report.cancelled {
            "interrupted"
        } else {
            "incomplete"
        };
        Self {
            outcome,
            dest: config.dest.to_string(),
            verify: config.engine.verify.name(),
            objects,
            bytes_downloaded: snapshot.bytes_downloaded,
            seconds,
            bytes_per_second: (snapshot.bytes_downloaded as f64 / seconds) as u64,
            retries: RetryReason::ALL
                .iter()
                .filter(|r| snapshot.retries_for(**r) > 0)
                .map(|r| (r.label(), snapshot.retries_for(*r)))
                .collect(),
            verification_failures: snapshot.verify_failures,
            checksum_contradictions: snapshot.checksum_contradictions,
            restarts: snapshot.restarts,
            peak_connections: figures.peak_connections,
            concurrency: Concurrency {
                autotune: figures.concurrency.autotune,
                last: figures.concurrency.window,
                peak: figures.concurrency.peak,
                max: figures.concurrency.max,
            },
            hedges: Hedges {
                requests: snapshot.hedged_requests,
                won: snapshot.hedges_won,
            },
            duplicate_bytes: snapshot.duplicate_bytes,
            memory: Memory {
                budget: figures.memory_budget,
                peak: figures.memory_peak,
            },
            requests: RequestKind::ALL
                .iter()
                .map(|kind| (kind.label(), figures.traffic.requests(*kind)))
                .collect(),
            bytes_in: figures.traffic.bytes_in,
            bytes_out: figures.traffic.bytes_out,
            cost_usd: config.prices.estimate(&figures.traffic),
            failures: report
                .failures()
                .map(|(key, reason)| Failed { key, reason })
                .collect(),
        }
    }

    /// The text form.
    pub fn write_text(&self, out: &mut impl Write, retries: &str) -> std::io::Result<()> {
        let o = &self.objects;
        let objects = if o.total == 1 { "object" } else { "objects" };
        let headline = match self.outcome {
            "complete" => format!(
                "sync complete: {} of {} {objects} present and verified ({})",
                o.total, o.total, self.verify
            ),
            "interrupted" => format!(
                "sync interrupted: {} of {} {objects} present and verified",
                o.downloaded + o.present + o.verified_locally,
                o.total
            ),
            "limit_reached" => format!(
                "sync stopped at its limit: {} of {} {objects} present and verified",
                o.downloaded + o.present + o.verified_locally,
                o.total
            ),
            _ => format!(
                "sync incomplete: {} of {} {objects} failed",
                o.failed, o.total
            ),
        };
        writeln!(out, "{headline} in {}", self.dest)?;
        writeln!(
            out,
            "  {} downloaded, {} already present, {} verified locally, {} failed, {} not finished",
            o.downloaded, o.present, o.verified_locally, o.failed, o.not_finished
        )?;
        writeln!(
            out,
            "  {} received in {:.1} s ({}/s); retries: {}; verification failures: {}; restarts: {}; peak connections: {}",
            human_bytes(self.bytes_downloaded),
            self.seconds,
            human_bytes(self.bytes_per_second),
            retries,
            self.verification_failures,
            self.restarts,
            self.peak_connections,
        )?;
        if self.checksum_contradictions > 0 {
            writeln!(
                out,
                "  checksum contradictions: {} (the server's S3 checksum disagreed with the ETag \
                 that verified the bytes; see the warnings)",
                self.checksum_contradictions
            )?;
        }
        let c = &self.concurrency;
        let tuning = if c.autotune {
            format!(
                "autotuned, {} at the end, {} at most (cap {})",
                c.last, c.peak, c.max
            )
        } else {
            format!("fixed at {} (cap {})", c.max, c.max)
        };
        let duplicate_share = if self.bytes_downloaded == 0 {
            0.0
        } else {
            100.0 * self.duplicate_bytes as f64 / self.bytes_downloaded as f64
        };
        writeln!(
            out,
            "  requests in flight: {tuning}; hedged requests: {} ({} won); duplicate bytes: {} ({duplicate_share:.1}%)",
            self.hedges.requests,
            self.hedges.won,
            human_bytes(self.duplicate_bytes),
        )?;
        let sent: Vec<String> = RequestKind::ALL
            .iter()
            .filter_map(|kind| {
                let count = self.requests.get(kind.label()).copied().unwrap_or(0);
                (count > 0).then(|| format!("{count} {}", kind.label()))
            })
            .collect();
        writeln!(
            out,
            "  requests: {} ({} in all); {} in, {} out; estimated cost {}",
            if sent.is_empty() {
                "none".to_string()
            } else {
                sent.join(", ")
            },
            self.requests.values().sum::<u64>(),
            human_bytes(self.bytes_in),
            human_bytes(self.bytes_out),
            self.cost_usd,
        )?;
        for failed in &self.failures {
            writeln!(out, "FAILED {}: {}", failed.key, failed.reason)?;
        }
        Ok(())
    }

    /// The JSON form, one line.
    pub fn write_json(&self, out: &mut impl Write) -> std::io::Result<()> {
        serde_json::to_writer(&mut *out, self)?;
        writeln!(out)
    }
}
