//! One part of one object: a ranged GET with `If-Match`, a stall timeout on the headers and on
//! every chunk, retries that resume from the last byte written (so a broken part never
//! downloads its finished prefix again), and hedging of the slow tail. Also the backoff step it
//! shares with the HEAD. It knows one range and the writer it hands bytes to, nothing of how
//! the object was cut (`layout`) or what happens to it once whole (`mod.rs`).
//!
//! **Hedging.** On a real link a few requests are much slower than their peers: a first byte
//! seconds late, or a body crawling from a slow front-end. Waiting for them holds the object
//! (and the end of the run) hostage, and the stall timeout is far too long to help. So:
//! - a request whose first byte is later than a multiple of its peers' (see
//!   `request_stats`) is sent again on another connection, to another front-end where there
//!   are several; the first answer wins and the other request is dropped before any of its
//!   body is read;
//! - a body streaming at under a third of its peers' median rate (and of its share of what
//!   they get now), or, in the end game when half the window is free, one that would take
//!   twice as long as a fresh copy, is taken over: the rest of its range is asked for on
//!   another connection, the slow body keeps streaming meanwhile, and once the new one answers
//!   it continues from where the slow one got to (bytes both delivered are discarded and
//!   counted as duplicates).
//!
//! Both requests carry `If-Match` with the object's ETag, so no object is ever assembled from
//! two versions. Hedges take room beside the window, never past the connection cap, and none
//! starts while duplicate bytes exceed [`DUPLICATE_SHARE`] of the bytes received. When there
//! is no room for a second copy (every connection the cap allows is busy), the slow request is
//! dropped and asked again at once instead (retry reason `slow`), from the last byte written
//! and avoiding its front-end. The stall timeout stays as the last resort.
//!
//! The one part of an object fetched whole, in full verification, asks for S3's additional
//! checksum on its first GET (no `Range`, `x-amz-checksum-mode: ENABLED`): S3 sends checksums
//! only for whole-object reads, and taking it from the GET saves the HEAD, the one round trip
//! that small objects otherwise pay twice.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::operation::get_object::{GetObjectError, GetObjectOutput};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use tokio_util::sync::CancellationToken;
use transport::Route;
use transport::retry::{Failure, RetryReason, chain, classify, classify_body_error};

use super::{Engine, FetchError, PartError, until_cancelled};
use crate::progress::Progress;
use crate::scheduler::{Admitted, Slot};
use crate::verify::{ExpectedChecksum, PartHasher, StreamPlan};
use crate::writer::FileWriter;

/// Duplicate bytes hedges may cost, as a share of the bytes received.
pub const DUPLICATE_SHARE: f64 = 0.05;
/// `--bwlimit` held a reader back this recently: the cap binds (no hedges, no window growth).
pub const BWLIMIT_RECENT: Duration = Duration::from_secs(1);
/// A body is judged for slowness only after this long ...
const RATE_JUDGED_AFTER: Duration = Duration::from_millis(500);
/// ... and only if this much of its range is left.
const TAKEOVER_MIN_LEFT: u64 = 128 << 10;
/// A body under this share of what a request gets now is slow (with `request_stats`' rule).
const RATE_SLOW_NOW: f64 = 1.0 / 3.0;
/// In the end game (room beside the window), a body is judged after this long ...
const END_GAME_JUDGED_AFTER: Duration = Duration::from_millis(150);
/// ... and taken over when it would take this many times longer than a fresh copy.
const END_GAME_FACTOR: f64 = 2.0;
/// How often a streaming body's rate is judged.
const RATE_CHECK_EVERY: Duration = Duration::from_millis(100);

/// The digests a part computes: known when the part starts, or once the object's HEAD
/// (running beside the first ranges) has said which checksum the object has. A part never
/// waits for the HEAD while it holds a place: one that streams before the answer hashes every
/// CRC the checksum may be ([`PartHasher::undecided`]), and waits for the answer only once its
/// bytes are in, its request over.
#[derive(Clone, Debug)]
pub(super) enum PlanSource {
    Ready(StreamPlan),
    AfterHead {
        /// The plan as far as it is known without the checksum.
        base: StreamPlan,
        answer: tokio::sync::watch::Receiver<Option<StreamPlan>>,
    },
}

/// One ranged GET of one object, with its retries: the consecutive parts `first..` of the
/// object's layout, from byte `start` to `end`. A request may span several parts (a measured
/// range several times the part size the object was laid out with before anything was known
/// of the link): each part is hashed on its own and handed to the writer as done as soon as
/// its last byte is, so digests, resume state and admission units stay per part.
pub(super) struct PartJob {
    pub(super) engine: Arc<Engine>,
    pub(super) key: String,
    pub(super) etag: Option<String>,
    /// The first part.
    pub(super) index: u64,
    /// The layout's part size (parts start at its multiples).
    pub(super) part_size: u64,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) priority: u64,
    pub(super) plan: PlanSource,
    pub(super) writer: FileWriter,
    pub(super) cancel: CancellationToken,
    pub(super) batch: Option<Arc<Progress>>,
    /// Set for the part of an object fetched whole when its checksum is wanted and unknown:
    /// filled with what the first whole-object response said (`None`: the server has none).
    pub(super) learn_checksum: Option<Arc<OnceLock<Option<ExpectedChecksum>>>>,
    /// The object's admission, to which the part gives its unit back once done.
    pub(super) admitted: Option<Arc<Admitted>>,
}

/// What a job carries from one attempt to the next.
#[derive(Default)]
struct JobState {
    /// The digests of the part being received.
    hasher: Option<PartHasher>,
    /// Bytes of the job received and handed to the writer.
    written: u64,
    /// The front-end of an attempt dropped for being slow, which the next one avoids.
    avoid: Option<std::net::SocketAddr>,
    /// Parts received before the object's HEAD said which checksum to keep: declared done
    /// once the attempt is over.
    undigested: Vec<(u64, PartHasher)>,
}

/// How one attempt of a part ended.
enum Attempt {
    Complete,
    Failed(Failure, String),
}

/// A response being read, with what it needs to be judged and replaced.
struct Response {
    output: GetObjectOutput,
    /// Holds the request's place and buffer room.
    slot: Slot,
    route: Route,
}

/// Takeovers of one attempt's body at most (see `PartJob::attempt`).
const MAX_TAKEOVERS: usize = 3;
/// How long a late request waits before looking again for room to race or re-ask it.
const LOOK_AGAIN: Duration = Duration::from_millis(100);
/// Copies of one request sent at most, the first included (see `PartJob::send`).
const MAX_COPIES: usize = 4;

/// One copy of a request racing for its first byte.
struct Copy {
    future: SentFuture,
    route: Route,
    started: Instant,
    /// 0 for the first copy, then 1, 2... for hedges.
    number: usize,
    /// Failed retryably: no longer polled, the others still race.
    failed: bool,
}

impl Copy {
    fn new(request: SentFuture, route: Route, number: usize) -> Self {
        Self {
            future: Box::pin(route.clone().run(request)),
            route,
            started: Instant::now(),
            number,
            failed: false,
        }
    }
}

/// The first of `copies` (not failed yet) to answer, and its answer.
fn first_answer(copies: &mut [Copy]) -> impl Future<Output = (usize, Sent)> + '_ {
    std::future::poll_fn(move |cx| {
        for (index, copy) in copies.iter_mut().enumerate() {
            if copy.failed {
                continue;
            }
            if let std::task::Poll::Ready(sent) = copy.future.as_mut().poll(cx) {
                return std::task::Poll::Ready((index, sent));
            }
        }
        std::task::Poll::Pending
    })
}

/// What the judge of a streaming body decided.
enum Judged {
    /// Not slower than its peers (or too early, or too little left, to tell).
    Fine,
    /// Slow: the rest of its range is asked for on another connection.
    TakenOver(Takeover),
    /// Slow, and no room for a second copy: drop it and ask again (its rate, bytes/s).
    AskAgain(f64),
}

/// A request for the rest of a slow body's range, on its way.
struct Takeover {
    request: SentFuture,
    route: Route,
    /// Its place beside the window.
    slot: Slot,
    /// Where in the object it starts.
    at: u64,
    sent_at: Instant,
}

type Sent = Result<GetObjectOutput, SdkError<GetObjectError, HttpResponse>>;
type SentFuture = Pin<Box<dyn Future<Output = Sent> + Send>>;

impl PartJob {
    /// Downloads the parts and hands each to the writer as done.
    pub(super) async fn run(self) -> Result<(), PartError> {
        let engine = self.engine.clone();
        let mut state = JobState::default();
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Boxed: an attempt's state is 16 KiB, too much to move around on the stack.
            let attempt_future = Box::pin(self.attempt(&mut state));
            let outcome = until_cancelled(&self.cancel, attempt_future)
                .await
                .map_err(PartError::Fatal)?;
            // The request is over (its place is free), so waiting for the HEAD here holds up
            // nothing: parts that finished before it answered get their digests now.
            let finished = std::mem::take(&mut state.undigested);
            if !finished.is_empty() {
                let plan = self.plan().await?;
                for (index, hasher) in finished {
                    self.part_done(index, hasher.finish_for(plan)).await?;
                }
            }
            match outcome {
                Attempt::Complete => {
                    engine.scheduler.on_success();
                    if self.start == self.end {
                        // An empty object: nothing was hashed, but its digests still count.
                        let plan = self.plan().await?;
                        self.part_done(self.index, PartHasher::new(plan).finish())
                            .await?;
                    }
                    return Ok(());
                }
                Attempt::Failed(failure, detail) => {
                    tracing::debug!(key = %self.key, start = self.start + state.written, detail, "part attempt failed");
                    engine
                        .backoff_or_fail(failure, attempt, &self.key, &self.cancel)
                        .await
                        .map_err(|e| match e {
                            PartError::Fatal(FetchError::Exhausted {
                                attempts, reason, ..
                            }) => PartError::Fatal(FetchError::Exhausted {
                                attempts,
                                reason,
                                detail,
                            }),
                            other => other,
                        })?;
                }
            }
        }
    }

    /// Part `index` is complete and hashed: the writer records it, the admission gets its
    /// unit back.
    async fn part_done(
        &self,
        index: u64,
        digest: crate::verify::PartDigest,
    ) -> Result<(), PartError> {
        if let Some(admitted) = &self.admitted {
            admitted.part_done();
        }
        self.writer
            .part_done(index, digest)
            .await
            .map_err(|message| PartError::Fatal(FetchError::Io(message)))
    }

    /// The last byte of the part holding `offset` (exclusive), within this job.
    fn part_end(&self, offset: u64) -> u64 {
        ((offset / self.part_size + 1) * self.part_size).min(self.end)
    }

    /// The digests to compute, waiting for the object's HEAD if it has not answered yet.
    async fn plan(&self) -> Result<StreamPlan, PartError> {
        match &self.plan {
            PlanSource::Ready(plan) => Ok(*plan),
            PlanSource::AfterHead { answer, .. } => {
                let mut watch = answer.clone();
                let waited = until_cancelled(&self.cancel, watch.wait_for(Option::is_some))
                    .await
                    .map_err(PartError::Fatal)?;
                match waited {
                    Ok(plan) => Ok(plan.expect("waited for a plan")),
                    // The object's fetch gave up on this download (its HEAD failed).
                    Err(_) => Err(PartError::Fatal(FetchError::Cancelled)),
                }
            }
        }
    }

    /// The final plan, if known now (never waiting).
    fn known_plan(&self) -> Option<StreamPlan> {
        match &self.plan {
            PlanSource::Ready(plan) => Some(*plan),
            PlanSource::AfterHead { answer, .. } => *answer.borrow(),
        }
    }

    /// The digests of this part, as far as they are decided now (never waiting).
    fn start_hashing(&self) -> PartHasher {
        match &self.plan {
            PlanSource::Ready(plan) => PartHasher::new(*plan),
            PlanSource::AfterHead { base, answer } => match *answer.borrow() {
                Some(plan) => PartHasher::new(plan),
                None => PartHasher::undecided(*base),
            },
        }
    }

    /// How a copy of the request is routed: away from `avoid`, and for a whole-object GET
    /// with the object's own size as the bound of its body.
    fn route(&self, avoid: Option<std::net::SocketAddr>, whole: bool) -> Route {
        Route::new(avoid, whole.then_some(self.end - self.start))
    }

    /// The GET of `from..end` (or of the whole object, while its checksum is to learn).
    fn request(&self, from: u64, learning: bool) -> SentFuture {
        let engine = &self.engine;
        let mut request = engine
            .source
            .client
            .get_object()
            .bucket(&engine.source.bucket)
            .key(&self.key);
        if let Some(etag) = &self.etag {
            request = request.if_match(format!("\"{etag}\""));
        }
        let end = self.end;
        Box::pin(async move {
            if learning {
                // The header, not the SDK's `checksum_mode`: with that the SDK would also
                // validate the body, hashing it a second time and failing a mismatch as a
                // broken body rather than as the verification failure it is.
                request
                    .customize()
                    .mutate_request(|http| {
                        http.headers_mut().insert("x-amz-checksum-mode", "ENABLED");
                    })
                    .send()
                    .await
            } else {
                request
                    .range(format!("bytes={from}-{}", end - 1))
                    .send()
                    .await
            }
        })
    }

    /// Sends the request for `from..` and waits for its headers. A first byte later than its
    /// peers' is raced by a second copy to another front-end; if that one is late too, the
    /// older copy is dropped and another sent, up to [`MAX_COPIES`] in all (a tail hitting
    /// one request in ten hits its hedge too, one time in ten). The first answer wins.
    async fn send(
        &self,
        slot: Slot,
        from: u64,
        learning: bool,
        avoid: &mut Option<std::net::SocketAddr>,
    ) -> Result<Response, Attempt> {
        let engine = &self.engine;
        let deadline = tokio::time::Instant::now() + engine.config.stall_timeout;
        let mut copies = vec![Copy::new(
            self.request(from, learning),
            self.route(avoid.take(), learning),
            0,
        )];
        let mut sent_copies = 1;
        let mut hedge_slot = None;
        let (sent, route, latency) = loop {
            let newest = copies.last().expect("a copy is in flight").started;
            tokio::select! {
                (index, sent) = first_answer(&mut copies) => {
                    // The first success wins, and so does a failure that another copy cannot
                    // mend (the object changed, or is refused); a retryable one waits for the
                    // other copy, if there is one.
                    let alone = copies.iter().filter(|c| !c.failed).count() == 1;
                    if !retryable(&sent) || alone {
                        let copy = &copies[index];
                        if sent.is_ok() && copy.number > 0 {
                            engine.progress.hedge_won();
                        }
                        break (sent, copy.route.clone(), copy.started.elapsed());
                    }
                    copies[index].failed = true;
                }
                () = engine.first_byte_late(newest), if sent_copies < MAX_COPIES => {
                    // A censored sample (its first byte is later still): if every request
                    // turns late because the link slowed, the threshold climbs after them
                    // instead of dropping them all for ever.
                    engine.scheduler.stats().first_byte(newest.elapsed());
                    if hedge_slot.is_none() {
                        hedge_slot = engine.scheduler.try_acquire_hedge().await;
                    }
                    if hedge_slot.is_none() {
                        if !engine.scheduler.try_ask_again() {
                            // No room for a copy, and many asked again lately: look again
                            // in a moment (what is in flight may answer meanwhile).
                            tokio::time::sleep(LOOK_AGAIN).await;
                            continue;
                        }
                        // No room for another copy: drop this one and ask again elsewhere.
                        *avoid = copies.last().and_then(|c| c.route.served_by());
                        return Err(Attempt::Failed(
                            Failure::Retry(RetryReason::Slow),
                            format!(
                                "no first byte after {:.1}s, far later than its peers'",
                                newest.elapsed().as_secs_f32()
                            ),
                        ));
                    }
                    // Two copies at most: the oldest, later still, is dropped unread.
                    if copies.len() == 2 {
                        copies.remove(0);
                    }
                    let avoid = copies.last().and_then(|c| c.route.served_by());
                    tracing::debug!(key = %self.key, from, late = ?newest.elapsed(), copy = sent_copies, "first byte late: racing another copy");
                    copies.push(Copy::new(
                        self.request(from, learning),
                        self.route(avoid, learning),
                        sent_copies,
                    ));
                    sent_copies += 1;
                    engine.progress.hedge_started();
                }
                () = tokio::time::sleep_until(deadline) => return Err(no_headers()),
            }
        };
        // Whichever copies lost are dropped here, unread: their connections close. The
        // response keeps the window's place; the hedge's goes back.
        drop(copies);
        drop(hedge_slot);
        self.checked(sent, slot, route, latency, from)
    }

    /// A response whose headers arrived: counted, and checked against the range asked for.
    fn checked(
        &self,
        sent: Sent,
        slot: Slot,
        route: Route,
        latency: Duration,
        from: u64,
    ) -> Result<Response, Attempt> {
        let output = sent.map_err(|error| Attempt::Failed(classify(&error), chain(&error)))?;
        self.engine.scheduler.stats().first_byte(latency);
        let length = self.end - from;
        let range_start = output
            .content_range()
            .and_then(|r| r.strip_prefix("bytes "))
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.parse::<u64>().ok());
        if output.content_length() != Some(length as i64) || range_start.is_some_and(|s| s != from)
        {
            return Err(Attempt::Failed(
                Failure::Retry(RetryReason::BadResponse),
                format!(
                    "asked for {length} bytes at {from}, got length {:?} range {:?}",
                    output.content_length(),
                    output.content_range()
                ),
            ));
        }
        Ok(Response {
            output,
            slot,
            route,
        })
    }

    /// One GET of the part's remaining bytes. Bytes received are kept even if the attempt
    /// fails, so the next one asks only for the rest.
    async fn attempt(&self, state: &mut JobState) -> Attempt {
        let JobState {
            hasher,
            written,
            avoid,
            undigested,
        } = state;
        let engine = &self.engine;
        let stall = engine.config.stall_timeout;
        let from = self.start + *written;
        if from == self.end {
            return Attempt::Complete;
        }
        let slot = engine.scheduler.acquire(self.priority).await;
        // A whole-object GET, the only kind S3 sends a checksum with, while the checksum is
        // still to learn; a resumed attempt asks for the rest only.
        let learning = self
            .learn_checksum
            .as_ref()
            .filter(|learned| from == 0 && learned.get().is_none());
        let mut response = match self.send(slot, from, learning.is_some(), avoid).await {
            Ok(response) => response,
            Err(failed) => return failed,
        };
        if let Some(learned) = learning {
            let output = &response.output;
            let checksum = ExpectedChecksum::from_response(
                output.checksum_crc32(),
                output.checksum_crc32_c(),
                output.checksum_crc64_nvme(),
                output.checksum_sha1(),
                output.checksum_sha256(),
                output
                    .checksum_type()
                    .map(aws_sdk_s3::types::ChecksumType::as_str),
            );
            // Nothing is hashed yet, so a CRC can still be computed as the body streams.
            if *written == 0
                && let Some(checksum) = &checksum
            {
                let mut started = self.start_hashing();
                started.start_crc(checksum.algo);
                *hasher = Some(started);
            }
            let _ = learned.set(checksum);
        }
        let mut body = std::mem::take(&mut response.output.body);
        // Bytes of this part the current body has yet to deliver before new ones: a takeover
        // starts where the slow body was when it was sent, and the slow body kept going.
        let mut skip = 0u64;
        let mut body_started = Instant::now();
        let mut body_bytes = 0u64;
        let mut takeover: Option<Takeover> = None;
        let mut judged = false;
        let mut takeovers = 0;
        let mut check = tokio::time::interval(RATE_CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // No byte for the stall timeout ends the attempt, however often the loop wakes.
        let mut stall_at = tokio::time::Instant::now() + stall;
        loop {
            let takeover_sent = takeover.as_ref().map(|t| t.sent_at);
            let next = tokio::select! {
                biased;
                sent = async { takeover.as_mut().expect("guarded").request.as_mut().await }, if takeover.is_some() => {
                    let Takeover { route, slot, at, .. } = takeover.take().expect("guarded");
                    // The fresh body, or the slow one again if the takeover failed, is judged
                    // in turn (a takeover can land on a slow front-end too), a few times at
                    // most.
                    takeovers += 1;
                    judged = takeovers >= MAX_TAKEOVERS;
                    if let Ok(Response { mut output, slot: hedge_slot, route }) =
                        self.checked(sent, slot, route, Duration::ZERO, at)
                    {
                        {
                            // Continue from the fresh body, past what the slow one delivered
                            // meanwhile. The slow one is dropped unread: its connection closes.
                            // The response keeps the window's place; the hedge's goes back.
                            skip = self.start + *written - at;
                            body = std::mem::take(&mut output.body);
                            response.output = output;
                            response.route = route;
                            drop(hedge_slot);
                            stall_at = tokio::time::Instant::now() + stall;
                            body_started = Instant::now();
                            body_bytes = 0;
                            engine.progress.hedge_won();
                        }
                    }
                    continue;
                }
                // A takeover whose own first byte is late is dropped; the slow body is judged
                // again, and may be taken over once more.
                () = engine.first_byte_late(takeover_sent.unwrap_or_else(Instant::now)), if takeover.is_some() => {
                    takeover = None;
                    takeovers += 1;
                    judged = takeovers >= MAX_TAKEOVERS;
                    continue;
                }
                chunk = body.next() => Ok(chunk),
                () = tokio::time::sleep_until(stall_at) => Err(()),
                _ = check.tick(), if !judged && takeover.is_none() => {
                    match self.judge(body_started, body_bytes, *written, &response).await {
                        Judged::Fine => {}
                        Judged::TakenOver(started) => {
                            takeover = Some(started);
                            judged = true;
                        }
                        Judged::AskAgain(rate) => {
                            *avoid = response.route.served_by();
                            return Attempt::Failed(
                                Failure::Retry(RetryReason::Slow),
                                format!("body at {rate:.0} bytes/s, far slower than its peers'"),
                            );
                        }
                    }
                    continue;
                }
            };
            let mut chunk = match next {
                Err(()) => {
                    return Attempt::Failed(
                        Failure::Retry(RetryReason::Stall),
                        format!("no byte for {}s", stall.as_secs_f32()),
                    );
                }
                Ok(None) => break,
                Ok(Some(Err(error))) => {
                    return Attempt::Failed(classify_body_error(&error), chain(&error));
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            body_bytes += chunk.len() as u64;
            engine.scheduler.received(chunk.len() as u64);
            // `--bwlimit`: wait off this chunk before reading on. The body is not polled
            // meanwhile, so the pool's guards do not count the wait against the server; the
            // stall clock starts again after it.
            engine.config.bandwidth.take(chunk.len()).await;
            stall_at = tokio::time::Instant::now() + stall;
            if skip > 0 {
                let dropped = skip.min(chunk.len() as u64);
                skip -= dropped;
                engine.progress.duplicate(dropped);
                chunk = chunk.split_off(dropped as usize);
                if chunk.is_empty() {
                    continue;
                }
            }
            if *written + chunk.len() as u64 > self.end - self.start {
                return Attempt::Failed(
                    Failure::Retry(RetryReason::BadResponse),
                    "body longer than the range".into(),
                );
            }
            // Cut at part ends: each part is hashed, written and declared done on its own.
            while !chunk.is_empty() {
                let offset = self.start + *written;
                let part_end = self.part_end(offset);
                let piece = chunk.split_to(((part_end - offset) as usize).min(chunk.len()));
                let length = piece.len() as u64;
                hasher
                    .get_or_insert_with(|| self.start_hashing())
                    .update(&piece);
                let room = engine.scheduler.budget().reserve_chunk(length).await;
                if let Err(message) = self.writer.write(offset, piece, Some(room)).await {
                    // The writer stopped on a write error; the object reports that error.
                    return Attempt::Failed(
                        Failure::Permanent {
                            status: None,
                            message: message.clone(),
                        },
                        message,
                    );
                }
                *written += length;
                engine.progress.add_downloaded(length);
                if let Some(batch) = &self.batch {
                    batch.add_downloaded(length);
                }
                if offset + length == part_end {
                    let index = offset / self.part_size;
                    let done = hasher.take().expect("a part being hashed");
                    if let Some(plan) = self.known_plan() {
                        if let Err(PartError::Fatal(error)) =
                            self.part_done(index, done.finish_for(plan)).await
                        {
                            let message = error.to_string();
                            return Attempt::Failed(
                                Failure::Permanent {
                                    status: None,
                                    message: message.clone(),
                                },
                                message,
                            );
                        }
                    } else {
                        undigested.push((index, done));
                    }
                }
            }
        }
        if *written < self.end - self.start {
            return Attempt::Failed(
                Failure::Retry(RetryReason::Truncated),
                format!(
                    "body ended after {} of {} bytes",
                    *written,
                    self.end - self.start
                ),
            );
        }
        engine
            .scheduler
            .stats()
            .body(body_bytes, body_started.elapsed());
        Attempt::Complete
    }

    /// Whether the body being read is slow enough to replace: if so, a takeover request is
    /// sent (beside the window, to another front-end), or, with no room for one, the body is
    /// to be dropped and asked again.
    async fn judge(
        &self,
        body_started: Instant,
        body_bytes: u64,
        written: u64,
        response: &Response,
    ) -> Judged {
        let engine = &self.engine;
        let streaming = body_started.elapsed();
        let left = self.end - self.start - written;
        // The end game: nothing waits for a place and half the window is free, so the link
        // has room for a second copy, and what matters is only which copy finishes first.
        let end_game = engine.scheduler.has_room();
        let judged_after = if end_game {
            END_GAME_JUDGED_AFTER
        } else {
            RATE_JUDGED_AFTER
        };
        if streaming < judged_after || left < TAKEOVER_MIN_LEFT || !engine.may_hedge() {
            return Judged::Fine;
        }
        let stats = engine.scheduler.stats();
        let figures = stats.figures();
        let rate = body_bytes as f64 / streaming.as_secs_f64();
        let fair = engine.scheduler.fair_share();
        let is_slow = if end_game {
            // A fresh copy needs a first byte, then streams at what requests usually get.
            let Some(median) = figures.rate_p50 else {
                return Judged::Fine;
            };
            let fresh = figures.first_byte_p50.unwrap_or(0.0) + left as f64 / median;
            left as f64 / rate.max(1.0) > END_GAME_FACTOR * fresh
        } else {
            // Slow against what its peers get now, and against what requests got before
            // (once anything is known of them: a stall early in a run is slow all the same).
            rate < fair * RATE_SLOW_NOW && stats.slow_rate().is_none_or(|slow| rate < slow)
        };
        if !is_slow {
            return Judged::Fine;
        }
        let Some(slot) = engine.scheduler.try_acquire_hedge().await else {
            if engine.scheduler.try_ask_again() {
                return Judged::AskAgain(rate);
            }
            return Judged::Fine;
        };
        engine.progress.hedge_started();
        let at = self.start + written;
        tracing::debug!(key = %self.key, at, rate, fair, "slow body: taking over the rest of its range");
        let route = Route::avoiding(response.route.served_by());
        // A takeover asks for a range, never for the whole object.
        let request = route.clone().run(self.request(at, false));
        Judged::TakenOver(Takeover {
            request: Box::pin(request),
            route,
            slot,
            at,
            sent_at: Instant::now(),
        })
    }
}

/// Whether a request's outcome is a failure another attempt may mend.
fn retryable(sent: &Sent) -> bool {
    sent.as_ref()
        .is_err_and(|error| matches!(classify(error), Failure::Retry(_)))
}

/// A stall on the headers.
fn no_headers() -> Attempt {
    Attempt::Failed(
        Failure::Retry(RetryReason::Stall),
        "no response headers in time".into(),
    )
}

impl Engine {
    /// Sleeps before the next attempt, or turns the failure into the final error.
    pub(super) async fn backoff_or_fail(
        &self,
        failure: Failure,
        attempt: u32,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<(), PartError> {
        match failure {
            Failure::Retry(reason) => {
                self.progress.retry(reason);
                if reason.is_congestion() {
                    self.scheduler.on_congestion();
                }
                if attempt >= self.config.retry.max_attempts {
                    return Err(PartError::Fatal(FetchError::Exhausted {
                        attempts: attempt,
                        reason,
                        detail: key.to_string(),
                    }));
                }
                tracing::debug!(key, attempt, %reason, "retrying");
                until_cancelled(
                    cancel,
                    tokio::time::sleep(self.config.retry.backoff(attempt)),
                )
                .await
                .map_err(PartError::Fatal)
            }
            Failure::Changed => Err(PartError::Changed),
            Failure::Permanent { message, .. } => {
                Err(PartError::Fatal(FetchError::Permanent(message)))
            }
        }
    }

    /// Returns once a request sent at `started` is late for its first byte: later than
    /// [`Engine::hedge_after`], judged again as the figures it rests on change (a request sent
    /// before any latency was known is not held to the cold threshold once they are). Never
    /// returns with hedging off.
    async fn first_byte_late(&self, started: Instant) {
        const LOOK_AGAIN: Duration = Duration::from_millis(100);
        if !self.config.hedge {
            return std::future::pending().await;
        }
        loop {
            let wait = match self.hedge_after() {
                Some(after) => match after.checked_sub(started.elapsed()) {
                    None => return,
                    Some(left) => left.min(LOOK_AGAIN),
                },
                // Over the duplicate budget for now.
                None => LOOK_AGAIN,
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// How long a request may wait for its first byte before a hedge races it; `None` when
    /// hedging is off or over its duplicate budget. Never past half the stall timeout, which
    /// stays the last resort.
    fn hedge_after(&self) -> Option<Duration> {
        if !self.may_hedge() {
            return None;
        }
        Some(
            self.scheduler
                .stats()
                .hedge_after()
                .min(self.config.stall_timeout / 2),
        )
    }

    /// Whether a hedge may start: hedging is on, duplicates are within their share, and
    /// `--bwlimit` is not what holds bodies back (then a slow body is the cap's doing, and a
    /// second copy would only spend the budget twice).
    fn may_hedge(&self) -> bool {
        self.config.hedge
            && (self.progress.duplicate_bytes() as f64)
                <= DUPLICATE_SHARE * self.progress.downloaded() as f64
            && !self.config.bandwidth.binding(BWLIMIT_RECENT)
    }
}
