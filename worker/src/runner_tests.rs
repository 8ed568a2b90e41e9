//! The lease loop over a fake lease service and a fake destination, on tokio's paused clock:
//! how each lease ends by its objects' outcomes, that a lost lease reports nothing, that a
//! report is retried while the service is down, that a drain finishes the held leases and
//! takes no more, and that a full DEST stops `era5 sync`'s loop. (Renewals and the fence's
//! timing are `keep_alive`'s own tests.)

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicUsize;

use engine::disk::{DestHealth, LocalIoKind};
use engine::memory::BufferBudget;
use engine::scheduler::RequestScheduler;
use lease::model::Ack;
use transport::RemoteObject;

use super::*;
use crate::client::Acquired;

const TTL: Duration = Duration::from_secs(30);

/// A lease service that grants a queue of leases, answers renewals by a setting, fails the
/// first `finish_failures` reports, and records every report.
#[derive(Default)]
struct FakeService {
    queue: Mutex<VecDeque<Granted>>,
    /// Asks the holder to drain with its first answer.
    drain: bool,
    /// Renewals say the grant is gone.
    renewals_lost: bool,
    finish_failures: AtomicUsize,
    finish_calls: AtomicUsize,
    acquire_calls: AtomicUsize,
    finished: Mutex<Vec<(String, LeaseEnd)>>,
}

struct Fake(Arc<FakeService>);

impl LeaseClient for Fake {
    async fn acquire(&self, max: usize) -> Result<Acquired, ClientError> {
        self.0.acquire_calls.fetch_add(1, Ordering::SeqCst);
        let mut queue = self.0.queue.lock_unpoisoned();
        let take = max.min(queue.len());
        let grants: Vec<Granted> = queue.drain(..take).collect();
        Ok(Acquired {
            grants,
            draining: self.0.drain,
            exhausted: queue.is_empty(),
        })
    }

    async fn renew(&self, _lease: &LeaseRef) -> Result<Ack, ClientError> {
        Ok(if self.0.renewals_lost {
            Ack::LeaseLost
        } else {
            Ack::Ok
        })
    }

    async fn finish(
        &self,
        lease: &LeaseRef,
        end: &LeaseEnd,
        _outcomes: &[Outcome],
    ) -> Result<Ack, ClientError> {
        self.0.finish_calls.fetch_add(1, Ordering::SeqCst);
        let failing = self.0.finish_failures.load(Ordering::SeqCst);
        if failing > 0 {
            self.0.finish_failures.store(failing - 1, Ordering::SeqCst);
            return Err(ClientError::Unavailable("down".into()));
        }
        self.0
            .finished
            .lock_unpoisoned()
            .push((lease.item_id.clone(), end.clone()));
        Ok(Ack::Ok)
    }
}

/// A destination whose objects end as scripted by key (downloaded when not scripted), and
/// which holds on to objects named `hang` until their lease's work is cancelled.
struct FakeDest {
    outcomes: HashMap<String, Outcome>,
    progress: Arc<Progress>,
    scheduler: Arc<RequestScheduler>,
    health: Arc<DestHealth>,
    cancelled: AtomicUsize,
}

impl FakeDest {
    fn new(outcomes: &[(&str, Outcome)]) -> Arc<Self> {
        Arc::new(Self {
            outcomes: outcomes
                .iter()
                .map(|(key, outcome)| ((*key).to_string(), outcome.clone()))
                .collect(),
            progress: Arc::new(Progress::default()),
            scheduler: RequestScheduler::new(
                engine::Concurrency {
                    max: 4,
                    autotune: false,
                },
                BufferBudget::new(1 << 20),
            ),
            health: Arc::new(DestHealth::default()),
            cancelled: AtomicUsize::new(0),
        })
    }
}

#[async_trait::async_trait]
impl Destination for FakeDest {
    async fn mirror_objects(
        &self,
        objects: &[RemoteObject],
        scope: &FetchScope,
    ) -> std::io::Result<Vec<Outcome>> {
        if objects.iter().any(|o| o.key == "hang") {
            scope.cancel.cancelled().await;
            self.cancelled.fetch_add(1, Ordering::SeqCst);
            return Ok(vec![Outcome::Cancelled; objects.len()]);
        }
        Ok(objects
            .iter()
            .map(|o| {
                self.outcomes
                    .get(&o.key)
                    .cloned()
                    .unwrap_or(Outcome::Downloaded)
            })
            .collect())
    }

    fn count_up_front(&self, _objects: &[RemoteObject]) {}

    fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    fn scheduler(&self) -> &Arc<RequestScheduler> {
        &self.scheduler
    }

    fn health(&self) -> &Arc<DestHealth> {
        &self.health
    }

    fn recorded_version(&self, _object: &RemoteObject) -> Option<bool> {
        None
    }

    async fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }

    async fn flush_at_end(&self) -> std::io::Result<Option<String>> {
        Ok(None)
    }
}

/// A grant of item `item` holding objects `keys`.
fn grant(item: &str, keys: &[&str]) -> Granted {
    Granted {
        lease: LeaseRef {
            job_id: "job".into(),
            item_id: item.into(),
            lease_id: format!("lease-{item}"),
            epoch: 1,
        },
        objects: keys
            .iter()
            .map(|key| RemoteObject {
                key: (*key).to_string(),
                size: 1,
                etag: None,
                last_modified: None,
            })
            .collect(),
        source: SourceSpec {
            bucket: "b".into(),
            endpoint: String::new(),
        },
        ttl: TTL,
    }
}

/// `era5 sync`'s loop (until idle, stopping on a DEST failure) over `service` and `dest`.
fn runner(service: &Arc<FakeService>, dest: &Arc<FakeDest>) -> Arc<Runner<Fake>> {
    Runner::new(
        Fake(service.clone()),
        RunnerConfig {
            dest: PathBuf::from("/nonexistent-dest"),
            name: "test".into(),
            max_leases: 2,
            temps: Temps::Resumable,
            on_dest_failure: OnDestFailure::Stop,
            until_idle: true,
        },
        Mirrorers::One(dest.clone()),
        Arc::new(Progress::default()),
        Arc::new(DiskGate::default()),
        None,
    )
}

fn service(grants: Vec<Granted>) -> Arc<FakeService> {
    Arc::new(FakeService {
        queue: Mutex::new(grants.into()),
        ..FakeService::default()
    })
}

fn finished(service: &FakeService) -> Vec<(String, LeaseEnd)> {
    let mut finished = service.finished.lock_unpoisoned().clone();
    finished.sort_by(|a, b| a.0.cmp(&b.0));
    finished
}

#[tokio::test(start_paused = true)]
async fn each_lease_ends_as_its_objects_outcomes_say() {
    let service = service(vec![
        grant("a-done", &["k1", "k2"]),
        grant("b-denied", &["k3", "denied"]),
        grant("c-flaky", &["flaky", "k4"]),
    ]);
    let dest = FakeDest::new(&[
        (
            "denied",
            Outcome::Failed {
                reason: "403 AccessDenied".into(),
                permanent: true,
            },
        ),
        (
            "flaky",
            Outcome::Failed {
                reason: "reset".into(),
                permanent: false,
            },
        ),
    ]);
    runner(&service, &dest).run(&Stop::default()).await;
    assert_eq!(
        finished(&service),
        [
            ("a-done".to_string(), LeaseEnd::Complete),
            (
                "b-denied".to_string(),
                LeaseEnd::Fail {
                    reason: "403 AccessDenied".into(),
                    permanent: true
                }
            ),
            (
                "c-flaky".to_string(),
                LeaseEnd::Fail {
                    reason: "reset".into(),
                    permanent: false
                }
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_dest_releases_its_lease_and_stops_the_sync() {
    let service = service(vec![grant("a", &["full"]), grant("b", &["k"])]);
    let dest = FakeDest::new(&[(
        "full",
        Outcome::Local {
            reason: "no space left on DEST".into(),
            kind: LocalIoKind::NoSpace,
        },
    )]);
    let loop_ = runner(&service, &dest);
    loop_.run(&Stop::default()).await;
    let ends = finished(&service);
    assert_eq!(ends[0], ("a".to_string(), LeaseEnd::Release), "{ends:?}");
    assert_eq!(
        loop_.stopped_by().map(|e| e.kind),
        Some(LocalIoKind::NoSpace)
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_stops_its_work_and_reports_nothing() {
    let service = Arc::new(FakeService {
        queue: Mutex::new(vec![grant("a", &["hang"])].into()),
        renewals_lost: true,
        ..FakeService::default()
    });
    let dest = FakeDest::new(&[]);
    let started = Instant::now();
    runner(&service, &dest).run(&Stop::default()).await;
    assert_eq!(dest.cancelled.load(Ordering::SeqCst), 1, "the work went on");
    assert!(
        started.elapsed() < TTL,
        "stopped only after {:?}",
        started.elapsed()
    );
    assert!(
        finished(&service).is_empty(),
        "a lost lease was reported: {:?}",
        finished(&service)
    );
}

#[tokio::test(start_paused = true)]
async fn a_report_is_sent_again_while_the_service_is_down() {
    let service = service(vec![grant("a", &["k"])]);
    service.finish_failures.store(3, Ordering::SeqCst);
    let dest = FakeDest::new(&[]);
    runner(&service, &dest).run(&Stop::default()).await;
    assert_eq!(service.finish_calls.load(Ordering::SeqCst), 4);
    assert_eq!(finished(&service), [("a".to_string(), LeaseEnd::Complete)]);
}

#[tokio::test(start_paused = true)]
async fn a_drain_finishes_the_held_leases_and_takes_no_more() {
    let service = Arc::new(FakeService {
        queue: Mutex::new(
            vec![
                grant("a", &["k1"]),
                grant("b", &["k2"]),
                grant("c", &["k3"]),
            ]
            .into(),
        ),
        drain: true,
        ..FakeService::default()
    });
    let dest = FakeDest::new(&[]);
    let loop_ = runner(&service, &dest);
    loop_.run(&Stop::default()).await;
    // The first answer granted two (max_leases) and asked to drain: those two complete, the
    // third is never asked for.
    assert_eq!(service.acquire_calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        finished(&service),
        [
            ("a".to_string(), LeaseEnd::Complete),
            ("b".to_string(), LeaseEnd::Complete)
        ]
    );
    assert_eq!(service.queue.lock_unpoisoned().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_releases_the_held_leases() {
    let service = service(vec![grant("a", &["hang"])]);
    let dest = FakeDest::new(&[]);
    let loop_ = runner(&service, &dest);
    let stop = Stop::default();
    let running = tokio::spawn({
        let (loop_, stop) = (loop_.clone(), stop.clone());
        async move { loop_.run(&stop).await }
    });
    // Once the lease is held, stop.
    while loop_.held().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.shutdown.cancel();
    running.await.expect("the loop ended");
    assert_eq!(dest.cancelled.load(Ordering::SeqCst), 1);
    assert_eq!(finished(&service), [("a".to_string(), LeaseEnd::Release)]);
}
