//! The HTTP client under the S3 SDK: our own HTTP/1.1 connection pool, with a hard cap on
//! connections and a choice of front-end per connection.
//!
//! Today's ERA5 downloaders leak connections: a response body that is never read to the end
//! nor dropped keeps its connection, hyper keeps idle ones for 90 s while S3 closes them after a
//! few seconds, and nothing caps the total. And one S3 host name has many front-end addresses,
//! some slower than others, which a pool keyed by host name cannot tell apart. So the pool is
//! ours, over hyper's connection-level client:
//!
//! 1. **Request permits.** Every request takes a permit from a semaphore of `max_connections`
//!    and the permit rides inside the response body ([`body::PoolBody`]) until the body ends,
//!    fails or is dropped. So no more than `max_connections` requests are ever in flight.
//! 2. **Connection slots.** A connection takes a slot from a second semaphore of
//!    `max_connections` before it dials, and the slot lives inside the socket's I/O object
//!    until the socket is dropped (see `conn`). So the number of open TCP connections can never
//!    exceed the cap. When every slot is held and a request needs a connection to another
//!    front-end, the oldest idle connection is closed to make room.
//! 3. **Idle expiry.** Idle connections expire after `idle_timeout` (10 s by default), before
//!    S3 closes them from its side; a reaper closes them even when no request comes.
//! 4. **Front-ends.** Each endpoint's host is resolved to every address it has (again every
//!    minute), and each new connection goes where [`FrontEnds::pick`] says: spread over the
//!    addresses, fewer to slow or failing ones. An idle connection to a front-end that scores
//!    under half the best is closed rather than reused. A request's [`Route`] can ask to avoid
//!    one front-end (a hedged request does) and learns which one served it.
//!
//! Both semaphores feed [`ConnectionStats`], the live gauge of open and in-use connections,
//! counted by the client itself. Every response is held to a [`BodyGuard`] (headers in time,
//! no stall, a minimum rate, and a size cap on unranged bodies; see [`crate::guard`]), so a
//! hostile server can hold neither a connection nor memory for long.

mod body;
mod conn;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use common::sync::MutexExt;
use hyper::client::conn::http1::SendRequest;
use tokio::sync::{Notify, Semaphore};

pub use conn::{DialError, READ_BUFFER, load_ca_bundle};

use crate::cost::{RequestKind, Traffic, TrafficCounters};
use crate::frontends::{Endpoints, FrontEndSnapshot, FrontEnds, InFlight, Resolver, Route};
use crate::guard::{
    BodyError, BodyGuard, ERROR_BODY_CAP, GuardedBody, UNRANGED_BODY_CAP, check_length,
};
use body::{InUse, Lease, PoolBody};
use conn::{Dialer, EndpointKey};

/// Idle pooled connections are closed after this long; S3 closes idle keep-alive connections
/// after a few seconds to ~20 s, so ours must go first.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed to establish a TCP (and TLS) connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a reused connection may take to be ready for its next request.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// Where host names' addresses come from (`--resolve` overrides).
    pub resolver: Resolver,
    /// Root certificates trusted besides the public ones (`AWS_CA_BUNDLE`).
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Each socket's receive buffer (`SO_RCVBUF`), instead of the kernel's autotuning: under a
    /// `--bwlimit` cap, so that the link carries the cap rather than bursts into buffers.
    pub receive_buffer: Option<usize>,
}

impl PoolConfig {
    /// A pool of `max_connections` with the default timeouts.
    pub fn new(max_connections: usize) -> Self {
        Self {
            max_connections: max_connections.max(1),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            guard: BodyGuard::default(),
            resolver: Resolver::default(),
            extra_roots: Vec::new(),
            receive_buffer: None,
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
    /// Requests by kind, bytes in and out (`cost`).
    pub(crate) traffic: TrafficCounters,
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
    /// Requests sent by kind, bytes on the sockets.
    pub traffic: Traffic,
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
            traffic: self.traffic.snapshot(),
        }
    }

    fn connection_opened(&self) {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(open, Ordering::Relaxed);
        self.connects.fetch_add(1, Ordering::Relaxed);
    }
}

/// An idle connection, ready for its next request.
struct Idle {
    lease: Lease,
    since: Instant,
}

/// The pool's shared state.
pub(crate) struct Inner {
    config: PoolConfig,
    /// Requests in flight.
    requests: Arc<Semaphore>,
    /// Open connections.
    slots: Arc<Semaphore>,
    stats: Arc<ConnectionStats>,
    endpoints: Endpoints,
    /// Idle connections of every endpoint, oldest first.
    idle: Mutex<Vec<Idle>>,
    /// Signalled when a connection goes idle, for requests waiting for a slot.
    idle_returned: Notify,
    tls: tokio_rustls::TlsConnector,
    reaper_started: AtomicBool,
}

impl Inner {
    /// A connection whose body was read to the end goes back to the idle list.
    fn return_idle(&self, lease: Lease) {
        if lease.sender.is_closed() {
            return;
        }
        self.idle.lock_unpoisoned().push(Idle {
            lease,
            since: Instant::now(),
        });
        self.idle_returned.notify_waiters();
    }

    /// An idle connection to `addr` of `endpoint`, still open and fresh; stale ones, and ones
    /// to front-ends not worth reusing, are closed on the way.
    fn take_idle(
        &self,
        endpoint: &EndpointKey,
        frontends: &FrontEnds,
        addr: SocketAddr,
    ) -> Option<Lease> {
        let now = Instant::now();
        let mut idle = self.idle.lock_unpoisoned();
        let mut closed = Vec::new();
        let mut found = None;
        let mut index = idle.len();
        while index > 0 {
            index -= 1;
            let entry = &idle[index];
            if entry.lease.sender.is_closed()
                || now.duration_since(entry.since) >= self.config.idle_timeout
            {
                closed.push(idle.remove(index));
                continue;
            }
            if &entry.lease.endpoint != endpoint {
                continue;
            }
            if !frontends.worth_reusing(entry.lease.addr) {
                closed.push(idle.remove(index));
                continue;
            }
            if entry.lease.addr == addr {
                found = Some(idle.remove(index).lease);
                break;
            }
        }
        drop(idle);
        // Dropping a sender closes its connection, which frees its slot.
        drop(closed);
        found
    }

    /// Closes the oldest idle connection, to free its slot for a connection elsewhere.
    fn evict_oldest_idle(&self) {
        let mut idle = self.idle.lock_unpoisoned();
        if idle.is_empty() {
            return;
        }
        let oldest = idle.remove(0);
        drop(idle);
        drop(oldest);
    }

    /// Closes idle connections past their time.
    fn expire_idle(&self) {
        let now = Instant::now();
        let expired: Vec<Idle> = {
            let mut idle = self.idle.lock_unpoisoned();
            let (keep, expired) = std::mem::take(&mut *idle).into_iter().partition(|entry| {
                !entry.lease.sender.is_closed()
                    && now.duration_since(entry.since) < self.config.idle_timeout
            });
            *idle = keep;
            expired
        };
        drop(expired);
    }
}

/// The bounded client, usable as the S3 SDK's HTTP client.
#[derive(Clone)]
pub struct BoundedHttpClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for BoundedHttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedHttpClient")
            .field("config", &self.inner.config)
            .field("stats", &self.inner.stats.snapshot())
            .finish_non_exhaustive()
    }
}

/// A connection checked out for one request, counted in flight on its front-end.
struct CheckedOut {
    sender: SendRequest<SdkBody>,
    addr: SocketAddr,
    in_flight: InFlight,
}

impl BoundedHttpClient {
    /// Builds the pool. TLS uses rustls with the webpki root certificates.
    pub fn new(config: PoolConfig) -> Self {
        let max = config.max_connections.max(1);
        Self {
            inner: Arc::new(Inner {
                requests: Arc::new(Semaphore::new(max)),
                slots: Arc::new(Semaphore::new(max)),
                stats: Arc::new(ConnectionStats::default()),
                endpoints: Endpoints::default(),
                idle: Mutex::new(Vec::new()),
                idle_returned: Notify::new(),
                tls: conn::tls_connector(&config.extra_roots),
                reaper_started: AtomicBool::new(false),
                config,
            }),
        }
    }

    /// The live gauge.
    pub fn stats(&self) -> Arc<ConnectionStats> {
        self.inner.stats.clone()
    }

    /// The pool's limits.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// Every endpoint's front-end addresses with their connections and scores.
    pub fn frontends(&self) -> Vec<(String, u16, Vec<FrontEndSnapshot>)> {
        self.inner.endpoints.snapshot()
    }

    /// Starts the task that closes expired idle connections (once, from inside the runtime);
    /// it ends with the pool.
    fn start_reaper(&self) {
        if self.inner.reaper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                pool.expire_idle();
            }
        });
    }

    /// The endpoint's front-ends, resolved (again) when due. The first resolution is waited
    /// for; later ones run in the background while the known addresses keep serving.
    async fn frontends_of(&self, endpoint: &EndpointKey) -> Result<Arc<FrontEnds>, ConnectorError> {
        let frontends = self.inner.endpoints.get(&endpoint.host, endpoint.port);
        let now = Instant::now();
        if !frontends.needs_resolving(now) {
            return Ok(frontends);
        }
        let resolver = self.inner.config.resolver.clone();
        let (host, port) = (endpoint.host.clone(), endpoint.port);
        if frontends.is_empty() {
            match resolver.resolve(&host, port).await {
                Ok(addrs) => frontends.update(&addrs, Instant::now()),
                Err(error) => {
                    frontends.resolve_failed();
                    return Err(ConnectorError::io(
                        format!("resolving {host}:{port} failed: {error}").into(),
                    ));
                }
            }
        } else {
            frontends.mark_resolving(now);
            let background = frontends.clone();
            tokio::spawn(async move {
                match resolver.resolve(&host, port).await {
                    Ok(addrs) => background.update(&addrs, Instant::now()),
                    Err(error) => {
                        tracing::debug!(%host, port, %error, "resolving again failed; keeping the known addresses");
                    }
                }
            });
        }
        Ok(frontends)
    }

    /// A connection for one request to `endpoint`, on the front-end [`FrontEnds::pick`]
    /// chooses (other than `avoid` where there is a choice): an idle one to it, or a new one.
    async fn check_out(
        &self,
        endpoint: &EndpointKey,
        frontends: &Arc<FrontEnds>,
        avoid: Option<SocketAddr>,
    ) -> Result<CheckedOut, ConnectorError> {
        let inner = &self.inner;
        loop {
            // Registered before looking, so a connection returned meanwhile is not missed.
            let returned = inner.idle_returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            let Some(addr) = frontends.pick(avoid) else {
                return Err(ConnectorError::io(
                    format!("{} has no address to connect to", endpoint.host).into(),
                ));
            };
            // Counted from now, so requests picking at the same moment spread out.
            let in_flight = frontends.request(addr);
            if let Some(mut lease) = inner.take_idle(endpoint, frontends, addr) {
                match tokio::time::timeout(READY_TIMEOUT, lease.sender.ready()).await {
                    Ok(Ok(())) => {
                        return Ok(CheckedOut {
                            sender: lease.sender,
                            addr,
                            in_flight,
                        });
                    }
                    _ => continue,
                }
            }
            let slot = if let Ok(slot) = inner.slots.clone().try_acquire_owned() {
                slot
            } else {
                // Every slot is held: close the oldest idle connection (to any endpoint or
                // front-end) to make room. Its slot comes back once its connection task has
                // dropped the socket; a connection returned meanwhile is taken instead.
                inner.evict_oldest_idle();
                tokio::select! {
                    slot = inner.slots.clone().acquire_owned() => {
                        slot.map_err(|e| ConnectorError::other(e.into(), None))?
                    }
                    () = &mut returned => continue,
                }
            };
            let dialer = Dialer {
                tls: &inner.tls,
                stats: &inner.stats,
                connect_timeout: inner.config.connect_timeout,
                receive_buffer: inner.config.receive_buffer,
            };
            return match dialer.dial(endpoint, addr, slot, frontends).await {
                Ok(sender) => Ok(CheckedOut {
                    sender,
                    addr,
                    in_flight,
                }),
                Err(error) => {
                    inner.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    frontends.failed(addr);
                    Err(ConnectorError::io(Box::new(error)))
                }
            };
        }
    }

    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, ConnectorError> {
        self.start_reaper();
        let permit = self
            .inner
            .requests
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ConnectorError::other(e.into(), None))?;
        let in_use = InUse::new(permit, self.inner.stats.clone());
        let mut request = request
            .try_into_http1x()
            .map_err(|e| ConnectorError::user(e.into()))?;
        let endpoint = endpoint_of(request.uri())?;
        to_origin_form(&mut request, &endpoint)?;
        // Ranged GETs carry object bytes, bounded by the range the engine checks; a whole-object
        // GET by the object's size, which its route says; everything else (listings) is read
        // whole by the SDK, so it is capped. A HEAD has no body, whatever length it announces.
        let unranged = !request.headers().contains_key(http::header::RANGE);
        let head = request.method() == http::Method::HEAD;
        let route = Route::current();
        let success_cap = (unranged && !head).then(|| {
            route
                .as_ref()
                .and_then(Route::body_limit)
                .unwrap_or(UNRANGED_BODY_CAP)
        });
        let frontends = self.frontends_of(&endpoint).await?;
        let guard = self.inner.config.guard;
        let started = tokio::time::Instant::now();
        let deadline = started + guard.stall_timeout;
        let mut checked = tokio::time::timeout_at(
            deadline,
            self.check_out(&endpoint, &frontends, route.as_ref().and_then(Route::avoid)),
        )
        .await
        .map_err(|_| no_headers(guard))??;
        if let Some(route) = &route {
            route.record(checked.addr);
        }
        // Counted as it is written to a connection: what the server receives (`cost`).
        self.inner
            .stats
            .traffic
            .request(RequestKind::of(request.method(), request.uri().query()));
        let response =
            match tokio::time::timeout_at(deadline, checked.sender.send_request(request)).await {
                Err(_) => return Err(no_headers(guard)),
                Ok(Err(error)) => {
                    frontends.failed(checked.addr);
                    return Err(ConnectorError::io(error.into()));
                }
                Ok(Ok(response)) => response,
            };
        let (mut parts, body) = response.into_parts();
        let length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // An error document is cut at its cap rather than refused: its status still decides.
        let (cap, cut_at) = if parts.status.is_success() {
            (success_cap, None)
        } else {
            (None, Some(ERROR_BODY_CAP))
        };
        // The SDK reads the document to its announced length: announce what it will get.
        if let Some(cut) = cut_at
            && length.is_some_and(|length| length > cut)
        {
            parts
                .headers
                .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(cut));
        }
        // Dropping the body here closes the connection: it is never read.
        check_length(length, cap).map_err(|e| ConnectorError::other(Box::new(e), None))?;
        let lease = Lease {
            sender: checked.sender,
            endpoint,
            addr: checked.addr,
            frontends,
            pool: Arc::downgrade(&self.inner),
        };
        let body = SdkBody::from_body_1_x(PoolBody::new(
            GuardedBody::new(body, guard, cap),
            in_use,
            lease,
            checked.in_flight,
            cut_at,
        ));
        HttpResponse::try_from(http::Response::from_parts(parts, body))
            .map_err(|e| ConnectorError::other(e.into(), None))
    }
}

fn no_headers(guard: BodyGuard) -> ConnectorError {
    ConnectorError::timeout(Box::new(BodyError::NoHeaders {
        after: guard.stall_timeout,
    }))
}

/// The endpoint a request URI names.
fn endpoint_of(uri: &http::Uri) -> Result<EndpointKey, ConnectorError> {
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(ConnectorError::user(
                format!("unsupported URL scheme in `{uri}`").into(),
            ));
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| ConnectorError::user(format!("no host in `{uri}`").into()))?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok(EndpointKey {
        https,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase(),
        port,
    })
}

/// HTTP/1.1 sends the path in the request line and the authority in `Host`.
fn to_origin_form(
    request: &mut http::Request<SdkBody>,
    endpoint: &EndpointKey,
) -> Result<(), ConnectorError> {
    if !request.headers().contains_key(http::header::HOST) {
        let default_port = if endpoint.https { 443 } else { 80 };
        let host = request.uri().host().unwrap_or(&endpoint.host);
        let value = if endpoint.port == default_port {
            host.to_string()
        } else {
            format!("{host}:{}", endpoint.port)
        };
        let value =
            http::HeaderValue::from_str(&value).map_err(|e| ConnectorError::user(Box::new(e)))?;
        request.headers_mut().insert(http::header::HOST, value);
    }
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .to_string();
    *request.uri_mut() = path
        .parse()
        .map_err(|e: http::uri::InvalidUri| ConnectorError::user(Box::new(e)))?;
    Ok(())
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
