//! The S3 source: one SDK client per process over the bounded connection pool, configured for
//! the public ERA5 bucket or any S3-compatible endpoint.
//!
//! The SDK's own retries and stalled-stream protection are off: errors while reading a body are
//! never retried by the SDK, so the fetch engine retries every request itself, per part, with
//! one policy ([`retry::RetryPolicy`]) and one classification ([`retry::classify`]).

pub mod cost;
pub mod coverage;
pub mod frontends;
pub mod guard;
pub mod listing;
pub mod pool;
pub mod retry;

use std::path::PathBuf;
use std::sync::Arc;

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{
    Region, RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig,
};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

pub use common::redact::redact_url;
pub use frontends::{FrontEndSnapshot, ResolveOverride, Resolver, Route};
pub use listing::{Discovery, KeySample, RemoteObject, discover, discover_detailed};
pub use pool::{BoundedHttpClient, ConnectionSnapshot, ConnectionStats, PoolConfig};

/// The public ERA5 archive.
pub const DEFAULT_BUCKET: &str = "nsf-ncar-era5";
/// Region of [`DEFAULT_BUCKET`].
pub const DEFAULT_REGION: &str = "us-west-2";
/// The regional endpoint of [`DEFAULT_BUCKET`]; with it, requests use virtual-hosted style as
/// AWS expects.
pub const DEFAULT_ENDPOINT: &str = "https://s3.us-west-2.amazonaws.com";

/// Where objects come from and how to reach them.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// Bucket name.
    pub bucket: String,
    /// `None` or [`DEFAULT_ENDPOINT`] for AWS; any other URL is an S3-compatible server reached
    /// path-style.
    pub endpoint: Option<String>,
    /// Region used for signing (AWS: the bucket's region).
    pub region: String,
    /// Sign requests even when no credentials are configured in the environment (then the
    /// full default chain, including instance metadata, is consulted).
    pub sign: bool,
    /// Sign when the environment configures credentials (the default). Off when those
    /// credentials belong to an `s3://` destination: **the source stays anonymous unless
    /// `sign`, and the two never share credentials**.
    pub env_credentials: bool,
    /// Connection pool limits.
    pub pool: PoolConfig,
}

impl SourceConfig {
    /// The public ERA5 bucket through a pool of `connections`.
    pub fn era5(connections: usize) -> Self {
        Self {
            bucket: DEFAULT_BUCKET.to_string(),
            endpoint: None,
            region: DEFAULT_REGION.to_string(),
            sign: false,
            env_credentials: true,
            pool: PoolConfig::new(connections),
        }
    }

    fn custom_endpoint(&self) -> Option<&str> {
        self.endpoint
            .as_deref()
            .map(|e| e.trim_end_matches('/'))
            .filter(|e| *e != DEFAULT_ENDPOINT)
    }
}

/// A connected source: the SDK client, its bucket and the pool's live gauge.
#[derive(Clone, Debug)]
pub struct Source {
    /// The S3 client; every request goes through the bounded pool.
    pub client: aws_sdk_s3::Client,
    /// Bucket name.
    pub bucket: String,
    /// Whether requests are signed.
    pub signed: bool,
    http: BoundedHttpClient,
}

impl Source {
    /// Builds the client. Requests are unsigned unless credentials are configured in the
    /// environment (standard variables or files) or `sign` is set.
    pub async fn connect(config: &SourceConfig) -> Self {
        Self::connect_with(config, BoundedHttpClient::new(config.pool.clone())).await
    }

    /// Like [`Source::connect`], through an existing pool, so several sources (buckets or
    /// endpoints) share one process-wide connection cap. `config.pool` is then ignored.
    pub async fn connect_with(config: &SourceConfig, http: BoundedHttpClient) -> Self {
        let signed = config.sign || (config.env_credentials && credentials_configured());
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http.clone())
            .region(Region::new(config.region.clone()));
        if !signed {
            loader = loader.no_credentials();
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .retry_config(RetryConfig::disabled())
            .timeout_config(TimeoutConfig::disabled())
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
        if let Some(endpoint) = config.custom_endpoint() {
            builder = builder.endpoint_url(endpoint).force_path_style(true);
        }
        Self {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket: config.bucket.clone(),
            signed,
            http,
        }
    }

    /// The pool's live gauge.
    pub fn connection_stats(&self) -> Arc<ConnectionStats> {
        self.http.stats()
    }

    /// The pool's limits.
    pub fn pool_config(&self) -> &PoolConfig {
        self.http.config()
    }
}

/// Whether the standard AWS credential sources are configured: environment variables, a
/// profile, web identity, a container endpoint, or the shared files. Instance metadata is not
/// probed (it stalls for seconds off EC2); `--sign` opts into it.
fn credentials_configured() -> bool {
    const VARS: [&str; 5] = [
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ];
    if VARS
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|value| !value.is_empty()))
    {
        return true;
    }
    let shared_file = |var: &str, default: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".aws").join(default))
            })
            .is_some_and(|path| path.is_file())
    };
    shared_file("AWS_SHARED_CREDENTIALS_FILE", "credentials")
}
