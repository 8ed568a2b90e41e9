//! How a copy ends: its final write (the PutObject of a small object, or the completion of
//! its upload) under the version fence, and the check that the completed object reports what
//! was sent (the ETag the parts' MD5s give, the composite CRC32C of the parts').
//!
//! **A cluster worker never completes a copy over a newer version** (`version_fence`): before
//! the final write it looks at the key and makes the write conditional on what it saw, so a
//! writer that slips in between makes it fail with 412 and the look is made again.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{ChecksumMode, CompletedMultipartUpload, CompletedPart};
use engine::fence::LeaseFence;
use engine::verify::etag::{EtagForm, multipart_digest};
use transport::RemoteObject;
use transport::retry::{Failure, RetryReason, chain, retrying};

use super::{
    Copier, CopyError, PartDone, SOURCE_LAST_MODIFIED_META, failure, fence_check, quoted, unquoted,
};
use crate::integrity::{PartDigest, composite_crc32c, composite_matches};

/// What a completion is conditional on: the key's state when the version fence looked, so a
/// writer that slipped in between makes the completion fail (412) instead of being overwritten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Condition {
    /// No condition (no other writer is possible: `era5 sync` holds its destination alone).
    None,
    /// The key was empty: `If-None-Match: *`.
    Absent,
    /// The key held this ETag: `If-Match`.
    Holds(String),
}

impl Condition {
    /// `If-None-Match`, unless the store refused conditional writes once (`unconditional`).
    pub(super) fn if_none_match(&self, unconditional: bool) -> Option<String> {
        (*self == Condition::Absent && !unconditional).then(|| "*".into())
    }

    /// `If-Match`, unless the store refused conditional writes once.
    pub(super) fn if_match(&self, unconditional: bool) -> Option<String> {
        match self {
            Condition::Holds(etag) if !unconditional => Some(quoted(etag)),
            _ => None,
        }
    }
}

/// A store that answers a conditional write 501 (not implemented): noted, and the write sent
/// again without its condition (the version fence's look still refuses older versions).
pub(super) fn refused_condition<E>(
    copier: &Copier,
    condition: &Condition,
    error: &SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> Option<(Failure, String)> {
    let refused = *condition != Condition::None
        && error
            .raw_response()
            .is_some_and(|r| r.status().as_u16() == 501);
    if !refused {
        return None;
    }
    if !copier
        .unconditional
        .swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::warn!(
            "the destination does not implement conditional writes (501); completing without them"
        );
    }
    Some((
        Failure::Retry(RetryReason::BadResponse),
        "conditional write not implemented; sending it without".into(),
    ))
}

/// What the store reported of a completed write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Answer {
    /// Its ETag, unquoted.
    pub(super) etag: String,
    /// Its CRC32C checksum, when the answer carried one (COMPOSITE: `value-N`).
    pub(super) checksum: Option<String>,
    /// Read from the object by a HEAD with its checksum asked for: a missing `checksum` means
    /// the store keeps none, and asking again would tell nothing more.
    pub(super) looked: bool,
}

impl Answer {
    pub(super) fn etag(etag: String) -> Self {
        Self {
            etag,
            checksum: None,
            looked: false,
        }
    }
}

/// What the completed object must report, from what was sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Expected {
    /// The ETag: the whole MD5 of one PUT, or the multipart ETag (`digest-N`) of the parts'
    /// MD5 ETags. `None` when a part's ETag is not an MD5 (an encrypting store).
    pub(super) etag: Option<String>,
    /// The composite CRC32C of the parts', in an upload whose parts carry them.
    pub(super) checksum: Option<String>,
}

impl Expected {
    pub(super) fn of(parts: &[PartDone], digest: PartDigest) -> Self {
        let md5s: Option<Vec<[u8; 16]>> = parts
            .iter()
            .map(|part| match EtagForm::parse(&part.etag) {
                Some(EtagForm::Single(md5)) => Some(md5),
                _ => None,
            })
            .collect();
        // A store that did not echo a part's CRC32C did not check it (its parts were checked
        // by their MD5s instead), and its composite is no better than its part checks.
        let checksum = match digest {
            PartDigest::Crc32c if parts.iter().all(|part| part.crc_checked) => parts
                .iter()
                .map(|part| part.crc32c)
                .collect::<Option<Vec<u32>>>()
                .map(|crcs| composite_crc32c(&crcs)),
            PartDigest::Crc32c | PartDigest::Md5 => None,
        };
        Self {
            etag: md5s
                .map(|md5s| format!("{}-{}", hex::encode(multipart_digest(&md5s)), md5s.len())),
            checksum,
        }
    }
}

/// What one fenced write came to.
pub(super) enum Written {
    /// Written; what the store reported.
    Done(Answer),
    /// Another writer came between the look and the write (its precondition failed).
    Raced(CopyError),
    /// Failed otherwise.
    Failed(CopyError),
}

/// Completions retried after a precondition failed, each after looking again.
pub(super) const FENCE_ROUNDS: u32 = 4;

impl Copier {
    pub(super) async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[PartDone],
        expected: &Expected,
        condition: &Condition,
    ) -> Result<Answer, CopyError> {
        let parts: Vec<CompletedPart> = parts
            .iter()
            .enumerate()
            .map(|(index, part)| {
                CompletedPart::builder()
                    .part_number(index as i32 + 1)
                    .e_tag(quoted(&part.etag))
                    .set_checksum_crc32_c(part.crc32c.map(crate::integrity::crc32c_header))
                    .build()
            })
            .collect();
        let upload = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        let completed = retrying(
            &self.retry,
            |_| {
                let request = self
                    .dest
                    .complete_multipart_upload()
                    .bucket(&self.target.bucket)
                    .key(key)
                    .upload_id(upload_id)
                    .multipart_upload(upload.clone())
                    .set_if_none_match(condition.if_none_match(self.is_unconditional()))
                    .set_if_match(condition.if_match(self.is_unconditional()));
                async move {
                    match self.bounded(request.send(), 0).await? {
                        Ok(done) => Ok(Some(Answer {
                            etag: unquoted(done.e_tag()),
                            checksum: done.checksum_crc32_c().map(str::to_string),
                            looked: false,
                        })),
                        // A retry after a completion whose answer was lost: the upload is
                        // gone, and the object tells whether it was ours.
                        Err(error) if error.code() == Some(crate::uploads::NO_SUCH_UPLOAD) => {
                            Ok(None)
                        }
                        Err(error) => Err(refused_condition(self, condition, &error)
                            .unwrap_or_else(|| failure(&error))),
                    }
                }
            },
            |reason| self.progress.retry(reason),
        )
        .await;
        // The object itself, when the answer is lost: complete if it has the parts' ETag.
        let is_ours = |etag: &str| expected.etag.as_deref().is_none_or(|want| want == etag);
        match completed {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => match self.head(key).await {
                Some(answer) if is_ours(&answer.etag) => Ok(answer),
                _ => Err(CopyError::retryable(format!(
                    "CompleteMultipartUpload of {key}: the upload is gone and the object is not the one its parts give"
                ))),
            },
            // An answer that could not be read (moto 5.2 names its XML root
            // `CompleteMultipartUploadResponse`): the object itself says whether it completed.
            Err(gave_up) => match self.head(key).await {
                Some(answer) if is_ours(&answer.etag) => {
                    tracing::debug!(
                        key,
                        detail = gave_up.detail,
                        "completion answer unreadable; the object is complete"
                    );
                    Ok(answer)
                }
                _ => Err(CopyError::gave_up(
                    &format!("CompleteMultipartUpload of {key}"),
                    &gave_up,
                )),
            },
        }
    }

    /// A copy's final write (its PutObject or its completion) under the version fence: looks
    /// at the key, writes on the condition the look gives, and looks again when another writer
    /// came in between, at most [`FENCE_ROUNDS`] times. `Superseded` when the key holds a newer
    /// version; the lease's own fence is checked before every round.
    pub(super) async fn fenced<W, Fut>(
        &self,
        key: &str,
        object: &RemoteObject,
        fence: Option<&LeaseFence>,
        mut write: W,
    ) -> Result<Answer, CopyError>
    where
        W: FnMut(Condition) -> Fut,
        Fut: std::future::Future<Output = Written>,
    {
        let mut round = 0;
        loop {
            round += 1;
            fence_check(fence)?;
            let condition = self.version_fence(key, object).await?;
            match write(condition).await {
                Written::Done(answer) => return Ok(answer),
                Written::Raced(_) if round < FENCE_ROUNDS => {}
                Written::Raced(error) | Written::Failed(error) => return Err(error),
            }
        }
    }

    pub(super) fn is_unconditional(&self) -> bool {
        self.unconditional
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The per-key version fence of a cluster worker: the copy at the key, if any, must not hold
    /// a newer source version than `object` (its recorded Last-Modified, to the second, as the
    /// directory's `version_stamp` compares them); the completion is then made conditional on
    /// what the key holds, so **a stale holder never completes over a newer copy**, even one
    /// written after this look. `era5 sync` holds its destination alone: no look, no condition.
    pub(super) async fn version_fence(
        &self,
        key: &str,
        object: &RemoteObject,
    ) -> Result<Condition, CopyError> {
        if !self.fence_versions {
            return Ok(Condition::None);
        }
        let head = self
            .dest
            .head_object()
            .bucket(&self.target.bucket)
            .key(key)
            .send()
            .await;
        let head = match head {
            Ok(head) => head,
            Err(error)
                if error.as_service_error().is_some_and(
                    aws_sdk_s3::operation::head_object::HeadObjectError::is_not_found,
                ) =>
            {
                return Ok(Condition::Absent);
            }
            Err(error) => {
                return Err(CopyError::retryable(format!(
                    "HEAD of {key} before completing it: {}",
                    chain(&error)
                )));
            }
        };
        let second = |text: &str| {
            text.parse::<jiff::Timestamp>()
                .ok()
                .map(jiff::Timestamp::as_second)
        };
        let theirs = head
            .metadata()
            .and_then(|meta| meta.get(SOURCE_LAST_MODIFIED_META))
            .and_then(|text| second(text));
        let ours = object.last_modified.as_deref().and_then(second);
        if let (Some(theirs), Some(ours)) = (theirs, ours)
            && theirs > ours
        {
            tracing::info!(
                key,
                "a newer version is already at the key; not completing this one"
            );
            return Err(CopyError::Superseded);
        }
        Ok(Condition::Holds(unquoted(head.e_tag())))
    }

    /// The completed object must report what its parts give (the ETag of their MD5s, the
    /// composite of their CRC32Cs); one that does not is removed.
    pub(super) async fn check_completed(
        &self,
        key: &str,
        answered: &Answer,
        expected: &Expected,
    ) -> Result<(), CopyError> {
        let mut wrong = None;
        match &expected.etag {
            // Not an MD5 form (an encrypting store): each part's digest was checked.
            _ if EtagForm::parse(&answered.etag).is_none() => tracing::debug!(
                key,
                answered = answered.etag,
                "destination ETag is not an MD5; parts were checked on upload"
            ),
            Some(want) if *want != answered.etag => {
                wrong = Some(format!("ETag {}, not the {want}", answered.etag));
            }
            _ => {}
        }
        if wrong.is_none()
            && let Some(want) = &expected.checksum
        {
            let reported = match &answered.checksum {
                Some(reported) => Some(reported.clone()),
                None if answered.looked => None,
                None => self.head(key).await.and_then(|head| head.checksum),
            };
            // None: the store keeps no checksum; each part's was checked on upload.
            if let Some(reported) = reported
                && !composite_matches(&reported, want)
            {
                wrong = Some(format!("CRC32C {reported}, not the {want}"));
            }
        }
        let Some(wrong) = wrong else {
            return Ok(());
        };
        let removed = self
            .dest
            .delete_object()
            .bucket(&self.target.bucket)
            .key(key)
            .send()
            .await;
        let outcome = match removed {
            Ok(_) => "it was deleted".to_string(),
            Err(error) => format!("deleting it failed too: {}", chain(&error)),
        };
        Err(CopyError::retryable(format!(
            "{key}: the destination completed it with {wrong} its verified parts give; {outcome}"
        )))
    }

    /// What the object at `key` reports, by one HEAD: its ETag, and its CRC32C checksum
    /// (`value-N` for a composite one) when the store keeps one. `None` when it cannot be read.
    async fn head(&self, key: &str) -> Option<Answer> {
        let head = self
            .dest
            .head_object()
            .bucket(&self.target.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .ok()?;
        Some(Answer {
            etag: unquoted(head.e_tag()),
            checksum: head.checksum_crc32_c().map(str::to_string),
            looked: true,
        })
    }
}
