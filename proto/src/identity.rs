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

use thiserror::Error;

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

/// Why a name is not acceptable.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum NameError {
    /// Empty.
    #[error("a name cannot be empty")]
    Empty,
    /// Longer than [`MAX_NAME_LEN`].
    #[error("`{0}` is longer than 63 characters")]
    TooLong(String),
    /// A character outside `[a-z0-9._-]`.
    #[error("`{name}` holds {found:?}; use lowercase letters, digits, '.', '_' and '-'")]
    BadCharacter {
        /// The name (control characters escaped by `Debug` where it is printed).
        name: String,
        /// The first bad character.
        found: char,
    },
}

/// Checks a worker or operator name: 1 to 63 characters of `[a-z0-9._-]`.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(*c)))
    {
        return Err(NameError::BadCharacter {
            name: name.escape_debug().take(80).collect(),
            found,
        });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.chars().take(80).collect()));
    }
    Ok(())
}

/// Why a certificate carries no identity.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum IdentityError {
    /// Not a parseable X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    Unparseable(String),
    /// No `spiffe://<domain>/era5/<role>/<name>` URI SAN.
    #[error(
        "the certificate has no era5 identity (a URI SAN spiffe://<trust-domain>/era5/worker/<name> or .../era5/operator/<name>)"
    )]
    Missing,
    /// More than one era5 identity: which one would it be?
    #[error("the certificate has several era5 identities: {0}")]
    Ambiguous(String),
    /// An era5 URI SAN whose name breaks the rules.
    #[error("the certificate's identity `{uri}` has a bad name: {error}")]
    BadName {
        /// The SAN.
        uri: String,
        /// What is wrong with the name.
        error: NameError,
    },
}

/// Parses one URI SAN. `Ok(None)` for URIs that are not era5 identities (other SANs are
/// allowed: the same certificate may serve other systems).
pub fn parse_spiffe(uri: &str) -> Result<Option<Identity>, IdentityError> {
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
    check_name(name).map_err(|error| IdentityError::BadName {
        uri: uri.escape_debug().take(200).collect(),
        error,
    })?;
    Ok(Some(Identity {
        role,
        name: name.to_string(),
        trust_domain: domain.to_string(),
    }))
}

/// The identity in a DER certificate (a peer's leaf certificate).
pub fn identity_of_der(der: &[u8]) -> Result<Identity, IdentityError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Unparseable(e.to_string()))?;
    let names = certificate
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unparseable(e.to_string()))?;
    let mut found: Vec<Identity> = Vec::new();
    for name in names.iter().flat_map(|san| san.value.general_names.iter()) {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && let Some(identity) = parse_spiffe(uri)?
        {
            found.push(identity);
        }
    }
    match found.len() {
        0 => Err(IdentityError::Missing),
        1 => Ok(found.remove(0)),
        _ => Err(IdentityError::Ambiguous(
            found
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// The identity in the first certificate of a PEM file's contents (one's own certificate).
pub fn identity_of_pem(pem: &[u8]) -> Result<Identity, IdentityError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| IdentityError::Unparseable(e.to_string()))?;
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
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert!(matches!(
            check_name(&"a".repeat(64)),
            Err(NameError::TooLong(_))
        ));
        assert_eq!(check_name(&"a".repeat(63)), Ok(()));
        assert!(matches!(
            check_name("Worker"),
            Err(NameError::BadCharacter { found: 'W', .. })
        ));
        assert!(matches!(
            check_name("w\u{1b}[31m"),
            Err(NameError::BadCharacter { .. })
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
            Err(IdentityError::Missing)
        );
        assert_eq!(
            identity_of_der(&certificate(&[])),
            Err(IdentityError::Missing)
        );
        assert!(matches!(
            identity_of_der(&certificate(&[
                "spiffe://td/era5/worker/a",
                "spiffe://td/era5/operator/b"
            ])),
            Err(IdentityError::Ambiguous(_))
        ));
        assert!(matches!(
            identity_of_der(&certificate(&["spiffe://td/era5/worker/UPPER"])),
            Err(IdentityError::BadName { .. })
        ));
        assert!(matches!(
            identity_of_der(b"not der"),
            Err(IdentityError::Unparseable(_))
        ));
    }
}
