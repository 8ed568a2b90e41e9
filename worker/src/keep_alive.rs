//! Keeping one lease alive: renewals every third of the TTL, retries through outages, and
//! self-fencing when the lease is lost or its local deadline passes.
//!
//! **The local deadline is the last successful renewal's sending time plus the TTL**, on this
//! process's monotonic clock (the grant's acquire sending time at first): the service's TTL
//! started no earlier, so when the deadline passes the service may already have granted the
//! lease to someone else, and the work must stop. A failed attempt (the service or its store
//! unreachable, a partition) is retried soon, each attempt bounded to a sixth of the TTL, so a
//! partition shorter than the TTL costs no lease.
//!
//! Time here is tokio's (`tokio::time::Instant`), the same monotonic clock in production, so
//! the tests drive the loop with paused time: every rule about time is checked to the
//! millisecond without a real sleep.

use std::sync::Arc;
use std::time::Duration;

use engine::fence::LeaseFence;
use lease::model::{Ack, LeaseRef};
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{ClientError, LeaseClient};
use crate::telemetry::Telemetry;

/// What stops a lease's work when it is lost: the fence refuses promotions (and, lost, tells the
/// loop that nothing is to be reported), the token stops the parts.
#[derive(Clone, Debug)]
pub struct LeaseStop {
    /// Cancels the lease's downloads.
    pub cancel: CancellationToken,
    /// The lease's promotion fence.
    pub fence: Arc<LeaseFence>,
}

impl LeaseStop {
    fn fence_self(&self, lease: &LeaseRef, why: &str) {
        tracing::warn!(job = %lease.job_id, item = %lease.item_id, epoch = lease.epoch, "{why}: stopping the work (self-fencing)");
        self.fence.lose();
        self.cancel.cancel();
    }
}

/// Renews `lease` (granted by an acquire sent at `granted`, for `ttl`) until `stop.cancel` is
/// cancelled, fencing itself as the module doc says.
pub async fn keep_alive<C: LeaseClient>(
    client: &C,
    telemetry: Option<&Telemetry>,
    lease: &LeaseRef,
    granted: Instant,
    ttl: Duration,
    stop: &LeaseStop,
) {
    let attempt_limit = (ttl / 6).max(Duration::from_millis(200));
    let retry_after = (ttl / 15).max(Duration::from_millis(200));
    let mut deadline = granted + ttl;
    let mut next = granted + ttl / 3;
    loop {
        tokio::select! {
            () = stop.cancel.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => {
                return stop.fence_self(lease, "no renewal within the lease time");
            }
            () = tokio::time::sleep_until(next) => {}
        }
        let sent = Instant::now();
        let attempt = tokio::time::timeout(attempt_limit, client.renew(lease));
        let renewed = tokio::select! {
            () = stop.cancel.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => {
                return stop.fence_self(lease, "no renewal within the lease time");
            }
            renewed = attempt => renewed,
        };
        if let Ok(Ok(_)) = &renewed
            && let Some(telemetry) = telemetry
        {
            telemetry
                .renew_seconds
                .observe(sent.elapsed().as_secs_f64());
            telemetry.contact();
        }
        match renewed {
            Ok(Ok(Ack::Ok)) => {
                deadline = sent + ttl;
                stop.fence.renewed(sent, ttl);
                next = sent + ttl / 3;
            }
            Ok(Ok(_)) => return stop.fence_self(lease, "the lease was lost"),
            Ok(Err(ClientError::NotHolder(_))) => {
                return stop.fence_self(lease, "the lease service says the lease is not ours");
            }
            // The service or its store is unreachable: keep working, try again soon.
            _ => {
                next = Instant::now() + retry_after.mul_f64(rand::rng().random_range(0.5..1.0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Acquired, LeaseEnd};
    use common::sync::MutexExt;
    use engine::sync::Outcome;
    use std::sync::Mutex;

    /// How the fake service answers a renewal sent at a given time since the grant.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        Ok,
        Unavailable,
        /// Never answers (a blackholed connection).
        Hang,
        Lost,
        NotHolder,
    }

    /// A lease service whose renewals answer by a script of the time since the grant, and
    /// which records when each renewal was sent.
    struct Scripted {
        start: Instant,
        script: fn(Duration) -> Answer,
        sent: Mutex<Vec<Duration>>,
    }

    impl LeaseClient for Scripted {
        async fn acquire(&self, _max: usize) -> Result<Acquired, ClientError> {
            Ok(Acquired::default())
        }

        async fn renew(&self, _lease: &LeaseRef) -> Result<Ack, ClientError> {
            let at = self.start.elapsed();
            self.sent.lock_unpoisoned().push(at);
            match (self.script)(at) {
                Answer::Ok => Ok(Ack::Ok),
                Answer::Unavailable => Err(ClientError::Unavailable("down".into())),
                Answer::Hang => std::future::pending().await,
                Answer::Lost => Ok(Ack::LeaseLost),
                Answer::NotHolder => Err(ClientError::NotHolder("w2".into())),
            }
        }

        async fn finish(
            &self,
            _lease: &LeaseRef,
            _end: &LeaseEnd,
            _outcomes: &[Outcome],
        ) -> Result<Ack, ClientError> {
            Ok(Ack::Ok)
        }
    }

    const TTL: Duration = Duration::from_secs(30);

    fn lease() -> LeaseRef {
        LeaseRef {
            job_id: "j".into(),
            item_id: "i".into(),
            lease_id: "l".into(),
            epoch: 1,
        }
    }

    /// Starts the keeper of a lease granted now; returns the service, the stop handles and
    /// the keeper's task.
    fn start(
        script: fn(Duration) -> Answer,
    ) -> (Arc<Scripted>, LeaseStop, tokio::task::JoinHandle<()>) {
        let granted = Instant::now();
        let client = Arc::new(Scripted {
            start: granted,
            script,
            sent: Mutex::new(Vec::new()),
        });
        let stop = LeaseStop {
            cancel: CancellationToken::new(),
            fence: Arc::new(LeaseFence::new(granted, TTL)),
        };
        let keeper = tokio::spawn({
            let (client, stop) = (client.clone(), stop.clone());
            async move { keep_alive(&*client, None, &lease(), granted, TTL, &stop).await }
        });
        (client, stop, keeper)
    }

    /// Lets paused time run to `at` after the grant.
    async fn run_until(granted_at: Instant, at: Duration) {
        tokio::time::sleep_until(granted_at + at).await;
    }

    fn fenced(stop: &LeaseStop) -> bool {
        stop.cancel.is_cancelled() && stop.fence.is_lost()
    }

    #[tokio::test(start_paused = true)]
    async fn renews_every_third_of_the_ttl_and_the_fence_stays_open() {
        let t0 = Instant::now();
        let (client, stop, keeper) = start(|_| Answer::Ok);
        run_until(t0, Duration::from_secs(105)).await;
        let sent = client.sent.lock_unpoisoned().clone();
        let expected: Vec<Duration> = (1..=10).map(|n| TTL / 3 * n).collect();
        assert_eq!(sent, expected);
        assert!(!fenced(&stop));
        assert!(stop.fence.check().is_ok());
        stop.cancel.cancel();
        keeper.await.unwrap();
        assert!(!stop.fence.is_lost(), "a cancel is not a loss");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_shorter_than_the_ttl_is_retried_and_costs_nothing() {
        let t0 = Instant::now();
        // Down from 11 s to 30 s: the renewal sent at 10 s holds the lease to 40 s, and the
        // first one after the outage renews it.
        let (client, stop, _keeper) = start(|at| {
            if at > Duration::from_secs(11) && at < Duration::from_secs(30) {
                Answer::Unavailable
            } else {
                Answer::Ok
            }
        });
        run_until(t0, Duration::from_secs(60)).await;
        assert!(!fenced(&stop));
        let sent = client.sent.lock_unpoisoned().clone();
        let during: Vec<_> = sent
            .iter()
            .filter(|at| **at > Duration::from_secs(11) && **at < Duration::from_secs(30))
            .collect();
        // Retried every 1–2 s (a fifteenth of the TTL, jittered), not every 10 s.
        assert!(during.len() >= 6, "{sent:?}");
        assert!(
            sent.iter()
                .any(|at| *at >= Duration::from_secs(30) && *at < Duration::from_secs(32)),
            "the first renewal after the outage comes within a retry interval: {sent:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_renewal_the_work_stops_exactly_one_ttl_after_the_grant() {
        let t0 = Instant::now();
        let (_client, stop, keeper) = start(|_| Answer::Unavailable);
        run_until(t0, Duration::from_millis(29_999)).await;
        assert!(!fenced(&stop), "fenced before the deadline");
        // The fence refuses promotion already: the margin is a third of the TTL.
        assert!(stop.fence.check().is_err());
        run_until(t0, TTL).await;
        keeper.await.unwrap();
        assert!(fenced(&stop));
        assert_eq!(t0.elapsed(), TTL, "fenced late or early");
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_never_answers_is_abandoned_and_the_deadline_still_holds() {
        let t0 = Instant::now();
        let (client, stop, keeper) = start(|_| Answer::Hang);
        keeper.await.unwrap();
        assert!(fenced(&stop));
        assert_eq!(t0.elapsed(), TTL);
        // Each hung attempt was given up after a sixth of the TTL and tried again.
        let sent = client.sent.lock_unpoisoned().clone();
        assert!(sent.len() >= 3, "{sent:?}");
        for pair in sent.windows(2) {
            assert!(pair[1].saturating_sub(pair[0]) >= TTL / 6, "{sent:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_or_another_holder_stops_the_work_at_once() {
        for answer in [|_| Answer::Lost, |_| Answer::NotHolder] as [fn(Duration) -> Answer; 2] {
            let t0 = Instant::now();
            let (_client, stop, keeper) = start(answer);
            keeper.await.unwrap();
            assert!(fenced(&stop));
            assert_eq!(
                t0.elapsed(),
                TTL / 3,
                "fenced at the first renewal's answer"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_runs_from_the_renewal_that_was_sent_not_answered() {
        let t0 = Instant::now();
        // Renewals succeed until 12 s, then the service is gone for good. The last good one
        // was sent at 10 s, so the work stops at 40 s, whatever its answer's delay.
        let (_client, stop, keeper) = start(|at| {
            if at <= Duration::from_secs(12) {
                Answer::Ok
            } else {
                Answer::Unavailable
            }
        });
        keeper.await.unwrap();
        assert!(fenced(&stop));
        assert_eq!(t0.elapsed(), TTL / 3 + TTL);
    }
}
