//! What recent requests tell about the link: their time to first byte and the rate their
//! bodies streamed at. Two decisions are made from it:
//!
//! - **Range size by time** ([`RequestStats::range_size`]): a range should stream for a few
//!   hundred milliseconds at the rate requests get, and for several first-byte latencies, so
//!   request overhead stays small while a few big objects still spread over many requests.
//!   On real S3 (about 25-95 MiB/s per connection, tens of milliseconds to first byte) that
//!   is the known sweet spot of 8–16 MiB; on a slower or scaled-down link it is smaller.
//! - **When a request is slow** ([`RequestStats::hedge_after`], [`RequestStats::slow_rate`]):
//!   a request whose first byte is later than a multiple of its peers' upper quartile (a few
//!   seconds before any is known), or whose body streams at under a third of their median, is
//!   asked again on another connection (see `fetch::part`).
//!
//! Samples live in two rings of the last [`RING`] requests; the quantiles are recomputed from
//! them at most every [`REFRESH`] samples, so the hot path reads cached numbers.

use std::sync::Mutex;
use std::time::Duration;

use common::sync::MutexExt;

/// Samples kept per ring.
const RING: usize = 256;
/// Samples between two recomputations of the cached figures.
const REFRESH: usize = 8;
/// Samples needed before the figures are trusted.
const MIN_SAMPLES: usize = 8;
/// Range size before anything is measured: small, so a slow link's first objects do not get
/// ranges that last many seconds. On a fast link the objects laid out before the first
/// measurements keep these small parts, but their requests span several (see
/// `fetch::layout`), so they cost no more requests.
pub const INITIAL_RANGE: u64 = 1 << 20;
/// Smallest range: below this, request overhead dominates on any link.
pub const MIN_RANGE: u64 = 256 << 10;
/// Largest range: beyond this, a few objects no longer spread over many connections.
pub const MAX_RANGE: u64 = 16 << 20;
/// How long a range should stream, at least.
pub const RANGE_TIME: Duration = Duration::from_millis(400);
/// ... and in first-byte latencies, at least.
const RANGE_LATENCIES: u32 = 4;
/// A first byte later than this multiple of the upper quartile is slow.
const FIRST_BYTE_SLOW: f64 = 4.0;
/// Never hedge a first byte sooner than this (a fast link's jitter is not a tail).
const FIRST_BYTE_FLOOR: Duration = Duration::from_millis(250);
/// Before latencies are known, a first byte this late is a tail on any S3 link.
pub const FIRST_BYTE_COLD: Duration = Duration::from_secs(3);
/// A body under this share of the median rate is slow.
const RATE_SLOW: f64 = 1.0 / 3.0;

#[derive(Debug, Default)]
struct Ring {
    values: Vec<f64>,
    next: usize,
}

impl Ring {
    fn push(&mut self, value: f64) {
        if self.values.len() < RING {
            self.values.push(value);
        } else {
            self.values[self.next] = value;
        }
        self.next = (self.next + 1) % RING;
    }

    fn quantile(&self, q: f64) -> Option<f64> {
        if self.values.len() < MIN_SAMPLES {
            return None;
        }
        let mut sorted = self.values.clone();
        sorted.sort_by(f64::total_cmp);
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        Some(sorted[index])
    }
}

/// The figures derived from the rings.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkFigures {
    /// Median time to first byte, seconds.
    pub first_byte_p50: Option<f64>,
    /// Upper quartile of the time to first byte, seconds.
    pub first_byte_p75: Option<f64>,
    /// Median rate of a request's body, bytes per second.
    pub rate_p50: Option<f64>,
}

#[derive(Debug, Default)]
struct Inner {
    first_byte: Ring,
    rate: Ring,
    since_refresh: usize,
    figures: LinkFigures,
}

impl Inner {
    fn refresh(&mut self) {
        self.since_refresh += 1;
        let complete = self.figures.first_byte_p50.is_some() && self.figures.rate_p50.is_some();
        // Until every figure is known, each sample may be the one that makes it known.
        if self.since_refresh < REFRESH && complete {
            return;
        }
        self.since_refresh = 0;
        self.figures = LinkFigures {
            first_byte_p50: self.first_byte.quantile(0.5),
            first_byte_p75: self.first_byte.quantile(0.75),
            rate_p50: self.rate.quantile(0.5),
        };
    }
}

/// Recent requests' first-byte latencies and body rates.
#[derive(Debug, Default)]
pub struct RequestStats {
    inner: Mutex<Inner>,
}

impl RequestStats {
    /// A request's response headers (its first byte) came after `latency`.
    pub fn first_byte(&self, latency: Duration) {
        let mut inner = self.inner.lock_unpoisoned();
        inner.first_byte.push(latency.as_secs_f64());
        inner.refresh();
    }

    /// A request's body streamed `bytes` in `streaming`. Short bodies say little about the
    /// rate and are left out.
    pub fn body(&self, bytes: u64, streaming: Duration) {
        if bytes < (64 << 10) || streaming < Duration::from_millis(1) {
            return;
        }
        let mut inner = self.inner.lock_unpoisoned();
        inner.rate.push(bytes as f64 / streaming.as_secs_f64());
        inner.refresh();
    }

    /// The current figures.
    pub fn figures(&self) -> LinkFigures {
        self.inner.lock_unpoisoned().figures
    }

    /// The range size that streams for [`RANGE_TIME`] and [`RANGE_LATENCIES`] first-byte
    /// latencies at the median rate, within [`MIN_RANGE`]..=[`MAX_RANGE`], in 64 KiB steps;
    /// [`INITIAL_RANGE`] until rates are known.
    pub fn range_size(&self) -> u64 {
        let figures = self.figures();
        let Some(rate) = figures.rate_p50 else {
            return INITIAL_RANGE;
        };
        let latency = Duration::from_secs_f64(figures.first_byte_p50.unwrap_or(0.0));
        let time = RANGE_TIME.max(latency * RANGE_LATENCIES);
        let bytes = (rate * time.as_secs_f64()) as u64;
        bytes.clamp(MIN_RANGE, MAX_RANGE).next_multiple_of(64 << 10)
    }

    /// How long a request may wait for its first byte before it is asked again elsewhere:
    /// a multiple of its peers' upper quartile, or [`FIRST_BYTE_COLD`] until latencies are
    /// known.
    pub fn hedge_after(&self) -> Duration {
        match self.figures().first_byte_p75 {
            Some(p75) => Duration::from_secs_f64(p75 * FIRST_BYTE_SLOW).max(FIRST_BYTE_FLOOR),
            None => FIRST_BYTE_COLD,
        }
    }

    /// The body rate under which a request is slow, bytes per second; `None` until rates are
    /// known.
    pub fn slow_rate(&self) -> Option<f64> {
        Some(self.figures().rate_p50? * RATE_SLOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(first_byte_ms: u64, rate_mib: f64) -> RequestStats {
        let stats = RequestStats::default();
        for _ in 0..32 {
            stats.first_byte(Duration::from_millis(first_byte_ms));
            stats.body((rate_mib * 1_048_576.0) as u64, Duration::from_secs(1));
        }
        stats
    }

    #[test]
    fn ranges_are_sized_by_time_to_the_known_sweet_spot_on_real_s3() {
        assert_eq!(RequestStats::default().range_size(), INITIAL_RANGE);
        // Real S3: ~60 MiB/s per connection, 30 ms to first byte: 15 MiB.
        let s3 = with(30, 60.0).range_size();
        assert!((8 << 20..=16 << 20).contains(&s3), "{s3}");
        // A scaled-down link: 2 MiB/s, 50 ms: 800 KiB.
        assert_eq!(with(50, 2.0).range_size(), 832 << 10);
        // A long latency makes ranges longer, never below the floor nor above the ceiling.
        assert!(with(400, 2.0).range_size() > 3 << 20);
        assert_eq!(with(5, 0.1).range_size(), MIN_RANGE);
        assert_eq!(with(5, 500.0).range_size(), MAX_RANGE);
    }

    #[test]
    fn slowness_is_judged_against_peers_with_a_floor() {
        assert_eq!(RequestStats::default().hedge_after(), FIRST_BYTE_COLD);
        assert_eq!(with(100, 2.0).hedge_after(), Duration::from_millis(400));
        assert_eq!(with(10, 2.0).hedge_after(), FIRST_BYTE_FLOOR);
        let slow = with(50, 3.0).slow_rate().unwrap();
        assert!((slow - 1_048_576.0).abs() < 1.0, "{slow}");
    }

    #[test]
    fn rates_are_known_from_the_eighth_sample_whatever_came_before() {
        let stats = RequestStats::default();
        for _ in 0..11 {
            stats.first_byte(Duration::from_millis(5));
        }
        for _ in 0..7 {
            stats.body(1 << 20, Duration::from_millis(250));
        }
        assert_eq!(stats.slow_rate(), None);
        stats.body(1 << 20, Duration::from_millis(250));
        assert!(stats.slow_rate().is_some());
    }

    #[test]
    fn a_tail_of_one_in_ten_does_not_move_the_threshold() {
        let stats = RequestStats::default();
        for i in 0..200 {
            let ms = if i % 10 == 0 { 10_000 } else { 50 };
            stats.first_byte(Duration::from_millis(ms));
        }
        let after = stats.hedge_after();
        assert!(after < Duration::from_secs(1), "{after:?}");
    }
}
