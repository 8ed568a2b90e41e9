//! What the lease loop (`runner`) asks of a lease service, whichever it is: the coordinator
//! over gRPC (`grpc`), or the lease store embedded in `era5 sync` (`embedded`). Four calls,
//! the lease state machine's transitions as a holder sees them: acquire, renew, and one of
//! complete, fail or release at the end.
//!
//! The types are the lease model's (`lease::model`), not gRPC's, so the loop, its fencing and
//! its outcome rules are one piece of code for both.

use std::future::Future;
use std::time::Duration;

use engine::sync::Outcome;
use lease::model::{Ack, LeaseRef, SourceSpec};
use thiserror::Error;
use transport::RemoteObject;

/// One granted lease, with what its holder needs to work it.
#[derive(Clone, Debug)]
pub struct Granted {
    /// The grant (job, item, lease id, epoch).
    pub lease: LeaseRef,
    /// The item's objects, in plan order.
    pub objects: Vec<RemoteObject>,
    /// Where the objects come from.
    pub source: SourceSpec,
    /// How long the grant lasts without a renewal.
    pub ttl: Duration,
}

/// What an acquire call returned.
#[derive(Debug, Default)]
pub struct Acquired {
    /// New grants, at most as many as asked for.
    pub grants: Vec<Granted>,
    /// The service asks this holder to take no more (the coordinator's drain command).
    pub draining: bool,
    /// No work is left to grant, now or later, beyond what is held (the embedded store's job is
    /// finished); the coordinator never says so, since jobs may arrive at any time.
    pub exhausted: bool,
}

/// How a lease ends, as its holder reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseEnd {
    /// Every object is present and verified.
    Complete,
    /// An object failed: the reason, and whether another attempt is pointless.
    Fail {
        /// The first failing object's reason.
        reason: String,
        /// Retrying cannot help (403/404, repeated verification failures).
        permanent: bool,
    },
    /// Given back without counting an attempt: stopping, or DEST cannot take data.
    Release,
}

impl LeaseEnd {
    /// The call's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            LeaseEnd::Complete => "complete",
            LeaseEnd::Fail { .. } => "fail",
            LeaseEnd::Release => "release",
        }
    }
}

/// A call the service did not answer as asked.
#[derive(Clone, Debug, Error)]
pub enum ClientError {
    /// Unreachable, timed out or failing: the call may be tried again.
    #[error("lease service unavailable: {0}")]
    Unavailable(String),
    /// The service says the lease is not this holder's: it must stop the lease's work.
    #[error("not the holder of the lease: {0}")]
    NotHolder(String),
}

/// A lease service as the lease loop uses it. Calls on a grant are idempotent for that grant,
/// so the loop may repeat one whose answer it did not get.
pub trait LeaseClient: Send + Sync + 'static {
    /// Up to `max` new grants for this holder.
    fn acquire(&self, max: usize) -> impl Future<Output = Result<Acquired, ClientError>> + Send;

    /// Extends a grant. `Ack::Ok` keeps it; any other answer means it is lost.
    fn renew(&self, lease: &LeaseRef) -> impl Future<Output = Result<Ack, ClientError>> + Send;

    /// Ends a grant. `outcomes` are its objects' outcomes, in the order they were granted in,
    /// for a service that reports them (`era5 sync`'s summary); the coordinator needs only the
    /// end.
    fn finish(
        &self,
        lease: &LeaseRef,
        end: &LeaseEnd,
        outcomes: &[Outcome],
    ) -> impl Future<Output = Result<Ack, ClientError>> + Send;
}
