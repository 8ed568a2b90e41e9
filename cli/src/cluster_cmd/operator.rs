//! The operator commands but `submit`: `status` (jobs and workers, one job, its leases),
//! `jobs`, `cancel`, `retry` and `drain`, and the connection they share (`Operator`), whose
//! refusals become exit statuses and one clean line.

use std::io::Write;
use std::time::Duration;

use common::redact::{redact_url, scrub_url_from};
use common::units::counted;
use proto::channel::CoordinatorChannel;
use proto::v1 as pb;
use proto::v1::operator_client::OperatorClient;
use serde_json::json;
use tonic::transport::Channel;

use super::output::{
    clean, follow_line, job_json, jobs_table, lease_json, lease_row, leases_header, worker_json,
    workers_table,
};
use super::{channel, channel_failure};
use crate::args::{CoordinatorUrl, DrainArgs, JobArgs, StatusArgs};
use crate::exit::{ExitCode, Failure};

/// An operator command's connection to the coordinator.
pub struct Operator {
    pub(super) client: OperatorClient<Channel>,
    url: String,
    rpc_timeout: Duration,
}

/// Checks an operator command's `--coordinator` and TLS flags (before the runtime starts).
pub fn operator_config(args: &CoordinatorUrl) -> Result<CoordinatorChannel, Failure> {
    channel(
        &args.coordinator,
        &args.tls,
        proto::channel::DEFAULT_KEEPALIVE,
        None,
    )
}

impl Operator {
    /// Connects (lazily: the first call reports an unreachable coordinator).
    pub(super) fn connect(channel: &CoordinatorChannel, rpc_timeout: u64) -> Result<Self, Failure> {
        let endpoint = channel
            .endpoint()
            .map_err(|e| channel_failure(e, &channel.url))?;
        Ok(Self {
            client: OperatorClient::new(endpoint.connect_lazy()),
            url: channel.url.clone(),
            rpc_timeout: Duration::from_secs(rpc_timeout),
        })
    }

    /// `message` as a request with the command's deadline.
    pub(super) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.rpc_timeout);
        request
    }

    /// A refused or failed call as a failure: the exit status from the code (2 when the
    /// request was wrong, 1 otherwise), the coordinator's message cleaned for the terminal.
    pub(super) fn failure(&self, status: tonic::Status) -> Failure {
        let mut message = clean(status.message()).into_owned();
        if let Some(source) = std::error::Error::source(&status) {
            let chain = common::error::chain(source);
            if !message.contains(&chain) {
                message = format!("{message}: {chain}");
            }
        }
        // tonic says "transport error" at each level of the chain; once is enough.
        while message.contains("transport error: transport error") {
            message = message.replacen("transport error: transport error", "transport error", 1);
        }
        let mut message = scrub_url_from(&message, &self.url);
        // A plaintext client meeting a TLS coordinator sees only a broken connection (closed,
        // or the call cancelled under it, whichever hyper notices first).
        if self.url.starts_with("http://")
            && matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::Cancelled
            )
            && message.contains("transport error")
        {
            message.push_str(
                "; if the coordinator serves TLS, use an https:// URL with --tls-cert, --tls-key and --tls-ca",
            );
        }
        match coordinator::error::exit_status(status.code()) {
            2 => Failure::Input(message),
            _ => Failure::Runtime(format!(
                "coordinator at {}: {message}",
                redact_url(&self.url)
            )),
        }
    }
}

/// Writes `text` and a newline to stdout; a closed stdout ends the command quietly (`| head`).
pub(super) fn print_line(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    crate::exit::written(
        writeln!(stdout, "{text}").and_then(|()| stdout.flush()),
        "to stdout",
    )
}

/// Prints a command's answer: one JSON document with `--json`, a line of text otherwise.
pub(super) fn answer(json: bool, document: serde_json::Value, text: String) -> Result<(), Failure> {
    print_line(&if json { document.to_string() } else { text })
}

/// Writes a line to stderr, ignoring a closed stderr.
pub(super) fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Dead leases `submit --wait` and the status summary print before pointing to `--state dead`.
pub(super) const DEAD_SHOWN: u32 = 10;

impl Operator {
    /// One `GetJob` call: the summary, and `page_size` leases (0: none) from `page_token`.
    pub(super) async fn get_job(
        &mut self,
        job_id: &str,
        page_size: u32,
        state: Option<&str>,
        page_token: String,
    ) -> Result<pb::GetJobResponse, tonic::Status> {
        let request = self.request(pb::GetJobRequest {
            job_id: job_id.to_string(),
            page_size: Some(page_size),
            page_token,
            state: state.unwrap_or_default().to_string(),
        });
        self.client
            .get_job(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Up to `limit` of a job's leases in `state`, page by page, and whether more exist.
    pub(super) async fn first_leases(
        &mut self,
        job_id: &str,
        state: &str,
        limit: u32,
    ) -> Result<(Vec<pb::LeaseView>, bool), Failure> {
        let mut leases = Vec::new();
        let mut token = String::new();
        loop {
            let page = match self.get_job(job_id, limit, Some(state), token).await {
                Ok(page) => page,
                Err(status) => return Err(self.failure(status)),
            };
            leases.extend(page.leases);
            if leases.len() >= limit as usize || page.next_page_token.is_empty() {
                let more = leases.len() > limit as usize || !page.next_page_token.is_empty();
                leases.truncate(limit as usize);
                return Ok((leases, more));
            }
            token = page.next_page_token;
        }
    }
}

/// `era5 status`.
pub async fn status(args: StatusArgs, channel: CoordinatorChannel) -> Result<ExitCode, Failure> {
    if args.job.is_none() && (args.leases || args.state.is_some()) {
        return Err(Failure::Input(
            "--leases and --state list one job's leases: give the JOB".into(),
        ));
    }
    let mut operator = Operator::connect(&channel, args.coordinator.rpc_timeout)?;
    loop {
        match &args.job {
            Some(job_id) if args.leases || args.state.is_some() => {
                job_with_leases(&mut operator, &args, job_id).await?;
            }
            Some(job_id) => {
                let text = job_summary(&mut operator, &args, job_id).await?;
                print_line(&text)?;
            }
            None => {
                let request = operator.request(pb::ListJobsRequest {
                    recent: args.recent,
                });
                let listing = operator
                    .client
                    .list_jobs(request)
                    .await
                    .map_err(|status| operator.failure(status))?
                    .into_inner();
                let (jobs, workers) = (&listing.jobs, &listing.workers);
                let text = if args.coordinator.json {
                    json!({
                        "jobs": jobs.iter().map(job_json).collect::<Vec<_>>(),
                        "jobs_total": listing.jobs_total,
                        "workers": workers.iter().map(worker_json).collect::<Vec<_>>(),
                    })
                    .to_string()
                } else {
                    format!(
                        "{}{}\n{}",
                        jobs_table(jobs),
                        jobs_not_shown(jobs.len(), listing.jobs_total),
                        workers_table(workers)
                    )
                };
                print_line(&text)?;
            }
        }
        if !args.watch {
            return Ok(ExitCode::Success);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// `(N older finished jobs not shown; --recent N)` when the listing left some out.
fn jobs_not_shown(shown: usize, total: u64) -> String {
    match total.saturating_sub(shown as u64) {
        0 => String::new(),
        hidden => format!("({hidden} older finished jobs not shown; --recent N shows more)\n"),
    }
}

/// `era5 status JOB`: the summary, workers, and the first dead leases (one small read).
async fn job_summary(
    operator: &mut Operator,
    args: &StatusArgs,
    job_id: &str,
) -> Result<String, Failure> {
    let detail = match operator.get_job(job_id, 0, None, String::new()).await {
        Ok(detail) => detail,
        Err(status) => return Err(operator.failure(status)),
    };
    let job = detail.job.clone().unwrap_or_default();
    let counts = job.leases.unwrap_or_default();
    let (dead, more_dead) = if counts.dead > 0 {
        operator.first_leases(job_id, "dead", DEAD_SHOWN).await?
    } else {
        (Vec::new(), false)
    };
    Ok(if args.coordinator.json {
        json!({
            "jobs": [job_json(&job)],
            "dead_leases": dead.iter().map(lease_json).collect::<Vec<_>>(),
            "workers": detail.workers.iter().map(worker_json).collect::<Vec<_>>(),
        })
        .to_string()
    } else {
        let mut text = jobs_table(std::slice::from_ref(&job));
        if let Some(follow) = &job.follow {
            text.push_str(&follow_line(follow));
        }
        if !job.bwlimit.is_empty() {
            text.push_str(&format!(
                "fleet bandwidth budget: {}, shared among the workers holding its leases\n",
                clean(&job.bwlimit)
            ));
        }
        text.push_str(&format!(
            "({}: --leases lists them, --state STATE only those in one state)\n",
            counted(
                u64::from(counts.pending + counts.leased + counts.done + counts.dead),
                "lease",
                "leases"
            )
        ));
        if !dead.is_empty() {
            text.push_str(&format!(
                "\nDEAD LEASES{}\n",
                if more_dead {
                    format!(
                        " (first {DEAD_SHOWN} of {}; --state dead lists all)",
                        counts.dead
                    )
                } else {
                    String::new()
                }
            ));
            text.push_str(&leases_header());
            for lease in &dead {
                text.push_str(&lease_row(lease));
            }
        }
        format!("{text}\n{}", workers_table(&detail.workers))
    })
}

/// `era5 status JOB --leases [--state S]`: every lease, a page per request. Text goes out as
/// the pages arrive; JSON is printed whole at the end, in the shape of the summary plus
/// `"leases"`.
async fn job_with_leases(
    operator: &mut Operator,
    args: &StatusArgs,
    job_id: &str,
) -> Result<(), Failure> {
    let mut token = String::new();
    let mut first: Option<pb::GetJobResponse> = None;
    let mut leases = Vec::new();
    loop {
        let mut page = match operator
            .get_job(job_id, args.page_size, args.state.as_deref(), token)
            .await
        {
            Ok(page) => page,
            Err(status) => return Err(operator.failure(status)),
        };
        let mut stdout = std::io::stdout().lock();
        if first.is_none() && !args.coordinator.json {
            let job = page.job.clone().unwrap_or_default();
            crate::exit::written(
                write!(stdout, "{}\n{}", jobs_table(&[job]), leases_header()),
                "the leases",
            )?;
        }
        if args.coordinator.json {
            leases.append(&mut page.leases);
        } else {
            for lease in &page.leases {
                crate::exit::written(stdout.write_all(lease_row(lease).as_bytes()), "the leases")?;
            }
        }
        token = std::mem::take(&mut page.next_page_token);
        first.get_or_insert(page);
        if token.is_empty() {
            break;
        }
    }
    let first = first.unwrap_or_default();
    let text = if args.coordinator.json {
        let job = first.job.clone().unwrap_or_default();
        json!({
            "jobs": [job_json(&job)],
            "leases": leases.iter().map(lease_json).collect::<Vec<_>>(),
            "workers": first.workers.iter().map(worker_json).collect::<Vec<_>>(),
        })
        .to_string()
    } else {
        format!("\n{}", workers_table(&first.workers))
    };
    print_line(&text)
}

/// `era5 jobs`.
pub async fn jobs(args: CoordinatorUrl, channel: CoordinatorChannel) -> Result<ExitCode, Failure> {
    let mut operator = Operator::connect(&channel, args.rpc_timeout)?;
    let request = operator.request(pb::ListJobsRequest { recent: 0 });
    let listing = operator
        .client
        .list_jobs(request)
        .await
        .map_err(|status| operator.failure(status))?
        .into_inner();
    answer(
        args.json,
        json!({
            "jobs": listing.jobs.iter().map(job_json).collect::<Vec<_>>(),
            "jobs_total": listing.jobs_total,
        }),
        format!(
            "{}{}",
            jobs_table(&listing.jobs),
            jobs_not_shown(listing.jobs.len(), listing.jobs_total)
        ),
    )?;
    Ok(ExitCode::Success)
}

/// `era5 cancel`.
pub async fn cancel(args: JobArgs, channel: CoordinatorChannel) -> Result<ExitCode, Failure> {
    let mut operator = Operator::connect(&channel, args.coordinator.rpc_timeout)?;
    let request = operator.request(pb::CancelJobRequest {
        job_id: args.job.clone(),
    });
    operator
        .client
        .cancel_job(request)
        .await
        .map_err(|status| operator.failure(status))?;
    answer(
        args.coordinator.json,
        json!({ "cancelled": clean(&args.job) }),
        format!("cancelled {}", clean(&args.job)),
    )?;
    Ok(ExitCode::Success)
}

/// `era5 retry`.
pub async fn retry(args: JobArgs, channel: CoordinatorChannel) -> Result<ExitCode, Failure> {
    let mut operator = Operator::connect(&channel, args.coordinator.rpc_timeout)?;
    let request = operator.request(pb::RetryDeadRequest {
        job_id: args.job.clone(),
    });
    let retried = operator
        .client
        .retry_dead(request)
        .await
        .map_err(|status| operator.failure(status))?
        .into_inner()
        .retried;
    answer(
        args.coordinator.json,
        json!({ "job": clean(&args.job), "retried": retried }),
        format!(
            "{retried} dead leases of {} back to pending",
            clean(&args.job)
        ),
    )?;
    Ok(ExitCode::Success)
}

/// `era5 drain`.
pub async fn drain(args: DrainArgs, channel: CoordinatorChannel) -> Result<ExitCode, Failure> {
    let mut operator = Operator::connect(&channel, args.coordinator.rpc_timeout)?;
    let request = operator.request(pb::DrainWorkerRequest {
        worker: args.worker.clone(),
    });
    operator
        .client
        .drain_worker(request)
        .await
        .map_err(|status| operator.failure(status))?;
    answer(
        args.coordinator.json,
        json!({ "draining": clean(&args.worker) }),
        format!("draining {}", clean(&args.worker)),
    )?;
    Ok(ExitCode::Success)
}
