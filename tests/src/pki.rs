//! Real certificates made in the test (rcgen): a CA, server certificates for 127.0.0.1 and
//! `localhost`, worker and operator client certificates with the era5 URI SANs, and the ones
//! that must be refused (another CA, expired, no identity). Each is written as PEM files, as a
//! deployment would mount them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The trust domain of the test certificates.
pub const TRUST_DOMAIN: &str = "era5.test";

/// The three files of one identity.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificate of the authority that peers must chain to.
    pub ca: PathBuf,
}

impl CertFiles {
    /// `--tls-cert FILE --tls-key FILE --tls-ca FILE`.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
            "--tls-ca".into(),
            self.ca.display().to_string(),
        ]
    }

    /// The PEM texts (certificate, key, CA).
    pub fn pems(&self) -> (String, String, String) {
        let read = |p: &Path| std::fs::read_to_string(p).expect("read a PEM file");
        (read(&self.cert), read(&self.key), read(&self.ca))
    }
}

/// A certificate authority that writes what it issues into a directory.
pub struct TestCa {
    dir: PathBuf,
    name: String,
    params: CertificateParams,
    key: KeyPair,
    ca_file: PathBuf,
}

/// What a leaf certificate is for.
enum Leaf<'a> {
    Server,
    Client(Option<&'a str>),
}

impl TestCa {
    /// A new CA called `name`, writing into `dir` (created if needed).
    pub fn new(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).expect("certificate directory");
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, cert.pem()).expect("write the CA");
        Self {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            params,
            key,
            ca_file,
        }
    }

    /// The CA certificate file.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    fn issue(&self, file: &str, leaf: Leaf<'_>, expired: bool) -> CertFiles {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, file.to_string());
        match leaf {
            Leaf::Server => {
                params.subject_alt_names = vec![
                    SanType::DnsName("localhost".try_into().expect("dns name")),
                    SanType::IpAddress("127.0.0.1".parse().expect("ip")),
                ];
                params.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
            }
            Leaf::Client(uri) => {
                if let Some(uri) = uri {
                    params.subject_alt_names =
                        vec![SanType::URI(uri.try_into().expect("a URI SAN"))];
                }
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign a leaf");
        let stem = self.dir.join(format!("{}-{file}", self.name));
        let files = CertFiles {
            cert: stem.with_extension("crt"),
            key: stem.with_extension("key"),
            ca: self.ca_file.clone(),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write a certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write a key");
        files
    }

    /// A server certificate for 127.0.0.1 and `localhost` (the coordinator, Redis).
    pub fn server(&self, file: &str) -> CertFiles {
        self.issue(file, Leaf::Server, false)
    }

    /// A worker's client certificate: `spiffe://era5.test/era5/worker/<name>`.
    pub fn worker(&self, name: &str) -> CertFiles {
        let uri = format!("spiffe://{TRUST_DOMAIN}/era5/worker/{name}");
        self.issue(&format!("worker-{name}"), Leaf::Client(Some(&uri)), false)
    }

    /// An operator's client certificate: `spiffe://era5.test/era5/operator/<name>`.
    pub fn operator(&self, name: &str) -> CertFiles {
        let uri = format!("spiffe://{TRUST_DOMAIN}/era5/operator/{name}");
        self.issue(&format!("operator-{name}"), Leaf::Client(Some(&uri)), false)
    }

    /// A worker certificate that expired in 2021.
    pub fn expired_worker(&self, name: &str) -> CertFiles {
        let uri = format!("spiffe://{TRUST_DOMAIN}/era5/worker/{name}");
        self.issue(&format!("expired-{name}"), Leaf::Client(Some(&uri)), true)
    }

    /// A client certificate with any URI SAN, or none.
    pub fn client_with_uri(&self, file: &str, uri: Option<&str>) -> CertFiles {
        self.issue(file, Leaf::Client(uri), false)
    }
}
