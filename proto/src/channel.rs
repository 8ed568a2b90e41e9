//! How clients (workers and the operator commands) reach the coordinator.
//!
//! - **The URL says the transport, and nothing falls back.** `https://` needs TLS material
//!   (`--tls-ca` to check the coordinator, `--tls-cert`/`--tls-key` to present the client's
//!   own certificate); `http://` with TLS material is refused too, so a typo can never send
//!   a cleartext request that was meant to be encrypted.
//! - **Every call has a deadline**: the channel's default (`rpc_timeout`), or a longer one the
//!   caller sets on a request that needs it. Connecting has its own short timeout.
//! - **HTTP/2 keepalive** pings the coordinator every `keepalive` (also while idle) and drops a
//!   connection whose pings go unanswered for as long, so a silently vanished coordinator is
//!   noticed and the channel reconnects.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::error::Error;
use crate::identity::identity_of_pem;

/// Default HTTP/2 keepalive interval (and timeout), on both ends. A session whose peer vanished
/// without a FIN is closed within two of them (40 s), well inside a minute.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(20);
/// Time allowed to open a connection (TCP, and the TLS handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The three files of a TLS identity: certificate chain, private key, and the CA that peers'
/// certificates must chain to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificate(s).
    pub ca: PathBuf,
}

/// The TLS material, read and checked.
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    /// Certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Private key, PEM.
    pub key_pem: Vec<u8>,
    /// CA certificates, PEM.
    pub ca_pem: Vec<u8>,
    /// Where they came from (for messages).
    pub files: TlsFiles,
}

impl TlsFiles {
    /// The files when all three flags are given, `None` when none is, an error naming the
    /// missing ones otherwise.
    pub fn from_flags(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<Option<Self>, Error> {
        match (cert, key, ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(Self {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                ca: ca.to_path_buf(),
            })),
            _ => {
                let missing: Vec<&str> = [
                    ("--tls-cert", cert.is_none()),
                    ("--tls-key", key.is_none()),
                    ("--tls-ca", ca.is_none()),
                ]
                .into_iter()
                .filter(|(_, absent)| *absent)
                .map(|(flag, _)| flag)
                .collect();
                Err(Error::IncompleteTls {
                    missing: missing.join(" and "),
                })
            }
        }
    }

    /// Reads the three files and checks that each holds what it should.
    pub fn read(&self) -> Result<TlsMaterial, Error> {
        let cert_pem = read_file("--tls-cert", &self.cert)?;
        let key_pem = read_file("--tls-key", &self.key)?;
        let ca_pem = read_file("--tls-ca", &self.ca)?;
        expect_certificates("--tls-cert", &self.cert, &cert_pem)?;
        expect_certificates("--tls-ca", &self.ca, &ca_pem)?;
        let has_key = x509_parser::pem::Pem::iter_from_buffer(&key_pem)
            .filter_map(Result::ok)
            .any(|block| block.label.ends_with("PRIVATE KEY"));
        if !has_key {
            return Err(Error::BadPem {
                flag: "--tls-key",
                path: self.key.display().to_string(),
                reason: "no PEM private key in it".into(),
            });
        }
        Ok(TlsMaterial {
            cert_pem,
            key_pem,
            ca_pem,
            files: self.clone(),
        })
    }
}

fn read_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Read {
        flag,
        path: path.display().to_string(),
        error: e.to_string(),
    })
}

fn expect_certificates(flag: &'static str, path: &Path, pem: &[u8]) -> Result<(), Error> {
    let mut count = 0;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| Error::BadPem {
            flag,
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if block.label == "CERTIFICATE" {
            block.parse_x509().map_err(|e| Error::BadPem {
                flag,
                path: path.display().to_string(),
                reason: format!("unparseable certificate: {e}"),
            })?;
            count += 1;
        }
    }
    if count == 0 {
        return Err(Error::BadPem {
            flag,
            path: path.display().to_string(),
            reason: "no PEM certificate in it".into(),
        });
    }
    Ok(())
}

impl TlsMaterial {
    /// The era5 identity in our own certificate.
    pub fn identity(&self) -> Result<crate::identity::Identity, Error> {
        identity_of_pem(&self.cert_pem).map_err(|error| Error::CertificateIdentity {
            path: self.files.cert.display().to_string(),
            reason: error.to_string(),
        })
    }
}

/// Where the coordinator is and how to talk to it.
#[derive(Clone, Debug)]
pub struct CoordinatorChannel {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// Client certificate and CA, required for (and only for) `https://`.
    pub tls: Option<TlsMaterial>,
    /// HTTP/2 keepalive interval and timeout.
    pub keepalive: Duration,
    /// Default deadline of each call; `None` when every request sets its own.
    pub rpc_timeout: Option<Duration>,
}

impl CoordinatorChannel {
    /// Checks the URL against the TLS material (https ⇔ TLS) and builds the endpoint.
    pub fn endpoint(&self) -> Result<Endpoint, Error> {
        let bad = |reason: &str| Error::BadUrl {
            url: self.url.clone(),
            reason: reason.to_string(),
        };
        let uri: tonic::transport::Uri = self
            .url
            .parse()
            .map_err(|_| bad("not a URL; expected http://host:port or https://host:port"))?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad(
                "no host; expected http://host:port or https://host:port",
            ));
        }
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("expected http://host:port or https://host:port")),
        };
        match (https, &self.tls) {
            (true, None) => return Err(Error::HttpsWithoutTls(self.url.clone())),
            (false, Some(_)) => return Err(Error::TlsWithoutHttps(self.url.clone())),
            _ => {}
        }
        let transport = |e: tonic::transport::Error| Error::Transport {
            url: self.url.clone(),
            reason: common::error::chain(&e),
        };
        let mut endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(transport)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .tcp_keepalive(Some(self.keepalive))
            .http2_keep_alive_interval(self.keepalive)
            .keep_alive_timeout(self.keepalive)
            .keep_alive_while_idle(true);
        if let Some(timeout) = self.rpc_timeout {
            endpoint = endpoint.timeout(timeout);
        }
        if let Some(tls) = &self.tls {
            let config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
                .timeout(CONNECT_TIMEOUT);
            endpoint = endpoint.tls_config(config).map_err(transport)?;
        }
        Ok(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(url: &str, tls: Option<TlsMaterial>) -> CoordinatorChannel {
        CoordinatorChannel {
            url: url.into(),
            tls,
            keepalive: DEFAULT_KEEPALIVE,
            rpc_timeout: None,
        }
    }

    #[test]
    fn https_never_goes_without_tls_and_http_never_with_it() {
        assert!(matches!(
            channel("https://coordinator:50051", None).endpoint(),
            Err(Error::HttpsWithoutTls(_))
        ));
        assert!(channel("http://127.0.0.1:50051", None).endpoint().is_ok());
        let material = TlsMaterial {
            cert_pem: Vec::new(),
            key_pem: Vec::new(),
            ca_pem: Vec::new(),
            files: TlsFiles {
                cert: "c".into(),
                key: "k".into(),
                ca: "a".into(),
            },
        };
        assert!(matches!(
            channel("http://127.0.0.1:50051", Some(material)).endpoint(),
            Err(Error::TlsWithoutHttps(_))
        ));
        assert!(matches!(
            channel("ftp://x:1", None).endpoint(),
            Err(Error::BadUrl { .. })
        ));
    }

    #[test]
    fn tls_flags_go_together() {
        let p = Path::new("x.pem");
        assert_eq!(TlsFiles::from_flags(None, None, None).unwrap(), None);
        assert!(
            TlsFiles::from_flags(Some(p), Some(p), Some(p))
                .unwrap()
                .is_some()
        );
        let error = TlsFiles::from_flags(Some(p), None, None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "missing --tls-key and --tls-ca: --tls-cert, --tls-key and --tls-ca go together"
        );
    }
}
