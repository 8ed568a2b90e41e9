//! One connection of the pool: dialling one front-end address (TCP, then TLS for `https`),
//! the hyper HTTP/1.1 handshake, and the I/O object that holds the connection's slot.
//!
//! The slot (a permit of the pool's connection semaphore) is taken before dialling and lives
//! inside the socket's I/O object, which hyper's connection task owns: it goes back only when
//! the socket is dropped, however the connection ends (idle expiry, a reset, a body dropped
//! half-read). That is what makes the cap on open connections hold whatever happens.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_smithy_types::body::SdkBody;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::ConnectionStats;
use crate::frontends::FrontEnds;

/// Largest read buffer of a connection: half-MiB reads mean fewer syscalls and wake-ups per
/// byte than hyper's ~400 KB default, at a bounded cost per connection.
pub const READ_BUFFER: usize = 512 << 10;

/// The certificates of a PEM CA bundle (`AWS_CA_BUNDLE`), for S3-compatible stores whose
/// certificates chain to a private CA; an error names the file and what is wrong with it.
pub fn load_ca_bundle(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM bundle: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certificates)
}

/// Where a connection goes: the endpoint (scheme, host, port) and the address dialled.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct EndpointKey {
    pub(crate) https: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// A plain or TLS socket.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection's socket, holding its slot and keeping the open-connection figures.
pub(crate) struct CountedIo {
    stream: Stream,
    _slot: OwnedSemaphorePermit,
    stats: Arc<ConnectionStats>,
    frontends: Arc<FrontEnds>,
    addr: SocketAddr,
}

impl Drop for CountedIo {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        self.frontends.closed(self.addr);
    }
}

impl AsyncRead for CountedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if let Poll::Ready(Ok(())) = read {
            self.stats
                .traffic
                .received(buf.filled().len().saturating_sub(before));
        }
        read
    }
}

impl AsyncWrite for CountedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        if let Poll::Ready(Ok(n)) = written {
            self.stats.traffic.sent(n);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = match &mut self.stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        if let Poll::Ready(Ok(n)) = written {
            self.stats.traffic.sent(n);
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// What dialling needs besides the address.
pub(crate) struct Dialer<'a> {
    pub(crate) tls: &'a TlsConnector,
    pub(crate) stats: &'a Arc<ConnectionStats>,
    pub(crate) connect_timeout: Duration,
    pub(crate) receive_buffer: Option<usize>,
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The TCP or TLS connect took too long.
    #[error("connecting to {addr} timed out after {after:?}")]
    Timeout {
        /// The address dialled.
        addr: SocketAddr,
        /// The connect timeout.
        after: Duration,
    },
    /// The TCP or TLS connect failed.
    #[error("connecting to {addr} failed: {source}")]
    Io {
        /// The address dialled.
        addr: SocketAddr,
        /// What the socket said.
        #[source]
        source: std::io::Error,
    },
    /// The host is no name TLS can check a certificate against.
    #[error("`{host}` is not a valid TLS server name")]
    ServerName {
        /// The endpoint's host.
        host: String,
    },
    /// The server's certificate is not trusted (or not for this host): retrying cannot help.
    #[error(
        "the TLS certificate of {host} is refused: {reason} (for a private CA, set AWS_CA_BUNDLE)"
    )]
    Certificate {
        /// The endpoint's host.
        host: String,
        /// What rustls said of it.
        reason: String,
    },
    /// The HTTP/1.1 handshake failed.
    #[error("http/1.1 handshake with {addr} failed: {source}")]
    Handshake {
        /// The address dialled.
        addr: SocketAddr,
        /// What hyper said.
        #[source]
        source: hyper::Error,
    },
}

impl DialError {
    /// Whether another attempt cannot succeed (a refused certificate, a bad name).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            DialError::Certificate { .. } | DialError::ServerName { .. }
        )
    }
}

impl Dialer<'_> {
    /// Dials `addr` for `endpoint` while holding `slot`, and returns the request sender; the
    /// connection itself runs on a task of its own until it closes.
    pub(crate) async fn dial(
        &self,
        endpoint: &EndpointKey,
        addr: SocketAddr,
        slot: OwnedSemaphorePermit,
        frontends: &Arc<FrontEnds>,
    ) -> Result<SendRequest<SdkBody>, DialError> {
        let connect = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|source| DialError::Io { addr, source })?;
            let _ = tcp.set_nodelay(true);
            let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(30));
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
            if let Some(bytes) = self.receive_buffer {
                let _ = socket2::SockRef::from(&tcp).set_recv_buffer_size(bytes);
            }
            if !endpoint.https {
                return Ok(Stream::Plain(tcp));
            }
            let name =
                ServerName::try_from(endpoint.host.clone()).map_err(|_| DialError::ServerName {
                    host: endpoint.host.clone(),
                })?;
            let tls = self.tls.connect(name, tcp).await.map_err(|source| {
                match source
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<rustls::Error>())
                {
                    Some(
                        refused @ (rustls::Error::InvalidCertificate(_)
                        | rustls::Error::NoCertificatesPresented),
                    ) => DialError::Certificate {
                        host: endpoint.host.clone(),
                        reason: refused.to_string(),
                    },
                    _ => DialError::Io { addr, source },
                }
            })?;
            Ok(Stream::Tls(Box::new(tls)))
        };
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(DialError::Timeout {
                    addr,
                    after: self.connect_timeout,
                });
            }
        };
        self.stats.connection_opened();
        frontends.opened(addr);
        let io = CountedIo {
            stream,
            _slot: slot,
            stats: self.stats.clone(),
            frontends: frontends.clone(),
            addr,
        };
        let mut builder = hyper::client::conn::http1::Builder::new();
        builder.max_buf_size(READ_BUFFER);
        if let Some(bytes) = self.receive_buffer {
            // Under a cap, read no further ahead of the body's reader than the socket holds.
            builder.read_buf_exact_size(Some(bytes.clamp(8 << 10, 64 << 10)));
        }
        let (sender, connection) = builder
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| DialError::Handshake { addr, source })?;
        // The connection ends when its sender is dropped (idle expiry, eviction) or the
        // socket fails; either way its I/O, and with it the slot, is dropped here.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%addr, %error, "connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// The TLS client configuration: rustls with the webpki roots plus `extra_roots` (a CA
/// bundle), HTTP/1.1 only.
pub(crate) fn tls_connector(extra_roots: &[CertificateDer<'static>]) -> TlsConnector {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let (added, ignored) = roots.add_parsable_certificates(extra_roots.iter().cloned());
    if ignored > 0 {
        tracing::warn!(
            added,
            ignored,
            "some certificates of the CA bundle are not usable roots"
        );
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the ring provider supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}
