//! A wide-area network in front of the bench server, cheap enough to share two cores with the
//! clients it measures. Four pieces, each a few atomics or one mutex:
//!
//! - [`Link`]: ONE shared link that carries the body bytes of every connection on every listen
//!   address (`--link-rate`). It is a virtual-time FIFO: a chunk reserves `len / rate` of link
//!   time from `max(now, free_at)`, moves `free_at` past it, and is written once its slot has
//!   ended. A connection has at most one chunk reserved at a time, so N busy connections queue
//!   one chunk each and each gets about link / N. A few milliseconds of credit absorb the
//!   oversleep of `nanosleep`, so an idle link is not lost to timer slack.
//! - [`Pacer`]: one response body under both limits: the connection's own ceiling
//!   (`--conn-rate`, times `--slow-factor` on the slow front-end) counted from the first body
//!   byte, then a slot on the link. Chunks are at most 64 KiB, so both are smooth.
//! - [`Tail`]: a fraction of object GETs wait longer before their first byte (`--tail-fraction`,
//!   `--tail-delay-ms`), picked by a hash of the seed and the GET's number since the last
//!   `POST /_stats`, so every client meets the same sequence.
//! - [`Frontend`]: the listen addresses (the front-ends a client may be given), with counters,
//!   one of them possibly slow; a round-robin listener hands its i-th connection to front-end
//!   i mod n, as DNS rotation would for a client that knows one name.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Largest body write when any pacing applies.
pub const CHUNK: usize = 64 << 10;

/// Link time a link that fell idle may still spend at once: covers a sleep's overshoot.
const LINK_CREDIT: Duration = Duration::from_millis(4);

/// One link shared by every connection (see the module doc).
pub struct Link {
    /// Bytes per second.
    rate: u64,
    /// When the link has carried everything reserved so far.
    free_at: Mutex<Instant>,
}

impl Link {
    /// A link of `rate` bytes per second (> 0).
    pub fn new(rate: u64) -> Self {
        Self {
            rate: rate.max(1),
            free_at: Mutex::new(Instant::now()),
        }
    }

    /// Reserves the link for `bytes` and returns when they have crossed it.
    pub fn reserve(&self, bytes: usize) -> Instant {
        let length = Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        let now = Instant::now();
        let earliest = now.checked_sub(LINK_CREDIT).unwrap_or(now);
        let mut free_at = self
            .free_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = (*free_at).max(earliest);
        *free_at = start + length;
        *free_at
    }
}

/// Paces one response body: the connection's ceiling, then the shared link.
pub struct Pacer<'a> {
    /// The connection's ceiling in bytes per second (0: none).
    rate: u64,
    link: Option<&'a Link>,
    started: Instant,
    sent: u64,
}

impl<'a> Pacer<'a> {
    /// A body starting now under a ceiling of `rate` (0: none) and maybe a shared link.
    pub fn new(rate: u64, link: Option<&'a Link>) -> Self {
        Self {
            rate,
            link,
            started: Instant::now(),
            sent: 0,
        }
    }

    /// How much to write next, out of `want`.
    pub fn chunk(&self, want: usize) -> usize {
        if self.rate == 0 && self.link.is_none() {
            want
        } else {
            want.min(CHUNK)
        }
    }

    /// Sleeps until `bytes` more may have gone out: first the time the connection would have
    /// taken to carry them (never faster than its ceiling from the first byte), then their slot
    /// on the shared link.
    pub fn wait(&mut self, bytes: usize) {
        self.sent += bytes as u64;
        if self.rate > 0 {
            let due = Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
            if let Some(early) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(early);
            }
        }
        if let Some(link) = self.link {
            let done = link.reserve(bytes);
            if let Some(early) = done.checked_duration_since(Instant::now()) {
                std::thread::sleep(early);
            }
        }
    }
}

/// The long tail: which object GETs wait longer before their first byte.
pub struct Tail {
    /// Share of object GETs delayed, in [0, 1].
    fraction: f64,
    /// How much longer they wait.
    delay: Duration,
    seed: u64,
    /// Object GETs seen since the last restart.
    next: AtomicU64,
    /// Object GETs delayed since the last restart.
    delayed: AtomicU64,
}

impl Tail {
    /// Delays `fraction` of object GETs by `delay`, picked by `seed`.
    pub fn new(fraction: f64, delay: Duration, seed: u64) -> Self {
        Self {
            fraction: fraction.clamp(0.0, 1.0),
            delay,
            seed,
            next: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
        }
    }

    /// No tail.
    #[cfg(test)]
    pub fn none() -> Self {
        Self::new(0.0, Duration::ZERO, 1)
    }

    /// The extra wait of the next object GET, if it is one of the delayed ones.
    pub fn pick(&self) -> Option<Duration> {
        if self.fraction <= 0.0 || self.delay.is_zero() {
            return None;
        }
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let draw = (splitmix64(self.seed ^ number.wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 11)
            as f64
            / (1u64 << 53) as f64;
        (draw < self.fraction).then(|| {
            self.delayed.fetch_add(1, Ordering::Relaxed);
            self.delay
        })
    }

    /// Object GETs delayed since the last restart.
    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }

    /// Starts the sequence again (each client meets the same delayed GETs).
    pub fn restart(&self) {
        self.next.store(0, Ordering::Relaxed);
        self.delayed.store(0, Ordering::Relaxed);
    }
}

/// A stateless 64-bit mix: consecutive inputs give independent-looking outputs.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One front-end address and what it served since the last `POST /_stats`.
pub struct Frontend {
    /// The listen address, as `/_stats` names it.
    pub addr: String,
    /// Connections here get the slow factor times the connection ceiling.
    pub slow: bool,
    /// Connections accepted (directly or handed over by the round-robin listener).
    pub accepted: AtomicU64,
    /// Object GETs.
    pub get: AtomicU64,
    /// Body bytes of object GETs.
    pub body_bytes: AtomicU64,
}

impl Frontend {
    /// A front-end at `addr`.
    pub fn new(addr: String, slow: bool) -> Self {
        Self {
            addr,
            slow,
            accepted: AtomicU64::new(0),
            get: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
        }
    }

    /// Zeroes the counters.
    pub fn restart(&self) {
        for counter in [&self.accepted, &self.get, &self.body_bytes] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// Which front-end a listener's connections belong to.
pub enum Route {
    /// Always this one (an index into the front-ends).
    Fixed(usize),
    /// The i-th connection to front-end i mod n.
    RoundRobin(AtomicUsize),
}

impl Route {
    /// The front-end of the next connection, out of `count`.
    pub fn next(&self, count: usize) -> usize {
        match self {
            Self::Fixed(index) => *index,
            Self::RoundRobin(counter) => counter.fetch_add(1, Ordering::Relaxed) % count.max(1),
        }
    }
}

/// `{"addr":{"accepted":..,"get":..,"body_bytes":..},..}`.
pub fn frontends_json(frontends: &[Frontend]) -> String {
    let fields: Vec<String> = frontends
        .iter()
        .map(|f| {
            format!(
                "\"{}\":{{\"accepted\":{},\"get\":{},\"body_bytes\":{},\"slow\":{}}}",
                f.addr,
                f.accepted.load(Ordering::Relaxed),
                f.get.load(Ordering::Relaxed),
                f.body_bytes.load(Ordering::Relaxed),
                f.slow
            )
        })
        .collect();
    format!("{{{}}}", fields.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_picks_about_its_fraction_and_the_same_ones_after_a_restart() {
        let tail = Tail::new(0.1, Duration::from_secs(1), 7);
        let first: Vec<bool> = (0..10_000).map(|_| tail.pick().is_some()).collect();
        let delayed = tail.delayed();
        assert!((800..1200).contains(&delayed), "{delayed}");
        tail.restart();
        let again: Vec<bool> = (0..10_000).map(|_| tail.pick().is_some()).collect();
        assert_eq!(first, again);
        assert!(Tail::none().pick().is_none());
    }

    #[test]
    fn link_slots_follow_each_other_at_the_rate() {
        let link = Link::new(1 << 20);
        let now = Instant::now();
        let first = link.reserve(512 << 10);
        let second = link.reserve(512 << 10);
        // Two half-MiB slots back to back: the second ends a second after the first began.
        assert!(second.duration_since(first) >= Duration::from_millis(499));
        assert!(second.duration_since(now) >= Duration::from_millis(990));
    }

    #[test]
    fn round_robin_cycles_over_the_front_ends() {
        let route = Route::RoundRobin(AtomicUsize::new(0));
        let picked: Vec<usize> = (0..8).map(|_| route.next(4)).collect();
        assert_eq!(picked, [0, 1, 2, 3, 0, 1, 2, 3]);
        assert_eq!(Route::Fixed(2).next(4), 2);
    }
}
