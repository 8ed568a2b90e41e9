//! What an S3 destination holds, for `era5 audit --dest s3://...`: a snapshot of the
//! destination's listing under the selection's month folders, and for each copy whose ETag
//! differs from the source's, the source version it recorded (`x-amz-meta-era5-source-etag`,
//! one HEAD). The same rule as the copy's triage decides (`mirror`): held and verified when the
//! copy has the listed size and the source's ETag, or records it. Read only.

use std::collections::HashMap;

use common::selection::Selection;
use engine::audit::{Changed, Held, Holdings};
use transport::RemoteObject;
use transport::retry::{RetryPolicy, chain};

use crate::listing::list_copies;

use crate::S3Target;
use crate::copy::SOURCE_ETAG_META;

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
