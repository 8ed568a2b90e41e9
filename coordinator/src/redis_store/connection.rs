//! Where the store's Redis is, and connecting to it: a checked URL with its TLS roots, and a
//! connection made in the background and kept by the connection manager.
//!
//! - `redis://` and `rediss://` name one server; the connection manager reconnects to it by
//!   itself.
//! - `redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/PRIMARY` (and
//!   `rediss+sentinel://`, TLS to the sentinels and the servers alike) names a primary that
//!   Redis Sentinel watches. **The store follows the primary Sentinel elects**: a watcher asks
//!   the sentinels every [`SENTINEL_POLL`] which server is the primary (the answer is checked
//!   with the server's own ROLE) and, when it changed, connects to the new one and sends every
//!   later call there. The credentials are those of the data servers (the era5 ACL user);
//!   the sentinels are asked without them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};

use common::sync::MutexExt;
use lease::Error;
use lease::model::{LeasePolicy, SourceSpec};

use super::{RedisStore, Scripts};

/// How often the sentinels are asked which server is the primary.
pub const SENTINEL_POLL: Duration = Duration::from_millis(500);

/// Where the store's Redis is, checked: one server (a parsed `redis://` or `rediss://` URL
/// with its TLS roots), or a primary watched by Sentinel. Callers (the `era5 coordinator`
/// flags) get one without naming the `redis` crate.
#[derive(Clone)]
pub struct RedisTarget(Target);

#[derive(Clone)]
enum Target {
    Server(redis::Client),
    Sentinel(SentinelTarget),
}

/// A primary watched by Sentinel.
#[derive(Clone)]
struct SentinelTarget {
    /// Each sentinel's host and port.
    sentinels: Vec<(String, u16)>,
    /// The primary's name in the sentinels' configuration.
    primary: String,
    /// TLS to the sentinels and the servers.
    tls: bool,
    /// The data servers' user and password (the era5 ACL user).
    username: Option<String>,
    password: Option<String>,
    /// The CA that certificates must chain to, with `--redis-ca`.
    ca_pem: Option<Vec<u8>>,
}

impl SentinelTarget {
    /// A client of the sentinels that answers with the primary's server.
    fn client(&self) -> redis::RedisResult<SentinelClient> {
        let addresses = self.sentinels.iter().map(|(host, port)| {
            if self.tls {
                redis::ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                redis::ConnectionAddr::Tcp(host.clone(), *port)
            }
        });
        let mut builder =
            SentinelClientBuilder::new(addresses, &self.primary, SentinelServerType::Master)?;
        if self.tls {
            builder = builder
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        }
        if let Some(ca) = &self.ca_pem {
            let certificates = || redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            };
            builder = builder
                .set_client_to_redis_certificates(certificates())
                .set_client_to_sentinel_certificates(certificates());
        }
        if let Some(username) = &self.username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        builder.build()
    }
}

/// The Redis at `url` (`redis://`, `rediss://`, `redis+sentinel://` or `rediss+sentinel://`).
/// With `ca_pem`, a TLS server must present a certificate that chains to it (otherwise to the
/// system's roots). A bad URL is an `InvalidArgument` naming it, with any password redacted.
pub fn target(url: &str, ca_pem: Option<&[u8]>) -> Result<RedisTarget, Error> {
    if url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://") {
        return sentinel_target(url, ca_pem).map(|t| RedisTarget(Target::Sentinel(t)));
    }
    client(url, ca_pem).map(|c| RedisTarget(Target::Server(c)))
}

fn invalid(url: &str, why: &str) -> Error {
    Error::InvalidArgument(common::redact::scrub_url_from(
        &format!(
            "invalid --redis `{}`: {why}",
            common::redact::redact_url(url)
        ),
        url,
    ))
}

fn sentinel_target(url: &str, ca_pem: Option<&[u8]>) -> Result<SentinelTarget, Error> {
    let tls = url.starts_with("rediss+");
    if ca_pem.is_some() && !tls {
        return Err(Error::InvalidArgument(format!(
            "--redis-ca is given but --redis `{}` is not a rediss+sentinel:// URL",
            common::redact::redact_url(url)
        )));
    }
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    let (authority, primary) = rest
        .split_once('/')
        .ok_or_else(|| invalid(url, "expected /PRIMARY after the sentinels' addresses"))?;
    let primary = primary.trim_end_matches('/');
    if primary.is_empty()
        || !primary
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(invalid(
            url,
            "the primary's name (after the last /) must be letters, digits, '.', '_' or '-'",
        ));
    }
    let (credentials, hosts) = match authority.rsplit_once('@') {
        Some((credentials, hosts)) => (Some(credentials), hosts),
        None => (None, authority),
    };
    let sentinels: Vec<(String, u16)> = hosts
        .split(',')
        .map(|host| {
            host.rsplit_once(':')
                .and_then(|(name, port)| {
                    let port = port.parse::<u16>().ok()?;
                    (!name.is_empty()).then(|| (name.to_string(), port))
                })
                .ok_or_else(|| invalid(url, "each sentinel must be HOST:PORT, separated by commas"))
        })
        .collect::<Result<_, _>>()?;
    let (mut username, mut password) = (None, None);
    if let Some(credentials) = credentials {
        // The data servers' credentials, parsed (percent-decoding included) by the crate.
        let parsed = redis::Client::open(format!("redis://{credentials}@127.0.0.1/"))
            .map_err(|_| invalid(url, "the credentials before @ cannot be read"))?;
        let settings = parsed.get_connection_info().redis_settings();
        username = settings.username().map(str::to_string);
        password = settings.password().map(str::to_string);
    }
    let target = SentinelTarget {
        sentinels,
        primary: primary.to_string(),
        tls,
        username,
        password,
        ca_pem: ca_pem.map(<[u8]>::to_vec),
    };
    // Checked here, so that a mistake fails at start-up.
    target.client().map_err(|e| invalid(url, &e.to_string()))?;
    Ok(target)
}

fn client(url: &str, ca_pem: Option<&[u8]>) -> Result<redis::Client, Error> {
    let bad = |e: redis::RedisError| invalid(url, &e.to_string());
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

/// The connection to the primary: none until the first one succeeds, then the manager that
/// reconnects by itself, replaced when Sentinel elects another primary.
#[derive(Default)]
pub(super) struct Primary {
    current: Mutex<Option<(ConnectionManager, redis::ConnectionAddr)>>,
    /// When the connection moved to another primary (not the first connection).
    switched: Mutex<Option<tokio::time::Instant>>,
}

impl Primary {
    fn get(&self) -> Option<ConnectionManager> {
        self.current
            .lock_unpoisoned()
            .as_ref()
            .map(|(manager, _)| manager.clone())
    }

    fn address(&self) -> Option<redis::ConnectionAddr> {
        self.current
            .lock_unpoisoned()
            .as_ref()
            .map(|(_, address)| address.clone())
    }

    fn set(&self, manager: ConnectionManager, address: redis::ConnectionAddr) {
        let previous = self.current.lock_unpoisoned().replace((manager, address));
        if previous.is_some() {
            *self.switched.lock_unpoisoned() = Some(tokio::time::Instant::now());
        }
    }

    /// How long is left of `ttl` since the connection moved to another primary, if less than
    /// `ttl` has passed: the promoted replica may lack the old primary's last writes.
    pub(super) fn switched_within(&self, ttl: Duration) -> Option<Duration> {
        let switched = (*self.switched.lock_unpoisoned())?;
        ttl.checked_sub(switched.elapsed())
            .filter(|left| !left.is_zero())
    }
}

fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
}

/// Connects to the one server of `client`, retrying with backoff until it answers.
async fn connect_server(client: redis::Client, primary: Arc<Primary>) {
    // The one backoff of the code base (full jitter), as for S3 and the workers' calls.
    let mut backoff = transport::retry::RetryPolicy::reconnect().backoff_sequence();
    let address = client.get_connection_info().addr().clone();
    loop {
        match ConnectionManager::new_with_config(client.clone(), manager_config()).await {
            Ok(manager) => {
                primary.set(manager, address);
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "redis is not reachable yet; retrying");
                tokio::time::sleep(backoff.next_wait()).await;
            }
        }
    }
}

/// Follows the primary that the sentinels name, for as long as the store lives.
async fn follow_primary(target: SentinelTarget, primary: std::sync::Weak<Primary>) {
    let mut sentinel = match target.client() {
        Ok(sentinel) => sentinel,
        Err(error) => {
            tracing::error!(%error, "cannot reach the sentinels");
            return;
        }
    };
    let mut failures = 0u32;
    loop {
        let Some(current) = primary.upgrade() else {
            return;
        };
        let asked = tokio::time::timeout(Duration::from_secs(5), sentinel.async_get_client()).await;
        match asked {
            Ok(Ok(client)) => {
                failures = 0;
                let address = client.get_connection_info().addr().clone();
                if current.address().as_ref() != Some(&address) {
                    match ConnectionManager::new_with_config(client, manager_config()).await {
                        Ok(manager) => {
                            tracing::info!(primary = %address, "redis primary (from sentinel)");
                            current.set(manager, address);
                        }
                        Err(error) => {
                            tracing::warn!(primary = %address, %error, "cannot connect to the redis primary yet");
                        }
                    }
                }
            }
            Ok(Err(error)) => {
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::warn!(%error, primary = %target.primary, "the sentinels name no reachable primary yet");
                }
            }
            Err(_) => {
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::warn!(primary = %target.primary, "the sentinels did not answer within 5 s");
                }
            }
        }
        drop(current);
        tokio::time::sleep(SENTINEL_POLL).await;
    }
}

impl RedisStore {
    /// A store for `url` that connects in the background: until Redis answers, every call
    /// fails with `Unavailable` (the coordinator reports not ready) instead of blocking or
    /// failing start-up. Once connected, the connection manager reconnects by itself.
    pub fn connect_lazily(url: &str, policy: LeasePolicy) -> Result<Self, Error> {
        Ok(Self::with_target(target(url, None)?, policy))
    }

    /// Like [`RedisStore::connect_lazily`], over a prepared target (TLS with a private CA, or
    /// a primary watched by Sentinel).
    pub fn with_target(RedisTarget(target): RedisTarget, policy: LeasePolicy) -> Self {
        let primary = Arc::new(Primary::default());
        match target {
            Target::Server(client) => {
                tokio::spawn(connect_server(client, primary.clone()));
            }
            Target::Sentinel(sentinel) => {
                tokio::spawn(follow_primary(sentinel, Arc::downgrade(&primary)));
            }
        }
        Self {
            connection: primary,
            policy,
            scripts: Scripts::load(),
            source: None,
            hold_logged: std::sync::atomic::AtomicI64::new(0),
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
            .ok_or_else(|| Error::Unavailable("not connected to redis yet".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> String {
        match target(url, None) {
            Ok(_) => panic!("{url} was accepted"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn sentinel_urls_name_hosts_and_a_primary() {
        let RedisTarget(Target::Sentinel(parsed)) = target(
            "redis+sentinel://era5:s%40cret@sentinel-0:26379,10.0.0.2:26380/era5",
            None,
        )
        .unwrap() else {
            panic!("not a sentinel target");
        };
        assert_eq!(
            parsed.sentinels,
            vec![
                ("sentinel-0".to_string(), 26379),
                ("10.0.0.2".to_string(), 26380)
            ]
        );
        assert_eq!(parsed.primary, "era5");
        assert_eq!(parsed.username.as_deref(), Some("era5"));
        assert_eq!(parsed.password.as_deref(), Some("s@cret"));
        assert!(!parsed.tls);
        let RedisTarget(Target::Sentinel(tls)) =
            target("rediss+sentinel://s:26379/era5", None).unwrap()
        else {
            panic!("not a sentinel target");
        };
        assert!(tls.tls);
    }

    #[test]
    fn bad_sentinel_urls_are_named_without_their_password() {
        for (url, why) in [
            ("redis+sentinel://u:hunter2@s:26379", "/PRIMARY"),
            ("redis+sentinel://u:hunter2@s:26379/", "primary's name"),
            ("redis+sentinel://u:hunter2@s:26379/a b", "primary's name"),
            ("redis+sentinel://u:hunter2@s/era5", "HOST:PORT"),
            ("redis+sentinel://u:hunter2@s:99999/era5", "HOST:PORT"),
            ("redis+sentinel://u:hunter2@s:1,/era5", "HOST:PORT"),
        ] {
            let message = refused(url);
            assert!(message.contains(why), "{url}: {message}");
            assert!(message.contains("invalid --redis"), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
        let message = match target("redis+sentinel://s:26379/era5", Some(b"ca")) {
            Ok(_) => panic!("accepted"),
            Err(error) => error.to_string(),
        };
        assert!(message.contains("rediss+sentinel://"), "{message}");
    }
}
