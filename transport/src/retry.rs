//! The one place that decides whether a failure is worth another attempt, and how long to
//! wait before it. Listing, HEAD and GET (per part) classify with it; they, the worker's calls
//! to the coordinator and the coordinator's Redis connects all back off with
//! [`RetryPolicy::backoff`] (capped exponential, full jitter).
//!
//! Retryable: connect errors, resets and truncated bodies, stalls (no headers, no byte, or a
//! body under the minimum rate, see [`crate::guard`]), 500/502/503/504,
//! `RequestTimeout`, `SlowDown` and 429 (both also tell the caller to lower its request rate).
//! Permanent: 403, 404, every other client error, and a body over its size cap. A 412 means
//! the object changed under us.
//!
//! **Failures are classified by type, never by the words of an error message**: HTTP statuses
//! and S3 error codes, the SDK's error kinds, and for I/O the error types found in the source
//! chain ([`std::io::ErrorKind`], hyper's error kinds, [`BodyError`]).

use std::fmt;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use rand::Rng;

use crate::guard::BodyError;

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
    /// 429 Too Many Requests: the same.
    TooManyRequests,
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
    /// No headers or no byte for the stall timeout, or a body under the minimum rate.
    Stall,
    /// The response did not match the request (wrong range or length, unparsable).
    BadResponse,
    /// Far slower than its peers (a late first byte, a crawling body) with no room to race a
    /// second copy: asked again on another connection.
    Slow,
}

impl RetryReason {
    /// Every reason, for reports.
    pub const ALL: [RetryReason; 10] = [
        RetryReason::SlowDown,
        RetryReason::TooManyRequests,
        RetryReason::ServerError,
        RetryReason::RequestTimeout,
        RetryReason::Connect,
        RetryReason::Reset,
        RetryReason::Truncated,
        RetryReason::Stall,
        RetryReason::BadResponse,
        RetryReason::Slow,
    ];

    /// Short lowercase label (`slowdown`, `reset`, ...).
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::SlowDown => "slowdown",
            RetryReason::TooManyRequests => "too_many_requests",
            RetryReason::ServerError => "server_error",
            RetryReason::RequestTimeout => "request_timeout",
            RetryReason::Connect => "connect",
            RetryReason::Reset => "reset",
            RetryReason::Truncated => "truncated",
            RetryReason::Stall => "stall",
            RetryReason::BadResponse => "bad_response",
            RetryReason::Slow => "slow",
        }
    }

    /// Index into [`RetryReason::ALL`], for counters.
    pub fn index(self) -> usize {
        RetryReason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(0)
    }

    /// Whether the server asked for fewer requests (the caller lowers its rate).
    pub fn is_throttling(self) -> bool {
        matches!(self, RetryReason::SlowDown | RetryReason::TooManyRequests)
    }

    /// Whether the failure is a sign of congestion, on which the request window is cut:
    /// throttling (SlowDown, which a 503 is, and 429) or a connection reset mid-body. A 500
    /// says the server failed, not that it is overloaded.
    pub fn is_congestion(self) -> bool {
        self.is_throttling() || self == RetryReason::Reset
    }
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Classifies an SDK error from sending a request (for listings and HEADs, which the SDK
/// reads whole, this includes reading the body).
pub fn classify<E>(error: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    // Our own guards first, wherever the SDK wrapped them.
    if let Some(guarded) = find_in_chain::<BodyError>(error) {
        return classify_guard(guarded);
    }
    // A connection that can never be made (an untrusted certificate) is not retried.
    if let Some(dial) = find_in_chain::<crate::pool::DialError>(error)
        && dial.is_permanent()
    {
        return Failure::Permanent {
            status: None,
            message: dial.to_string(),
        };
    }
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
        // The response arrived but could not be read to the end or parsed.
        SdkError::ResponseError(_) => classify_body_error(error),
        _ => Failure::Permanent {
            status: None,
            message: chain(error),
        },
    }
}

/// Classifies an error that broke a response body being read, by the types in its source
/// chain: our guards' [`BodyError`], I/O error kinds (a reset), hyper's (an incomplete
/// message). Anything else that broke a body is a truncation.
pub fn classify_body_error(error: &(dyn std::error::Error + 'static)) -> Failure {
    if let Some(guarded) = find_in_chain::<BodyError>(error) {
        return classify_guard(guarded);
    }
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(inner) = current {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{
                BrokenPipe, ConnectionAborted, ConnectionReset, NotConnected, TimedOut, WouldBlock,
            };
            match io.kind() {
                ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected => {
                    return Failure::Retry(RetryReason::Reset);
                }
                TimedOut | WouldBlock => return Failure::Retry(RetryReason::Stall),
                _ => {}
            }
        }
        if let Some(hyper) = inner.downcast_ref::<hyper::Error>() {
            if hyper.is_timeout() {
                return Failure::Retry(RetryReason::Stall);
            }
            if hyper.is_incomplete_message() {
                return Failure::Retry(RetryReason::Truncated);
            }
        }
        current = inner.source();
    }
    Failure::Retry(RetryReason::Truncated)
}

fn classify_guard(error: &BodyError) -> Failure {
    match error {
        BodyError::NoHeaders { .. } | BodyError::Stalled { .. } | BodyError::TooSlow { .. } => {
            Failure::Retry(RetryReason::Stall)
        }
        BodyError::TooLarge { .. } => Failure::Permanent {
            status: None,
            message: error.to_string(),
        },
    }
}

/// The first error of type `T` in `error`'s source chain.
pub fn find_in_chain<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(inner) = current {
        if let Some(found) = inner.downcast_ref::<T>() {
            return Some(found);
        }
        current = inner.source();
    }
    None
}

/// Classifies an HTTP status and S3 error code.
pub fn classify_status(status: u16, code: &str, message: &str) -> Failure {
    match (status, code) {
        (503, _) | (_, "SlowDown") => Failure::Retry(RetryReason::SlowDown),
        (429, _) | (_, "TooManyRequests") => Failure::Retry(RetryReason::TooManyRequests),
        (500 | 502 | 504, _) | (_, "InternalError") => Failure::Retry(RetryReason::ServerError),
        (_, "RequestTimeout") => Failure::Retry(RetryReason::RequestTimeout),
        // An upload's bytes did not give the Content-MD5 sent with them: damaged on the way,
        // so sending them again can succeed.
        (_, "BadDigest") => Failure::Retry(RetryReason::BadResponse),
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

/// An error and its sources on one line (common's one definition, where retry callers look).
pub use common::error::chain;

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
    /// Reconnecting to a service that must come back (the coordinator, Redis): never gives
    /// up, waits at most 5 s.
    pub fn reconnect() -> Self {
        Self {
            max_attempts: u32::MAX,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        }
    }

    /// A random wait in `[0, min(cap, base * 2^(attempt-1))]` before attempt `attempt + 1`
    /// ("full jitter", so many clients hitting the same SlowDown do not retry in lockstep).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let ceiling = self.base.saturating_mul(1 << exponent).min(self.cap);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    /// A [`Backoff`] following this policy.
    pub fn backoff_sequence(self) -> Backoff {
        Backoff {
            policy: self,
            attempt: 0,
        }
    }
}

/// Successive waits of one retry loop (reconnects, reports), reset after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    attempt: u32,
}

impl Backoff {
    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.policy.backoff(self.attempt)
    }

    /// Back to the shortest wait (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// How a retried operation gave up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GaveUp {
    /// The last failure.
    pub failure: Failure,
    /// Attempts made.
    pub attempts: u32,
    /// The last error, for people.
    pub detail: String,
}

/// Runs `attempt` until it succeeds, fails for good, or `policy` runs out of attempts,
/// sleeping [`RetryPolicy::backoff`] between attempts and telling `on_retry` each reason
/// (for counters, and to lower the request rate on throttling).
pub async fn retrying<T, Fut>(
    policy: &RetryPolicy,
    mut attempt: impl FnMut(u32) -> Fut,
    mut on_retry: impl FnMut(RetryReason),
) -> Result<T, GaveUp>
where
    Fut: std::future::Future<Output = Result<T, (Failure, String)>>,
{
    let mut number = 0;
    loop {
        number += 1;
        let (failure, detail) = match attempt(number).await {
            Ok(value) => return Ok(value),
            Err(failed) => failed,
        };
        match failure {
            Failure::Retry(reason) if number < policy.max_attempts => {
                on_retry(reason);
                tracing::debug!(attempt = number, %reason, detail, "retrying");
                tokio::time::sleep(policy.backoff(number)).await;
            }
            Failure::Retry(reason) => {
                on_retry(reason);
                return Err(GaveUp {
                    failure,
                    attempts: number,
                    detail,
                });
            }
            Failure::Changed | Failure::Permanent { .. } => {
                return Err(GaveUp {
                    failure,
                    attempts: number,
                    detail,
                });
            }
        }
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
        assert_eq!(
            classify_status(429, "TooManyRequests", ""),
            Failure::Retry(RetryReason::TooManyRequests)
        );
        assert_eq!(
            classify_status(429, "", ""),
            Failure::Retry(RetryReason::TooManyRequests)
        );
    }

    /// An error wrapping another, as the SDK and hyper do.
    #[derive(Debug)]
    struct Wrapped(Box<dyn std::error::Error + Send + Sync>);

    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            // Deliberately misleading words: classification must not read them.
            f.write_str("connection reset by peer (not really)")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn body_errors_are_classified_by_type_not_by_words() {
        let reset = Wrapped(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(
            classify_body_error(&reset),
            Failure::Retry(RetryReason::Reset)
        );
        // Says "reset", is not one.
        let other = Wrapped(Box::new(std::io::Error::other("reset")));
        assert_eq!(
            classify_body_error(&other),
            Failure::Retry(RetryReason::Truncated)
        );
        let stalled = Wrapped(Box::new(BodyError::Stalled {
            after: Duration::from_secs(1),
        }));
        assert_eq!(
            classify_body_error(&stalled),
            Failure::Retry(RetryReason::Stall)
        );
        let too_large = Wrapped(Box::new(BodyError::TooLarge { limit: 16 << 20 }));
        assert!(matches!(
            classify_body_error(&too_large),
            Failure::Permanent { status: None, .. }
        ));
    }

    #[tokio::test]
    async fn retrying_stops_at_permanent_failures_and_after_max_attempts() {
        let policy = RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
        };
        let mut seen = Vec::new();
        let gave_up = retrying(
            &policy,
            |_| async { Err::<(), _>((Failure::Retry(RetryReason::Connect), "down".into())) },
            |reason| seen.push(reason),
        )
        .await
        .unwrap_err();
        assert_eq!(gave_up.attempts, 3);
        assert_eq!(seen, vec![RetryReason::Connect; 3]);

        let gave_up = retrying(
            &policy,
            |_| async {
                Err::<(), _>((
                    Failure::Permanent {
                        status: Some(403),
                        message: "403 AccessDenied".into(),
                    },
                    "refused".into(),
                ))
            },
            |_| {},
        )
        .await
        .unwrap_err();
        assert_eq!(gave_up.attempts, 1);

        let done = retrying(
            &policy,
            |n| async move {
                if n < 2 {
                    Err((Failure::Retry(RetryReason::SlowDown), "slow".into()))
                } else {
                    Ok(n)
                }
            },
            |_| {},
        )
        .await;
        assert_eq!(done, Ok(2));
    }

    #[test]
    fn a_backoff_sequence_is_full_jitter_under_its_ceiling_and_resets() {
        let mut backoff = RetryPolicy {
            max_attempts: u32::MAX,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
        }
        .backoff_sequence();
        for n in 1..10u32 {
            let ceiling = Duration::from_millis(100 * (1 << (n - 1).min(2)));
            assert!(backoff.next_wait() <= ceiling);
        }
        backoff.reset();
        assert!(backoff.next_wait() <= Duration::from_millis(100));
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
