//! Fencing of promotion: a cluster worker may rename a verified file into place only while
//! its lease is valid **by its own monotonic clock**, with a margin, and never after it fenced
//! itself or was told `LEASE_LOST`.
//!
//! The coordinator grants a lapsed lease again; the old holder, paused (SIGSTOP, a long GC,
//! a partition) between verification and rename, must not rename older bytes over the new
//! holder's. Wall clocks cannot be trusted across machines, so validity is measured on the
//! monotonic clock from the moment each successful renewal was *sent* (the coordinator's TTL
//! started no earlier). The margin covers the rename and the `complete` call that follow the
//! check: a worker that is paused exactly between the check and the rename is the residual
//! case, which the manifest's file identities catch (triage re-verifies the file).
//!
//! The clock is tokio's `Instant`, the monotonic clock in production, so that tests of the
//! lease loop can run it with paused time.

use common::sync::MutexExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// When a lease holder may still promote.
#[derive(Debug)]
pub struct LeaseFence {
    valid_until: Mutex<Instant>,
    lost: AtomicBool,
    margin: Duration,
}

impl LeaseFence {
    /// A lease granted at `granted` (monotonic) for `ttl`. Promotion stops `ttl / 3` before
    /// the lease would lapse: a third of the TTL is the renewal period, far more than a rename
    /// and a `complete` take, and far less than what is left after a renewal (two thirds).
    pub fn new(granted: Instant, ttl: Duration) -> Self {
        Self {
            valid_until: Mutex::new(granted + ttl),
            lost: AtomicBool::new(false),
            margin: ttl / 3,
        }
    }

    /// A renewal sent at `sent` succeeded: valid until `sent + ttl`.
    pub fn renewed(&self, sent: Instant, ttl: Duration) {
        let mut until = self.valid_until.lock_unpoisoned();
        *until = (*until).max(sent + ttl);
    }

    /// The lease is gone (self-fenced, `LEASE_LOST`, cancelled): never promote again.
    pub fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }

    /// Whether the lease is known to be gone.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// `Ok` if a promotion may start now; otherwise why not.
    pub fn check(&self) -> Result<(), String> {
        if self.is_lost() {
            return Err("the lease was lost".into());
        }
        let until = *self.valid_until.lock_unpoisoned();
        let now = Instant::now();
        if now + self.margin >= until {
            return Err(format!(
                "the lease is valid for {:.1}s more by this worker's clock, less than the {:.1}s margin",
                until.saturating_duration_since(now).as_secs_f64(),
                self.margin.as_secs_f64()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotion_needs_a_valid_lease_with_margin_and_stops_for_good_when_lost() {
        let ttl = Duration::from_secs(30);
        let fence = LeaseFence::new(Instant::now(), ttl);
        assert!(fence.check().is_ok());
        // Granted 25 s ago: 5 s left, inside the 10 s margin.
        let old = LeaseFence::new(
            Instant::now().checked_sub(Duration::from_secs(25)).unwrap(),
            ttl,
        );
        assert!(old.check().is_err());
        old.renewed(Instant::now(), ttl);
        assert!(old.check().is_ok());
        // A late answer to an older renewal never shortens the lease.
        old.renewed(
            Instant::now().checked_sub(Duration::from_secs(29)).unwrap(),
            ttl,
        );
        assert!(old.check().is_ok());
        old.lose();
        old.renewed(Instant::now(), ttl);
        assert!(old.check().is_err(), "a lost lease is never trusted again");
    }
}
