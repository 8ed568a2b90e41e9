//! Discovery: list exactly the month folders a selection needs (ListObjectsV2, every page), keep
//! the keys of the ERA5 layout that the selection rule accepts, and never guess a key.
//!
//! A listing is held to the same limits as a download, whatever the server does:
//! - each request has a timeout ([`LIST_REQUEST_TIMEOUT`]), and the pool's guard cuts a
//!   response whose headers or bytes stall past `--stall-timeout` or come below `--min-rate`;
//! - failures are classified and retried by `retry`, with the same policy as GETs (SlowDown
//!   and 429 included);
//! - a page body over 16 MiB is refused (the pool's cap on unranged bodies);
//! - **pagination always ends**: a continuation token seen before, or more pages or keys than
//!   the folder can hold ([`prefix_capacity`]), is a clear error, not an endless loop.

use std::collections::HashSet;
use std::time::Duration;

use aws_smithy_types::date_time::Format;
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Serialize;
use thiserror::Error;

use crate::catalog::{Cadence, ObjectKey, Product};
use crate::selection::Selection;
use crate::source::Source;
use crate::source::retry::{Failure, RetryPolicy, chain, classify, retrying};

/// Folders listed at once; the pool's cap still bounds connections.
const LIST_CONCURRENCY: usize = 8;

/// Longest a single ListObjectsV2 request may take, body included. A page is at most 16 MiB
/// and usually 300 KiB; the stall guard and the minimum rate end broken ones much sooner.
pub const LIST_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

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
    /// The server refused (403, 404, NoSuchBucket...) or sent what must not be accepted (a
    /// page over the size cap, pagination that never ends): retrying cannot help.
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

/// The most keys a folder `{product}/{YYYYMM}/` can hold: every variable of the product for
/// every time window of a month, four times over (other grids, copies) plus a thousand stray
/// keys. Listing past it means the server is not listing a real folder. Other prefixes get a
/// generous flat bound.
pub fn prefix_capacity(prefix: &str) -> usize {
    let product = prefix
        .split('/')
        .next()
        .and_then(|name| Product::ALL.into_iter().find(|p| p.name() == name));
    match product {
        Some(product) => {
            let windows = match product.cadence() {
                Cadence::Daily => 31,
                Cadence::HalfMonth => 2,
                Cadence::Monthly | Cadence::Invariant => 1,
            };
            product.variables().count() * windows * 4 + 1000
        }
        None => 1_000_000,
    }
}

/// Every object under one prefix, following continuation tokens.
pub async fn list_prefix(
    source: &Source,
    prefix: String,
    retry: &RetryPolicy,
) -> Result<Vec<RemoteObject>, ListError> {
    let capacity = prefix_capacity(&prefix);
    let endless = |problem: String| ListError::Refused {
        bucket: source.bucket.clone(),
        prefix: prefix.clone(),
        message: format!("{problem}; the server's pagination never ends"),
    };
    let mut objects = Vec::new();
    let mut token: Option<String> = None;
    let mut seen_tokens = HashSet::new();
    let mut pages = 0usize;
    loop {
        pages += 1;
        if pages > capacity {
            return Err(endless(format!(
                "more than {capacity} pages, more than the folder can hold"
            )));
        }
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
        if objects.len() > capacity {
            return Err(endless(format!(
                "more than {capacity} keys, more than the folder can hold"
            )));
        }
        token = page.next_continuation_token().map(str::to_string);
        let Some(next) = token
            .as_ref()
            .filter(|_| page.is_truncated().unwrap_or(false))
        else {
            return Ok(objects);
        };
        if !seen_tokens.insert(next.clone()) {
            return Err(endless(format!("continuation token `{next}` came back")));
        }
    }
}

async fn list_page(
    source: &Source,
    prefix: &str,
    token: Option<&str>,
    retry: &RetryPolicy,
) -> Result<aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output, ListError> {
    let result = retrying(
        retry,
        |_attempt| {
            let request = source
                .client
                .list_objects_v2()
                .bucket(&source.bucket)
                .prefix(prefix)
                .set_continuation_token(token.map(str::to_string))
                .send();
            async move {
                match tokio::time::timeout(LIST_REQUEST_TIMEOUT, request).await {
                    Err(_) => Err((
                        Failure::Retry(crate::source::retry::RetryReason::Stall),
                        format!(
                            "no complete answer within {}s",
                            LIST_REQUEST_TIMEOUT.as_secs()
                        ),
                    )),
                    Ok(Ok(page)) => Ok(page),
                    Ok(Err(error)) => {
                        let failure = classify(&error);
                        // A refusal is reported as is; a transient failure with its chain.
                        let detail = match failure {
                            Failure::Retry(_) => chain(&error),
                            _ => refusal_message(&source.bucket, &error),
                        };
                        Err((failure, detail))
                    }
                }
            }
        },
        |reason| tracing::debug!(prefix, %reason, "listing failed, retrying"),
    )
    .await;
    result.map_err(|gave_up| match gave_up.failure {
        Failure::Retry(reason) => ListError::Exhausted {
            bucket: source.bucket.clone(),
            prefix: prefix.to_string(),
            attempts: gave_up.attempts,
            last: format!("{reason}: {}", gave_up.detail),
        },
        Failure::Changed | Failure::Permanent { .. } => ListError::Refused {
            bucket: source.bucket.clone(),
            prefix: prefix.to_string(),
            message: gave_up.detail,
        },
    })
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
