//! The source side of a copy: a range of the source object read into memory (resumed from the
//! byte reached on a retry, charged to the bandwidth cap as it arrives), and the check of the
//! bytes read against the source's ETag: the multipart digest of its parts' MD5s, or the
//! whole object's MD5 fed by the parts in order (`OrderedHash`).

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use common::sync::MutexExt;
use engine::fast_md5::Md5;
use engine::verify::etag::multipart_digest;
use tokio::sync::watch;
use transport::RemoteObject;
use transport::retry::{Failure, RetryReason, chain, retrying};

use super::{Copier, CopyError, PartDone, failure, quoted};
use crate::layout::SourceCheck;

/// The whole object's MD5, fed by parts in order.
pub(super) struct OrderedHash {
    next: watch::Sender<u64>,
    md5: Mutex<Md5>,
}

impl OrderedHash {
    pub(super) fn new() -> Self {
        Self {
            next: watch::Sender::new(0),
            md5: Mutex::new(Md5::new()),
        }
    }

    pub(super) async fn feed(&self, index: u64, bytes: &[u8]) {
        let mut turn = self.next.subscribe();
        // The sender lives in `self`: waiting ends only at this part's turn.
        let _ = turn.wait_for(|next| *next == index).await;
        self.md5.lock_unpoisoned().update(bytes);
        self.next.send_replace(index + 1);
    }

    pub(super) fn finish(&self) -> [u8; 16] {
        self.md5.lock_unpoisoned().clone().finish()
    }
}

impl Copier {
    /// Bytes `[start, end)` of the source object, resuming from the byte reached on a retry,
    /// charged to the bandwidth cap and the counters as they arrive.
    pub(super) async fn read_source(
        &self,
        object: &RemoteObject,
        etag: Option<&str>,
        start: u64,
        end: u64,
    ) -> Result<Bytes, CopyError> {
        let length = (end - start) as usize;
        if length == 0 {
            return Ok(Bytes::new());
        }
        let buffer = Mutex::new(BytesMut::with_capacity(length));
        retrying(
            &self.retry,
            |_| {
                let from = start + buffer.lock_unpoisoned().len() as u64;
                let mut request = self
                    .source
                    .client
                    .get_object()
                    .bucket(&self.source.bucket)
                    .key(&object.key)
                    .range(format!("bytes={from}-{}", end - 1));
                if let Some(etag) = etag {
                    request = request.if_match(quoted(etag));
                }
                let buffer = &buffer;
                async move {
                    let mut body = match self.bounded(request.send(), 0).await? {
                        Ok(answer) => answer.body,
                        Err(error) => return Err(failure(&error)),
                    };
                    loop {
                        let chunk = tokio::time::timeout(self.stall_timeout, body.next())
                            .await
                            .map_err(|_| {
                                (
                                    Failure::Retry(RetryReason::Stall),
                                    "body stalled".to_string(),
                                )
                            })?;
                        match chunk {
                            None => break,
                            Some(Ok(chunk)) => {
                                let fits = {
                                    let mut held = buffer.lock_unpoisoned();
                                    let fits = held.len() + chunk.len() <= length;
                                    if fits {
                                        held.extend_from_slice(&chunk);
                                    } else {
                                        held.truncate(0);
                                    }
                                    fits
                                };
                                if !fits {
                                    return Err((
                                        Failure::Retry(RetryReason::BadResponse),
                                        "the source sent more bytes than the range".into(),
                                    ));
                                }
                                self.progress.add_downloaded(chunk.len() as u64);
                                self.bandwidth.take(chunk.len()).await;
                            }
                            Some(Err(error)) => {
                                return Err((
                                    transport::retry::classify_body_error(&error),
                                    chain(&error),
                                ));
                            }
                        }
                    }
                    let held = buffer.lock_unpoisoned().len();
                    if held == length {
                        Ok(())
                    } else {
                        Err((
                            Failure::Retry(RetryReason::Truncated),
                            format!("the source's body ended at {held} of {length} bytes"),
                        ))
                    }
                }
            },
            |reason| self.progress.retry(reason),
        )
        .await
        .map_err(|gave_up| match gave_up.failure {
            Failure::Changed => CopyError::retryable(format!(
                "{} changed at the source during the copy",
                object.key
            )),
            _ => CopyError::gave_up(&format!("GET of {}", object.key), &gave_up),
        })?;
        Ok(buffer.into_inner().unwrap_or_default().freeze())
    }
}

/// Whether the parts' digests give the source's ETag.
pub(super) fn source_check(
    check: &SourceCheck,
    parts: &[PartDone],
    ordered: &OrderedHash,
) -> Result<(), String> {
    match check {
        SourceCheck::Multipart { digest, .. } => {
            let source_md5s: Vec<[u8; 16]> = parts
                .iter()
                .flat_map(|p| p.source_md5s.iter().copied())
                .collect();
            let actual = multipart_digest(&source_md5s);
            if actual == *digest {
                Ok(())
            } else {
                Err(format!(
                    "the source's bytes give the multipart ETag {}-{}, not {}",
                    hex::encode(actual),
                    source_md5s.len(),
                    hex::encode(digest)
                ))
            }
        }
        SourceCheck::WholeMd5(expected) => whole_md5_check(ordered.finish(), *expected),
        SourceCheck::SizeOnly => Ok(()),
    }
}

/// Whether the whole object's MD5 is its single-part ETag's.
pub(super) fn whole_md5_check(actual: [u8; 16], expected: [u8; 16]) -> Result<(), String> {
    if actual == expected {
        Ok(())
    } else {
        Err(format!(
            "the source's bytes have MD5 {}, not their ETag {}",
            hex::encode(actual),
            hex::encode(expected)
        ))
    }
}
