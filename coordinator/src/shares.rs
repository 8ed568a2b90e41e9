//! Fleet-wide bandwidth budgets (`submit --bwlimit`): the coordinator shares each job's budget
//! among the workers that hold the job's leases, and shares it again as workers come and go.
//!
//! **A worker's share is one cap on all its transfers** (its `engine::bandwidth`), the lowest
//! of the fair shares of the budgeted jobs it holds: a worker that also holds leases of another
//! job is slowed there too, never the budget exceeded.
//!
//! **The sum of the shares given for a job never exceeds its budget.** A share is the fair
//! share (the budget over the job's holders) but never more than what the other holders were
//! last given leaves: when a worker joins, it starts with what is left (often nothing) and gets
//! its fair share once the others were lowered, at their next session tick. So the only excess
//! is the time a lowered share takes to reach its worker and its buffered bytes, which the
//! cluster test measures from outside (`docs/operations.md` states the margin).
//!
//! **Who holds what** comes from the lease store ([`lease::LeaseStore::holdings`], the live
//! grants of every coordinator's workers), read at most every [`HOLDINGS_EVERY`], plus the
//! grants this coordinator made since (the read may be older than them). A worker whose leases
//! expired, or that finished them, holds nothing. Shares given are this coordinator's own
//! knowledge: a holder it has not given a share (another coordinator's worker, or any after a
//! restart) counts at its fair share, so with several coordinators a newcomer may start at its
//! fair share before another coordinator lowers the others, within a tick or two.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::bwlimit::{BwLimit, Rate};
use common::sync::MutexExt;

/// How often the holdings are read from the store again.
pub const HOLDINGS_EVERY: Duration = Duration::from_secs(1);
/// How long a grant this coordinator made counts as a holding, whatever the store said before.
const GRANT_COUNTS_FOR: Duration = Duration::from_secs(3);

/// The coordinator's book of budgets, holdings and the shares given.
#[derive(Debug, Default)]
pub struct Shares {
    book: Mutex<Book>,
    /// Held while the holdings are read, so that sessions due at once make one read.
    pub reading: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Book {
    /// Each job's budget, read from the store once (`None`: the job has none).
    budgets: HashMap<String, Option<BwLimit>>,
    /// (worker, job) pairs with live grants, as the store last said, and when it said so.
    held: HashSet<(String, String)>,
    read_at: Option<Instant>,
    /// Grants made here since, by (worker, job).
    granted: HashMap<(String, String), Instant>,
    /// The share last given to each worker (absent: none given, or none applies).
    given: HashMap<String, u64>,
}

impl Shares {
    /// Whether the holdings should be read from the store again.
    pub fn holdings_due(&self, now: Instant) -> bool {
        self.book
            .lock_unpoisoned()
            .read_at
            .is_none_or(|at| now.duration_since(at) >= HOLDINGS_EVERY)
    }

    /// Records the store's holdings, read at `now`.
    pub fn learn_holdings(&self, held: Vec<(String, String)>, now: Instant) {
        let mut book = self.book.lock_unpoisoned();
        book.held = held.into_iter().collect();
        book.read_at = Some(now);
        book.granted
            .retain(|_, at| now.duration_since(*at) < GRANT_COUNTS_FOR);
        // Budgets and shares of jobs and workers that hold nothing are dropped: the book
        // stays as small as the work in flight (a budget is read again when needed).
        let jobs: HashSet<&String> = book.held.iter().map(|(_, job)| job).collect();
        let workers: HashSet<&String> = book.held.iter().map(|(worker, _)| worker).collect();
        let (keep_jobs, keep_workers): (HashSet<String>, HashSet<String>) = (
            jobs.into_iter().cloned().collect(),
            workers.into_iter().cloned().collect(),
        );
        let granted: Vec<(String, String)> = book.granted.keys().cloned().collect();
        book.budgets
            .retain(|job, _| keep_jobs.contains(job) || granted.iter().any(|(_, j)| j == job));
        book.given.retain(|worker, _| {
            keep_workers.contains(worker) || granted.iter().any(|(w, _)| w == worker)
        });
    }

    /// Records that this coordinator just granted `worker` leases of `jobs`.
    pub fn learn_grants<'a>(
        &self,
        worker: &str,
        jobs: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) {
        let mut book = self.book.lock_unpoisoned();
        for job in jobs {
            book.granted
                .insert((worker.to_string(), job.to_string()), now);
        }
    }

    /// Of the jobs held, those whose budget is not known yet: read them from the store, then
    /// [`Shares::learn_budget`].
    pub fn unknown_budgets(&self) -> Vec<String> {
        let book = self.book.lock_unpoisoned();
        let unknown: HashSet<&String> = book
            .held
            .iter()
            .chain(book.granted.keys())
            .map(|(_, job)| job)
            .filter(|job| !book.budgets.contains_key(*job))
            .collect();
        unknown.into_iter().cloned().collect()
    }

    /// Records `job`'s budget as submitted. A budget that does not parse (it was checked when
    /// submitted, so only a damaged store holds one) caps nothing, with a warning.
    pub fn learn_budget(&self, job: &str, bwlimit: Option<&str>) {
        let budget = bwlimit.and_then(|text| match BwLimit::parse(text) {
            Ok(limit) => Some(limit).filter(|limit| !limit.is_off()),
            Err(error) => {
                tracing::warn!(job, %error, "the job's bandwidth budget is unreadable: not applied");
                None
            }
        });
        self.book
            .lock_unpoisoned()
            .budgets
            .insert(job.to_string(), budget);
    }

    /// `worker`'s share now, recorded as given: the cap on its transfers, or `None` when no
    /// budget applies to it.
    pub fn share_for(&self, worker: &str, now: Instant) -> Option<u64> {
        let mut book = self.book.lock_unpoisoned();
        let mut holders: HashMap<&str, HashSet<&str>> = HashMap::new();
        for (holder, job) in book.held.iter().chain(
            book.granted
                .iter()
                .filter(|(_, at)| now.duration_since(**at) < GRANT_COUNTS_FOR)
                .map(|(key, _)| key),
        ) {
            holders.entry(job).or_default().insert(holder);
        }
        let mut share: Option<u64> = None;
        for (job, holding) in &holders {
            if !holding.contains(worker) {
                continue;
            }
            let Some(Some(budget)) = book.budgets.get(*job) else {
                continue;
            };
            let Rate::Limited(rate) = budget.rate_now() else {
                continue;
            };
            let fair = rate / holding.len() as u64;
            // What the others were given; one not given a share here counts at its fair share.
            let others: u64 = holding
                .iter()
                .filter(|holder| **holder != worker)
                .map(|holder| book.given.get(*holder).copied().unwrap_or(fair))
                .sum();
            let allowed = fair.min(rate.saturating_sub(others));
            share = Some(share.map_or(allowed, |s| s.min(allowed)));
        }
        match share {
            Some(share) => book.given.insert(worker.to_string(), share),
            None => book.given.remove(worker),
        };
        share
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn book(budgets: &[(&str, Option<&str>)]) -> Shares {
        let shares = Shares::default();
        for (job, budget) in budgets {
            shares.learn_budget(job, *budget);
        }
        shares
    }

    fn held(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(w, j)| (w.to_string(), j.to_string()))
            .collect()
    }

    fn given_sum(shares: &Shares, workers: &[&str]) -> u64 {
        let book = shares.book.lock_unpoisoned();
        workers.iter().filter_map(|w| book.given.get(*w)).sum()
    }

    #[test]
    fn a_newcomer_gets_what_is_left_then_its_fair_share_once_the_others_were_lowered() {
        let shares = book(&[("j", Some("6M"))]);
        let t0 = Instant::now();
        shares.learn_grants("a", ["j"], t0);
        assert_eq!(shares.share_for("a", t0), Some(6 * MIB), "alone: all of it");
        shares.learn_grants("b", ["j"], t0);
        assert_eq!(shares.share_for("b", t0), Some(0), "a still has all of it");
        assert_eq!(shares.share_for("a", t0), Some(3 * MIB), "a lowered");
        assert_eq!(shares.share_for("b", t0), Some(3 * MIB), "b raised");
        shares.learn_holdings(held(&[("a", "j"), ("b", "j"), ("c", "j")]), t0);
        let mut last = 0;
        for worker in ["c", "a", "b", "c"] {
            last = shares.share_for(worker, t0).unwrap();
            let sum = given_sum(&shares, &["a", "b", "c"]);
            assert!(sum <= 6 * MIB, "{sum} given after {worker}'s turn");
        }
        assert_eq!(last, 2 * MIB, "three workers: a third each");
    }

    #[test]
    fn a_worker_that_leaves_gives_its_share_back() {
        let shares = book(&[("j", Some("4M"))]);
        let t0 = Instant::now();
        shares.learn_holdings(held(&[("a", "j"), ("b", "j")]), t0);
        for worker in ["a", "b", "a", "b"] {
            shares.share_for(worker, t0);
        }
        assert_eq!(shares.share_for("a", t0), Some(2 * MIB));
        // b finished its leases, or they expired: the store no longer lists it.
        let later = t0 + HOLDINGS_EVERY;
        assert!(shares.holdings_due(later));
        shares.learn_holdings(held(&[("a", "j")]), later);
        assert_eq!(
            shares.share_for("b", later),
            None,
            "b holds no budgeted job"
        );
        assert_eq!(shares.share_for("a", later), Some(4 * MIB));
    }

    #[test]
    fn a_grant_made_here_counts_before_the_store_is_read_again() {
        let shares = book(&[("j", Some("4M"))]);
        let t0 = Instant::now();
        shares.learn_holdings(held(&[("a", "j")]), t0);
        assert_eq!(shares.share_for("a", t0), Some(4 * MIB));
        shares.learn_grants("b", ["j"], t0 + Duration::from_millis(100));
        // A read made before b's grant reached the store.
        shares.learn_holdings(held(&[("a", "j")]), t0 + Duration::from_millis(200));
        assert_eq!(shares.share_for("b", t0), Some(0));
        assert_eq!(shares.share_for("a", t0), Some(2 * MIB));
        let late = t0 + GRANT_COUNTS_FOR + HOLDINGS_EVERY;
        shares.learn_holdings(held(&[("a", "j")]), late);
        assert_eq!(
            shares.share_for("a", late),
            Some(4 * MIB),
            "b's grant ended"
        );
    }

    #[test]
    fn the_lowest_share_of_the_budgeted_jobs_held_caps_a_worker_and_others_do_not() {
        let shares = book(&[
            ("fast", Some("8M")),
            ("slow", Some("2M")),
            ("free", None),
            ("nightly", Some("Mon-00:00,off")),
        ]);
        let t0 = Instant::now();
        shares.learn_holdings(
            held(&[
                ("a", "fast"),
                ("a", "slow"),
                ("a", "free"),
                ("b", "free"),
                ("b", "nightly"),
                ("c", "new"),
            ]),
            t0,
        );
        assert_eq!(shares.share_for("a", t0), Some(2 * MIB));
        assert_eq!(
            shares.share_for("b", t0),
            None,
            "no budget, or one that is off now"
        );
        assert_eq!(shares.unknown_budgets(), ["new"]);
        shares.learn_budget("new", Some("not a rate"));
        assert_eq!(
            shares.share_for("c", t0),
            None,
            "an unreadable budget caps nothing"
        );
    }

    #[test]
    fn a_holder_not_given_a_share_here_counts_at_its_fair_share() {
        // After a restart, or another coordinator's worker: nobody was given a share here.
        let shares = book(&[("j", Some("4M"))]);
        let t0 = Instant::now();
        shares.learn_holdings(held(&[("a", "j"), ("b", "j")]), t0);
        assert_eq!(shares.share_for("a", t0), Some(2 * MIB));
        assert_eq!(shares.share_for("b", t0), Some(2 * MIB));
    }
}
