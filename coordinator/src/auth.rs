//! Authorization: one tower layer in front of both gRPC services, so no handler checks roles.
//!
//! - With TLS, the connection already carries a client certificate that chains to the CA (the
//!   TLS layer refused anything else). This layer reads the era5 identity from its URI SAN
//!   ([`proto::identity`]) and lets a **worker** call only the Worker service and an
//!   **operator** only the Operator service; anything else is PERMISSION_DENIED. gRPC health is
//!   open to every peer. The identity goes into the request's extensions as a [`Peer`], where
//!   handlers find the worker's name: with TLS it is never taken from a request body.
//! - **With `--trust-domain`, only identities of that trust domain are accepted**: a
//!   certificate the CA signed for another domain is PERMISSION_DENIED, naming both.
//! - Without TLS (a loopback address, or `--insecure-plaintext`), every peer is
//!   [`Peer::Plaintext`]: it may call both services and names itself in the request body.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use proto::identity::{Identity, Role, check_name};
use proto::paths;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower_layer::Layer;
use tower_service::Service;

use crate::error::Error;

/// Who is calling, as the authorization layer established it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// No TLS: the caller names itself (loopback or `--insecure-plaintext` only).
    Plaintext,
    /// The identity in the caller's client certificate.
    Certified(Identity),
}

impl Peer {
    /// The worker a call acts for: the certificate's name with TLS (the body's `claimed`
    /// name is ignored), otherwise `claimed`, which must follow the naming rules.
    pub fn worker_name(&self, claimed: &str) -> Result<String, Error> {
        match self {
            Peer::Certified(identity) => Ok(identity.name.clone()),
            Peer::Plaintext => {
                check_worker_name(claimed)?;
                Ok(claimed.to_string())
            }
        }
    }
}

/// Checks a worker name from a request: too long is a cap (RESOURCE_EXHAUSTED), other
/// breaches of `[a-z0-9._-]` are bad input.
pub fn check_worker_name(name: &str) -> Result<(), Error> {
    match check_name(name) {
        Ok(()) => Ok(()),
        Err(error @ proto::Error::NameTooLong(_)) => Err(Error::ResourceExhausted(format!(
            "invalid worker name: {error}"
        ))),
        Err(error) => Err(Error::InvalidArgument(format!(
            "invalid worker name: {error}"
        ))),
    }
}

/// The caller of a request, as the layer recorded it.
pub fn peer_of<T>(request: &tonic::Request<T>) -> Result<Peer, Error> {
    request
        .extensions()
        .get::<Peer>()
        .cloned()
        .ok_or_else(|| Error::Unauthenticated("the caller's identity is unknown".into()))
}

/// Which service a role may call.
fn allowed(role: Role, path: &str) -> bool {
    match role {
        Role::Worker => path.starts_with(paths::WORKER),
        Role::Operator => path.starts_with(paths::OPERATOR),
    }
}

/// The layer; `tls` says whether connections carry client certificates.
#[derive(Clone, Debug)]
pub struct AuthorizeLayer {
    /// Whether the server speaks TLS (and so requires client certificates).
    pub tls: bool,
    /// The only SPIFFE trust domain accepted, when pinned (`--trust-domain`).
    pub trust_domain: Option<std::sync::Arc<str>>,
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            tls: self.tls,
            trust_domain: self.trust_domain.clone(),
        }
    }
}

/// The service the layer makes.
#[derive(Clone, Debug)]
pub struct Authorize<S> {
    inner: S,
    tls: bool,
    trust_domain: Option<std::sync::Arc<str>>,
}

/// A refusal as a gRPC response (gRPC errors travel in a 200 with `grpc-status`).
fn refuse(error: Error) -> Response<Body> {
    tonic::Status::from(error).into_http()
}

impl<S> Authorize<S> {
    /// Who the caller is and whether it may call `path`.
    fn decide(&self, request: &Request<Body>) -> Result<Peer, Error> {
        let path = request.uri().path();
        let known = [paths::WORKER, paths::OPERATOR, paths::HEALTH]
            .iter()
            .any(|prefix| path.starts_with(prefix));
        if !known {
            return Err(Error::PermissionDenied(format!(
                "no such service: {}",
                path.escape_debug().take(120).collect::<String>()
            )));
        }
        if !self.tls {
            return Ok(Peer::Plaintext);
        }
        let leaf = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(tonic::transport::server::TlsConnectInfo::peer_certs)
            .and_then(|certs| certs.first().cloned());
        let identity = match leaf {
            Some(der) => proto::identity::identity_of_der(&der)
                .map_err(|e| Error::Unauthenticated(e.to_string())),
            None => Err(Error::Unauthenticated(
                "no client certificate was presented".into(),
            )),
        };
        if path.starts_with(paths::HEALTH) {
            // Health is open: probes carry no certificate of ours.
            return Ok(identity.map_or(Peer::Plaintext, Peer::Certified));
        }
        let identity = identity?;
        if let Some(pinned) = &self.trust_domain
            && identity.trust_domain != **pinned
        {
            return Err(Error::PermissionDenied(format!(
                "{identity} is of trust domain `{}`; this coordinator accepts only `{pinned}` (--trust-domain)",
                identity
                    .trust_domain
                    .escape_debug()
                    .take(253)
                    .collect::<String>()
            )));
        }
        if !allowed(identity.role, path) {
            let service = match identity.role {
                Role::Worker => "workers may call only the Worker service",
                Role::Operator => "operators may call only the Operator service",
            };
            return Err(Error::PermissionDenied(format!(
                "{identity} may not call {path}: {service}"
            )));
        }
        Ok(Peer::Certified(identity))
    }
}

impl<S> Service<Request<Body>> for Authorize<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        match self.decide(&request) {
            Ok(peer) => {
                request.extensions_mut().insert(peer);
                Box::pin(self.inner.call(request))
            }
            Err(error) => {
                tracing::debug!(path = request.uri().path(), %error, "call refused");
                Box::pin(std::future::ready(Ok(refuse(error))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_reach_only_their_service() {
        assert!(allowed(Role::Worker, "/era5.v1.Worker/Acquire"));
        assert!(!allowed(Role::Worker, "/era5.v1.Operator/ListJobs"));
        assert!(allowed(Role::Operator, "/era5.v1.Operator/SubmitJob"));
        assert!(!allowed(Role::Operator, "/era5.v1.Worker/Complete"));
    }

    #[test]
    fn plaintext_workers_name_themselves_and_certified_ones_cannot() {
        assert_eq!(Peer::Plaintext.worker_name("w1").unwrap(), "w1");
        assert!(matches!(
            Peer::Plaintext.worker_name("W1"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            Peer::Plaintext.worker_name(&"a".repeat(64)),
            Err(Error::ResourceExhausted(_))
        ));
        let certified = Peer::Certified(Identity {
            role: Role::Worker,
            name: "from-cert".into(),
            trust_domain: "td".into(),
        });
        assert_eq!(certified.worker_name("someone-else").unwrap(), "from-cert");
    }
}
