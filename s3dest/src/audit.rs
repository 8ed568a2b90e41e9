//! What an S3 destination holds, for `era5 audit --dest s3://...`: a snapshot of the
//! destination's listing under the selection's month folders, and for each copy whose ETag
//! differs from the source's, the source version it recorded (`x-amz-meta-era5-source-etag`,
//! one HEAD). The same rule as the copy's triage decides (`mirror`): held and verified when the
//! copy has the listed size and the source's ETag, or records it. Read only.

use std::collections::HashMap;

use common::selection::Selection;
use engine::audit::{Changed, Held, Holdings};
use transport::RemoteObject;
use transport::retry::{RetryPolicy, chain, classify, retrying};

use crate::S3Target;
use crate::copy::SOURCE_ETAG_META;

/// Most listing pages per folder (1,000 keys each).
const MAX_PAGES: usize = 1_000;

/// One copy in the destination.
#[derive(Clone, Debug)]
struct Copy {
    size: u64,
    etag: String,
    /// The source ETag its metadata records (read only where the ETags differ).
    source_etag: Option<String>,
}

/// The destination's copies under a selection, by source key.
pub struct StoreHoldings {
    copies: HashMap<String, Copy>,
}

impl StoreHoldings {
    /// Lists the destination under each of `selection`'s month folders and reads the recorded
    /// source version of each copy of a `bucket` object whose ETag differs from the source's.
    pub async fn read(
        client: &aws_sdk_s3::Client,
        target: &S3Target,
        selection: &Selection,
        bucket: &[RemoteObject],
        retry: &RetryPolicy,
    ) -> Result<Self, String> {
        let mut copies: HashMap<String, Copy> =
            list_copies(client, target, &selection.list_prefixes(), retry)
                .await?
                .into_iter()
                .map(|listed| {
                    (
                        listed.key,
                        Copy {
                            size: listed.size,
                            etag: listed.etag,
                            source_etag: None,
                        },
                    )
                })
                .collect();
        for object in bucket {
            let Some(copy) = copies.get_mut(&object.key) else {
                continue;
            };
            if object.etag.as_deref() == Some(copy.etag.as_str()) || copy.size != object.size {
                continue;
            }
            let head = client
                .head_object()
                .bucket(&target.bucket)
                .key(target.key_of(&object.key))
                .send()
                .await
                .map_err(|e| chain(&e))?;
            copy.source_etag = head
                .metadata()
                .and_then(|meta| meta.get(SOURCE_ETAG_META))
                .map(|etag| etag.trim_matches('"').to_string());
        }
        Ok(Self { copies })
    }
}

/// One copy as the destination lists it.
#[derive(Clone, Debug)]
pub struct ListedCopy {
    /// The source key (the destination key without the prefix).
    pub key: String,
    /// Its size.
    pub size: u64,
    /// Its ETag, unquoted.
    pub etag: String,
}

/// The copies under each of `folders` (source-key prefixes, under the target's prefix),
/// every page.
pub async fn list_copies(
    client: &aws_sdk_s3::Client,
    target: &S3Target,
    folders: &[String],
    retry: &RetryPolicy,
) -> Result<Vec<ListedCopy>, String> {
    let mut copies = Vec::new();
    for folder in folders {
        let prefix = target.key_of(folder);
        let mut token: Option<String> = None;
        for page_number in 0.. {
            if page_number == MAX_PAGES {
                return Err(format!("more than {MAX_PAGES} pages under {prefix}"));
            }
            let page = retrying(
                retry,
                |_| {
                    let request = client
                        .list_objects_v2()
                        .bucket(&target.bucket)
                        .prefix(&prefix)
                        .set_continuation_token(token.clone());
                    async move { request.send().await.map_err(|e| (classify(&e), chain(&e))) }
                },
                |_| {},
            )
            .await
            .map_err(|gave_up| gave_up.detail)?;
            for object in page.contents() {
                let (Some(key), Some(size)) = (object.key(), object.size()) else {
                    continue;
                };
                let Some(source_key) = key.strip_prefix(&target.prefix) else {
                    continue;
                };
                copies.push(ListedCopy {
                    key: source_key.to_string(),
                    size: u64::try_from(size).unwrap_or(u64::MAX),
                    etag: object
                        .e_tag()
                        .unwrap_or_default()
                        .trim_matches('"')
                        .to_string(),
                });
            }
            let next = page.next_continuation_token().map(str::to_string);
            if page.is_truncated() != Some(true) {
                break;
            }
            if next.is_none() || next == token {
                return Err(format!(
                    "the listing of {prefix} repeated its continuation token"
                ));
            }
            token = next;
        }
    }
    Ok(copies)
}

impl Holdings for StoreHoldings {
    fn held(&self, object: &RemoteObject) -> Held {
        let Some(copy) = self.copies.get(&object.key) else {
            return Held::Missing("not in the destination".into());
        };
        if copy.size != object.size {
            return Held::Missing(format!(
                "the copy has {} bytes, the object {}",
                copy.size, object.size
            ));
        }
        let listed = object.etag.as_deref();
        if listed == Some(copy.etag.as_str())
            || (listed.is_some() && copy.source_etag.as_deref() == listed)
        {
            return Held::Verified;
        }
        match &copy.source_etag {
            Some(recorded) => Held::Changed(Changed {
                key: object.key.clone(),
                recorded_size: copy.size,
                recorded_etag: Some(recorded.clone()),
                bucket_size: object.size,
                bucket_etag: object.etag.clone(),
            }),
            None => Held::Unrecorded,
        }
    }

    fn keys(&self, selection: &Selection) -> Vec<String> {
        let mut keys: Vec<String> = self
            .copies
            .keys()
            .filter(|key| common::ObjectKey::parse(key).is_some_and(|k| selection.selects(&k)))
            .cloned()
            .collect();
        keys.sort();
        keys
    }
}
