//! Where the store's Redis is, and connecting to it: a checked URL with its TLS roots, and a
//! connection made in the background and kept by the connection manager.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use lease::Error;
use lease::model::{LeasePolicy, SourceSpec};

use super::{RedisStore, Scripts};

/// Where the store's Redis is, checked: a parsed `redis://` or `rediss://` URL with its TLS
/// roots. Callers (the `era5 coordinator` flags) get one without naming the `redis` crate.
#[derive(Clone)]
pub struct RedisTarget(redis::Client);

/// The Redis at `url` (`redis://` or `rediss://`). With `ca_pem`, a `rediss://` server must
/// present a certificate that chains to it (otherwise to the system's roots). A bad URL is an
/// `InvalidArgument` naming it, with any password redacted.
pub fn target(url: &str, ca_pem: Option<&[u8]>) -> Result<RedisTarget, Error> {
    client(url, ca_pem).map(RedisTarget)
}

fn client(url: &str, ca_pem: Option<&[u8]>) -> Result<redis::Client, Error> {
    let bad = |e: redis::RedisError| {
        Error::InvalidArgument(common::redact::scrub_url_from(
            &format!("invalid --redis `{}`: {e}", common::redact::redact_url(url)),
            url,
        ))
    };
    match ca_pem {
        None => redis::Client::open(url).map_err(bad),
        Some(ca) => {
            if !url.starts_with("rediss://") {
                return Err(Error::InvalidArgument(format!(
                    "--redis-ca is given but --redis `{}` is not a rediss:// URL",
                    common::redact::redact_url(url)
                )));
            }
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.to_vec()),
                },
            )
            .map_err(bad)
        }
    }
}

impl RedisStore {
    /// A store for `url` that connects in the background: until Redis answers, every call
    /// fails with `Unavailable` (the coordinator reports not ready) instead of blocking or
    /// failing start-up. Once connected, the connection manager reconnects by itself.
    pub fn connect_lazily(url: &str, policy: LeasePolicy) -> Result<Self, Error> {
        Ok(Self::with_target(target(url, None)?, policy))
    }

    /// Like [`RedisStore::connect_lazily`], over a prepared client (TLS with a private CA).
    pub fn with_target(RedisTarget(client): RedisTarget, policy: LeasePolicy) -> Self {
        let connection = Arc::new(tokio::sync::OnceCell::new());
        let cell = connection.clone();
        tokio::spawn(async move {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(5)))
                .set_number_of_retries(2);
            // The one backoff of the code base (full jitter), as for S3 and the workers' calls.
            let mut backoff = transport::retry::RetryPolicy::reconnect().backoff_sequence();
            loop {
                match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                    Ok(manager) => {
                        let _ = cell.set(manager);
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "redis is not reachable yet; retrying");
                        tokio::time::sleep(backoff.next_wait()).await;
                    }
                }
            }
        });
        Self {
            connection,
            policy,
            scripts: Scripts::load(),
            source: None,
        }
    }

    /// Grants only jobs of `source`: a coordinator hands out work from its own source and
    /// nobody else's, whatever another coordinator wrote into the same Redis.
    #[must_use]
    pub fn pinned_to(mut self, source: SourceSpec) -> Self {
        self.source = Some(source);
        self
    }

    /// Connects and waits until Redis answers (at most 10 s).
    pub async fn connect(url: &str, policy: LeasePolicy) -> Result<Self, Error> {
        let store = Self::connect_lazily(url, policy)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.connection.get().is_none() {
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Unavailable(format!(
                    "no answer from {}",
                    transport::redact_url(url)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(store)
    }

    pub(super) fn conn(&self) -> Result<ConnectionManager, Error> {
        self.connection
            .get()
            .cloned()
            .ok_or_else(|| Error::Unavailable("not connected to redis yet".into()))
    }
}
