//! Admission of S3 requests: a priority queue under a window that adapts to the link.
//!
//! - **Priority.** Waiting requests are served lowest priority value first, then in arrival
//!   order. The engine gives earlier objects lower values, so objects finish one after another
//!   instead of all advancing together (fewer half-written temporary files at any moment).
//! - **The window** is how many requests are admitted at once, never more than the maximum
//!   (`--connections`, and what the memory budget holds). By default it is autotuned: a ticker
//!   feeds the goodput of every [`TICK`] to [`Autotune`], which climbs while goodput rises
//!   and cuts on congestion (see `autotune`). With `--no-autotune` it stays at the maximum,
//!   halved by SlowDown and regrown by `1/window` per success (plain AIMD).
//! - **Hedges** (a slow request asked again elsewhere, see `fetch::part`) are admitted beside
//!   the window, never past the maximum and never more than a quarter of the window at once;
//!   an autotuned window stops an eighth below the maximum to leave them room.
//! - **Memory.** Every admitted request also holds its read buffer's room in the
//!   [`BufferBudget`] while it runs.
//! - **Objects** are admitted by an [`AdmissionGate`] in request units, so that the objects in
//!   flight together fill the window and no more: a single-part object is one unit, a big
//!   one as many as it has ranges (up to the window). More connections therefore never mean
//!   more temporary files and disk reservations than the window can use.
//!
//! The window only decides admission; the hard cap on connections lives in the HTTP pool.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sync::MutexExt;
use tokio::sync::{Notify, oneshot};

use crate::autotune::{Autotune, Sample};
pub use crate::autotune::{DECREASE_COOLDOWN, INITIAL_WINDOW, TICK};
use crate::bandwidth::Bandwidth;
use crate::memory::{BufferBudget, Reservation};
use crate::request_stats::RequestStats;

/// An autotuned window stops this share of the cap below it, for hedges.
const HEDGE_SHARE: usize = 8;
/// Hedges at once, and requests dropped as slow per second, at most: this share of the
/// window (at least [`MIN_HEDGES`]). A tail hitting one request in ten, in bursts, needs
/// that many.
const HEDGE_WINDOW_SHARE: usize = 4;
/// Hedges allowed at once whatever the window.
const MIN_HEDGES: usize = 2;
/// Object units admitted beyond the window, so the next object is ready when a request ends.
const ADMIT_SLACK: usize = 2;
/// Windows' worth of object units admitted: objects start their first requests before the
/// window frees up for them (they wait in the queue, behind earlier objects' parts), so the
/// window never waits for an object to be admitted.
const ADMIT_WINDOWS: usize = 2;
/// Objects admitted whatever their units, so objects' serial work (the in-order MD5, the
/// fsync before promotion) overlaps even when one object's ranges could fill the window.
const MIN_OBJECTS: usize = 4;
/// Weight of a tick in the moving average of goodput (about half a second of ticks).
const GOODPUT_EWMA: f64 = 0.3;

/// The most an autotuned window may reach under a cap of `max` connections: an eighth of the
/// cap is kept for hedges (a cap of 16 or more), so a window at its cap can still race a
/// slow request instead of only dropping it.
pub fn autotuned_max(max: usize) -> usize {
    if max >= 16 {
        max - max / HEDGE_SHARE
    } else {
        max
    }
}

/// How many requests the engine keeps in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Concurrency {
    /// The hard maximum (`--connections`).
    pub max: usize,
    /// Find the window by measuring (the default); `false` pins it at `max`.
    pub autotune: bool,
}

/// Figures of the window for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConcurrencySnapshot {
    /// The window now.
    pub window: usize,
    /// The highest window so far.
    pub peak: usize,
    /// The maximum it may reach.
    pub max: usize,
    /// Requests in flight now (hedges included).
    pub in_flight: usize,
    /// Whether the window is autotuned.
    pub autotune: bool,
}

/// The shared admission queue.
#[derive(Debug)]
pub struct RequestScheduler {
    max: usize,
    autotune: bool,
    state: Mutex<State>,
    /// Bytes received, for the goodput the controller measures.
    received: AtomicU64,
    ticker_started: AtomicBool,
    /// Signalled whenever the window grows or a request ends (for the admission gate).
    room: Notify,
    stats: RequestStats,
    budget: Arc<BufferBudget>,
    /// `--bwlimit`: while it binds, goodput says nothing about the link, so the autotuner
    /// measures nothing and the window does not grow.
    bandwidth: Arc<Bandwidth>,
}

#[derive(Debug)]
struct State {
    in_flight: usize,
    hedges: usize,
    /// The fixed-mode window (AIMD).
    window: f64,
    auto: Option<Autotune>,
    last_decrease: Option<Instant>,
    next_seq: u64,
    waiters: BinaryHeap<Waiter>,
    busy_since: Option<Instant>,
    busy_total: Duration,
    peak_window: usize,
    /// Bytes per second received lately (a moving average over ticks).
    goodput: f64,
    /// Requests dropped as slow, and when their count started (see `try_ask_again`).
    asked_again: (usize, Option<Instant>),
}

impl State {
    fn allowed(&self, max: usize) -> usize {
        match &self.auto {
            Some(auto) => auto.window().clamp(1, max),
            None => (self.window.floor() as usize).clamp(1, max),
        }
    }

    /// Hands free capacity to the best waiters. A waiter whose future was dropped is skipped.
    fn grant(&mut self, max: usize) {
        while self.in_flight < self.allowed(max) {
            let Some(waiter) = self.waiters.pop() else {
                break;
            };
            if waiter.tx.send(()).is_ok() {
                self.in_flight += 1;
            }
        }
        let allowed = self.allowed(max);
        self.peak_window = self.peak_window.max(allowed);
    }

    /// Keeps the time during which demand filled the window.
    fn account(&mut self, max: usize, now: Instant) {
        let busy = !self.waiters.is_empty() || self.in_flight >= self.allowed(max);
        match (busy, self.busy_since) {
            (true, None) => self.busy_since = Some(now),
            (false, Some(since)) => {
                self.busy_total += now.saturating_duration_since(since);
                self.busy_since = None;
            }
            _ => {}
        }
    }

    fn busy_until(&self, now: Instant) -> Duration {
        self.busy_total
            + self
                .busy_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }
}

#[derive(Debug)]
struct Waiter {
    priority: u64,
    seq: u64,
    tx: oneshot::Sender<()>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.priority == other.priority && self.seq == other.seq
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        // BinaryHeap pops the greatest: the lowest priority value, then the oldest.
        other
            .priority
            .cmp(&self.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// Admission to send one request, with its buffer's room; dropping it frees both.
#[must_use = "the request slot is released when dropped"]
#[derive(Debug)]
pub struct Slot {
    scheduler: Arc<RequestScheduler>,
    hedge: bool,
    /// The request's buffer room (taken once the place is granted).
    room: Option<Reservation>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.room.take());
        self.scheduler.release(self.hedge);
    }
}

/// A queued acquisition; if it is dropped after being granted, it hands the place back.
struct Pending {
    rx: oneshot::Receiver<()>,
    scheduler: Arc<RequestScheduler>,
    granted: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        self.rx.close();
        if self.rx.try_recv().is_ok() {
            self.scheduler.release(false);
        }
    }
}

impl RequestScheduler {
    /// A scheduler of `concurrency` whose requests hold room in `budget`; the maximum is
    /// also bounded by the requests the budget holds.
    pub fn new(concurrency: Concurrency, budget: Arc<BufferBudget>) -> Arc<Self> {
        Self::capped(concurrency, budget, Arc::new(Bandwidth::unlimited()))
    }

    /// Like [`RequestScheduler::new`], under a `--bwlimit` cap.
    pub fn capped(
        concurrency: Concurrency,
        budget: Arc<BufferBudget>,
        bandwidth: Arc<Bandwidth>,
    ) -> Arc<Self> {
        let max = concurrency.max.max(1).min(budget.requests());
        let now = Instant::now();
        Arc::new(Self {
            max,
            autotune: concurrency.autotune,
            state: Mutex::new(State {
                in_flight: 0,
                hedges: 0,
                window: max as f64,
                auto: concurrency
                    .autotune
                    .then(|| Autotune::new(INITIAL_WINDOW, autotuned_max(max), now)),
                last_decrease: None,
                next_seq: 0,
                waiters: BinaryHeap::new(),
                busy_since: None,
                busy_total: Duration::ZERO,
                peak_window: 0,
                goodput: 0.0,
                asked_again: (0, None),
            }),
            received: AtomicU64::new(0),
            ticker_started: AtomicBool::new(false),
            room: Notify::new(),
            stats: RequestStats::default(),
            budget,
            bandwidth,
        })
    }

    /// A fixed window of `max` with a budget that never binds (tests, benches).
    pub fn fixed(max: usize) -> Arc<Self> {
        Self::new(
            Concurrency {
                max,
                autotune: false,
            },
            BufferBudget::new(u64::MAX / 4),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section is a few arithmetic steps: see `common::sync`.
        self.state.lock_unpoisoned()
    }

    /// Recent requests' latencies and rates.
    pub fn stats(&self) -> &RequestStats {
        &self.stats
    }

    /// The memory budget requests hold room in.
    pub fn budget(&self) -> &Arc<BufferBudget> {
        &self.budget
    }

    /// Counts bytes received, for the goodput the window is tuned on.
    pub fn received(&self, bytes: u64) {
        self.received.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Starts the autotune ticker once, from inside the runtime; it ends with the scheduler.
    fn start_ticker(self: &Arc<Self>) {
        if self.ticker_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let scheduler = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut last_at, mut last_bytes, mut last_busy) = (Instant::now(), 0, Duration::ZERO);
            loop {
                tick.tick().await;
                let Some(scheduler) = scheduler.upgrade() else {
                    return;
                };
                let now = Instant::now();
                let bytes = scheduler.received.load(Ordering::Relaxed);
                let first_byte = scheduler.stats.figures().first_byte_p50;
                let changed = {
                    let mut state = scheduler.lock();
                    let busy = state.busy_until(now);
                    let mut sample = Sample {
                        elapsed: now.saturating_duration_since(last_at),
                        bytes: bytes - last_bytes,
                        busy: busy.saturating_sub(last_busy),
                    };
                    if scheduler.bandwidth.binding(TICK) {
                        // The cap, not the window, limits goodput: not a measurement.
                        sample.busy = Duration::ZERO;
                    }
                    (last_at, last_bytes, last_busy) = (now, bytes, busy);
                    if !sample.elapsed.is_zero() {
                        let rate = sample.bytes as f64 / sample.elapsed.as_secs_f64();
                        state.goodput += GOODPUT_EWMA * (rate - state.goodput);
                    }
                    let Some(auto) = state.auto.as_mut() else {
                        continue;
                    };
                    if let Some(latency) = first_byte {
                        auto.set_first_byte_latency(Duration::from_secs_f64(latency));
                    }
                    let changed = auto.on_sample(now, sample);
                    if let Some(window) = changed {
                        tracing::debug!(window, "autotune: request window changed");
                        state.grant(scheduler.max);
                        state.account(scheduler.max, now);
                    }
                    changed
                };
                if changed.is_some() {
                    scheduler.room.notify_waiters();
                }
            }
        });
    }

    /// Waits for a place (and its buffer's room). Lower `priority` values go first.
    pub async fn acquire(self: &Arc<Self>, priority: u64) -> Slot {
        self.start_ticker();
        let rx = {
            let mut state = self.lock();
            if state.waiters.is_empty() && state.in_flight < state.allowed(self.max) {
                state.in_flight += 1;
                state.account(self.max, Instant::now());
                None
            } else {
                let (tx, rx) = oneshot::channel();
                let seq = state.next_seq;
                state.next_seq += 1;
                state.waiters.push(Waiter { priority, seq, tx });
                state.account(self.max, Instant::now());
                Some(rx)
            }
        };
        if let Some(rx) = rx {
            let mut pending = Pending {
                rx,
                scheduler: self.clone(),
                granted: false,
            };
            // The sender lives in the heap until granted; it is never dropped unsent while the
            // scheduler exists, and we hold an Arc to it.
            let _ = (&mut pending.rx).await;
            pending.granted = true;
        }
        let mut slot = Slot {
            scheduler: self.clone(),
            hedge: false,
            room: None,
        };
        // The window never passes what the budget holds, so this waits only for hedges'
        // room or for a reservation being handed back.
        slot.room = Some(self.budget.reserve_request().await);
        slot
    }

    /// A place for a hedged request, beside the window, if one is free now: never past the
    /// maximum, never more hedges than a quarter of the window.
    pub async fn try_acquire_hedge(self: &Arc<Self>) -> Option<Slot> {
        {
            let mut state = self.lock();
            let allowed_hedges = (state.allowed(self.max) / HEDGE_WINDOW_SHARE).max(MIN_HEDGES);
            if state.in_flight >= self.max || state.hedges >= allowed_hedges {
                return None;
            }
            state.in_flight += 1;
            state.hedges += 1;
        }
        let mut slot = Slot {
            scheduler: self.clone(),
            hedge: true,
            room: None,
        };
        slot.room = Some(self.budget.reserve_request().await);
        Some(slot)
    }

    fn release(&self, hedge: bool) {
        {
            let mut state = self.lock();
            state.in_flight = state.in_flight.saturating_sub(1);
            if hedge {
                state.hedges = state.hedges.saturating_sub(1);
            }
            state.grant(self.max);
            state.account(self.max, Instant::now());
        }
        self.room.notify_waiters();
    }

    /// A request succeeded: with a fixed window, grow it additively back to the maximum.
    pub fn on_success(&self) {
        let mut state = self.lock();
        if state.auto.is_none() && state.window < self.max as f64 {
            state.window = (state.window + 1.0 / state.window).min(self.max as f64);
            state.grant(self.max);
        }
    }

    /// The server pushed back (SlowDown, 503, a reset): cut the window, once per burst.
    pub fn on_congestion(&self) {
        let mut state = self.lock();
        let now = Instant::now();
        if let Some(auto) = state.auto.as_mut() {
            if let Some(window) = auto.on_congestion(now) {
                tracing::debug!(window, "congestion: request window lowered");
            }
            state.account(self.max, now);
            return;
        }
        if state
            .last_decrease
            .is_some_and(|last| now.duration_since(last) < DECREASE_COOLDOWN)
        {
            return;
        }
        state.last_decrease = Some(now);
        state.window = (state.window / 2.0).max(1.0);
        state.account(self.max, now);
        tracing::debug!(window = state.window, "slowdown: request window lowered");
    }

    /// What one request in flight gets of the link now: recent goodput over the requests in
    /// flight, bytes per second. A body far under it is slow against its peers of this
    /// moment, whatever they got before (a link that filled up slows every body at once).
    pub fn fair_share(&self) -> f64 {
        let state = self.lock();
        state.goodput / state.in_flight.max(1) as f64
    }

    /// Whether the link has room for more than it carries: nobody waits for a place and at
    /// most half the window is in use (the end of a run, or of a burst of work).
    pub fn has_room(&self) -> bool {
        let state = self.lock();
        state.waiters.is_empty() && state.in_flight * 2 <= state.allowed(self.max)
    }

    /// Whether a slow request may be dropped and asked again now: at most a quarter of the
    /// window (at least [`MIN_HEDGES`]) per second, so a misjudgement never empties the link.
    pub fn try_ask_again(&self) -> bool {
        let mut state = self.lock();
        let allowed = (state.allowed(self.max) / HEDGE_WINDOW_SHARE).max(MIN_HEDGES);
        let now = Instant::now();
        let (count, since) = &mut state.asked_again;
        if since.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            *count = 0;
            *since = Some(now);
        }
        if *count >= allowed {
            return false;
        }
        *count += 1;
        true
    }

    /// Requests admitted at once right now.
    pub fn window(&self) -> usize {
        let state = self.lock();
        state.allowed(self.max)
    }

    /// Requests in flight right now.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// The most the window may reach: `--connections`, or what the memory budget holds.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The window's figures.
    pub fn snapshot(&self) -> ConcurrencySnapshot {
        let state = self.lock();
        let window = state.allowed(self.max);
        ConcurrencySnapshot {
            window,
            peak: state.peak_window.max(window),
            max: self.max,
            in_flight: state.in_flight,
            autotune: self.autotune,
        }
    }
}

/// Admits objects in request units so those in flight together fill the window (see the
/// module doc); shared by every batch of one mirrorer, `batches` windows' worth.
#[derive(Debug)]
pub struct AdmissionGate {
    scheduler: Arc<RequestScheduler>,
    batches: usize,
    /// Units in use, and objects in flight.
    used: Mutex<(usize, usize)>,
}

/// An admitted object's units: one is handed back as each of its parts completes (so an
/// object waiting on its last, slow ranges holds up no other), the rest when dropped.
#[must_use = "the object's units are released when dropped"]
#[derive(Debug)]
pub struct Admitted {
    gate: Arc<AdmissionGate>,
    units: std::sync::atomic::AtomicUsize,
}

impl Admitted {
    /// One of the object's requests is done for good.
    pub fn part_done(&self) {
        if self
            .units
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_sub(1))
            .is_ok()
        {
            self.gate.release(1);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let left = *self.units.get_mut();
        {
            let mut used = self.gate.used.lock_unpoisoned();
            used.1 = used.1.saturating_sub(1);
        }
        self.gate.release(left);
    }
}

impl AdmissionGate {
    /// A gate over `scheduler`'s window, `batches` times over.
    pub fn new(scheduler: Arc<RequestScheduler>, batches: usize) -> Arc<Self> {
        Arc::new(Self {
            scheduler,
            batches: batches.max(1),
            used: Mutex::new((0, 0)),
        })
    }

    fn capacity(&self) -> usize {
        (ADMIT_WINDOWS * self.scheduler.window() + ADMIT_SLACK) * self.batches
    }

    fn release(&self, units: usize) {
        {
            let mut used = self.used.lock_unpoisoned();
            used.0 = used.0.saturating_sub(units);
        }
        self.scheduler.room.notify_waiters();
    }

    /// Waits until an object of `units` requests fits, or fewer than [`MIN_OBJECTS`] are in
    /// flight.
    pub async fn admit(self: &Arc<Self>, units: usize) -> Arc<Admitted> {
        loop {
            let room = self.scheduler.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let capacity = self.capacity();
                let units = units.clamp(1, capacity);
                let mut used = self.used.lock_unpoisoned();
                if used.1 < MIN_OBJECTS || used.0 + units <= capacity {
                    used.0 += units;
                    used.1 += 1;
                    return Arc::new(Admitted {
                        gate: self.clone(),
                        units: units.into(),
                    });
                }
            }
            room.await;
        }
    }

    /// Units in use now.
    pub fn used(&self) -> usize {
        self.used.lock_unpoisoned().0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admits_up_to_the_window_and_serves_priorities_in_order() {
        let scheduler = RequestScheduler::fixed(2);
        let a = scheduler.acquire(5).await;
        let b = scheduler.acquire(5).await;
        assert_eq!(scheduler.in_flight(), 2);

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for priority in [9u64, 3, 7] {
            let scheduler = scheduler.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let slot = scheduler.acquire(priority).await;
                tx.send(priority).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(slot);
            });
        }
        // Let the three queue up behind the two held places.
        while scheduler.lock().waiters.len() < 3 {
            tokio::task::yield_now().await;
        }
        drop(a);
        drop(b);
        let order: Vec<u64> = vec![
            rx.recv().await.unwrap(),
            rx.recv().await.unwrap(),
            rx.recv().await.unwrap(),
        ];
        assert_eq!(order, [3, 7, 9]);
    }

    #[tokio::test]
    async fn slowdown_halves_once_per_burst_and_success_recovers_gradually() {
        let scheduler = RequestScheduler::fixed(16);
        scheduler.on_congestion();
        scheduler.on_congestion(); // same burst: ignored
        assert_eq!(scheduler.window(), 8);
        scheduler.lock().last_decrease =
            Some(Instant::now().checked_sub(DECREASE_COOLDOWN * 2).unwrap());
        scheduler.on_congestion();
        assert_eq!(scheduler.window(), 4);
        // Additive increase: about one more place per window's worth of successes.
        for _ in 0..3 {
            scheduler.on_success();
        }
        assert_eq!(scheduler.window(), 4, "grew faster than additively");
        for _ in 0..3 {
            scheduler.on_success();
        }
        assert_eq!(scheduler.window(), 5);
        for _ in 0..1000 {
            scheduler.on_success();
        }
        assert_eq!(scheduler.window(), 16);
    }

    #[tokio::test]
    async fn a_lower_window_holds_back_new_requests() {
        let scheduler = RequestScheduler::fixed(4);
        scheduler.on_congestion(); // window 2
        let _a = scheduler.acquire(0).await;
        let _b = scheduler.acquire(0).await;
        let third = tokio::time::timeout(Duration::from_millis(50), scheduler.acquire(0)).await;
        assert!(
            third.is_err(),
            "a third request was admitted with a window of 2"
        );
    }

    #[tokio::test]
    async fn a_cancelled_waiter_does_not_leak_its_place() {
        let scheduler = RequestScheduler::fixed(1);
        let held = scheduler.acquire(0).await;
        let waiting = tokio::time::timeout(Duration::from_millis(20), scheduler.acquire(0)).await;
        assert!(waiting.is_err());
        drop(held);
        assert_eq!(scheduler.in_flight(), 0);
        let again = tokio::time::timeout(Duration::from_millis(50), scheduler.acquire(0)).await;
        assert!(again.is_ok(), "the place was leaked");
    }

    #[tokio::test]
    async fn an_autotuned_window_starts_low_and_the_budget_bounds_the_maximum() {
        let budget = BufferBudget::new(64 * 2 * crate::memory::PER_REQUEST);
        let scheduler = RequestScheduler::new(
            Concurrency {
                max: 256,
                autotune: true,
            },
            budget.clone(),
        );
        assert_eq!(scheduler.max(), 64, "the budget holds 64 requests");
        assert_eq!(autotuned_max(64), 56, "an eighth is kept for hedges");
        assert_eq!(autotuned_max(8), 8, "small caps keep no room");
        assert_eq!(scheduler.window(), INITIAL_WINDOW);
        let slots: Vec<Slot> =
            futures_util::future::join_all((0..INITIAL_WINDOW).map(|_| scheduler.acquire(0))).await;
        assert_eq!(
            budget.reserved(),
            INITIAL_WINDOW as u64 * crate::memory::PER_REQUEST
        );
        // Autotuned: a congestion signal halves the window.
        scheduler.on_congestion();
        assert_eq!(scheduler.window(), INITIAL_WINDOW / 2);
        drop(slots);
        assert_eq!(budget.reserved(), 0);
    }

    #[tokio::test]
    async fn hedges_go_beside_the_window_but_never_past_the_maximum() {
        let scheduler = RequestScheduler::fixed(4);
        let held: Vec<Slot> =
            futures_util::future::join_all((0..3).map(|_| scheduler.acquire(0))).await;
        let hedge = scheduler.try_acquire_hedge().await;
        assert!(hedge.is_some(), "a hedge found no room below the maximum");
        assert!(
            scheduler.try_acquire_hedge().await.is_none(),
            "a hedge passed the maximum"
        );
        drop(hedge);
        drop(held);
        assert_eq!(scheduler.in_flight(), 0);
    }

    #[tokio::test]
    async fn objects_are_admitted_until_their_units_fill_the_window() {
        let scheduler = RequestScheduler::fixed(8);
        let gate = AdmissionGate::new(scheduler.clone(), 1);
        // Capacity: two windows of 8, plus slack 2 = 18 units. The first four objects get in
        // whatever their size (a big one counts the whole capacity).
        let mut held = vec![gate.admit(1000).await];
        for _ in 0..3 {
            held.push(gate.admit(6).await);
        }
        assert_eq!(gate.used(), 18 + 18);
        let blocked = tokio::time::timeout(Duration::from_millis(50), gate.admit(1)).await;
        assert!(
            blocked.is_err(),
            "admitted past the window with four objects in"
        );
        drop(held.remove(0));
        assert_eq!(gate.used(), 18);
        let blocked = tokio::time::timeout(Duration::from_millis(50), gate.admit(1)).await;
        assert!(
            blocked.is_ok() && gate.used() == 19,
            "fewer than four objects are in"
        );
        // Parts done give their units back one by one, and the next object gets in.
        drop(blocked);
        let object = held.pop().unwrap();
        object.part_done();
        object.part_done();
        assert_eq!(gate.used(), 16);
        for _ in 0..10 {
            object.part_done(); // more parts than units: nothing more to give back
        }
        assert_eq!(gate.used(), 12);
        drop(object);
        drop(held);
        assert_eq!(gate.used(), 0);
    }
}
