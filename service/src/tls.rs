//! TLS 1.3 server configuration. With `client_ca` set, only clients holding a certificate from
//! that CA complete the handshake (mutual TLS toward the coordinator); with a pinned client name
//! as well, only the one client whose certificate carries that name.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate(s) from {file}: {message}")]
    Certs { file: PathBuf, message: String },
    #[error("cannot read private key from {file}: {message}")]
    Key { file: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

pub fn load_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certs {
            file: file.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certs {
            file: file.to_path_buf(),
            message: "no PEM certificate found".into(),
        });
    }
    Ok(certs)
}

pub fn load_key(file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(file).map_err(|e| TlsError::Key {
        file: file.to_path_buf(),
        message: e.to_string(),
    })
}

/// Expiry (Unix seconds) of the first certificate in a PEM file; None when it cannot be read.
pub fn not_after(file: &Path) -> Option<i64> {
    let first = CertificateDer::pem_file_iter(file).ok()?.next()?.ok()?;
    policies::ops::certificate_not_after(first.as_ref())
}

/// Install ring as rustls' process-wide crypto provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Accepts a client the CA's verifier accepts only if its certificate is valid for one name:
/// another party's certificate from the same CA (a node's, say) is refused at the handshake.
#[derive(Debug)]
struct ExpectClientName {
    inner: Arc<dyn ClientCertVerifier>,
    name: ServerName<'static>,
}

impl ClientCertVerifier for ExpectClientName {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?
            .verify_is_valid_for_subject_name(&self.name)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn client_verifier(ca: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| TlsError::Config(format!("client CA {}: {e}", ca.display())))?;
    }
    WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// A DNS name a client's certificate must carry, checked once at start-up.
pub fn client_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    match ServerName::try_from(name.to_string()) {
        Ok(n @ ServerName::DnsName(_)) => Ok(n),
        Ok(_) | Err(_) => Err(TlsError::Config(format!(
            "client name '{name}' is not a DNS name"
        ))),
    }
}

pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = client_ca.map(client_verifier).transpose()?;
    build(cert, key, verifier)
}

/// Mutual TLS that admits one client: a certificate from `client_ca` valid for `name`.
pub fn server_config_for_client(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    name: &str,
) -> Result<rustls::ServerConfig, TlsError> {
    let pinned: Arc<dyn ClientCertVerifier> = Arc::new(ExpectClientName {
        inner: client_verifier(client_ca)?,
        name: client_name(name)?,
    });
    build(cert, key, Some(pinned))
}

fn build(
    cert: &Path,
    key: &Path,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<rustls::ServerConfig, TlsError> {
    install_crypto_provider();
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    let builder = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13]);
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
