//! Fault injection in front of the S3 service, at the HTTP layer: throttling and error
//! statuses, bodies that reset, truncate, stall, crawl or carry a flipped byte, delayed
//! responses, an object replaced right after a response ("replaced mid-download"), listings
//! whose pagination never ends (a repeated or an endless continuation token), and bodies far
//! larger than any listing page.
//!
//! For uploads: a connection reset without an answer, before or after the write is carried
//! out ([`Fault::Reset`]), and a write that stores the object but reports another ETag
//! ([`Fault::WrongEtag`]); error statuses answer a PUT only after its body is read, so a
//! client sees them rather than a broken pipe.
//!
//! A [`FaultRule`] counts the requests it matches (by method, key, S3 operation and query) and
//! fires on matches `skip+1 ..= skip+times`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Method;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use crate::s3_server::Operation;

/// What to do to a matching request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// 503 with `<Code>SlowDown</Code>`.
    SlowDown,
    /// Any status with an S3 error code (500 InternalError, 400 RequestTimeout, 404 NoSuchKey...).
    Status {
        /// HTTP status.
        status: u16,
        /// S3 error code.
        code: String,
    },
    /// Headers and `after_bytes` of the body, then a TCP reset (SO_LINGER 0). An answer
    /// without a body (a PUT's) may be complete before the reset: [`Fault::Reset`] is the
    /// reset for uploads.
    ResetMidBody {
        /// Body bytes sent first.
        after_bytes: u64,
    },
    /// Headers (full Content-Length) and `after_bytes`, then a clean close.
    TruncateBody {
        /// Body bytes sent first.
        after_bytes: u64,
    },
    /// `after_bytes`, then nothing more.
    StallBody {
        /// Body bytes sent first.
        after_bytes: u64,
    },
    /// The whole body throttled to this rate.
    SlowBody {
        /// Rate.
        bytes_per_sec: u64,
    },
    /// One byte flipped at this body offset: of the response, or of the request for an upload
    /// (PutObject, UploadPart), before the store sees it.
    CorruptBody {
        /// Offset in the body.
        at: u64,
    },
    /// Serve normally, then replace the object with `data`.
    ReplaceAfterResponse {
        /// The new version.
        data: Bytes,
    },
    /// Wait before answering.
    DelayResponse {
        /// Delay.
        millis: u64,
    },
    /// A listing page with no key that says it is truncated and hands back the token it was
    /// asked with (or `"again"` on the first page): pagination that goes round in circles.
    RepeatListingToken,
    /// A listing page with no key that says it is truncated, with a fresh token every time:
    /// pagination that never ends.
    EndlessListing,
    /// Listing pages of `keys_per_page` junk keys of `key_bytes` each, truncated with a fresh
    /// token every time: a server that fills a listing with garbage.
    JunkListing {
        /// Keys on each page.
        keys_per_page: usize,
        /// Length of each key.
        key_bytes: usize,
    },
    /// A response of `status` (200: a listing) whose body is `bytes` long (XML whitespace),
    /// sent with its Content-Length or, with `chunked`, without one.
    HugeBody {
        /// HTTP status (200, or an error's).
        status: u16,
        /// Body length.
        bytes: u64,
        /// Leave out the Content-Length, so only the bytes themselves can tell.
        chunked: bool,
    },
    /// No answer: the request's body is read, then the connection is reset (SO_LINGER 0).
    /// With `processed`, the request is carried out first (the upload stored, the multipart
    /// upload completed), as when a server commits a write and the answer is lost; without,
    /// nothing is stored.
    Reset {
        /// Carry the request out before the reset.
        processed: bool,
    },
    /// Carry the request out normally, but report another ETag of the same shape: in the
    /// `ETag` header (PutObject, UploadPart, HEAD, GET) or in CompleteMultipartUpload's XML
    /// `<ETag>`. The stored object keeps its real ETag.
    WrongEtag,
}

impl Fault {
    /// Short name for request records.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::SlowDown => "slowdown",
            Fault::Status { .. } => "status",
            Fault::ResetMidBody { .. } => "reset",
            Fault::TruncateBody { .. } => "truncate",
            Fault::StallBody { .. } => "stall",
            Fault::SlowBody { .. } => "slow",
            Fault::CorruptBody { .. } => "corrupt",
            Fault::ReplaceAfterResponse { .. } => "replace",
            Fault::DelayResponse { .. } => "delay",
            Fault::RepeatListingToken => "repeat_token",
            Fault::EndlessListing => "endless_listing",
            Fault::JunkListing { .. } => "junk_listing",
            Fault::HugeBody { .. } => "huge_body",
            Fault::Reset { processed: false } => "reset_unprocessed",
            Fault::Reset { processed: true } => "reset_processed",
            Fault::WrongEtag => "wrong_etag",
        }
    }
}

/// When a fault applies.
#[derive(Clone, Debug)]
pub struct FaultRule {
    /// Only this method (None: any).
    pub method: Option<Method>,
    /// Only keys containing this (None: any request, listings included).
    pub key_contains: Option<String>,
    /// Only GETs of an object's bytes, ranged or whole: not HEADs, not listings, not
    /// ListParts.
    pub object_gets_only: bool,
    /// Only requests whose raw query string contains this (`partNumber=`, `uploadId=`,
    /// `partNumber=3&`...); None: any.
    pub query_contains: Option<String>,
    /// Only this S3 operation (UploadPart, CompleteMultipartUpload...); None: any.
    pub operation: Option<Operation>,
    /// Matching requests let through first.
    pub skip: usize,
    /// Then fire this many times (None: forever).
    pub times: Option<usize>,
    /// The fault.
    pub fault: Fault,
}

impl FaultRule {
    /// `fault` on every request, forever: the base to narrow with struct update syntax,
    /// `FaultRule { operation: Some(Operation::UploadPart), times: Some(1), ..FaultRule::new(f) }`.
    pub fn new(fault: Fault) -> Self {
        Self {
            method: None,
            key_contains: None,
            object_gets_only: false,
            query_contains: None,
            operation: None,
            skip: 0,
            times: None,
            fault,
        }
    }
}

/// The chaos mix of faults on object GETs (keys containing `e5.oper`), three of each, spread
/// over the requests: SlowDown, a reset mid-body, a truncated body, a stalled body, a 500, and
/// ten bodies throttled to 2 MiB/s. The connection-cap tests run under it, and so does the
/// `chaos` benchmark (`era5-test-s3 --chaos`).
pub fn chaos_mix() -> Vec<FaultRule> {
    let every_nth = |fault: Fault, skip: usize| FaultRule {
        method: Some(Method::GET),
        key_contains: Some("e5.oper".into()),
        object_gets_only: true,
        query_contains: None,
        operation: None,
        skip,
        times: Some(3),
        fault,
    };
    vec![
        every_nth(Fault::SlowDown, 0),
        every_nth(
            Fault::ResetMidBody {
                after_bytes: 50_000,
            },
            2,
        ),
        every_nth(
            Fault::TruncateBody {
                after_bytes: 70_000,
            },
            4,
        ),
        every_nth(
            Fault::StallBody {
                after_bytes: 10_000,
            },
            6,
        ),
        every_nth(
            Fault::Status {
                status: 500,
                code: "InternalError".into(),
            },
            8,
        ),
        FaultRule {
            times: Some(10),
            ..every_nth(
                Fault::SlowBody {
                    bytes_per_sec: 2 << 20,
                },
                10,
            )
        },
    ]
}

/// A rule with its match counter.
#[derive(Debug)]
pub(crate) struct ArmedRule {
    rule: FaultRule,
    matched: AtomicUsize,
}

impl ArmedRule {
    pub(crate) fn new(rule: FaultRule) -> Self {
        Self {
            rule,
            matched: AtomicUsize::new(0),
        }
    }

    /// Whether this request triggers the fault (and counts the match).
    pub(crate) fn fires(
        &self,
        method: &Method,
        key: Option<&str>,
        query: Option<&str>,
        operation: Operation,
    ) -> Option<Fault> {
        let rule = &self.rule;
        if rule.method.as_ref().is_some_and(|m| m != method) {
            return None;
        }
        if let Some(needle) = &rule.key_contains
            && !key.is_some_and(|k| k.contains(needle.as_str()))
        {
            return None;
        }
        if rule.object_gets_only && operation != Operation::GetObject {
            return None;
        }
        if let Some(needle) = &rule.query_contains
            && !query.is_some_and(|q| q.contains(needle.as_str()))
        {
            return None;
        }
        if rule.operation.is_some_and(|wanted| wanted != operation) {
            return None;
        }
        let number = self.matched.fetch_add(1, Ordering::SeqCst);
        let fires =
            number >= rule.skip && rule.times.is_none_or(|times| number < rule.skip + times);
        fires.then(|| rule.fault.clone())
    }
}

/// The S3 XML error document.
pub(crate) fn error_body(code: &str) -> Bytes {
    Bytes::from(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected fault</Message></Error>"
    ))
}

/// A truncated ListObjectsV2 page without keys, continued by `token`.
pub(crate) fn empty_listing_page(bucket: &str, prefix: &str, token: &str) -> Bytes {
    Bytes::from(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>{bucket}</Name><Prefix>{prefix}</Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><NextContinuationToken>{token}</NextContinuationToken></ListBucketResult>"
    ))
}

/// A truncated listing page of `keys` junk keys of `key_bytes` each (letters that name no
/// object of the layout), continued by `token`.
pub(crate) fn junk_listing_page(
    bucket: &str,
    prefix: &str,
    token: &str,
    keys: usize,
    key_bytes: usize,
) -> Bytes {
    let mut page = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>{bucket}</Name><Prefix>{prefix}</Prefix><KeyCount>{keys}</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><NextContinuationToken>{token}</NextContinuationToken>"
    );
    for n in 0..keys {
        let name = format!("{prefix}junk-{token}-{n}-");
        let fill = key_bytes.saturating_sub(name.len());
        page.push_str("<Contents><Key>");
        page.push_str(&name);
        page.extend(std::iter::repeat_n('x', fill));
        page.push_str("</Key><Size>1</Size></Contents>");
    }
    page.push_str("</ListBucketResult>");
    Bytes::from(page)
}

/// A body of `total` bytes: the start of a listing, then whitespace, generated as it is sent
/// (the server never holds it).
pub(crate) struct HugeBody {
    total: u64,
    sent: u64,
}

impl HugeBody {
    pub(crate) fn new(total: u64) -> Self {
        Self { total, sent: 0 }
    }
}

impl Body for HugeBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        const HEAD: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult>";
        const CHUNK: usize = 64 << 10;
        if self.sent >= self.total {
            return Poll::Ready(None);
        }
        let len = (self.total - self.sent).min(CHUNK as u64) as usize;
        let mut chunk = vec![b' '; len];
        if self.sent == 0 {
            let head = HEAD.len().min(len);
            chunk[..head].copy_from_slice(&HEAD[..head]);
        }
        self.sent += len as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.total
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.total - self.sent)
    }
}

/// Figures the body wrapper keeps up to date.
#[derive(Debug, Default)]
pub(crate) struct BodyStats {
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) gets_in_progress: AtomicUsize,
    pub(crate) max_gets_in_progress: AtomicUsize,
}

/// How the wrapper alters a body.
#[derive(Clone, Debug, Default)]
pub(crate) enum BodyFault {
    #[default]
    None,
    Reset(u64),
    Truncate(u64),
    Stall(u64),
    Slow(u64),
    Corrupt(u64),
}

/// A response body passed through a fault, counting what it sends.
pub(crate) struct FaultBody<B> {
    inner: Pin<Box<B>>,
    fault: BodyFault,
    sent: u64,
    /// Bytes held back by a cut or a throttle, sent before reading more.
    held: Option<Bytes>,
    delay: Option<Pin<Box<tokio::time::Sleep>>>,
    stats: Arc<BodyStats>,
    counts_as_get: bool,
    /// Wakes the connection task to reset the socket.
    reset: Option<Arc<Notify>>,
    flushed_before_cut: bool,
    done: bool,
}

impl<B> FaultBody<B> {
    pub(crate) fn new(
        inner: B,
        fault: BodyFault,
        stats: Arc<BodyStats>,
        counts_as_get: bool,
        reset: Option<Arc<Notify>>,
    ) -> Self {
        if counts_as_get {
            let now = stats.gets_in_progress.fetch_add(1, Ordering::SeqCst) + 1;
            stats.max_gets_in_progress.fetch_max(now, Ordering::SeqCst);
        }
        Self {
            inner: Box::pin(inner),
            fault,
            sent: 0,
            held: None,
            delay: None,
            stats,
            counts_as_get,
            reset,
            flushed_before_cut: false,
            done: false,
        }
    }

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            if self.counts_as_get {
                self.stats.gets_in_progress.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Limit after which the body is cut, if any.
    fn cut_at(&self) -> Option<u64> {
        match self.fault {
            BodyFault::Reset(n) | BodyFault::Truncate(n) | BodyFault::Stall(n) => Some(n),
            _ => None,
        }
    }
}

impl<B> Drop for FaultBody<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

impl<B> Body for FaultBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(delay) = &mut this.delay {
            if delay.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.delay = None;
        }
        if let Some(limit) = this.cut_at()
            && this.sent >= limit
        {
            if !this.flushed_before_cut {
                // Yield once with a short pause so hyper flushes what was sent: the client must
                // see the headers and the first bytes before the cut.
                this.flushed_before_cut = true;
                let mut pause = Box::pin(tokio::time::sleep(Duration::from_millis(20)));
                if pause.as_mut().poll(cx).is_pending() {
                    this.delay = Some(pause);
                    return Poll::Pending;
                }
            }
            return match this.fault.clone() {
                BodyFault::Stall(_) => Poll::Pending,
                BodyFault::Reset(_) => {
                    if let Some(reset) = &this.reset {
                        reset.notify_one();
                    }
                    Poll::Pending
                }
                _ => {
                    this.finish();
                    Poll::Ready(Some(Err("injected truncation".into())))
                }
            };
        }
        let mut chunk = match this.held.take() {
            Some(chunk) => chunk,
            None => match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(error))) => {
                    this.finish();
                    return Poll::Ready(Some(Err(error.into())));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            },
        };
        if let Some(limit) = this.cut_at()
            && this.sent + chunk.len() as u64 > limit
        {
            let keep = (limit - this.sent) as usize;
            chunk = chunk.slice(..keep);
        }
        if let BodyFault::Slow(rate) = this.fault {
            // Send a tenth of a second's worth, then wait that long.
            let slice = ((rate / 10).max(1) as usize).min(chunk.len());
            if slice < chunk.len() {
                this.held = Some(chunk.slice(slice..));
                chunk = chunk.slice(..slice);
            }
            let pause = Duration::from_secs_f64(slice as f64 / rate.max(1) as f64);
            this.delay = Some(Box::pin(tokio::time::sleep(pause)));
        }
        if let BodyFault::Corrupt(at) = this.fault
            && at >= this.sent
            && at < this.sent + chunk.len() as u64
        {
            let mut copy = BytesMut::from(chunk.as_ref());
            copy[(at - this.sent) as usize] ^= 0xff;
            chunk = copy.freeze();
        }
        this.sent += chunk.len() as u64;
        this.stats
            .bytes_sent
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.held.is_none() && self.cut_at().is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
