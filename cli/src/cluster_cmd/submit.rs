//! `era5 submit`: the selection checked as `sync` checks it, the job submitted, and with
//! `--wait` followed to its end (a line per change off a terminal, one updated line on it).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use common::selection::Selection;
use common::units::{counted, human_bytes};
use proto::channel::CoordinatorChannel;
use proto::v1 as pb;
use serde_json::json;

use super::operator::{DEAD_SHOWN, Operator, note, operator_config, print_line};
use super::output::clean;
use super::{bad, input};
use crate::args::SubmitArgs;
use crate::exit::{ExitCode, Failure};

/// Deadline of `submit`'s call: the coordinator lists the bucket within its own listing
/// deadline (10 minutes by default) and plans within two more.
const SUBMIT_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// Validates `era5 submit`'s selection like `era5 sync` does.
pub fn check_submit(args: &SubmitArgs) -> Result<CoordinatorChannel, Failure> {
    Selection::parse(
        &args.selection.product,
        &args.selection.var,
        &args.selection.grid,
        &args.selection.start,
        &args.selection.end,
        common::dates::today_utc(),
    )
    .map_err(|e| Failure::Input(e.to_string()))?;
    if let Some(endpoint) = &args.source.endpoint {
        crate::config::check_endpoint(endpoint).map_err(input)?;
    }
    follow_interval(args)?;
    operator_config(&args.coordinator)
}

/// `--follow [--interval DUR]` as milliseconds; `None` for a one-off job.
fn follow_interval(args: &SubmitArgs) -> Result<Option<u64>, Failure> {
    match (&args.interval, args.follow) {
        (Some(interval), false) => Err(bad("--interval", interval, "only applies with --follow")),
        (_, true) if args.wait => Err(Failure::Input(
            "--wait cannot be combined with --follow: a standing job never ends (era5 status shows it)"
                .into(),
        )),
        (interval, true) => {
            let text = interval
                .as_deref()
                .unwrap_or(crate::config::DEFAULT_INTERVAL);
            let interval = crate::config::parse_interval(text).map_err(input)?;
            Ok(Some(interval.as_millis() as u64))
        }
        (None, false) => Ok(None),
    }
}

/// `submit --bwlimit`, checked here so that a bad one is a bad-input exit before any call;
/// empty when there is none.
fn job_budget(text: Option<&str>) -> Result<String, Failure> {
    let Some(text) = text else {
        return Ok(String::new());
    };
    common::bwlimit::BwLimit::parse(text).map_err(|error| bad("--bwlimit", text, error))?;
    Ok(text.trim().to_string())
}

/// `era5 submit`.
pub async fn submit(args: SubmitArgs, channel: CoordinatorChannel) -> Result<ExitCode, Failure> {
    let mut operator = Operator::connect(&channel, args.coordinator.rpc_timeout)?;
    let mut request = tonic::Request::new(pb::SubmitJobRequest {
        selection: Some(pb::Selection {
            products: args.selection.product.clone(),
            variables: args.selection.var.clone(),
            start: args.selection.start.clone(),
            end: args.selection.end.clone(),
            grids: args.selection.grid.clone(),
        }),
        // Empty fields: the coordinator's own source.
        source: Some(pb::Source {
            bucket: args.source.bucket.clone().unwrap_or_default(),
            endpoint: args.source.endpoint.clone().unwrap_or_default(),
        }),
        follow_interval_ms: follow_interval(&args)?,
        bwlimit: job_budget(args.bwlimit.as_deref())?,
    });
    request.set_timeout(SUBMIT_DEADLINE);
    let response = operator
        .client
        .submit_job(request)
        .await
        .map_err(|status| operator.failure(status))?
        .into_inner();
    // Warnings come from the coordinator: printed only once cleaned of control characters.
    for warning in &response.warnings {
        note(&format!("era5: warning: {}", clean(warning)));
    }
    note(&format!(
        "submitted: {}, {}, {}",
        counted(u64::from(response.leases), "lease", "leases"),
        counted(response.objects, "object", "objects"),
        human_bytes(response.bytes)
    ));
    let job_id = clean(&response.job_id).into_owned();
    // The job id alone (a script's `JOB=$(era5 submit ...)`), or the submission as JSON.
    let answer = |state: Option<&str>| {
        if args.coordinator.json {
            let mut answer = json!({
                "job": job_id,
                "leases": response.leases,
                "objects": response.objects,
                "bytes": response.bytes,
                "warnings": response.warnings.iter().map(|w| clean(w)).collect::<Vec<_>>(),
            });
            if let Some(state) = state {
                answer["state"] = json!(state);
            }
            answer.to_string()
        } else {
            job_id.clone()
        }
    };
    if !args.wait {
        print_line(&answer(None))?;
        return Ok(ExitCode::Success);
    }
    let state = follow(&mut operator, &job_id).await?;
    print_line(&answer(Some(&state)))?;
    Ok(if state == "complete" {
        ExitCode::Success
    } else {
        ExitCode::Failed
    })
}

/// Longest `submit --wait` stays silent off a terminal while only the bytes move.
const QUIET_PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// Polls a job's summary (never its leases) until it is final; returns its final state.
async fn follow(operator: &mut Operator, job_id: &str) -> Result<String, Failure> {
    // On a terminal the line is updated in place every second; elsewhere (a log, a CI job) a
    // line is written when the state or the lease counts change, and at most every
    // `QUIET_PROGRESS_EVERY` for the bytes alone.
    let terminal = std::io::stderr().is_terminal();
    let mut last: Option<(String, [u32; 4])> = None;
    let mut last_written = tokio::time::Instant::now();
    loop {
        let detail = match operator.get_job(job_id, 0, None, String::new()).await {
            Ok(detail) => detail,
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) =>
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(status) => return Err(operator.failure(status)),
        };
        let job = detail.job.unwrap_or_default();
        let counts = job.leases.unwrap_or_default();
        let line = format!(
            "job {}: {} | leases {} pending, {} leased, {} done, {} dead | {} of {}",
            clean(&job.job_id),
            clean(&job.state),
            counts.pending,
            counts.leased,
            counts.done,
            counts.dead,
            human_bytes(job.bytes_done),
            human_bytes(job.bytes_total)
        );
        let finished = matches!(job.state.as_str(), "complete" | "failed" | "cancelled");
        let key = (
            job.state.clone(),
            [counts.pending, counts.leased, counts.done, counts.dead],
        );
        if terminal {
            let end = if finished { "\n" } else { "" };
            let _ = write!(std::io::stderr(), "\r\x1b[K{line}{end}");
        } else if last.as_ref() != Some(&key)
            || finished
            || last_written.elapsed() >= QUIET_PROGRESS_EVERY
        {
            note(&line);
            last_written = tokio::time::Instant::now();
        }
        last = Some(key);
        if finished {
            if counts.dead > 0 {
                let (dead, more) = operator.first_leases(job_id, "dead", DEAD_SHOWN).await?;
                for lease in &dead {
                    note(&format!(
                        "dead lease {} ({} {}..{}): {}",
                        clean(&lease.item_id),
                        clean(&lease.product),
                        clean(&lease.start),
                        clean(&lease.end),
                        clean(&lease.last_error)
                    ));
                }
                if more {
                    note(&format!(
                        "... {} dead leases in all: era5 status {} --state dead",
                        counts.dead,
                        clean(job_id)
                    ));
                }
            }
            return Ok(job.state);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
