//! `S3Mirror`: another object store as the lease loop's destination.
//!
//! **The destination is its own record.** There is no manifest beside it: each batch lists the
//! destination under the batch's common prefix (one LIST per page of up to 1,000 keys), and an
//! object is present when its key holds the listed size and either the source's ETag (a copy
//! that reproduced the source's parts) or, read by a HEAD, the source ETag the copy recorded
//! in its metadata (`x-amz-meta-era5-source-etag`). A re-run over a complete destination thus
//! makes no source request at all, and several processes writing one bucket need no shared
//! state file that could disagree with the objects.
//!
//! Why not a manifest under `PREFIX/.era5/`: a manifest in an object store is rewritten whole
//! (no appends), so it would either lag or cost a PUT per object, and it would vouch for
//! objects someone else may have deleted or replaced since; the listing cannot.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aws_sdk_s3::error::ProvideErrorMetadata;
use engine::disk::DestHealth;
use engine::scheduler::RequestScheduler;
use engine::{Destination, FetchScope, Outcome, Progress};
use futures_util::{StreamExt, stream};
use transport::RemoteObject;
use transport::retry::{chain, classify, retrying};

use crate::copy::{Copier, CopyError, SOURCE_ETAG_META};
use crate::layout::UploadLayout;
use crate::listing::{ListedCopy, list_copies};
use crate::uploads::OpenUpload;

/// An object store written through a [`Copier`].
pub struct S3Mirror {
    copier: Arc<Copier>,
    health: Arc<DestHealth>,
    next_seq: AtomicU64,
    counted_up_front: AtomicBool,
    /// Objects of one batch copied at once (their parts share the request window).
    objects_at_once: usize,
}

/// What an object needs.
enum Plan {
    Present,
    Copy { etag: Option<String> },
}

impl S3Mirror {
    /// A destination over `copier`, copying `objects_at_once` objects of a batch at once.
    pub fn new(copier: Copier, objects_at_once: usize) -> Arc<Self> {
        Arc::new(Self {
            copier: Arc::new(copier),
            health: Arc::new(DestHealth::default()),
            next_seq: AtomicU64::new(0),
            counted_up_front: AtomicBool::new(false),
            objects_at_once: objects_at_once.max(1),
        })
    }

    /// The copier (its clients and settings).
    pub fn copier(&self) -> &Arc<Copier> {
        &self.copier
    }

    /// The destination's copies of `objects`, by source key, from one listing of their
    /// common folder.
    async fn listed(
        &self,
        objects: &[RemoteObject],
    ) -> Result<HashMap<String, ListedCopy>, String> {
        let copier = &self.copier;
        let keys: Vec<String> = objects.iter().map(|o| o.key.clone()).collect();
        let wanted: std::collections::HashSet<&str> = keys.iter().map(String::as_str).collect();
        let folder = common_prefix(&keys);
        Ok(
            list_copies(&copier.dest, &copier.target, &[folder], &copier.retry)
                .await?
                .into_iter()
                .filter(|copy| wanted.contains(copy.key.as_str()))
                .map(|copy| (copy.key.clone(), copy))
                .collect(),
        )
    }

    /// The open uploads under the folder `objects` share, by destination key: one
    /// `ListMultipartUploads` for the batch's resumes instead of one per object. `None` when
    /// the listing fails (each copy then lists its own key's).
    async fn open_uploads(
        &self,
        objects: &[&RemoteObject],
    ) -> Option<HashMap<String, Vec<OpenUpload>>> {
        let copier = &self.copier;
        let keys: Vec<String> = objects.iter().map(|o| o.key.clone()).collect();
        let folder = copier.target.key_of(&common_prefix(&keys));
        match crate::uploads::list(&copier.dest, &copier.target.bucket, &folder, &copier.retry)
            .await
        {
            Ok(open) => {
                let mut by_key: HashMap<String, Vec<OpenUpload>> = HashMap::new();
                for upload in open {
                    by_key.entry(upload.key.clone()).or_default().push(upload);
                }
                Some(by_key)
            }
            Err(why) => {
                tracing::info!(folder, %why, "listing the folder's open uploads failed; each copy lists its own");
                None
            }
        }
    }

    /// The source version the destination's copy at `key` recorded, by a HEAD.
    async fn recorded_source_etag(&self, key: &str) -> Result<Option<String>, String> {
        let copier = &self.copier;
        let head = copier
            .dest
            .head_object()
            .bucket(&copier.target.bucket)
            .key(key)
            .send()
            .await;
        match head {
            Ok(head) => Ok(head
                .metadata()
                .and_then(|meta| meta.get(SOURCE_ETAG_META))
                .map(|etag| etag.trim_matches('"').to_string())),
            Err(error) if error.code() == Some("NotFound") || error.code() == Some("NoSuchKey") => {
                Ok(None)
            }
            Err(error) => Err(chain(&error)),
        }
    }

    /// The source's ETag of `object`: listed, or asked by a HEAD when the listing left it out.
    async fn source_etag(&self, object: &RemoteObject) -> Result<Option<String>, CopyError> {
        if object.etag.is_some() {
            return Ok(object.etag.clone());
        }
        let copier = &self.copier;
        retrying(
            &copier.retry,
            |_| {
                let request = copier
                    .source
                    .client
                    .head_object()
                    .bucket(&copier.source.bucket)
                    .key(&object.key);
                async move {
                    request
                        .send()
                        .await
                        .map(|head| head.e_tag().map(|e| e.trim_matches('"').to_string()))
                        .map_err(|e| (classify(&e), chain(&e)))
                }
            },
            |reason| copier.progress.retry(reason),
        )
        .await
        .map_err(|gave_up| CopyError::Failed {
            reason: format!("HEAD of {} at the source: {}", object.key, gave_up.detail),
            permanent: matches!(gave_up.failure, transport::retry::Failure::Permanent { .. }),
        })
    }

    /// What each object needs, from the listing (and a HEAD where the ETags differ).
    async fn triage(
        &self,
        objects: &[RemoteObject],
    ) -> Result<Vec<Result<Plan, CopyError>>, String> {
        let listed = self.listed(objects).await?;
        let mut plans = Vec::with_capacity(objects.len());
        for object in objects {
            let etag = match self.source_etag(object).await {
                Ok(etag) => etag,
                Err(error) => {
                    plans.push(Err(error));
                    continue;
                }
            };
            let plan = match (listed.get(&object.key), &etag) {
                (Some(copy), Some(source_etag)) if copy.size == object.size => {
                    if &copy.etag == source_etag
                        || self
                            .recorded_source_etag(&self.copier.target.key_of(&object.key))
                            .await?
                            .as_ref()
                            == Some(source_etag)
                    {
                        Plan::Present
                    } else {
                        Plan::Copy { etag }
                    }
                }
                _ => Plan::Copy { etag },
            };
            plans.push(Ok(plan));
        }
        Ok(plans)
    }

    fn settle(
        &self,
        scope: &FetchScope,
        object: &RemoteObject,
        result: Result<Outcome, CopyError>,
    ) -> Outcome {
        let outcome = match result {
            Ok(outcome) => {
                let counters = std::iter::once(&self.copier.progress).chain(scope.batch.as_ref());
                for progress in counters {
                    progress.objects_done.fetch_add(1, Ordering::Relaxed);
                }
                outcome
            }
            Err(CopyError::Cancelled) => Outcome::Cancelled,
            // A newer version was in place: done like any success, with nothing written.
            Err(CopyError::Superseded) => {
                let counters = std::iter::once(&self.copier.progress).chain(scope.batch.as_ref());
                for progress in counters {
                    progress.objects_done.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Superseded
            }
            Err(CopyError::Fenced(reason)) => {
                tracing::warn!(key = %object.key, %reason, "not completed: the lease is gone");
                Outcome::Cancelled
            }
            Err(CopyError::Failed { reason, permanent }) => {
                self.copier
                    .progress
                    .objects_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %object.key, %reason, "object failed");
                Outcome::Failed { reason, permanent }
            }
        };
        self.copier.progress.object_ended(object, &outcome);
        outcome
    }
}

/// The longest common prefix of `keys`, cut back to a whole folder (`/`).
fn common_prefix(keys: &[String]) -> String {
    let Some(first) = keys.first() else {
        return String::new();
    };
    let mut length = first.len();
    for key in &keys[1..] {
        length = first
            .bytes()
            .zip(key.bytes())
            .take(length)
            .take_while(|(a, b)| a == b)
            .count();
    }
    let prefix = &first[..length];
    match prefix.rfind('/') {
        Some(slash) => first[..=slash].to_string(),
        None => String::new(),
    }
}

#[async_trait::async_trait]
impl Destination for S3Mirror {
    async fn mirror_objects(
        &self,
        objects: &[RemoteObject],
        scope: &FetchScope,
    ) -> std::io::Result<Vec<Outcome>> {
        let progress = &self.copier.progress;
        let plans = match self.triage(objects).await {
            Ok(plans) => plans,
            // The destination cannot even be listed: every object fails, and says why.
            Err(why) => {
                let reason = format!("listing the destination failed: {why}");
                return Ok(objects
                    .iter()
                    .map(|object| {
                        self.settle(
                            scope,
                            object,
                            Err(CopyError::Failed {
                                reason: reason.clone(),
                                permanent: false,
                            }),
                        )
                    })
                    .collect());
            }
        };
        let present: u64 = objects
            .iter()
            .zip(&plans)
            .filter(|(_, plan)| matches!(plan, Ok(Plan::Present)))
            .map(|(object, _)| object.size)
            .sum();
        if self.counted_up_front.load(Ordering::Relaxed) {
            progress.discount(present);
        } else {
            progress
                .objects_total
                .fetch_add(objects.len() as u64, Ordering::Relaxed);
            progress.bytes_total.fetch_add(
                objects.iter().map(|o| o.size).sum::<u64>() - present,
                Ordering::Relaxed,
            );
        }
        let mut outcomes: Vec<Option<Outcome>> = vec![None; objects.len()];
        let mut to_copy = Vec::new();
        for (index, plan) in plans.into_iter().enumerate() {
            match plan {
                Ok(Plan::Present) => {
                    outcomes[index] =
                        Some(self.settle(scope, &objects[index], Ok(Outcome::Present)));
                }
                Ok(Plan::Copy { etag }) => to_copy.push((index, etag)),
                Err(error) => {
                    outcomes[index] = Some(self.settle(scope, &objects[index], Err(error)));
                }
            }
        }
        // Only uploads in parts resume; a batch of small objects lists nothing.
        let in_parts: Vec<&RemoteObject> = to_copy
            .iter()
            .map(|(index, etag)| (&objects[*index], etag))
            .filter(|(object, etag)| {
                UploadLayout::plan(object.size, etag.as_deref()).is_ok_and(|l| !l.single_put)
            })
            .map(|(object, _)| object)
            .collect();
        let open = if in_parts.is_empty() {
            None
        } else {
            self.open_uploads(&in_parts).await
        };
        let first_seq = self
            .next_seq
            .fetch_add(to_copy.len() as u64, Ordering::Relaxed);
        let mut copies = stream::iter(to_copy.into_iter().enumerate())
            .take_until(Box::pin(scope.drain.clone().cancelled_owned()))
            .map(|(offset, (index, etag))| {
                let object = &objects[index];
                let key_open = open.as_ref().map(|open| {
                    open.get(&self.copier.target.key_of(&object.key))
                        .cloned()
                        .unwrap_or_default()
                });
                async move {
                let copied = tokio::select! {
                    biased;
                    () = scope.cancel.cancelled() => Err(CopyError::Cancelled),
                    copied = self.copier.copy(object, etag.as_deref(), first_seq + offset as u64, scope.fence.as_deref(), key_open) => copied,
                };
                (index, copied.map(|()| Outcome::Downloaded))
                }
            })
            .buffer_unordered(self.objects_at_once);
        while let Some((index, result)) = copies.next().await {
            outcomes[index] = Some(self.settle(scope, &objects[index], result));
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or(Outcome::Cancelled))
            .collect())
    }

    fn count_up_front(&self, objects: &[RemoteObject]) {
        self.counted_up_front.store(true, Ordering::Relaxed);
        let progress = &self.copier.progress;
        progress
            .objects_total
            .fetch_add(objects.len() as u64, Ordering::Relaxed);
        progress.bytes_total.fetch_add(
            objects.iter().map(|o| o.size).sum::<u64>(),
            Ordering::Relaxed,
        );
    }

    fn progress(&self) -> &Arc<Progress> {
        &self.copier.progress
    }

    fn scheduler(&self) -> &Arc<RequestScheduler> {
        &self.copier.scheduler
    }

    fn health(&self) -> &Arc<DestHealth> {
        &self.health
    }

    /// Not kept: the destination's listing is the record, read per batch.
    fn recorded_version(&self, _object: &RemoteObject) -> Option<bool> {
        None
    }

    async fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }

    async fn flush_at_end(&self) -> std::io::Result<Option<String>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_prefix_is_a_whole_folder() {
        let keys = |list: &[&str]| list.iter().map(|k| (*k).to_string()).collect::<Vec<_>>();
        assert_eq!(
            common_prefix(&keys(&["p/e5.a/202101/x.nc", "p/e5.a/202101/xy.nc"])),
            "p/e5.a/202101/"
        );
        assert_eq!(
            common_prefix(&keys(&["p/e5.a/202101/x.nc", "p/e5.a/202102/x.nc"])),
            "p/e5.a/"
        );
        assert_eq!(common_prefix(&keys(&["a.nc", "b.nc"])), "");
        assert_eq!(common_prefix(&keys(&["only/one.nc"])), "only/");
    }
}
