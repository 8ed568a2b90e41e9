//! The vocabulary of jobs and leases, shared by both stores, the planner and the services.
//!
//! A **job** is a validated selection with its source, split into **items**: one product over a
//! contiguous date range, a bounded number of objects. An item is in exactly one state:
//!
//! ```text
//!            acquire                complete
//! pending ─────────────► leased ─────────────► done (terminal)
//!    ▲   ◄───────────────  │ │
//!    │  release / expiry /  │ └─ fail (permanent, or attempts exhausted),
//!    │  fail (retryable,    │    expiry (more than max_expiries) ────► dead
//!    │  after a backoff)    │                                            │
//!    └──────────────────────┴───────────── retry-dead ◄──────────────────┘
//! ```
//!
//! Every grant of an item gets a random lease id and the next **epoch** (a fencing token).
//! Renew, complete, fail and release name the grant by (lease id, epoch); a call for any other
//! grant, or for an expired one, is refused with `LeaseLost`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One object of an item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSpec {
    /// Object key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Unquoted ETag, empty if unknown.
    #[serde(default)]
    pub etag: String,
    /// Last-Modified from the listing (RFC 3339), empty if unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_modified: String,
}

impl ObjectSpec {
    /// The listing entry this object came from.
    pub fn to_remote(&self) -> common::RemoteObject {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        common::RemoteObject {
            key: self.key.clone(),
            size: self.size,
            etag: non_empty(&self.etag),
            last_modified: non_empty(&self.last_modified),
        }
    }

    /// The listing entry this object came from, moved rather than copied (a sync of the whole
    /// archive holds 0.8 M of them).
    pub fn into_remote(self) -> common::RemoteObject {
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        common::RemoteObject {
            key: self.key,
            size: self.size,
            etag: non_empty(self.etag),
            last_modified: non_empty(self.last_modified),
        }
    }
}

/// A unit of work: one product over a contiguous range of days.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemSpec {
    /// Identifier within the job, zero-padded so that ids sort in plan order.
    pub item_id: String,
    /// Product name.
    pub product: String,
    /// First day (YYYY-MM-DD).
    pub start: String,
    /// Last day (YYYY-MM-DD).
    pub end: String,
    /// The objects.
    pub objects: Vec<ObjectSpec>,
}

impl ItemSpec {
    /// Total bytes of the item.
    pub fn bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }
}

/// What was asked for, as submitted (kept for display and for workers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectionSpec {
    /// Products.
    pub products: Vec<String>,
    /// Variables (empty: all).
    pub variables: Vec<String>,
    /// Grids (empty: all).
    #[serde(default)]
    pub grids: Vec<String>,
    /// Start DATE as given.
    pub start: String,
    /// End DATE as given.
    pub end: String,
}

impl From<&common::selection::Selection> for SelectionSpec {
    fn from(selection: &common::selection::Selection) -> Self {
        Self {
            products: selection
                .products
                .iter()
                .map(|p| p.name().to_string())
                .collect(),
            variables: selection.variables.clone(),
            grids: selection.grids.clone(),
            start: selection.range.start.to_string(),
            end: selection.range.end.to_string(),
        }
    }
}

/// Where a job's objects come from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSpec {
    /// Bucket.
    pub bucket: String,
    /// Endpoint URL (empty: the bucket's AWS endpoint).
    pub endpoint: String,
}

/// A planned job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Job id.
    pub job_id: String,
    /// The selection.
    pub selection: SelectionSpec,
    /// The source.
    pub source: SourceSpec,
    /// The items, in plan order.
    pub items: Vec<ItemSpec>,
    /// A standing job (`submit --follow`): re-listed every interval for new or changed
    /// objects. `None` for a one-off job.
    #[serde(default)]
    pub follow: Option<FollowSpec>,
    /// `submit --bwlimit`: the fleet-wide budget of the job's transfers, in `--bwlimit`'s
    /// syntax (checked when submitted), which the coordinator shares among the workers that
    /// hold the job's leases. `None`: no budget.
    #[serde(default)]
    pub bwlimit: Option<String>,
}

/// How a standing job follows the archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowSpec {
    /// Time between passes, milliseconds.
    pub interval_ms: u64,
    /// `--end` as submitted (`latest` moves with the archive; a date does not).
    pub end: String,
}

/// A standing job's follow state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowStatus {
    /// Time between passes, milliseconds.
    pub interval_ms: u64,
    /// When the next pass is due, Unix milliseconds (0: no longer following).
    pub next_check_ms: i64,
    /// Passes run after the submit (the submit's own listing is not counted).
    pub passes: u64,
    /// When a pass last succeeded (Unix milliseconds; the submit counts), 0 never.
    pub last_success_ms: i64,
    /// Why the last pass failed, if it did.
    pub last_error: String,
}

/// Names one grant of one item.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseRef {
    /// Job id.
    pub job_id: String,
    /// Item id.
    pub item_id: String,
    /// Random id of the grant.
    pub lease_id: String,
    /// Fencing token of the grant.
    pub epoch: u64,
}

/// A granted lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Which grant.
    pub lease: LeaseRef,
    /// The work.
    pub item: ItemSpec,
    /// Where from.
    pub source: SourceSpec,
    /// Time to live.
    pub ttl: Duration,
}

/// The answer to renew, complete, fail and release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Done (or already done by this same grant: calls are idempotent).
    Ok,
    /// The item was completed under another grant.
    AlreadyDone,
    /// Not this grant's any more: expired, re-granted, released, cancelled or unknown.
    LeaseLost,
    /// The grant is live but was granted to another worker: the caller may not touch it.
    NotHolder,
}

/// Most grants one Acquire call may ask for; larger requests are clamped, never allocated.
pub const MAX_ACQUIRE: usize = 64;

/// State of an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemState {
    /// Waiting for a worker (possibly backing off).
    Pending,
    /// Granted and not expired (or expired and not yet reaped).
    Leased,
    /// Completed.
    Done,
    /// Given up on; kept with its reason.
    Dead,
}

impl ItemState {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            ItemState::Pending => "pending",
            ItemState::Leased => "leased",
            ItemState::Done => "done",
            ItemState::Dead => "dead",
        }
    }

    /// Parses a lowercase name.
    pub fn parse(name: &str) -> Option<Self> {
        [
            ItemState::Pending,
            ItemState::Leased,
            ItemState::Done,
            ItemState::Dead,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// State of a job, derived from its items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Nothing granted yet.
    Pending,
    /// Work is under way or waiting.
    Running,
    /// Every item done.
    Complete,
    /// Nothing left to do and some items dead.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
}

impl JobState {
    /// Lowercase name, as `status` prints it.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Complete => "complete",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether nothing more will happen.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Complete | JobState::Failed | JobState::Cancelled
        )
    }
}

/// Items by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Pending items.
    pub pending: u32,
    /// Leased items.
    pub leased: u32,
    /// Done items.
    pub done: u32,
    /// Dead items.
    pub dead: u32,
}

impl Counts {
    /// All items.
    pub fn total(&self) -> u32 {
        self.pending + self.leased + self.done + self.dead
    }

    /// The job state these counts imply.
    pub fn job_state(&self, cancelled: bool, started: bool) -> JobState {
        if cancelled {
            JobState::Cancelled
        } else if self.done == self.total() {
            JobState::Complete
        } else if self.pending == 0 && self.leased == 0 {
            JobState::Failed
        } else if !started {
            JobState::Pending
        } else {
            JobState::Running
        }
    }
}

/// A job as `status` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobStatus {
    /// Job id.
    pub job_id: String,
    /// State.
    pub state: JobState,
    /// Items by state.
    pub counts: Counts,
    /// Objects in the job.
    pub objects_total: u64,
    /// Bytes in the job.
    pub bytes_total: u64,
    /// Bytes of done items plus reported progress of leased ones.
    pub bytes_done: u64,
    /// Creation time, Unix milliseconds.
    pub created_ms: i64,
    /// First grant, Unix milliseconds (0: none yet).
    pub started_ms: i64,
    /// Last completion, Unix milliseconds (0: none yet).
    pub finished_ms: i64,
    /// Selection as submitted.
    pub selection: SelectionSpec,
    /// Source.
    pub source: SourceSpec,
    /// The follow state of a standing job.
    pub follow: Option<FollowStatus>,
    /// The job's fleet-wide bandwidth budget, as submitted (`submit --bwlimit`).
    pub bwlimit: Option<String>,
}

impl JobStatus {
    /// Bytes per second since the first grant (to the last completion once final), and the
    /// seconds left at that rate: 0 when complete, -1 when unknown or never. `status` and the
    /// status page both show these, so they are computed here once.
    pub fn rate_and_eta(&self) -> (f64, f64) {
        let end_ms = if self.state.is_final() && self.finished_ms > 0 {
            self.finished_ms
        } else {
            now_ms()
        };
        let seconds = ((end_ms - self.started_ms) as f64 / 1000.0).max(0.001);
        let rate = if self.started_ms > 0 {
            self.bytes_done as f64 / seconds
        } else {
            0.0
        };
        let eta = match self.state {
            JobState::Complete => 0.0,
            _ if rate > 0.0 && !self.state.is_final() => {
                self.bytes_total.saturating_sub(self.bytes_done) as f64 / rate
            }
            _ => -1.0,
        };
        (rate, eta)
    }
}

/// One item as `status JOB` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemStatus {
    /// The item.
    pub item_id: String,
    /// Product.
    pub product: String,
    /// First day.
    pub start: String,
    /// Last day.
    pub end: String,
    /// Objects.
    pub objects: u32,
    /// Bytes.
    pub bytes: u64,
    /// State.
    pub state: ItemState,
    /// Epoch of the last grant (0: never granted).
    pub epoch: u64,
    /// Worker holding it (leased) or that completed it.
    pub holder: String,
    /// Failed attempts.
    pub attempts: u32,
    /// Expiries.
    pub expiries: u32,
    /// Last failure reason (dead items keep it).
    pub last_error: String,
    /// Latest reported progress.
    pub bytes_done: u64,
}

/// A worker as the coordinator last heard from it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Worker name.
    pub name: String,
    /// Leases it holds.
    pub leases_held: u32,
    /// Its last metrics report.
    pub metrics: WorkerMetrics,
    /// Last report, Unix milliseconds.
    pub last_heartbeat_ms: i64,
    /// Whether it was asked to drain.
    #[serde(default)]
    pub draining: bool,
}

/// A worker's connection and engine figures (latest value wins).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerMetrics {
    /// Open connections.
    pub open: u32,
    /// Connections in use.
    pub in_use: u32,
    /// Idle connections.
    pub idle: u32,
    /// Connections made.
    pub connects: u64,
    /// Connection resets seen.
    pub resets: u64,
    /// Retries by reason.
    pub retries: std::collections::BTreeMap<String, u64>,
    /// Stall timeouts.
    pub stall_timeouts: u64,
    /// Download rate.
    pub bytes_per_sec: f64,
    /// Bytes downloaded since start.
    pub bytes_downloaded: u64,
    /// Objects completed since start.
    pub objects_completed: u64,
    /// Verification failures since start.
    pub verify_failures: u64,
}

/// One point of a worker's history, for the status page's charts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// Download rate then.
    pub bytes_per_sec: f64,
    /// Open S3 connections then.
    pub open: u32,
}

/// How often a worker's history gets a point, and how many are kept (an hour).
pub const SAMPLE_EVERY_MS: i64 = 10_000;
/// Points kept per worker.
pub const SAMPLES_KEPT: usize = 360;

/// Live grants one worker may hold at once unless the policy says otherwise.
pub const DEFAULT_MAX_LEASES_PER_WORKER: u32 = 256;

/// Rules of the state machine.
#[derive(Clone, Debug)]
pub struct LeasePolicy {
    /// How long a grant lives without renewal.
    pub ttl: Duration,
    /// Failed attempts before an item is dead.
    pub max_attempts: u32,
    /// Expiries before an item is dead (a poison item that kills its workers).
    pub max_expiries: u32,
    /// Backoff ceiling after the first failure (doubles per attempt, full jitter).
    pub backoff_base: Duration,
    /// Largest backoff.
    pub backoff_cap: Duration,
    /// Most live grants one worker may hold at once, over all jobs: an acquire grants at
    /// most this minus what the worker holds (nothing at the cap). A grant stops counting
    /// when it is completed, failed, released, cancelled with its job, or expires.
    pub max_leases_per_worker: u32,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            max_attempts: 5,
            max_expiries: 5,
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(120),
            max_leases_per_worker: DEFAULT_MAX_LEASES_PER_WORKER,
        }
    }
}

/// A worker's unbroken streak of contact with the store (store time, ms): its acquires,
/// renewals and heartbeats. **An expiry counts against an item only when its holder was
/// demonstrably alive and reaching the store when it should have renewed**
/// ([`Contact::expiry_counts`]), so outages of the store or the coordinators, restarts and
/// clock steps never make an item poison. The Redis store's `prelude.lua` applies the same
/// rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contact {
    /// When the streak began.
    pub since: i64,
    /// The latest contact.
    pub last: i64,
}

impl Contact {
    /// The streak after a contact at `now`: it goes on if the previous contact is at most half
    /// a TTL old (renewals come every third), and starts again otherwise.
    pub fn touched(previous: Option<Contact>, now: i64, ttl_ms: i64) -> Contact {
        match previous {
            Some(streak) if now - streak.last <= ttl_ms / 2 => Contact {
                since: streak.since,
                last: now,
            },
            _ => Contact {
                since: now,
                last: now,
            },
        }
    }

    /// Whether a grant that expired at `expired_ms`, reaped at `now`, counts against its
    /// item: the holder was in unbroken contact from before its renewal was due (two thirds of
    /// a TTL before the expiry) until after it, so it could have renewed and did not; and the
    /// expiry is reaped within a TTL of it (the store and a reaper were up).
    pub fn expiry_counts(contact: Option<Contact>, expired_ms: i64, now: i64, ttl_ms: i64) -> bool {
        let due = expired_ms - 2 * ttl_ms / 3;
        now - expired_ms <= ttl_ms
            && contact.is_some_and(|streak| streak.since <= due && streak.last >= due)
    }
}

impl LeasePolicy {
    /// A jittered delay before retrying after failed attempt number `attempts`.
    pub fn backoff(&self, attempts: u32) -> Duration {
        use rand::Rng;
        let ceiling = self
            .backoff_base
            .saturating_mul(1 << attempts.saturating_sub(1).min(16))
            .min(self.backoff_cap);
        Duration::from_millis(rand::rng().random_range(0..=ceiling.as_millis() as u64))
    }
}

/// A random lease or job id (16 hex digits).
pub fn random_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

/// Wall-clock now, Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
