//! The crate's one error type: a bad name, a certificate without a usable identity, or
//! connection settings that cannot be used. Messages name the bad value and the flag it came
//! from, so the binary prints them as they are.

use thiserror::Error;

/// What went wrong with a name, an identity or the connection settings.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Error {
    /// An empty worker or operator name.
    #[error("a name cannot be empty")]
    EmptyName,
    /// A name longer than [`crate::identity::MAX_NAME_LEN`].
    #[error("`{0}` is longer than 63 characters")]
    NameTooLong(String),
    /// A character outside `[a-z0-9._-]`.
    #[error("`{name}` holds {found:?}; use lowercase letters, digits, '.', '_' and '-'")]
    BadNameCharacter {
        /// The name, escaped.
        name: String,
        /// The first bad character.
        found: char,
    },
    /// Not a parseable X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    Unparseable(String),
    /// No `spiffe://<domain>/era5/<role>/<name>` URI SAN.
    #[error(
        "the certificate has no era5 identity (a URI SAN spiffe://<trust-domain>/era5/worker/<name> or .../era5/operator/<name>)"
    )]
    NoIdentity,
    /// More than one era5 identity: which one would it be?
    #[error("the certificate has several era5 identities: {0}")]
    AmbiguousIdentity(String),
    /// An era5 URI SAN whose name breaks the rules.
    #[error("the certificate's identity `{uri}` has a bad name: {reason}")]
    BadIdentityName {
        /// The SAN, escaped.
        uri: String,
        /// What is wrong with the name.
        reason: String,
    },
    /// Not an `http://` or `https://` URL with a host.
    #[error("invalid --coordinator `{url}`: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// `https://` without the files to speak TLS.
    #[error(
        "invalid --coordinator `{0}`: https:// needs --tls-ca, --tls-cert and --tls-key (it never falls back to cleartext)"
    )]
    HttpsWithoutTls(String),
    /// TLS files with an `http://` URL.
    #[error(
        "invalid --coordinator `{0}`: TLS files were given, so use https:// (http:// is cleartext)"
    )]
    TlsWithoutHttps(String),
    /// Some of `--tls-cert`, `--tls-key`, `--tls-ca` but not all.
    #[error("missing {missing}: --tls-cert, --tls-key and --tls-ca go together")]
    IncompleteTls {
        /// The flags not given.
        missing: String,
    },
    /// A file could not be read.
    #[error("cannot read {flag} `{path}`: {error}")]
    Read {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: String,
        /// Why.
        error: String,
    },
    /// A file does not hold what its flag needs.
    #[error("invalid {flag} `{path}`: {reason}")]
    BadPem {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: String,
        /// What is missing or wrong.
        reason: String,
    },
    /// The client certificate has no usable era5 identity.
    #[error("invalid --tls-cert `{path}`: {reason}")]
    CertificateIdentity {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// tonic refused the configuration.
    #[error("cannot set up the connection to `{url}`: {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// What tonic said.
        reason: String,
    },
}
