//! Discovery: list exactly the month folders a selection needs (ListObjectsV2, every page), keep
//! the keys of the ERA5 layout that the selection rule accepts, and never guess a key.

use aws_smithy_types::date_time::Format;
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Serialize;
use thiserror::Error;

use crate::catalog::ObjectKey;
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

/// Every object of the selection, sorted by key.
pub async fn discover(
    source: &Source,
    selection: &Selection,
    retry: &RetryPolicy,
) -> Result<Vec<RemoteObject>, ListError> {
    let prefixes = selection.list_prefixes();
    let pages: Vec<Vec<RemoteObject>> = stream::iter(prefixes)
        .map(|prefix| list_prefix(source, prefix, retry))
        .buffer_unordered(LIST_CONCURRENCY)
        .try_collect()
        .await?;
    let mut objects: Vec<RemoteObject> = pages
        .into_iter()
        .flatten()
        .filter(|object| ObjectKey::parse(&object.key).is_some_and(|key| selection.selects(&key)))
        .collect();
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    objects.dedup_by(|a, b| a.key == b.key);
    Ok(objects)
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
