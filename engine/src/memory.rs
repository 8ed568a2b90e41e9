//! The memory budget of in-flight buffers (`--memory-budget`).
//!
//! With hundreds of connections, what a download holds in memory is mostly buffers in flight:
//! each request's connection reads into a buffer of up to [`transport::pool::READ_BUFFER`],
//! and the chunks it read wait in their file's writer queue until written. One budget bounds
//! both, split in two halves so neither can starve the other:
//!
//! - **Connections.** Every request in flight holds a [`PER_REQUEST`] reservation (its read
//!   buffer) from the first half, taken before it is sent and held until it ends: when that
//!   half is spent, requests wait, whatever the concurrency allows. So a budget supports
//!   `budget / (2 × PER_REQUEST)` requests at once, which is how the default `--connections`
//!   follows from the default budget.
//! - **Chunks.** Every chunk read from a connection holds its length from the second half
//!   until the writer has written it: when the disk is slower than the network, readers wait
//!   (the bytes stay in the kernel's socket buffers, not in ours).
//!
//! The budget keeps its own accounting (reserved now, highest reserved), which the tests
//! assert on rather than on the process's RSS. The direct-I/O stages (at most 24 of 2 MiB per
//! engine, see `direct_io`) are outside it.
//!
//! The default is a share of the machine's memory (or of the cgroup's limit, in a container):
//! [`default_budget`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What one request in flight holds: its connection's read buffer.
pub const PER_REQUEST: u64 = transport::pool::READ_BUFFER as u64;
/// Share of the machine's memory the default budget takes.
pub const DEFAULT_SHARE: u64 = 8;
/// The default budget is never above this ...
pub const DEFAULT_MAX: u64 = 1 << 30;
/// ... nor below this.
pub const DEFAULT_MIN: u64 = 64 << 20;

/// The budget's granularity: permits count KiB, so budgets up to terabytes fit a semaphore.
const UNIT: u64 = 1 << 10;

/// One half of the budget.
#[derive(Debug)]
struct Half {
    semaphore: Arc<Semaphore>,
    capacity: u64,
}

impl Half {
    fn new(capacity: u64) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new((capacity / UNIT) as usize)),
            capacity,
        }
    }
}

/// A budget of bytes for buffers in flight.
#[derive(Debug)]
pub struct BufferBudget {
    requests: Half,
    chunks: Half,
    reserved: AtomicU64,
    peak: AtomicU64,
}

/// Bytes held from a [`BufferBudget`] until dropped.
#[must_use = "the reservation is returned when dropped"]
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    budget: Arc<BufferBudget>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget
            .reserved
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl BufferBudget {
    /// A budget of `bytes`, at least enough for one request and its chunk.
    pub fn new(bytes: u64) -> Arc<Self> {
        let half = (bytes / 2).max(PER_REQUEST);
        Arc::new(Self {
            requests: Half::new(half),
            chunks: Half::new(half),
            reserved: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        })
    }

    async fn reserve(self: &Arc<Self>, half: &Half, bytes: u64) -> Reservation {
        let units = bytes.div_ceil(UNIT).clamp(1, half.capacity / UNIT) as u32;
        let permit = half
            .semaphore
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the budget's semaphores are never closed");
        let held = u64::from(units) * UNIT;
        let now = self.reserved.fetch_add(held, Ordering::Relaxed) + held;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Reservation {
            _permit: permit,
            budget: self.clone(),
            bytes: held,
        }
    }

    /// Waits until one more request fits, and holds its buffer's room.
    pub async fn reserve_request(self: &Arc<Self>) -> Reservation {
        self.reserve(&self.requests, PER_REQUEST).await
    }

    /// Waits until a chunk of `bytes` fits, and holds it until dropped (once written).
    pub async fn reserve_chunk(self: &Arc<Self>, bytes: u64) -> Reservation {
        self.reserve(&self.chunks, bytes).await
    }

    /// The budget.
    pub fn capacity(&self) -> u64 {
        self.requests.capacity + self.chunks.capacity
    }

    /// Requests in flight the budget can hold at once.
    pub fn requests(&self) -> usize {
        (self.requests.capacity / PER_REQUEST).max(1) as usize
    }

    /// Bytes reserved now.
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Relaxed)
    }

    /// The most ever reserved at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

/// The default budget: [`DEFAULT_SHARE`]th of the memory this process may use (the cgroup's
/// limit in a container, the machine's otherwise), within [`DEFAULT_MIN`]..=[`DEFAULT_MAX`].
pub fn default_budget() -> u64 {
    let memory = memory_limit().unwrap_or(8 << 30);
    (memory / DEFAULT_SHARE).clamp(DEFAULT_MIN, DEFAULT_MAX)
}

/// The memory this process may use: the cgroup v2 limit when one is set, else the machine's.
pub fn memory_limit() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .map(|kib| kib * 1024)
        });
    match (cgroup, machine) {
        (Some(limit), Some(total)) => Some(limit.min(total)),
        (limit, total) => limit.or(total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn requests_wait_for_room_and_the_accounting_never_passes_the_budget() {
        let budget = BufferBudget::new(8 * PER_REQUEST);
        assert_eq!(budget.requests(), 4);
        let held: Vec<Reservation> =
            futures_util::future::join_all((0..4).map(|_| budget.reserve_request())).await;
        assert_eq!(budget.reserved(), 4 * PER_REQUEST);
        let fifth = tokio::time::timeout(Duration::from_millis(50), budget.reserve_request()).await;
        assert!(fifth.is_err(), "a fifth request fit into a budget of four");
        drop(held);
        assert_eq!(budget.reserved(), 0);
        let _again = budget.reserve_request().await;
        assert_eq!(budget.peak(), 4 * PER_REQUEST);
        // Chunks have their own half: four requests in flight never keep a chunk out.
        let _chunks: Vec<Reservation> =
            futures_util::future::join_all((0..4).map(|_| budget.reserve_chunk(PER_REQUEST))).await;
        let more = tokio::time::timeout(Duration::from_millis(50), budget.reserve_chunk(1)).await;
        assert!(more.is_err(), "chunks passed their half of the budget");
        assert!(budget.peak() <= budget.capacity());
    }

    #[test]
    fn the_default_is_a_bounded_share_of_memory() {
        let budget = default_budget();
        assert!((DEFAULT_MIN..=DEFAULT_MAX).contains(&budget));
        assert!(memory_limit().is_some_and(|m| m > 0));
    }
}
