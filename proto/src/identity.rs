//! Who a peer is. With TLS, a peer's role and name come from its certificate, never from a
//! request body: one URI SAN of the form
//!
//! - `spiffe://<trust-domain>/era5/worker/<name>`: a worker called `<name>`;
//! - `spiffe://<trust-domain>/era5/operator/<name>`: an operator.
//!
//! The trust domain is whatever the deployment uses; the CA that signed the certificate is
//! what makes it trusted. A certificate with no such SAN, or with two, has no identity.
//!
//! Worker (and operator) names are at most [`MAX_NAME_LEN`] characters of `[a-z0-9._-]`: they
//! become Redis keys, label metrics and appear in status output, so they are kept short and
//! plain.

use crate::error::Error;

/// Longest worker or operator name (a DNS label, so a pod name fits).
pub const MAX_NAME_LEN: usize = 63;

/// What a peer may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A download node: only the Worker service.
    Worker,
    /// A person or script: only the Operator service.
    Operator,
}

impl Role {
    /// The path segment of the role in a SPIFFE id.
    pub fn segment(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Operator => "operator",
        }
    }
}

/// A peer's identity, from its certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Worker or operator.
    pub role: Role,
    /// Its name (valid by [`check_name`]).
    pub name: String,
    /// The SPIFFE trust domain it was issued in.
    pub trust_domain: String,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "spiffe://{}/era5/{}/{}",
            self.trust_domain,
            self.role.segment(),
            self.name
        )
    }
}

/// Checks a worker or operator name: 1 to 63 characters of `[a-z0-9._-]`.
pub fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::EmptyName);
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(*c)))
    {
        return Err(Error::BadNameCharacter {
            name: name.escape_debug().take(80).collect(),
            found,
        });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::NameTooLong(name.chars().take(80).collect()));
    }
    Ok(())
}

/// Parses one URI SAN. `Ok(None)` for URIs that are not era5 identities (other SANs are
/// allowed: the same certificate may serve other systems).
pub fn parse_spiffe(uri: &str) -> Result<Option<Identity>, Error> {
    let Some(rest) = uri.strip_prefix("spiffe://") else {
        return Ok(None);
    };
    let mut parts = rest.split('/');
    let (Some(domain), Some("era5"), Some(role), Some(name), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Ok(None);
    };
    let role = match role {
        "worker" => Role::Worker,
        "operator" => Role::Operator,
        _ => return Ok(None),
    };
    if domain.is_empty() {
        return Ok(None);
    }
    check_name(name).map_err(|error| Error::BadIdentityName {
        uri: uri.escape_debug().take(200).collect(),
        reason: error.to_string(),
    })?;
    Ok(Some(Identity {
        role,
        name: name.to_string(),
        trust_domain: domain.to_string(),
    }))
}

/// The identity in a DER certificate (a peer's leaf certificate).
pub fn identity_of_der(der: &[u8]) -> Result<Identity, Error> {
    let (_, certificate) =
        x509_parser::parse_x509_certificate(der).map_err(|e| Error::Unparseable(e.to_string()))?;
    let names = certificate
        .subject_alternative_name()
        .map_err(|e| Error::Unparseable(e.to_string()))?;
    let mut found: Vec<Identity> = Vec::new();
    for name in names.iter().flat_map(|san| san.value.general_names.iter()) {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && let Some(identity) = parse_spiffe(uri)?
        {
            found.push(identity);
        }
    }
    match found.len() {
        0 => Err(Error::NoIdentity),
        1 => Ok(found.remove(0)),
        _ => Err(Error::AmbiguousIdentity(
            found
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// The identity in the first certificate of a PEM file's contents (one's own certificate).
pub fn identity_of_pem(pem: &[u8]) -> Result<Identity, Error> {
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| Error::Unparseable(e.to_string()))?;
    identity_of_der(&block.contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(uris: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*u).unwrap()))
            .collect();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn names_follow_the_rules() {
        assert_eq!(check_name("w-1.node_2"), Ok(()));
        assert_eq!(check_name(""), Err(Error::EmptyName));
        assert!(matches!(
            check_name(&"a".repeat(64)),
            Err(Error::NameTooLong(_))
        ));
        assert_eq!(check_name(&"a".repeat(63)), Ok(()));
        assert!(matches!(
            check_name("Worker"),
            Err(Error::BadNameCharacter { found: 'W', .. })
        ));
        assert!(matches!(
            check_name("w\u{1b}[31m"),
            Err(Error::BadNameCharacter { .. })
        ));
    }

    #[test]
    fn roles_come_from_the_uri_san() {
        let worker = identity_of_der(&certificate(&[
            "https://example.org/other",
            "spiffe://prod.example/era5/worker/w-7",
        ]))
        .unwrap();
        assert_eq!(worker.role, Role::Worker);
        assert_eq!(worker.name, "w-7");
        assert_eq!(worker.trust_domain, "prod.example");
        assert_eq!(worker.to_string(), "spiffe://prod.example/era5/worker/w-7");
        let operator = identity_of_der(&certificate(&["spiffe://td/era5/operator/alice"])).unwrap();
        assert_eq!(operator.role, Role::Operator);
        assert_eq!(
            identity_of_der(&certificate(&["spiffe://td/other/worker/x"])),
            Err(Error::NoIdentity)
        );
        assert_eq!(identity_of_der(&certificate(&[])), Err(Error::NoIdentity));
        assert!(matches!(
            identity_of_der(&certificate(&[
                "spiffe://td/era5/worker/a",
                "spiffe://td/era5/operator/b"
            ])),
            Err(Error::AmbiguousIdentity(_))
        ));
        assert!(matches!(
            identity_of_der(&certificate(&["spiffe://td/era5/worker/UPPER"])),
            Err(Error::BadIdentityName { .. })
        ));
        assert!(matches!(
            identity_of_der(b"not der"),
            Err(Error::Unparseable(_))
        ));
    }
}
