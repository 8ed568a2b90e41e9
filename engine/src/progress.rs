//! Live counters of a sync, updated lock-free by the engine and read by whoever reports
//! (progress bar, log lines, the cluster's progress stream). Latest value wins: the download
//! loop never waits for a reader. Besides the counters, a sink may hear of each object as it
//! ends (`era5 sync --progress json`'s object events).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use transport::RemoteObject;
use transport::retry::RetryReason;

use crate::disk::LocalIoKind;
use crate::sync::Outcome;

/// Hears of each object as it ends.
type ObjectSink = Box<dyn Fn(&RemoteObject, &Outcome) + Send + Sync>;

/// The sink, once set (never replaced: one reporter per run).
#[derive(Default)]
struct ObjectSinkCell(OnceLock<ObjectSink>);

impl std::fmt::Debug for ObjectSinkCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "ObjectSink(set)"
        } else {
            "ObjectSink(none)"
        })
    }
}

/// Counters of one sync.
#[derive(Debug, Default)]
pub struct Progress {
    /// Objects selected.
    pub objects_total: AtomicU64,
    /// Objects present and verified (already there, verified locally, or downloaded).
    pub objects_done: AtomicU64,
    /// Objects that failed.
    pub objects_failed: AtomicU64,
    /// Bytes that need downloading.
    pub bytes_total: AtomicU64,
    /// Bytes received so far (including bytes of attempts that were later retried).
    pub bytes_downloaded: AtomicU64,
    /// Verification failures (each one triggers a new download).
    pub verify_failures: AtomicU64,
    /// Objects whose server checksum contradicted the ETag that verified their bytes.
    pub checksum_contradictions: AtomicU64,
    /// Objects restarted because they changed upstream mid-download (412).
    pub restarts: AtomicU64,
    /// Requests asked again elsewhere because they were slow (hedges).
    pub hedged_requests: AtomicU64,
    /// Hedges that answered first.
    pub hedges_won: AtomicU64,
    /// Bytes received twice and discarded (a slow body overtaken by its hedge).
    pub duplicate_bytes: AtomicU64,
    retries: [AtomicU64; RetryReason::ALL.len()],
    local_io_errors: [AtomicU64; LocalIoKind::ALL.len()],
    object_sink: ObjectSinkCell,
}

/// A copy of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Objects selected.
    pub objects_total: u64,
    /// Objects present and verified.
    pub objects_done: u64,
    /// Objects failed.
    pub objects_failed: u64,
    /// Bytes that need downloading.
    pub bytes_total: u64,
    /// Bytes received.
    pub bytes_downloaded: u64,
    /// Verification failures.
    pub verify_failures: u64,
    /// Server checksums that contradicted an ETag that verified.
    pub checksum_contradictions: u64,
    /// Restarts after an upstream change.
    pub restarts: u64,
    /// Requests hedged.
    pub hedged_requests: u64,
    /// Hedges that answered first.
    pub hedges_won: u64,
    /// Bytes received twice and discarded.
    pub duplicate_bytes: u64,
    /// Retries by [`RetryReason::index`].
    pub retries: [u64; RetryReason::ALL.len()],
    /// Local write failures by [`LocalIoKind::index`].
    pub local_io_errors: [u64; LocalIoKind::ALL.len()],
}

impl ProgressSnapshot {
    /// All retries.
    pub fn retries_total(&self) -> u64 {
        self.retries.iter().sum()
    }

    /// Retries for one reason.
    pub fn retries_for(&self, reason: RetryReason) -> u64 {
        self.retries[reason.index()]
    }

    /// Local write failures of one kind.
    pub fn local_io_errors_for(&self, kind: LocalIoKind) -> u64 {
        self.local_io_errors[kind.index()]
    }

    /// `slowdown 2, reset 1`, or `none`.
    pub fn retries_breakdown(&self) -> String {
        let parts: Vec<String> = RetryReason::ALL
            .iter()
            .filter(|r| self.retries_for(**r) > 0)
            .map(|r| format!("{} {}", r.label(), self.retries_for(*r)))
            .collect();
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(", ")
        }
    }
}

impl Progress {
    /// Calls `sink` with every object as its destination settles it (done, failed, or not
    /// finished), from then on. Set once; a second sink is ignored. The sink runs on the
    /// settling task: it must be quick.
    pub fn on_object_end(&self, sink: impl Fn(&RemoteObject, &Outcome) + Send + Sync + 'static) {
        let _ = self.object_sink.0.set(Box::new(sink));
    }

    /// `object` ended as `outcome`: the sink hears of it, if there is one.
    pub fn object_ended(&self, object: &RemoteObject, outcome: &Outcome) {
        if let Some(sink) = self.object_sink.0.get() {
            sink(object, outcome);
        }
    }

    /// Counts one retry.
    pub fn retry(&self, reason: RetryReason) {
        self.retries[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one local write failure.
    pub fn local_io_error(&self, kind: LocalIoKind) {
        self.local_io_errors[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Removes bytes from the amount still to download (resumed parts, files verified
    /// locally instead).
    pub fn discount(&self, bytes: u64) {
        let _ = self
            .bytes_total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
                Some(total.saturating_sub(bytes))
            });
    }

    /// Adds received bytes.
    pub fn add_downloaded(&self, bytes: u64) {
        self.bytes_downloaded.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes received so far.
    pub fn downloaded(&self) -> u64 {
        self.bytes_downloaded.load(Ordering::Relaxed)
    }

    /// A slow request was asked again elsewhere.
    pub fn hedge_started(&self) {
        self.hedged_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A hedge answered first.
    pub fn hedge_won(&self) {
        self.hedges_won.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes received twice and discarded.
    pub fn duplicate(&self, bytes: u64) {
        self.duplicate_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Duplicate bytes so far.
    pub fn duplicate_bytes(&self) -> u64 {
        self.duplicate_bytes.load(Ordering::Relaxed)
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ProgressSnapshot {
            objects_total: load(&self.objects_total),
            objects_done: load(&self.objects_done),
            objects_failed: load(&self.objects_failed),
            bytes_total: load(&self.bytes_total),
            bytes_downloaded: load(&self.bytes_downloaded),
            verify_failures: load(&self.verify_failures),
            checksum_contradictions: load(&self.checksum_contradictions),
            restarts: load(&self.restarts),
            hedged_requests: load(&self.hedged_requests),
            hedges_won: load(&self.hedges_won),
            duplicate_bytes: load(&self.duplicate_bytes),
            retries: std::array::from_fn(|i| load(&self.retries[i])),
            local_io_errors: std::array::from_fn(|i| load(&self.local_io_errors[i])),
        }
    }
}
