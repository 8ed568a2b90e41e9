//! The era5-mirror fetch engine and the local mirror it writes. It knows S3 (through the
//! `transport` crate) and the filesystem, and nothing of the network the cluster talks over:
//! `era5 sync`, `era5 verify`, `era5 audit` and the cluster worker all drive it.
//!
//! - [`fetch`]: ranged, retrying, stall-aware downloads of one object under the process-wide
//!   connection cap, with in-stream digests.
//! - [`scheduler`]: admission of requests by priority under a window that [`autotune`] fits
//!   to the link, and of objects in request units.
//! - [`autotune`]: the hill-climbing controller of the request window.
//! - [`request_stats`]: recent first-byte latencies and body rates: range sizes by time and
//!   the thresholds of hedging.
//! - [`memory`]: the budget of in-flight buffers (`--memory-budget`).
//! - [`bandwidth`]: `--bwlimit`, the process-wide cap on bytes received, with timetables.
//! - [`fast_md5`]: MD5 through the `md-5` crate's x86-64 assembly.
//! - [`verify`]: size, ETag (single and multipart) and additional-checksum verification.
//! - [`ordered_md5`]: MD5s (whole object, or per upload part) hashed in order while parts
//!   still download.
//! - [`mirror`]: DEST layout, temporary files, resume state, atomic promotion.
//! - [`manifest`]: the crash-safe, batched journals of verified objects, each record tied to
//!   the file it vouches for, compacted into a snapshot.
//! - [`disk`]: local write failures by kind, free space, and the state that stops new work
//!   on a full or failing disk.
//! - [`fence`]: when a lease holder may still promote (its monotonic lease validity).
//! - [`version_stamp`]: the per-key fence: never rename older bytes over a newer version.
//! - [`destination`]: the seam the lease loop mirrors through ([`destination::Destination`]),
//!   with a directory ([`sync::Mirrorer`]) and another object store (the `s3dest` crate) as
//!   its implementations.
//! - [`sync`]: one batch of objects into a directory: skip, verify locally, or fetch
//!   ([`sync::Mirrorer`]).
//! - [`recheck`]: re-reading a mirrored file against its manifest record.
//! - [`audit`]: what a mirror holds against what the catalog expects and the bucket lists.
//! - [`writer`]: one writer thread per temporary file (no lock contention on the inode).
//! - [`direct_io`]: huge-page stages and the engine's threads writing them with `O_DIRECT`.
//! - [`progress`]: lock-free live counters for whoever reports.

pub mod audit;
pub mod autotune;
pub mod bandwidth;
pub mod destination;
pub mod direct_io;
pub mod disk;
pub mod fast_md5;
pub mod fence;
pub mod fetch;
pub mod manifest;
pub mod memory;
pub mod mirror;
pub mod ordered_md5;
pub mod progress;
pub mod recheck;
pub mod request_stats;
pub mod scheduler;
pub mod sync;
pub mod verify;
pub mod version_stamp;
pub mod writer;

pub use destination::Destination;
pub use fetch::{
    DEFAULT_PART_SIZE, DEFAULT_STALL_TIMEOUT, Engine, EngineConfig, FetchError, FetchScope,
};
pub use mirror::Mirror;
pub use progress::{Progress, ProgressSnapshot};
pub use scheduler::{Concurrency, ConcurrencySnapshot};
pub use sync::{Outcome, SyncReport};
pub use verify::{OnContradiction, VerifyMode};
