//! The HTTP client under the S3 SDK: a hyper connection pool with a hard cap on connections.
//!
//! Today's ERA5 downloaders leak connections: a response body that is never read to the end
//! nor dropped keeps its connection, hyper keeps idle ones for 90 s while S3 closes them after a
//! few seconds, and nothing caps the total. Three mechanisms remove that here:
//!
//! 1. **Request permits.** Every request takes a permit from a semaphore of `max_connections`
//!    and the permit rides inside the response body ([`PermitBody`]) until the body ends, fails
//!    or is dropped. So no more than `max_connections` requests are ever in flight.
//! 2. **Connection slots.** The connector ([`CountingConnector`]) takes a slot from a second
//!    semaphore of `max_connections` before it dials, and the slot lives inside the connection's
//!    I/O object ([`CountedIo`]) until hyper drops the socket. So the number of open TCP
//!    connections can never exceed the cap, whatever hyper's pool does with idle ones, resets or
//!    background connects.
//! 3. **Idle expiry.** Pooled connections expire after `idle_timeout` (10 s by default), before
//!    S3 closes them from its side.
//!
//! Both semaphores feed [`ConnectionStats`], the live gauge of open and in-use connections,
//! counted by the client itself. Every response is held to a [`BodyGuard`] (headers in time,
//! no stall, a minimum rate, and a size cap on unranged bodies; see [`crate::guard`]),
//! so a hostile server can hold neither a connection nor memory for long.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use http::Uri;
use http_body::{Body, Frame, SizeHint};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector as TcpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::guard::{BodyError, BodyGuard, GuardedBody, UNRANGED_BODY_CAP, check_length};

/// Idle pooled connections are closed after this long; S3 closes idle keep-alive connections
/// after a few seconds to ~20 s, so ours must go first.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed to establish a TCP (and TLS) connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest read buffer of a connection.
const READ_BUFFER: usize = 512 << 10;

/// Limits of the pool.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Hard cap on open connections and on requests in flight.
    pub max_connections: usize,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// How long dialling may take.
    pub connect_timeout: Duration,
    /// Limits on every response: headers and bytes in time, a minimum rate.
    pub guard: BodyGuard,
}

impl PoolConfig {
    /// A pool of `max_connections` with the default timeouts.
    pub fn new(max_connections: usize) -> Self {
        Self {
            max_connections: max_connections.max(1),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            guard: BodyGuard::default(),
        }
    }
}

/// Live connection figures, counted by the client itself.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// TCP connections currently open.
    open: AtomicUsize,
    /// Requests whose response body is still being read.
    in_use: AtomicUsize,
    /// Highest `open` seen.
    peak_open: AtomicUsize,
    /// Connections established since start.
    connects: AtomicU64,
    /// Connection attempts that failed or timed out.
    connect_failures: AtomicU64,
}

/// A copy of [`ConnectionStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionSnapshot {
    /// TCP connections currently open.
    pub open: usize,
    /// Connections carrying a request right now.
    pub in_use: usize,
    /// Open connections waiting in the pool.
    pub idle: usize,
    /// Highest number of open connections seen.
    pub peak_open: usize,
    /// Connections established since start.
    pub connects: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
}

impl ConnectionStats {
    /// Current figures.
    pub fn snapshot(&self) -> ConnectionSnapshot {
        let open = self.open.load(Ordering::Relaxed);
        let in_use = self.in_use.load(Ordering::Relaxed);
        ConnectionSnapshot {
            open,
            in_use,
            idle: open.saturating_sub(in_use),
            peak_open: self.peak_open.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
        }
    }

    fn connection_opened(&self) {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(open, Ordering::Relaxed);
        self.connects.fetch_add(1, Ordering::Relaxed);
    }
}

type TlsConnector = HttpsConnector<TcpConnector>;

/// Dials through hyper-rustls, but only while holding a connection slot, and hands hyper an I/O
/// object that gives the slot back when the socket is dropped.
#[derive(Clone)]
pub struct CountingConnector {
    inner: TlsConnector,
    slots: Arc<Semaphore>,
    stats: Arc<ConnectionStats>,
    connect_timeout: Duration,
}

impl tower_service::Service<Uri> for CountingConnector {
    type Response = CountedIo<MaybeHttpsStream<TokioIo<TcpStream>>>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut inner = self.inner.clone();
        let slots = self.slots.clone();
        let stats = self.stats.clone();
        let connect_timeout = self.connect_timeout;
        Box::pin(async move {
            // The slot is taken before dialling, so even connects that hyper starts in the
            // background and never uses count against the cap.
            let slot = slots.acquire_owned().await?;
            let io = match tokio::time::timeout(connect_timeout, inner.call(uri)).await {
                Ok(Ok(io)) => io,
                Ok(Err(error)) => {
                    stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    return Err(error);
                }
                Err(_) => {
                    stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    return Err(format!("connect timed out after {connect_timeout:?}").into());
                }
            };
            stats.connection_opened();
            Ok(CountedIo {
                inner: io,
                _slot: slot,
                stats,
            })
        })
    }
}

/// A connection's I/O that holds its slot and keeps the open-connection gauge.
pub struct CountedIo<T> {
    inner: T,
    _slot: OwnedSemaphorePermit,
    stats: Arc<ConnectionStats>,
}

impl<T> Drop for CountedIo<T> {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for CountedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for CountedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

impl<T: Connection> Connection for CountedIo<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

/// A response body that holds its request permit until it ends, fails or is dropped.
struct PermitBody<B> {
    inner: B,
    permit: Option<InUse>,
}

/// A request permit plus its share of the in-use gauge.
struct InUse {
    _permit: OwnedSemaphorePermit,
    stats: Arc<ConnectionStats>,
}

impl InUse {
    fn new(permit: OwnedSemaphorePermit, stats: Arc<ConnectionStats>) -> Self {
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

impl<B> Body for PermitBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            // The body is over: hyper has already returned the connection to the pool (or
            // closed it), so the request slot is free for the next one.
            self.permit = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The bounded client, usable as the S3 SDK's HTTP client.
#[derive(Clone)]
pub struct BoundedHttpClient {
    client: Client<CountingConnector, SdkBody>,
    requests: Arc<Semaphore>,
    stats: Arc<ConnectionStats>,
    config: PoolConfig,
}

impl fmt::Debug for BoundedHttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedHttpClient")
            .field("config", &self.config)
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl BoundedHttpClient {
    /// Builds the pool. TLS uses rustls with the webpki root certificates.
    pub fn new(config: PoolConfig) -> Self {
        let mut tcp = TcpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_keepalive(Some(Duration::from_secs(30)));
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
            .expect("the ring provider supports the default TLS versions")
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let stats = Arc::new(ConnectionStats::default());
        let connector = CountingConnector {
            inner: tls,
            slots: Arc::new(Semaphore::new(config.max_connections)),
            stats: stats.clone(),
            connect_timeout: config.connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            // Half-MiB reads: fewer syscalls and wake-ups per byte than hyper's ~400 KB
            // default, at a bounded cost of 512 KiB per connection.
            .http1_max_buf_size(READ_BUFFER)
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.idle_timeout)
            .pool_max_idle_per_host(config.max_connections)
            .build(connector);
        Self {
            client,
            requests: Arc::new(Semaphore::new(config.max_connections)),
            stats,
            config,
        }
    }

    /// The live gauge.
    pub fn stats(&self) -> Arc<ConnectionStats> {
        self.stats.clone()
    }

    /// The pool's limits.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, ConnectorError> {
        let permit = self
            .requests
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ConnectorError::other(e.into(), None))?;
        let in_use = InUse::new(permit, self.stats.clone());
        let request = request
            .try_into_http1x()
            .map_err(|e| ConnectorError::user(e.into()))?;
        // Ranged GETs carry object bytes, bounded by the range the engine checks; everything
        // else (listings, error documents) is read whole by the SDK, so it is capped. A HEAD
        // has no body, whatever length it announces.
        let unranged = !request.headers().contains_key(http::header::RANGE);
        let cap = (unranged && request.method() != http::Method::HEAD).then_some(UNRANGED_BODY_CAP);
        let guard = self.config.guard;
        let response = tokio::time::timeout(guard.stall_timeout, self.client.request(request))
            .await
            .map_err(|_| {
                ConnectorError::timeout(Box::new(BodyError::NoHeaders {
                    after: guard.stall_timeout,
                }))
            })?
            .map_err(|e| ConnectorError::io(e.into()))?;
        let (parts, body) = response.into_parts();
        let length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // Dropping the body here closes the connection: it is never read.
        check_length(length, cap).map_err(|e| ConnectorError::other(Box::new(e), None))?;
        let body = SdkBody::from_body_1_x(PermitBody {
            inner: GuardedBody::new(body, guard, cap),
            permit: Some(in_use),
        });
        HttpResponse::try_from(http::Response::from_parts(parts, body))
            .map_err(|e| ConnectorError::other(e.into(), None))
    }
}

impl HttpConnector for BoundedHttpClient {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let this = self.clone();
        HttpConnectorFuture::new(async move { this.send(request).await })
    }
}

impl HttpClient for BoundedHttpClient {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        // Timeouts are ours (connect timeout here, stall timeouts in the fetch engine), so the
        // same pool serves every setting and the cap stays process-wide.
        SharedHttpConnector::new(self.clone())
    }
}
