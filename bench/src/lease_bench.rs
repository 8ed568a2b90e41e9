//! `era5-lease-bench`: benchmarks of the cluster's control plane.
//!
//! - `throughput`: lease operations per second through a running coordinator. A job of many
//!   one-object items is written to Redis, then N simulated workers (each with its own gRPC
//!   connection) loop acquire → renew → complete as fast as they can. Every call is one lease
//!   operation.
//! - `plan`: planning a job of a million objects from a synthetic listing (ERA5 keys of every
//!   product, 1940 to 2025, plus synthetic variables to reach the count): the time to plan the
//!   items and store them in Redis, and the process's peak memory (the coordinator does this
//!   work in-process when a job is submitted).
//! - `sessions`: N simulated workers (1,000 by default), each with its own connection, its
//!   leases and a session stream reporting progress every second, renewing every third of the
//!   TTL as real workers do: renew latency (p50, p99, max) under that load.
//! - `status`: a job planned from the whole archive at real sizes (about 40 k leases) and the
//!   time `GetJob` takes for the summary, the first page, every page, and a filtered walk, with
//!   the largest message seen.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use common::RemoteObject;
use common::catalog::{Cadence, Product, Variable};
use common::dates::YearMonth;
use coordinator::RedisStore;
use lease::LeaseStore;
use lease::model::{
    ItemSpec, JobSpec, LeasePolicy, ObjectSpec, SelectionSpec, SourceSpec, random_id,
};
use lease::planner::{ItemLimits, plan_job};
use proto::v1 as pb;
use proto::v1::worker_client::WorkerClient;

fn usage() -> ! {
    eprintln!(
        "usage: era5-lease-bench throughput --coordinator URL --redis URL [--workers N] [--items N]\n       era5-lease-bench plan --redis URL [--objects N]\n       era5-lease-bench sessions --coordinator URL --redis URL [--sessions N] [--leases N] [--seconds S]\n       era5-lease-bench status --coordinator URL --redis URL [--objects N]"
    );
    std::process::exit(2);
}

fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: Option<T>) -> T {
    match args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
    {
        Some(value) => value.parse().unwrap_or_else(|_| {
            eprintln!("era5-lease-bench: bad {name} `{value}`");
            std::process::exit(2)
        }),
        None => default.unwrap_or_else(|| usage()),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("throughput") => {
            throughput(
                flag(&args, "--coordinator", None),
                flag(&args, "--redis", None),
                flag(&args, "--workers", Some(16)),
                flag(&args, "--items", Some(20_000)),
            )
            .await;
        }
        Some("plan") => {
            plan(
                flag(&args, "--redis", None),
                flag(&args, "--objects", Some(1_000_000)),
            )
            .await;
        }
        Some("sessions") => {
            sessions(
                flag(&args, "--coordinator", None),
                flag(&args, "--redis", None),
                flag(&args, "--sessions", Some(1_000)),
                flag(&args, "--leases", Some(2)),
                flag(&args, "--seconds", Some(60)),
            )
            .await;
        }
        Some("status") => {
            status(
                flag(&args, "--coordinator", None),
                flag(&args, "--redis", None),
                flag(&args, "--objects", Some(798_790)),
            )
            .await;
        }
        _ => usage(),
    }
}

async fn throughput(coordinator: String, redis: String, workers: usize, items: usize) {
    let store = RedisStore::connect(&redis, LeasePolicy::default())
        .await
        .expect("redis");
    let job = JobSpec {
        job_id: random_id(),
        selection: SelectionSpec::default(),
        // A coordinator grants only jobs of its own source: the default one here.
        source: SourceSpec {
            bucket: transport::DEFAULT_BUCKET.to_string(),
            endpoint: String::new(),
        },
        items: (0..items)
            .map(|i| ItemSpec {
                item_id: format!("{i:08}"),
                product: "e5.oper.an.sfc".into(),
                start: "2024-01-01".into(),
                end: "2024-01-31".into(),
                objects: vec![ObjectSpec {
                    key: format!("k{i}"),
                    size: 1,
                    etag: String::new(),
                    last_modified: String::new(),
                }],
            })
            .collect(),
        follow: None,
        bwlimit: None,
    };
    store.create_job(&job).await.expect("create the job");
    let ops = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let ops = ops.clone();
        let url = coordinator.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = WorkerClient::connect(url).await.expect("coordinator");
            let name = format!("bench-{worker}");
            loop {
                let granted = client
                    .acquire(pb::AcquireRequest {
                        worker: name.clone(),
                        max: 1,
                        ..Default::default()
                    })
                    .await
                    .expect("acquire")
                    .into_inner()
                    .leases;
                ops.fetch_add(1, Ordering::Relaxed);
                let Some(lease) = granted.into_iter().next() else {
                    return;
                };
                let renewed = client
                    .renew(pb::RenewRequest {
                        lease: lease.lease.clone(),
                        worker: name.clone(),
                    })
                    .await
                    .expect("renew");
                assert_eq!(renewed.into_inner().status, pb::LeaseStatus::Ok as i32);
                ops.fetch_add(1, Ordering::Relaxed);
                let completed = client
                    .complete(pb::CompleteRequest {
                        lease: lease.lease,
                        worker: name.clone(),
                        bytes: 1,
                    })
                    .await
                    .expect("complete");
                assert_eq!(completed.into_inner().status, pb::LeaseStatus::Ok as i32);
                ops.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker task");
    }
    let seconds = started.elapsed().as_secs_f64();
    let total = ops.load(Ordering::Relaxed);
    let status = store.job(&job.job_id).await.expect("job");
    assert_eq!(
        status.counts.done as usize, items,
        "not every item completed"
    );
    println!(
        "{{\"bench\":\"lease_throughput\",\"workers\":{workers},\"items\":{items},\"operations\":{total},\"seconds\":{seconds:.3},\"ops_per_sec\":{:.0}}}",
        total as f64 / seconds
    );
}

/// ERA5-shaped listing of `count` objects.
fn synthetic_listing(count: usize) -> Vec<RemoteObject> {
    let mut objects = Vec::with_capacity(count);
    let first = YearMonth {
        year: 1940,
        month: 1,
    };
    let last = YearMonth {
        year: 2025,
        month: 12,
    };
    let push = |variable: &Variable, objects: &mut Vec<RemoteObject>| {
        let months: Vec<YearMonth> = if variable.product.cadence() == Cadence::Invariant {
            vec![Product::invariant_month()]
        } else {
            first.through(last).collect()
        };
        for month in months {
            for (a, b) in variable.product.windows_in_month(month) {
                if objects.len() >= count {
                    return;
                }
                objects.push(RemoteObject {
                    key: variable.key(a, b),
                    size: 700 << 20,
                    etag: Some(format!("{:032x}-90", objects.len())),
                    last_modified: None,
                });
            }
        }
    };
    for variable in common::catalog::VARIABLES {
        push(variable, &mut objects);
    }
    // Synthetic pressure-level variables make up the rest.
    let mut extra = 0;
    while objects.len() < count {
        let short: &'static str = Box::leak(format!("syn{extra}").into_boxed_str());
        let variable = Variable {
            short,
            code: "999_999",
            ..*Product::AnPl
                .variable("t")
                .expect("t is a pressure-level variable")
        };
        push(&variable, &mut objects);
        extra += 1;
    }
    objects
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

async fn plan(redis: String, count: usize) {
    let listing_started = Instant::now();
    let objects = synthetic_listing(count);
    let listing_seconds = listing_started.elapsed().as_secs_f64();
    let store = RedisStore::connect(&redis, LeasePolicy::default())
        .await
        .expect("redis");
    let started = Instant::now();
    let job = plan_job(
        random_id(),
        SelectionSpec::default(),
        SourceSpec::default(),
        objects,
        ItemLimits::default(),
    );
    let plan_seconds = started.elapsed().as_secs_f64();
    let items = job.items.len();
    store.create_job(&job).await.expect("store the job");
    let total_seconds = started.elapsed().as_secs_f64();
    let status = store.job(&job.job_id).await.expect("job");
    assert_eq!(status.objects_total as usize, count);
    println!(
        "{{\"bench\":\"planning\",\"objects\":{count},\"items\":{items},\"listing_generation_seconds\":{listing_seconds:.2},\"plan_seconds\":{plan_seconds:.2},\"plan_and_store_seconds\":{total_seconds:.2},\"peak_rss_mib\":{:.0}}}",
        peak_rss_mib()
    );
}

/// A quantile of sorted samples.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Renew latency while `count` simulated workers hold `leases` leases each, report progress
/// every second on their session streams and renew every third of the TTL, for `seconds`.
///
/// The leases are taken through the store directly, from a job of the bench's own that is
/// fully granted before any session starts and cancelled at the end, so the bench can run
/// beside real workers (`bench/archive.sh` does) without taking or leaving work for them.
async fn sessions(coordinator: String, redis: String, count: usize, leases: usize, seconds: u64) {
    let store = RedisStore::connect(&redis, LeasePolicy::default())
        .await
        .expect("redis");
    let job_id = random_id();
    let items = count * leases;
    let job = JobSpec {
        job_id: job_id.clone(),
        selection: SelectionSpec::default(),
        source: SourceSpec::default(),
        items: (0..items)
            .map(|i| ItemSpec {
                item_id: format!("{i:08}"),
                product: "e5.oper.an.pl".into(),
                start: "2024-01-01".into(),
                end: "2024-01-01".into(),
                objects: vec![ObjectSpec {
                    key: format!("k{i}"),
                    size: 1 << 30,
                    etag: String::new(),
                    last_modified: String::new(),
                }],
            })
            .collect(),
        follow: None,
        bwlimit: None,
    };
    store.create_job(&job).await.expect("create the job");
    let ttl = store.policy().ttl;
    let mut held_by: Vec<Vec<pb::LeaseRef>> = Vec::with_capacity(count);
    for session in 0..count {
        let granted = store
            .acquire(&format!("session-{session}"), leases)
            .await
            .expect("acquire");
        assert!(
            granted.iter().all(|g| g.lease.job_id == job_id),
            "another job had pending work: run the bench on a store whose older jobs are done"
        );
        held_by.push(
            granted
                .iter()
                .map(|g| coordinator::service::lease_to_pb(&g.lease))
                .collect(),
        );
    }
    // Scripts wait for this line before they submit work of their own.
    eprintln!("era5-lease-bench: {items} leases held by {count} sessions");
    let reports = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + std::time::Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (session, held) in held_by.into_iter().enumerate() {
        let (url, reports, lost) = (coordinator.clone(), reports.clone(), lost.clone());
        tasks.push(tokio::spawn(async move {
            // Spread over the first second, as a fleet is, rather than all in step.
            tokio::time::sleep(std::time::Duration::from_millis(
                (session as u64 * 1_000) / count as u64,
            ))
            .await;
            let mut client = WorkerClient::connect(url).await.expect("coordinator");
            let name = format!("session-{session}");
            let (sender, outbound) = tokio::sync::mpsc::channel(4);
            let mut session_client = client.clone();
            let stream = tokio::spawn(async move {
                let response = session_client
                    .worker_session(tokio_stream::wrappers::ReceiverStream::new(outbound))
                    .await;
                if let Ok(response) = response {
                    let mut commands = response.into_inner();
                    while let Ok(Some(_)) = commands.message().await {}
                }
            });
            let mut latencies = Vec::new();
            let mut every_second = tokio::time::interval(std::time::Duration::from_secs(1));
            let mut next_renew = Instant::now() + ttl / 3;
            let mut tick = 0u64;
            while Instant::now() < deadline {
                every_second.tick().await;
                tick += 1;
                let report = pb::WorkerReport {
                    worker: name.clone(),
                    progress: held
                        .iter()
                        .map(|lease| pb::LeaseProgress {
                            lease: Some(lease.clone()),
                            bytes_done: tick << 20,
                            objects_done: 0,
                        })
                        .collect(),
                    metrics: Some(pb::ConnectionMetrics {
                        open: 16,
                        in_use: 12,
                        bytes_per_sec: 1e8,
                        ..Default::default()
                    }),
                    leases_held: held.len() as u32,
                };
                if sender.send(report).await.is_ok() {
                    reports.fetch_add(1, Ordering::Relaxed);
                }
                if Instant::now() >= next_renew {
                    next_renew += ttl / 3;
                    for lease in &held {
                        let sent = Instant::now();
                        let renewed = client
                            .renew(pb::RenewRequest {
                                lease: Some(lease.clone()),
                                worker: name.clone(),
                            })
                            .await;
                        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                        if !matches!(&renewed, Ok(r) if r.get_ref().status == pb::LeaseStatus::Ok as i32)
                        {
                            lost.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            drop(sender);
            stream.abort();
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("session task"));
    }
    store
        .cancel_job(&job_id)
        .await
        .expect("cancel the bench's job");
    latencies.sort_by(f64::total_cmp);
    println!(
        "{{\"bench\":\"sessions\",\"sessions\":{count},\"leases_per_session\":{leases},\"seconds\":{:.1},\"reports_sent\":{},\"renews\":{},\"renews_not_ok\":{},\"renew_p50_ms\":{:.2},\"renew_p99_ms\":{:.2},\"renew_max_ms\":{:.2},\"lease_ttl_ms\":{}}}",
        started.elapsed().as_secs_f64(),
        reports.load(Ordering::Relaxed),
        latencies.len(),
        lost.load(Ordering::Relaxed),
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0),
        ttl.as_millis(),
    );
}

/// A `GetJob` client that remembers the largest answer.
struct Pager {
    client: proto::v1::operator_client::OperatorClient<tonic::transport::Channel>,
    job_id: String,
    largest: usize,
}

impl Pager {
    async fn page(
        &mut self,
        page_size: Option<u32>,
        state: &str,
        token: String,
    ) -> pb::GetJobResponse {
        use prost::Message;
        let response = self
            .client
            .get_job(pb::GetJobRequest {
                job_id: self.job_id.clone(),
                page_size,
                page_token: token,
                state: state.to_string(),
            })
            .await
            .expect("get job")
            .into_inner();
        self.largest = self.largest.max(response.encoded_len());
        response
    }

    /// Every page; returns leases seen, pages and milliseconds.
    async fn walk(&mut self, page_size: u32, state: &str) -> (usize, usize, f64) {
        let timed = Instant::now();
        let (mut token, mut seen, mut pages) = (String::new(), 0usize, 0usize);
        loop {
            let page = self.page(Some(page_size), state, token).await;
            seen += page.leases.len();
            pages += 1;
            if page.next_page_token.is_empty() {
                return (seen, pages, timed.elapsed().as_secs_f64() * 1e3);
            }
            token = page.next_page_token;
        }
    }
}

/// `GetJob` on a job planned from `count` archive keys at modelled real sizes.
async fn status(coordinator: String, redis: String, count: usize) {
    let store = RedisStore::connect(&redis, LeasePolicy::default())
        .await
        .expect("redis");
    let job = plan_job(
        random_id(),
        SelectionSpec::default(),
        SourceSpec::default(),
        synthetic_listing(count),
        ItemLimits::default(),
    );
    let leases = job.items.len();
    store.create_job(&job).await.expect("store the job");
    let mut pager = Pager {
        client: proto::v1::operator_client::OperatorClient::connect(coordinator)
            .await
            .expect("coordinator"),
        job_id: job.job_id.clone(),
        largest: 0,
    };
    let timed = Instant::now();
    pager.page(Some(0), "", String::new()).await;
    let summary_ms = timed.elapsed().as_secs_f64() * 1e3;
    let timed = Instant::now();
    pager.page(None, "", String::new()).await;
    let first_page_ms = timed.elapsed().as_secs_f64() * 1e3;
    let (all, all_pages, all_ms) = pager.walk(1_000, "").await;
    let (dead, dead_pages, dead_ms) = pager.walk(1_000, "dead").await;
    assert_eq!(all, leases, "the walk missed leases");
    assert_eq!(dead, 0);
    println!(
        "{{\"bench\":\"get_job\",\"objects\":{count},\"leases\":{leases},\"summary_ms\":{summary_ms:.1},\"first_page_ms\":{first_page_ms:.1},\"all_leases_ms\":{all_ms:.0},\"all_leases_pages\":{all_pages},\"dead_filter_ms\":{dead_ms:.0},\"dead_filter_pages\":{dead_pages},\"largest_message_bytes\":{}}}",
        pager.largest
    );
}
