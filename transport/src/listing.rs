//! Discovery: list exactly the month folders a selection needs (ListObjectsV2, every page), keep
//! the keys of the ERA5 layout that the selection rule accepts, and never guess a key. What the
//! listing saw besides the selected objects (keys the catalog does not know, objects of the
//! products and days that other variables or grids ruled out) is kept for `plan`'s report and
//! for saying why a selection matched nothing.
//!
//! A listing is held to the same limits as a download, whatever the server does:
//! - each request has a timeout ([`LIST_REQUEST_TIMEOUT`]), and the pool's guard cuts a
//!   response whose headers or bytes stall past `--stall-timeout` or come below `--min-rate`;
//! - failures are classified and retried by `retry`, with the same policy as GETs (SlowDown
//!   and 429 included);
//! - a page body over 16 MiB is refused (the pool's cap on unranged bodies);
//! - **pagination always ends**: a continuation token seen before, or more pages or keys than
//!   the folder can hold ([`prefix_capacity`]), is a clear error, not an endless loop;
//! - a folder's whole listing, retries included, ends within [`LIST_DEADLINE_STALLS`] stall
//!   timeouts;
//! - **memory follows the selection, not the server**: each page is sorted as it arrives and
//!   only the selected objects are kept; keys over S3's 1,024 bytes are dropped, and a folder
//!   whose keys add up to more than [`LIST_KEY_BYTES_CAP`] is refused.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use aws_smithy_types::date_time::Format;
use futures_util::{StreamExt, TryStreamExt, stream};
use serde::Serialize;
use thiserror::Error;

use crate::Source;
use crate::retry::{Failure, RetryPolicy, chain, classify, retrying};
pub use common::RemoteObject;
use common::catalog::{self, Cadence, ObjectKey, Product};
use common::selection::Selection;

/// Folders listed at once; the pool's cap still bounds connections.
const LIST_CONCURRENCY: usize = 8;

/// Longest a single ListObjectsV2 request may take, body included. A page is at most 16 MiB
/// and usually 300 KiB; the stall guard and the minimum rate end broken ones much sooner.
pub const LIST_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

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

    /// Adds what another discovery of the same selection found (another folder's).
    pub fn merge(&mut self, other: Discovery) {
        self.objects.extend(other.objects);
        self.unknown.count += other.unknown.count;
        self.unknown.sample.extend(other.unknown.sample);
        self.unknown.sample.sort();
        self.unknown.sample.dedup();
        self.unknown.sample.truncate(SAMPLE_KEYS);
        for (product, count) in other.in_range {
            *self.in_range.entry(product).or_default() += count;
        }
    }

    /// Sorts the selected objects by key and drops duplicates.
    #[must_use]
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
    let folders: Vec<Discovery> = stream::iter(prefixes)
        .map(|prefix| list_prefix(source, prefix, selection, retry))
        .buffer_unordered(LIST_CONCURRENCY)
        .try_collect()
        .await?;
    let mut discovery = Discovery::new(selection);
    for folder in folders {
        discovery.merge(folder);
    }
    Ok(discovery.finish())
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

/// A prefix's whole listing, retries included, must be done within this many stall timeouts:
/// a server that stalls every attempt fails the listing in bounded time (under a minute with
/// `--stall-timeout 5`), however many attempts the retry policy would allow.
pub const LIST_DEADLINE_STALLS: u32 = 8;

/// S3's longest key, in bytes: a listed key over it is not an object of any bucket.
pub const MAX_KEY_BYTES: usize = 1024;

/// The most key bytes one folder's listing may carry, junk included, before it is refused
/// (a real month folder carries well under 10 MiB).
pub const LIST_KEY_BYTES_CAP: u64 = 64 << 20;

/// What one folder holds for `selection`, following continuation tokens, within
/// [`LIST_DEADLINE_STALLS`] stall timeouts. Each page is sorted as it arrives: only selected
/// objects are kept (and counts and a few samples of the rest), keys longer than
/// [`MAX_KEY_BYTES`] are dropped unread, so memory follows the selection, not what a server
/// sends.
pub async fn list_prefix(
    source: &Source,
    prefix: String,
    selection: &Selection,
    retry: &RetryPolicy,
) -> Result<Discovery, ListError> {
    let deadline = source.pool_config().guard.stall_timeout * LIST_DEADLINE_STALLS;
    let (bucket, folder) = (source.bucket.clone(), prefix.clone());
    tokio::time::timeout(
        deadline,
        list_prefix_pages(source, prefix, selection, retry),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ListError::Exhausted {
            bucket,
            prefix: folder,
            attempts: retry.max_attempts,
            last: format!(
                "stall: no complete listing within {}s ({LIST_DEADLINE_STALLS} stall timeouts)",
                deadline.as_secs()
            ),
        })
    })
}

async fn list_prefix_pages(
    source: &Source,
    prefix: String,
    selection: &Selection,
    retry: &RetryPolicy,
) -> Result<Discovery, ListError> {
    let capacity = prefix_capacity(&prefix);
    let endless = |problem: String| ListError::Refused {
        bucket: source.bucket.clone(),
        prefix: prefix.clone(),
        message: format!("{problem}; the server's pagination never ends"),
    };
    let mut discovery = Discovery::new(selection);
    let (mut keys, mut key_bytes) = (0usize, 0u64);
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
            keys += 1;
            key_bytes += key.len() as u64;
            if key.len() > MAX_KEY_BYTES {
                continue;
            }
            discovery.add(
                selection,
                RemoteObject {
                    key: key.to_string(),
                    size: entry.size().unwrap_or_default().max(0) as u64,
                    etag: entry.e_tag().map(unquote_etag).filter(|e| !e.is_empty()),
                    last_modified: entry
                        .last_modified()
                        .and_then(|t| t.fmt(Format::DateTime).ok()),
                },
            );
        }
        if keys > capacity {
            return Err(endless(format!(
                "more than {capacity} keys, more than the folder can hold"
            )));
        }
        if key_bytes > LIST_KEY_BYTES_CAP {
            return Err(ListError::Refused {
                bucket: source.bucket.clone(),
                prefix: prefix.clone(),
                message: format!(
                    "more than {} MiB of keys, more than the folder can hold",
                    LIST_KEY_BYTES_CAP >> 20
                ),
            });
        }
        token = page.next_continuation_token().map(str::to_string);
        let Some(next) = token
            .as_ref()
            .filter(|_| page.is_truncated().unwrap_or(false))
        else {
            return Ok(discovery);
        };
        if !seen_tokens.insert(next.clone()) {
            return Err(endless(format!("continuation token `{next}` came back")));
        }
    }
}

/// Listing attempts a source whose name does not resolve gets: a name that fails three times
/// in a row (a few seconds) is not coming back within a listing's retries.
const UNRESOLVED_ATTEMPTS: u32 = 3;

/// A listing that cannot reach its source says so once, on the first failure, instead of
/// retrying in silence for half a minute; a source whose name does not resolve gives up after
/// [`UNRESOLVED_ATTEMPTS`], within a second, with one line.
fn unreachable_source(
    failure: Failure,
    detail: String,
    attempt: u32,
    retry: &RetryPolicy,
) -> (Failure, String) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if failure != Failure::Retry(crate::retry::RetryReason::Connect) {
        return (failure, detail);
    }
    let unresolved = detail.contains("failed to lookup address");
    if unresolved {
        if attempt < UNRESOLVED_ATTEMPTS {
            return (failure, detail);
        }
        let detail = format!("{detail} ({attempt} attempts: is the network or DNS up?)");
        return (
            Failure::Permanent {
                status: None,
                message: detail.clone(),
            },
            detail,
        );
    }
    if attempt == 1 && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "cannot reach the source yet ({detail}); trying {} times",
            retry.max_attempts
        );
    }
    (failure, detail)
}

async fn list_page(
    source: &Source,
    prefix: &str,
    token: Option<&str>,
    retry: &RetryPolicy,
) -> Result<aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output, ListError> {
    // (`unreachable_source` says what is being tried when the source cannot be reached.)
    let result = retrying(
        retry,
        |attempt| {
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
                        Failure::Retry(crate::retry::RetryReason::Stall),
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
                        Err(unreachable_source(failure, detail, attempt, retry))
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
        _ => crate::retry::chain(error),
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
