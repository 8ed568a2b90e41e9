//! One part of one object: a ranged GET with `If-Match`, a stall timeout on the headers and on
//! every chunk, and retries that resume from the last byte written, so a broken part never
//! downloads its finished prefix again. Also the backoff step it shares with the HEAD. It knows
//! one range and the writer it hands bytes to, nothing of how the object was cut (`layout`) or
//! what happens to it once whole (`mod.rs`).
//!
//! The one part of an object fetched whole, in full verification, asks for S3's additional
//! checksum on its first GET (no `Range`, `x-amz-checksum-mode: ENABLED`): S3 sends checksums
//! only for whole-object reads, and taking it from the GET saves the HEAD, the one round trip
//! that small objects otherwise pay twice.

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;
use transport::retry::{Failure, RetryReason, chain, classify, classify_body_error};

use super::{Engine, FetchError, PartError, until_cancelled};
use crate::progress::Progress;
use crate::verify::{ExpectedChecksum, PartHasher, StreamPlan};
use crate::writer::FileWriter;

/// One ranged GET of one object, with its retries.
pub(super) struct PartJob {
    pub(super) engine: Arc<Engine>,
    pub(super) key: String,
    pub(super) etag: Option<String>,
    pub(super) index: u64,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) priority: u64,
    pub(super) plan: StreamPlan,
    pub(super) writer: FileWriter,
    pub(super) cancel: CancellationToken,
    pub(super) batch: Option<Arc<Progress>>,
    /// Set for the part of an object fetched whole when its checksum is wanted and unknown:
    /// filled with what the first whole-object response said (`None`: the server has none).
    pub(super) learn_checksum: Option<Arc<OnceLock<Option<ExpectedChecksum>>>>,
}

/// How one attempt of a part ended.
enum Attempt {
    Complete,
    Failed(Failure, String),
}

impl PartJob {
    /// Downloads the part and hands it to the writer as done.
    pub(super) async fn run(self) -> Result<(), PartError> {
        let engine = self.engine.clone();
        let mut hasher = PartHasher::new(self.plan);
        let mut written = 0u64;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Boxed: an attempt's state is 16 KiB, too much to move around on the stack.
            let attempt_future = Box::pin(self.attempt(&mut hasher, &mut written));
            let outcome = until_cancelled(&self.cancel, attempt_future)
                .await
                .map_err(PartError::Fatal)?;
            match outcome {
                Attempt::Complete => {
                    engine.scheduler.on_success();
                    return self
                        .writer
                        .part_done(self.index, hasher.finish())
                        .await
                        .map_err(|message| PartError::Fatal(FetchError::Io(message)));
                }
                Attempt::Failed(failure, detail) => {
                    tracing::debug!(key = %self.key, start = self.start + written, detail, "part attempt failed");
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

    /// One GET of the part's remaining bytes. Bytes received are kept even if the attempt
    /// fails, so the next one asks only for the rest.
    async fn attempt(&self, hasher: &mut PartHasher, written: &mut u64) -> Attempt {
        let engine = &self.engine;
        let stall = engine.config.stall_timeout;
        let from = self.start + *written;
        let length = self.end - from;
        if length == 0 {
            return Attempt::Complete;
        }
        let _slot = engine.scheduler.acquire(self.priority).await;
        let mut request = engine
            .source
            .client
            .get_object()
            .bucket(&engine.source.bucket)
            .key(&self.key);
        if let Some(etag) = &self.etag {
            request = request.if_match(format!("\"{etag}\""));
        }
        // A whole-object GET, the only kind S3 sends a checksum with, while the checksum is
        // still to learn; a resumed attempt asks for the rest only.
        let learning = self
            .learn_checksum
            .as_ref()
            .filter(|learned| from == 0 && learned.get().is_none());
        let sent = async {
            if learning.is_some() {
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
                    .range(format!("bytes={from}-{}", self.end - 1))
                    .send()
                    .await
            }
        };
        let response = match tokio::time::timeout(stall, sent).await {
            Err(_) => {
                return Attempt::Failed(
                    Failure::Retry(RetryReason::Stall),
                    "no response headers in time".into(),
                );
            }
            Ok(Err(error)) => return Attempt::Failed(classify(&error), chain(&error)),
            Ok(Ok(response)) => response,
        };
        let range_start = response
            .content_range()
            .and_then(|r| r.strip_prefix("bytes "))
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.parse::<u64>().ok());
        if response.content_length() != Some(length as i64)
            || range_start.is_some_and(|s| s != from)
        {
            return Attempt::Failed(
                Failure::Retry(RetryReason::BadResponse),
                format!(
                    "asked for {length} bytes at {from}, got length {:?} range {:?}",
                    response.content_length(),
                    response.content_range()
                ),
            );
        }
        if let Some(learned) = learning {
            let checksum = ExpectedChecksum::from_response(
                response.checksum_crc32(),
                response.checksum_crc32_c(),
                response.checksum_crc64_nvme(),
                response.checksum_sha1(),
                response.checksum_sha256(),
            );
            // Nothing is hashed yet, so a CRC can still be computed as the body streams.
            if *written == 0
                && let Some(checksum) = &checksum
            {
                hasher.start_crc(checksum.algo);
            }
            let _ = learned.set(checksum);
        }
        let mut body = response.body;
        loop {
            let chunk = match tokio::time::timeout(stall, body.next()).await {
                Err(_) => {
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
            if *written + chunk.len() as u64 > self.end - self.start {
                return Attempt::Failed(
                    Failure::Retry(RetryReason::BadResponse),
                    "body longer than the range".into(),
                );
            }
            hasher.update(&chunk);
            let length = chunk.len() as u64;
            if let Err(message) = self.writer.write(self.start + *written, chunk).await {
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
        Attempt::Complete
    }
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
                if reason.is_throttling() {
                    self.scheduler.on_throttled();
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
}
