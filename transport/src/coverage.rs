//! Which months the bucket holds for a product, from its folder names (one delimiter listing of
//! `{product}/`, no object listed), and why a selection matched nothing.
//!
//! A selection that matches nothing must never look like success: the reason is read from the
//! listing (the range lies after the product's latest month, before its first, in a gap, or the
//! product's objects there are all of other variables) and printed in one line.

use std::time::Duration;

use thiserror::Error;

use crate::Source;
use crate::listing::Discovery;
use crate::retry::{Failure, RetryPolicy, chain, classify};
use common::catalog::Product;
use common::dates::YearMonth;
use common::selection::Selection;

/// Pages of folder names read at most: a product has about 1,050 month folders (two pages of
/// 1,000), so this only stops a server that never ends its listing.
const MAX_FOLDER_PAGES: usize = 64;

/// Listing a product's folders failed.
#[derive(Debug, Error)]
#[error("listing the month folders of s3://{bucket}/{product}/ failed: {reason}")]
pub struct FolderError {
    /// Bucket.
    pub bucket: String,
    /// Product folder.
    pub product: String,
    /// What went wrong.
    pub reason: String,
}

/// The month folders the bucket has for `product`, in order. Keys that are not month folders
/// (`{product}/index.html`, a folder with another name) are ignored. The whole listing is
/// bounded by `deadline`.
pub async fn month_folders(
    source: &Source,
    product: Product,
    retry: &RetryPolicy,
    deadline: Duration,
) -> Result<Vec<YearMonth>, FolderError> {
    let error = |reason: String| FolderError {
        bucket: source.bucket.clone(),
        product: product.name().to_string(),
        reason,
    };
    tokio::time::timeout(deadline, list_month_folders(source, product, retry))
        .await
        .map_err(|_| error(format!("no answer within {} s", deadline.as_secs())))?
        .map_err(error)
}

async fn list_month_folders(
    source: &Source,
    product: Product,
    retry: &RetryPolicy,
) -> Result<Vec<YearMonth>, String> {
    let prefix = format!("{}/", product.name());
    let mut months = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..MAX_FOLDER_PAGES {
        let page = folder_page(source, &prefix, token.clone(), retry).await?;
        for folder in page.common_prefixes() {
            let month = folder
                .prefix()
                .and_then(|p| p.strip_prefix(&prefix))
                .and_then(|p| p.strip_suffix('/'))
                .and_then(YearMonth::parse_compact);
            months.extend(month);
        }
        let next = page.next_continuation_token().map(str::to_string);
        if !page.is_truncated().unwrap_or(false) || next.is_none() {
            months.sort();
            months.dedup();
            return Ok(months);
        }
        if next == token {
            return Err("the server repeated its continuation token".to_string());
        }
        token = next;
    }
    Err(format!("more than {MAX_FOLDER_PAGES} pages of folders"))
}

async fn folder_page(
    source: &Source,
    prefix: &str,
    token: Option<String>,
    retry: &RetryPolicy,
) -> Result<aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output, String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = source
            .client
            .list_objects_v2()
            .bucket(&source.bucket)
            .prefix(prefix)
            .delimiter("/")
            .set_continuation_token(token.clone())
            .send()
            .await;
        let error = match result {
            Ok(page) => return Ok(page),
            Err(error) => error,
        };
        match classify(&error) {
            Failure::Retry(_) if attempt < retry.max_attempts => {
                tokio::time::sleep(retry.backoff(attempt)).await;
            }
            Failure::Permanent { message, .. } => return Err(message),
            _ => return Err(chain(&error)),
        }
    }
}

/// One line saying why `selection` matched nothing, product by product, from what the listing
/// saw and, where that is not enough, from the product's month folders.
pub async fn explain_empty(
    source: &Source,
    selection: &Selection,
    discovery: &Discovery,
    retry: &RetryPolicy,
) -> String {
    let mut reasons = Vec::new();
    for product in &selection.products {
        let present = discovery.in_range.get(product).copied().unwrap_or(0);
        let reason = if present > 0 {
            format!(
                "{product}: the bucket has {present} objects in {} but none of the requested {}",
                selection.describe_range(),
                requested_filters(selection)
            )
        } else {
            match month_folders(source, *product, retry, Duration::from_secs(60)).await {
                Ok(months) => explain_months(*product, selection, &months),
                Err(error) => format!(
                    "{product}: the bucket has no object in {} ({error})",
                    selection.describe_range()
                ),
            }
        };
        reasons.push(reason);
    }
    format!("the selection matches no object: {}", reasons.join("; "))
}

/// One warning per requested variable or grid that matched no object: a request the user
/// would otherwise believe satisfied.
pub fn warnings(selection: &Selection, discovery: &Discovery) -> Vec<String> {
    let unmatched = selection.unmatched(&discovery.selected_keys().collect::<Vec<_>>());
    let range = selection.describe_range();
    let products_with = |short: &str| -> String {
        selection
            .products
            .iter()
            .filter(|p| p.variables().any(|v| v.short == short))
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(",")
    };
    let variables = unmatched.variables.iter().map(|v| {
        format!(
            "variable {} matches no object of {} in {range}",
            selection.label(v),
            products_with(v)
        )
    });
    let grids = unmatched
        .grids
        .iter()
        .map(|g| format!("grid {g} matches no object in {range}"));
    variables.chain(grids).collect()
}

fn requested_filters(selection: &Selection) -> String {
    let mut parts = Vec::new();
    if !selection.variables.is_empty() {
        let labels: Vec<String> = selection
            .variables
            .iter()
            .map(|v| selection.label(v))
            .collect();
        parts.push(format!("variables ({})", labels.join(", ")));
    }
    if !selection.grids.is_empty() {
        parts.push(format!("grids ({})", selection.grids.join(", ")));
    }
    parts.join(" on ")
}

/// The reason for a product with no object in range, given the bucket's month folders of it.
pub fn explain_months(product: Product, selection: &Selection, months: &[YearMonth]) -> String {
    let range = selection.describe_range();
    let (Some(first), Some(latest)) = (months.first(), months.last()) else {
        return format!(
            "{product}: the bucket holds no {product} folder at all (check --bucket and --endpoint)"
        );
    };
    let start = YearMonth::of(selection.range.start);
    let end = YearMonth::of(selection.range.end);
    if start > *latest {
        format!(
            "{product}: the range {range} lies after the latest month the bucket holds, {latest}"
        )
    } else if end < *first {
        format!(
            "{product}: the range {range} lies before the first month the bucket holds, {first}"
        )
    } else {
        let before = months.iter().rev().find(|m| **m < start);
        let after = months.iter().find(|m| **m > end);
        let around = match (before, after) {
            (Some(b), Some(a)) => format!("; the nearest months it holds are {b} and {a}"),
            (Some(b), None) => format!("; the latest month before it is {b}"),
            (None, Some(a)) => format!("; the first month after it is {a}"),
            (None, None) => String::new(),
        };
        format!("{product}: the bucket has no object in {range}, a gap in the archive{around}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn selection(start: &str, end: &str) -> Selection {
        Selection::parse(
            &["e5.oper.an.sfc".into()],
            &[],
            &[],
            start,
            end,
            date(2026, 12, 1),
        )
        .unwrap()
    }

    fn months(list: &[(i16, i8)]) -> Vec<YearMonth> {
        list.iter()
            .map(|&(year, month)| YearMonth { year, month })
            .collect()
    }

    #[test]
    fn the_reason_names_the_latest_or_first_month_or_the_gap() {
        let held = months(&[(1940, 1), (2024, 1), (2024, 2), (2024, 4), (2026, 6)]);
        assert_eq!(
            explain_months(Product::AnSfc, &selection("2026-08", "2026-09"), &held),
            "e5.oper.an.sfc: the range 2026-08-01..2026-09-30 lies after the latest month the bucket holds, 2026-06"
        );
        assert_eq!(
            explain_months(Product::AnSfc, &selection("2024-03", "2024-03"), &held),
            "e5.oper.an.sfc: the bucket has no object in 2024-03-01..2024-03-31, a gap in the archive; the nearest months it holds are 2024-02 and 2024-04"
        );
        let later = months(&[(2024, 1)]);
        assert!(
            explain_months(Product::AnSfc, &selection("2023-01", "2023-01"), &later)
                .ends_with("lies before the first month the bucket holds, 2024-01")
        );
        assert_eq!(
            explain_months(Product::AnSfc, &selection("2023-01", "2023-01"), &[]),
            "e5.oper.an.sfc: the bucket holds no e5.oper.an.sfc folder at all (check --bucket and --endpoint)"
        );
    }
}
