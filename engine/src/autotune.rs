//! Adaptive concurrency: how many requests to keep in flight, found by measuring.
//!
//! One S3 connection carries a few tens of MiB/s, and nobody knows their link's width: the
//! right number of requests in flight is the smallest that fills the link, and it is found by
//! hill climbing on the aggregate goodput (bytes received per second, over short windows),
//! as AnyBlob's controller and the AWS CRT do:
//!
//! - **Slow start.** From [`INITIAL_WINDOW`] the window doubles after every measurement in
//!   which goodput rose by at least [`SLOW_START_GAIN`] over the previous one.
//! - **Hold.** Once a doubling no longer pays, the window stays where it is (or goes back to
//!   where it was, if the doubling bought nothing at all).
//! - **Probe.** Every so often (sooner after a probe that paid, later after one that did not)
//!   the window grows by a quarter; it keeps the growth only if goodput rose by at least
//!   [`PROBE_GAIN`], otherwise it returns to where it was.
//! - **Congestion.** SlowDown, 503 and connection resets halve it (once per burst) and hold it
//!   for a second: the multiplicative decrease of AIMD. Then it doubles again up to three
//!   quarters of where it was, and probes beyond.
//!
//! A measurement counts only while demand filled the window (requests waiting, or every place
//! taken) for most of it: a window that is not used tells nothing about the link. Each change
//! of the window is followed by a settling time (a few first-byte latencies) before
//! measuring, so new requests have started streaming.
//!
//! This module is the decision only, a plain state machine fed with samples and the clock, so
//! its rules are tested without a network; `scheduler` feeds it every [`TICK`].

use std::time::{Duration, Instant};

/// How often the scheduler samples goodput for the controller.
pub const TICK: Duration = Duration::from_millis(100);
/// The window an autotuned engine starts with (or the maximum, if lower).
pub const INITIAL_WINDOW: usize = 32;
/// Goodput a doubling must add, in slow start, to keep doubling.
pub const SLOW_START_GAIN: f64 = 1.2;
/// Below this gain, a doubling bought nothing and is undone.
const NO_GAIN: f64 = 1.05;
/// Goodput a probe must add to be kept.
pub const PROBE_GAIN: f64 = 1.08;
/// How long a measurement lasts.
const MEASURE: Duration = Duration::from_millis(250);
/// Settling time after a change, at least; more with a long first-byte latency.
const SETTLE_MIN: Duration = Duration::from_millis(100);
/// ... and at most.
const SETTLE_MAX: Duration = Duration::from_secs(1);
/// Share of a measurement during which demand must have filled the window.
const BUSY_SHARE: f64 = 0.6;
/// First wait before probing, and after a probe that paid.
const PROBE_SOON: Duration = Duration::from_millis(500);
/// Wait after a probe that did not pay; doubles with each such probe, up to [`PROBE_LATE`].
const PROBE_AGAIN: Duration = Duration::from_secs(2);
/// Longest wait between probes.
const PROBE_LATE: Duration = Duration::from_secs(30);
/// Hold after a congestion cut before growing again.
const CONGESTION_HOLD: Duration = Duration::from_secs(1);
/// Minimum time between two cuts: one burst of throttling hits many requests at once.
pub const DECREASE_COOLDOWN: Duration = Duration::from_millis(500);

/// What the scheduler saw during one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Length of the tick.
    pub elapsed: Duration,
    /// Bytes received during it.
    pub bytes: u64,
    /// Time during it when demand filled the window.
    pub busy: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Doubling; `last` is the goodput of the previous window, `ceiling` where doubling
    /// stops (after a congestion cut: three quarters of the window before it).
    SlowStart {
        last: Option<f64>,
        ceiling: Option<f64>,
    },
    /// Staying; the next probe is due at `next_probe`, the one after a failure `backoff` later.
    Hold {
        next_probe: Instant,
        backoff: Duration,
    },
    /// Trying a larger window; `base` is the window and goodput before it.
    Probe {
        base_window: f64,
        base_goodput: f64,
        backoff: Duration,
    },
}

/// The controller.
#[derive(Clone, Debug)]
pub struct Autotune {
    window: f64,
    max: f64,
    phase: Phase,
    /// Goodput at the current window, once measured (refreshed while holding).
    goodput: Option<f64>,
    /// No measurement before this.
    settle_until: Instant,
    settle: Duration,
    /// The measurement under way.
    measured: Sample,
    last_cut: Option<Instant>,
}

impl Autotune {
    /// A controller starting at `initial` (at least 1), never above `max`.
    pub fn new(initial: usize, max: usize, now: Instant) -> Self {
        let max = max.max(1) as f64;
        Self {
            window: (initial.max(1) as f64).min(max),
            max,
            phase: Phase::SlowStart {
                last: None,
                ceiling: None,
            },
            goodput: None,
            settle_until: now + SETTLE_MIN,
            settle: SETTLE_MIN,
            measured: Sample::default(),
            last_cut: None,
        }
    }

    /// The window: requests admitted at once.
    pub fn window(&self) -> usize {
        (self.window.floor() as usize).max(1)
    }

    /// The settling time follows the first-byte latency: new requests need a few of those
    /// before they stream.
    pub fn set_first_byte_latency(&mut self, first_byte: Duration) {
        self.settle = (first_byte * 2).clamp(SETTLE_MIN, SETTLE_MAX);
    }

    fn change(&mut self, window: f64, now: Instant) {
        self.window = window.clamp(1.0, self.max);
        self.settle_until = now + self.settle;
        self.measured = Sample::default();
    }

    /// Feeds one tick; returns the new window when it changed.
    pub fn on_sample(&mut self, now: Instant, sample: Sample) -> Option<usize> {
        let before = self.window();
        if now < self.settle_until {
            return None;
        }
        self.measured.elapsed += sample.elapsed;
        self.measured.bytes += sample.bytes;
        self.measured.busy += sample.busy;
        if self.measured.elapsed < MEASURE {
            return None;
        }
        let measured = std::mem::take(&mut self.measured);
        if measured.busy.as_secs_f64() < BUSY_SHARE * measured.elapsed.as_secs_f64() {
            // Demand did not fill the window: nothing learnt about the link.
            return None;
        }
        let goodput = measured.bytes as f64 / measured.elapsed.as_secs_f64();
        self.decide(now, goodput);
        (self.window() != before).then(|| self.window())
    }

    fn decide(&mut self, now: Instant, goodput: f64) {
        match self.phase {
            Phase::SlowStart { last, ceiling } => {
                let rose = last.is_none_or(|last| goodput >= last * SLOW_START_GAIN);
                let limit = ceiling.unwrap_or(self.max).min(self.max);
                if rose && self.window < limit {
                    self.goodput = Some(goodput);
                    self.phase = Phase::SlowStart {
                        last: Some(goodput),
                        ceiling,
                    };
                    self.change((self.window * 2.0).min(limit), now);
                } else {
                    self.phase = Phase::Hold {
                        next_probe: now + PROBE_SOON,
                        backoff: PROBE_AGAIN,
                    };
                    match last {
                        // The last doubling bought nothing: the link was already full.
                        Some(last) if goodput < last * NO_GAIN => {
                            self.goodput = Some(last);
                            self.change(self.window / 2.0, now);
                        }
                        _ => self.goodput = Some(goodput),
                    }
                }
            }
            Phase::Hold {
                next_probe,
                backoff,
            } => {
                // Keep the reference current: the link may have changed.
                let reference = self.goodput.map_or(goodput, |g| g + 0.5 * (goodput - g));
                self.goodput = Some(reference);
                if now >= next_probe && self.window < self.max {
                    self.phase = Phase::Probe {
                        base_window: self.window,
                        base_goodput: reference,
                        backoff,
                    };
                    let grown = (self.window * 1.25).max(self.window + 2.0);
                    self.change(grown, now);
                }
            }
            Phase::Probe {
                base_window,
                base_goodput,
                backoff,
            } => {
                if goodput >= base_goodput * PROBE_GAIN {
                    self.goodput = Some(goodput);
                    self.phase = Phase::Hold {
                        next_probe: now + PROBE_SOON,
                        backoff: PROBE_AGAIN,
                    };
                } else {
                    self.goodput = Some(base_goodput);
                    self.phase = Phase::Hold {
                        next_probe: now + backoff,
                        backoff: (backoff * 2).min(PROBE_LATE),
                    };
                    self.change(base_window, now);
                }
            }
        }
    }

    /// The server pushed back (SlowDown, 503, resets): halve the window, at most once per
    /// [`DECREASE_COOLDOWN`], hold for [`CONGESTION_HOLD`], then double again up to three
    /// quarters of where it was (as TCP's slow start does up to its threshold) and probe
    /// carefully beyond. Returns the new window when it changed.
    pub fn on_congestion(&mut self, now: Instant) -> Option<usize> {
        if self
            .last_cut
            .is_some_and(|at| now.duration_since(at) < DECREASE_COOLDOWN)
        {
            return None;
        }
        self.last_cut = Some(now);
        let before = self.window();
        self.goodput = None;
        self.phase = Phase::SlowStart {
            last: None,
            ceiling: Some((self.window * 0.75).max(1.0)),
        };
        self.change(self.window / 2.0, now);
        self.settle_until = now + CONGESTION_HOLD;
        (self.window() != before).then(|| self.window())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A modelled link: each request in flight streams at `per_request` bytes/s until the
    /// link's `width` is shared among them.
    struct Link {
        per_request: f64,
        width: f64,
    }

    impl Link {
        fn goodput(&self, window: usize) -> f64 {
            (window as f64 * self.per_request).min(self.width)
        }
    }

    /// Runs the controller against `link` for `ticks` busy ticks, returning every window.
    fn drive(auto: &mut Autotune, link: &Link, start: Instant, ticks: u32) -> Vec<usize> {
        let mut windows = Vec::new();
        for tick in 1..=ticks {
            let now = start + TICK * tick;
            let bytes = (link.goodput(auto.window()) * TICK.as_secs_f64()) as u64;
            auto.on_sample(
                now,
                Sample {
                    elapsed: TICK,
                    bytes,
                    busy: TICK,
                },
            );
            windows.push(auto.window());
        }
        windows
    }

    #[test]
    fn the_window_climbs_to_fill_a_wide_link_and_stops_near_its_width() {
        let start = Instant::now();
        let mut auto = Autotune::new(INITIAL_WINDOW, 256, start);
        // 64 requests fill this link.
        let link = Link {
            per_request: 2.0,
            width: 128.0,
        };
        let windows = drive(&mut auto, &link, start, 100);
        let settled = *windows.last().unwrap();
        assert!(
            (64..=128).contains(&settled),
            "settled at {settled}: {windows:?}"
        );
        // Quickly: within two seconds of busy time it reached the width.
        assert!(windows[..20].iter().any(|w| *w >= 64), "{windows:?}");
        assert!(windows.iter().all(|w| *w <= 256));
    }

    #[test]
    fn the_window_never_passes_the_maximum() {
        let start = Instant::now();
        let mut auto = Autotune::new(INITIAL_WINDOW, 40, start);
        let link = Link {
            per_request: 1.0,
            width: 1e9,
        };
        let windows = drive(&mut auto, &link, start, 200);
        assert_eq!(windows.iter().max(), Some(&40));
        assert_eq!(*windows.last().unwrap(), 40);
    }

    #[test]
    fn a_narrow_link_keeps_the_window_where_it_started() {
        let start = Instant::now();
        let mut auto = Autotune::new(INITIAL_WINDOW, 256, start);
        // 8 requests already fill it: doubling gains nothing, probes are reverted.
        let link = Link {
            per_request: 2.0,
            width: 16.0,
        };
        let windows = drive(&mut auto, &link, start, 300);
        // One doubling is tried (and undone), probes of a quarter too; nothing more.
        assert!(
            windows.iter().all(|w| *w <= 2 * INITIAL_WINDOW),
            "grew on a full link: {windows:?}"
        );
        assert_eq!(*windows.last().unwrap(), INITIAL_WINDOW);
    }

    #[test]
    fn congestion_halves_once_per_burst_and_holds() {
        let start = Instant::now();
        let mut auto = Autotune::new(64, 256, start);
        assert_eq!(auto.on_congestion(start), Some(32));
        assert_eq!(auto.on_congestion(start + Duration::from_millis(10)), None);
        assert_eq!(auto.on_congestion(start + DECREASE_COOLDOWN * 2), Some(16));
        // Held: nothing changes within the hold, however good the link...
        let link = Link {
            per_request: 1.0,
            width: 1e9,
        };
        let after_cut = start + DECREASE_COOLDOWN * 2;
        let windows = drive(&mut auto, &link, after_cut, 9);
        assert!(windows.iter().all(|w| *w == 16), "{windows:?}");
        // ...then it doubles back to three quarters of where it was (24 of 32), not beyond,
        // and only probes carry it further.
        let windows = drive(&mut auto, &link, after_cut + TICK * 9, 12);
        assert!(windows.contains(&24), "{windows:?}");
        assert!(windows.iter().all(|w| *w <= 24 * 5 / 4 + 2), "{windows:?}");
    }

    #[test]
    fn an_idle_window_teaches_nothing() {
        let start = Instant::now();
        let mut auto = Autotune::new(INITIAL_WINDOW, 256, start);
        for tick in 1..50 {
            let changed = auto.on_sample(
                start + TICK * tick,
                Sample {
                    elapsed: TICK,
                    bytes: 1 << 30,
                    busy: TICK / 10,
                },
            );
            assert_eq!(changed, None);
        }
        assert_eq!(auto.window(), INITIAL_WINDOW);
    }

    #[test]
    fn a_link_that_widens_later_is_found_by_probing() {
        let start = Instant::now();
        let mut auto = Autotune::new(INITIAL_WINDOW, 256, start);
        let narrow = Link {
            per_request: 2.0,
            width: 32.0,
        };
        drive(&mut auto, &narrow, start, 50);
        let before = auto.window();
        let wide = Link {
            per_request: 2.0,
            width: 256.0,
        };
        let windows = drive(&mut auto, &wide, start + TICK * 50, 300);
        assert!(
            *windows.last().unwrap() >= 2 * before,
            "from {before}: {windows:?}"
        );
    }
}
