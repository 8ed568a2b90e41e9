//! What a lease store can answer instead of a result. The coordinator maps each kind onto its
//! own error (and from there a gRPC code); `era5 sync` reports it as a runtime failure.

use thiserror::Error;

/// A store transition or read that did not happen.
#[derive(Debug, Error)]
pub enum Error {
    /// The store is unreachable or failed; try again later.
    #[error("lease store unavailable: {0}")]
    Unavailable(String),
    /// Stored data did not parse.
    #[error("lease store holds corrupt data: {0}")]
    Corrupt(String),
    /// No such job.
    #[error("no job `{0}`")]
    UnknownJob(String),
    /// The request names bad values (a duplicate job id, an empty plan).
    #[error("{0}")]
    InvalidArgument(String),
}
