//! Every resource a network peer can make the coordinator spend has a bound here.
//!
//! - [`Caps`]: the configured caps (`--max-workers`, `--max-job-objects`, `--max-active-jobs`,
//!   `--job-retention`) and deadlines, with RESOURCE_EXHAUSTED (or DEADLINE_EXCEEDED) past
//!   them.
//! - [`LimitsLayer`]: a tower layer in front of both services: calls in flight past a cap are
//!   refused at once (never queued), and every unary call has a deadline (SubmitJob the
//!   listing's; the WorkerSession stream none, keepalive watches it instead).
//! - [`limited_incoming`]: accepted connections past a cap, in all or per peer address, are
//!   closed at once, and a connection that sends nothing is closed after a deadline.
//! - Checks of what a request may carry: ids, reports, failure reasons.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use http::{Request, Response};
use prost::Message;
use proto::paths;
use proto::v1 as pb;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tower_layer::Layer;
use tower_service::Service;

use common::sync::MutexExt;

use crate::error::Error;

/// Finished jobs `ListJobs`, the status page and the metrics read besides the active ones
/// (here, below both the service and the metrics, which read it).
pub const RECENT_JOBS: usize = 20;
/// Most leases one progress report may describe (a worker holds at most 256).
pub const MAX_REPORT_LEASES: usize = 256;
/// Largest progress report, encoded.
pub const MAX_REPORT_BYTES: usize = 64 << 10;
/// Most retry reasons in a report's metrics (the engine has eight).
pub const MAX_REPORT_REASONS: usize = 32;
/// Longest id (job, item or lease) a request may carry.
pub const MAX_ID_LEN: usize = 64;
/// Longest failure reason kept (longer ones are cut).
pub const MAX_REASON_LEN: usize = 1024;
/// Objects one Acquire response may carry in total, whatever the lease size.
pub const MAX_OBJECTS_PER_ACQUIRE: usize = 4096;
/// Largest request message either service decodes.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;
/// Concurrent HTTP/2 streams per connection (a worker needs two or three).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;
/// Calls handled at once per connection.
pub const MAX_CALLS_PER_CONNECTION: usize = 64;
/// Connections kept on top of one per worker session (operators, probes, reconnects).
pub const SPARE_CONNECTIONS: usize = 256;

/// The caps and deadlines of one coordinator.
#[derive(Clone, Debug)]
pub struct Caps {
    /// Concurrent WorkerSession streams (`--max-workers`).
    pub max_workers: usize,
    /// Objects in one job (`--max-job-objects`).
    pub max_job_objects: usize,
    /// Jobs not yet finished (`--max-active-jobs`).
    pub max_active_jobs: usize,
    /// Finished jobs and silent workers are forgotten after this (`--job-retention`).
    pub job_retention: Duration,
    /// Deadline of every unary call but SubmitJob.
    pub call_deadline: Duration,
    /// Deadline of SubmitJob's listing (the call gets a little more, to plan and store).
    pub listing_deadline: Duration,
    /// Unary calls handled at once across all connections.
    pub max_in_flight: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            max_workers: 1024,
            max_job_objects: 2_000_000,
            max_active_jobs: 64,
            job_retention: Duration::from_secs(30 * 24 * 3600),
            call_deadline: Duration::from_secs(30),
            listing_deadline: Duration::from_secs(600),
            max_in_flight: 2048,
        }
    }
}

impl Caps {
    /// The deadline of a call to `path`, `None` for the session stream.
    fn deadline(&self, path: &str) -> Option<Duration> {
        if path == paths::WORKER_SESSION {
            None
        } else if path == paths::SUBMIT_JOB {
            // Listing, then planning and writing the job (a million objects take seconds).
            Some(self.listing_deadline + Duration::from_secs(120))
        } else {
            Some(self.call_deadline)
        }
    }
}

/// Bounds calls: in flight across the process, and in time.
#[derive(Clone, Debug)]
pub struct LimitsLayer {
    caps: Arc<Caps>,
    in_flight: Arc<Semaphore>,
}

impl LimitsLayer {
    /// A layer enforcing `caps`.
    pub fn new(caps: Arc<Caps>) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(caps.max_in_flight)),
            caps,
        }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = Limits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limits {
            inner,
            caps: self.caps.clone(),
            in_flight: self.in_flight.clone(),
        }
    }
}

/// The service the layer makes.
#[derive(Clone, Debug)]
pub struct Limits<S> {
    inner: S,
    caps: Arc<Caps>,
    in_flight: Arc<Semaphore>,
}

impl<S> Service<Request<Body>> for Limits<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            let error = Error::ResourceExhausted(format!(
                "the coordinator is handling its limit of {} calls; try again",
                self.caps.max_in_flight
            ));
            return Box::pin(std::future::ready(Ok(
                tonic::Status::from(error).into_http()
            )));
        };
        let deadline = self.caps.deadline(request.uri().path());
        let path = request.uri().path().to_string();
        let call = self.inner.call(request);
        Box::pin(async move {
            let _permit = permit;
            let Some(deadline) = deadline else {
                return call.await;
            };
            if let Ok(response) = tokio::time::timeout(deadline, call).await {
                response
            } else {
                let error = Error::DeadlineExceeded(format!(
                    "{path} did not finish within its deadline of {}s",
                    deadline.as_secs()
                ));
                Ok(tonic::Status::from(error).into_http())
            }
        })
    }
}

/// Connections one peer address may hold at once, so that one host cannot take every slot.
/// Workers in a cluster each have an address of their own; 64 leaves room for several behind
/// one NAT and for reconnects.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 64;
/// Time a new connection has to send its first byte (the TLS handshake or the HTTP/2 preface).
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);

/// An accepted connection that holds one of the listener's connection slots (and one of its
/// address's) while it lives. **A connection that moves no byte is closed**: within
/// [`FIRST_BYTE_TIMEOUT`] of being accepted, and later within its idle deadline (three
/// keepalive intervals: a live peer answers the server's pings well within that).
pub struct LimitedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    _address: AddressSlot,
    /// When the connection is closed unless a byte moves first.
    quiet_until: Pin<Box<tokio::time::Sleep>>,
    idle: Duration,
}

impl LimitedStream {
    fn moved(&mut self) {
        let deadline = tokio::time::Instant::now() + self.idle;
        self.quiet_until.as_mut().reset(deadline);
    }
}

impl Connected for LimitedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl tokio::io::AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.moved();
                Poll::Ready(Ok(()))
            }
            // The server always waits to read, so this is where a quiet peer is noticed.
            Poll::Pending if self.quiet_until.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the peer sent nothing within its deadline",
                )))
            }
            polled => polled,
        }
    }
}

impl tokio::io::AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Connections held per peer address.
type AddressCounts = Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>;

/// One connection counted against its address; the count drops with it.
struct AddressSlot {
    counts: AddressCounts,
    address: IpAddr,
}

impl AddressSlot {
    /// A slot for `address`, unless it already holds `max`.
    fn take(counts: &AddressCounts, address: IpAddr, max: usize) -> Option<Self> {
        let mut held = counts.lock_unpoisoned();
        let count = held.entry(address).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Self {
            counts: counts.clone(),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self.counts.lock_unpoisoned();
        if let Some(count) = held.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.address);
            }
        }
    }
}

/// The connections of `listener`, at most `max` open at once and
/// [`MAX_CONNECTIONS_PER_ADDRESS`] per peer address; one past either is closed as soon as it
/// is accepted. Accepted sockets get TCP keepalive (`keepalive`), no Nagle delay, and the
/// deadlines of [`LimitedStream`].
pub fn limited_incoming(
    listener: TcpListener,
    max: usize,
    keepalive: Duration,
) -> impl Stream<Item = std::io::Result<LimitedStream>> {
    let slots = Arc::new(Semaphore::new(max));
    let addresses = AddressCounts::default();
    futures_util::stream::unfold(
        (listener, slots, addresses, 0u64),
        move |(listener, slots, addresses, mut refused)| async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors, say: do not spin on it.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        return Some((Err(error), (listener, slots, addresses, refused)));
                    }
                };
                let address = AddressSlot::take(&addresses, peer.ip(), MAX_CONNECTIONS_PER_ADDRESS);
                let (Some(address), Ok(slot)) = (address, slots.clone().try_acquire_owned()) else {
                    refused += 1;
                    if refused.is_power_of_two() {
                        tracing::warn!(
                            max,
                            per_address = MAX_CONNECTIONS_PER_ADDRESS,
                            refused,
                            "connection limit reached: closing new connections"
                        );
                    }
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(
                    &socket2::TcpKeepalive::new()
                        .with_time(keepalive)
                        .with_interval(keepalive),
                );
                let stream = LimitedStream {
                    stream,
                    _slot: slot,
                    _address: address,
                    quiet_until: Box::pin(tokio::time::sleep(FIRST_BYTE_TIMEOUT)),
                    idle: keepalive * 3,
                };
                return Some((Ok(stream), (listener, slots, addresses, refused)));
            }
        },
    )
}

/// Checks an id a request carries (job, item, lease): 1 to 64 characters of
/// `[A-Za-z0-9._-]`, so it is safe in a Redis key and in output.
pub fn check_id(what: &str, id: &str) -> Result<(), Error> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid {what} `{}`: expected 1 to {MAX_ID_LEN} characters of letters, digits, '.', '_' and '-'",
            id.escape_debug().take(80).collect::<String>()
        )))
    }
}

/// Checks a progress report's size before anything of it is stored.
pub fn check_report(report: &pb::WorkerReport) -> Result<(), Error> {
    let reasons = report.metrics.as_ref().map_or(0, |m| m.retries.len());
    if report.progress.len() > MAX_REPORT_LEASES
        || reasons > MAX_REPORT_REASONS
        || report.encoded_len() > MAX_REPORT_BYTES
    {
        return Err(Error::ResourceExhausted(format!(
            "progress report too large: {} leases, {reasons} retry reasons, {} bytes (at most {MAX_REPORT_LEASES}, {MAX_REPORT_REASONS} and {MAX_REPORT_BYTES})",
            report.progress.len(),
            report.encoded_len()
        )));
    }
    Ok(())
}

/// A failure reason cut to [`MAX_REASON_LEN`] bytes (on a character boundary).
pub fn bounded_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON_LEN {
        return reason.to_string();
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &reason[..end])
}

/// How many grants one Acquire may make when leases hold up to `lease_objects` objects: at
/// most `asked`, at most [`lease::model::MAX_ACQUIRE`], and few enough that the response
/// carries at most [`MAX_OBJECTS_PER_ACQUIRE`] objects.
pub fn grants_per_acquire(asked: u32, lease_objects: usize) -> usize {
    let by_size = (MAX_OBJECTS_PER_ACQUIRE / lease_objects.max(1)).max(1);
    (asked as usize).min(lease::model::MAX_ACQUIRE).min(by_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquire_is_clamped_before_anything_is_made() {
        assert_eq!(grants_per_acquire(u32::MAX, 32), 64);
        assert_eq!(grants_per_acquire(2, 32), 2);
        assert_eq!(grants_per_acquire(u32::MAX, 1024), 4);
        assert_eq!(grants_per_acquire(u32::MAX, 100_000), 1);
        assert_eq!(grants_per_acquire(0, 32), 0);
    }

    #[test]
    fn ids_and_reports_are_bounded() {
        assert!(check_id("job id", "0123456789abcdef").is_ok());
        assert!(check_id("job id", "").is_err());
        assert!(check_id("job id", "x}:meta").is_err());
        assert!(check_id("job id", &"a".repeat(65)).is_err());
        let big = pb::WorkerReport {
            progress: vec![pb::LeaseProgress::default(); MAX_REPORT_LEASES + 1],
            ..Default::default()
        };
        assert!(matches!(
            check_report(&big),
            Err(Error::ResourceExhausted(_))
        ));
        assert!(check_report(&pb::WorkerReport::default()).is_ok());
        assert_eq!(bounded_reason("short"), "short");
        assert!(bounded_reason(&"é".repeat(2000)).len() <= MAX_REASON_LEN + 3);
    }

    #[test]
    fn the_session_stream_has_no_deadline_and_submit_a_long_one() {
        let caps = Caps::default();
        assert_eq!(caps.deadline(paths::WORKER_SESSION), None);
        assert!(caps.deadline(paths::SUBMIT_JOB).unwrap() > caps.listing_deadline);
        assert_eq!(
            caps.deadline("/era5.v1.Worker/Renew"),
            Some(caps.call_deadline)
        );
    }
}
