//! Serving certificates: parsing, the hot-swappable resolver rustls asks on every
//! handshake, reloading from a mounted directory, and generating a CA with a
//! serving certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

use crate::locks;

/// File names used by cert-manager and `kubernetes.io/tls` Secrets.
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
pub const CA_FILE: &str = "ca.crt";

/// Why certificates could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no certificate found in the PEM data")]
    NoCertificate,
    #[error("invalid PEM: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    #[error("unusable private key: {0}")]
    Key(#[from] rustls::Error),
    #[error("cannot generate certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// Parses a PEM certificate chain and private key into what rustls serves.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>()?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(CertifiedKey::new(chain, signing_key))
}

/// The certificate currently served; replaced without a restart.
#[derive(Debug)]
pub struct CertResolver(RwLock<Arc<CertifiedKey>>);

impl CertResolver {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(CertResolver(RwLock::new(Arc::new(key))))
    }

    pub fn replace(&self, key: CertifiedKey) {
        *locks::write(&self.0) = Arc::new(key);
    }

    fn current(&self) -> Arc<CertifiedKey> {
        locks::read(&self.0).clone()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// TLS 1.2 and 1.3 with the ring provider, HTTP/1.1, certificates from `resolver`.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Loads `tls.crt` and `tls.key` from `dir`.
pub fn load_dir(dir: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| TlsError::Read { path, source })
    };
    certified_key(&read(CERT_FILE)?, &read(KEY_FILE)?)
}

/// Reloads the certificate whenever anything in `dir` changes. Watching the
/// directory, not the files, catches the kubelet's atomic `..data` symlink swap.
/// A broken update is logged and the previous certificate kept. The returned
/// watcher must be kept alive.
pub fn watch_dir(
    dir: &Path,
    resolver: Arc<CertResolver>,
) -> Result<notify::RecommendedWatcher, TlsError> {
    let (changed_tx, mut changed_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading the files is an event too: reacting to it would reload forever.
        if event.is_ok_and(|event| !matches!(event.kind, notify::EventKind::Access(_))) {
            let _ = changed_tx.send(());
        }
    })
    .map_err(|source| TlsError::Watch {
        path: dir.to_path_buf(),
        source,
    })?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|source| TlsError::Watch {
            path: dir.to_path_buf(),
            source,
        })?;
    let dir = dir.to_path_buf();
    tokio::spawn(async move {
        while changed_rx.recv().await.is_some() {
            // A swap is several events; let it finish, then read once.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while changed_rx.try_recv().is_ok() {}
            match load_dir(&dir) {
                Ok(key) => {
                    resolver.replace(key);
                    info!(dir = %dir.display(), "reloaded the serving certificate");
                }
                Err(error) => warn!(%error, "kept the previous serving certificate"),
            }
        }
    });
    Ok(watcher)
}

/// A CA and a serving certificate it signed, in PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedCerts {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Makes a CA and a serving certificate for `hosts` (DNS names or IP addresses)
/// valid for `validity`.
pub fn generate(hosts: &[String], validity: Duration) -> Result<GeneratedCerts, TlsError> {
    let now = std::time::SystemTime::now();
    let not_after = now + validity;
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "replika-webhook-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = now.into();
    ca_params.not_after = not_after.into();
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut params = CertificateParams::new(hosts.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "replika-webhook");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now.into();
    params.not_after = not_after.into();
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca)?;
    Ok(GeneratedCerts {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
