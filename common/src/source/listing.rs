//! Discovery: list exactly the month folders a selection needs (ListObjectsV2, every page), keep
//! the keys of the ERA5 layout that the selection rule accepts, and never guess a key. What the
//! listing saw besides the selected objects (keys the catalog does not know, objects of the
//! products and days that other variables or grids ruled out) is kept for `plan`'s report and
//! for saying why a selection matched nothing.

use aws_smithy_types::date_time::Format;
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Serialize;
use thiserror::Error;

use std::collections::BTreeMap;

use crate::catalog::{self, ObjectKey, Product};
use crate::selection::Selection;
use crate::source::Source;
use crate::source::retry::{Failure, RetryPolicy, classify};

/// Folders listed at once; the pool's cap still bounds connections.
const LIST_CONCURRENCY: usize = 8;

/// One object as the listing describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemoteObject {
    /// Object key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// ETag without quotes, when the server lists it (some S3-compatible servers do not).
    pub etag: Option<String>,
    /// Last-Modified, RFC 3339, when listed.
    #[serde(skip)]
    pub last_modified: Option<String>,
}

/// Listing failed for good.
#[derive(Debug, Error)]
pub enum ListError {
    /// The server refused (403, 404, NoSuchBucket...): retrying cannot help.
    #[error("listing s3://{bucket}/{prefix} failed: {message}")]
    Refused {
        /// Bucket.
        bucket: String,
        /// Folder being listed.
        prefix: String,
        /// What the server said, with a hint where one helps.
        message: String,
    },
    /// Transient failures outlasted the retry policy.
    #[error("listing s3://{bucket}/{prefix} failed after {attempts} attempts: {last}")]
    Exhausted {
        /// Bucket.
        bucket: String,
        /// Folder being listed.
        prefix: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

/// Keys kept as examples in reports.
pub const SAMPLE_KEYS: usize = 5;

/// A count of keys and the first few of them, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KeySample {
    /// How many keys.
    pub count: u64,
    /// The first [`SAMPLE_KEYS`] of them, in key order.
    pub sample: Vec<String>,
}

impl KeySample {
    fn add(&mut self, key: &str) {
        self.count += 1;
        self.sample.push(key.to_string());
        self.sample.sort();
        self.sample.truncate(SAMPLE_KEYS);
    }
}

/// What listing a selection found.
#[derive(Clone, Debug, Default)]
pub struct Discovery {
    /// Every selected object, sorted by key, without duplicates.
    pub objects: Vec<RemoteObject>,
    /// Keys of the ERA5 layout, of a requested product and overlapping the requested days, that
    /// the catalog does not know (an unknown variable, another code shape, another grid).
    /// They are among `objects` when no variable is requested.
    pub unknown: KeySample,
    /// Per requested product, the keys of the layout overlapping the requested days, whatever
    /// their variable or grid: zero means the bucket has nothing of that product there.
    pub in_range: BTreeMap<Product, u64>,
}

impl Discovery {
    /// An empty discovery of `selection`'s products.
    pub fn new(selection: &Selection) -> Self {
        Self {
            in_range: selection.products.iter().map(|p| (*p, 0)).collect(),
            ..Self::default()
        }
    }

    /// Takes one listed object into account: counted when it is of the layout, a requested
    /// product and in the range; kept when the selection selects it.
    pub fn add(&mut self, selection: &Selection, object: RemoteObject) {
        let Some(key) = ObjectKey::parse(&object.key) else {
            return;
        };
        let in_range = selection.products.contains(&key.product)
            && (key.product.cadence() == catalog::Cadence::Invariant
                || selection.range.overlaps(key.first, key.last));
        if !in_range {
            return;
        }
        *self.in_range.entry(key.product).or_default() += 1;
        if catalog::lookup(&key).is_none() {
            self.unknown.add(&object.key);
        }
        if selection.selects(&key) {
            self.objects.push(object);
        }
    }

    /// Sorts the selected objects by key and drops duplicates.
    pub fn finish(mut self) -> Self {
        self.objects.sort_by(|a, b| a.key.cmp(&b.key));
        self.objects.dedup_by(|a, b| a.key == b.key);
        self
    }

    /// The parsed keys of the selected objects.
    pub fn selected_keys(&self) -> impl Iterator<Item = ObjectKey> + '_ {
        self.objects.iter().filter_map(|o| ObjectKey::parse(&o.key))
    }
}

/// Every object of the selection, sorted by key.
pub async fn discover(
    source: &Source,
    selection: &Selection,
    retry: &RetryPolicy,
) -> Result<Vec<RemoteObject>, ListError> {
    Ok(discover_detailed(source, selection, retry).await?.objects)
}

/// Every object of the selection, and what else the listing saw.
pub async fn discover_detailed(
    source: &Source,
    selection: &Selection,
    retry: &RetryPolicy,
) -> Result<Discovery, ListError> {
    let prefixes = selection.list_prefixes();
    let pages: Vec<Vec<RemoteObject>> = stream::iter(prefixes)
        .map(|prefix| list_prefix(source, prefix, retry))
        .buffer_unordered(LIST_CONCURRENCY)
        .try_collect()
        .await?;
    let mut discovery = Discovery::new(selection);
    for object in pages.into_iter().flatten() {
        discovery.add(selection, object);
    }
    Ok(discovery.finish())
}

/// Every object under one prefix, following continuation tokens.
pub async fn list_prefix(
    source: &Source,
    prefix: String,
    retry: &RetryPolicy,
) -> Result<Vec<RemoteObject>, ListError> {
    let mut objects = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = list_page(source, &prefix, token.as_deref(), retry).await?;
        for entry in page.contents() {
            let Some(key) = entry.key() else { continue };
            objects.push(RemoteObject {
                key: key.to_string(),
                size: entry.size().unwrap_or_default().max(0) as u64,
                etag: entry.e_tag().map(unquote_etag).filter(|e| !e.is_empty()),
                last_modified: entry
                    .last_modified()
                    .and_then(|t| t.fmt(Format::DateTime).ok()),
            });
        }
        token = page.next_continuation_token().map(str::to_string);
        if !page.is_truncated().unwrap_or(false) || token.is_none() {
            return Ok(objects);
        }
    }
}

async fn list_page(
    source: &Source,
    prefix: &str,
    token: Option<&str>,
    retry: &RetryPolicy,
) -> Result<aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output, ListError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = source
            .client
            .list_objects_v2()
            .bucket(&source.bucket)
            .prefix(prefix)
            .set_continuation_token(token.map(str::to_string))
            .send()
            .await;
        let error = match result {
            Ok(page) => return Ok(page),
            Err(error) => error,
        };
        match classify(&error) {
            Failure::Retry(reason) if attempt < retry.max_attempts => {
                tracing::debug!(prefix, attempt, %reason, "listing failed, retrying");
                tokio::time::sleep(retry.backoff(attempt)).await;
            }
            Failure::Retry(reason) => {
                return Err(ListError::Exhausted {
                    bucket: source.bucket.clone(),
                    prefix: prefix.to_string(),
                    attempts: attempt,
                    last: format!("{reason}: {}", crate::source::retry::chain(&error)),
                });
            }
            Failure::Changed | Failure::Permanent { .. } => {
                return Err(ListError::Refused {
                    bucket: source.bucket.clone(),
                    prefix: prefix.to_string(),
                    message: refusal_message(&source.bucket, &error),
                });
            }
        }
    }
}

fn refusal_message<E>(
    bucket: &str,
    error: &aws_sdk_s3::error::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let text = match classify(error) {
        Failure::Permanent { message, .. } => message,
        _ => crate::source::retry::chain(error),
    };
    if bucket == "era5-pds" {
        format!(
            "{text} (era5-pds was retired in 2024 and stops at 2020-12; use the default bucket nsf-ncar-era5)"
        )
    } else {
        text
    }
}

/// `"abc"` → `abc`; S3 quotes ETags in headers and listings.
pub fn unquote_etag(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_lose_their_quotes() {
        assert_eq!(
            unquote_etag("\"d41d8cd98f00b204e9800998ecf8427e\""),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(unquote_etag("\"abc-12\""), "abc-12");
        assert_eq!(unquote_etag("abc"), "abc");
    }
}
