//! `--bwlimit`: one cap on the bytes a process receives, across all its connections (the
//! language of rates and timetables is `common::bwlimit`'s).
//!
//! **How the cap is kept**: a token bucket that may go into debt. Each chunk a body delivers
//! is charged when it arrives, and the reader waits until the debt is paid before it reads the
//! next one, so the rate over any second is the cap, plus at most a bucket of
//! [`BURST`] worth of the rate. Waiting readers do not poll their bodies: the stall and
//! minimum-rate guards count only time spent waiting on the server (`transport::guard`), and
//! TCP holds the server back. Hand-written rather than `governor`: a chunk may be larger than
//! any burst, and the rate changes with the timetable and the fleet share, which the debt form
//! makes trivial.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use common::bwlimit::{BadBwLimit, BwLimit, Rate};
use common::sync::MutexExt;
use tokio::time::Instant;

/// Credit a quiet bucket may save: this long at the current rate.
pub const BURST: Duration = Duration::from_millis(20);
/// How often the timetable is looked at again.
const TIMETABLE_EVERY: Duration = Duration::from_secs(1);

/// The process-wide cap, shared by every engine of the process: the process's own `--bwlimit`
/// and, on a cluster worker, the share of a job's fleet-wide budget that the coordinator gives
/// it (`submit --bwlimit`), whichever is lower.
#[derive(Debug)]
pub struct Bandwidth {
    limit: BwLimit,
    /// The fleet share in bytes per second; [`NO_SHARE`]: none. Read without the lock, so a
    /// process with no cap of either kind never takes it.
    share: AtomicU64,
    state: Mutex<Bucket>,
}

/// [`Bandwidth::share`] when no fleet share applies.
const NO_SHARE: u64 = u64::MAX;
/// Longest a reader sleeps before it looks at the rate again: a share may change (or be
/// lifted) while readers wait off a debt run up at the old rate.
const RECHECK_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Bucket {
    rate: Rate,
    /// Bytes charged since the start, and credit earned at the rate in force meanwhile. A
    /// reader waits until the credit covers everything charged up to and including its own
    /// bytes, so readers are served in the order they charged, at whatever rate holds while
    /// they wait.
    charged: f64,
    earned: f64,
    refilled: Instant,
    looked_up: Option<Instant>,
    /// The rate that applied at the last refill when it was a limit (the lower of
    /// `--bwlimit`'s and the share), bytes per second.
    held_rate: u64,
    /// Until when readers were held back: the cap binds while this is recent.
    held_until: Option<Instant>,
}

/// The lower of a `--bwlimit` rate and a fleet share (`None`: no share).
fn lower(rate: Rate, share: Option<u64>) -> Rate {
    match (rate, share) {
        (rate, None) => rate,
        (Rate::Off, Some(share)) => Rate::Limited(share),
        (Rate::Limited(own), Some(share)) => Rate::Limited(own.min(share)),
    }
}

impl Bucket {
    /// Looks the timetable up again when due, then adds the credit earned since the last
    /// refill; a quiet bucket saves at most [`BURST`] at the current rate.
    fn refill(&mut self, limit: &BwLimit, share: u64, now: Instant) {
        if self
            .looked_up
            .is_none_or(|at| now.duration_since(at) >= TIMETABLE_EVERY)
        {
            self.rate = limit.rate_now();
            self.looked_up = Some(now);
        }
        let rate = lower(self.rate, (share != NO_SHARE).then_some(share));
        match rate {
            Rate::Off => self.earned = self.charged,
            Rate::Limited(rate) => {
                let rate = rate as f64;
                let earned = now.duration_since(self.refilled).as_secs_f64() * rate;
                self.earned = (self.earned + earned).min(self.charged + rate * BURST.as_secs_f64());
            }
        }
        self.refilled = now;
        if let Rate::Limited(rate) = rate {
            self.held_rate = rate;
        }
    }
}

impl Bandwidth {
    /// A cap by `limit`.
    pub fn new(limit: BwLimit) -> Self {
        Self {
            limit,
            share: AtomicU64::new(NO_SHARE),
            state: Mutex::new(Bucket {
                rate: Rate::Off,
                charged: 0.0,
                earned: 0.0,
                refilled: Instant::now(),
                looked_up: None,
                held_rate: 0,
                held_until: None,
            }),
        }
    }

    /// No cap at all.
    pub fn unlimited() -> Self {
        Self::new(BwLimit::off())
    }

    /// Whether neither a `--bwlimit` nor a fleet share caps anything.
    fn uncapped(&self) -> bool {
        self.limit.is_off() && self.share.load(Ordering::Relaxed) == NO_SHARE
    }

    /// Sets this process's share of a fleet-wide budget (`None`: no share applies). Readers
    /// already waiting pick the new rate up within [`RECHECK_EVERY`]. A share of 0 holds every
    /// reader until a share is given.
    pub fn set_share(&self, bytes_per_sec: Option<u64>) {
        let share = bytes_per_sec.map_or(NO_SHARE, |bytes| bytes.min(NO_SHARE - 1));
        self.share.store(share, Ordering::Relaxed);
    }

    /// The fleet share in force, if any.
    pub fn share(&self) -> Option<u64> {
        match self.share.load(Ordering::Relaxed) {
            NO_SHARE => None,
            share => Some(share),
        }
    }

    /// Charges `bytes` just received and waits until the cap allows reading on.
    pub async fn take(&self, bytes: usize) {
        if self.uncapped() {
            return;
        }
        let owed = {
            let mut bucket = self.state.lock_unpoisoned();
            bucket.refill(
                &self.limit,
                self.share.load(Ordering::Relaxed),
                Instant::now(),
            );
            bucket.charged += bytes as f64;
            bucket.charged
        };
        loop {
            let wait = {
                let mut bucket = self.state.lock_unpoisoned();
                let now = Instant::now();
                bucket.refill(&self.limit, self.share.load(Ordering::Relaxed), now);
                // Less than a byte short is paid: a float residue must not make a wait of
                // zero that earns nothing and spins.
                let short = owed - bucket.earned;
                if short < 1.0 {
                    return;
                }
                // At a rate of 0 (a share not yet given) the reader only looks again later.
                let wait = if bucket.held_rate > 0 {
                    Duration::from_secs_f64(short / bucket.held_rate as f64)
                } else {
                    RECHECK_EVERY
                };
                bucket.held_until = Some(now + wait);
                wait.clamp(Duration::from_millis(1), RECHECK_EVERY)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Whether the cap held a reader back within the last `within`: while it binds, more
    /// requests in flight cannot add goodput, and a slow body is the cap's doing.
    pub fn binding(&self, within: Duration) -> bool {
        if self.uncapped() {
            return false;
        }
        let bucket = self.state.lock_unpoisoned();
        bucket
            .held_until
            .is_some_and(|until| until + within >= Instant::now())
    }

    /// The rate in force now: the lower of `--bwlimit`'s and the fleet share.
    pub fn rate_now(&self) -> Rate {
        lower(self.limit.rate_now(), self.share())
    }

    /// Each socket's receive buffer under the cap: a quarter of a second of the highest rate,
    /// shared by `connections` (enough for that rate at round trips up to 250 ms), so the link
    /// carries the cap instead of bursts into kernel buffers that hide it. None without a cap
    /// or with an uncapped period, where the kernel's autotuning serves best.
    pub fn receive_buffer(&self, connections: usize) -> Option<usize> {
        let highest = self.limit.highest_rate()?;
        let per_connection = highest / 4 / connections.max(1) as u64;
        Some(per_connection.clamp(16 << 10, 4 << 20) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_passes_the_cap_per_second_whatever_the_chunks() {
        let bandwidth = Bandwidth::new(BwLimit::parse("1M").unwrap());
        let started = Instant::now();
        // 10 MiB in chunks of 100 KiB and of 3 MiB (larger than any burst), from two readers.
        let small = async {
            for _ in 0..51 {
                bandwidth.take(100 << 10).await;
            }
        };
        let large = async {
            for _ in 0..2 {
                bandwidth.take(3 << 20).await;
            }
        };
        tokio::join!(small, large);
        let bytes = 51.0 * f64::from(100u32 << 10) + 2.0 * f64::from(3u32 << 20);
        let seconds = started.elapsed().as_secs_f64();
        // Each chunk is charged on arrival and its debt waited off: the time is every byte
        // at the cap (the bucket starts empty).
        let expected = bytes / f64::from(1u32 << 20);
        assert!(
            (seconds - expected).abs() < 0.2,
            "{seconds} s for {bytes} bytes"
        );
        assert!(bandwidth.binding(Duration::from_millis(100)));
    }

    #[tokio::test(start_paused = true)]
    async fn off_never_waits() {
        let bandwidth = Bandwidth::new(BwLimit::parse("off").unwrap());
        let started = Instant::now();
        bandwidth.take(1 << 30).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(!bandwidth.binding(Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fleet_share_below_the_own_cap_binds_and_a_changed_share_applies_to_waiting_readers()
    {
        let bandwidth = Bandwidth::new(BwLimit::parse("4M").unwrap());
        bandwidth.set_share(Some(1 << 20));
        assert_eq!(bandwidth.rate_now(), Rate::Limited(1 << 20));
        let started = Instant::now();
        bandwidth.take(2 << 20).await;
        let seconds = started.elapsed().as_secs_f64();
        assert!(
            (seconds - 2.0).abs() < 0.15,
            "{seconds} s for 2 MiB at 1 MiB/s"
        );

        // A reader owing 4 MiB at 1 MiB/s; after a second the share rises to 3 MiB/s, so the
        // remaining 3 MiB take one more second, not three.
        let started = Instant::now();
        let raise = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            bandwidth.set_share(Some(3 << 20));
        };
        tokio::join!(bandwidth.take(4 << 20), raise);
        let seconds = started.elapsed().as_secs_f64();
        assert!((seconds - 2.0).abs() < 0.25, "{seconds} s");

        // Lifted: the own --bwlimit of 4 MiB/s is what remains.
        bandwidth.set_share(None);
        assert_eq!(bandwidth.rate_now(), Rate::Limited(4 << 20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_of_zero_holds_readers_until_a_share_is_given() {
        let bandwidth = Bandwidth::unlimited();
        bandwidth.set_share(Some(0));
        let started = Instant::now();
        let give = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            bandwidth.set_share(Some(1 << 20));
        };
        tokio::join!(bandwidth.take(1 << 20), give);
        let seconds = started.elapsed().as_secs_f64();
        assert!((5.9..6.3).contains(&seconds), "{seconds} s");
        assert!(bandwidth.binding(Duration::from_millis(200)));
        bandwidth.set_share(None);
        let started = Instant::now();
        bandwidth.take(1 << 30).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "no cap of either kind");
    }
}
