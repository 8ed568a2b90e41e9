//! The coordinator's one error type, and the one table that maps it to a gRPC code, an HTTP
//! status (the status page) and a process exit status (the operator commands, which only see
//! the gRPC code on the wire).

use thiserror::Error;
use tonic::Code;

/// Everything that can go wrong in the coordinator, from the store to the network boundary.
#[derive(Debug, Error)]
pub enum Error {
    /// Redis is unreachable or failed; the caller answers UNAVAILABLE and tries again later.
    #[error("lease store unavailable: {0}")]
    Unavailable(String),
    /// Stored data did not parse.
    #[error("lease store holds corrupt data: {0}")]
    Corrupt(String),
    /// No such job.
    #[error("no job `{0}`")]
    UnknownJob(String),
    /// A worker no coordinator has heard from (a drain naming it is bad input).
    #[error("{0}")]
    UnknownWorker(String),
    /// The request is malformed or names bad values.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller is known but may not do this (role, lease holder, foreign source).
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller has no usable identity.
    #[error("{0}")]
    Unauthenticated(String),
    /// A cap was reached (sessions, jobs, objects, report size, calls in flight).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The source refused the listing (403, 404, no such bucket): retrying cannot help.
    #[error("{0}")]
    ListingRefused(String),
    /// The source kept failing transiently while listing.
    #[error("{0}")]
    ListingFailed(String),
    /// The call did not finish within its deadline.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The job's selection matches no object; the message says why, from the listing.
    #[error("{0}")]
    EmptySelection(String),
}

/// How each gRPC code is reported: the HTTP status of the status page, and the exit status of
/// an `era5` operator command that received it. The only such table.
const CLASSES: [(Code, u16, i32); 11] = [
    (Code::Ok, 200, 0),
    (Code::InvalidArgument, 400, 2),
    (Code::NotFound, 404, 2),
    (Code::PermissionDenied, 403, 2),
    (Code::Unauthenticated, 401, 2),
    (Code::ResourceExhausted, 429, 1),
    (Code::FailedPrecondition, 412, 1),
    (Code::Unavailable, 503, 1),
    (Code::DeadlineExceeded, 504, 1),
    (Code::Internal, 500, 1),
    (Code::Unknown, 500, 1),
];

fn class(code: Code) -> (u16, i32) {
    CLASSES
        .iter()
        .find(|(c, _, _)| *c == code)
        .map_or((500, 1), |(_, http, exit)| (*http, *exit))
}

/// The HTTP status for a gRPC code.
pub fn http_status(code: Code) -> u16 {
    class(code).0
}

/// The exit status of an operator command that got this gRPC code: 2 when the request was
/// wrong (bad value, unknown job, not allowed), 1 when the system could not do it now.
pub fn exit_status(code: Code) -> i32 {
    class(code).1
}

impl Error {
    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            Error::Unavailable(_) | Error::ListingFailed(_) => Code::Unavailable,
            Error::Corrupt(_) => Code::Internal,
            Error::UnknownJob(_) | Error::UnknownWorker(_) => Code::NotFound,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::ListingRefused(_) | Error::EmptySelection(_) => Code::FailedPrecondition,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
        }
    }

    /// The HTTP status (for the status page).
    pub fn http_status(&self) -> u16 {
        http_status(self.code())
    }
}

impl From<lease::Error> for Error {
    fn from(error: lease::Error) -> Self {
        match error {
            lease::Error::Unavailable(m) => Error::Unavailable(m),
            lease::Error::Corrupt(m) => Error::Corrupt(m),
            lease::Error::UnknownJob(job) => Error::UnknownJob(job),
            lease::Error::InvalidArgument(m) => Error::InvalidArgument(m),
        }
    }
}

/// The gRPC status of any error the coordinator or its store returns.
pub fn status(error: impl Into<Error>) -> tonic::Status {
    tonic::Status::from(error.into())
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        tonic::Status::new(error.code(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_one_class() {
        let errors = [
            Error::Unavailable("x".into()),
            Error::Corrupt("x".into()),
            Error::UnknownJob("x".into()),
            Error::InvalidArgument("x".into()),
            Error::PermissionDenied("x".into()),
            Error::Unauthenticated("x".into()),
            Error::ResourceExhausted("x".into()),
            Error::ListingRefused("x".into()),
            Error::ListingFailed("x".into()),
            Error::DeadlineExceeded("x".into()),
        ];
        for error in errors {
            let code = error.code();
            assert!(
                CLASSES.iter().any(|(c, _, _)| *c == code),
                "{code:?} has no row"
            );
            assert_eq!(tonic::Status::from(error).code(), code);
        }
        assert_eq!(Error::UnknownJob("j".into()).http_status(), 404);
        assert_eq!(Error::Unavailable("r".into()).http_status(), 503);
        assert_eq!(Error::Corrupt("c".into()).http_status(), 500);
        assert_eq!(exit_status(Code::PermissionDenied), 2);
        assert_eq!(exit_status(Code::Unavailable), 1);
    }
}
