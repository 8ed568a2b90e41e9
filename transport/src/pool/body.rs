//! The response body the pool hands to the SDK: guarded (see `guard`), holding its request
//! permit until it ends, and deciding what becomes of its connection.
//!
//! - **Read to the end:** the connection goes back to the pool's idle list, and the front-end
//!   that served it gets a rate sample (bytes over the time from first to last byte).
//! - **Failed or dropped half-read:** the connection is closed (its sender dropped; hyper
//!   cannot reuse a connection whose body was not read), and a failure is counted against its
//!   front-end when the server is to blame.
//!
//! Either way the request permit is released the moment the body is over, so the next request
//! can go.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::sync::OwnedSemaphorePermit;

use super::{ConnectionStats, Inner};
use crate::frontends::{FrontEnds, InFlight};
use crate::guard::{BodyError, GuardedBody};
use crate::pool::conn::EndpointKey;

/// A request permit plus its share of the in-use gauge.
pub(crate) struct InUse {
    _permit: OwnedSemaphorePermit,
    stats: Arc<ConnectionStats>,
}

impl InUse {
    pub(crate) fn new(permit: OwnedSemaphorePermit, stats: Arc<ConnectionStats>) -> Self {
        stats.in_use.fetch_add(1, Ordering::Relaxed);
        Self {
            _permit: permit,
            stats,
        }
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.stats.in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection a response came on, to give back once its body is read to the end.
pub(crate) struct Lease {
    pub(crate) sender: SendRequest<SdkBody>,
    pub(crate) endpoint: EndpointKey,
    pub(crate) addr: SocketAddr,
    pub(crate) frontends: Arc<FrontEnds>,
    pub(crate) pool: Weak<Inner>,
}

/// A response body of the pool.
pub(crate) struct PoolBody {
    inner: GuardedBody<Incoming>,
    permit: Option<InUse>,
    /// The request counted in flight on its front-end, until the body is over.
    in_flight: Option<InFlight>,
    lease: Option<Lease>,
    bytes: u64,
    first_byte: Option<Instant>,
    /// An error document ends here, whatever its length (see `guard::ERROR_BODY_CAP`).
    cut_at: Option<u64>,
}

impl PoolBody {
    pub(crate) fn new(
        inner: GuardedBody<Incoming>,
        permit: InUse,
        lease: Lease,
        in_flight: InFlight,
        cut_at: Option<u64>,
    ) -> Self {
        Self {
            inner,
            permit: Some(permit),
            in_flight: Some(in_flight),
            lease: Some(lease),
            bytes: 0,
            first_byte: None,
            cut_at,
        }
    }

    /// The body ended cleanly: the connection goes back, the front-end gets its sample.
    fn finished(&mut self) {
        self.permit = None;
        self.in_flight = None;
        if let Some(lease) = self.lease.take() {
            let streaming = self
                .first_byte
                .map_or(std::time::Duration::ZERO, |t| t.elapsed());
            lease.frontends.delivered(lease.addr, self.bytes, streaming);
            if let Some(pool) = lease.pool.upgrade() {
                pool.return_idle(lease);
            }
        }
    }

    /// The body failed: the connection is dropped (closed) with the failure counted.
    fn failed(&mut self, blame_server: bool) {
        self.permit = None;
        self.in_flight = None;
        if let Some(lease) = self.lease.take()
            && blame_server
        {
            lease.frontends.failed(lease.addr);
        }
    }
}

impl Drop for PoolBody {
    fn drop(&mut self) {
        // Nothing left to read (a HEAD, an empty body the SDK never polled): reusable.
        if self.lease.is_some() && self.inner.get_ref().is_end_stream() {
            self.finished();
            return;
        }
        // Abandoned half-read (overtaken, stalled, cancelled): what it streamed so far still
        // tells its front-end's rate. The connection closes with the sender.
        if let (Some(lease), Some(first_byte)) = (&self.lease, self.first_byte) {
            lease
                .frontends
                .sampled(lease.addr, self.bytes, first_byte.elapsed());
        }
    }
}

impl Body for PoolBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.cut_at.is_some_and(|cut| self.bytes >= cut) {
            // What is left is never read: the connection goes, the body ends here.
            self.failed(false);
            return Poll::Ready(None);
        }
        let mut polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Some(cut), Poll::Ready(Some(Ok(frame)))) = (self.cut_at, &mut polled)
            && let Some(data) = frame.data_mut()
        {
            let room = cut.saturating_sub(self.bytes) as usize;
            if data.len() > room {
                data.truncate(room);
            }
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.first_byte.get_or_insert_with(Instant::now);
                    self.bytes += data.len() as u64;
                }
                if self.inner.get_ref().is_end_stream() {
                    self.finished();
                }
            }
            Poll::Ready(None) => self.finished(),
            Poll::Ready(Some(Err(error))) => {
                // Our own size cap is the response's fault too; every guard error is.
                let blame = error.is::<BodyError>() || error.is::<hyper::Error>();
                self.failed(blame);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.cut_at.is_some_and(|cut| self.bytes >= cut) || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let hint = self.inner.size_hint();
        let Some(cut) = self.cut_at else {
            return hint;
        };
        // What is left to read stops at the cut, whatever the server announced.
        let room = cut.saturating_sub(self.bytes);
        let mut cut_hint = SizeHint::new();
        cut_hint.set_lower(hint.lower().min(room));
        cut_hint.set_upper(hint.upper().map_or(room, |upper| upper.min(room)));
        cut_hint
    }
}

/// The error type of a guarded body (hyper's or the guard's, boxed).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
