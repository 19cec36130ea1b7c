//! HTTPS for the API: the certificate and key `[tls]` names, read from PEM files at start and
//! again on SIGHUP, and a listener that hands axum connections whose TLS handshake is done.
//!
//! A renewed pair that cannot be used (unreadable, no certificate, no key, a key that is not
//! the certificate's) is refused with an error in the log and the pair in service stays, so a
//! bad renewal never takes the API down. Connections already open keep the certificate they
//! were made with; new ones get the one in service when their handshake starts. Key material
//! is never logged; a certificate is named by its file and its SHA-256 fingerprint.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, error, info};

use crate::config::TlsSection;

/// A client that connects but does not finish its handshake is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; past this, new connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 1_024;

/// Why a certificate and key cannot be served. Each names the `[tls]` key and its file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert_file {}: {message}", path.display())]
    Certificate { path: PathBuf, message: String },
    #[error("tls.key_file {}: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error(
        "tls.key_file {} is not the private key of the certificate in tls.cert_file {}",
        key.display(),
        cert.display()
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("no TLS configuration could be made with ring's protocol versions: {0}")]
    Config(rustls::Error),
}

/// The certificate in service, swapped whole by [`Self::reload`]; rustls asks it for the
/// certificate at each handshake.
pub struct ServerCert {
    files: TlsSection,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCert")
            .field("cert_file", &self.files.cert_file)
            .field("key_file", &self.files.key_file)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ServerCert {
    /// Reads the pair `files` names; an error says which file is wrong and how.
    pub fn load(files: &TlsSection) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = read_pair(files, &provider)?;
        Ok(Arc::new(Self {
            files: files.clone(),
            provider,
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// Reads the files again and puts the pair in service; on error the one in service stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = read_pair(&self.files, &self.provider)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The SHA-256 of the certificate in service (its end-entity certificate), in hex: what
    /// `openssl x509 -fingerprint -sha256` shows, to tell a renewed certificate from the old.
    pub fn fingerprint(&self) -> String {
        self.current()
            .cert
            .first()
            .map(|der| hex::encode(Sha256::digest(der.as_ref())))
            .unwrap_or_default()
    }

    pub fn cert_file(&self) -> &Path {
        &self.files.cert_file
    }

    /// The acceptor for the API's listener: HTTP/1.1 over TLS 1.2 or 1.3, no client
    /// certificates, the certificate from `self` at each handshake.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// The certificate chain and the key `files` name, checked to belong together.
fn read_pair(files: &TlsSection, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_error = |message: String| TlsError::Certificate {
        path: files.cert_file.clone(),
        message,
    };
    let key_error = |message: String| TlsError::Key {
        path: files.key_file.clone(),
        message,
    };
    let text =
        std::fs::read(&files.cert_file).map_err(|e| cert_error(format!("cannot read it: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(format!("is not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(cert_error(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    let text =
        std::fs::read(&files.key_file).map_err(|e| key_error(format!("cannot read it: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
        pem::Error::NoItemsFound => key_error(
            "holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC)".to_owned(),
        ),
        e => key_error(format!("is not PEM: {e}")),
    })?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_error(format!("is not a usable key: {e}")))?;
    let pair = CertifiedKey::new(chain, key);
    match pair.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(pair)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::Mismatch {
            cert: files.cert_file.clone(),
            key: files.key_file.clone(),
        }),
        Err(e) => Err(cert_error(format!(
            "its first certificate is not a usable X.509 certificate: {e}"
        ))),
    }
}

/// On each SIGHUP until `stopped`: the certificate and key read again (when `cert` is
/// given). Catching the signal also keeps it from ending control, its default action.
pub async fn reload_on_hangup(cert: Option<Arc<ServerCert>>, mut stopped: watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            error!(error = %e, "cannot listen for SIGHUP; the TLS certificate is not reloaded");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            received = hangups.recv() => if received.is_none() { return },
        }
        let Some(cert) = &cert else {
            info!("SIGHUP: nothing to reload (no [tls] section)");
            continue;
        };
        match cert.reload() {
            Ok(()) => info!(
                cert_file = %cert.cert_file().display(),
                fingerprint = %cert.fingerprint(),
                "SIGHUP: reloaded the TLS certificate and key; new connections use them"
            ),
            Err(e) => error!(
                error = %e,
                fingerprint = %cert.fingerprint(),
                "SIGHUP: the TLS certificate and key were not reloaded; the ones in service stay"
            ),
        }
    }
}

/// The API's TCP listener with TLS on top: accepting goes on while handshakes run, each in a
/// task of its own, so a slow or silent client holds up no other.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> Self {
        Self {
            tcp,
            acceptor,
            handshakes: JoinSet::new(),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept(), if self.handshakes.len() < MAX_HANDSHAKES => {
                    match accepted {
                        Ok((stream, peer)) => {
                            let acceptor = self.acceptor.clone();
                            self.handshakes.spawn(handshake(acceptor, stream, peer));
                        }
                        Err(e) => accept_failed(e).await,
                    }
                }
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
    // Nagle's delay would hold each small response back; axum sets this on plain TCP too.
    let _ = stream.set_nodelay(true);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some((tls, peer)),
        // Scanners and clients that do not trust the certificate: the client sees why.
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// As axum's own listener does: a connection reset before it was accepted is nothing; any
/// other error (out of file descriptors) is logged and accepting pauses a second.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    error!(error = %e, "cannot accept a connection; trying again in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use test_support::tls::TestCa;

    use super::*;

    fn files(dir: &Path) -> TlsSection {
        TlsSection {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
        }
    }

    #[test]
    fn a_pair_is_read_and_a_renewal_replaces_it_unless_it_is_bad() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("test CA");
        let first = ca.server_cert(1);
        first.write(dir.path());
        let cert = ServerCert::load(&files(dir.path())).unwrap();
        let fingerprint = |der: &[u8]| hex::encode(Sha256::digest(der));
        assert_eq!(cert.fingerprint(), fingerprint(&first.der));

        let second = ca.server_cert(2);
        second.write(dir.path());
        cert.reload().unwrap();
        assert_eq!(cert.fingerprint(), fingerprint(&second.der));

        // A renewal whose key is another certificate's: refused, the one in service stays.
        let third = ca.server_cert(3);
        std::fs::write(dir.path().join("cert.pem"), &third.cert_pem).unwrap();
        let error = cert.reload().unwrap_err().to_string();
        assert!(
            error.contains("tls.key_file") && error.contains("is not the private key"),
            "{error}"
        );
        assert_eq!(cert.fingerprint(), fingerprint(&second.der));
        std::fs::write(dir.path().join("cert.pem"), "").unwrap();
        let error = cert.reload().unwrap_err().to_string();
        assert!(error.contains("holds no PEM certificate"), "{error}");
        assert_eq!(cert.fingerprint(), fingerprint(&second.der));
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let message = |files: &TlsSection| ServerCert::load(files).unwrap_err().to_string();
        let missing = message(&files(dir.path()));
        assert!(
            missing.contains("tls.cert_file")
                && missing.contains(&dir.path().join("cert.pem").display().to_string())
                && missing.contains("cannot read"),
            "{missing}"
        );
        let cert = TestCa::new("test CA").server_cert(1);
        cert.write(dir.path());
        std::fs::write(dir.path().join("key.pem"), &cert.cert_pem).unwrap();
        let no_key = message(&files(dir.path()));
        assert!(
            no_key.contains("tls.key_file") && no_key.contains("no PEM private key"),
            "{no_key}"
        );
        std::fs::write(
            dir.path().join("key.pem"),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n",
        )
        .unwrap();
        let broken = message(&files(dir.path()));
        assert!(
            broken.contains("tls.key_file") && broken.contains("not PEM"),
            "{broken}"
        );
        assert!(!broken.contains("AAAA"), "no key material in messages");
    }
}
