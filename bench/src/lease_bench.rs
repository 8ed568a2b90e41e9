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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use common::catalog::{Cadence, Product, Variable};
use common::dates::YearMonth;
use common::source::RemoteObject;
use coordinator::model::{
    ItemSpec, JobSpec, LeasePolicy, ObjectSpec, SelectionSpec, SourceSpec, random_id,
};
use coordinator::planner::{ItemLimits, plan_job};
use coordinator::{LeaseStore, RedisStore};
use proto::v1 as pb;
use proto::v1::worker_client::WorkerClient;

fn usage() -> ! {
    eprintln!(
        "usage: era5-lease-bench throughput --coordinator URL --redis URL [--workers N] [--items N]\n       era5-lease-bench plan --redis URL [--objects N]"
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
            .await
        }
        Some("plan") => {
            plan(
                flag(&args, "--redis", None),
                flag(&args, "--objects", Some(1_000_000)),
            )
            .await
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
            bucket: common::source::DEFAULT_BUCKET.to_string(),
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
