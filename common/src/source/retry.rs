//! Which S3 failures are worth another attempt, and how long to wait before it.
//!
//! Retryable: connect errors, resets and truncated bodies, read stalls, 500/502/503/504,
//! `RequestTimeout`, and `SlowDown` (which also tells the caller to lower its request rate).
//! Permanent: 403, 404 and every other client error. A 412 means the object changed under us.

use std::fmt;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use rand::Rng;

/// Why an attempt failed, as far as retrying is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Worth another attempt after a backoff.
    Retry(RetryReason),
    /// `If-Match` failed: the object was replaced; start the object over.
    Changed,
    /// Never worth another attempt (403, 404, bad request...).
    Permanent {
        /// HTTP status, when there was a response.
        status: Option<u16>,
        /// What the server or the client said.
        message: String,
    },
}

/// Reasons for a retry; a bounded set, so it can label metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RetryReason {
    /// 503 SlowDown: back off and lower the request rate.
    SlowDown,
    /// 500, 502, 503 (not SlowDown) or 504.
    ServerError,
    /// 400 RequestTimeout from the server.
    RequestTimeout,
    /// Could not connect, or the connection broke before a response.
    Connect,
    /// The connection reset or failed while a body was being read.
    Reset,
    /// The body ended before its length.
    Truncated,
    /// No byte arrived for the stall timeout.
    Stall,
    /// The response did not match the request (wrong range or length).
    BadResponse,
}

impl RetryReason {
    /// Every reason, for reports.
    pub const ALL: [RetryReason; 8] = [
        RetryReason::SlowDown,
        RetryReason::ServerError,
        RetryReason::RequestTimeout,
        RetryReason::Connect,
        RetryReason::Reset,
        RetryReason::Truncated,
        RetryReason::Stall,
        RetryReason::BadResponse,
    ];

    /// Short lowercase label (`slowdown`, `reset`, ...).
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::SlowDown => "slowdown",
            RetryReason::ServerError => "server_error",
            RetryReason::RequestTimeout => "request_timeout",
            RetryReason::Connect => "connect",
            RetryReason::Reset => "reset",
            RetryReason::Truncated => "truncated",
            RetryReason::Stall => "stall",
            RetryReason::BadResponse => "bad_response",
        }
    }

    /// Index into [`RetryReason::ALL`], for counters.
    pub fn index(self) -> usize {
        RetryReason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(0)
    }
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Classifies an SDK error from sending a request (before any body byte was read).
pub fn classify<E>(error: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or_default().to_string();
            classify_status(status, &code, &describe(service.err(), status))
        }
        SdkError::DispatchFailure(dispatch) if dispatch.is_user() => Failure::Permanent {
            status: None,
            message: format!("request could not be sent: {}", chain(error)),
        },
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            Failure::Retry(RetryReason::Connect)
        }
        SdkError::ResponseError(_) => Failure::Retry(RetryReason::BadResponse),
        _ => Failure::Permanent {
            status: None,
            message: chain(error),
        },
    }
}

/// Classifies an HTTP status and S3 error code.
pub fn classify_status(status: u16, code: &str, message: &str) -> Failure {
    match (status, code) {
        (503, _) | (_, "SlowDown") => Failure::Retry(RetryReason::SlowDown),
        (500 | 502 | 504, _) | (_, "InternalError") => Failure::Retry(RetryReason::ServerError),
        (_, "RequestTimeout") => Failure::Retry(RetryReason::RequestTimeout),
        (412, _) | (_, "PreconditionFailed") => Failure::Changed,
        _ => Failure::Permanent {
            status: Some(status),
            message: message.to_string(),
        },
    }
}

fn describe<E: ProvideErrorMetadata>(err: &E, status: u16) -> String {
    match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{status} {code}: {message}"),
        (Some(code), None) => format!("{status} {code}"),
        _ => match status {
            403 => "403 AccessDenied".to_string(),
            404 => "404 NoSuchKey".to_string(),
            other => format!("HTTP {other}"),
        },
    }
}

/// An error and its sources on one line.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

/// Capped exponential backoff with full jitter.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts per request (part) before giving up, the first included.
    pub max_attempts: u32,
    /// Backoff ceiling of the first retry.
    pub base: Duration,
    /// Largest backoff.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// A random wait in `[0, min(cap, base * 2^(attempt-1))]` before attempt `attempt + 1`
    /// ("full jitter", so many clients hitting the same SlowDown do not retry in lockstep).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let ceiling = self.base.saturating_mul(1 << exponent).min(self.cap);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_documented_classes() {
        assert_eq!(
            classify_status(503, "SlowDown", ""),
            Failure::Retry(RetryReason::SlowDown)
        );
        assert_eq!(
            classify_status(503, "", ""),
            Failure::Retry(RetryReason::SlowDown)
        );
        assert_eq!(
            classify_status(500, "InternalError", ""),
            Failure::Retry(RetryReason::ServerError)
        );
        assert_eq!(
            classify_status(502, "", ""),
            Failure::Retry(RetryReason::ServerError)
        );
        assert_eq!(
            classify_status(504, "", ""),
            Failure::Retry(RetryReason::ServerError)
        );
        assert_eq!(
            classify_status(400, "RequestTimeout", ""),
            Failure::Retry(RetryReason::RequestTimeout)
        );
        assert_eq!(
            classify_status(412, "PreconditionFailed", ""),
            Failure::Changed
        );
        assert!(matches!(
            classify_status(403, "AccessDenied", ""),
            Failure::Permanent {
                status: Some(403),
                ..
            }
        ));
        assert!(matches!(
            classify_status(404, "NoSuchKey", ""),
            Failure::Permanent {
                status: Some(404),
                ..
            }
        ));
        assert!(matches!(
            classify_status(400, "InvalidArgument", ""),
            Failure::Permanent { .. }
        ));
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
        };
        for attempt in 1..30 {
            let wait = policy.backoff(attempt);
            let ceiling = Duration::from_millis(100 * (1 << (attempt - 1).min(2)));
            assert!(wait <= ceiling, "attempt {attempt}: {wait:?} > {ceiling:?}");
        }
        // Full jitter: across many draws the waits differ.
        let draws: std::collections::HashSet<_> = (0..50).map(|_| policy.backoff(3)).collect();
        assert!(draws.len() > 5);
    }
}
