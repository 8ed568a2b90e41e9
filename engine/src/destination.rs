//! The seam between the lease loop and where verified objects land.
//!
//! The lease loop (`worker::runner`, for `era5 sync` and a cluster worker alike) hands batches
//! of listed objects to a [`Destination`] and reads back one [`Outcome`] per object. What
//! "present", "promote", "fence", "resume" and "record" mean belongs to the implementation:
//!
//! - [`crate::sync::Mirrorer`], a directory: temporary files, rename, the per-key version stamp,
//!   resume states and the manifest's journals;
//! - `s3dest::S3Mirror`, another object store: multipart uploads that become visible only when
//!   complete, resumed from their listed parts, with the destination's listing as its record.
//!
//! Nothing above this trait asks which one it holds.

use std::sync::Arc;

use transport::RemoteObject;

use crate::disk::DestHealth;
use crate::fetch::FetchScope;
use crate::progress::Progress;
use crate::scheduler::RequestScheduler;
use crate::sync::Outcome;

/// Where a batch of objects is made present and verified.
#[async_trait::async_trait]
pub trait Destination: Send + Sync {
    /// Makes every object present and verified, or says why not; outcomes are in the order of
    /// `objects`. An `Err` is a failure of the destination itself (its state could not be
    /// written), not of an object.
    async fn mirror_objects(
        &self,
        objects: &[RemoteObject],
        scope: &FetchScope,
    ) -> std::io::Result<Vec<Outcome>>;

    /// Counts a whole pass into the totals before its batches start, so a progress display
    /// knows the pass; each batch then only takes the objects already present back out.
    fn count_up_front(&self, objects: &[RemoteObject]);

    /// The live counters every batch adds to.
    fn progress(&self) -> &Arc<Progress>;

    /// The admission of source requests (its window is what progress displays show).
    fn scheduler(&self) -> &Arc<RequestScheduler>;

    /// Whether the destination failed in a way that stops new objects (a full disk); the lease
    /// loop clears it once the destination can take data again.
    fn health(&self) -> &Arc<DestHealth>;

    /// Whether `object`'s key is recorded as mirrored: in this version (`Some(true)`), in
    /// another one (`Some(false)`: replaced upstream), or not at all (`None`). Follow mode's
    /// log line counts new and changed objects with it.
    fn recorded_version(&self, object: &RemoteObject) -> Option<bool>;

    /// Makes what the destination buffered durable.
    async fn flush(&self) -> std::io::Result<()>;

    /// The flush at the end of a sync: state that a full or failing destination could not take
    /// is reported (`Ok(Some(why))`), not an error, when the objects themselves are in place.
    async fn flush_at_end(&self) -> std::io::Result<Option<String>>;
}
