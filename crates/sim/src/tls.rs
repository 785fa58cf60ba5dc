//! TLS for the sim's link (rustls): the CA the device was provisioned with,
//! hostname verification against the name it was given, TLS 1.2 and 1.3.
//!
//! The negative control `no-verify` swaps the verifier for one that accepts
//! any certificate: the pitfall of a device that "has TLS" and proves
//! nothing about whom it talks to.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
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
    #[error("the CA file {0} holds no PEM certificate")]
    NoCertificate(PathBuf),
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

/// The client config for a device trusting the CA in `ca_file` and
/// expecting the broker to be `name`; `verify: false` is the negative control.
pub fn settings(ca_file: &Path, name: &str, verify: bool) -> Result<TlsSettings, TlsSetupError> {
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
    let config = if verify {
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
            .with_no_client_auth()
    };
    Ok(TlsSettings {
        config: Arc::new(config),
        name,
    })
}

/// The negative control's verifier: every certificate is "valid".
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
