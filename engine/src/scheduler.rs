//! Admission of S3 requests: a priority queue with an AIMD window.
//!
//! - **Priority.** Waiting requests are served lowest priority value first, then in arrival
//!   order. The engine gives earlier objects lower values, so objects finish one after another
//!   instead of all advancing together (fewer half-written temporary files at any moment).
//! - **AIMD.** The window starts at the connection cap. A `SlowDown` halves it (at most once per
//!   [`DECREASE_COOLDOWN`], since one burst of throttling hits many requests at once); each
//!   success grows it by `1/window`, about one request per window of successes, until it is back
//!   at the cap.
//!
//! The window only decides admission; the hard cap on connections lives in the HTTP pool.

use common::sync::MutexExt;
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Minimum time between two multiplicative decreases.
pub const DECREASE_COOLDOWN: Duration = Duration::from_millis(500);

/// The shared admission queue.
#[derive(Debug)]
pub struct RequestScheduler {
    max: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    in_flight: usize,
    window: f64,
    last_decrease: Option<Instant>,
    next_seq: u64,
    waiters: BinaryHeap<Waiter>,
}

impl State {
    fn allowed(&self, max: usize) -> usize {
        (self.window.floor() as usize).clamp(1, max)
    }

    /// Hands free capacity to the best waiters. A waiter whose future was dropped is skipped.
    fn grant(&mut self, max: usize) {
        while self.in_flight < self.allowed(max) {
            let Some(waiter) = self.waiters.pop() else {
                return;
            };
            if waiter.tx.send(()).is_ok() {
                self.in_flight += 1;
            }
        }
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

/// Admission to send one request; dropping it frees the place.
#[must_use = "the request slot is released when dropped"]
#[derive(Debug)]
pub struct Slot {
    scheduler: Arc<RequestScheduler>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.scheduler.release();
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
            self.scheduler.release();
        }
    }
}

impl RequestScheduler {
    /// A scheduler admitting up to `max` requests at once.
    pub fn new(max: usize) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(Self {
            max,
            state: Mutex::new(State {
                in_flight: 0,
                window: max as f64,
                last_decrease: None,
                next_seq: 0,
                waiters: BinaryHeap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every critical section is a few arithmetic steps: see `common::sync`.
        self.state.lock_unpoisoned()
    }

    /// Waits for a place. Lower `priority` values go first.
    pub async fn acquire(self: &Arc<Self>, priority: u64) -> Slot {
        let rx = {
            let mut state = self.lock();
            if state.waiters.is_empty() && state.in_flight < state.allowed(self.max) {
                state.in_flight += 1;
                return Slot {
                    scheduler: self.clone(),
                };
            }
            let (tx, rx) = oneshot::channel();
            let seq = state.next_seq;
            state.next_seq += 1;
            state.waiters.push(Waiter { priority, seq, tx });
            rx
        };
        let mut pending = Pending {
            rx,
            scheduler: self.clone(),
            granted: false,
        };
        // The sender lives in the heap until granted; it is never dropped unsent while the
        // scheduler exists, and we hold an Arc to it.
        let _ = (&mut pending.rx).await;
        pending.granted = true;
        Slot {
            scheduler: self.clone(),
        }
    }

    fn release(&self) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        state.grant(self.max);
    }

    /// A request succeeded: grow the window additively.
    pub fn on_success(&self) {
        let mut state = self.lock();
        if state.window < self.max as f64 {
            state.window = (state.window + 1.0 / state.window).min(self.max as f64);
            state.grant(self.max);
        }
    }

    /// The server said SlowDown: halve the window, once per burst.
    pub fn on_throttled(&self) {
        let mut state = self.lock();
        let now = Instant::now();
        if state
            .last_decrease
            .is_some_and(|last| now.duration_since(last) < DECREASE_COOLDOWN)
        {
            return;
        }
        state.last_decrease = Some(now);
        state.window = (state.window / 2.0).max(1.0);
        tracing::debug!(window = state.window, "slowdown: request window lowered");
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

    /// The cap the window recovers to.
    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admits_up_to_the_window_and_serves_priorities_in_order() {
        let scheduler = RequestScheduler::new(2);
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
        let scheduler = RequestScheduler::new(16);
        scheduler.on_throttled();
        scheduler.on_throttled(); // same burst: ignored
        assert_eq!(scheduler.window(), 8);
        scheduler.lock().last_decrease =
            Some(Instant::now().checked_sub(DECREASE_COOLDOWN * 2).unwrap());
        scheduler.on_throttled();
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
        let scheduler = RequestScheduler::new(4);
        scheduler.on_throttled(); // window 2
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
        let scheduler = RequestScheduler::new(1);
        let held = scheduler.acquire(0).await;
        let waiting = tokio::time::timeout(Duration::from_millis(20), scheduler.acquire(0)).await;
        assert!(waiting.is_err());
        drop(held);
        assert_eq!(scheduler.in_flight(), 0);
        let again = tokio::time::timeout(Duration::from_millis(50), scheduler.acquire(0)).await;
        assert!(again.is_ok(), "the place was leaked");
    }
}
