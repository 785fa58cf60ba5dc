//! TLS for the sim's link (rustls): the CA the device was provisioned with,
//! hostname verification against the name it was given, TLS 1.2 and 1.3.
//!
//! Negative controls live here too: `no-verify` accepts any certificate
//! (the pitfall of a device that "has TLS" and proves nothing about whom it
//! talks to); `small-tls-buffer` refuses chains over 4 KiB, as a device
//! whose TLS buffer was sized for one certificate does.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the device was provisioned with for TLS.
#[derive(Clone)]
pub struct TlsSettings {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

/// The provisioned TLS settings are unusable: the device says so at boot.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read the CA file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the file {0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("the key file {0} holds no PEM private key")]
    NoKey(PathBuf),
    #[error("the CA file {path} holds a certificate rustls rejects: {source}")]
    BadCertificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("`{0}` is not a DNS name or an IP address to verify the broker's certificate against")]
    BadName(String),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How the device checks the broker's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checks {
    /// Chain, name and dates (false: the `no-verify` control).
    pub verify: bool,
    /// The largest chain the device's TLS buffer takes (the
    /// `small-tls-buffer` control); None: no limit of its own.
    pub max_chain_bytes: Option<usize>,
    /// Mutual TLS: the device's certificate chain and key files (PEM).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The chain limit of the `small-tls-buffer` control.
pub const SMALL_TLS_BUFFER: usize = 4096;

/// The client config for a device trusting the CA in `ca_file` and
/// expecting the broker to be `name`.
pub fn settings(ca_file: &Path, name: &str, checks: Checks) -> Result<TlsSettings, TlsSetupError> {
    let pem = std::fs::read(ca_file).map_err(|source| TlsSetupError::Read {
        path: ca_file.into(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|source| TlsSetupError::Read {
            path: ca_file.into(),
            source,
        })?;
        roots
            .add(cert)
            .map_err(|source| TlsSetupError::BadCertificate {
                path: ca_file.into(),
                source,
            })?;
    }
    if roots.is_empty() {
        return Err(TlsSetupError::NoCertificate(ca_file.into()));
    }
    let name =
        ServerName::try_from(name.to_string()).map_err(|_| TlsSetupError::BadName(name.into()))?;
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsSetupError::Rustls(rustls::Error::General(e.to_string())))?;
    let verifier = Verifier {
        webpki: checks.verify.then_some(webpki),
        max_chain_bytes: checks.max_chain_bytes,
        provider: provider(),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match &checks.client {
        Some((chain, key)) => {
            builder.with_client_auth_cert(client_chain(chain)?, client_key(key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(TlsSettings {
        config: Arc::new(config),
        name,
    })
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        path: path.into(),
        source,
    })
}

fn client_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read_pem(path)?;
    let chain: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsSetupError::Read {
            path: path.into(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsSetupError::NoCertificate(path.into()));
    }
    Ok(chain)
}

fn client_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsSetupError> {
    let pem = read_pem(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsSetupError::Read {
            path: path.into(),
            source,
        })?
        .ok_or_else(|| TlsSetupError::NoKey(path.into()))
}

/// webpki's verifier (chain to the provisioned CA, name, dates), with the
/// negative controls' changes: none (`no-verify`), or a chain size limit.
#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    max_chain_bytes: Option<usize>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain: usize = end_entity.len() + intermediates.iter().map(|c| c.len()).sum::<usize>();
        if let Some(max) = self.max_chain_bytes.filter(|m| chain > *m) {
            return Err(rustls::Error::General(format!(
                "certificate chain of {chain} B does not fit the {max} B TLS buffer"
            )));
        }
        match &self.webpki {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
