//! A throwaway PKI for the TLS tests: a CA made for one test, server certificates it signs for
//! `127.0.0.1` and `localhost` (what local VMs and the tests dial), written as PEM files, and
//! an HTTPS client that trusts that CA and nothing else.
//!
//! Validity is fixed (2020 to 2040 and on), never read from the clock, so the certificates are
//! the same whatever day the tests run on.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

/// A CA for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate, PEM.
    pub cert_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A server certificate and its key, as the PEM files control reads.
#[derive(Clone, Debug)]
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate, DER: what a client sees in the handshake.
    pub der: Vec<u8>,
    pub serial: u64,
}

/// `year`-01-01T00:00:00Z plus `days`.
fn day(year: i32, days: i64) -> time::OffsetDateTime {
    let start = time::Date::from_calendar_date(year, time::Month::January, 1)
        .expect("a valid date")
        .midnight()
        .assume_utc();
    start + time::Duration::days(days)
}

impl TestCa {
    /// A new CA named `name`, with a key of its own.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = day(2020, 0);
        params.not_after = day(2050, 0);
        let key = KeyPair::generate().expect("a CA key");
        let cert = params.self_signed(&key).expect("the CA certificate");
        Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        }
    }

    /// A server certificate for `127.0.0.1` and `localhost` with serial number `serial`,
    /// valid until 2040 plus `serial` days (so two of them differ in expiry too).
    pub fn server_cert(&self, serial: u64) -> ServerCert {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server certificate parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "control (test)");
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = day(2020, 0);
        params.not_after = day(2040, i64::try_from(serial).unwrap_or(0));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("a server key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("the server certificate");
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            serial,
        }
    }

    /// Writes the CA's certificate to `dir/ca.pem`; returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.cert_pem).expect("writing the CA certificate");
        path
    }

    /// An HTTPS client that trusts this CA only.
    pub fn client(&self) -> reqwest::Client {
        self.client_builder()
            .build()
            .expect("building an HTTPS client")
    }

    /// [`Self::client`]'s builder, for a test that sets more.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let ca = reqwest::Certificate::from_pem(self.cert_pem.as_bytes()).expect("the CA as PEM");
        crate::http_client_builder().tls_certs_only([ca])
    }
}

impl ServerCert {
    /// Writes `cert.pem` and `key.pem` (0600) into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &self.cert_pem).expect("writing the certificate");
        std::fs::write(&key, &self.key_pem).expect("writing the key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .expect("making the key 0600");
        (cert, key)
    }
}
