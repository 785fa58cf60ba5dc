//! The test PKI, made anew for every run (rcgen): a CA the device is given,
//! and the server certificates the TLS hop presents, one per case a device
//! must get right (Device Advisor's TLS cases), and client certificates
//! for mutual TLS. Nothing here is committed: keys live in memory, and the
//! few that a process must read from a file (mosquitto's listener, the
//! runner's and the device's client keys) in the run's temp dir, which is
//! removed with the run.
//!
//! What each certificate is for:
//! - `Good`: signed by the test CA, for [`SERVER_NAME`] and the listen IP;
//! - `UnknownCa`: the same names, signed by a CA the device was not given;
//! - `WrongName`: signed by the test CA, for another name;
//! - `Expired`: signed by the test CA, valid only in 2020;
//! - `LargeChain`: leaf + two intermediates, the leaf carrying a 4 KiB
//!   non-critical extension: several times the size of `Good`'s chain
//!   (Device Advisor asks for ≥ 20 % larger than normal).

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CustomExtension, DnType, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name the device is told its broker has (and verifies).
pub const SERVER_NAME: &str = "broker.hil.test";

/// Which certificate the TLS hop presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerCert {
    Good,
    UnknownCa,
    WrongName,
    Expired,
    LargeChain,
}

impl ServerCert {
    pub const ALL: [ServerCert; 5] = [
        ServerCert::Good,
        ServerCert::UnknownCa,
        ServerCert::WrongName,
        ServerCert::Expired,
        ServerCert::LargeChain,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            ServerCert::Good => "signed by the test CA, for the broker's name",
            ServerCert::UnknownCa => "signed by a CA the device was not given",
            ServerCert::WrongName => "signed by the test CA, for another name",
            ServerCert::Expired => "signed by the test CA, expired on 2021-01-01",
            ServerCert::LargeChain => {
                "signed by the test CA through two intermediates, with a 4 KiB extension"
            }
        }
    }
}

/// The PKI could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot make the test PKI: {0}")]
    Make(#[from] rcgen::Error),
    #[error("cannot write the test PKI to {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build a TLS config from the test PKI: {0}")]
    Tls(#[from] rustls::Error),
}

struct Chain {
    certs: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
    /// The chain and the key as PEM, for a broker that reads files.
    pem: String,
    key_pem: String,
}

/// A certificate chain and its key, as PEM files in the run's temp dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A run's test PKI.
pub struct TestPki {
    /// The CA certificate the device trusts, as a PEM file.
    pub ca_file: PathBuf,
    dir: PathBuf,
    ca_cert: Certificate,
    ca_key: KeyPair,
    good: Chain,
    unknown_ca: Chain,
    wrong_name: Chain,
    expired: Chain,
    large_chain: Chain,
}

fn ca(name: &str) -> Result<(Certificate, KeyPair), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok((p.self_signed(&key)?, key))
}

fn leaf_params(names: &[&str], ip: IpAddr) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    p.subject_alt_names.push(SanType::IpAddress(ip));
    p.distinguished_name.push(DnType::CommonName, names[0]);
    Ok(p)
}

fn sign(
    p: CertificateParams,
    issuer: &Certificate,
    issuer_key: &KeyPair,
    above: &[&Certificate],
) -> Result<Chain, rcgen::Error> {
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer, issuer_key)?;
    let mut certs = vec![cert.der().clone()];
    certs.extend(above.iter().map(|c| c.der().clone()));
    let mut pem = cert.pem();
    for c in above {
        pem.push_str(&c.pem());
    }
    Ok(Chain {
        certs,
        key: key.serialize_der(),
        pem,
        key_pem: key.serialize_pem(),
    })
}

impl TestPki {
    /// Makes the CA and every server certificate for a broker at `ip`, and
    /// writes the CA certificate into `dir`.
    pub fn make(dir: &Path, ip: IpAddr) -> Result<TestPki, PkiError> {
        let (ca_cert, ca_key) = ca("hil test CA")?;
        let (rogue, rogue_key) = ca("hil unknown CA")?;
        let good = sign(leaf_params(&[SERVER_NAME], ip)?, &ca_cert, &ca_key, &[])?;
        let unknown_ca = sign(leaf_params(&[SERVER_NAME], ip)?, &rogue, &rogue_key, &[])?;
        // Not the broker's name, nor its IP.
        let wrong_name = {
            let mut p = CertificateParams::new(vec!["other.hil.test".to_string()])?;
            p.distinguished_name
                .push(DnType::CommonName, "other.hil.test");
            sign(p, &ca_cert, &ca_key, &[])?
        };
        let expired = {
            let mut p = leaf_params(&[SERVER_NAME], ip)?;
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            sign(p, &ca_cert, &ca_key, &[])?
        };
        let large_chain = {
            let intermediate = |name: &str, up: &Certificate, up_key: &KeyPair| {
                let key = KeyPair::generate()?;
                let mut p = CertificateParams::new(Vec::<String>::new())?;
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.distinguished_name.push(DnType::CommonName, name);
                p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
                Ok::<_, rcgen::Error>((p.signed_by(&key, up, up_key)?, key))
            };
            let (i1, k1) = intermediate("hil intermediate 1", &ca_cert, &ca_key)?;
            let (i2, k2) = intermediate("hil intermediate 2", &i1, &k1)?;
            let mut p = leaf_params(&[SERVER_NAME], ip)?;
            // A private-arc OID, non-critical: a verifier must ignore it.
            // DER OCTET STRING of 4 KiB: 0x04 0x82 len(2) content.
            let mut blob = vec![0x04, 0x82, 0x10, 0x00];
            blob.extend(std::iter::repeat_n(0x5a, 4096));
            let mut ext = CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 55555, 1], blob);
            ext.set_criticality(false);
            p.custom_extensions.push(ext);
            sign(p, &i2, &k2, &[&i2, &i1])?
        };
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.into(),
            source,
        })?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).map_err(|source| PkiError::Write {
            path: ca_file.clone(),
            source,
        })?;
        Ok(TestPki {
            ca_file,
            dir: dir.into(),
            ca_cert,
            ca_key,
            good,
            unknown_ca,
            wrong_name,
            expired,
            large_chain,
        })
    }

    fn chain(&self, which: ServerCert) -> &Chain {
        match which {
            ServerCert::Good => &self.good,
            ServerCert::UnknownCa => &self.unknown_ca,
            ServerCert::WrongName => &self.wrong_name,
            ServerCert::Expired => &self.expired,
            ServerCert::LargeChain => &self.large_chain,
        }
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf, PkiError> {
        let path = self.dir.join(name);
        std::fs::write(&path, text).map_err(|source| PkiError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// The good server certificate and its key as files: for a broker's own
    /// TLS listener (mosquitto's `certfile`, `keyfile`).
    pub fn broker_files(&self) -> Result<CertFiles, PkiError> {
        Ok(CertFiles {
            cert_file: self.write("broker.pem", &self.good.pem)?,
            key_file: self.write("broker.key", &self.good.key_pem)?,
        })
    }

    /// A client certificate for `common_name`, signed by the test CA, as
    /// files (`stem.pem`, `stem.key`), and its DER (what a server that
    /// checks it sees presented).
    pub fn client_files(
        &self,
        stem: &str,
        common_name: &str,
    ) -> Result<(CertFiles, Vec<u8>), PkiError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let c = sign(p, &self.ca_cert, &self.ca_key, &[])?;
        let files = CertFiles {
            cert_file: self.write(&format!("{stem}.pem"), &c.pem)?,
            key_file: self.write(&format!("{stem}.key"), &c.key_pem)?,
        };
        Ok((files, c.certs[0].to_vec()))
    }

    /// The test CA as a root store (for a server that checks client certificates).
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        let _ = roots.add(self.ca_cert.der().clone());
        roots
    }

    /// The bytes of the certificate chain `which` presents.
    pub fn chain_bytes(&self, which: ServerCert) -> usize {
        self.chain(which).certs.iter().map(|c| c.len()).sum()
    }

    /// A server config presenting `which` (TLS 1.2 and 1.3). Client
    /// certificates that chain to the test CA are asked for, and
    /// `require_client_cert` makes one mandatory (mutual TLS).
    pub fn server_config(
        &self,
        which: ServerCert,
        require_client_cert: bool,
    ) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let c = self.chain(which);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key.clone()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()),
            provider.clone(),
        );
        let verifier = if require_client_cert {
            verifier.build()
        } else {
            verifier.allow_unauthenticated().build()
        }
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(c.certs.clone(), key)?;
        Ok(Arc::new(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_is_made_and_the_large_chain_is_large() {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::make(dir.path(), "127.0.0.1".parse().unwrap()).unwrap();
        let pem = std::fs::read_to_string(&pki.ca_file).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        assert!(
            !pem.contains("PRIVATE KEY"),
            "only the CA's certificate is written"
        );
        for c in ServerCert::ALL {
            pki.server_config(c, false).unwrap();
            pki.server_config(c, true).unwrap();
        }
        let broker = pki.broker_files().unwrap();
        let key = std::fs::read_to_string(&broker.key_file).unwrap();
        assert!(key.contains("PRIVATE KEY"), "{key}");
        let (client, der) = pki.client_files("device", "esp32c3-240ac4000001").unwrap();
        assert!(std::fs::read_to_string(&client.cert_file)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!der.is_empty());
        let (good, large) = (
            pki.chain_bytes(ServerCert::Good),
            pki.chain_bytes(ServerCert::LargeChain),
        );
        assert!(
            large * 5 >= good * 6,
            "{large} B is not ≥ 20 % over {good} B"
        );
    }
}
