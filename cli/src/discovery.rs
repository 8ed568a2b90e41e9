//! What every listing command (`plan`, `sync`) says about its selection before it does
//! anything else: a warning per requested variable or grid that matched nothing, and, when the
//! whole selection matched nothing, a failure whose message says why, read from the listing.

use common::selection::Selection;
use transport::retry::RetryPolicy;
use transport::{Discovery, Source, coverage};

use crate::exit::Failure;

/// Warns about unmatched requests on stderr; fails (exit 1) when nothing matched at all.
pub async fn check(
    source: &Source,
    selection: &Selection,
    discovery: &Discovery,
    retry: &RetryPolicy,
) -> Result<(), Failure> {
    for warning in coverage::warnings(selection, discovery) {
        eprintln!("era5: warning: {warning}");
    }
    if discovery.objects.is_empty() {
        return Err(Failure::Runtime(
            coverage::explain_empty(source, selection, discovery, retry).await,
        ));
    }
    Ok(())
}
