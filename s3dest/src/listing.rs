//! The destination's copies under source-key folders, every page: what the copy's triage,
//! `era5 audit` and `era5 verify` read. **Pagination always ends**: a continuation token that
//! repeats, or more than [`MAX_PAGES`] pages under one folder, is an error.

use transport::retry::{RetryPolicy, chain, classify, retrying};

use crate::S3Target;

/// Most listing pages per folder (1,000 keys each).
pub const MAX_PAGES: usize = 1_000;

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
