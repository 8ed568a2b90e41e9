//! The operations HTTP port both cluster roles serve (`/healthz`, `/readyz`, `/metrics`, and
//! the coordinator's status page), bounded like every other port of ours:
//!
//! - **At most [`HttpPortLimits::max_connections`] connections at once**: one accepted past the
//!   cap is closed at once, so a peer that opens sockets by the thousand holds a fixed number
//!   of slots and file descriptors, never more.
//! - **Every slot comes back**: a request head must arrive within `header_timeout`, and a
//!   connection that moves no byte either way for `idle_timeout` is closed, whatever hyper's
//!   keep-alive state, so silent peers cannot keep slots for ever. The TLS handshake has its
//!   own deadline.
//! - **Running out of file descriptors does not end the server**: a failed accept (EMFILE,
//!   ENFILE) backs off briefly and accepting goes on.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bounds of an HTTP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpPortLimits {
    /// Connections served at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// Time a request head may take to arrive.
    pub header_timeout: Duration,
    /// Time a connection may move no byte either way before it is closed.
    pub idle_timeout: Duration,
    /// Time a TLS handshake may take.
    pub handshake_timeout: Duration,
}

impl Default for HttpPortLimits {
    /// Room for probes, scrapes and people (256 connections); a peer gets 10 s to send a
    /// request head, a quiet connection is closed after 30 s.
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Pause after a failed accept (out of file descriptors, say), so that the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Serves `app` on `listener` (https with `tls`) within `limits` until `shutdown`.
pub async fn serve_http_port(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: HttpPortLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "http accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: closed as it was accepted (dropping the stream).
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let activity = Activity::new();
            let stream = Watched {
                inner: stream,
                activity: activity.clone(),
            };
            let served = tokio::select! {
                served = serve_connection(stream, app, tls, limits) => served,
                () = activity.idle_for(limits.idle_timeout) => Ok(()),
                () = stop.cancelled() => Ok(()),
            };
            if let Err(error) = served {
                tracing::debug!(%error, "http connection ended with an error");
            }
        });
    }
}

async fn serve_connection(
    stream: Watched<tokio::net::TcpStream>,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: HttpPortLimits,
) -> Result<(), hyper::Error> {
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    match tls {
        Some(acceptor) => {
            let Ok(Ok(stream)) =
                tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await
            else {
                return Ok(());
            };
            http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
        }
        None => {
            http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
        }
    }
}

/// When a connection last moved a byte, in milliseconds since it was accepted.
#[derive(Clone)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Returns once no byte has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            match idle.checked_sub(last.elapsed()) {
                Some(left) if !left.is_zero() => tokio::time::sleep(left).await,
                _ => return,
            }
        }
    }
}

/// A stream that notes every byte it moves in its [`Activity`].
struct Watched<S> {
    inner: S,
    activity: Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const LIMITS: HttpPortLimits = HttpPortLimits {
        max_connections: 8,
        header_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(800),
        handshake_timeout: Duration::from_millis(500),
    };

    async fn port(limits: HttpPortLimits) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let app = axum::Router::new().route("/healthz", get(|| async { "ok\n" }));
        tokio::spawn(serve_http_port(listener, app, None, limits, stop.clone()));
        (addr, stop)
    }

    /// Whether the server closes the connection (an end or a reset) within `limit`.
    async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
        let mut sink = Vec::new();
        tokio::time::timeout(limit, stream.read_to_end(&mut sink))
            .await
            .is_ok()
    }

    async fn healthz(addr: std::net::SocketAddr) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_as_they_are_accepted() {
        let (addr, _stop) = port(LIMITS).await;
        let mut silent = Vec::new();
        for _ in 0..LIMITS.max_connections {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        // Let the server take them all before the one past the cap.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut extra = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut extra, Duration::from_millis(300)).await,
            "a connection past the cap was kept"
        );
        // The silent ones are still open (well inside their header deadline).
        let mut first = silent.remove(0);
        assert!(!closed_within(&mut first, Duration::from_millis(100)).await);
    }

    #[tokio::test]
    async fn silent_peers_lose_their_slots_and_probes_answer_again() {
        let (addr, _stop) = port(LIMITS).await;
        let mut silent = Vec::new();
        for _ in 0..LIMITS.max_connections {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        let started = std::time::Instant::now();
        for stream in &mut silent {
            assert!(
                closed_within(stream, Duration::from_secs(5)).await,
                "a silent connection was never closed"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(healthz(addr).await.ends_with("ok\n"));
    }

    #[tokio::test]
    async fn a_kept_alive_connection_that_goes_quiet_is_closed() {
        let (addr, _stop) = port(LIMITS).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 256];
        let read = stream.read(&mut answer).await.unwrap();
        assert!(String::from_utf8_lossy(&answer[..read]).ends_with("ok\n"));
        // Kept alive, then quiet: the server ends it after the idle timeout.
        let started = std::time::Instant::now();
        assert!(closed_within(&mut stream, Duration::from_secs(5)).await);
        assert!(started.elapsed() >= Duration::from_millis(400));
    }
}
