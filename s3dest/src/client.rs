//! The destination's S3 client: its own endpoint, region, addressing and credentials from the
//! standard AWS chain (environment, profile, web identity, container, instance), over a pool
//! of its own. The source's client is built apart (anonymous unless asked), so **the two never
//! share credentials**.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{
    Region, RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use transport::pool::{BoundedHttpClient, PoolConfig};
use transport::retry::{RetryPolicy, chain, classify, retrying};

use crate::S3Target;

/// How to reach the destination.
#[derive(Clone, Debug)]
pub struct DestConfig {
    /// Bucket and prefix.
    pub target: S3Target,
    /// `--dest-endpoint`: an S3-compatible server; `None` is AWS.
    pub endpoint: Option<String>,
    /// `--dest-region`, for signing.
    pub region: String,
    /// `--dest-path-style`: `endpoint/bucket/key` rather than `bucket.endpoint/key` (MinIO,
    /// Ceph and most servers outside AWS want it).
    pub path_style: bool,
    /// The destination pool's limits.
    pub pool: PoolConfig,
}

/// A connected destination: its client and where it writes. Cheap to clone (the SDK client
/// is shared).
#[derive(Clone, Debug)]
pub struct Store {
    /// The destination's client (its own credentials and pool).
    pub client: aws_sdk_s3::Client,
    /// Bucket and prefix.
    pub target: S3Target,
}

/// Why the destination cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The credential chain found nothing.
    #[error(
        "no AWS credentials for the destination {target}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a web identity ({detail})"
    )]
    NoCredentials {
        /// The destination.
        target: String,
        /// What the chain said.
        detail: String,
    },
    /// The bucket is not there, or not ours to write.
    #[error("destination {target}: {detail}")]
    Unusable {
        /// The destination.
        target: String,
        /// The server's answer.
        detail: String,
    },
}

/// Longest the credential chain may take: instance metadata, tried last, stalls off EC2.
const CREDENTIALS_WITHIN: Duration = Duration::from_secs(5);

/// The destination client: credentials resolved, requests signed, no SDK retries (the copy
/// retries each request itself with the engine's policy), once the bucket answered a one-key
/// listing under the prefix, so a missing bucket or a refusal is named before any work.
pub async fn connect(
    config: &DestConfig,
    retry: &RetryPolicy,
) -> Result<(aws_sdk_s3::Client, BoundedHttpClient), ConnectError> {
    let http = BoundedHttpClient::new(config.pool.clone());
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http.clone())
        .region(Region::new(config.region.clone()))
        .load()
        .await;
    let no_credentials = |detail: String| ConnectError::NoCredentials {
        target: config.target.to_string(),
        detail,
    };
    let provider = shared
        .credentials_provider()
        .ok_or_else(|| no_credentials("no credential provider".into()))?;
    match tokio::time::timeout(
        CREDENTIALS_WITHIN,
        aws_sdk_s3::config::ProvideCredentials::provide_credentials(&provider),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => return Err(no_credentials(error.to_string())),
        Err(_) => {
            return Err(no_credentials(format!(
                "none found within {}s",
                CREDENTIALS_WITHIN.as_secs()
            )));
        }
    }
    let mut builder = aws_sdk_s3::config::Builder::from(&shared)
        .retry_config(RetryConfig::disabled())
        .timeout_config(TimeoutConfig::disabled())
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        // Every part carries the Content-MD5 we computed; the SDK adds nothing of its own.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .force_path_style(config.path_style);
    if let Some(endpoint) = &config.endpoint {
        builder = builder.endpoint_url(endpoint.trim_end_matches('/'));
    }
    let client = aws_sdk_s3::Client::from_conf(builder.build());
    probe(&client, &config.target, retry).await?;
    Ok((client, http))
}

/// One-key listing under the prefix: the bucket exists and lets us in.
async fn probe(
    client: &aws_sdk_s3::Client,
    target: &S3Target,
    retry: &RetryPolicy,
) -> Result<(), ConnectError> {
    retrying(
        retry,
        |_| {
            let request = client
                .list_objects_v2()
                .bucket(&target.bucket)
                .prefix(&target.prefix)
                .max_keys(1);
            async move {
                request.send().await.map_err(|error| {
                    let why = match error.code() {
                        Some("NoSuchBucket") => {
                            format!("bucket `{}` does not exist", target.bucket)
                        }
                        Some("AccessDenied") => format!(
                            "access denied to bucket `{}` (check the destination's credentials and policy)",
                            target.bucket
                        ),
                        _ => chain(&error),
                    };
                    (classify(&error), why)
                })
            }
        },
        |_| {},
    )
    .await
    .map(|_| ())
    .map_err(|gave_up| ConnectError::Unusable {
        target: target.to_string(),
        detail: gave_up.detail,
    })
}
