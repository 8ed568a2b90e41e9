//! The coordinator's TLS: one certificate for both ports.
//!
//! - gRPC: the server certificate, and **client certificates required**, chaining to the CA
//!   (`--tls-ca`). A handshake without one, or with one from another CA, or expired, fails
//!   before any request is read.
//! - HTTP (probes, metrics, status page): https with the same certificate, no client
//!   certificate (it is read-only).

use std::sync::Arc;
use std::time::Duration;

use proto::channel::TlsMaterial;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::error::Error;

/// Time a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Both ports' TLS settings.
#[derive(Clone)]
pub struct ServerTls {
    /// gRPC, with client certificates required.
    pub grpc: ServerTlsConfig,
    /// HTTPS for the HTTP port.
    pub https: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Builds both configurations, checking that the key matches the certificate.
    pub fn new(material: &TlsMaterial) -> Result<Self, Error> {
        let path = |p: &std::path::Path| p.display().to_string();
        let bad = |flag: &str, file: &std::path::Path, e: &dyn std::fmt::Display| {
            Error::InvalidArgument(format!("invalid {flag} `{}`: {e}", path(file)))
        };
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&material.cert_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| bad("--tls-cert", &material.files.cert, &e))?;
        let key = PrivateKeyDer::from_pem_slice(&material.key_pem)
            .map_err(|e| bad("--tls-key", &material.files.key, &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut https = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("--tls-cert", &material.files.cert, &e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                Error::InvalidArgument(format!(
                    "--tls-cert `{}` and --tls-key `{}` do not go together: {e}",
                    path(&material.files.cert),
                    path(&material.files.key)
                ))
            })?;
        https.alpn_protocols = vec![b"http/1.1".to_vec()];
        let grpc = ServerTlsConfig::new()
            .identity(Identity::from_pem(&material.cert_pem, &material.key_pem))
            .client_ca_root(Certificate::from_pem(&material.ca_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        Ok(Self {
            grpc,
            https: Arc::new(https),
        })
    }
}
