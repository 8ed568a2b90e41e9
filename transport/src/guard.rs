//! Guards on every S3 response, so that no server, however broken or hostile, can hold a
//! connection or memory without limit:
//!
//! - **Headers in time.** A request whose response headers do not arrive within the stall
//!   timeout fails with [`BodyError::NoHeaders`].
//! - **No stall.** A body that keeps the reader waiting for the stall timeout without a byte
//!   fails with [`BodyError::Stalled`].
//! - **A minimum rate.** A body that delivers less than [`MinRate::bytes_per_sec`] over a window
//!   of [`MinRate::window`] of waiting fails with [`BodyError::TooSlow`]: a trickle of one byte
//!   just under the stall timeout frees its connection too.
//! - **Bounded size.** The body of a request without a `Range` header (listings, HEADs, error
//!   documents: everything the SDK buffers whole) is refused past [`UNRANGED_BODY_CAP`]
//!   ([`BodyError::TooLarge`]), from its `Content-Length` at once or as the bytes come.
//!
//! Only the time the reader spends *waiting for the server* counts. A reader that is slow to
//! ask for the next bytes (its disk is busy) is not the server's fault, so the clock runs only
//! while a poll is pending.
//!
//! The errors are one type, [`BodyError`], which `retry` recognises by type in an error's
//! source chain: stalls and trickles are retried like stalls, an oversized body is refused.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Largest body accepted for a request without a `Range` header that is not an object's
/// whole-object GET (listings, HEADs). A ListObjectsV2 page of 1000 keys is about 300 KiB;
/// 16 MiB leaves a wide margin and still bounds memory. A whole-object GET is bounded by the
/// object's own size instead.
pub const UNRANGED_BODY_CAP: u64 = 16 << 20;

/// An error response (any status but 2xx) is read this far and no further: S3's error
/// documents are a few hundred bytes, and the SDK reads them whole, so a hostile server's
/// gigabyte of "error" must not reach it. The rest is cut off (its connection closed), and the
/// status still decides what happens next.
pub const ERROR_BODY_CAP: u64 = 1 << 20;

/// The default `--stall-timeout`.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The slowest a body may be, on average over a window of waiting (`--min-rate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MinRate {
    /// Bytes per second; 0 turns the check off.
    pub bytes_per_sec: u64,
    /// The window the average is taken over.
    pub window: Duration,
}

impl MinRate {
    /// 64 KiB/s over 30 s: far below any useful S3 connection, far above a trickle.
    pub const DEFAULT: MinRate = MinRate {
        bytes_per_sec: 64 << 10,
        window: Duration::from_secs(30),
    };

    /// No minimum.
    pub const OFF: MinRate = MinRate {
        bytes_per_sec: 0,
        window: Duration::from_secs(30),
    };

    fn enabled(&self) -> bool {
        self.bytes_per_sec > 0 && !self.window.is_zero()
    }

    /// Bytes a window of `waited` must have brought.
    fn needed(&self, waited: Duration) -> u64 {
        (self.bytes_per_sec as f64 * waited.as_secs_f64()) as u64
    }
}

impl Default for MinRate {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The limits every response is held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyGuard {
    /// Longest wait for headers, and for the next byte of a body.
    pub stall_timeout: Duration,
    /// The minimum rate of a body.
    pub min_rate: MinRate,
}

impl Default for BodyGuard {
    fn default() -> Self {
        Self {
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            min_rate: MinRate::DEFAULT,
        }
    }
}

/// Why a guard gave up on a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// No response headers within the stall timeout.
    NoHeaders {
        /// The timeout.
        after: Duration,
    },
    /// No byte of the body within the stall timeout.
    Stalled {
        /// The timeout.
        after: Duration,
    },
    /// The body came slower than the minimum rate.
    TooSlow {
        /// Bytes received in the window.
        received: u64,
        /// The window of waiting they came in.
        waited: Duration,
        /// The minimum.
        min_rate: MinRate,
    },
    /// The body of an unranged request is larger than [`UNRANGED_BODY_CAP`].
    TooLarge {
        /// The cap.
        limit: u64,
    },
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::NoHeaders { after } => {
                write!(f, "no response headers within {}s", after.as_secs_f32())
            }
            BodyError::Stalled { after } => write!(f, "no byte for {}s", after.as_secs_f32()),
            BodyError::TooSlow {
                received,
                waited,
                min_rate,
            } => write!(
                f,
                "body slower than the minimum rate: {received} bytes in {:.1}s, below {} bytes/s",
                waited.as_secs_f64(),
                min_rate.bytes_per_sec
            ),
            BodyError::TooLarge { limit } => {
                write!(f, "response body larger than {} MiB refused", limit >> 20)
            }
        }
    }
}

impl std::error::Error for BodyError {}

/// A response body held to a [`BodyGuard`] (and, for unranged requests, to a size cap).
pub struct GuardedBody<B> {
    inner: B,
    guard: BodyGuard,
    cap: Option<u64>,
    received: u64,
    /// When the current wait for the server began.
    waiting_since: Option<Instant>,
    /// Waiting time and bytes of the current min-rate window.
    window_waited: Duration,
    window_bytes: u64,
    timer: Option<Pin<Box<Sleep>>>,
    failed: bool,
}

impl<B> GuardedBody<B> {
    /// Guards `inner`; `cap` bounds its total size.
    pub fn new(inner: B, guard: BodyGuard, cap: Option<u64>) -> Self {
        Self {
            inner,
            guard,
            cap,
            received: 0,
            waiting_since: None,
            window_waited: Duration::ZERO,
            window_bytes: 0,
            timer: None,
            failed: false,
        }
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Counts `bytes` that just arrived; an error if the guard is broken.
    fn arrived(&mut self, bytes: u64, now: Instant) -> Result<(), BodyError> {
        self.received += bytes;
        if let Some(limit) = self.cap
            && self.received > limit
        {
            return Err(BodyError::TooLarge { limit });
        }
        if let Some(since) = self.waiting_since.take() {
            self.window_waited += now.saturating_duration_since(since);
        }
        self.window_bytes += bytes;
        let rate = self.guard.min_rate;
        if rate.enabled() && self.window_waited >= rate.window {
            if self.window_bytes < rate.needed(self.window_waited) {
                return Err(BodyError::TooSlow {
                    received: self.window_bytes,
                    waited: self.window_waited,
                    min_rate: rate,
                });
            }
            self.window_waited = Duration::ZERO;
            self.window_bytes = 0;
        }
        Ok(())
    }

    /// The reader is waiting: an error if it has waited too long, otherwise when to look again.
    fn waiting(&mut self, now: Instant) -> Result<Instant, BodyError> {
        let since = *self.waiting_since.get_or_insert(now);
        let stall_at = since + self.guard.stall_timeout;
        if now >= stall_at {
            return Err(BodyError::Stalled {
                after: self.guard.stall_timeout,
            });
        }
        let rate = self.guard.min_rate;
        let mut next = stall_at;
        if rate.enabled() && self.window_bytes < rate.needed(rate.window) {
            // The window fills while nothing comes; at its end the average is too low.
            let window_end = since + rate.window.saturating_sub(self.window_waited);
            if now >= window_end {
                let waited = self.window_waited + now.saturating_duration_since(since);
                return Err(BodyError::TooSlow {
                    received: self.window_bytes,
                    waited,
                    min_rate: rate,
                });
            }
            next = next.min(window_end);
        }
        Ok(next)
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let bytes = frame.data_ref().map_or(0, |d| d.len() as u64);
                    if let Err(error) = this.arrived(bytes, Instant::now()) {
                        this.failed = true;
                        return Poll::Ready(Some(Err(error.into())));
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            let wake_at = match this.waiting(Instant::now()) {
                Ok(at) => at,
                Err(error) => {
                    this.failed = true;
                    return Poll::Ready(Some(Err(error.into())));
                }
            };
            let timer = match &mut this.timer {
                Some(timer) => {
                    if timer.deadline() != wake_at {
                        timer.as_mut().reset(wake_at);
                    }
                    timer
                }
                None => this
                    .timer
                    .insert(Box::pin(tokio::time::sleep_until(wake_at))),
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The deadline passed: poll the body once more, then judge.
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Checks a response's announced length against the cap of an unranged request.
pub fn check_length(content_length: Option<u64>, cap: Option<u64>) -> Result<(), BodyError> {
    match (content_length, cap) {
        (Some(length), Some(limit)) if length > limit => Err(BodyError::TooLarge { limit }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body fed by a channel, so a test decides when bytes arrive.
    struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
        }
    }

    fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, ChannelBody) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        (tx, ChannelBody(rx))
    }

    type Frames = Option<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>;

    async fn next_frame(body: &mut GuardedBody<ChannelBody>) -> Frames {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    fn guard(stall_ms: u64, rate: u64, window_ms: u64) -> BodyGuard {
        BodyGuard {
            stall_timeout: Duration::from_millis(stall_ms),
            min_rate: MinRate {
                bytes_per_sec: rate,
                window: Duration::from_millis(window_ms),
            },
        }
    }

    async fn next_error(body: &mut GuardedBody<ChannelBody>) -> BodyError {
        loop {
            match next_frame(body).await {
                Some(Ok(_)) => {}
                Some(Err(error)) => return *error.downcast::<BodyError>().expect("a BodyError"),
                None => panic!("the body ended without an error"),
            }
        }
    }

    #[tokio::test]
    async fn a_silent_body_stalls_after_the_timeout() {
        let (_tx, inner) = channel_body();
        let mut body = GuardedBody::new(inner, guard(200, 0, 30_000), None);
        let started = Instant::now();
        let error = next_error(&mut body).await;
        assert_eq!(
            error,
            BodyError::Stalled {
                after: Duration::from_millis(200)
            }
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn a_trickle_just_under_the_stall_timeout_is_too_slow() {
        let (tx, inner) = channel_body();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(150)).await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
            }
        });
        let mut body = GuardedBody::new(inner, guard(200, 1024, 600), None);
        let started = Instant::now();
        let error = next_error(&mut body).await;
        assert!(matches!(error, BodyError::TooSlow { .. }), "{error:?}");
        // Judged after one window of waiting, not before.
        assert!(started.elapsed() >= Duration::from_millis(600));
    }

    #[tokio::test]
    async fn a_steady_body_passes_and_a_slow_reader_is_not_the_servers_fault() {
        let (tx, inner) = channel_body();
        tokio::spawn(async move {
            for _ in 0..6 {
                if tx.send(Bytes::from(vec![0u8; 1024])).await.is_err() {
                    return;
                }
            }
        });
        let mut body = GuardedBody::new(inner, guard(100, 64 << 10, 100), None);
        let mut total = 0;
        while let Some(frame) = next_frame(&mut body).await {
            total += frame.unwrap().into_data().unwrap().len();
            // The reader dawdles for longer than the stall timeout between reads: the server
            // already sent, so this is not a stall.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert_eq!(total, 6 * 1024);
    }

    #[tokio::test]
    async fn an_unranged_body_over_the_cap_is_refused() {
        let (tx, inner) = channel_body();
        tokio::spawn(async move {
            for _ in 0..10 {
                if tx.send(Bytes::from(vec![b'<'; 1000])).await.is_err() {
                    return;
                }
            }
        });
        let mut body = GuardedBody::new(inner, guard(1_000, 0, 1_000), Some(4_500));
        assert_eq!(
            next_error(&mut body).await,
            BodyError::TooLarge { limit: 4_500 }
        );
        assert!(check_length(Some(4_501), Some(4_500)).is_err());
        assert!(check_length(Some(4_500), Some(4_500)).is_ok());
        assert!(check_length(Some(1 << 40), None).is_ok());
    }
}
